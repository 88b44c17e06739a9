//! Proving and verifying real tiles: a proof verifies and states the native product; every kind
//! of tampering is rejected with its own reason.
//!
//! Proofs take seconds and gigabytes, so tests in this file prove one at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::{Mutex, MutexGuard, OnceLock};

use rand::{Rng, SeedableRng};
use starkscale_cairo::encoding::{self, DEFAULT_TILE_ROWS, Y_OFFSET};
use starkscale_cairo::program::map_program_hash;
use starkscale_cairo::run::{run_program, DEFAULT_MAX_STEPS};
use starkscale_cairo::verify::PREPROCESSED_ROOT;
use starkscale_cairo::{run_map, verify_tile, Profile, Prover, TileInput, VerifyError, TILE_COLS};
use starkscale_common::{Dtype, Matrix, Vector};

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn prover(profile: Profile) -> &'static Prover {
    static PRODUCTION: OnceLock<Prover> = OnceLock::new();
    static TEST: OnceLock<Prover> = OnceLock::new();
    match profile {
        Profile::Production => PRODUCTION.get_or_init(|| Prover::new(Profile::Production)),
        Profile::Test => TEST.get_or_init(|| Prover::new(Profile::Test)),
    }
}

fn random_tile(rows: usize, cols: usize, seed: u64) -> TileInput {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a = (0..rows * cols)
        .map(|_| rng.gen_range(-128..=127))
        .collect();
    let x = (0..cols).map(|_| rng.gen_range(-128..=127)).collect();
    TileInput::new(
        254,
        1024,
        Matrix::new(rows, cols, Dtype::I8, a).unwrap(),
        Vector::new(Dtype::I8, x).unwrap(),
    )
    .unwrap()
}

fn prove(tile: &TileInput, profile: Profile) -> Vec<u8> {
    let run = run_map(tile, DEFAULT_MAX_STEPS).unwrap();
    prover(profile).prove(run.input).unwrap().0.to_bytes()
}

/// A small test-profile proof shared by the tampering tests.
fn small_proof() -> &'static (TileInput, Vec<u8>) {
    static PROOF: OnceLock<(TileInput, Vec<u8>)> = OnceLock::new();
    PROOF.get_or_init(|| {
        let tile = random_tile(3, 17, 11);
        let bytes = prove(&tile, Profile::Test);
        (tile, bytes)
    })
}

#[test]
fn default_tile_proof_verifies_and_states_the_native_product() {
    let _guard = one_at_a_time();
    let tile = random_tile(DEFAULT_TILE_ROWS, TILE_COLS, 5);
    let bytes = prove(&tile, Profile::Production);
    assert_eq!(
        bytes[6], 1,
        "the kernel's bytecode is left out of the envelope"
    );

    let verified = verify_tile(&bytes, false).unwrap();
    assert_eq!(verified.profile, Profile::Production);
    assert_eq!(verified.program_hash, map_program_hash());
    assert_eq!(verified.output.y, tile.a.matvec(&tile.x).unwrap());
    assert_eq!((verified.output.row0, verified.output.col0), (254, 1024));
    assert_eq!(
        verified.fact,
        encoding::fact(&map_program_hash(), &verified.output.to_words())
    );
    verified.check_inputs(Some(&tile.a), Some(&tile.x)).unwrap();
}

#[test]
fn test_profile_is_refused_unless_allowed() {
    let _guard = one_at_a_time();
    let (_, bytes) = small_proof();
    assert!(matches!(
        verify_tile(bytes, false),
        Err(VerifyError::ProfileRefused(Profile::Test))
    ));
    assert_eq!(verify_tile(bytes, true).unwrap().profile, Profile::Test);
}

