//! Messages between coordinator and workers, and the Redis keyspace they share.
//!
//! Keys are deterministic (`starkscale:job:{id}:...`), so a redelivered task rewrites the same
//! key instead of adding a second result; every key is written with the job's TTL.

use serde::{Deserialize, Serialize};

use crate::plan::TileSpec;
use crate::tensor::{Dtype, Matrix, TensorError, Vector};

/// A tile to prove. Published to the tasks queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMsg {
    pub job_id: String,
    pub tile: TileSpec,
    /// 1 for the first attempt; the coordinator bumps it when it sends a tile back.
    pub attempt: u32,
}

/// What happened to a task. Published to the events queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEvent {
    pub job_id: String,
    pub tile_index: usize,
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
    },
    /// The tile cannot be proven. `permanent` failures (bad input, step limit) are not retried.
    Failed { reason: String, permanent: bool },
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<Vec<i64>>,
    /// Redis key of the certificate (the verified tile proofs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<String>,
    pub tiles: usize,
    /// Seconds from accepting the job to its result.
    pub wall_s: f64,
    /// Sum over accepted tiles of their run + prove seconds, and of the coordinator's verify time.
    pub tile_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Succeeded,
    Failed,
}

/// The Redis keyspace of one deployment.
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
    /// The inputs of one tile ([`TileInputBlob`]): all a worker reads.
    pub fn tile_input(&self, job_id: &str, tile: usize) -> String {
        format!("{}:job:{job_id}:tile:{tile}:input", self.prefix)
    }
    /// The proof of one attempt at one tile.
    pub fn proof(&self, job_id: &str, tile: usize, attempt: u32) -> String {
        format!("{}:job:{job_id}:tile:{tile}:proof:{attempt}", self.prefix)
    }
    /// The job's [`JobResult`], as JSON.
    pub fn result(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:result", self.prefix)
    }
    /// The job's certificate.
    pub fn certificate(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:certificate", self.prefix)
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
        out.extend(self.a.data().iter().map(|&v| v as i8 as u8));
        out.extend(self.x.data().iter().map(|&v| v as i8 as u8));
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
        let values = |b: &[u8]| b.iter().map(|&v| v as i8 as i64).collect::<Vec<_>>();
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
        let json = r#"{"job_id":"j","tile":{"index":0,"row_block":0,"col_block":0,"row0":0,"col0":0,"rows":1,"cols":1},"attempt":1,"extra":0}"#;
        assert!(serde_json::from_str::<TaskMsg>(json).is_err());
        assert!(serde_json::from_str::<TaskMsg>(&json.replace(r#","extra":0"#, "")).is_ok());
    }
}
