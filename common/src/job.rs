//! The job format: what a client puts on the jobs queue (or hands to `starkscale run`).
//!
//! A job is a JSON object; `schemas/job.schema.json` is generated from these types and committed
//! (a test fails when it drifts). Unknown fields are rejected everywhere, the payload size is
//! checked before parsing, and [`JobSpec::validate`] checks everything that does not need the
//! referenced inputs (see [`JobError`] for every refusal).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::plan::{TilePlan, DEFAULT_TILE_ROWS, MAX_TILE_ROWS};
use crate::tensor::{take_inline_failure, Dtype, Inline8, Matrix, TensorError, Vector};

/// The only schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

/// Limits a deployment can tighten; checked before any input is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Largest job message accepted, in bytes.
    pub max_job_bytes: usize,
    /// Largest matrix, in entries.
    pub max_entries: usize,
    /// Largest number of tiles one job may plan.
    pub max_tiles: usize,
    /// Largest model file (ONNX) an inference job may name, in bytes.
    pub max_model_bytes: usize,
    /// Tallest tile a job may ask for: what the fleet's workers can prove in the memory the
    /// deployment declares for them ([`crate::plan::max_tile_rows_for_memory`]).
    pub max_tile_rows: usize,
    /// The worker memory (bytes) `max_tile_rows` follows from, for error messages; `None`
    /// when none is declared.
    pub worker_memory: Option<u64>,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_job_bytes: 64 << 20,
            max_entries: 1 << 30,
            max_tiles: 100_000,
            max_model_bytes: 256 << 20,
            max_tile_rows: MAX_TILE_ROWS,
            worker_memory: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("invalid job JSON: {0}")]
    Json(String),
    #[error("unsupported schema_version {0} (this build reads {SCHEMA_VERSION})")]
    SchemaVersion(u32),
    #[error("invalid job_id {0:?}: 1-64 characters from [A-Za-z0-9._-]")]
    JobId(String),
    #[error("invalid {what}: {source}")]
    Input {
        what: &'static str,
        source: TensorError,
    },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("{0}")]
    Limit(String),
    #[error("{what}: no input at Redis key {key:?} (not uploaded, or expired)")]
    MissingReference { what: &'static str, key: String },
    #[error("{what}: cannot read Redis key {key:?}: {message}")]
    BadReference {
        what: &'static str,
        key: String,
        message: String,
    },
    #[error("{what}: {source}")]
    Path {
        what: &'static str,
        source: crate::data_dir::PathError,
    },
    #[error("{what}: inputs by path or Redis key are read by the fleet, not here")]
    NotFetched { what: &'static str },
    #[error("model: {0}")]
    Model(String),
    #[error("{0}")]
    Kind(String),
}

impl JobError {
    /// Every job error is permanent: retrying the same job cannot succeed.
    pub fn is_permanent(&self) -> bool {
        true
    }
}

/// What to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// y = A · x.
    Matvec,
    /// Y = A · X for a batch X of B inputs, one per row (`docs/batch.md`); Y has one output per
    /// row (B × M, int32). A batch of one is proven as a matvec.
    Matmul,
    /// A quantized model's int8 logits for a batch of inputs (`docs/inference.md`): `model`
    /// instead of `a`, x one input per row (float32, quantized with the model's input scale, or
    /// int8).
    Inference,
}

/// The model of an inference job: an ONNX file quantized by onnxruntime's `quantize_static`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelInput {
    /// An `.onnx` file every process of the fleet can read.
    Path(String),
    /// A Redis key holding the `.onnx` file's bytes.
    RedisKey(String),
    /// The model commitment (64 hex digits, as `starkscale commit MODEL.onnx` prints it) of a
    /// model uploaded once (`starkscale submit --upload`, `<prefix>:model:<commitment>`).
    Commitment(String),
}

/// A matrix, inline or by reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MatrixInput {
    /// Rows of integers.
    Inline(
        #[serde(deserialize_with = "inline_a")]
        #[schemars(with = "Vec<Vec<i64>>")]
        Inline8,
    ),
    /// A Redis key holding a `.npy` (as `starkscale submit` uploads it).
    RedisKey(String),
    /// A `.npy` or JSON file every process of the fleet can read.
    Path(String),
}

/// x: a vector for a matvec job, a batch (B × K, one input per row) for a matmul job; inline or
/// by reference (a 1-D or 2-D `.npy`, or JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VectorInput {
    Inline(
        #[serde(deserialize_with = "inline_x")]
        #[schemars(with = "InlineX")]
        Inline8,
    ),
    RedisKey(String),
    Path(String),
}

