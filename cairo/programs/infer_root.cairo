// The root of an inference job (docs/inference.md): consumes every segment of one batch of
// inputs run through a quantized MLP -- each layer's weights segments, the first layer's inputs
// segments and each layer's layer segments (layer.cairo) -- and states "the model with this
// commitment maps the inputs with this commitment to the logits with this commitment".
//
// Per layer it checks what batch_root.cairo checks for one product, with the layer's own
// challenges: the weights segments cover A's columns and give v = sigma^T A; the layer segments
// cover the batch's rows of Y, their chains linked, all with the same epilogue parameters. The
// product checks chain the layers: layer 0's t over the inputs segments equals its t over Y_0;
// for every later layer, the t2 that the previous layer's segments folded out of their int8
// outputs (with this layer's V and rho) equals this layer's t over its Y. The last layer's
// segments hash the logits, whose commitment is stated.
//
// model commitment = Blake2s(KIND_MODEL, L, per layer M, K, A commitment, epilogue digest);
// seed = Blake2s(KIND_INFER_ROOT, B, model commitment, X commitment, Y_0 .. Y_{L-1} commitments);
// layer i's sigma and rho are challenges 2i + 1 and 2i + 2 of the seed.
//
// Output: 0 version, 1 kind (10), 2 L, 3 B, 4..12 model commitment, 12..20 X commitment,
// 20..28 logits commitment, 28..36 seed, 36..36 + 2L each layer's M and K, then the child count
// and one fact (8 words) per child: every layer's weights segments (layer by layer, in row
// order), the inputs segments, then every layer's layer segments.
%builtins output pedersen range_check ecdsa bitwise ec_op keccak poseidon range_check96 add_mod mul_mod

from starkware.cairo.common.alloc import alloc
from starkware.cairo.common.math import assert_le
from starkware.cairo.common.memcpy import memcpy
from starkscale_tree import VERSION, HASH_WORDS, blake2s, initial_state
from starkscale_batch import (
    KIND_WEIGHTS,
    KIND_INPUTS,
    KIND_OUTPUTS,
    KIND_LAYER_HIDDEN,
    KIND_LAYER_FINAL,
    KIND_INFER_ROOT,
    KIND_MODEL,
    SEG_ROW0,
    SEG_ROWS,
    SEG_LAST,
    SEG_T,
    SEG_V_DIGEST,
    LAYER_RHO2,
    LAYER_T2,
    LAYER_PARAMS,
    LAYER_CHAINS,
    felt_of_words,
)
from starkscale_roots import (
    stream_segments,
    challenge,
    check_challenges,
    check_v_digests,
    check_initial,
    check_links,
    final_states,
)

const ROOT_MODEL = 4;
const ROOT_X = 12;
const ROOT_LOGITS = 20;
const ROOT_SEED = 28;
const ROOT_DIMS = 36;
// What the hint gives per layer: M, K, its weights segments, its layer segments, and the chunk
// columns of a weights row (64 int8 entries each) and of a row of Y (16 int32 entries each).
const L_M = 0;
const L_K = 1;
const L_NW = 2;
const L_NL = 3;
const L_CW = 4;
const L_CY = 5;
const LAYER_WORDS = 6;
const MAX_LAYERS = 64;

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
    local n_layers;
    local b;
    local layers: felt*;
    local n_x;
    local chunks_x;
    local children: felt**;
    %{ starkscale_infer_root_inputs %}
    local out: felt* = output_ptr;
    assert_le(1, n_layers);
    assert_le(n_layers, MAX_LAYERS);
    assert_le(1, n_x);
    assert out[0] = VERSION;
    assert out[1] = KIND_INFER_ROOT;
    assert out[2] = n_layers;
    assert out[3] = b;
    // Layer i + 1 takes layer i's M outputs as its K inputs.
    check_shapes(layers, n_layers, layers[L_K], out + ROOT_DIMS);
    local k0 = layers[L_K];
    local m0 = layers[L_M];
    assert_le(64 * chunks_x, k0 + 63);
    assert_le(k0, 64 * chunks_x);
    let n_w = sum_stride(layers + L_NW, n_layers);
    local n_w = n_w;
    let n_l = sum_stride(layers + L_NL, n_layers);
    local n_l = n_l;
    assert out[ROOT_DIMS + 2 * n_layers] = n_w + n_x + n_l;
    local facts: felt* = out + ROOT_DIMS + 2 * n_layers + 1;

    // Every layer's weights: its A commitment and the digest of v = sigma^T A's limbs.
    let (local a_comms: felt*) = alloc();
    let (local v_digests: felt*) = alloc();
    weights_layers(layers, n_layers, b, children, facts, a_comms, v_digests);

    // The inputs: B rows of layer 0's K entries, multiplied by layer 0's v.
    local xs: felt** = children + n_w;
    let (local preimage_x: felt*) = alloc();
    assert preimage_x[0] = KIND_INPUTS;
    assert preimage_x[1] = b;
    assert preimage_x[2] = k0;
    let (local unused: felt*) = alloc();
    let t_x = stream_segments(
        KIND_INPUTS, xs, n_x, m0, k0, b, chunks_x, xs[0], 0, facts + 8 * n_w, preimage_x + 3,
        unused, 0,
    );
    local t_x = t_x;
    blake2s(preimage_x, 3 + 8 * chunks_x, out + ROOT_X);
    check_v_digests(xs, n_x, v_digests);

    // Every layer's Y, the product checks chained from t_x, and the logits.
    let (local e_digests: felt*) = alloc();
    let (local y_comms: felt*) = alloc();
    local ls: felt** = xs + n_x;
    layer_layers(
        layers,
        n_layers,
        b,
        ls,
        facts + 8 * (n_w + n_x),
        e_digests,
        y_comms,
        v_digests + 8,
        t_x,
        out + ROOT_LOGITS,
    );

    let (local model: felt*) = alloc();
    assert model[0] = KIND_MODEL;
    assert model[1] = n_layers;
    model_preimage(layers, n_layers, a_comms, e_digests, model + 2);
    blake2s(model, 2 + 18 * n_layers, out + ROOT_MODEL);

    let (local preimage_s: felt*) = alloc();
    assert preimage_s[0] = KIND_INFER_ROOT;
    assert preimage_s[1] = b;
    memcpy(preimage_s + 2, out + ROOT_MODEL, 8);
    memcpy(preimage_s + 10, out + ROOT_X, 8);
    memcpy(preimage_s + 18, y_comms, 8 * n_layers);
    blake2s(preimage_s, 18 + 8 * n_layers, out + ROOT_SEED);

    // Every segment used its layer's challenges, fixed only now that everything is committed.
    let sigma0 = challenge(out + ROOT_SEED, 1);
    local sigma0 = sigma0;
    let rho0 = challenge(out + ROOT_SEED, 2);
    check_challenges(xs, n_x, sigma0, rho0);
    check_layer_challenges(layers, n_layers, 0, out + ROOT_SEED, children, ls);

    let output_ptr = facts + 8 * (n_w + n_x + n_l);
    return ();
}

