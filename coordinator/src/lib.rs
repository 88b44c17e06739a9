//! The coordinator: jobs in, verified results out.
//!
//! One loop over two queues. A **job** is size-checked, parsed and validated ([`JobSpec::parse`]);
//! a bad one gets an error result and a dead-lettered copy with the reason, and the loop goes on.
//! A good one is planned ([`TilePlan`]), each tile's inputs are written to Redis with the job's
//! TTL, and one task per tile is published (confirmed) before the job message is acked.
//!
//! Each task **event** names a stored proof. Workers are untrusted: the coordinator verifies the
//! proof ([`verify_tile`]: pinned program, parameters and root) and checks that it commits to the
//! very tile it planned (position, shape, A and x digests) before it accepts the partial y. A
//! proof that fails goes back as a new attempt, up to `max_attempts`. When every tile is in, y is
//! summed across column tiles, the certificate (all accepted proofs) is stored, and the result is
//! published to the results exchange (routing key = job id, and `reply_to` if the job set it).
//!
//! Job state lives in this process for now: a coordinator restart loses in-flight jobs (their
//! tasks and proofs stay in RabbitMQ and Redis until their TTL).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use starkscale_cairo::verify_tile;
use starkscale_common::broker::{AmqpBroker, BrokerError, Topology};
use starkscale_common::config::FleetConfig;
use starkscale_common::job::{check_shapes, JobLimits};
use starkscale_common::messages::{
    JobResult, JobStatus, Keys, TaskEvent, TaskMsg, TaskOutcome, TileInputBlob,
};
use starkscale_common::store::{RedisStore, StoreError};
use starkscale_common::{JobSpec, Matrix, TilePlan, Vector};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Coordinator settings; every flag also reads a `STARKSCALE_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorConfig {
    #[command(flatten)]
    pub fleet: FleetConfig,
    /// Attempts per tile before the job fails.
    #[arg(long, env = "STARKSCALE_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// How long a job's keys live, in seconds.
    #[arg(long, env = "STARKSCALE_RESULT_TTL", default_value_t = 24 * 3600)]
    pub job_ttl_s: u64,
    /// Accept proofs made at the low-security test profile (for tests only).
    #[arg(long, env = "STARKSCALE_ALLOW_TEST_PROFILE")]
    pub allow_test_profile: bool,
    /// Largest job message, in bytes.
    #[arg(long, env = "STARKSCALE_MAX_JOB_BYTES", default_value_t = 64 << 20)]
    pub max_job_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the {0} consumer was closed by the broker")]
    ConsumerClosed(String),
}

/// A tile the coordinator has accepted.
struct Accepted {
    y: Vec<i64>,
    proof: Vec<u8>,
}

struct JobState {
    plan: TilePlan,
    a: Matrix,
    x: Vector,
    reply_to: Option<String>,
    attempts: Vec<u32>,
    accepted: Vec<Option<Accepted>>,
    started: Instant,
    tile_s: f64,
}

struct Coordinator {
    broker: AmqpBroker,
    store: RedisStore,
    keys: Keys,
    config: CoordinatorConfig,
    limits: JobLimits,
    jobs: HashMap<String, JobState>,
}

/// Serves jobs until `shutdown` is cancelled.
pub async fn run(
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let topology = Topology::new(config.fleet.prefix.clone());
    let broker = AmqpBroker::connect(&config.fleet.amqp_url, topology.clone()).await?;
    let store = RedisStore::connect(&config.fleet.redis_url).await?;
    let limits = JobLimits {
        max_job_bytes: config.max_job_bytes,
        ..JobLimits::default()
    };
    let mut coordinator = Coordinator {
        broker,
        store,
        keys: Keys::new(config.fleet.prefix.clone()),
        config,
        limits,
        jobs: HashMap::new(),
    };
    let mut jobs = coordinator
        .broker
        .consume(&topology.jobs(), 4, "coordinator-jobs")
        .await?;
    let mut events = coordinator
        .broker
        .consume(&topology.events(), 64, "coordinator-events")
        .await?;
    info!(jobs = %topology.jobs(), events = %topology.events(), "coordinating");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            next = jobs.next() => {
                let delivery = next.ok_or_else(|| CoordinatorError::ConsumerClosed(topology.jobs()))?
                    .map_err(|e| BrokerError::Consume { queue: topology.jobs(), message: e.to_string() })?;
                coordinator.on_job(delivery).await?;
            }
            next = events.next() => {
                let delivery = next.ok_or_else(|| CoordinatorError::ConsumerClosed(topology.events()))?
                    .map_err(|e| BrokerError::Consume { queue: topology.events(), message: e.to_string() })?;
                coordinator.on_event(delivery).await?;
            }
        }
    }
    Ok(())
}

fn new_job_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("job-{nanos:x}")
}

async fn ack(delivery: &Delivery) -> Result<(), BrokerError> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(|e| BrokerError::Ack(e.to_string()))
}

impl Coordinator {
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.job_ttl_s)
    }

    async fn on_job(&mut self, delivery: Delivery) -> Result<(), CoordinatorError> {
        let reply_to = delivery
            .properties
            .reply_to()
            .as_ref()
            .map(|q| q.to_string());
        let started = Instant::now();
        let spec = match JobSpec::parse(&delivery.data, &self.limits) {
            Ok(spec) => spec,
            Err(e) => {
                return self
                    .reject(&delivery, "invalid", reply_to, &e.to_string())
                    .await
            }
        };
        let job_id = spec.job_id.clone().unwrap_or_else(new_job_id);
        // Resubmitting an id is idempotent: a job in flight or finished is not started again.
        if self.jobs.contains_key(&job_id)
            || self.store.get(&self.keys.result(&job_id)).await?.is_some()
        {
            info!(job = %job_id, "duplicate submission ignored");
            return Ok(ack(&delivery).await?);
        }
        let (a, x) = match spec.load_inputs().and_then(|(a, x)| {
            check_shapes(&a, &x, spec.tile_rows(), &self.limits)?;
            Ok((a, x))
        }) {
            Ok(inputs) => inputs,
            Err(e) => {
                return self
                    .reject(&delivery, &job_id, reply_to, &e.to_string())
                    .await
            }
        };
        let plan = TilePlan::new(a.rows(), a.cols(), spec.tile_rows());
        for tile in plan.tiles() {
            let blob = TileInputBlob {
                row0: tile.row0 as u32,
                col0: tile.col0 as u32,
                a: a.tile(tile.row0, tile.col0, tile.rows, tile.cols),
                x: x.block(tile.col0, tile.cols),
            };
            self.store
                .put(
                    &self.keys.tile_input(&job_id, tile.index),
                    &blob.to_bytes(),
                    self.ttl(),
                )
                .await?;
        }
        for tile in plan.tiles() {
            self.publish_task(&job_id, tile.index, &plan, 1).await?;
        }
        info!(job = %job_id, tiles = plan.len(), rows = a.rows(), cols = a.cols(), "job planned");
        self.jobs.insert(
            job_id,
            JobState {
                attempts: vec![1; plan.len()],
                accepted: (0..plan.len()).map(|_| None).collect(),
                plan,
                a,
                x,
                reply_to,
                started,
                tile_s: 0.0,
            },
        );
        Ok(ack(&delivery).await?)
    }

    /// A job that cannot run: an error result for the client, a dead-lettered copy for operators.
    async fn reject(
        &self,
        delivery: &Delivery,
        job_id: &str,
        reply_to: Option<String>,
        reason: &str,
    ) -> Result<(), CoordinatorError> {
        warn!(job = %job_id, %reason, "rejecting job");
        let result = JobResult {
            job_id: job_id.to_string(),
            status: JobStatus::Failed,
            error: Some(reason.to_string()),
            y: None,
            certificate_key: None,
            tiles: 0,
            wall_s: 0.0,
            tile_s: 0.0,
        };
        self.publish_result(&result, reply_to.as_deref()).await?;
        Ok(self.broker.dead_letter(delivery, reason).await?)
    }

    async fn publish_task(
        &self,
        job_id: &str,
        index: usize,
        plan: &TilePlan,
        attempt: u32,
    ) -> Result<(), BrokerError> {
        let Some(tile) = plan.tile(index) else {
            return Ok(());
        };
        let task = TaskMsg {
            job_id: job_id.to_string(),
            tile,
            attempt,
        };
        let body = serde_json::to_vec(&task).unwrap_or_default();
        self.broker
            .publish(
                &self.broker.topology().tasks(),
                &body,
                FieldTable::default(),
            )
            .await
    }

    async fn publish_result(
        &self,
        result: &JobResult,
        reply_to: Option<&str>,
    ) -> Result<(), CoordinatorError> {
        let body = serde_json::to_vec(result).unwrap_or_default();
        if result.job_id != "invalid" {
            self.store
                .put(&self.keys.result(&result.job_id), &body, self.ttl())
                .await?;
        }
        Ok(self
            .broker
            .publish_result(&result.job_id, reply_to, &body)
            .await?)
    }

    async fn on_event(&mut self, delivery: Delivery) -> Result<(), CoordinatorError> {
        let event: TaskEvent = match serde_json::from_slice(&delivery.data) {
            Ok(event) => event,
            Err(e) => {
                return Ok(self
                    .broker
                    .dead_letter(&delivery, &format!("malformed event: {e}"))
                    .await?)
            }
        };
        let current = self
            .jobs
            .get(&event.job_id)
            .and_then(|j| j.attempts.get(event.tile_index).copied());
        // Events of finished jobs, unknown tiles or superseded attempts change nothing.
        if current != Some(event.attempt) {
            return Ok(ack(&delivery).await?);
        }
        let verdict = match &event.outcome {
            TaskOutcome::Proven { run_s, prove_s, .. } => self
                .check_proof(&event)
                .await
                .map(|acc| (acc, run_s + prove_s)),
            TaskOutcome::Failed {
                reason,
                permanent: true,
            } => {
                self.finish(
                    &event.job_id,
                    Err(format!(
                        "tile {} cannot be proven: {reason}",
                        event.tile_index
                    )),
                )
                .await?;
                return Ok(ack(&delivery).await?);
            }
            TaskOutcome::Failed { reason, .. } => Err(reason.clone()),
        };
        let job_id = event.job_id.clone();
        match verdict {
            Ok((accepted, seconds)) => {
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.tile_s += seconds;
                    job.accepted[event.tile_index] = Some(accepted);
                    if job.accepted.iter().all(Option::is_some) {
                        self.finish(&job_id, Ok(())).await?;
                    }
                }
            }
            Err(reason) => {
                let next = event.attempt + 1;
                warn!(job = %job_id, tile = event.tile_index, attempt = event.attempt, %reason, "tile rejected");
                if next > self.config.max_attempts {
                    self.finish(
                        &job_id,
                        Err(format!(
                            "tile {} failed {} attempts; last: {reason}",
                            event.tile_index, event.attempt
                        )),
                    )
                    .await?;
                } else if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.attempts[event.tile_index] = next;
                    let plan = job.plan;
                    self.publish_task(&job_id, event.tile_index, &plan, next)
                        .await?;
                }
            }
        }
        Ok(ack(&delivery).await?)
    }

    /// Verifies a reported proof and that it is of exactly the planned tile.
    async fn check_proof(&self, event: &TaskEvent) -> Result<Accepted, String> {
        let key = self
            .keys
            .proof(&event.job_id, event.tile_index, event.attempt);
        let proof = match self.store.get(&key).await {
            Ok(Some(proof)) => proof,
            Ok(None) => return Err(format!("no proof at {key}")),
            Err(e) => return Err(e.to_string()),
        };
        let job = self.jobs.get(&event.job_id).ok_or("job finished")?;
        let tile = job.plan.tile(event.tile_index).ok_or("no such tile")?;
        let verified =
            verify_tile(&proof, self.config.allow_test_profile).map_err(|e| e.to_string())?;
        let out = &verified.output;
        if (out.row0 as usize, out.col0 as usize) != (tile.row0, tile.col0) {
            return Err(format!(
                "proof is of the tile at ({}, {})",
                out.row0, out.col0
            ));
        }
        let a = job.a.tile(tile.row0, tile.col0, tile.rows, tile.cols);
        let x = job.x.block(tile.col0, tile.cols);
        verified
            .check_inputs(Some(&a), Some(&x))
            .map_err(|e| e.to_string())?;
        Ok(Accepted {
            y: out.y.clone(),
            proof,
        })
    }

    async fn finish(
        &mut self,
        job_id: &str,
        outcome: Result<(), String>,
    ) -> Result<(), CoordinatorError> {
        let Some(job) = self.jobs.remove(job_id) else {
            return Ok(());
        };
        let mut result = JobResult {
            job_id: job_id.to_string(),
            status: JobStatus::Failed,
            error: None,
            y: None,
            certificate_key: None,
            tiles: job.plan.len(),
            wall_s: job.started.elapsed().as_secs_f64(),
            tile_s: job.tile_s,
        };
        match outcome {
            Ok(()) => {
                let mut y = vec![0i64; job.plan.rows];
                let mut certificate = b"SSFC".to_vec();
                for (tile, accepted) in job.plan.tiles().zip(&job.accepted) {
                    let Some(accepted) = accepted else { continue };
                    for (i, v) in accepted.y.iter().enumerate() {
                        y[tile.row0 + i] += v;
                    }
                    certificate.extend_from_slice(&(accepted.proof.len() as u64).to_le_bytes());
                    certificate.extend_from_slice(&accepted.proof);
                }
                let key = self.keys.certificate(job_id);
                self.store.put(&key, &certificate, self.ttl()).await?;
                result.status = JobStatus::Succeeded;
                result.y = Some(y);
                result.certificate_key = Some(key);
            }
            Err(reason) => result.error = Some(reason),
        }
        let inputs: Vec<String> = (0..job.plan.len())
            .map(|i| self.keys.tile_input(job_id, i))
            .collect();
        self.store.delete(&inputs).await?;
        info!(job = %job_id, status = ?result.status, wall_s = result.wall_s, "job finished");
        self.publish_result(&result, job.reply_to.as_deref()).await
    }
}
