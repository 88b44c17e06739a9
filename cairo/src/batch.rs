//! The batch protocol's encodings and arithmetic, natively: what the segment kernel
//! (`programs/batch.cairo`) and the batch root (`programs/batch_root.cairo`) compute, so that a
//! planner can feed them and a verifier can recompute every commitment without stwo.
//! `docs/batch.md` is the prose version and the soundness argument.
//!
//! - A job is Y = A·X for int8 weights A (M × K) and a batch of B int8 inputs; files and
//!   [`Rows`] hold one input (X, B × K) and one output (Y, B × M, int32) per row.
//! - **Streams**: the weights as Aᵀ (K rows of M), the inputs (B rows of K) and the outputs
//!   (B rows of M). Each entry is one u32 word, value + 128 (int8) or value + 2^31 (int32); each
//!   row is padded with zero values to whole chunks of 16 words.
//! - **Chains**: chunk column c of a stream is hashed on its own: Blake2s-256 over the 16 words
//!   of chunk c of every row, top to bottom. A stream's **commitment** is
//!   Blake2s(kind, height, row length, chain digests…); it does not depend on how the stream is
//!   cut into tasks.
//! - **Seed** = Blake2s(root kind, M, K, B, A, X and Y commitments); the challenges are
//!   σ = Blake2s(seed ‖ 1) and ρ = Blake2s(seed ‖ 2) read as field elements.
//! - **Check**: with v = σᵀA (v_k = Σ_i σ^i A[i][k]), Σ_j ρ^j (v · x_j) = Σ_j ρ^j Σ_i σ^i y_j[i].

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use blake2::{Blake2s256, Digest as _};
use cairo_vm::hint_processor::builtin_hint_processor::blake2s_hash::blake2s_compress;
use cairo_vm::hint_processor::builtin_hint_processor::builtin_hint_processor_definition::HintFunc;
use cairo_vm::hint_processor::builtin_hint_processor::hint_utils::{
    get_integer_from_var_name, get_ptr_from_var_name, insert_value_from_var_name,
};
use cairo_vm::types::relocatable::MaybeRelocatable;
use cairo_vm::vm::errors::hint_errors::HintError;
use cairo_vm::Felt252;

use crate::encoding::{blake2s_words, Digest, Fact, FORMAT_VERSION};
use crate::program::Pinned;
use crate::run::{load_children, run_pinned, ProgramRun};
use crate::tree::Child;
use crate::KernelError;

pub const KIND_WEIGHTS: u32 = 4;
pub const KIND_INPUTS: u32 = 5;
pub const KIND_OUTPUTS: u32 = 6;
pub const KIND_BATCH_ROOT: u32 = 7;
/// Words per chunk: one Blake2s block.
pub const CHUNK: usize = 16;
/// The kernel's limits (batch.cairo): dimensions and stream heights.
pub const MAX_DIM: usize = 1 << 24;
pub const MAX_STREAM_ROWS: usize = 1 << 25;
/// Words of a segment output before its chains.
const SEGMENT_HEADER: usize = 40;
/// Blake2s-256's initial state: IV xor the parameter block (32-byte digest, no key).
pub const INITIAL_STATE: [u32; 8] = [
    0x6b08_e647,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A batch job's dimensions: A is M × K, the batch has B inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub m: usize,
    pub k: usize,
    pub b: usize,
}

impl Shape {
    pub fn macs(&self) -> u64 {
        (self.m * self.k * self.b) as u64
    }
}

/// One of the three streams of a batch job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Weights,
    Inputs,
    Outputs,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Weights, Stream::Inputs, Stream::Outputs];

    pub fn kind(self) -> u32 {
        match self {
            Stream::Weights => KIND_WEIGHTS,
            Stream::Inputs => KIND_INPUTS,
            Stream::Outputs => KIND_OUTPUTS,
        }
    }

    pub fn from_kind(kind: u32) -> Option<Stream> {
        Stream::ALL.into_iter().find(|s| s.kind() == kind)
    }

    pub fn name(self) -> &'static str {
        match self {
            Stream::Weights => "weights",
            Stream::Inputs => "inputs",
            Stream::Outputs => "outputs",
        }
    }

    /// What a stored word adds to the entry's value.
    pub fn offset(self) -> i64 {
        match self {
            Stream::Weights | Stream::Inputs => 128,
            Stream::Outputs => 1 << 31,
        }
    }

    /// Entries per row.
    pub fn row_len(self, shape: &Shape) -> usize {
        match self {
            Stream::Weights | Stream::Outputs => shape.m,
            Stream::Inputs => shape.k,
        }
    }

    /// Rows in the whole stream.
    pub fn height(self, shape: &Shape) -> usize {
        match self {
            Stream::Weights => shape.k,
            Stream::Inputs | Stream::Outputs => shape.b,
        }
    }

    /// Entries per 16-word chunk: int8 entries are packed four to a word.
    pub fn per_chunk(self) -> usize {
        match self {
            Stream::Weights | Stream::Inputs => 4 * CHUNK,
            Stream::Outputs => CHUNK,
        }
    }

    /// Chunk columns: 16-word chunks per padded row.
    pub fn chunks(self, shape: &Shape) -> usize {
        self.row_len(shape).div_ceil(self.per_chunk())
    }
}

/// Rows of equal length, int8 or int32, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rows {
    I8 { width: usize, data: Vec<i8> },
    I32 { width: usize, data: Vec<i32> },
}

impl Rows {
    /// int8 rows of `width` entries (a loaded matrix's entries).
    pub fn int8(width: usize, values: &[i8]) -> Rows {
        Rows::I8 {
            width,
            data: values.to_vec(),
        }
    }

    pub fn width(&self) -> usize {
        match self {
            Rows::I8 { width, .. } | Rows::I32 { width, .. } => *width,
        }
    }

    pub fn height(&self) -> usize {
        match self {
            Rows::I8 { width, data } => data.len() / width.max(&1),
            Rows::I32 { width, data } => data.len() / width.max(&1),
        }
    }

