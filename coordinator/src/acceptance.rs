//! Proof acceptance. Workers are untrusted: a reported proof is accepted only if it verifies at
//! the pinned program, parameters and preprocessed root, and states exactly the planned task — a
//! tile at its position with its A and x digests, or a node over exactly the accepted children's
//! facts (the root also with the planned commitments); for a matmul or inference job, a segment
//! of the planned kernel whose fact is the one its honest run has (computed natively at
//! planning), or a batch (inference) root over exactly the accepted segments with the planned
//! shape (batch and layer shapes) and commitments.
//!
//! What a proof must state is captured on the event loop as an [`Expected`]; fetching the proof
//! and verifying it ([`check`]) run as a spawned task on the blocking pool, so the loop keeps
//! serving other jobs meanwhile. The verdict comes back to the loop, which re-checks that the
//! task still waits for that attempt before it changes anything.

use std::time::Instant;

use starkscale_cairo::batch::{self, Shape};
use starkscale_cairo::encoding::{self, Digest, Fact};
use starkscale_cairo::inference::InferRootOutput;
use starkscale_cairo::program::Pinned;
use starkscale_cairo::tree::{NodeOutput, RootOutput};
use starkscale_cairo::{verify_proof, verify_tile};
use starkscale_common::messages::{proof_digest, Keys, TaskEvent, TaskKind};
use starkscale_common::metrics::{self, Stage};
use starkscale_common::store::{Store, StoreError};
use starkscale_common::TileSpec;

/// What the proof of one task must state.
#[derive(Debug, Clone)]
pub(crate) enum Expected {
    Tile {
        tile: TileSpec,
        a_digest: Option<String>,
        x_digest: Option<String>,
    },
    Node {
        /// First row and row count.
        rows: (usize, usize),
        /// The accepted children's facts, in order.
        facts: Vec<Fact>,
        /// For the root: the planned A and x commitments.
        commitments: Option<(Option<Digest>, Option<Digest>)>,
    },
    /// A segment (of a matmul or inference job): the fact of its honest public output, and
    /// the kernel that proves it.
    Segment { fact: Fact, program: Pinned },
    BatchRoot {
        shape: Shape,
        /// A, X and Y.
        commitments: [Digest; 3],
        /// The accepted segments' facts, in the root's order.
        facts: Vec<Fact>,
    },
    InferRoot {
        batch: usize,
        /// Each layer's (outputs, inputs).
        dims: Vec<(usize, usize)>,
        /// The model, inputs and logits commitments.
        commitments: [Digest; 3],
        /// The accepted segments' facts, in the root's order.
        facts: Vec<Fact>,
    },
}

/// What a proof states (its public output), or why it is refused.
pub(crate) type Checked = Result<Vec<u32>, String>;

/// An accepted proof: its public output, and the digest of the bytes that were verified.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub output: Vec<u32>,
    pub proof_digest: String,
}

/// A reported proof's verdict.
pub(crate) type Verdict = Result<Accepted, String>;

/// Fetches the proof an event names and checks it off the event loop. `Err` only when the store
/// is unavailable; a missing or bad proof is a refused verdict.
pub(crate) async fn verify_reported<S: Store>(
    store: S,
    keys: Keys,
    event: TaskEvent,
    kind: TaskKind,
    expected: Expected,
    allow_test: bool,
) -> Result<(Verdict, f64), StoreError> {
    let key = keys.proof(&event.job_id, event.task, event.attempt);
    let Some(proof) = store.get(&key).await? else {
        return Ok((Err(format!("no proof at {key}")), 0.0));
    };
    let checked = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let verdict = check(&expected, &proof, allow_test).map(|output| Accepted {
            output,
            proof_digest: proof_digest(&proof),
        });
        (verdict, started.elapsed().as_secs_f64())
    })
    .await;
    let (verdict, seconds) = match checked {
        Ok(done) => done,
        Err(e) => (Err(format!("verifying the proof panicked: {e}")), 0.0),
    };
    metrics::stage(kind, Stage::Verify, seconds);
    Ok((verdict, seconds))
}

/// Verifies `proof` and that it states what `expected` says.
pub(crate) fn check(expected: &Expected, proof: &[u8], allow_test: bool) -> Checked {
    match expected {
        Expected::Tile {
            tile,
            a_digest,
            x_digest,
        } => check_tile(
            tile,
            a_digest.as_deref(),
            x_digest.as_deref(),
            proof,
            allow_test,
        ),
        Expected::Node {
            rows,
            facts,
            commitments,
        } => check_node(*rows, facts, commitments.as_ref(), proof, allow_test),
        Expected::Segment { fact, program } => check_segment(*program, fact, proof, allow_test),
        Expected::BatchRoot {
            shape,
            commitments,
            facts,
        } => check_batch_root(shape, commitments, facts, proof, allow_test),
        Expected::InferRoot {
            batch,
            dims,
            commitments,
            facts,
        } => check_infer_root(*batch, dims, commitments, facts, proof, allow_test),
    }
}

