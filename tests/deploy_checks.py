"""What the schemas cannot say about the deployment files, checked on their parsed YAML/JSON.

    python deploy_checks.py compose compose.yaml
    python deploy_checks.py kubernetes deploy/k8s
    python deploy_checks.py monitoring deploy/prometheus/prometheus.yml grafana

Exits 1 naming every violated rule. tests/deploy.rs runs it (and the schema validators) and also
feeds it broken copies to see each rule fire.
"""

import json
import re
import sys
from pathlib import Path

import yaml

problems = []


def need(condition, message):
    if not condition:
        problems.append(message)


def compose(path):
    doc = yaml.safe_load(Path(path).read_text())
    services = doc["services"]
    for name in ("rabbitmq", "redis", "coordinator", "worker", "prometheus", "grafana"):
        need(name in services, f"compose: no {name} service")
    for name, service in services.items():
        if "cli" in service.get("profiles", []):
            continue
        one_shot = service.get("restart") == "no"
        need(one_shot or "healthcheck" in service, f"compose: {name} has no healthcheck")
        for dep, cond in (service.get("depends_on") or {}).items():
            need(
                isinstance(cond, dict) and "condition" in cond,
                f"compose: {name} depends on {dep} without a condition",
            )
        env = service.get("environment") or {}
        for key, value in env.items():
            secret = re.search(r"PASS|PASSWORD|USER|URL", key)
            if secret and value is not None:
                need(
                    "${" in str(value),
                    f"compose: {name}.{key} is hard-coded instead of read from .env",
                )
    worker = services.get("worker", {})
    need("container_name" not in worker, "compose: worker has a container_name (cannot scale)")
    need("ports" not in worker, "compose: worker publishes host ports (cannot scale)")
    grace = str(worker.get("stop_grace_period", "0s"))
    need(seconds(grace) >= 60, f"compose: worker stop_grace_period {grace} is below a minute")
    rabbit = services.get("rabbitmq", {})
    plugins = [v for v in rabbit.get("volumes", []) if "enabled_plugins" in v]
    need(plugins, "compose: rabbitmq does not mount enabled_plugins")
    for volume in plugins:
        source = Path(path).parent / volume.split(":")[0]
        text = source.read_text() if source.exists() else ""
        for plugin in ("rabbitmq_management", "rabbitmq_prometheus"):
            need(plugin in text, f"compose: {plugin} is not enabled")
    command = " ".join(map(str, services.get("redis", {}).get("command", [])))
    need("--aclfile " in command, "compose: redis runs without the fleet's ACL users")
    need("requirepass" not in command, "compose: redis has one shared password")
    need(
        "RABBITMQ_DEFAULT_PASS" not in (rabbit.get("environment") or {}),
        "compose: rabbitmq has one shared account",
    )
    need("--maxmemory " in command, "compose: redis has no maxmemory")
    need("--maxmemory-policy noeviction" in command, "compose: redis may evict keys")
    need("--appendonly yes" in command, "compose: redis keeps no append-only file")
    need("--appendfsync everysec" in command, "compose: redis does not fsync its AOF every second")


