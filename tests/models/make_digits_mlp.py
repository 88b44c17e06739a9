#!/usr/bin/env python3
"""Build the small quantized digits MLP fixtures used by STARKScale's ONNX importer tests.

What it does (deterministic, no network at run time -- the digits data set ships
inside scikit-learn):

  1. loads sklearn.datasets.load_digits (1797 8x8 images, 10 classes), splits it
     train/test with a fixed seed (test_size=0.25, random_state=0, stratified) and
     scales the features to [0, 1] by dividing by 16;
  2. trains MLPClassifier(hidden_layer_sizes=(32,), activation='relu',
     random_state=0) -- a 64 -> 32 -> 10 network;
  3. writes two float ONNX graphs computing the *logits* (no softmax, no ZipMap)
     from the trained coefs_/intercepts_:
        gemm   : Gemm(transB=1) -> Relu -> Gemm(transB=1)
        matmul : MatMul -> Add -> Relu -> MatMul -> Add
     input "input" float32 [N, 64] (dynamic N), output "logits" float32 [N, 10];
  4. quantizes each float graph with onnxruntime.quantization.quantize_static
     (int8 activations, int8 weights, MinMax calibration on the training split)
     in QDQ and QOperator format, per-tensor and per-channel:
        digits-{gemm|matmul}-{qdq|qop}-{tensor|channel}.onnx   (8 models)
  5. writes the test split (digits-test-x.npy float32 [N,64],
     digits-test-labels.npy int64 [N]), the float logits of the test split
     (digits-test-float-logits.npy) and digits-meta.json (accuracies, versions,
     sha256 of every file).

Usage:
    python make_digits_mlp.py [OUT_DIR]        (default: the directory of this script)

Run it from the venv described in README.md next to it (pinned onnx,
onnxruntime, scikit-learn, numpy).  Afterwards run
    python ort_reference.py --all OUT_DIR
to produce the int8 reference logits of every quantized model.
"""

import os

# Single-threaded BLAS / OpenMP so that training and calibration are bit-for-bit
# reproducible (multi-threaded reductions may sum in a different order).  This
# must happen before numpy is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import hashlib
import json
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

SEED = 0
OPSET = 17          # default-domain opset of the float graphs (quantize_static keeps it)
IR_VERSION = 8      # IR version that introduced opset 17; read by every onnxruntime >= 1.12
MAX_ITER = 500      # adam epochs; enough for the 64-32-10 net to converge on digits


