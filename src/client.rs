//! Client commands: `run` (the embedded mode), and `submit`, `status`, `result`, `cancel`
//! against a running fleet.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::check::{Known, Uploaded};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use starkscale_cairo::encoding::blake2s_words;
use starkscale_cairo::inference::model_commitment;
use starkscale_cairo::Profile;
use starkscale_common::access::Role;
use starkscale_common::broker::{Broker, Consumer, Headers, MemoryBroker, Topology};
use starkscale_common::config::FleetConfig;
use starkscale_common::job::{CancelRequest, MatrixInput, ModelInput, VectorInput};
use starkscale_common::messages::{JobProgress, JobResult, JobStatus, Keys};
use starkscale_common::store::{parts, MemoryStore, RedisStore, Store};
use starkscale_common::{JobLimits, JobSpec};
use starkscale_coordinator::CoordinatorConfig;
use starkscale_worker::WorkerConfig;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job file (JSON, see schemas/job.schema.json).
    pub job: PathBuf,
    /// Where to write the certificate (default: ./<job-id>.cert).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to write a matmul job's Y (B × M int32 `.npy`) or an inference job's logits (B ×
    /// outputs int8 `.npy`) (default: ./<job-id>.y.npy).
    #[arg(long)]
    pub y_out: Option<PathBuf>,
    /// Security profile: production (96 bits) or test (28 bits; for trying things out).
    #[arg(long, env = "STARKSCALE_PROFILE", default_value = "production")]
    pub profile: String,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job file (JSON, see schemas/job.schema.json).
    pub job: PathBuf,
    /// Wait for the result and print it, with a progress bar.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_s: u64,
    /// Upload inputs given by `path` to Redis and reference them by key, for a fleet that
    /// cannot read this machine's files; a model is uploaded under its commitment, by which
    /// later jobs can name it (`"model": {"commitment": C}`).
    #[arg(long)]
    pub upload: bool,
    /// How long uploaded inputs live, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub upload_ttl_s: u64,
    /// With --wait: write the certificate to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With --wait: write a matmul job's Y (B × M int32 `.npy`) or an inference job's logits
    /// (B × outputs int8 `.npy`) to this file.
    #[arg(long)]
    pub y_out: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub fleet: FleetConfig,
}

/// How far a client trusts a result before printing it.
#[derive(Debug, Clone, Copy, Args)]
pub struct TrustArgs {
    /// Print the result without verifying its certificate (by default it is verified against
    /// what this client knows of the job, and a result that fails is reported as forged).
    #[arg(long)]
    pub no_verify: bool,
    /// Accept certificates of test-profile proofs (lowered security; for tests).
    #[arg(long)]
    pub allow_test_profile: bool,
}

#[derive(Debug, Args)]
pub struct JobIdArgs {
    /// The job id.
    pub job_id: String,
    #[command(flatten)]
    pub fleet: FleetConfig,
}

#[derive(Debug, Args)]
pub struct ResultArgs {
    /// The job id.
    pub job_id: String,
    /// Also write the job's certificate to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write a matmul job's Y (B × M int32 `.npy`) or an inference job's logits (B ×
    /// outputs int8 `.npy`) to this file.
    #[arg(long)]
    pub y_out: Option<PathBuf>,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub fleet: FleetConfig,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job id.
    pub job_id: String,
    /// Give up waiting for the coordinator's confirmation after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
    #[command(flatten)]
    pub fleet: FleetConfig,
}

