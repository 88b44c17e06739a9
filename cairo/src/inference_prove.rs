//! Proving a whole inference in one process (`starkscale infer`): every layer computed natively
//! and committed, every segment proven, then the inference root, assembled into a certificate.
//! The fleet does the same with one task per segment.

use std::time::Instant;

use starkscale_common::rss;

use crate::batch::run_segment;
use crate::batch::Rows;
use crate::batch_prove::{BatchStats, ProofStats};
use crate::inference::{
    run_infer_root, InferRootInput, InferRootOutput, Inference, TaskInput, TaskSpec,
};
use crate::inference_certificate::InferenceCertificate;
use crate::layer::Model;
use crate::layer_segment::run_layer_segment;
use crate::program::Pinned;
use crate::prove::Prover;
use crate::tree::Child;
use crate::KernelError;

/// Proves `model` on `x` (B × K int8, one input per row). Returns the native inference (logits
/// and every layer's values), the certificate and the costs. `blocks` sizes the segments.
pub fn prove_inference<'a>(
    model: &'a Model,
    x: &'a Rows,
    prover: &Prover,
    blocks: usize,
    max_steps: usize,
) -> Result<(Inference<'a>, InferenceCertificate, BatchStats), KernelError> {
    let started = Instant::now();
    let inference = Inference::new(model, x)?;
    let mut stats = BatchStats {
        native_s: started.elapsed().as_secs_f64(),
        ..BatchStats::default()
    };
    let layers = model.layers.len();
    let mut root = InferRootInput {
        batch: x.height(),
        dims: inference
            .layers
            .iter()
            .map(|l| (l.shape.m, l.shape.k))
            .collect(),
        weights: vec![Vec::new(); layers],
        inputs: Vec::new(),
        segments: vec![Vec::new(); layers],
    };
    let mut proofs = Vec::new();
    for spec in inference.plan(blocks) {
        rss::reset_peak_rss();
        let (run, program, blocks) = match inference.task(&spec) {
            TaskInput::Segment(input) => {
                let blocks = input.rows() * input.chunks();
                (run_segment(&input, max_steps)?, Pinned::Batch, blocks)
            }
            TaskInput::Layer(input) => {
                let blocks = input.rows() * input.chunks();
                (run_layer_segment(&input, max_steps)?, Pinned::Layer, blocks)
            }
        };
        stats.steps += run.stats.steps;
        stats.run_s += run.stats.run_s + run.stats.adapt_s;
        let steps = run.stats.steps;
        let child = Child {
            program_hash: program.hash(),
            output: run.output,
        };
        match spec {
            TaskSpec::Weights { layer, .. } => {
                stats.blocks[0] += blocks;
                root.weights[layer].push(child);
            }
            TaskSpec::Inputs { .. } => {
                stats.blocks[1] += blocks;
                root.inputs.push(child);
            }
            TaskSpec::Layer { layer, .. } => {
                stats.blocks[2] += blocks;
                root.segments[layer].push(child);
            }
        }
        let (proof, prove_s) = prover.prove(run.input)?;
        stats.prove_s += prove_s;
        stats.segments += 1;
        stats.proofs.push(ProofStats {
            what: spec.describe(),
            steps,
            prove_s,
            peak_rss_bytes: rss::peak_rss_bytes(),
        });
        proofs.push(proof.to_bytes());
    }
    rss::reset_peak_rss();
    let run = run_infer_root(&root, max_steps)?;
    let statement = InferRootOutput::from_words(&run.output).map_err(|e| {
        KernelError::Vm(format!("the inference root wrote a malformed output: {e}"))
    })?;
    stats.steps += run.stats.steps;
    stats.run_s += run.stats.run_s + run.stats.adapt_s;
    let steps = run.stats.steps;
    let (proof, prove_s) = prover.prove(run.input)?;
    stats.prove_s += prove_s;
    stats.proofs.push(ProofStats {
        what: "root".into(),
        steps,
        prove_s,
        peak_rss_bytes: rss::peak_rss_bytes(),
    });
    proofs.push(proof.to_bytes());
    let cert = InferenceCertificate {
        batch: statement.batch,
        dims: statement.dims,
        model_commitment: statement.model_commitment,
        x_commitment: statement.x_commitment,
        logits_commitment: statement.logits_commitment,
        proofs,
    };
    Ok((inference, cert, stats))
}
