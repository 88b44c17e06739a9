// Validates the KEDA objects of Kubernetes manifests against KEDA's CRD schemas, as packaged by
// @kubernetes-models/keda; other kinds are left to kubernetes-validate.
//
//   node keda_validate.mjs FILE.yaml...
//
// Exits 1 naming each invalid object; tests/deploy.rs installs the packages and runs this.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

// The packages live outside the repository (KEDA_MODELS_DIR is their node_modules).
const from = (path) => import(pathToFileURL(join(process.env.KEDA_MODELS_DIR, path)).href);
const yaml = (await from("js-yaml/index.js")).default;
const keda = await from("@kubernetes-models/keda/keda.sh/v1alpha1/index.js");
const models = {
  ScaledObject: keda.ScaledObject,
  TriggerAuthentication: keda.TriggerAuthentication,
};

let failed = false;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || doc.apiVersion !== "keda.sh/v1alpha1") continue;
    const Model = models[doc.kind];
    const name = `${file}: ${doc.kind}/${doc.metadata?.name}`;
    if (!Model) {
      console.log(`${name}: no schema for this KEDA kind`);
      failed = true;
      continue;
    }
    try {
      new Model(doc).validate();
      checked += 1;
    } catch (error) {
      console.log(`${name}: ${error.message}`);
      failed = true;
    }
  }
}
console.log(`${checked} KEDA objects valid`);
process.exit(failed || checked === 0 ? 1 : 0);
