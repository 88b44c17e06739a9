//! Inference jobs (docs/inference.md): the inference root in cairo-vm over every segment of a
//! three-layer model states the model, inputs and logits commitments computed natively, and
//! refuses children that do not chain (a forged layer output, a segment of another inference,
//! another epilogue, reordered segments); a two-layer inference proven at the test profile
//! verifies against its model, inputs and logits, and each wrong expectation is refused.

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use starkscale_cairo::batch::{commit, Rows, Stream};
use starkscale_cairo::batch_certificate::BatchError;
use starkscale_cairo::inference::{
    model_commitment, run_infer_root, InferRootInput, InferRootOutput, Inference, TaskInput,
    TaskSpec,
};
use starkscale_cairo::inference_certificate::{
    verify_inference, InferenceCertificate, InferenceExpect,
};
use starkscale_cairo::inference_prove::prove_inference;
use starkscale_cairo::layer::{Epilogue, InputQuant, Layer, Model, Requant};
use starkscale_cairo::layer_segment::{logits_rows, run_layer_segment};
use starkscale_cairo::program::Pinned;
use starkscale_cairo::tree::Child;
use starkscale_cairo::{Profile, Prover};

const STEPS: usize = 1 << 24;

fn random_i8(rng: &mut rand::rngs::StdRng, rows: usize, width: usize) -> Rows {
    Rows::I8 {
        width,
        data: (0..rows * width)
            .map(|_| rng.gen_range(-128..=127))
            .collect(),
    }
}

/// A model with layers of the given widths (`dims[0]` inputs), random weights and epilogues
/// whose scales keep outputs spread over the int8 range; hidden layers clamp at their zero point
/// (ReLU).
fn model(seed: u64, dims: &[usize]) -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(n, w)| {
            let (k, m) = (w[0], w[1]);
            let hidden = n + 2 < dims.len();
            let zero_point = rng.gen_range(-20..=20);
            let scale = 1.0 / (128.0 * 128.0 * (k as f64).sqrt()) * 40.0;
            Layer {
                weights: random_i8(&mut rng, m, k),
                epilogue: Epilogue {
                    bias: (0..m).map(|_| rng.gen_range(-20_000..=20_000)).collect(),
                    requant: (0..m)
                        .map(|_| {
                            Requant::from_scale(scale * rng.gen_range(0.5..1.5)).expect("scale")
                        })
                        .collect(),
                    zero_point,
                    lo: if hidden { zero_point } else { -128 },
                    hi: 127,
                },
            }
        })
        .collect();
    Model {
        input: InputQuant {
            scale: 1.0 / 255.0,
            zero_point: -128,
        },
        layers,
    }
}

/// Runs every planned task of `inference` in cairo-vm and groups the children as the root
/// reads them.
fn children(inference: &Inference, blocks: usize) -> InferRootInput {
    let mut root = InferRootInput::for_inference(inference);
    for spec in inference.plan(blocks) {
        let (run, program) = inference.task(&spec).run(STEPS).expect("the task runs");
        root.push(
            &spec,
            Child {
                program_hash: program.hash(),
                output: run.output,
            },
        );
    }
    root
}

// 70 inputs (two int8 chunks), hidden widths 24 and 20 (two int32 chunks each), 10 logits.
const DIMS: [usize; 4] = [70, 24, 20, 10];
const B: usize = 7;
// Small segments: several per stream, so links and row offsets are exercised.
const BLOCKS: usize = 8;

struct Fixture {
    model: Model,
    x: Rows,
    other_x: Rows,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        Fixture {
            model: model(5, &DIMS),
            x: random_i8(&mut rng, B, DIMS[0]),
            other_x: random_i8(&mut rng, B, DIMS[0]),
        }
    })
}

fn honest() -> &'static InferRootInput {
    static R: OnceLock<InferRootInput> = OnceLock::new();
    R.get_or_init(|| {
        let f = fixture();
        let inference = Inference::new(&f.model, &f.x).expect("valid inference");
        children(&inference, BLOCKS)
    })
}

