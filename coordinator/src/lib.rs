//! The coordinator: jobs in, verified results out.
//!
//! [`serve`] is one loop over two queues, generic over the [`Broker`] and [`Store`]: the fleet
//! runs it over RabbitMQ and Redis ([`run`], which reconnects when either goes away), the
//! embedded mode over their in-process twins.
//!
//! - A **job** is size-checked, parsed and validated ([`Request::parse`]); a bad one gets an
//!   error result and a dead-lettered copy with the reason, and the loop goes on. Its id is
//!   claimed in the store (resubmitting it changes nothing), its inputs are loaded (inline, a
//!   path, or a store key), it is planned ([`TilePlan`]), each tile's inputs and the job's
//!   [`JobRecord`] (with every tile's expected digests) are written with the job's TTL, and one
//!   task per tile is published, all confirmed, before the job message is acked.
//! - Each task **event** names a stored proof. Workers are untrusted: the coordinator verifies
//!   the proof ([`verify_tile`]: pinned program, parameters and root) and checks that it is of
//!   the very tile it planned (position, shape, A and x digests) before it accepts the partial y.
//!   A failing proof sends the tile back as a new attempt, up to `max_attempts`. Events of other
//!   attempts, accepted tiles or finished jobs change nothing, so redeliveries are harmless.
//! - When every tile is in, y is summed across column tiles, the certificate (every accepted
//!   proof) is stored, the result is published to the results exchange (and `reply_to`) and
//!   stored, and the job's working keys are deleted.
//! - A **cancel** request (`{"cancel": id}` on the jobs queue) ends a running job the same way,
//!   with status `cancelled`; workers then find no tile inputs and skip its remaining tasks.
//!
//! Job state lives in the store ([`Keys::plan`], [`Keys::tiles`], [`Keys::progress`]); memory
//! holds a cache of it. A restarted coordinator reloads a job on its next event.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use starkscale_cairo::encoding::{a_digest, x_digest};
use starkscale_cairo::verify_tile;
use starkscale_common::broker::{Broker, BrokerError, Delivery, Headers};
use starkscale_common::config::FleetConfig;
use starkscale_common::job::{check_shapes, JobError, Request};
use starkscale_common::messages::{
    unix_ms, JobProgress, JobRecord, JobResult, JobStatus, Keys, TaskEvent, TaskMsg, TaskOutcome,
    TileInputBlob, TileRecord, TileTiming,
};
use starkscale_common::store::{Store, StoreError};
use starkscale_common::{JobLimits, JobSpec, TilePlan};
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