/// Inline x: entries, or rows of entries.
// What the schema says; jobs are read as an `Inline8`.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the JSON; never built
enum InlineX {
    Vector(Vec<i64>),
    Batch(Vec<Vec<i64>>),
}

fn inline_a<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Inline8, D::Error> {
    Inline8::deserialize_named("a", deserializer)
}

fn inline_x<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Inline8, D::Error> {
    Inline8::deserialize_named("x", deserializer)
}

/// x as loaded: a vector (matvec) or a batch of inputs, one per row (matmul).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Vector(Vector),
    Batch(Matrix),
}

/// The largest M or B of a matmul job (the batch kernel's bound).
pub const MAX_BATCH_DIM: usize = 1 << 24;
/// The longest input of a matmul job: every output K·128² must be an exact int32.
pub const MAX_BATCH_K: usize = 1 << 17;
/// Bounds of a matmul job's `segment_blocks`.
pub const SEGMENT_BLOCKS: std::ops::RangeInclusive<usize> = 64..=65_536;

/// A matvec job as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Must be 1.
    pub schema_version: u32,
    /// Client-chosen id; resubmitting the same id is idempotent. Generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub kind: JobKind,
    /// Element type of A and x (matvec and matmul; i8, the default, is the only one).
    #[serde(default)]
    pub dtype: Dtype,
    /// The matrix A (matvec and matmul).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<MatrixInput>,
    /// The model (inference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInput>,
    /// The vector x, or the batch of inputs (one per row) of a matmul or inference job.
    pub x: VectorInput,
    /// Tile height (default 254; at most 1022). Tiles are always 1024 columns wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile_rows: Option<usize>,
    /// matmul: Blake2s compressions per segment task (default 4096; int8 streams get half),
    /// which sets each task's proving time and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_blocks: Option<usize>,
}

impl JobSpec {
    /// Parses a job message: size first, then JSON, then [`JobSpec::validate`].
    pub fn parse(bytes: &[u8], limits: &JobLimits) -> Result<JobSpec, JobError> {
        if bytes.len() > limits.max_job_bytes {
            return Err(JobError::TooLarge {
                size: bytes.len(),
                max: limits.max_job_bytes,
            });
        }
        // An inline entry out of range or a ragged row stops the parse; it is reported as that
        // input's error, as if the input had been read from a file.
        take_inline_failure();
        let job: JobSpec =
            serde_json::from_slice(bytes).map_err(|e| match take_inline_failure() {
                Some((what, source)) => JobError::Input { what, source },
                None => JobError::Json(e.to_string()),
            })?;
        job.validate(limits)?;
        Ok(job)
    }