    pub fn get(&self, row: usize, col: usize) -> i64 {
        match self {
            Rows::I8 { width, data } => data[row * width + col] as i64,
            Rows::I32 { width, data } => data[row * width + col] as i64,
        }
    }

    /// Rows `start..start + n`.
    pub fn slice(&self, start: usize, n: usize) -> Rows {
        match self {
            Rows::I8 { width, data } => Rows::I8 {
                width: *width,
                data: data[start * width..(start + n) * width].to_vec(),
            },
            Rows::I32 { width, data } => Rows::I32 {
                width: *width,
                data: data[start * width..(start + n) * width].to_vec(),
            },
        }
    }

    /// The transpose (int8 only: the weights stream is Aᵀ).
    pub fn transpose_i8(&self) -> Rows {
        let (w, h) = (self.width(), self.height());
        let mut data = vec![0i8; w * h];
        for r in 0..h {
            for c in 0..w {
                data[c * h + r] = self.get(r, c) as i8;
            }
        }
        Rows::I8 { width: h, data }
    }

    /// Entries per 16-word chunk: int8 entries are packed four to a word.
    pub fn per_chunk(&self) -> usize {
        match self {
            Rows::I8 { .. } => 4 * CHUNK,
            Rows::I32 { .. } => CHUNK,
        }
    }

    /// Chunk columns of a padded row.
    pub fn chunks(&self) -> usize {
        self.width().div_ceil(self.per_chunk())
    }

