//! What a client checks before it believes a result (`submit --wait`, `result`): the job's
//! certificate, fully verified, against what the client itself knows of the job — inline
//! values, files it uploaded, a model commitment it named — and the result's y (or the stored
//! Y or logits) against what the certificate proves. The services are not trusted for any of
//! it: a result that fails is reported as forged, whoever wrote it.

use anyhow::Result;
use starkscale_cairo::batch::{self, Rows, Shape as BatchShape, Stream};
use starkscale_cairo::batch_certificate::{verify_batch, BatchCertificate, BatchExpect};
use starkscale_cairo::certificate::{verify_certificate, Expectations};
use starkscale_cairo::encoding::Digest;
use starkscale_cairo::inference_certificate::{
    verify_inference, InferenceCertificate, InferenceExpect,
};
use starkscale_cairo::tree::commit_matrix;
use starkscale_common::job::{JobKind, MatrixInput, ModelInput, Operand, VectorInput};
use starkscale_common::messages::{JobResult, JobStatus, Keys};
use starkscale_common::tensor::npy;
use starkscale_common::{Dtype, JobSpec, Matrix};

/// What the client knows of a job it submits, to hold the certificate to.
#[derive(Debug, Default)]
pub struct Known {
    a: Option<Matrix>,
    x: Option<Operand>,
    /// Inference inputs given inline as int8.
    inference_x: Option<Rows>,
    model_commitment: Option<Digest>,
}

/// The bytes of the inputs a client uploaded (`submit --upload`): what it read itself, and so
/// knows, of inputs the job names by key.
#[derive(Debug, Default)]
pub struct Uploaded {
    pub a: Option<Vec<u8>>,
    pub x: Option<Vec<u8>>,
}

impl Known {
    /// What the job `spec` (as sent, after any upload) tells the client: inline values, a named
    /// model commitment (an uploaded model is named by its commitment), and inputs by key that
    /// the client `uploaded` itself. A path the coordinator reads from its own data directory
    /// is not known here (the client may not have that file).
    pub fn of(spec: &JobSpec, uploaded: &Uploaded) -> Known {
        let a = match (&spec.a, &uploaded.a) {
            (Some(MatrixInput::Inline(_)), _) => spec.load_a(None).ok(),
            (Some(MatrixInput::RedisKey(_)), Some(bytes)) => spec.load_a(Some(bytes)).ok(),
            _ => None,
        };
        let (x, inference_x) = match (spec.kind, &spec.x, &uploaded.x) {
            (JobKind::Inference, VectorInput::Inline(rows), _) if rows.rows.is_some() => {
                (None, Some(Rows::int8(rows.cols, &rows.data)))
            }
            (JobKind::Inference, ..) => (None, None),
            (_, VectorInput::Inline(_), _) => (spec.load_x(None).ok(), None),
            (_, VectorInput::RedisKey(_), Some(bytes)) => (spec.load_x(Some(bytes)).ok(), None),
            _ => (None, None),
        };
        let model_commitment = match &spec.model {
            Some(ModelInput::Commitment(hex)) => Digest::from_hex(hex),
            _ => None,
        };
        Known {
            a,
            x,
            inference_x,
            model_commitment,
        }
    }
}

/// Why a result is not to be believed.
#[derive(Debug, thiserror::Error)]
#[error("FORGED result for job {job_id}: {reason}")]
pub struct Forged {
    pub job_id: String,
    pub reason: String,
}

/// What was checked, for the client to say.
#[derive(Debug)]
pub struct Checked {
    pub summary: String,
}

/// Checks a succeeded `result` against its `certificate` (and, for a matmul or inference job,
/// the stored `y`), and both against `known`. A result that did not succeed proves nothing and
/// is passed through.
pub fn check(
    result: &JobResult,
    keys: &Keys,
    certificate: Option<&[u8]>,
    y: Option<&[u8]>,
    known: &Known,
    allow_test: bool,
) -> Result<Option<Checked>, Forged> {
    if result.status != JobStatus::Succeeded {
        return Ok(None);
    }
    let forged = |reason: String| Forged {
        job_id: result.job_id.clone(),
        reason,
    };
    // A result names where its certificate and outputs are; only the job's own keys count.
    if result.certificate_key.as_deref() != Some(keys.certificate(&result.job_id).as_str()) {
        return Err(forged(format!(
            "its certificate key {:?} is not the job's",
            result.certificate_key
        )));
    }
    if result
        .y_key
        .as_deref()
        .is_some_and(|k| k != keys.y(&result.job_id))
    {
        return Err(forged(format!(
            "its Y key {:?} is not the job's",
            result.y_key
        )));
    }
    let certificate =
        certificate.ok_or_else(|| forged("it names a certificate that is not stored".into()))?;
    let checked = if BatchCertificate::is_batch(certificate) {
        check_batch(certificate, y, known, allow_test)
    } else if InferenceCertificate::is_inference(certificate) {
        check_inference(certificate, y, known, allow_test)
    } else {
        check_matvec(result, certificate, known, allow_test)
    };
    checked.map(Some).map_err(forged)
}

