//! Encodings shared by the map program, the prover's hints and any verifier.
//!
//! Everything here is plain Rust over `u32` words so that a third party can recompute digests
//! and facts from A and x with nothing but Blake2s. `docs/kernel.md` is the prose version.
//!
//! - **Padding**: a tile is padded with zeros to 1024 columns and to an even number of rows;
//!   padding entries are encoded like any other zero.
//! - **x-block words**: `x[j] + 128` for `j < 1024`.
//! - **A-tile words**: rows are taken in pairs `(2p, 2p + 1)`; for each pair and each column
//!   `j < 1024`: `(A[2p][j] + 128) + 2^24 * (A[2p + 1][j] + 128)`.
//! - **Digest**: Blake2s-256 of the words' little-endian bytes; shown as the usual hex string.
//! - **Public output** ([`MapOutput`]): all cells are u32 (`y` is stored as `y + 2^31`).
//! - **Fact**: Blake2s-256 over the words `program_hash ‖ public output`.

use std::fmt;

use blake2::{Blake2s256, Digest as _};
use serde::{Deserialize, Serialize};
use starkscale_common::{Dtype, Matrix, Vector};

use crate::KernelError;

/// Tile shape limits live with the planner; the kernel is generated for `TILE_COLS` columns.
/// 254 rows × 1024 columns is 8,128 compressions for A plus 64 for x: exactly 2^13.
pub use starkscale_common::plan::{DEFAULT_TILE_ROWS, MAX_TILE_ROWS, TILE_COLS};

pub const FORMAT_VERSION: u32 = 1;
pub const KIND_MAP: u32 = 1;
/// Offset that makes signed int8 values non-negative bytes.
pub const BYTE_OFFSET: i64 = 128;
/// Offset that makes each partial y a u32 cell.
pub const Y_OFFSET: i64 = 1 << 31;
const HEADER_WORDS: usize = 7;
const DIGEST_WORDS: usize = 8;
/// Words of public output before the partial y.
pub const OUTPUT_PREFIX_WORDS: usize = HEADER_WORDS + 2 * DIGEST_WORDS;

/// A Blake2s-256 digest as eight little-endian u32 words (the Cairo opcode's layout).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Digest(pub [u32; 8]);

