//! The ONNX importer on the digits MLP quantized by onnxruntime in all eight forms
//! (tests/models): the imported integer model reproduces onnxruntime's int8 logits on the
//! whole test split within ±1 on at least 99% of entries, with argmax accuracy within one point;
//! models outside the supported forms are refused with an error naming the node.

use std::path::PathBuf;

use prost::Message;
use starkscale_cairo::batch::Rows;
use starkscale_common::tensor::{npy, Dtype};
use starkscale_onnx::{from_bytes, load, ImportError};
use tract_onnx::pb::ModelProto;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(models().join(name)).expect("fixture")
}

/// The test split as float32 rows.
fn test_x() -> (Vec<usize>, Vec<f32>) {
    npy::parse_f32(&read("digits-test-x.npy")).expect("float32 inputs")
}

fn labels() -> Vec<i64> {
    let labels = npy::parse(&read("digits-test-labels.npy"), Dtype::I8).expect("labels");
    labels.1.into_iter().map(i64::from).collect()
}

fn argmax(row: &[i64]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

const FORMS: [&str; 8] = [
    "digits-gemm-qdq-tensor",
    "digits-gemm-qdq-channel",
    "digits-gemm-qop-tensor",
    "digits-gemm-qop-channel",
    "digits-matmul-qdq-tensor",
    "digits-matmul-qdq-channel",
    "digits-matmul-qop-tensor",
    "digits-matmul-qop-channel",
];

#[test]
fn every_form_matches_onnxruntime_within_one_step() {
    let (shape, x) = test_x();
    let labels = labels();
    assert_eq!(shape, vec![450, 64]);
    for form in FORMS {
        let imported = load(&models().join(format!("{form}.onnx"))).expect(form);
        let model = &imported.model;
        let expected_layers = if form.contains("matmul") { 4 } else { 2 };
        assert_eq!(
            model.layers.len(),
            expected_layers,
            "{form}: {:?}",
            imported.sources
        );
        assert_eq!(
            imported.format,
            if form.contains("qdq") {
                "QDQ"
            } else {
                "QOperator"
            }
        );
        let q: Vec<i8> = x.iter().map(|&v| model.input.quantize(v)).collect();
        let rows = Rows::I8 { width: 64, data: q };
        let logits = model.forward(&rows).pop().expect("layers").1;
        let (oshape, ort) =
            npy::parse(&read(&format!("{form}-int8-logits.npy")), Dtype::I8).expect("ort logits");
        assert_eq!(oshape, vec![450, 10]);
        let ort: Vec<i64> = ort.into_iter().map(i64::from).collect();
        let ours: Vec<i64> = (0..450)
            .flat_map(|j| (0..10).map(move |i| (j, i)))
            .map(|(j, i)| logits.get(j, i))
            .collect();
        let within = ours
            .iter()
            .zip(&ort)
            .filter(|(a, b)| (*a - *b).abs() <= 1)
            .count();
        let exact = ours.iter().zip(&ort).filter(|(a, b)| a == b).count();
        let max = ours
            .iter()
            .zip(&ort)
            .map(|(a, b)| (a - b).abs())
            .max()
            .unwrap_or(0);
        let share = within as f64 / ours.len() as f64;
        assert!(
            share >= 0.99,
            "{form}: {within} of {} entries within ±1 (exact {exact}, max diff {max})",
            ours.len()
        );
        let accuracy = |logits: &[i64]| {
            logits
                .chunks_exact(10)
                .zip(&labels)
                .filter(|(row, &l)| argmax(row) as i64 == l)
                .count() as f64
                / 450.0
        };
        let (a_ours, a_ort) = (accuracy(&ours), accuracy(&ort));
        assert!(
            (a_ours - a_ort).abs() <= 0.01,
            "{form}: accuracy {a_ours} against onnxruntime's {a_ort}"
        );
        eprintln!(
            "{form}: {exact}/{} exact, {within} within ±1, max diff {max}, accuracy {a_ours:.4} (onnxruntime {a_ort:.4})",
            ours.len()
        );
    }
}

fn edited(
    form: &str,
    edit: impl FnOnce(&mut ModelProto),
) -> Result<starkscale_onnx::Imported, ImportError> {
    let mut proto = ModelProto::decode(&read(&format!("{form}.onnx"))[..]).expect("decodes");
    edit(&mut proto);
    from_bytes(&proto.encode_to_vec())
}

fn node_error(result: Result<starkscale_onnx::Imported, ImportError>) -> (String, String) {
    match result {
        Err(ImportError::Node { node, op, reason }) => (format!("{node} {op}"), reason),
        Err(other) => panic!("expected an error naming a node, got {other}"),
        Ok(_) => panic!("the edited model was imported"),
    }
}

#[test]
fn unsupported_models_are_refused_naming_the_node() {
    // An operator the proof does not know, in place of a layer.
    let (node, reason) = node_error(edited("digits-gemm-qop-tensor", |m| {
        let graph = m.graph.as_mut().expect("graph");
        let n = graph
            .node
            .iter_mut()
            .find(|n| n.op_type == "QGemm")
            .expect("a QGemm");
        n.op_type = "QConvFancy".into();
    }));
    assert!(node.contains("QConvFancy"), "{node}: {reason}");

    // Non-zero weight zero points (asymmetric weights).
    let (node, reason) = node_error(edited("digits-gemm-qop-tensor", |m| {
        let graph = m.graph.as_mut().expect("graph");
        let zp = graph
            .node
            .iter()
            .find(|n| n.op_type == "QGemm")
            .expect("QGemm")
            .input[5]
            .clone();
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == zp)
            .expect("zero point");
        if t.raw_data.is_empty() {
            t.int32_data = vec![3];
        } else {
            t.raw_data = vec![3];
        }
    }));
    assert!(reason.contains("zero point 0"), "{node}: {reason}");

    // A float operator on the path: the first layer's output dequantized into a Sigmoid.
    let (node, reason) = node_error(edited("digits-gemm-qdq-tensor", |m| {
        let graph = m.graph.as_mut().expect("graph");
        let gemm = graph
            .node
            .iter_mut()
            .find(|n| n.op_type == "Gemm")
            .expect("Gemm");
        gemm.op_type = "Sigmoid".into();
    }));
    assert!(node.contains("Sigmoid"), "{node}: {reason}");

    // uint8 activations.
    let (node, reason) = node_error(edited("digits-matmul-qop-channel", |m| {
        let graph = m.graph.as_mut().expect("graph");
        let quantize = graph
            .node
            .iter()
            .find(|n| n.op_type == "QuantizeLinear")
            .expect("Q");
        let zp = quantize.input[2].clone();
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| t.name == zp)
            .expect("zero point");
        t.data_type = 2;
    }));
    assert!(reason.contains("uint8"), "{node}: {reason}");

    // Not an ONNX file at all.
    assert!(matches!(
        from_bytes(b"not a model"),
        Err(ImportError::Parse(_))
    ));
}
