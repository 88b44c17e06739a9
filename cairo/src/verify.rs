//! Verifying tile proofs: everything `verify_cairo` does not pin, pinned here.
//!
//! stwo-cairo's verifier checks the STARK but accepts any program, any preprocessed trace root
//! and any parameters the proof names, and asserts (panics) on malformed claims. A verifier of
//! untrusted proofs must check, in order: the envelope decodes; the profile is acceptable; the
//! parameters are the profile's; the preprocessed variant and root are the pinned ones; the
//! program is the map kernel; the output is a well-formed map output; and finally the STARK. The
//! first failure is returned as its own [`VerifyError`] variant.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use cairo_air::verifier::verify_cairo;
use starkscale_common::{Matrix, Vector};
use stwo::core::vcs_lifted::blake2_merkle::Blake2sMerkleChannel;

use crate::encoding::{self, Digest, Fact, MapOutput};
use crate::program::{map_program_hash, Pinned};
use crate::proof::TileProof;
use crate::prove::{Profile, PREPROCESSED_VARIANT};

/// Root of the `CanonicalSmall` preprocessed-trace commitment at blowup 2 (both profiles use
/// blowup 2). A test recomputes it with [`crate::Prover::preprocessed_root`].
pub const PREPROCESSED_ROOT: &str =
    "068d1166c9f9f0ec247641ca391ee8396170e69343dfcacc632f9638670d2bec";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed proof: {0}")]
    Malformed(String),
    #[error("proof made at the {0} profile, which is refused (allow test proofs explicitly)")]
    ProfileRefused(Profile),
    #[error("proof parameters {found} do not match its {profile} profile")]
    Parameters { profile: Profile, found: String },
    #[error("proof uses preprocessed trace {found}, expected {expected}")]
    PreprocessedRoot { expected: String, found: String },
    #[error("proof is of another program (hash {found}), not the map kernel {expected}")]
    WrongProgram { expected: Digest, found: Digest },
    #[error("proof is of a program that is not one of the pinned map, reduce and root programs (hash {0})")]
    UnknownProgram(Digest),
    #[error("malformed public output: {0}")]
    MalformedOutput(String),
    #[error("STARK verification failed: {0}")]
    Invalid(String),
    #[error(
        "{which} digest mismatch: proof commits to {in_proof}, the given {which} hashes to {given}"
    )]
    DigestMismatch {
        which: &'static str,
        in_proof: Digest,
        given: Digest,
    },
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// What a verified tile proof establishes.
#[derive(Debug, Clone)]
pub struct VerifiedTile {
    pub profile: Profile,
    pub program_hash: Digest,
    pub output: MapOutput,
    pub fact: Fact,
}

/// Decodes and verifies a tile proof. Test-profile proofs are refused unless `allow_test`.
pub fn verify_tile(bytes: &[u8], allow_test: bool) -> Result<VerifiedTile, VerifyError> {
    let proof = TileProof::from_bytes(bytes)?;
    verify_tile_proof(proof, allow_test)
}

pub fn verify_tile_proof(proof: TileProof, allow_test: bool) -> Result<VerifiedTile, VerifyError> {
    let profile = proof.profile;
    let program = check_pinned(&proof, allow_test)?;
    let program_hash = proof.program_hash();
    if program != Pinned::Map {
        return Err(VerifyError::WrongProgram {
            expected: map_program_hash(),
            found: program_hash,
        });
    }
    let words = proof.output_words()?;
    let output = MapOutput::from_words(&words).map_err(VerifyError::MalformedOutput)?;
    check_stark(proof)?;
    Ok(VerifiedTile {
        profile,
        fact: encoding::fact(&program_hash, &words),
        program_hash,
        output,
    })
}

/// What a verified proof of any pinned program establishes.
#[derive(Debug, Clone)]
pub struct VerifiedProof {
    pub profile: Profile,
    pub program: Pinned,
    /// The public output words.
    pub output: Vec<u32>,
    pub fact: Fact,
}

