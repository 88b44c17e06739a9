//! The reconcile pass: whatever a stop, a crash or a store that lost its data left undone is done
//! again, and no job outlives its deadline.
//!
//! - **Full** (at start and after every reconnect): every job of the open-jobs index and of the
//!   cache is reloaded from the store, which is the truth while it has the job. A job the store
//!   no longer has is planned again from its message when the cache still holds it, or failed
//!   with a result saying so; a job that ended but stayed in the index has its result published
//!   again.
//! - **Light** (every `reconcile_interval_s`): one pipelined EXISTS over the cached jobs' records
//!   finds jobs whose state the store lost (a FLUSHALL, a restart without persistence).
//!
//! Both then walk the cache: a job past its deadline fails naming its stage; a finishing job is
//! completed; a running job has its due tasks published (never published, or published before a
//! crash could record it), or finishes when every task is in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use starkscale_common::broker::Broker;
use starkscale_common::job::{JobError, Request};
use starkscale_common::messages::{
    unix_ms, Ending, JobProgress, JobRecord, JobStatus, Layout, TaskRecord, TileLayout,
};
use starkscale_common::metrics;
use starkscale_common::store::Store;
use tracing::{info, warn};

use crate::finish::{answer_from_store, fail_unplanned};
use crate::intake::{plan_job, Refusal};
use crate::settle::Failure;
use crate::state::Job;
use crate::{to_json, Coordinator, CoordinatorConfig, Done, Services};