    /// The 16 words of chunk `chunk` of row `row`, padded with zero values: int8 entries as
    /// bytes value + 128, four per little-endian word; int32 entries as value + 2^31.
    pub fn chunk_words(&self, row: usize, chunk: usize) -> [u32; CHUNK] {
        let per = self.per_chunk();
        let start = chunk * per;
        let end = (start + per).min(self.width());
        let mut words = [0u32; CHUNK];
        match self {
            Rows::I8 { width, data } => {
                let mut bytes = [128u8; 4 * CHUNK];
                for (i, col) in (start..end).enumerate() {
                    bytes[i] = (data[row * width + col] as i16 + 128) as u8;
                }
                for (w, b) in words.iter_mut().zip(bytes.chunks_exact(4)) {
                    *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Rows::I32 { width, data } => {
                words = [1 << 31; CHUNK];
                for (i, col) in (start..end).enumerate() {
                    words[i] = (data[row * width + col] as i64 + (1 << 31)) as u32;
                }
            }
        }
        words
    }
}

/// Y = A·X with one input per row of `x` (B × K) and one output per row of the result (B × M).
pub fn multiply(a: &Rows, x: &Rows) -> Rows {
    let (m, k) = (a.height(), a.width());
    let b = x.height();
    let mut data = vec![0i32; b * m];
    for j in 0..b {
        for i in 0..m {
            let mut acc = 0i64;
            for c in 0..k {
                acc += a.get(i, c) * x.get(j, c);
            }
            data[j * m + i] = acc as i32;
        }
    }
    Rows::I32 { width: m, data }
}

/// Digest of every chunk column of `rows` (a whole stream).
pub fn chain_digests(rows: &Rows) -> Vec<Digest> {
    let chunks = rows.chunks();
    (0..chunks)
        .map(|c| {
            let mut hasher = Blake2s256::new();
            for r in 0..rows.height() {
                for w in rows.chunk_words(r, c) {
                    hasher.update(w.to_le_bytes());
                }
            }
            Digest::from_bytes(hasher.finalize().into())
        })
        .collect()
}

/// Every chain's state after the first `upto` rows (not finalized): what a segment starting at
/// row `upto` continues from.
pub fn chain_states(rows: &Rows, upto: usize) -> Vec<[u32; 8]> {
    advance_states(rows, vec![INITIAL_STATE; rows.chunks()], 0, upto)
}

/// Every chain's state after rows `from..to` of `rows` (a whole stream), given the states after
/// the first `from` rows.
pub fn advance_states(
    rows: &Rows,
    mut states: Vec<[u32; 8]>,
    from: usize,
    to: usize,
) -> Vec<[u32; 8]> {
    absorb(&rows.slice(from, to - from), &mut states, from, false);
    states
}

/// Advances every chain over `block`, rows `row0..` of its stream (Blake2s's byte counter runs
/// over the whole stream); with `finalize`, the block's last row is the stream's last and each
/// state becomes its chain's digest.
pub fn absorb(block: &Rows, states: &mut [[u32; 8]], row0: usize, finalize: bool) {
    let n = block.height();
    for (c, state) in states.iter_mut().enumerate() {
        for r in 0..n {
            let counter = (64 * (row0 + r + 1)) as u32;
            let f0 = if finalize && r + 1 == n { u32::MAX } else { 0 };
            let next = blake2s_compress(state, &block.chunk_words(r, c), counter, 0, f0, 0);
            state.copy_from_slice(&next);
        }
    }
}

/// A stream's commitment: Blake2s(kind, height, row length, chain digests…).
pub fn commitment(stream: Stream, shape: &Shape, digests: &[Digest]) -> Digest {
    let mut words = vec![
        stream.kind(),
        stream.height(shape) as u32,
        stream.row_len(shape) as u32,
    ];
    words.extend(digests.iter().flat_map(|d| d.0));
    blake2s_words(&words)
}

/// The commitment of a whole stream given as rows (`a` for the weights: it is transposed here).
pub fn commit(stream: Stream, shape: &Shape, rows: &Rows) -> Digest {
    let digests = match stream {
        Stream::Weights => chain_digests(&rows.transpose_i8()),
        _ => chain_digests(rows),
    };
    commitment(stream, shape, &digests)
}

/// The job's seed: Blake2s(root kind, M, K, B, A, X and Y commitments).
pub fn seed(shape: &Shape, a: &Digest, x: &Digest, y: &Digest) -> Digest {
    let mut words = vec![
        KIND_BATCH_ROOT,
        shape.m as u32,
        shape.k as u32,
        shape.b as u32,
    ];
    for d in [a, x, y] {
        words.extend_from_slice(&d.0);
    }
    blake2s_words(&words)
}

/// Σ w_i 2^(32 i) modulo the field prime.
pub fn felt_of_words(words: &[u32]) -> Felt252 {
    let shift = Felt252::from(1u64 << 32);
    words
        .iter()
        .rev()
        .fold(Felt252::ZERO, |acc, &w| acc * shift + Felt252::from(w))
}

/// The canonical 8 little-endian u32 limbs of a field element.
pub fn words_of_felt(value: &Felt252) -> [u32; 8] {
    crate::program::felt_to_limbs(value)
}

/// Challenge `tag` of a job: Blake2s(seed ‖ tag) as a field element (1 = σ, 2 = ρ).
pub fn challenge(seed: &Digest, tag: u32) -> Felt252 {
    let mut words = seed.0.to_vec();
    words.push(tag);
    felt_of_words(&blake2s_words(&words).0)
}

fn signed(value: i64) -> Felt252 {
    Felt252::from(value)
}

/// v = σᵀA: v_k = Σ_i σ^i A[i][k].
pub fn weights_vector(a: &Rows, sigma: &Felt252) -> Vec<Felt252> {
    let mut v = vec![Felt252::ZERO; a.width()];
    let mut power = Felt252::ONE;
    for i in 0..a.height() {
        for (k, vk) in v.iter_mut().enumerate() {
            *vk += power * signed(a.get(i, k));
        }
        power *= sigma;
    }
    v
}

/// Σ_j ρ^(row0 + j) (m · row_j) for the rows of a segment starting at stream row `row0`.
pub fn weighted_sum(rows: &Rows, multipliers: &[Felt252], rho: &Felt252, row0: usize) -> Felt252 {
    weigh(&row_dots(rows, multipliers), rho, row0)
}

/// Each row's dot product with `multipliers` (entries past the row's end are not used).
fn row_dots(rows: &Rows, multipliers: &[Felt252]) -> Vec<Felt252> {
    (0..rows.height())
        .map(|j| {
            multipliers
                .iter()
                .enumerate()
                .take(rows.width())
                .fold(Felt252::ZERO, |acc, (i, m)| {
                    acc + *m * signed(rows.get(j, i))
                })
        })
        .collect()
}

/// Σ_j ρ^(row0 + j) d_j.
fn weigh(dots: &[Felt252], rho: &Felt252, row0: usize) -> Felt252 {
    let mut power = rho.pow(row0 as u128);
    let mut total = Felt252::ZERO;
    for d in dots {
        total += power * d;
        power *= rho;
    }
    total
}

/// σ^0 … σ^(n-1).
pub fn powers(sigma: &Felt252, n: usize) -> Vec<Felt252> {
    let mut out = Vec::with_capacity(n);
    let mut p = Felt252::ONE;
    for _ in 0..n {
        out.push(p);
        p *= sigma;
    }
    out
}

/// What one segment task proves: rows `row0..row0 + rows` of one stream.
#[derive(Debug, Clone)]
pub struct SegmentInput {
    pub stream: Stream,
    pub shape: Shape,
    pub row0: usize,
    /// The segment's rows (the weights stream's rows are columns of A).
    pub data: Rows,
    /// The job's challenges (σ, ρ), which the root derives from the seed and checks.
    pub sigma: Felt252,
    pub rho: Felt252,
    /// Each chain's state before the segment.
    pub states: Vec<[u32; 8]>,
    /// v as 8 limbs per entry (inputs only).
    pub v_words: Vec<u32>,
}

impl SegmentInput {
    pub fn rows(&self) -> usize {
        self.data.height()
    }

    pub fn chunks(&self) -> usize {
        self.stream.chunks(&self.shape)
    }

    /// Checks what the kernel would refuse, so that a bad plan fails with a reason.
    pub fn check(&self) -> Result<(), KernelError> {
        let bad = |m: String| Err(KernelError::InvalidTile(m));
        let s = &self.shape;
        if [s.m, s.k, s.b].iter().any(|&d| d == 0 || d > MAX_DIM) {
            return bad(format!("batch shape {s:?} outside 1..={MAX_DIM}"));
        }
        let height = self.stream.height(s);
        if height > MAX_STREAM_ROWS {
            return bad(format!("{} stream of {height} rows", self.stream.name()));
        }
        if self.rows() == 0 || self.row0 + self.rows() > height {
            return bad(format!(
                "segment rows {}..{} outside the {} stream's {height}",
                self.row0,
                self.row0 + self.rows(),
                self.stream.name()
            ));
        }
        if self.data.width() != self.stream.row_len(s) {
            return bad(format!(
                "segment rows of {} entries, the {} stream's are {}",
                self.data.width(),
                self.stream.name(),
                self.stream.row_len(s)
            ));
        }
        let int32 = matches!(self.data, Rows::I32 { .. });
        if int32 != (self.stream == Stream::Outputs) {
            return bad("segment dtype does not match its stream".into());
        }
        if self.states.len() != self.chunks() {
            return bad("one chain state per chunk column is needed".into());
        }
        let v_len = if self.stream == Stream::Inputs {
            8 * s.k
        } else {
            0
        };
        if self.v_words.len() != v_len {
            return bad("v is needed exactly for an inputs segment".into());
        }
        Ok(())
    }
}

/// The public output of a segment run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentOutput {
    pub stream: Stream,
    pub shape: Shape,
    pub row0: usize,
    pub rows: usize,
    pub last: bool,
    pub sigma: [u32; 8],
    pub rho: [u32; 8],
    pub t: [u32; 8],
    pub v_digest: Digest,
    /// Per chunk column: (state before, state after).
    pub chains: Vec<([u32; 8], [u32; 8])>,
    /// Weights only: v_r limbs for each row of the segment.
    pub v: Vec<[u32; 8]>,
}

pub(crate) fn eight(words: &[u32]) -> [u32; 8] {
    let mut out = [0u32; 8];
    out.copy_from_slice(&words[..8]);
    out
}

impl SegmentOutput {
    pub fn from_words(words: &[u32]) -> Result<SegmentOutput, String> {
        if words.len() < SEGMENT_HEADER {
            return Err(format!("segment output of {} words", words.len()));
        }
        if words[0] != FORMAT_VERSION {
            return Err(format!("format version {}", words[0]));
        }
        let stream = Stream::from_kind(words[1])
            .ok_or_else(|| format!("kind {} is not a batch segment", words[1]))?;
        let shape = Shape {
            m: words[2] as usize,
            k: words[3] as usize,
            b: words[4] as usize,
        };
        let (row0, rows) = (words[5] as usize, words[6] as usize);
        let chunks = stream.chunks(&shape);
        let v_rows = if stream == Stream::Weights { rows } else { 0 };
        let expected = SEGMENT_HEADER + 16 * chunks + 8 * v_rows;
        if words.len() != expected {
            return Err(format!(
                "segment output has {} words, its header implies {expected}",
                words.len()
            ));
        }
        let chains_at = SEGMENT_HEADER;
        let v_at = chains_at + 16 * chunks;
        Ok(SegmentOutput {
            stream,
            shape,
            row0,
            rows,
            last: words[7] == 1,
            sigma: eight(&words[8..]),
            rho: eight(&words[16..]),
            t: eight(&words[24..]),
            v_digest: Digest(eight(&words[32..])),
            chains: words[chains_at..v_at]
                .chunks_exact(16)
                .map(|c| (eight(c), eight(&c[8..])))
                .collect(),
            v: words[v_at..].chunks_exact(8).map(eight).collect(),
        })
    }
}

/// Runs the segment kernel on `input`.
pub fn run_segment(input: &SegmentInput, max_steps: usize) -> Result<ProgramRun, KernelError> {
    run_segment_inner(input, max_steps, 0)
}

/// A dishonest prover's run for tests: the first word's `w >> 8` helper is off by `delta`, so
/// the kernel is offered a non-canonical split of that word into bytes.
#[doc(hidden)]
pub fn run_segment_with_bad_split(
    input: &SegmentInput,
    max_steps: usize,
    delta: i64,
) -> Result<ProgramRun, KernelError> {
    run_segment_inner(input, max_steps, delta)
}

fn run_segment_inner(
    input: &SegmentInput,
    max_steps: usize,
    split_delta: i64,
) -> Result<ProgramRun, KernelError> {
    input.check()?;
    let input = Arc::new(input.clone());
    let mut hints: HashMap<String, Rc<HintFunc>> = HashMap::new();

    let seg = input.clone();
    hints.insert(
        "starkscale_batch_segment".into(),
        Rc::new(HintFunc(Box::new(move |vm, _scopes, ids, ap, _consts| {
            let values = [
                ("kind", seg.stream.kind() as usize),
                ("m", seg.shape.m),
                ("k", seg.shape.k),
                ("b", seg.shape.b),
                ("row0", seg.row0),
                ("rows", seg.rows()),
                ("chunks", seg.chunks()),
            ];
            for (name, value) in values {
                insert_value_from_var_name(name, Felt252::from(value), vm, ids, ap)?;
            }
            let v = vm.add_memory_segment();
            let cells: Vec<MaybeRelocatable> = seg
                .v_words
                .iter()
                .map(|&w| Felt252::from(w).into())
                .collect();
            vm.load_data(v, &cells)?;
            insert_value_from_var_name("v_words", v, vm, ids, ap)?;
            let out = get_ptr_from_var_name("out", vm, ids, ap)?;
            for (at, value) in [(8usize, &seg.sigma), (16, &seg.rho)] {
                let limbs: Vec<MaybeRelocatable> = words_of_felt(value)
                    .iter()
                    .map(|&w| Felt252::from(w).into())
                    .collect();
                vm.load_data((out + at)?, &limbs)?;
            }
            for (c, state) in seg.states.iter().enumerate() {
                let cells: Vec<MaybeRelocatable> =
                    state.iter().map(|&w| Felt252::from(w).into()).collect();
                vm.load_data((out + (SEGMENT_HEADER + 16 * c))?, &cells)?;
            }
            Ok(())
        }))),
    );

    // The row hint runs once per (chunk column, row), columns outer, rows inner: the kernel's
    // order. A program that asked in another order would only hash words it did not expect.
    let calls = AtomicUsize::new(0);
    let seg = input.clone();
    hints.insert(
        "starkscale_batch_row".into(),
        Rc::new(HintFunc(Box::new(
            move |vm, _scopes, _ids, _ap, _consts| {
                let i = calls.fetch_add(1, Ordering::Relaxed);
                let rows = seg.rows();
                let (chunk, row) = (i / rows, i % rows);
                if chunk >= seg.chunks() {
                    return Err(HintError::CustomHint(
                        "more rows asked for than the segment has".into(),
                    ));
                }
                let words = seg.data.chunk_words(row, chunk);
                let mut cells: Vec<MaybeRelocatable> =
                    words.iter().map(|&w| Felt252::from(w).into()).collect();
                if seg.stream.per_chunk() > CHUNK {
                    // The int8 pass splits each word: it needs w >> 8, w >> 16 and w >> 24.
                    for w in words {
                        for shift in [8, 16, 24] {
                            cells.push(Felt252::from(w >> shift).into());
                        }
                    }
                    if i == 0 && split_delta != 0 {
                        cells[CHUNK] =
                            (Felt252::from(words[0] >> 8) + Felt252::from(split_delta)).into();
                    }
                }
                vm.load_data(vm.get_ap(), &cells)?;
                Ok(())
            },
        ))),
    );

    hints.insert(
        "starkscale_limbs".into(),
        Rc::new(HintFunc(Box::new(|vm, _scopes, ids, ap, _consts| {
            let value = get_integer_from_var_name("value", vm, ids, ap)?;
            let dst = get_ptr_from_var_name("dst", vm, ids, ap)?;
            let cells: Vec<MaybeRelocatable> = words_of_felt(&value)
                .iter()
                .map(|&w| Felt252::from(w).into())
                .collect();
            vm.load_data(dst, &cells)?;
            Ok(())
        }))),
    );

    run_pinned(Pinned::Batch, max_steps, hints)
}

/// What an honest run of the segment kernel on `input` outputs, computed natively: a planner
/// can then accept a proof by its fact alone. Limbs are canonical, as the kernel's hints write
/// them.
pub fn expected_output(input: &SegmentInput, all_v: &[Felt252]) -> Vec<u32> {
    let s = &input.shape;
    let rows = input.rows();
    let last = input.row0 + rows == input.stream.height(s);
    let mut out = vec![
        FORMAT_VERSION,
        input.stream.kind(),
        s.m as u32,
        s.k as u32,
        s.b as u32,
        input.row0 as u32,
        rows as u32,
        last as u32,
    ];
    out.extend(words_of_felt(&input.sigma));
    out.extend(words_of_felt(&input.rho));
    // Each row's dot product with the stream's multipliers: t weighs them by rho^row; a
    // weights segment also states each one (v_k for the column of A it is).
    let sigmas;
    let mults: &[Felt252] = if input.stream == Stream::Inputs {
        all_v
    } else {
        sigmas = powers(&input.sigma, s.m);
        &sigmas
    };
    let dots = row_dots(&input.data, mults);
    let t = weigh(&dots, &input.rho, input.row0);
    out.extend(words_of_felt(&t));
    let v_digest = if input.stream == Stream::Inputs {
        blake2s_words(&input.v_words)
    } else {
        Digest::default()
    };
    out.extend(v_digest.0);
    // The last segment finalizes the chain's last block: its state is the chain's digest.
    let mut after = input.states.clone();
    absorb(&input.data, &mut after, input.row0, last);
    for (before, after) in input.states.iter().zip(after) {
        out.extend(before);
        out.extend(after);
    }
    if input.stream == Stream::Weights {
        for v in &dots {
            out.extend(words_of_felt(v));
        }
    }
    out
}

const SEGMENT_MAGIC: &[u8; 4] = b"SSSG";
const ROOT_MAGIC: &[u8; 4] = b"SSBR";

/// Reads little-endian words off a task input.
pub(crate) struct Words<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

impl Words<'_> {
    pub fn u32(&mut self) -> Result<u32, String> {
        let b = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or("truncated batch task input")?;
        self.at += 4;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn words(&mut self, n: usize) -> Result<Vec<u32>, String> {
        if n > (self.bytes.len() - self.at) / 4 {
            return Err("truncated batch task input".into());
        }
        (0..n).map(|_| self.u32()).collect()
    }
    pub fn felt(&mut self) -> Result<Felt252, String> {
        Ok(felt_of_words(&self.words(8)?))
    }
    pub fn rest(&self) -> &[u8] {
        &self.bytes[self.at..]
    }
    /// A child as [`put_child`] writes it.
    pub fn child(&mut self) -> Result<Child, String> {
        let len = self.u32()? as usize;
        let hash = self.words(8)?;
        Ok(Child {
            program_hash: Digest(eight(&hash)),
            output: self.words(len)?,
        })
    }
}

/// A child of a root's input: its output's length, its program hash, its output.
pub(crate) fn put_child(out: &mut Vec<u8>, child: &Child) {
    put(out, [child.output.len() as u32]);
    put(out, child.program_hash.0);
    put(out, child.output.iter().copied());
}

pub(crate) fn put(out: &mut Vec<u8>, words: impl IntoIterator<Item = u32>) {
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
}

impl SegmentInput {
    /// The task input a worker fetches: header, challenges, chain states, v's limbs, then the
    /// rows (int8 bytes, or int32 little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = SEGMENT_MAGIC.to_vec();
        let s = &self.shape;
        put(
            &mut out,
            [
                self.stream.kind(),
                s.m as u32,
                s.k as u32,
                s.b as u32,
                self.row0 as u32,
                self.rows() as u32,
                self.states.len() as u32,
                self.v_words.len() as u32,
            ],
        );
        put(&mut out, words_of_felt(&self.sigma));
        put(&mut out, words_of_felt(&self.rho));
        put(&mut out, self.states.iter().flatten().copied());
        put(&mut out, self.v_words.iter().copied());
        match &self.data {
            Rows::I8 { data, .. } => out.extend(data.iter().map(|&v| v as u8)),
            Rows::I32 { data, .. } => put(&mut out, data.iter().map(|&v| v as u32)),
        }
        out
    }

