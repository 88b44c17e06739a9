//! Intake and planning: a job message in, a planned [`Job`] out.
//!
//! Runs as a spawned task per job message (at most the jobs consumer's prefetch at once), so
//! loading, digesting and storing a large job's inputs never holds up the event loop. The
//! order of writes is what makes every step re-drivable:
//!
//! 1. **claim** the id: progress `planning` (SET NX) and a field in the open-jobs index; a claim
//!    that exists already is a duplicate — answered from the stored result when the job ended,
//!    planned again when this very message comes back after a coordinator stopped mid-planning;
//! 2. **plan**: task inputs (cut by [`crate::cut`]; a matmul job's Y or an inference job's logits too) and the job message
//!    (to re-plan from), then the job record — all with the job's TTL; the loop then publishes the tasks and only then acks the message.
//!
//! A job that cannot run is **refused**: a failed result naming the reason is stored and
//! published, its claim is released (the id can be submitted again once fixed), and the message
//! is dead-lettered with the reason.

use std::sync::Arc;
use std::time::Instant;

use starkscale_cairo::batch::Rows;
use starkscale_cairo::inference::{model_commitment, model_inputs};
use starkscale_cairo::layer::Model;
use starkscale_common::broker::Delivery;
use starkscale_common::data_dir::DataDir;
use starkscale_common::job::{
    check_batch_shapes, check_vector_shapes, JobError, JobKind, MatrixInput, ModelInput, Operand,
    Request, VectorInput, MAX_BATCH_DIM,
};
use starkscale_common::messages::{unix_ms, JobProgress, JobRecord, JobResult, JobStatus};
use starkscale_common::metrics;
use starkscale_common::store::Store;
use starkscale_common::tensor::MAX_INPUT_BYTES;
use starkscale_common::{Dtype, JobLimits, JobSpec};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::cut::{cut_batch, cut_inference, cut_tiles, Batch, Cut, CutOptions};
use crate::settle::Failure;
use crate::state::Job;
use crate::{to_json, Services};

/// What handling a job message decided, for the event loop to apply.
pub(crate) enum Intake {
    /// Planned and stored; its tasks are to be published.
    Planned(Box<Job>),
    /// A request to cancel this job.
    Cancel(String),
    /// Nothing more to do (a duplicate, answered or ignored).
    Nothing,
}

/// Handles one job message.
pub(crate) async fn intake<B: starkscale_common::broker::Broker, S: Store>(
    svc: Services<B, S>,
    delivery: &Delivery,
) -> Result<Intake, Failure> {
    let received = Instant::now();
    let spec = match Request::parse(&delivery.body, &svc.limits) {
        Ok(Request::Cancel(job_id)) => return Ok(Intake::Cancel(job_id)),
        Ok(Request::Job(spec)) => spec,
        Err(e) => {
            let job_id = readable_id(&delivery.body, &svc.limits);
            let job_id = job_id.as_deref().unwrap_or("invalid");
            return Err(refuse(&svc, job_id, delivery.reply_to.as_deref(), None, e).await);
        }
    };
    let job_id = spec.job_id.clone().unwrap_or_else(new_job_id);
    starkscale_common::faults::crash_point("intake:before-claim");
    let started_unix_ms = unix_ms();
    let claim = JobProgress {
        job_id: job_id.clone(),
        status: JobStatus::Planning,
        tasks: 0,
        proven: 0,
        retries: 0,
        started_unix_ms,
        plan_s: None,
        ending: None,
    };
    let progress_key = svc.keys.progress(&job_id);
    let claimed = svc
        .store
        .put_if_absent(&progress_key, &to_json(&claim), svc.ttl())
        .await?;
    let started_unix_ms = if claimed {
        // A refused earlier submission of this id left its result; this one replaces it.
        let stale = [
            svc.keys.result(&job_id),
            svc.keys.certificate(&job_id),
            svc.keys.y(&job_id),
        ];
        svc.store.delete(&stale).await?;
        svc.store
            .put_field(
                &svc.keys.open_jobs(),
                &job_id,
                started_unix_ms.to_string().as_bytes(),
                svc.ttl(),
            )
            .await?;
        metrics::job_submitted();
        started_unix_ms
    } else {
        let stored = svc.store.get(&progress_key).await?;
        let progress = stored.and_then(|b| serde_json::from_slice::<JobProgress>(&b).ok());
        match progress {
            Some(p) if p.status.is_final() => {
                info!(job = %job_id, status = p.status.name(), "resubmitted job already ended; answering from its stored result");
                crate::finish::answer_from_store(&svc, &job_id, delivery.reply_to.as_deref())
                    .await?;
                return Ok(Intake::Nothing);
            }
            // This very message again: the coordinator that was planning it stopped.
            Some(p) if p.status == JobStatus::Planning && delivery.redelivered => {
                warn!(job = %job_id, "planning again a job whose planning was interrupted");
                p.started_unix_ms
            }
            _ => {
                info!(job = %job_id, "duplicate submission of a job in progress ignored");
                return Ok(Intake::Nothing);
            }
        }
    };
    let request = Arc::new(delivery.body.clone());
    let reply_to = delivery.reply_to.clone();
    match plan_job(
        &svc,
        &job_id,
        &spec,
        request,
        reply_to.clone(),
        started_unix_ms,
    )
    .await
    {
        Ok(mut job) => {
            job.plan_s = Some(received.elapsed().as_secs_f64());
            Ok(Intake::Planned(Box::new(job)))
        }
        Err(Refusal::Fleet(e)) => Err(e),
        Err(Refusal::Job(e)) => {
            Err(refuse(&svc, &job_id, reply_to.as_deref(), Some(started_unix_ms), e).await)
        }
    }
}

