//! Ending a job, in steps that can each be driven again:
//!
//! 1. **decide**: progress becomes `finishing` with the [`Ending`] (status and reason) — from
//!    here on the outcome does not change, whoever completes it;
//! 2. **certificate** (on success): every accepted proof, assembled off the loop (a matvec
//!    certificate, a batch certificate whose Y was stored at planning, or an inference
//!    certificate whose logits were), **verified as a whole**, then stored in parts
//!    ([`starkscale_common::store::parts`]: no value over 16 MiB, whatever the job). Nothing read back
//!    from the store is trusted: each proof must still be the bytes verified on acceptance (its
//!    digest in the task record), and the assembled certificate must pass the same checks
//!    `starkscale verify` makes (all but the STARKs, which those digests bind to the ones
//!    already verified), so a forged task record cannot reach a succeeded result. A proof that
//!    vanished or changed gets the job planned again (see [`crate::reconcile`]); a certificate
//!    that does not verify fails the job;
//! 3. **result**: stored, progress made final, then the result published to the results
//!    exchange (and `reply_to`, which is best effort: a client's missing reply queue fails
//!    nothing);
//! 4. **close**: the working keys are deleted, the job leaves the open-jobs index and the cache.
//!
//! A coordinator that stops after step 1 completes the job from its reconcile pass; one that
//! stops in step 3 or 4 leaves the ended job in the open-jobs index, and the next full pass
//! publishes its stored result once more (clients take the first).

use starkscale_cairo::batch;
use starkscale_cairo::batch_certificate::{verify_batch, BatchCertificate, BatchExpect};
use starkscale_cairo::certificate::{verify_certificate, Certificate, Expectations};
use starkscale_cairo::inference::InferRootOutput;
use starkscale_cairo::inference_certificate::{
    verify_inference, InferenceCertificate, InferenceExpect,
};
use starkscale_cairo::tree::RootOutput;
use starkscale_common::broker::Broker;
use starkscale_common::messages::{
    proof_digest, unix_ms, Ending, JobResult, JobStatus, TaskTiming,
};
use starkscale_common::metrics;
use starkscale_common::store::parts::{self, PART_BYTES};
use starkscale_common::store::Store;
use starkscale_common::tensor::npy;
use tracing::{info, warn};

use crate::settle::Failure;
use crate::state::{Job, Tasks};
use crate::{to_json, Coordinator, CoordinatorError, Services};

