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
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use starkscale_cairo::certificate::Certificate;
use starkscale_cairo::encoding::{a_digest, x_digest, Digest, Fact};
use starkscale_cairo::program::Pinned;
use starkscale_cairo::tree::{
    commit_tiles, x_commitment, Child, NodeOutput, ReduceInput, RootOutput,
};
use starkscale_cairo::{verify_proof, verify_tile};
use starkscale_common::broker::{Broker, BrokerError, Delivery, Headers};
use starkscale_common::config::FleetConfig;
use starkscale_common::job::{check_shapes, JobError, Request};
use starkscale_common::messages::{
    unix_ms, JobProgress, JobRecord, JobResult, JobStatus, Keys, TaskEvent, TaskKind, TaskMsg,
    TaskOutcome, TaskRecord, TaskTiming, TileInputBlob,
};
use starkscale_common::metrics::{self, Stage};
use starkscale_common::plan::{NodeSpec, DEFAULT_FAN_IN};
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
    /// Children per reduce node: a job of up to this many tiles is reduced by one proof.
    #[arg(long, env = "STARKSCALE_FAN_IN", default_value_t = DEFAULT_FAN_IN)]
    pub fan_in: usize,
    /// Where `starkscale coordinator` serves /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "STARKSCALE_METRICS_ADDR",
        default_value_t = metrics::on_all_interfaces(metrics::COORDINATOR_PORT)
    )]
    pub metrics_addr: SocketAddr,
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
            fan_in: DEFAULT_FAN_IN,
            metrics_addr: metrics::on_all_interfaces(metrics::COORDINATOR_PORT),
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
        metrics::jobs_running(coordinator.jobs.len());
    }
}

/// A job being proven: its record, its reduce tree, and the state of each task.
struct Job {
    record: JobRecord,
    plan: TilePlan,
    /// Reduce nodes; node k is task `plan.len() + k`, the root last.
    tree: Vec<NodeSpec>,
    /// Each task's parent node (task index); `None` for the root.
    parents: Vec<Option<usize>>,
    tasks: Vec<TaskRecord>,
    retries: usize,
    /// Seconds from receiving the job to its tasks published, when this process planned it.
    plan_s: Option<f64>,
}

impl Job {
    fn new(record: JobRecord) -> Job {
        let plan = TilePlan::new(record.rows, record.cols, record.tile_rows);
        let tree = plan.reduce_tree(record.fan_in);
        let total = plan.len() + tree.len();
        let mut parents = vec![None; total];
        for node in &tree {
            for &child in &node.children {
                parents[child] = Some(node.task);
            }
        }
        Job {
            tasks: vec![TaskRecord::default(); total],
            record,
            plan,
            tree,
            parents,
            retries: 0,
            plan_s: None,
        }
    }

    fn proven(&self) -> usize {
        self.tasks.iter().filter(|t| t.output.is_some()).count()
    }

    fn node(&self, task: usize) -> Option<&NodeSpec> {
        task.checked_sub(self.plan.len())
            .and_then(|k| self.tree.get(k))
    }

    fn kind(&self, task: usize) -> TaskKind {
        if task < self.plan.len() {
            TaskKind::Map
        } else {
            TaskKind::Reduce
        }
    }

    /// A map task is always ready; a node once all its children are accepted.
    fn ready(&self, task: usize) -> bool {
        self.node(task).is_none_or(|node| {
            node.children
                .iter()
                .all(|&c| self.tasks[c].output.is_some())
        })
    }

    /// The accepted child `task` as its parent's program consumes it.
    fn child(&self, task: usize) -> Option<Child> {
        let program = if task < self.plan.len() {
            Pinned::Map
        } else {
            Pinned::Reduce
        };
        Some(Child {
            program_hash: program.hash(),
            output: self.tasks.get(task)?.output.clone()?,
        })
    }

    fn reduce_input(&self, node: &NodeSpec) -> Option<ReduceInput> {
        let children = node
            .children
            .iter()
            .map(|&c| self.child(c))
            .collect::<Option<Vec<_>>>()?;
        Some(ReduceInput::for_node(&self.plan, node, children))
    }

    /// The A commitment of the planned tiles' digests: what the root must prove.
    fn expected_a_commitment(&self) -> Option<Digest> {
        let digests = self
            .record
            .a_digests
            .iter()
            .map(|h| Digest::from_hex(h))
            .collect::<Option<Vec<_>>>()?;
        (digests.len() == self.plan.len()).then(|| commit_tiles(&self.plan, &digests))
    }

