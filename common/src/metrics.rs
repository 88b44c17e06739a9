//! The fleet's Prometheus metrics, all in this module: every name with its type, labels,
//! description and histogram buckets ([`CATALOG`]), the typed functions the coordinator, the
//! workers and the two service clients record through, and the HTTP endpoint that serves them
//! ([`serve_endpoint`]: `/metrics`, `/healthz`, `/readyz`).
//!
//! Names follow `starkscale_<noun>_<unit>[_total]`. Labels come from small fixed sets (task
//! kind, stage, status, queue role, operation), never a job id or a worker name: Prometheus adds
//! `instance` and `job` itself. Histograms have explicit buckets, never summaries, so quantiles
//! aggregate across workers.
//!
//! Until [`install`] runs, recording is a no-op: the embedded mode and in-process tests pay
//! nothing for it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::messages::{JobStatus, TaskKind, TaskOutcome};

pub const JOBS_SUBMITTED: &str = "starkscale_jobs_submitted_total";
pub const JOBS_COMPLETED: &str = "starkscale_jobs_completed_total";
pub const JOBS_RUNNING: &str = "starkscale_jobs_running";
pub const JOB_DURATION: &str = "starkscale_job_duration_seconds";
pub const TASKS_PUBLISHED: &str = "starkscale_tasks_published_total";
pub const TASKS: &str = "starkscale_tasks_total";
pub const TASKS_VERIFIED: &str = "starkscale_tasks_verified_total";
pub const TASK_RETRIES: &str = "starkscale_task_retries_total";
pub const TASKS_IN_FLIGHT: &str = "starkscale_tasks_in_flight";
pub const STAGE_DURATION: &str = "starkscale_stage_duration_seconds";
pub const PROVEN_STEPS: &str = "starkscale_proven_steps_total";
pub const PROVEN_MACS: &str = "starkscale_proven_macs_total";
pub const PROOF_SIZE: &str = "starkscale_proof_size_bytes";
pub const TASK_PEAK_MEMORY: &str = "starkscale_task_peak_memory_bytes";
pub const DEAD_LETTERS: &str = "starkscale_dead_letters_total";
pub const REDIS_OP_DURATION: &str = "starkscale_redis_op_duration_seconds";
pub const AMQP_OP_DURATION: &str = "starkscale_amqp_op_duration_seconds";
pub const SERVICES_CONNECTED: &str = "starkscale_services_connected";
pub const RECONCILE_DURATION: &str = "starkscale_reconcile_duration_seconds";
pub const REDRIVEN: &str = "starkscale_redriven_total";
pub const COORDINATOR_ACTIVE: &str = "starkscale_coordinator_active";

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// The kind of process a metric comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Worker,
}

const COORDINATOR: &[Role] = &[Role::Coordinator];
const WORKER: &[Role] = &[Role::Worker];
const BOTH: &[Role] = &[Role::Coordinator, Role::Worker];

/// Values of the `op` label of [`REDIS_OP_DURATION`].
pub const REDIS_OPS: &[&str] = &[
    "get", "set", "set_many", "set_nx", "hset", "hgetall", "hdel", "ttl", "del", "exists", "lease",
    "strlen", "getrange", "append",
];
/// Values of the `what` label of [`REDRIVEN`]: what the reconcile pass found undone.
pub const REDRIVE_KINDS: &[&str] = &["task", "replan", "finish", "result", "deadline"];
/// Values of the `op` label of [`AMQP_OP_DURATION`].
pub const AMQP_OPS: &[&str] = &["publish", "publish_batch", "ack", "nack"];

/// One metric of the catalog.
#[derive(Debug)]
pub struct MetricSpec {
    pub name: &'static str,
    /// The processes that export it.
    pub roles: &'static [Role],
    pub kind: MetricType,
    /// Label names; their values come from the fixed sets documented on each recording function.
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Upper bounds of the histogram buckets (empty for counters and gauges).
    pub buckets: &'static [f64],
}

