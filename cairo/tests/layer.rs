//! The layer kernel (programs/layer.cairo) in cairo-vm against the native semantics
//! (docs/inference.md): its output equals the natively computed one for hidden and final
//! segments at the start, middle and end of a batch, and every dishonest hint fails the run.

use cairo_vm::Felt252;
use rand::{Rng, SeedableRng};
use starkscale_cairo::batch::{self, Rows, Shape};
use starkscale_cairo::layer::{Epilogue, Requant};
use starkscale_cairo::layer_segment::{
    expected_layer_output, logits_rows, run_layer_segment, run_layer_segment_with_bad_hint,
    LayerSegmentInput, Next,
};

const STEPS: usize = 1 << 24;

fn random_i8(rng: &mut rand::rngs::StdRng, rows: usize, width: usize) -> Rows {
    Rows::I8 {
        width,
        data: (0..rows * width)
            .map(|_| rng.gen_range(-128..=127))
            .collect(),
    }
}

/// A layer of `m` outputs over `k` inputs with a random epilogue: per-channel scales spread
/// over shifts 0..=20 (so both roundings and both signs occur), biases of either sign.
fn layer(rng: &mut rand::rngs::StdRng, m: usize, k: usize, relu: bool) -> (Rows, Epilogue) {
    let a = random_i8(rng, m, k);
    let requant = (0..m)
        .map(|i| {
            let scale = if i == 0 {
                // Shift 0: no second rounding.
                0.75
            } else {
                rng.gen_range(0.5f64..1.0) / f64::from(1u32 << rng.gen_range(0..20))
            };
            Requant::from_scale(scale).expect("scale in (0, 1)")
        })
        .collect();
    let zero_point = rng.gen_range(-20..=20);
    let epilogue = Epilogue {
        bias: (0..m).map(|_| rng.gen_range(-50_000..=50_000)).collect(),
        requant,
        zero_point,
        lo: if relu { zero_point } else { -128 },
        hi: 127,
    };
    epilogue.check().expect("a valid epilogue");
    (a, epilogue)
}

struct Case {
    shape: Shape,
    y: Rows,
    epilogue: Epilogue,
    sigma: Felt252,
    rho: Felt252,
}

fn case(seed: u64, m: usize, k: usize, b: usize) -> Case {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (a, epilogue) = layer(&mut rng, m, k, seed.is_multiple_of(2));
    let x = random_i8(&mut rng, b, k);
    Case {
        shape: Shape { m, k, b },
        y: batch::multiply(&a, &x),
        epilogue,
        sigma: Felt252::from(rng.gen::<u64>()) * Felt252::from(rng.gen::<u64>()),
        rho: Felt252::from(rng.gen::<u64>()) * Felt252::from(rng.gen::<u64>()),
    }
}

fn segment(c: &Case, row0: usize, rows: usize, next: Next) -> LayerSegmentInput {
    LayerSegmentInput {
        shape: c.shape,
        row0,
        data: c.y.slice(row0, rows),
        sigma: c.sigma,
        rho: c.rho,
        epilogue: c.epilogue.clone(),
        states: batch::chain_states(&c.y, row0),
        next,
    }
}

#[test]
fn hidden_and_final_segments_match_the_native_output() {
    // 20 outputs: two chunk columns, the second with 12 padding positions.
    let c = case(3, 20, 37, 7);
    let z = c.epilogue.apply_rows(&c.y);
    let logits = logits_rows(&z);
    // A hidden layer's V and rho2 (any field elements: the next layer's).
    let v: Vec<Felt252> = (0..20u64).map(|i| Felt252::from(i * 7919 + 13)).collect();
    let rho2 = Felt252::from(123_456_789u64);
    for (row0, rows) in [(0, 3), (3, 2), (5, 2), (0, 7)] {
        for hidden in [true, false] {
            let next = if hidden {
                Next::Hidden {
                    v: v.clone(),
                    rho: rho2,
                }
            } else {
                Next::Final {
                    states: batch::chain_states(&logits, row0),
                }
            };
            let input = segment(&c, row0, rows, next);
            let run = run_layer_segment(&input, STEPS).expect("layer segment runs");
            assert_eq!(
                run.output,
                expected_layer_output(&input),
                "rows {row0}..{} hidden {hidden}",
                row0 + rows
            );
            if !hidden && row0 + rows == 7 {
                // The last segment's logits chains end in the logits matrix's digests.
                let digests = batch::chain_digests(&logits);
                let at = 64 + 16 * 2;
                for (col, d) in digests.iter().enumerate() {
                    assert_eq!(run.output[at + 16 * col + 8..at + 16 * col + 16], d.0);
                }
            }
        }
    }
}

#[test]
fn the_native_epilogue_covers_rounding_edges() {
    // Every entry of a large random layer goes through the kernel once: the kernel's
    // arithmetic and the native semantics agree on ties, negative values and saturation.
    let c = case(8, 48, 300, 16);
    let z = c.epilogue.apply_rows(&c.y);
    let logits = logits_rows(&z);
    let input = segment(
        &c,
        0,
        16,
        Next::Final {
            states: batch::chain_states(&logits, 0),
        },
    );
    let run = run_layer_segment(&input, STEPS).expect("layer segment runs");
    assert_eq!(run.output, expected_layer_output(&input));
    let saturated = (0..16 * 48)
        .filter(|&i| z.get(i / 48, i % 48).abs() >= 127)
        .count();
    assert!(saturated > 0, "the case should exercise the clamp");
}

#[test]
fn every_dishonest_hint_fails_the_run() {
    let c = case(5, 20, 11, 4);
    let input = segment(
        &c,
        0,
        4,
        Next::Hidden {
            v: vec![Felt252::ONE; 20],
            rho: Felt252::TWO,
        },
    );
    run_layer_segment(&input, STEPS).expect("the honest run succeeds");
    // q, neg, v, max(a, 0), the clamped output: each one moved is caught by a range check or
    // an equation (docs/inference.md).
    for hint in 0..4 {
        for delta in [-1i64, 1, 1 << 31] {
            let run = run_layer_segment_with_bad_hint(&input, STEPS, hint, delta);
            assert!(run.is_err(), "hint {hint} off by {delta} was accepted");
        }
    }
}

#[test]
fn bad_inputs_are_refused_before_running() {
    let c = case(6, 20, 11, 4);
    let mut input = segment(
        &c,
        0,
        4,
        Next::Hidden {
            v: vec![Felt252::ONE; 19],
            rho: Felt252::TWO,
        },
    );
    assert!(run_layer_segment(&input, STEPS).is_err());
    input.next = Next::Hidden {
        v: vec![Felt252::ONE; 20],
        rho: Felt252::TWO,
    };
    input.epilogue.lo = 100;
    assert!(run_layer_segment(&input, STEPS).is_err());
}

#[test]
fn a_layer_segment_proves_and_verifies_as_the_layer_program() {
    use starkscale_cairo::program::Pinned;
    use starkscale_cairo::{verify_proof, Profile, Prover};

    let c = case(9, 20, 37, 5);
    let z = c.epilogue.apply_rows(&c.y);
    let input = segment(
        &c,
        0,
        5,
        Next::Final {
            states: batch::chain_states(&logits_rows(&z), 0),
        },
    );
    let run = run_layer_segment(&input, STEPS).expect("layer segment runs");
    let prover = Prover::new(Profile::Test);
    let (proof, _) = prover.prove(run.input).expect("layer segment proves");
    let verified = verify_proof(&proof.to_bytes(), true).expect("the proof verifies");
    assert_eq!(verified.program, Pinned::Layer);
    assert_eq!(verified.output, expected_layer_output(&input));
}
