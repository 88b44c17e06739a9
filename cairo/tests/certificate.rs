//! Job certificates from real proofs: an honest one verifies, and each way of tampering with one
//! is refused with its own reason.
//!
//! One certificate is built once (test profile): a 3 × 1100 job in 2 × 1024 tiles (4 tiles),
//! fan-in 2, so the tree has two inner nodes under the root: 7 proofs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use starkscale_cairo::certificate::{
    verify_certificate, Certificate, CertificateError, Expectations,
};
use starkscale_cairo::program::Pinned;
use starkscale_cairo::run::{run_program, run_reduce, DEFAULT_MAX_STEPS};
use starkscale_cairo::tree::{commit_matrix, Child, ReduceInput, RootOutput};
use starkscale_cairo::verify::VerifyError;
use starkscale_cairo::{run_map, Profile, Prover, TileInput, TileProof};
use starkscale_common::{Dtype, Matrix, TilePlan, Vector};

const ROWS: usize = 3;
const COLS: usize = 1100;
const TILE_ROWS: usize = 2;

fn random_job(seed: u64) -> (Matrix, Vector) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a = (0..ROWS * COLS)
        .map(|_| rng.gen_range(-128..=127))
        .collect();
    let x = (0..COLS).map(|_| rng.gen_range(-128..=127)).collect();
    (
        Matrix::new(ROWS, COLS, Dtype::I8, a).unwrap(),
        Vector::new(Dtype::I8, x).unwrap(),
    )
}

fn prover() -> &'static Prover {
    static PROVER: OnceLock<Prover> = OnceLock::new();
    PROVER.get_or_init(|| Prover::new(Profile::Test))
}

struct Fixture {
    a: Matrix,
    x: Vector,
    certificate: Certificate,
}

/// Proves every tile and node of the job, as the fleet would, and assembles the certificate.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (a, x) = random_job(11);
        let plan = TilePlan::new(ROWS, COLS, TILE_ROWS);
        let tree = plan.reduce_tree(2);
        assert_eq!(tree.len(), 3, "two inner nodes and the root");
        let mut proofs = Vec::new();
        let mut children = Vec::new();
        for t in plan.tiles() {
            let tile = TileInput::new(
                t.row0 as u32,
                t.col0 as u32,
                a.tile(t.row0, t.col0, t.rows, t.cols),
                x.block(t.col0, t.cols),
            )
            .unwrap();
            let run = run_map(&tile, DEFAULT_MAX_STEPS).unwrap();
            children.push(Child {
                program_hash: Pinned::Map.hash(),
                output: run.output.to_words(),
            });
            proofs.push(prover().prove(run.input).unwrap().0.to_bytes());
        }
        for node in &tree {
            let input = ReduceInput::for_node(
                &plan,
                node,
                node.children.iter().map(|&c| children[c].clone()).collect(),
            );
            let run = run_reduce(&input, DEFAULT_MAX_STEPS).unwrap();
            let program = if node.root {
                Pinned::Root
            } else {
                Pinned::Reduce
            };
            children.push(Child {
                program_hash: program.hash(),
                output: run.output.clone(),
            });
            proofs.push(prover().prove(run.input).unwrap().0.to_bytes());
        }
        let root = RootOutput::from_words(&children.last().unwrap().output).unwrap();
        let certificate = Certificate::new(&root, proofs);
        Fixture { a, x, certificate }
    })
}

fn test_profile() -> Expectations<'static> {
    Expectations {
        allow_test: true,
        ..Expectations::default()
    }
}

/// Verifies a tampered copy of the certificate and returns the error.
fn refused(tamper: impl FnOnce(&mut Certificate)) -> CertificateError {
    let mut cert = fixture().certificate.clone();
    tamper(&mut cert);
    verify_certificate(&cert.to_bytes(), &test_profile())
        .expect_err("a tampered certificate verified")
}

#[test]
fn an_honest_certificate_verifies_against_its_matrix_and_x() {
    let f = fixture();
    let expect = Expectations {
        a_commitment: Some(commit_matrix(&f.a, TILE_ROWS, 1024)),
        x: Some(&f.x),
        allow_test: true,
        starks_verified: false,
    };
    let verified = verify_certificate(&f.certificate.to_bytes(), &expect).unwrap();
    assert_eq!(verified.y, f.a.matvec(&f.x).unwrap());
    assert_eq!((verified.tiles, verified.nodes), (4, 3));
    assert_eq!(
        verified.profile,
        Profile::Test,
        "the verifier reports the profile"
    );
    let bytes = f.certificate.to_bytes();
    assert_eq!(Certificate::from_bytes(&bytes).unwrap(), f.certificate);
}

#[test]
fn a_certificate_at_a_lower_profile_is_refused_by_default() {
    let err = verify_certificate(&fixture().certificate.to_bytes(), &Expectations::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            CertificateError::Proof {
                index: 0,
                source: VerifyError::ProfileRefused(Profile::Test)
            }
        ),
        "{err}"
    );
}

#[test]
fn a_changed_y_entry_is_refused() {
    let err = refused(|c| c.y[1] += 1);
    assert!(matches!(err, CertificateError::Y { row: 1, .. }), "{err}");
}

#[test]
fn a_changed_child_fact_is_refused() {
    // The root's first listed fact (output cell 23) no longer names its first child.
    let err = refused(|c| {
        let root = c.proofs.last_mut().unwrap();
        *root = TileProof::forge_output_word(root, 23, 12345).unwrap();
    });
    let text = err.to_string();
    assert!(matches!(err, CertificateError::Facts(_)), "{text}");
    assert!(text.contains("the root proof 6 lists child fact"), "{text}");
}