impl<B: Broker, S: Store> Coordinator<B, S> {
    /// Decides how a job ends (unless it is decided already) and completes it.
    pub(crate) async fn finish(&mut self, job_id: &str, ending: Ending) -> Result<(), Failure> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Ok(());
        };
        if job.status != JobStatus::Finishing {
            job.status = JobStatus::Finishing;
            job.ending = Some(ending);
            self.save_progress(job_id).await?;
        }
        starkscale_common::faults::crash_point("finish:decided");
        self.complete(job_id).await
    }

    /// Steps 2–4 for a job whose ending is decided.
    pub(crate) async fn complete(&mut self, job_id: &str) -> Result<(), Failure> {
        let Some(job) = self.jobs.get(job_id) else {
            return Ok(());
        };
        let ending = job
            .ending
            .clone()
            .unwrap_or_else(|| Ending::failed("the job's ending was lost"));
        let tiles = job.map_tasks();
        let seconds = |range: std::ops::Range<usize>| -> f64 {
            job.tasks[range].iter().map(|t| t.seconds).sum()
        };
        let mut result = JobResult {
            job_id: job_id.to_string(),
            status: ending.status,
            error: ending.error.clone(),
            y: None,
            y_key: None,
            certificate_key: None,
            tiles,
            nodes: job.reduce_tasks(),
            wall_s: job.age_ms() as f64 / 1000.0,
            tile_s: seconds(0..tiles),
            reduce_s: seconds(tiles..job.tasks.len()),
            task_timings: Vec::new(),
        };
        let reply_to = job.record.reply_to.clone();
        if ending.status == JobStatus::Succeeded {
            match self.certificate(job).await? {
                Certificated::Done {
                    certificate,
                    y,
                    y_npy,
                } => {
                    // In parts: a large job's certificate outgrows one Redis value.
                    let key = self.svc.keys.certificate(job_id);
                    let store = &self.svc.store;
                    parts::put_parts(store, &key, &certificate, PART_BYTES, self.svc.ttl()).await?;
                    drop(certificate);
                    if let Some(npy) = y_npy {
                        let y_key = self.svc.keys.y(job_id);
                        self.svc.store.put(&y_key, &npy, self.svc.ttl()).await?;
                    }
                    if y_stored_at_planning(job) || y_npy_written(job) {
                        result.y_key = Some(self.svc.keys.y(job_id));
                    }
                    result.y = y;
                    result.certificate_key = Some(key);
                    result.task_timings = timings(job);
                }
                Certificated::Replan(why) => {
                    // Boxed: recovering may fail the job, which completes it again.
                    return Box::pin(self.recover(job_id, why)).await;
                }
                Certificated::Unreadable(reason) => {
                    result.status = JobStatus::Failed;
                    result.error = Some(reason);
                }
            }
        }
        // Stored and final before it is published: whoever hears the result can read both. A
        // stop before the publication leaves the job in the open-jobs index, and the reconcile
        // pass publishes the stored result.
        let key = self.svc.keys.result(job_id);
        self.svc
            .store
            .put(&key, &to_json(&result), self.svc.ttl())
            .await?;
        if let Some(job) = self.jobs.get_mut(job_id) {
            job.status = result.status;
            job.ending = Some(Ending {
                status: result.status,
                error: result.error.clone(),
            });
        }
        self.save_progress(job_id).await?;
        starkscale_common::faults::crash_point("finish:stored");
        publish_unstored(&self.svc, &result, reply_to.as_deref()).await?;
        starkscale_common::faults::crash_point("finish:published");
        let Some(job) = self.jobs.remove(job_id) else {
            return Ok(());
        };
        metrics::job_completed(result.status, Some(result.wall_s));
        let mut working = self.svc.keys.working_set(
            job_id,
            job.tasks.len(),
            job.tasks.iter().map(|t| t.attempt).max().unwrap_or(1),
        );
        if result.y_key.is_none() {
            // A matmul job's Y, stored at planning, outlives the job only when it succeeded.
            working.push(self.svc.keys.y(job_id));
        }
        self.svc.store.delete(&working).await?;
        self.svc
            .store
            .delete_field(&self.svc.keys.open_jobs(), job_id)
            .await?;
        info!(job = %job_id, status = result.status.name(), wall_s = result.wall_s, "job finished");
        Ok(())
    }

    /// The job certificate from the accepted proofs (in task order, the root last) and what
    /// the root states; assembled on the blocking pool.
    async fn certificate(&self, job: &Job) -> Result<Certificated, Failure> {
        let root = job.tasks.last().and_then(|t| t.output.clone());
        let statement = match (&job.layout, root) {
            (Tasks::Tiles { layout, .. }, Some(words)) => RootOutput::from_words(&words)
                .ok()
                .map(|root| Statement::Tiles(root, layout.matmul)),
            (Tasks::Batch { .. }, Some(words)) => batch::RootOutput::from_words(&words)
                .ok()
                .map(Statement::Batch),
            (Tasks::Inference { .. }, Some(words)) => InferRootOutput::from_words(&words)
                .ok()
                .map(Statement::Inference),
            (_, None) => None,
        };
        let Some(statement) = statement else {
            return Ok(Certificated::Unreadable(
                "the accepted root output is unreadable".into(),
            ));
        };
        if y_stored_at_planning(job) {
            let y = self.svc.keys.y(job.id());
            if self.svc.store.exist(std::slice::from_ref(&y)).await? != [true] {
                return Ok(Certificated::Replan(format!(
                    "the job's outputs ({y}) vanished from the store"
                )));
            }
        }
        let mut proofs = Vec::with_capacity(job.tasks.len());
        for (task, state) in job.tasks.iter().enumerate() {
            let key = self.svc.keys.proof(job.id(), task, state.attempt);
            let Some(proof) = self.svc.store.get(&key).await? else {
                return Ok(Certificated::Replan(format!(
                    "the accepted proof {key} vanished from the store"
                )));
            };
            if state
                .proof_digest
                .as_ref()
                .is_some_and(|d| *d != proof_digest(&proof))
            {
                return Ok(Certificated::Replan(format!(
                    "the proof at {key} is not the one accepted"
                )));
            }
            proofs.push(proof);
        }
        let check = Recheck {
            allow_test: self.svc.config.allow_test_profile,
            // Records written before digests were kept have their STARKs checked again.
            starks_verified: job.tasks.iter().all(|t| t.proof_digest.is_some()),
        };
        let assembled = tokio::task::spawn_blocking(move || {
            let assembled = assemble(statement, proofs);
            match assembled {
                Certificated::Done {
                    ref certificate, ..
                } => match check.verify(certificate) {
                    Ok(()) => assembled,
                    Err(e) => Certificated::Unreadable(format!(
                        "the assembled certificate does not verify, so no result is published \
                         from it: {e}"
                    )),
                },
                other => other,
            }
        })
        .await;
        match assembled {
            Ok(done) => Ok(done),
            Err(e) => Ok(Certificated::Unreadable(format!(
                "assembling the certificate panicked: {e}"
            ))),
        }
    }
}

