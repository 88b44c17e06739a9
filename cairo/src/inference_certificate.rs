//! Inference certificates: every segment proof of one inference job and its inference root's
//! proof, and their verification (`docs/inference.md`).
//!
//! A certificate states "the model with this commitment maps the inputs with this commitment to
//! the logits with this commitment". [`verify_inference`] checks, each failure with its own
//! [`BatchError`]: the file decodes; every proof is of a pinned program at pinned parameters —
//! the segment kernel or the layer kernel, the inference root last — at one profile; the root
//! lists exactly the other proofs' facts, in order; the root's batch size, layer shapes and
//! commitments are the certificate's and, when given, the caller's model commitment and the
//! commitments of the caller's inputs and logits; finally every STARK verifies.
//!
//! Which kernel proved a child is part of its fact, and each kernel states its kind (the segment
//! kernel 4 to 6, the layer kernel 8 or 9), which the root checks per position: so a child
//! cannot be the other kernel's proof in disguise.

use std::time::Instant;

use crate::batch::{commit, Rows, Shape, Stream};
use crate::batch_certificate::{check_facts, check_proofs, BatchError};
use crate::certificate::{malformed, write_proofs, Reader};
use crate::encoding::Digest;
use crate::inference::{InferRootOutput, MAX_LAYERS};
use crate::layer_segment::logits_rows;
use crate::program::Pinned;
use crate::prove::Profile;
use crate::verify::{check_stark, VerifyError};

const MAGIC: &[u8; 4] = b"SSIC";
pub const INFERENCE_CERTIFICATE_VERSION: u8 = 1;

/// An inference certificate: every layer's weights segments, the inputs segments, every layer's
/// layer segments (each in row order), then the inference root's proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferenceCertificate {
    pub batch: usize,
    /// Each layer's (outputs, inputs).
    pub dims: Vec<(usize, usize)>,
    pub model_commitment: Digest,
    pub x_commitment: Digest,
    pub logits_commitment: Digest,
    pub proofs: Vec<Vec<u8>>,
}

/// What the caller knows and wants checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct InferenceExpect<'a> {
    /// The model's commitment (`starkscale commit MODEL`).
    pub model_commitment: Option<&'a Digest>,
    /// The int8 inputs, one per row.
    pub x: Option<&'a Rows>,
    /// The int8 logits, one row per input.
    pub logits: Option<&'a Rows>,
    pub allow_test: bool,
    /// The caller verified every proof's STARK already, and holds these very bytes (the
    /// coordinator, which kept a digest of each proof it verified on acceptance): check
    /// everything but the STARKs again.
    pub starks_verified: bool,
}

/// What a verified inference certificate establishes.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedInference {
    pub profile: Profile,
    pub batch: usize,
    pub dims: Vec<(usize, usize)>,
    pub model_commitment: Digest,
    pub x_commitment: Digest,
    pub logits_commitment: Digest,
    pub segments: usize,
    pub verify_s: f64,
}

impl InferenceCertificate {
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self.proofs.iter().map(|p| p.len() + 8).sum();
        let mut out = Vec::with_capacity(128 + 8 * self.dims.len() + size);
        out.extend_from_slice(MAGIC);
        out.push(INFERENCE_CERTIFICATE_VERSION);
        out.extend_from_slice(&(self.batch as u32).to_le_bytes());
        out.extend_from_slice(&(self.dims.len() as u32).to_le_bytes());
        for &(m, k) in &self.dims {
            out.extend_from_slice(&(m as u32).to_le_bytes());
            out.extend_from_slice(&(k as u32).to_le_bytes());
        }
        for d in [
            &self.model_commitment,
            &self.x_commitment,
            &self.logits_commitment,
        ] {
            out.extend_from_slice(&d.to_bytes());
        }
        write_proofs(&mut out, &self.proofs);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<InferenceCertificate, BatchError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(malformed("not a STARKScale inference certificate").into());
        }
        let version = r.take(1)?[0];
        if version != INFERENCE_CERTIFICATE_VERSION {
            return Err(BatchError::Malformed(format!(
                "unsupported inference certificate version {version}"
            )));
        }
        let batch = r.u32()? as usize;
        let layers = r.u32()? as usize;
        if layers == 0 || layers > MAX_LAYERS {
            return Err(BatchError::Malformed(format!("{layers} layers")));
        }
        let mut dims = Vec::with_capacity(layers);
        for _ in 0..layers {
            dims.push((r.u32()? as usize, r.u32()? as usize));
        }
        let (model, x, logits) = (r.digest()?, r.digest()?, r.digest()?);
        let proofs = r.proofs()?;
        Ok(InferenceCertificate {
            batch,
            dims,
            model_commitment: model,
            x_commitment: x,
            logits_commitment: logits,
            proofs,
        })
    }

    /// Whether `bytes` look like an inference certificate (its magic), to pick a verifier.
    pub fn is_inference(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }
}

