//! Batch certificates end to end at the test profile: an honest job verifies against its
//! inputs, and each tampering is refused with its own reason (docs/batch.md).

use std::sync::OnceLock;

use rand::{Rng, SeedableRng};
use starkscale_cairo::batch::{self, Rows, Stream};
use starkscale_cairo::batch_certificate::{
    verify_batch, BatchCertificate, BatchError, BatchExpect,
};
use starkscale_cairo::batch_prove::prove_batch;
use starkscale_cairo::verify::VerifyError;
use starkscale_cairo::{Profile, Prover};

const STEPS: usize = 1 << 24;
// Weights: 40 rows of one chunk, two segments (int8 segments get half the budget);
// inputs and outputs: one segment each.
const BLOCKS: usize = 64;

struct Job {
    x: Rows,
    y: Rows,
    cert: BatchCertificate,
}

fn random_i8(rng: &mut rand::rngs::StdRng, rows: usize, width: usize) -> Rows {
    Rows::I8 {
        width,
        data: (0..rows * width)
            .map(|_| rng.gen_range(-128..=127))
            .collect(),
    }
}

/// Two jobs with the same weights and different inputs, proven once for all tests.
fn jobs() -> &'static (Rows, Job, Job) {
    static JOBS: OnceLock<(Rows, Job, Job)> = OnceLock::new();
    JOBS.get_or_init(|| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let a = random_i8(&mut rng, 20, 40);
        let prover = Prover::new(Profile::Test);
        let mut job = || {
            let x = random_i8(&mut rng, 6, 40);
            let (y, cert, stats) = prove_batch(&a, &x, &prover, BLOCKS, STEPS).expect("proves");
            assert_eq!(stats.segments, 4);
            Job { x, y, cert }
        };
        let one = job();
        let two = job();
        (a, one, two)
    })
}

fn expect<'a>(a: &'a starkscale_cairo::Digest, job: &'a Job) -> BatchExpect<'a> {
    BatchExpect {
        a_commitment: Some(a),
        x: Some(&job.x),
        y: Some(&job.y),
        allow_test: true,
        starks_verified: false,
    }
}

#[test]
fn an_honest_batch_verifies_and_tampering_is_named() {
    let (a, one, two) = jobs();
    let shape = one.cert.shape;
    let com_a = batch::commit(Stream::Weights, &shape, a);
    assert_eq!(batch::multiply(a, &one.x), one.y);
    let bytes = one.cert.to_bytes();
    let ok = verify_batch(&bytes, &expect(&com_a, one)).expect("honest certificate verifies");
    assert_eq!(ok.profile, Profile::Test);
    assert_eq!(ok.segments, 4);
    assert_eq!(ok.a_commitment, com_a);
    eprintln!("verified in {:.3} s", ok.verify_s);

    // A test-profile certificate is refused unless asked for.
    let strict = BatchExpect {
        allow_test: false,
        ..expect(&com_a, one)
    };
    match verify_batch(&bytes, &strict) {
        Err(BatchError::Proof {
            source: VerifyError::ProfileRefused(Profile::Test),
            ..
        }) => {}
        other => panic!("expected the test profile refused, got {other:?}"),
    }

    // A changed Y entry: the given Y no longer commits to what the root proves.
    let mut y = one.y.clone();
    if let Rows::I32 { data, .. } = &mut y {
        data[7] += 1;
    }
    let err = verify_batch(
        &bytes,
        &BatchExpect {
            y: Some(&y),
            ..expect(&com_a, one)
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, BatchError::Commitment { what: "Y", .. }),
        "{err}"
    );

    // Another job's certificate for this X: the X commitment differs.
    let err = verify_batch(&two.cert.to_bytes(), &expect(&com_a, one)).unwrap_err();
    assert!(
        matches!(err, BatchError::Commitment { what: "X", .. }),
        "{err}"
    );

    // Other weights.
    let other_a = starkscale_cairo::Digest([1; 8]);
    let err = verify_batch(
        &bytes,
        &BatchExpect {
            a_commitment: Some(&other_a),
            ..expect(&com_a, one)
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, BatchError::Commitment { what: "A", .. }),
        "{err}"
    );

    // The certificate's own header claims a different Y.
    let mut cert = one.cert.clone();
    cert.y_commitment = two.cert.y_commitment;
    let err = verify_batch(&cert.to_bytes(), &BatchExpect::default_test()).unwrap_err();
    assert!(
        matches!(err, BatchError::Commitment { what: "Y", .. }),
        "{err}"
    );

    // Two segments swapped.
    let mut cert = one.cert.clone();
    cert.proofs.swap(0, 1);
    let err = verify_batch(&cert.to_bytes(), &expect(&com_a, one)).unwrap_err();
    assert!(matches!(err, BatchError::Facts(_)), "{err}");

    // A segment missing.
    let mut cert = one.cert.clone();
    cert.proofs.remove(2);
    let err = verify_batch(&cert.to_bytes(), &expect(&com_a, one)).unwrap_err();
    assert!(matches!(err, BatchError::Facts(_)), "{err}");

    // A segment proven with another job's challenges (same rows, same stream).
    let mut cert = one.cert.clone();
    cert.proofs[0] = two.cert.proofs[0].clone();
    let err = verify_batch(&cert.to_bytes(), &expect(&com_a, one)).unwrap_err();
    assert!(matches!(err, BatchError::Facts(_)), "{err}");

    // The root out of place.
    let mut cert = one.cert.clone();
    let n = cert.proofs.len();
    cert.proofs.swap(n - 2, n - 1);
    let err = verify_batch(&cert.to_bytes(), &expect(&com_a, one)).unwrap_err();
    assert!(matches!(err, BatchError::Order { .. }), "{err}");

    // A flipped byte deep inside a segment proof.
    let mut cert = one.cert.clone();
    let p = &mut cert.proofs[1];
    let at = p.len() - 100;
    p[at] ^= 1;
    let err = verify_batch(&cert.to_bytes(), &expect(&com_a, one)).unwrap_err();
    assert!(matches!(err, BatchError::Proof { index: 1, .. }), "{err}");

    // Truncated file.
    let err = verify_batch(&bytes[..bytes.len() - 10], &expect(&com_a, one)).unwrap_err();
    assert!(matches!(err, BatchError::Malformed(_)), "{err}");
}
