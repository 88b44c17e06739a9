#!/usr/bin/env python3
"""Pure-numpy integer interpreter for the quantized digits models (no onnxruntime).

This is an executable statement of the importer's semantics (docs/inference.md): it reads
a QDQ or QOperator model produced by make_digits_mlp.py, reduces it to a list of
integer layers, and runs them with explicit integer arithmetic.

Usage:
    python int_reference.py MODEL.onnx X.npy OUT.npy [--requant f32|exact] [--add ort-x86|exact]

Writes the int8 logits (the tensor feeding the final DequantizeLinear).

Semantics (all scales are float32 values read from the model):

  quantize(x; s, z)          = sat8(round_half_even(fl32(x / s)) + z)
  linear layer (QGemm, QLinearMatMul, or DQ -> Gemm/MatMul -> Q):
      acc[n, j] = sum_k (a[n, k] - za) * (w[k, j] - zw[j])  (+ bias_i32[j])   exact int32
      M[j]      = fl32(fl32(sa * sw[j]) / sy)
      y[n, j]   = sat8(round_half_even(fl32(fl32(acc) * M[j])) + zy)         --requant f32 (onnxruntime)
      y[n, j]   = sat8(round_half_even(acc * sa * sw[j] / sy) + zy)          --requant exact (real arithmetic)
  add layer (QLinearAdd, or DQ + DQ -> Add -> Q), b a per-tensor int8 constant vector:
      --add ort-x86 (onnxruntime's x86 MLAS kernel, all in float32):
          rA = fl32(sa / sy), rB = fl32(sb / sy)
          F  = fl32(fl32(zy) - fl32(fl32(rA * za) + fl32(rB * zb)))
          y  = sat8(round_half_even(fl32(fl32(F + fl32(a * rA)) + fl32(b * rB))))
      --add exact:
          y  = sat8(round_half_even((sa * (a - za) + sb * (b - zb)) / sy) + zy)

  sat8 clamps to [-128, 127].  Relu does not appear: it was folded into the
  output zero point (-128) of the first layer, so sat8 performs it.
"""

import argparse
import sys
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

F32 = np.float32


def sat8(v):
    return np.clip(v, -128, 127).astype(np.int8)


def quantize(x, s, z):
    return sat8(np.rint((x.astype(F32) / F32(s)).astype(F32)).astype(np.int64) + int(z))


@dataclass
class QParams:
    scale: np.ndarray   # float32, scalar or [C]
    zp: np.ndarray      # int, scalar or [C]


@dataclass
class Linear:
    name: str
    w: np.ndarray             # int8, ALWAYS [K, C] (in, out) here; transposed from Gemm's [C, K]
    w_q: QParams              # scale/zp per tensor ([]) or per output channel ([C])
    bias: np.ndarray | None   # int32 [C] with implied scale sa * sw (None for MatMul)
    a_q: QParams
    y_q: QParams


@dataclass
class AddConst:
    name: str
    b: np.ndarray             # int8 [C]
    b_q: QParams
    a_q: QParams
    y_q: QParams