/// Why planning stopped: the job is bad, or the fleet is unavailable.
pub(crate) enum Refusal {
    Job(JobError),
    Fleet(Failure),
}

impl From<JobError> for Refusal {
    fn from(e: JobError) -> Refusal {
        Refusal::Job(e)
    }
}

impl<E: Into<Failure>> From<E> for Refusal {
    fn from(e: E) -> Refusal {
        Refusal::Fleet(e.into())
    }
}

/// Loads, checks and plans a job, and stores its tile inputs, its message and its record. The
/// heavy part (parsing inputs, cutting tiles, digesting them) runs on the blocking pool.
pub(crate) async fn plan_job<B, S: Store>(
    svc: &Services<B, S>,
    job_id: &str,
    spec: &JobSpec,
    request: Arc<Vec<u8>>,
    reply_to: Option<String>,
    started_unix_ms: u64,
) -> Result<Job, Refusal> {
    let cut = match spec.kind {
        JobKind::Inference => cut_inference_job(svc, job_id, spec).await?,
        JobKind::Matvec | JobKind::Matmul => cut_product_job(svc, job_id, spec).await?,
    };
    let Cut {
        layout,
        values: mut inputs,
    } = cut;
    let record = JobRecord {
        job_id: job_id.to_string(),
        reply_to,
        started_unix_ms,
        layout,
    };
    inputs.push((svc.keys.request(job_id), request.to_vec()));
    let ttl = svc.ttl();
    svc.store.put_all(inputs, ttl).await?;
    starkscale_common::faults::crash_point("plan:inputs-stored");
    // Planning again starts every task over.
    svc.store.delete(&[svc.keys.tasks(job_id)]).await?;
    svc.store
        .put(&svc.keys.plan(job_id), &to_json(&record), ttl)
        .await?;
    let mut job = Job::new(record);
    job.request = Some(request);
    info!(job = %job_id, kind = job.kind(0).name(), tasks = job.map_tasks(), nodes = job.reduce_tasks(), "job planned");
    Ok(job)
}

