// The root of a job's reduce tree: combines its children as reduce.cairo does, from row 0, then
// states the A commitment (Blake2s over the job and tile shape and the Merkle root of the row
// blocks' roots), the x commitment, every child's fact and y. See docs/certificate.md.
%builtins output pedersen range_check ecdsa bitwise ec_op keccak poseidon range_check96 add_mod mul_mod

from starkware.cairo.common.alloc import alloc
from starkscale_tree import (
    VERSION,
    KIND_ROOT,
    blake2s,
    merkle_root,
    reduce_children,
)

// Output layout: version, kind, rows, cols, tile_rows, tile_cols, A commitment (8 words),
// x commitment (8), child count, facts (8 per child), y.
const ROOT_A_COMMITMENT = 6;
const ROOT_X_COMMITMENT = 14;
const ROOT_FACTS = 23;

func main{
    output_ptr: felt*,
    pedersen_ptr,
    range_check_ptr,
    ecdsa_ptr,
    bitwise_ptr,
    ec_op_ptr,
    keccak_ptr,
    poseidon_ptr,
    range_check96_ptr,
    add_mod_ptr,
    mul_mod_ptr,
}() {
    alloc_locals;
    local mode;
    local children: felt**;
    local n_children;
    local n_blocks;
    local col_tiles;
    local rows;
    local cols;
    local tile_rows;
    local tile_cols;
    %{ starkscale_reduce_inputs %}
    local out: felt* = output_ptr;
    assert out[0] = VERSION;
    assert out[1] = KIND_ROOT;
    assert out[2] = rows;
    assert out[3] = cols;
    assert out[4] = tile_rows;
    assert out[5] = tile_cols;
    assert out[22] = n_children;
    local facts: felt* = out + ROOT_FACTS;
    local y: felt* = facts + 8 * n_children;
    let (local roots: felt*) = alloc();
    reduce_children(
        mode,
        children,
        n_children,
        n_blocks,
        col_tiles,
        0,
        rows,
        cols,
        tile_rows,
        tile_cols,
        out + ROOT_X_COMMITMENT,
        facts,
        roots,
        y,
    );
    local range_check_ptr = range_check_ptr;
    // A commitment = Blake2s(rows, cols, tile_rows, tile_cols, Merkle root of the row roots).
    let (local preimage: felt*) = alloc();
    assert preimage[0] = rows;
    assert preimage[1] = cols;
    assert preimage[2] = tile_rows;
    assert preimage[3] = tile_cols;
    merkle_root(roots, n_blocks, preimage + 4);
    blake2s(preimage, 12, out + ROOT_A_COMMITMENT);
    let output_ptr = y + rows;
    return ();
}