    fn expected_x_commitment(&self) -> Option<Digest> {
        let digests = self
            .record
            .x_digests
            .iter()
            .map(|h| Digest::from_hex(h))
            .collect::<Option<Vec<_>>>()?;
        Some(x_commitment(&digests))
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
            tasks: 0,
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
        metrics::job_submitted();
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
            inputs.push((self.keys.task_input(job_id, tile.index), blob.to_bytes()));
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
            fan_in: self.config.fan_in,
        };
        drop((a, x));
        let ttl = self.ttl();
        self.store.put_all(inputs, ttl).await?;
        self.store
            .put(&self.keys.plan(job_id), &to_json(&record), ttl)
            .await?;
        let mut job = Job::new(record);
        self.publish_ready(job_id, &job).await?;
        job.plan_s = Some(received.elapsed().as_secs_f64());
        self.save_progress(job_id, &job, JobStatus::Running).await?;
        info!(job = %job_id, tiles = job.plan.len(), nodes = job.tree.len(), rows = job.plan.rows, cols = job.plan.cols, "job planned");
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

    /// Publishes the current attempt of every task not yet accepted whose inputs are ready: the
    /// tiles, and the nodes whose children are all accepted (their inputs are written first).
    async fn publish_ready(&self, job_id: &str, job: &Job) -> Result<(), CoordinatorError> {
        let ready: Vec<usize> = (0..job.tasks.len())
            .filter(|&t| job.tasks[t].output.is_none() && job.ready(t))
            .collect();
        let inputs: Vec<(String, Vec<u8>)> = ready
            .iter()
            .filter_map(|&t| {
                job.node(t)
                    .and_then(|n| job.reduce_input(n))
                    .map(|i| (t, i))
            })
            .map(|(t, input)| (self.keys.task_input(job_id, t), input.to_bytes()))
            .collect();
        if !inputs.is_empty() {
            self.store.put_all(inputs, self.ttl()).await?;
        }
        let bodies: Vec<Vec<u8>> = ready
            .iter()
            .map(|&task| {
                to_json(&TaskMsg {
                    job_id: job_id.to_string(),
                    task,
                    kind: job.kind(task),
                    attempt: job.tasks[task].attempt,
                })
            })
            .collect();
        self.broker
            .publish_all(&self.broker.topology().tasks(), &bodies)
            .await?;
        for kind in [TaskKind::Map, TaskKind::Reduce] {
            let count = ready.iter().filter(|&&t| job.kind(t) == kind).count();
            metrics::tasks_published(kind, count);
        }
        Ok(())
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
            tasks: job.tasks.len(),
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
        self.publish_ready(job_id, &job).await?;
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
        let mut job = Job::new(record);
        for (field, value) in self.store.fields(&self.keys.tasks(job_id)).await? {
            let index = field.parse::<usize>().ok();
            let state = serde_json::from_slice::<TaskRecord>(&value).ok();
            if let (Some(slot), Some(state)) = (index.and_then(|i| job.tasks.get_mut(i)), state) {
                *slot = state;
            }
        }
        job.retries = job
            .tasks
            .iter()
            .map(|t| t.attempt.saturating_sub(1) as usize)
            .sum();
        Ok(Some(job))
    }

    /// A job that cannot run: an error result for the client, a dead-lettered copy for operators.
    async fn reject(
        &self,
        delivery: Delivery,
        job_id: &str,
        reason: &str,
    ) -> Result<(), CoordinatorError> {
        warn!(job = %job_id, %reason, "rejecting job");
        metrics::job_completed(JobStatus::Failed, None);
        let result = JobResult {
            job_id: job_id.to_string(),
            status: JobStatus::Failed,
            error: Some(reason.to_string()),
            y: None,
            certificate_key: None,
            tiles: 0,
            nodes: 0,
            wall_s: 0.0,
            tile_s: 0.0,
            reduce_s: 0.0,
            task_timings: Vec::new(),
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
        let index = event.task;
        let Some(state) = self.jobs.get(job_id).and_then(|job| job.tasks.get(index)) else {
            return Ok(()); // a finished, cancelled or unknown job
        };
        // Accepted tasks and superseded attempts change nothing: redeliveries are harmless.
        if state.output.is_some() || state.attempt != event.attempt {
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
                self.check_proof(event).await?.map(|output| TaskRecord {
                    attempt: event.attempt,
                    output: Some(output),
                    seconds: run_s + prove_s + started.elapsed().as_secs_f64(),
                    worker: event.worker.clone(),
                    peak_rss_bytes: *peak_rss_bytes,
                })
            }
            TaskOutcome::Failed {
                reason,
                permanent: true,
            } => {
                let reason = format!("task {index} cannot be proven: {reason}");
                return self.finish(job_id, JobStatus::Failed, Some(reason)).await;
            }
            TaskOutcome::Failed { reason, .. } => Err(reason.clone()),
        };
        let ttl = self.ttl();
        let tasks_key = self.keys.tasks(job_id);
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        let kind = job.kind(index);
        if matches!(event.outcome, TaskOutcome::Proven { .. }) {
            metrics::task_verified(kind, verdict.is_ok());
        }
        match verdict {
            Ok(accepted) => {
                job.tasks[index] = accepted;
                let record = to_json(&job.tasks[index]);
                self.store
                    .put_field(&tasks_key, &index.to_string(), &record, ttl)
                    .await?;
                match job.parents[index] {
                    None => return self.finish(job_id, JobStatus::Succeeded, None).await,
                    Some(parent) if job.ready(parent) => {
                        let job = &self.jobs[job_id];
                        self.publish_node(job_id, job, parent).await?;
                    }
                    Some(_) => {}
                }
            }
            Err(reason) => {
                warn!(job = %job_id, task = index, attempt = event.attempt, %reason, "proof rejected");
                if event.attempt >= self.config.max_attempts {
                    let reason = format!(
                        "task {index} failed {} attempts; last: {reason}",
                        event.attempt
                    );
                    return self.finish(job_id, JobStatus::Failed, Some(reason)).await;
                }
                job.tasks[index].attempt = event.attempt + 1;
                job.retries += 1;
                metrics::task_retried(kind);
                let record = to_json(&job.tasks[index]);
                self.store
                    .put_field(&tasks_key, &index.to_string(), &record, ttl)
                    .await?;
                self.publish_task(TaskMsg {
                    job_id: job_id.to_string(),
                    task: index,
                    kind,
                    attempt: event.attempt + 1,
                })
                .await?;
            }
        }
        if let Some(job) = self.jobs.get(job_id) {
            self.save_progress(job_id, job, JobStatus::Running).await?;
        }
        Ok(())
    }

