//! The compiled map program and the values a verifier pins about it.

use std::sync::OnceLock;

use cairo_air::utils::encode_and_hash_memory_section;
use cairo_vm::types::program::Program;

use stwo_cairo_common::memory::LARGE_MEMORY_VALUE_ID_BASE;

use crate::encoding::Digest;

/// `cairo-compile --proof_mode --no_debug_info` output of `programs/map.cairo`.
pub const MAP_PROGRAM_JSON: &[u8] = include_bytes!("../programs/map.json");
/// The kernel without its digest chains, for measuring what binding costs. Never verified.
pub const MAP_UNBOUND_PROGRAM_JSON: &[u8] = include_bytes!("../programs/map_unbound.json");

/// Loads the map program once per process.
pub fn map_program() -> &'static Program {
    static PROGRAM: OnceLock<Program> = OnceLock::new();
    PROGRAM.get_or_init(|| load(MAP_PROGRAM_JSON))
}

pub(crate) fn map_unbound_program() -> &'static Program {
    static PROGRAM: OnceLock<Program> = OnceLock::new();
    PROGRAM.get_or_init(|| load(MAP_UNBOUND_PROGRAM_JSON))
}

fn load(json: &[u8]) -> Program {
    // The file is compiled into the binary and checked by tests: failing here is a build bug.
    #[allow(clippy::expect_used)]
    Program::from_bytes(json, Some("main")).expect("embedded program parses")
}

/// Blake2s hash of the program's bytecode as it appears in a proof's public memory (the hash
/// stwo-cairo's verifier output reports), computed from the embedded program.
pub fn map_program_hash() -> Digest {
    static HASH: OnceLock<Digest> = OnceLock::new();
    *HASH.get_or_init(|| Digest(encode_and_hash_memory_section(map_program_section())))
}

/// The map kernel's bytecode as a proof's public memory lists it: (memory value id, limbs) per
/// cell. Ids follow stwo-cairo's memory builder, which numbers distinct values in address order
/// (the program is the first segment): small values (< 2^72) and others in separate ranges.
/// `to_bytes` elides a program section only when it equals this exactly, so a mismatch here can
/// only cost size, never correctness.
pub(crate) fn map_program_section() -> &'static Vec<(u32, [u32; 8])> {
    static SECTION: std::sync::OnceLock<Vec<(u32, [u32; 8])>> = std::sync::OnceLock::new();
    SECTION.get_or_init(|| {
        let mut small = std::collections::HashMap::new();
        let mut large = std::collections::HashMap::new();
        map_program()
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
    })
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
