//! The `starkscale` binary end to end: files in, proof file out, verification exit codes and
//! messages, and the kernel benchmark's report.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::{Command, Output};

fn starkscale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starkscale"))
        .args(args)
        .output()
        .expect("the starkscale binary runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn prove_then_verify_a_tile_from_npy_and_json() {
    let dir = tempfile::tempdir().unwrap();
    // A from .npy, x from JSON.
    let a_values: Vec<i8> = (0..5 * 9)
        .map(|i| ((i * 37 % 256) as i64 - 128) as i8)
        .collect();
    let a = write(
        dir.path(),
        "a.npy",
        &starkscale_common::tensor::npy::write_i8(&[5, 9], &a_values),
    );
    let x = write(dir.path(), "x.json", b"[1, -2, 3, -4, 5, -6, 7, -128, 127]");
    let proof = dir.path().join("tile.proof");
    let proof = proof.to_str().unwrap();

    let out = starkscale(&[
        "prove-tile",
        "--a",
        &a,
        "--x",
        &x,
        "--out",
        proof,
        "--profile",
        "test",
        "--row0",
        "10",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let out = starkscale(&[
        "verify-tile",
        proof,
        "--a",
        &a,
        "--x",
        &x,
        "--allow-test-profile",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected: Vec<i64> = (0..5)
        .map(|r| {
            let xs = [1, -2, 3, -4, 5, -6, 7, -128, 127];
            (0..9).map(|c| i64::from(a_values[r * 9 + c]) * xs[c]).sum()
        })
        .collect();
    assert_eq!(report["y"], serde_json::json!(expected));
    assert_eq!(report["row0"], 10);
    assert_eq!(report["profile"], "test");

    // Test-profile proofs are refused unless asked for.
    let out = starkscale(&["verify-tile", proof]);
    assert!(!out.status.success());
    assert!(text(&out).contains("test"), "{}", text(&out));

    // The proof does not commit to another x.
    let other_x = write(
        dir.path(),
        "x2.json",
        b"[1, -2, 3, -4, 5, -6, 7, -128, 126]",
    );
    let out = starkscale(&[
        "verify-tile",
        proof,
        "--x",
        &other_x,
        "--allow-test-profile",
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("x digest mismatch"), "{}", text(&out));

    // A truncated proof file is an error, not a crash.
    let bytes = std::fs::read(proof).unwrap();
    let cut = write(dir.path(), "cut.proof", &bytes[..1000]);
    let out = starkscale(&["verify-tile", &cut, "--allow-test-profile"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("malformed proof"), "{}", text(&out));
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("never.proof");
    let out_path = out_path.to_str().unwrap();
    let cases: &[(&[u8], &[u8], &str)] = &[
        (b"[[1, 200]]", b"[1, 1]", "out of range"),
        (b"[[1, 2], [3]]", b"[1, 1]", "row 1 has 1 entries"),
        (b"[[1, 2]]", b"[1, 1, 1]", "2 columns but the x-block has 3"),
        (b"{\"a\": 1}", b"[1]", "invalid JSON"),
    ];
    for (a, x, message) in cases {
        let a = write(dir.path(), "a.json", a);
        let x = write(dir.path(), "x.json", x);
        let out = starkscale(&["prove-tile", "--a", &a, "--x", &x, "--out", out_path]);
        assert!(!out.status.success());
        assert!(
            text(&out).contains(message),
            "expected '{message}' in: {}",
            text(&out)
        );
    }
    assert!(
        !Path::new(out_path).exists(),
        "no proof is written for bad inputs"
    );
}

#[test]
fn bench_kernel_reports_json() {
    let out = starkscale(&[
        "bench",
        "kernel",
        "--rows",
        "3",
        "--cols",
        "40",
        "--profile",
        "test",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "rows",
        "cols",
        "dtype",
        "steps",
        "steps_per_mac",
        "run_s",
        "prove_s",
        "verify_ms",
        "macs_per_s",
        "peak_rss_bytes",
        "proof_bytes",
        "bound",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    assert_eq!(report["rows"], 3);
    assert_eq!(report["bound"], true);
    assert!(report["proof_bytes"].as_u64().unwrap() > 100_000);
}

#[test]
fn a_batch_certificate_verifies_against_its_files_and_refuses_another_y() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = starkscale(&[
        "bench",
        "batch",
        "--rows",
        "12",
        "--cols",
        "70",
        "--batch",
        "5",
        "--profile",
        "test",
        "--json",
        "--out",
        d,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["macs"], 12 * 70 * 5);
    assert_eq!(report["proofs"], 4);

    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let out = starkscale(&["commit", "--batch", &path("a.npy")]);
    assert!(out.status.success(), "{}", text(&out));
    let commitment = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(commitment.len(), 64);

    let verify = |y: &str, extra: &[&str]| {
        let mut args = vec![
            "verify".to_string(),
            path("cert"),
            "--commitment".into(),
            commitment.clone(),
            "--x".into(),
            path("x.npy"),
            "--y".into(),
            y.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        starkscale(&args)
    };
    let out = verify(&path("y.npy"), &["--allow-test-profile"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("OK: Y = A·X for a 12x70 A and a batch of 5 inputs"),
        "{}",
        text(&out)
    );

    // The test profile is refused unless asked for.
    let out = verify(&path("y.npy"), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("profile"), "{}", text(&out));

    // One output changed by one: Y no longer commits to what was proven.
    let y = std::fs::read(path("y.npy")).unwrap();
    let (shape, values) = starkscale_common::tensor::npy::parse_i32(&y).unwrap();
    let mut values: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
    values[3] += 1;
    let bad = write(
        dir.path(),
        "bad-y.npy",
        &starkscale_common::tensor::npy::write_i32(&shape, &values),
    );
    let out = verify(&bad, &["--allow-test-profile"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("Y mismatch"), "{}", text(&out));
}