fn check_matvec(
    result: &JobResult,
    certificate: &[u8],
    known: &Known,
    allow_test: bool,
) -> Result<Checked, String> {
    let x = match &known.x {
        Some(Operand::Vector(x)) => Some(x),
        _ => None,
    };
    let expect = Expectations {
        x,
        allow_test,
        ..Expectations::default()
    };
    let v = verify_certificate(certificate, &expect).map_err(|e| e.to_string())?;
    if let Some(a) = &known.a {
        let own = commit_matrix(a, v.tile_rows as usize, v.tile_cols as usize);
        if own != v.a_commitment {
            return Err(format!(
                "the certificate is of the matrix {}, the submitted A commits to {own}",
                v.a_commitment
            ));
        }
    }
    if result.y.as_ref() != Some(&v.y) {
        return Err("its y is not the y the certificate proves".into());
    }
    Ok(Checked {
        summary: format!(
            "certificate verified ({} proofs, {} profile); y proven for {} and {}",
            v.tiles + v.nodes,
            v.profile,
            if known.a.is_some() {
                "the submitted A"
            } else {
                "a committed A"
            },
            if x.is_some() {
                "the submitted x"
            } else {
                "a committed x"
            },
        ),
    })
}

/// Stored Y (int32) or logits (int8) rows, as `.npy`.
fn stored_rows(y: Option<&[u8]>, int8: bool, what: &str) -> Result<Rows, String> {
    let bytes = y.ok_or_else(|| format!("its {what} is not stored"))?;
    let shape_of = |shape: Vec<usize>| match shape[..] {
        [_, width] => Ok(width),
        _ => Err(format!("its stored {what} is not 2-D")),
    };
    let stored = |e| format!("its stored {what}: {e}");
    Ok(match int8 {
        true => {
            let (shape, values) = npy::parse(bytes, Dtype::I8).map_err(stored)?;
            Rows::I8 {
                width: shape_of(shape)?,
                data: values,
            }
        }
        false => {
            let (shape, values) = npy::parse_i32(bytes).map_err(stored)?;
            Rows::I32 {
                width: shape_of(shape)?,
                data: values.iter().map(|&v| v as i32).collect(),
            }
        }
    })
}

fn check_batch(
    certificate: &[u8],
    y: Option<&[u8]>,
    known: &Known,
    allow_test: bool,
) -> Result<Checked, String> {
    let y = stored_rows(y, false, "Y")?;
    let x = match &known.x {
        Some(Operand::Batch(x)) => Some(Rows::int8(x.cols(), x.data())),
        _ => None,
    };
    let a_commitment = known.a.as_ref().map(|a| {
        let shape = BatchShape {
            m: a.rows(),
            k: a.cols(),
            b: 1,
        };
        batch::commit(Stream::Weights, &shape, &Rows::int8(a.cols(), a.data()))
    });
    let expect = BatchExpect {
        a_commitment: a_commitment.as_ref(),
        x: x.as_ref(),
        y: Some(&y),
        allow_test,
        starks_verified: false,
    };
    let v = verify_batch(certificate, &expect).map_err(|e| e.to_string())?;
    Ok(Checked {
        summary: format!(
            "certificate verified ({} segments, {} profile); the stored Y proven for {} and {}",
            v.segments,
            v.profile,
            if a_commitment.is_some() {
                "the submitted A"
            } else {
                "a committed A"
            },
            if x.is_some() {
                "the submitted X"
            } else {
                "a committed X"
            },
        ),
    })
}

fn check_inference(
    certificate: &[u8],
    logits: Option<&[u8]>,
    known: &Known,
    allow_test: bool,
) -> Result<Checked, String> {
    let logits = stored_rows(logits, true, "logits")?;
    let expect = InferenceExpect {
        model_commitment: known.model_commitment.as_ref(),
        x: known.inference_x.as_ref(),
        logits: Some(&logits),
        allow_test,
        starks_verified: false,
    };
    let v = verify_inference(certificate, &expect).map_err(|e| e.to_string())?;
    Ok(Checked {
        summary: format!(
            "certificate verified ({} segments, {} profile); the stored logits proven for {} and {}",
            v.segments,
            v.profile,
            if known.model_commitment.is_some() { "the named model" } else { "a committed model" },
            if known.inference_x.is_some() { "the submitted inputs" } else { "committed inputs" },
        ),
    })
}