/// Verifies an inference certificate; see the module documentation for the checks and their
/// order.
pub fn verify_inference(
    bytes: &[u8],
    expect: &InferenceExpect,
) -> Result<VerifiedInference, BatchError> {
    let started = Instant::now();
    let cert = InferenceCertificate::from_bytes(bytes)?;
    // Per layer a weights and a layer segment, one inputs segment, and the root.
    let least = 2 * cert.dims.len() + 2;
    if cert.proofs.len() < least {
        return Err(BatchError::Malformed(format!(
            "{} proofs: an inference of {} layers has at least {least}",
            cert.proofs.len(),
            cert.dims.len()
        )));
    }
    let checked = check_proofs(
        &cert.proofs,
        expect.allow_test,
        Pinned::InferRoot,
        &[Pinned::Batch, Pinned::Layer],
    )?;
    let root =
        InferRootOutput::from_words(&checked.root_output).map_err(|e| BatchError::Proof {
            index: cert.proofs.len() - 1,
            source: VerifyError::MalformedOutput(e),
        })?;
    check_facts(&root.facts, &checked.facts)?;
    if root.batch != cert.batch || root.dims != cert.dims {
        return Err(BatchError::Root(format!(
            "the root proves a batch of {} through layers {:?}, the certificate states {} through {:?}",
            root.batch, root.dims, cert.batch, cert.dims
        )));
    }
    let stated = [
        ("model", root.model_commitment, cert.model_commitment),
        ("inputs", root.x_commitment, cert.x_commitment),
        ("logits", root.logits_commitment, cert.logits_commitment),
    ];
    for (what, proven, claimed) in stated {
        if proven != claimed {
            return Err(BatchError::Commitment {
                what,
                proven,
                given_from: "the certificate states",
                given: claimed,
            });
        }
    }
    if let Some(given) = expect.model_commitment {
        if *given != root.model_commitment {
            return Err(BatchError::Commitment {
                what: "model",
                proven: root.model_commitment,
                given_from: "the given commitment is",
                given: *given,
            });
        }
    }
    let (m0, k0) = root.dims[0];
    let first = Shape {
        m: m0,
        k: k0,
        b: root.batch,
    };
    let (ml, kl) = root.dims[root.dims.len() - 1];
    let last = Shape {
        m: ml,
        k: kl,
        b: root.batch,
    };
    if let Some(x) = expect.x {
        check_given("inputs", x, root.batch, k0, root.x_commitment, || {
            commit(Stream::Inputs, &first, x)
        })?;
    }
    if let Some(logits) = expect.logits {
        check_given(
            "logits",
            logits,
            root.batch,
            ml,
            root.logits_commitment,
            || commit(Stream::Outputs, &last, &logits_rows(logits)),
        )?;
    }
    let segments = checked.facts.len();
    if !expect.starks_verified {
        for (index, proof) in checked.proofs.into_iter().enumerate() {
            check_stark(proof).map_err(|source| BatchError::Proof { index, source })?;
        }
    }
    Ok(VerifiedInference {
        profile: checked.profile,
        batch: root.batch,
        dims: root.dims,
        model_commitment: root.model_commitment,
        x_commitment: root.x_commitment,
        logits_commitment: root.logits_commitment,
        segments,
        verify_s: started.elapsed().as_secs_f64(),
    })
}

fn check_given(
    what: &'static str,
    rows: &Rows,
    height: usize,
    width: usize,
    proven: Digest,
    commit: impl FnOnce() -> Digest,
) -> Result<(), BatchError> {
    if !matches!(rows, Rows::I8 { .. }) || rows.height() != height || rows.width() != width {
        return Err(BatchError::Root(format!(
            "the root proves int8 {what} of {height} × {width}, the given {what} are {} × {}",
            rows.height(),
            rows.width()
        )));
    }
    let given = commit();
    if given != proven {
        return Err(BatchError::Commitment {
            what,
            proven,
            given_from: "the given file commits to",
            given,
        });
    }
    Ok(())
}
