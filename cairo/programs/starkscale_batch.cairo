// What the batch programs (batch.cairo, batch_root.cairo) share: stream kinds, the segment
// output layout and field elements as u32 limbs. docs/batch.md describes both programs.

const KIND_WEIGHTS = 4;
const KIND_INPUTS = 5;
const KIND_OUTPUTS = 6;
const KIND_BATCH_ROOT = 7;
// Segment output: 0 version, 1 kind, 2 M, 3 K, 4 B, then these.
const SEG_ROW0 = 5;
const SEG_ROWS = 6;
const SEG_LAST = 7;
const SEG_SIGMA = 8;
const SEG_RHO = 16;
const SEG_T = 24;
const SEG_V_DIGEST = 32;
const SEG_CHAINS = 40;

// sum_i w[i] 2^(32 i) over 8 words, reduced modulo the field prime.
func felt_of_words(w: felt*) -> felt {
    return w[0] + 2 ** 32 * (w[1] + 2 ** 32 * (w[2] + 2 ** 32 * (w[3] + 2 ** 32 * (
        w[4] + 2 ** 32 * (w[5] + 2 ** 32 * (w[6] + 2 ** 32 * w[7]))
    ))));
}