impl Digest {
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, w) in self.0.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        let mut words = [0u32; 8];
        for (i, chunk) in bytes.chunks_exact(4).enumerate() {
            words[i] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        Digest(words)
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }
    pub fn from_hex(text: &str) -> Option<Digest> {
        let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(Digest::from_bytes(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// The fact of a proof: Blake2s over `program_hash ‖ public output` words.
pub type Fact = Digest;

/// Blake2s-256 over the little-endian bytes of `words`.
pub fn blake2s_words(words: &[u32]) -> Digest {
    let mut hasher = Blake2s256::new();
    for w in words {
        hasher.update(w.to_le_bytes());
    }
    Digest::from_bytes(hasher.finalize().into())
}

pub fn fact(program_hash: &Digest, output_words: &[u32]) -> Fact {
    let mut words = Vec::with_capacity(8 + output_words.len());
    words.extend_from_slice(&program_hash.0);
    words.extend_from_slice(output_words);
    blake2s_words(&words)
}

/// One tile of a matvec job: an A-tile, the matching x-block, and where the tile sits in A.
#[derive(Debug, Clone)]
pub struct TileInput {
    pub row0: u32,
    pub col0: u32,
    pub a: Matrix,
    pub x: Vector,
}

impl TileInput {
    pub fn new(row0: u32, col0: u32, a: Matrix, x: Vector) -> Result<TileInput, KernelError> {
        let bad = |m: String| Err(KernelError::InvalidTile(m));
        if a.dtype() != Dtype::I8 || x.dtype() != Dtype::I8 {
            return bad("the map kernel proves int8 tiles only".into());
        }
        if a.cols() != x.len() {
            return bad(format!(
                "A-tile has {} columns but the x-block has {} entries",
                a.cols(),
                x.len()
            ));
        }
        if a.cols() > TILE_COLS {
            return bad(format!(
                "a tile has at most {TILE_COLS} columns, got {}",
                a.cols()
            ));
        }
        if a.rows() > MAX_TILE_ROWS {
            return bad(format!(
                "a tile has at most {MAX_TILE_ROWS} rows, got {}",
                a.rows()
            ));
        }
        Ok(TileInput { row0, col0, a, x })
    }

    pub fn rows(&self) -> usize {
        self.a.rows()
    }
    pub fn cols(&self) -> usize {
        self.a.cols()
    }
    pub fn pairs(&self) -> usize {
        self.rows().div_ceil(2)
    }
    pub fn macs(&self) -> u64 {
        (self.rows() * self.cols()) as u64
    }

    /// The 1024 words of row pair `pair`.
    pub fn pair_words(&self, pair: usize) -> Vec<u32> {
        pair_words(&self.a, pair)
    }

    pub fn a_digest(&self) -> Digest {
        a_digest(&self.a)
    }
    pub fn x_digest(&self) -> Digest {
        x_digest(&self.x)
    }
    pub fn x_words(&self) -> Vec<u32> {
        x_words(&self.x)
    }
}

fn entry_byte(a: &Matrix, row: usize, col: usize) -> u32 {
    let value = if row < a.rows() && col < a.cols() {
        a.get(row, col)
    } else {
        0
    };
    (value + BYTE_OFFSET) as u32
}

pub fn pair_words(a: &Matrix, pair: usize) -> Vec<u32> {
    (0..TILE_COLS)
        .map(|j| entry_byte(a, 2 * pair, j) | (entry_byte(a, 2 * pair + 1, j) << 24))
        .collect()
}

/// Digest of an A-tile (at most 1024 columns).
pub fn a_digest(a: &Matrix) -> Digest {
    let mut words = Vec::with_capacity(a.rows().div_ceil(2) * TILE_COLS);
    for p in 0..a.rows().div_ceil(2) {
        words.extend(pair_words(a, p));
    }
    blake2s_words(&words)
}

pub fn x_words(x: &Vector) -> Vec<u32> {
    (0..TILE_COLS)
        .map(|j| (x.data().get(j).map_or(0, |&v| i64::from(v)) + BYTE_OFFSET) as u32)
        .collect()
}

/// Digest of an x-block (at most 1024 entries).
pub fn x_digest(x: &Vector) -> Digest {
    blake2s_words(&x_words(x))
}

/// The public output of a map proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOutput {
    pub row0: u32,
    pub col0: u32,
    pub rows: u32,
    pub cols: u32,
    pub dtype: Dtype,
    pub a_digest: Digest,
    pub x_digest: Digest,
    /// Partial y for rows `row0 .. row0 + rows`.
    pub y: Vec<i64>,
}

impl MapOutput {
    /// Layout: `[version, kind, dtype, row0, col0, rows, cols, a_digest[8], x_digest[8], y + 2^31 ...]`.
    pub fn from_words(words: &[u32]) -> Result<MapOutput, String> {
        if words.len() < OUTPUT_PREFIX_WORDS {
            return Err(format!(
                "output has {} words, fewer than the header",
                words.len()
            ));
        }
        if words[0] != FORMAT_VERSION {
            return Err(format!("unknown output format version {}", words[0]));
        }
        if words[1] != KIND_MAP {
            return Err(format!("output kind {} is not a map tile", words[1]));
        }
        let dtype = Dtype::from_code(words[2]).ok_or(format!("unknown dtype code {}", words[2]))?;
        let rows = words[5];
        let y_words = &words[OUTPUT_PREFIX_WORDS..];
        if y_words.len() != rows as usize {
            return Err(format!(
                "header says {rows} rows, output has {} values",
                y_words.len()
            ));
        }
        let digest = |at: usize| {
            let mut d = [0u32; 8];
            d.copy_from_slice(&words[at..at + DIGEST_WORDS]);
            Digest(d)
        };
        Ok(MapOutput {
            row0: words[3],
            col0: words[4],
            rows,
            cols: words[6],
            dtype,
            a_digest: digest(HEADER_WORDS),
            x_digest: digest(HEADER_WORDS + DIGEST_WORDS),
            y: y_words.iter().map(|&w| w as i64 - Y_OFFSET).collect(),
        })
    }

    pub fn to_words(&self) -> Vec<u32> {
        let mut words = vec![
            FORMAT_VERSION,
            KIND_MAP,
            self.dtype.code(),
            self.row0,
            self.col0,
            self.rows,
            self.cols,
        ];
        words.extend_from_slice(&self.a_digest.0);
        words.extend_from_slice(&self.x_digest.0);
        words.extend(self.y.iter().map(|&y| (y + Y_OFFSET) as u32));
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_blake2s_matches_reference_vectors() {
        // RFC 7693 Appendix B: BLAKE2s-256("abc").
        let abc = u32::from_le_bytes([b'a', b'b', b'c', 0]);
        let mut hasher = Blake2s256::new();
        hasher.update(b"abc\0");
        assert_eq!(
            blake2s_words(&[abc]).to_bytes(),
            <[u8; 32]>::from(hasher.finalize())
        );
        assert_eq!(
            blake2s_words(&[]).to_hex(),
            "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9"
        );
    }

    #[test]
    fn pair_words_pack_two_rows_and_pad() {
        let a = Matrix::new(3, 2, Dtype::I8, vec![-128, 127, 0, 1, -1, 5]).unwrap();
        let w0 = pair_words(&a, 0);
        assert_eq!(w0[0], 128 << 24, "-128 is byte 0");
        assert_eq!(w0[1], 255 | (129 << 24));
        assert_eq!(w0[2], 128 | (128 << 24), "columns past the tile are zeros");
        let w1 = pair_words(&a, 1);
        assert_eq!(w1[0], 127 | (128 << 24), "the odd row's partner is zeros");
        assert_eq!(w1.len(), TILE_COLS);
    }

    #[test]
    fn output_words_round_trip() {
        let out = MapOutput {
            row0: 254,
            col0: 1024,
            rows: 3,
            cols: 17,
            dtype: Dtype::I8,
            a_digest: blake2s_words(&[1]),
            x_digest: blake2s_words(&[2]),
            y: vec![-(1 << 24), 0, 1 << 24],
        };
        let words = out.to_words();
        assert_eq!(MapOutput::from_words(&words).unwrap(), out);
        assert!(MapOutput::from_words(&words[..words.len() - 1]).is_err());
    }
}
