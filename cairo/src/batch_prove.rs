//! Proving a whole batch job in one process: compute Y natively, commit, cut the streams into
//! segments, prove every segment and the root, and assemble the certificate. The fleet does the
//! same with one task per segment.

use std::time::Instant;

use starkscale_common::rss;

use crate::batch::{self, plan_segments, Planner, RootInput, Rows, Stream};
use crate::batch_certificate::BatchCertificate;
use crate::program::Pinned;
use crate::prove::Prover;
use crate::run::ProgramRun;
use crate::tree::Child;
use crate::KernelError;

/// What proving a batch job cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchStats {
    /// Seconds computing Y, the commitments and v natively.
    pub native_s: f64,
    pub segments: usize,
    pub steps: usize,
    /// Seconds in cairo-vm and the adapter, over all proofs.
    pub run_s: f64,
    pub prove_s: f64,
    /// Per stream: Blake2s compressions proven (one per chunk column and row).
    pub blocks: [usize; 3],
    /// Every proof in order: what it was (a stream and its rows, or the root), its Cairo steps
    /// and its proving seconds.
    pub proofs: Vec<ProofStats>,
}

impl BatchStats {
    /// Proves `run` (whose process peak was reset before it ran), counting its steps, times and
    /// peak memory under `what`; returns the proof's bytes and the run's public output.
    pub(crate) fn prove(
        &mut self,
        prover: &Prover,
        run: ProgramRun,
        what: String,
    ) -> Result<(Vec<u8>, Vec<u32>), KernelError> {
        self.steps += run.stats.steps;
        self.run_s += run.stats.run_s + run.stats.adapt_s;
        let (proof, prove_s) = prover.prove(run.input)?;
        self.prove_s += prove_s;
        self.proofs.push(ProofStats {
            what,
            steps: run.stats.steps,
            prove_s,
            peak_rss_bytes: rss::peak_rss_bytes(),
        });
        Ok((proof.to_bytes(), run.output))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProofStats {
    pub what: String,
    pub steps: usize,
    pub prove_s: f64,
    /// The process's peak resident memory while running and proving it.
    pub peak_rss_bytes: u64,
}

/// Proves Y = A·X for `a` (M × K) and `x` (B × K, one input per row); returns Y (B × M), the
/// certificate and the costs. `blocks` sizes the segments (Blake2s compressions each).
pub fn prove_batch(
    a: &Rows,
    x: &Rows,
    prover: &Prover,
    blocks: usize,
    max_steps: usize,
) -> Result<(Rows, BatchCertificate, BatchStats), KernelError> {
    if a.width() != x.width() || a.height() == 0 || x.height() == 0 {
        return Err(KernelError::InvalidTile(format!(
            "A is {} × {} and X is {} × {}: X needs one input of {} entries per row",
            a.height(),
            a.width(),
            x.height(),
            x.width(),
            a.width()
        )));
    }
    let started = Instant::now();
    let y = batch::multiply(a, x);
    let plan = Planner::new(a, x, &y);
    let mut stats = BatchStats {
        native_s: started.elapsed().as_secs_f64(),
        ..BatchStats::default()
    };
    let program_hash = Pinned::Batch.hash();
    let mut children: [Vec<Child>; 3] = Default::default();
    let mut proofs = Vec::new();
    let specs = plan_segments(&plan.shape, blocks);
    for (spec, input) in specs.iter().zip(plan.segments(&specs)) {
        rss::reset_peak_rss();
        let run = batch::run_segment(&input, max_steps)?;
        let index = Stream::ALL
            .iter()
            .position(|s| *s == spec.stream)
            .unwrap_or(0);
        stats.blocks[index] += spec.rows * spec.stream.chunks(&plan.shape);
        stats.segments += 1;
        let what = format!(
            "{} rows {}..{}",
            spec.stream.name(),
            spec.row0,
            spec.row0 + spec.rows
        );
        let (proof, output) = stats.prove(prover, run, what)?;
        proofs.push(proof);
        children[index].push(Child {
            program_hash,
            output,
        });
    }
    let [weights, inputs, outputs] = children;
    let root_input = RootInput {
        shape: plan.shape,
        weights,
        inputs,
        outputs,
    };
    rss::reset_peak_rss();
    let run = batch::run_root(&root_input, max_steps)?;
    let root = batch::RootOutput::from_words(&run.output)
        .map_err(|e| KernelError::Vm(format!("batch root wrote a malformed output: {e}")))?;
    proofs.push(stats.prove(prover, run, "root".into())?.0);
    let cert = BatchCertificate {
        shape: plan.shape,
        a_commitment: root.a_commitment,
        x_commitment: root.x_commitment,
        y_commitment: root.y_commitment,
        proofs,
    };
    Ok((y, cert, stats))
}
