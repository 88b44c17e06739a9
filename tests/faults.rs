//! Fault injection: every job ends — with the right y, or with a failed result naming the reason —
//! whatever stops, restarts or loses its data. Coordinator and workers run as real processes;
//! scenarios that restart or flush a service get their own Redis (`support::faults`), never the
//! shared one other tests use at the same moment. Crash points (`STARKSCALE_CRASH_AT`) stop a
//! process exactly between two writes.
//!
//! Pass criterion of every scenario: each job it submits ends (a stored and published result)
//! within its time limit, succeeded jobs state the natively computed y, and failed ones name the
//! cause.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use starkscale_common::broker::{AmqpBroker, Broker, Consumer, Headers, Topology};
use starkscale_common::config::{unique_prefix, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};
use starkscale_common::messages::{JobProgress, JobResult, JobStatus, Keys};
use starkscale_common::store::{RedisStore, Store};
use support::faults::{Proxy, SpareRabbit, SpareRedis};
use support::{native_y, Service};

/// One scenario's fleet: its prefix, its services' URLs, its processes and their logs.
struct Rig {
    prefix: String,
    redis_url: String,
    logs: tempfile::TempDir,
    client: AmqpBroker,
    store: RedisStore,
    keys: Keys,
    /// Settings every process of the scenario gets (more per process).
    env: Vec<(&'static str, String)>,
}

impl Rig {
    async fn new(label: &str, amqp_url: &str, redis_url: &str) -> Rig {
        let prefix = unique_prefix(label);
        let topology = Topology::new(prefix.clone());
        let env = vec![
            ("STARKSCALE_AMQP_URL", amqp_url.to_string()),
            ("STARKSCALE_REDIS_URL", redis_url.to_string()),
            ("STARKSCALE_ALLOW_TEST_PROFILE", "true".into()),
            ("STARKSCALE_PROFILE", "test".into()),
            ("STARKSCALE_RESULT_TTL", "900".into()),
            ("STARKSCALE_RECONCILE_INTERVAL", "1".into()),
            ("STARKSCALE_LEASE", "3".into()),
            ("STARKSCALE_MAX_DEAD_LETTERS", "1".into()),
            ("STARKSCALE_DEAD_LETTER_BACKOFF_MS", "200".into()),
            ("STARKSCALE_STORE_PATIENCE", "60".into()),
            (
                "RUST_LOG",
                "warn,starkscale_coordinator=info,starkscale_worker=info".into(),
            ),
        ];
        Rig {
            client: AmqpBroker::connect(amqp_url, topology).await.unwrap(),
            store: RedisStore::connect(redis_url).await.unwrap(),
            keys: Keys::new(prefix.clone()),
            logs: tempfile::tempdir().unwrap(),
            redis_url: redis_url.into(),
            prefix,
            env,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.logs.path().join(format!("{name}.log"))
    }

    fn start(&self, role: &str, name: &str, extra: &[(&'static str, String)]) -> Service {
        let mut env = self.env.clone();
        env.extend(extra.iter().cloned());
        if role == "worker" {
            env.push(("STARKSCALE_WORKER_NAME", name.to_string()));
        }
        Service::start_logged(&[role], &self.prefix, &env, &self.log(name))
    }

    fn coordinator(&self, name: &str, extra: &[(&'static str, String)]) -> Service {
        self.start("coordinator", name, extra)
    }

    fn worker(&self, name: &str, extra: &[(&'static str, String)]) -> Service {
        self.start("worker", name, extra)
    }

    /// Every log of the scenario, for a failing assertion.
    fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all.push_str(&format!("--- {}\n", path.display()));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    async fn submit(&self, job: &serde_json::Value) {
        let jobs = self.client.topology().jobs();
        self.client
            .publish(&jobs, job.to_string().as_bytes(), &Headers::new(), None)
            .await
            .unwrap();
    }

    async fn progress(&self, job: &str) -> Option<JobProgress> {
        let bytes = self.store.get(&self.keys.progress(job)).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// The job's stored result, once it ended; panics with the logs after `limit`.
    async fn result(&self, job: &str, limit: Duration) -> JobResult {
        let started = Instant::now();
        loop {
            if let Ok(Some(bytes)) = self.store.get(&self.keys.result(job)).await {
                return serde_json::from_slice(&bytes).unwrap();
            }
            assert!(
                started.elapsed() < limit,
                "job {job} did not end within {limit:?}; progress {:?}\n{}",
                self.progress(job).await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `done` holds of the job's progress.
    async fn wait_progress(&self, job: &str, limit: Duration, done: impl Fn(&JobProgress) -> bool) {
        let started = Instant::now();
        loop {
            if self.progress(job).await.is_some_and(|p| done(&p)) {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "job {job} did not get there within {limit:?}; progress {:?}\n{}",
                self.progress(job).await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn succeeded_with(&self, job: &str, y: &serde_json::Value, limit: Duration) {
        let result = self.result(job, limit).await;
        assert_eq!(
            result.status,
            JobStatus::Succeeded,
            "{result:?}\n{}",
            self.logs()
        );
        assert_eq!(&serde_json::json!(result.y), y, "job {job}");
    }

    async fn clean_up(self) {
        let _ = self.client.delete_topology().await;
    }
}

/// A small random job (`rows` × 16, tiles of two rows) and its native y.
fn small_job(id: &str, rows: usize, seed: u64) -> (serde_json::Value, serde_json::Value) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a: Vec<Vec<i64>> = (0..rows)
        .map(|_| (0..16).map(|_| rng.gen_range(-128..=127)).collect())
        .collect();
    let x: Vec<i64> = (0..16).map(|_| rng.gen_range(-128..=127)).collect();
    let job = serde_json::json!({
        "schema_version": 1, "job_id": id, "kind": "matvec", "dtype": "i8",
        "a": {"inline": a}, "x": {"inline": x}, "tile_rows": 2,
    });
    let y = native_y(&job);
    (job, y)
}

/// Waits for a process to exit by itself (a crash point), within `limit`.
async fn crashed(service: &mut Service, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if service.exited() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

const LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_between_any_two_writes_leaves_every_job_to_end_right() {
    let rig = Rig::new("crash", DEFAULT_AMQP_URL, DEFAULT_REDIS_URL).await;
    let _worker = rig.worker("w1", &[]);
    let points = [
        "intake:before-claim",
        "plan:inputs-stored",
        "publish:before-record",
        "accept:before-advance",
        "finish:decided",
        "finish:stored",
        "finish:published",
    ];
    for (n, point) in points.iter().enumerate() {
        let id = format!("crash-{n}");
        // One tile and the root: two proofs per job.
        let (job, y) = small_job(&id, 2, n as u64);
        let mut doomed = rig.coordinator(
            &format!("coordinator-{n}-crashing"),
            &[("STARKSCALE_CRASH_AT", point.to_string())],
        );
        rig.submit(&job).await;
        assert!(
            crashed(&mut doomed, LIMIT).await,
            "the coordinator never reached {point}\n{}",
            rig.logs()
        );
        let successor = rig.coordinator(&format!("coordinator-{n}"), &[]);
        rig.succeeded_with(&id, &y, LIMIT).await;
        rig.wait_progress(&id, LIMIT, |p| p.status.is_final()).await;
        // What the stopped coordinator left is cleaned up: the job leaves the open-jobs index
        // (once the successor holds the lease and has reconciled).
        let started = Instant::now();
        while rig
            .store
            .fields(&rig.keys.open_jobs())
            .await
            .unwrap()
            .iter()
            .any(|(job, _)| job == &id)
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{id} still open after {point}\n{}",
                rig.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // SIGTERM drains the coordinator: exit 0.
        let status = successor.terminate(Duration::from_secs(30));
        assert!(status.success(), "coordinator exit after SIGTERM: {status}");
    }
    // The certificate of a job whose coordinator died mid-finish verifies.
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("crash.cert");
    let fetched = support::starkscale_with(
        &[
            "result",
            "crash-5",
            "--allow-test-profile",
            "--out",
            cert.to_str().unwrap(),
        ],
        &rig.prefix,
        &[],
    );
    assert!(fetched.status.success(), "{fetched:?}");
    let verified = support::starkscale_with(
        &["verify", cert.to_str().unwrap(), "--allow-test-profile"],
        &rig.prefix,
        &[],
    );
    assert!(verified.status.success(), "{verified:?}");
    rig.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_everything_mid_job_replans_from_the_message_or_fails_clearly() {
    let redis = SpareRedis::start(false);
    let rig = Rig::new("flush", DEFAULT_AMQP_URL, &redis.url()).await;
    let mut results = rig.client.subscribe_results("#").await.unwrap();
    let _coordinator = rig.coordinator("coordinator", &[]);
    let _worker = rig.worker("w1", &[]);
    let (inline, y) = small_job("flush-inline", 4, 1);
    // The other job's A is uploaded to Redis by key: it goes with the flush.
    let (by_key, _) = small_job("flush-by-key", 2, 2);
    let a_key = format!("{}:input:a-by-key", rig.prefix);
    let a_json = serde_json::to_vec(&by_key["a"]["inline"]).unwrap();
    rig.store
        .put(&a_key, &a_json, Duration::from_secs(600))
        .await
        .unwrap();
    let mut by_key = by_key;
    by_key["a"] = serde_json::json!({ "redis_key": a_key });
    rig.submit(&inline).await;
    rig.submit(&by_key).await;
    rig.wait_progress("flush-inline", LIMIT, |p| p.proven >= 1)
        .await;
    rig.wait_progress("flush-by-key", LIMIT, |p| p.status == JobStatus::Running)
        .await;
    redis.flushall();
    rig.succeeded_with("flush-inline", &y, LIMIT).await;
    let lost = rig.result("flush-by-key", LIMIT).await;
    assert_eq!(lost.status, JobStatus::Failed, "{lost:?}");
    let error = lost.error.unwrap_or_default();
    assert!(
        error.contains("lost the job's state") && error.contains("no input at Redis key"),
        "{error}"
    );
    // Both results reached a client listening on the results exchange.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = next(&mut results).await;
        let result: JobResult = serde_json::from_slice(&delivery.body).unwrap();
        delivery.ack().await.unwrap();
        if !seen.contains(&result.job_id) {
            seen.push(result.job_id);
        }
    }
    seen.sort();
    assert_eq!(seen, ["flush-by-key", "flush-inline"]);
    rig.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_with_or_without_its_data_mid_job_still_ends_every_job() {
    for aof in [true, false] {
        let mut redis = SpareRedis::start(aof);
        let label = if aof { "restart-aof" } else { "restart-bare" };
        let rig = Rig::new(label, DEFAULT_AMQP_URL, &redis.url()).await;
        let _coordinator = rig.coordinator("coordinator", &[]);
        let _worker = rig.worker("w1", &[]);
        let (job, y) = small_job(label, 4, 3);
        rig.submit(&job).await;
        rig.wait_progress(label, LIMIT, |p| p.proven >= 1).await;
        // Give the append-only file its second to reach the disk, as `everysec` promises.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        redis.restart();
        rig.succeeded_with(label, &y, LIMIT).await;
        rig.clean_up().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_that_kills_every_worker_fails_its_job_and_others_finish() {
    let rig = Rig::new("poison", DEFAULT_AMQP_URL, DEFAULT_REDIS_URL).await;
    let _coordinator = rig.coordinator("coordinator", &[]);
    let poison = ("STARKSCALE_CRASH_AT", "worker:task:poison:0".to_string());
    let (bad, _) = small_job("poison", 4, 4);
    let (good, y) = small_job("healthy", 2, 5);
    rig.submit(&bad).await;
    rig.submit(&good).await;
    // A supervisor, as compose or Kubernetes would be: a worker that dies is started again.
    let started = Instant::now();
    let mut deaths = 0;
    let mut worker = rig.worker("w-0", std::slice::from_ref(&poison));
    loop {
        let done = |r: Option<Vec<u8>>| r.is_some();
        let bad_done = done(rig.store.get(&rig.keys.result("poison")).await.unwrap());
        let good_done = done(rig.store.get(&rig.keys.result("healthy")).await.unwrap());
        if bad_done && good_done {
            break;
        }
        assert!(started.elapsed() < LIMIT * 2, "{}", rig.logs());
        if worker.exited() {
            deaths += 1;
            worker = rig.worker(&format!("w-{deaths}"), std::slice::from_ref(&poison));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.succeeded_with("healthy", &y, LIMIT).await;
    let failed = rig.result("poison", LIMIT).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("task 0 (map) was dead-lettered 2 times"),
        "{error}\n{}",
        rig.logs()
    );
    // Each dead-lettering took the broker's full delivery limit of worker deaths.
    assert!(deaths >= 10, "{deaths} worker deaths");
    drop(worker);
    rig.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_fails_naming_the_stage_it_stuck_in() {
    let rig = Rig::new("deadline", DEFAULT_AMQP_URL, DEFAULT_REDIS_URL).await;
    // No worker: nothing is ever proven.
    let _coordinator = rig.coordinator("coordinator", &[("STARKSCALE_JOB_DEADLINE", "2".into())]);
    let (job, _) = small_job("late", 4, 6);
    rig.submit(&job).await;
    let result = rig.result("late", Duration::from_secs(60)).await;
    assert_eq!(result.status, JobStatus::Failed);
    assert_eq!(
        result.error.as_deref(),
        Some("deadline of 2 s exceeded while proving map tiles (0 of 2 accepted)")
    );
    rig.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_stands_by_and_takes_over_when_the_first_dies() {
    let rig = Rig::new("standby", DEFAULT_AMQP_URL, DEFAULT_REDIS_URL).await;
    let first = rig.coordinator("coordinator-a", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _second = rig.coordinator("coordinator-b", &[]);
    let _worker = rig.worker("w1", &[]);
    let (one, y1) = small_job("standby-1", 2, 7);
    rig.submit(&one).await;
    rig.succeeded_with("standby-1", &y1, LIMIT).await;
    let b_log = std::fs::read_to_string(rig.log("coordinator-b")).unwrap();
    assert!(b_log.contains("standing by"), "{}", rig.logs());
    assert!(!b_log.contains("holding the coordinator lease"), "{b_log}");
    first.kill();
    let (two, y2) = small_job("standby-2", 2, 8);
    rig.submit(&two).await;
    rig.succeeded_with("standby-2", &y2, LIMIT).await;
    let b_log = std::fs::read_to_string(rig.log("coordinator-b")).unwrap();
    assert!(b_log.contains("holding the coordinator lease"), "{b_log}");
    rig.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_id_is_answered_from_its_result_and_a_refused_id_can_be_submitted_again() {
    let rig = Rig::new("resubmit", DEFAULT_AMQP_URL, DEFAULT_REDIS_URL).await;
    let _coordinator = rig.coordinator("coordinator", &[]);
    // No worker: the job runs until it is cancelled.
    let (job, _) = small_job("ended", 4, 9);
    rig.submit(&job).await;
    rig.wait_progress("ended", LIMIT, |p| p.status == JobStatus::Running)
        .await;
    let cancel = serde_json::json!({ "cancel": "ended" });
    rig.submit(&cancel).await;
    let cancelled = rig.result("ended", LIMIT).await;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    // The same id again: the stored result is published at once.
    let mut results = rig.client.subscribe_results("ended").await.unwrap();
    rig.submit(&job).await;
    let delivery = next(&mut results).await;
    let again: JobResult = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(again, cancelled);

    // A refused job frees its id: fixed, it runs.
    let (mut bad, _) = small_job("refused", 4, 10);
    bad["x"]["inline"] = serde_json::json!([1, 2, 3]);
    rig.submit(&bad).await;
    let refused = rig.result("refused", LIMIT).await;
    assert_eq!(refused.status, JobStatus::Failed);
    assert!(refused.error.unwrap().contains("shape mismatch"));
    let status = support::starkscale_with(
        &["status", "refused"],
        &rig.prefix,
        &[("STARKSCALE_REDIS_URL", rig.redis_url.clone())],
    );
    assert!(status.status.success(), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("shape mismatch"));
    let (fixed, _) = small_job("refused", 4, 10);
    rig.submit(&fixed).await;
    rig.wait_progress("refused", LIMIT, |p| p.status == JobStatus::Running)
        .await;
    assert_eq!(
        rig.store.get(&rig.keys.result("refused")).await.unwrap(),
        None,
        "the refusal's result is gone once the id runs again"
    );
    rig.submit(&serde_json::json!({ "cancel": "refused" }))
        .await;
    assert_eq!(
        rig.result("refused", LIMIT).await.status,
        JobStatus::Cancelled
    );
    rig.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_a_task_in_hand_loses_nothing() {
    let rig = Rig::new("in-hand", DEFAULT_AMQP_URL, DEFAULT_REDIS_URL).await;
    let _coordinator = rig.coordinator("coordinator", &[]);
    let (job, y) = small_job("in-hand", 4, 11);
    // This worker dies the moment it takes task 1: the task is certainly in its hands.
    let mut doomed = rig.worker(
        "w-doomed",
        &[("STARKSCALE_CRASH_AT", "worker:task:in-hand:1".into())],
    );
    rig.submit(&job).await;
    assert!(crashed(&mut doomed, LIMIT).await, "{}", rig.logs());
    let _worker = rig.worker("w-next", &[]);
    rig.succeeded_with("in-hand", &y, LIMIT).await;
    let result = rig.result("in-hand", LIMIT).await;
    // Task 1 was redelivered, not sent back as a failure: the next worker proved attempt 1.
    let task1 = &result.task_timings[1];
    assert_eq!((task1.attempt, task1.worker.as_str()), (1, "w-next"));
    rig.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_restarting_with_several_jobs_in_flight_ends_every_job() {
    let mut rabbit = tokio::task::spawn_blocking(SpareRabbit::start)
        .await
        .unwrap();
    let rig = Rig::new("rabbit-restart", &rabbit.url(), DEFAULT_REDIS_URL).await;
    let _coordinator = rig.coordinator("coordinator", &[]);
    let _worker = rig.worker("w1", &[]);
    let jobs: Vec<_> = (0..3)
        .map(|n| small_job(&format!("rabbit-{n}"), 2, 20 + n))
        .collect();
    for (job, _) in &jobs {
        rig.submit(job).await;
    }
    rig.wait_progress("rabbit-0", LIMIT, |p| p.proven >= 1)
        .await;
    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.restart();
        rabbit
    })
    .await
    .unwrap();
    for (n, (_, y)) in jobs.iter().enumerate() {
        rig.succeeded_with(&format!("rabbit-{n}"), y, LIMIT).await;
    }
    // The node goes with its data; nothing to clean up there.
    drop(rabbit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_to_rabbitmq_and_redis_cut_past_the_heartbeat_then_restored() {
    let amqp = Proxy::start("127.0.0.1:5672".parse().unwrap());
    let redis = Proxy::start("127.0.0.1:6379".parse().unwrap());
    // A two-second heartbeat: a cut of several seconds is noticed as one.
    let amqp_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=2",
        amqp.port()
    );
    let redis_url = format!("redis://127.0.0.1:{}/", redis.port());
    // The services go through the proxies; the test's own client goes around them.
    let mut rig = Rig::new("cut", DEFAULT_AMQP_URL, DEFAULT_REDIS_URL).await;
    for (name, value) in rig.env.iter_mut() {
        match *name {
            "STARKSCALE_AMQP_URL" => *value = amqp_url.clone(),
            "STARKSCALE_REDIS_URL" => *value = redis_url.clone(),
            _ => {}
        }
    }
    let _coordinator = rig.coordinator("coordinator", &[]);
    let _worker = rig.worker("w1", &[]);
    let (job, y) = small_job("cut", 4, 12);
    rig.submit(&job).await;
    rig.wait_progress("cut", LIMIT, |p| p.proven >= 1).await;
    // Packets stop, connections stay open: only heartbeats and timeouts can tell.
    amqp.stall();
    redis.stall();
    tokio::time::sleep(Duration::from_secs(12)).await;
    amqp.restore();
    redis.restore();
    rig.succeeded_with("cut", &y, LIMIT).await;
    // And a clean cut: every connection reset, new ones refused for a while.
    let (again, y2) = small_job("cut-again", 2, 13);
    rig.submit(&again).await;
    rig.wait_progress("cut-again", LIMIT, |p| p.status == JobStatus::Running)
        .await;
    amqp.cut();
    redis.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    amqp.restore();
    redis.restore();
    rig.succeeded_with("cut-again", &y2, LIMIT).await;
    rig.clean_up().await;
}

/// `GET url` over plain HTTP/1.0: the body.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The sum of a counter's series whose labels include `matching`, from a `/metrics` page.
fn counter_sum(page: &str, name: &str, matching: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l.contains(matching))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_forty_jobs_from_four_clients_through_a_worker_kill_and_a_rabbitmq_restart() {
    let python =
        tokio::task::spawn_blocking(|| support::python_venv("pika-venv", "pika", &["pika==1.3.2"]))
            .await
            .unwrap();
    let mut rabbit = tokio::task::spawn_blocking(SpareRabbit::start)
        .await
        .unwrap();
    let rig = Rig::new("soak", &rabbit.url(), DEFAULT_REDIS_URL).await;
    let _coordinator = rig.coordinator("coordinator", &[]);
    let w1 = rig.worker("w1", &[]);
    let _w2 = rig.worker("w2", &[]);
    let files = tempfile::tempdir().unwrap();
    // Forty jobs from four clients: twenty to prove (one tile and the root each), ten hostile,
    // ten cancelled right after they are submitted.
    let mut expected: Vec<(String, Option<serde_json::Value>)> = Vec::new();
    let mut file_of = |id: String, seed: u64| {
        let (job, y) = small_job(&id, 2, seed);
        let path = files.path().join(format!("{id}.json"));
        std::fs::write(&path, job.to_string()).unwrap();
        expected.push((id, Some(y)));
        path
    };
    let cli: Vec<PathBuf> = (0..5)
        .map(|n| file_of(format!("soak-cli-{n}"), 100 + n))
        .collect();
    let wait: Vec<PathBuf> = (0..5)
        .map(|n| file_of(format!("soak-wait-{n}"), 200 + n))
        .collect();
    let pika: Vec<PathBuf> = (0..5)
        .map(|n| file_of(format!("soak-pika-{n}"), 300 + n))
        .collect();
    let env = [
        ("STARKSCALE_AMQP_URL", rig.env[0].1.clone()),
        ("STARKSCALE_REDIS_URL", rig.redis_url.clone()),
    ];
    let run_all = |commands: Vec<std::process::Command>| {
        std::thread::spawn(move || {
            let children: Vec<_> = commands
                .into_iter()
                .map(|mut c| c.spawn().unwrap())
                .collect();
            children.into_iter().for_each(|mut c| drop(c.wait()));
        })
    };
    let starkscale = |args: Vec<String>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_starkscale"));
        command
            .args(args)
            .env("STARKSCALE_PREFIX", &rig.prefix)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    // Client 1: the CLI, fire and forget. Client 2: the CLI, waiting for each result.
    let client1 = run_all(
        cli.iter()
            .map(|p| starkscale(vec!["submit".into(), path(p)]))
            .collect(),
    );
    let client2 = run_all(
        wait.iter()
            .map(|p| {
                starkscale(vec![
                    "submit".into(),
                    path(p),
                    "--wait".into(),
                    "--allow-test-profile".into(),
                ])
            })
            .collect(),
    );
    // Client 3: pika, waiting for each result.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika_client.py");
    let client3 = run_all(
        pika.iter()
            .map(|p| {
                let mut command = std::process::Command::new(&python);
                command
                    .args([script, &rig.prefix, &path(p), "900"])
                    .env("STARKSCALE_AMQP_URL", &env[0].1)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                command
            })
            .collect(),
    );
    // Client 4: this test: five jobs to prove, ten hostile ones, ten it cancels.
    for n in 0..5 {
        let (job, y) = small_job(&format!("soak-rust-{n}"), 2, 600 + n);
        rig.submit(&job).await;
        expected.push((format!("soak-rust-{n}"), Some(y)));
    }
    for n in 0..10 {
        let (mut bad, _) = small_job(&format!("soak-bad-{n}"), 2, 400 + n);
        bad["x"]["inline"] = serde_json::json!([1, 2]);
        rig.submit(&bad).await;
        let id = format!("soak-cancel-{n}");
        let (doomed, _) = small_job(&id, 2, 500 + n);
        rig.submit(&doomed).await;
        rig.submit(&serde_json::json!({ "cancel": id })).await;
    }
    // Mid-way: a worker is killed while jobs are being proven, and RabbitMQ restarts a little
    // later.
    rig.wait_progress("soak-cli-0", LIMIT, |p| p.proven >= 1)
        .await;
    w1.kill();
    let _w3 = rig.worker("w3", &[]);
    tokio::time::sleep(Duration::from_secs(15)).await;
    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.restart();
        rabbit
    })
    .await
    .unwrap();

    let limit = Duration::from_secs(900);
    let mut proven = 0;
    for (id, y) in &expected {
        let result = rig.result(id, limit).await;
        assert_eq!(result.status, JobStatus::Succeeded, "{result:?}");
        assert_eq!(&serde_json::json!(result.y), y.as_ref().unwrap(), "{id}");
        proven += rig.progress(id).await.unwrap().proven;
    }
    for n in 0..10 {
        let bad = rig.result(&format!("soak-bad-{n}"), limit).await;
        assert_eq!(bad.status, JobStatus::Failed);
        assert!(bad.error.unwrap_or_default().contains("shape mismatch"));
        let id = format!("soak-cancel-{n}");
        let cancelled = rig.result(&id, limit).await;
        assert!(
            matches!(
                cancelled.status,
                JobStatus::Cancelled | JobStatus::Succeeded
            ),
            "{cancelled:?}"
        );
        proven += rig.progress(&id).await.unwrap().proven;
    }
    // Nothing stuck: no job is left open.
    let open = rig.store.fields(&rig.keys.open_jobs()).await.unwrap();
    assert!(open.is_empty(), "{open:?}");
    // No task accepted twice: the coordinator's acceptances are exactly the tasks proven.
    let log = std::fs::read_to_string(rig.log("coordinator")).unwrap();
    let url = log
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/metrics"))
        .unwrap()
        .to_string();
    let page = tokio::task::spawn_blocking(move || http_get(&url))
        .await
        .unwrap();
    let accepted = counter_sum(
        &page,
        "starkscale_tasks_verified_total",
        "verdict=\"accepted\"",
    );
    assert_eq!(accepted as usize, proven, "acceptances vs tasks proven");
    for client in [client1, client2, client3] {
        client.join().unwrap();
    }
    drop(rabbit);
}

async fn next(consumer: &mut Consumer) -> starkscale_common::broker::Delivery {
    tokio::time::timeout(Duration::from_secs(120), consumer.next())
        .await
        .expect("a delivery within 120 s")
        .expect("delivery ok")
}
