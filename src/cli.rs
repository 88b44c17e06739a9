//! Command-line interface. Each command parses its arguments, calls into the library crates and
//! prints a short human summary (or JSON with `--json`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use starkscale_cairo::batch::{self, Rows, Shape as BatchShape, Stream};
use starkscale_cairo::batch_certificate::{verify_batch, BatchCertificate, BatchExpect};
use starkscale_cairo::certificate::{verify_certificate, Expectations};
use starkscale_cairo::encoding::{Digest, MAX_TILE_ROWS};
use starkscale_cairo::inference_certificate::InferenceCertificate;
use starkscale_cairo::run::DEFAULT_MAX_STEPS;
use starkscale_cairo::tree::commit_matrix;
use starkscale_cairo::{run_map, verify_tile, Profile, Prover, TileInput, TILE_COLS};
use starkscale_common::metrics;
use starkscale_common::tensor::npy;
use starkscale_common::{Dtype, Matrix, Vector};

use crate::{bench, client};

#[derive(Parser, Debug)]
#[command(
    name = "starkscale",
    version,
    about = "Verifiable matrix computation, proven tile by tile with stwo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Prove one tile of y = A x: runs the map kernel and writes a binary proof.
    ProveTile(ProveTileArgs),
    /// Verify a tile proof; with --a/--x also check that it commits to those inputs.
    VerifyTile(VerifyTileArgs),
    /// Print the commitment of a matrix cut into tiles, or of a model (.onnx), to check
    /// certificates against.
    Commit(CommitArgs),
    /// Prove a quantized model (.onnx) on a batch of inputs in this process: prints the
    /// predictions and commitments, writes the inference certificate.
    Infer(crate::infer::InferArgs),
    /// Verify a job certificate; with --commitment/--x also check it is of that matrix and x.
    Verify(VerifyArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a stateless worker: prove tile tasks from RabbitMQ until SIGTERM, then drain.
    Worker(starkscale_worker::WorkerConfig),
    /// Run the coordinator: validate and plan jobs, verify every tile proof, publish results.
    Coordinator(starkscale_coordinator::CoordinatorConfig),
    /// Run a job in this process (no services needed): prints y, writes the certificate.
    Run(client::RunArgs),
    /// Submit a job to the fleet; with --wait, show progress and print its result.
    Submit(client::SubmitArgs),
    /// Print a job's progress.
    Status(client::JobIdArgs),
    /// Print a finished job's result; --out also saves its certificate.
    Result(client::ResultArgs),
    /// Stop a running job and free its keys.
    Cancel(client::CancelArgs),
    /// Least-privilege accounts: write the files that create them, or print each role's rules.
    #[command(subcommand)]
    Access(crate::access::AccessCommand),
}

#[derive(Args, Debug)]
struct ProveTileArgs {
    /// A-tile: JSON array of rows, or a 2-D NumPy .npy file (at most 1024 columns).
    #[arg(long)]
    a: PathBuf,
    /// x-block: JSON array, or a 1-D NumPy .npy file.
    #[arg(long)]
    x: PathBuf,
    /// Where to write the proof.
    #[arg(long)]
    out: PathBuf,
    /// Element type of A and x.
    #[arg(long, default_value = "i8")]
    dtype: String,
    /// Row of A where this tile starts (recorded in the proof).
    #[arg(long, default_value_t = 0)]
    row0: u32,
    /// Column of A where this tile starts (recorded in the proof).
    #[arg(long, default_value_t = 0)]
    col0: u32,
    /// Security profile: production (96 bits) or test (28 bits, refused by default).
    #[arg(long, env = "STARKSCALE_PROFILE", default_value = "production")]
    profile: String,
    /// Cairo step budget for the run.
    #[arg(long, env = "STARKSCALE_MAX_STEPS", default_value_t = DEFAULT_MAX_STEPS)]
    max_steps: usize,
}

