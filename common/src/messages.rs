//! Messages between coordinator and workers, the records the coordinator keeps in the store, and
//! the keyspace they share.
//!
//! Keys are deterministic (`starkscale:job:{id}:...`), so a redelivered task rewrites the same
//! key instead of adding a second result; every key is written with the job's TTL.

use serde::{Deserialize, Serialize};

use crate::tensor::{Dtype, Matrix, TensorError, Vector};

/// A task to prove: a map tile, or a reduce node of the job's tree. Published to the tasks queue;
/// its input is at [`Keys::task_input`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMsg {
    pub job_id: String,
    /// Index within the job: tiles row-major, then reduce nodes, the root last.
    pub task: usize,
    pub kind: TaskKind,
    /// 1 for the first attempt; the coordinator bumps it when it sends a task back.
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Run and prove the map kernel on a tile ([`TileInputBlob`]).
    Map,
    /// Run and prove a reduce program on a node's children (a reduce input).
    Reduce,
    /// Run and prove the batch kernel on rows of one stream of a matmul job (a segment input).
    Segment,
    /// Run and prove the batch root over every segment of a matmul job (a batch root input).
    BatchRoot,
    /// Run and prove the layer kernel on rows of one layer's accumulators of an inference job
    /// (a layer segment input).
    LayerSegment,
    /// Run and prove the inference root over every segment of an inference job.
    InferRoot,
}

impl TaskKind {
    pub const ALL: [TaskKind; 6] = [
        TaskKind::Map,
        TaskKind::Reduce,
        TaskKind::Segment,
        TaskKind::BatchRoot,
        TaskKind::LayerSegment,
        TaskKind::InferRoot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Map => "map",
            TaskKind::Reduce => "reduce",
            TaskKind::Segment => "segment",
            TaskKind::BatchRoot => "batch_root",
            TaskKind::LayerSegment => "layer_segment",
            TaskKind::InferRoot => "infer_root",
        }
    }
}

/// What happened to a task. Published to the events queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEvent {
    pub job_id: String,
    pub task: usize,
    pub attempt: u32,
    pub worker: String,
    pub outcome: TaskOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskOutcome {
    /// The proof is stored at [`Keys::proof`] for this attempt.
    Proven {
        steps: usize,
        run_s: f64,
        prove_s: f64,
        proof_bytes: usize,
        /// The worker's peak resident memory during this task.
        #[serde(default)]
        peak_rss_bytes: u64,
    },
    /// The task cannot be proven. `permanent` failures (bad input, step limit) are not retried.
    Failed { reason: String, permanent: bool },
    /// The task's input is not in the store (the job ended, or the store lost it). The
    /// coordinator re-plans a running job whose inputs vanished.
    InputMissing { key: String },
}

/// How a job ended. Published to the results exchange and stored at [`Keys::result`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobResult {
    /// The job's id (for a job rejected before its id could be read: `"invalid"`).
    pub job_id: String,
    pub status: JobStatus,
    /// Why the job failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// y of a matvec job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<Vec<i64>>,
    /// Y of a matmul job: the Redis key of a B × M int32 `.npy` (one output per row); of an
    /// inference job, its B × outputs int8 logits `.npy`. It lives as long as the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y_key: Option<String>,
    /// Redis key of the job certificate (`docs/certificate.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<String>,
    /// Map tiles of the job (segments, for a matmul job).
    pub tiles: usize,
    /// Reduce nodes of the job, the root included (1, the batch root, for a matmul job).
    #[serde(default)]
    pub nodes: usize,
    /// Seconds from accepting the job to its result.
    pub wall_s: f64,
    /// Sum over accepted tiles of their run + prove seconds, and of the coordinator's verify time.
    pub tile_s: f64,
    /// The same over the reduce nodes.
    #[serde(default)]
    pub reduce_s: f64,
    /// Per accepted task: who proved it, how long it took, and the worker's peak memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_timings: Vec<TaskTiming>,
}

