//! Proving with stwo-cairo, with the expensive setup done once per process.
//!
//! `prove_cairo` recomputes twiddles for a 2^30 domain and the preprocessed-trace commitment on
//! every call (~17 s and ~6 GB for a tiny program). [`Prover::new`] does both once, sized for the
//! largest tile, and [`Prover::prove`] reuses them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use stwo::core::fri::FriConfig;
use stwo::core::pcs::PcsConfig;
use stwo::core::poly::circle::CanonicCoset;
use stwo::core::utils::MaybeOwned;
use stwo::core::vcs_lifted::blake2_merkle::Blake2sMerkleChannel;
use stwo::prover::backend::simd::SimdBackend;
use stwo::prover::mempool::BaseColumnPool;
use stwo::prover::poly::circle::PolyOps;
use stwo::prover::poly::twiddles::TwiddleTree;
use stwo::prover::CommitmentTreeProver;
use stwo_cairo_adapter::ProverInput;
use stwo_cairo_common::preprocessed_columns::preprocessed_trace::{
    PreProcessedTrace, PreProcessedTraceVariant,
};
use stwo_cairo_prover::prover::{prove_cairo_with_precompute, ChannelHash, ProverParameters};
use stwo_cairo_prover::witness::preprocessed_trace::gen_trace;

use crate::proof::TileProof;
use crate::KernelError;

/// Preprocessed trace every proof is made and checked against. `CanonicalSmall` caps the
/// components indexed by the sequence column at 2^20 rows, which the largest tile respects.
pub const PREPROCESSED_VARIANT: PreProcessedTraceVariant = PreProcessedTraceVariant::CanonicalSmall;

/// Log size of the twiddle domain: covers the largest component of a
/// [`crate::encoding::MAX_TILE_ROWS`] tile (blake_g, 2^22 rows) at blowup 2. Each extra bit
/// costs 64 MB of resident twiddles.
const TWIDDLE_LOG_SIZE: u32 = 23;

/// Named security profiles. Only `Production` is accepted by default; `Test` exists so fast tests
/// can say plainly that they lowered security, and every verifier reports which one it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// 96 bits: 20 proof-of-work bits + 76 queries at blowup 2. 20-bit grinding costs ~0.1 s;
    /// 26 bits (70 queries) varied 0.5-15 s here, and each query adds ~11 KB to the proof.
    Production,
    /// 28 bits: 8 proof-of-work bits + 20 queries. For tests only.
    Test,
}

impl Profile {
    pub fn pcs_config(self) -> PcsConfig {
        let (pow_bits, n_queries) = match self {
            Profile::Production => (20, 76),
            Profile::Test => (8, 20),
        };
        PcsConfig {
            pow_bits,
            fri_config: FriConfig {
                log_blowup_factor: 1,
                log_last_layer_degree_bound: 0,
                n_queries,
                fold_step: 1,
            },
            lifting_log_size: None,
        }
    }

    /// pow bits + log blowup x queries.
    pub fn security_bits(self) -> u32 {
        let c = self.pcs_config();
        c.pow_bits + c.fri_config.log_blowup_factor * c.fri_config.n_queries as u32
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Production => "production",
            Profile::Test => "test",
        }
    }

    pub fn parse(name: &str) -> Option<Profile> {
        match name {
            "production" => Some(Profile::Production),
            "test" => Some(Profile::Test),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Profile::Production => 1,
            Profile::Test => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Profile> {
        match code {
            1 => Some(Profile::Production),
            2 => Some(Profile::Test),
            _ => None,
        }
    }

    fn parameters(self) -> ProverParameters {
        ProverParameters {
            channel_hash: ChannelHash::Blake2s,
            channel_salt: 0,
            pcs_config: self.pcs_config(),
            preprocessed_trace: PREPROCESSED_VARIANT,
            store_polynomials_coefficients: false,
            include_all_preprocessed_columns: false,
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bits)", self.name(), self.security_bits())
    }
}

/// Per-process proving setup. Create one per worker and reuse it for every proof.
pub struct Prover {
    profile: Profile,
    twiddles: TwiddleTree<SimdBackend>,
    preprocessed: Arc<PreProcessedTrace>,
    tree: CommitmentTreeProver<SimdBackend, Blake2sMerkleChannel>,
}

impl std::fmt::Debug for Prover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prover")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl Prover {
    /// Precomputes twiddles and commits to the preprocessed trace (seconds, ~1.5 GB).
    pub fn new(profile: Profile) -> Prover {
        let twiddles = SimdBackend::precompute_twiddles(
            CanonicCoset::new(TWIDDLE_LOG_SIZE)
                .circle_domain()
                .half_coset,
        );
        let preprocessed = Arc::new(PREPROCESSED_VARIANT.to_preprocessed_trace());
        let polys = SimdBackend::interpolate_columns(gen_trace(preprocessed.clone()), &twiddles);
        let config = profile.pcs_config();
        let tree = CommitmentTreeProver::<SimdBackend, Blake2sMerkleChannel>::new(
            polys,
            config.fri_config.log_blowup_factor,
            &twiddles,
            false,
            config.lifting_log_size,
            &BaseColumnPool::new(),
        );
        Prover {
            profile,
            twiddles,
            preprocessed,
            tree,
        }
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Root of the preprocessed-trace commitment; verifiers pin it
    /// ([`crate::verify::PREPROCESSED_ROOT`]).
    pub fn preprocessed_root(&self) -> [u8; 32] {
        self.tree.commitment.root().0
    }

    /// Proves one execution. Returns the proof and the seconds spent proving.
    pub fn prove(&self, input: ProverInput) -> Result<(TileProof, f64), KernelError> {
        let started = Instant::now();
        // stwo asserts on inputs it cannot prove (e.g. a component larger than the twiddle
        // domain); a worker must survive that and report it.
        // A pool per proof: a pool kept across proofs holds on to the previous proof's columns,
        // and a worker's peak memory grew ~40% over three tiles.
        let pool = BaseColumnPool::new();
        let proof = catch_unwind(AssertUnwindSafe(|| {
            prove_cairo_with_precompute::<Blake2sMerkleChannel>(
                &pool,
                &self.twiddles,
                self.preprocessed.clone(),
                MaybeOwned::Borrowed(&self.tree),
                input,
                self.profile.parameters(),
            )
        }))
        .map_err(|panic| KernelError::Prove(crate::verify::panic_message(&panic)))?
        .map_err(|e| KernelError::Prove(e.to_string()))?;
        Ok((
            TileProof::new(self.profile, proof.into()),
            started.elapsed().as_secs_f64(),
        ))
    }
}