# --------------------------------------------------------------------------- data
def load_data():
    """Digits, fixed stratified split, features scaled to [0, 1]."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)          # pixel values 0..16 -> [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y)
    return (np.ascontiguousarray(x_train), np.ascontiguousarray(x_test),
            np.ascontiguousarray(y_train), np.ascontiguousarray(y_test))


def train(x_train, y_train):
    clf = MLPClassifier(hidden_layer_sizes=(32,), activation="relu",
                        random_state=SEED, max_iter=MAX_ITER)
    with warnings.catch_warnings():
        # If it stops at MAX_ITER without meeting tol that is fine: the result is
        # still deterministic.  Record it in the metadata instead of warning.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)
    return clf


def numpy_logits(clf, x):
    """Reference float logits: relu(x W1 + b1) W2 + b2 in float32 (no softmax)."""
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    h = np.maximum(x @ w1 + b1, 0.0)
    return h @ w2 + b2


# --------------------------------------------------------------------------- float graphs
def _io():
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    return inp, out


def _model(graph):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="starkscale-make_digits_mlp",
        producer_version="1",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build_gemm_model(clf):
    """Gemm(transB=1) + Relu + Gemm(transB=1).

    sklearn stores coefs_[i] as [in, out]; with transB=1 the Gemm B operand is
    [out, in] (PyTorch nn.Linear layout), so the weights are stored transposed.
    """
    w1 = clf.coefs_[0].T.astype(np.float32)          # [32, 64]
    w2 = clf.coefs_[1].T.astype(np.float32)          # [10, 32]
    b1 = clf.intercepts_[0].astype(np.float32)       # [32]
    b2 = clf.intercepts_[1].astype(np.float32)       # [10]
    inits = [numpy_helper.from_array(np.ascontiguousarray(a), n)
             for a, n in ((w1, "fc1.weight"), (b1, "fc1.bias"),
                          (w2, "fc2.weight"), (b2, "fc2.bias"))]
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["fc1_out"],
                         name="fc1", alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Relu", ["fc1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Gemm", ["relu1_out", "fc2.weight", "fc2.bias"], ["logits"],
                         name="fc2", alpha=1.0, beta=1.0, transB=1),
    ]
    inp, out = _io()
    return _model(helper.make_graph(nodes, "digits_mlp_gemm", [inp], [out], inits))


def build_matmul_model(clf):
    """MatMul + Add + Relu + MatMul + Add, weights in sklearn's [in, out] layout."""
    w1 = clf.coefs_[0].astype(np.float32)            # [64, 32]
    w2 = clf.coefs_[1].astype(np.float32)            # [32, 10]
    b1 = clf.intercepts_[0].astype(np.float32)       # [32]
    b2 = clf.intercepts_[1].astype(np.float32)       # [10]
    inits = [numpy_helper.from_array(np.ascontiguousarray(a), n)
             for a, n in ((w1, "fc1.weight"), (b1, "fc1.bias"),
                          (w2, "fc2.weight"), (b2, "fc2.bias"))]
    nodes = [
        helper.make_node("MatMul", ["input", "fc1.weight"], ["fc1_mm"], name="fc1_matmul"),
        helper.make_node("Add", ["fc1_mm", "fc1.bias"], ["fc1_out"], name="fc1_add"),
        helper.make_node("Relu", ["fc1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("MatMul", ["relu1_out", "fc2.weight"], ["fc2_mm"], name="fc2_matmul"),
        helper.make_node("Add", ["fc2_mm", "fc2.bias"], ["logits"], name="fc2_add"),
    ]
    inp, out = _io()
    return _model(helper.make_graph(nodes, "digits_mlp_matmul", [inp], [out], inits))


# --------------------------------------------------------------------------- quantization
class DigitsCalibrationReader(CalibrationDataReader):
    """Feeds the whole training split, in fixed-size batches, in a fixed order."""

    def __init__(self, x, batch=128):
        self._batches = [x[i:i + batch] for i in range(0, len(x), batch)]
        self._it = iter(self._batches)

    def get_next(self):
        b = next(self._it, None)
        return None if b is None else {"input": b}

    def rewind(self):
        self._it = iter(self._batches)


def quantize(float_model, out_path, x_train, quant_format, per_channel):
    # quantize_static logs advice on the root logger ("consider pre-processing",
    # "use QDQ for s8s8 on x64"); pre-processing is skipped on purpose -- its
    # optimizer could fuse MatMul + Add into Gemm and change the graphs.
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "float.onnx"
        onnx.save(float_model, src)
        quantize_static(
            str(src), str(out_path),
            calibration_data_reader=DigitsCalibrationReader(x_train),
            quant_format=quant_format,
            per_channel=per_channel,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    # Re-load and check; strip nothing -- the file is kept exactly as produced.
    onnx.checker.check_model(onnx.load(str(out_path)))


def run_float(path, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- main
def main():
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)

    x_train, x_test, y_train, y_test = load_data()
    clf = train(x_train, y_train)

    ref_logits = numpy_logits(clf, x_test)
    # Our hand-written logits must agree with sklearn's own prediction.
    assert (ref_logits.argmax(1) == clf.predict(x_test)).all()
    float_acc = float((ref_logits.argmax(1) == y_test).mean())

    np.save(out_dir / "digits-test-x.npy", x_test.astype(np.float32))
    np.save(out_dir / "digits-test-labels.npy", y_test.astype(np.int64))
    np.save(out_dir / "digits-test-float-logits.npy", ref_logits.astype(np.float32))

    files = {}
    float_models = {"gemm": build_gemm_model(clf), "matmul": build_matmul_model(clf)}
    for kind, model in float_models.items():
        fpath = out_dir / f"digits-{kind}-float.onnx"
        onnx.save(model, fpath)
        got = run_float(fpath, x_test)
        assert np.allclose(got, ref_logits, atol=1e-4), f"float {kind} mismatch"
        files[fpath.name] = sha256(fpath)

        for fmt_name, fmt in (("qdq", QuantFormat.QDQ), ("qop", QuantFormat.QOperator)):
            for pc_name, pc in (("tensor", False), ("channel", True)):
                qpath = out_dir / f"digits-{kind}-{fmt_name}-{pc_name}.onnx"
                quantize(model, qpath, x_train, fmt, pc)
                files[qpath.name] = sha256(qpath)
                print(f"wrote {qpath.name} ({qpath.stat().st_size} bytes)")

    for n in ("digits-test-x.npy", "digits-test-labels.npy", "digits-test-float-logits.npy"):
        files[n] = sha256(out_dir / n)

    meta = {
        "dataset": "sklearn.datasets.load_digits, features/16, "
                   "train_test_split(test_size=0.25, random_state=0, stratify=y)",
        "n_train": int(len(x_train)),
        "n_test": int(len(x_test)),
        "mlp": {"hidden_layer_sizes": [32], "activation": "relu",
                "random_state": SEED, "max_iter": MAX_ITER,
                "n_iter_": int(clf.n_iter_),
                "converged": bool(clf.n_iter_ < MAX_ITER)},
        "float_test_accuracy": float_acc,
        "float_train_accuracy": float((numpy_logits(clf, x_train).argmax(1) == y_train).mean()),
        "versions": {"numpy": np.__version__, "onnx": onnx.__version__,
                     "onnxruntime": ort.__version__, "scikit-learn": sklearn.__version__},
        "sha256": dict(sorted(files.items())),
    }
    (out_dir / "digits-meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"float test accuracy: {float_acc:.4f}  (n_iter_={clf.n_iter_})")


if __name__ == "__main__":
    main()