/// How an assembled certificate is checked before its result is published.
#[derive(Debug, Clone, Copy)]
struct Recheck {
    allow_test: bool,
    starks_verified: bool,
}

impl Recheck {
    fn verify(self, certificate: &[u8]) -> Result<(), String> {
        let Recheck {
            allow_test,
            starks_verified,
        } = self;
        if BatchCertificate::is_batch(certificate) {
            let expect = BatchExpect {
                allow_test,
                starks_verified,
                ..BatchExpect::default()
            };
            verify_batch(certificate, &expect)
                .map(drop)
                .map_err(|e| e.to_string())
        } else if InferenceCertificate::is_inference(certificate) {
            let expect = InferenceExpect {
                allow_test,
                starks_verified,
                ..InferenceExpect::default()
            };
            verify_inference(certificate, &expect)
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            let expect = Expectations {
                allow_test,
                starks_verified,
                ..Expectations::default()
            };
            verify_certificate(certificate, &expect)
                .map(drop)
                .map_err(|e| e.to_string())
        }
    }
}

/// The certificate of `statement`'s job from its accepted proofs, in task order.
fn assemble(statement: Statement, proofs: Vec<Vec<u8>>) -> Certificated {
    match statement {
        Statement::Tiles(root, matmul) => {
            let y_npy = matmul.then(|| {
                let values: Vec<i32> = root.y.iter().map(|&v| v as i32).collect();
                npy::write_i32(&[1, values.len()], &values)
            });
            Certificated::Done {
                certificate: Certificate::new(&root, proofs).to_bytes(),
                y: Some(root.y),
                y_npy,
            }
        }
        Statement::Batch(root) => Certificated::Done {
            certificate: BatchCertificate {
                shape: root.shape,
                a_commitment: root.a_commitment,
                x_commitment: root.x_commitment,
                y_commitment: root.y_commitment,
                proofs,
            }
            .to_bytes(),
            y: None,
            y_npy: None,
        },
        Statement::Inference(root) => Certificated::Done {
            certificate: InferenceCertificate {
                batch: root.batch,
                dims: root.dims,
                model_commitment: root.model_commitment,
                x_commitment: root.x_commitment,
                logits_commitment: root.logits_commitment,
                proofs,
            }
            .to_bytes(),
            y: None,
            y_npy: None,
        },
    }
}

/// What a job's root proved.
enum Statement {
    /// A reduce root; whether the job was a matmul of one input.
    Tiles(RootOutput, bool),
    Batch(batch::RootOutput),
    Inference(InferRootOutput),
}

enum Certificated {
    /// The certificate; y of a matvec job; Y (`.npy`) of a matmul job of one input, whose Y
    /// was not stored at planning.
    Done {
        certificate: Vec<u8>,
        y: Option<Vec<i64>>,
        y_npy: Option<Vec<u8>>,
    },
    /// A proof or stored output is gone or changed: plan the job again.
    Replan(String),
    Unreadable(String),
}

