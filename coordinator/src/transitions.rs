//! The transitions of a running job and their writes, in the order that makes each one safe to
//! repeat:
//!
//! - **accept** a task: its record (with the proof's output) is written first; then
//!   [`Coordinator::advance`] publishes whatever became ready, or finishes the job when every
//!   task is in. A redelivered event of an accepted task runs `advance` again, so a coordinator
//!   that stopped in between leaves nothing undone.
//! - **publish**: a task's record says when its current attempt was published; a task whose
//!   record says it never was is published by the next [`Coordinator::publish_due`] (after a
//!   crash between the two, a task may go out twice: the second proof's event is ignored).
//! - **retry** (a failed or refused proof): a new attempt, written before it is published;
//!   events of older attempts change nothing.
//! - **dead-lettered task** (the broker gave up after its delivery limit: the workers that took
//!   it died or could not finish it): published again after a backoff, up to
//!   `max_dead_letters` times, then the job fails naming the task.

use starkscale_common::broker::{Broker, Delivery, DELIVERY_LIMIT};
use starkscale_common::job::JobError;
use starkscale_common::messages::{
    unix_ms, Ending, JobProgress, JobRecord, JobStatus, TaskEvent, TaskMsg, TaskOutcome, TaskRecord,
};
use starkscale_common::metrics::{self, QueueRole};
use starkscale_common::store::Store;
use tracing::{info, warn};

use crate::acceptance::{verify_reported, Verdict};
use crate::settle::{settle, Failure};
use crate::state::Job;
use crate::{to_json, Coordinator, CoordinatorError, Done};

impl<B: Broker, S: Store> Coordinator<B, S> {
    /// A freshly planned job: publish its tasks, then say it runs.
    pub(crate) async fn on_planned(&mut self, job: Job) -> Result<(), Failure> {
        let job_id = job.id().to_string();
        self.jobs.insert(job_id.clone(), job);
        self.publish_due(&job_id).await?;
        self.save_progress(&job_id).await?;
        if self.pending_cancels.remove(&job_id) {
            return self.cancel(&job_id).await;
        }
        Ok(())
    }

    pub(crate) async fn on_event(&mut self, delivery: Delivery) -> Result<(), CoordinatorError> {
        let events = self.svc.broker.topology().events();
        let event: TaskEvent = match serde_json::from_slice(&delivery.body) {
            Ok(event) => event,
            Err(e) => {
                let malformed = Err(Failure::Message(format!("malformed event: {e}")));
                return settle(&self.svc.broker, delivery, &events, malformed).await;
            }
        };
        match self.on_task_event(&event).await {
            Ok(Some((kind, expected))) => {
                // Fetch and verify the proof off the loop; the delivery waits unsettled.
                let (store, keys) = (self.svc.store.clone(), self.svc.keys.clone());
                let allow_test = self.svc.config.allow_test_profile;
                self.work.spawn(async move {
                    let checked =
                        verify_reported(store, keys, event.clone(), kind, expected, allow_test)
                            .await;
                    Done::Verified {
                        delivery,
                        event,
                        checked,
                    }
                });
                Ok(())
            }
            Ok(None) => settle(&self.svc.broker, delivery, &events, Ok(())).await,
            Err(failure) => settle(&self.svc.broker, delivery, &events, Err(failure)).await,
        }
    }

    /// Applies an event, or returns what its proof must state when it has to be verified.
    async fn on_task_event(
        &mut self,
        event: &TaskEvent,
    ) -> Result<
        Option<(
            starkscale_common::messages::TaskKind,
            crate::acceptance::Expected,
        )>,
        Failure,
    > {
        let job_id = event.job_id.as_str();
        if !self.ensure_loaded(job_id).await? {
            return Ok(None); // a finished, cancelled or unknown job
        }
        let job = &self.jobs[job_id];
        let Some(state) = job.tasks.get(event.task) else {
            return Ok(None);
        };
        if job.status != JobStatus::Running {
            return Ok(None);
        }
        if state.output.is_some() {
            // Accepted already: this is a redelivery, maybe after a stop before what follows.
            return self.advance(job_id).await.map(|()| None);
        }
        if state.attempt != event.attempt {
            return Ok(None); // a superseded attempt
        }
        let task = event.task;
        match &event.outcome {
            TaskOutcome::Proven { .. } => match job.expected(task) {
                Ok(expected) => Ok(Some((job.kind(task), expected))),
                Err(reason) => self.retry(job_id, task, reason).await.map(|()| None),
            },
            TaskOutcome::Failed {
                reason,
                permanent: true,
            } => self
                .on_unprovable(job_id, task, &event.worker, reason)
                .await
                .map(|()| None),
            TaskOutcome::Failed { reason, .. } => self
                .retry(job_id, task, reason.clone())
                .await
                .map(|()| None),
            TaskOutcome::InputMissing { key } => {
                let why = format!("the input of task {task} vanished from the store ({key})");
                self.recover(job_id, why).await.map(|()| None)
            }
        }
    }

