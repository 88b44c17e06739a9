//! Imports an int8 MLP quantized by onnxruntime's `quantize_static` as a [`Model`] with the
//! project's integer semantics (`docs/inference.md`, "From ONNX").
//!
//! Four forms are understood, each a chain from the float input to the float logits:
//! - QDQ: `QuantizeLinear`, then per layer `DequantizeLinear` → `Gemm` (weights and int32 bias
//!   as dequantized initializers) → `QuantizeLinear`, or the same around `MatMul` and then around
//!   `Add` of a constant vector; a final `DequantizeLinear`;
//! - QOperator: `QuantizeLinear`, `QGemm` (com.microsoft) or `QLinearMatMul` followed by
//!   `QLinearAdd` (com.microsoft), and `DequantizeLinear`.
//!
//! Weights may have one scale per tensor or per output channel and must have zero point 0;
//! activations are int8 with any zero point (folded into the bias). The quantizer folds ReLU
//! into an output zero point of −128, which the int8 clamp then applies. Anything else — uint8
//! activations, float operators on the path, other operators, branches — is refused with an
//! [`ImportError`] naming the node.
//!
//! Lowering: a linear node becomes one [`Layer`]; an add of a constant vector after a linear
//! node (the MatMul forms' second requantization) becomes a layer of its own whose weights are
//! 64·I, so that its bias can carry the constant to 1/64 of an input step (see [`ADD_GAIN`]).
//! The protobuf is parsed by tract-onnx; only its raw model is used, not its operator set.

use std::collections::HashMap;
use std::path::Path;

use starkscale_cairo::batch::Rows;
use starkscale_cairo::layer::{
    fold_zero_point, Epilogue, InputQuant, Layer, LayerError, Model, Requant,
};
use tract_onnx::pb::{GraphProto, NodeProto, TensorProto};
use tract_onnx::prelude::Framework;

/// The diagonal of the layer an add of a constant vector becomes: y = sa(a − za) + sb(b − zb)
/// is computed as (sa / 64)·(64·a + round(64·sb(b − zb)/sa) − 64·za), so the constant is
/// rounded to 1/64 of an input step — at most 1/128 of sa/sy output steps off the exact sum.
pub const ADD_GAIN: i8 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the ONNX model: {0}")]
    Parse(String),
    #[error("node {node:?} ({op}): {reason}")]
    Node {
        node: String,
        op: String,
        reason: String,
    },
    #[error("the graph is not a supported quantized MLP: {0}")]
    Graph(String),
    #[error("the imported model is outside the proven semantics: {0}")]
    Semantics(#[from] LayerError),
}

/// A float tensor's int8 quantization: real = scale · (q − zero_point).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quant {
    pub scale: f32,
    pub zero_point: i8,
}

/// What an ONNX file imports as.
#[derive(Debug, Clone)]
pub struct Imported {
    pub model: Model,
    /// How the int8 logits dequantize (the final `DequantizeLinear`).
    pub logits: Quant,
    /// "QDQ" or "QOperator".
    pub format: &'static str,
    /// The ONNX operator each layer came from, in order.
    pub sources: Vec<String>,
}

/// Reads and imports the model at `path`.
pub fn load(path: &Path) -> Result<Imported, ImportError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ImportError::Parse(format!("cannot read {}: {e}", path.display())))?;
    from_bytes(&bytes)
}

/// Imports a serialized ONNX model.
pub fn from_bytes(bytes: &[u8]) -> Result<Imported, ImportError> {
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| ImportError::Parse(format!("{e:#}")))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::Graph("the model has no graph".into()))?;
    Importer::new(graph).import()
}

/// One step of the chain before lowering.
enum Step {
    Linear {
        source: String,
        /// M × K, one output channel per row.
        weights: Rows,
        weight_scales: Vec<f32>,
        bias: Option<Vec<i64>>,
        input: Quant,
        output: Quant,
    },
    AddConst {
        source: String,
        constant: Vec<i64>,
        constant_quant: Quant,
        input: Quant,
        output: Quant,
    },
}

struct Importer<'g> {
    graph: &'g GraphProto,
    initializers: HashMap<&'g str, &'g TensorProto>,
    consumers: HashMap<&'g str, Vec<&'g NodeProto>>,
    producers: HashMap<&'g str, &'g NodeProto>,
}

fn node_error(node: &NodeProto, reason: impl Into<String>) -> ImportError {
    ImportError::Node {
        node: node.name.clone(),
        op: node.op_type.clone(),
        reason: reason.into(),
    }
}

