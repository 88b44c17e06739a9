//! Inference jobs: one batch of int8 inputs through a quantized MLP ([`Model`]), proven as
//! every layer's weights segments, the first layer's inputs segments and every layer's layer
//! segments ([`crate::layer_segment`]), tied together by the inference root
//! (`programs/infer_root.cairo`). `docs/inference.md` states what is bound and why.
//!
//! - [`model_commitment`]: what `starkscale commit MODEL` prints — every layer's shape, weights
//!   commitment and epilogue digest.
//! - [`Inference::new`]: every layer computed natively first, then committed; the seed and every
//!   layer's challenges follow, so every segment of every layer can be proven at once.
//! - [`Inference::plan`] / [`Inference::task`]: the segment tasks in the root's order.
//! - [`run_infer_root`], [`InferRootOutput`]: the root and its statement.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use cairo_vm::hint_processor::builtin_hint_processor::builtin_hint_processor_definition::HintFunc;
use cairo_vm::hint_processor::builtin_hint_processor::hint_utils::insert_value_from_var_name;
use cairo_vm::types::relocatable::MaybeRelocatable;
use cairo_vm::Felt252;

use crate::batch::{
    chain_digests, chain_states, challenge, commit, commitment, eight, expected_output,
    plan_stream, put, put_child, run_segment, weights_vector, Rows, SegmentInput, Shape, Statement,
    Stream, Words,
};
use crate::encoding::{blake2s_words, Digest, Fact, FORMAT_VERSION};
use crate::layer::Model;
use crate::layer_segment::{
    expected_layer_output, logits_rows, run_layer_segment, LayerSegmentInput, Next,
};
use crate::program::Pinned;
use crate::run::{load_children, run_pinned, ProgramRun};
use crate::tree::Child;
use crate::KernelError;
use starkscale_common::tensor::npy;
use starkscale_common::{Dtype, Matrix, TensorError, Vector};

pub const KIND_INFER_ROOT: u32 = 10;
pub const KIND_MODEL: u32 = 11;
/// Layers a model may have (`programs/infer_root.cairo`).
pub const MAX_LAYERS: usize = 64;
/// Cairo steps a layer segment may take per compression of the segment budget: at the default
/// 4,096 compressions, about 10^6 steps, which fills (but does not pass) a 2^20-row trace.
pub const LAYER_STEPS_PER_BLOCK: usize = 244;
/// What planning counts a layer segment's steps as, per padded output position and per padded
/// channel (hashing the parameters and the next layer's V, deriving each channel's constants),
/// slightly above the measured 32.4 and 160 of a hidden layer (`docs/inference.md`).
const LAYER_STEPS_PER_ENTRY: usize = 34;
const LAYER_STEPS_PER_CHANNEL: usize = 170;

/// Rows per layer segment for a layer of `shape` within `blocks` compressions' worth of steps
/// (at least one).
pub fn layer_segment_rows(shape: &Shape, blocks: usize) -> usize {
    let positions = Stream::Outputs.chunks(shape) * 16;
    let budget = blocks * LAYER_STEPS_PER_BLOCK;
    let free = budget.saturating_sub(positions * LAYER_STEPS_PER_CHANNEL);
    (free / (positions * LAYER_STEPS_PER_ENTRY)).clamp(1, shape.b)
}

/// A layer's weights commitment: the weights-stream commitment of its M × K matrix (the same
/// value `starkscale commit --batch` prints for it).
pub fn weights_commitment(weights: &Rows) -> Digest {
    let shape = Shape {
        m: weights.height(),
        k: weights.width(),
        b: 1,
    };
    commit(Stream::Weights, &shape, weights)
}

/// Blake2s(KIND_MODEL, L, per layer M, K, weights commitment, epilogue digest).
pub fn model_commitment(model: &Model) -> Digest {
    let commitments: Vec<Digest> = model
        .layers
        .iter()
        .map(|l| weights_commitment(&l.weights))
        .collect();
    model_commitment_of(model, &commitments)
}

