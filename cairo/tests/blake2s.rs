//! The Blake2s opcode, as the kernel drives it, against native Blake2s on the lengths the kernel
//! never produces: empty input, short inputs, partial last blocks, several blocks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::rc::Rc;

use cairo_vm::hint_processor::builtin_hint_processor::builtin_hint_processor_definition::HintFunc;
use cairo_vm::hint_processor::builtin_hint_processor::hint_utils::insert_value_from_var_name;
use cairo_vm::types::relocatable::MaybeRelocatable;
use cairo_vm::Felt252;
use rand::{Rng, SeedableRng};
use starkscale_cairo::encoding::blake2s_words;
use starkscale_cairo::run::{run_program, ProgramRun};
use starkscale_cairo::verify::verify_stark_only;
use starkscale_cairo::{Profile, Prover};

const PROGRAM: &[u8] = include_bytes!("fixtures/blake2s.json");

fn hash_in_cairo(words: &[u32]) -> ProgramRun {
    let words = words.to_vec();
    let load = HintFunc(Box::new(
        move |vm, _scopes, ids, ap_tracking, _constants| {
            let segment = vm.add_memory_segment();
            let data: Vec<MaybeRelocatable> =
                words.iter().map(|&w| Felt252::from(w).into()).collect();
            vm.load_data(segment, &data)?;
            insert_value_from_var_name("words", segment, vm, ids, ap_tracking)?;
            insert_value_from_var_name("n", Felt252::from(words.len()), vm, ids, ap_tracking)
        },
    ));
    let hints = HashMap::from([("starkscale_test_words".to_string(), Rc::new(load))]);
    run_program(PROGRAM, 1_000_000, hints).unwrap()
}

fn random_words(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen()).collect()
}

#[test]
fn opcode_digests_equal_native_blake2s() {
    for (seed, n) in [0usize, 1, 3, 15, 16, 17, 31, 32, 33, 100]
        .into_iter()
        .enumerate()
    {
        let words = random_words(n, seed as u64);
        let run = hash_in_cairo(&words);
        assert_eq!(&run.output[..8], &blake2s_words(&words).0, "{n} words");
        assert_eq!(run.output[8] as usize, n);
    }
}

#[test]
fn extreme_words() {
    for words in [
        vec![u32::MAX; 17],
        vec![0; 16],
        vec![0x8000_0000, 1, u32::MAX],
    ] {
        assert_eq!(&hash_in_cairo(&words).output[..8], &blake2s_words(&words).0);
    }
}

#[test]
fn partial_block_hash_is_provable() {
    let run = hash_in_cairo(&random_words(17, 99));
    let prover = Prover::new(Profile::Test);
    let bytes = prover.prove(run.input).unwrap().0.to_bytes();
    verify_stark_only(&bytes).unwrap();
}
