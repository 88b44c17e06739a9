//! Watching the fleet: a real coordinator and worker (processes, on the real RabbitMQ and Redis)
//! prove a job and refuse a bad one while a real Prometheus (the Debian package, installed when
//! missing) scrapes them and RabbitMQ's Prometheus plugin. Then:
//!
//! - both `/metrics` pages are parsed: every metric of the catalog is there with its type and
//!   description, every histogram has exactly the catalog's buckets, counts are cumulative, and
//!   no label outside the catalog's small sets appears;
//! - every PromQL expression in `grafana/dashboards/*.json` (panels and variables) runs through
//!   Prometheus' HTTP API and must return at least one finite value; the throughput, failure and
//!   queue panels must show what the run did.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use starkscale_common::metrics::{label_values, MetricType, Role, CATALOG};
use support::{clean_up, debian_binary, native_y, starkscale, Service};

/// RabbitMQ's Prometheus plugin.
const RABBITMQ_PROMETHEUS_PORT: u16 = 15692;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// `GET http://127.0.0.1:<port><target>`: the status code and body (HTTP/1.0, so the server
/// closes the connection after one response).
fn http_get(port: u16, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// RabbitMQ's Prometheus plugin listening (enabled here when it is not).
fn rabbitmq_prometheus() {
    if port_open(RABBITMQ_PROMETHEUS_PORT) {
        return;
    }
    let enabled = Command::new("rabbitmq-plugins")
        .args(["enable", "rabbitmq_prometheus"])
        .status()
        .unwrap();
    assert!(
        enabled.success(),
        "rabbitmq-plugins enable rabbitmq_prometheus failed"
    );
    wait_until(
        "RabbitMQ's Prometheus plugin",
        Duration::from_secs(60),
        || port_open(RABBITMQ_PROMETHEUS_PORT),
    );
}

/// A Prometheus server scraping the given endpoints every second, removed with its data on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Job names are the ones deploy/prometheus/prometheus.yml uses, which the dashboards select.
    fn start(coordinator: u16, worker: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: starkscale-coordinator
    static_configs:
      - targets: ["127.0.0.1:{coordinator}"]
  - job_name: starkscale-worker
    static_configs:
      - targets: ["127.0.0.1:{worker}"]
  - job_name: rabbitmq
    metrics_path: /metrics/detailed
    params:
      family: [queue_coarse_metrics]
    static_configs:
      - targets: ["127.0.0.1:{RABBITMQ_PROMETHEUS_PORT}"]
"#
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(debian_binary("prometheus", "/usr/bin/prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            port,
            _dir: dir,
        };
        wait_until("Prometheus ready", Duration::from_secs(60), || {
            http_get(port, "/-/ready").is_ok_and(|(status, _)| status == 200)
        });
        prometheus
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let target = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = http_get(self.port, &target).unwrap();
        assert_eq!(status, 200, "{expr}: {body}");
        let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["status"], "success", "{expr}: {body}");
        reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The values of an instant query's series.
    fn values(&self, expr: &str) -> Vec<f64> {
        self.query(expr)
            .iter()
            .map(|series| {
                series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            })
            .collect()
    }

    fn total(&self, expr: &str) -> f64 {
        self.values(expr).iter().sum()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a service with its metrics endpoint on a free port; returns it and the port.
fn start_with_metrics(args: &[&str], prefix: &str) -> (Service, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = args.to_vec();
    args.extend(["--metrics-addr", &addr]);
    let service = Service::start(&args, prefix);
    wait_until("the metrics endpoint", Duration::from_secs(120), || {
        http_get(port, "/healthz").is_ok_and(|(status, _)| status == 200)
    });
    (service, port)
}

/// One metric family of a `/metrics` page.
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    /// Sample name (with suffix) → label sets and values.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Parses the Prometheus text format into families keyed by metric name.
fn parse_exposition(text: &str) -> HashMap<String, Family> {
    let mut families: HashMap<String, Family> = HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            families.entry(name.into()).or_default().help = Some(help.into());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.entry(name.into()).or_default().kind = Some(kind.into());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap();
                let labels = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('=').unwrap();
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| {
                families
                    .get(*base)
                    .is_some_and(|f| f.kind.as_deref() == Some("histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        families
            .entry(family)
            .or_default()
            .samples
            .push((name, labels, value));
    }
    families
}

/// Checks the `/metrics` page of a process of `role` against the catalog: exactly the role's
/// metrics, each with its type, description, label values from the fixed sets and, for
/// histograms, the catalog's buckets.
fn check_exposition(text: &str, role: Role) {
    let families = parse_exposition(text);
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for (name, family) in &families {
        let spec = CATALOG
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} is exported but not in the catalog"));
        let kind = match spec.kind {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        };
        assert_eq!(family.kind.as_deref(), Some(kind), "{name}: TYPE");
        assert_eq!(family.help.as_deref(), Some(spec.help), "{name}: HELP");
        assert!(!family.samples.is_empty(), "{name}: no samples");
        for (_, labels, value) in &family.samples {
            for (label, value) in labels.iter().filter(|(l, _)| *l != "le") {
                assert!(
                    spec.labels.contains(&label.as_str()),
                    "{name}: label {label} is not one of {:?}",
                    spec.labels
                );
                assert!(
                    label_values(spec, label, role).contains(&value.as_str()),
                    "{name}: {label}={value} is outside its fixed set"
                );
            }
            assert!(value.is_finite() && *value >= 0.0, "{name}: value {value}");
        }
        if spec.kind == MetricType::Histogram {
            check_histogram(name, spec.buckets, family);
        }
        names.insert(name.as_str());
    }
    let expected: BTreeSet<&str> = CATALOG
        .iter()
        .filter(|s| s.roles.contains(&role))
        .map(|s| s.name)
        .collect();
    assert_eq!(names, expected, "{role:?} metrics");
}

/// Every label set of a histogram has exactly the catalog's buckets and +Inf, cumulative, with
/// `_count` equal to the +Inf bucket and a `_sum`.
fn check_histogram(name: &str, buckets: &[f64], family: &Family) {
    let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let mut sums = BTreeSet::new();
    for (sample, labels, value) in &family.samples {
        let mut key = labels.clone();
        if sample.ends_with("_bucket") {
            let le = key.remove("le").unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series.entry(key).or_default().push((le, *value));
        } else if sample.ends_with("_count") {
            counts.insert(key, *value);
        } else if sample.ends_with("_sum") {
            sums.insert(key);
        } else {
            panic!("{name}: unexpected sample {sample}");
        }
    }
    assert!(!series.is_empty(), "{name}: no buckets");
    for (labels, mut observed) in series {
        observed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let bounds: Vec<f64> = observed.iter().map(|(le, _)| *le).collect();
        let mut expected = buckets.to_vec();
        expected.push(f64::INFINITY);
        assert_eq!(bounds, expected, "{name}{labels:?}: bucket bounds");
        assert!(
            observed.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}{labels:?}: buckets not cumulative"
        );
        assert_eq!(
            counts.get(&labels),
            Some(&observed.last().unwrap().1),
            "{name}{labels:?}: _count"
        );
        assert!(sums.contains(&labels), "{name}{labels:?}: no _sum");
    }
}

/// Every PromQL expression of a dashboard: panel targets and `label_values` variable queries.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            panels.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("").to_string();
            queries.push((title, target["expr"].as_str().unwrap().to_string()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] == "query" {
            let definition = variable["definition"].as_str().unwrap();
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map(|(series, _)| series.to_string())
                .unwrap_or_else(|| panic!("unsupported variable query {definition}"));
            queries.push((format!("variable {}", variable["name"]), inner));
        }
    }
    queries
}

/// Grafana's variables, as they stand while the test's run is on screen.
fn substitute(expr: &str, prefix: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "10m")
        .replace("$prefix", prefix)
        .replace("$instance", ".*")
}

#[test]
fn prometheus_scrapes_a_live_fleet_and_every_dashboard_query_returns_data() {
    rabbitmq_prometheus();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("test-obs-{}-{nanos}", std::process::id());
    let (coordinator, coordinator_port) =
        start_with_metrics(&["coordinator", "--allow-test-profile"], &prefix);
    let (worker, worker_port) = start_with_metrics(&["worker", "--profile", "test"], &prefix);
    let prometheus = Prometheus::start(coordinator_port, worker_port);
    for port in [coordinator_port, worker_port] {
        wait_until("/readyz", Duration::from_secs(60), || {
            http_get(port, "/readyz").is_ok_and(|(status, _)| status == 200)
        });
    }

    // A job of three 2-row tiles and its root, then one the coordinator must refuse.
    let dir = tempfile::tempdir().unwrap();
    let a: Vec<Vec<i64>> = (0..6)
        .map(|r| (0..12).map(|c| (r * 12 + c) % 255 - 127).collect())
        .collect();
    let x: Vec<i64> = (0..12).map(|c| 60 - 11 * c).collect();
    let job = serde_json::json!({
        "schema_version": 1, "job_id": "obs", "kind": "matvec", "dtype": "i8", "tile_rows": 2,
        "a": {"inline": a}, "x": {"inline": x},
    });
    let job_path = dir.path().join("job.json");
    std::fs::write(&job_path, job.to_string()).unwrap();
    let out = starkscale(
        &[
            "submit",
            job_path.to_str().unwrap(),
            "--wait",
            "--allow-test-profile",
            "--timeout-s",
            "300",
        ],
        &prefix,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["y"], native_y(&job));
    let bad_path = dir.path().join("bad.json");
    std::fs::write(
        &bad_path,
        r#"{"schema_version":1,"job_id":"obs-bad","kind":"matvec","dtype":"i8","a":{"path":"/nonexistent.npy"},"x":{"inline":[1]}}"#,
    )
    .unwrap();
    let out = starkscale(
        &[
            "submit",
            bad_path.to_str().unwrap(),
            "--wait",
            "--allow-test-profile",
            "--timeout-s",
            "60",
        ],
        &prefix,
    );
    assert!(!out.status.success());

    // The /metrics pages: the catalog, its types, descriptions and buckets.
    let pages: Vec<String> = [coordinator_port, worker_port]
        .iter()
        .map(|&port| {
            let (status, body) = http_get(port, "/metrics").unwrap();
            assert_eq!(status, 200);
            body
        })
        .collect();
    check_exposition(&pages[0], Role::Coordinator);
    check_exposition(&pages[1], Role::Worker);
    // Counts that only a real run makes: the root proven on the worker, the three tiles
    // verified on the coordinator.
    let count = |page: &str, stage: &str, kind: &str| -> f64 {
        let families = parse_exposition(page);
        let family = &families["starkscale_stage_duration_seconds"];
        family
            .samples
            .iter()
            .find(|(sample, labels, _)| {
                sample.ends_with("_count") && labels["stage"] == stage && labels["kind"] == kind
            })
            .map_or(0.0, |(_, _, value)| *value)
    };
    assert_eq!(count(&pages[1], "prove", "reduce"), 1.0);
    assert_eq!(count(&pages[1], "prove", "map"), 3.0);
    assert_eq!(count(&pages[0], "verify", "map"), 3.0);

    // Prometheus has the run once it has scraped both processes after it.
    wait_until("Prometheus has the run", Duration::from_secs(60), || {
        prometheus.total(r#"starkscale_jobs_completed_total{status="succeeded"}"#) >= 1.0
            && prometheus.total(r#"starkscale_dead_letters_total{queue="jobs"}"#) >= 1.0
            && prometheus.total(r#"starkscale_tasks_total{outcome="proven"}"#) >= 4.0
            && !prometheus
                .query(&format!(
                    r#"rabbitmq_detailed_queue_messages_ready{{queue="{prefix}.tasks"}}"#
                ))
                .is_empty()
    });

    let mut checked = 0;
    for name in ["fleet-overview.json", "worker.json"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("grafana/dashboards")
            .join(name);
        let queries = dashboard_queries(&path);
        assert!(
            queries.len() >= 10,
            "{name}: only {} queries",
            queries.len()
        );
        for (title, expr) in queries {
            let expr = substitute(&expr, &prefix);
            let values = prometheus.values(&expr);
            // A quantile of a label value with no traffic (say, nacks) is NaN, which Grafana
            // leaves blank; the panel still needs one real value.
            assert!(
                values.iter().any(|v| v.is_finite()),
                "{name} / {title}: no data ({values:?}) for {expr}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} dashboard queries");

    // What the run did shows on the panels that should show it.
    let fleet = |expr: &str| prometheus.total(&substitute(expr, &prefix));
    assert!(
        fleet(
            r#"sum(rate(starkscale_tasks_verified_total{kind="map",verdict="accepted"}[$__rate_interval]))"#
        ) > 0.0
    );
    assert!(fleet("sum(rate(starkscale_proven_steps_total[$__rate_interval]))") > 0.0);
    assert!(fleet("sum(rate(starkscale_proven_macs_total[$__rate_interval]))") > 0.0);
    assert!(
        fleet(
            r#"sum by (status) (rate(starkscale_jobs_completed_total{status=~"failed|cancelled"}[$__rate_interval]))"#
        ) > 0.0
    );
    assert!(fleet("sum(increase(starkscale_dead_letters_total[$__range]))") >= 1.0);
    assert_eq!(fleet(r#"sum(up{job="starkscale-worker"})"#), 1.0);

    assert!(worker.terminate(Duration::from_secs(60)).success());
    assert!(coordinator.terminate(Duration::from_secs(30)).success());
    clean_up(&prefix, &["obs", "obs-bad"]);
}
