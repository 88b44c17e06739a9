// What the batch programs (batch.cairo, batch_root.cairo, layer.cairo, infer_root.cairo) share:
// stream kinds, the segment output layout and field elements as u32 limbs. docs/batch.md and
// docs/inference.md describe the programs.

const KIND_WEIGHTS = 4;
const KIND_INPUTS = 5;
const KIND_OUTPUTS = 6;
const KIND_BATCH_ROOT = 7;
// Layer-outputs segments (layer.cairo): a hidden layer's and the last layer's.
const KIND_LAYER_HIDDEN = 8;
const KIND_LAYER_FINAL = 9;
// The root of an inference job (infer_root.cairo) and its model commitment's preimage.
const KIND_INFER_ROOT = 10;
const KIND_MODEL = 11;
// Segment output: 0 version, 1 kind, 2 M, 3 K, 4 B, then these.
const SEG_ROW0 = 5;
const SEG_ROWS = 6;
const SEG_LAST = 7;
const SEG_SIGMA = 8;
const SEG_RHO = 16;
const SEG_T = 24;
const SEG_V_DIGEST = 32;
const SEG_CHAINS = 40;
// Layer-outputs segment output: the segment header above (SEG_V_DIGEST holds the next layer's
// V digest), then these.
const LAYER_RHO2 = 40;
const LAYER_T2 = 48;
const LAYER_PARAMS = 56;
const LAYER_CHAINS = 64;

// sum_i w[i] 2^(32 i) over 8 words, reduced modulo the field prime.
func felt_of_words(w: felt*) -> felt {
    return w[0] + 2 ** 32 * (w[1] + 2 ** 32 * (w[2] + 2 ** 32 * (w[3] + 2 ** 32 * (
        w[4] + 2 ** 32 * (w[5] + 2 ** 32 * (w[6] + 2 ** 32 * w[7]))
    ))));
}

func sum(values: felt*, n) -> felt {
    if (n == 0) {
        return 0;
    }
    let rest = sum(values + 1, n - 1);
    return values[0] + rest;
}

func felts_of_words(words: felt*, n, dst: felt*) {
    if (n == 0) {
        return ();
    }
    let v = felt_of_words(words);
    assert dst[0] = v;
    return felts_of_words(words + 8, n - 1, dst + 1);
}

func powers(dst: felt*, cur, base, n) {
    if (n == 0) {
        return ();
    }
    assert dst[0] = cur;
    return powers(dst + 1, cur * base, base, n - 1);
}

// Writes value as 8 u32 limbs (a hint's choice; the sum is checked here, and whoever hashes the
// output range-checks each limb).
func write_felt(value, dst: felt*) {
    %{ starkscale_limbs %}
    let v = felt_of_words(dst);
    assert v = value;
    return ();
}
