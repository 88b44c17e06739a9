//! Client commands against a running fleet: `submit`, `result`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use starkscale_common::broker::{AmqpBroker, Topology};
use starkscale_common::config::FleetConfig;
use starkscale_common::messages::{JobResult, JobStatus, Keys};
use starkscale_common::store::RedisStore;
use starkscale_common::{JobLimits, JobSpec};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job file (JSON, see schemas/job.schema.json).
    pub job: PathBuf,
    /// Wait for the result and print it.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_s: u64,
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
    #[command(flatten)]
    pub fleet: FleetConfig,
}

pub async fn submit(args: SubmitArgs) -> Result<()> {
    let limits = JobLimits::default();
    let size = std::fs::metadata(&args.job)
        .with_context(|| format!("reading {}", args.job.display()))?
        .len();
    if size > limits.max_job_bytes as u64 {
        bail!(
            "{} is {size} bytes, over the {}-byte job limit",
            args.job.display(),
            limits.max_job_bytes
        );
    }
    let bytes =
        std::fs::read(&args.job).with_context(|| format!("reading {}", args.job.display()))?;
    // Validate here too: a client should hear about a bad job before it travels.
    let mut spec = JobSpec::parse(&bytes, &limits)?;
    let job_id = spec.job_id.get_or_insert_with(client_job_id).clone();
    let body = serde_json::to_vec(&spec)?;

    let topology = Topology::new(args.fleet.prefix.clone());
    let broker = AmqpBroker::connect(&args.fleet.amqp_url, topology.clone()).await?;
    // Subscribe before publishing, so the result cannot slip past.
    let mut results = if args.wait {
        Some(broker.subscribe_results(&job_id).await?)
    } else {
        None
    };
    broker
        .publish(&topology.jobs(), &body, FieldTable::default())
        .await?;
    eprintln!("submitted {job_id}");
    let Some(results) = results.as_mut() else {
        println!("{job_id}");
        return Ok(());
    };
    let delivery = tokio::time::timeout(Duration::from_secs(args.timeout_s), results.next())
        .await
        .context("timed out waiting for the result")?
        .context("the results subscription closed")??;
    delivery.ack(BasicAckOptions::default()).await?;
    let result: JobResult =
        serde_json::from_slice(&delivery.data).context("decoding the result")?;
    print_result(&result)
}

pub async fn result(args: ResultArgs) -> Result<()> {
    let store = RedisStore::connect(&args.fleet.redis_url).await?;
    let keys = Keys::new(args.fleet.prefix.clone());
    let Some(bytes) = store.get(&keys.result(&args.job_id)).await? else {
        bail!(
            "no result for job {} (unknown, still running, or expired)",
            args.job_id
        );
    };
    let result: JobResult = serde_json::from_slice(&bytes).context("decoding the stored result")?;
    if let (Some(out), Some(key)) = (&args.out, &result.certificate_key) {
        let certificate = store
            .get(key)
            .await?
            .context("the certificate has expired")?;
        std::fs::write(out, certificate).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("certificate written to {}", out.display());
    }
    print_result(&result)
}

fn print_result(result: &JobResult) -> Result<()> {
    println!("{}", serde_json::to_string(result)?);
    match result.status {
        JobStatus::Succeeded => Ok(()),
        JobStatus::Failed => bail!(
            "job {} failed: {}",
            result.job_id,
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