/// Stages of a task, from a few milliseconds (store, verify) to minutes (a large tile's proof).
pub const STAGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0,
    20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
];
/// Whole jobs: seconds for a few tiles on a big fleet to hours for a large model on a small one.
pub const JOB_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
/// Round trips to Redis and RabbitMQ: sub-millisecond on loopback, seconds when saturated.
pub const OP_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Proofs: ~1 MB at the default tile, less for reduce nodes and smaller tiles.
pub const PROOF_BUCKETS: &[f64] = &[
    65536.0, 131072.0, 262144.0, 524288.0, 786432.0, 1048576.0, 1310720.0, 1572864.0, 2097152.0,
    4194304.0, 8388608.0, 16777216.0,
];

/// Every metric the fleet exports.
pub const CATALOG: &[MetricSpec] = &[
    MetricSpec {
        name: JOBS_SUBMITTED,
        roles: COORDINATOR,
        kind: MetricType::Counter,
        labels: &[],
        help: "Jobs the coordinator accepted for planning (duplicates and invalid messages excluded).",
        buckets: &[],
    },
    MetricSpec {
        name: JOBS_COMPLETED,
        roles: COORDINATOR,
        kind: MetricType::Counter,
        labels: &["status"],
        help: "Jobs that ended, by final status (succeeded, failed, cancelled); invalid job messages count as failed.",
        buckets: &[],
    },
    MetricSpec {
        name: JOBS_RUNNING,
        roles: COORDINATOR,
        kind: MetricType::Gauge,
        labels: &[],
        help: "Jobs this coordinator holds in flight.",
        buckets: &[],
    },
    MetricSpec {
        name: JOB_DURATION,
        roles: COORDINATOR,
        kind: MetricType::Histogram,
        labels: &["status"],
        help: "Wall time of finished jobs, from receipt to result, by final status.",
        buckets: JOB_BUCKETS,
    },
    MetricSpec {
        name: TASKS_PUBLISHED,
        roles: COORDINATOR,
        kind: MetricType::Counter,
        labels: &["kind"],
        help: "Tasks the coordinator published (first attempts and retries), by kind (map, reduce).",
        buckets: &[],
    },
    MetricSpec {
        name: TASKS,
        roles: WORKER,
        kind: MetricType::Counter,
        labels: &["kind", "outcome"],
        help: "Tasks a worker finished handling, by kind and outcome (proven, failed, retryable, requeued).",
        buckets: &[],
    },
    MetricSpec {
        name: TASKS_VERIFIED,
        roles: COORDINATOR,
        kind: MetricType::Counter,
        labels: &["kind", "verdict"],
        help: "Reported proofs the coordinator checked, by kind and verdict (accepted, rejected).",
        buckets: &[],
    },
    MetricSpec {
        name: TASK_RETRIES,
        roles: COORDINATOR,
        kind: MetricType::Counter,
        labels: &["kind"],
        help: "Tasks published again after a rejected proof or a retryable failure.",
        buckets: &[],
    },
    MetricSpec {
        name: TASKS_IN_FLIGHT,
        roles: WORKER,
        kind: MetricType::Gauge,
        labels: &[],
        help: "Tasks this worker is executing or proving right now.",
        buckets: &[],
    },
    MetricSpec {
        name: STAGE_DURATION,
        roles: BOTH,
        kind: MetricType::Histogram,
        labels: &["stage", "kind"],
        help: "Time per task stage: execute (Cairo run and trace adaptation), prove, store (the proof to Redis) on workers; verify on the coordinator.",
        buckets: STAGE_BUCKETS,
    },
    MetricSpec {
        name: PROVEN_STEPS,
        roles: WORKER,
        kind: MetricType::Counter,
        labels: &["kind"],
        help: "Cairo VM steps of the executions a worker proved.",
        buckets: &[],
    },
    MetricSpec {
        name: PROVEN_MACS,
        roles: WORKER,
        kind: MetricType::Counter,
        labels: &[],
        help: "Matrix multiply-adds (tile rows x columns) a worker proved.",
        buckets: &[],
    },
    MetricSpec {
        name: PROOF_SIZE,
        roles: WORKER,
        kind: MetricType::Histogram,
        labels: &["kind"],
        help: "Size of the proofs a worker stored.",
        buckets: PROOF_BUCKETS,
    },
    MetricSpec {
        name: TASK_PEAK_MEMORY,
        roles: WORKER,
        kind: MetricType::Gauge,
        labels: &[],
        help: "Peak resident memory of this worker's last proven task.",
        buckets: &[],
    },
    MetricSpec {
        name: DEAD_LETTERS,
        roles: BOTH,
        kind: MetricType::Counter,
        labels: &["queue"],
        help: "Messages dead-lettered with a reason, by the queue they came from (jobs, tasks, events).",
        buckets: &[],
    },
    MetricSpec {
        name: REDIS_OP_DURATION,
        roles: BOTH,
        kind: MetricType::Histogram,
        labels: &["op"],
        help: "Redis round trips, by command (get, set, set_many, set_nx, hset, hgetall, hdel, ttl, del, exists, lease).",
        buckets: OP_BUCKETS,
    },
    MetricSpec {
        name: AMQP_OP_DURATION,
        roles: BOTH,
        kind: MetricType::Histogram,
        labels: &["op"],
        help: "RabbitMQ operations, by kind (publish and publish_batch: until the broker confirms; ack; nack).",
        buckets: OP_BUCKETS,
    },
    MetricSpec {
        name: SERVICES_CONNECTED,
        roles: BOTH,
        kind: MetricType::Gauge,
        labels: &[],
        help: "1 while this process is connected to RabbitMQ and Redis, 0 while it reconnects.",
        buckets: &[],
    },
    MetricSpec {
        name: RECONCILE_DURATION,
        roles: COORDINATOR,
        kind: MetricType::Histogram,
        labels: &[],
        help: "One reconcile pass over every open job (at start, after a reconnect, and periodically).",
        buckets: OP_BUCKETS,
    },
    MetricSpec {
        name: REDRIVEN,
        roles: COORDINATOR,
        kind: MetricType::Counter,
        labels: &["what"],
        help: "Work the reconcile pass found undone and did again: a task re-published, a job re-planned after its state was lost, a finish or result re-driven, a job ended by its deadline.",
        buckets: &[],
    },
    MetricSpec {
        name: COORDINATOR_ACTIVE,
        roles: COORDINATOR,
        kind: MetricType::Gauge,
        labels: &[],
        help: "1 while this coordinator holds the lease and serves, 0 while it stands by.",
        buckets: &[],
    },
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("setting up the Prometheus recorder: {0}")]
    Recorder(String),
    #[error("binding the metrics endpoint to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The coordinator's metrics port unless configured otherwise.