#[test]
fn a_changed_tile_digest_is_refused() {
    // Tile 0's A digest (output cells 7..15) changes, so its fact is no longer the one its
    // node consumed.
    let err = refused(|c| {
        c.proofs[0] = TileProof::forge_output_word(&c.proofs[0], 7, 1).unwrap();
    });
    let text = err.to_string();
    assert!(matches!(err, CertificateError::Facts(_)), "{text}");
    assert!(
        text.contains("the reduce proof 4 lists child fact"),
        "{text}"
    );
}

#[test]
fn a_flipped_proof_byte_is_refused() {
    let err = refused(|c| {
        let proof = &mut c.proofs[1];
        let at = proof.len() - 1000;
        proof[at] ^= 0x01;
    });
    assert!(
        matches!(err, CertificateError::Proof { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_proof_of_a_foreign_program_is_refused() {
    let run = run_program(
        include_bytes!("fixtures/other.json"),
        10_000,
        Default::default(),
    )
    .unwrap();
    let foreign = prover().prove(run.input).unwrap().0.to_bytes();
    let err = refused(|c| c.proofs[0] = foreign);
    assert!(
        matches!(
            err,
            CertificateError::Proof {
                index: 0,
                source: VerifyError::UnknownProgram(_)
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_duplicated_and_swapped_tiles_are_refused() {
    let missing = refused(|c| {
        c.proofs.remove(1);
    });
    assert!(
        matches!(&missing, CertificateError::Coverage(m) if m.contains("has no proof")),
        "{missing}"
    );
    let duplicated = refused(|c| {
        let copy = c.proofs[0].clone();
        c.proofs.insert(1, copy);
    });
    assert!(
        matches!(&duplicated, CertificateError::Coverage(m) if m.contains("proven twice")),
        "{duplicated}"
    );
    let swapped = refused(|c| c.proofs.swap(0, 1));
    assert!(
        matches!(&swapped, CertificateError::Coverage(m) if m.contains("out of order")),
        "{swapped}"
    );
}

#[test]
fn another_matrix_or_another_x_is_refused() {
    let f = fixture();
    let (other_a, other_x) = random_job(12);
    let bytes = f.certificate.to_bytes();
    let err = verify_certificate(
        &bytes,
        &Expectations {
            a_commitment: Some(commit_matrix(&other_a, TILE_ROWS, 1024)),
            ..test_profile()
        },
    )
    .unwrap_err();
    assert!(matches!(err, CertificateError::Commitment { .. }), "{err}");
    // The right matrix in another tiling is another commitment too.
    let err = verify_certificate(
        &bytes,
        &Expectations {
            a_commitment: Some(commit_matrix(&f.a, 1, 1024)),
            ..test_profile()
        },
    )
    .unwrap_err();
    assert!(matches!(err, CertificateError::Commitment { .. }), "{err}");
    let err = verify_certificate(
        &bytes,
        &Expectations {
            x: Some(&other_x),
            ..test_profile()
        },
    )
    .unwrap_err();
    assert!(matches!(err, CertificateError::X { .. }), "{err}");
}

#[test]
fn a_changed_header_is_refused() {
    let err = refused(|c| c.program_hashes[1] = c.program_hashes[0]);
    assert!(
        matches!(
            err,
            CertificateError::ProgramHash {
                program: "reduce",
                ..
            }
        ),
        "{err}"
    );
    let err = refused(|c| c.a_commitment = c.x_commitment);
    assert!(matches!(err, CertificateError::Root(_)), "{err}");
    let err = refused(|c| c.rows += 1);
    assert!(matches!(err, CertificateError::Coverage(_)), "{err}");
    let err = verify_certificate(b"SSJC\x01garbage", &test_profile()).unwrap_err();
    assert!(matches!(err, CertificateError::Malformed(_)), "{err}");
}

/// What the coordinator checks before publishing a result: with the STARKs already verified
/// (and the bytes bound to them by digests), a forged record still fails — a changed y, a
/// changed fact, a missing tile — while a flipped byte deep inside a proof, which only its
/// STARK would catch, is left to the digests.
#[test]
fn structural_checks_alone_refuse_forged_statements() {
    let structural = Expectations {
        allow_test: true,
        starks_verified: true,
        ..Expectations::default()
    };
    let check = |tamper: &dyn Fn(&mut Certificate)| {
        let mut cert = fixture().certificate.clone();
        tamper(&mut cert);
        verify_certificate(&cert.to_bytes(), &structural)
    };
    let honest = check(&|_| {}).unwrap();
    assert_eq!(honest.y, fixture().a.matvec(&fixture().x).unwrap());
    let y = check(&|c| c.y[0] -= 1).unwrap_err();
    assert!(matches!(y, CertificateError::Y { row: 0, .. }), "{y}");
    let fact = check(&|c| {
        c.proofs[0] = TileProof::forge_output_word(&c.proofs[0], 7, 1).unwrap();
    })
    .unwrap_err();
    assert!(matches!(fact, CertificateError::Facts(_)), "{fact}");
    let missing = check(&|c| {
        c.proofs.remove(1);
    })
    .unwrap_err();
    assert!(
        matches!(missing, CertificateError::Coverage(_)),
        "{missing}"
    );
    check(&|c| {
        let proof = &mut c.proofs[1];
        let at = proof.len() - 1000;
        proof[at] ^= 0x01;
    })
    .expect("a STARK-only change is the digests' to catch");
}
