//! The coordinator: jobs in, verified results out — and every job ends.
//!
//! A job moves through states persisted in the store (`docs/reliability.md` has the diagram):
//! `planning` → `running` → `finishing` → `succeeded` | `failed` | `cancelled`. Every transition
//! writes its decision before acting on it and can be driven again, so a coordinator that stops
//! at any point — or a store that loses its data — leaves nothing that the next pass does not
//! finish.
//!
//! | module | owns |
//! |---|---|
//! | [`intake`] | a job message → claim → load and check its inputs → a stored plan (spawned per message) |
//! | [`cut`] | loaded inputs → task inputs and the record of what each proof must state: map tiles, batch segments with Y computed natively, or an inference's segments with every layer computed natively |
//! | [`state`] | [`state::Job`]: the record, the task layout (reduce tree, batch root or inference root) and every task's record; pure queries |
//! | [`transitions`] | task events, retries, dead-lettered tasks, cancels: the state changes and their writes |
//! | [`acceptance`] | what a proof must state, checked off the event loop |
//! | [`finish`] | the decided ending → certificate → stored and published result → keys freed |
//! | [`reconcile`] | the pass (at start, after every reconnect, periodically) that re-drives what is undone, re-plans jobs whose state was lost, and ends jobs past their deadline |
//! | [`settle`] | ack, dead-letter or redeliver: decided in one place from the error's type |
//!
//! [`serve`] runs one event loop, generic over the [`Broker`] and [`Store`]: the fleet runs it
//! over RabbitMQ and Redis ([`run`], which reconnects when either goes away and keeps its cache
//! of jobs across reconnects), the embedded mode over their in-process twins. Only the
//! coordinator holding the lease in the store serves; a second one stands by until the lease
//! lapses.

mod acceptance;
mod cut;
mod finish;
mod intake;
mod reconcile;
mod settle;
mod state;
mod transitions;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starkscale_common::access::Role;
use starkscale_common::broker::{Broker, BrokerError, Delivery};
use starkscale_common::config::FleetConfig;
use starkscale_common::data_dir::DataDir;
use starkscale_common::messages::{Keys, TaskEvent};
use starkscale_common::metrics;
pub(crate) use starkscale_common::plan::DEFAULT_FAN_IN;
use starkscale_common::store::{Store, StoreError};
use starkscale_common::JobLimits;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::acceptance::Verdict;
use crate::intake::{Intake, Refusal};
use crate::settle::Failure;
use crate::state::Job;

pub use reconcile::bench_reconcile;

/// Coordinator settings; every flag also reads a `STARKSCALE_*` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorConfig {
    #[command(flatten)]
    pub fleet: FleetConfig,
    /// Attempts per task (failed or rejected proofs) before the job fails.
    #[arg(long, env = "STARKSCALE_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// How long a job's keys live, in seconds.
    #[arg(long, env = "STARKSCALE_RESULT_TTL", default_value_t = 24 * 3600)]
    pub job_ttl_s: u64,
    /// A job still running this many seconds after it was received fails, naming the stage it
    /// stuck in. Keep it below the job TTL.
    #[arg(long, env = "STARKSCALE_JOB_DEADLINE", default_value_t = 6 * 3600)]
    pub job_deadline_s: u64,
    /// Seconds between reconcile passes (one also runs at start and after every reconnect).
    #[arg(long, env = "STARKSCALE_RECONCILE_INTERVAL", default_value_t = 30)]
    pub reconcile_interval_s: u64,
    /// Times a task may be dead-lettered by the broker (each after its delivery limit) and
    /// published again, with backoff, before its job fails.
    #[arg(long, env = "STARKSCALE_MAX_DEAD_LETTERS", default_value_t = 2)]
    pub max_dead_letters: u32,
    /// Backoff before a dead-lettered task is published again, in milliseconds (doubling).
    #[arg(
        long,
        env = "STARKSCALE_DEAD_LETTER_BACKOFF_MS",
        default_value_t = 5_000
    )]
    pub dead_letter_backoff_ms: u64,
    /// Seconds the active coordinator's lease lasts unless renewed; a standby takes over
    /// within this long after the active one dies.
    #[arg(long, env = "STARKSCALE_LEASE", default_value_t = 15)]
    pub lease_s: u64,
    /// Accept proofs made at the low-security test profile (for tests only).
    #[arg(long, env = "STARKSCALE_ALLOW_TEST_PROFILE")]
    pub allow_test_profile: bool,
    /// Largest job message, in bytes.
    #[arg(long, env = "STARKSCALE_MAX_JOB_BYTES", default_value_t = 64 << 20)]
    pub max_job_bytes: usize,
    /// The directory jobs' inputs by `path` are read from: paths resolve beneath it, and
    /// nothing outside it (by `..`, an absolute path or a symlink) nor anything but a regular
    /// file is read.
    #[arg(long, env = "STARKSCALE_DATA_DIR", default_value = ".")]
    pub data_dir: std::path::PathBuf,
    /// Largest model file an inference job may name, in bytes.
    #[arg(long, env = "STARKSCALE_MAX_MODEL_BYTES", default_value_t = 256 << 20)]
    pub max_model_bytes: usize,
    /// Memory each worker has to prove in, in GiB (what the deployment gives its workers): the
    /// tallest tile a job may ask for follows from it (4 GiB: 254 rows, 8 GiB: 510).
    #[arg(long, env = "STARKSCALE_WORKER_MEMORY_GIB", default_value_t = 4.0)]
    pub worker_memory_gib: f64,
    /// Children per reduce node: a job of up to this many tiles is reduced by one proof.
    #[arg(long, env = "STARKSCALE_FAN_IN", default_value_t = DEFAULT_FAN_IN)]
    pub fan_in: usize,
    /// Entries of X (and of Y) a matmul job is planned with at a time: what planning holds of a
    /// batch, however large.
    #[arg(long, env = "STARKSCALE_PLAN_BLOCK_ENTRIES", default_value_t = 1 << 20)]
    pub plan_block_entries: usize,
    /// Where `starkscale coordinator` serves /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "STARKSCALE_METRICS_ADDR",
        default_value_t = metrics::on_loopback(metrics::COORDINATOR_PORT)
    )]
    pub metrics_addr: SocketAddr,
}