pub const COORDINATOR_PORT: u16 = 9464;
/// A worker's metrics port unless configured otherwise (one host running both needs two).
pub const WORKER_PORT: u16 = 9465;

/// `port` on loopback: where a service serves its metrics unless configured otherwise (compose
/// and Kubernetes, whose Prometheus scrapes from elsewhere, set `0.0.0.0`).
pub fn on_loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static CONNECTED: AtomicBool = AtomicBool::new(false);
static BLOCKED: AtomicBool = AtomicBool::new(false);

/// Installs the process-wide Prometheus recorder with the catalog's buckets and descriptions,
/// and registers every series `role` exports at zero (see [`start_at_zero`]). Idempotent;
/// returns the handle that renders the scrape payload.
pub fn install(role: Role) -> Result<PrometheusHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for spec in CATALOG.iter().filter(|s| s.kind == MetricType::Histogram) {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(spec.name.to_string()), spec.buckets)
            .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    for spec in CATALOG {
        let (name, help) = (spec.name, spec.help);
        match spec.kind {
            MetricType::Counter => describe_counter!(name, help),
            MetricType::Gauge => describe_gauge!(name, help),
            MetricType::Histogram => describe_histogram!(name, help),
        }
    }
    start_at_zero(role);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The values a label of `spec` takes in a process of `role`: the small fixed sets that keep
