//! Verifiable inference end to end through the command line (docs/inference.md): the digits MLP
//! quantized by onnxruntime (tests/models), imported from ONNX and proven on the whole test
//! split in one batch at the test profile. The proven int8 logits equal onnxruntime's within ±1
//! on at least 99% of entries with argmax accuracy within one point of onnxruntime's, and the
//! certificate verifies against `commit MODEL.onnx`, the float inputs and the logits — and
//! against nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use starkscale_common::tensor::npy;
use starkscale_common::Dtype;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/models")
}

fn starkscale(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_starkscale"))
        .args(args)
        .output()
        .expect("starkscale runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn int8(path: &Path) -> (Vec<usize>, Vec<i8>) {
    npy::parse(&std::fs::read(path).expect("reads"), Dtype::I8).expect("int8 .npy")
}

fn argmax(row: &[i8]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

fn accuracy(logits: &[i8], labels: &[i8]) -> f64 {
    let hits = logits
        .chunks_exact(10)
        .zip(labels)
        .filter(|(row, &l)| argmax(row) as i64 == i64::from(l))
        .count();
    hits as f64 / labels.len() as f64
}

/// Proves `form` on the test split and checks the certificate every way a user would.
fn prove_and_check(form: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = models().join(format!("{form}.onnx"));
    let x = models().join("digits-test-x.npy");
    let cert = dir.path().join("digits.cert");
    let logits_path = dir.path().join("logits.npy");
    let x8 = dir.path().join("x8.npy");
    let (ok, stdout, stderr) = starkscale(&[
        "infer",
        model.to_str().expect("utf-8"),
        x.to_str().expect("utf-8"),
        "--profile",
        "test",
        "--out",
        cert.to_str().expect("utf-8"),
        "--logits-out",
        logits_path.to_str().expect("utf-8"),
        "--x-out",
        x8.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(ok, "{form}: infer failed: {stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert_eq!(report["batch"], 450);

    // Against onnxruntime's int8 logits and the labels.
    let (shape, ours) = int8(&logits_path);
    assert_eq!(shape, vec![450, 10]);
    let (_, ort) = int8(&models().join(format!("{form}-int8-logits.npy")));
    let within = ours
        .iter()
        .zip(&ort)
        .filter(|(a, b)| (i16::from(**a) - i16::from(**b)).abs() <= 1)
        .count();
    assert!(
        within as f64 >= 0.99 * ours.len() as f64,
        "{form}: only {within} of {} logits within ±1 of onnxruntime's",
        ours.len()
    );
    let labels = npy::parse(
        &std::fs::read(models().join("digits-test-labels.npy")).expect("labels"),
        Dtype::I8,
    )
    .expect("labels")
    .1;
    let (a_ours, a_ort) = (accuracy(&ours, &labels), accuracy(&ort, &labels));
    assert!(
        (a_ours - a_ort).abs() <= 0.01,
        "{form}: accuracy {a_ours} against onnxruntime's {a_ort}"
    );
    let predictions: Vec<usize> = ours.chunks_exact(10).map(argmax).collect();
    let reported: Vec<usize> =
        serde_json::from_value(report["predictions"].clone()).expect("predictions");
    assert_eq!(
        predictions, reported,
        "{form}: the printed predictions are the logits' argmax"
    );

    // The certificate against the published model commitment, the float inputs and the logits.
    let (ok, commitment, stderr) = starkscale(&["commit", model.to_str().expect("utf-8")]);
    assert!(ok, "{stderr}");
    let commitment = commitment.trim().to_string();
    assert_eq!(report["model_commitment"], commitment.as_str());
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            cert.to_str().expect("utf-8"),
            "--allow-test-profile",
        ];
        args.extend_from_slice(extra);
        starkscale(&args)
    };
    let (ok, stdout, stderr) = verify(&[
        "--commitment",
        &commitment,
        "--model",
        model.to_str().expect("utf-8"),
        "--x",
        x.to_str().expect("utf-8"),
        "--logits",
        logits_path.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(ok, "{form}: verify failed: {stderr}");
    let verified: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(verified["kind"], "inference");
    assert_eq!(verified["checked"]["x"], true);
    assert_eq!(verified["checked"]["logits"], true);
    // The int8 inputs need no model.
    let (ok, _, stderr) = verify(&[
        "--commitment",
        &commitment,
        "--x",
        x8.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{form}: verify with int8 inputs failed: {stderr}");

    // Other inputs: the first input's first feature moved by one quantization step.
    let (_, mut x8_values) = int8(&x8);
    x8_values[0] = if x8_values[0] < 127 {
        x8_values[0] + 1
    } else {
        126
    };
    let other_x = dir.path().join("other-x.npy");
    std::fs::write(&other_x, npy::write_i8(&[450, 64], &x8_values)).expect("writes");
    let (ok, _, stderr) = verify(&["--x", other_x.to_str().expect("utf-8")]);
    assert!(
        !ok && stderr.contains("inputs mismatch"),
        "{form}: {stderr}"
    );

    // Other logits: one prediction's logit changed.
    let mut other = ours.clone();
    other[5] = if other[5] < 127 { other[5] + 1 } else { 126 };
    let other_logits = dir.path().join("other-logits.npy");
    std::fs::write(&other_logits, npy::write_i8(&[450, 10], &other)).expect("writes");
    let (ok, _, stderr) = verify(&["--logits", other_logits.to_str().expect("utf-8")]);
    assert!(
        !ok && stderr.contains("logits mismatch"),
        "{form}: {stderr}"
    );

    // Another model: the other quantization of the same network.
    let sibling = if form.contains("tensor") {
        form.replace("tensor", "channel")
    } else {
        form.replace("channel", "tensor")
    };
    let (ok, _, stderr) = verify(&[
        "--model",
        models()
            .join(format!("{sibling}.onnx"))
            .to_str()
            .expect("utf-8"),
    ]);
    assert!(!ok && stderr.contains("model mismatch"), "{form}: {stderr}");
}

#[test]
fn a_gemm_model_is_proven_on_the_digits_test_split() {
    prove_and_check("digits-gemm-qdq-channel");
}

#[test]
fn a_matmul_add_model_is_proven_on_the_digits_test_split() {
    prove_and_check("digits-matmul-qop-tensor");
}