    /// Decodes and checks a task input ([`SegmentInput::check`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<SegmentInput, KernelError> {
        let bad = |m: String| KernelError::InvalidTile(format!("segment input: {m}"));
        let body = bytes
            .strip_prefix(SEGMENT_MAGIC)
            .ok_or_else(|| bad("not a batch segment".into()))?;
        let mut r = Words { bytes: body, at: 0 };
        let h = r.words(8).map_err(bad)?;
        let stream = Stream::from_kind(h[0]).ok_or_else(|| bad(format!("kind {}", h[0])))?;
        let shape = Shape {
            m: h[1] as usize,
            k: h[2] as usize,
            b: h[3] as usize,
        };
        let (row0, rows) = (h[4] as usize, h[5] as usize);
        let sigma = r.felt().map_err(bad)?;
        let rho = r.felt().map_err(bad)?;
        let states = r
            .words(8 * h[6] as usize)
            .map_err(bad)?
            .chunks_exact(8)
            .map(eight)
            .collect();
        let v_words = r.words(h[7] as usize).map_err(bad)?;
        let width = stream.row_len(&shape);
        let entries = rows
            .checked_mul(width)
            .filter(|&n| n <= MAX_SEGMENT_ENTRIES)
            .ok_or_else(|| bad(format!("{rows} rows of {width} entries")))?;
        let rest = r.rest();
        let data = if stream == Stream::Outputs {
            if rest.len() != 4 * entries {
                return Err(bad(format!(
                    "{} data bytes for {entries} int32 entries",
                    rest.len()
                )));
            }
            Rows::I32 {
                width,
                data: rest
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            }
        } else {
            if rest.len() != entries {
                return Err(bad(format!(
                    "{} data bytes for {entries} int8 entries",
                    rest.len()
                )));
            }
            Rows::I8 {
                width,
                data: rest.iter().map(|&b| b as i8).collect(),
            }
        };
        let input = SegmentInput {
            stream,
            shape,
            row0,
            data,
            sigma,
            rho,
            states,
            v_words,
        };
        input.check()?;
        Ok(input)
    }
}

