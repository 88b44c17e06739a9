//! The fleet as a user runs it: `starkscale coordinator` and `starkscale worker` processes on the
//! real RabbitMQ and Redis, jobs through `starkscale submit --wait`, results through
//! `starkscale result`, and SIGTERM to stop.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{clean_up, native_y, starkscale, Service};

#[test]
fn submit_wait_result_and_sigterm() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("test-cli-{}-{nanos}", std::process::id());
    let coordinator = Service::start(&["coordinator", "--allow-test-profile"], &prefix);
    let worker = Service::start(&["worker", "--profile", "test"], &prefix);

    let job = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/job-inline.json");
    let out = starkscale(
        &[
            "submit",
            job,
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
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(job).unwrap()).unwrap();
    let x = spec["x"]["inline"].as_array().unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["y"], native_y(&spec));

    // The embedded mode gives the same y, and writes ./<job-id>.cert.
    let here = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_starkscale"))
        .args(["run", job, "--profile", "test"])
        .current_dir(here.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let embedded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(embedded["y"], result["y"]);
    let embedded_cert = here.path().join("example-inline.cert");
    assert!(std::fs::read(&embedded_cert).unwrap().starts_with(b"SSJC"));

    // status reports the finished job.
    let out = starkscale(&["status", "example-inline"], &prefix);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["proven"], status["tasks"]);

    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("job.cert");
    let out = starkscale(
        &[
            "result",
            "example-inline",
            "--allow-test-profile",
            "--out",
            cert.to_str().unwrap(),
        ],
        &prefix,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&cert).unwrap().starts_with(b"SSJC"));

    // A stored result someone rewrote is reported as forged, whatever was changed: its y, or
    // where its certificate is. The untouched result passes again afterwards.
    let result_key = format!("{prefix}:job:example-inline:result");
    let redis = |args: &[&str]| {
        let out = Command::new("redis-cli").args(args).output().unwrap();
        assert!(out.status.success(), "redis-cli {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // Not a terminal: redis-cli prints the value raw, with a newline.
    let honest = redis(&["GET", &result_key]).trim_end().to_string();
    let mut stored: serde_json::Value = serde_json::from_str(&honest).unwrap();
    let y0 = stored["y"][0].as_i64().unwrap();
    let mut forged_y = stored.clone();
    forged_y["y"][0] = serde_json::json!(y0 + 1);
    stored["certificate_key"] = serde_json::json!(format!("{prefix}:job:other:certificate"));
    for forged in [forged_y, stored] {
        redis(&["SET", &result_key, &forged.to_string(), "EX", "600"]);
        let out = starkscale(
            &["result", "example-inline", "--allow-test-profile"],
            &prefix,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("FORGED"),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "a forged result is not printed");
    }
    redis(&["SET", &result_key, &honest, "EX", "600"]);
    let out = starkscale(
        &["result", "example-inline", "--allow-test-profile"],
        &prefix,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both certificates verify against the model commitment and x; another x, or the default
    // refusal of test-profile proofs, is named.
    let a_file = dir.path().join("a.json");
    let x_file = dir.path().join("x.json");
    let other_x = dir.path().join("other-x.json");
    std::fs::write(&a_file, serde_json::to_vec(&spec["a"]["inline"]).unwrap()).unwrap();
    std::fs::write(&x_file, serde_json::to_vec(&spec["x"]["inline"]).unwrap()).unwrap();
    let mut changed: Vec<i64> = x.iter().map(|v| v.as_i64().unwrap()).collect();
    changed[0] = if changed[0] == 0 { 1 } else { 0 };
    std::fs::write(&other_x, serde_json::to_vec(&changed).unwrap()).unwrap();
    let out = starkscale(&["commit", a_file.to_str().unwrap()], &prefix);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commitment = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let verify = |cert: &std::path::Path, x: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "verify",
            cert.to_str().unwrap(),
            "--commitment",
            &commitment,
            "--x",
            x.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        starkscale(&args, &prefix)
    };
    for c in [&cert, &embedded_cert] {
        let out = verify(c, &x_file, &["--allow-test-profile", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verified: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(verified["y"], result["y"]);
        assert_eq!(verified["profile"], "test");
    }
    let out = verify(&cert, &other_x, &["--allow-test-profile"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("x mismatch"));
    let out = verify(&cert, &x_file, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("profile"));

    // A job the coordinator refuses: submit --wait reports the reason and fails.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"schema_version":1,"job_id":"bad","kind":"matvec","dtype":"i8","a":{"path":"/nonexistent.npy"},"x":{"inline":[1]}}"#,
    )
    .unwrap();
    let out = starkscale(
        &[
            "submit",
            bad.to_str().unwrap(),
            "--wait",
            "--allow-test-profile",
            "--timeout-s",
            "60",
        ],
        &prefix,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is outside the data directory"));

    assert!(worker.terminate(Duration::from_secs(30)).success());
    assert!(coordinator.terminate(Duration::from_secs(30)).success());
    clean_up(&prefix, &["example-inline", "bad"]);
}

/// Polls `status` until `done` holds for the job's progress.
fn wait_status(prefix: &str, job: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let started = Instant::now();
    loop {
        let out = starkscale(&["status", job], prefix);
        if out.status.success() {
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if done(&status) {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{job} never got there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_workers_split_a_job_and_a_sigkilled_worker_loses_nothing() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("test-kill-{}-{nanos}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    // 6 single-column-block tiles of 2 rows; inputs by path, as a fleet sharing a disk would.
    let (rows, cols) = (12usize, 64usize);
    let a: Vec<i64> = (0..rows * cols)
        .map(|i| (i as i64 * 37 % 255) - 127)
        .collect();
    let x: Vec<i64> = (0..cols).map(|i| (i as i64 * 11 % 255) - 127).collect();
    let native: Vec<i64> = (0..rows)
        .map(|r| (0..cols).map(|c| a[r * cols + c] * x[c]).sum())
        .collect();
    let a_path = dir.path().join("a.npy");
    std::fs::write(
        &a_path,
        starkscale_common::tensor::npy::write_i8(&[rows, cols], &int8(&a)),
    )
    .unwrap();
    let job_path = dir.path().join("job.json");
    let job = serde_json::json!({
        "schema_version": 1, "job_id": "kill", "kind": "matvec", "dtype": "i8",
        "a": {"path": a_path}, "x": {"inline": x}, "tile_rows": 2,
    });
    std::fs::write(&job_path, job.to_string()).unwrap();

    // The coordinator reads A from its data directory, where the job's files are.
    let coordinator = Service::start(
        &[
            "coordinator",
            "--allow-test-profile",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &prefix,
    );
    let steady = Service::start(
        &["worker", "--profile", "test", "--name", "steady"],
        &prefix,
    );
    let doomed = Service::start(
        &["worker", "--profile", "test", "--name", "doomed"],
        &prefix,
    );
    let out = starkscale(&["submit", job_path.to_str().unwrap()], &prefix);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Once both have delivered work, kill one without warning: it holds a task mid-proof.
    wait_status(&prefix, "kill", |s| s["proven"].as_u64().unwrap_or(0) >= 3);
    let mut doomed = doomed;
    doomed.0.kill().unwrap();
    doomed.0.wait().unwrap();

    let started = Instant::now();
    let result = loop {
        let out = starkscale(&["result", "kill", "--allow-test-profile"], &prefix);
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the job never finished"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["y"], serde_json::json!(native));
    let workers: std::collections::BTreeSet<&str> = result["task_timings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "map")
        .map(|t| t["worker"].as_str().unwrap())
        .collect();
    assert_eq!(workers.len(), 2, "both workers proved tiles: {workers:?}");

    assert!(steady.terminate(Duration::from_secs(60)).success());
    assert!(coordinator.terminate(Duration::from_secs(30)).success());
    clean_up(&prefix, &["kill"]);
}

/// A matmul job given by `.npy` paths travels by upload (`submit --upload`); its Y and
/// certificate come back through `submit --wait --y-out --out`, verify against the batch
/// commitment of A, X and Y, and the embedded `run` proves the same Y.
#[test]
fn a_matmul_job_uploaded_from_npy_files_verifies_and_runs_embedded() {
    use starkscale_common::tensor::npy;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("test-cli-mm-{}-{nanos}", std::process::id());
    let coordinator = Service::start(&["coordinator", "--allow-test-profile"], &prefix);
    let worker = Service::start(&["worker", "--profile", "test"], &prefix);

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/job-matmul-inline.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let native = support::native_batch_y(&spec);
    for (name, values) in [
        ("a.npy", &spec["a"]["inline"]),
        ("x.npy", &spec["x"]["inline"]),
    ] {
        let rows: Vec<Vec<i8>> = serde_json::from_value(values.clone()).unwrap();
        let bytes = npy::write_i8(&[rows.len(), rows[0].len()], &rows.concat());
        std::fs::write(path(name), bytes).unwrap();
    }
    let job = serde_json::json!({
        "schema_version": 1, "job_id": "mm-upload", "kind": "matmul", "dtype": "i8",
        "a": {"path": path("a.npy")}, "x": {"path": path("x.npy")}, "segment_blocks": 256,
    });
    std::fs::write(path("job.json"), job.to_string()).unwrap();
    let out = starkscale(
        &[
            "submit",
            &path("job.json"),
            "--upload",
            "--upload-ttl-s",
            "600",
            "--wait",
            "--allow-test-profile",
            "--timeout-s",
            "300",
            "--out",
            &path("fleet.cert"),
            "--y-out",
            &path("fleet-y.npy"),
        ],
        &prefix,
    );
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("uploaded"), "{log}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "succeeded");
    let (shape, values) = npy::parse_i32(&std::fs::read(path("fleet-y.npy")).unwrap()).unwrap();
    assert_eq!((shape, values), (vec![4, 6], native.concat()));

    let out = starkscale(&["commit", "--batch", &path("a.npy")], &prefix);
    assert!(out.status.success());
    let commitment = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let verify = |cert: &str, y: &str| {
        starkscale(
            &[
                "verify",
                cert,
                "--commitment",
                &commitment,
                "--x",
                &path("x.npy"),
                "--y",
                y,
                "--allow-test-profile",
            ],
            &prefix,
        )
    };
    let out = verify(&path("fleet.cert"), &path("fleet-y.npy"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The embedded mode: the same job file, Y and certificate in its working directory.
    let out = Command::new(env!("CARGO_BIN_EXE_starkscale"))
        .args(["run", &path("job.json"), "--profile", "test"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(path("mm-upload.y.npy")).unwrap(),
        std::fs::read(path("fleet-y.npy")).unwrap()
    );
    let out = verify(&path("mm-upload.cert"), &path("mm-upload.y.npy"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(worker.terminate(Duration::from_secs(30)).success());
    assert!(coordinator.terminate(Duration::from_secs(30)).success());
    clean_up(&prefix, &["mm-upload"]);
}

/// An inference job as a user runs it: the model and int8 inputs by path, sent with
/// `submit --upload` (the model is stored under its commitment and the job names it by that),
/// the logits and certificate back through `--y-out --out`, checked by `verify` against
/// `commit MODEL.onnx`, the inputs and the logits; a second job names the model by its
/// commitment alone, with nothing uploaded.
#[test]
fn an_inference_job_uploads_its_model_once_and_verifies_against_its_commitment() {
    use starkscale_common::tensor::npy;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("test-cli-inf-{}-{nanos}", std::process::id());
    let coordinator = Service::start(&["coordinator", "--allow-test-profile"], &prefix);
    let worker = Service::start(&["worker", "--profile", "test"], &prefix);

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/models/digits-matmul-qop-tensor.onnx"
    );
    let reference = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/models/digits-matmul-qop-tensor-int8-logits.npy"
    );
    // The first 12 test inputs, already quantized (onnxruntime's int8 logits are for all 450).
    let x8 = starkscale_cairo::inference::model_inputs(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/models/digits-test-x.npy"
        ))
        .unwrap(),
        &starkscale_onnx::load(std::path::Path::new(model))
            .unwrap()
            .model,
    )
    .unwrap();
    let values: Vec<i8> = (0..12 * 64).map(|i| x8.get(i / 64, i % 64) as i8).collect();
    std::fs::write(path("x.npy"), npy::write_i8(&[12, 64], &values)).unwrap();
    let job = serde_json::json!({
        "schema_version": 1, "job_id": "inf-upload", "kind": "inference",
        "model": {"path": model}, "x": {"path": path("x.npy")},
    });
    std::fs::write(path("job.json"), job.to_string()).unwrap();
    let out = starkscale(
        &[
            "submit",
            &path("job.json"),
            "--upload",
            "--upload-ttl-s",
            "600",
            "--wait",
            "--allow-test-profile",
            "--timeout-s",
            "300",
            "--out",
            &path("fleet.cert"),
            "--y-out",
            &path("logits.npy"),
        ],
        &prefix,
    );
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(":model:"),
        "the model is uploaded under its commitment: {log}"
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "succeeded");
    let (shape, logits) = npy::parse(
        &std::fs::read(path("logits.npy")).unwrap(),
        starkscale_common::Dtype::I8,
    )
    .unwrap();
    assert_eq!(shape, vec![12, 10]);
    let (_, ort) = npy::parse(
        &std::fs::read(reference).unwrap(),
        starkscale_common::Dtype::I8,
    )
    .unwrap();
    let far = logits
        .iter()
        .zip(&ort[..120])
        .filter(|(a, b)| (*a - *b).abs() > 2)
        .count();
    assert_eq!(far, 0, "logits within 2 of onnxruntime's: {logits:?}");

    let out = starkscale(&["commit", model], &prefix);
    assert!(out.status.success());
    let commitment = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let verify = |logits: &str| {
        starkscale(
            &[
                "verify",
                &path("fleet.cert"),
                "--commitment",
                &commitment,
                "--x",
                &path("x.npy"),
                "--logits",
                logits,
                "--allow-test-profile",
            ],
            &prefix,
        )
    };
    let out = verify(&path("logits.npy"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut changed = logits.clone();
    changed[3] = if changed[3] == 0 { 1 } else { 0 };
    std::fs::write(path("other.npy"), npy::write_i8(&[12, 10], &changed)).unwrap();
    let out = verify(&path("other.npy"));
    assert!(!out.status.success());

    // Named by its commitment alone: nothing to upload.
    let job = serde_json::json!({
        "schema_version": 1, "job_id": "inf-commitment", "kind": "inference",
        "model": {"commitment": commitment}, "x": {"inline": [values[..64].to_vec()]},
    });
    std::fs::write(path("job2.json"), job.to_string()).unwrap();
    let out = starkscale(
        &[
            "submit",
            &path("job2.json"),
            "--wait",
            "--allow-test-profile",
            "--timeout-s",
            "300",
            "--y-out",
            &path("one.npy"),
        ],
        &prefix,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (shape, one) = npy::parse(
        &std::fs::read(path("one.npy")).unwrap(),
        starkscale_common::Dtype::I8,
    )
    .unwrap();
    assert_eq!((shape, one), (vec![1, 10], logits[..10].to_vec()));

    assert!(worker.terminate(Duration::from_secs(30)).success());
    assert!(coordinator.terminate(Duration::from_secs(30)).success());
    clean_up(&prefix, &["inf-upload", "inf-commitment"]);
}

/// Entries known to be int8, as int8.
fn int8(values: &[i64]) -> Vec<i8> {
    values.iter().map(|&v| i8::try_from(v).unwrap()).collect()
}