    /// Writes a ready node's input (its children's accepted outputs) and publishes its task.
    async fn publish_node(
        &self,
        job_id: &str,
        job: &Job,
        task: usize,
    ) -> Result<(), CoordinatorError> {
        let Some(input) = job.node(task).and_then(|n| job.reduce_input(n)) else {
            return Ok(());
        };
        self.store
            .put(
                &self.keys.task_input(job_id, task),
                &input.to_bytes(),
                self.ttl(),
            )
            .await?;
        self.publish_task(TaskMsg {
            job_id: job_id.to_string(),
            task,
            kind: TaskKind::Reduce,
            attempt: job.tasks[task].attempt,
        })
        .await
    }

    /// Publishes one task (a ready node, or a task's next attempt).
    async fn publish_task(&self, msg: TaskMsg) -> Result<(), CoordinatorError> {
        let tasks = self.broker.topology().tasks();
        self.broker
            .publish(&tasks, &to_json(&msg), &Headers::new(), None)
            .await?;
        metrics::tasks_published(msg.kind, 1);
        Ok(())
    }

    /// Verifies a reported proof and that it states exactly the planned task: a tile at its
    /// position with its digests, or a node over exactly its children's facts (the root also with
    /// the planned commitments). Returns the proof's public output, or `Ok(Err(reason))` when
    /// the worker's claim does not hold.
    async fn check_proof(&self, event: &TaskEvent) -> Result<Result<Vec<u32>, String>, StoreError> {
        let key = self.keys.proof(&event.job_id, event.task, event.attempt);
        let Some(proof) = self.store.get(&key).await? else {
            return Ok(Err(format!("no proof at {key}")));
        };
        let Some(job) = self.jobs.get(&event.job_id) else {
            return Ok(Err("job finished".into()));
        };
        let allow_test = self.config.allow_test_profile;
        let started = Instant::now();
        let checked = match job.node(event.task) {
            None => check_tile(job, event.task, &proof, allow_test),
            Some(node) => check_node(job, node, &proof, allow_test),
        };
        let seconds = started.elapsed().as_secs_f64();
        metrics::stage(job.kind(event.task), Stage::Verify, seconds);
        Ok(checked)
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
        let tiles = job.plan.len();
        let seconds = |range: std::ops::Range<usize>| -> f64 {
            job.tasks[range].iter().map(|t| t.seconds).sum()
        };
        let mut result = JobResult {
            job_id: job_id.to_string(),
            status,
            error,
            y: None,
            certificate_key: None,
            tiles,
            nodes: job.tree.len(),
            wall_s: unix_ms().saturating_sub(job.record.started_unix_ms) as f64 / 1000.0,
            tile_s: seconds(0..tiles),
            reduce_s: seconds(tiles..job.tasks.len()),
            task_timings: Vec::new(),
        };
        if status == JobStatus::Succeeded {
            match self.certificate(job_id, &job).await? {
                Ok((certificate, y)) => {
                    let key = self.keys.certificate(job_id);
                    self.store.put(&key, &certificate, self.ttl()).await?;
                    result.y = Some(y);
                    result.certificate_key = Some(key);
                    result.task_timings = job
                        .tasks
                        .iter()
                        .enumerate()
                        .map(|(task, t)| TaskTiming {
                            task,
                            kind: job.kind(task),
                            attempt: t.attempt,
                            worker: t.worker.clone(),
                            seconds: t.seconds,
                            peak_rss_bytes: t.peak_rss_bytes,
                        })
                        .collect();
                }
                Err(reason) => {
                    result.status = JobStatus::Failed;
                    result.error = Some(reason);
                }
            }
        }
        self.save_progress(job_id, &job, result.status).await?;
        metrics::job_completed(result.status, Some(result.wall_s));
        let working = self
            .keys
            .working_set(job_id, job.tasks.len(), self.config.max_attempts);
        self.store.delete(&working).await?;
        info!(job = %job_id, status = ?result.status, wall_s = result.wall_s, "job finished");
        self.publish_result(&result, job.record.reply_to.as_deref())
            .await
    }