#[test]
fn tampering_is_rejected_with_distinct_reasons() {
    let _guard = one_at_a_time();
    let (tile, bytes) = small_proof();

    let truncated = &bytes[..bytes.len() / 2];
    assert!(matches!(
        verify_tile(truncated, true),
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(
        verify_tile(b"not a proof", true),
        Err(VerifyError::Malformed(_))
    ));

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let err = verify_tile(&flipped, true).unwrap_err();
    assert!(
        matches!(err, VerifyError::Invalid(_)),
        "flipped byte: {err}"
    );

    // The claimed profile byte must agree with the parameters actually used.
    let mut relabelled = bytes.clone();
    relabelled[5] = 1;
    let err = verify_tile(&relabelled, true).unwrap_err();
    assert!(
        matches!(err, VerifyError::Parameters { .. }),
        "relabelled profile: {err}"
    );

    // Forge the first y value in the public output: the proof no longer matches it.
    let y0 = (tile.a.matvec(&tile.x).unwrap()[0] + Y_OFFSET) as u32;
    let mut cell = y0.to_le_bytes().to_vec();
    cell.extend_from_slice(&[0; 28]);
    let hits: Vec<usize> = bytes
        .windows(32)
        .enumerate()
        .filter(|(_, w)| *w == cell)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the y cell appears once in the proof");
    let mut forged = bytes.clone();
    forged[hits[0]] ^= 0x01;
    let err = verify_tile(&forged, true).unwrap_err();
    assert!(
        matches!(err, VerifyError::Invalid(_)),
        "forged output: {err}"
    );

    // A valid proof, checked against inputs it does not commit to.
    let verified = verify_tile(bytes, true).unwrap();
    let mut other_a = tile.a.data().to_vec();
    other_a[4] = if other_a[4] == 0 { 1 } else { 0 };
    let other_a = Matrix::new(tile.rows(), tile.cols(), Dtype::I8, other_a).unwrap();
    let err = verified
        .check_inputs(Some(&other_a), Some(&tile.x))
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::DigestMismatch { which: "A", .. }),
        "{err}"
    );
    let mut other_x = tile.x.data().to_vec();
    other_x[0] = -other_x[0] - 1;
    let other_x = Vector::new(Dtype::I8, other_x).unwrap();
    let err = verified
        .check_inputs(Some(&tile.a), Some(&other_x))
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::DigestMismatch { which: "x", .. }),
        "{err}"
    );
    let wider = tile.a.tile(0, 0, 2, 17);
    let err = verified.check_inputs(Some(&wider), None).unwrap_err();
    assert!(matches!(err, VerifyError::Shape(_)), "{err}");
    verified.check_inputs(Some(&tile.a), Some(&tile.x)).unwrap();
}

#[test]
fn random_corruption_never_verifies_and_never_panics() {
    let _guard = one_at_a_time();
    let (_, bytes) = small_proof();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..200 {
        let mut bad = bytes.clone();
        match rng.gen_range(0..3) {
            0 => {
                let at = rng.gen_range(0..bad.len());
                bad[at] ^= 1 << rng.gen_range(0..8);
            }
            1 => bad.truncate(rng.gen_range(0..bad.len())),
            _ => {
                // Overwrite a run of bytes, as a corrupt length prefix or block would.
                let at = rng.gen_range(0..bad.len());
                let end = (at + rng.gen_range(1..64)).min(bad.len());
                bad[at..end].iter_mut().for_each(|b| *b = rng.gen());
            }
        }
        let result = std::panic::catch_unwind(|| verify_tile(&bad, true));
        let result = result.expect("verify_tile must not panic");
        assert!(result.is_err(), "a corrupted proof verified");
    }
}

#[test]
fn proof_of_another_program_is_refused() {
    let _guard = one_at_a_time();
    let run = run_program(
        include_bytes!("fixtures/other.json"),
        10_000,
        Default::default(),
    )
    .unwrap();
    let bytes = prover(Profile::Test).prove(run.input).unwrap().0.to_bytes();
    assert_eq!(bytes[6], 0, "a foreign program travels inline");
    let err = verify_tile(&bytes, true).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownProgram(_)), "{err}");
}

#[test]
fn preprocessed_root_is_the_pinned_one() {
    let _guard = one_at_a_time();
    for profile in [Profile::Production, Profile::Test] {
        assert_eq!(
            hex_of(prover(profile).preprocessed_root()),
            PREPROCESSED_ROOT
        );
    }
}

fn hex_of(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
