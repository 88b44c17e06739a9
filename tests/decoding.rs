//! Everything the fleet decodes from others — job messages, task inputs, proofs, certificates,
//! `.npy` inputs — fed 100,000 hostile inputs each: valid encodings with bytes overwritten,
//! length words set to extremes, cuts and insertions, and random bytes behind each format's
//! magic. Every decoder must answer (accept or refuse) without panicking, and without allocating
//! more than the limit this test binary's allocator enforces: a length word that asks for more
//! aborts the run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::alloc::System;

use proptest::prelude::*;
use proptest::sample::Index;
use starkscale_cairo::batch::{RootInput, SegmentInput, Shape};
use starkscale_cairo::batch_certificate::BatchCertificate;
use starkscale_cairo::certificate::Certificate;
use starkscale_cairo::encoding::Digest;
use starkscale_cairo::inference::{model_inputs, InferRootInput, Inference, TaskInput};
use starkscale_cairo::inference_certificate::InferenceCertificate;
use starkscale_cairo::layer_segment::LayerSegmentInput;
use starkscale_cairo::tree::{Child, ReduceInput};
use starkscale_cairo::TileProof;
use starkscale_common::job::Request;
use starkscale_common::messages::TileInputBlob;
use starkscale_common::tensor::npy;
use starkscale_common::{Dtype, JobLimits, Matrix, TilePlan, Vector};

/// Every allocation of this binary counts against one limit: the decoders' inputs are at most
/// a few kilobytes, so a decoder that trusts a length word runs into it and aborts the test.
#[global_allocator]
static ALLOCATOR: cap::Cap<System> = cap::Cap::new(System, 1 << 30);

const CASES: u32 = 100_000;

#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite one byte.
    Byte(Index, u8),
    /// Overwrite four bytes with a word: where a length lives, an extreme length.
    Word(Index, u32),
    /// Cut the input short.
    Cut(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let word = prop_oneof![
        any::<u32>(),
        Just(u32::MAX),
        Just(u32::MAX / 4),
        Just(1 << 24),
        0u32..70
    ];
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        3 => (any::<Index>(), word).prop_map(|(i, w)| Edit::Word(i, w)),
        1 => any::<Index>().prop_map(Edit::Cut),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if bytes.is_empty() {
            break;
        }
        match e {
            Edit::Byte(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Edit::Word(i, w) => {
                let at = i.index(bytes.len());
                for (k, b) in w.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at + k) {
                        *slot = b;
                    }
                }
            }
            Edit::Cut(i) => bytes.truncate(i.index(bytes.len())),
            Edit::Insert(i, more) => {
                let at = i.index(bytes.len());
                bytes.splice(at..at, more.iter().copied());
            }
        }
    }
    bytes
}

/// Hostile inputs around `seeds`: one of them edited, or a format's magic and random bytes.
fn hostile(
    seeds: Vec<Vec<u8>>,
    magics: &'static [&'static [u8]],
) -> impl Strategy<Value = Vec<u8>> {
    let seeds = std::sync::Arc::new(seeds);
    prop_oneof![
        4 => (any::<Index>(), prop::collection::vec(edit(), 1..6))
            .prop_map(move |(i, edits)| apply(seeds[i.index(seeds.len())].clone(), &edits)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 0..300)).prop_map(move |(i, tail)| {
            let mut bytes = magics[i.index(magics.len())].to_vec();
            bytes.extend(tail);
            bytes
        }),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn models() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/models")
}

/// Valid task inputs of a small inference (three digits through the 64 → 32 → 10 MLP): a
/// weights segment, an inputs segment, a hidden and a final layer segment, and the root's.
fn inference_inputs() -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<u8>) {
    let model = starkscale_onnx::load(&models().join("digits-gemm-qdq-channel.onnx"))
        .unwrap()
        .model;
    let x = model_inputs(
        &std::fs::read(models().join("digits-test-x.npy")).unwrap(),
        &model,
    )
    .unwrap()
    .slice(0, 3);
    let inference = Inference::new(&model, &x).unwrap();
    let (mut segments, mut layers) = (Vec::new(), Vec::new());
    let mut root = starkscale_cairo::inference::InferRootInput::for_inference(&inference);
    for spec in inference.plan(64) {
        let input = inference.task(&spec);
        match &input {
            TaskInput::Segment(_) => segments.push(input.to_bytes()),
            TaskInput::Layer(_) => layers.push(input.to_bytes()),
        }
        root.push(
            &spec,
            Child {
                program_hash: input.program().hash(),
                output: inference.expected_output(&input),
            },
        );
    }
    (segments, layers, root.to_bytes())
}

fn children(n: usize) -> Vec<Child> {
    (0..n)
        .map(|i| Child {
            program_hash: Digest([i as u32; 8]),
            output: (0..20 + i as u32).collect(),
        })
        .collect()
}