/// Decodes and verifies a proof of any [`Pinned`] program (the caller checks which).
pub fn verify_proof(bytes: &[u8], allow_test: bool) -> Result<VerifiedProof, VerifyError> {
    let proof = TileProof::from_bytes(bytes)?;
    let program = check_pinned(&proof, allow_test)?;
    let output = proof.output_words()?;
    let profile = proof.profile;
    check_stark(proof)?;
    Ok(VerifiedProof {
        profile,
        program,
        fact: encoding::fact(&program.hash(), &output),
        output,
    })
}

/// Everything about a proof except its STARK: the profile is accepted, the parameters are the
/// profile's, the preprocessed variant and root are the pinned ones, and the program is one of
/// the [`Pinned`] programs, which is returned.
pub fn check_pinned(proof: &TileProof, allow_test: bool) -> Result<Pinned, VerifyError> {
    let profile = proof.profile;
    if profile != Profile::Production && !allow_test {
        return Err(VerifyError::ProfileRefused(profile));
    }
    let stark = &proof.proof;
    let config = stark.stark_proof.config;
    if config != profile.pcs_config() {
        return Err(VerifyError::Parameters {
            profile,
            found: format!("{config:?}"),
        });
    }
    let root = stark
        .stark_proof
        .commitments
        .first()
        .map(|h| hex::encode(h.0))
        .unwrap_or_default();
    if stark.preprocessed_trace_variant != PREPROCESSED_VARIANT || root != PREPROCESSED_ROOT {
        return Err(VerifyError::PreprocessedRoot {
            expected: format!("{PREPROCESSED_VARIANT:?}/{PREPROCESSED_ROOT}"),
            found: format!("{:?}/{root}", stark.preprocessed_trace_variant),
        });
    }
    let hash = proof.program_hash();
    Pinned::from_hash(&hash).ok_or(VerifyError::UnknownProgram(hash))
}

/// The STARK itself. `verify_cairo` asserts on malformed claims; hostile bytes must give an
/// error, not a crash.
pub fn check_stark(proof: TileProof) -> Result<(), VerifyError> {
    let TileProof { proof: stark, .. } = proof;
    catch_unwind(AssertUnwindSafe(|| {
        verify_cairo::<Blake2sMerkleChannel>(stark)
    }))
    .map_err(|panic| VerifyError::Invalid(panic_message(&panic)))?
    .map_err(|e| VerifyError::Invalid(e.to_string()))
}

impl VerifiedTile {
    /// Checks that the proof's digests are those of the given A-tile and x-block.
    pub fn check_inputs(&self, a: Option<&Matrix>, x: Option<&Vector>) -> Result<(), VerifyError> {
        let out = &self.output;
        let shape = |expected: (usize, usize), given: (usize, usize), what: &str| {
            if expected == given {
                Ok(())
            } else {
                Err(VerifyError::Shape(format!(
                    "proof is of a {}x{} {what}, the given one is {}x{}",
                    expected.0, expected.1, given.0, given.1
                )))
            }
        };
        let digest = |which, in_proof: Digest, given: Digest| {
            if in_proof == given {
                Ok(())
            } else {
                Err(VerifyError::DigestMismatch {
                    which,
                    in_proof,
                    given,
                })
            }
        };
        if let Some(a) = a {
            shape(
                (out.rows as usize, out.cols as usize),
                (a.rows(), a.cols()),
                "A-tile",
            )?;
            digest("A", out.a_digest, encoding::a_digest(a))?;
        }
        if let Some(x) = x {
            shape((out.cols as usize, 1), (x.len(), 1), "x-block")?;
            digest("x", out.x_digest, encoding::x_digest(x))?;
        }
        Ok(())
    }
}

/// Checks only the STARK of a proof, pinning nothing (not the program, root or parameters).
/// For benchmarking programs other than the kernel; never use it to accept a result.
pub fn verify_stark_only(bytes: &[u8]) -> Result<(), VerifyError> {
    check_stark(TileProof::from_bytes(bytes)?)
}

/// Times `verify_tile` (decode included), for benchmarks.
pub fn timed_verify(bytes: &[u8], allow_test: bool) -> (Result<VerifiedTile, VerifyError>, f64) {
    let started = Instant::now();
    let result = verify_tile(bytes, allow_test);
    (result, started.elapsed().as_secs_f64() * 1e3)
}

pub(crate) fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic without a message".to_string()
    }
}