fn model_commitment_of(model: &Model, weights: &[Digest]) -> Digest {
    let mut words = vec![KIND_MODEL, model.layers.len() as u32];
    for (layer, a) in model.layers.iter().zip(weights) {
        words.extend([layer.outputs() as u32, layer.inputs() as u32]);
        words.extend(a.0);
        words.extend(layer.epilogue.digest().0);
    }
    blake2s_words(&words)
}

/// One layer of an inference, computed natively.
#[derive(Debug, Clone)]
pub struct LayerRun {
    pub shape: Shape,
    /// The weights transposed: the weights stream's rows (A's columns).
    pub at: Rows,
    /// The int32 accumulators (B × M) and the int8 outputs.
    pub y: Rows,
    pub z: Rows,
    pub a_commitment: Digest,
    pub y_commitment: Digest,
    pub sigma: Felt252,
    pub rho: Felt252,
    /// v = σᵀA, one entry per input of the layer.
    pub v: Vec<Felt252>,
}

/// Everything an inference states, computed natively from the model and the int8 inputs.
#[derive(Debug)]
pub struct Inference<'a> {
    pub model: &'a Model,
    pub x: &'a Rows,
    pub layers: Vec<LayerRun>,
    pub model_commitment: Digest,
    pub x_commitment: Digest,
    pub logits_commitment: Digest,
    pub seed: Digest,
}

/// One task of an inference: a segment of a layer's weights, of the inputs, or of a layer's
/// accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskSpec {
    Weights {
        layer: usize,
        row0: usize,
        rows: usize,
    },
    Inputs {
        row0: usize,
        rows: usize,
    },
    Layer {
        layer: usize,
        row0: usize,
        rows: usize,
    },
}

impl TaskSpec {
    pub fn describe(&self) -> String {
        match self {
            TaskSpec::Weights { layer, row0, rows } => {
                format!("layer {layer} weights rows {row0}..{}", row0 + rows)
            }
            TaskSpec::Inputs { row0, rows } => format!("inputs rows {row0}..{}", row0 + rows),
            TaskSpec::Layer { layer, row0, rows } => {
                format!("layer {layer} outputs rows {row0}..{}", row0 + rows)
            }
        }
    }
}

/// A task's input for its kernel.
#[derive(Debug, Clone)]
pub enum TaskInput {
    Segment(SegmentInput),
    Layer(LayerSegmentInput),
}

impl TaskInput {
    /// Runs the task's kernel: the run, and the pinned program that proves it.
    pub fn run(&self, max_steps: usize) -> Result<(ProgramRun, Pinned), KernelError> {
        match self {
            TaskInput::Segment(input) => Ok((run_segment(input, max_steps)?, Pinned::Batch)),
            TaskInput::Layer(input) => Ok((run_layer_segment(input, max_steps)?, Pinned::Layer)),
        }
    }

    /// Blake2s compressions of the task's rows (one per chunk column and row).
    pub fn blocks(&self) -> usize {
        match self {
            TaskInput::Segment(input) => input.rows() * input.chunks(),
            TaskInput::Layer(input) => input.rows() * input.chunks(),
        }
    }

    /// The input as a worker fetches it (the batch kernel's or the layer kernel's encoding).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            TaskInput::Segment(input) => input.to_bytes(),
            TaskInput::Layer(input) => input.to_bytes(),
        }
    }

    pub fn program(&self) -> Pinned {
        match self {
            TaskInput::Segment(_) => Pinned::Batch,
            TaskInput::Layer(_) => Pinned::Layer,
        }
    }
}