/// Entries a segment input may carry (a segment is sized to a few hundred thousand).
const MAX_SEGMENT_ENTRIES: usize = 1 << 24;

impl RootInput {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = ROOT_MAGIC.to_vec();
        let s = &self.shape;
        put(
            &mut out,
            [
                s.m as u32,
                s.k as u32,
                s.b as u32,
                self.weights.len() as u32,
                self.inputs.len() as u32,
                self.outputs.len() as u32,
            ],
        );
        for child in self.children() {
            put_child(&mut out, child);
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<RootInput, String> {
        let body = bytes
            .strip_prefix(ROOT_MAGIC)
            .ok_or("not a batch root input")?;
        let mut r = Words { bytes: body, at: 0 };
        let h = r.words(6)?;
        let mut read =
            |n: u32| -> Result<Vec<Child>, String> { (0..n).map(|_| r.child()).collect() };
        let weights = read(h[3])?;
        let inputs = read(h[4])?;
        let outputs = read(h[5])?;
        if !r.rest().is_empty() {
            return Err("trailing bytes after the batch root input".into());
        }
        Ok(RootInput {
            shape: Shape {
                m: h[0] as usize,
                k: h[1] as usize,
                b: h[2] as usize,
            },
            weights,
            inputs,
            outputs,
        })
    }
}

/// Binds X and Y as they stream past, a block of inputs (and their outputs) at a time: their
/// chains advance block by block, so a planner needs only one block of X and Y in memory.
#[derive(Debug, Clone)]
pub struct Binder {
    shape: Shape,
    x: Vec<[u32; 8]>,
    y: Vec<[u32; 8]>,
    rows: usize,
}

impl Binder {
    pub fn new(shape: Shape) -> Binder {
        Binder {
            shape,
            x: vec![INITIAL_STATE; Stream::Inputs.chunks(&shape)],
            y: vec![INITIAL_STATE; Stream::Outputs.chunks(&shape)],
            rows: 0,
        }
    }

