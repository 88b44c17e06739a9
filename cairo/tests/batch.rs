//! The batch segment kernel in cairo-vm against the native protocol (docs/batch.md).

use cairo_vm::Felt252;
use rand::{Rng, SeedableRng};
use starkscale_cairo::batch::{self, Planner, Rows, SegmentOutput, Stream};

const STEPS: usize = 1 << 24;

fn random_i8(rng: &mut rand::rngs::StdRng, rows: usize, width: usize) -> Rows {
    Rows::I8 {
        width,
        data: (0..rows * width)
            .map(|_| rng.gen_range(-128..=127))
            .collect(),
    }
}

#[test]
fn segments_compute_the_native_sums_and_chains() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (m, k, b) = (21, 37, 9);
    let a = random_i8(&mut rng, m, k);
    let x = random_i8(&mut rng, b, k);
    let y = batch::multiply(&a, &x);
    let plan = Planner::new(&a, &x, &y);
    let rho = batch::challenge(&plan.seed, 2);
    let sigma = batch::challenge(&plan.seed, 1);

    let mut totals = std::collections::HashMap::new();
    for stream in Stream::ALL {
        let height = stream.height(&plan.shape);
        let cuts = [0, height / 3, height];
        let mut total = Felt252::ZERO;
        for w in cuts.windows(2) {
            let input = plan.segment(stream, w[0], w[1] - w[0]);
            let run = batch::run_segment(&input, STEPS).expect("segment runs");
            let out = SegmentOutput::from_words(&run.output).expect("output parses");
            assert_eq!(out.stream, stream);
            assert_eq!(batch::felt_of_words(&out.sigma), plan.sigma);
            assert_eq!(batch::felt_of_words(&out.rho), plan.rho);
            assert_eq!(out.last, w[1] == height);
            let t = batch::felt_of_words(&out.t);
            // Chains continue the native states and end where the next segment starts.
            let all = match stream {
                Stream::Weights => a.transpose_i8(),
                Stream::Inputs => x.clone(),
                Stream::Outputs => y.clone(),
            };
            let before = batch::chain_states(&all, w[0]);
            for (c, (state_in, state_out)) in out.chains.iter().enumerate() {
                assert_eq!(state_in, &before[c]);
                if w[1] == height {
                    let digests = batch::chain_digests(&all);
                    assert_eq!(state_out, &digests[c].0, "{stream:?} chain {c} digest");
                } else {
                    let after = batch::chain_states(&all, w[1]);
                    assert_eq!(state_out, &after[c]);
                }
            }
            match stream {
                Stream::Weights => {
                    let v: Vec<Felt252> = out.v.iter().map(|l| batch::felt_of_words(l)).collect();
                    assert_eq!(v, plan.v[w[0]..w[1]].to_vec());
                }
                Stream::Inputs => {
                    let expect = batch::weighted_sum(&input.data, &plan.v, &rho, w[0]);
                    assert_eq!(t, expect);
                }
                Stream::Outputs => {
                    let mults = batch::powers(&sigma, m);
                    let expect = batch::weighted_sum(&input.data, &mults, &rho, w[0]);
                    assert_eq!(t, expect);
                }
            }
            total += t;
            eprintln!("{stream:?} rows {:?}: {} steps", w, run.stats.steps);
        }
        totals.insert(stream, total);
    }
    assert_eq!(totals[&Stream::Inputs], totals[&Stream::Outputs]);
}