#[derive(Args, Debug)]
struct VerifyTileArgs {
    /// The proof file.
    proof: PathBuf,
    /// Also check the proof's A digest against this A-tile.
    #[arg(long)]
    a: Option<PathBuf>,
    /// Also check the proof's x digest against this x-block.
    #[arg(long)]
    x: Option<PathBuf>,
    #[arg(long, default_value = "i8")]
    dtype: String,
    /// Accept proofs made at the low-security test profile.
    #[arg(long)]
    allow_test_profile: bool,
    /// Print the verified output as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CommitArgs {
    /// The matrix: JSON array of rows, or a 2-D NumPy .npy file; or a quantized model (.onnx),
    /// whose commitment inference certificates state.
    a: PathBuf,
    /// The commitment batch jobs state (independent of how a job is cut into tasks) instead of
    /// the tiled one of matrix-vector jobs.
    #[arg(long)]
    batch: bool,
    /// Tile shape ROWSxCOLS the certificate's jobs use (COLS at most 1024).
    #[arg(long, default_value = "254x1024", value_parser = parse_tile_shape)]
    tile: (usize, usize),
    #[arg(long, default_value = "i8")]
    dtype: String,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The certificate file (`starkscale run --out`, `starkscale result --out`).
    certificate: PathBuf,
    /// The published commitment of A or of the model (`starkscale commit`) the certificate must
    /// be of.
    #[arg(long)]
    commitment: Option<String>,
    /// The input vector (JSON or .npy) the certificate must be of; for a batch or inference
    /// certificate, the batch, one input per row (B × K; float32 inputs need --model).
    #[arg(long)]
    x: Option<PathBuf>,
    /// The outputs, one per row (B × M int32, .npy or JSON), that must be the ones proven (a
    /// matrix-vector certificate proves one row).
    #[arg(long)]
    y: Option<PathBuf>,
    /// For an inference certificate: the model (.onnx); its commitment is checked, and float
    /// inputs given with --x are quantized with it.
    #[arg(long)]
    model: Option<PathBuf>,
    /// For an inference certificate: the int8 logits (B × outputs .npy) that must be the ones
    /// proven.
    #[arg(long)]
    logits: Option<PathBuf>,
    #[arg(long, default_value = "i8")]
    dtype: String,
    /// Accept proofs made at the low-security test profile.
    #[arg(long)]
    allow_test_profile: bool,
    /// Print the verified statement as JSON (y included).
    #[arg(long)]
    json: bool,
}

fn parse_tile_shape(text: &str) -> Result<(usize, usize), String> {
    let (r, c) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{text}' is not ROWSxCOLS"))?;
    let (r, c): (usize, usize) = (
        r.trim()
            .parse()
            .map_err(|_| format!("bad tile rows '{r}'"))?,
        c.trim()
            .parse()
            .map_err(|_| format!("bad tile columns '{c}'"))?,
    );
    if r == 0 || c == 0 || c > TILE_COLS || r > MAX_TILE_ROWS {
        return Err(format!(
            "tile shape {r}x{c} is outside 1..={MAX_TILE_ROWS} rows and 1..={TILE_COLS} columns"
        ));
    }
    Ok((r, c))
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Prove random tiles and report throughput, memory and proof size.
    Kernel(bench::KernelArgs),
    /// Run a multi-tile job through a coordinator and one worker; report orchestration overhead
    /// and the worker's memory per task.
    Fleet(bench::FleetArgs),
    /// Time the coordinator planning and publishing a job of many tiles.
    Plan(bench::PlanArgs),
    /// Time one full reconcile pass over many open jobs in Redis.
    Reconcile(bench::ReconcileArgs),
    /// Prove a random batch job Y = A·X in this process; report throughput, memory and the
    /// certificate's size and verification time.
    Batch(bench::BatchArgs),
    /// Prove a random quantized MLP on a random batch in this process; report time, memory, the
    /// epilogue's cost per output element and the certificate's verification time.
    Inference(bench::InferenceArgs),
}

pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ProveTile(args) => prove_tile(args),
        Command::VerifyTile(args) => verify_tile_cmd(args),
        Command::Commit(args) => commit(args),
        Command::Infer(args) => crate::infer::infer(args),
        Command::Verify(args) => verify(args),
        Command::Bench(BenchCommand::Kernel(args)) => bench::kernel(args),
        Command::Bench(BenchCommand::Fleet(args)) => serve(|_| bench::fleet(args)),
        Command::Bench(BenchCommand::Plan(args)) => serve(|_| bench::plan(args)),
        Command::Bench(BenchCommand::Reconcile(args)) => serve(|_| bench::reconcile(args)),
        Command::Bench(BenchCommand::Batch(args)) => bench::batch(args),
        Command::Bench(BenchCommand::Inference(args)) => bench::inference(args),
        Command::Worker(config) => serve(|shutdown| async move {
            // TLS settings are configuration: a wrong one stops here instead of being retried.
            config.fleet.tls()?;
            serve_metrics(metrics::Role::Worker, config.metrics_addr).await?;
            Ok(starkscale_worker::run(config, shutdown).await?)
        }),
        Command::Coordinator(config) => serve(|shutdown| async move {
            starkscale_common::data_dir::DataDir::open(&config.data_dir).with_context(|| {
                format!("opening the data directory {}", config.data_dir.display())
            })?;
            config.fleet.tls()?;
            serve_metrics(metrics::Role::Coordinator, config.metrics_addr).await?;
            starkscale_coordinator::run(config, shutdown).await;
            Ok(())
        }),
        Command::Run(args) => serve(|_| client::run(args)),
        Command::Submit(args) => serve(|_| client::submit(args)),
        Command::Status(args) => serve(|_| client::status(args)),
        Command::Result(args) => serve(|_| client::result(args)),
        Command::Cancel(args) => serve(|_| client::cancel(args)),
        Command::Access(command) => crate::access::access(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // Quiet by default: stwo logs every phase at INFO. RUST_LOG=info shows them.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub(crate) fn parse_profile(name: &str) -> Result<Profile> {
    Profile::parse(name).with_context(|| format!("unknown profile '{name}' (production, test)"))
}

fn load_tile(a: &Path, x: &Path, dtype: &str, row0: u32, col0: u32) -> Result<TileInput> {
    let dtype = Dtype::parse(dtype)?;
    let a = Matrix::load(a, dtype).with_context(|| format!("loading A from {}", a.display()))?;
    let x = Vector::load(x, dtype).with_context(|| format!("loading x from {}", x.display()))?;
    Ok(TileInput::new(row0, col0, a, x)?)
}

fn prove_tile(args: ProveTileArgs) -> Result<()> {
    let profile = parse_profile(&args.profile)?;
    let tile = load_tile(&args.a, &args.x, &args.dtype, args.row0, args.col0)?;
    let run = run_map(&tile, args.max_steps).context("running the map kernel")?;
    let stats = run.stats;
    eprintln!(
        "ran {}x{} tile: {} steps in {:.2}s; setting up the prover ({})",
        tile.rows(),
        tile.cols(),
        stats.steps,
        stats.run_s + stats.adapt_s,
        profile
    );
    let prover = Prover::new(profile);
    let (proof, prove_s) = prover.prove(run.input).context("proving the tile")?;
    let bytes = proof.to_bytes();
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "proved in {prove_s:.2}s: {} ({} bytes, {} profile)",
        args.out.display(),
        bytes.len(),
        profile.name()
    );
    Ok(())
}

/// Runs an async command; long-lived services stop when the token is cancelled (SIGTERM/SIGINT).
fn serve<F, Fut>(service: F) -> Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_on_signal()?;
        service(shutdown).await
    })
}

/// Starts a service's Prometheus endpoint; it serves until the process exits, so a draining
/// worker is still scraped.
async fn serve_metrics(role: metrics::Role, addr: std::net::SocketAddr) -> Result<()> {
    let handle = metrics::install(role)?;
    let bound = metrics::serve_endpoint(addr, handle).await?;
    eprintln!("metrics: http://{bound}/metrics");
    Ok(())
}

/// A token cancelled by SIGTERM (compose, Kubernetes) or SIGINT (a terminal).
fn shutdown_on_signal() -> Result<tokio_util::sync::CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = tokio_util::sync::CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("shutting down: finishing the work in hand");
        cancel.cancel();
    });
    Ok(token)
}

