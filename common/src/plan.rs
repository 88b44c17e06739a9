//! Cutting a matrix into tiles.
//!
//! Every tile is at most `tile_rows` × [`TILE_COLS`]; edge tiles are smaller (the kernel pads
//! them with zeros). Tile heights of the form 2^k − 2 keep the kernel's Blake2s compression count
//! at a power of two (`(rows / 2 + 1) · 64 = 2^(k+5)`), which the prover pads to anyway; see
//! `docs/bench.md` for what missing it costs.

use serde::{Deserialize, Serialize};

/// Columns of every tile (the map kernel's unrolled width).
pub const TILE_COLS: usize = 1024;
/// The default tile height: 8,192 compressions, ~300k steps, ~3.6 GB to prove.
pub const DEFAULT_TILE_ROWS: usize = 254;
/// The tallest tile the prover's setup covers.
pub const MAX_TILE_ROWS: usize = 1022;

/// Cairo steps the map kernel takes for a tile of `rows` rows: 2,385 of set-up (x digest, checks)
/// and 2,355 per row pair, one fewer when the last row has no partner. Exact; the kernel's tests
/// pin it against real runs.
pub fn kernel_steps(rows: usize) -> usize {
    2_385 + rows.div_ceil(2) * 2_355 - rows % 2
}

/// The tallest efficient tile (2^k − 2 rows) whose kernel run fits `step_budget`.
pub fn tile_rows_for_budget(step_budget: usize) -> Option<usize> {
    (2..=10)
        .map(|k| (1usize << k) - 2)
        .filter(|&rows| rows <= MAX_TILE_ROWS && kernel_steps(rows) <= step_budget)
        .max()
}

/// Peak memory of a worker proving one tile of `rows` rows at the production profile, in bytes.
///
/// Proving pads every component to a power of two rows, so a tile costs what the smallest
/// efficient height (2^k − 2) at or above it costs. Measured on x86-64 (`starkscale bench
/// kernel`, `docs/bench.md`): 62 rows 2.31 GB, 126 rows 2.72 GB, 254 rows 3.56 GB, 510 rows
/// 6.38 GB. 1022 rows is not measured: 12.0 GB extrapolates the doubling from 254 to 510.
pub fn tile_peak_bytes(rows: usize) -> u64 {
    const PEAKS: [(usize, u64); 5] = [
        (62, 2_310_000_000),
        (126, 2_720_000_000),
        (254, 3_560_000_000),
        (510, 6_380_000_000),
        (MAX_TILE_ROWS, 12_000_000_000),
    ];
    PEAKS
        .iter()
        .find(|(height, _)| rows <= *height)
        .map_or(u64::MAX, |&(_, peak)| peak)
}

/// The tallest tile a worker with `memory` bytes can prove, with 10% to spare (peaks vary by a
/// few percent between runs): what the largest `tile_rows` a job may ask for follows from the
/// worker memory a deployment declares.
pub fn max_tile_rows_for_memory(memory: u64) -> usize {
    (1..=MAX_TILE_ROWS)
        .rev()
        .find(|&rows| tile_peak_bytes(rows).saturating_add(tile_peak_bytes(rows) / 10) <= memory)
        .unwrap_or(0)
}

/// One tile of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileSpec {
    /// Position in row-block-major order.
    pub index: usize,
    pub row_block: usize,
    pub col_block: usize,
    pub row0: usize,
    pub col0: usize,
    pub rows: usize,
    pub cols: usize,
}

/// How a `rows` × `cols` matrix is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TilePlan {
    pub rows: usize,
    pub cols: usize,
    pub tile_rows: usize,
    pub tile_cols: usize,
}

impl TilePlan {
    pub fn new(rows: usize, cols: usize, tile_rows: usize) -> TilePlan {
        TilePlan {
            rows,
            cols,
            tile_rows: tile_rows.clamp(1, MAX_TILE_ROWS),
            tile_cols: TILE_COLS,
        }
    }

    pub fn row_blocks(&self) -> usize {
        self.rows.div_ceil(self.tile_rows)
    }
    pub fn col_blocks(&self) -> usize {
        self.cols.div_ceil(self.tile_cols)
    }
    pub fn len(&self) -> usize {
        self.row_blocks() * self.col_blocks()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn tile(&self, index: usize) -> Option<TileSpec> {
        if index >= self.len() {
            return None;
        }
        let (row_block, col_block) = (index / self.col_blocks(), index % self.col_blocks());
        let (row0, col0) = (row_block * self.tile_rows, col_block * self.tile_cols);
        Some(TileSpec {
            index,
            row_block,
            col_block,
            row0,
            col0,
            rows: self.tile_rows.min(self.rows - row0),
            cols: self.tile_cols.min(self.cols - col0),
        })
    }

    pub fn tiles(&self) -> impl Iterator<Item = TileSpec> + '_ {
        (0..self.len()).filter_map(|i| self.tile(i))
    }
}

/// Children per reduce node by default: a job of up to this many tiles is reduced by one proof.
pub const DEFAULT_FAN_IN: usize = 32;

/// One node of a job's reduce tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Task index within the job: tiles come first, so the k-th node is task `tiles + k`.
    pub task: usize,
    /// The root states the whole job; inner nodes state a range of row blocks.
    pub root: bool,
    /// Task indices of the children, in order: map tiles row-major over whole row blocks, or
    /// nodes top to bottom.
    pub children: Vec<usize>,
    pub row0: usize,
    pub rows: usize,
    /// Row blocks covered.
    pub blocks: usize,
}