impl CoordinatorConfig {
    /// Defaults for a fleet at `fleet`.
    pub fn new(fleet: FleetConfig) -> CoordinatorConfig {
        CoordinatorConfig {
            fleet,
            max_attempts: 3,
            job_ttl_s: 24 * 3600,
            job_deadline_s: 6 * 3600,
            reconcile_interval_s: 30,
            max_dead_letters: 2,
            dead_letter_backoff_ms: 5_000,
            lease_s: 15,
            allow_test_profile: false,
            max_job_bytes: 64 << 20,
            max_model_bytes: 256 << 20,
            worker_memory_gib: 4.0,
            data_dir: ".".into(),
            plan_block_entries: 1 << 20,
            fan_in: DEFAULT_FAN_IN,
            metrics_addr: metrics::on_loopback(metrics::COORDINATOR_PORT),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another coordinator took over the lease")]
    LeaseLost,
}

/// The jobs this coordinator holds, kept across reconnects: after Redis loses its data, this
/// cache (with each job's message) is what the jobs are planned again from.
type Cache = Arc<Mutex<HashMap<String, Job>>>;

/// Serves jobs over RabbitMQ and Redis until `shutdown` is cancelled. A lost connection is not
/// fatal: unacked messages return to their queues, and the loop reconnects with backoff and
/// reconciles its jobs with the store.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) {
    let cache = Cache::default();
    // One holder name for the whole run, so that after a reconnect this coordinator renews its
    // own lease instead of waiting for it to lapse.
    let holder = holder_name();
    config
        .fleet
        .serve(Role::Coordinator, &shutdown, |broker, store| {
            let cache = cache.clone();
            serve_with(
                broker,
                store,
                &config,
                shutdown.clone(),
                cache,
                holder.clone(),
            )
        })
        .await;
}

/// Serves jobs over any broker and store until `shutdown` is cancelled.
pub async fn serve<B: Broker, S: Store>(
    broker: B,
    store: S,
    config: &CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    serve_with(
        broker,
        store,
        config,
        shutdown,
        Cache::default(),
        holder_name(),
    )
    .await
}

/// A name for this coordinator's lease, unique across processes and runs.
fn holder_name() -> String {
    format!(
        "coordinator-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

async fn serve_with<B: Broker, S: Store>(
    broker: B,
    store: S,
    config: &CoordinatorConfig,
    shutdown: CancellationToken,
    cache: Cache,
    holder: String,
) -> Result<(), CoordinatorError> {
    let svc = Services::new(broker, store, config);
    let Some(lease) = Lease::take(&svc, holder, &shutdown).await? else {
        return Ok(());
    };
    metrics::set_active(true);
    let jobs = std::mem::take(&mut *cache.lock().unwrap_or_else(|p| p.into_inner()));
    let mut coordinator = Coordinator {
        svc,
        jobs,
        pending_cancels: HashSet::new(),
        work: JoinSet::new(),
    };
    let served = coordinator.serve(&lease.lost, &shutdown).await;
    *cache.lock().unwrap_or_else(|p| p.into_inner()) = std::mem::take(&mut coordinator.jobs);
    lease.keeper.abort();
    metrics::set_active(false);
    served
}

impl CoordinatorConfig {
    /// The limits jobs are held to.
    pub fn limits(&self) -> JobLimits {
        let worker_memory = (self.worker_memory_gib.max(0.0) * (1u64 << 30) as f64) as u64;
        JobLimits {
            max_job_bytes: self.max_job_bytes,
            max_model_bytes: self.max_model_bytes,
            max_tile_rows: starkscale_common::plan::max_tile_rows_for_memory(worker_memory),
            worker_memory: Some(worker_memory),
            ..JobLimits::default()
        }
    }
}

/// What every part of the coordinator, on the loop or spawned, works with.
#[derive(Clone)]
pub(crate) struct Services<B, S> {
    pub broker: B,
    pub store: S,
    pub keys: Keys,
    pub config: Arc<CoordinatorConfig>,
    pub limits: JobLimits,
    /// Where inputs by path are read; `None` when it cannot be opened (such jobs are refused).
    pub data_dir: Option<Arc<DataDir>>,
}

impl<B: Broker, S: Store> Services<B, S> {
    fn new(broker: B, store: S, config: &CoordinatorConfig) -> Services<B, S> {
        let data_dir = match DataDir::open(&config.data_dir) {
            Ok(dir) => Some(Arc::new(dir)),
            Err(error) => {
                error!(dir = %config.data_dir.display(), %error, "cannot open the data directory; jobs naming inputs by path are refused");
                None
            }
        };
        Services {
            data_dir,
            keys: Keys::new(config.fleet.prefix.clone()),
            limits: config.limits(),
            config: Arc::new(config.clone()),
            broker,
            store,
        }
    }
}

impl<B, S> Services<B, S> {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.job_ttl_s)
    }
}

/// The lease that makes this coordinator the active one, renewed in the background.
struct Lease {
    /// Cancelled when the lease could not be renewed: another coordinator may serve now.
    lost: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Waits (standing by) until this process holds the lease; `None` on shutdown.
    async fn take<B, S: Store>(
        svc: &Services<B, S>,
        holder: String,
        shutdown: &CancellationToken,
    ) -> Result<Option<Lease>, CoordinatorError> {
        let key = svc.keys.coordinator_lease();
        let ttl = Duration::from_secs(svc.config.lease_s.max(1));
        let mut standing_by = false;
        while !svc.store.lease(&key, &holder, ttl).await? {
            if !standing_by {
                info!("another coordinator is active; standing by");
                standing_by = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(ttl / 3) => {}
            }
        }
        info!(%holder, "holding the coordinator lease");
        let lost = CancellationToken::new();
        let store = svc.store.clone();
        let keeper = tokio::spawn({
            let lost = lost.clone();
            async move {
                let mut renewed = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.lease(&key, &holder, ttl).await {
                        Ok(true) => renewed = tokio::time::Instant::now(),
                        Ok(false) => {
                            warn!("the coordinator lease is held by another coordinator");
                            break;
                        }
                        Err(error) if renewed.elapsed() >= ttl => {
                            warn!(%error, "could not renew the coordinator lease in time");
                            break;
                        }
                        Err(_) => {}
                    }
                }
                lost.cancel();
            }
        });
        Ok(Some(Lease { lost, keeper }))
    }
}