    /// Checks what can be checked without loading referenced inputs.
    pub fn validate(&self, limits: &JobLimits) -> Result<(), JobError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(JobError::SchemaVersion(self.schema_version));
        }
        if let Some(id) = &self.job_id {
            if !is_valid_job_id(id) {
                return Err(JobError::JobId(id.clone()));
            }
        }
        if let Some(rows) = self.tile_rows {
            if !(1..=MAX_TILE_ROWS).contains(&rows) {
                return Err(JobError::Limit(format!(
                    "tile_rows {rows} is outside 1..={MAX_TILE_ROWS}"
                )));
            }
            if let (true, Some(memory)) = (rows > limits.max_tile_rows, limits.worker_memory) {
                return Err(JobError::Limit(format!(
                    "tile_rows {rows} needs about {:.1} GB of worker memory to prove; this \
                     fleet's workers have {:.1} GB (--worker-memory-gib), enough for at most {} \
                     rows",
                    crate::plan::tile_peak_bytes(rows) as f64 / 1e9,
                    memory as f64 / 1e9,
                    limits.max_tile_rows
                )));
            }
        }
        match (self.kind, &self.a, &self.model) {
            (JobKind::Inference, None, Some(_)) => {}
            (JobKind::Inference, ..) => {
                return Err(JobError::Kind(
                    "an inference job names its model (\"model\"), and no matrix \"a\"".into(),
                ))
            }
            (_, Some(_), None) => {}
            (kind, ..) => {
                return Err(JobError::Kind(format!(
                    "a {} job names its matrix (\"a\"), and no \"model\"",
                    kind.name()
                )))
            }
        }
        if self.kind == JobKind::Inference && self.tile_rows.is_some() {
            return Err(JobError::Kind(
                "tile_rows is a matvec and matmul job's option".into(),
            ));
        }
        if let Some(ModelInput::Commitment(c)) = &self.model {
            if c.len() != 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(JobError::Model(format!(
                    "commitment {c:?} is not 64 hex digits"
                )));
            }
        }
        if let Some(blocks) = self.segment_blocks {
            if !SEGMENT_BLOCKS.contains(&blocks) || self.kind == JobKind::Matvec {
                return Err(JobError::Limit(format!(
                    "segment_blocks {blocks}: a matmul or inference job's option, within {}..={}",
                    SEGMENT_BLOCKS.start(),
                    SEGMENT_BLOCKS.end()
                )));
            }
        }
        let model = match &self.model {
            Some(ModelInput::Path(r) | ModelInput::RedisKey(r)) => Some(r.as_str()),
            _ => None,
        };
        let a = self.a.as_ref().and_then(MatrixInput::reference);
        for (what, reference) in [("a", a), ("model", model), ("x", self.x.reference())] {
            if let Some(r) = reference {
                if r.is_empty() || r.len() > 1024 {
                    return Err(JobError::Limit(format!(
                        "{what}: reference must be 1-1024 bytes"
                    )));
                }
            }
        }
        if let (Some(MatrixInput::Inline(_)), VectorInput::Inline(_)) = (&self.a, &self.x) {
            let (a, x) = self.load_inputs((None, None))?;
            check_shapes(&a, &x, self.tile_rows(), limits)?;
        }
        Ok(())
    }

    pub fn tile_rows(&self) -> usize {
        self.tile_rows.unwrap_or(DEFAULT_TILE_ROWS)
    }

    pub fn segment_blocks(&self) -> Option<usize> {
        self.segment_blocks
    }

    /// A and x, range-checked against the dtype; x is a vector for a matvec job and a batch for
    /// a matmul job. Inputs by path or Redis key must have been read by the caller (see
    /// [`JobSpec::redis_keys`]) and are passed as `fetched` (A's bytes, x's bytes).
    pub fn load_inputs(
        &self,
        fetched: (Option<&[u8]>, Option<&[u8]>),
    ) -> Result<(Matrix, Operand), JobError> {
        let a = self.load_a(fetched.0)?;
        let x = self.load_x(fetched.1)?;
        Ok((a, x))
    }

    /// A, inline; by path or Redis key, from `fetched` (read by the caller, from its data
    /// directory or the store).
    pub fn load_a(&self, fetched: Option<&[u8]>) -> Result<Matrix, JobError> {
        let Some(a) = &self.a else {
            return Err(JobError::Kind("this job has no matrix A".into()));
        };
        match a {
            MatrixInput::Inline(rows) => rows.clone().into_matrix(self.dtype),
            MatrixInput::Path(_) | MatrixInput::RedisKey(_) => match fetched {
                Some(bytes) => Matrix::from_bytes(bytes, self.dtype),
                None => return Err(JobError::NotFetched { what: "a" }),
            },
        }
        .map_err(|source| JobError::Input { what: "a", source })
    }

    /// x, inline; by path or Redis key, from `fetched`.
    pub fn load_x(&self, fetched: Option<&[u8]>) -> Result<Operand, JobError> {
        let input = |source| JobError::Input { what: "x", source };
        match (self.kind, &self.x) {
            (JobKind::Matvec, VectorInput::Inline(x)) if x.rows.is_none() => {
                x.clone().into_vector(self.dtype).map(Operand::Vector)
            }
            (JobKind::Matmul, VectorInput::Inline(x)) if x.rows.is_some() => {
                x.clone().into_matrix(self.dtype).map(Operand::Batch)
            }
            (JobKind::Matvec, VectorInput::Inline(_)) => {
                return Err(JobError::Shape(
                    "a matvec job's x is one vector; a batch of inputs is a matmul job".into(),
                ))
            }
            (JobKind::Matmul, VectorInput::Inline(_)) => {
                return Err(JobError::Shape(
                    "a matmul job's x is a batch: one input per row (B × K)".into(),
                ))
            }
            (kind, VectorInput::Path(_) | VectorInput::RedisKey(_)) => match (kind, fetched) {
                (JobKind::Matvec, Some(bytes)) => {
                    Vector::from_bytes(bytes, self.dtype).map(Operand::Vector)
                }
                (JobKind::Matmul, Some(bytes)) => {
                    Matrix::from_bytes(bytes, self.dtype).map(Operand::Batch)
                }
                (_, None) => return Err(JobError::NotFetched { what: "x" }),
                (JobKind::Inference, Some(_)) => return Err(inference_x()),
            },
            (JobKind::Inference, _) => return Err(inference_x()),
        }
        .map_err(input)
    }

    /// The Redis keys A and x are referenced by, if they are.
    pub fn redis_keys(&self) -> (Option<&str>, Option<&str>) {
        let a = match &self.a {
            Some(MatrixInput::RedisKey(k)) => Some(k.as_str()),
            _ => None,
        };
        let x = match &self.x {
            VectorInput::RedisKey(k) => Some(k.as_str()),
            _ => None,
        };
        (a, x)
    }
}

