// The batch segment kernel: consecutive rows of one of a batch job's three streams -- the
// weights (A transposed, int8), the inputs X (int8, one input per row) or the outputs Y (int32,
// one output per row) -- hashed into the stream's chunk-column Blake2s chains and reduced with
// the job's challenges. docs/batch.md states the protocol, the encodings and this output:
//
//   0 version, 1 kind, 2 M, 3 K, 4 B, 5 row0, 6 rows, 7 last, 8..16 sigma, 16..24 rho,
//   24..32 t (each 8 u32 limbs), 32..40 v digest (inputs) or zeros,
//   40.. per chunk column: chain state before (8 words) and after (8) the segment,
//   then, for weights, v_r for each row (8 limbs each).
// sigma and rho are the job's challenges as the batch root derives them; it checks every
// segment's.
%builtins output pedersen range_check ecdsa bitwise ec_op keccak poseidon range_check96 add_mod mul_mod

from starkware.cairo.common.alloc import alloc
from starkware.cairo.common.math import assert_le, assert_nn
from starkware.cairo.common.memcpy import memcpy
from starkware.cairo.common.memset import memset
from starkware.cairo.common.pow import pow
from starkscale_tree import VERSION, blake2s
from batch_pass import batch_pass8, batch_pass32, BATCH_PASS8_ITER, BATCH_PASS32_ITER
from starkscale_batch import (
    KIND_WEIGHTS,
    KIND_INPUTS,
    KIND_OUTPUTS,
    SEG_SIGMA,
    SEG_RHO,
    SEG_T,
    SEG_V_DIGEST,
    SEG_CHAINS,
    felt_of_words,
    felts_of_words,
    powers,
    sum,
    write_felt,
)

// Stored entries are value + offset, so that every word is a u32.
const I8_OFFSET = 128;
const I32_OFFSET = 2 ** 31;
// Limits on M, K, B and on a stream's height: a chain's byte counter (64 per row) is a u32.
const MAX_DIM = 2 ** 24;
const MAX_STREAM_ROWS = 2 ** 25;

func main{
    output_ptr: felt*,
    pedersen_ptr,
    range_check_ptr,
    ecdsa_ptr,
    bitwise_ptr,
    ec_op_ptr,
    keccak_ptr,
    poseidon_ptr,
    range_check96_ptr: felt*,
    add_mod_ptr,
    mul_mod_ptr,
}() {
    alloc_locals;
    local kind;
    local m;
    local k;
    local b;
    local row0;
    local rows;
    local chunks;
    local v_words: felt*;
    local out: felt* = output_ptr;
    // Writes the locals above, the challenges at out + SEG_SIGMA and out + SEG_RHO and each
    // chain's state before the segment at out + SEG_CHAINS + 16 c. All of it is public output
    // or checked below.
    %{ starkscale_batch_segment %}

    // Which stream: its row length, its height, its entries' offset and how many entries a
    // 16-word chunk holds (int8: four per word).
    local row_len;
    local total;
    local offset;
    local per;
    if (kind == KIND_WEIGHTS) {
        assert row_len = m;
        assert total = k;
        assert offset = I8_OFFSET;
        assert per = 64;
    } else {
        if (kind == KIND_INPUTS) {
            assert row_len = k;
            assert total = b;
            assert offset = I8_OFFSET;
            assert per = 64;
        } else {
            assert kind = KIND_OUTPUTS;
            assert row_len = m;
            assert total = b;
            assert offset = I32_OFFSET;
            assert per = 16;
        }
    }
    assert_le(1, m);
    assert_le(m, MAX_DIM);
    assert_le(1, k);
    assert_le(k, MAX_DIM);
    assert_le(1, b);
    assert_le(b, MAX_DIM);
    assert_le(1, rows);
    assert_nn(row0);
    assert_le(row0 + rows, total);
    assert_le(total, MAX_STREAM_ROWS);
    // chunks = ceil(row_len / per): rows are zero-padded to whole 16-word blocks.
    assert_le(per * chunks, row_len + per - 1);
    assert_le(row_len, per * chunks);
    local last;
    if (row0 + rows == total) {
        assert last = 1;
    } else {
        assert last = 0;
    }
    assert out[0] = VERSION;
    assert out[1] = kind;
    assert out[2] = m;
    assert out[3] = k;
    assert out[4] = b;
    assert out[5] = row0;
    assert out[6] = rows;
    assert out[7] = last;

    local sigma;
    local rho;
    let s = felt_of_words(out + SEG_SIGMA);
    assert sigma = s;
    let r = felt_of_words(out + SEG_RHO);
    assert rho = r;

    // Multipliers, one per position of a padded row: sigma^i for weights and outputs (their
    // rows run over A's rows), v for inputs (their rows run over A's columns).
    let (local mult: felt*) = alloc();
    if (kind == KIND_INPUTS) {
        blake2s(v_words, 8 * k, out + SEG_V_DIGEST);
        felts_of_words(v_words, k, mult);
        memset(mult + k, 0, per * chunks - k);
        tempvar range_check_ptr = range_check_ptr;
    } else {
        memset(out + SEG_V_DIGEST, 0, 8);
        powers(mult, 1, sigma, per * chunks);
        tempvar range_check_ptr = range_check_ptr;
    }
    let (rp0) = pow(rho, row0);
    local range_check_ptr = range_check_ptr;
    local rp0 = rp0;

    let (local zero: felt*) = alloc();
    assert zero[0] = 0;
    let (t, acc) = passes(
        0, chunks, per, mult, out + SEG_CHAINS, 64 * row0, rows, rp0, rho, 0, zero, 0, offset, last
    );
    local acc: felt* = acc;
    local range_check96_ptr: felt* = range_check96_ptr;
    write_felt(t, out + SEG_T);
    local end: felt* = out + SEG_CHAINS + 16 * chunks;
    if (kind == KIND_WEIGHTS) {
        write_accs(acc, rows, end, BATCH_PASS8_ITER);
        let output_ptr = end + 8 * rows;
        return ();
    }
    let output_ptr = end;
    return ();
}