impl<'a> Inference<'a> {
    /// Runs every layer on `x` (B × K int8, one input per row), commits to every stream and
    /// derives the challenges.
    pub fn new(model: &'a Model, x: &'a Rows) -> Result<Inference<'a>, KernelError> {
        Inference::check(model, x)?;
        Ok(Inference::build(model, x, model.forward(x)))
    }

    fn check(model: &Model, x: &Rows) -> Result<(), KernelError> {
        model
            .check()
            .map_err(|e| KernelError::InvalidTile(e.to_string()))?;
        if model.layers.len() > MAX_LAYERS {
            return Err(KernelError::InvalidTile(format!(
                "{} layers: at most {MAX_LAYERS}",
                model.layers.len()
            )));
        }
        if !matches!(x, Rows::I8 { .. }) || x.width() != model.inputs() || x.height() == 0 {
            return Err(KernelError::InvalidTile(format!(
                "the inputs are {} × {}: the model takes int8 rows of {} entries",
                x.height(),
                x.width(),
                model.inputs()
            )));
        }
        Ok(())
    }

    /// An inference over the given (Y, Z) of every layer, honest or not: what a cheating prover
    /// would commit to. Tests use it to show that the root refuses a forged layer.
    #[doc(hidden)]
    pub fn from_outputs(
        model: &'a Model,
        x: &'a Rows,
        forward: Vec<(Rows, Rows)>,
    ) -> Result<Inference<'a>, KernelError> {
        Inference::check(model, x)?;
        if forward.len() != model.layers.len() {
            return Err(KernelError::InvalidTile(
                "one (Y, Z) per layer is needed".into(),
            ));
        }
        Ok(Inference::build(model, x, forward))
    }

    fn build(model: &'a Model, x: &'a Rows, forward: Vec<(Rows, Rows)>) -> Inference<'a> {
        let b = x.height();
        let mut layers = Vec::with_capacity(model.layers.len());
        for (layer, (y, z)) in model.layers.iter().zip(forward) {
            let shape = Shape {
                m: layer.outputs(),
                k: layer.inputs(),
                b,
            };
            let at = layer.weights.transpose_i8();
            let a_commitment = commitment(Stream::Weights, &shape, &chain_digests(&at));
            let y_commitment = commit(Stream::Outputs, &shape, &y);
            layers.push(LayerRun {
                shape,
                at,
                y,
                z,
                a_commitment,
                y_commitment,
                sigma: Felt252::ZERO,
                rho: Felt252::ZERO,
                v: Vec::new(),
            });
        }
        let first = layers[0].shape;
        let x_commitment = commit(Stream::Inputs, &first, x);
        let last = layers
            .last()
            .map(|l| (l.shape, &l.z))
            .expect("a model has layers");
        let logits_commitment = commit(Stream::Outputs, &last.0, &logits_rows(last.1));
        let weights: Vec<Digest> = layers.iter().map(|l| l.a_commitment).collect();
        let model_commitment = model_commitment_of(model, &weights);
        let ys: Vec<Digest> = layers.iter().map(|l| l.y_commitment).collect();
        let seed = seed(b, &model_commitment, &x_commitment, &ys);
        for (i, (layer, run)) in model.layers.iter().zip(&mut layers).enumerate() {
            run.sigma = challenge(&seed, 2 * i as u32 + 1);
            run.rho = challenge(&seed, 2 * i as u32 + 2);
            run.v = weights_vector(&layer.weights, &run.sigma);
        }
        Inference {
            model,
            x,
            layers,
            model_commitment,
            x_commitment,
            logits_commitment,
            seed,
        }
    }

    pub fn batch(&self) -> usize {
        self.x.height()
    }

    /// The int8 logits (B × outputs).
    pub fn logits(&self) -> &Rows {
        &self.layers[self.layers.len() - 1].z
    }

    /// The tasks in the root's order — every layer's weights segments, the inputs segments,
    /// every layer's layer segments — each of at most `blocks` compressions (int8 streams half,
    /// layer segments [`layer_segment_rows`]).
    pub fn plan(&self, blocks: usize) -> Vec<TaskSpec> {
        let mut out = Vec::new();
        for (layer, run) in self.layers.iter().enumerate() {
            for s in plan_stream(Stream::Weights, &run.shape, blocks / 2) {
                out.push(TaskSpec::Weights {
                    layer,
                    row0: s.row0,
                    rows: s.rows,
                });
            }
        }
        for s in plan_stream(Stream::Inputs, &self.layers[0].shape, blocks / 2) {
            out.push(TaskSpec::Inputs {
                row0: s.row0,
                rows: s.rows,
            });
        }
        for (layer, run) in self.layers.iter().enumerate() {
            let per = layer_segment_rows(&run.shape, blocks);
            for row0 in (0..run.shape.b).step_by(per) {
                out.push(TaskSpec::Layer {
                    layer,
                    row0,
                    rows: per.min(run.shape.b - row0),
                });
            }
        }
        out
    }

    fn statement(&self, layer: usize) -> Statement {
        let run = &self.layers[layer];
        Statement {
            shape: run.shape,
            commitments: [run.a_commitment, self.x_commitment, run.y_commitment],
            seed: self.seed,
            sigma: run.sigma,
            rho: run.rho,
            v: run.v.clone(),
        }
    }

    /// The input of one task (its chains' states computed from the stream's start).
    pub fn task(&self, spec: &TaskSpec) -> TaskInput {
        match *spec {
            TaskSpec::Weights { layer, row0, rows } => {
                let at = &self.layers[layer].at;
                let states = chain_states(at, row0);
                TaskInput::Segment(self.statement(layer).segment(
                    Stream::Weights,
                    row0,
                    at.slice(row0, rows),
                    states,
                ))
            }
            TaskSpec::Inputs { row0, rows } => {
                let states = chain_states(self.x, row0);
                TaskInput::Segment(self.statement(0).segment(
                    Stream::Inputs,
                    row0,
                    self.x.slice(row0, rows),
                    states,
                ))
            }
            TaskSpec::Layer { layer, row0, rows } => {
                let run = &self.layers[layer];
                let next = match self.layers.get(layer + 1) {
                    Some(n) => Next::Hidden {
                        v: n.v.clone(),
                        rho: n.rho,
                    },
                    None => Next::Final {
                        states: chain_states(&logits_rows(&run.z), row0),
                    },
                };
                TaskInput::Layer(LayerSegmentInput {
                    shape: run.shape,
                    row0,
                    data: run.y.slice(row0, rows),
                    sigma: run.sigma,
                    rho: run.rho,
                    epilogue: self.model.layers[layer].epilogue.clone(),
                    states: chain_states(&run.y, row0),
                    next,
                })
            }
        }
    }
}

