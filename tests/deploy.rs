//! The deployment files, checked by the parsers and schemas their consumers use:
//!
//! - `compose.yaml` against the Compose Specification's JSON Schema (check-jsonschema's vendored
//!   copy);
//! - `deploy/k8s/` against Kubernetes' schemas with unknown fields refused (kubernetes-validate
//!   --strict), and its KEDA objects against KEDA's CRD schemas (@kubernetes-models/keda);
//! - `deploy/prometheus/prometheus.yml` by `promtool check config` (Debian's prometheus);
//! - and, on the parsed files, what no schema says (`tests/deploy_checks.py`): scalable workers,
//!   credentials only from `.env` or Secrets, healthchecks, grace periods, the KEDA trigger counting
//!   unacked tasks, every dashboard on the one provisioned datasource.
//!
//! Each check is also fed a broken copy, to show it can fail. The Python and npm tools are
//! installed under `~/.cache/starkscale` on first use.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn cache(path: &str) -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/starkscale")
        .join(path)
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_passes(out: Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
}

fn assert_fails(out: Output, what: &str, naming: &str) {
    assert!(!out.status.success(), "{what} passed a broken file");
    assert!(
        text(&out).contains(naming),
        "{what} did not name {naming:?}:\n{}",
        text(&out)
    );
}

/// A venv with the Python validators (pinned), made once (the tests run side by side).
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            support::python_venv(
                "ops-venv",
                "yaml, check_jsonschema, kubernetes_validate",
                &[
                    "check-jsonschema==0.39.0",
                    "kubernetes-validate==1.37.0",
                    "PyYAML==6.0.2",
                ],
            )
        })
        .clone()
}

/// node_modules with KEDA's schemas and a YAML parser (pinned), installed once.
fn keda_models() -> PathBuf {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES.get_or_init(install_keda_models).clone()
}

fn install_keda_models() -> PathBuf {
    let prefix = cache("ops-node");
    let modules = prefix.join("node_modules");
    if !modules
        .join("@kubernetes-models/keda/package.json")
        .exists()
        || !modules.join("js-yaml/package.json").exists()
    {
        std::fs::create_dir_all(&prefix).unwrap();
        assert_passes(
            run(Command::new("npm")
                .arg("install")
                .arg("--prefix")
                .arg(&prefix)
                .args([
                    "--no-audit",
                    "--no-fund",
                    "--silent",
                    "@kubernetes-models/keda@2.0.0",
                    "js-yaml@4.1.0",
                ])),
            "npm install",
        );
    }
    modules
}

fn deploy_checks(what: &str, paths: &[&Path]) -> Output {
    run(Command::new(python())
        .arg(repo("tests/deploy_checks.py"))
        .arg(what)
        .args(paths))
}

