//! The map program's hints: how a tile's private inputs enter cairo-vm.
//!
//! cairo-vm cannot run the Python hints Cairo 0 usually carries, so the program's hints are short
//! directives (`starkscale_<name> key=value ...`) parsed once at load time. Offsets in them come
//! from `programs/gen_map.py`, the one place the frame layout is defined. Hints only write cells
//! the program then constrains (digested, multiplied or range-checked); nothing they write is
//! trusted.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use cairo_vm::hint_processor::hint_processor_definition::{HintProcessorLogic, HintReference};
use cairo_vm::serde::deserialize_program::ApTracking;
use cairo_vm::types::exec_scope::ExecutionScopes;
use cairo_vm::types::relocatable::{MaybeRelocatable, Relocatable};
use cairo_vm::vm::errors::hint_errors::HintError;
use cairo_vm::vm::errors::vm_errors::VirtualMachineError;
use cairo_vm::vm::runners::cairo_runner::{ResourceTracker, RunResources};
use cairo_vm::vm::vm_core::VirtualMachine;
use cairo_vm::Felt252;
use num_traits::ToPrimitive;

use crate::encoding::TileInput;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// Writes x + 128 at fp + x, and the header cells at fp + header.
    LoadInputs { x: i64, header: i64 },
    /// Writes the 1024 words of the next row pair at ap; [ap + n] counts the pairs left.
    LoadPair { n: i64 },
    /// Reads the packed block sum S at ap + s and writes Y0 + 2^23 at ap + y.
    Split { s: i64, y: i64 },
}

impl Hint {
    fn parse(code: &str) -> Option<Hint> {
        let mut parts = code.split_whitespace();
        let name = parts.next()?;
        let args: HashMap<&str, i64> = parts
            .map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k, v.parse().ok()?))
            })
            .collect::<Option<_>>()?;
        let arg = |k: &str| args.get(k).copied();
        match name {
            "starkscale_load_inputs" => Some(Hint::LoadInputs {
                x: arg("x")?,
                header: arg("header")?,
            }),
            "starkscale_load_pair" => Some(Hint::LoadPair { n: arg("n")? }),
            "starkscale_split" => Some(Hint::Split {
                s: arg("s")?,
                y: arg("y")?,
            }),
            _ => None,
        }
    }
}

/// Hint processor for one run of the map program, with a step budget.
pub(crate) struct MapHints {
    tile: Arc<TileInput>,
    resources: RunResources,
}

impl MapHints {
    pub(crate) fn new(tile: Arc<TileInput>, max_steps: usize) -> MapHints {
        MapHints {
            tile,
            resources: RunResources::new(max_steps),
        }
    }
}

fn at(base: Relocatable, off: i64) -> Result<Relocatable, HintError> {
    let offset = base.offset as i64 + off;
    let offset = usize::try_from(offset)
        .map_err(|_| HintError::CustomHint("hint offset before segment start".into()))?;
    Ok(Relocatable::from((base.segment_index, offset)))
}

fn custom(msg: impl Into<String>) -> HintError {
    HintError::CustomHint(msg.into().into_boxed_str())
}

/// Interprets a field element as a signed integer of magnitude below 2^63.
fn felt_to_i64(v: &Felt252) -> Option<i64> {
    if let Some(u) = v.to_u64().filter(|&u| u <= i64::MAX as u64) {
        return Some(u as i64);
    }
    let neg = -*v;
    neg.to_u64()
        .filter(|&u| u <= i64::MAX as u64)
        .map(|u| -(u as i64))
}

impl HintProcessorLogic for MapHints {
    fn compile_hint(
        &self,
        hint_code: &str,
        _ap_tracking_data: &ApTracking,
        _reference_ids: &HashMap<String, usize>,
        _references: &[HintReference],
        _accessible_scopes: &[String],
        _constants: Arc<HashMap<String, Felt252>>,
    ) -> Result<Box<dyn Any>, VirtualMachineError> {
        let hint = Hint::parse(hint_code).ok_or_else(|| {
            VirtualMachineError::CompileHintFail(format!("unknown hint: {hint_code}").into())
        })?;
        Ok(Box::new(hint))
    }

