//! Benchmarks: `bench kernel` proves random tiles and reports one JSON object per tile; `bench
//! fleet` runs a multi-tile job (or, with `--batch`, a matmul job) through a coordinator and a
//! worker on RabbitMQ and Redis and reports orchestration overhead, per-task memory and the
//! client's verification; `bench plan` times planning and
//! publishing a job of many tiles.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use starkscale_cairo::encoding::DEFAULT_TILE_ROWS;
use starkscale_cairo::run::run_map_unbound;
use starkscale_cairo::run::DEFAULT_MAX_STEPS;
use starkscale_cairo::verify::{timed_verify, verify_stark_only};
use starkscale_cairo::Profile;
use starkscale_cairo::{run_map, Prover, TileInput, TILE_COLS};
use starkscale_common::access::Role;
use starkscale_common::broker::{AmqpBroker, Broker, Headers, Topology};
use starkscale_common::config::FleetConfig;
use starkscale_common::messages::{JobProgress, JobResult, JobStatus, Keys};
use starkscale_common::store::{parts, RedisStore, Store};
use starkscale_common::tensor::npy;
use starkscale_common::{Dtype, Matrix, Vector};
use starkscale_coordinator::CoordinatorConfig;
use starkscale_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

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
        let a: Vec<i8> = (0..args.rows * args.cols).map(|_| rng.gen()).collect();
        let x: Vec<i8> = (0..args.cols).map(|_| rng.gen()).collect();
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
            peak_rss_bytes: starkscale_common::rss::peak_rss_bytes(),
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

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// Rows of the random matrix.
    #[arg(long, default_value_t = 2 * DEFAULT_TILE_ROWS)]
    rows: usize,
    /// Columns of the random matrix.
    #[arg(long, default_value_t = 2 * TILE_COLS)]
    cols: usize,
    /// Tile height.
    #[arg(long, default_value_t = DEFAULT_TILE_ROWS)]
    tile_rows: usize,
    /// Run a matmul job of this many inputs (one per row of X) instead of a matvec job.
    #[arg(long)]
    batch: Option<usize>,
    /// Blake2s compressions per segment task of a matmul job.
    #[arg(long)]
    segment_blocks: Option<usize>,
    #[arg(long, default_value = "production")]
    profile: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print only the JSON report.
    #[arg(long)]
    json: bool,
    /// RabbitMQ and Redis to run on (queues and keys get a unique prefix, removed afterwards).
    #[command(flatten)]
    fleet: FleetConfig,
}

#[derive(Serialize)]
struct FleetReport {
    rows: usize,
    cols: usize,
    /// Inputs: 1 for a matvec job.
    batch: usize,
    macs: u64,
    tile_rows: usize,
    /// Map tiles, or segments of a matmul job.
    tiles: usize,
    profile: &'static str,
    /// From publishing the job to receiving its result, at the client.
    wall_s: f64,
    /// Sum over tiles of run + prove (worker) + verify (coordinator).
    tile_s: f64,
    /// Reduce nodes (root included) and the same sum over them.
    nodes: usize,
    reduce_s: f64,
    /// reduce_s / tile_s: what the certificate's reduce tree adds to the proving.
    reduce_share: f64,
    /// wall_s / (tile_s + reduce_s): what orchestration costs on top of the work itself.
    overhead: f64,
    macs_per_s: f64,
    first_task_peak_rss_bytes: u64,
    max_task_peak_rss_bytes: u64,
    /// Largest later task peak over the first task's peak.
    memory_growth: f64,
    certificate_bytes: usize,
    /// Verifying the certificate against the inputs (and Y), as a client would.
    verify_s: f64,
}

/// A random int8 matrix and its input(s) — a vector, or a batch of `batch` inputs, one per row
/// — written as `.npy` files the fleet reads by path.
fn random_inputs(
    dir: &std::path::Path,
    rows: usize,
    cols: usize,
    batch: Option<usize>,
    seed: u64,
) -> Result<(String, String, Matrix, Matrix)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut random = |n: usize| -> Vec<i8> { (0..n).map(|_| rng.gen()).collect() };
    let a = random(rows * cols);
    let b = batch.unwrap_or(1);
    let x = random(b * cols);
    let (a_path, x_path) = (dir.join("a.npy"), dir.join("x.npy"));
    std::fs::write(&a_path, npy::write_i8(&[rows, cols], &a))?;
    let x_shape = match batch {
        Some(b) => vec![b, cols],
        None => vec![cols],
    };
    std::fs::write(&x_path, npy::write_i8(&x_shape, &x))?;
    Ok((
        a_path.display().to_string(),
        x_path.display().to_string(),
        Matrix::new(rows, cols, Dtype::I8, a)?,
        Matrix::new(b, cols, Dtype::I8, x)?,
    ))
}