impl JobResult {
    /// The failed result of a job that never got as far as a plan (refused, or lost before it
    /// was planned), `started_unix_ms` being when it was received, if known.
    pub fn failed_unplanned(
        job_id: &str,
        error: String,
        started_unix_ms: Option<u64>,
    ) -> JobResult {
        JobResult {
            job_id: job_id.to_string(),
            status: JobStatus::Failed,
            error: Some(error),
            y: None,
            y_key: None,
            certificate_key: None,
            tiles: 0,
            nodes: 0,
            wall_s: started_unix_ms.map_or(0.0, |t| unix_ms().saturating_sub(t) as f64 / 1000.0),
            tile_s: 0.0,
            reduce_s: 0.0,
            task_timings: Vec::new(),
        }
    }
}

/// How one task was proven.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTiming {
    pub task: usize,
    pub kind: TaskKind,
    pub attempt: u32,
    pub worker: String,
    /// Run + prove seconds reported by the worker, plus the coordinator's verify time.
    pub seconds: f64,
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Claimed; its inputs are being loaded and its tasks written.
    Planning,
    /// Planned; tasks are being proven.
    Running,
    /// Its outcome is decided (`JobProgress::ending`); the certificate and result are being
    /// written and published.
    Finishing,
    Succeeded,
    Failed,
    /// Stopped by a cancel request; its keys are freed.
    Cancelled,
}

impl JobStatus {
    /// Succeeded, failed or cancelled: the job will not change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The status as JSON and metric labels spell it.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Planning => "planning",
            JobStatus::Running => "running",
            JobStatus::Finishing => "finishing",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// How far a job has got, at [`Keys::progress`]; what `starkscale status` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobProgress {
    pub job_id: String,
    pub status: JobStatus,
    /// Map tiles plus reduce nodes.
    pub tasks: usize,
    /// Tasks whose proof the coordinator has verified and accepted.
    pub proven: usize,
    /// Attempts sent back (failed or rejected proofs).
    pub retries: usize,
    /// When the coordinator accepted the job, in Unix milliseconds.
    pub started_unix_ms: u64,
    /// Seconds the coordinator took from receiving the job to all its tasks being published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_s: Option<f64>,
    /// While finishing and once ended: the decided final status and why (for a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ending: Option<Ending>,
}

/// How a job ends, decided before its certificate and result are written, so that a coordinator
/// that stops in between finishes it the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ending {
    pub status: JobStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Ending {
    pub fn succeeded() -> Ending {
        Ending {
            status: JobStatus::Succeeded,
            error: None,
        }
    }
    pub fn failed(error: impl Into<String>) -> Ending {
        Ending {
            status: JobStatus::Failed,
            error: Some(error.into()),
        }
    }
    pub fn cancelled() -> Ending {
        Ending {
            status: JobStatus::Cancelled,
            error: Some("cancelled by request".into()),
        }
    }
}

/// What the coordinator needs to carry a job on, at [`Keys::plan`]: written once when the job is
/// planned, so that a restarted coordinator picks the job up where it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    pub job_id: String,
    pub reply_to: Option<String>,
    pub started_unix_ms: u64,
    pub layout: Layout,
}

/// How a job was cut into tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Layout {
    /// Map tiles and a reduce tree: a matvec job, or a matmul job of one input.
    Tiles(TileLayout),
    /// Segments of the three streams and a batch root: a matmul job.
    Batch(BatchLayout),
    /// Every layer's weights segments, the inputs segments, every layer's layer segments, and
    /// the inference root: an inference job.
    Inference(InferenceLayout),
}

/// An inference job's plan (`docs/inference.md`): its segments in the root's order and what
/// every proof must state. The logits are stored at [`Keys::y`] when the job is planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceLayout {
    /// Inputs in the batch.
    pub batch: usize,
    /// Each layer's (outputs, inputs).
    pub dims: Vec<(usize, usize)>,
    /// The commitments (hex) the root must state.
    pub model_commitment: String,
    pub x_commitment: String,
    pub logits_commitment: String,
    pub segments: Vec<InferenceSegment>,
}

/// One segment task of an inference job, and the fact its proof must have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSegment {
    pub part: InferencePart,
    /// The layer (0 for the inputs).
    pub layer: usize,
    pub row0: usize,
    pub rows: usize,
    /// Blake2s fact (hex) of the kernel's honest public output for this segment.
    pub fact: String,
}