    fn execute_hint(
        &mut self,
        vm: &mut VirtualMachine,
        _exec_scopes: &mut ExecutionScopes,
        hint_data: &Box<dyn Any>,
    ) -> Result<(), HintError> {
        let hint = hint_data
            .downcast_ref::<Hint>()
            .ok_or_else(|| custom("hint data of another processor"))?;
        let tile = &self.tile;
        match *hint {
            Hint::LoadInputs { x, header } => {
                let fp = vm.get_fp();
                let words: Vec<MaybeRelocatable> = tile
                    .x_words()
                    .into_iter()
                    .map(|w| MaybeRelocatable::from(Felt252::from(w)))
                    .collect();
                vm.load_data(at(fp, x)?, &words)?;
                let odd = tile.rows() % 2;
                let cells = [
                    tile.row0 as u64,
                    tile.col0 as u64,
                    tile.rows() as u64,
                    tile.cols() as u64,
                    tile.pairs() as u64,
                    odd as u64,
                ];
                let cells: Vec<MaybeRelocatable> =
                    cells.iter().map(|&v| Felt252::from(v).into()).collect();
                vm.load_data(at(fp, header)?, &cells)?;
            }
            Hint::LoadPair { n } => {
                let ap = vm.get_ap();
                let left = vm.get_integer(at(ap, n)?)?.to_u64().unwrap_or(u64::MAX);
                let pair = (tile.pairs() as u64)
                    .checked_sub(left)
                    .filter(|&p| p < tile.pairs() as u64)
                    .ok_or_else(|| custom(format!("no row pair with {left} pairs left")))?;
                let words: Vec<MaybeRelocatable> = tile
                    .pair_words(pair as usize)
                    .into_iter()
                    .map(|w| MaybeRelocatable::from(Felt252::from(w)))
                    .collect();
                vm.load_data(ap, &words)?;
            }
            Hint::Split { s, y } => {
                let ap = vm.get_ap();
                let sum = vm.get_integer(at(ap, s)?)?;
                let sum = felt_to_i64(&sum).ok_or_else(|| custom("block sum out of range"))?;
                // Y0 is the low slot read as a signed 24-bit value; Y0 + 2^23 is its offset form.
                let y0_shifted = (sum + (1 << 23)).rem_euclid(1 << 24);
                vm.insert_value(at(ap, y)?, Felt252::from(y0_shifted))?;
            }
        }
        Ok(())
    }
}

impl ResourceTracker for MapHints {
    fn consumed(&self) -> bool {
        self.resources.consumed()
    }
    fn consume_step(&mut self) {
        self.resources.consume_step()
    }
    fn get_n_steps(&self) -> Option<usize> {
        self.resources.get_n_steps()
    }
    fn run_resources(&self) -> &RunResources {
        &self.resources
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directives_and_rejects_others() {
        assert_eq!(
            Hint::parse("starkscale_split s=1234 y=-5"),
            Some(Hint::Split { s: 1234, y: -5 })
        );
        assert_eq!(
            Hint::parse("starkscale_load_pair n=-3"),
            Some(Hint::LoadPair { n: -3 })
        );
        assert_eq!(Hint::parse("memory[ap] = 1"), None);
        assert_eq!(Hint::parse("starkscale_split s=1"), None);
    }

    #[test]
    fn signed_felts() {
        assert_eq!(felt_to_i64(&Felt252::from(-5i64)), Some(-5));
        assert_eq!(felt_to_i64(&Felt252::from(7u64)), Some(7));
        assert_eq!(felt_to_i64(&(Felt252::from(1u128 << 100))), None);
    }
}