/// `original` with `from` replaced by `to`, written to `dir/name`.
fn broken(dir: &Path, original: &Path, name: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(original).unwrap();
    assert!(
        text.contains(from),
        "{} has no {from:?}",
        original.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn compose_file_follows_the_compose_spec_and_scales_workers() {
    let compose = repo("compose.yaml");
    let schema = |file: &Path| {
        run(Command::new(python().with_file_name("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(file))
    };
    assert_passes(schema(&compose), "the Compose schema");
    assert_passes(
        deploy_checks("compose", &[&compose]),
        "deploy_checks compose",
    );

    let dir = tempfile::tempdir().unwrap();
    let unknown = broken(
        dir.path(),
        &compose,
        "unknown.yaml",
        "    stop_grace_period: 2m",
        "    stop_grace_periods: 2m",
    );
    assert_fails(schema(&unknown), "the Compose schema", "stop_grace_periods");
    let named = broken(
        dir.path(),
        &compose,
        "named.yaml",
        "  worker:\n",
        "  worker:\n    container_name: worker\n",
    );
    assert_fails(
        deploy_checks("compose", &[&named]),
        "deploy_checks",
        "worker has a container_name",
    );
    let literal = broken(
        dir.path(),
        &compose,
        "literal.yaml",
        "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD in .env}",
        "GF_SECURITY_ADMIN_PASSWORD: admin",
    );
    assert_fails(
        deploy_checks("compose", &[&literal]),
        "deploy_checks",
        "GF_SECURITY_ADMIN_PASSWORD is hard-coded",
    );
}

#[test]
fn kubernetes_manifests_match_their_schemas_and_keda_counts_unacked_tasks() {
    let k8s = repo("deploy/k8s");
    let core: Vec<PathBuf> = [
        "namespace.yaml",
        "coordinator.yaml",
        "worker.yaml",
        "redis.yaml",
    ]
    .iter()
    .map(|f| k8s.join(f))
    .collect();
    let kubernetes = |files: &[PathBuf]| {
        run(Command::new(python().with_file_name("kubernetes-validate"))
            .args(["--strict", "--no-warn"])
            .args(files))
    };
    let modules = keda_models();
    let keda = |file: &Path| {
        run(Command::new("node")
            .arg(repo("tests/keda_validate.mjs"))
            .arg(file)
            .env("KEDA_MODELS_DIR", &modules))
    };
    assert_passes(kubernetes(&core), "kubernetes-validate --strict");
    assert_passes(keda(&k8s.join("keda.yaml")), "KEDA schemas");
    assert_passes(
        deploy_checks("kubernetes", &[&k8s]),
        "deploy_checks kubernetes",
    );

    let dir = tempfile::tempdir().unwrap();
    let typo = broken(
        dir.path(),
        &k8s.join("worker.yaml"),
        "worker.yaml",
        "terminationGracePeriodSeconds",
        "terminationGracePeriod",
    );
    assert_fails(
        kubernetes(&[typo]),
        "kubernetes-validate --strict",
        "terminationGracePeriod",
    );
    let keda_file = k8s.join("keda.yaml");
    let wrong_type = broken(
        dir.path(),
        &keda_file,
        "keda-type.yaml",
        "maxReplicaCount: 32",
        "maxReplicaCount: many",
    );
    assert_fails(
        keda(&wrong_type),
        "KEDA schemas",
        "maxReplicaCount must be integer",
    );
    let no_target = broken(
        dir.path(),
        &keda_file,
        "keda-target.yaml",
        "  scaleTargetRef:\n    name: starkscale-worker\n",
        "",
    );
    assert_fails(keda(&no_target), "KEDA schemas", "scaleTargetRef");

    // A copy of the directory whose trigger ignores tasks being proven.
    let copy = dir.path().join("k8s");
    std::fs::create_dir(&copy).unwrap();
    for file in [
        "namespace.yaml",
        "coordinator.yaml",
        "worker.yaml",
        "redis.yaml",
    ] {
        std::fs::copy(k8s.join(file), copy.join(file)).unwrap();
    }
    broken(
        &copy,
        &keda_file,
        "keda.yaml",
        "excludeUnacknowledged: \"false\"",
        "excludeUnacknowledged: \"true\"",
    );
    assert_fails(
        deploy_checks("kubernetes", &[&copy]),
        "deploy_checks",
        "does not count unacked tasks",
    );
}

#[test]
fn prometheus_config_and_grafana_provisioning_agree() {
    let config = repo("deploy/prometheus/prometheus.yml");
    let promtool = support::debian_binary("prometheus", "/usr/bin/promtool");
    let check = |file: &Path| run(Command::new(&promtool).args(["check", "config"]).arg(file));
    assert_passes(check(&config), "promtool check config");
    let grafana = repo("grafana");
    assert_passes(
        deploy_checks("monitoring", &[&config, &grafana]),
        "deploy_checks monitoring",
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = broken(
        dir.path(),
        &config,
        "prometheus.yml",
        "scrape_interval: 5s",
        "scrape_interval: often",
    );
    assert_fails(check(&bad), "promtool check config", "often");
    // Scraping workers under another job name would leave the worker panels empty.
    let renamed = broken(
        dir.path(),
        &config,
        "renamed.yml",
        "job_name: starkscale-worker",
        "job_name: workers",
    );
    assert_fails(
        deploy_checks("monitoring", &[&renamed, &grafana]),
        "deploy_checks",
        "selects job starkscale-worker, which Prometheus does not scrape",
    );
}