impl<B: Broker, S: Store> Coordinator<B, S> {
    pub(crate) async fn reconcile(&mut self, full: bool) -> Result<(), Failure> {
        let started = Instant::now();
        let open: Vec<String> = self
            .svc
            .store
            .fields(&self.svc.keys.open_jobs())
            .await?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if full {
            self.reload(open).await?;
        } else {
            self.find_lost().await?;
        }
        let deadline_ms = self.svc.config.job_deadline_s.saturating_mul(1000);
        let ids: Vec<String> = self.jobs.keys().cloned().collect();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            match job.status {
                JobStatus::Planning => {}
                JobStatus::Finishing => {
                    metrics::redriven("finish", 1);
                    self.complete(&id).await?;
                }
                _ if job.age_ms() > deadline_ms => {
                    let error = format!(
                        "deadline of {} s exceeded while {}",
                        self.svc.config.job_deadline_s,
                        job.stage()
                    );
                    metrics::redriven("deadline", 1);
                    self.finish(&id, Ending::failed(error)).await?;
                }
                _ if job.all_accepted() => {
                    metrics::redriven("finish", 1);
                    self.advance(&id).await?;
                }
                _ => {
                    let due = job.due(unix_ms()).len();
                    if due > 0 {
                        metrics::redriven("task", due);
                        self.advance(&id).await?;
                    }
                }
            }
        }
        metrics::reconciled(started.elapsed());
        Ok(())
    }

    /// Reloads every open or cached job from the store.
    async fn reload(&mut self, open: Vec<String>) -> Result<(), Failure> {
        let mut ids = open;
        ids.extend(self.jobs.keys().cloned());
        ids.sort();
        ids.dedup();
        let deadline_ms = self.svc.config.job_deadline_s.saturating_mul(1000);
        for id in ids {
            if let Some(mut job) = self.load(&id).await? {
                if let Some(cached) = self.jobs.get(&id) {
                    self.keep_accepted(&mut job, cached).await?;
                }
                self.jobs.insert(id, job);
                continue;
            }
            let progress = self
                .svc
                .store
                .get(&self.svc.keys.progress(&id))
                .await?
                .and_then(|b| serde_json::from_slice::<JobProgress>(&b).ok());
            match progress {
                Some(p) if p.status.is_final() => {
                    // Ended, but a stop came before it left the index: say so once more.
                    self.jobs.remove(&id);
                    metrics::redriven("result", 1);
                    answer_from_store(&self.svc, &id, None).await?;
                    self.forget(&id).await?;
                }
                Some(p) if p.status == JobStatus::Planning => {
                    // Its message is unacked and comes back to be planned; unless it never does.
                    if unix_ms().saturating_sub(p.started_unix_ms) > deadline_ms {
                        let reason = format!(
                            "deadline of {} s exceeded while planning",
                            self.svc.config.job_deadline_s
                        );
                        metrics::redriven("deadline", 1);
                        fail_unplanned(&self.svc, &id, Some(p.started_unix_ms), reason).await?;
                    }
                }
                _ if self.jobs.contains_key(&id) => {
                    let why = "the store lost the job's state".to_string();
                    self.recover(&id, why).await?;
                }
                _ => {
                    let reason = "the store lost the job's state and its message: submit it again"
                        .to_string();
                    metrics::redriven("replan", 1);
                    fail_unplanned(&self.svc, &id, None, reason).await?;
                }
            }
        }
        Ok(())
    }

    /// A store that lost its last writes (an append-only file synced every second) may hold an
    /// older state of a job than the cache: tasks this coordinator verified and accepted are
    /// accepted still, and written back. Nothing else is taken from the cache.
    async fn keep_accepted(&self, job: &mut Job, cached: &Job) -> Result<(), Failure> {
        job.request = job.request.take().or_else(|| cached.request.clone());
        if cached.record != job.record {
            return Ok(());
        }
        let mut restored = Vec::new();
        for (task, (stored, known)) in job.tasks.iter_mut().zip(&cached.tasks).enumerate() {
            if stored.output.is_none() && known.output.is_some() {
                *stored = known.clone();
                restored.push((task.to_string(), to_json(stored)));
            }
        }
        if !restored.is_empty() {
            warn!(job = %job.id(), tasks = restored.len(), "the store lost accepted tasks; writing them back");
            let key = self.svc.keys.tasks(job.id());
            self.svc
                .store
                .put_fields(&key, restored, self.svc.ttl())
                .await?;
        }
        Ok(())
    }

    /// Deletes an ended job's working keys (as its record and task records describe them) and
    /// takes it out of the open-jobs index.
    async fn forget(&self, job_id: &str) -> Result<(), Failure> {
        let keys = &self.svc.keys;
        let record = self.svc.store.get(&keys.plan(job_id)).await?;
        if let Some(record) = record.and_then(|b| serde_json::from_slice::<JobRecord>(&b).ok()) {
            let tasks = Job::new(record).tasks.len();
            let attempts = self
                .svc
                .store
                .fields(&keys.tasks(job_id))
                .await?
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice::<TaskRecord>(v).ok())
                .map(|t| t.attempt)
                .max()
                .unwrap_or(1);
            let working = keys.working_set(job_id, tasks, attempts);
            self.svc.store.delete(&working).await?;
        }
        self.svc
            .store
            .delete_field(&keys.open_jobs(), job_id)
            .await?;
        Ok(())
    }

    /// Cached jobs whose record is gone from the store lost their state: plan them again.
    async fn find_lost(&mut self) -> Result<(), Failure> {
        let ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.status != JobStatus::Planning)
            .map(|(id, _)| id.clone())
            .collect();
        let plans: Vec<String> = ids.iter().map(|id| self.svc.keys.plan(id)).collect();
        let present = self.svc.store.exist(&plans).await?;
        for (id, present) in ids.into_iter().zip(present) {
            if !present {
                self.recover(&id, "the store lost the job's state".into())
                    .await?;
            }
        }
        Ok(())
    }

    /// The store lost part or all of a job's state: plan it again from its message (in the
    /// background), or fail it when the message is gone too.
    pub(crate) async fn recover(&mut self, job_id: &str, why: String) -> Result<(), Failure> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        if job.status == JobStatus::Planning {
            return Ok(()); // already being planned again
        }
        let Some(request) = job.request.clone() else {
            let error = format!("{why}, and its message is gone too: submit it again");
            return self.finish(job_id, Ending::failed(error)).await;
        };
        warn!(job = %job_id, %why, "planning the job again from its message");
        metrics::redriven("replan", 1);
        job.status = JobStatus::Planning;
        let (reply_to, started) = (job.record.reply_to.clone(), job.record.started_unix_ms);
        let svc = self.svc.clone();
        let id = job_id.to_string();
        self.work.spawn(async move {
            let planned = replan(&svc, &id, request, reply_to, started).await;
            Done::Replanned(id, planned)
        });
        Ok(())
    }

    pub(crate) async fn on_replanned(
        &mut self,
        job_id: &str,
        planned: Result<Job, Refusal>,
    ) -> Result<(), Failure> {
        let Some(cached) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        match planned {
            Ok(mut job) => {
                job.retries = cached.retries;
                self.jobs.insert(job_id.to_string(), job);
                let started = self.jobs[job_id].record.started_unix_ms;
                self.svc
                    .store
                    .put_field(
                        &self.svc.keys.open_jobs(),
                        job_id,
                        started.to_string().as_bytes(),
                        self.svc.ttl(),
                    )
                    .await?;
                info!(job = %job_id, "job planned again");
                self.publish_due(job_id).await?;
                self.save_progress(job_id).await
            }
            Err(Refusal::Job(e)) => {
                cached.status = JobStatus::Running;
                let error =
                    format!("the store lost the job's state, and planning it again failed: {e}");
                self.finish(job_id, Ending::failed(error)).await
            }
            Err(Refusal::Fleet(failure)) => {
                // The next reconcile pass tries again.
                cached.status = JobStatus::Running;
                Err(failure)
            }
        }
    }
}