impl Inference<'_> {
    /// What an honest run of `input` (the input of one of this inference's tasks) outputs,
    /// computed natively: a planner accepts the task's proof by this output's fact alone.
    pub fn expected_output(&self, input: &TaskInput) -> Vec<u32> {
        match input {
            TaskInput::Segment(segment) => expected_output(segment, &self.layers[0].v),
            TaskInput::Layer(layer) => expected_layer_output(layer),
        }
    }
}

/// A model's inputs from a `.npy` (or JSON rows), one per row (a 1-D array is one input):
/// float32 quantized with the model's input scale and zero point, int8 taken as they are.
pub fn model_inputs(bytes: &[u8], model: &Model) -> Result<Rows, TensorError> {
    if let Ok((shape, values)) = npy::parse_f32(bytes) {
        let k = match shape[..] {
            [k] => k,
            [_, k] => k,
            _ => {
                return Err(TensorError::Shape(format!(
                    "inputs are 1-D (one input) or 2-D (one per row), not of shape {shape:?}"
                )))
            }
        };
        return Ok(Rows::I8 {
            width: k,
            data: values.iter().map(|&v| model.input.quantize(v)).collect(),
        });
    }
    let m = match Matrix::from_bytes(bytes, Dtype::I8) {
        Ok(m) => m,
        Err(matrix) => match Vector::from_bytes(bytes, Dtype::I8) {
            Ok(v) => Matrix::new(1, v.len(), Dtype::I8, v.data().to_vec())?,
            Err(_) => return Err(matrix),
        },
    };
    Ok(Rows::int8(m.cols(), m.data()))
}