/// A segment's proof: the batch kernel (or, for a layer segment, the layer kernel), with exactly
/// the planned public output (its fact binds the stream, rows, challenges, chain states and sums
/// the root will link).
fn check_segment(program: Pinned, fact: &Fact, proof: &[u8], allow_test: bool) -> Checked {
    let verified = verify_proof(proof, allow_test).map_err(|e| e.to_string())?;
    if verified.program != program {
        return Err(format!(
            "proof is of the {} program, not the {} program",
            verified.program.name(),
            program.name()
        ));
    }
    if encoding::fact(&program.hash(), &verified.output) != *fact {
        return Err("segment proof states another output than the planned segment's".into());
    }
    Ok(verified.output)
}

/// The batch root's proof: over exactly the accepted segments, stating the planned shape and
/// commitments.
fn check_batch_root(
    shape: &Shape,
    commitments: &[Digest; 3],
    facts: &[Fact],
    proof: &[u8],
    allow_test: bool,
) -> Checked {
    let verified = verify_proof(proof, allow_test).map_err(|e| e.to_string())?;
    if verified.program != Pinned::BatchRoot {
        return Err(format!(
            "proof is of the {} program, not the batch root",
            verified.program.name()
        ));
    }
    let out = batch::RootOutput::from_words(&verified.output)?;
    if out.shape != *shape {
        return Err(format!(
            "batch root proves shape {:?}, not the planned {shape:?}",
            out.shape
        ));
    }
    let stated = [out.a_commitment, out.x_commitment, out.y_commitment];
    for ((what, stated), planned) in ["A", "X", "Y"].iter().zip(stated).zip(commitments) {
        if stated != *planned {
            return Err(format!("batch root proves another {what} commitment"));
        }
    }
    if out.facts != facts {
        return Err("batch root states other segment facts than the accepted segments'".into());
    }
    Ok(verified.output)
}

/// The inference root's proof: over exactly the accepted segments, stating the planned batch,
/// layer shapes and commitments.
fn check_infer_root(
    batch: usize,
    dims: &[(usize, usize)],
    commitments: &[Digest; 3],
    facts: &[Fact],
    proof: &[u8],
    allow_test: bool,
) -> Checked {
    let verified = verify_proof(proof, allow_test).map_err(|e| e.to_string())?;
    if verified.program != Pinned::InferRoot {
        return Err(format!(
            "proof is of the {} program, not the inference root",
            verified.program.name()
        ));
    }
    let out = InferRootOutput::from_words(&verified.output)?;
    if out.batch != batch || out.dims != dims {
        return Err(format!(
            "inference root proves {} inputs through layers {:?}, not the planned {batch} through {dims:?}",
            out.batch, out.dims
        ));
    }
    let stated = [
        out.model_commitment,
        out.x_commitment,
        out.logits_commitment,
    ];
    for ((what, stated), planned) in ["model", "inputs", "logits"]
        .iter()
        .zip(stated)
        .zip(commitments)
    {
        if stated != *planned {
            return Err(format!("inference root proves another {what} commitment"));
        }
    }
    if out.facts != facts {
        return Err("inference root states other segment facts than the accepted segments'".into());
    }
    Ok(verified.output)
}

/// A tile's proof: the map kernel, at the planned position and shape, of the planned digests.
fn check_tile(
    tile: &TileSpec,
    a_digest: Option<&str>,
    x_digest: Option<&str>,
    proof: &[u8],
    allow_test: bool,
) -> Checked {
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
    if a_digest != Some(out.a_digest.to_hex().as_str()) {
        return Err("proof is of other A entries".into());
    }
    if x_digest != Some(out.x_digest.to_hex().as_str()) {
        return Err("proof is of another x block".into());
    }
    Ok(out.to_words())
}

/// A node's proof: the reduce (or root) program over exactly the accepted children, in order.
fn check_node(
    rows: (usize, usize),
    children: &[Fact],
    commitments: Option<&(Option<Digest>, Option<Digest>)>,
    proof: &[u8],
    allow_test: bool,
) -> Checked {
    let verified = verify_proof(proof, allow_test).map_err(|e| e.to_string())?;
    let expected = match commitments {
        Some(_) => Pinned::Root,
        None => Pinned::Reduce,
    };
    if verified.program != expected {
        return Err(format!(
            "proof is of the {} program, not the {} program",
            verified.program.name(),
            expected.name()
        ));
    }
    let words = verified.output;
    let facts = match commitments {
        Some((a_commitment, x_commitment)) => {
            let out = RootOutput::from_words(&words)?;
            if Some(out.a_commitment) != *a_commitment {
                return Err("root proves another A commitment than the planned tiles'".into());
            }
            if Some(out.x_commitment) != *x_commitment {
                return Err("root proves another x commitment".into());
            }
            out.facts
        }
        None => {
            let out = NodeOutput::from_words(&words)?;
            if (out.row0 as usize, out.rows as usize) != rows {
                return Err("node proof covers other rows than planned".into());
            }
            out.facts
        }
    };
    if facts != children {
        return Err("node proof states other child facts than the accepted children's".into());
    }
    Ok(words)
}