// One pass per chunk column c < chunks: the chain state before the segment is read from
// chains[16 c ..], the state after is written to chains[16 c + 8 ..]. per = 64 takes the int8
// pass, per = 16 the int32 pass.
func passes{range_check96_ptr: felt*}(
    c,
    chunks,
    per,
    mult: felt*,
    chains: felt*,
    counter,
    rows,
    rp0,
    rho,
    t,
    acc_in: felt*,
    stride,
    offset,
    last,
) -> (t: felt, acc: felt*) {
    alloc_locals;
    if (c == chunks) {
        return (t=t, acc=acc_in);
    }
    // Entries are stored as value + offset: the pass adds -offset * sum(multipliers) per row.
    let total = sum(mult, per);
    local negc = -offset * total;
    local t2;
    local acc: felt*;
    local state: felt*;
    local next_stride;
    if (per == 64) {
        let (t_, acc_, state_, rc_) = batch_pass8(
            mult, chains, counter, rows, rp0, rho, t, acc_in, stride, negc, last, range_check96_ptr
        );
        assert t2 = t_;
        assert acc = acc_;
        assert state = state_;
        assert next_stride = BATCH_PASS8_ITER;
        tempvar range_check96_ptr: felt* = rc_;
    } else {
        assert per = 16;
        let (t_, acc_, state_, rc_) = batch_pass32(
            mult, chains, counter, rows, rp0, rho, t, acc_in, stride, negc, last, range_check96_ptr
        );
        assert t2 = t_;
        assert acc = acc_;
        assert state = state_;
        assert next_stride = BATCH_PASS32_ITER;
        tempvar range_check96_ptr: felt* = rc_;
    }
    local range_check96_ptr: felt* = range_check96_ptr;
    memcpy(chains + 8, state, 8);
    return passes(
        c + 1,
        chunks,
        per,
        mult + per,
        chains + 16,
        counter,
        rows,
        rp0,
        rho,
        t2,
        acc,
        next_stride,
        offset,
        last,
    );
}

// The accumulators of the segment's rows, `stride` cells apart, as limbs.
func write_accs(acc: felt*, n, dst: felt*, stride) {
    if (n == 0) {
        return ();
    }
    write_felt(acc[0], dst);
    return write_accs(acc + stride, n - 1, dst + 8, stride);
}