fn verify_tile_cmd(args: VerifyTileArgs) -> Result<()> {
    let bytes =
        std::fs::read(&args.proof).with_context(|| format!("reading {}", args.proof.display()))?;
    let verified = verify_tile(&bytes, args.allow_test_profile)?;
    let dtype = Dtype::parse(&args.dtype)?;
    let a = args
        .a
        .as_deref()
        .map(|p| Matrix::load(p, dtype).with_context(|| format!("loading A from {}", p.display())))
        .transpose()?;
    let x = args
        .x
        .as_deref()
        .map(|p| Vector::load(p, dtype).with_context(|| format!("loading x from {}", p.display())))
        .transpose()?;
    verified.check_inputs(a.as_ref(), x.as_ref())?;
    let out = &verified.output;
    if args.json {
        let json = serde_json::json!({
            "profile": verified.profile.name(),
            "program_hash": verified.program_hash.to_hex(),
            "fact": verified.fact.to_hex(),
            "row0": out.row0, "col0": out.col0, "rows": out.rows, "cols": out.cols,
            "a_digest": out.a_digest.to_hex(), "x_digest": out.x_digest.to_hex(),
            "inputs_checked": { "a": a.is_some(), "x": x.is_some() },
            "y": out.y,
        });
        println!("{json}");
    } else {
        println!(
            "OK: {}x{} tile at ({}, {}), {} profile, fact {}{}",
            out.rows,
            out.cols,
            out.row0,
            out.col0,
            verified.profile,
            verified.fact,
            match (a.is_some(), x.is_some()) {
                (true, true) => ", A and x match",
                (true, false) => ", A matches",
                (false, true) => ", x matches",
                (false, false) => "",
            }
        );
        println!("y = {:?}", out.y);
    }
    Ok(())
}

fn commit(args: CommitArgs) -> Result<()> {
    if args
        .a
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        return crate::infer::commit_model(&args.a);
    }
    let dtype = Dtype::parse(&args.dtype)?;
    let a = Matrix::load(&args.a, dtype)
        .with_context(|| format!("loading A from {}", args.a.display()))?;
    if args.batch {
        let rows = Rows::int8(a.cols(), a.data());
        let shape = BatchShape {
            m: a.rows(),
            k: a.cols(),
            b: 1,
        };
        println!("{}", batch::commit(Stream::Weights, &shape, &rows));
        eprintln!(
            "commitment of the {}x{} weights of batch jobs",
            a.rows(),
            a.cols()
        );
        return Ok(());
    }
    let (tile_rows, tile_cols) = args.tile;
    println!("{}", commit_matrix(&a, tile_rows, tile_cols));
    eprintln!(
        "commitment of the {}x{} matrix in {tile_rows}x{tile_cols} tiles",
        a.rows(),
        a.cols()
    );
    Ok(())
}

