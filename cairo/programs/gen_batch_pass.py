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



# The layer-outputs pass (layer.cairo): an outputs pass (int32 accumulators y, 16 per row) that
# also applies the layer's epilogue to every entry -- bias, Q31 requantization with gemmlowp's
# two roundings, zero point, clamp -- and either folds the int8 results z into the next layer's
# product check (`hidden`: t2 += rho2^row * sum_i V_i z_i) or hashes them as the logits' int32
# words z + 2^31 into a second chain (`final`). docs/inference.md states the arithmetic and why
# each range check pins its value.
LAYER_ARGS_COMMON = ["m", "par", "state", "counter", "n", "rp", "rho", "t", "negc", "last", "rc",
                     "zpl", "span", "zero"]
LAYER_ARGS = {
    "hidden": LAYER_ARGS_COMMON + ["rp2", "rho2", "t2", "negc2"],
    "final": LAYER_ARGS_COMMON + ["state2"],
}
LAYER_POINTERS = ("m", "par", "state", "rc", "state2")
LAYER_CARRIED = {
    "hidden": ["P", "SP", "CTR", "N", "RP", "T", "RC", "RP2", "T2"],
    "final": ["P", "SP", "CTR", "N", "RP", "T", "RC", "SP2"],
}
# Per entry and pass, pushed by the prologue from `par`: the multiplier m_i, the constant
# C_i = (bias_i - 2^31) m_i + 2^30 (the stored offset and the first rounding's half folded in),
# H_i = 2^(30 + e_i) and G_i = 2^31 (0 and 0 when e_i = 0), POW_i = 2^(31 + e_i),
# SC_i = 2^(65 - e_i), and X_i: V_i (hidden: the next layer's multiplier) or the logit word's
# offset (final).
LAYER_PARAMS = ["MUL", "C", "H", "G", "POW", "SC", "X"]
LAYER_HINTS = ["neg", "v", "p", "z"]  # per entry, written by the row hint
LAYER_RC_PER_ENTRY = 7
SMALL = 2**50  # v is range-checked as v + 2^50 < 2^96