def load_layers(path):
    """Reduce a QDQ or QOperator model to (input QParams, [layers], output QParams)."""
    m = onnx.load(path)
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = list(m.graph.node)
    producer = {o: n for n in nodes for o in n.output}

    def qp(sname, zname):
        return QParams(init[sname].astype(F32), init[zname].astype(np.int64))

    layers = []
    in_q = out_q = None
    qdq = not any(n.domain == "com.microsoft" or n.op_type.startswith("QLinear") for n in nodes)

    if not qdq:
        for n in nodes:
            i = n.input
            if n.op_type == "QuantizeLinear":
                in_q = qp(i[1], i[2])
            elif n.op_type == "QGemm":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                assert attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0
                w = init[i[3]]
                if attrs.get("transB", 0):
                    w = w.T                                   # [C, K] -> [K, C]
                layers.append(Linear(n.name, w, qp(i[4], i[5]),
                                     init[i[6]].astype(np.int64) if len(i) > 6 and i[6] else None,
                                     qp(i[1], i[2]), qp(i[7], i[8])))
            elif n.op_type == "QLinearMatMul":
                layers.append(Linear(n.name, init[i[3]], qp(i[4], i[5]), None,
                                     qp(i[1], i[2]), qp(i[6], i[7])))
            elif n.op_type == "QLinearAdd":
                layers.append(AddConst(n.name, init[i[3]], qp(i[4], i[5]),
                                       qp(i[1], i[2]), qp(i[6], i[7])))
            elif n.op_type == "DequantizeLinear":
                out_q = qp(n.input[1], n.input[2])
            else:
                raise ValueError(f"unexpected node {n.op_type}")
        return in_q, layers, out_q

    # QDQ: DequantizeLinear of an initializer = quantized constant; Q -> DQ pairs
    # carry activations; every Gemm / MatMul / Add is followed by one QuantizeLinear.
    consumer = {}
    for n in nodes:
        for x in n.input:
            consumer.setdefault(x, []).append(n)

    def dq_const(name):
        n = producer[name]
        assert n.op_type == "DequantizeLinear" and n.input[0] in init
        return init[n.input[0]], qp(n.input[1], n.input[2])

    def dq_act(name):
        n = producer[name]
        assert n.op_type == "DequantizeLinear" and n.input[0] not in init
        return qp(n.input[1], n.input[2])

    def next_q(name):
        (q,) = consumer[name]
        assert q.op_type == "QuantizeLinear"
        return qp(q.input[1], q.input[2])

    for n in nodes:
        if n.op_type == "QuantizeLinear" and n.input[0] == m.graph.input[0].name:
            in_q = qp(n.input[1], n.input[2])
        elif n.op_type in ("Gemm", "MatMul"):
            a_q = dq_act(n.input[0])
            w, w_q = dq_const(n.input[1])
            bias = None
            if n.op_type == "Gemm":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                assert attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 \
                    and attrs.get("beta", 1.0) == 1.0
                if attrs.get("transB", 0):
                    w = w.T
                if len(n.input) > 2:
                    b, b_q = dq_const(n.input[2])
                    # The int32 bias must be in the accumulator's scale sa * sw, zero point 0.
                    assert b.dtype == np.int32 and not b_q.zp.any()
                    assert np.array_equal(b_q.scale.reshape(-1),
                                          (a_q.scale * w_q.scale).astype(F32).reshape(-1))
                    bias = b.astype(np.int64)
            layers.append(Linear(n.name, w, w_q, bias, a_q, next_q(n.output[0])))
        elif n.op_type == "Add":
            a_q = dq_act(n.input[0])
            b, b_q = dq_const(n.input[1])
            layers.append(AddConst(n.name, b, b_q, a_q, next_q(n.output[0])))
        elif n.op_type == "DequantizeLinear" and n.output[0] == m.graph.output[0].name:
            out_q = qp(n.input[1], n.input[2])
    return in_q, layers, out_q


def run_linear(layer, a, requant):
    za = int(layer.a_q.zp)
    zw = layer.w_q.zp.reshape(-1)                   # broadcast over output channels
    acc = (a.astype(np.int64) - za) @ (layer.w.astype(np.int64) - zw)
    if layer.bias is not None:
        acc = acc + layer.bias
    assert np.abs(acc).max() < 2 ** 31
    sa, sy = F32(layer.a_q.scale), F32(layer.y_q.scale)
    sw = layer.w_q.scale.reshape(-1).astype(F32)
    if requant == "f32":
        mult = ((sa * sw).astype(F32) / sy).astype(F32)
        r = np.rint((acc.astype(F32) * mult).astype(F32))
    else:
        r = np.rint(acc.astype(np.float64) * (np.float64(sa) * sw.astype(np.float64)
                                               / np.float64(sy)))
    return sat8(r.astype(np.int64) + int(layer.y_q.zp))


def run_add(layer, a, mode):
    za, zb, zy = int(layer.a_q.zp), int(layer.b_q.zp), int(layer.y_q.zp)
    sa, sb, sy = F32(layer.a_q.scale), F32(layer.b_q.scale), F32(layer.y_q.scale)
    if mode == "ort-x86":
        ra, rb = F32(sa / sy), F32(sb / sy)
        fixed = F32(F32(zy) - F32(F32(ra * F32(za)) + F32(rb * F32(zb))))
        v = (fixed + (a.astype(F32) * ra).astype(F32)).astype(F32)
        v = (v + (layer.b.astype(F32) * rb).astype(F32)).astype(F32)
        return sat8(np.rint(v).astype(np.int64))
    real = (np.float64(sa) * (a.astype(np.float64) - za)
            + np.float64(sb) * (layer.b.astype(np.float64) - zb)) / np.float64(sy)
    return sat8(np.rint(real).astype(np.int64) + zy)


def run(path, x, requant="f32", add="ort-x86"):
    in_q, layers, out_q = load_layers(path)
    q = quantize(x, in_q.scale, in_q.zp)
    for layer in layers:
        q = run_linear(layer, q, requant) if isinstance(layer, Linear) else run_add(layer, q, add)
    return q


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("x")
    ap.add_argument("out")
    ap.add_argument("--requant", choices=["f32", "exact"], default="f32")
    ap.add_argument("--add", choices=["ort-x86", "exact"], default="ort-x86")
    args = ap.parse_args()
    np.save(args.out, run(args.model, np.load(args.x), args.requant, args.add))


if __name__ == "__main__":
    sys.exit(main())
