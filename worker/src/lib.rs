//! The stateless worker: one consumer loop over the tasks queue.
//!
//! [`serve`] is generic over the [`Broker`] and [`Store`]: the fleet runs it over RabbitMQ and
//! Redis ([`run`], which reconnects when either goes away), the embedded mode over their
//! in-process twins. For each delivery: parse the [`TaskMsg`] → fetch only that task's input →
//! run its program (map kernel, reduce, batch segment, batch root, layer segment or inference
//! root) and prove it on a blocking
//! thread (so the AMQP connection keeps its
//! heartbeats during a proof) → store the proof under its deterministic key with a TTL →
//! publish the [`TaskEvent`] and wait for its confirm → ack. Only then is the task gone from the
//! queue: a worker killed at any point loses nothing, and a redelivered task rewrites the same key.
//!
//! Failures: a malformed task is rejected (the broker dead-letters it to the expired queue,
//! where the coordinator parks it with its reason); a tile that cannot be proven
//! (bad input, step limit) is reported as a permanent failure and acked; a task whose input is
//! not in the store (its job ended, or the store lost it) is reported as such, and the
//! coordinator decides; a proof that overruns the task deadline is reported as a retryable
//! failure, and acked, before the broker's consumer timeout could take the task away. A store
//! that is unavailable is waited for with backoff (up to `--store-patience`) with the task in
//! hand, so that a short outage does not use up the task's deliveries; only then, or when the
//! broker goes away, is the task requeued.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starkscale_cairo::batch::{run_root, run_segment, RootInput, SegmentInput};
use starkscale_cairo::inference::{run_infer_root, InferRootInput};
use starkscale_cairo::layer_segment::{run_layer_segment, LayerSegmentInput};
use starkscale_cairo::run::{run_reduce, DEFAULT_MAX_STEPS};
use starkscale_cairo::tree::ReduceInput;
use starkscale_cairo::{run_map, KernelError, Profile, Prover, ProverInput, RunStats, TileInput};
use starkscale_common::access::Role;
use starkscale_common::broker::{Broker, BrokerError, Delivery, Headers};
use starkscale_common::config::FleetConfig;
use starkscale_common::messages::{Keys, TaskEvent, TaskKind, TaskMsg, TaskOutcome, TileInputBlob};
use starkscale_common::metrics::{self, Stage, TaskOutcomeLabel};
use starkscale_common::rss;
use starkscale_common::store::{Store, StoreError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Worker settings; every flag also reads a `STARKSCALE_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub fleet: FleetConfig,
    /// Security profile of the proofs (production or test).
    #[arg(long, env = "STARKSCALE_PROFILE", default_value = "production")]
    pub profile: String,
    /// Name reported in events (default: worker-<process id>).
    #[arg(long, env = "STARKSCALE_WORKER_NAME")]
    pub name: Option<String>,
    /// How long a stored proof lives, in seconds.
    #[arg(long, env = "STARKSCALE_RESULT_TTL", default_value_t = 24 * 3600)]
    pub result_ttl_s: u64,
    /// Cairo step budget per task.
    #[arg(long, env = "STARKSCALE_MAX_STEPS", default_value_t = DEFAULT_MAX_STEPS)]
    pub max_steps: usize,
    /// Seconds a task may take before it is reported as failed; keep it below RabbitMQ's
    /// `consumer_timeout` (30 minutes by default), which would otherwise close the channel.
    #[arg(long, env = "STARKSCALE_TASK_DEADLINE", default_value_t = 20 * 60)]
    pub task_deadline_s: u64,
    /// Seconds to keep retrying an unavailable store, with the task in hand, before handing the
    /// task back to the queue.
    #[arg(long, env = "STARKSCALE_STORE_PATIENCE", default_value_t = 120)]
    pub store_patience_s: u64,
    /// Where `starkscale worker` serves /metrics, /healthz and /readyz; port 0 picks a free one
    /// (several workers on one host each need their own).
    #[arg(
        long,
        env = "STARKSCALE_METRICS_ADDR",
        default_value_t = metrics::on_loopback(metrics::WORKER_PORT)
    )]
    pub metrics_addr: SocketAddr,
}

impl WorkerConfig {
    /// Defaults for a fleet at `fleet`, proving at `profile`.
    pub fn new(fleet: FleetConfig, profile: Profile) -> WorkerConfig {
        WorkerConfig {
            fleet,
            profile: profile.name().to_string(),
            name: None,
            result_ttl_s: 24 * 3600,
            max_steps: DEFAULT_MAX_STEPS,
            task_deadline_s: 20 * 60,
            store_patience_s: 120,
            metrics_addr: metrics::on_loopback(metrics::WORKER_PORT),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("unknown profile {0:?}")]
    Profile(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Consumes tasks from RabbitMQ until `shutdown` is cancelled, then finishes the task in hand
/// and returns. A lost connection is not fatal: the task in hand returns to the queue and the
/// worker reconnects with backoff.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let prover = Arc::new(prover(&config).await?);
    config
        .fleet
        .serve(Role::Worker, &shutdown, |broker, store| {
            serve_with(broker, store, &config, prover.clone(), shutdown.clone())
        })
        .await;
    Ok(())
}

/// Twiddles and the preprocessed commitment: once per process, off the runtime.
async fn prover(config: &WorkerConfig) -> Result<Prover, WorkerError> {
    let profile = Profile::parse(&config.profile)
        .ok_or_else(|| WorkerError::Profile(config.profile.clone()))?;
    tokio::task::spawn_blocking(move || Prover::new(profile))
        .await
        .map_err(|e| WorkerError::Profile(format!("prover set-up panicked: {e}")))
}

/// Consumes tasks from any broker and store until `shutdown` is cancelled.
pub async fn serve<B: Broker, S: Store>(
    broker: B,
    store: S,
    config: &WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let prover = Arc::new(prover(config).await?);
    serve_with(broker, store, config, prover, shutdown).await
}

async fn serve_with<B: Broker, S: Store>(
    broker: B,
    store: S,
    config: &WorkerConfig,
    prover: Arc<Prover>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let worker = Worker {
        keys: Keys::new(config.fleet.prefix.clone()),
        prover,
        ttl: Duration::from_secs(config.result_ttl_s),
        max_steps: config.max_steps,
        deadline: Duration::from_secs(config.task_deadline_s.max(1)),
        store_patience: Duration::from_secs(config.store_patience_s),
        name,
        broker,
        store,
    };
    let tasks = worker.broker.topology().tasks();
    // Prefetch 1: one proof uses every core, and a second reserved task would only wait here.
    let mut consumer = worker.broker.consume(&tasks, 1, &worker.name).await?;
    info!(worker = %worker.name, queue = %tasks, "consuming tasks");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            delivery = consumer.next() => delivery?,
        };
        // Once a task is in hand it is finished (or requeued) even if shutdown starts meanwhile.
        worker.handle(delivery).await?;
    }
    info!(worker = %worker.name, "drained, exiting");
    Ok(())
}

struct Worker<B, S> {
    broker: B,
    store: S,
    keys: Keys,
    prover: Arc<Prover>,
    name: String,
    ttl: Duration,
    max_steps: usize,
    deadline: Duration,
    store_patience: Duration,
}

/// A task's decoded input.
enum Work {
    Map(TileInput),
    Reduce(ReduceInput),
    Segment(SegmentInput),
    BatchRoot(RootInput),
    LayerSegment(LayerSegmentInput),
    InferRoot(InferRootInput),
}

impl Work {
    fn decode(kind: TaskKind, bytes: &[u8]) -> Result<Work, String> {
        match kind {
            TaskKind::Map => {
                let blob = TileInputBlob::from_bytes(bytes).map_err(|e| e.to_string())?;
                TileInput::new(blob.row0, blob.col0, blob.a, blob.x)
                    .map(Work::Map)
                    .map_err(|e| e.to_string())
            }
            TaskKind::Reduce => ReduceInput::from_bytes(bytes).map(Work::Reduce),
            TaskKind::Segment => SegmentInput::from_bytes(bytes)
                .map(Work::Segment)
                .map_err(|e| e.to_string()),
            TaskKind::BatchRoot => RootInput::from_bytes(bytes).map(Work::BatchRoot),
            TaskKind::LayerSegment => LayerSegmentInput::from_bytes(bytes)
                .map(Work::LayerSegment)
                .map_err(|e| e.to_string()),
            TaskKind::InferRoot => InferRootInput::from_bytes(bytes).map(Work::InferRoot),
        }
    }

    /// Matrix multiply-adds the task proves (none for a reduce node or a batch task, whose
    /// multiply-adds are not proven one by one).
    fn macs(&self) -> u64 {
        match self {
            Work::Map(tile) => (tile.rows() * tile.cols()) as u64,
            Work::Reduce(_)
            | Work::Segment(_)
            | Work::BatchRoot(_)
            | Work::LayerSegment(_)
            | Work::InferRoot(_) => 0,
        }
    }

    /// Runs the task's program; what to prove and what the run cost.
    fn run(self, max_steps: usize) -> Result<(ProverInput, RunStats), KernelError> {
        match self {
            Work::Map(tile) => run_map(&tile, max_steps).map(|run| (run.input, run.stats)),
            Work::Reduce(node) => run_reduce(&node, max_steps).map(|run| (run.input, run.stats)),
            Work::Segment(segment) => {
                run_segment(&segment, max_steps).map(|run| (run.input, run.stats))
            }
            Work::BatchRoot(root) => run_root(&root, max_steps).map(|run| (run.input, run.stats)),
            Work::LayerSegment(segment) => {
                run_layer_segment(&segment, max_steps).map(|run| (run.input, run.stats))
            }
            Work::InferRoot(root) => {
                run_infer_root(&root, max_steps).map(|run| (run.input, run.stats))
            }
        }
    }
}

/// What proving one task produced, from the blocking thread.
type Proven = Result<(starkscale_cairo::RunStats, f64, Vec<u8>), KernelError>;

impl<B: Broker, S: Store> Worker<B, S> {
    async fn handle(&self, delivery: Delivery) -> Result<(), WorkerError> {
        let task: TaskMsg = match serde_json::from_slice(&delivery.body) {
            Ok(task) => task,
            Err(e) => {
                // Rejected, the broker dead-letters it to the expired queue, where the
                // coordinator parks it with its reason: a worker may write nowhere but its
                // events (docs/security.md).
                warn!(error = %e, "rejecting a malformed task");
                return Ok(delivery.nack(false).await?);
            }
        };
        let in_flight = metrics::task_in_flight();
        let mut abandoned = None;
        match self.prove(&task, &mut abandoned).await {
            Ok(outcome) => {
                let label = TaskOutcomeLabel::of(&outcome);
                let event = TaskEvent {
                    job_id: task.job_id.clone(),
                    task: task.task,
                    attempt: task.attempt,
                    worker: self.name.clone(),
                    outcome,
                };
                let body = serde_json::to_vec(&event).unwrap_or_default();
                let events = self.broker.topology().events();
                self.broker
                    .publish(&events, &body, &Headers::new(), None)
                    .await?;
                delivery.ack().await?;
                metrics::task_handled(task.kind, label);
            }
            Err(transient) => {
                warn!(job = %task.job_id, task = task.task, error = %transient, "requeueing");
                delivery.nack(true).await?;
                metrics::task_handled(task.kind, TaskOutcomeLabel::Requeued);
            }
        }
        drop(in_flight);
        // A proof past its deadline still holds the cores: let it end before the next task.
        if let Some(proof) = abandoned {
            let _ = proof.await;
        }
        Ok(())
    }

    /// Runs a store operation, retrying with backoff (250 ms doubling to 8 s) while the store
    /// is unavailable, for up to the store patience.
    async fn patiently<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(250);
        loop {
            match op().await {
                Err(e) if e.unavailable && started.elapsed() + backoff < self.store_patience => {
                    warn!(error = %e, retry_in = ?backoff, "store unavailable; waiting with the task in hand");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(8));
                }
                done => return done,
            }
        }
    }

    /// Proves one task. `Err` means a transient failure worth retrying elsewhere.
    async fn prove(
        &self,
        task: &TaskMsg,
        abandoned: &mut Option<JoinHandle<Proven>>,
    ) -> Result<TaskOutcome, WorkerError> {
        let failed = |reason: String| TaskOutcome::Failed {
            reason,
            permanent: true,
        };
        starkscale_common::faults::crash_point_with(|| {
            format!("worker:task:{}:{}", task.job_id, task.task)
        });
        let key = self.keys.task_input(&task.job_id, task.task);
        let Some(bytes) = self.patiently(|| self.store.get(&key)).await? else {
            return Ok(TaskOutcome::InputMissing { key });
        };
        let work = match Work::decode(task.kind, &bytes) {
            Ok(work) => work,
            Err(e) => return Ok(failed(format!("bad task input: {e}"))),
        };
        let macs = work.macs();
        let prover = self.prover.clone();
        let max_steps = self.max_steps;
        rss::reset_peak_rss();
        let mut proving = tokio::task::spawn_blocking(move || -> Proven {
            let (input, stats) = work.run(max_steps)?;
            let (proof, prove_s) = prover.prove(input)?;
            Ok((stats, prove_s, proof.to_bytes()))
        });
        let proven = tokio::select! {
            proven = &mut proving => proven,
            _ = tokio::time::sleep(self.deadline) => {
                *abandoned = Some(proving);
                return Ok(TaskOutcome::Failed {
                    reason: format!("task deadline of {:?} exceeded", self.deadline),
                    permanent: false,
                });
            }
        };
        let (stats, prove_s, proof) = match proven {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                return Ok(TaskOutcome::Failed {
                    permanent: e.is_permanent(),
                    reason: e.to_string(),
                })
            }
            Err(join) => return Ok(failed(format!("proving panicked: {join}"))),
        };
        let peak_rss_bytes = rss::peak_rss_bytes();
        let key = self.keys.proof(&task.job_id, task.task, task.attempt);
        let started = Instant::now();
        self.patiently(|| self.store.put(&key, &proof, self.ttl))
            .await?;
        let run_s = stats.run_s + stats.adapt_s;
        metrics::stage(task.kind, Stage::Execute, run_s);
        metrics::stage(task.kind, Stage::Prove, prove_s);
        metrics::stage(task.kind, Stage::Store, started.elapsed().as_secs_f64());
        metrics::task_proven(task.kind, stats.steps, macs, proof.len(), peak_rss_bytes);
        Ok(TaskOutcome::Proven {
            steps: stats.steps,
            run_s,
            prove_s,
            proof_bytes: proof.len(),
            peak_rss_bytes,
        })
    }
}
