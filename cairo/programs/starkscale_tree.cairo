// What the reduce programs (reduce.cairo, root.cairo) share: Blake2s with the opcode, Merkle roots
// over digests, and the walk over a node's children that recomputes each child's fact, sums
// partial y over column tiles, concatenates row blocks and checks that the children tile the
// node's rows exactly. Layouts: docs/kernel.md (map output), docs/certificate.md (the rest).
//
// Every value read from a child is read from the very cells its fact hashes, and every pointer is
// built from the children table and constants: a hint can choose what the children are, never
// make the hashed and the used values differ.

from starkware.cairo.common.alloc import alloc
from starkware.cairo.common.math import assert_le
from starkware.cairo.common.math_cmp import is_le
from starkware.cairo.common.memcpy import memcpy
from starkware.cairo.common.memset import memset

const VERSION = 1;
const KIND_MAP = 1;
const KIND_NODE = 2;
const KIND_ROOT = 3;
const DTYPE_I8 = 1;
// y is stated as y + 2^31 so that every output cell is a u32.
const Y_OFFSET = 2 ** 31;
// A child's table entry: its program hash (8 words) followed by its public output.
const HASH_WORDS = 8;
// Map output: row0, col0, rows, cols, A digest, x digest at these offsets; y from MAP_Y on.
const MAP_ROW0 = 3;
const MAP_COL0 = 4;
const MAP_ROWS = 5;
const MAP_COLS = 6;
const MAP_X_DIGEST = 15;
const MAP_Y = 23;
// Node output: header, x commitment, child count, block count, then facts, row roots, y.
const NODE_ROW0 = 2;
const NODE_ROWS = 3;
const NODE_COLS = 4;
const NODE_TILE_ROWS = 5;
const NODE_TILE_COLS = 6;
const NODE_X_COMMITMENT = 7;
const NODE_CHILDREN = 15;
const NODE_BLOCKS = 16;
const NODE_FACTS = 17;

// Blake2s opcode: counter [fp - 6], state [fp - 5], message [fp - 4]; output to [[ap]] = out.
func compress(counter, state: felt*, message: felt*, out: felt*) {
    [ap] = [fp - 3];
    dw 0x880b7ffc7ffb7ffa;
    ret;
}

// The same, finalizing (last block of a message).
func compress_last(counter, state: felt*, message: felt*, out: felt*) {
    [ap] = [fp - 3];
    dw 0x1080b7ffc7ffb7ffa;
    ret;
}

// Blake2s-256's initial state: IV xor the parameter block (32-byte digest, no key).
func initial_state() -> felt* {
    let (state: felt*) = alloc();
    assert state[0] = 0x6b08e647;
    assert state[1] = 0xbb67ae85;
    assert state[2] = 0x3c6ef372;
    assert state[3] = 0xa54ff53a;
    assert state[4] = 0x510e527f;
    assert state[5] = 0x9b05688c;
    assert state[6] = 0x1f83d9ab;
    assert state[7] = 0x5be0cd19;
    return state;
}

// Writes Blake2s-256 of the n words at data (little-endian u32 words) to out[0..8].
func blake2s{range_check_ptr}(data: felt*, n, out: felt*) {
    let state = initial_state();
    return hash_blocks(state, data, n, 0, out);
}

func hash_blocks{range_check_ptr}(state: felt*, data: felt*, remaining, counter, out: felt*) {
    alloc_locals;
    let more = is_le(17, remaining);
    local range_check_ptr = range_check_ptr;
    if (more == 1) {
        let (local next: felt*) = alloc();
        compress(counter + 64, state, data, next);
        return hash_blocks(next, data + 16, remaining - 16, counter + 64, out);
    }
    // The last block, zero-padded in fresh cells (the words after `data` are not ours).
    let (local block: felt*) = alloc();
    memcpy(block, data, remaining);
    memset(block + remaining, 0, 16 - remaining);
    compress_last(counter + 4 * remaining, state, block, out);
    return ();
}

// Writes the Blake2s digest of left ‖ right (one 16-word block) to out.
func hash_pair(left: felt*, right: felt*, out: felt*) {
    alloc_locals;
    let (local block: felt*) = alloc();
    memcpy(block, left, 8);
    memcpy(block + 8, right, 8);
    let state = initial_state();
    compress_last(64, state, block, out);
    return ();
}