func check_shapes(layers: felt*, left, k, dims: felt*) {
    if (left == 0) {
        return ();
    }
    assert layers[L_K] = k;
    assert dims[0] = layers[L_M];
    assert dims[1] = k;
    return check_shapes(layers + LAYER_WORDS, left - 1, layers[L_M], dims + 2);
}

func sum_stride(values: felt*, n) -> felt {
    if (n == 0) {
        return 0;
    }
    let rest = sum_stride(values + LAYER_WORDS, n - 1);
    return values[0] + rest;
}

// Layer by layer: the weights segments (K rows of M int8 entries, A's columns), A's commitment
// and the digest of v's limbs.
func weights_layers{range_check_ptr}(
    layers: felt*, left, b, children: felt**, facts: felt*, a_comms: felt*, v_digests: felt*
) {
    alloc_locals;
    if (left == 0) {
        return ();
    }
    local m = layers[L_M];
    local k = layers[L_K];
    local n = layers[L_NW];
    local chunks = layers[L_CW];
    assert_le(1, n);
    assert_le(64 * chunks, m + 63);
    assert_le(m, 64 * chunks);
    let (local v_words: felt*) = alloc();
    let (local preimage: felt*) = alloc();
    assert preimage[0] = KIND_WEIGHTS;
    assert preimage[1] = k;
    assert preimage[2] = m;
    stream_segments(
        KIND_WEIGHTS, children, n, m, k, b, chunks, children[0], 0, facts, preimage + 3, v_words, 0
    );
    blake2s(preimage, 3 + 8 * chunks, a_comms);
    blake2s(v_words, 8 * k, v_digests);
    return weights_layers(
        layers + LAYER_WORDS, left - 1, b, children + n, facts + 8 * n, a_comms + 8, v_digests + 8
    );
}

