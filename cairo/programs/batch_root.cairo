// The root of a batch job (docs/batch.md): consumes the outputs of every segment of the job's
// three streams and states Y = A·X for the committed A, X and Y. It recomputes each segment's
// fact, checks that each stream's segments cover it from row 0 to its end with their chains
// linked, builds the three commitments from the chain digests, derives the seed and the
// challenges from them and checks that every segment used those, that every inputs segment used v = σᵀA as the weights
// segments computed it, and that Σ t over the inputs equals Σ t over the outputs.
//
// Output: 0 version, 1 kind (7), 2 M, 3 K, 4 B, 5..13 A commitment, 13..21 X commitment,
// 21..29 Y commitment, 29..37 seed, 37 child count, then one fact (8 words) per child: the
// weights segments, then the inputs, then the outputs, each in row order.
%builtins output pedersen range_check ecdsa bitwise ec_op keccak poseidon range_check96 add_mod mul_mod

from starkware.cairo.common.alloc import alloc
from starkware.cairo.common.math import assert_le
from starkware.cairo.common.memcpy import memcpy
from starkscale_tree import VERSION, blake2s
from starkscale_batch import (
    KIND_WEIGHTS,
    KIND_INPUTS,
    KIND_OUTPUTS,
    KIND_BATCH_ROOT,
)
from starkscale_roots import stream_segments, challenge, check_challenges, check_v_digests

const ROOT_A = 5;
const ROOT_X = 13;
const ROOT_Y = 21;
const ROOT_SEED = 29;
const ROOT_CHILDREN = 37;
const ROOT_FACTS = 38;

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
    local m;
    local k;
    local b;
    local children: felt**;
    local n_w;
    local n_x;
    local n_y;
    local chunks_w;
    local chunks_x;
    local chunks_y;
    %{ starkscale_batch_root_inputs %}
    local out: felt* = output_ptr;
    assert_le(1, n_w);
    assert_le(1, n_x);
    assert_le(1, n_y);
    // Chunk columns: int8 rows hold 64 entries per chunk, int32 rows 16.
    assert_le(64 * chunks_w, m + 63);
    assert_le(m, 64 * chunks_w);
    assert_le(64 * chunks_x, k + 63);
    assert_le(k, 64 * chunks_x);
    assert_le(16 * chunks_y, m + 15);
    assert_le(m, 16 * chunks_y);
    assert out[0] = VERSION;
    assert out[1] = KIND_BATCH_ROOT;
    assert out[2] = m;
    assert out[3] = k;
    assert out[4] = b;
    assert out[ROOT_CHILDREN] = n_w + n_x + n_y;
    local facts: felt* = out + ROOT_FACTS;
    local xs: felt** = children + n_w;
    local ys: felt** = xs + n_x;

    // The weights stream: K rows (A's columns) of M entries.
    let (local v_words: felt*) = alloc();
    let (local preimage_a: felt*) = alloc();
    assert preimage_a[0] = KIND_WEIGHTS;
    assert preimage_a[1] = k;
    assert preimage_a[2] = m;
    stream_segments(
        KIND_WEIGHTS, children, n_w, m, k, b, chunks_w, children[0], 0, facts, preimage_a + 3,
        v_words, 0,
    );
    blake2s(preimage_a, 3 + 8 * chunks_w, out + ROOT_A);

    // The inputs: B rows of K entries.
    let (local preimage_x: felt*) = alloc();
    assert preimage_x[0] = KIND_INPUTS;
    assert preimage_x[1] = b;
    assert preimage_x[2] = k;
    let t_x = stream_segments(
        KIND_INPUTS, xs, n_x, m, k, b, chunks_x, xs[0], 0, facts + 8 * n_w, preimage_x + 3,
        v_words, 0,
    );
    local t_x = t_x;
    blake2s(preimage_x, 3 + 8 * chunks_x, out + ROOT_X);

    // The outputs: B rows of M entries.
    let (local preimage_y: felt*) = alloc();
    assert preimage_y[0] = KIND_OUTPUTS;
    assert preimage_y[1] = b;
    assert preimage_y[2] = m;
    let t_y = stream_segments(
        KIND_OUTPUTS, ys, n_y, m, k, b, chunks_y, ys[0], 0, facts + 8 * (n_w + n_x),
        preimage_y + 3, v_words, 0,
    );
    local t_y = t_y;
    blake2s(preimage_y, 3 + 8 * chunks_y, out + ROOT_Y);

    // The randomized product check: sum_j rho^j (v . x_j) = sum_j rho^j (sigma^i)_i . y_j.
    assert t_x = t_y;

    // seed = Blake2s(kind, M, K, B, the three commitments); sigma = Blake2s(seed ‖ 1) and
    // rho = Blake2s(seed ‖ 2) as field elements: every segment must have used these.
    let (local preimage_s: felt*) = alloc();
    assert preimage_s[0] = KIND_BATCH_ROOT;
    assert preimage_s[1] = m;
    assert preimage_s[2] = k;
    assert preimage_s[3] = b;
    memcpy(preimage_s + 4, out + ROOT_A, 24);
    blake2s(preimage_s, 28, out + ROOT_SEED);
    local range_check_ptr = range_check_ptr;
    let sigma = challenge(out + ROOT_SEED, 1);
    local sigma = sigma;
    let rho = challenge(out + ROOT_SEED, 2);
    local rho = rho;
    check_challenges(children, n_w + n_x + n_y, sigma, rho);

    // Every inputs segment multiplied by v = sigma^T A as the weights segments stated it.
    let (local v_digest: felt*) = alloc();
    blake2s(v_words, 8 * k, v_digest);
    local range_check_ptr = range_check_ptr;
    check_v_digests(xs, n_x, v_digest);

    let output_ptr = facts + 8 * (n_w + n_x + n_y);
    return ();
}