    /// Inputs absorbed so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Absorbs the next inputs (rows of X) and their outputs (the same rows of Y).
    pub fn absorb(&mut self, x: &Rows, y: &Rows) -> Result<(), String> {
        let s = &self.shape;
        let n = x.height();
        if y.height() != n || x.width() != s.k || y.width() != s.m || self.rows + n > s.b {
            return Err(format!(
                "a block of {n} inputs of {} and {} outputs of {} after {} of {}x{} and {}x{}",
                x.width(),
                y.height(),
                y.width(),
                self.rows,
                s.b,
                s.k,
                s.b,
                s.m
            ));
        }
        let last = self.rows + n == s.b;
        absorb(x, &mut self.x, self.rows, last);
        absorb(y, &mut self.y, self.rows, last);
        self.rows += n;
        Ok(())
    }

    /// The job's statement once every input is absorbed: A's commitment (from `at` = Aᵀ), the
    /// three commitments, the seed, the challenges and v = σᵀA.
    pub fn finish(self, a: &Rows, at: &Rows) -> Result<Statement, String> {
        if self.rows != self.shape.b {
            return Err(format!("{} of {} inputs absorbed", self.rows, self.shape.b));
        }
        let shape = self.shape;
        let com_a = commitment(Stream::Weights, &shape, &chain_digests(at));
        let digests =
            |states: Vec<[u32; 8]>| -> Vec<Digest> { states.into_iter().map(Digest).collect() };
        let com_x = commitment(Stream::Inputs, &shape, &digests(self.x));
        let com_y = commitment(Stream::Outputs, &shape, &digests(self.y));
        let seed = seed(&shape, &com_a, &com_x, &com_y);
        let sigma = challenge(&seed, 1);
        let rho = challenge(&seed, 2);
        let v = weights_vector(a, &sigma);
        Ok(Statement {
            shape,
            commitments: [com_a, com_x, com_y],
            seed,
            sigma,
            rho,
            v,
        })
    }
}

/// What a batch job states and every segment shares: the shape, the commitments of A, X and Y,
/// the seed, the challenges σ and ρ, and v = σᵀA.
#[derive(Debug, Clone)]
pub struct Statement {
    pub shape: Shape,
    pub commitments: [Digest; 3],
    pub seed: Digest,
    pub sigma: Felt252,
    pub rho: Felt252,
    pub v: Vec<Felt252>,
}

impl Statement {
    /// The input of the segment of `stream` whose rows, starting at stream row `row0`, are
    /// `data`, its chains continuing from `states`.
    pub fn segment(
        &self,
        stream: Stream,
        row0: usize,
        data: Rows,
        states: Vec<[u32; 8]>,
    ) -> SegmentInput {
        let v_words = if stream == Stream::Inputs {
            self.v.iter().flat_map(words_of_felt).collect()
        } else {
            Vec::new()
        };
        SegmentInput {
            stream,
            shape: self.shape,
            row0,
            data,
            sigma: self.sigma,
            rho: self.rho,
            states,
            v_words,
        }
    }
}

/// The inputs of one segment of `stream`, planned natively from the whole job held in memory
/// (`starkscale bench batch`, tests); the fleet plans from X and Y streamed in blocks.
#[derive(Debug)]
pub struct Planner<'a> {
    pub statement: Statement,
    pub at: Rows,
    pub x: &'a Rows,
    pub y: &'a Rows,
}