// Writes the Merkle root of the n >= 1 digests at nodes (8 words each, contiguous) to out. Each
// level hashes pairs; an odd last node is paired with the zero digest. One digest is its own root.
func merkle_root(nodes: felt*, n, out: felt*) {
    alloc_locals;
    if (n == 1) {
        memcpy(out, nodes, 8);
        return ();
    }
    let (local next: felt*) = alloc();
    let count = merkle_level(nodes, n, next);
    return merkle_root(next, count, out);
}

func merkle_level(nodes: felt*, n, next: felt*) -> felt {
    alloc_locals;
    if (n == 0) {
        return 0;
    }
    if (n == 1) {
        let (local zero: felt*) = alloc();
        memset(zero, 0, 8);
        hash_pair(nodes, zero, next);
        return 1;
    }
    hash_pair(nodes, nodes + 8, next);
    let rest = merkle_level(nodes + 16, n - 2, next + 8);
    return rest + 1;
}

// Map children: `blocks` row blocks of `col_tiles` tiles each, row-major in `children`, starting at
// row `row0`. Per block: every tile's fact goes to facts, the Merkle root of its tile leaves to
// roots, the column-summed y to y_out. Tile x digests are written to x_digests by the first block
// and compared by every later one. Returns the row after the last block.
func map_blocks{range_check_ptr}(
    children: felt**,
    blocks,
    col_tiles,
    row0,
    cols,
    tile_rows,
    tile_cols,
    facts: felt*,
    roots: felt*,
    y_out: felt*,
    x_digests: felt*,
) -> felt {
    alloc_locals;
    if (blocks == 0) {
        return row0;
    }
    let first: felt* = children[0] + HASH_WORDS;
    local rows = first[MAP_ROWS];
    // Only a node's last block may be shorter than the tile height (the matrix's last block).
    assert_le(rows, tile_rows);
    if (blocks != 1) {
        assert rows = tile_rows;
    }
    let (local leaves: felt*) = alloc();
    map_tiles(children, col_tiles, row0, rows, 0, cols, tile_cols, facts, leaves, x_digests);
    local range_check_ptr = range_check_ptr;
    merkle_root(leaves, col_tiles, roots);
    sum_rows(children, col_tiles, rows, HASH_WORDS + MAP_Y, y_out, (col_tiles - 1) * Y_OFFSET);
    return map_blocks(
        children + col_tiles,
        blocks - 1,
        col_tiles,
        row0 + rows,
        cols,
        tile_rows,
        tile_cols,
        facts + 8 * col_tiles,
        roots + 8,
        y_out + rows,
        x_digests,
    );
}

// The column tiles of one row block, left to right from col0: each must be a map output of this
// block's rows at the running column, full tile width except the last, which ends at `cols`.
func map_tiles{range_check_ptr}(
    children: felt**,
    left,
    row0,
    rows,
    col0,
    cols,
    tile_cols,
    facts: felt*,
    leaves: felt*,
    x_digests: felt*,
) {
    alloc_locals;
    if (left == 0) {
        assert col0 = cols;
        return ();
    }
    local entry: felt* = children[0];
    local out: felt* = entry + HASH_WORDS;
    assert out[0] = VERSION;
    assert out[1] = KIND_MAP;
    assert out[2] = DTYPE_I8;
    assert out[MAP_ROW0] = row0;
    assert out[MAP_COL0] = col0;
    assert out[MAP_ROWS] = rows;
    local width = out[MAP_COLS];
    assert_le(width, tile_cols);
    if (left != 1) {
        assert width = tile_cols;
    }
    local range_check_ptr = range_check_ptr;
    blake2s(entry, HASH_WORDS + MAP_Y + rows, facts);
    // The tile's leaf: Blake2s(row0, col0, rows, cols, A digest), cells 3..15 of its output.
    blake2s(out + MAP_ROW0, 12, leaves);
    memcpy(x_digests, out + MAP_X_DIGEST, 8);
    return map_tiles(
        children + 1,
        left - 1,
        row0,
        rows,
        col0 + width,
        cols,
        tile_cols,
        facts + 8,
        leaves + 8,
        x_digests + 8,
    );
}

