//! Proving a whole inference in one process (`starkscale infer`): every layer computed natively
//! and committed, every segment proven, then the inference root, assembled into a certificate.
//! The fleet does the same with one task per segment.

use std::time::Instant;

use starkscale_common::rss;

use crate::batch::Rows;
use crate::batch_prove::BatchStats;
use crate::inference::{run_infer_root, InferRootInput, InferRootOutput, Inference, TaskSpec};
use crate::inference_certificate::InferenceCertificate;
use crate::layer::Model;
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
    let mut root = InferRootInput::for_inference(&inference);
    let mut proofs = Vec::new();
    for spec in inference.plan(blocks) {
        rss::reset_peak_rss();
        let task = inference.task(&spec);
        let (run, program) = task.run(max_steps)?;
        let kind = match spec {
            TaskSpec::Weights { .. } => 0,
            TaskSpec::Inputs { .. } => 1,
            TaskSpec::Layer { .. } => 2,
        };
        stats.blocks[kind] += task.blocks();
        stats.segments += 1;
        let (proof, output) = stats.prove(prover, run, spec.describe())?;
        proofs.push(proof);
        root.push(
            &spec,
            Child {
                program_hash: program.hash(),
                output,
            },
        );
    }
    rss::reset_peak_rss();
    let run = run_infer_root(&root, max_steps)?;
    let statement = InferRootOutput::from_words(&run.output).map_err(|e| {
        KernelError::Vm(format!("the inference root wrote a malformed output: {e}"))
    })?;
    proofs.push(stats.prove(prover, run, "root".into())?.0);
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
