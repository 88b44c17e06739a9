//! Batch job certificates: the segment proofs and the batch root proof of one Y = A·X job, and
//! their verification (`docs/batch.md`).
//!
//! A certificate states "Y = A·X for the A, X and Y with these commitments". [`verify_batch`]
//! checks, each failure with its own [`BatchError`]: the file decodes; every proof's profile,
//! parameters, preprocessed root and program are pinned, segments first and the batch root last;
//! all proofs share one profile; the root lists exactly the segments' facts, in order; the root's
//! shape and commitments are the certificate's and, when given, the caller's A commitment and the
//! commitments of the caller's X and Y; finally every STARK verifies.

use std::time::Instant;

use crate::batch::{commit, RootOutput, Rows, SegmentOutput, Shape, Stream};
use crate::certificate::{malformed, write_proofs, CertificateError, Reader};
use crate::encoding::{self, Digest, Fact};
use crate::program::Pinned;
use crate::proof::TileProof;
use crate::prove::Profile;
use crate::verify::{check_pinned, check_stark, VerifyError};

const MAGIC: &[u8; 4] = b"SSBC";
pub const BATCH_CERTIFICATE_VERSION: u8 = 1;

/// A batch certificate: segment proofs (weights, inputs, outputs, each in row order), then the
/// batch root's proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCertificate {
    pub shape: Shape,
    pub a_commitment: Digest,
    pub x_commitment: Digest,
    pub y_commitment: Digest,
    pub proofs: Vec<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error("proof {index}: {source}")]
    Proof { index: usize, source: VerifyError },
    #[error(
        "proof order: proof {index} is of the {found} program where a {expected} proof belongs"
    )]
    Order {
        index: usize,
        found: &'static str,
        expected: &'static str,
    },
    #[error("mixed profiles: proof {index} is {found}, the root is {root}")]
    MixedProfiles {
        index: usize,
        found: Profile,
        root: Profile,
    },
    #[error("segment facts: {0}")]
    Facts(String),
    #[error("root statement: {0}")]
    Root(String),
    #[error("{what} mismatch: the root proves {what} commitment {proven}, {given_from} {given}")]
    Commitment {
        what: &'static str,
        proven: Digest,
        given_from: &'static str,
        given: Digest,
    },
}

impl From<CertificateError> for BatchError {
    fn from(e: CertificateError) -> BatchError {
        match e {
            CertificateError::Malformed(m) => BatchError::Malformed(m),
            other => BatchError::Malformed(other.to_string()),
        }
    }
}

/// What the caller knows and wants checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchExpect<'a> {
    /// The weights' commitment (`starkscale commit --batch A.npy`).
    pub a_commitment: Option<&'a Digest>,
    pub x: Option<&'a Rows>,
    pub y: Option<&'a Rows>,
    pub allow_test: bool,
    /// The caller verified every proof's STARK already, and holds these very bytes (the
    /// coordinator, which kept a digest of each proof it verified on acceptance): check
    /// everything but the STARKs again.
    pub starks_verified: bool,
}

impl BatchExpect<'_> {
    /// Nothing known but the certificate; test-profile proofs accepted.
    pub fn default_test() -> BatchExpect<'static> {
        BatchExpect {
            allow_test: true,
            ..BatchExpect::default()
        }
    }
}

/// What a verified batch certificate establishes.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedBatch {
    pub profile: Profile,
    pub shape: Shape,
    pub a_commitment: Digest,
    pub x_commitment: Digest,
    pub y_commitment: Digest,
    pub segments: usize,
    pub verify_s: f64,
}

impl BatchCertificate {
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self.proofs.iter().map(|p| p.len() + 8).sum();
        let mut out = Vec::with_capacity(128 + size);
        out.extend_from_slice(MAGIC);
        out.push(BATCH_CERTIFICATE_VERSION);
        for d in [self.shape.m, self.shape.k, self.shape.b] {
            out.extend_from_slice(&(d as u32).to_le_bytes());
        }
        for d in [&self.a_commitment, &self.x_commitment, &self.y_commitment] {
            out.extend_from_slice(&d.to_bytes());
        }
        write_proofs(&mut out, &self.proofs);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<BatchCertificate, BatchError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(malformed("not a STARKScale batch certificate").into());
        }
        let version = r.take(1)?[0];
        if version != BATCH_CERTIFICATE_VERSION {
            return Err(BatchError::Malformed(format!(
                "unsupported batch certificate version {version}"
            )));
        }
        let shape = Shape {
            m: r.u32()? as usize,
            k: r.u32()? as usize,
            b: r.u32()? as usize,
        };
        let (a, x, y) = (r.digest()?, r.digest()?, r.digest()?);
        let proofs = r.proofs()?;
        Ok(BatchCertificate {
            shape,
            a_commitment: a,
            x_commitment: x,
            y_commitment: y,
            proofs,
        })
    }

    /// Whether `bytes` look like a batch certificate (its magic), to pick a verifier.
    pub fn is_batch(bytes: &[u8]) -> bool {
        bytes.starts_with(MAGIC)
    }
}

