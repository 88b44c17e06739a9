//! The reduce tree's encodings: commitments, node and root outputs, and a reduce task's input.
//!
//! Plain Rust over `u32` words, like [`crate::encoding`]: a verifier recomputes commitments from
//! A and x with nothing but Blake2s. `docs/certificate.md` is the prose version.
//!
//! - **Tile leaf**: Blake2s(row0, col0, rows, cols, A-tile digest) — the map output's cells 3..15.
//! - **Row root**: the Merkle root of a row block's tile leaves, left to right ([`merkle_root`]).
//! - **A commitment**: Blake2s(rows, cols, tile_rows, tile_cols, Merkle root of the row roots).
//! - **x commitment**: Blake2s over the x-block digests, left to right.

use starkscale_common::plan::NodeSpec;
use starkscale_common::{Matrix, TilePlan, Vector};

use crate::encoding::{self, blake2s_words, Digest, Fact, FORMAT_VERSION, KIND_MAP, Y_OFFSET};

pub const KIND_NODE: u32 = 2;
pub const KIND_ROOT: u32 = 3;
/// Words of a node output before its facts.
const NODE_HEADER: usize = 17;
/// Words of a root output before its facts.
const ROOT_HEADER: usize = 23;

/// A tile's Merkle leaf: binds its position and shape to its A digest.
pub fn tile_leaf(row0: u32, col0: u32, rows: u32, cols: u32, a_digest: &Digest) -> Digest {
    let mut words = vec![row0, col0, rows, cols];
    words.extend_from_slice(&a_digest.0);
    blake2s_words(&words)
}

/// Merkle root of `nodes` (at least one): pairs are hashed as one 16-word message, an odd last
/// node is paired with the zero digest, and a single digest is its own root.
pub fn merkle_root(nodes: &[Digest]) -> Digest {
    let mut level = nodes.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| {
                let right = pair.get(1).copied().unwrap_or_default();
                let mut words = pair[0].0.to_vec();
                words.extend_from_slice(&right.0);
                blake2s_words(&words)
            })
            .collect();
    }
    level.first().copied().unwrap_or_default()
}

/// The A commitment of a matrix cut into `rows_per_tile` × `cols_per_tile` tiles, from its row
/// blocks' roots.
pub fn a_commitment(
    rows: u32,
    cols: u32,
    tile_rows: u32,
    tile_cols: u32,
    row_roots: &[Digest],
) -> Digest {
    let mut words = vec![rows, cols, tile_rows, tile_cols];
    words.extend_from_slice(&merkle_root(row_roots).0);
    blake2s_words(&words)
}

/// The x commitment: Blake2s over the x-block digests.
pub fn x_commitment(x_digests: &[Digest]) -> Digest {
    let words: Vec<u32> = x_digests.iter().flat_map(|d| d.0).collect();
    blake2s_words(&words)
}

/// The A commitment of `plan`'s tiles given each tile's A digest (by tile index).
pub fn commit_tiles(plan: &TilePlan, a_digests: &[Digest]) -> Digest {
    let leaves: Vec<Digest> = plan
        .tiles()
        .zip(a_digests)
        .map(|(t, digest)| {
            tile_leaf(
                t.row0 as u32,
                t.col0 as u32,
                t.rows as u32,
                t.cols as u32,
                digest,
            )
        })
        .collect();
    // Tiles are row-major, so each row block's leaves are one chunk.
    let row_roots: Vec<Digest> = leaves.chunks(plan.col_blocks()).map(merkle_root).collect();
    a_commitment(
        plan.rows as u32,
        plan.cols as u32,
        plan.tile_rows as u32,
        plan.tile_cols as u32,
        &row_roots,
    )
}

/// `starkscale commit`: the commitment of `a` cut into tiles of `tile_rows` × `tile_cols`
/// (`tile_cols` at most [`encoding::TILE_COLS`]).
pub fn commit_matrix(a: &Matrix, tile_rows: usize, tile_cols: usize) -> Digest {
    let plan = TilePlan {
        rows: a.rows(),
        cols: a.cols(),
        tile_rows,
        tile_cols,
    };
    let digests: Vec<Digest> = plan
        .tiles()
        .map(|t| encoding::a_digest(&a.tile(t.row0, t.col0, t.rows, t.cols)))
        .collect();
    commit_tiles(&plan, &digests)
}

/// The x commitment of a vector cut into blocks of `tile_cols`.
pub fn commit_vector(x: &Vector, tile_cols: usize) -> Digest {
    let digests: Vec<Digest> = (0..x.len().div_ceil(tile_cols))
        .map(|b| encoding::x_digest(&x.block(b * tile_cols, tile_cols)))
        .collect();
    x_commitment(&digests)
}