/// Work spawned off the event loop, coming back to it to be applied.
enum Done {
    /// A job message handled by [`intake::intake`].
    Intake(Delivery, Result<Intake, Failure>),
    /// A reported proof, fetched and checked.
    Verified {
        delivery: Delivery,
        event: TaskEvent,
        checked: Result<(Verdict, f64), StoreError>,
    },
    /// A job planned again after the store lost its state.
    Replanned(String, Result<Job, Refusal>),
}

/// What woke the event loop.
enum Next {
    Shutdown,
    LeaseLost,
    Job(Delivery),
    Event(Delivery),
    Expired(Delivery),
    Done(Box<Done>),
    Reconcile,
    Due,
}

pub(crate) struct Coordinator<B, S> {
    svc: Services<B, S>,
    jobs: HashMap<String, Job>,
    /// Cancel requests for jobs still being planned.
    pending_cancels: HashSet<String>,
    work: JoinSet<Done>,
}

impl<B: Broker, S: Store> Coordinator<B, S> {
    async fn serve(
        &mut self,
        lease_lost: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<(), CoordinatorError> {
        let topology = self.svc.broker.topology().clone();
        let mut jobs = self
            .svc
            .broker
            .consume(&topology.jobs(), 4, "coordinator-jobs")
            .await?;
        let mut events = self
            .svc
            .broker
            .consume(&topology.events(), 64, "coordinator-events")
            .await?;
        let mut expired = self
            .svc
            .broker
            .consume(&topology.expired(), 8, "coordinator-expired")
            .await?;
        info!(jobs = %topology.jobs(), events = %topology.events(), "coordinating");
        let reconciled = self.reconcile(true).await;
        internal(reconciled)?;
        let period = Duration::from_secs(self.svc.config.reconcile_interval_s.max(1));
        let mut reconcile = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            metrics::jobs_running(self.jobs.len());
            let due = self.next_due();
            let next = tokio::select! {
                _ = shutdown.cancelled() => Next::Shutdown,
                _ = lease_lost.cancelled() => Next::LeaseLost,
                d = jobs.next() => Next::Job(d?),
                d = events.next() => Next::Event(d?),
                d = expired.next() => Next::Expired(d?),
                Some(done) = self.work.join_next() => match done {
                    Ok(done) => Next::Done(Box::new(done)),
                    Err(e) => {
                        // Only a bug panics here; its delivery went back to the queue.
                        error!(error = %e, "spawned work failed");
                        continue;
                    }
                },
                _ = reconcile.tick() => Next::Reconcile,
                _ = sleep_until(due) => Next::Due,
            };
            match next {
                Next::Shutdown => return Ok(()),
                Next::LeaseLost => return Err(CoordinatorError::LeaseLost),
                Next::Job(delivery) => {
                    let svc = self.svc.clone();
                    self.work.spawn(async move {
                        let outcome = intake::intake(svc, &delivery).await;
                        Done::Intake(delivery, outcome)
                    });
                }
                Next::Event(delivery) => self.on_event(delivery).await?,
                Next::Expired(delivery) => self.on_expired(delivery).await?,
                Next::Done(done) => self.on_done(*done).await?,
                Next::Reconcile => {
                    let reconciled = self.reconcile(false).await;
                    internal(reconciled)?
                }
                Next::Due => {
                    let published = self.publish_all_due().await;
                    internal(published)?
                }
            }
        }
    }