#[test]
fn the_root_states_the_model_inputs_and_logits() {
    let f = fixture();
    let inference = Inference::new(&f.model, &f.x).expect("valid inference");
    let root = honest();
    assert!(
        root.segments.iter().all(|s| s.len() >= 2) && root.inputs.len() >= 2,
        "every layer and the inputs span several segments: {:?}",
        root.segments.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let run = run_infer_root(root, STEPS).expect("the honest root runs");
    let out = InferRootOutput::from_words(&run.output).expect("a root statement");
    assert_eq!(out.batch, B);
    assert_eq!(out.dims, vec![(24, 70), (20, 24), (10, 20)]);
    assert_eq!(out.model_commitment, model_commitment(&f.model));
    assert_eq!(out.x_commitment, inference.x_commitment);
    let logits = f.model.forward(&f.x).pop().expect("layers").1;
    let last = inference.layers[2].shape;
    assert_eq!(
        out.logits_commitment,
        commit(Stream::Outputs, &last, &logits_rows(&logits))
    );
    let facts: Vec<_> = root.children().map(Child::fact).collect();
    assert_eq!(out.facts, facts);
}

fn refused(root: &InferRootInput, what: &str) {
    assert!(
        run_infer_root(root, STEPS).is_err(),
        "the root accepted {what}"
    );
}

#[test]
fn a_forged_hidden_layer_output_fails_the_product_check() {
    let f = fixture();
    // The cheater changes one accumulator of layer 1 and carries the change on honestly: layer
    // 2 multiplies the forged activations, and every commitment and challenge follows the forged
    // values. Only layer 1's product check can notice.
    let mut forward = f.model.forward(&f.x);
    let epilogue = &f.model.layers[1].epilogue;
    // An entry inside the clamp range, so that the change reaches Z.
    let Rows::I8 { data: z, .. } = &forward[1].1 else {
        unreachable!("outputs are int8")
    };
    let at = z
        .iter()
        .position(|&v| v > epilogue.lo + 8 && v < epilogue.hi - 8)
        .expect("an unclamped output");
    let Rows::I32 { data, .. } = &mut forward[1].0 else {
        unreachable!("accumulators are int32")
    };
    data[at] += 1 << 12;
    forward[1].1 = f.model.layers[1].epilogue.apply_rows(&forward[1].0);
    assert_ne!(
        forward[1].1,
        f.model.forward(&f.x)[1].1,
        "the forgery changes Z"
    );
    let z1 = forward[1].1.clone();
    forward[2] = f.model.layers[2].forward(&z1);
    let forged = Inference::from_outputs(&f.model, &f.x, forward).expect("shapes match");
    refused(&children(&forged, BLOCKS), "a forged layer-1 output");

    // The honest twin of the same construction passes: the failure is the product check's.
    let twin = Inference::from_outputs(&f.model, &f.x, f.model.forward(&f.x)).expect("honest");
    run_infer_root(&children(&twin, BLOCKS), STEPS).expect("the honest twin runs");
}

#[test]
fn segments_of_another_inference_or_out_of_order_are_refused() {
    let f = fixture();
    let honest = honest();
    let other = Inference::new(&f.model, &f.other_x).expect("valid inference");
    let other = children(&other, BLOCKS);

    let mut mixed = honest.clone();
    mixed.segments[1][1] = other.segments[1][1].clone();
    refused(&mixed, "a layer segment of another batch");

    let mut mixed = honest.clone();
    mixed.inputs[0] = other.inputs[0].clone();
    refused(&mixed, "an inputs segment of another batch");

    let mut swapped = honest.clone();
    swapped.segments[0].swap(0, 1);
    refused(&swapped, "swapped layer segments");

    let mut short = honest.clone();
    short.segments[2].pop();
    refused(&short, "a final layer cut short");

    let mut twice = honest.clone();
    let dup = twice.weights[1][0].clone();
    twice.weights[1].insert(0, dup);
    refused(&twice, "a weights segment given twice");

    // Layers given in another order: layer 0's weights where layer 1's belong.
    let mut layers = honest.clone();
    layers.weights.swap(0, 1);
    refused(&layers, "weights of the wrong layer");
}

#[test]
fn a_segment_with_other_weights_or_another_epilogue_is_refused() {
    let f = fixture();
    let honest = honest();

    // Another epilogue in one segment of layer 0 (its bias moved by one).
    let mut changed = f.model.clone();
    changed.layers[0].epilogue.bias[0] += 1;
    let inference = Inference::new(&changed, &f.x).expect("valid inference");
    let spec = inference
        .plan(BLOCKS)
        .into_iter()
        .find(|s| matches!(s, TaskSpec::Layer { layer: 0, row0, .. } if *row0 > 0))
        .expect("a second segment of layer 0");
    let TaskInput::Layer(mut input) = inference.task(&spec) else {
        unreachable!()
    };
    // Everything else as in the honest inference: its rows, challenges and chain states.
    let honest_inference = Inference::new(&f.model, &f.x).expect("valid inference");
    let TaskInput::Layer(reference) = honest_inference.task(&spec) else {
        unreachable!()
    };
    input.sigma = reference.sigma;
    input.rho = reference.rho;
    input.next = reference.next.clone();
    input.states = reference.states.clone();
    input.data = reference.data.clone();
    let output = run_layer_segment(&input, STEPS).expect("runs").output;
    let mut mixed = honest.clone();
    let index = honest.segments[0]
        .iter()
        .position(|c| c.output[5] as usize == input.row0)
        .expect("the segment's position");
    mixed.segments[0][index] = Child {
        program_hash: Pinned::Layer.hash(),
        output,
    };
    refused(&mixed, "a layer segment with another epilogue");

    // Another model's weights for layer 1.
    let other = model(6, &DIMS);
    let inference = Inference::new(&other, &f.x).expect("valid inference");
    let swapped = children(&inference, BLOCKS);
    let mut mixed = honest.clone();
    mixed.weights[1] = swapped.weights[1].clone();
    refused(&mixed, "another model's weights for layer 1");
}

struct Proven {
    model: Model,
    x: Rows,
    logits: Rows,
    bytes: Vec<u8>,
}

fn proven() -> &'static Proven {
    static P: OnceLock<Proven> = OnceLock::new();
    P.get_or_init(|| {
        let model = model(8, &[40, 12, 10]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let x = random_i8(&mut rng, 5, 40);
        let prover = Prover::new(Profile::Test);
        let (inference, cert, stats) =
            prove_inference(&model, &x, &prover, 4096, STEPS).expect("proves");
        assert_eq!(stats.proofs.len(), cert.proofs.len());
        let logits = inference.logits().clone();
        Proven {
            model,
            x,
            logits,
            bytes: cert.to_bytes(),
        }
    })
}

#[test]
fn an_inference_certificate_verifies_against_model_inputs_and_logits() {
    let p = proven();
    let commitment = model_commitment(&p.model);
    let expect = InferenceExpect {
        model_commitment: Some(&commitment),
        x: Some(&p.x),
        logits: Some(&p.logits),
        allow_test: true,
        starks_verified: false,
    };
    let verified = verify_inference(&p.bytes, &expect).expect("verifies");
    assert_eq!(verified.profile, Profile::Test);
    assert_eq!(verified.batch, 5);
    assert_eq!(verified.dims, vec![(12, 40), (10, 12)]);
    assert_eq!(verified.model_commitment, commitment);

    // A test-profile certificate is refused unless the caller allows it.
    let strict = InferenceExpect {
        allow_test: false,
        ..expect
    };
    assert!(matches!(
        verify_inference(&p.bytes, &strict),
        Err(BatchError::Proof { .. })
    ));

    // Other logits, inputs or model.
    let mut logits = p.logits.clone();
    if let Rows::I8 { data, .. } = &mut logits {
        data[0] = data[0].wrapping_add(1);
    }
    let wrong = InferenceExpect {
        logits: Some(&logits),
        ..expect
    };
    assert!(matches!(
        verify_inference(&p.bytes, &wrong),
        Err(BatchError::Commitment { what: "logits", .. })
    ));
    let mut x = p.x.clone();
    if let Rows::I8 { data, .. } = &mut x {
        data[7] = data[7].wrapping_add(1);
    }
    let wrong = InferenceExpect {
        x: Some(&x),
        ..expect
    };
    assert!(matches!(
        verify_inference(&p.bytes, &wrong),
        Err(BatchError::Commitment { what: "inputs", .. })
    ));
    let mut other = p.model.clone();
    other.layers[1].epilogue.requant[3].shift += 1;
    let other = model_commitment(&other);
    let wrong = InferenceExpect {
        model_commitment: Some(&other),
        ..expect
    };
    assert!(matches!(
        verify_inference(&p.bytes, &wrong),
        Err(BatchError::Commitment { what: "model", .. })
    ));
}

#[test]
fn a_tampered_inference_certificate_is_refused() {
    let p = proven();
    let expect = InferenceExpect {
        allow_test: true,
        ..InferenceExpect::default()
    };
    let cert = InferenceCertificate::from_bytes(&p.bytes).expect("decodes");

    let mut swapped = cert.clone();
    swapped.proofs.swap(0, 1);
    assert!(matches!(
        verify_inference(&swapped.to_bytes(), &expect),
        Err(BatchError::Facts(_))
    ));

    let mut short = cert.clone();
    short.proofs.remove(1);
    assert!(verify_inference(&short.to_bytes(), &expect).is_err());

    let mut stated = cert.clone();
    stated.logits_commitment.0[0] ^= 1;
    assert!(matches!(
        verify_inference(&stated.to_bytes(), &expect),
        Err(BatchError::Commitment { what: "logits", .. })
    ));

    let mut flipped = cert.clone();
    let proof = &mut flipped.proofs[2];
    let at = proof.len() / 2;
    proof[at] ^= 0x40;
    assert!(verify_inference(&flipped.to_bytes(), &expect).is_err());

    assert!(matches!(
        verify_inference(&p.bytes[..p.bytes.len() - 3], &expect),
        Err(BatchError::Malformed(_))
    ));
}

#[test]
fn a_planned_layer_segment_fills_a_2_20_step_trace_without_passing_it() {
    // Planning counts a layer segment's steps from per-entry and per-channel estimates; the run
    // must stay inside one 2^20-row trace (or the proof doubles) and fill more than half of it.
    for (dims, last) in [([64, 1024, 10], false), ([64, 10, 1024], true)] {
        let model = model(12, &dims);
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let x = random_i8(&mut rng, 40, 64);
        let inference = Inference::new(&model, &x).expect("valid inference");
        let layer = usize::from(last);
        let spec = inference
            .plan(starkscale_cairo::batch::DEFAULT_SEGMENT_BLOCKS)
            .into_iter()
            .find(|s| matches!(s, TaskSpec::Layer { layer: l, .. } if *l == layer))
            .expect("a layer segment");
        let TaskInput::Layer(input) = inference.task(&spec) else {
            unreachable!()
        };
        let steps = run_layer_segment(&input, STEPS).expect("runs").stats.steps;
        assert!(
            (1 << 19..=1 << 20).contains(&steps),
            "{spec:?} of a 1024-wide {} layer takes {steps} steps",
            if last { "final" } else { "hidden" }
        );
    }
}

/// What the fleet stores and workers fetch: every planned task's input survives its encoding,
/// runs to the output the planner expects, and a cut-short or foreign encoding is refused; the
/// root's input round-trips too.
#[test]
fn task_inputs_round_trip_and_run_to_their_expected_outputs() {
    use starkscale_cairo::batch::SegmentInput;
    use starkscale_cairo::layer_segment::LayerSegmentInput;
    let f = fixture();
    let inference = Inference::new(&f.model, &f.x).expect("valid inference");
    for spec in inference.plan(BLOCKS) {
        let input = inference.task(&spec);
        let bytes = input.to_bytes();
        let decoded = match &input {
            TaskInput::Segment(_) => {
                TaskInput::Segment(SegmentInput::from_bytes(&bytes).expect("decodes"))
            }
            TaskInput::Layer(_) => {
                assert!(SegmentInput::from_bytes(&bytes).is_err());
                TaskInput::Layer(LayerSegmentInput::from_bytes(&bytes).expect("decodes"))
            }
        };
        assert_eq!(decoded.to_bytes(), bytes, "{}", spec.describe());
        if let TaskInput::Layer(_) = input {
            for cut in [bytes.len() - 1, bytes.len() / 2, 40, 3] {
                assert!(LayerSegmentInput::from_bytes(&bytes[..cut]).is_err());
            }
        }
        let (run, program) = decoded.run(STEPS).expect("the decoded task runs");
        assert_eq!(program, input.program());
        assert_eq!(
            run.output,
            inference.expected_output(&input),
            "{}",
            spec.describe()
        );
    }
    let root = honest();
    let bytes = root.to_bytes();
    assert_eq!(&InferRootInput::from_bytes(&bytes).expect("decodes"), root);
    assert!(InferRootInput::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(InferRootInput::from_bytes(&extra).is_err());
}
