//! Executes the map kernel in cairo-vm and adapts the execution for stwo.

use std::sync::Arc;
use std::time::Instant;

use cairo_vm::cairo_run::{cairo_run_program, CairoRunConfig};
use cairo_vm::types::layout_name::LayoutName;
use cairo_vm::vm::errors::cairo_run_errors::CairoRunError;
use cairo_vm::vm::errors::vm_errors::VirtualMachineError;
use cairo_vm::vm::errors::vm_exception::VmException;
use stwo_cairo_adapter::ProverInput;

use crate::encoding::TileInput;
use crate::hints::MapHints;
use crate::program::map_program;
use crate::KernelError;

/// Default step budget: a 1022-row tile needs ~1.25 M steps.
pub const DEFAULT_MAX_STEPS: usize = 1 << 22;

/// What a run cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunStats {
    /// Cairo steps executed.
    pub steps: usize,
    /// Seconds in cairo-vm.
    pub run_s: f64,
    /// Seconds adapting the trace and memory for the prover.
    pub adapt_s: f64,
}

/// Runs the map program on `tile` within `max_steps` and returns the prover's input.
pub fn run_map(tile: &TileInput, max_steps: usize) -> Result<(ProverInput, RunStats), KernelError> {
    let started = Instant::now();
    let config = CairoRunConfig {
        entrypoint: "main",
        trace_enabled: true,
        relocate_mem: false,
        relocate_trace: false,
        layout: LayoutName::all_cairo_stwo,
        proof_mode: true,
        fill_holes: true,
        disable_trace_padding: true,
        ..CairoRunConfig::default()
    };
    let mut hints = MapHints::new(Arc::new(tile.clone()), max_steps);
    let runner = cairo_run_program(map_program(), &config, &mut hints)
        .map_err(|e| classify(e, max_steps))?;
    let steps = runner
        .get_relocatable_trace()
        .map_err(|e| KernelError::Vm(e.to_string()))?
        .len();
    let run_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let input = stwo_cairo_adapter::adapter::adapt(&runner)
        .map_err(|e| KernelError::Adapt(format!("{e:#}")))?;
    Ok((
        input,
        RunStats {
            steps,
            run_s,
            adapt_s: started.elapsed().as_secs_f64(),
        },
    ))
}

fn classify(err: CairoRunError, max_steps: usize) -> KernelError {
    let exhausted = |e: &VirtualMachineError| matches!(e, VirtualMachineError::UnfinishedExecution);
    match &err {
        CairoRunError::VirtualMachine(e) if exhausted(e) => {
            KernelError::StepLimit { limit: max_steps }
        }
        CairoRunError::VmException(VmException { inner_exc, .. }) if exhausted(inner_exc) => {
            KernelError::StepLimit { limit: max_steps }
        }
        _ => KernelError::Vm(err.to_string()),
    }
}
