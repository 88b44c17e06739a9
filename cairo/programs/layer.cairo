// The layer-outputs kernel: consecutive rows of a layer's int32 accumulators Y (one output per
// row), hashed into the outputs stream's chunk-column chains and reduced with the layer's
// challenges exactly as an outputs segment of batch.cairo does -- and, for every entry, the
// layer's epilogue (bias, Q31 requantization, zero point, clamp) applied in the proof. The int8
// results z are never stored:
//   hidden (kind 8): they are the next layer's inputs; the kernel folds them into the next
//     layer's product check, t2 = sum_j rho2^j (V . z_j) with V = sigma2^T A2 given as limbs;
//   final (kind 9): they are the logits; the kernel hashes them as int32 words z + 2^31 into a
//     second set of chains (the logits stream, one chain per chunk column, like Y's).
// docs/inference.md states the arithmetic, the chaining and why a cheating prover fails.
//
// Output: 0 version, 1 kind, 2 M, 3 K, 4 B, 5 row0, 6 rows, 7 last, 8..16 sigma, 16..24 rho,
//   24..32 t, 32..40 V digest (hidden) or zeros, 40..48 rho2 (hidden) or zeros, 48..56 t2
//   (hidden) or zeros, 56..64 the epilogue's parameter digest, 64.. per chunk column: Y's chain
//   state before (8 words) and after (8); final: then the same for the logits chains.
// The parameters are 4 + 4 M words: zp + 128, lo + 128, hi + 128, M, then per output channel
// bias + 2^63 as two words (low first), the Q31 multiplier and the right shift.
%builtins output pedersen range_check ecdsa bitwise ec_op keccak poseidon range_check96 add_mod mul_mod

from starkware.cairo.common.alloc import alloc
from starkware.cairo.common.math import assert_le, assert_nn
from starkware.cairo.common.memcpy import memcpy
from starkware.cairo.common.memset import memset
from starkware.cairo.common.pow import pow
from starkscale_tree import VERSION, blake2s
from layer_pass import layer_pass_hidden, layer_pass_final
from starkscale_batch import (
    KIND_LAYER_HIDDEN,
    KIND_LAYER_FINAL,
    SEG_SIGMA,
    SEG_RHO,
    SEG_T,
    SEG_V_DIGEST,
    LAYER_RHO2,
    LAYER_T2,
    LAYER_PARAMS,
    LAYER_CHAINS,
    felt_of_words,
    felts_of_words,
    powers,
    sum,
    write_felt,
)