fn inference_x() -> JobError {
    JobError::Kind("an inference job's inputs are read with its model".into())
}

impl JobKind {
    /// The kind as JSON spells it.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Matvec => "matvec",
            JobKind::Matmul => "matmul",
            JobKind::Inference => "inference",
        }
    }
}

/// A request on the jobs queue to stop a job: `{"cancel": "<job id>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub cancel: String,
}

/// What arrives on the jobs queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Job(Box<JobSpec>),
    Cancel(String),
}

impl Request {
    /// A cancel request, or else a job ([`JobSpec::parse`], whose errors are the ones reported).
    pub fn parse(bytes: &[u8], limits: &JobLimits) -> Result<Request, JobError> {
        // A cancel request is tiny; anything else is a job and is checked as one.
        if bytes.len() <= 256 {
            if let Ok(cancel) = serde_json::from_slice::<CancelRequest>(bytes) {
                return Ok(Request::Cancel(cancel.cancel));
            }
        }
        JobSpec::parse(bytes, limits).map(|job| Request::Job(Box::new(job)))
    }
}

impl MatrixInput {
    fn reference(&self) -> Option<&str> {
        match self {
            MatrixInput::Inline(_) => None,
            MatrixInput::RedisKey(r) | MatrixInput::Path(r) => Some(r),
        }
    }
}

impl VectorInput {
    fn reference(&self) -> Option<&str> {
        match self {
            VectorInput::Inline(_) => None,
            VectorInput::RedisKey(r) | VectorInput::Path(r) => Some(r),
        }
    }
}

/// Whether `id` is a well-formed job id: 1-64 characters from `[A-Za-z0-9._-]`.
pub fn is_valid_job_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Shape and size checks shared by inline and loaded inputs.
pub fn check_shapes(
    a: &Matrix,
    x: &Operand,
    tile_rows: usize,
    limits: &JobLimits,
) -> Result<(), JobError> {
    match x {
        Operand::Vector(x) => check_vector_shapes(a, x, tile_rows, limits),
        Operand::Batch(x) => check_batch_shapes(a, (x.rows(), x.cols()), limits),
    }
}

/// A matvec job's shape and sizes: x as long as A's rows, A and its tiles within the limits.
pub fn check_vector_shapes(
    a: &Matrix,
    x: &Vector,
    tile_rows: usize,
    limits: &JobLimits,
) -> Result<(), JobError> {
    if a.cols() != x.len() {
        return Err(JobError::Shape(format!(
            "A is {}x{} but x has {} entries",
            a.rows(),
            a.cols(),
            x.len()
        )));
    }
    let entries = a.rows().saturating_mul(a.cols());
    if entries > limits.max_entries {
        return Err(JobError::Limit(format!(
            "A has {entries} entries, over the {} limit",
            limits.max_entries
        )));
    }
    let tiles = TilePlan::new(a.rows(), a.cols(), tile_rows).len();
    if tiles > limits.max_tiles {
        return Err(JobError::Limit(format!(
            "the job needs {tiles} tiles, over the {} limit",
            limits.max_tiles
        )));
    }
    Ok(())
}

