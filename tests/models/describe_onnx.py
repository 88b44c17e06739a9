#!/usr/bin/env python3
"""Print the exact structure of ONNX models as Markdown (used to write the importer spec).

Usage: python describe_onnx.py MODEL.onnx [MODEL.onnx ...]

For each model: header fields (ir_version, opset imports, producer), graph
inputs/outputs with shapes, every node in file order (op_type, domain, name,
inputs, outputs, attributes) and every initializer (name, dtype, shape, which
TensorProto field holds the data, and the values of small tensors).
"""

import hashlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPE = {v: k for k, v in TensorProto.DataType.items()}
DEFAULT_DOMAIN = '"" (ai.onnx)'
SMALL = 12   # print all values of tensors with at most this many elements


def storage_field(t):
    """Name of the TensorProto field that actually holds the data."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data",
                  "double_data", "uint64_data", "string_data"):
        if t.HasField(field) if field == "raw_data" else len(getattr(t, field)) > 0:
            return field
    if t.data_location == TensorProto.EXTERNAL:
        return "external"
    return "(empty)"


def shape_str(vi):
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_param if d.HasField("dim_param") else str(d.dim_value))
    return f"{DTYPE[vi.type.tensor_type.elem_type]} [{', '.join(dims)}]"


def attr_str(a):
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, float):
        v = repr(v)
    return f"{a.name}={v}"


def fmt_values(arr):
    flat = arr.reshape(-1)
    if arr.dtype.kind == "f":
        vals = [repr(float(np.float32(x))) if arr.dtype == np.float32 else repr(float(x))
                for x in flat]
        # float32 bit patterns only for scalars / 1-element tensors (the decimal
        # form is already exact: it is the shortest repr of the f32 widened to f64).
        hexes = [f"0x{np.float32(x).view(np.uint32):08x}" for x in flat] \
            if arr.dtype == np.float32 and flat.size == 1 else []
        s = "[" + ", ".join(vals) + "]"
        if hexes:
            s += " (f32 bits " + ", ".join(hexes) + ")"
        return s
    return "[" + ", ".join(str(int(x)) for x in flat) + "]"


def describe(path):
    m = onnx.load(path)
    g = m.graph
    out = [f"### `{path.split('/')[-1]}`", ""]
    out.append(f"- ir_version: {m.ir_version}; opset_import: "
               + ", ".join(f"{o.domain or DEFAULT_DOMAIN}={o.version}" for o in m.opset_import))
    out.append(f"- producer: {m.producer_name} {m.producer_version}; graph name: {g.name}")
    for vi in g.input:
        out.append(f"- graph input: `{vi.name}` {shape_str(vi)}")
    for vi in g.output:
        out.append(f"- graph output: `{vi.name}` {shape_str(vi)}")
    if len(g.value_info):
        out.append(f"- value_info entries: {len(g.value_info)}: "
                   + ", ".join(f"`{v.name}` {shape_str(v)}" for v in g.value_info))
    out.append("")
    out.append("Nodes (file order):")
    out.append("")
    out.append("| # | op_type | domain | name | inputs | outputs | attributes |")
    out.append("|---|---|---|---|---|---|---|")
    for i, n in enumerate(g.node):
        out.append(f"| {i} | {n.op_type} | {n.domain or DEFAULT_DOMAIN} | {n.name} | "
                   + ", ".join(f"`{x}`" for x in n.input) + " | "
                   + ", ".join(f"`{x}`" for x in n.output) + " | "
                   + (", ".join(attr_str(a) for a in n.attribute) or "-") + " |")
    out.append("")
    out.append("Initializers (file order):")
    out.append("")
    out.append("| name | dtype | shape | stored in | values |")
    out.append("|---|---|---|---|---|")
    for t in g.initializer:
        arr = numpy_helper.to_array(t)
        if arr.size <= SMALL or "scale" in t.name or "zero_point" in t.name:
            vals = fmt_values(arr)
        else:
            # Large tensors (weights, biases): first values in row-major order,
            # range, and sha256 of the little-endian row-major element bytes.
            first = ", ".join(str(v) for v in arr.reshape(-1)[:8])
            digest = hashlib.sha256(np.ascontiguousarray(arr).astype(
                arr.dtype.newbyteorder("<")).tobytes()).hexdigest()[:16]
            vals = (f"{arr.size} values, min {arr.min()}, max {arr.max()}; "
                    f"first [{first}, ...]; sha256(LE bytes)[:16]={digest}")
        out.append(f"| `{t.name}` | {DTYPE[t.data_type]} | {list(t.dims)} | "
                   f"{storage_field(t)} | {vals} |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print("\n".join(describe(p) for p in sys.argv[1:]))