/// Reads and validates a job file, giving it an id if it has none.
fn read_job(path: &Path) -> Result<JobSpec> {
    let limits = JobLimits::default();
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > limits.max_job_bytes as u64 {
        bail!(
            "{} is {size} bytes, over the {}-byte job limit",
            path.display(),
            limits.max_job_bytes
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    // Validate here too: a client should hear about a bad job before it travels.
    let mut spec = JobSpec::parse(&bytes, &limits)?;
    spec.job_id.get_or_insert_with(client_job_id);
    Ok(spec)
}

/// `starkscale run`: the coordinator and a worker in this process, over the in-process broker
/// and store, on one job.
pub async fn run(args: RunArgs) -> Result<()> {
    let profile = Profile::parse(&args.profile)
        .with_context(|| format!("unknown profile '{}' (production, test)", args.profile))?;
    let spec = read_job(&args.job)?;
    let job_id = spec.job_id.clone().unwrap_or_default();
    let fleet = FleetConfig::local("embedded");
    let broker = MemoryBroker::new(Topology::new(fleet.prefix.clone()));
    let store = MemoryStore::new();
    let shutdown = CancellationToken::new();
    let coordinator_config = CoordinatorConfig {
        allow_test_profile: profile == Profile::Test,
        // The job is this user's own, read with this user's rights: paths are not confined.
        data_dir: "/".into(),
        ..CoordinatorConfig::new(fleet.clone())
    };
    let worker_config = WorkerConfig {
        name: Some("embedded".into()),
        ..WorkerConfig::new(fleet.clone(), profile)
    };
    let coordinator = tokio::spawn({
        let (broker, store, shutdown) = (broker.clone(), store.clone(), shutdown.clone());
        async move { starkscale_coordinator::serve(broker, store, &coordinator_config, shutdown).await }
    });
    let worker = tokio::spawn({
        let (broker, store, shutdown) = (broker.clone(), store.clone(), shutdown.clone());
        async move { starkscale_worker::serve(broker, store, &worker_config, shutdown).await }
    });

    let mut results = broker.subscribe_results(&job_id).await?;
    let jobs = broker.topology().jobs();
    broker
        .publish(&jobs, &serde_json::to_vec(&spec)?, &Headers::new(), None)
        .await?;
    let keys = Keys::new(fleet.prefix.clone());
    let waited = tokio::select! {
        result = wait_for_result(&mut results, &store, &keys, &job_id, None) => result,
        // A service that stops early (it only does on an error) ends the run with its error.
        stopped = service_stopped(coordinator, worker) => Err(stopped),
    };
    shutdown.cancel();
    let result = waited?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{job_id}.cert")));
    let y_out = args
        .y_out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{job_id}.y.npy")));
    Outputs::fetch(&store, &result)
        .await?
        .save(Some(&out), Some(&y_out))?;
    print_result(&result)
}

async fn service_stopped<E1, E2>(
    coordinator: tokio::task::JoinHandle<Result<(), E1>>,
    worker: tokio::task::JoinHandle<Result<(), E2>>,
) -> anyhow::Error
where
    E1: std::error::Error + Send + Sync + 'static,
    E2: std::error::Error + Send + Sync + 'static,
{
    let describe = |name: &str, outcome: String| anyhow::anyhow!("the {name} stopped: {outcome}");
    tokio::select! {
        c = coordinator => describe("coordinator", match c {
            Ok(Ok(())) => "without an error".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        }),
        w = worker => describe("worker", match w {
            Ok(Ok(())) => "without an error".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        }),
    }
}

/// Waits for a job's result, drawing a progress bar from its stored progress.
async fn wait_for_result<S: Store>(
    results: &mut Consumer,
    store: &S,
    keys: &Keys,
    job_id: &str,
    timeout: Option<Duration>,
) -> Result<JobResult> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} tiles, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(job_id.to_string());
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // The results exchange answers first; the stored result is read too, so that a result
    // published while this client was reconnecting, or before it subscribed, is not missed.
    let mut listening = true;
    let result = loop {
        tokio::select! {
            delivery = results.next(), if listening => match delivery {
                Ok(delivery) => {
                    let body = delivery.body.clone();
                    delivery.ack().await?;
                    break serde_json::from_slice::<JobResult>(&body)
                        .context("decoding the result")?;
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the results subscription; reading the stored result");
                    listening = false;
                }
            },
            _ = tick.tick() => {
                if timeout.is_some_and(|t| started.elapsed() > t) {
                    bar.abandon();
                    bail!("timed out waiting for the result of {job_id}");
                }
                if let Some(result) = read_result(store, keys, job_id, !listening).await? {
                    break result;
                }
                if let Some(progress) = read_progress(store, keys, job_id).await? {
                    bar.set_length(progress.tasks as u64);
                    bar.set_position(progress.proven as u64);
                }
            }
        }
    };
    bar.finish_and_clear();
    Ok(result)
}

/// The stored result of a job that ended, once its progress says so. A result with no progress
/// beside it is a refusal — maybe of an earlier submission of the same id, so it is taken only
/// when `unclaimed` says this client can no longer hear its own refusal published.
async fn read_result<S: Store>(
    store: &S,
    keys: &Keys,
    job_id: &str,
    unclaimed: bool,
) -> Result<Option<JobResult>> {
    let ended = match read_progress(store, keys, job_id).await? {
        Some(progress) => progress.status.is_final(),
        None => unclaimed,
    };
    if !ended {
        return Ok(None);
    }
    let Some(bytes) = store.get(&keys.result(job_id)).await? else {
        return Ok(None);
    };
    Ok(Some(
        serde_json::from_slice(&bytes).context("decoding the stored result")?,
    ))
}

async fn read_progress<S: Store>(
    store: &S,
    keys: &Keys,
    job_id: &str,
) -> Result<Option<JobProgress>> {
    let Some(bytes) = store.get(&keys.progress(job_id)).await? else {
        return Ok(None);
    };
    Ok(Some(
        serde_json::from_slice(&bytes).context("decoding the job's progress")?,
    ))
}

