// The inner reduce node: for each of its row blocks, sums the partial y of the block's column
// tiles (map children), or concatenates consecutive nodes (node children); states every child's
// fact, each row block's Merkle root of tile leaves, the x commitment and y. See
// docs/certificate.md for the output layout.
%builtins output pedersen range_check ecdsa bitwise ec_op keccak poseidon range_check96 add_mod mul_mod

from starkscale_tree import (
    VERSION,
    KIND_NODE,
    NODE_X_COMMITMENT,
    NODE_FACTS,
    reduce_children,
)

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
    local row0;
    local rows;
    local cols;
    local tile_rows;
    local tile_cols;
    %{ starkscale_reduce_inputs %}
    local out: felt* = output_ptr;
    assert out[0] = VERSION;
    assert out[1] = KIND_NODE;
    assert out[2] = row0;
    assert out[3] = rows;
    assert out[4] = cols;
    assert out[5] = tile_rows;
    assert out[6] = tile_cols;
    assert out[15] = n_children;
    assert out[16] = n_blocks;
    local facts: felt* = out + NODE_FACTS;
    local roots: felt* = facts + 8 * n_children;
    local y: felt* = roots + 8 * n_blocks;
    reduce_children(
        mode,
        children,
        n_children,
        n_blocks,
        col_tiles,
        row0,
        rows,
        cols,
        tile_rows,
        tile_cols,
        out + NODE_X_COMMITMENT,
        facts,
        roots,
        y,
    );
    let output_ptr = y + rows;
    return ();
}