// y_out[i] = sum over the block's column tiles of their y[i] (each offset by 2^31), re-offset.
func sum_rows(children: felt**, col_tiles, left, offset, y_out: felt*, correction) {
    if (left == 0) {
        return ();
    }
    let total = sum_column(children, col_tiles, offset);
    assert y_out[0] = total - correction;
    return sum_rows(children, col_tiles, left - 1, offset + 1, y_out + 1, correction);
}

func sum_column(children: felt**, left, offset) -> felt {
    if (left == 0) {
        return 0;
    }
    let rest = sum_column(children + 1, left - 1, offset);
    let entry: felt* = children[0];
    return rest + entry[offset];
}

// Node children (outputs of reduce.cairo), top to bottom from row0: each must cover the rows
// right after the previous one, with the same width, tile shape and x commitment; all but the
// last must end on a tile boundary. Facts go to facts, their row roots are concatenated into
// roots and their y into y_out. Returns (row after the last child, end of the roots written).
func node_children{range_check_ptr}(
    children: felt**,
    left,
    row0,
    cols,
    tile_rows,
    tile_cols,
    x_commitment: felt*,
    facts: felt*,
    roots: felt*,
    y_out: felt*,
) -> (row_end: felt, roots_end: felt*) {
    alloc_locals;
    if (left == 0) {
        return (row_end=row0, roots_end=roots);
    }
    local entry: felt* = children[0];
    local out: felt* = entry + HASH_WORDS;
    assert out[0] = VERSION;
    assert out[1] = KIND_NODE;
    assert out[NODE_ROW0] = row0;
    assert out[NODE_COLS] = cols;
    assert out[NODE_TILE_ROWS] = tile_rows;
    assert out[NODE_TILE_COLS] = tile_cols;
    memcpy(x_commitment, out + NODE_X_COMMITMENT, 8);
    local rows = out[NODE_ROWS];
    local n_children = out[NODE_CHILDREN];
    local n_blocks = out[NODE_BLOCKS];
    if (left != 1) {
        assert rows = n_blocks * tile_rows;
    }
    local roots_at: felt* = out + NODE_FACTS + 8 * n_children;
    local y_at: felt* = roots_at + 8 * n_blocks;
    blake2s(entry, HASH_WORDS + NODE_FACTS + 8 * n_children + 8 * n_blocks + rows, facts);
    local range_check_ptr = range_check_ptr;
    memcpy(roots, roots_at, 8 * n_blocks);
    memcpy(y_out, y_at, rows);
    return node_children(
        children + 1,
        left - 1,
        row0 + rows,
        cols,
        tile_rows,
        tile_cols,
        x_commitment,
        facts + 8,
        roots + 8 * n_blocks,
        y_out + rows,
    );
}

// A node's children, whichever their kind: fills facts (8 words per child), roots (8 per row
// block), y_out (one per row) and x_commitment, and checks the totals the node states.
// mode 1: map children, `n_blocks` × `col_tiles` of them; mode 2: node children.
func reduce_children{range_check_ptr}(
    mode,
    children: felt**,
    n_children,
    n_blocks,
    col_tiles,
    row0,
    rows,
    cols,
    tile_rows,
    tile_cols,
    x_commitment: felt*,
    facts: felt*,
    roots: felt*,
    y_out: felt*,
) {
    alloc_locals;
    assert_le(1, n_children);
    assert_le(1, tile_rows);
    assert_le(1, tile_cols);
    local range_check_ptr = range_check_ptr;
    if (mode == KIND_MAP) {
        assert n_children = n_blocks * col_tiles;
        let (local x_digests: felt*) = alloc();
        let row_end = map_blocks(
            children,
            n_blocks,
            col_tiles,
            row0,
            cols,
            tile_rows,
            tile_cols,
            facts,
            roots,
            y_out,
            x_digests,
        );
        assert row_end = row0 + rows;
        // x commitment: Blake2s over the x-block digests, left to right.
        blake2s(x_digests, 8 * col_tiles, x_commitment);
        return ();
    }
    assert mode = KIND_NODE;
    let (row_end, roots_end) = node_children(
        children, n_children, row0, cols, tile_rows, tile_cols, x_commitment, facts, roots, y_out
    );
    assert row_end = row0 + rows;
    assert roots_end = roots + 8 * n_blocks;
    return ();
}