    /// The job certificate from the accepted proofs (tiles, nodes, root last) and the root's y.
    async fn certificate(
        &self,
        job_id: &str,
        job: &Job,
    ) -> Result<Result<(Vec<u8>, Vec<i64>), String>, StoreError> {
        let root = job.tasks.last().and_then(|t| t.output.as_deref());
        let Some(root) = root.and_then(|words| RootOutput::from_words(words).ok()) else {
            return Ok(Err("the accepted root output is unreadable".into()));
        };
        let mut proofs = Vec::with_capacity(job.tasks.len());
        for (task, state) in job.tasks.iter().enumerate() {
            let key = self.keys.proof(job_id, task, state.attempt);
            match self.store.get(&key).await? {
                Some(proof) => proofs.push(proof),
                // Verified moments ago and stored with a TTL of hours: only an operator deleting
                // keys gets here. Fail the job rather than issue a short certificate.
                None => return Ok(Err(format!("accepted proof {key} vanished"))),
            }
        }
        Ok(Ok((Certificate::new(&root, proofs).to_bytes(), root.y)))
    }
}

/// A tile's proof: the map kernel, at the planned position and shape, of the planned digests.
fn check_tile(job: &Job, task: usize, proof: &[u8], allow_test: bool) -> Result<Vec<u32>, String> {
    let tile = job.plan.tile(task).ok_or("no such tile")?;
    let verified = verify_tile(proof, allow_test).map_err(|e| e.to_string())?;
    let out = &verified.output;
    let expected = (tile.row0, tile.col0, tile.rows, tile.cols);
    let stated = (
        out.row0 as usize,
        out.col0 as usize,
        out.rows as usize,
        out.cols as usize,
    );
    if stated != expected {
        return Err(format!(
            "proof is of a {}x{} tile at ({}, {}), not the planned {}x{} at ({}, {})",
            stated.2, stated.3, stated.0, stated.1, expected.2, expected.3, expected.0, expected.1
        ));
    }
    if job.record.a_digests.get(tile.index) != Some(&out.a_digest.to_hex()) {
        return Err("proof is of other A entries".into());
    }
    if job.record.x_digests.get(tile.col_block) != Some(&out.x_digest.to_hex()) {
        return Err("proof is of another x block".into());
    }
    Ok(out.to_words())
}

/// A node's proof: the reduce (or root) program over exactly the accepted children, in order.
fn check_node(
    job: &Job,
    node: &NodeSpec,
    proof: &[u8],
    allow_test: bool,
) -> Result<Vec<u32>, String> {
    let verified = verify_proof(proof, allow_test).map_err(|e| e.to_string())?;
    let input = job
        .reduce_input(node)
        .ok_or("a child of this node is not accepted")?;
    let children: Vec<Fact> = input.children.iter().map(Child::fact).collect();
    let expected = if node.root {
        Pinned::Root
    } else {
        Pinned::Reduce
    };
    if verified.program != expected {
        return Err(format!(
            "proof is of the {} program, not the {} program",
            verified.program.name(),
            expected.name()
        ));
    }
    let words = verified.output;
    let facts = if node.root {
        let out = RootOutput::from_words(&words)?;
        if Some(out.a_commitment) != job.expected_a_commitment() {
            return Err("root proves another A commitment than the planned tiles'".into());
        }
        if Some(out.x_commitment) != job.expected_x_commitment() {
            return Err("root proves another x commitment".into());
        }
        out.facts
    } else {
        let out = NodeOutput::from_words(&words)?;
        if (out.row0 as usize, out.rows as usize) != (node.row0, node.rows) {
            return Err("node proof covers other rows than planned".into());
        }
        out.facts
    };
    if facts != children {
        return Err("node proof states other child facts than the accepted children's".into());
    }
    Ok(words)
}