pub async fn submit(args: SubmitArgs) -> Result<()> {
    let mut spec = read_job(&args.job)?;
    let job_id = spec.job_id.clone().unwrap_or_default();
    let keys = Keys::new(args.fleet.prefix.clone());
    let store = args.fleet.store().await?;
    let uploaded = match args.upload {
        true => upload_inputs(&mut spec, &store, &keys, args.upload_ttl_s).await?,
        false => Uploaded::default(),
    };
    // What to hold the result to: what this client has in hand, as sent.
    let known = match args.wait && !args.trust.no_verify {
        true => Known::of(&spec, &uploaded),
        false => Known::default(),
    };
    drop(uploaded);
    let body = serde_json::to_vec(&spec)?;
    let topology = Topology::new(args.fleet.prefix.clone());
    let broker = args.fleet.broker(Role::Client).await?;
    // Subscribe before publishing, so the result cannot slip past.
    let mut results = if args.wait {
        Some(broker.subscribe_results(&job_id).await?)
    } else {
        None
    };
    broker
        .publish(&topology.jobs(), &body, &Headers::new(), None)
        .await?;
    eprintln!("submitted {job_id}");
    let Some(results) = results.as_mut() else {
        println!("{job_id}");
        return Ok(());
    };
    let timeout = Duration::from_secs(args.timeout_s);
    let result = wait_for_result(results, &store, &keys, &job_id, Some(timeout)).await?;
    broker.close().await;
    let outputs = Outputs::fetch(&store, &result).await?;
    outputs.check(&result, &keys, &known, args.trust)?;
    outputs.save(args.out.as_deref(), args.y_out.as_deref())?;
    print_result(&result)
}

/// Replaces `path` inputs by Redis keys holding the files' bytes, named by their digest (a
/// model by its commitment); returns the bytes of A and x it uploaded.
async fn upload_inputs(
    spec: &mut JobSpec,
    store: &RedisStore,
    keys: &Keys,
    ttl_s: u64,
) -> Result<Uploaded> {
    let ttl = Duration::from_secs(ttl_s);
    let upload = |path: String| async move {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
        let key = keys.upload(&content_digest(&bytes));
        store.put(&key, &bytes, ttl).await?;
        eprintln!("uploaded {path} ({} bytes) to {key}", bytes.len());
        Ok::<_, anyhow::Error>((key, bytes))
    };
    let mut uploaded = Uploaded::default();
    if let Some(MatrixInput::Path(path)) = &spec.a {
        let (key, bytes) = upload(path.clone()).await?;
        spec.a = Some(MatrixInput::RedisKey(key));
        uploaded.a = Some(bytes);
    }
    if let Some(ModelInput::Path(path)) = &spec.model {
        // A model is stored under its commitment: later jobs name it by that alone.
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let model = starkscale_onnx::from_bytes(&bytes)
            .with_context(|| format!("importing {path}"))?
            .model;
        let commitment = model_commitment(&model).to_hex();
        let key = keys.model(&commitment);
        store.put(&key, &bytes, ttl).await?;
        eprintln!("uploaded {path} ({} bytes) to {key}", bytes.len());
        spec.model = Some(ModelInput::Commitment(commitment));
    }
    if let VectorInput::Path(path) = &spec.x {
        let (key, bytes) = upload(path.clone()).await?;
        spec.x = VectorInput::RedisKey(key);
        uploaded.x = Some(bytes);
    }
    Ok(uploaded)
}

/// Blake2s-256 of a file's bytes (zero-padded to whole words), as hex.
fn content_digest(bytes: &[u8]) -> String {
    let words: Vec<u32> = bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect();
    format!("{}-{}", blake2s_words(&words).to_hex(), bytes.len())
}

pub async fn status(args: JobIdArgs) -> Result<()> {
    let store = args.fleet.store().await?;
    let keys = Keys::new(args.fleet.prefix.clone());
    let Some(progress) = read_progress(&store, &keys, &args.job_id).await? else {
        // A refused job keeps only its result (its id is free to be submitted again).
        if let Some(bytes) = store.get(&keys.result(&args.job_id)).await? {
            let result: JobResult =
                serde_json::from_slice(&bytes).context("decoding the stored result")?;
            println!("{}", serde_json::to_string(&result)?);
            eprintln!(
                "{}: {}: {}",
                result.job_id,
                result.status.name(),
                result.error.as_deref().unwrap_or("")
            );
            return Ok(());
        }
        bail!("no job {} (unknown, or expired)", args.job_id);
    };
    println!("{}", serde_json::to_string(&progress)?);
    eprintln!(
        "{}: {}, {}/{} tasks proven (tiles and reduce nodes), {} retries{}",
        progress.job_id,
        progress.status.name(),
        progress.proven,
        progress.tasks,
        progress.retries,
        progress
            .ending
            .and_then(|e| e.error)
            .map(|e| format!("; {e}"))
            .unwrap_or_default()
    );
    Ok(())
}