def seconds(duration):
    total = 0
    for amount, unit in re.findall(r"(\d+)([hms])", duration):
        total += int(amount) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def kubernetes(directory):
    docs = []
    for path in sorted(Path(directory).glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    worker = deployments.get("starkscale-worker")
    need(worker is not None, "k8s: no starkscale-worker Deployment")
    need("starkscale-coordinator" in deployments, "k8s: no starkscale-coordinator Deployment")
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        need(
            spec.get("terminationGracePeriodSeconds", 0) >= 30,
            f"k8s: {name} has no termination grace period",
        )
        for container in spec["containers"]:
            requests = container.get("resources", {}).get("requests", {})
            need("memory" in requests and "cpu" in requests, f"k8s: {name} requests no resources")
            for env in container.get("env", []):
                need(
                    not re.search(r"URL|PASSWORD", env["name"]) or "valueFrom" in env,
                    f"k8s: {name} sets {env['name']} inline instead of from a Secret",
                )
    redis = [d for d in by_kind.get("StatefulSet", []) if d["metadata"]["name"] == "starkscale-redis"]
    need(len(redis) == 1, "k8s: no starkscale-redis StatefulSet")
    for statefulset in redis:
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        line = " ".join(container.get("command", []) + container.get("args", []))
        for flag in ("--maxmemory-policy noeviction", "--appendonly yes", "--appendfsync everysec"):
            need(flag in line, f"k8s: redis runs without {flag}")
        need(statefulset["spec"].get("volumeClaimTemplates"), "k8s: redis keeps its AOF on no volume")
    if worker:
        spec = worker["spec"]["template"]["spec"]
        need(
            spec.get("terminationGracePeriodSeconds", 0) >= 120,
            "k8s: worker grace period is shorter than a slow proof",
        )
        memory = spec["containers"][0]["resources"]["requests"].get("memory", "0")
        need(bytes_of(memory) >= 3.6e9, f"k8s: worker memory request {memory} is below a proof's 3.6 GB")
    scaled = by_kind.get("ScaledObject", [])
    auths = {a["metadata"]["name"] for a in by_kind.get("TriggerAuthentication", [])}
    need(len(scaled) == 1, "k8s: expected one ScaledObject")
    for obj in scaled:
        need(obj["spec"]["scaleTargetRef"]["name"] in deployments, "k8s: ScaledObject targets no Deployment")
        for trigger in obj["spec"]["triggers"]:
            meta = trigger["metadata"]
            need(trigger["type"] == "rabbitmq", "k8s: trigger is not rabbitmq")
            need(meta.get("protocol") == "http", "k8s: trigger does not use the HTTP API")
            need(meta.get("mode") == "QueueLength", "k8s: trigger mode is not QueueLength")
            need(meta.get("queueName", "").endswith(".tasks"), "k8s: trigger is not on the tasks queue")
            need(meta.get("excludeUnacknowledged") == "false", "k8s: trigger does not count unacked tasks")
            need(trigger.get("authenticationRef", {}).get("name") in auths, "k8s: trigger's TriggerAuthentication is missing")


def bytes_of(quantity):
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    if not match:
        return 0
    scale = {None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(match.group(1)) * scale[match.group(2)]


def monitoring(prometheus_config, grafana):
    jobs = {s["job_name"] for s in yaml.safe_load(Path(prometheus_config).read_text())["scrape_configs"]}
    grafana = Path(grafana)
    sources = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    uids = {s["uid"] for s in sources}
    need(len(uids) == 1 and None not in uids, "grafana: expected one datasource with a fixed uid")
    providers = yaml.safe_load((grafana / "provisioning/dashboards/starkscale.yaml").read_text())["providers"]
    need(all(p["type"] == "file" for p in providers), "grafana: dashboards are not provisioned from files")
    dashboards = sorted((grafana / "dashboards").glob("*.json"))
    need(len(dashboards) >= 2, "grafana: expected the fleet overview and the per-worker view")
    seen_uids = set()
    for path in dashboards:
        board = json.loads(path.read_text())
        need(board.get("uid") not in seen_uids, f"grafana: {path.name} repeats uid {board.get('uid')}")
        seen_uids.add(board.get("uid"))
        stack = list(board["panels"])
        while stack:
            panel = stack.pop()
            stack += panel.get("panels", [])
            if panel["type"] == "row":
                continue
            title = f"{path.name} / {panel.get('title')}"
            need(panel.get("datasource", {}).get("uid") in uids, f"grafana: {title} has another datasource")
            need(panel.get("targets"), f"grafana: {title} has no query")
            for target in panel.get("targets", []):
                need(target.get("datasource", {}).get("uid") in uids, f"grafana: {title} query has another datasource")
                for job in re.findall(r'job="([^"]+)"', target["expr"]):
                    need(job in jobs, f"grafana: {title} selects job {job}, which Prometheus does not scrape")


if __name__ == "__main__":
    what, *paths = sys.argv[1:]
    {"compose": compose, "kubernetes": kubernetes, "monitoring": monitoring}[what](*paths)
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)