fn digest_at(words: &[u32], at: usize) -> Digest {
    let mut d = [0u32; 8];
    d.copy_from_slice(&words[at..at + 8]);
    Digest(d)
}

fn digests(words: &[u32]) -> Vec<Digest> {
    words.chunks_exact(8).map(|c| digest_at(c, 0)).collect()
}

fn signed_y(words: &[u32]) -> Vec<i64> {
    words.iter().map(|&w| w as i64 - Y_OFFSET).collect()
}

/// Splits `words[at..]` into `counts` consecutive runs, or says why it cannot.
fn runs<'a>(words: &'a [u32], at: usize, counts: &[usize]) -> Result<Vec<&'a [u32]>, String> {
    let total: usize = counts.iter().sum();
    if words.len() != at + total {
        return Err(format!(
            "output has {} words, its header implies {}",
            words.len(),
            at + total
        ));
    }
    let mut start = at;
    Ok(counts
        .iter()
        .map(|&n| {
            let run = &words[start..start + n];
            start += n;
            run
        })
        .collect())
}

/// Public output of `reduce.cairo`: an inner node covering whole row blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOutput {
    pub row0: u32,
    pub rows: u32,
    pub cols: u32,
    pub tile_rows: u32,
    pub tile_cols: u32,
    pub x_commitment: Digest,
    pub facts: Vec<Fact>,
    pub row_roots: Vec<Digest>,
    pub y: Vec<i64>,
}

impl NodeOutput {
    pub fn from_words(words: &[u32]) -> Result<NodeOutput, String> {
        check_kind(words, KIND_NODE, NODE_HEADER)?;
        let (n_children, n_blocks) = (words[15] as usize, words[16] as usize);
        let parts = runs(
            words,
            NODE_HEADER,
            &[8 * n_children, 8 * n_blocks, words[3] as usize],
        )?;
        Ok(NodeOutput {
            row0: words[2],
            rows: words[3],
            cols: words[4],
            tile_rows: words[5],
            tile_cols: words[6],
            x_commitment: digest_at(words, 7),
            facts: digests(parts[0]),
            row_roots: digests(parts[1]),
            y: signed_y(parts[2]),
        })
    }
}

/// Public output of `root.cairo`: the whole job's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootOutput {
    pub rows: u32,
    pub cols: u32,
    pub tile_rows: u32,
    pub tile_cols: u32,
    pub a_commitment: Digest,
    pub x_commitment: Digest,
    pub facts: Vec<Fact>,
    pub y: Vec<i64>,
}

impl RootOutput {
    pub fn from_words(words: &[u32]) -> Result<RootOutput, String> {
        check_kind(words, KIND_ROOT, ROOT_HEADER)?;
        let parts = runs(
            words,
            ROOT_HEADER,
            &[8 * words[22] as usize, words[2] as usize],
        )?;
        Ok(RootOutput {
            rows: words[2],
            cols: words[3],
            tile_rows: words[4],
            tile_cols: words[5],
            a_commitment: digest_at(words, 6),
            x_commitment: digest_at(words, 14),
            facts: digests(parts[0]),
            y: signed_y(parts[1]),
        })
    }
}

fn check_kind(words: &[u32], kind: u32, header: usize) -> Result<(), String> {
    if words.len() < header {
        return Err(format!(
            "output has {} words, fewer than the header",
            words.len()
        ));
    }
    if words[0] != FORMAT_VERSION {
        return Err(format!("unknown output format version {}", words[0]));
    }
    if words[1] != kind {
        return Err(format!(
            "output kind {} where {kind} was expected",
            words[1]
        ));
    }
    Ok(())
}

/// One child of a reduce task: the program that proved it and its public output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub program_hash: Digest,
    pub output: Vec<u32>,
}

impl Child {
    pub fn fact(&self) -> Fact {
        encoding::fact(&self.program_hash, &self.output)
    }
}

/// What a worker needs to run a reduce node: the node's place and its children, in order (map
/// children row-major over whole row blocks, or node children top to bottom).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReduceInput {
    /// Whether this node is the root (`root.cairo`) or an inner node (`reduce.cairo`).
    pub root: bool,
    pub row0: u32,
    pub rows: u32,
    pub cols: u32,
    pub tile_rows: u32,
    pub tile_cols: u32,
    /// Row blocks covered.
    pub blocks: u32,
    /// Column tiles per row block.
    pub col_tiles: u32,
    pub children: Vec<Child>,
}