/// Whether `job`'s outputs were stored when it was planned (a matmul job's Y, an inference
/// job's logits).
fn y_stored_at_planning(job: &Job) -> bool {
    matches!(job.layout, Tasks::Batch { .. } | Tasks::Inference { .. })
}

/// Whether finishing `job` writes its Y (a matmul job of one input).
fn y_npy_written(job: &Job) -> bool {
    matches!(&job.layout, Tasks::Tiles { layout, .. } if layout.matmul)
}

fn timings(job: &Job) -> Vec<TaskTiming> {
    job.tasks
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
        .collect()
}

/// Stores a result (unless the job had no readable id) and publishes it to the results exchange
/// and, best effort, to the client's `reply_to` queue.
pub(crate) async fn publish_result<B: Broker, S: Store>(
    svc: &Services<B, S>,
    result: &JobResult,
    reply_to: Option<&str>,
) -> Result<(), CoordinatorError> {
    let body = to_json(result);
    if result.job_id != "invalid" {
        svc.store
            .put(&svc.keys.result(&result.job_id), &body, svc.ttl())
            .await?;
    }
    publish_body(svc, &result.job_id, &body, reply_to).await
}

/// Publishes a result without storing it.
pub(crate) async fn publish_unstored<B: Broker, S: Store>(
    svc: &Services<B, S>,
    result: &JobResult,
    reply_to: Option<&str>,
) -> Result<(), CoordinatorError> {
    publish_body(svc, &result.job_id, &to_json(result), reply_to).await
}

async fn publish_body<B: Broker, S>(
    svc: &Services<B, S>,
    job_id: &str,
    body: &[u8],
    reply_to: Option<&str>,
) -> Result<(), CoordinatorError> {
    svc.broker.publish_result(job_id, None, body).await?;
    if let Some(queue) = reply_to {
        let headers = Default::default();
        if let Err(error) = svc.broker.publish(queue, body, &headers, None).await {
            if !error.is_per_message() {
                return Err(error.into());
            }
            warn!(job = %job_id, %queue, %error, "the client's reply queue did not take the result");
        }
    }
    Ok(())
}

/// Publishes the stored result of a job that already ended (a resubmission, or a result whose
/// publication a stopped coordinator may have missed).
pub(crate) async fn answer_from_store<B: Broker, S: Store>(
    svc: &Services<B, S>,
    job_id: &str,
    reply_to: Option<&str>,
) -> Result<bool, CoordinatorError> {
    match svc.store.get(&svc.keys.result(job_id)).await? {
        Some(body) => {
            publish_body(svc, job_id, &body, reply_to).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Ends a job that has no plan to finish from (its planning never completed, or the store lost
/// it with its message): a failed result, a final progress, and out of the open-jobs index.
pub(crate) async fn fail_unplanned<B: Broker, S: Store>(
    svc: &Services<B, S>,
    job_id: &str,
    started_unix_ms: Option<u64>,
    reason: String,
) -> Result<(), CoordinatorError> {
    warn!(job = %job_id, %reason, "failing a job that has no plan");
    let result = JobResult::failed_unplanned(job_id, reason.clone(), started_unix_ms);
    let wall_s = result.wall_s;
    let progress = starkscale_common::messages::JobProgress {
        job_id: job_id.to_string(),
        status: JobStatus::Failed,
        tasks: 0,
        proven: 0,
        retries: 0,
        started_unix_ms: started_unix_ms.unwrap_or_else(unix_ms),
        plan_s: None,
        ending: Some(Ending::failed(reason)),
    };
    publish_result(svc, &result, None).await?;
    svc.store
        .put(&svc.keys.progress(job_id), &to_json(&progress), svc.ttl())
        .await?;
    metrics::job_completed(JobStatus::Failed, Some(wall_s));
    svc.store
        .delete_field(&svc.keys.open_jobs(), job_id)
        .await?;
    Ok(())
}