/// A matmul job's shape and sizes: X (`x_rows` × `x_cols`) holds inputs of A's width, and A, X
/// and Y fit the limits. (Its task count is checked once its segments are planned.)
pub fn check_batch_shapes(
    a: &Matrix,
    (x_rows, x_cols): (usize, usize),
    limits: &JobLimits,
) -> Result<(), JobError> {
    if a.cols() != x_cols || x_rows == 0 {
        return Err(JobError::Shape(format!(
            "A is {}x{} but X holds {x_rows} inputs of {x_cols} entries (X is B x K, one input \
             per row)",
            a.rows(),
            a.cols(),
        )));
    }
    let (m, k, b) = (a.rows(), a.cols(), x_rows);
    if m > MAX_BATCH_DIM || b > MAX_BATCH_DIM || k > MAX_BATCH_K {
        return Err(JobError::Limit(format!(
            "a {m}x{k} A over {b} inputs: M and B must be at most {MAX_BATCH_DIM} and K (so \
             that outputs fit int32) at most {MAX_BATCH_K}"
        )));
    }
    for (what, entries) in [
        ("A", m.saturating_mul(k)),
        ("X", b.saturating_mul(k)),
        ("Y", b.saturating_mul(m)),
    ] {
        if entries > limits.max_entries {
            return Err(JobError::Limit(format!(
                "{what} has {entries} entries, over the {} limit",
                limits.max_entries
            )));
        }
    }
    Ok(())
}