impl ReduceInput {
    /// The input of `node` of `plan`'s reduce tree, given its children in the node's order.
    pub fn for_node(plan: &TilePlan, node: &NodeSpec, children: Vec<Child>) -> ReduceInput {
        ReduceInput {
            root: node.root,
            row0: node.row0 as u32,
            rows: node.rows as u32,
            cols: plan.cols as u32,
            tile_rows: plan.tile_rows as u32,
            tile_cols: plan.tile_cols as u32,
            blocks: node.blocks as u32,
            col_tiles: plan.col_blocks() as u32,
            children,
        }
    }
}

const INPUT_MAGIC: &[u8; 4] = b"SSRI";
/// Children and output words are bounded by the job limits; this only stops absurd lengths.
const MAX_INPUT_WORDS: usize = 1 << 28;

impl ReduceInput {
    /// The kind of the children (map tiles or nodes), from the first child's output.
    pub fn child_kind(&self) -> u32 {
        self.children
            .first()
            .and_then(|c| c.output.get(1))
            .copied()
            .unwrap_or(KIND_MAP)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = INPUT_MAGIC.to_vec();
        let header = [
            self.root as u32,
            self.row0,
            self.rows,
            self.cols,
            self.tile_rows,
            self.tile_cols,
            self.blocks,
            self.col_tiles,
            self.children.len() as u32,
        ];
        for w in header {
            out.extend_from_slice(&w.to_le_bytes());
        }
        for child in &self.children {
            out.extend_from_slice(&(child.output.len() as u32).to_le_bytes());
            for w in child.program_hash.0.iter().chain(&child.output) {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<ReduceInput, String> {
        let body = bytes
            .strip_prefix(INPUT_MAGIC)
            .ok_or("not a reduce input")?;
        if body.len() % 4 != 0 || body.len() / 4 > MAX_INPUT_WORDS {
            return Err("reduce input has a bad length".into());
        }
        let words: Vec<u32> = body
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut at = 9;
        let header = words.get(..at).ok_or("truncated reduce input")?;
        let mut children = Vec::new();
        for _ in 0..header[8] {
            let len = *words.get(at).ok_or("truncated reduce input")? as usize;
            let cells = words
                .get(at + 1..at + 9 + len)
                .ok_or("truncated reduce input")?;
            children.push(Child {
                program_hash: digest_at(cells, 0),
                output: cells[8..].to_vec(),
            });
            at += 9 + len;
        }
        if at != words.len() {
            return Err("trailing bytes after the reduce input".into());
        }
        Ok(ReduceInput {
            root: header[0] == 1,
            row0: header[1],
            rows: header[2],
            cols: header[3],
            tile_rows: header[4],
            tile_cols: header[5],
            blocks: header[6],
            col_tiles: header[7],
            children,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merkle_pads_odd_levels_with_zero() {
        let d: Vec<Digest> = (0..3).map(|i| blake2s_words(&[i])).collect();
        assert_eq!(merkle_root(&d[..1]), d[0]);
        let pair = |a: Digest, b: Digest| {
            let mut w = a.0.to_vec();
            w.extend_from_slice(&b.0);
            blake2s_words(&w)
        };
        assert_eq!(
            merkle_root(&d),
            pair(pair(d[0], d[1]), pair(d[2], Digest::default()))
        );
    }

    #[test]
    fn reduce_input_round_trips_and_refuses_truncation() {
        let input = ReduceInput {
            root: true,
            row0: 0,
            rows: 3,
            cols: 5,
            tile_rows: 2,
            tile_cols: 1024,
            blocks: 2,
            col_tiles: 1,
            children: vec![
                Child {
                    program_hash: blake2s_words(&[1]),
                    output: vec![1, 2, 3],
                },
                Child {
                    program_hash: blake2s_words(&[2]),
                    output: vec![],
                },
            ],
        };
        let bytes = input.to_bytes();
        assert_eq!(ReduceInput::from_bytes(&bytes).unwrap(), input);
        assert!(ReduceInput::from_bytes(&bytes[..bytes.len() - 4]).is_err());
        assert!(ReduceInput::from_bytes(&bytes[1..]).is_err());
    }

    #[test]
    fn commitments_depend_on_the_tiling() {
        let a = Matrix::new(3, 4, starkscale_common::Dtype::I8, (0..12).collect()).unwrap();
        assert_ne!(commit_matrix(&a, 2, 1024), commit_matrix(&a, 1, 1024));
        assert_ne!(commit_matrix(&a, 2, 1024), commit_matrix(&a, 2, 2));
        let mut data = a.data().to_vec();
        data[11] = 0;
        let b = Matrix::new(3, 4, starkscale_common::Dtype::I8, data).unwrap();
        assert_ne!(commit_matrix(&a, 2, 1024), commit_matrix(&b, 2, 1024));
    }
}
