//! `starkscale bench kernel`: proves random tiles and reports one JSON object per tile.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use starkscale_cairo::encoding::DEFAULT_TILE_ROWS;
use starkscale_cairo::run::run_map_unbound;
use starkscale_cairo::run::DEFAULT_MAX_STEPS;
use starkscale_cairo::verify::{timed_verify, verify_stark_only};
use starkscale_cairo::{run_map, Prover, TileInput, TILE_COLS};
use starkscale_common::{Dtype, Matrix, Vector};

use crate::cli::parse_profile;

#[derive(Args, Debug)]
pub struct KernelArgs {
    /// Tile height (default: the kernel's default tile).
    #[arg(long, default_value_t = DEFAULT_TILE_ROWS)]
    rows: usize,
    /// Tile width (at most 1024).
    #[arg(long, default_value_t = TILE_COLS)]
    cols: usize,
    #[arg(long, default_value = "i8")]
    dtype: String,
    /// Tiles to prove with one prover setup.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[arg(long, default_value = "production")]
    profile: String,
    /// Seed for the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print only the JSON report.
    #[arg(long)]
    json: bool,
    /// Prove the kernel without its digest chains, to measure what binding inputs costs.
    #[arg(long)]
    unbound: bool,
}

#[derive(Serialize, Debug)]
struct KernelReport {
    rows: usize,
    cols: usize,
    dtype: String,
    profile: &'static str,
    security_bits: u32,
    bound: bool,
    steps: usize,
    steps_per_mac: f64,
    run_s: f64,
    adapt_s: f64,
    prove_s: f64,
    verify_ms: f64,
    setup_s: f64,
    macs: u64,
    /// Multiply-adds per second of run + adapt + prove (setup excluded: once per worker).
    macs_per_s: f64,
    peak_rss_bytes: u64,
    proof_bytes: usize,
}

pub fn kernel(args: KernelArgs) -> Result<()> {
    let dtype = Dtype::parse(&args.dtype)?;
    let profile = parse_profile(&args.profile)?;
    ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let started = Instant::now();
    let prover = Prover::new(profile);
    let setup_s = started.elapsed().as_secs_f64();
    for _ in 0..args.repeat {
        let a: Vec<i64> = (0..args.rows * args.cols)
            .map(|_| rng.gen_range(dtype.min()..=dtype.max()))
            .collect();
        let x: Vec<i64> = (0..args.cols)
            .map(|_| rng.gen_range(dtype.min()..=dtype.max()))
            .collect();
        let a = Matrix::new(args.rows, args.cols, dtype, a)?;
        let x = Vector::new(dtype, x)?;
        let expected = a.matvec(&x)?;
        let tile = TileInput::new(0, 0, a, x)?;

        let run = if args.unbound {
            run_map_unbound(&tile, DEFAULT_MAX_STEPS)?
        } else {
            run_map(&tile, DEFAULT_MAX_STEPS)?
        };
        ensure!(
            run.output.y == expected,
            "the kernel's y differs from the native product"
        );
        let stats = run.stats;
        let (proof, prove_s) = prover.prove(run.input)?;
        let bytes = proof.to_bytes();
        let verify_ms = if args.unbound {
            let started = Instant::now();
            verify_stark_only(&bytes).context("verifying the benchmark proof")?;
            started.elapsed().as_secs_f64() * 1e3
        } else {
            let (verified, verify_ms) = timed_verify(&bytes, true);
            let verified = verified.context("verifying the benchmark proof")?;
            ensure!(
                verified.output.y == expected,
                "proven y differs from the native product"
            );
            verify_ms
        };

        let macs = tile.macs();
        let report = KernelReport {
            rows: args.rows,
            cols: args.cols,
            dtype: dtype.to_string(),
            profile: profile.name(),
            security_bits: profile.security_bits(),
            bound: !args.unbound,
            steps: stats.steps,
            steps_per_mac: stats.steps as f64 / macs as f64,
            run_s: stats.run_s,
            adapt_s: stats.adapt_s,
            prove_s,
            verify_ms,
            setup_s,
            macs,
            macs_per_s: macs as f64 / (stats.run_s + stats.adapt_s + prove_s),
            peak_rss_bytes: peak_rss_bytes(),
            proof_bytes: bytes.len(),
        };
        println!("{}", serde_json::to_string(&report)?);
        if !args.json {
            eprintln!(
                "{}x{}: {:.0} MAC/s, prove {:.1}s, verify {:.1}ms, {:.2} GB peak, {} KB proof",
                report.rows,
                report.cols,
                report.macs_per_s,
                report.prove_s,
                report.verify_ms,
                report.peak_rss_bytes as f64 / 1e9,
                report.proof_bytes / 1024
            );
        }
    }
    Ok(())
}

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unavailable.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