def gen_layer_pass(name, variant):
    args = LAYER_ARGS[variant]
    carried = LAYER_CARRIED[variant]
    arg = {a: -2 - len(args) + i for i, a in enumerate(args)}
    c = {a: -len(carried) + i for i, a in enumerate(carried)}
    npar = len(LAYER_PARAMS)
    f_fp = WORDS + WORDS * npar  # the multipliers, the parameters, then fp (via pass_get_fp)
    b0_rel = f_fp + 2 + len(carried)
    out = []
    emit = out.append

    def e(line):
        out.append("    " + line)

    def par(q, p):  # fp-relative cell of parameter p of entry q
        return r("fp", WORDS + npar * q + LAYER_PARAMS.index(p))

    cells = Cells(0)
    i_w = cells.take(WORDS)
    i_h = cells.take(len(LAYER_HINTS) * WORDS)
    per_entry = ["p0", "p1", "a", "a1", "a2", "w2", "gn", "s2", "s3", "vp", "r2", "r2s", "vb",
                 "av", "pa", "rz", "pz", "x"]
    i_e = cells.take(len(per_entry) * WORDS)
    i_zw = cells.take(WORDS) if variant == "final" else None
    i_p = cells.take(WORDS)
    i_s = cells.take(WORDS - 1)
    i_d, i_q, i_t, i_rp = (cells.take() for _ in range(4))
    if variant == "hidden":
        i_s2 = cells.take(WORDS - 1)
        i_d2, i_q2, i_t2, i_rp2 = (cells.take() for _ in range(4))
    i_n, i_ctr, i_rc = (cells.take() for _ in range(3))
    i_out = cells.take(8)
    if variant == "final":
        i_zptr = cells.take()
        i_out2 = cells.take(8)
    i_optr = cells.take()
    if variant == "final":
        i_optr2 = cells.take()  # the second opcode runs at ap = B + i_optr + 1
        end = i_optr2 + 1
    else:
        end = i_optr + 1
    iter_size = end + len(carried)
    rc_per_row = LAYER_RC_PER_ENTRY * WORDS

    typed = [f"{a}: felt*" if a in LAYER_POINTERS else a for a in args]
    returns = "t: felt, state: felt*, rc: felt*"
    returns += ", t2: felt" if variant == "hidden" else ", state2: felt*"
    emit(f"const {name.upper()}_ITER = {iter_size};")
    emit(f"const {name.upper()}_RC_PER_ROW = {rc_per_row};")
    emit("")
    emit(f"func {name}(" + ", ".join(typed) + f") -> ({returns}) {{")
    for t in range(WORDS):
        e(f"[ap] = [[fp - {-arg['m']}] + {t}], ap++;")
    for t in range(WORDS * npar):
        e(f"[ap] = [[fp - {-arg['par']}] + {t}], ap++;")
    e("call pass_get_fp;")
    e(f"[ap] = {r('fp', f_fp)} + {b0_rel}, ap++;")  # P
    sources = {"SP": "state", "CTR": "counter", "N": "n", "RP": "rp", "T": "t", "RC": "rc",
               "RP2": "rp2", "T2": "t2", "SP2": "state2"}
    for name_c in carried[1:]:
        e(f"[ap] = {r('fp', arg[sources[name_c]])}, ap++;")

    out.append(f"    {name}_row:")
    e("%{ starkscale_layer_row %}")

    def A(cell):
        return r("ap", cell)

    rc_idx = 0

    def rc(cell):
        nonlocal rc_idx
        e(f"{A(cell)} = [{A(c['RC'])} + {rc_idx}];")
        rc_idx += 1

    zero = r("fp", arg["zero"])
    for q in range(WORDS):
        w = i_w + q
        h = {n: i_h + len(LAYER_HINTS) * q + j for j, n in enumerate(LAYER_HINTS)}
        x = {n: i_e + len(per_entry) * q + j for j, n in enumerate(per_entry)}
        # Both roundings as one division: with p1 = w m + C = (y + bias) m + 2^30, gemmlowp's
        # q = floor(p1 / 2^31) and v = floor((q + 2^(e-1) - [q < 0]) / 2^e) make
        # v = floor((p1 + H - G neg) / 2^(31+e)), H = 2^(30+e), G = 2^31 (both 0 for e = 0),
        # and [q < 0] = [p1 < 0]. So s3 = p1 + H - G neg = v POW + r2, 0 <= r2 < POW = 2^(31+e).
        e(f"{A(x['p0'])} = {A(w)} * {par(q, 'MUL')};")
        e(f"{A(x['p1'])} = {A(x['p0'])} + {par(q, 'C')};")
        # neg = [p1 < 0]: a bit, and p1 - neg (2 p1 + 1) (p1, or -p1 - 1) is non-negative.
        e(f"{A(h['neg'])} = {A(h['neg'])} * {A(h['neg'])};")
        e(f"{A(x['a'])} = {A(x['p1'])} + {A(x['p1'])};")
        e(f"{A(x['a1'])} = {A(x['a'])} + 1;")
        e(f"{A(x['a2'])} = {A(h['neg'])} * {A(x['a1'])};")
        e(f"{A(x['p1'])} = {A(x['w2'])} + {A(x['a2'])};")
        rc(x["w2"])
        e(f"{A(x['gn'])} = {A(h['neg'])} * {par(q, 'G')};")
        e(f"{A(x['s2'])} = {A(x['p1'])} + {par(q, 'H')};")
        e(f"{A(x['s2'])} = {A(x['s3'])} + {A(x['gn'])};")
        e(f"{A(x['vp'])} = {A(h['v'])} * {par(q, 'POW')};")
        e(f"{A(x['s3'])} = {A(x['r2'])} + {A(x['vp'])};")
        e(f"{A(x['r2s'])} = {A(x['r2'])} * {par(q, 'SC')};")
        rc(x["r2s"])
        e(f"{A(x['vb'])} = {A(h['v'])} + {SMALL};")
        rc(x["vb"])
        # a = v + zp - lo; p = max(a, 0); z' = min(p, hi - lo); the output is z' + lo.
        e(f"{A(x['av'])} = {A(h['v'])} + {r('fp', arg['zpl'])};")
        rc(h["p"])
        e(f"{A(h['p'])} = {A(x['pa'])} + {A(x['av'])};")
        rc(x["pa"])
        e(f"{zero} = {A(h['p'])} * {A(x['pa'])};")
        e(f"{r('fp', arg['span'])} = {A(x['rz'])} + {A(h['z'])};")
        rc(x["rz"])
        e(f"{A(h['p'])} = {A(x['pz'])} + {A(h['z'])};")
        rc(x["pz"])
        e(f"{zero} = {A(x['rz'])} * {A(x['pz'])};")
        if variant == "hidden":
            e(f"{A(x['x'])} = {A(h['z'])} * {par(q, 'X')};")
        else:
            e(f"{A(i_zw + q)} = {A(h['z'])} + {par(q, 'X')};")
    assert rc_idx == rc_per_row

    def dot(products, sums, d, negc):
        e(f"{A(sums)} = {A(products[0])} + {A(products[1])};")
        for i in range(1, WORDS - 1):
            e(f"{A(sums + i)} = {A(sums + i - 1)} + {A(products[i + 1])};")
        e(f"{A(d)} = {A(sums + WORDS - 2)} + {r('fp', arg[negc])};")

    # This layer's product check: d = sum_i sigma^i y_i.
    for q in range(WORDS):
        e(f"{A(i_p + q)} = {A(i_w + q)} * {r('fp', q)};")
    dot([i_p + q for q in range(WORDS)], i_s, i_d, "negc")
    e(f"{A(i_q)} = {A(c['RP'])} * {A(i_d)};")
    e(f"{A(i_t)} = {A(c['T'])} + {A(i_q)};")
    e(f"{A(i_rp)} = {A(c['RP'])} * {r('fp', arg['rho'])};")
    if variant == "hidden":
        # The next layer's: d2 = sum_i V_i z_i (z = z' + lo: negc2 = lo sum_i V_i).
        xs = [i_e + len(per_entry) * q + per_entry.index("x") for q in range(WORDS)]
        dot(xs, i_s2, i_d2, "negc2")
        e(f"{A(i_q2)} = {A(c['RP2'])} * {A(i_d2)};")
        e(f"{A(i_t2)} = {A(c['T2'])} + {A(i_q2)};")
        e(f"{A(i_rp2)} = {A(c['RP2'])} * {r('fp', arg['rho2'])};")
    e(f"{A(i_n)} = {A(c['N'])} + (-1);")
    e(f"{A(i_ctr)} = {A(c['CTR'])} + 64;")
    e(f"{A(i_rc)} = {A(c['RC'])} + {rc_per_row};")
    e(f"{A(i_optr)} = {A(c['P'])} + {i_out};")
    if variant == "final":
        e(f"{A(i_zptr)} = {A(c['P'])} + {i_zw};")
        e(f"{A(i_optr2)} = {A(c['P'])} + {i_out2};")
    e(f"ap += {i_optr};")

    def rel(cell, at):  # B-relative cell, addressed while ap = B + at
        return cell - at

    def words(fin):
        ws = [hex(blake_word(rel(i_ctr, i_optr), rel(c["SP"], i_optr), rel(c["P"], i_optr), fin))]
        if variant == "final":
            ws.append(hex(blake_word(rel(i_ctr, i_optr2), rel(c["SP2"], i_optr2),
                                     rel(i_zptr, i_optr2), fin)))
        return ws

    e(f"jmp {name}_more if {A(rel(i_n, i_optr))} != 0;")
    e(f"jmp {name}_final if {r('fp', arg['last'])} != 0;")
    for wd in words(False):
        e(f"dw {wd};")
    e(f"jmp {name}_done;")
    out.append(f"    {name}_final:")
    for wd in words(True):
        e(f"dw {wd};")
    out.append(f"    {name}_done:")
    # ap = B + end: the return values.
    at = end
    e(f"[ap] = {A(i_t - at)}, ap++;")
    e(f"[ap] = {A(i_optr - at - 1)}, ap++;")
    e(f"[ap] = {A(i_rc - at - 2)}, ap++;")
    if variant == "hidden":
        e(f"[ap] = {A(i_t2 - at - 3)}, ap++;")
    else:
        e(f"[ap] = {A(i_optr2 - at - 3)}, ap++;")
    e("ret;")

    out.append(f"    {name}_more:")
    for wd in words(False):
        e(f"dw {wd};")
    src = {"SP": i_optr, "CTR": i_ctr, "N": i_n, "RP": i_rp, "T": i_t, "RC": i_rc}
    if variant == "hidden":
        src.update({"RP2": i_rp2, "T2": i_t2})
    else:
        src["SP2"] = i_optr2
    for i, name_c in enumerate(carried):
        at = end + i
        if name_c == "P":
            e(f"[ap] = {A(c['P'] - at)} + {iter_size}, ap++;")
        else:
            e(f"[ap] = {A(src[name_c] - at)}, ap++;")
    e(f"jmp {name}_row;")
    out.append("}")
    out.append("")
    return out


