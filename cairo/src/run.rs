//! Executes the map kernel and the reduce programs in cairo-vm and adapts the execution for stwo.

use std::sync::Arc;
use std::time::Instant;

use std::collections::HashMap;
use std::rc::Rc;

use cairo_vm::cairo_run::{cairo_run_program, CairoRunConfig};
use cairo_vm::hint_processor::builtin_hint_processor::builtin_hint_processor_definition::{
    BuiltinHintProcessor, HintFunc,
};
use cairo_vm::hint_processor::builtin_hint_processor::hint_utils::insert_value_from_var_name;
use cairo_vm::hint_processor::hint_processor_definition::HintProcessor;
use cairo_vm::types::layout_name::LayoutName;
use cairo_vm::types::program::Program;
use cairo_vm::types::relocatable::{MaybeRelocatable, Relocatable};
use cairo_vm::vm::errors::cairo_run_errors::CairoRunError;
use cairo_vm::vm::errors::hint_errors::HintError;
use cairo_vm::vm::errors::vm_errors::VirtualMachineError;
use cairo_vm::vm::errors::vm_exception::VmException;
use cairo_vm::vm::runners::builtin_runner::BuiltinRunner;
use cairo_vm::vm::runners::cairo_runner::{CairoRunner, RunResources};
use cairo_vm::vm::vm_core::VirtualMachine;
use cairo_vm::Felt252;
use num_traits::ToPrimitive;
use stwo_cairo_adapter::ProverInput;

use crate::encoding::{MapOutput, TileInput, KIND_MAP};
use crate::hints::MapHints;
use crate::program::{map_program, map_unbound_program, Pinned};
use crate::tree::{Child, ReduceInput, KIND_NODE};
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

/// A finished run of the map kernel: what to prove, and what it computed.
pub struct MapRun {
    pub input: ProverInput,
    /// The public output the proof will state.
    pub output: MapOutput,
    pub stats: RunStats,
}

impl std::fmt::Debug for MapRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapRun")
            .field("output", &self.output)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Runs the map program on `tile` within `max_steps`.
pub fn run_map(tile: &TileInput, max_steps: usize) -> Result<MapRun, KernelError> {
    run_kernel(map_program(), tile, max_steps)
}

/// Runs the kernel without its digest chains (benchmarks only: its proofs bind nothing).
pub fn run_map_unbound(tile: &TileInput, max_steps: usize) -> Result<MapRun, KernelError> {
    run_kernel(map_unbound_program(), tile, max_steps)
}

fn run_kernel(
    program: &Program,
    tile: &TileInput,
    max_steps: usize,
) -> Result<MapRun, KernelError> {
    let mut hints = MapHints::new(Arc::new(tile.clone()), max_steps);
    let (runner, input, stats) = execute(program, &mut hints, max_steps)?;
    let words = output_words(&runner)?;
    let output = MapOutput::from_words(&words)
        .map_err(|e| KernelError::Vm(format!("kernel wrote a malformed output: {e}")))?;
    Ok(MapRun {
        input,
        output,
        stats,
    })
}

/// A run of a program other than the kernel.
pub struct ProgramRun {
    pub input: ProverInput,
    /// The output builtin's cells (each must be a u32).
    pub output: Vec<u32>,
    pub stats: RunStats,
}

impl std::fmt::Debug for ProgramRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgramRun")
            .field("output", &self.output)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Runs any Cairo 0 program compiled with `--proof_mode` and the bootloader's builtins, with
/// cairo-vm's built-in hints (the common library's) plus `extra_hints` by hint code.
pub fn run_program(
    program_json: &[u8],
    max_steps: usize,
    extra_hints: HashMap<String, Rc<HintFunc>>,
) -> Result<ProgramRun, KernelError> {
    let program = Program::from_bytes(program_json, Some("main"))
        .map_err(|e| KernelError::Vm(format!("cannot load program: {e}")))?;
    let mut hints = BuiltinHintProcessor::new(extra_hints, RunResources::new(max_steps));
    let (runner, input, stats) = execute(&program, &mut hints, max_steps)?;
    Ok(ProgramRun {
        output: output_words(&runner)?,
        input,
        stats,
    })
}