fn bench_prefix(fleet: &FleetConfig, label: &str) -> FleetConfig {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    FleetConfig {
        prefix: format!("{}-bench-{label}-{nanos}", fleet.prefix),
        ..fleet.clone()
    }
}

/// Waits until `queue` has a consumer (a worker that finished its prover set-up).
async fn wait_for_consumer(broker: &AmqpBroker, queue: &str) -> Result<()> {
    let started = Instant::now();
    while broker.depth(queue).await?.1 == 0 {
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "no worker came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub async fn fleet(args: FleetArgs) -> Result<()> {
    let profile = parse_profile(&args.profile)?;
    let fleet = bench_prefix(&args.fleet, "fleet");
    let dir = tempfile::tempdir()?;
    let (a_path, x_path, a, x) =
        random_inputs(dir.path(), args.rows, args.cols, args.batch, args.seed)?;
    let job_id = "bench-fleet";
    let mut job = serde_json::json!({
        "schema_version": 1, "job_id": job_id, "kind": "matvec", "dtype": "i8",
        "a": {"path": a_path}, "x": {"path": x_path}, "tile_rows": args.tile_rows,
    });
    if args.batch.is_some() {
        job["kind"] = "matmul".into();
        if let Some(blocks) = args.segment_blocks {
            job["segment_blocks"] = blocks.into();
        }
    }
    let store = fleet.store().await?;
    let keys = Keys::new(fleet.prefix.clone());

    let topology = Topology::new(fleet.prefix.clone());
    let client = fleet.broker(Role::Coordinator).await?;
    let shutdown = CancellationToken::new();
    let coordinator = tokio::spawn(starkscale_coordinator::run(
        CoordinatorConfig {
            allow_test_profile: profile == Profile::Test,
            // The inputs are written there, and the coordinator reads paths only inside it.
            data_dir: dir.path().to_path_buf(),
            ..CoordinatorConfig::new(fleet.clone())
        },
        shutdown.clone(),
    ));
    let worker = tokio::spawn(starkscale_worker::run(
        WorkerConfig {
            name: Some("bench".into()),
            ..WorkerConfig::new(fleet.clone(), profile)
        },
        shutdown.clone(),
    ));
    let outcome = async {
        wait_for_consumer(&client, &topology.tasks()).await?;
        let mut results = client.subscribe_results(job_id).await?;
        let started = Instant::now();
        client
            .publish(
                &topology.jobs(),
                job.to_string().as_bytes(),
                &Headers::new(),
                None,
            )
            .await?;
        let delivery = results.next().await?;
        let wall_s = started.elapsed().as_secs_f64();
        let result: JobResult = serde_json::from_slice(&delivery.body)?;
        delivery.ack().await?;
        ensure!(
            result.status == JobStatus::Succeeded,
            "the job failed: {:?}",
            result.error
        );
        let certificate = match &result.certificate_key {
            Some(key) => parts::get_parts(&store, key, u64::MAX)
                .await?
                .context("the certificate is missing")?,
            None => anyhow::bail!("the result names no certificate"),
        };
        let verify_s = check_fleet_result(&result, &store, &certificate, &a, &x, profile).await?;
        Ok::<_, anyhow::Error>((wall_s, result, certificate.len(), verify_s))
    }
    .await;
    shutdown.cancel();
    let _ = coordinator.await;
    let _ = worker.await;
    store
        .delete(&[
            keys.result(job_id),
            keys.progress(job_id),
            keys.certificate(job_id),
            keys.y(job_id),
        ])
        .await?;
    client.delete_topology().await?;
    let (wall_s, result, certificate_bytes, verify_s) = outcome?;
    let batch = args.batch.unwrap_or(1);
    let macs = (args.rows * args.cols * batch) as u64;

    let peaks: Vec<u64> = result
        .task_timings
        .iter()
        .map(|t| t.peak_rss_bytes)
        .collect();
    let first = peaks.first().copied().unwrap_or(0);
    let max = peaks.iter().copied().max().unwrap_or(0);
    let report = FleetReport {
        rows: args.rows,
        cols: args.cols,
        batch,
        macs,
        tile_rows: args.tile_rows,
        tiles: result.tiles,
        profile: profile.name(),
        wall_s,
        tile_s: result.tile_s,
        nodes: result.nodes,
        reduce_s: result.reduce_s,
        reduce_share: result.reduce_s / result.tile_s,
        overhead: wall_s / (result.tile_s + result.reduce_s),
        macs_per_s: macs as f64 / wall_s,
        first_task_peak_rss_bytes: first,
        max_task_peak_rss_bytes: max,
        memory_growth: if first > 0 {
            max as f64 / first as f64
        } else {
            0.0
        },
        certificate_bytes,
        verify_s,
    };
    println!("{}", serde_json::to_string(&report)?);
    if !args.json {
        eprintln!(
            "{} tasks + {} reduce nodes: wall {:.1}s vs {:.1}s of task work + {:.1}s of reduce work (reduce adds {:.1}%) = {:.3}x; {:.0} MAC/s; task peaks {:.2}-{:.2} GB; verify {:.2} s",
            report.tiles,
            report.nodes,
            report.wall_s,
            report.tile_s,
            report.reduce_s,
            100.0 * report.reduce_share,
            report.overhead,
            report.macs_per_s,
            first as f64 / 1e9,
            max as f64 / 1e9,
            report.verify_s
        );
    }
    Ok(())
}

/// Checks a benchmark job's result against the native product and verifies its certificate as
/// a client would (against X, and Y for a matmul job); returns the verification seconds.
async fn check_fleet_result(
    result: &JobResult,
    store: &RedisStore,
    certificate: &[u8],
    a: &Matrix,
    x: &Matrix,
    profile: Profile,
) -> Result<f64> {
    use starkscale_cairo::batch::{multiply, Rows};
    use starkscale_cairo::batch_certificate::{verify_batch, BatchExpect};
    use starkscale_cairo::certificate::{verify_certificate, Expectations};
    let allow_test = profile == Profile::Test;
    // y inline: a matvec certificate (a matvec job, or a matmul job of one input).
    if result.y.is_some() {
        let x = Vector::new(Dtype::I8, x.row(0).to_vec())?;
        ensure!(
            result.y.as_ref() == Some(&a.matvec(&x)?),
            "the fleet's y differs from the native product"
        );
        let expect = Expectations {
            a_commitment: None,
            x: Some(&x),
            allow_test,
            starks_verified: false,
        };
        return Ok(verify_certificate(certificate, &expect)?.verify_s);
    }
    let y_key = result.y_key.as_ref().context("the result names no Y")?;
    let bytes = store.get(y_key).await?.context("Y is missing")?;
    let (_, values) = npy::parse_i32(&bytes)?;
    let x = Rows::int8(x.cols(), x.data());
    let native = multiply(&Rows::int8(a.cols(), a.data()), &x);
    let y = Rows::I32 {
        width: a.rows(),
        data: values.iter().map(|&v| v as i32).collect(),
    };
    ensure!(y == native, "the fleet's Y differs from the native product");
    let expect = BatchExpect {
        a_commitment: None,
        x: Some(&x),
        y: Some(&y),
        allow_test,
        starks_verified: false,
    };
    Ok(verify_batch(certificate, &expect)?.verify_s)
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Tiles in the job (two-row tiles of a N·2 × 1024 matrix).
    #[arg(long, default_value_t = 10_000)]
    tiles: usize,
    #[arg(long)]
    json: bool,
    /// RabbitMQ and Redis to run on (queues and keys get a unique prefix, removed afterwards).
    #[command(flatten)]
    fleet: FleetConfig,
}

pub async fn plan(args: PlanArgs) -> Result<()> {
    let fleet = bench_prefix(&args.fleet, "plan");
    let dir = tempfile::tempdir()?;
    let (a_path, x_path, _, _) = random_inputs(dir.path(), 2 * args.tiles, TILE_COLS, None, 1)?;
    let job_id = "bench-plan";
    let job = serde_json::json!({
        "schema_version": 1, "job_id": job_id, "kind": "matvec", "dtype": "i8",
        "a": {"path": a_path}, "x": {"path": x_path}, "tile_rows": 2,
    });
    let topology = Topology::new(fleet.prefix.clone());
    let client = fleet.broker(Role::Coordinator).await?;
    let store = fleet.store().await?;
    let keys = Keys::new(fleet.prefix.clone());
    let shutdown = CancellationToken::new();
    let coordinator = tokio::spawn(starkscale_coordinator::run(
        CoordinatorConfig {
            // The inputs are written there, and the coordinator reads paths only inside it.
            data_dir: dir.path().to_path_buf(),
            ..CoordinatorConfig::new(fleet.clone())
        },
        shutdown.clone(),
    ));
    let outcome = async {
        let mut results = client.subscribe_results(job_id).await?;
        client
            .publish(
                &topology.jobs(),
                job.to_string().as_bytes(),
                &Headers::new(),
                None,
            )
            .await?;
        let started = Instant::now();
        let progress = loop {
            ensure!(
                started.elapsed() < Duration::from_secs(120),
                "planning never finished"
            );
            if let Some(bytes) = store.get(&keys.progress(job_id)).await? {
                let progress: JobProgress = serde_json::from_slice(&bytes)?;
                if progress.plan_s.is_some() {
                    break progress;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (queued, _) = client.depth(&topology.tasks()).await?;
        let peak_rss = starkscale_common::rss::peak_rss_bytes();
        // The largest value planning wrote: every task input, the plan and the job message.
        let mut largest = 0;
        let written = (0..progress.tasks)
            .map(|task| keys.task_input(job_id, task))
            .chain([keys.plan(job_id), keys.request(job_id)]);
        for key in written {
            largest = largest.max(store.len(&key).await?);
        }
        // Cancel: the coordinator frees the job's keys.
        let cancel = serde_json::json!({ "cancel": job_id });
        client
            .publish(
                &topology.jobs(),
                cancel.to_string().as_bytes(),
                &Headers::new(),
                None,
            )
            .await?;
        let delivery = results.next().await?;
        delivery.ack().await?;
        Ok::<_, anyhow::Error>((progress, queued, peak_rss, largest))
    }
    .await;
    shutdown.cancel();
    let _ = coordinator.await;
    store
        .delete(&[keys.result(job_id), keys.progress(job_id)])
        .await?;
    client.delete_topology().await?;
    let (progress, queued, peak_rss, largest) = outcome?;
    let plan_s = progress.plan_s.unwrap_or_default();
    let report = serde_json::json!({
        "tasks": progress.tasks,
        "tasks_queued": queued,
        "plan_s": plan_s,
        "tasks_per_s": queued as f64 / plan_s,
        // The process is the coordinator (and this client): its peak is the coordinator's.
        "coordinator_peak_rss_bytes": peak_rss,
        "largest_value_bytes": largest,
    });
    println!("{report}");
    if !args.json {
        eprintln!(
            "planned and published {} tile tasks in {:.3}s ({} tasks with the reduce nodes); \
             coordinator peak {:.0} MB; largest value written {} bytes",
            queued,
            plan_s,
            progress.tasks,
            peak_rss as f64 / 1e6,
            largest
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Open jobs in the store when the pass starts.
    #[arg(long, default_value_t = 1_000)]
    jobs: usize,
    /// Tiles per job.
    #[arg(long, default_value_t = 4)]
    tiles: usize,
    /// Passes to time.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long)]
    json: bool,
    /// RabbitMQ and Redis to run on (queues and keys get a unique prefix, removed afterwards).
    #[command(flatten)]
    fleet: FleetConfig,
}

#[derive(Debug, Serialize)]
struct ReconcileReport {
    jobs: usize,
    tasks_per_job: usize,
    pass_s: f64,
}

/// One full reconcile pass (what a restarted coordinator does before serving) over many open
/// jobs in Redis.
pub async fn reconcile(args: ReconcileArgs) -> Result<()> {
    let fleet = bench_prefix(&args.fleet, "reconcile");
    let broker = fleet.broker(Role::Coordinator).await?;
    let store = fleet.store().await?;
    let config = CoordinatorConfig::new(fleet.clone());
    let outcome = async {
        for _ in 0..args.repeat.max(1) {
            let pass = starkscale_coordinator::bench_reconcile(
                broker.clone(),
                store.clone(),
                &config,
                args.jobs,
                args.tiles,
            )
            .await?;
            let tasks_per_job =
                starkscale_common::TilePlan::new(args.tiles * 2, TILE_COLS, 2).len() + 1;
            let report = ReconcileReport {
                jobs: args.jobs,
                tasks_per_job,
                pass_s: pass.as_secs_f64(),
            };
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "reconcile: {} open jobs of {} tasks in {:.3} s",
                    report.jobs, report.tasks_per_job, report.pass_s
                );
            }
        }
        anyhow::Ok(())
    }
    .await;
    broker.delete_topology().await?;
    outcome
}

/// What the in-process proving benchmarks share.
#[derive(Args, Debug)]
pub struct InProcess {
    /// Blake2s compressions per segment task.
    #[arg(long, default_value_t = starkscale_cairo::batch::DEFAULT_SEGMENT_BLOCKS)]
    segment_blocks: usize,
    #[arg(long, default_value = "production")]
    profile: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print only the JSON report.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// M: rows of the weight matrix (outputs per input).
    #[arg(long, default_value_t = 1024)]
    rows: usize,
    /// K: columns of the weight matrix (entries per input).
    #[arg(long, default_value_t = 1024)]
    cols: usize,
    /// B: inputs in the batch.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    #[command(flatten)]
    run: InProcess,
    /// Also write a.npy, x.npy, y.npy and the certificate (cert) into this directory.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Serialize, Debug)]
struct BatchReport {
    rows: usize,
    cols: usize,
    batch: usize,
    profile: &'static str,
    macs: u64,
    /// From the inputs to a verified certificate, the prover's setup included.
    wall_s: f64,
    effective_macs_per_s: f64,
    proofs: usize,
    steps: usize,
    setup_s: f64,
    native_s: f64,
    run_s: f64,
    prove_s: f64,
    /// Blake2s compressions proven per stream (weights, inputs, outputs).
    blocks: [usize; 3],
    /// Bytes of X and Y bound per second of proving (4 bytes per entry as hashed).
    bound_bytes_per_s: f64,
    peak_rss_bytes: u64,
    certificate_bytes: usize,
    verify_s: f64,
}

pub fn batch(args: BatchArgs) -> Result<()> {
    use starkscale_cairo::batch::Rows;
    use starkscale_cairo::batch_certificate::{verify_batch, BatchExpect};
    let profile = parse_profile(&args.run.profile)?;
    ensure!(
        args.rows >= 1 && args.cols >= 1 && args.batch >= 1,
        "--rows, --cols and --batch must be at least 1"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.run.seed);
    let mut random = |n: usize| -> Vec<i8> { (0..n).map(|_| rng.gen_range(-128..=127)).collect() };
    let a = Rows::I8 {
        width: args.cols,
        data: random(args.rows * args.cols),
    };
    let x = Rows::I8 {
        width: args.cols,
        data: random(args.batch * args.cols),
    };
    let started = Instant::now();
    let prover = Prover::new(profile);
    let setup_s = started.elapsed().as_secs_f64();
    let (y, cert, stats) = starkscale_cairo::batch_prove::prove_batch(
        &a,
        &x,
        &prover,
        args.run.segment_blocks,
        1 << 26,
    )?;
    let bytes = cert.to_bytes();
    let verified = verify_batch(
        &bytes,
        &BatchExpect {
            a_commitment: None,
            x: Some(&x),
            y: Some(&y),
            allow_test: true,
            starks_verified: false,
        },
    )
    .context("verifying the benchmark certificate")?;
    let wall_s = started.elapsed().as_secs_f64();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        let wide = |r: &Rows| -> Vec<i64> {
            let w = r.width();
            (0..r.height() * w).map(|i| r.get(i / w, i % w)).collect()
        };
        // A and X are int8 rows.
        let i8s = |r: &Rows| -> Vec<i8> { wide(r).into_iter().map(|v| v as i8).collect() };
        std::fs::write(
            dir.join("a.npy"),
            npy::write_i8(&[args.rows, args.cols], &i8s(&a)),
        )?;
        std::fs::write(
            dir.join("x.npy"),
            npy::write_i8(&[args.batch, args.cols], &i8s(&x)),
        )?;
        let ys: Vec<i32> = wide(&y).into_iter().map(|v| v as i32).collect();
        std::fs::write(
            dir.join("y.npy"),
            npy::write_i32(&[args.batch, args.rows], &ys),
        )?;
        std::fs::write(dir.join("cert"), &bytes)?;
    }
    let macs = (args.rows * args.cols * args.batch) as u64;
    let bound = 4 * (stats.blocks[1] + stats.blocks[2]) * 16;
    let proving = stats.run_s + stats.prove_s;
    let report = BatchReport {
        rows: args.rows,
        cols: args.cols,
        batch: args.batch,
        profile: profile.name(),
        macs,
        wall_s,
        effective_macs_per_s: macs as f64 / wall_s,
        proofs: cert.proofs.len(),
        steps: stats.steps,
        setup_s,
        native_s: stats.native_s,
        run_s: stats.run_s,
        prove_s: stats.prove_s,
        blocks: stats.blocks,
        bound_bytes_per_s: bound as f64 / proving,
        peak_rss_bytes: starkscale_common::rss::peak_rss_bytes(),
        certificate_bytes: bytes.len(),
        verify_s: verified.verify_s,
    };
    println!("{}", serde_json::to_string(&report)?);
    if !args.run.json {
        print_proofs(&stats.proofs);
        eprintln!(
            "{}x{}x{}: {:.0} s, {:.2} M effective MAC/s, {} proofs, {:.2} GB peak, verify {:.3} s",
            report.rows,
            report.cols,
            report.batch,
            report.wall_s,
            report.effective_macs_per_s / 1e6,
            report.proofs,
            report.peak_rss_bytes as f64 / 1e9,
            report.verify_s
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InferenceArgs {
    /// Layer widths, input first: 784,1024,1024,10 is a 3-layer MLP on 784 inputs.
    #[arg(long, default_value = "784,1024,1024,10", value_delimiter = ',')]
    layers: Vec<usize>,
    /// Inputs in the batch.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    #[command(flatten)]
    run: InProcess,
}

#[derive(Serialize, Debug)]
struct InferenceReport {
    layers: Vec<usize>,
    batch: usize,
    profile: &'static str,
    /// Σ M·K·B over the layers.
    macs: u64,
    /// From the inputs to a verified certificate, the prover's setup included.
    wall_s: f64,
    proofs: usize,
    steps: usize,
    native_s: f64,
    run_s: f64,
    prove_s: f64,
    /// Proving seconds of the weights, inputs and layer segments, and of the root.
    prove_s_by_kind: [f64; 4],
    /// Output elements the layer segments proved (Σ B·M) and their Cairo steps per element
    /// (an outputs segment without the epilogue takes about 3.5).
    layer_elements: usize,
    layer_steps_per_element: f64,
    /// The layer segments' share of all proving time.
    layer_prove_share: f64,
    peak_rss_bytes: u64,
    certificate_bytes: usize,
    verify_s: f64,
}

/// A random MLP of the given widths whose epilogues keep activations spread over int8: ReLU
/// on hidden layers, per-channel scales around 1/(128·√K)·40.
fn random_model(
    rng: &mut rand::rngs::StdRng,
    widths: &[usize],
) -> Result<starkscale_cairo::layer::Model> {
    use starkscale_cairo::batch::Rows;
    use starkscale_cairo::layer::{Epilogue, InputQuant, Layer, Model, Requant};
    let mut layers = Vec::new();
    for (n, w) in widths.windows(2).enumerate() {
        let (k, m) = (w[0], w[1]);
        let hidden = n + 2 < widths.len();
        let zero_point = if hidden {
            -128
        } else {
            rng.gen_range(-20..=20)
        };
        let scale = 40.0 / (128.0 * 128.0 * (k as f64).sqrt());
        let requant = (0..m)
            .map(|_| Requant::from_scale(scale * rng.gen_range(0.5..1.5)))
            .collect::<Result<Vec<_>, _>>()?;
        layers.push(Layer {
            weights: Rows::I8 {
                width: k,
                data: (0..m * k).map(|_| rng.gen_range(-128..=127)).collect(),
            },
            epilogue: Epilogue {
                bias: (0..m).map(|_| rng.gen_range(-20_000..=20_000)).collect(),
                requant,
                zero_point,
                lo: -128,
                hi: 127,
            },
        });
    }
    Ok(Model {
        input: InputQuant {
            scale: 1.0 / 255.0,
            zero_point: -128,
        },
        layers,
    })
}

/// Proves a random MLP on a random batch in this process and verifies the certificate.
pub fn inference(args: InferenceArgs) -> Result<()> {
    use starkscale_cairo::batch::Rows;
    use starkscale_cairo::inference::model_commitment;
    use starkscale_cairo::inference_certificate::{verify_inference, InferenceExpect};
    let profile = parse_profile(&args.run.profile)?;
    ensure!(
        args.layers.len() >= 2 && args.layers.iter().all(|&d| d >= 1) && args.batch >= 1,
        "--layers needs at least two widths of at least 1, --batch at least 1"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.run.seed);
    let model = random_model(&mut rng, &args.layers)?;
    let x = Rows::I8 {
        width: args.layers[0],
        data: (0..args.batch * args.layers[0])
            .map(|_| rng.gen_range(-128..=127))
            .collect(),
    };
    let started = Instant::now();
    let prover = Prover::new(profile);
    let (inference, cert, stats) = starkscale_cairo::inference_prove::prove_inference(
        &model,
        &x,
        &prover,
        args.run.segment_blocks,
        1 << 26,
    )?;
    let bytes = cert.to_bytes();
    let commitment = model_commitment(&model);
    let verified = verify_inference(
        &bytes,
        &InferenceExpect {
            model_commitment: Some(&commitment),
            x: Some(&x),
            logits: Some(inference.logits()),
            allow_test: true,
            starks_verified: false,
        },
    )
    .context("verifying the benchmark certificate")?;
    let wall_s = started.elapsed().as_secs_f64();
    let mut by_kind = [0.0; 4];
    let (mut layer_steps, mut layer_elements) = (0, 0);
    for p in &stats.proofs {
        let kind = if p.what.contains("weights") {
            0
        } else if p.what.starts_with("inputs") {
            1
        } else if p.what.contains("outputs") {
            layer_steps += p.steps;
            2
        } else {
            3
        };
        by_kind[kind] += p.prove_s;
    }
    for w in args.layers.windows(2) {
        layer_elements += w[1] * args.batch;
    }
    let macs = args
        .layers
        .windows(2)
        .map(|w| (w[0] * w[1] * args.batch) as u64)
        .sum();
    let report = InferenceReport {
        layers: args.layers.clone(),
        batch: args.batch,
        profile: profile.name(),
        macs,
        wall_s,
        proofs: cert.proofs.len(),
        steps: stats.steps,
        native_s: stats.native_s,
        run_s: stats.run_s,
        prove_s: stats.prove_s,
        prove_s_by_kind: by_kind,
        layer_elements,
        layer_steps_per_element: layer_steps as f64 / layer_elements as f64,
        layer_prove_share: by_kind[2] / stats.prove_s,
        peak_rss_bytes: starkscale_common::rss::peak_rss_bytes(),
        certificate_bytes: bytes.len(),
        verify_s: verified.verify_s,
    };
    println!("{}", serde_json::to_string(&report)?);
    if !args.run.json {
        print_proofs(&stats.proofs);
        eprintln!(
            "{:?} x {}: {:.0} s, {} proofs, {:.2} GB peak, verify {:.3} s",
            report.layers,
            report.batch,
            report.wall_s,
            report.proofs,
            report.peak_rss_bytes as f64 / 1e9,
            report.verify_s
        );
    }
    Ok(())
}

/// One line per proof of an in-process benchmark: what it was, its steps, time and memory.
fn print_proofs(proofs: &[starkscale_cairo::batch_prove::ProofStats]) {
    for p in proofs {
        eprintln!(
            "  {}: {} steps, {:.1} s, {:.2} GB peak",
            p.what,
            p.steps,
            p.prove_s,
            p.peak_rss_bytes as f64 / 1e9
        );
    }
}