impl std::ops::Deref for Planner<'_> {
    type Target = Statement;
    fn deref(&self) -> &Statement {
        &self.statement
    }
}

impl<'a> Planner<'a> {
    /// Commits to A, X and Y and derives the challenges.
    pub fn new(a: &Rows, x: &'a Rows, y: &'a Rows) -> Planner<'a> {
        let shape = Shape {
            m: a.height(),
            k: a.width(),
            b: x.height(),
        };
        let at = a.transpose_i8();
        let mut binder = Binder::new(shape);
        // Whole streams of the shape just read off them: absorbing cannot fail.
        let statement = binder
            .absorb(x, y)
            .and_then(|()| binder.finish(a, &at))
            .unwrap_or_else(|e| unreachable!("a whole job binds: {e}"));
        Planner {
            statement,
            at,
            x,
            y,
        }
    }

    fn rows(&self, stream: Stream) -> &Rows {
        match stream {
            Stream::Weights => &self.at,
            Stream::Inputs => self.x,
            Stream::Outputs => self.y,
        }
    }

    /// The inputs of `specs`' segments in order, each stream's chains advanced once overall.
    pub fn segments<'p>(
        &'p self,
        specs: &'p [SegmentSpec],
    ) -> impl Iterator<Item = SegmentInput> + 'p {
        let mut at: Option<(Stream, usize, Vec<[u32; 8]>)> = None;
        specs.iter().map(move |spec| {
            let all = self.rows(spec.stream);
            let states = match at.take() {
                Some((stream, row, states)) if stream == spec.stream && row <= spec.row0 => {
                    advance_states(all, states, row, spec.row0)
                }
                _ => chain_states(all, spec.row0),
            };
            let data = all.slice(spec.row0, spec.rows);
            let input = self
                .statement
                .segment(spec.stream, spec.row0, data, states.clone());
            at = Some((spec.stream, spec.row0, states));
            input
        })
    }

    pub fn segment(&self, stream: Stream, row0: usize, rows: usize) -> SegmentInput {
        let all = self.rows(stream);
        let states = chain_states(all, row0);
        self.statement
            .segment(stream, row0, all.slice(row0, rows), states)
    }
}

/// What the batch root consumes: every segment's (program hash, output), grouped by stream in
/// the order weights, inputs, outputs, each in row order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInput {
    pub shape: Shape,
    pub weights: Vec<Child>,
    pub inputs: Vec<Child>,
    pub outputs: Vec<Child>,
}

impl RootInput {
    pub fn children(&self) -> impl Iterator<Item = &Child> {
        self.weights.iter().chain(&self.inputs).chain(&self.outputs)
    }
}

/// Runs the batch root.
pub fn run_root(input: &RootInput, max_steps: usize) -> Result<ProgramRun, KernelError> {
    if input.weights.is_empty() || input.inputs.is_empty() || input.outputs.is_empty() {
        return Err(KernelError::InvalidNode(
            "a batch root needs segments of all three streams".into(),
        ));
    }
    let node = Arc::new(input.clone());
    let load = HintFunc(Box::new(move |vm, _scopes, ids, ap, _consts| {
        let table = load_children(vm, node.children())?;
        insert_value_from_var_name("children", table, vm, ids, ap)?;
        let s = node.shape;
        let values = [
            ("m", s.m),
            ("k", s.k),
            ("b", s.b),
            ("n_w", node.weights.len()),
            ("n_x", node.inputs.len()),
            ("n_y", node.outputs.len()),
            ("chunks_w", Stream::Weights.chunks(&s)),
            ("chunks_x", Stream::Inputs.chunks(&s)),
            ("chunks_y", Stream::Outputs.chunks(&s)),
        ];
        for (name, value) in values {
            insert_value_from_var_name(name, Felt252::from(value), vm, ids, ap)?;
        }
        Ok(())
    }));
    let hints = HashMap::from([("starkscale_batch_root_inputs".to_string(), Rc::new(load))]);
    run_pinned(Pinned::BatchRoot, max_steps, hints)
}

/// The public output of the batch root: the job's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootOutput {
    pub shape: Shape,
    pub a_commitment: Digest,
    pub x_commitment: Digest,
    pub y_commitment: Digest,
    pub seed: Digest,
    pub facts: Vec<Fact>,
}

const ROOT_FACTS: usize = 38;

impl RootOutput {
    pub fn from_words(words: &[u32]) -> Result<RootOutput, String> {
        if words.len() < ROOT_FACTS {
            return Err(format!("batch root output of {} words", words.len()));
        }
        if words[0] != FORMAT_VERSION || words[1] != KIND_BATCH_ROOT {
            return Err(format!(
                "version {} kind {} is not a batch root",
                words[0], words[1]
            ));
        }
        let n = words[37] as usize;
        if words.len() != ROOT_FACTS + 8 * n {
            return Err(format!(
                "batch root output has {} words for {n} children",
                words.len()
            ));
        }
        Ok(RootOutput {
            shape: Shape {
                m: words[2] as usize,
                k: words[3] as usize,
                b: words[4] as usize,
            },
            a_commitment: Digest(eight(&words[5..])),
            x_commitment: Digest(eight(&words[13..])),
            y_commitment: Digest(eight(&words[21..])),
            seed: Digest(eight(&words[29..])),
            facts: words[ROOT_FACTS..]
                .chunks_exact(8)
                .map(|c| Digest(eight(c)))
                .collect(),
        })
    }
}