/// the number of series bounded.
pub fn label_values(spec: &MetricSpec, label: &str, role: Role) -> Vec<&'static str> {
    match label {
        "kind" => TaskKind::ALL.map(TaskKind::name).to_vec(),
        "status" => [
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .map(JobStatus::name)
        .to_vec(),
        "outcome" => TaskOutcomeLabel::ALL.map(TaskOutcomeLabel::name).to_vec(),
        "verdict" => vec!["accepted", "rejected"],
        "queue" => QueueRole::ALL.map(QueueRole::name).to_vec(),
        "op" if spec.name == REDIS_OP_DURATION => REDIS_OPS.to_vec(),
        "what" => REDRIVE_KINDS.to_vec(),
        "op" => AMQP_OPS.to_vec(),
        "stage" => match role {
            Role::Coordinator => vec![Stage::Verify.name()],
            Role::Worker => [Stage::Execute, Stage::Prove, Stage::Store]
                .map(Stage::name)
                .to_vec(),
        },
        _ => Vec::new(),
    }
}

/// Registers every series `role` exports, every label combination, at zero. A series that only
/// appeared with its first event would have no earlier sample, so `rate()` and
/// `histogram_quantile()` over a quiet fleet's first job would show nothing.
fn start_at_zero(role: Role) {
    for spec in CATALOG.iter().filter(|s| s.roles.contains(&role)) {
        let mut label_sets: Vec<Vec<metrics::Label>> = vec![Vec::new()];
        for &label in spec.labels {
            label_sets = label_sets
                .into_iter()
                .flat_map(|set| {
                    label_values(spec, label, role)
                        .into_iter()
                        .map(move |value| {
                            let mut set = set.clone();
                            set.push(metrics::Label::new(label, value));
                            set
                        })
                })
                .collect();
        }
        for labels in label_sets {
            match spec.kind {
                MetricType::Counter => counter!(spec.name, labels).absolute(0),
                MetricType::Gauge => gauge!(spec.name, labels).set(0.0),
                MetricType::Histogram => drop(histogram!(spec.name, labels)),
            }
        }
    }
}

/// Serves `/metrics` (the Prometheus text format), `/healthz` (200 while the process runs) and
/// `/readyz` (200 only while connected to RabbitMQ and Redis) on `addr` until the runtime stops;
/// port 0 picks a free port. Returns the bound address. Histogram upkeep runs alongside.
pub async fn serve_endpoint(
    addr: SocketAddr,
    handle: PrometheusHandle,
) -> Result<SocketAddr, MetricsError> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = handle.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|| async {
                if CONNECTED.load(Ordering::Relaxed) && !BLOCKED.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n")
                } else {
                    let why = if BLOCKED.load(Ordering::Relaxed) {
                        "RabbitMQ blocks publishing (resource alarm)\n"
                    } else {
                        "connecting to RabbitMQ and Redis\n"
                    };
                    (StatusCode::SERVICE_UNAVAILABLE, why)
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

/// How a worker finished with a task (the `outcome` label of [`TASKS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcomeLabel {
    /// Proven and reported.
    Proven,
    /// Reported as impossible to prove (bad input, step limit, inputs gone).
    Failed,
    /// Reported as failed but worth another attempt (deadline).
    Retryable,
    /// Handed back to the queue unfinished (a store or broker error).
    Requeued,
}

impl TaskOutcomeLabel {
    /// How a reported outcome counts.
    pub fn of(outcome: &TaskOutcome) -> TaskOutcomeLabel {
        match outcome {
            TaskOutcome::Proven { .. } => TaskOutcomeLabel::Proven,
            TaskOutcome::Failed {
                permanent: true, ..
            } => TaskOutcomeLabel::Failed,
            TaskOutcome::Failed { .. } | TaskOutcome::InputMissing { .. } => {
                TaskOutcomeLabel::Retryable
            }
        }
    }