/// A decoder's name, valid encodings to edit, and the magics its random inputs start with.
type Seeds = (&'static str, Vec<Vec<u8>>, &'static [&'static [u8]]);

fn decoders_seeds() -> Vec<Seeds> {
    let (segments, layers, infer_root) = inference_inputs();
    let plan = TilePlan::new(300, 1500, 254);
    let tree = plan.reduce_tree(4);
    let reduce: Vec<Vec<u8>> = tree
        .iter()
        .map(|node| ReduceInput::for_node(&plan, node, children(node.children.len())).to_bytes())
        .collect();
    let batch_root = RootInput {
        shape: Shape { m: 6, k: 70, b: 4 },
        weights: children(2),
        inputs: children(1),
        outputs: children(2),
    }
    .to_bytes();
    let batch_cert = BatchCertificate {
        shape: Shape { m: 6, k: 70, b: 4 },
        a_commitment: Digest([1; 8]),
        x_commitment: Digest([2; 8]),
        y_commitment: Digest([3; 8]),
        proofs: vec![b"SSTP\x01proof".to_vec(); 3],
    }
    .to_bytes();
    let inference_cert = InferenceCertificate {
        batch: 3,
        dims: vec![(32, 64), (10, 32)],
        model_commitment: Digest([4; 8]),
        x_commitment: Digest([5; 8]),
        logits_commitment: Digest([6; 8]),
        proofs: vec![b"SSTP\x01proof".to_vec(); 6],
    }
    .to_bytes();
    let blob = TileInputBlob {
        row0: 254,
        col0: 1024,
        a: Matrix::new(2, 3, Dtype::I8, vec![-128, 0, 127, 1, -1, 5]).unwrap(),
        x: Vector::new(Dtype::I8, vec![3, -3, 127]).unwrap(),
    }
    .to_bytes();
    vec![
        ("segment input", segments, &[b"SSSG"]),
        ("layer segment input", layers, &[b"SSLS"]),
        ("inference root input", vec![infer_root], &[b"SSIR"]),
        ("reduce input", reduce, &[b"SSRI"]),
        ("batch root input", vec![batch_root], &[b"SSBR"]),
        (
            "certificate",
            vec![batch_cert, inference_cert],
            &[b"SSJC\x01", b"SSBC\x01", b"SSIC\x01"],
        ),
        ("tile input", vec![blob], &[b"SSTI"]),
        (
            "proof",
            vec![b"SSTP\x01\x01\x01".to_vec()],
            &[
                b"SSTP\x01\x00\x00",
                b"SSTP\x01\x01\x02",
                b"SSTP\x01\x00\x03",
            ],
        ),
    ]
}

/// Runs the decoder named `what` on `bytes`: whether it accepted them. Only a panic or an
/// abort fails a case.
fn decode(what: &str, bytes: &[u8]) -> bool {
    match what {
        "segment input" => SegmentInput::from_bytes(bytes).is_ok(),
        "layer segment input" => LayerSegmentInput::from_bytes(bytes).is_ok(),
        "inference root input" => InferRootInput::from_bytes(bytes).is_ok(),
        "reduce input" => ReduceInput::from_bytes(bytes).is_ok(),
        "batch root input" => RootInput::from_bytes(bytes).is_ok(),
        "certificate" => {
            let job = Certificate::from_bytes(bytes).is_ok();
            let batch = BatchCertificate::from_bytes(bytes).is_ok();
            let inference = InferenceCertificate::from_bytes(bytes).is_ok();
            job || batch || inference
        }
        "tile input" => TileInputBlob::from_bytes(bytes).is_ok(),
        "proof" => TileProof::from_bytes(bytes).is_ok(),
        other => panic!("no decoder {other}"),
    }
}

#[test]
fn binary_decoders_refuse_hostile_bytes_without_panicking_or_overallocating() {
    for (what, seeds, magics) in decoders_seeds() {
        // The seeds are valid encodings (but the proof's, which is only a header): edits start
        // from inputs that go deep into each decoder.
        if what != "proof" {
            assert!(
                seeds.iter().all(|s| decode(what, s)),
                "{what}: a seed is refused"
            );
        }
        let cases = std::sync::atomic::AtomicU32::new(0);
        let mut runner = proptest::test_runner::TestRunner::new(config());
        runner
            .run(&hostile(seeds, magics), |bytes| {
                cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                decode(what, &bytes);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(cases.into_inner(), CASES, "{what}");
    }
}

const JOBS: [&str; 3] = [
    r#"{"schema_version":1,"job_id":"j","kind":"matvec","dtype":"i8","a":{"inline":[[1,2],[3,4]]},"x":{"inline":[5,-6]},"tile_rows":8}"#,
    r#"{"schema_version":1,"kind":"matmul","a":{"redis_key":"k"},"x":{"inline":[[5,-6],[7,8]]},"segment_blocks":128}"#,
    r#"{"schema_version":1,"kind":"inference","model":{"commitment":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"},"x":{"path":"x.npy"}}"#,
];

#[test]
fn job_messages_refuse_hostile_json_without_panicking() {
    let limits = JobLimits::default();
    let mut seeds: Vec<Vec<u8>> = JOBS.iter().map(|j| j.as_bytes().to_vec()).collect();
    seeds.push(br#"{"cancel":"j"}"#.to_vec());
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(
            &hostile(seeds, &[b"{", b"[", b"{\"schema_version\":1,"]),
            |bytes| {
                drop(Request::parse(&bytes, &limits));
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn npy_inputs_refuse_hostile_bytes_without_panicking_or_overallocating() {
    let seeds = vec![
        npy::write_i8(&[3, 4], &(0..12).collect::<Vec<i8>>()),
        npy::write_i32(&[2, 3], &[1, -2, 3, -4, 5, -6]),
        std::fs::read(models().join("digits-test-labels.npy")).unwrap()[..200].to_vec(),
    ];
    let model = starkscale_onnx::load(&models().join("digits-gemm-qdq-tensor.onnx"))
        .unwrap()
        .model;
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(
            &hostile(seeds, &[b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00"]),
            |bytes| {
                drop(npy::parse(&bytes, Dtype::I8));
                drop(npy::parse_f32(&bytes));
                drop(Matrix::from_bytes(&bytes, Dtype::I8));
                drop(model_inputs(&bytes, &model));
                Ok(())
            },
        )
        .unwrap();
}