const FLOAT: i32 = 1;
const UINT8: i32 = 2;
const INT8: i32 = 3;
const INT32: i32 = 6;

impl<'g> Importer<'g> {
    fn new(graph: &'g GraphProto) -> Importer<'g> {
        let initializers = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut consumers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
        let mut producers = HashMap::new();
        for node in &graph.node {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                consumers.entry(input.as_str()).or_default().push(node);
            }
            for output in &node.output {
                producers.insert(output.as_str(), node);
            }
        }
        Importer {
            graph,
            initializers,
            consumers,
            producers,
        }
    }

    fn import(&self) -> Result<Imported, ImportError> {
        let inputs: Vec<&str> = self
            .graph
            .input
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| !self.initializers.contains_key(n))
            .collect();
        let [input] = inputs[..] else {
            return Err(ImportError::Graph(format!(
                "{} graph inputs ({inputs:?}): one float input is needed",
                inputs.len()
            )));
        };
        let [output] = &self.graph.output[..] else {
            return Err(ImportError::Graph(format!(
                "{} graph outputs: one (the logits) is needed",
                self.graph.output.len()
            )));
        };
        let quantize = self.only_consumer(input)?;
        if quantize.op_type != "QuantizeLinear" {
            return Err(node_error(
                quantize,
                "the input must be quantized first (a QuantizeLinear), found a float operator",
            ));
        }
        let input_quant = self.quant(quantize, 1, 2)?;
        let mut cur = quantize.output[0].as_str();
        let mut cur_quant = input_quant;
        let mut steps = Vec::new();
        let mut qdq = false;
        let logits = loop {
            let node = self.only_consumer(cur)?;
            let (step, next) = match (node.domain.as_str(), node.op_type.as_str()) {
                ("com.microsoft", "QGemm") => self.qgemm(node, cur, cur_quant)?,
                ("" | "ai.onnx", "QLinearMatMul") => self.qlinear_matmul(node, cur, cur_quant)?,
                ("com.microsoft", "QLinearAdd") => self.qlinear_add(node, cur, cur_quant)?,
                ("" | "ai.onnx", "DequantizeLinear") => {
                    let quant = self.quant(node, 1, 2)?;
                    if quant != cur_quant {
                        return Err(node_error(
                            node,
                            "dequantizes with another scale or zero point than its input was quantized with",
                        ));
                    }
                    if node.output[0] == output.name {
                        break quant;
                    }
                    qdq = true;
                    self.qdq_step(node, quant)?
                }
                _ => {
                    return Err(node_error(
                        node,
                        "not an operator of a quantized MLP (QuantizeLinear, DequantizeLinear, Gemm, MatMul, Add, QGemm, QLinearMatMul, QLinearAdd)",
                    ))
                }
            };
            let output = match &step {
                Step::Linear { output, .. } | Step::AddConst { output, .. } => *output,
            };
            steps.push(step);
            cur = next;
            cur_quant = output;
        };
        if steps.is_empty() {
            return Err(ImportError::Graph(
                "no layer between input and output".into(),
            ));
        }
        let mut sources = Vec::new();
        let layers = lower(&steps, &mut sources)?;
        let model = Model {
            input: InputQuant {
                scale: input_quant.scale,
                zero_point: input_quant.zero_point,
            },
            layers,
        };
        model.check()?;
        Ok(Imported {
            model,
            logits,
            format: if qdq { "QDQ" } else { "QOperator" },
            sources,
        })
    }

    fn only_consumer(&self, name: &str) -> Result<&'g NodeProto, ImportError> {
        match self.consumers.get(name).map(Vec::as_slice) {
            Some([node]) => Ok(node),
            Some(nodes) if nodes.len() > 1 => Err(ImportError::Graph(format!(
                "tensor {name:?} feeds {} nodes: only a chain of layers is supported",
                nodes.len()
            ))),
            _ => Err(ImportError::Graph(format!(
                "tensor {name:?} is not consumed and is not the graph output"
            ))),
        }
    }

    fn initializer(&self, node: &NodeProto, index: usize) -> Result<&'g TensorProto, ImportError> {
        let name = node
            .input
            .get(index)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| node_error(node, format!("input {index} is missing")))?;
        self.initializers
            .get(name.as_str())
            .copied()
            .ok_or_else(|| {
                node_error(
                    node,
                    format!("input {index} ({name:?}) must be a constant initializer"),
                )
            })
    }

    /// The (scale, zero point) at inputs `s` and `z`: a float scalar and an int8 scalar.
    fn quant(&self, node: &NodeProto, s: usize, z: usize) -> Result<Quant, ImportError> {
        let scale = floats(node, self.initializer(node, s)?)?;
        let zero = self.initializer(node, z)?;
        if zero.data_type == UINT8 {
            return Err(node_error(
                node,
                "uint8 quantization: activations must be int8 (quantize with QuantType.QInt8)",
            ));
        }
        let zero = ints(node, zero, INT8)?;
        match (&scale[..], &zero[..]) {
            ([scale], [zp]) if scale.is_finite() && *scale > 0.0 => Ok(Quant {
                scale: *scale,
                zero_point: *zp as i8,
            }),
            _ => Err(node_error(
                node,
                "an activation needs one positive scale and one zero point",
            )),
        }
    }

    /// Weights given as [rows, cols] int8 with their scales and zero points; returned as M × K
    /// (one output channel per row), `transposed` saying whether rows are outputs already.
    fn weights(
        &self,
        node: &NodeProto,
        w: usize,
        s: usize,
        z: usize,
        outputs_are_rows: bool,
    ) -> Result<(Rows, Vec<f32>), ImportError> {
        let tensor = self.initializer(node, w)?;
        let [rows, cols] = tensor.dims[..] else {
            return Err(node_error(node, "weights must be a 2-D constant"));
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let values = ints(node, tensor, INT8)?;
        if values.len() != rows * cols || rows == 0 || cols == 0 {
            return Err(node_error(node, "weights of the wrong size"));
        }
        let (m, k) = if outputs_are_rows {
            (rows, cols)
        } else {
            (cols, rows)
        };
        let data: Vec<i8> = (0..m * k)
            .map(|at| {
                let (i, j) = (at / k, at % k);
                let v = if outputs_are_rows {
                    values[i * cols + j]
                } else {
                    values[j * cols + i]
                };
                v as i8
            })
            .collect();
        let scales = floats(node, self.initializer(node, s)?)?;
        let zeros = ints(node, self.initializer(node, z)?, INT8)?;
        if !(scales.len() == 1 || scales.len() == m) || zeros.len() != scales.len() {
            return Err(node_error(
                node,
                format!(
                    "{} weight scales for {m} output channels: one per tensor or per output channel",
                    scales.len()
                ),
            ));
        }
        if zeros.iter().any(|&z| z != 0) {
            return Err(node_error(
                node,
                "weights must be quantized symmetrically (zero point 0)",
            ));
        }
        if scales.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(node_error(node, "weight scales must be positive"));
        }
        let scales = if scales.len() == 1 {
            vec![scales[0]; m]
        } else {
            scales
        };
        Ok((Rows::I8 { width: k, data }, scales))
    }

    fn qgemm(
        &self,
        node: &'g NodeProto,
        cur: &str,
        q: Quant,
    ) -> Result<(Step, &'g str), ImportError> {
        self.expect_input(node, 0, cur, q, 1, 2)?;
        let trans_b = gemm_attributes(node, false)?;
        if node.input.len() < 9 || node.input[7].is_empty() {
            return Err(node_error(
                node,
                "a QGemm with a float output is not a quantized layer",
            ));
        }
        let (weights, weight_scales) = self.weights(node, 3, 4, 5, trans_b)?;
        let bias = match node.input.get(6).filter(|n| !n.is_empty()) {
            Some(_) => Some(ints(node, self.initializer(node, 6)?, INT32)?),
            None => None,
        };
        let output = self.quant(node, 7, 8)?;
        Ok((
            Step::Linear {
                source: describe(node),
                weights,
                weight_scales,
                bias,
                input: q,
                output,
            },
            node.output[0].as_str(),
        ))
    }

    fn qlinear_matmul(
        &self,
        node: &'g NodeProto,
        cur: &str,
        q: Quant,
    ) -> Result<(Step, &'g str), ImportError> {
        self.expect_input(node, 0, cur, q, 1, 2)?;
        let (weights, weight_scales) = self.weights(node, 3, 4, 5, false)?;
        let output = self.quant(node, 6, 7)?;
        Ok((
            Step::Linear {
                source: describe(node),
                weights,
                weight_scales,
                bias: None,
                input: q,
                output,
            },
            node.output[0].as_str(),
        ))
    }

    fn qlinear_add(
        &self,
        node: &'g NodeProto,
        cur: &str,
        q: Quant,
    ) -> Result<(Step, &'g str), ImportError> {
        // Either operand may be the activation; the other is the constant.
        let (a, c) = if node.input.first().map(String::as_str) == Some(cur) {
            (0, 3)
        } else {
            (3, 0)
        };
        self.expect_input(node, a, cur, q, a + 1, a + 2)?;
        let constant = ints(node, self.initializer(node, c)?, INT8)?;
        let constant_quant = self.quant(node, c + 1, c + 2)?;
        let output = self.quant(node, 6, 7)?;
        Ok((
            Step::AddConst {
                source: describe(node),
                constant,
                constant_quant,
                input: q,
                output,
            },
            node.output[0].as_str(),
        ))
    }

    /// After an activation's DequantizeLinear: Gemm, MatMul or Add on dequantized constants,
    /// then a QuantizeLinear.
    fn qdq_step(&self, dq: &'g NodeProto, q: Quant) -> Result<(Step, &'g str), ImportError> {
        let float = dq.output[0].as_str();
        let node = self.only_consumer(float)?;
        let quantize = self.only_consumer(&node.output[0])?;
        if quantize.op_type != "QuantizeLinear" {
            return Err(node_error(
                quantize,
                format!("{} must be requantized by a QuantizeLinear: float operators on the path are not proven", node.op_type),
            ));
        }
        let output = self.quant(quantize, 1, 2)?;
        let position = |name: &str| node.input.iter().position(|i| i == name);
        let step = match node.op_type.as_str() {
            "Gemm" | "MatMul" => {
                if position(float) != Some(0) {
                    return Err(node_error(node, "the activation must be the first operand"));
                }
                let trans_b = if node.op_type == "Gemm" {
                    gemm_attributes(node, true)?
                } else {
                    false
                };
                let w_dq = self.constant_dq(node, 1)?;
                let (weights, weight_scales) = self.weights(w_dq, 0, 1, 2, trans_b)?;
                let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
                    Some(_) => {
                        let b_dq = self.constant_dq(node, 2)?;
                        let bias = ints(b_dq, self.initializer(b_dq, 0)?, INT32)?;
                        let scales = floats(b_dq, self.initializer(b_dq, 1)?)?;
                        let zeros = ints(b_dq, self.initializer(b_dq, 2)?, INT32)?;
                        let implied = |i: usize| q.scale * weight_scales[i];
                        let consistent = zeros.iter().all(|&z| z == 0)
                            && (scales.len() == 1 || scales.len() == bias.len())
                            && (0..bias.len()).all(|i| {
                                let s = if scales.len() == 1 { scales[0] } else { scales[i] };
                                s == implied(i)
                            });
                        if !consistent {
                            return Err(node_error(
                                b_dq,
                                "the int32 bias must have the accumulator's scale (input scale × weight scale) and zero point 0",
                            ));
                        }
                        Some(bias)
                    }
                    None => None,
                };
                Step::Linear {
                    source: describe(node),
                    weights,
                    weight_scales,
                    bias,
                    input: q,
                    output,
                }
            }
            "Add" => {
                let other = match position(float) {
                    Some(0) => 1,
                    Some(_) => 0,
                    None => unreachable!("the node consumes the tensor"),
                };
                let c_dq = self.constant_dq(node, other)?;
                let constant = ints(c_dq, self.initializer(c_dq, 0)?, INT8)?;
                let constant_quant = self.quant(c_dq, 1, 2)?;
                Step::AddConst {
                    source: describe(node),
                    constant,
                    constant_quant,
                    input: q,
                    output,
                }
            }
            _ => {
                return Err(node_error(
                    node,
                    "not an operator of a quantized MLP (Gemm, MatMul or Add between DequantizeLinear and QuantizeLinear)",
                ))
            }
        };
        Ok((step, quantize.output[0].as_str()))
    }

    /// The DequantizeLinear of a constant feeding input `index` of `node`.
    fn constant_dq(&self, node: &NodeProto, index: usize) -> Result<&'g NodeProto, ImportError> {
        let name = node.input.get(index).map(String::as_str).unwrap_or("");
        match self.producers.get(name) {
            Some(dq) if dq.op_type == "DequantizeLinear" && self.initializers.contains_key(dq.input[0].as_str()) => Ok(dq),
            _ => Err(node_error(
                node,
                format!("input {index} must be a quantized constant (a DequantizeLinear of an initializer)"),
            )),
        }
    }

    /// Input `at` must be the current activation, quantized as it was produced.
    fn expect_input(
        &self,
        node: &NodeProto,
        at: usize,
        cur: &str,
        q: Quant,
        s: usize,
        z: usize,
    ) -> Result<(), ImportError> {
        if node.input.get(at).map(String::as_str) != Some(cur) {
            return Err(node_error(
                node,
                format!("input {at} must be the previous layer's output"),
            ));
        }
        if self.quant(node, s, z)? != q {
            return Err(node_error(
                node,
                "reads its input with another scale or zero point than it was quantized with",
            ));
        }
        Ok(())
    }
}