fn verify(args: VerifyArgs) -> Result<()> {
    let bytes = std::fs::read(&args.certificate)
        .with_context(|| format!("reading {}", args.certificate.display()))?;
    let commitment = args
        .commitment
        .as_deref()
        .map(|hex| Digest::from_hex(hex).with_context(|| format!("'{hex}' is not a commitment")))
        .transpose()?;
    if BatchCertificate::is_batch(&bytes) {
        return verify_batch_cmd(&args, &bytes, commitment);
    }
    if InferenceCertificate::is_inference(&bytes) {
        let given = crate::infer::VerifyInference {
            commitment,
            x: args.x.as_deref(),
            model: args.model.as_deref(),
            logits: args.logits.as_deref(),
            allow_test: args.allow_test_profile,
            json: args.json,
        };
        return crate::infer::verify_inference_cmd(&bytes, given);
    }
    let x = args
        .x
        .as_deref()
        .map(|p| load_x_vector(p, Dtype::parse(&args.dtype)?))
        .transpose()?;
    let expect = Expectations {
        a_commitment: commitment,
        x: x.as_ref(),
        allow_test: args.allow_test_profile,
        starks_verified: false,
    };
    let verified = verify_certificate(&bytes, &expect)?;
    // A matmul job of one input is proven as a matvec: its Y is that one y, as a row.
    if let Some(path) = &args.y {
        let y = load_y(path)?;
        let proven: Vec<i64> = verified.y.clone();
        let given: Vec<i64> = (0..y.width()).map(|c| y.get(0, c)).collect();
        anyhow::ensure!(
            y.height() == 1 && given == proven,
            "{} is not the proven y (a matrix-vector certificate proves one output row)",
            path.display()
        );
    }
    if args.json {
        let json = serde_json::json!({
            "profile": verified.profile.name(),
            "rows": verified.rows, "cols": verified.cols,
            "tile_rows": verified.tile_rows, "tile_cols": verified.tile_cols,
            "a_commitment": verified.a_commitment.to_hex(),
            "x_commitment": verified.x_commitment.to_hex(),
            "tiles": verified.tiles, "nodes": verified.nodes,
            "checked": { "commitment": commitment.is_some(), "x": x.is_some() },
            "verify_s": verified.verify_s,
            "y": verified.y,
        });
        println!("{json}");
    } else {
        println!(
            "OK: y = A x for a {}x{} A ({} tiles of {}x{}, {} reduce proof(s)), {} profile, verified in {:.0} ms",
            verified.rows,
            verified.cols,
            verified.tiles,
            verified.tile_rows,
            verified.tile_cols,
            verified.nodes,
            verified.profile,
            verified.verify_s * 1e3
        );
        println!(
            "A commitment {}{}",
            verified.a_commitment,
            if commitment.is_some() {
                " (matches the given one)"
            } else {
                ""
            }
        );
        println!(
            "x commitment {}{}",
            verified.x_commitment,
            if x.is_some() {
                " (matches the given x)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// x of a matrix-vector certificate: a vector, or a batch of one input (1 × K), as the input
/// of a matmul job of one input is given.
fn load_x_vector(path: &Path, dtype: Dtype) -> Result<Vector> {
    let loading = || format!("loading x from {}", path.display());
    match Vector::load(path, dtype) {
        Ok(x) => Ok(x),
        Err(vector_error) => match Matrix::load(path, dtype) {
            Ok(m) if m.rows() == 1 => Ok(Vector::new(dtype, m.row(0).to_vec())?),
            _ => Err(vector_error).with_context(loading),
        },
    }
}

/// Y of a batch job: B × M int32, as .npy or a JSON array of rows.
pub(crate) fn load_y(path: &Path) -> Result<Rows> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (shape, values) = if bytes.starts_with(npy::MAGIC) {
        npy::parse_i32(&bytes)?
    } else {
        let rows: Vec<Vec<i32>> = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is neither .npy nor a JSON array of rows",
                path.display()
            )
        })?;
        let width = rows.first().map_or(0, Vec::len);
        anyhow::ensure!(
            rows.iter().all(|r| r.len() == width),
            "{}: rows of different lengths",
            path.display()
        );
        let values = rows.iter().flatten().map(|&v| v as i64).collect();
        (vec![rows.len(), width], values)
    };
    anyhow::ensure!(
        shape.len() == 2,
        "{}: Y must be 2-D (one output per row), not of shape {shape:?}",
        path.display()
    );
    Ok(Rows::I32 {
        width: shape[1],
        data: values.into_iter().map(|v| v as i32).collect(),
    })
}

fn verify_batch_cmd(args: &VerifyArgs, bytes: &[u8], commitment: Option<Digest>) -> Result<()> {
    let x = args
        .x
        .as_deref()
        .map(|p| {
            Matrix::load(p, Dtype::I8)
                .map(|m| Rows::int8(m.cols(), m.data()))
                .with_context(|| format!("loading X from {}", p.display()))
        })
        .transpose()?;
    let y = args.y.as_deref().map(load_y).transpose()?;
    let expect = BatchExpect {
        a_commitment: commitment.as_ref(),
        x: x.as_ref(),
        y: y.as_ref(),
        allow_test: args.allow_test_profile,
        starks_verified: false,
    };
    let v = verify_batch(bytes, &expect)?;
    let checked = |given: bool| {
        if given {
            " (matches the given one)"
        } else {
            ""
        }
    };
    if args.json {
        let json = serde_json::json!({
            "kind": "matmul",
            "profile": v.profile.name(),
            "rows": v.shape.m, "cols": v.shape.k, "batch": v.shape.b,
            "a_commitment": v.a_commitment.to_hex(),
            "x_commitment": v.x_commitment.to_hex(),
            "y_commitment": v.y_commitment.to_hex(),
            "segments": v.segments,
            "checked": { "commitment": commitment.is_some(), "x": x.is_some(), "y": y.is_some() },
            "verify_s": v.verify_s,
        });
        println!("{json}");
    } else {
        println!(
            "OK: Y = A·X for a {}x{} A and a batch of {} inputs ({} segment proofs and a root), {} profile, verified in {:.0} ms",
            v.shape.m,
            v.shape.k,
            v.shape.b,
            v.segments,
            v.profile,
            v.verify_s * 1e3
        );
        println!(
            "A commitment {}{}",
            v.a_commitment,
            checked(commitment.is_some())
        );
        println!("X commitment {}{}", v.x_commitment, checked(x.is_some()));
        println!("Y commitment {}{}", v.y_commitment, checked(y.is_some()));
    }
    Ok(())
}