const I32_OFFSET = 2 ** 31;
const MAX_DIM = 2 ** 24;
const MAX_STREAM_ROWS = 2 ** 25;
const MAX_SHIFT = 31;
// Parameters per entry and pass (the generator's LAYER_PARAMS): MUL, C, H, G, POW, SC, X.
const NPAR = 7;

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
    local params: felt*;
    local v_words: felt*;
    local out: felt* = output_ptr;
    // Writes the locals above, sigma, rho and (hidden) rho2 at their output positions, and
    // every chain's state before the segment. All of it is public output or checked below.
    %{ starkscale_layer_segment %}

    local hidden;
    if (kind == KIND_LAYER_HIDDEN) {
        assert hidden = 1;
    } else {
        assert kind = KIND_LAYER_FINAL;
        assert hidden = 0;
    }
    assert_le(1, m);
    assert_le(m, MAX_DIM);
    assert_le(1, k);
    assert_le(k, MAX_DIM);
    assert_le(1, b);
    assert_le(b, MAX_DIM);
    assert_le(1, rows);
    assert_nn(row0);
    assert_le(row0 + rows, b);
    assert_le(b, MAX_STREAM_ROWS);
    // chunks = ceil(m / 16): rows of int32 entries, zero-padded to whole 16-word blocks.
    assert_le(16 * chunks, m + 15);
    assert_le(m, 16 * chunks);
    local last;
    if (row0 + rows == b) {
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
    let sigma = felt_of_words(out + SEG_SIGMA);
    local sigma = sigma;
    let rho = felt_of_words(out + SEG_RHO);
    local rho = rho;

    // The epilogue's parameters, bound by their digest (the root compares it with the model's).
    blake2s(params, 4 + 4 * m, out + LAYER_PARAMS);
    local zp = params[0] - 128;
    local lo = params[1] - 128;
    local hi = params[2] - 128;
    assert_le(params[0], 255);
    assert_le(params[1], 255);
    assert_le(params[2], 255);
    assert_le(lo, hi);
    assert params[3] = m;
    let (local pow2: felt*) = alloc();
    powers(pow2, 1, 2, 97);

    // The next layer's multipliers V (hidden) or the logit words' offsets (final), one per
    // position of a padded row.
    let (local x: felt*) = alloc();
    local rho2;
    if (hidden == 1) {
        blake2s(v_words, 8 * m, out + SEG_V_DIGEST);
        felts_of_words(v_words, m, x);
        memset(x + m, 0, 16 * chunks - m);
        let r2 = felt_of_words(out + LAYER_RHO2);
        assert rho2 = r2;
        tempvar range_check_ptr = range_check_ptr;
    } else {
        memset(out + SEG_V_DIGEST, 0, 8);
        memset(out + LAYER_RHO2, 0, 8);
        memset(out + LAYER_T2, 0, 8);
        // A padding position's output is clamp(zp) = zp; its word must be the zero value 2^31.
        fill(x, m, lo + I32_OFFSET);
        fill(x + m, 16 * chunks - m, I32_OFFSET - (zp - lo));
        assert rho2 = 0;
        tempvar range_check_ptr = range_check_ptr;
    }
    local range_check_ptr = range_check_ptr;
    let (local par: felt*) = alloc();
    channel_params(par, params + 4, m, pow2, x);
    padding_params(par + NPAR * m, 16 * chunks - m, pow2, x + m);

    let (local mult: felt*) = alloc();
    powers(mult, 1, sigma, 16 * chunks);
    let (rp0) = pow(rho, row0);
    local rp0 = rp0;
    local rp20;
    if (hidden == 1) {
        let (r20) = pow(rho2, row0);
        assert rp20 = r20;
        tempvar range_check_ptr = range_check_ptr;
    } else {
        assert rp20 = 0;
        tempvar range_check_ptr = range_check_ptr;
    }
    local range_check_ptr = range_check_ptr;

    local ychains: felt* = out + LAYER_CHAINS;
    local zchains: felt* = ychains + 16 * chunks;
    let (t, t2) = passes(
        hidden,
        0,
        chunks,
        mult,
        par,
        x,
        ychains,
        zchains,
        64 * row0,
        rows,
        rp0,
        rho,
        rp20,
        rho2,
        0,
        0,
        last,
        zp - lo,
        hi - lo,
        lo,
    );
    local t2 = t2;
    local range_check96_ptr: felt* = range_check96_ptr;
    write_felt(t, out + SEG_T);
    if (hidden == 1) {
        write_felt(t2, out + LAYER_T2);
        let output_ptr = zchains;
        return ();
    }
    let output_ptr = zchains + 16 * chunks;
    return ();
}

// fills n cells with value.
func fill(dst: felt*, n, value) {
    if (n == 0) {
        return ();
    }
    assert dst[0] = value;
    return fill(dst + 1, n - 1, value);
}