/// Loads a matvec or matmul job's A and x and cuts it, on the blocking pool.
async fn cut_product_job<B, S: Store>(
    svc: &Services<B, S>,
    job_id: &str,
    spec: &JobSpec,
) -> Result<Cut, Refusal> {
    let (a_key, x_key) = spec.redis_keys();
    let a_bytes = fetch_reference(svc, "a", a_key, MAX_INPUT_BYTES).await?;
    // A matmul job's X by key is read a block at a time when it is a `.npy`.
    let stored_batch = match (spec.kind, x_key) {
        (JobKind::Matmul, Some(key)) => Batch::open_stored(&svc.store, key).await?,
        _ => None,
    };
    let x_bytes = match stored_batch {
        Some(_) => None,
        None => fetch_reference(svc, "x", x_key, MAX_INPUT_BYTES).await?,
    };
    let data_dir = svc.data_dir.clone();
    let limits = svc.limits;
    let spec = spec.clone();
    let keys = svc.keys.clone();
    let id = job_id.to_string();
    let (fan_in, block_entries) = (svc.config.fan_in, svc.config.plan_block_entries);
    let (store, runtime, ttl) = (svc.store.clone(), Handle::current(), svc.ttl());
    let cut = tokio::task::spawn_blocking(move || -> Result<Cut, Refusal> {
        let options = CutOptions {
            keys: &keys,
            job_id: &id,
            tile_rows: spec.tile_rows(),
            fan_in,
            segment_blocks: spec.segment_blocks(),
            limits: &limits,
            block_entries,
        };
        let a_bytes = match (a_bytes, &spec.a) {
            (None, Some(MatrixInput::Path(path))) => Some(read_path(&data_dir, "a", path)?),
            (bytes, _) => bytes,
        };
        let a = spec.load_a(a_bytes.as_deref())?;
        drop(a_bytes);
        let batch = match (spec.kind, &spec.x, stored_batch) {
            (JobKind::Matvec, ..) => None,
            (_, _, Some(stored)) => Some(stored),
            (_, VectorInput::Path(path), None) => {
                Batch::open_file(open_path(&data_dir, "x", path)?, path)?
            }
            _ => None,
        };
        let x_bytes = match (&batch, x_bytes, &spec.x) {
            (None, None, VectorInput::Path(path)) => Some(read_path(&data_dir, "x", path)?),
            (_, bytes, _) => bytes,
        };
        let batch = match batch {
            Some(batch) => batch,
            None => match spec.load_x(x_bytes.as_deref())? {
                Operand::Vector(x) => {
                    check_vector_shapes(&a, &x, spec.tile_rows(), &limits)?;
                    return Ok(cut_tiles(&a, &x, &options, false));
                }
                Operand::Batch(x) => Batch::Loaded(x),
            },
        };
        check_batch_shapes(&a, batch.shape(), &limits)?;
        if batch.shape().0 == 1 {
            // One input: the tile kernel proves it at ~1 step per multiply-add, where the batch
            // protocol would hash all of A at ~6 steps per entry (`docs/bench.md`).
            let x = batch.first_input(&store, &runtime)?;
            check_vector_shapes(&a, &x, spec.tile_rows(), &limits)?;
            return Ok(cut_tiles(&a, &x, &options, true));
        }
        let planned = cut_batch(&store, &runtime, &a, &batch, &options, ttl);
        stored_cut(&store, &runtime, &keys.y(&id), planned)
    })
    .await
    .map_err(|e| JobError::Limit(format!("planning the job panicked: {e}")))?;
    cut
}

/// A job whose inputs the cut stored as it went (a matmul job's Y, an inference's logits, every
/// task input); a refusal deletes the outputs it wrote first.
fn stored_cut<S: Store>(
    store: &S,
    runtime: &Handle,
    y_key: &str,
    planned: Result<starkscale_common::messages::Layout, Refusal>,
) -> Result<Cut, Refusal> {
    if planned.is_err() {
        let _ = runtime.block_on(store.delete(&[y_key.to_string()]));
    }
    Ok(Cut {
        layout: planned?,
        values: Vec::new(),
    })
}

