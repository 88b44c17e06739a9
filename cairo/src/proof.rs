//! The binary tile-proof envelope.
//!
//! Layout: `b"SSTP"`, a format byte, a profile byte, a program-section byte, then the bincode
//! encoding of stwo-cairo's `CairoProofForRustVerifier` (claim, interaction claim, STARK proof).
//! The public output lives in the claim, so nothing in the envelope can disagree with the proof.
//!
//! The claim also carries the program's bytecode (6.5k cells, ~220 KB for the map kernel). When it
//! is exactly one of the [`Pinned`] programs', the envelope leaves it out (section byte 1 + the
//! program's index) and decoding rebuilds it from the
//! embedded program: a verifier pins that program anyway, so the bytes carried nothing.

use cairo_air::CairoProofForRustVerifier;
use stwo::core::vcs_lifted::blake2_merkle::Blake2sMerkleHasher;

use crate::encoding::Digest;
use crate::program::Pinned;
use crate::prove::Profile;
use crate::verify::VerifyError;

pub(crate) const MAGIC: &[u8; 4] = b"SSTP";
pub(crate) const ENVELOPE_VERSION: u8 = 1;
/// Section byte: the bytecode is in the proof; otherwise 1 + the index of a [`Pinned`] program.
const PROGRAM_INLINE: u8 = 0;
const HEADER_BYTES: usize = 7;
/// Proofs are about 1 MB; anything claiming more than this is rejected before decoding.
pub const MAX_PROOF_BYTES: u64 = 64 << 20;

pub(crate) type StarkProof = CairoProofForRustVerifier<Blake2sMerkleHasher>;

/// A proof of one map-kernel execution, at a named profile.
pub struct TileProof {
    pub profile: Profile,
    pub(crate) proof: StarkProof,
}

impl std::fmt::Debug for TileProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileProof")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl TileProof {
    pub(crate) fn new(profile: Profile, proof: StarkProof) -> TileProof {
        TileProof { profile, proof }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 << 20);
        out.extend_from_slice(MAGIC);
        out.push(ENVELOPE_VERSION);
        out.push(self.profile.code());
        let program = &self.proof.claim.public_data.public_memory.program;
        // Serializing plain data into a Vec cannot fail.
        #[allow(clippy::expect_used)]
        if let Some(pinned) = Pinned::ALL.into_iter().find(|p| program == p.section()) {
            out.push(1 + pinned as u8);
            let mut elided = self.proof.clone();
            elided.claim.public_data.public_memory.program = Vec::new();
            bincode::serialize_into(&mut out, &elided).expect("in-memory bincode");
        } else {
            out.push(PROGRAM_INLINE);
            bincode::serialize_into(&mut out, &self.proof).expect("in-memory bincode");
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TileProof, VerifyError> {
        use bincode::Options;
        if bytes.len() as u64 > MAX_PROOF_BYTES {
            return Err(VerifyError::Malformed(format!(
                "{} bytes is over the {MAX_PROOF_BYTES}-byte proof limit",
                bytes.len()
            )));
        }
        if bytes.len() < HEADER_BYTES || &bytes[..4] != MAGIC {
            return Err(VerifyError::Malformed("not a STARKScale tile proof".into()));
        }
        if bytes[4] != ENVELOPE_VERSION {
            return Err(VerifyError::Malformed(format!(
                "unsupported proof format version {}",
                bytes[4]
            )));
        }
        let profile = Profile::from_code(bytes[5])
            .ok_or_else(|| VerifyError::Malformed(format!("unknown profile code {}", bytes[5])))?;
        // The limit bounds every length prefix, so corrupt lengths cannot make us allocate more
        // than the input's size; trailing bytes are refused.
        let mut proof: StarkProof = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(bytes.len() as u64)
            .deserialize(&bytes[HEADER_BYTES..])
            .map_err(|e| VerifyError::Malformed(format!("cannot decode proof: {e}")))?;
        let program = &mut proof.claim.public_data.public_memory.program;
        match bytes[6] {
            PROGRAM_INLINE => {}
            code if program.is_empty() && (1..=Pinned::ALL.len() as u8).contains(&code) => {
                *program = Pinned::ALL[code as usize - 1].section().clone()
            }
            other => {
                return Err(VerifyError::Malformed(format!(
                    "bad program section byte {other}"
                )))
            }
        }
        Ok(TileProof { profile, proof })
    }

    /// Public output words, as the proof states them (not yet verified).
    pub(crate) fn output_words(&self) -> Result<Vec<u32>, VerifyError> {
        self.proof
            .claim
            .public_data
            .public_memory
            .output
            .iter()
            .map(|(_, limbs)| {
                if limbs[1..].iter().all(|&l| l == 0) {
                    Ok(limbs[0])
                } else {
                    Err(VerifyError::MalformedOutput(
                        "an output cell is not a u32".into(),
                    ))
                }
            })
            .collect()
    }

    /// Rewrites one public-output cell of an encoded proof and re-encodes it; the STARK no longer
    /// holds. Only for tests that show what verifiers say about a forged statement.
    #[doc(hidden)]
    pub fn forge_output_word(
        bytes: &[u8],
        index: usize,
        word: u32,
    ) -> Result<Vec<u8>, VerifyError> {
        let mut proof = TileProof::from_bytes(bytes)?;
        let output = &mut proof.proof.claim.public_data.public_memory.output;
        let cell = output
            .get_mut(index)
            .ok_or_else(|| VerifyError::MalformedOutput(format!("no output cell {index}")))?;
        cell.1 = [word, 0, 0, 0, 0, 0, 0, 0];
        Ok(proof.to_bytes())
    }

    /// Hash of the bytecode in the proof's public memory.
    pub(crate) fn program_hash(&self) -> Digest {
        Digest(cairo_air::utils::encode_and_hash_memory_section(
            &self.proof.claim.public_data.public_memory.program,
        ))
    }
}