impl CoordinatorConfig {
    /// Defaults for a fleet at `fleet`.
    pub fn new(fleet: FleetConfig) -> CoordinatorConfig {
        CoordinatorConfig {
            fleet,
            max_attempts: 3,
            job_ttl_s: 24 * 3600,
            allow_test_profile: false,
            max_job_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Serves jobs over RabbitMQ and Redis until `shutdown` is cancelled. A lost connection is not
/// fatal: unacked messages return to their queues, and the loop reconnects with backoff and
/// reloads job state from Redis.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) {
    config
        .fleet
        .serve("coordinator", &shutdown, |broker, store| {
            serve(broker, store, &config, shutdown.clone())
        })
        .await;
}

/// Serves jobs over any broker and store until `shutdown` is cancelled.
pub async fn serve<B: Broker, S: Store>(
    broker: B,
    store: S,
    config: &CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let topology = broker.topology().clone();
    let mut coordinator = Coordinator {
        keys: Keys::new(config.fleet.prefix.clone()),
        limits: JobLimits {
            max_job_bytes: config.max_job_bytes,
            ..JobLimits::default()
        },
        config: config.clone(),
        jobs: HashMap::new(),
        broker,
        store,
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
            _ = shutdown.cancelled() => return Ok(()),
            delivery = jobs.next() => coordinator.on_request(delivery?).await?,
            delivery = events.next() => coordinator.on_event(delivery?).await?,
        }
    }
}

/// A job being proven: its record, and the state of each tile.
struct Job {
    record: JobRecord,
    plan: TilePlan,
    tiles: Vec<TileRecord>,
    retries: usize,
    /// Seconds from receiving the job to its tasks published, when this process planned it.
    plan_s: Option<f64>,
}

impl Job {
    fn proven(&self) -> usize {
        self.tiles.iter().filter(|t| t.y.is_some()).count()
    }
}

struct Coordinator<B, S> {
    broker: B,
    store: S,
    keys: Keys,
    config: CoordinatorConfig,
    limits: JobLimits,
    jobs: HashMap<String, Job>,
}

fn new_job_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("job-{nanos:x}")
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain data structs always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Why planning a job stopped: the job is bad, or the fleet is unavailable.
enum Refusal {
    Job(JobError),
    Fleet(CoordinatorError),
}

impl From<JobError> for Refusal {
    fn from(e: JobError) -> Refusal {
        Refusal::Job(e)
    }
}

impl<E: Into<CoordinatorError>> From<E> for Refusal {
    fn from(e: E) -> Refusal {
        Refusal::Fleet(e.into())
    }
}

impl<B: Broker, S: Store> Coordinator<B, S> {
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.job_ttl_s)
    }

    async fn on_request(&mut self, delivery: Delivery) -> Result<(), CoordinatorError> {
        let received = Instant::now();
        let spec = match Request::parse(&delivery.body, &self.limits) {
            Ok(Request::Cancel(job_id)) => {
                self.cancel(&job_id).await?;
                return Ok(delivery.ack().await?);
            }
            Ok(Request::Job(spec)) => spec,
            Err(e) => return self.reject(delivery, "invalid", &e.to_string()).await,
        };
        let job_id = spec.job_id.clone().unwrap_or_else(new_job_id);
        let progress = JobProgress {
            job_id: job_id.clone(),
            status: JobStatus::Running,
            tiles: 0,
            proven: 0,
            retries: 0,
            started_unix_ms: unix_ms(),
            plan_s: None,
        };
        let claimed = self
            .store
            .put_if_absent(
                &self.keys.progress(&job_id),
                &to_json(&progress),
                self.ttl(),
            )
            .await?;
        if !claimed {
            // Resubmitting an id is idempotent. The one exception: this very message again,
            // because a coordinator stopped while planning it; then pick the job up.
            if !(delivery.redelivered && self.resume(&job_id).await?) {
                info!(job = %job_id, "duplicate submission ignored");
            }
            return Ok(delivery.ack().await?);
        }
        match self
            .plan(&job_id, &spec, delivery.reply_to.clone(), received)
            .await
        {
            Ok(()) => Ok(delivery.ack().await?),
            Err(Refusal::Fleet(e)) => Err(e),
            Err(Refusal::Job(e)) => {
                let reason = e.to_string();
                let progress = JobProgress {
                    status: JobStatus::Failed,
                    ..progress
                };
                self.store
                    .put(
                        &self.keys.progress(&job_id),
                        &to_json(&progress),
                        self.ttl(),
                    )
                    .await?;
                self.reject(delivery, &job_id, &reason).await
            }
        }
    }

    /// Loads, checks and plans a claimed job, stores its inputs and record, publishes its tasks.
    async fn plan(
        &mut self,
        job_id: &str,
        spec: &JobSpec,
        reply_to: Option<String>,
        received: Instant,
    ) -> Result<(), Refusal> {
        let (a_key, x_key) = spec.redis_keys();
        let a_bytes = self.fetch_reference("a", a_key).await?;
        let x_bytes = self.fetch_reference("x", x_key).await?;
        let (a, x) = spec.load_inputs((a_bytes.as_deref(), x_bytes.as_deref()))?;
        drop((a_bytes, x_bytes));
        check_shapes(&a, &x, spec.tile_rows(), &self.limits)?;

        let plan = TilePlan::new(a.rows(), a.cols(), spec.tile_rows());
        let mut inputs = Vec::with_capacity(plan.len());
        let mut a_digests = Vec::with_capacity(plan.len());
        let x_blocks: Vec<_> = (0..plan.col_blocks())
            .map(|b| x.block(b * plan.tile_cols, plan.tile_cols))
            .collect();
        for tile in plan.tiles() {
            let blob = TileInputBlob {
                row0: tile.row0 as u32,
                col0: tile.col0 as u32,
                a: a.tile(tile.row0, tile.col0, tile.rows, tile.cols),
                x: x_blocks[tile.col_block].clone(),
            };
            a_digests.push(a_digest(&blob.a).to_hex());
            inputs.push((self.keys.tile_input(job_id, tile.index), blob.to_bytes()));
        }
        let record = JobRecord {
            job_id: job_id.to_string(),
            rows: a.rows(),
            cols: a.cols(),
            tile_rows: spec.tile_rows(),
            reply_to,
            started_unix_ms: unix_ms(),
            a_digests,
            x_digests: x_blocks.iter().map(|b| x_digest(b).to_hex()).collect(),
        };
        drop((a, x));
        let ttl = self.ttl();
        self.store.put_all(inputs, ttl).await?;
        self.store
            .put(&self.keys.plan(job_id), &to_json(&record), ttl)
            .await?;
        let mut job = Job {
            tiles: vec![TileRecord::default(); plan.len()],
            record,
            plan,
            retries: 0,
            plan_s: None,
        };
        self.publish_tasks(job_id, &job).await?;
        job.plan_s = Some(received.elapsed().as_secs_f64());
        self.save_progress(job_id, &job, JobStatus::Running).await?;
        info!(job = %job_id, tiles = job.plan.len(), rows = job.plan.rows, cols = job.plan.cols, "job planned");
        self.jobs.insert(job_id.to_string(), job);
        Ok(())
    }

    async fn fetch_reference(
        &self,
        what: &'static str,
        key: Option<&str>,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let Some(key) = key else { return Ok(None) };
        match self.store.get(key).await? {
            Some(bytes) => Ok(Some(bytes)),
            None => Err(JobError::MissingReference {
                what,
                key: key.to_string(),
            }
            .into()),
        }
    }

    /// Publishes the current attempt of every tile not yet accepted.
    async fn publish_tasks(&self, job_id: &str, job: &Job) -> Result<(), BrokerError> {
        let bodies: Vec<Vec<u8>> = job
            .plan
            .tiles()
            .zip(&job.tiles)
            .filter(|(_, state)| state.y.is_none())
            .map(|(tile, state)| {
                to_json(&TaskMsg {
                    job_id: job_id.to_string(),
                    tile,
                    attempt: state.attempt,
                })
            })
            .collect();
        self.broker
            .publish_all(&self.broker.topology().tasks(), &bodies)
            .await
    }

    async fn save_progress(
        &self,
        job_id: &str,
        job: &Job,
        status: JobStatus,
    ) -> Result<(), StoreError> {
        let progress = JobProgress {
            job_id: job_id.to_string(),
            status,
            tiles: job.plan.len(),
            proven: job.proven(),
            retries: job.retries,
            started_unix_ms: job.record.started_unix_ms,
            plan_s: job.plan_s,
        };
        self.store
            .put(&self.keys.progress(job_id), &to_json(&progress), self.ttl())
            .await
    }

    /// Reloads a running job from the store (after a restart or a reconnect) and republishes
    /// the tasks of its unaccepted tiles; false if there is no such running job.
    async fn resume(&mut self, job_id: &str) -> Result<bool, CoordinatorError> {
        if self.jobs.contains_key(job_id) {
            return Ok(false);
        }
        let Some(job) = self.load(job_id).await? else {
            return Ok(false);
        };
        warn!(job = %job_id, "resuming a job planned by an earlier coordinator");
        self.publish_tasks(job_id, &job).await?;
        self.jobs.insert(job_id.to_string(), job);
        Ok(true)
    }

    async fn load(&self, job_id: &str) -> Result<Option<Job>, CoordinatorError> {
        let Some(bytes) = self.store.get(&self.keys.plan(job_id)).await? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<JobRecord>(&bytes) else {
            warn!(job = %job_id, "unreadable job record; ignoring the job");
            return Ok(None);
        };
        let plan = TilePlan::new(record.rows, record.cols, record.tile_rows);
        let mut tiles = vec![TileRecord::default(); plan.len()];
        for (field, value) in self.store.fields(&self.keys.tiles(job_id)).await? {
            let index = field.parse::<usize>().ok();
            let state = serde_json::from_slice::<TileRecord>(&value).ok();
            if let (Some(slot), Some(state)) = (index.and_then(|i| tiles.get_mut(i)), state) {
                *slot = state;
            }
        }
        let retries = tiles
            .iter()
            .map(|t| t.attempt.saturating_sub(1) as usize)
            .sum();
        Ok(Some(Job {
            record,
            plan,
            tiles,
            retries,
            plan_s: None,
        }))
    }

    /// A job that cannot run: an error result for the client, a dead-lettered copy for operators.
    async fn reject(
        &self,
        delivery: Delivery,
        job_id: &str,
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
            tile_timings: Vec::new(),
        };
        self.publish_result(&result, delivery.reply_to.as_deref())
            .await?;
        let jobs = self.broker.topology().jobs();
        Ok(self.broker.dead_letter(delivery, &jobs, reason).await?)
    }

    async fn publish_result(
        &self,
        result: &JobResult,
        reply_to: Option<&str>,
    ) -> Result<(), CoordinatorError> {
        let body = to_json(result);
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
        let event: TaskEvent = match serde_json::from_slice(&delivery.body) {
            Ok(event) => event,
            Err(e) => {
                let events = self.broker.topology().events();
                let reason = format!("malformed event: {e}");
                return Ok(self.broker.dead_letter(delivery, &events, &reason).await?);
            }
        };
        self.on_task_event(&event).await?;
        Ok(delivery.ack().await?)
    }

    async fn on_task_event(&mut self, event: &TaskEvent) -> Result<(), CoordinatorError> {
        let job_id = event.job_id.as_str();
        if !self.jobs.contains_key(job_id) {
            if let Some(job) = self.load(job_id).await? {
                self.jobs.insert(job_id.to_string(), job);
            }
        }
        let Some(state) = self
            .jobs
            .get(job_id)
            .and_then(|job| job.tiles.get(event.tile_index))
        else {
            return Ok(()); // a finished, cancelled or unknown job
        };
        // Accepted tiles and superseded attempts change nothing: redeliveries are harmless.
        if state.y.is_some() || state.attempt != event.attempt {
            return Ok(());
        }
        let verdict = match &event.outcome {
            TaskOutcome::Proven {
                run_s,
                prove_s,
                peak_rss_bytes,
                ..
            } => {
                let started = Instant::now();
                self.check_proof(event).await?.map(|y| TileRecord {
                    attempt: event.attempt,
                    y: Some(y),
                    seconds: run_s + prove_s + started.elapsed().as_secs_f64(),
                    worker: event.worker.clone(),
                    peak_rss_bytes: *peak_rss_bytes,
                })
            }
            TaskOutcome::Failed {
                reason,
                permanent: true,
            } => {
                let reason = format!("tile {} cannot be proven: {reason}", event.tile_index);
                return self.finish(job_id, JobStatus::Failed, Some(reason)).await;
            }
            TaskOutcome::Failed { reason, .. } => Err(reason.clone()),
        };
        let ttl = self.ttl();
        let tiles_key = self.keys.tiles(job_id);
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        let index = event.tile_index;
        match verdict {
            Ok(accepted) => {
                job.tiles[index] = accepted;
                let record = to_json(&job.tiles[index]);
                self.store
                    .put_field(&tiles_key, &index.to_string(), &record, ttl)
                    .await?;
                if job.proven() == job.plan.len() {
                    return self.finish(job_id, JobStatus::Succeeded, None).await;
                }
            }
            Err(reason) => {
                warn!(job = %job_id, tile = index, attempt = event.attempt, %reason, "tile rejected");
                if event.attempt >= self.config.max_attempts {
                    let reason = format!(
                        "tile {index} failed {} attempts; last: {reason}",
                        event.attempt
                    );
                    return self.finish(job_id, JobStatus::Failed, Some(reason)).await;
                }
                job.tiles[index].attempt = event.attempt + 1;
                job.retries += 1;
                let record = to_json(&job.tiles[index]);
                self.store
                    .put_field(&tiles_key, &index.to_string(), &record, ttl)
                    .await?;
                let Some(tile) = job.plan.tile(index) else {
                    return Ok(());
                };
                let task = TaskMsg {
                    job_id: job_id.to_string(),
                    tile,
                    attempt: event.attempt + 1,
                };
                let tasks = self.broker.topology().tasks();
                self.broker
                    .publish(&tasks, &to_json(&task), &Headers::new(), None)
                    .await?;
            }
        }
        if let Some(job) = self.jobs.get(job_id) {
            self.save_progress(job_id, job, JobStatus::Running).await?;
        }
        Ok(())
    }

    /// Verifies a reported proof and that it is of exactly the planned tile; `Ok(Err(reason))`
    /// when the worker's claim does not hold.
    async fn check_proof(&self, event: &TaskEvent) -> Result<Result<Vec<i64>, String>, StoreError> {
        let key = self
            .keys
            .proof(&event.job_id, event.tile_index, event.attempt);
        let Some(proof) = self.store.get(&key).await? else {
            return Ok(Err(format!("no proof at {key}")));
        };
        let Some(job) = self.jobs.get(&event.job_id) else {
            return Ok(Err("job finished".into()));
        };
        let Some(tile) = job.plan.tile(event.tile_index) else {
            return Ok(Err("no such tile".into()));
        };
        let verified = match verify_tile(&proof, self.config.allow_test_profile) {
            Ok(verified) => verified,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let out = &verified.output;
        let expected = (tile.row0, tile.col0, tile.rows, tile.cols);
        let stated = (
            out.row0 as usize,
            out.col0 as usize,
            out.rows as usize,
            out.cols as usize,
        );
        if stated != expected {
            return Ok(Err(format!(
                "proof is of a {}x{} tile at ({}, {}), not the planned {}x{} at ({}, {})",
                stated.2,
                stated.3,
                stated.0,
                stated.1,
                expected.2,
                expected.3,
                expected.0,
                expected.1
            )));
        }
        if job.record.a_digests.get(tile.index) != Some(&out.a_digest.to_hex()) {
            return Ok(Err("proof is of other A entries".into()));
        }
        if job.record.x_digests.get(tile.col_block) != Some(&out.x_digest.to_hex()) {
            return Ok(Err("proof is of another x block".into()));
        }
        Ok(Ok(out.y.clone()))
    }

    /// A cancel request: a running job ends now, with its keys freed.
    async fn cancel(&mut self, job_id: &str) -> Result<(), CoordinatorError> {
        if !self.jobs.contains_key(job_id) {
            match self.load(job_id).await? {
                Some(job) => {
                    self.jobs.insert(job_id.to_string(), job);
                }
                None => {
                    info!(job = %job_id, "cancel of a job that is not running ignored");
                    return Ok(());
                }
            }
        }
        info!(job = %job_id, "cancelling");
        self.finish(
            job_id,
            JobStatus::Cancelled,
            Some("cancelled by request".into()),
        )
        .await
    }

    /// Ends a job: the certificate (on success), its result and progress, its keys freed.
    async fn finish(
        &mut self,
        job_id: &str,
        status: JobStatus,
        error: Option<String>,
    ) -> Result<(), CoordinatorError> {
        let Some(job) = self.jobs.remove(job_id) else {
            return Ok(());
        };
        let mut result = JobResult {
            job_id: job_id.to_string(),
            status,
            error,
            y: None,
            certificate_key: None,
            tiles: job.plan.len(),
            wall_s: unix_ms().saturating_sub(job.record.started_unix_ms) as f64 / 1000.0,
            tile_s: job.tiles.iter().map(|t| t.seconds).sum(),
            tile_timings: Vec::new(),
        };
        if status == JobStatus::Succeeded {
            let mut y = vec![0i64; job.plan.rows];
            let mut certificate = b"SSFC".to_vec();
            for (tile, state) in job.plan.tiles().zip(&job.tiles) {
                for (i, v) in state.y.iter().flatten().enumerate() {
                    y[tile.row0 + i] += v;
                }
                let key = self.keys.proof(job_id, tile.index, state.attempt);
                let Some(proof) = self.store.get(&key).await? else {
                    // Verified moments ago and stored with a TTL of hours: only an operator
                    // deleting keys gets here. Fail the job rather than issue a short certificate.
                    result.status = JobStatus::Failed;
                    result.error = Some(format!("accepted proof {key} vanished"));
                    break;
                };
                certificate.extend_from_slice(&(proof.len() as u64).to_le_bytes());
                certificate.extend_from_slice(&proof);
            }
            if result.status == JobStatus::Succeeded {
                let key = self.keys.certificate(job_id);
                self.store.put(&key, &certificate, self.ttl()).await?;
                result.y = Some(y);
                result.certificate_key = Some(key);
                result.tile_timings = job
                    .tiles
                    .iter()
                    .enumerate()
                    .map(|(tile, t)| TileTiming {
                        tile,
                        attempt: t.attempt,
                        worker: t.worker.clone(),
                        seconds: t.seconds,
                        peak_rss_bytes: t.peak_rss_bytes,
                    })
                    .collect();
            }
        }
        self.save_progress(job_id, &job, result.status).await?;
        let working = self
            .keys
            .working_set(job_id, job.plan.len(), self.config.max_attempts);
        self.store.delete(&working).await?;
        info!(job = %job_id, status = ?result.status, wall_s = result.wall_s, "job finished");
        self.publish_result(&result, job.record.reply_to.as_deref())
            .await
    }
}