/// Imports an inference job's model, loads its inputs, computes every layer and cuts the job,
/// on the blocking pool.
async fn cut_inference_job<B, S: Store>(
    svc: &Services<B, S>,
    job_id: &str,
    spec: &JobSpec,
) -> Result<Cut, Refusal> {
    let (model_key, commitment) = match &spec.model {
        Some(ModelInput::RedisKey(key)) => (Some(key.clone()), None),
        Some(ModelInput::Commitment(c)) => (Some(svc.keys.model(&c.to_lowercase())), Some(c)),
        _ => (None, None),
    };
    let limits = svc.limits;
    let max_model = limits.max_model_bytes as u64;
    let model_bytes = fetch_reference(svc, "model", model_key.as_deref(), max_model).await?;
    let x_bytes = fetch_reference(svc, "x", spec.redis_keys().1, MAX_INPUT_BYTES).await?;
    let data_dir = svc.data_dir.clone();
    let commitment = commitment.map(|c| c.to_lowercase());
    let spec = spec.clone();
    let keys = svc.keys.clone();
    let id = job_id.to_string();
    let (store, runtime, ttl) = (svc.store.clone(), Handle::current(), svc.ttl());
    let fan_in = svc.config.fan_in;
    let block_entries = svc.config.plan_block_entries;
    let cut = tokio::task::spawn_blocking(move || -> Result<Cut, Refusal> {
        let model_bytes = match (model_bytes, &spec.model) {
            (None, Some(ModelInput::Path(path))) => {
                let dir = data_dir.as_deref().ok_or_else(no_data_dir)?;
                Some(dir.read(path, max_model).map_err(|source| JobError::Path {
                    what: "model",
                    source,
                })?)
            }
            (bytes, _) => bytes,
        };
        let model = load_model(model_bytes, commitment.as_deref())?;
        let x_bytes = match (x_bytes, &spec.x) {
            (None, VectorInput::Path(path)) => Some(read_path(&data_dir, "x", path)?),
            (bytes, _) => bytes,
        };
        let x = load_model_inputs(&spec, x_bytes.as_deref(), &model, &limits)?;
        let options = CutOptions {
            keys: &keys,
            job_id: &id,
            tile_rows: spec.tile_rows(),
            fan_in,
            segment_blocks: spec.segment_blocks(),
            limits: &limits,
            block_entries,
        };
        let planned = cut_inference(&store, &runtime, &model, &x, &options, ttl);
        stored_cut(&store, &runtime, &keys.y(&id), planned)
    })
    .await
    .map_err(|e| JobError::Limit(format!("planning the job panicked: {e}")))?;
    cut
}

/// An inference job's model, imported from its ONNX bytes (read by path, key or commitment);
/// a model fetched by commitment must have that commitment.
fn load_model(fetched: Option<Vec<u8>>, commitment: Option<&str>) -> Result<Model, JobError> {
    let Some(bytes) = fetched else {
        return Err(JobError::NotFetched { what: "model" });
    };
    let model = starkscale_onnx::from_bytes(&bytes)
        .map_err(|e| JobError::Model(e.to_string()))?
        .model;
    model.check().map_err(|e| JobError::Model(e.to_string()))?;
    if let Some(expected) = commitment {
        let actual = model_commitment(&model).to_hex();
        if actual != expected {
            return Err(JobError::Model(format!(
                "the model stored under commitment {expected} has commitment {actual}"
            )));
        }
    }
    Ok(model)
}

/// An inference job's inputs, one per row: inline int8 rows (or one input), or a float32 or
/// int8 `.npy` (or JSON rows) by path or Redis key; checked against the model and the limits.
fn load_model_inputs(
    spec: &JobSpec,
    fetched: Option<&[u8]>,
    model: &Model,
    limits: &JobLimits,
) -> Result<Rows, JobError> {
    let input = |source| JobError::Input { what: "x", source };
    let x = match (&spec.x, fetched) {
        (VectorInput::Inline(inline), _) if inline.rows.is_some() => {
            let m = inline.clone().into_matrix(Dtype::I8).map_err(input)?;
            Rows::int8(m.cols(), m.data())
        }
        (VectorInput::Inline(inline), _) => {
            let v = inline.clone().into_vector(Dtype::I8).map_err(input)?;
            Rows::int8(v.len(), v.data())
        }
        (_, Some(bytes)) => model_inputs(bytes, model).map_err(input)?,
        (_, None) => return Err(JobError::NotFetched { what: "x" }),
    };
    let (b, k) = (x.height(), x.width());
    if b == 0 || k != model.inputs() {
        return Err(JobError::Shape(format!(
            "the model takes inputs of {} entries; x holds {b} inputs of {k} (one input per row)",
            model.inputs()
        )));
    }
    if b > MAX_BATCH_DIM {
        return Err(JobError::Limit(format!(
            "{b} inputs: at most {MAX_BATCH_DIM}"
        )));
    }
    let widest = model
        .layers
        .iter()
        .map(|l| l.outputs())
        .max()
        .unwrap_or(0)
        .max(k);
    if b.saturating_mul(widest) > limits.max_entries {
        return Err(JobError::Limit(format!(
            "{b} inputs through layers of up to {widest} entries: over the {}-entry limit",
            limits.max_entries
        )));
    }
    Ok(x)
}