async fn replan<B, S: Store>(
    svc: &Services<B, S>,
    job_id: &str,
    request: Arc<Vec<u8>>,
    reply_to: Option<String>,
    started_unix_ms: u64,
) -> Result<Job, Refusal> {
    let spec = match Request::parse(&request, &svc.limits)? {
        Request::Job(spec) => spec,
        Request::Cancel(_) => return Err(JobError::Json("not a job message".into()).into()),
    };
    plan_job(svc, job_id, &spec, request, reply_to, started_unix_ms).await
}

/// Times one full reconcile pass over `jobs` open jobs of `tiles` tiles each, planned into
/// `store` under `config`'s prefix with no task accepted and every task published: the work a
/// restarted coordinator does before it serves. Returns the pass's duration; the jobs' keys
/// are deleted afterwards.
pub async fn bench_reconcile<B: Broker, S: Store>(
    broker: B,
    store: S,
    config: &CoordinatorConfig,
    jobs: usize,
    tiles: usize,
) -> Result<Duration, crate::CoordinatorError> {
    let svc = Services::new(broker, store, config);
    let ttl = Duration::from_secs(600);
    let mut ids = Vec::with_capacity(jobs);
    for j in 0..jobs {
        let id = format!("bench-reconcile-{j}");
        let record = JobRecord {
            job_id: id.clone(),
            reply_to: None,
            started_unix_ms: unix_ms(),
            layout: Layout::Tiles(TileLayout {
                rows: tiles * 2,
                cols: 1024,
                tile_rows: 2,
                a_digests: vec!["00".repeat(32); tiles],
                x_digests: vec!["00".repeat(32)],
                fan_in: crate::DEFAULT_FAN_IN,
                matmul: false,
            }),
        };
        let mut job = Job::new(record);
        for task in job.tasks.iter_mut() {
            task.published_unix_ms = Some(unix_ms());
        }
        svc.store
            .put(&svc.keys.plan(&id), &to_json(&job.record), ttl)
            .await?;
        let fields = job
            .tasks
            .iter()
            .enumerate()
            .map(|(t, r)| (t.to_string(), to_json(r)))
            .collect();
        svc.store
            .put_fields(&svc.keys.tasks(&id), fields, ttl)
            .await?;
        job.status = JobStatus::Running;
        svc.store
            .put(&svc.keys.progress(&id), &to_json(&job.progress()), ttl)
            .await?;
        svc.store
            .put_field(&svc.keys.open_jobs(), &id, b"0", ttl)
            .await?;
        ids.push(id);
    }
    let mut coordinator = Coordinator {
        svc: svc.clone(),
        jobs: Default::default(),
        pending_cancels: Default::default(),
        work: Default::default(),
    };
    let started = Instant::now();
    let passed = coordinator.reconcile(true).await;
    let elapsed = started.elapsed();
    let loaded = coordinator.jobs.len();
    let mut keys: Vec<String> = ids
        .iter()
        .flat_map(|id| [svc.keys.plan(id), svc.keys.tasks(id), svc.keys.progress(id)])
        .collect();
    keys.push(svc.keys.open_jobs());
    svc.store.delete(&keys).await?;
    match passed {
        Ok(()) if loaded == jobs => Ok(elapsed),
        Ok(()) => Err(crate::CoordinatorError::Store(
            starkscale_common::store::StoreError::refused(
                "reconcile",
                "bench",
                format!("loaded {loaded} of {jobs} jobs"),
            ),
        )),
        Err(Failure::Fleet(e)) => Err(e),
        Err(Failure::Message(m)) => Err(crate::CoordinatorError::Store(
            starkscale_common::store::StoreError::refused("reconcile", "bench", m),
        )),
    }
}