    /// A verified (or refused) proof, back from [`verify_reported`].
    pub(crate) async fn on_verdict(
        &mut self,
        event: &TaskEvent,
        verdict: Verdict,
        verify_s: f64,
    ) -> Result<(), Failure> {
        let job_id = event.job_id.as_str();
        // The job may have moved on while the proof was being checked.
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        let Some(state) = job.tasks.get(event.task) else {
            return Ok(());
        };
        if job.status != JobStatus::Running
            || state.output.is_some()
            || state.attempt != event.attempt
        {
            return Ok(());
        }
        let kind = job.kind(event.task);
        metrics::task_verified(kind, verdict.is_ok());
        let accepted = match verdict {
            Ok(accepted) => accepted,
            Err(reason) => {
                warn!(job = %job_id, task = event.task, attempt = event.attempt, %reason, "proof rejected");
                return self.retry(job_id, event.task, reason).await;
            }
        };
        let TaskOutcome::Proven {
            run_s,
            prove_s,
            peak_rss_bytes,
            ..
        } = &event.outcome
        else {
            return Ok(());
        };
        let accepted = TaskRecord {
            attempt: event.attempt,
            output: Some(accepted.output),
            proof_digest: Some(accepted.proof_digest),
            seconds: run_s + prove_s + verify_s,
            worker: event.worker.clone(),
            peak_rss_bytes: *peak_rss_bytes,
            ..state.clone()
        };
        let record = to_json(&accepted);
        job.tasks[event.task] = accepted;
        let (key, ttl) = (self.svc.keys.tasks(job_id), self.svc.ttl());
        self.svc
            .store
            .put_field(&key, &event.task.to_string(), &record, ttl)
            .await?;
        starkscale_common::faults::crash_point("accept:before-advance");
        self.advance(job_id).await
    }

    /// What follows from accepted tasks: the job finishes when every task is in; otherwise
    /// every task that became ready is published. Safe to run any number of times.
    pub(crate) async fn advance(&mut self, job_id: &str) -> Result<(), Failure> {
        let Some(job) = self.jobs.get(job_id) else {
            return Ok(());
        };
        if job.status != JobStatus::Running {
            return Ok(());
        }
        if job.all_accepted() {
            return self.finish(job_id, Ending::succeeded()).await;
        }
        self.publish_due(job_id).await?;
        self.save_progress(job_id).await
    }