/// Runs a pinned program with cairo-vm's built-in hints plus `extra_hints` by hint code.
pub(crate) fn run_pinned(
    program: Pinned,
    max_steps: usize,
    extra_hints: HashMap<String, Rc<HintFunc>>,
) -> Result<ProgramRun, KernelError> {
    let mut hints = BuiltinHintProcessor::new(extra_hints, RunResources::new(max_steps));
    let (runner, input, stats) = execute(program.program(), &mut hints, max_steps)?;
    Ok(ProgramRun {
        output: output_words(&runner)?,
        input,
        stats,
    })
}

/// Runs `reduce.cairo` or `root.cairo` (as `input.root` says) on a node's children.
pub fn run_reduce(input: &ReduceInput, max_steps: usize) -> Result<ProgramRun, KernelError> {
    let kind = input.child_kind();
    if input.children.is_empty() || !(kind == KIND_MAP || kind == KIND_NODE) {
        return Err(KernelError::InvalidNode(
            "a reduce node needs children that are all map tiles or all nodes".into(),
        ));
    }
    let program = if input.root {
        Pinned::Root
    } else {
        Pinned::Reduce
    };
    let node = Arc::new(input.clone());
    let load = HintFunc(Box::new(
        move |vm, _scopes, ids, ap_tracking, _constants| {
            let table = load_children(vm, &node.children)?;
            insert_value_from_var_name("children", table, vm, ids, ap_tracking)?;
            let mut values = vec![
                ("mode", node.child_kind()),
                ("n_children", node.children.len() as u32),
                ("n_blocks", node.blocks),
                ("col_tiles", node.col_tiles),
                ("rows", node.rows),
                ("cols", node.cols),
                ("tile_rows", node.tile_rows),
                ("tile_cols", node.tile_cols),
            ];
            if !node.root {
                values.push(("row0", node.row0));
            }
            for (name, value) in values {
                insert_value_from_var_name(name, Felt252::from(value), vm, ids, ap_tracking)?;
            }
            Ok(())
        },
    ));
    let hints = HashMap::from([("starkscale_reduce_inputs".to_string(), Rc::new(load))]);
    let mut hints = BuiltinHintProcessor::new(hints, RunResources::new(max_steps));
    let (runner, input, stats) = execute(program.program(), &mut hints, max_steps)?;
    Ok(ProgramRun {
        output: output_words(&runner)?,
        input,
        stats,
    })
}

/// Loads a reduce program's children table: one segment per child holding its program hash then
/// its output, and a table segment of pointers to them, which is returned.
pub(crate) fn load_children<'a>(
    vm: &mut VirtualMachine,
    children: impl IntoIterator<Item = &'a Child>,
) -> Result<Relocatable, HintError> {
    let table = vm.add_memory_segment();
    let mut entries = Vec::new();
    for child in children {
        let segment = vm.add_memory_segment();
        let cells: Vec<MaybeRelocatable> = child
            .program_hash
            .0
            .iter()
            .chain(&child.output)
            .map(|&w| Felt252::from(w).into())
            .collect();
        vm.load_data(segment, &cells)?;
        entries.push(MaybeRelocatable::from(segment));
    }
    vm.load_data(table, &entries)?;
    Ok(table)
}

fn execute(
    program: &Program,
    hints: &mut dyn HintProcessor,
    max_steps: usize,
) -> Result<(CairoRunner, ProverInput, RunStats), KernelError> {
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
    let runner = cairo_run_program(program, &config, hints).map_err(|e| classify(e, max_steps))?;
    let steps = runner
        .get_relocatable_trace()
        .map_err(|e| KernelError::Vm(e.to_string()))?
        .len();
    let run_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let input = stwo_cairo_adapter::adapter::adapt(&runner)
        .map_err(|e| KernelError::Adapt(format!("{e:#}")))?;
    let stats = RunStats {
        steps,
        run_s,
        adapt_s: started.elapsed().as_secs_f64(),
    };
    Ok((runner, input, stats))
}

/// The output builtin's cells, each of which the kernel keeps below 2^32.
fn output_words(runner: &CairoRunner) -> Result<Vec<u32>, KernelError> {
    let base = runner
        .vm
        .get_builtin_runners()
        .iter()
        .find_map(|b| match b {
            BuiltinRunner::Output(out) => Some(out.base()),
            _ => None,
        })
        .ok_or_else(|| KernelError::Vm("program has no output builtin".into()))?;
    let mut words = Vec::new();
    while let Ok(cell) = runner
        .vm
        .get_integer(Relocatable::from((base as isize, words.len())))
    {
        let word = cell
            .to_u32()
            .ok_or_else(|| KernelError::Vm("an output cell is not a u32".into()))?;
        words.push(word);
    }
    Ok(words)
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