/// Which stream an inference segment proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InferencePart {
    /// A layer's weights (the batch kernel).
    Weights,
    /// The first layer's inputs (the batch kernel).
    Inputs,
    /// A layer's accumulators and epilogue (the layer kernel).
    Layer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileLayout {
    pub rows: usize,
    pub cols: usize,
    pub tile_rows: usize,
    /// Blake2s digest (hex) of each tile's A entries, by tile index: what its proof must state.
    pub a_digests: Vec<String>,
    /// Blake2s digest (hex) of each column block of x.
    pub x_digests: Vec<String>,
    /// Children per reduce node (the tree is recomputed from it).
    pub fan_in: usize,
    /// A matmul job of one input, proven as a matvec: its y is also stored as a 1 × M Y.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub matmul: bool,
}

/// A matmul job's plan (`docs/batch.md`): its segments in the root's order, and what every
/// proof must state. Y itself is stored at [`Keys::y`] when the job is planned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLayout {
    /// Outputs per input (rows of A), entries per input (columns of A), inputs.
    pub m: usize,
    pub k: usize,
    pub b: usize,
    /// The commitments (hex) the root must state.
    pub a_commitment: String,
    pub x_commitment: String,
    pub y_commitment: String,
    pub segments: Vec<SegmentRecord>,
}

/// One segment task: rows of one stream, and the fact its proof must have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRecord {
    /// The stream's kind word (4 weights, 5 inputs, 6 outputs).
    pub stream: u32,
    pub row0: usize,
    pub rows: usize,
    /// Blake2s fact (hex) of the batch kernel's honest public output for this segment.
    pub fact: String,
}

/// One task's state, a field of the hash at [`Keys::tasks`] (field = task index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    /// The attempt whose event the coordinator waits for (or accepted).
    pub attempt: u32,
    /// The public output of the accepted proof (what its parent consumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Vec<u32>>,
    /// Run + prove seconds reported for the accepted attempt, plus the coordinator's verify time.
    #[serde(default)]
    pub seconds: f64,
    /// The worker that proved the accepted attempt, and its peak memory doing so.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub worker: String,
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// When the current attempt was last published (confirmed by the broker); `None` while it
    /// has not been, which is what the reconcile pass re-issues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_unix_ms: Option<u64>,
    /// Not to be published before this time (a dead-lettered task backing off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_before_unix_ms: u64,
    /// Times the broker dead-lettered this task (its delivery limit ran out).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dead_letters: u32,
    /// [`proof_digest`] of the accepted proof: the bytes the coordinator verified. Workers may
    /// write proof keys, so the proof read back when the certificate is assembled is held to
    /// this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof_digest: Option<String>,
    /// Workers that reported this task cannot be proven (a second one's agreement fails the
    /// job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unprovable_by: Vec<String>,
}

/// SHA-256 of a proof's bytes, in hex.
pub fn proof_digest(proof: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(proof))
}

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

