#!/usr/bin/env python3
"""onnxruntime reference outputs (int8 logits) for the quantized digits models.

Single model:
    python ort_reference.py MODEL.onnx X.npy OUT.npy [--opt disable|enable] [--labels Y.npy]

  Runs MODEL on X (float32 [N, 64]) with onnxruntime's CPU provider and writes
  OUT.npy: the model's *int8 logits* -- the int8 tensor that feeds the final
  DequantizeLinear (whose output is the graph output "logits"), shape [N, 10].
  --opt disable (default) = GraphOptimizationLevel.ORT_DISABLE_ALL,
  --opt enable            = GraphOptimizationLevel.ORT_ENABLE_ALL.
  Both levels are always run; the script prints whether they differ.

All fixtures:
    python ort_reference.py --all [DIR]

  For every digits-{gemm|matmul}-{qdq|qop}-{tensor|channel}.onnx in DIR
  (default: this script's directory) writes <stem>-int8-logits.npy (graph
  optimizations disabled) and digits-ort-reference.json: accuracies, the
  differences between optimizations disabled / enabled / enabled with
  session.x64quantprecision=1, and the agreement with int_reference.py (the
  pure-numpy integer interpreter).

  Why only the "disabled" output is stored: with optimizations enabled,
  onnxruntime rewrites QDQ models to u8 activations x s8 weights (QDQS8ToU8)
  and on x86 CPUs without VNNI the u8s8 kernel sums pairs of products in
  saturating int16 (vpmaddubsw), so its results depend on the CPU.  The
  QOperator models give the same result at both levels.

How the int8 tensor is obtained
-------------------------------
The model is run unmodified and its float output is *requantized* with the
scale s and zero point z of the final DequantizeLinear:
    q = clamp(round_half_even(f / s) + z, -128, 127)
This is exact: onnxruntime's DequantizeLinear computes f = fl32((q - z) * s)
with |q - z| <= 255, so f / s (taken in float64) = (q - z)(1 + d) with
|d| < 2^-23 and |(q - z) d| < 4e-5, far below the 0.5 needed to change the rounding.  The
script proves it element by element: it dequantizes q again and requires the
result to be bit-identical to f.  As a second, independent check it also runs a
copy of the model with the int8 tensor added as an extra graph output and
requires the two to be equal (the copy is used only for the check, because an
extra graph output can stop onnxruntime's graph optimizer from fusing nodes).
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "enable": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def final_dequant(model):
    """(int8 tensor name, scale f32, zero point int) of the DequantizeLinear producing the output."""
    out_name = model.graph.output[0].name
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if out_name in node.output:
            if node.op_type != "DequantizeLinear":
                raise SystemExit(f"output {out_name} is produced by {node.op_type}, "
                                 "not DequantizeLinear: not a quantized model")
            scale = inits[node.input[1]]
            zp = inits[node.input[2]]
            assert scale.size == 1 and zp.size == 1, "output must be per-tensor quantized"
            return node.input[0], np.float32(scale.reshape(())), int(zp.reshape(())), zp.dtype
    raise SystemExit(f"no node produces {out_name}")


def session(model_bytes, level, x64_precision=False):
    so = ort.SessionOptions()
    so.graph_optimization_level = LEVELS[level]
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if x64_precision:
        # Ask the optimizer to avoid u8s8 kernels that saturate on x86 CPUs without VNNI.
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def requantize(f, scale, zp, qdtype):
    info = np.iinfo(qdtype)
    q = np.rint(f.astype(np.float64) / np.float64(scale)) + zp   # rint = half to even
    q = np.clip(q, info.min, info.max).astype(qdtype)
    # Exactness proof: dequantizing q the way onnxruntime does must give f bit for bit.
    back = ((q.astype(np.int32) - zp).astype(np.float32) * scale).astype(np.float32)
    if not np.array_equal(back.view(np.uint32), f.astype(np.float32).view(np.uint32)):
        raise AssertionError("requantization is not exact for this output")
    return q


def int8_logits(model_path, x, level, x64_precision=False):
    """Int8 logits of the model at the given optimization level.

    With optimizations disabled the result is also checked against the int8
    tensor exposed as an extra graph output (must be identical).  With them
    enabled that copy is not comparable -- the extra output changes which nodes
    onnxruntime fuses -- so there the requantized output alone is used.
    """
    model = onnx.load(str(model_path))
    qname, scale, zp, qdtype = final_dequant(model)

    f = session(model.SerializeToString(), level, x64_precision).run(None, {"input": x})[0]
    q = requantize(f, scale, zp, qdtype)

    if level == "disable":
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(helper.make_tensor_value_info(
            qname, helper.np_dtype_to_tensor_dtype(np.dtype(qdtype)), None))
        q_direct = session(probe.SerializeToString(), level).run([qname], {"input": x})[0]
        if not np.array_equal(q, q_direct):
            raise AssertionError(f"{model_path}: requantized output differs from the "
                                 f"int8 tensor {qname}")
    return q


def both_levels(model_path, x):
    return int8_logits(model_path, x, "disable"), int8_logits(model_path, x, "enable")


def diff_summary(a, b):
    d = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return {"elements_differing": int((d > 0).sum()), "max_abs_diff": int(d.max()),
            "rows_differing": int((d.max(axis=1) > 0).sum()),
            "argmax_differing": int((a.argmax(1) != b.argmax(1)).sum())}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_all(directory):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import int_reference  # the pure-numpy integer interpreter next to this script

    directory = Path(directory)
    x = np.load(directory / "digits-test-x.npy")
    y = np.load(directory / "digits-test-labels.npy")
    float_logits = np.load(directory / "digits-test-float-logits.npy")
    report = {"n_test": int(len(y)),
              "float_test_accuracy": float((float_logits.argmax(1) == y).mean()),
              "onnxruntime": ort.__version__,
              "note": "int8 logits files are from onnxruntime with graph optimizations "
                      "disabled; 'enabled' results depend on the CPU (see the report)",
              "models": {}}
    for kind in ("gemm", "matmul"):
        for fmt in ("qdq", "qop"):
            for pc in ("tensor", "channel"):
                stem = f"digits-{kind}-{fmt}-{pc}"
                path = directory / f"{stem}.onnx"
                qd, qe = both_levels(path, x)
                try:
                    qx = int8_logits(path, x, "enable", x64_precision=True)
                    x64 = diff_summary(qd, qx)
                except Exception as e:  # noqa: BLE001 - recorded, not fatal
                    x64 = f"session creation failed: {str(e).splitlines()[0][:160]}"
                exact = {}
                for requant in ("f32", "exact"):
                    for add in ("ort-x86", "exact"):
                        qi = int_reference.run(str(path), x, requant, add)
                        exact[f"requant={requant},add={add}"] = diff_summary(qd, qi)
                out = directory / f"{stem}-int8-logits.npy"
                np.save(out, qd)
                report["models"][stem] = {
                    "accuracy": float((qd.argmax(1) == y).mean()),
                    "accuracy_opt_enabled": float((qe.argmax(1) == y).mean()),
                    "argmax_agreement_with_float": float(
                        (qd.argmax(1) == float_logits.argmax(1)).mean()),
                    "disabled_vs_enabled": diff_summary(qd, qe),
                    "disabled_vs_enabled_x64quantprecision": x64,
                    "disabled_vs_int_reference": exact,
                    "sha256_int8_logits": sha256(out),
                }
                r = report["models"][stem]
                print(f"{stem:28s} acc={r['accuracy']:.4f} acc(opt)={r['accuracy_opt_enabled']:.4f} "
                      f"noopt-vs-opt={r['disabled_vs_enabled']['elements_differing']} "
                      f"int_reference-diffs={[v['elements_differing'] for v in exact.values()]}")
    cross = {}
    for kind in ("gemm", "matmul"):
        for pc in ("tensor", "channel"):
            a = np.load(directory / f"digits-{kind}-qdq-{pc}-int8-logits.npy")
            b = np.load(directory / f"digits-{kind}-qop-{pc}-int8-logits.npy")
            cross[f"{kind}-{pc}: qdq vs qop"] = diff_summary(a, b)
    for fmt in ("qdq", "qop"):
        for pc in ("tensor", "channel"):
            a = np.load(directory / f"digits-gemm-{fmt}-{pc}-int8-logits.npy")
            b = np.load(directory / f"digits-matmul-{fmt}-{pc}-int8-logits.npy")
            cross[f"{fmt}-{pc}: gemm vs matmul"] = diff_summary(a, b)
    report["cross_model"] = cross
    for k, v in cross.items():
        print(f"{k:32s} {v}")
    (directory / "digits-ort-reference.json").write_text(json.dumps(report, indent=2) + "\n")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--all":
        run_all(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).resolve().parent)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("x")
    ap.add_argument("out")
    ap.add_argument("--opt", choices=sorted(LEVELS), default="disable",
                    help="optimization level whose result is written (default: disable)")
    ap.add_argument("--labels", help="int64 labels .npy: print argmax accuracy")
    args = ap.parse_args()

    x = np.load(args.x).astype(np.float32)
    qd, qe = both_levels(args.model, x)
    np.save(args.out, qd if args.opt == "disable" else qe)
    s = diff_summary(qd, qe)
    print(f"optimizations disabled vs enabled: "
          f"{'identical' if s['elements_differing'] == 0 else 'DIFFERENT'} {s}")
    if args.labels:
        y = np.load(args.labels)
        print(f"accuracy (disabled) {float((qd.argmax(1) == y).mean()):.4f}  "
              f"(enabled) {float((qe.argmax(1) == y).mean()):.4f}")


if __name__ == "__main__":
    main()
