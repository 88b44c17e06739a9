#!/usr/bin/env python3
"""Generates batch_pass.cairo: the hot loops of the batch segment kernel (Cairo 0, raw assembly).

One *pass* walks the rows of a segment for one chunk column (16 words of every row). Per row it
hashes the 16 words as the next Blake2s block of the column's chain, multiplies the entries they
hold by the pass's multipliers, sums them, and folds the row's dot product into two running
results: a rho-weighted sum over rows and a per-row accumulator carried across passes.
batch.cairo calls one pass per chunk column; docs/batch.md explains what it proves.

Two variants:
- `batch_pass32`: int32 entries, one per word (value + 2^31): 16 entries per row and pass.
- `batch_pass8`: int8 entries, four per word (bytes value + 128, little-endian): 64 entries.
  Each word is split into its bytes with three range-checked divisions by 256 (range_check96
  cells), which makes the split unique because the Blake2s opcode range-checks the word to u32.

Why generated and raw: every instruction addresses its operands fp- or ap-relative, so an entry
costs one multiplication and one addition; and cairo-lang 0.14 has no syntax for the Blake2s
opcode (it is emitted as a `dw` word), after which the compiler tracks no references.

Run `python3 cairo/programs/gen_batch_pass.py > cairo/programs/batch_pass.cairo`
(scripts/compile-cairo.sh does this).
"""

from gen_map import Cells, blake_word, r

WORDS = 16  # words per row and pass: one Blake2s block

# Arguments, fp-relative (pushed in this order by the caller).
ARGS = ["m", "state", "counter", "n", "rp", "rho", "t", "acc_in", "stride", "negc", "last", "rc"]
ARG = {name: -2 - len(ARGS) + i for i, name in enumerate(ARGS)}
POINTERS = ("m", "state", "acc_in", "rc")

# Loop-carried values, at [B - 8] .. [B - 1] for the iteration based at B = ap:
# P (the address B), SP (the chain state pointer), CTR (bytes hashed before this block),
# N (rows left, this one included), RP (rho^row), T (weighted sum), AIN (accumulator in),
# RC (next free range_check96 cell).
CARRIED = ["P", "SP", "CTR", "N", "RP", "T", "AIN", "RC"]
C = {name: -len(CARRIED) + i for i, name in enumerate(CARRIED)}

# Bytes of a word after dividing off the low ones: r1 = w >> 8, r2 = w >> 16, b3 = w >> 24.
HELPERS = 3
SPLIT_CELLS = 9  # per word: z1 b0 c0 z2 b1 c1 z3 b2 c2
RC_PER_WORD = 6  # c0 r1 c1 r2 c2 b3
BYTE_SCALE = 2**88  # b < 256  <=>  b * 2^88 < 2^96