    pub const ALL: [TaskOutcomeLabel; 4] = [
        TaskOutcomeLabel::Proven,
        TaskOutcomeLabel::Failed,
        TaskOutcomeLabel::Retryable,
        TaskOutcomeLabel::Requeued,
    ];
    pub fn name(self) -> &'static str {
        match self {
            TaskOutcomeLabel::Proven => "proven",
            TaskOutcomeLabel::Failed => "failed",
            TaskOutcomeLabel::Retryable => "retryable",
            TaskOutcomeLabel::Requeued => "requeued",
        }
    }
}

/// Which of the fleet's queues a message was dead-lettered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    Jobs,
    Tasks,
    Events,
    Other,
}

impl QueueRole {
    pub const ALL: [QueueRole; 4] = [
        QueueRole::Jobs,
        QueueRole::Tasks,
        QueueRole::Events,
        QueueRole::Other,
    ];
    /// The role of a queue named `<prefix>.<role>`.
    pub fn of(queue: &str) -> QueueRole {
        match queue.rsplit('.').next() {
            Some("jobs") => QueueRole::Jobs,
            Some("tasks") => QueueRole::Tasks,
            Some("events") => QueueRole::Events,
            _ => QueueRole::Other,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            QueueRole::Jobs => "jobs",
            QueueRole::Tasks => "tasks",
            QueueRole::Events => "events",
            QueueRole::Other => "other",
        }
    }
}

/// Stages of a task (the `stage` label of [`STAGE_DURATION`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Execute,
    Prove,
    Store,
    Verify,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Execute => "execute",
            Stage::Prove => "prove",
            Stage::Store => "store",
            Stage::Verify => "verify",
        }
    }
}

// Coordinator.

/// A job was claimed and is being planned.
pub fn job_submitted() {
    counter!(JOBS_SUBMITTED).increment(1);
}

/// A job ended with `status`, after `seconds` when it had started (a job refused before
/// planning has no duration).
pub fn job_completed(status: JobStatus, seconds: Option<f64>) {
    counter!(JOBS_COMPLETED, "status" => status.name()).increment(1);
    if let Some(seconds) = seconds {
        histogram!(JOB_DURATION, "status" => status.name()).record(seconds);
    }
}

/// The coordinator now holds `jobs` in flight.
pub fn jobs_running(jobs: usize) {
    gauge!(JOBS_RUNNING).set(jobs as f64);
}

/// `count` tasks of `kind` were published.
pub fn tasks_published(kind: TaskKind, count: usize) {
    counter!(TASKS_PUBLISHED, "kind" => kind.name()).increment(count as u64);
}

/// A reported proof was accepted or rejected (its verification time goes to [`stage`]).
pub fn task_verified(kind: TaskKind, accepted: bool) {
    let verdict = if accepted { "accepted" } else { "rejected" };
    counter!(TASKS_VERIFIED, "kind" => kind.name(), "verdict" => verdict).increment(1);
}

/// A task was published again.
pub fn task_retried(kind: TaskKind) {
    counter!(TASK_RETRIES, "kind" => kind.name()).increment(1);
}

/// One reconcile pass took `elapsed`.
pub fn reconciled(elapsed: Duration) {
    histogram!(RECONCILE_DURATION).record(elapsed.as_secs_f64());
}

/// The reconcile pass did `what` (one of [`REDRIVE_KINDS`]) again.
pub fn redriven(what: &'static str, count: usize) {
    counter!(REDRIVEN, "what" => what).increment(count as u64);
}

/// Whether this coordinator is the active one.
pub fn set_active(active: bool) {
    gauge!(COORDINATOR_ACTIVE).set(if active { 1.0 } else { 0.0 });
}

// Workers.

/// Marks one task in hand until the guard drops.
pub fn task_in_flight() -> InFlight {
    gauge!(TASKS_IN_FLIGHT).increment(1.0);
    InFlight(())
}

/// A task in hand; see [`task_in_flight`].
#[derive(Debug)]
pub struct InFlight(());

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!(TASKS_IN_FLIGHT).decrement(1.0);
    }
}

