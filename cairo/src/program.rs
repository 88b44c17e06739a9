//! The compiled programs and the values a verifier pins about them.

use std::collections::HashMap;
use std::sync::OnceLock;

use cairo_air::utils::encode_and_hash_memory_section;
use cairo_vm::types::program::Program;

use stwo_cairo_common::memory::LARGE_MEMORY_VALUE_ID_BASE;

use crate::encoding::Digest;

/// `cairo-compile --proof_mode --no_debug_info` output of `programs/map.cairo`.
pub const MAP_PROGRAM_JSON: &[u8] = include_bytes!("../programs/map.json");
/// `programs/reduce.cairo`: an inner node of the reduce tree.
pub const REDUCE_PROGRAM_JSON: &[u8] = include_bytes!("../programs/reduce.json");
/// `programs/root.cairo`: the root of the reduce tree.
pub const ROOT_PROGRAM_JSON: &[u8] = include_bytes!("../programs/root.json");
/// `programs/batch.cairo`: one segment of a batch job's weights, inputs or outputs stream.
pub const BATCH_PROGRAM_JSON: &[u8] = include_bytes!("../programs/batch.json");
/// `programs/batch_root.cairo`: the root of a batch job.
pub const BATCH_ROOT_PROGRAM_JSON: &[u8] = include_bytes!("../programs/batch_root.json");
/// `programs/layer.cairo`: a segment of a layer's accumulators with the layer's epilogue.
pub const LAYER_PROGRAM_JSON: &[u8] = include_bytes!("../programs/layer.json");
/// The root of an inference job (`programs/infer_root.cairo`).
pub const INFER_ROOT_PROGRAM_JSON: &[u8] = include_bytes!("../programs/infer_root.json");
/// The kernel without its digest chains, for measuring what binding costs. Never verified.
pub const MAP_UNBOUND_PROGRAM_JSON: &[u8] = include_bytes!("../programs/map_unbound.json");

/// A program's bytecode as public memory: (memory value id, limbs) per cell.
pub(crate) type Section = Vec<(u32, [u32; 8])>;

/// The programs a certificate may contain proofs of, each pinned by its bytecode hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pinned {
    Map,
    Reduce,
    Root,
    Batch,
    BatchRoot,
    Layer,
    InferRoot,
}

impl Pinned {
    pub const ALL: [Pinned; 7] = [
        Pinned::Map,
        Pinned::Reduce,
        Pinned::Root,
        Pinned::Batch,
        Pinned::BatchRoot,
        Pinned::Layer,
        Pinned::InferRoot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Pinned::Map => "map",
            Pinned::Reduce => "reduce",
            Pinned::Root => "root",
            Pinned::Batch => "batch",
            Pinned::BatchRoot => "batch root",
            Pinned::Layer => "layer",
            Pinned::InferRoot => "inference root",
        }
    }

    /// The programs of a matrix-vector certificate, in the order it lists their hashes.
    pub const MATVEC: [Pinned; 3] = [Pinned::Map, Pinned::Reduce, Pinned::Root];

    fn index(self) -> usize {
        self as usize
    }

    fn json(self) -> &'static [u8] {
        match self {
            Pinned::Map => MAP_PROGRAM_JSON,
            Pinned::Reduce => REDUCE_PROGRAM_JSON,
            Pinned::Root => ROOT_PROGRAM_JSON,
            Pinned::Batch => BATCH_PROGRAM_JSON,
            Pinned::BatchRoot => BATCH_ROOT_PROGRAM_JSON,
            Pinned::Layer => LAYER_PROGRAM_JSON,
            Pinned::InferRoot => INFER_ROOT_PROGRAM_JSON,
        }
    }

    /// The program, loaded once per process.
    pub fn program(self) -> &'static Program {
        static PROGRAMS: [OnceLock<Program>; Pinned::ALL.len()] =
            [const { OnceLock::new() }; Pinned::ALL.len()];
        PROGRAMS[self.index()].get_or_init(|| load(self.json()))
    }

    /// Blake2s hash of the bytecode as it appears in a proof's public memory (the hash
    /// stwo-cairo's verifier reports), computed from the embedded program.
    pub fn hash(self) -> Digest {
        static HASHES: [OnceLock<Digest>; Pinned::ALL.len()] =
            [const { OnceLock::new() }; Pinned::ALL.len()];
        *HASHES[self.index()].get_or_init(|| Digest(encode_and_hash_memory_section(self.section())))
    }

    /// Which pinned program has this bytecode hash.
    pub fn from_hash(hash: &Digest) -> Option<Pinned> {
        Pinned::ALL.into_iter().find(|p| p.hash() == *hash)
    }

    /// The bytecode as a proof's public memory lists it: (memory value id, limbs) per cell. Ids
    /// follow stwo-cairo's memory builder, which numbers distinct values in address order (the
    /// program is the first segment): small values (< 2^72) and others in separate ranges. The
    /// proof envelope elides a program section only when it equals this exactly, so a mismatch
    /// here can only cost size, never correctness.
    pub(crate) fn section(self) -> &'static Section {
        static SECTIONS: [OnceLock<Section>; Pinned::ALL.len()] =
            [const { OnceLock::new() }; Pinned::ALL.len()];
        SECTIONS[self.index()].get_or_init(|| section_of(self.program()))
    }
}

/// Loads the map program once per process.
pub fn map_program() -> &'static Program {
    Pinned::Map.program()
}

pub(crate) fn map_unbound_program() -> &'static Program {
    static PROGRAM: OnceLock<Program> = OnceLock::new();
    PROGRAM.get_or_init(|| load(MAP_UNBOUND_PROGRAM_JSON))
}

fn load(json: &[u8]) -> Program {
    // The files are compiled into the binary and checked by tests: failing here is a build bug.
    #[allow(clippy::expect_used)]
    Program::from_bytes(json, Some("main")).expect("embedded program parses")
}

/// The map kernel's bytecode hash.
pub fn map_program_hash() -> Digest {
    Pinned::Map.hash()
}

fn section_of(program: &Program) -> Section {
    let mut small = HashMap::new();
    let mut large = HashMap::new();
    program
        .iter_data()
        .map(|v| {
            let limbs = felt_to_limbs(&v.get_int_ref().copied().unwrap_or_default());
            let is_small = limbs[3..].iter().all(|&l| l == 0) && limbs[2] < (1 << 8);
            let id = if is_small {
                let n = small.len() as u32;
                *small.entry(limbs).or_insert(n)
            } else {
                let n = large.len() as u32;
                *large.entry(limbs).or_insert(n) | LARGE_MEMORY_VALUE_ID_BASE
            };
            (id, limbs)
        })
        .collect()
}

/// A field element as 8 little-endian u32 limbs (stwo-cairo's memory value layout).
pub(crate) fn felt_to_limbs(felt: &cairo_vm::Felt252) -> [u32; 8] {
    let bytes = felt.to_bytes_le();
    let mut limbs = [0u32; 8];
    for (i, chunk) in bytes.chunks_exact(4).enumerate() {
        limbs[i] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    limbs
}
