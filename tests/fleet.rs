//! The fleet's behaviour under bad input, duplicates, forgery and cancellation: coordinator and
//! worker run in this process but talk through the real RabbitMQ and Redis, each test under its
//! own prefix, removed at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use starkscale_cairo::batch::{self, Rows};
use starkscale_cairo::batch_certificate::{
    verify_batch, BatchCertificate, BatchError, BatchExpect,
};
use starkscale_cairo::certificate::{verify_certificate, Expectations};
use starkscale_cairo::{run_map, Profile, Prover, TileInput};
use starkscale_common::broker::{AmqpBroker, Broker, Consumer, Delivery, Headers, Topology};
use starkscale_common::config::{unique_prefix, FleetConfig, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};
use starkscale_common::messages::{
    JobProgress, JobResult, JobStatus, Keys, TaskEvent, TaskKind, TaskMsg, TaskOutcome,
    TileInputBlob,
};
use starkscale_common::store::{parts, RedisStore, Store};
use starkscale_common::{Dtype, Matrix, Vector};
use starkscale_coordinator::CoordinatorConfig;
use starkscale_worker::WorkerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Fleet {
    fleet: FleetConfig,
    topology: Topology,
    keys: Keys,
    client: AmqpBroker,
    store: RedisStore,
    shutdown: CancellationToken,
    services: Vec<JoinHandle<()>>,
}

impl Fleet {
    async fn new(label: &str) -> Fleet {
        let fleet = FleetConfig::local(unique_prefix(label));
        let topology = Topology::new(fleet.prefix.clone());
        Fleet {
            keys: Keys::new(fleet.prefix.clone()),
            client: AmqpBroker::connect(DEFAULT_AMQP_URL, topology.clone())
                .await
                .unwrap(),
            store: RedisStore::connect(DEFAULT_REDIS_URL).await.unwrap(),
            shutdown: CancellationToken::new(),
            services: Vec::new(),
            topology,
            fleet,
        }
    }

    /// A coordinator reading inputs by path from the repository.
    fn coordinator(&mut self) {
        self.coordinator_in(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    }

    fn coordinator_in(&mut self, data_dir: &std::path::Path) {
        let config = CoordinatorConfig {
            allow_test_profile: true,
            data_dir: data_dir.to_path_buf(),
            job_ttl_s: 600,
            max_job_bytes: 1 << 20,
            // Matmul jobs are bound two or three inputs at a time.
            plan_block_entries: 150,
            ..CoordinatorConfig::new(self.fleet.clone())
        };
        let shutdown = self.shutdown.clone();
        self.services.push(tokio::spawn(async move {
            starkscale_coordinator::run(config, shutdown).await
        }));
    }

    fn worker(&mut self, name: &str) {
        let config = WorkerConfig {
            name: Some(name.into()),
            result_ttl_s: 600,
            ..WorkerConfig::new(self.fleet.clone(), Profile::Test)
        };
        let shutdown = self.shutdown.clone();
        self.services.push(tokio::spawn(async move {
            starkscale_worker::run(config, shutdown).await.unwrap()
        }));
    }

    async fn publish(&self, queue: &str, body: &[u8]) {
        self.client
            .publish(queue, body, &Headers::new(), None)
            .await
            .unwrap();
    }

    /// The certificate a succeeded result names, read whole from its parts.
    async fn certificate(&self, result: &JobResult) -> Vec<u8> {
        let key = result.certificate_key.as_ref().expect("a certificate key");
        parts::get_parts(&self.store, key, u64::MAX)
            .await
            .unwrap()
            .expect("the certificate is stored")
    }

    async fn progress(&self, job: &str) -> Option<JobProgress> {
        let bytes = self.store.get(&self.keys.progress(job)).await.unwrap()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    /// Stops the services and removes every queue and key this test made.
    async fn clean_up(self, jobs: &[&str]) {
        self.shutdown.cancel();
        for service in self.services {
            tokio::time::timeout(Duration::from_secs(60), service)
                .await
                .expect("services drain")
                .unwrap();
        }
        let mut keys = Vec::new();
        for job in jobs {
            keys.extend(self.keys.working_set(job, 8, 3));
            keys.extend([
                self.keys.progress(job),
                self.keys.result(job),
                self.keys.certificate(job),
                self.keys.y(job),
            ]);
        }
        self.store.delete(&keys).await.unwrap();
        self.client.delete_topology().await.unwrap();
    }
}

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(300), consumer.next())
        .await
        .expect("a delivery within 300 s")
        .expect("delivery ok")
}

async fn next_result(results: &mut Consumer) -> JobResult {
    let delivery = next(results).await;
    let result = serde_json::from_slice(&delivery.body).unwrap();
    delivery.ack().await.unwrap();
    result
}