fn describe(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.op_type.clone()
    } else {
        format!("{} {:?}", node.op_type, node.name)
    }
}

/// Gemm's attributes: alpha 1, transA 0, beta 1 (where `beta` applies); returns transB.
fn gemm_attributes(node: &NodeProto, beta: bool) -> Result<bool, ImportError> {
    let mut trans_b = false;
    for a in &node.attribute {
        let ok = match a.name.as_str() {
            "alpha" => a.f == 1.0,
            "beta" => !beta || a.f == 1.0,
            "transA" => a.i == 0,
            "transB" => {
                trans_b = a.i != 0;
                true
            }
            _ => true,
        };
        if !ok {
            return Err(node_error(
                node,
                format!(
                    "attribute {} is not supported (alpha and beta 1, transA 0)",
                    a.name
                ),
            ));
        }
    }
    Ok(trans_b)
}

fn floats(node: &NodeProto, t: &TensorProto) -> Result<Vec<f32>, ImportError> {
    if t.data_type != FLOAT {
        return Err(node_error(node, format!("{:?} must be float32", t.name)));
    }
    if t.raw_data.is_empty() {
        return Ok(t.float_data.clone());
    }
    Ok(t.raw_data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Integers of an int8 or int32 tensor (`dtype`), from raw little-endian bytes or int32_data.
fn ints(node: &NodeProto, t: &TensorProto, dtype: i32) -> Result<Vec<i64>, ImportError> {
    if t.data_type != dtype {
        return Err(node_error(
            node,
            format!(
                "{:?} has ONNX data type {}, {} is needed",
                t.name,
                t.data_type,
                if dtype == INT8 {
                    "int8 (3)"
                } else {
                    "int32 (6)"
                }
            ),
        ));
    }
    if t.raw_data.is_empty() {
        return Ok(t.int32_data.iter().map(|&v| i64::from(v)).collect());
    }
    Ok(match dtype {
        INT8 => t.raw_data.iter().map(|&b| i64::from(b as i8)).collect(),
        _ => t
            .raw_data
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    })
}

/// The steps as layers with the integer semantics.
fn lower(steps: &[Step], sources: &mut Vec<String>) -> Result<Vec<Layer>, ImportError> {
    let mut layers = Vec::with_capacity(steps.len());
    for step in steps {
        let layer = match step {
            Step::Linear {
                source,
                weights,
                weight_scales,
                bias,
                input,
                output,
            } => {
                let m = weights.height();
                let bias = match bias {
                    Some(b) if b.len() != m => {
                        return Err(ImportError::Graph(format!(
                            "{source}: a bias of {} entries for {m} outputs",
                            b.len()
                        )))
                    }
                    Some(b) => b.clone(),
                    None => vec![0; m],
                };
                let requant = weight_scales
                    .iter()
                    .map(|sw| {
                        Requant::from_scale(
                            f64::from(input.scale) * f64::from(*sw) / f64::from(output.scale),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                sources.push(source.clone());
                Layer {
                    epilogue: Epilogue {
                        bias: fold_zero_point(&bias, weights, i64::from(input.zero_point)),
                        requant,
                        zero_point: output.zero_point,
                        lo: -128,
                        hi: 127,
                    },
                    weights: weights.clone(),
                }
            }
            Step::AddConst {
                source,
                constant,
                constant_quant: c,
                input,
                output,
            } => {
                let m = constant.len();
                let gain = f64::from(ADD_GAIN);
                let offset: Vec<i64> = constant
                    .iter()
                    .map(|&b| {
                        (gain * f64::from(c.scale) * (b - i64::from(c.zero_point)) as f64
                            / f64::from(input.scale))
                        .round() as i64
                    })
                    .collect();
                let mut data = vec![0i8; m * m];
                for i in 0..m {
                    data[i * m + i] = ADD_GAIN;
                }
                let weights = Rows::I8 { width: m, data };
                let requant =
                    Requant::from_scale(f64::from(input.scale) / (gain * f64::from(output.scale)))?;
                sources.push(source.clone());
                Layer {
                    epilogue: Epilogue {
                        bias: fold_zero_point(&offset, &weights, i64::from(input.zero_point)),
                        requant: vec![requant; m],
                        zero_point: output.zero_point,
                        lo: -128,
                        hi: 127,
                    },
                    weights,
                }
            }
        };
        layers.push(layer);
    }
    Ok(layers)
}