impl TilePlan {
    /// The reduce tree over this plan's tiles, root last. A level-one node takes whole row
    /// blocks of tiles, as many as fit in `fan_in` (at least one block); higher nodes take up to
    /// `fan_in` nodes. A job whose tiles fit in `fan_in` is reduced by the root alone.
    pub fn reduce_tree(&self, fan_in: usize) -> Vec<NodeSpec> {
        let fan_in = fan_in.max(2);
        let (row_blocks, col_blocks) = (self.row_blocks(), self.col_blocks());
        let blocks_per_node = (fan_in / col_blocks).max(1);
        let mut nodes: Vec<NodeSpec> = Vec::new();
        let mut level: Vec<usize> = Vec::new();
        for first in (0..row_blocks).step_by(blocks_per_node) {
            let last = (first + blocks_per_node).min(row_blocks);
            let row0 = first * self.tile_rows;
            nodes.push(NodeSpec {
                task: self.len() + nodes.len(),
                root: false,
                children: (first * col_blocks..last * col_blocks).collect(),
                row0,
                rows: (last * self.tile_rows).min(self.rows) - row0,
                blocks: last - first,
            });
            level.push(nodes.len() - 1);
        }
        while level.len() > 1 {
            let mut next = Vec::new();
            for group in level.chunks(fan_in) {
                let members: Vec<&NodeSpec> = group.iter().map(|&i| &nodes[i]).collect();
                let node = NodeSpec {
                    task: self.len() + nodes.len(),
                    root: false,
                    children: members.iter().map(|n| n.task).collect(),
                    row0: members[0].row0,
                    rows: members.iter().map(|n| n.rows).sum(),
                    blocks: members.iter().map(|n| n.blocks).sum(),
                };
                nodes.push(node);
                next.push(nodes.len() - 1);
            }
            level = next;
        }
        if let Some(root) = nodes.last_mut() {
            root.root = true;
        }
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_height_follows_worker_memory() {
        const GIB: u64 = 1 << 30;
        // The shipped workers (4 GiB) take the default tile and nothing padded past it.
        assert_eq!(max_tile_rows_for_memory(4 * GIB), DEFAULT_TILE_ROWS);
        assert_eq!(max_tile_rows_for_memory(3 * GIB), 126);
        assert_eq!(max_tile_rows_for_memory(6 * GIB), 254);
        assert_eq!(max_tile_rows_for_memory(8 * GIB), 510);
        assert_eq!(max_tile_rows_for_memory(16 * GIB), MAX_TILE_ROWS);
        assert_eq!(max_tile_rows_for_memory(GIB), 0);
        // 256 rows pad to 510's size.
        assert_eq!(tile_peak_bytes(256), tile_peak_bytes(510));
    }

    #[test]
    fn tiles_cover_the_matrix_exactly_once() {
        for (rows, cols, tile_rows) in [
            (1, 1, 254),
            (254, 1024, 254),
            (1000, 3000, 254),
            (7, 2049, 2),
        ] {
            let plan = TilePlan::new(rows, cols, tile_rows);
            let mut seen = vec![0u8; rows * cols];
            for t in plan.tiles() {
                assert!(t.rows >= 1 && t.rows <= tile_rows && t.cols >= 1 && t.cols <= TILE_COLS);
                for r in t.row0..t.row0 + t.rows {
                    for c in t.col0..t.col0 + t.cols {
                        seen[r * cols + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{rows}x{cols}");
        }
    }

    #[test]
    fn reduce_trees_cover_every_tile_once_and_end_in_the_root() {
        for (rows, cols, tile_rows, fan_in, expected_nodes) in [
            (1000, 3000, 254, 32, 1), // 12 tiles: the root alone
            (1000, 3000, 254, 4, 5),  // one row block (3 tiles) per node, then the root
            (100, 1024, 2, 16, 5),    // 50 tiles: 4 nodes + root
            (7, 2049, 2, 2, 7),       // 3 columns > fan-in: a block per node, two more levels
            (254, 1024, 254, 32, 1),  // one tile
        ] {
            let plan = TilePlan::new(rows, cols, tile_rows);
            let tree = plan.reduce_tree(fan_in);
            assert_eq!(
                tree.len(),
                expected_nodes,
                "{rows}x{cols}/{tile_rows} fan-in {fan_in}"
            );
            let root = tree.last().unwrap();
            assert!(root.root && tree.iter().filter(|n| n.root).count() == 1);
            assert_eq!(
                (root.row0, root.rows, root.blocks),
                (0, rows, plan.row_blocks())
            );
            let mut parents = vec![0; plan.len() + tree.len()];
            for node in &tree {
                assert_eq!(
                    node.task,
                    plan.len() + tree.iter().position(|n| n == node).unwrap()
                );
                for &child in &node.children {
                    assert!(child < node.task, "children come before their parent");
                    parents[child] += 1;
                }
            }
            parents.pop();
            assert!(
                parents.iter().all(|&p| p == 1),
                "every task but the root has one parent"
            );
        }
    }

    #[test]
    fn budgets_pick_power_of_two_compression_heights() {
        assert_eq!(tile_rows_for_budget(kernel_steps(254)), Some(254));
        assert_eq!(tile_rows_for_budget(kernel_steps(254) - 1), Some(126));
        assert_eq!(tile_rows_for_budget(usize::MAX), Some(1022));
        assert_eq!(tile_rows_for_budget(100), None);
        // Measured by `bench kernel`.
        for (rows, measured) in [(62, 75_390), (64, 77_745), (254, 301_470), (510, 602_910)] {
            assert_eq!(kernel_steps(rows), measured, "{rows} rows");
        }
    }
}