/// A random job and its native product.
fn random_job(id: &str, rows: usize, cols: usize, seed: u64) -> (serde_json::Value, Vec<i64>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a: Vec<Vec<i8>> = (0..rows)
        .map(|_| (0..cols).map(|_| rng.gen()).collect())
        .collect();
    let x: Vec<i8> = (0..cols).map(|_| rng.gen()).collect();
    let native = Matrix::from_rows(&a, Dtype::I8)
        .unwrap()
        .matvec(&Vector::new(Dtype::I8, x.clone()).unwrap())
        .unwrap();
    let job = serde_json::json!({
        "schema_version": 1, "job_id": id, "kind": "matvec", "dtype": "i8",
        "a": {"inline": a}, "x": {"inline": x},
    });
    (job, native)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_get_error_results_and_dead_letters_and_the_fleet_keeps_serving() {
    let mut fleet = Fleet::new("hostile").await;
    let mut results = fleet.client.subscribe_results("#").await.unwrap();
    // The coordinator's data directory: two of the models, a FIFO, and symlinks that lead out
    // of it to a file that exists and to one that does not.
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("models")).unwrap();
    for form in ["gemm-qdq-tensor", "gemm-float"] {
        std::fs::copy(
            digits_model(form),
            data.path().join(format!("models/digits-{form}.onnx")),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink(
        digits_model("gemm-qdq-tensor"),
        data.path().join("escape.onnx"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/nonexistent/m.onnx", data.path().join("gone.onnx")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(data.path().join("pipe.npy"))
        .status()
        .unwrap()
        .success());
    fleet.coordinator_in(data.path());
    fleet.worker("w1");

    // A Redis key holding bytes that are neither .npy nor JSON.
    let garbage_key = format!("{}:input:garbage", fleet.fleet.prefix);
    fleet
        .store
        .put(&garbage_key, b"\x93NUMPY garbage", Duration::from_secs(600))
        .await
        .unwrap();
    // Batches by key, read by ranges: cut short, of three dimensions, out of range.
    let npy =
        |shape: &[usize], values: &[i32]| starkscale_common::tensor::npy::write_i32(shape, values);
    let mut short = npy(&[3, 2], &[1, 2, 3, 4, 5, 6]);
    short.truncate(short.len() - 4);
    let batch_keys = [
        ("short", short),
        ("cube", npy(&[1, 2, 2], &[1, 2, 3, 4])),
        ("wide", npy(&[3, 2], &[1, 2, 3, 4, 5, 300])),
    ];
    let batch_key = |name: &str| format!("{}:input:batch-{name}", fleet.fleet.prefix);
    for (name, bytes) in &batch_keys {
        fleet
            .store
            .put(&batch_key(name), bytes, Duration::from_secs(600))
            .await
            .unwrap();
    }
    let ok = r#"{"schema_version":1,"job_id":"J","kind":"matvec","dtype":"i8","a":{"inline":[[1,2],[3,4]]},"x":{"inline":[5,-6]}}"#;
    let job = |id: &str, from: &str, to: &str| {
        ok.replace("\"J\"", &format!("\"{id}\"")).replace(from, to)
    };
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let oversize = format!(
        "{{\"schema_version\":1,\"kind\":\"matvec\",\"dtype\":\"i8\",\"a\":{{\"inline\":[[{}1]]}},\"x\":{{\"inline\":[1]}}}}",
        "1,".repeat(600_000)
    );
    let hostile: Vec<(String, &str)> = vec![
        ("{".into(), "invalid job JSON"),
        ("not json at all".into(), "invalid job JSON"),
        ("null".into(), "invalid job JSON"),
        ("[]".into(), "invalid job JSON"),
        (nested, "invalid job JSON"),
        (oversize, "over the 1048576-byte limit"),
        (
            job("h-unknown", "\"kind\"", "\"bogus\":1,\"kind\""),
            "unknown field",
        ),
        (
            job(
                "h-unknown-a",
                "{\"inline\":[[1,2],[3,4]]}",
                "{\"inline\":[[1,2],[3,4]],\"scale\":2}",
            ),
            "invalid job JSON",
        ),
        (
            job("h-missing-x", ",\"x\":{\"inline\":[5,-6]}", ""),
            "missing field",
        ),
        (
            job("h-version", "\"schema_version\":1", "\"schema_version\":7"),
            "unsupported schema_version 7",
        ),
        (job("h-kind", "matvec", "conv2d"), "unknown variant"),
        (job("h-dtype", "\"i8\"", "\"f32\""), "unknown variant"),
        (job("h-shape", "[5,-6]", "[5,-6,7]"), "shape mismatch"),
        (job("h-ragged", "[3,4]", "[3]"), "row 1 has 1 entries"),
        (
            job("h-overflow", "[5,-6]", "[5,300]"),
            "out of range for i8",
        ),
        (
            job("h-underflow", "[1,2]", "[1,-129]"),
            "out of range for i8",
        ),
        (job("h-huge", "[5,-6]", "[5,1e300]"), "invalid job JSON"),
        (job("h-string", "[5,-6]", "\"5,-6\""), "invalid job JSON"),
        (job("h-empty", "[[1,2],[3,4]]", "[]"), "invalid a"),
        (
            job("h-negative-tile", "\"kind\"", "\"tile_rows\":-2,\"kind\""),
            "invalid job JSON",
        ),
        (
            job("h-zero-tile", "\"kind\"", "\"tile_rows\":0,\"kind\""),
            "tile_rows 0 is outside",
        ),
        (
            job("h-tall-tile", "\"kind\"", "\"tile_rows\":5000,\"kind\""),
            "tile_rows 5000 is outside",
        ),
        (ok.replace("\"J\"", "\"bad id!\""), "invalid job_id"),
        (
            ok.replace("\"J\"", &format!("\"{}\"", "x".repeat(65))),
            "invalid job_id",
        ),
        (
            job(
                "h-no-file",
                "{\"inline\":[[1,2],[3,4]]}",
                "{\"path\":\"/nonexistent/a.npy\"}",
            ),
            "\"/nonexistent/a.npy\" is outside the data directory",
        ),
        (
            job(
                "h-no-key",
                "{\"inline\":[5,-6]}",
                "{\"redis_key\":\"no-such-key\"}",
            ),
            "no input at Redis key",
        ),
        (
            job(
                "h-garbage-key",
                "{\"inline\":[[1,2],[3,4]]}",
                &format!("{{\"redis_key\":\"{garbage_key}\"}}"),
            ),
            "invalid .npy",
        ),
        (
            job("h-empty-path", "{\"inline\":[5,-6]}", "{\"path\":\"\"}"),
            "reference must be",
        ),
        (
            job(
                "h-two-refs",
                "{\"inline\":[5,-6]}",
                "{\"inline\":[5,-6],\"path\":\"x\"}",
            ),
            "invalid job JSON",
        ),
    ];
    // Matmul jobs: X is a batch of inputs, one per row.
    let matmul = |id: &str, x: &str| job(id, "[5,-6]", x).replace("matvec", "matmul");
    let hostile_batches: Vec<(String, &str)> = vec![
        (matmul("h-mm-vector", "[5,-6]"), "one input per row"),
        (job("h-mv-batch", "[5,-6]", "[[5,-6]]"), "matmul job"),
        (
            matmul("h-mm-width", "[[5,-6,7],[1,2,3]]"),
            "X holds 2 inputs of 3 entries",
        ),
        (matmul("h-mm-ragged", "[[5,-6],[7]]"), "row 1 has 1 entries"),
        (
            matmul("h-mm-range", "[[5,-6],[7,200]]"),
            "out of range for i8",
        ),
        (matmul("h-mm-empty", "[[]]"), "invalid x"),
        (
            matmul("h-mm-blocks", "[[5,-6],[7,8]]")
                .replace("\"kind\"", "\"segment_blocks\":8,\"kind\""),
            "segment_blocks 8",
        ),
        (
            job(
                "h-mv-blocks",
                "\"kind\"",
                "\"segment_blocks\":1024,\"kind\"",
            ),
            "a matmul or inference job's option",
        ),
        (
            job(
                "h-mm-no-key",
                "{\"inline\":[5,-6]}",
                "{\"redis_key\":\"no-such-batch\"}",
            )
            .replace("matvec", "matmul"),
            "no input at Redis key",
        ),
    ];
    let by_key = |id: &str, name: &str| {
        matmul(id, "[[5,-6]]").replace(
            "{\"inline\":[[5,-6]]}",
            &format!("{{\"redis_key\":\"{}\"}}", batch_key(name)),
        )
    };
    let hostile_batches = hostile_batches.into_iter().chain([
        (by_key("h-mm-short", "short"), "bytes, the input has"),
        (by_key("h-mm-cube", "cube"), "is 2-D, one input per row"),
        (
            by_key("h-mm-wide", "wide"),
            "value 300 at index 5 is out of range for i8",
        ),
    ]);
    // Inference jobs: a model instead of A, refused at planning with the reason named.
    let wrong_commitment = "ab".repeat(32);
    fleet
        .store
        .put(
            &fleet.keys.model(&wrong_commitment),
            &std::fs::read(digits_model("gemm-qdq-tensor")).unwrap(),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let infer = |id: &str, model: serde_json::Value, x: serde_json::Value| {
        serde_json::json!({
            "schema_version": 1, "job_id": id, "kind": "inference", "model": model, "x": x,
        })
        .to_string()
    };
    let inputs = || serde_json::json!({"inline": [vec![0; 64]]});
    let by_path = |form: &str| serde_json::json!({"path": format!("models/digits-{form}.onnx")});
    let path = |p: &str| serde_json::json!({"path": p});
    let hostile_inference: Vec<(String, &str)> = vec![
        (
            job("h-inf-a", "matvec", "inference"),
            "an inference job names its model",
        ),
        (
            infer("h-inf-matvec", by_path("gemm-qdq-tensor"), inputs())
                .replace("inference", "matvec"),
            "a matvec job names its matrix",
        ),
        (
            infer(
                "h-inf-no-file",
                serde_json::json!({"path": "/nonexistent/m.onnx"}),
                inputs(),
            ),
            "model: \"/nonexistent/m.onnx\" is outside the data directory",
        ),
        (
            infer("h-inf-dev-zero", path("/dev/zero"), inputs()),
            "model: \"/dev/zero\" is outside the data directory",
        ),
        (
            infer("h-inf-climb", path("models/../../etc/passwd"), inputs()),
            "is outside the data directory",
        ),
        // Out through a symlink: the same answer whether the target exists or not.
        (
            infer("h-inf-escape", path("escape.onnx"), inputs()),
            "model: \"escape.onnx\" is outside the data directory",
        ),
        (
            infer("h-inf-gone", path("gone.onnx"), inputs()),
            "model: \"gone.onnx\" is outside the data directory",
        ),
        (
            infer("h-inf-dir", path("models"), inputs()),
            "model: \"models\" is not a regular file",
        ),
        (
            infer("h-inf-fifo-x", by_path("gemm-qdq-tensor"), path("pipe.npy")),
            "x: \"pipe.npy\" is not a regular file",
        ),
        (
            infer("h-inf-missing", path("models/none.onnx"), inputs()),
            "no such file in the data directory",
        ),
        (
            infer("h-inf-float", by_path("gemm-float"), inputs()),
            "model: ",
        ),
        (
            infer(
                "h-inf-garbage",
                serde_json::json!({"redis_key": garbage_key}),
                inputs(),
            ),
            "model: ",
        ),
        (
            infer(
                "h-inf-absent",
                serde_json::json!({"commitment": "cd".repeat(32)}),
                inputs(),
            ),
            "no input at Redis key",
        ),
        (
            infer(
                "h-inf-short-commitment",
                serde_json::json!({"commitment": "abc"}),
                inputs(),
            ),
            "is not 64 hex digits",
        ),
        (
            infer(
                "h-inf-forged-upload",
                serde_json::json!({"commitment": wrong_commitment}),
                inputs(),
            ),
            "has commitment",
        ),
        (
            infer(
                "h-inf-width",
                by_path("gemm-qdq-tensor"),
                serde_json::json!({"inline": [vec![0; 63]]}),
            ),
            "the model takes inputs of 64 entries",
        ),
        (
            infer(
                "h-inf-range",
                by_path("gemm-qdq-tensor"),
                serde_json::json!({"inline": [vec![200; 64]]}),
            ),
            "out of range for i8",
        ),
        (
            infer(
                "h-inf-x-key",
                by_path("gemm-qdq-tensor"),
                serde_json::json!({"redis_key": garbage_key}),
            ),
            "invalid x",
        ),
        (
            infer("h-inf-tile", by_path("gemm-qdq-tensor"), inputs())
                .replace("\"kind\"", "\"tile_rows\":8,\"kind\""),
            "tile_rows is a matvec and matmul job's option",
        ),
    ];
    let hostile: Vec<(String, &str)> = hostile
        .into_iter()
        .chain(hostile_batches)
        .chain(hostile_inference)
        .collect();
    assert!(hostile.len() >= 50);
    for (body, _) in &hostile {
        fleet.publish(&fleet.topology.jobs(), body.as_bytes()).await;
    }
    let (good, native) = random_job("good", 3, 40, 1);
    fleet
        .publish(&fleet.topology.jobs(), good.to_string().as_bytes())
        .await;

    let mut errors = Vec::new();
    let good = loop {
        let result = next_result(&mut results).await;
        if result.status == JobStatus::Succeeded {
            break result;
        }
        assert_eq!(result.status, JobStatus::Failed);
        errors.push(result.error.unwrap_or_default());
    };
    assert_eq!(
        errors.len(),
        hostile.len(),
        "one error per hostile job: {errors:#?}"
    );
    assert_eq!(good.y, Some(native));

    // Each hostile job left a dead-lettered copy with its reason, the one its result gave. Jobs
    // are planned concurrently, so copies and results come in any order.
    let mut dead = fleet
        .client
        .consume(&fleet.topology.dead(), 50, "dead")
        .await
        .unwrap();
    let mut reasons = Vec::new();
    for _ in 0..hostile.len() {
        let copy = next(&mut dead).await;
        let reason = copy.dead_letter_reason().unwrap_or_default().to_string();
        let (_, expected) = hostile
            .iter()
            .find(|(body, _)| body.as_bytes() == copy.body.as_slice())
            .expect("the copy is of a hostile job");
        assert!(
            reason.contains(expected),
            "expected {expected:?} in {reason:?}"
        );
        reasons.push(reason);
        copy.ack().await.unwrap();
    }
    reasons.sort();
    errors.sort();
    assert_eq!(reasons, errors, "each result names its copy's reason");
    let mut ids: Vec<String> = hostile
        .iter()
        .filter_map(|(b, _)| serde_json::from_str::<serde_json::Value>(b).ok())
        .filter_map(|v| v["job_id"].as_str().map(str::to_string))
        .collect();
    ids.push("good".into());
    fleet
        .store
        .delete(&[garbage_key, fleet.keys.model(&wrong_commitment)])
        .await
        .unwrap();
    for (name, _) in &batch_keys {
        fleet.store.delete(&[batch_key(name)]).await.unwrap();
    }
    fleet
        .clean_up(&ids.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_submissions_and_deliveries_change_nothing() {
    let mut fleet = Fleet::new("dup").await;
    let mut results = fleet.client.subscribe_results("#").await.unwrap();
    fleet.coordinator();
    let (job, native) = random_job("dup", 4, 1100, 2);
    let body = job.to_string();
    fleet.publish(&fleet.topology.jobs(), body.as_bytes()).await;
    fleet.publish(&fleet.topology.jobs(), body.as_bytes()).await;
    // Both submissions handled: the jobs queue drains, and only one job's tasks are queued.
    let started = Instant::now();
    while fleet.client.depth(&fleet.topology.jobs()).await.unwrap().0 > 0
        || fleet.progress("dup").await.and_then(|p| p.plan_s).is_none()
    {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fleet.client.depth(&fleet.topology.tasks()).await.unwrap().0,
        2
    );

    // Deliver one task twice: a copy next to the original.
    let mut tasks = fleet
        .client
        .consume(&fleet.topology.tasks(), 1, "dup")
        .await
        .unwrap();
    let task = next(&mut tasks).await;
    fleet.publish(&fleet.topology.tasks(), &task.body).await;
    task.nack(true).await.unwrap();
    drop(tasks);
    fleet.worker("w1");

    let result = next_result(&mut results).await;
    assert_eq!(result.job_id, "dup");
    assert_eq!(result.status, JobStatus::Succeeded);
    assert_eq!(result.y, Some(native));
    // Two tiles and the root that reduces them, each accepted at its first attempt.
    assert_eq!(result.task_timings.len(), 3);
    assert_eq!(result.task_timings[2].kind, TaskKind::Reduce);
    assert!(result.task_timings.iter().all(|t| t.attempt == 1));
    // The duplicate task is proven and reported too, and ignored: no second result.
    let started = Instant::now();
    while fleet.client.depth(&fleet.topology.tasks()).await.unwrap().0 > 0
        || fleet
            .client
            .depth(&fleet.topology.events())
            .await
            .unwrap()
            .0
            > 0
    {
        assert!(started.elapsed() < Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Resubmitting the finished job answers at once with its stored result, and changes nothing.
    fleet.publish(&fleet.topology.jobs(), body.as_bytes()).await;
    let again = next_result(&mut results).await;
    assert_eq!(again, result);
    let extra = tokio::time::timeout(Duration::from_secs(5), results.next()).await;
    assert!(
        extra.is_err(),
        "one resubmission produced more than one answer"
    );
    let progress = fleet.progress("dup").await.unwrap();
    assert_eq!(
        (progress.status, progress.proven, progress.retries),
        (JobStatus::Succeeded, 3, 0)
    );
    fleet.clean_up(&["dup"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_proofs_are_caught_and_the_job_still_completes() {
    let mut fleet = Fleet::new("forged").await;
    let mut results = fleet.client.subscribe_results("#").await.unwrap();
    fleet.coordinator();
    let (job, native) = random_job("forged", 3, 1100, 3);
    fleet
        .publish(&fleet.topology.jobs(), job.to_string().as_bytes())
        .await;

    // A rogue worker takes both tasks. For tile 0 it stores a valid proof of other inputs at the
    // same position; for tile 1, a proof of the right inputs with one byte changed.
    let mut tasks = fleet
        .client
        .consume(&fleet.topology.tasks(), 2, "rogue")
        .await
        .unwrap();
    let prover = Prover::new(Profile::Test);
    for _ in 0..2 {
        let delivery = next(&mut tasks).await;
        let task: TaskMsg = serde_json::from_slice(&delivery.body).unwrap();
        let blob = fleet
            .store
            .get(&fleet.keys.task_input("forged", task.task))
            .await
            .unwrap()
            .unwrap();
        let blob = TileInputBlob::from_bytes(&blob).unwrap();
        let mut a = blob.a.clone();
        if task.task == 0 {
            let other: Vec<i8> = a.data().iter().map(|v| v.saturating_add(1)).collect();
            a = Matrix::new(a.rows(), a.cols(), Dtype::I8, other).unwrap();
        }
        let tile = TileInput::new(blob.row0, blob.col0, a, blob.x.clone()).unwrap();
        let (proof, _) = prover
            .prove(run_map(&tile, 1 << 22).unwrap().input)
            .unwrap();
        let mut bytes = proof.to_bytes();
        if task.task == 1 {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x10;
        }
        fleet
            .store
            .put(
                &fleet.keys.proof("forged", task.task, 1),
                &bytes,
                Duration::from_secs(600),
            )
            .await
            .unwrap();
        let event = TaskEvent {
            job_id: "forged".into(),
            task: task.task,
            attempt: 1,
            worker: "rogue".into(),
            outcome: TaskOutcome::Proven {
                steps: 1,
                run_s: 0.1,
                prove_s: 0.1,
                proof_bytes: bytes.len(),
                peak_rss_bytes: 0,
            },
        };
        fleet
            .publish(
                &fleet.topology.events(),
                &serde_json::to_vec(&event).unwrap(),
            )
            .await;
        delivery.ack().await.unwrap();
    }
    drop(tasks);
    // The coordinator sends both tiles back; an honest worker proves them.
    fleet.worker("honest");
    let result = next_result(&mut results).await;
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    assert_eq!(result.y, Some(native));
    for timing in result
        .task_timings
        .iter()
        .filter(|t| t.kind == TaskKind::Map)
    {
        assert_eq!((timing.attempt, timing.worker.as_str()), (2, "honest"));
    }
    assert_eq!(fleet.progress("forged").await.unwrap().retries, 2);
    fleet.clean_up(&["forged"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_and_frees_its_keys() {
    let mut fleet = Fleet::new("cancel").await;
    let mut results = fleet.client.subscribe_results("cancel").await.unwrap();
    fleet.coordinator();
    fleet.worker("w1");
    let (job, _) = random_job("cancel", 2, 1024 * 3, 4);
    fleet
        .publish(&fleet.topology.jobs(), job.to_string().as_bytes())
        .await;
    let started = Instant::now();
    while fleet
        .progress("cancel")
        .await
        .and_then(|p| p.plan_s)
        .is_none()
    {
        assert!(started.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let working = fleet.keys.working_set("cancel", 4, 3); // 3 tiles and the root
    let mut held = 0;
    for key in &working {
        held += usize::from(fleet.store.get(key).await.is_ok_and(|v| v.is_some()));
    }
    assert!(held >= 4, "the plan and three tile inputs are stored");

    fleet
        .publish(&fleet.topology.jobs(), br#"{"cancel":"cancel"}"#)
        .await;
    let result = next_result(&mut results).await;
    assert_eq!(result.status, JobStatus::Cancelled);
    assert_eq!(result.y, None);
    assert_eq!(
        fleet.progress("cancel").await.unwrap().status,
        JobStatus::Cancelled
    );
    // Let the worker finish the proof in hand and skip the rest.
    let started = Instant::now();
    while fleet.client.depth(&fleet.topology.tasks()).await.unwrap().0 > 0
        || fleet
            .client
            .depth(&fleet.topology.events())
            .await
            .unwrap()
            .0
            > 0
    {
        assert!(started.elapsed() < Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for key in &working {
        let gone = match fleet.store.get(key).await {
            Ok(value) => value.is_none(),
            Err(_) => fleet.store.fields(key).await.unwrap().is_empty(),
        };
        assert!(gone, "{key} outlived the cancel");
    }
    assert!(
        fleet
            .store
            .get(&fleet.keys.result("cancel"))
            .await
            .unwrap()
            .is_some(),
        "the cancelled result stays readable"
    );
    fleet.clean_up(&["cancel"]).await;
}

/// A random matmul job (A: `rows` × `cols`, X: `batch` inputs of `cols`) and its native Y, one
/// output row per input.
fn random_batch_job(
    id: &str,
    (rows, cols, batch): (usize, usize, usize),
    seed: u64,
) -> (serde_json::Value, Vec<Vec<i64>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draw = |n: usize, m: usize| -> Vec<Vec<i8>> {
        (0..n)
            .map(|_| (0..m).map(|_| rng.gen()).collect())
            .collect()
    };
    let (a, x) = (draw(rows, cols), draw(batch, cols));
    let a_matrix = Matrix::from_rows(&a, Dtype::I8).unwrap();
    let y = x
        .iter()
        .map(|x| {
            a_matrix
                .matvec(&Vector::new(Dtype::I8, x.clone()).unwrap())
                .unwrap()
        })
        .collect();
    let job = serde_json::json!({
        "schema_version": 1, "job_id": id, "kind": "matmul", "dtype": "i8",
        "a": {"inline": a}, "x": {"inline": x}, "segment_blocks": 128,
    });
    (job, y)
}

fn rows_of(values: &serde_json::Value) -> Rows {
    let rows: Vec<Vec<i8>> = serde_json::from_value(values.clone()).unwrap();
    Rows::int8(rows[0].len(), &rows.concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matmul_jobs_are_proven_in_segments_and_certified_against_x_and_y() {
    let mut fleet = Fleet::new("matmul").await;
    let mut results = fleet.client.subscribe_results("#").await.unwrap();
    // X by path, a `.npy` the coordinator reads a block of inputs at a time from its data
    // directory.
    let dir = tempfile::tempdir().unwrap();
    fleet.coordinator_in(dir.path());
    fleet.worker("w1");
    // 70 columns: two int8 chunk columns per input; 70 weights rows: two weights segments at
    // this segment size, whose chains the root links.
    let (mut batch, native) = random_batch_job("mm", (6, 70, 4), 7);
    let (one, native_one) = random_batch_job("mm-one", (5, 30, 1), 8);
    let x_path = dir.path().join("x.npy");
    let x_rows: Vec<Vec<i8>> = serde_json::from_value(batch["x"]["inline"].clone()).unwrap();
    std::fs::write(
        &x_path,
        starkscale_common::tensor::npy::write_i8(&[4, 70], &x_rows.concat()),
    )
    .unwrap();
    let x_inline = batch["x"]["inline"].clone();
    batch["x"] = serde_json::json!({"path": x_path.to_str().unwrap()});
    for job in [&batch, &one] {
        fleet
            .publish(&fleet.topology.jobs(), job.to_string().as_bytes())
            .await;
    }
    let mut ended = std::collections::HashMap::new();
    while ended.len() < 2 {
        let result = next_result(&mut results).await;
        ended.insert(result.job_id.clone(), result);
    }

    // The batch: four segments and the batch root, Y by key, a certificate that verifies
    // against A's commitment, X and Y — and not against a changed Y.
    let result = &ended["mm"];
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    assert_eq!((result.tiles, result.nodes), (4, 1));
    let kinds: Vec<TaskKind> = result.task_timings.iter().map(|t| t.kind).collect();
    assert_eq!(kinds.iter().filter(|&&k| k == TaskKind::Segment).count(), 4);
    assert_eq!(kinds.last(), Some(&TaskKind::BatchRoot));
    assert!(result.y.is_none());
    let y_key = result.y_key.clone().expect("a matmul result names Y's key");
    let y_bytes = fleet.store.get(&y_key).await.unwrap().expect("Y stored");
    let (shape, values) = starkscale_common::tensor::npy::parse_i32(&y_bytes).unwrap();
    assert_eq!(shape, vec![4, 6]);
    assert_eq!(values, native.concat());
    let cert = fleet.certificate(result).await;
    let a = rows_of(&batch["a"]["inline"]);
    let x = rows_of(&x_inline);
    let y = Rows::I32 {
        width: 6,
        data: values.iter().map(|&v| v as i32).collect(),
    };
    let shape = starkscale_cairo::batch::Shape { m: 6, k: 70, b: 4 };
    let a_commitment = batch::commit(batch::Stream::Weights, &shape, &a);
    let expect = BatchExpect {
        a_commitment: Some(&a_commitment),
        x: Some(&x),
        y: Some(&y),
        allow_test: true,
        starks_verified: false,
    };
    let verified = verify_batch(&cert, &expect).unwrap();
    assert_eq!((verified.shape, verified.segments), (shape, 4));
    let mut changed = y.clone();
    if let Rows::I32 { data, .. } = &mut changed {
        data[5] += 1;
    }
    let wrong = BatchExpect {
        y: Some(&changed),
        ..expect
    };
    assert!(matches!(
        verify_batch(&cert, &wrong),
        Err(BatchError::Commitment { what: "Y", .. })
    ));

    // A batch of one is proven as a matvec (one tile and its root); its Y is that y, as a row.
    let result = &ended["mm-one"];
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    assert_eq!((result.tiles, result.nodes), (1, 1));
    assert_eq!(result.y.as_ref(), Some(&native_one[0]));
    let y_bytes = fleet
        .store
        .get(result.y_key.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    let (shape, values) = starkscale_common::tensor::npy::parse_i32(&y_bytes).unwrap();
    assert_eq!((shape, values), (vec![1, 5], native_one[0].clone()));
    let cert = fleet.certificate(result).await;
    assert!(!BatchCertificate::is_batch(&cert));
    let x_one: Vec<Vec<i8>> = serde_json::from_value(one["x"]["inline"].clone()).unwrap();
    let x_one = Vector::new(Dtype::I8, x_one[0].clone()).unwrap();
    let expect = Expectations {
        a_commitment: None,
        x: Some(&x_one),
        allow_test: true,
        starks_verified: false,
    };
    assert_eq!(verify_certificate(&cert, &expect).unwrap().y, native_one[0]);
    fleet.clean_up(&["mm", "mm-one"]).await;
}

fn digits_model(form: &str) -> String {
    format!(
        "{}/tests/models/digits-{form}.onnx",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// An inference job on the fleet: the digits MLP by path over the whole test split (450 float
/// inputs by path), proven as weights, inputs and layer segments and the inference root; the
/// logits stored by key are the native ones, and the certificate verifies against the model
/// commitment, the quantized inputs and the logits — and not against other logits. The same
/// model uploaded once is then named by its commitment alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_jobs_are_proven_in_segments_and_certified_against_model_inputs_and_logits() {
    use starkscale_cairo::inference::{model_commitment, model_inputs, Inference};
    use starkscale_cairo::inference_certificate::{verify_inference, InferenceExpect};

    let mut fleet = Fleet::new("inference").await;
    let mut results = fleet.client.subscribe_results("#").await.unwrap();
    fleet.coordinator();
    fleet.worker("w1");
    let model_path = digits_model("gemm-qdq-channel");
    let x_path = format!(
        "{}/tests/models/digits-test-x.npy",
        env!("CARGO_MANIFEST_DIR")
    );
    let model_bytes = std::fs::read(&model_path).unwrap();
    let model = starkscale_onnx::from_bytes(&model_bytes).unwrap().model;
    let x = model_inputs(&std::fs::read(&x_path).unwrap(), &model).unwrap();
    let native = Inference::new(&model, &x).unwrap();
    let commitment = model_commitment(&model);

    // Uploaded once under its commitment: a second job names the model by that alone, with
    // two of the inputs inline.
    fleet
        .store
        .put(
            &fleet.keys.model(&commitment.to_hex()),
            &model_bytes,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let two: Vec<Vec<i64>> = (0..2)
        .map(|r| (0..64).map(|c| x.get(r, c)).collect())
        .collect();
    let jobs = [
        serde_json::json!({
            "schema_version": 1, "job_id": "inf", "kind": "inference",
            "model": {"path": model_path}, "x": {"path": x_path},
        }),
        serde_json::json!({
            "schema_version": 1, "job_id": "inf-two", "kind": "inference",
            "model": {"commitment": commitment.to_hex()}, "x": {"inline": two},
        }),
    ];
    for job in &jobs {
        fleet
            .publish(&fleet.topology.jobs(), job.to_string().as_bytes())
            .await;
    }
    let mut ended = std::collections::HashMap::new();
    while ended.len() < 2 {
        let result = next_result(&mut results).await;
        ended.insert(result.job_id.clone(), result);
    }

    let result = &ended["inf"];
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    let kinds: Vec<TaskKind> = result.task_timings.iter().map(|t| t.kind).collect();
    // Two layers: each its weights and its layer segments, the inputs, the root.
    assert!(kinds.iter().filter(|&&k| k == TaskKind::Segment).count() >= 3);
    assert!(
        kinds
            .iter()
            .filter(|&&k| k == TaskKind::LayerSegment)
            .count()
            >= 2
    );
    assert_eq!(kinds.last(), Some(&TaskKind::InferRoot));
    assert_eq!((result.tiles + result.nodes), kinds.len());
    let logits_bytes = fleet
        .store
        .get(result.y_key.as_ref().expect("the logits' key"))
        .await
        .unwrap()
        .expect("logits stored");
    let (shape, logits) = starkscale_common::tensor::npy::parse(&logits_bytes, Dtype::I8).unwrap();
    assert_eq!(shape, vec![450, 10]);
    let expected: Vec<i8> = (0..450 * 10)
        .map(|i| i8::try_from(native.logits().get(i / 10, i % 10)).unwrap())
        .collect();
    assert_eq!(logits, expected);
    let cert = fleet.certificate(result).await;
    let logits_rows = Rows::I8 {
        width: 10,
        data: logits.clone(),
    };
    let expect = InferenceExpect {
        model_commitment: Some(&commitment),
        x: Some(&x),
        logits: Some(&logits_rows),
        allow_test: true,
        starks_verified: false,
    };
    let verified = verify_inference(&cert, &expect).unwrap();
    assert_eq!(
        (verified.batch, verified.dims.clone()),
        (450, vec![(32, 64), (10, 32)])
    );
    let mut other = logits_rows.clone();
    if let Rows::I8 { data, .. } = &mut other {
        data[7] = data[7].wrapping_add(1);
    }
    let wrong = InferenceExpect {
        logits: Some(&other),
        ..expect
    };
    assert!(verify_inference(&cert, &wrong).is_err());

    // By commitment: the same model, the first two inputs' logits.
    let result = &ended["inf-two"];
    assert_eq!(result.status, JobStatus::Succeeded, "{:?}", result.error);
    let bytes = fleet
        .store
        .get(result.y_key.as_ref().unwrap())
        .await
        .unwrap()
        .unwrap();
    let (shape, two_logits) = starkscale_common::tensor::npy::parse(&bytes, Dtype::I8).unwrap();
    assert_eq!((shape, two_logits), (vec![2, 10], expected[..20].to_vec()));
    let cert = fleet.certificate(result).await;
    let verified = verify_inference(
        &cert,
        &InferenceExpect {
            model_commitment: Some(&commitment),
            allow_test: true,
            ..InferenceExpect::default()
        },
    )
    .unwrap();
    assert_eq!(verified.batch, 2);
    fleet
        .store
        .delete(&[fleet.keys.model(&commitment.to_hex())])
        .await
        .unwrap();
    fleet.clean_up(&["inf", "inf-two"]).await;
}