/// Opens an input by path inside the data directory.
fn open_path(
    data_dir: &Option<Arc<DataDir>>,
    what: &'static str,
    reference: &str,
) -> Result<std::fs::File, JobError> {
    let dir = data_dir.as_deref().ok_or_else(no_data_dir)?;
    dir.open_file(reference)
        .map_err(|source| JobError::Path { what, source })
}

/// Reads an input by path inside the data directory, at most [`MAX_INPUT_BYTES`].
fn read_path(
    data_dir: &Option<Arc<DataDir>>,
    what: &'static str,
    reference: &str,
) -> Result<Vec<u8>, JobError> {
    let dir = data_dir.as_deref().ok_or_else(no_data_dir)?;
    dir.read(reference, MAX_INPUT_BYTES)
        .map_err(|source| JobError::Path { what, source })
}

fn no_data_dir() -> JobError {
    JobError::Kind("inputs by path are not served: the coordinator has no data directory".into())
}

/// Reads an input by Redis key, its size checked against `max` before it is read whole.
async fn fetch_reference<B, S: Store>(
    svc: &Services<B, S>,
    what: &'static str,
    key: Option<&str>,
    max: u64,
) -> Result<Option<Vec<u8>>, Refusal> {
    let Some(key) = key else { return Ok(None) };
    match svc.store.len(key).await {
        Ok(size) if size > max => {
            return Err(JobError::Limit(format!(
                "{what}: the value at Redis key {key:?} is {size} bytes, over the {max}-byte limit"
            ))
            .into())
        }
        Err(e) if e.unavailable => return Err(e.into()),
        _ => {}
    }
    match svc.store.get(key).await {
        Ok(Some(bytes)) => Ok(Some(bytes)),
        Ok(None) => Err(JobError::MissingReference {
            what,
            key: key.to_string(),
        }
        .into()),
        // The store refusing this key (it holds a hash, say) is the job's problem, not the fleet's.
        Err(e) if !e.unavailable => Err(JobError::BadReference {
            what,
            key: key.to_string(),
            message: e.message,
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// A job that cannot run: a failed result for the client (stored, unless the message had no
/// readable id), its claim released so the id can be submitted again, and the reason for the
/// dead-lettered copy.
pub(crate) async fn refuse<B: starkscale_common::broker::Broker, S: Store>(
    svc: &Services<B, S>,
    job_id: &str,
    reply_to: Option<&str>,
    started_unix_ms: Option<u64>,
    error: JobError,
) -> Failure {
    let reason = error.to_string();
    warn!(job = %job_id, %reason, "refusing job");
    metrics::job_completed(JobStatus::Failed, None);
    let result = JobResult::failed_unplanned(job_id, reason.clone(), started_unix_ms);
    // An id this message never claimed may belong to another job of the same id: its result is
    // stored only when no such job exists.
    let store = started_unix_ms.is_some()
        || match svc.store.get(&svc.keys.progress(job_id)).await {
            Ok(progress) => progress.is_none() && job_id != "invalid",
            Err(e) => return e.into(),
        };
    let published = match store {
        true => crate::finish::publish_result(svc, &result, reply_to).await,
        false => crate::finish::publish_unstored(svc, &result, reply_to).await,
    };
    if let Err(e) = published {
        return e.into();
    }
    if started_unix_ms.is_some() {
        let released = async {
            svc.store.delete(&[svc.keys.progress(job_id)]).await?;
            svc.store.delete_field(&svc.keys.open_jobs(), job_id).await
        };
        if let Err(e) = released.await {
            return e.into();
        }
    }
    Failure::Message(reason)
}

/// The id a job message that failed validation names, when it names a well-formed one: its
/// client listens for the refusal under that id.
fn readable_id(body: &[u8], limits: &starkscale_common::JobLimits) -> Option<String> {
    if body.len() > limits.max_job_bytes {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value.get("job_id")?.as_str()?;
    starkscale_common::job::is_valid_job_id(id).then(|| id.to_string())
}

fn new_job_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("job-{nanos:x}")
}