/// A worker finished handling a task of `kind`.
pub fn task_handled(kind: TaskKind, outcome: TaskOutcomeLabel) {
    counter!(TASKS, "kind" => kind.name(), "outcome" => outcome.name()).increment(1);
}

/// A stage of a task of `kind` took `seconds`.
pub fn stage(kind: TaskKind, stage: Stage, seconds: f64) {
    histogram!(STAGE_DURATION, "stage" => stage.name(), "kind" => kind.name()).record(seconds);
}

/// What one proven task produced: its steps, multiply-adds (0 for reduce nodes), proof size and
/// the worker's peak memory while proving it.
pub fn task_proven(kind: TaskKind, steps: usize, macs: u64, proof_bytes: usize, peak_rss: u64) {
    counter!(PROVEN_STEPS, "kind" => kind.name()).increment(steps as u64);
    counter!(PROVEN_MACS).increment(macs);
    histogram!(PROOF_SIZE, "kind" => kind.name()).record(proof_bytes as f64);
    gauge!(TASK_PEAK_MEMORY).set(peak_rss as f64);
}

// Both.

/// A message from `queue` was dead-lettered.
pub fn dead_lettered(queue: &str) {
    counter!(DEAD_LETTERS, "queue" => QueueRole::of(queue).name()).increment(1);
}

/// A Redis command (`op` from the fixed set in [`REDIS_OP_DURATION`]'s description) took
/// `elapsed`.
pub fn redis_op(op: &'static str, elapsed: Duration) {
    histogram!(REDIS_OP_DURATION, "op" => op).record(elapsed.as_secs_f64());
}

/// A RabbitMQ operation (`publish`, `publish_batch`, `ack`, `nack`) took `elapsed`.
pub fn amqp_op(op: &'static str, elapsed: Duration) {
    histogram!(AMQP_OP_DURATION, "op" => op).record(elapsed.as_secs_f64());
}

/// Whether the process holds working connections to RabbitMQ and Redis (`/readyz`).
pub fn set_connected(connected: bool) {
    CONNECTED.store(connected, Ordering::Relaxed);
    gauge!(SERVICES_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

/// Whether RabbitMQ is blocking this process's publishers (a resource alarm): `/readyz` says
/// not ready meanwhile.
pub fn set_blocked(blocked: bool) {
    BLOCKED.store(blocked, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_histograms_have_increasing_buckets() {
        let mut seen = std::collections::HashSet::new();
        for spec in CATALOG {
            assert!(seen.insert(spec.name), "{} listed twice", spec.name);
            assert!(spec.name.starts_with("starkscale_"), "{}", spec.name);
            assert!(
                spec.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                spec.name
            );
            assert_eq!(
                spec.name.ends_with("_total"),
                spec.kind == MetricType::Counter,
                "{}: counters and only counters end in _total",
                spec.name
            );
            assert!(!spec.labels.contains(&"job_id") && !spec.labels.contains(&"worker"));
            assert!(!spec.help.is_empty());
            assert!(!spec.roles.is_empty());
            for label in spec.labels {
                for role in spec.roles {
                    assert!(
                        !label_values(spec, label, *role).is_empty(),
                        "{}: no values for {label}",
                        spec.name
                    );
                }
            }
            match spec.kind {
                MetricType::Histogram => {
                    assert!(
                        spec.name.ends_with("_seconds") || spec.name.ends_with("_bytes"),
                        "{}: a histogram names its unit",
                        spec.name
                    );
                    assert!(
                        spec.buckets.windows(2).all(|w| w[0] < w[1]),
                        "{}",
                        spec.name
                    );
                }
                _ => assert!(spec.buckets.is_empty()),
            }
        }
    }

    #[test]
    fn queue_roles_come_from_the_last_name_part() {
        assert_eq!(QueueRole::of("starkscale.jobs"), QueueRole::Jobs);
        assert_eq!(QueueRole::of("test-x-1.tasks"), QueueRole::Tasks);
        assert_eq!(QueueRole::of("a.b.events"), QueueRole::Events);
        assert_eq!(QueueRole::of("starkscale.results.log"), QueueRole::Other);
    }
}