/// The JSON Schema of [`JobSpec`], as committed in `schemas/job.schema.json`.
pub fn job_schema() -> String {
    let schema = schemars::schema_for!(JobSpec);
    // A derived schema always serializes.
    #[allow(clippy::expect_used)]
    let mut text = serde_json::to_string_pretty(&schema).expect("schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<JobSpec, JobError> {
        JobSpec::parse(json.as_bytes(), &JobLimits::default())
    }

    const OK: &str = r#"{"schema_version":1,"kind":"matvec","dtype":"i8","a":{"inline":[[1,2],[3,4]]},"x":{"inline":[5,-6]}}"#;

    const MATMUL: &str = r#"{"schema_version":1,"kind":"matmul","dtype":"i8","a":{"inline":[[1,2],[3,4]]},"x":{"inline":[[5,-6],[7,8]]}}"#;

    #[test]
    fn a_valid_batch_job_parses() {
        let job = parse(MATMUL).unwrap();
        let (a, x) = job.load_inputs((None, None)).unwrap();
        let Operand::Batch(x) = x else {
            panic!("a matmul job's x is a batch")
        };
        assert_eq!((a.rows(), x.rows(), x.cols()), (2, 2, 2));
        assert_eq!(x.row(1), &[7, 8]);
        let limits = JobLimits {
            max_entries: 3,
            ..JobLimits::default()
        };
        assert!(
            matches!(JobSpec::parse(MATMUL.as_bytes(), &limits), Err(JobError::Limit(m)) if m.contains("entries"))
        );
    }

    #[test]
    fn a_valid_job_parses() {
        let job = parse(OK).unwrap();
        let (a, x) = job.load_inputs((None, None)).unwrap();
        let Operand::Vector(x) = x else {
            panic!("a matvec job's x is a vector")
        };
        assert_eq!(a.matvec(&x).unwrap(), vec![-7, -9]);
        assert_eq!(job.tile_rows(), DEFAULT_TILE_ROWS);
    }

    #[test]
    fn hostile_jobs_get_their_own_errors() {
        type Expect = fn(&JobError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("not json", |e| matches!(e, JobError::Json(_))),
            (
                &OK.replace("\"kind\"", "\"extra\":1,\"kind\""),
                |e| matches!(e, JobError::Json(m) if m.contains("unknown field")),
            ),
            (&OK.replace(":1,", ":2,"), |e| {
                matches!(e, JobError::SchemaVersion(2))
            }),
            (&OK.replace("[5,-6]", "[5]"), |e| {
                matches!(e, JobError::Shape(_))
            }),
            (
                &OK.replace("[3,4]", "[3]"),
                |e| matches!(e, JobError::Input { what: "a", source: TensorError::Shape(m) } if m.contains("row 1 has 1 entries")),
            ),
            (&OK.replace("[5,-6]", "[5,300]"), |e| {
                matches!(e, JobError::Input { what: "x", .. })
            }),
            (&OK.replace("[1,2]", "[1,-129]"), |e| {
                matches!(e, JobError::Input { what: "a", .. })
            }),
            (&OK.replace("[5,-6]", "[5,1e30]"), |e| {
                matches!(e, JobError::Json(_))
            }),
            (&OK.replace("\"i8\"", "\"f32\""), |e| {
                matches!(e, JobError::Json(_))
            }),
            (
                &OK.replace("matvec", "matmul"),
                |e| matches!(e, JobError::Shape(m) if m.contains("one input per row")),
            ),
            (&OK.replace("matvec", "product"), |e| {
                matches!(e, JobError::Json(_))
            }),
            (
                &OK.replace("[5,-6]", "[[5,-6]]"),
                |e| matches!(e, JobError::Shape(m) if m.contains("matmul job")),
            ),
            (
                &OK.replace("\"kind\"", "\"segment_blocks\":1024,\"kind\""),
                |e| matches!(e, JobError::Limit(m) if m.contains("segment_blocks")),
            ),
            (&MATMUL.replace("[5,-6],[7,8]", "[5,-6],[7]"), |e| {
                matches!(e, JobError::Input { what: "x", .. })
            }),
            (
                &MATMUL.replace("[5,-6],[7,8]", "[5,-6,1],[7,8,1]"),
                |e| matches!(e, JobError::Shape(m) if m.contains("one input per row")),
            ),
            (&MATMUL.replace("[7,8]", "[7,128]"), |e| {
                matches!(e, JobError::Input { what: "x", .. })
            }),
            (&MATMUL.replace("[[5,-6],[7,8]]", "[]"), |e| {
                matches!(e, JobError::Shape(_))
            }),
            (
                &MATMUL.replace("\"kind\"", "\"segment_blocks\":8,\"kind\""),
                |e| matches!(e, JobError::Limit(m) if m.contains("segment_blocks")),
            ),
            (
                &OK.replace("{\"inline\":[5,-6]}", "{\"inline\":[5,-6],\"path\":\"x\"}"),
                |e| matches!(e, JobError::Json(_)),
            ),
            (
                &OK.replace("\"kind\"", "\"job_id\":\"a b\",\"kind\""),
                |e| matches!(e, JobError::JobId(_)),
            ),
            (&OK.replace("\"kind\"", "\"tile_rows\":0,\"kind\""), |e| {
                matches!(e, JobError::Limit(_))
            }),
            (&OK.replace("\"kind\"", "\"tile_rows\":-3,\"kind\""), |e| {
                matches!(e, JobError::Json(_))
            }),
            (
                &OK.replace("{\"inline\":[[1,2],[3,4]]}", "{\"inline\":[]}"),
                |e| matches!(e, JobError::Input { .. }),
            ),
            (&OK.replace("{\"inline\":[5,-6]}", "{\"path\":\"\"}"), |e| {
                matches!(e, JobError::Limit(_))
            }),
        ];
        for (json, expected) in cases {
            let err = parse(json).unwrap_err();
            assert!(expected(&err), "{json}: {err}");
        }
        let limits = JobLimits {
            max_job_bytes: 10,
            ..JobLimits::default()
        };
        assert!(matches!(
            JobSpec::parse(OK.as_bytes(), &limits),
            Err(JobError::TooLarge { .. })
        ));
        let limits = JobLimits {
            max_entries: 3,
            ..JobLimits::default()
        };
        assert!(matches!(
            JobSpec::parse(OK.as_bytes(), &limits),
            Err(JobError::Limit(_))
        ));
        // Workers declared at 4 GiB prove tiles of up to 254 rows, not 510.
        let memory = 4 << 30;
        let limits = JobLimits {
            max_tile_rows: crate::plan::max_tile_rows_for_memory(memory),
            worker_memory: Some(memory),
            ..JobLimits::default()
        };
        let tall = |rows: usize| OK.replace("\"kind\"", &format!("\"tile_rows\":{rows},\"kind\""));
        assert!(JobSpec::parse(tall(254).as_bytes(), &limits).is_ok());
        let refused = JobSpec::parse(tall(510).as_bytes(), &limits).unwrap_err();
        assert!(
            matches!(&refused, JobError::Limit(m) if m.contains("worker memory") && m.contains("at most 254 rows")),
            "{refused}"
        );
    }

    #[test]
    fn committed_schema_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/job.schema.json");
        if std::env::var_os("STARKSCALE_WRITE_SCHEMA").is_some() {
            std::fs::write(path, job_schema()).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == job_schema(),
            "schemas/job.schema.json is stale: rerun this test with STARKSCALE_WRITE_SCHEMA=1"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn example_jobs_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("job-") && name.ends_with(".json") {
                let bytes = std::fs::read(&path).unwrap();
                JobSpec::parse(&bytes, &JobLimits::default())
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                seen += 1;
            }
        }
        assert!(seen >= 2, "found {seen} example jobs");
    }
}
