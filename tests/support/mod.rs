//! What the process-level tests share: `starkscale` service processes and commands under a
//! test's own prefix, and cleaning up after them.

#![allow(dead_code)] // each test file uses part of this
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `starkscale` service process, killed if the test ends without stopping it.
pub struct Service(pub Child);

impl Service {
    /// Starts `starkscale ARGS` under `prefix`, with its metrics endpoint on a free port (tests
    /// run side by side) unless `args` names one.
    pub fn start(args: &[&str], prefix: &str) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_starkscale"))
            .args(args)
            .env("STARKSCALE_PREFIX", prefix)
            .env("STARKSCALE_METRICS_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Service(child)
    }

    /// Starts `starkscale ARGS` under `prefix` with extra environment, its stderr (the log) kept
    /// in `log` for a failing test to show.
    pub fn start_logged(
        args: &[&str],
        prefix: &str,
        env: &[(&str, String)],
        log: &std::path::Path,
    ) -> Service {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_starkscale"))
            .args(args)
            .env("STARKSCALE_PREFIX", prefix)
            .env("STARKSCALE_METRICS_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Service(child)
    }

    /// Whether the process has exited (and reaps it).
    pub fn exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }

    /// SIGKILL, and wait for it.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then the exit status within `limit`.
    pub fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// Runs one `starkscale` command under `prefix`.
pub fn starkscale(args: &[&str], prefix: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starkscale"))
        .args(args)
        .env("STARKSCALE_PREFIX", prefix)
        .output()
        .unwrap()
}

/// Runs one `starkscale` command under `prefix` with extra environment.
pub fn starkscale_with(
    args: &[&str],
    prefix: &str,
    env: &[(&str, String)],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_starkscale"))
        .args(args)
        .env("STARKSCALE_PREFIX", prefix)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// Coordinator, worker and client processes, each with its own environment, prove
/// `examples/job-inline.json` (test profile); the client's `submit --wait` verifies the
/// certificate, and y must be the native product. Logs are shown if it fails.
pub fn prove_inline_job(
    prefix: &str,
    coordinator: &[(&str, String)],
    worker: &[(&str, String)],
    client: &[(&str, String)],
) {
    let logs = tempfile::tempdir().unwrap();
    let _coordinator = Service::start_logged(
        &["coordinator", "--allow-test-profile"],
        prefix,
        coordinator,
        &logs.path().join("coordinator.log"),
    );
    let _worker = Service::start_logged(
        &["worker", "--profile", "test"],
        prefix,
        worker,
        &logs.path().join("worker.log"),
    );
    let spec_path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/job-inline.json");
    let submit = [
        "submit",
        spec_path,
        "--wait",
        "--allow-test-profile",
        "--timeout-s",
        "300",
    ];
    let out = starkscale_with(&submit, prefix, client);
    let log = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\ncoordinator:\n{}\nworker:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log("coordinator.log"),
        log("worker.log")
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spec_path).unwrap()).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["y"], native_y(&spec));
}

/// Deletes the queues of `prefix` and the keys of `jobs`.
pub fn clean_up(prefix: &str, jobs: &[&str]) {
    use starkscale_common::broker::{AmqpBroker, Topology};
    use starkscale_common::messages::Keys;
    use starkscale_common::store::{RedisStore, Store};
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let broker = AmqpBroker::connect(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            Topology::new(prefix),
        )
        .await
        .unwrap();
        broker.delete_topology().await.unwrap();
        let store = RedisStore::connect("redis://127.0.0.1:6379/")
            .await
            .unwrap();
        let keys = Keys::new(prefix);
        let all: Vec<String> = jobs
            .iter()
            .flat_map(|j| {
                let mut all = keys.working_set(j, 8, 3);
                all.extend([
                    keys.result(j),
                    keys.certificate(j),
                    keys.progress(j),
                    keys.y(j),
                ]);
                all
            })
            .collect();
        store.delete(&all).await.unwrap();
    });
}

/// `binary`, installing Debian's `package` first when it is missing (CI starts from a bare
/// machine; installing needs root).
pub fn debian_binary(package: &str, binary: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(binary);
    if !path.exists() {
        let installed = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"
            ))
            .status()
            .unwrap();
        assert!(installed.success(), "installing Debian's {package} failed");
    }
    assert!(
        path.exists(),
        "{binary} is missing after installing {package}"
    );
    path
}

/// y = A·x computed natively from a job spec with inline A and x: what a result must state.
pub fn native_y(spec: &serde_json::Value) -> serde_json::Value {
    let x = spec["x"]["inline"].as_array().unwrap();
    let y: Vec<i64> = spec["a"]["inline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .zip(x)
                .map(|(a, x)| a.as_i64().unwrap() * x.as_i64().unwrap())
                .sum()
        })
        .collect();
    serde_json::json!(y)
}

/// Y = A·X of a matmul job spec with inline A and X (one input per row): one output row per
/// input, what the job's Y must hold.
pub fn native_batch_y(spec: &serde_json::Value) -> Vec<Vec<i64>> {
    spec["x"]["inline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let one = serde_json::json!({"a": spec["a"], "x": {"inline": x}});
            serde_json::from_value(native_y(&one)).unwrap()
        })
        .collect()
}

/// The Python of a venv under `~/.cache/starkscale/<name>` that can `import <modules>`, made
/// and filled with the pinned `packages` when it cannot.
pub fn python_venv(name: &str, modules: &str, packages: &[&str]) -> std::path::PathBuf {
    let home = std::env::var("HOME").unwrap();
    let venv = std::path::PathBuf::from(home)
        .join(".cache/starkscale")
        .join(name);
    let python = venv.join("bin/python");
    let ready = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", &format!("import {modules}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let installed = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(packages)
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {packages:?} failed");
    }
    assert!(
        ready(&python),
        "{} cannot import {modules}",
        python.display()
    );
    python
}
pub mod faults;