// Layer by layer: the layer segments over Y's B rows, whose t must equal t_in (what the previous
// layer's segments, or the inputs segments, folded with this layer's challenges); hidden layers
// pass their t2 on to the next. Writes each layer's epilogue digest and Y commitment, and the
// logits commitment after the last.
func layer_layers{range_check_ptr}(
    layers: felt*,
    left,
    b,
    children: felt**,
    facts: felt*,
    e_digests: felt*,
    y_comms: felt*,
    v_next: felt*,
    t_in,
    logits: felt*,
) {
    alloc_locals;
    local m = layers[L_M];
    local k = layers[L_K];
    local n = layers[L_NL];
    local chunks = layers[L_CY];
    assert_le(1, n);
    assert_le(16 * chunks, m + 15);
    assert_le(m, 16 * chunks);
    let (local preimage_y: felt*) = alloc();
    assert preimage_y[0] = KIND_OUTPUTS;
    assert preimage_y[1] = b;
    assert preimage_y[2] = m;
    let (local preimage_l: felt*) = alloc();
    assert preimage_l[0] = KIND_OUTPUTS;
    assert preimage_l[1] = b;
    assert preimage_l[2] = m;
    local kind;
    if (left == 1) {
        assert kind = KIND_LAYER_FINAL;
    } else {
        assert kind = KIND_LAYER_HIDDEN;
    }
    let (t, t2) = layer_segments(
        kind,
        children,
        n,
        m,
        k,
        b,
        chunks,
        children[0],
        0,
        facts,
        e_digests,
        v_next,
        preimage_y + 3,
        preimage_l + 3,
        0,
        0,
    );
    assert t = t_in;
    local t2 = t2;
    blake2s(preimage_y, 3 + 8 * chunks, y_comms);
    if (left == 1) {
        blake2s(preimage_l, 3 + 8 * chunks, logits);
        return ();
    }
    return layer_layers(
        layers + LAYER_WORDS,
        left - 1,
        b,
        children + n,
        facts + 8 * n,
        e_digests + 8,
        y_comms + 8,
        v_next + 8,
        t2,
        logits,
    );
}

// The n >= 1 segments of one layer, in row order from `row`, as stream_segments does for a
// stream, with every segment's epilogue digest equal to `params` and (hidden) its V digest equal
// to the next layer's `v_next`. A final segment carries its logits chains after Y's, so both
// sets are linked together. Returns the sums of t and t2.
func layer_segments{range_check_ptr}(
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
    params: felt*,
    v_next: felt*,
    y_digests: felt*,
    l_digests: felt*,
    t,
    t2,
) -> (felt, felt) {
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
    local columns;
    if (kind == KIND_LAYER_HIDDEN) {
        assert columns = chunks;
        memcpy(v_next, seg + SEG_V_DIGEST, 8);
    } else {
        assert columns = 2 * chunks;
    }
    if (row == 0) {
        let state = initial_state();
        check_initial(seg + LAYER_CHAINS, columns, state);
    } else {
        check_links(prev + HASH_WORDS + LAYER_CHAINS, seg + LAYER_CHAINS, columns);
    }
    // The first segment writes the layer's parameter digest; every later one must equal it.
    memcpy(params, seg + LAYER_PARAMS, 8);
    blake2s(entry, HASH_WORDS + LAYER_CHAINS + 16 * columns, facts);
    let tv = felt_of_words(seg + SEG_T);
    local t_sum = t + tv;
    let t2v = felt_of_words(seg + LAYER_T2);
    local t2_sum = t2 + t2v;
    if (n == 1) {
        final_states(seg + LAYER_CHAINS, chunks, y_digests);
        if (kind == KIND_LAYER_FINAL) {
            final_states(seg + LAYER_CHAINS + 16 * chunks, chunks, l_digests);
            return (t_sum, t2_sum);
        }
        return (t_sum, t2_sum);
    }
    return layer_segments(
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
        params,
        v_next,
        y_digests,
        l_digests,
        t_sum,
        t2_sum,
    );
}

func model_preimage(layers: felt*, left, a_comms: felt*, e_digests: felt*, dst: felt*) {
    if (left == 0) {
        return ();
    }
    assert dst[0] = layers[L_M];
    assert dst[1] = layers[L_K];
    memcpy(dst + 2, a_comms, 8);
    memcpy(dst + 10, e_digests, 8);
    return model_preimage(layers + LAYER_WORDS, left - 1, a_comms + 8, e_digests + 8, dst + 18);
}

// Layer i's segments used sigma_i and rho_i (challenges 2i + 1 and 2i + 2); a hidden layer's
// segments folded their outputs with the next layer's rho.
func check_layer_challenges{range_check_ptr}(
    layers: felt*, left, index, seed: felt*, weights: felt**, segments: felt**
) {
    alloc_locals;
    if (left == 0) {
        return ();
    }
    let sigma = challenge(seed, 2 * index + 1);
    local sigma = sigma;
    let rho = challenge(seed, 2 * index + 2);
    local rho = rho;
    local n_w = layers[L_NW];
    local n_l = layers[L_NL];
    check_challenges(weights, n_w, sigma, rho);
    check_challenges(segments, n_l, sigma, rho);
    if (left == 1) {
        return ();
    }
    let rho2 = challenge(seed, 2 * index + 4);
    check_rho2(segments, n_l, rho2);
    return check_layer_challenges(
        layers + LAYER_WORDS, left - 1, index + 1, seed, weights + n_w, segments + n_l
    );
}

func check_rho2(children: felt**, left, rho2) {
    if (left == 0) {
        return ();
    }
    let entry: felt* = children[0];
    let r = felt_of_words(entry + HASH_WORDS + LAYER_RHO2);
    assert r = rho2;
    return check_rho2(children + 1, left - 1, rho2);
}