    async fn on_done(&mut self, done: Done) -> Result<(), CoordinatorError> {
        let jobs = self.svc.broker.topology().jobs();
        let events = self.svc.broker.topology().events();
        match done {
            Done::Intake(delivery, outcome) => {
                let handled = match outcome {
                    Ok(Intake::Planned(job)) => self.on_planned(*job).await,
                    Ok(Intake::Cancel(job_id)) => self.cancel(&job_id).await,
                    Ok(Intake::Nothing) => Ok(()),
                    Err(failure) => Err(failure),
                };
                settle::settle(&self.svc.broker, delivery, &jobs, handled).await
            }
            Done::Verified {
                delivery,
                event,
                checked,
            } => {
                let handled = match checked {
                    Ok((verdict, verify_s)) => self.on_verdict(&event, verdict, verify_s).await,
                    Err(e) => Err(e.into()),
                };
                settle::settle(&self.svc.broker, delivery, &events, handled).await
            }
            Done::Replanned(job_id, outcome) => {
                let handled = self.on_replanned(&job_id, outcome).await;
                internal(handled)
            }
        }
    }

    /// When the next backing-off task becomes due.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        let due_ms = self.jobs.values().filter_map(Job::next_due_ms).min()?;
        let wait = due_ms.saturating_sub(starkscale_common::messages::unix_ms());
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }
}

/// The outcome of work no delivery waits on: an unavailable service ends the loop (to
/// reconnect); anything else is logged, and the next reconcile pass tries again.
fn internal(outcome: Result<(), Failure>) -> Result<(), CoordinatorError> {
    match outcome {
        Ok(()) => Ok(()),
        Err(Failure::Fleet(e)) => Err(e),
        Err(Failure::Message(reason)) => {
            warn!(%reason, "left for the next reconcile pass");
            Ok(())
        }
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain data structs always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}