impl Default for TaskRecord {
    /// A task waiting for its first attempt.
    fn default() -> TaskRecord {
        TaskRecord {
            attempt: 1,
            output: None,
            seconds: 0.0,
            worker: String::new(),
            peak_rss_bytes: 0,
            published_unix_ms: None,
            not_before_unix_ms: 0,
            dead_letters: 0,
            proof_digest: None,
            unprovable_by: Vec::new(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The store's keyspace of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }
    /// The job's [`JobRecord`].
    pub fn plan(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:plan", self.prefix)
    }
    /// The job's [`JobProgress`]; also the claim that makes resubmission idempotent.
    pub fn progress(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:progress", self.prefix)
    }
    /// Hash of [`TaskRecord`]s by task index.
    pub fn tasks(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:tasks", self.prefix)
    }
    /// The inputs of one task ([`TileInputBlob`] or a reduce input): all a worker reads.
    pub fn task_input(&self, job_id: &str, task: usize) -> String {
        format!("{}:job:{job_id}:task:{task}:input", self.prefix)
    }
    /// The proof of one attempt at one task.
    pub fn proof(&self, job_id: &str, task: usize, attempt: u32) -> String {
        format!("{}:job:{job_id}:task:{task}:proof:{attempt}", self.prefix)
    }
    /// The job's [`JobResult`], as JSON.
    pub fn result(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:result", self.prefix)
    }
    /// Y of a matmul job, as a `.npy`; lives as long as the result.
    pub fn y(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:y", self.prefix)
    }
    /// The job's certificate.
    pub fn certificate(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:certificate", self.prefix)
    }
    /// The job message as the coordinator received it: what it re-plans the job from when the
    /// store loses the job's inputs.
    pub fn request(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:request", self.prefix)
    }
    /// Hash of the jobs not yet ended (field = job id): what the reconcile pass walks.
    pub fn open_jobs(&self) -> String {
        format!("{}:jobs:open", self.prefix)
    }
    /// The lease that makes one coordinator the active one.
    pub fn coordinator_lease(&self) -> String {
        format!("{}:coordinator:lease", self.prefix)
    }
    /// A model uploaded by `starkscale submit --upload` (its `.onnx` bytes), named by its model
    /// commitment.
    pub fn model(&self, commitment_hex: &str) -> String {
        format!("{}:model:{commitment_hex}", self.prefix)
    }
    /// An input uploaded by `starkscale submit --upload`, named by its content digest.
    pub fn upload(&self, digest_hex: &str) -> String {
        format!("{}:input:{digest_hex}", self.prefix)
    }
    /// Every key a job of `tasks` tasks and up to `max_attempts` attempts holds while it runs
    /// (not its progress, result and certificate, which outlive it).
    pub fn working_set(&self, job_id: &str, tasks: usize, max_attempts: u32) -> Vec<String> {
        let mut keys = vec![self.plan(job_id), self.tasks(job_id), self.request(job_id)];
        for task in 0..tasks {
            keys.push(self.task_input(job_id, task));
            keys.extend((1..=max_attempts).map(|a| self.proof(job_id, task, a)));
        }
        keys
    }
}

/// A tile's inputs as stored in Redis: `b"SSTI"`, row0, col0, rows, cols (u32 little-endian),
/// then rows × cols int8 entries of A row by row, then cols int8 entries of x.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileInputBlob {
    pub row0: u32,
    pub col0: u32,
    pub a: Matrix,
    pub x: Vector,
}

const BLOB_MAGIC: &[u8; 4] = b"SSTI";

impl TileInputBlob {
    pub fn to_bytes(&self) -> Vec<u8> {
        let (rows, cols) = (self.a.rows(), self.a.cols());
        let mut out = Vec::with_capacity(20 + rows * cols + cols);
        out.extend_from_slice(BLOB_MAGIC);
        for v in [self.row0, self.col0, rows as u32, cols as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend(self.a.data().iter().map(|&v| v as u8));
        out.extend(self.x.data().iter().map(|&v| v as u8));
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TileInputBlob, TensorError> {
        let bad = |m: &str| TensorError::Shape(format!("tile input blob: {m}"));
        if bytes.len() < 20 || &bytes[..4] != BLOB_MAGIC {
            return Err(bad("missing header"));
        }
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (row0, col0, rows, cols) = (word(4), word(8), word(12) as usize, word(16) as usize);
        let body = &bytes[20..];
        if Some(body.len()) != rows.checked_mul(cols).and_then(|n| n.checked_add(cols)) {
            return Err(bad("length does not match its shape"));
        }
        let values = |b: &[u8]| b.iter().map(|&v| v as i8).collect::<Vec<_>>();
        Ok(TileInputBlob {
            row0,
            col0,
            a: Matrix::new(rows, cols, Dtype::I8, values(&body[..rows * cols]))?,
            x: Vector::new(Dtype::I8, values(&body[rows * cols..]))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_blobs_round_trip_and_reject_bad_lengths() {
        let blob = TileInputBlob {
            row0: 254,
            col0: 1024,
            a: Matrix::new(2, 3, Dtype::I8, vec![-128, 0, 127, 1, -1, 5]).unwrap(),
            x: Vector::new(Dtype::I8, vec![3, -3, 127]).unwrap(),
        };
        let bytes = blob.to_bytes();
        assert_eq!(TileInputBlob::from_bytes(&bytes).unwrap(), blob);
        assert!(TileInputBlob::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(TileInputBlob::from_bytes(b"SSTIxxxx").is_err());
    }

    #[test]
    fn task_messages_reject_unknown_fields() {
        let json = r#"{"job_id":"j","task":3,"kind":"reduce","attempt":1,"extra":0}"#;
        assert!(serde_json::from_str::<TaskMsg>(json).is_err());
        assert!(serde_json::from_str::<TaskMsg>(&json.replace(r#","extra":0"#, "")).is_ok());
    }
}