#[test]
fn the_root_states_the_commitments_and_facts() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (m, k, b) = (18, 33, 7);
    let a = random_i8(&mut rng, m, k);
    let x = random_i8(&mut rng, b, k);
    let y = batch::multiply(&a, &x);
    let plan = Planner::new(&a, &x, &y);
    let program_hash = starkscale_cairo::program::Pinned::Batch.hash();
    let children = |stream: Stream, cuts: &[usize]| -> Vec<starkscale_cairo::tree::Child> {
        cuts.windows(2)
            .map(|w| {
                let input = plan.segment(stream, w[0], w[1] - w[0]);
                let run = batch::run_segment(&input, STEPS).expect("segment runs");
                starkscale_cairo::tree::Child {
                    program_hash,
                    output: run.output,
                }
            })
            .collect()
    };
    let input = batch::RootInput {
        shape: plan.shape,
        weights: children(Stream::Weights, &[0, 20, 33]),
        inputs: children(Stream::Inputs, &[0, 3, 7]),
        outputs: children(Stream::Outputs, &[0, 7]),
    };
    assert_eq!(
        batch::RootInput::from_bytes(&input.to_bytes()).expect("decodes"),
        input
    );
    let run = batch::run_root(&input, STEPS).expect("root runs");
    let out = batch::RootOutput::from_words(&run.output).expect("root output parses");
    assert_eq!(
        out.a_commitment,
        batch::commit(Stream::Weights, &plan.shape, &a)
    );
    assert_eq!(
        out.x_commitment,
        batch::commit(Stream::Inputs, &plan.shape, &x)
    );
    assert_eq!(
        out.y_commitment,
        batch::commit(Stream::Outputs, &plan.shape, &y)
    );
    assert_eq!(out.seed, plan.seed);
    let facts: Vec<_> = input.children().map(|c| c.fact()).collect();
    assert_eq!(out.facts, facts);
    eprintln!("root: {} steps", run.stats.steps);

    // A wrong Y entry changes Y's commitment, so every segment's seed is stale: the root fails.
    let mut bad_y = y.clone();
    if let Rows::I32 { data, .. } = &mut bad_y {
        data[5] += 1;
    }
    let bad_plan = Planner::new(&a, &x, &bad_y);
    let bad_outputs: Vec<_> = [0usize, 7]
        .windows(2)
        .map(|w| {
            let input = bad_plan.segment(Stream::Outputs, w[0], w[1] - w[0]);
            starkscale_cairo::tree::Child {
                program_hash,
                output: batch::run_segment(&input, STEPS).expect("runs").output,
            }
        })
        .collect();
    let mixed = batch::RootInput {
        outputs: bad_outputs,
        ..input.clone()
    };
    assert!(
        batch::run_root(&mixed, STEPS).is_err(),
        "stale seeds must fail the root"
    );
}

#[test]
fn a_consistent_but_wrong_y_fails_the_product_check() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let (m, k, b) = (5, 20, 4);
    let a = random_i8(&mut rng, m, k);
    let x = random_i8(&mut rng, b, k);
    let honest = batch::multiply(&a, &x);
    let mut wrong = honest.clone();
    if let Rows::I32 { data, .. } = &mut wrong {
        data[3] -= 1;
    }
    // Every segment is honest about its Y: commitments, seed and chains all agree, so the
    // product check is the only thing that can tell the two apart.
    let root_input = |y: &Rows| {
        let plan = Planner::new(&a, &x, y);
        let program_hash = starkscale_cairo::program::Pinned::Batch.hash();
        let child = |stream: Stream| starkscale_cairo::tree::Child {
            program_hash,
            output: batch::run_segment(&plan.segment(stream, 0, stream.height(&plan.shape)), STEPS)
                .expect("segment runs")
                .output,
        };
        batch::RootInput {
            shape: plan.shape,
            weights: vec![child(Stream::Weights)],
            inputs: vec![child(Stream::Inputs)],
            outputs: vec![child(Stream::Outputs)],
        }
    };
    batch::run_root(&root_input(&honest), STEPS).expect("the honest Y passes");
    let err = batch::run_root(&root_input(&wrong), STEPS).expect_err("Y != A X must fail");
    assert!(err.to_string().contains("ASSERT_EQ"), "{err}");
}

#[test]
fn the_root_refuses_gaps_reordering_and_a_stream_cut_short() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let (m, k, b) = (9, 30, 6);
    let a = random_i8(&mut rng, m, k);
    let x = random_i8(&mut rng, b, k);
    let y = batch::multiply(&a, &x);
    let plan = Planner::new(&a, &x, &y);
    let program_hash = starkscale_cairo::program::Pinned::Batch.hash();
    let children = |stream: Stream, cuts: &[usize]| -> Vec<starkscale_cairo::tree::Child> {
        cuts.windows(2)
            .map(|w| starkscale_cairo::tree::Child {
                program_hash,
                output: batch::run_segment(&plan.segment(stream, w[0], w[1] - w[0]), STEPS)
                    .expect("segment runs")
                    .output,
            })
            .collect()
    };
    let honest = batch::RootInput {
        shape: plan.shape,
        weights: children(Stream::Weights, &[0, 30]),
        inputs: children(Stream::Inputs, &[0, 2, 4, 6]),
        outputs: children(Stream::Outputs, &[0, 6]),
    };
    batch::run_root(&honest, STEPS).expect("the honest root runs");
    let mut gap = honest.clone();
    gap.inputs.remove(1);
    assert!(batch::run_root(&gap, STEPS).is_err(), "a missing segment");
    let mut swapped = honest.clone();
    swapped.inputs.swap(0, 1);
    assert!(
        batch::run_root(&swapped, STEPS).is_err(),
        "segments out of order"
    );
    let mut short = honest.clone();
    short.inputs.pop();
    assert!(
        batch::run_root(&short, STEPS).is_err(),
        "a stream that does not end"
    );
    let mut twice = honest.clone();
    twice.outputs.push(twice.outputs[0].clone());
    assert!(batch::run_root(&twice, STEPS).is_err(), "a segment twice");
}