/// seed = Blake2s(KIND_INFER_ROOT, B, model commitment, X commitment, every layer's Y commitment).
pub fn seed(batch: usize, model: &Digest, x: &Digest, ys: &[Digest]) -> Digest {
    let mut words = vec![KIND_INFER_ROOT, batch as u32];
    words.extend(model.0);
    words.extend(x.0);
    for y in ys {
        words.extend(y.0);
    }
    blake2s_words(&words)
}

/// What the inference root consumes: every task's (program hash, output), grouped as the root
/// reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferRootInput {
    pub batch: usize,
    /// Each layer's (M, K).
    pub dims: Vec<(usize, usize)>,
    /// Per layer, its weights segments in row order.
    pub weights: Vec<Vec<Child>>,
    pub inputs: Vec<Child>,
    /// Per layer, its layer segments in row order.
    pub segments: Vec<Vec<Child>>,
}

impl InferRootInput {
    /// No children yet, for `inference`'s layers.
    pub fn for_inference(inference: &Inference) -> InferRootInput {
        let layers = inference.layers.len();
        InferRootInput {
            batch: inference.batch(),
            dims: inference
                .layers
                .iter()
                .map(|l| (l.shape.m, l.shape.k))
                .collect(),
            weights: vec![Vec::new(); layers],
            inputs: Vec::new(),
            segments: vec![Vec::new(); layers],
        }
    }

    /// Files the child proven for `spec` where the root reads it (tasks in plan order).
    pub fn push(&mut self, spec: &TaskSpec, child: Child) {
        match *spec {
            TaskSpec::Weights { layer, .. } => self.weights[layer].push(child),
            TaskSpec::Inputs { .. } => self.inputs.push(child),
            TaskSpec::Layer { layer, .. } => self.segments[layer].push(child),
        }
    }

    pub fn children(&self) -> impl Iterator<Item = &Child> {
        self.weights
            .iter()
            .flatten()
            .chain(&self.inputs)
            .chain(self.segments.iter().flatten())
    }
}

const INFER_ROOT_MAGIC: &[u8; 4] = b"SSIR";