def gen_layer():
    out = [
        "// GENERATED by gen_batch_pass.py --layer -- do not edit; see docs/inference.md.",
        "//",
        "// One pass of the layer-outputs kernel (layer.cairo) over a chunk column of a layer's",
        "// int32 accumulators: per row, one Blake2s block of the column's chain, the product",
        "// check's dot product with sigma^i, and the epilogue of each of the 16 entries --",
        "// then layer_pass_hidden folds the outputs into the next layer's check and",
        "// layer_pass_final hashes them, as logits, into a second chain.",
        "//",
        "// Arguments: m (sigma^i for the column's 16 entries), par (7 parameters per entry,",
        "// LAYER_PARAMS in the generator), state (the chain before the first row), counter,",
        "// n >= 1 rows, rp = rho^(first row), rho, t, negc (added to every dot product), last,",
        "// rc (the next free range_check96 cell), zpl = zp - lo, span = hi - lo, zero (0);",
        "// hidden: rp2, rho2, t2, negc2 for the next layer's check; final: state2 (the logits",
        "// chain). Returns the new t, the chain's final state, the next free range_check96",
        "// cell, and t2 or the logits chain's final state.",
        "",
        "func pass_get_fp() {",
        "    // `call` leaves the caller's fp at [ap - 2]: the one constrained way to read fp.",
        "    ret;",
        "}",
        "",
    ]
    out += gen_layer_pass("layer_pass_hidden", "hidden")
    out += gen_layer_pass("layer_pass_final", "final")
    return "\n".join(out).rstrip() + "\n"


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
    import sys

    print(gen_layer() if sys.argv[1:] == ["--layer"] else gen(), end="")