    /// A worker says the task cannot be proven. One worker's word does not fail a job (it may
    /// be faulty, or lie): the task goes out again, and only a second worker's agreement — or
    /// the attempts running out — fails the job.
    async fn on_unprovable(
        &mut self,
        job_id: &str,
        task: usize,
        worker: &str,
        reason: &str,
    ) -> Result<(), Failure> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        let record = &mut job.tasks[task];
        if let Some(first) = record.unprovable_by.iter().find(|w| *w != worker) {
            let error = format!(
                "task {task} cannot be proven (workers {first} and {worker} agree): {reason}"
            );
            return self.finish(job_id, Ending::failed(error)).await;
        }
        if !record.unprovable_by.iter().any(|w| w == worker) {
            record.unprovable_by.push(worker.to_string());
        }
        let reason = format!("worker {worker} reports it cannot be proven: {reason}");
        self.retry(job_id, task, reason).await
    }

    /// Sends `task` back as a new attempt, or fails the job once its attempts are used up.
    async fn retry(&mut self, job_id: &str, task: usize, reason: String) -> Result<(), Failure> {
        let max_attempts = self.svc.config.max_attempts;
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        let attempt = job.tasks[task].attempt;
        if attempt >= max_attempts {
            let error = format!("task {task} failed {attempt} attempts; last: {reason}");
            return self.finish(job_id, Ending::failed(error)).await;
        }
        info!(job = %job_id, task, attempt, %reason, "sending the task back");
        let record = &mut job.tasks[task];
        record.attempt += 1;
        record.published_unix_ms = None;
        job.retries += 1;
        metrics::task_retried(job.kind(task));
        self.save_task(job_id, task).await?;
        self.publish_due(job_id).await?;
        self.save_progress(job_id).await
    }

    /// Publishes every due task of the job (ready, not accepted, not yet published, not backing
    /// off); a node's or batch root's input (its children's outputs) is written before its task
    /// goes out, and
    /// each record notes the publication after the broker confirmed it.
    pub(crate) async fn publish_due(&mut self, job_id: &str) -> Result<(), Failure> {
        let Some(job) = self.jobs.get(job_id) else {
            return Ok(());
        };
        let now = unix_ms();
        let due = job.due(now);
        if due.is_empty() {
            return Ok(());
        }
        let ttl = self.svc.ttl();
        let inputs: Vec<(String, Vec<u8>)> = due
            .iter()
            .filter_map(|&t| {
                job.late_input(t)
                    .map(|input| (self.svc.keys.task_input(job_id, t), input))
            })
            .collect();
        self.svc.store.put_all(inputs, ttl).await?;
        let bodies: Vec<Vec<u8>> = due.iter().map(|&t| to_json(&job.task_msg(t))).collect();
        let tasks = self.svc.broker.topology().tasks();
        self.svc.broker.publish_all(&tasks, &bodies).await?;
        starkscale_common::faults::crash_point("publish:before-record");
        for kind in starkscale_common::messages::TaskKind::ALL {
            metrics::tasks_published(kind, due.iter().filter(|&&t| job.kind(t) == kind).count());
        }
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        for &t in &due {
            job.tasks[t].published_unix_ms = Some(now);
        }
        let fields = due
            .iter()
            .map(|&t| (t.to_string(), to_json(&job.tasks[t])))
            .collect();
        self.svc
            .store
            .put_fields(&self.svc.keys.tasks(job_id), fields, ttl)
            .await?;
        Ok(())
    }

    /// Publishes the due tasks of every job (a backoff ran out).
    pub(crate) async fn publish_all_due(&mut self) -> Result<(), Failure> {
        let now = unix_ms();
        let ids: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                j.status == JobStatus::Running && j.next_due_ms().is_some_and(|t| t <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.publish_due(&id).await?;
        }
        Ok(())
    }

    /// A message the broker dead-lettered after its delivery limit.
    pub(crate) async fn on_expired(&mut self, delivery: Delivery) -> Result<(), CoordinatorError> {
        let expired = self.svc.broker.topology().expired();
        let source = delivery
            .dead_letter_source()
            .unwrap_or_default()
            .to_string();
        let reason = delivery
            .dead_letter_reason()
            .unwrap_or("delivery limit")
            .to_string();
        let handled = match QueueRole::of(&source) {
            QueueRole::Tasks => self.on_task_expired(&delivery.body, &reason).await,
            QueueRole::Jobs => self.on_job_expired(&delivery, &reason).await,
            _ => Err(Failure::Message(format!(
                "dead-lettered by the broker from {source} ({reason}) after {DELIVERY_LIMIT} deliveries"
            ))),
        };
        settle(&self.svc.broker, delivery, &expired, handled).await
    }

    async fn on_task_expired(&mut self, body: &[u8], reason: &str) -> Result<(), Failure> {
        let msg: TaskMsg = serde_json::from_slice(body)
            .map_err(|e| Failure::Message(format!("malformed dead-lettered task: {e}")))?;
        let job_id = msg.job_id.as_str();
        if !self.ensure_loaded(job_id).await? {
            return Err(Failure::Message(format!(
                "task {} of job {job_id}, which is not running, was dead-lettered ({reason})",
                msg.task
            )));
        }
        let (max, base_ms) = (
            self.svc.config.max_dead_letters,
            self.svc.config.dead_letter_backoff_ms,
        );
        let job = self
            .jobs
            .get_mut(job_id)
            .ok_or(Failure::Message("gone".into()))?;
        let kind = job.kind(msg.task);
        let Some(record) = job.tasks.get_mut(msg.task) else {
            return Err(Failure::Message(format!(
                "no task {} in job {job_id}",
                msg.task
            )));
        };
        if job.status != JobStatus::Running
            || record.output.is_some()
            || record.attempt != msg.attempt
        {
            return Ok(()); // superseded: the task moved on without this copy
        }
        record.dead_letters += 1;
        if record.dead_letters > max {
            let error = format!(
                "task {} ({}) was dead-lettered {} times: each time its {DELIVERY_LIMIT} deliveries \
                 ended without a result (the workers that took it died or gave it back; last: {reason})",
                msg.task,
                kind.name(),
                record.dead_letters
            );
            self.finish(job_id, Ending::failed(error.clone())).await?;
            return Err(Failure::Message(error));
        }
        let backoff = base_ms.saturating_mul(1 << (record.dead_letters - 1).min(16));
        warn!(job = %job_id, task = msg.task, dead_letters = record.dead_letters, backoff_ms = backoff, "task dead-lettered; publishing it again after a backoff");
        record.attempt += 1;
        record.published_unix_ms = None;
        record.not_before_unix_ms = unix_ms() + backoff;
        job.retries += 1;
        metrics::task_retried(kind);
        self.save_task(job_id, msg.task).await?;
        self.save_progress(job_id).await
    }

    /// A job message that failed `DELIVERY_LIMIT` times (it stopped the coordinator each time):
    /// the job is refused with that reason.
    async fn on_job_expired(&mut self, delivery: &Delivery, reason: &str) -> Result<(), Failure> {
        let job_id = serde_json::from_slice::<serde_json::Value>(&delivery.body)
            .ok()
            .and_then(|v| v.get("job_id").and_then(|id| id.as_str()).map(String::from))
            .unwrap_or_else(|| "invalid".into());
        let error = JobError::Limit(format!(
            "the coordinator could not handle this job in {DELIVERY_LIMIT} deliveries ({reason})"
        ));
        let started = (job_id != "invalid").then(unix_ms);
        Err(crate::intake::refuse(
            &self.svc,
            &job_id,
            delivery.reply_to.as_deref(),
            started,
            error,
        )
        .await)
    }

    /// A cancel request: a running job ends now, with its keys freed.
    pub(crate) async fn cancel(&mut self, job_id: &str) -> Result<(), Failure> {
        if !self.ensure_loaded(job_id).await? {
            let progress = self.svc.store.get(&self.svc.keys.progress(job_id)).await?;
            let planning = progress
                .and_then(|b| serde_json::from_slice::<JobProgress>(&b).ok())
                .is_some_and(|p| p.status == JobStatus::Planning);
            if planning {
                self.pending_cancels.insert(job_id.to_string());
            } else {
                info!(job = %job_id, "cancel of a job that is not running ignored");
            }
            return Ok(());
        }
        info!(job = %job_id, "cancelling");
        self.finish(job_id, Ending::cancelled()).await
    }

    /// Makes sure a job is in the cache, loading it from the store; false if it is not running.
    pub(crate) async fn ensure_loaded(&mut self, job_id: &str) -> Result<bool, Failure> {
        if self.jobs.contains_key(job_id) {
            return Ok(true);
        }
        match self.load(job_id).await? {
            Some(job) => {
                self.jobs.insert(job_id.to_string(), job);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A job planned earlier (by this or another coordinator), from the store: `None` unless its
    /// progress says it runs or finishes.
    pub(crate) async fn load(&self, job_id: &str) -> Result<Option<Job>, Failure> {
        let keys = &self.svc.keys;
        let Some(progress) = self.svc.store.get(&keys.progress(job_id)).await? else {
            return Ok(None);
        };
        let Ok(progress) = serde_json::from_slice::<JobProgress>(&progress) else {
            warn!(job = %job_id, "unreadable job progress; ignoring the job");
            return Ok(None);
        };
        if !matches!(progress.status, JobStatus::Running | JobStatus::Finishing) {
            return Ok(None);
        }
        let Some(bytes) = self.svc.store.get(&keys.plan(job_id)).await? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<JobRecord>(&bytes) else {
            warn!(job = %job_id, "unreadable job record; ignoring the job");
            return Ok(None);
        };
        let mut job = Job::new(record);
        for (field, value) in self.svc.store.fields(&keys.tasks(job_id)).await? {
            let index = field.parse::<usize>().ok();
            let state = serde_json::from_slice::<TaskRecord>(&value).ok();
            if let (Some(slot), Some(state)) = (index.and_then(|i| job.tasks.get_mut(i)), state) {
                *slot = state;
            }
        }
        job.retries = progress.retries;
        job.plan_s = progress.plan_s;
        job.status = progress.status;
        job.ending = progress.ending;
        job.request = self
            .svc
            .store
            .get(&keys.request(job_id))
            .await?
            .map(std::sync::Arc::new);
        Ok(Some(job))
    }

    pub(crate) async fn save_progress(&self, job_id: &str) -> Result<(), Failure> {
        let Some(job) = self.jobs.get(job_id) else {
            return Ok(());
        };
        let key = self.svc.keys.progress(job_id);
        Ok(self
            .svc
            .store
            .put(&key, &to_json(&job.progress()), self.svc.ttl())
            .await?)
    }

    async fn save_task(&self, job_id: &str, task: usize) -> Result<(), Failure> {
        let Some(record) = self.jobs.get(job_id).and_then(|j| j.tasks.get(task)) else {
            return Ok(());
        };
        let key = self.svc.keys.tasks(job_id);
        Ok(self
            .svc
            .store
            .put_field(&key, &task.to_string(), &to_json(record), self.svc.ttl())
            .await?)
    }
}
