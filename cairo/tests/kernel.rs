//! The map kernel's arithmetic and digests, checked by running it in cairo-vm (no proving):
//! every output the proof would state is compared with a native computation.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use rand::{Rng, SeedableRng};
use starkscale_cairo::encoding::{a_digest, x_digest, DEFAULT_TILE_ROWS, MAX_TILE_ROWS};
use starkscale_cairo::run::DEFAULT_MAX_STEPS;
use starkscale_cairo::{run_map, KernelError, TileInput, TILE_COLS};
use starkscale_common::plan::kernel_steps;
use starkscale_common::{Dtype, Matrix, Vector};

fn tile(
    rows: usize,
    cols: usize,
    a: impl Fn(usize, usize) -> i64,
    x: impl Fn(usize) -> i64,
) -> TileInput {
    let int8 = |v: i64| i8::try_from(v).unwrap();
    let data = (0..rows * cols)
        .map(|i| int8(a(i / cols, i % cols)))
        .collect();
    let a = Matrix::new(rows, cols, Dtype::I8, data).unwrap();
    let x = Vector::new(Dtype::I8, (0..cols).map(|j| int8(x(j))).collect()).unwrap();
    TileInput::new(7, 2048, a, x).unwrap()
}

fn random_tile(rows: usize, cols: usize, seed: u64) -> TileInput {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let a: Vec<i64> = (0..rows * cols)
        .map(|_| rng.gen_range(-128..=127))
        .collect();
    let x: Vec<i64> = (0..cols).map(|_| rng.gen_range(-128..=127)).collect();
    tile(rows, cols, |r, c| a[r * cols + c], |c| x[c])
}

/// Runs the kernel and checks everything its public output states against native code.
fn check(t: &TileInput) {
    let run = run_map(t, DEFAULT_MAX_STEPS).unwrap();
    assert_eq!(
        run.stats.steps,
        kernel_steps(t.rows()),
        "the planner's step model"
    );
    let out = &run.output;
    assert_eq!(out.y, t.a.matvec(&t.x).unwrap(), "partial y");
    assert_eq!(out.a_digest, a_digest(&t.a), "A digest");
    assert_eq!(out.x_digest, x_digest(&t.x), "x digest");
    assert_eq!((out.row0, out.col0), (t.row0, t.col0));
    assert_eq!((out.rows as usize, out.cols as usize), (t.rows(), t.cols()));
}

#[test]
fn random_tiles_of_many_shapes() {
    // Odd and even heights, narrow and full widths, the default tile.
    for (i, &(rows, cols)) in [
        (1, 1),
        (2, 1024),
        (3, 17),
        (5, 255),
        (6, 257),
        (9, 1000),
        (DEFAULT_TILE_ROWS, TILE_COLS),
    ]
    .iter()
    .enumerate()
    {
        check(&random_tile(rows, cols, i as u64));
    }
}

#[test]
fn extreme_values() {
    // Largest positive, most negative and alternating products over a full block of columns.
    check(&tile(4, 1024, |_, _| -128, |_| -128));
    check(&tile(4, 1024, |_, _| 127, |_| -128));
    check(&tile(4, 1024, |_, _| -128, |_| 127));
    check(&tile(
        5,
        1024,
        |r, c| if (r + c) % 2 == 0 { -128 } else { 127 },
        |c| if c % 3 == 0 { 127 } else { -128 },
    ));
    check(&tile(2, 1024, |_, _| 0, |_| -128));
}

#[test]
fn max_magnitude_y_values_are_exact() {
    let t = tile(2, 1024, |r, _| if r == 0 { -128 } else { 127 }, |_| -128);
    let run = run_map(&t, DEFAULT_MAX_STEPS).unwrap();
    assert_eq!(run.output.y, vec![128 * 128 * 1024, -127 * 128 * 1024]);
}

#[test]
fn step_limit_is_a_clean_error() {
    let err = run_map(&random_tile(4, 64, 1), 1000).unwrap_err();
    assert!(
        matches!(err, KernelError::StepLimit { limit: 1000 }),
        "{err}"
    );
    assert!(err.is_permanent());
}

#[test]
fn steps_per_multiply_add_at_the_default_tile() {
    let t = random_tile(DEFAULT_TILE_ROWS, TILE_COLS, 3);
    let steps = run_map(&t, DEFAULT_MAX_STEPS).unwrap().stats.steps;
    let per_mac = steps as f64 / t.macs() as f64;
    assert!(per_mac < 1.2, "{per_mac} steps per multiply-add");
}

#[test]
fn invalid_tiles_are_refused_before_running() {
    let a = Matrix::new(1, 1025, Dtype::I8, vec![0; 1025]).unwrap();
    let x = Vector::new(Dtype::I8, vec![0; 1025]).unwrap();
    assert!(matches!(
        TileInput::new(0, 0, a, x),
        Err(KernelError::InvalidTile(_))
    ));
    let a = Matrix::new(2, 3, Dtype::I8, vec![0; 6]).unwrap();
    let x = Vector::new(Dtype::I8, vec![0; 4]).unwrap();
    assert!(matches!(
        TileInput::new(0, 0, a, x),
        Err(KernelError::InvalidTile(_))
    ));
    let rows = MAX_TILE_ROWS + 1;
    let a = Matrix::new(rows, 1, Dtype::I8, vec![0; rows]).unwrap();
    let x = Vector::new(Dtype::I8, vec![0]).unwrap();
    assert!(matches!(
        TileInput::new(0, 0, a, x),
        Err(KernelError::InvalidTile(_))
    ));
}