// Per output channel, the pass's seven parameters from (bias + 2^63 as two words, multiplier,
// shift): MUL = m, C = (bias - 2^31) m + 2^30, H = 2^(e-1) and G = 1 (both 0 if e = 0),
// POW = 2^e, SC = 2^(96-e), X as given.
func channel_params{range_check_ptr}(par: felt*, words: felt*, n, pow2: felt*, x: felt*) {
    alloc_locals;
    if (n == 0) {
        return ();
    }
    local e = words[3];
    assert_le(e, MAX_SHIFT);
    local mul = words[2];
    local bias = words[0] + 2 ** 32 * words[1] - 2 ** 63;
    assert par[0] = mul;
    assert par[1] = (bias - I32_OFFSET) * mul + 2 ** 30;
    if (e == 0) {
        assert par[2] = 0;
        assert par[3] = 0;
    } else {
        assert par[2] = pow2[30 + e];
        assert par[3] = 2 ** 31;
    }
    assert par[4] = pow2[31 + e];
    assert par[5] = pow2[65 - e];
    assert par[6] = x[0];
    return channel_params(par + NPAR, words + 4, n - 1, pow2, x + 1);
}

// Padding positions (their y is 0, which the product check enforces): a zero multiplier and
// no shift, so v = floor(2^30 / 2^31) = 0.
func padding_params(par: felt*, n, pow2: felt*, x: felt*) {
    if (n == 0) {
        return ();
    }
    assert par[0] = 0;
    assert par[1] = 2 ** 30;
    assert par[2] = 0;
    assert par[3] = 0;
    assert par[4] = 2 ** 31;
    assert par[5] = pow2[65];
    assert par[6] = x[0];
    return padding_params(par + NPAR, n - 1, pow2, x + 1);
}

// One pass per chunk column c < chunks; each chain's state before is read from chains[16 c ..]
// and its state after written to chains[16 c + 8 ..] (Y's; the logits' too when final).
func passes{range_check96_ptr: felt*}(
    hidden,
    c,
    chunks,
    mult: felt*,
    par: felt*,
    x: felt*,
    ychains: felt*,
    zchains: felt*,
    counter,
    rows,
    rp0,
    rho,
    rp20,
    rho2,
    t,
    t2,
    last,
    zpl,
    span,
    lo,
) -> (t: felt, t2: felt) {
    alloc_locals;
    if (c == chunks) {
        return (t=t, t2=t2);
    }
    // Stored words are y + 2^31: the pass adds -2^31 sum(sigma^i) per row; the next layer's
    // check sees z = z' + lo: lo sum(V_i) per row.
    let total = sum(mult, 16);
    local negc = -I32_OFFSET * total;
    local t_next;
    local t2_next;
    local state: felt*;
    local state2: felt*;
    if (hidden == 1) {
        let vsum = sum(x, 16);
        let (t_, state_, rc_, t2_) = layer_pass_hidden(
            mult,
            par,
            ychains,
            counter,
            rows,
            rp0,
            rho,
            t,
            negc,
            last,
            range_check96_ptr,
            zpl,
            span,
            0,
            rp20,
            rho2,
            t2,
            lo * vsum,
        );
        assert t_next = t_;
        assert t2_next = t2_;
        assert state = state_;
        assert state2 = zchains;
        tempvar range_check96_ptr: felt* = rc_;
    } else {
        let (t_, state_, rc_, state2_) = layer_pass_final(
            mult,
            par,
            ychains,
            counter,
            rows,
            rp0,
            rho,
            t,
            negc,
            last,
            range_check96_ptr,
            zpl,
            span,
            0,
            zchains,
        );
        assert t_next = t_;
        assert t2_next = 0;
        assert state = state_;
        assert state2 = state2_;
        tempvar range_check96_ptr: felt* = rc_;
    }
    local range_check96_ptr: felt* = range_check96_ptr;
    memcpy(ychains + 8, state, 8);
    if (hidden == 0) {
        memcpy(zchains + 8, state2, 8);
    }
    return passes(
        hidden,
        c + 1,
        chunks,
        mult + 16,
        par + 16 * NPAR,
        x + 16,
        ychains + 16,
        zchains + 16,
        counter,
        rows,
        rp0,
        rho,
        rp20,
        rho2,
        t_next,
        t2_next,
        last,
        zpl,
        span,
        lo,
    );
}
