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
from starkscale_tree import VERSION, HASH_WORDS, blake2s, initial_state
from starkscale_batch import (
    KIND_WEIGHTS,
    KIND_INPUTS,
    KIND_OUTPUTS,
    KIND_BATCH_ROOT,
    SEG_ROW0,
    SEG_ROWS,
    SEG_LAST,
    SEG_SIGMA,
    SEG_RHO,
    SEG_T,
    SEG_V_DIGEST,
    SEG_CHAINS,
    felt_of_words,
)

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

// The n >= 1 segments of one stream, in row order from `row`: each must be a segment of this
// stream and job starting where the previous one ended, its chains continuing the previous
// one's (the Blake2s initial state for the first), and only the last may close the stream.
// Writes each segment's fact, the stream's chain digests (the last segment's final states) and,
// for weights, v's limbs at v_words[8 row ..]; returns the sum of the segments' t.
func stream_segments{range_check_ptr}(
    kind,
    children: felt**,
    n,
    m,
    k,
    b,
    chunks,
    prev: felt*,
    row,
    facts: felt*,
    digests: felt*,
    v_words: felt*,
    t,
) -> felt {
    alloc_locals;
    local entry: felt* = children[0];
    local seg: felt* = entry + HASH_WORDS;
    assert seg[0] = VERSION;
    assert seg[1] = kind;
    assert seg[2] = m;
    assert seg[3] = k;
    assert seg[4] = b;
    assert seg[SEG_ROW0] = row;
    local rows = seg[SEG_ROWS];
    if (n == 1) {
        assert seg[SEG_LAST] = 1;
    } else {
        assert seg[SEG_LAST] = 0;
    }
    if (row == 0) {
        let state = initial_state();
        check_initial(seg + SEG_CHAINS, chunks, state);
    } else {
        check_links(prev + HASH_WORDS + SEG_CHAINS, seg + SEG_CHAINS, chunks);
    }
    local len;
    if (kind == KIND_WEIGHTS) {
        assert len = SEG_CHAINS + 16 * chunks + 8 * rows;
        memcpy(v_words + 8 * row, seg + SEG_CHAINS + 16 * chunks, 8 * rows);
    } else {
        assert len = SEG_CHAINS + 16 * chunks;
    }
    blake2s(entry, HASH_WORDS + len, facts);
    local range_check_ptr = range_check_ptr;
    let tv = felt_of_words(seg + SEG_T);
    local t2 = t + tv;
    if (n == 1) {
        final_states(seg + SEG_CHAINS, chunks, digests);
        return t2;
    }
    return stream_segments(
        kind,
        children + 1,
        n - 1,
        m,
        k,
        b,
        chunks,
        entry,
        row + rows,
        facts + 8,
        digests,
        v_words,
        t2,
    );
}

// Each chain's state before the first segment is Blake2s's initial state.
func check_initial(chains: felt*, left, state: felt*) {
    if (left == 0) {
        return ();
    }
    memcpy(chains, state, 8);
    return check_initial(chains + 16, left - 1, state);
}

// Each chain continues from the previous segment's state after it.
func check_links(prev: felt*, chains: felt*, left) {
    if (left == 0) {
        return ();
    }
    memcpy(chains, prev + 8, 8);
    return check_links(prev + 16, chains + 16, left - 1);
}

func final_states(chains: felt*, left, digests: felt*) {
    if (left == 0) {
        return ();
    }
    memcpy(digests, chains + 8, 8);
    return final_states(chains + 16, left - 1, digests + 8);
}

func check_challenges(children: felt**, left, sigma, rho) {
    if (left == 0) {
        return ();
    }
    let entry: felt* = children[0];
    let s = felt_of_words(entry + HASH_WORDS + SEG_SIGMA);
    assert s = sigma;
    let r = felt_of_words(entry + HASH_WORDS + SEG_RHO);
    assert r = rho;
    return check_challenges(children + 1, left - 1, sigma, rho);
}

// The job's challenge number `tag`: Blake2s(seed ‖ tag) read as a field element.
func challenge{range_check_ptr}(seed: felt*, tag) -> felt {
    alloc_locals;
    let (local block: felt*) = alloc();
    memcpy(block, seed, 8);
    assert block[8] = tag;
    let (local digest: felt*) = alloc();
    blake2s(block, 9, digest);
    let value = felt_of_words(digest);
    return value;
}

func check_v_digests(children: felt**, left, digest: felt*) {
    if (left == 0) {
        return ();
    }
    let entry: felt* = children[0];
    memcpy(entry + HASH_WORDS + SEG_V_DIGEST, digest, 8);
    return check_v_digests(children + 1, left - 1, digest);
}
