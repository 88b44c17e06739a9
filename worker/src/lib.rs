//! The stateless worker: one consumer loop over the tasks queue.
//!
//! For each delivery: parse the [`TaskMsg`] → fetch only that tile's inputs from Redis → run the
//! map kernel and prove it on a blocking thread (so the AMQP connection keeps its heartbeats
//! during a proof) → store the proof under its deterministic key with a TTL → publish the
//! [`TaskEvent`] and wait for its confirm → ack. Only then is the task gone from the queue: a
//! worker killed at any point loses nothing, and a redelivered task rewrites the same key.
//!
//! Failures: a malformed task is dead-lettered with its reason; a tile that cannot be proven
//! (bad input, step limit) is reported as a permanent failure and acked; anything transient
//! (Redis or the broker unavailable) is requeued, and the queue's delivery limit bounds retries.
//!
//! Start with [`run`]; [`WorkerConfig`] is the typed configuration (flags and `STARKSCALE_*`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use starkscale_cairo::run::DEFAULT_MAX_STEPS;
use starkscale_cairo::{run_map, Profile, Prover, TileInput};
use starkscale_common::broker::{AmqpBroker, BrokerError, Topology};
use starkscale_common::config::FleetConfig;
use starkscale_common::messages::{Keys, TaskEvent, TaskMsg, TaskOutcome, TileInputBlob};
use starkscale_common::store::{RedisStore, StoreError};
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
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("unknown profile {0:?}")]
    Profile(String),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the tasks consumer was closed by the broker")]
    ConsumerClosed,
}

struct Worker {
    broker: AmqpBroker,
    store: RedisStore,
    keys: Keys,
    prover: Arc<Prover>,
    name: String,
    ttl: Duration,
    max_steps: usize,
}

/// Consumes tasks until `shutdown` is cancelled, then finishes the task in hand and returns.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    let profile = Profile::parse(&config.profile)
        .ok_or_else(|| WorkerError::Profile(config.profile.clone()))?;
    let topology = Topology::new(config.fleet.prefix.clone());
    let broker = AmqpBroker::connect(&config.fleet.amqp_url, topology.clone()).await?;
    let store = RedisStore::connect(&config.fleet.redis_url).await?;
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    // Twiddles and the preprocessed commitment: once per process, off the runtime.
    let prover = tokio::task::spawn_blocking(move || Prover::new(profile))
        .await
        .map_err(|e| WorkerError::Profile(format!("prover set-up panicked: {e}")))?;
    let worker = Worker {
        broker,
        store,
        keys: Keys::new(config.fleet.prefix.clone()),
        prover: Arc::new(prover),
        name,
        ttl: Duration::from_secs(config.result_ttl_s),
        max_steps: config.max_steps,
    };
    // Prefetch 1: one proof uses every core, and a second reserved task would only wait here.
    let mut tasks = worker
        .broker
        .consume(&topology.tasks(), 1, &worker.name)
        .await?;
    info!(worker = %worker.name, queue = %topology.tasks(), "consuming tasks");
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = tasks.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(BrokerError::Consume { queue: topology.tasks(), message: e.to_string() }.into()),
                None => return Err(WorkerError::ConsumerClosed),
            },
        };
        // Once a task is in hand it is finished (or requeued) even if shutdown starts meanwhile.
        worker.handle(delivery).await?;
    }
    info!(worker = %worker.name, "drained, exiting");
    Ok(())
}

impl Worker {
    async fn handle(&self, delivery: Delivery) -> Result<(), WorkerError> {
        let task: TaskMsg = match serde_json::from_slice(&delivery.data) {
            Ok(task) => task,
            Err(e) => {
                warn!(error = %e, "dead-lettering a malformed task");
                return Ok(self
                    .broker
                    .dead_letter(&delivery, &format!("malformed task: {e}"))
                    .await?);
            }
        };
        match self.prove(&task).await {
            Ok(outcome) => {
                let event = TaskEvent {
                    job_id: task.job_id.clone(),
                    tile_index: task.tile.index,
                    attempt: task.attempt,
                    worker: self.name.clone(),
                    outcome,
                };
                let body = serde_json::to_vec(&event).unwrap_or_default();
                let events = self.broker.topology().events();
                self.broker
                    .publish(&events, &body, FieldTable::default())
                    .await?;
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| BrokerError::Ack(e.to_string()))?;
            }
            Err(transient) => {
                warn!(job = %task.job_id, tile = task.tile.index, error = %transient, "requeueing");
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
                    .map_err(|e| BrokerError::Ack(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Proves one task. `Err` means a transient failure worth retrying elsewhere.
    async fn prove(&self, task: &TaskMsg) -> Result<TaskOutcome, WorkerError> {
        let failed = |reason: String| TaskOutcome::Failed {
            reason,
            permanent: true,
        };
        let key = self.keys.tile_input(&task.job_id, task.tile.index);
        let Some(bytes) = self.store.get(&key).await? else {
            return Ok(failed(format!(
                "no tile input at {key} (job cancelled or expired)"
            )));
        };
        let tile = match TileInputBlob::from_bytes(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|b| TileInput::new(b.row0, b.col0, b.a, b.x).map_err(|e| e.to_string()))
        {
            Ok(tile) => tile,
            Err(e) => return Ok(failed(format!("bad tile input: {e}"))),
        };
        let prover = self.prover.clone();
        let max_steps = self.max_steps;
        let proven = tokio::task::spawn_blocking(move || {
            let run = run_map(&tile, max_steps)?;
            let stats = run.stats;
            let (proof, prove_s) = prover.prove(run.input)?;
            Ok::<_, starkscale_cairo::KernelError>((stats, prove_s, proof.to_bytes()))
        })
        .await;
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
        let key = self.keys.proof(&task.job_id, task.tile.index, task.attempt);
        self.store.put(&key, &proof, self.ttl).await?;
        Ok(TaskOutcome::Proven {
            steps: stats.steps,
            run_s: stats.run_s + stats.adapt_s,
            prove_s,
            proof_bytes: proof.len(),
        })
    }
}
