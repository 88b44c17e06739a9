// What the two roots (batch_root.cairo, infer_root.cairo) share: walking one stream's segments
// in row order with their chains linked, and checking the challenges and v digests segments used.

from starkware.cairo.common.alloc import alloc
from starkware.cairo.common.memcpy import memcpy
from starkscale_tree import VERSION, HASH_WORDS, blake2s, initial_state
from starkscale_batch import (
    KIND_WEIGHTS,
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