/// Blake2s compressions per segment by default: every segment proof then stays under 4 GB
/// (int32 segments of 8,192 compressions peaked at 4.2–4.3 GB, `docs/bench.md`).
pub const DEFAULT_SEGMENT_BLOCKS: usize = 4096;

/// Compressions a segment spends besides its rows: for inputs, the digest of v's limbs.
pub fn segment_overhead(stream: Stream, shape: &Shape) -> usize {
    if stream == Stream::Inputs {
        (8 * shape.k).div_ceil(CHUNK)
    } else {
        0
    }
}

/// One segment of a plan: rows `row0..row0 + rows` of `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpec {
    pub stream: Stream,
    pub row0: usize,
    pub rows: usize,
}

/// What planning counts a proof's fixed cost as, in Blake2s compressions (~3 s here).
const FLOOR_BLOCKS: usize = 1536;

/// Cuts each stream into segments of at most `blocks` Blake2s compressions each (overhead
/// included), in the root's order: weights, inputs, outputs, each top to bottom. int8 segments
/// get half as many: a compression there carries 64 entries at ~6 Cairo steps each (~400 steps,
/// against ~57 for 16 int32 entries), and a proof's memory follows its steps. The prover pads a proof's compressions to a power of
/// two, so every segment is sized to fill one: for each power of two up to the limit, the
/// stream's cost is counted as (fixed cost + padded compressions) over its segments, and the
/// cheapest wins.
pub fn plan_segments(shape: &Shape, blocks: usize) -> Vec<SegmentSpec> {
    let mut out = Vec::new();
    for stream in Stream::ALL {
        let limit = if stream.per_chunk() > CHUNK {
            blocks / 2
        } else {
            blocks
        };
        out.extend(plan_stream(stream, shape, limit));
    }
    out
}

/// Cuts one stream into segments of at most `limit` compressions, sized as [`plan_segments`]
/// does.
pub fn plan_stream(stream: Stream, shape: &Shape, limit: usize) -> Vec<SegmentSpec> {
    let per = segment_rows(stream, shape, limit);
    let height = stream.height(shape);
    let mut out = Vec::new();
    let mut row0 = 0;
    while row0 < height {
        let rows = per.min(height - row0);
        out.push(SegmentSpec { stream, row0, rows });
        row0 += rows;
    }
    out
}

/// Rows per segment of `stream` (all but the last segment have exactly this many).
fn segment_rows(stream: Stream, shape: &Shape, limit: usize) -> usize {
    let (chunks, overhead) = (stream.chunks(shape), segment_overhead(stream, shape));
    let height = stream.height(shape);
    let padded = |rows: usize| (rows * chunks + overhead).next_power_of_two();
    let mut best: Option<(usize, usize)> = None;
    let mut cap = 1usize;
    while cap <= limit {
        let per = cap.saturating_sub(overhead) / chunks;
        if per > 0 {
            let per = per.min(height);
            let n = height.div_ceil(per);
            let last = height - (n - 1) * per;
            let cost = (n - 1) * (FLOOR_BLOCKS + padded(per)) + FLOOR_BLOCKS + padded(last);
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, per));
            }
        }
        cap *= 2;
    }
    // A row wider than the limit still needs a segment of its own.
    best.map_or(1, |(_, per)| per)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_each_stream_in_order_and_fill_powers_of_two() {
        for (m, k, b) in [
            (1024, 1024, 1024),
            (64, 64, 100_000),
            (10, 784, 3),
            (1, 1, 1),
        ] {
            let shape = Shape { m, k, b };
            let plan = plan_segments(&shape, DEFAULT_SEGMENT_BLOCKS);
            for stream in Stream::ALL {
                let segs: Vec<_> = plan.iter().filter(|s| s.stream == stream).collect();
                let mut row = 0;
                for s in &segs {
                    assert_eq!(s.row0, row);
                    assert!(s.rows >= 1);
                    row += s.rows;
                }
                assert_eq!(row, stream.height(&shape), "{stream:?} of {shape:?}");
                // Every segment but the last fills its padded power of two at least half way.
                let blocks = |s: &SegmentSpec| {
                    s.rows * stream.chunks(&shape) + segment_overhead(stream, &shape)
                };
                for s in &segs[..segs.len() - 1] {
                    let used = blocks(s);
                    assert!(
                        2 * used > used.next_power_of_two(),
                        "{stream:?} {shape:?}: {used}"
                    );
                    assert!(used <= DEFAULT_SEGMENT_BLOCKS);
                }
            }
            // Root order: weights, then inputs, then outputs.
            let order: Vec<_> = plan.iter().map(|s| s.stream as usize).collect();
            assert!(order.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn packed_words_and_padding() {
        let rows = Rows::I8 {
            width: 5,
            data: vec![-128, -1, 0, 1, 127],
        };
        let words = rows.chunk_words(0, 0);
        assert_eq!(words[0], u32::from_le_bytes([0, 127, 128, 129]));
        // Entry 4 and the padding are zero values: byte 128.
        assert_eq!(words[1], u32::from_le_bytes([255, 128, 128, 128]));
        assert!(words[2..].iter().all(|&w| w == 0x8080_8080));
        let ys = Rows::I32 {
            width: 2,
            data: vec![-5, i32::MAX],
        };
        let words = ys.chunk_words(0, 0);
        assert_eq!(words[0], (1u32 << 31) - 5);
        assert_eq!(words[1], u32::MAX);
        assert!(words[2..].iter().all(|&w| w == 1 << 31));
    }

    #[test]
    fn chain_digests_equal_blake2s_of_the_column_and_states_continue() {
        let rows = Rows::I32 {
            width: 20,
            data: (0..3 * 20).collect(),
        };
        let digests = chain_digests(&rows);
        assert_eq!(digests.len(), 2);
        let words: Vec<u32> = (0..3).flat_map(|r| rows.chunk_words(r, 1)).collect();
        assert_eq!(digests[1], blake2s_words(&words));
        assert_eq!(chain_states(&rows, 0)[0], INITIAL_STATE);
    }
}