/// Verifies a batch certificate; see the module documentation for the checks and their order.
pub fn verify_batch(bytes: &[u8], expect: &BatchExpect) -> Result<VerifiedBatch, BatchError> {
    let started = Instant::now();
    let cert = BatchCertificate::from_bytes(bytes)?;
    if cert.proofs.len() < 4 {
        return Err(BatchError::Malformed(format!(
            "{} proofs: a batch job has at least one segment per stream and a root",
            cert.proofs.len()
        )));
    }
    let checked = check_proofs(
        &cert.proofs,
        expect.allow_test,
        Pinned::BatchRoot,
        &[Pinned::Batch],
    )?;
    let bad = |e: String| BatchError::Proof {
        index: cert.proofs.len() - 1,
        source: VerifyError::MalformedOutput(e),
    };
    let root = RootOutput::from_words(&checked.root_output).map_err(bad)?;
    for (index, words) in checked.outputs.iter().enumerate() {
        SegmentOutput::from_words(words).map_err(|e| BatchError::Proof {
            index,
            source: VerifyError::MalformedOutput(e),
        })?;
    }
    check_facts(&root.facts, &checked.facts)?;
    let profile = checked.profile;
    let proofs = checked.proofs;
    if root.shape != cert.shape {
        return Err(BatchError::Root(format!(
            "the root proves shape {:?}, the certificate states {:?}",
            root.shape, cert.shape
        )));
    }
    let stated = [
        ("A", root.a_commitment, cert.a_commitment),
        ("X", root.x_commitment, cert.x_commitment),
        ("Y", root.y_commitment, cert.y_commitment),
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
    if let Some(given) = expect.a_commitment {
        if *given != root.a_commitment {
            return Err(BatchError::Commitment {
                what: "A",
                proven: root.a_commitment,
                given_from: "the given commitment is",
                given: *given,
            });
        }
    }
    let inputs = [
        ("X", Stream::Inputs, expect.x, root.x_commitment),
        ("Y", Stream::Outputs, expect.y, root.y_commitment),
    ];
    for (what, stream, rows, proven) in inputs {
        let Some(rows) = rows else { continue };
        let height = stream.height(&root.shape);
        let width = stream.row_len(&root.shape);
        if rows.height() != height || rows.width() != width {
            return Err(BatchError::Root(format!(
                "the root proves a {what} of {height} × {width}, the given {what} is {} × {}",
                rows.height(),
                rows.width()
            )));
        }
        let given = commit(stream, &root.shape, rows);
        if given != proven {
            return Err(BatchError::Commitment {
                what,
                proven,
                given_from: "the given file commits to",
                given,
            });
        }
    }
    let segments = checked.facts.len();
    if !expect.starks_verified {
        for (index, proof) in proofs.into_iter().enumerate() {
            check_stark(proof).map_err(|source| BatchError::Proof { index, source })?;
        }
    }
    Ok(VerifiedBatch {
        profile,
        shape: root.shape,
        a_commitment: root.a_commitment,
        x_commitment: root.x_commitment,
        y_commitment: root.y_commitment,
        segments,
        verify_s: started.elapsed().as_secs_f64(),
    })
}

/// A certificate's proofs, decoded and pinned: children first, the root last.
pub(crate) struct CheckedProofs {
    pub proofs: Vec<TileProof>,
    /// Every child's public output and fact, in order.
    pub outputs: Vec<Vec<u32>>,
    pub facts: Vec<Fact>,
    pub root_output: Vec<u32>,
    pub profile: Profile,
}

/// Decodes every proof and checks that it is of a pinned program at pinned parameters — the
/// last of `root`, every other of one of `children` — and that all share the root's profile.
/// The STARKs themselves are checked last, by the caller, once the cheap checks passed.
pub(crate) fn check_proofs(
    proofs: &[Vec<u8>],
    allow_test: bool,
    root: Pinned,
    children: &[Pinned],
) -> Result<CheckedProofs, BatchError> {
    let last = proofs.len() - 1;
    let mut decoded = Vec::with_capacity(proofs.len());
    let mut facts = Vec::with_capacity(last);
    let mut outputs = Vec::with_capacity(last);
    let mut root_output = Vec::new();
    for (index, bytes) in proofs.iter().enumerate() {
        let fail = |source| BatchError::Proof { index, source };
        let proof = TileProof::from_bytes(bytes).map_err(fail)?;
        let program = check_pinned(&proof, allow_test).map_err(fail)?;
        let allowed = if index == last {
            program == root
        } else {
            children.contains(&program)
        };
        if !allowed {
            let expected = if index == last { root } else { children[0] };
            return Err(BatchError::Order {
                index,
                found: program.name(),
                expected: expected.name(),
            });
        }
        let words = proof.output_words().map_err(fail)?;
        if index == last {
            root_output = words;
        } else {
            facts.push(encoding::fact(&program.hash(), &words));
            outputs.push(words);
        }
        decoded.push(proof);
    }
    let profile = decoded[last].profile;
    if let Some((index, p)) = decoded
        .iter()
        .enumerate()
        .find(|(_, p)| p.profile != profile)
    {
        return Err(BatchError::MixedProfiles {
            index,
            found: p.profile,
            root: profile,
        });
    }
    Ok(CheckedProofs {
        proofs: decoded,
        outputs,
        facts,
        root_output,
        profile,
    })
}

/// The root lists exactly the certificate's children, in order.
pub(crate) fn check_facts(listed: &[Fact], facts: &[Fact]) -> Result<(), BatchError> {
    if listed.len() != facts.len() {
        return Err(BatchError::Facts(format!(
            "the root lists {} children, the certificate carries {}",
            listed.len(),
            facts.len()
        )));
    }
    if let Some(index) = (0..facts.len()).find(|&i| listed[i] != facts[i]) {
        return Err(BatchError::Facts(format!(
            "proof {index} is not the child the root lists at position {index}"
        )));
    }
    Ok(())
}