pub async fn cancel(args: CancelArgs) -> Result<()> {
    let store = args.fleet.store().await?;
    let keys = Keys::new(args.fleet.prefix.clone());
    match read_progress(&store, &keys, &args.job_id).await? {
        None => bail!("no job {} (unknown, or expired)", args.job_id),
        Some(p) if p.status.is_final() => {
            bail!("job {} is not running: {:?}", args.job_id, p.status)
        }
        Some(_) => {}
    }
    let topology = Topology::new(args.fleet.prefix.clone());
    let broker = args.fleet.broker(Role::Client).await?;
    let mut results = broker.subscribe_results(&args.job_id).await?;
    let request = CancelRequest {
        cancel: args.job_id.clone(),
    };
    broker
        .publish(
            &topology.jobs(),
            &serde_json::to_vec(&request)?,
            &Headers::new(),
            None,
        )
        .await?;
    let timeout = Duration::from_secs(args.timeout_s);
    let result = wait_for_result(&mut results, &store, &keys, &args.job_id, Some(timeout)).await?;
    broker.close().await;
    println!("{}", serde_json::to_string(&result)?);
    if result.status != JobStatus::Cancelled {
        bail!(
            "job {} ended {:?} before the cancel",
            args.job_id,
            result.status
        );
    }
    Ok(())
}

pub async fn result(args: ResultArgs) -> Result<()> {
    let store = args.fleet.store().await?;
    let keys = Keys::new(args.fleet.prefix.clone());
    let Some(bytes) = store.get(&keys.result(&args.job_id)).await? else {
        bail!(
            "no result for job {} (unknown, still running, or expired)",
            args.job_id
        );
    };
    let result: JobResult = serde_json::from_slice(&bytes).context("decoding the stored result")?;
    let outputs = Outputs::fetch(&store, &result).await?;
    // Without the job file, the certificate is checked in itself and against the result's y.
    outputs.check(&result, &keys, &Known::default(), args.trust)?;
    outputs.save(args.out.as_deref(), args.y_out.as_deref())?;
    print_result(&result)
}

/// The largest certificate a client reads (64 GiB: some 60,000 tiles at the default profile).
const MAX_CERTIFICATE_BYTES: u64 = 1 << 36;

/// What a result references in the store: its certificate and, for a matmul or inference job,
/// its Y or logits.
struct Outputs {
    certificate: Option<Vec<u8>>,
    y: Option<Vec<u8>>,
}

impl Outputs {
    async fn fetch<S: Store>(store: &S, result: &JobResult) -> Result<Outputs> {
        let get = |key: Option<String>| async move {
            match key {
                Some(key) => store.get(&key).await,
                None => Ok(None),
            }
        };
        let certificate = match &result.certificate_key {
            Some(key) => parts::get_parts(store, key, MAX_CERTIFICATE_BYTES)
                .await
                .with_context(|| format!("reading the certificate of job {}", result.job_id))?,
            None => None,
        };
        Ok(Outputs {
            certificate,
            y: get(result.y_key.clone()).await?,
        })
    }

    /// Holds the result to its certificate and to `known` (unless told not to): a result
    /// that fails is an error naming it forged.
    fn check(
        &self,
        result: &JobResult,
        keys: &Keys,
        known: &Known,
        trust: TrustArgs,
    ) -> Result<()> {
        if trust.no_verify {
            return Ok(());
        }
        let checked = crate::check::check(
            result,
            keys,
            self.certificate.as_deref(),
            self.y.as_deref(),
            known,
            trust.allow_test_profile,
        )?;
        if let Some(checked) = checked {
            eprintln!("{}", checked.summary);
        }
        Ok(())
    }

    /// Writes the certificate to `certificate` and Y to `y`; a path is ignored when the result
    /// has no such value.
    fn save(&self, certificate: Option<&Path>, y: Option<&Path>) -> Result<()> {
        for (path, bytes, what) in [
            (certificate, &self.certificate, "certificate"),
            (y, &self.y, "Y"),
        ] {
            let (Some(path), Some(bytes)) = (path, bytes) else {
                continue;
            };
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("{what} written to {}", path.display());
        }
        Ok(())
    }
}

/// Prints the result as one JSON line; an error exit unless the job succeeded.
fn print_result(result: &JobResult) -> Result<()> {
    println!("{}", serde_json::to_string(result)?);
    match result.status {
        JobStatus::Succeeded => Ok(()),
        status => bail!(
            "job {} {}: {}",
            result.job_id,
            match status {
                JobStatus::Cancelled => "was cancelled",
                _ => "failed",
            },
            result.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

fn client_job_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("job-{nanos:x}-{}", std::process::id())
}