def gen_pass(name, packed):
    entries = WORDS * (4 if packed else 1)
    f_fp = entries  # the callee's frame: the multipliers, then fp (via `call pass_get_fp`)
    b0_rel = entries + 2 + len(CARRIED)  # the first iteration's base, fp-relative
    out = []
    emit = out.append

    def e(line):
        out.append("    " + line)

    # Iteration cells, B-relative.
    cells = Cells(0)
    i_w = cells.take(WORDS)  # the row's words (hint)
    i_h = cells.take(HELPERS * WORDS) if packed else None  # helpers (hint)
    i_split = cells.take(SPLIT_CELLS * WORDS) if packed else None
    i_p = cells.take(entries)
    i_s = cells.take(entries - 1)
    i_d = cells.take()
    i_q, i_t, i_rp, i_a0, i_acc, i_ain, i_n, i_ctr, i_rc = (cells.take() for _ in range(9))
    i_out = cells.take(8)
    i_optr = cells.take()
    end = i_optr + 1  # ap after the opcode
    iter_size = end + len(CARRIED)

    typed = [f"{a}: felt*" if a in POINTERS else a for a in ARGS]
    emit(f"const {name.upper()}_ITER = {iter_size};")
    emit(f"const {name.upper()}_ENTRIES = {entries};")
    emit("")
    emit(
        f"func {name}("
        + ", ".join(typed)
        + ") -> (t: felt, acc: felt*, state: felt*, rc: felt*) {"
    )
    for t in range(entries):
        e(f"[ap] = [[fp - {-ARG['m']}] + {t}], ap++;")
    e("call pass_get_fp;")
    e(f"[ap] = {r('fp', f_fp)} + {b0_rel}, ap++;")  # P
    for carried, arg in zip(CARRIED[1:], ["state", "counter", "n", "rp", "t", "acc_in", "rc"]):
        e(f"[ap] = {r('fp', ARG[arg])}, ap++;")

    out.append(f"    {name}_row:")
    e("%{ starkscale_batch_row %}")
    values = []  # (cell, multiplier index) per entry
    if packed:
        rc_idx = 0

        def rc_cell(cell):
            nonlocal rc_idx
            e(f"{r('ap', cell)} = [{r('ap', C['RC'])} + {rc_idx}];")
            rc_idx += 1

        for q in range(WORDS):
            w = i_w + q
            r1, r2, b3 = (i_h + HELPERS * q + j for j in range(HELPERS))
            z1, b0, c0, z2, b1, c1, z3, b2, c2 = (i_split + SPLIT_CELLS * q + j for j in range(9))
            for hi, lo, z, byte, scaled in ((r1, w, z1, b0, c0), (r2, r1, z2, b1, c1), (b3, r2, z3, b2, c2)):
                # byte = lo - 256 hi, range-checked through byte * 2^88 < 2^96 and hi < 2^96.
                e(f"{r('ap', z)} = {r('ap', hi)} * (-256);")
                e(f"{r('ap', byte)} = {r('ap', lo)} + {r('ap', z)};")
                e(f"{r('ap', scaled)} = {r('ap', byte)} * {BYTE_SCALE};")
                rc_cell(scaled)
                rc_cell(hi)
            values += [(b0, 4 * q), (b1, 4 * q + 1), (b2, 4 * q + 2), (b3, 4 * q + 3)]
        assert rc_idx == RC_PER_WORD * WORDS
    else:
        values = [(i_w + q, q) for q in range(WORDS)]
    for cell, idx in values:
        e(f"{r('ap', i_p + idx)} = {r('ap', cell)} * {r('fp', idx)};")
    e(f"{r('ap', i_s)} = {r('ap', i_p)} + {r('ap', i_p + 1)};")
    for i in range(1, entries - 1):
        e(f"{r('ap', i_s + i)} = {r('ap', i_s + i - 1)} + {r('ap', i_p + i + 1)};")
    e(f"{r('ap', i_d)} = {r('ap', i_s + entries - 2)} + {r('fp', ARG['negc'])};")
    e(f"{r('ap', i_q)} = {r('ap', C['RP'])} * {r('ap', i_d)};")
    e(f"{r('ap', i_t)} = {r('ap', C['T'])} + {r('ap', i_q)};")
    e(f"{r('ap', i_rp)} = {r('ap', C['RP'])} * {r('fp', ARG['rho'])};")
    e(f"{r('ap', i_a0)} = [{r('ap', C['AIN'])}];")
    e(f"{r('ap', i_acc)} = {r('ap', i_a0)} + {r('ap', i_d)};")
    e(f"{r('ap', i_ain)} = {r('ap', C['AIN'])} + {r('fp', ARG['stride'])};")
    e(f"{r('ap', i_n)} = {r('ap', C['N'])} + (-1);")
    e(f"{r('ap', i_ctr)} = {r('ap', C['CTR'])} + 64;")
    e(f"{r('ap', i_rc)} = {r('ap', C['RC'])} + {RC_PER_WORD * WORDS if packed else 0};")
    e(f"{r('ap', i_optr)} = {r('ap', C['P'])} + {i_out};")
    e(f"ap += {i_optr};")

    def rel(cell):  # B-relative cell, addressed while ap = B + i_optr
        return cell - i_optr

    def word(fin):
        return hex(blake_word(rel(i_ctr), rel(C["SP"]), rel(C["P"]), fin))

    e(f"jmp {name}_more if {r('ap', rel(i_n))} != 0;")
    e(f"jmp {name}_final if {r('fp', ARG['last'])} != 0;")
    e(f"dw {word(False)};")
    e(f"jmp {name}_done;")
    out.append(f"    {name}_final:")
    e(f"dw {word(True)};")
    out.append(f"    {name}_done:")
    # ap = B + end: the return values.
    e(f"[ap] = {r('ap', i_t - end)}, ap++;")
    e(f"[ap] = {r('fp', f_fp)} + {b0_rel + i_acc}, ap++;")
    e(f"[ap] = {r('ap', i_optr - end - 2)}, ap++;")
    e(f"[ap] = {r('ap', i_rc - end - 3)}, ap++;")
    e("ret;")

    out.append(f"    {name}_more:")
    e(f"dw {word(False)};")
    # Push the carried values so that they land at [B' - 8] .. [B' - 1], B' = B + iter_size.
    sources = {"SP": i_optr, "CTR": i_ctr, "N": i_n, "RP": i_rp, "T": i_t, "AIN": i_ain, "RC": i_rc}
    for i, carried in enumerate(CARRIED):
        at = end + i  # B-relative ap before this push
        if carried == "P":
            e(f"[ap] = {r('ap', C['P'] - at)} + {iter_size}, ap++;")
        else:
            e(f"[ap] = {r('ap', sources[carried] - at)}, ap++;")
    e(f"jmp {name}_row;")
    out.append("}")
    out.append("")
    return out


def gen():
    out = [
        "// GENERATED by gen_batch_pass.py -- do not edit; see docs/batch.md.",
        "//",
        "// One pass of the batch segment kernel over a chunk column: per row, one Blake2s block",
        "// of the column's chain, the dot product of its entries with the pass's multipliers and",
        "// the running results. batch_pass32: 16 int32 entries per row (one per word);",
        "// batch_pass8: 64 int8 entries (four per word, split with range checks).",
        "//",
        "// Arguments: m (the multipliers), state (8 words: the chain before the first row),",
        "// counter (bytes the chain hashed before it), n >= 1 rows, rp = rho^(first row), rho,",
        "// t (running weighted sum), acc_in (the first row's accumulator; the next rows' follow",
        "// every `stride` cells), negc (added to every dot product), last (finalize the chain's",
        "// last block), rc (the next free range_check96 cell). Returns t + sum_r rp rho^r d_r, the",
        "// address of the first row's new accumulator (rows follow every *_ITER cells), the",
        "// address of the chain's final state and the next free range_check96 cell.",
        "",
        "func pass_get_fp() {",
        "    // `call` leaves the caller's fp at [ap - 2]: the one constrained way to read fp.",
        "    ret;",
        "}",
        "",
    ]
    out += gen_pass("batch_pass32", packed=False)
    out += gen_pass("batch_pass8", packed=True)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(gen(), end="")