impl InferRootInput {
    /// The root's task input: B, L, each layer's (M, K), the child counts, then every child in
    /// the root's order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = INFER_ROOT_MAGIC.to_vec();
        put(&mut out, [self.batch as u32, self.dims.len() as u32]);
        put(
            &mut out,
            self.dims.iter().flat_map(|&(m, k)| [m as u32, k as u32]),
        );
        put(&mut out, self.weights.iter().map(|w| w.len() as u32));
        put(&mut out, [self.inputs.len() as u32]);
        put(&mut out, self.segments.iter().map(|w| w.len() as u32));
        for child in self.children() {
            put_child(&mut out, child);
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<InferRootInput, String> {
        let body = bytes
            .strip_prefix(INFER_ROOT_MAGIC)
            .ok_or("not an inference root input")?;
        let mut r = Words { bytes: body, at: 0 };
        let h = r.words(2)?;
        let layers = h[1] as usize;
        if layers == 0 || layers > MAX_LAYERS {
            return Err(format!("an inference root input of {layers} layers"));
        }
        let dims = r
            .words(2 * layers)?
            .chunks_exact(2)
            .map(|d| (d[0] as usize, d[1] as usize))
            .collect();
        let weights_n = r.words(layers)?;
        let inputs_n = r.u32()?;
        let segments_n = r.words(layers)?;
        let mut read =
            |n: u32| -> Result<Vec<Child>, String> { (0..n).map(|_| r.child()).collect() };
        let weights = weights_n
            .iter()
            .map(|&n| read(n))
            .collect::<Result<_, _>>()?;
        let inputs = read(inputs_n)?;
        let segments = segments_n
            .iter()
            .map(|&n| read(n))
            .collect::<Result<_, _>>()?;
        if !r.rest().is_empty() {
            return Err("trailing bytes after the inference root input".into());
        }
        Ok(InferRootInput {
            batch: h[0] as usize,
            dims,
            weights,
            inputs,
            segments,
        })
    }
}

/// Runs the inference root.
pub fn run_infer_root(input: &InferRootInput, max_steps: usize) -> Result<ProgramRun, KernelError> {
    let layers = input.dims.len();
    if layers == 0
        || layers > MAX_LAYERS
        || input.weights.len() != layers
        || input.segments.len() != layers
        || input.inputs.is_empty()
        || input
            .weights
            .iter()
            .chain(&input.segments)
            .any(Vec::is_empty)
    {
        return Err(KernelError::InvalidNode(
            "an inference root needs 1 to 64 layers, each with weights and layer segments, and inputs segments"
                .into(),
        ));
    }
    let node = Arc::new(input.clone());
    let load = HintFunc(Box::new(move |vm, _scopes, ids, ap, _consts| {
        let table = load_children(vm, node.children())?;
        insert_value_from_var_name("children", table, vm, ids, ap)?;
        let mut words = Vec::with_capacity(6 * node.dims.len());
        for (i, &(m, k)) in node.dims.iter().enumerate() {
            let shape = Shape {
                m,
                k,
                b: node.batch,
            };
            words.extend([
                m,
                k,
                node.weights[i].len(),
                node.segments[i].len(),
                Stream::Weights.chunks(&shape),
                Stream::Outputs.chunks(&shape),
            ]);
        }
        let layers = vm.add_memory_segment();
        let cells: Vec<MaybeRelocatable> =
            words.into_iter().map(|w| Felt252::from(w).into()).collect();
        vm.load_data(layers, &cells)?;
        insert_value_from_var_name("layers", layers, vm, ids, ap)?;
        let first = Shape {
            m: node.dims[0].0,
            k: node.dims[0].1,
            b: node.batch,
        };
        let values = [
            ("n_layers", node.dims.len()),
            ("b", node.batch),
            ("n_x", node.inputs.len()),
            ("chunks_x", Stream::Inputs.chunks(&first)),
        ];
        for (name, value) in values {
            insert_value_from_var_name(name, Felt252::from(value), vm, ids, ap)?;
        }
        Ok(())
    }));
    let hints = HashMap::from([("starkscale_infer_root_inputs".to_string(), Rc::new(load))]);
    run_pinned(Pinned::InferRoot, max_steps, hints)
}

/// The public output of the inference root: what an inference certificate states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferRootOutput {
    pub batch: usize,
    /// Each layer's (M, K).
    pub dims: Vec<(usize, usize)>,
    pub model_commitment: Digest,
    pub x_commitment: Digest,
    pub logits_commitment: Digest,
    pub seed: Digest,
    pub facts: Vec<Fact>,
}

const ROOT_DIMS: usize = 36;

impl InferRootOutput {
    pub fn from_words(words: &[u32]) -> Result<InferRootOutput, String> {
        if words.len() < ROOT_DIMS + 1 {
            return Err(format!("inference root output of {} words", words.len()));
        }
        if words[0] != FORMAT_VERSION || words[1] != KIND_INFER_ROOT {
            return Err(format!(
                "version {} kind {} is not an inference root",
                words[0], words[1]
            ));
        }
        let layers = words[2] as usize;
        if layers == 0 || layers > MAX_LAYERS || words.len() < ROOT_DIMS + 2 * layers + 1 {
            return Err(format!("inference root output of {layers} layers"));
        }
        let n = words[ROOT_DIMS + 2 * layers] as usize;
        let facts_at = ROOT_DIMS + 2 * layers + 1;
        if words.len() != facts_at + 8 * n {
            return Err(format!(
                "inference root output has {} words for {n} children",
                words.len()
            ));
        }
        Ok(InferRootOutput {
            batch: words[3] as usize,
            dims: words[ROOT_DIMS..ROOT_DIMS + 2 * layers]
                .chunks_exact(2)
                .map(|d| (d[0] as usize, d[1] as usize))
                .collect(),
            model_commitment: Digest(eight(&words[4..])),
            x_commitment: Digest(eight(&words[12..])),
            logits_commitment: Digest(eight(&words[20..])),
            seed: Digest(eight(&words[28..])),
            facts: words[facts_at..]
                .chunks_exact(8)
                .map(|c| Digest(eight(c)))
                .collect(),
        })
    }
}