#[test]
fn a_non_canonical_byte_split_fails_the_range_checks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let a = random_i8(&mut rng, 6, 10);
    let x = random_i8(&mut rng, 3, 10);
    let y = batch::multiply(&a, &x);
    let plan = Planner::new(&a, &x, &y);
    for stream in [Stream::Weights, Stream::Inputs] {
        let input = plan.segment(stream, 0, stream.height(&plan.shape));
        assert!(batch::run_segment_with_bad_split(&input, STEPS, 0).is_ok());
        for delta in [1, -1, 1 << 40] {
            let err = batch::run_segment_with_bad_split(&input, STEPS, delta)
                .expect_err("a byte outside 0..256 must fail");
            assert!(
                err.to_string().contains("range"),
                "{stream:?} {delta}: {err}"
            );
        }
    }
}

#[test]
fn the_native_expected_output_is_the_kernels_and_inputs_round_trip() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let (m, k, b) = (19, 70, 6);
    let a = random_i8(&mut rng, m, k);
    let x = random_i8(&mut rng, b, k);
    let y = batch::multiply(&a, &x);
    let plan = Planner::new(&a, &x, &y);
    for stream in Stream::ALL {
        let height = stream.height(&plan.shape);
        for (row0, rows) in [(0, height / 2), (height / 2, height - height / 2)] {
            let input = plan.segment(stream, row0, rows);
            let run = batch::run_segment(&input, STEPS).expect("runs");
            assert_eq!(
                batch::expected_output(&input, &plan.v),
                run.output,
                "{stream:?} rows {row0}+{rows}"
            );
            let decoded = batch::SegmentInput::from_bytes(&input.to_bytes()).expect("decodes");
            assert_eq!(decoded.to_bytes(), input.to_bytes());
            let mut bytes = input.to_bytes();
            bytes.truncate(bytes.len() - 1);
            assert!(batch::SegmentInput::from_bytes(&bytes).is_err());
        }
    }
}

#[test]
fn planned_segments_of_multi_chunk_streams_run_to_their_expected_outputs() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    // 130 outputs: three int8 chunk columns per weights row; 8 blocks per int8 segment.
    let (m, k, b) = (130, 24, 3);
    let a = random_i8(&mut rng, m, k);
    let x = random_i8(&mut rng, b, k);
    let y = batch::multiply(&a, &x);
    let plan = Planner::new(&a, &x, &y);
    let specs = batch::plan_segments(&plan.shape, 32);
    assert!(specs.iter().filter(|s| s.stream == Stream::Weights).count() >= 3);
    for (spec, input) in specs.iter().zip(plan.segments(&specs)) {
        let run = batch::run_segment(&input, STEPS).expect("runs");
        assert_eq!(
            batch::expected_output(&input, &plan.v),
            run.output,
            "{spec:?}"
        );
    }
}

#[test]
fn binding_x_and_y_in_blocks_states_what_binding_them_whole_does() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    let (m, k, b) = (21, 75, 7);
    let a = random_i8(&mut rng, m, k);
    let x = random_i8(&mut rng, b, k);
    let y = batch::multiply(&a, &x);
    let whole = Planner::new(&a, &x, &y);
    let mut binder = batch::Binder::new(whole.shape);
    for (row0, rows) in [(0, 3), (3, 1), (4, 3)] {
        binder
            .absorb(&x.slice(row0, rows), &y.slice(row0, rows))
            .expect("a block of the job");
    }
    // A block past the batch is refused; so is finishing early.
    let mut extra = binder.clone();
    assert!(extra.absorb(&x.slice(0, 1), &y.slice(0, 1)).is_err());
    let mut early = batch::Binder::new(whole.shape);
    early.absorb(&x.slice(0, 2), &y.slice(0, 2)).unwrap();
    assert!(early.finish(&a, &whole.at).is_err());
    let blocks = binder.finish(&a, &whole.at).expect("every input absorbed");
    assert_eq!(blocks.commitments, whole.commitments);
    assert_eq!(
        blocks.commitments[1],
        batch::commit(Stream::Inputs, &whole.shape, &x)
    );
    assert_eq!(
        blocks.commitments[2],
        batch::commit(Stream::Outputs, &whole.shape, &y)
    );
    assert_eq!(
        (blocks.seed, blocks.sigma, blocks.rho),
        (whole.seed, whole.sigma, whole.rho)
    );
    assert_eq!(blocks.v, whole.v);
}
