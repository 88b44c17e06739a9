//! The message broker behind the fleet, as one small trait with two implementations:
//!
//! - [`AmqpBroker`] (RabbitMQ through lapin): what a deployed fleet uses.
//! - [`MemoryBroker`] (tokio primitives): the embedded mode, `starkscale run`, where coordinator
//!   and worker share one process and no services exist.
//!
//! Both honour the same contract, which the coordinator and worker rely on: a publish returns
//! only once the message is safely queued (an unroutable message is an error, never a silent
//! drop); a consumer holds at most `prefetch` unsettled deliveries; a delivery that is nacked
//! with requeue, or whose consumer goes away unsettled, is delivered again; after
//! [`DELIVERY_LIMIT`] deliveries a message is dead-lettered to the expired queue
//! ([`Topology::expired`]) instead of looping forever, where the coordinator decides what becomes
//! of it. [`Broker::dead_letter`] parks a message for operators in the dead queue
//! ([`Topology::dead`]), which nothing in the fleet consumes.
//!
//! Queue and exchange names come from a [`Topology`] prefix (`starkscale` in production, unique
//! per test).

mod amqp;
mod memory;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use futures_util::{Stream, StreamExt};

pub use amqp::{redact, AmqpBroker};
pub use memory::MemoryBroker;

/// Deliveries of one message before the broker dead-letters it (a poison task must not loop).
pub const DELIVERY_LIMIT: u32 = 5;
/// Results kept in the results log queue (oldest dropped first).
pub const RESULTS_LOG_LENGTH: i64 = 10_000;
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-starkscale-reason";
/// Header naming the queue a dead-lettered message came from.
pub const SOURCE_QUEUE_HEADER: &str = "x-starkscale-queue";
/// What RabbitMQ sets on a message it dead-letters: the queue and the reason.
const FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
const FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// Longest wait for a connection to RabbitMQ.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest wait for a publisher confirm: a broker that takes longer is blocked or gone.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to RabbitMQ at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("declaring {what}: {message}")]
    Declare { what: String, message: String },
    #[error("these credentials may not declare {what}: {message}")]
    NotPermitted { what: String, message: String },
    #[error("publishing to {queue}: {message}")]
    Publish { queue: String, message: String },
    #[error("the broker refused (nacked) a message for {0}")]
    Nacked(String),
    #[error("message for {0} was returned unroutable")]
    Returned(String),
    #[error("consuming {queue}: {message}")]
    Consume { queue: String, message: String },
    #[error("the consumer of {0} was closed")]
    ConsumerClosed(String),
    #[error("acknowledging: {0}")]
    Ack(String),
    #[error("no publisher confirm for {0} within {CONFIRM_TIMEOUT:?}")]
    ConfirmTimeout(String),
}

impl BrokerError {
    /// Whether the failure belongs to one message (a `reply_to` queue that does not exist)
    /// rather than to the connection: the message is refused, the connection is fine.
    pub fn is_per_message(&self) -> bool {
        matches!(self, BrokerError::Returned(_) | BrokerError::Nacked(_))
    }
}

/// Queue and exchange names of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Topology {
        Topology {
            prefix: prefix.into(),
        }
    }
    /// The name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Jobs submitted by clients (and cancel requests).
    pub fn jobs(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    /// Tile tasks for workers.
    pub fn tasks(&self) -> String {
        format!("{}.tasks", self.prefix)
    }
    /// Task outcomes for the coordinator.
    pub fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }
    /// Where messages the fleet gave up on are parked for operators, with their reason.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    /// Where the broker dead-letters work messages that used up their deliveries; the
    /// coordinator consumes it (retries a task with backoff, or fails its job).
    pub fn expired(&self) -> String {
        format!("{}.expired", self.prefix)
    }
    /// Dead-letter exchange of the work queues.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }
    /// Topic exchange of job results (routing key = job id).
    pub fn results(&self) -> String {
        format!("{}.results", self.prefix)
    }
    /// Keeps the latest results, so a result always has a route even with no client listening.
    pub fn results_log(&self) -> String {
        format!("{}.results.log", self.prefix)
    }
    /// The exchange clients publish jobs and cancel requests to (bound to [`Topology::jobs`]
    /// alone): clients may write to it without being able to reach any other queue.
    pub fn job_intake(&self) -> String {
        format!("{}.jobs.submit", self.prefix)
    }
    /// The exchange workers report task events to (bound to [`Topology::events`] alone).
    pub fn event_intake(&self) -> String {
        format!("{}.events.report", self.prefix)
    }
    /// The exchange a message for `queue` is published through: the queue's intake exchange
    /// where it has one, else the default exchange (`""`).
    pub fn exchange_for(&self, queue: &str) -> String {
        if queue == self.jobs() {
            self.job_intake()
        } else if queue == self.events() {
            self.event_intake()
        } else {
            String::new()
        }
    }
    pub fn work_queues(&self) -> [String; 3] {
        [self.jobs(), self.tasks(), self.events()]
    }
}

/// String headers of a message (the only kind the fleet sets or reads).
pub type Headers = BTreeMap<String, String>;

/// One message handed to a consumer. Settle it with [`Delivery::ack`] or [`Delivery::nack`];
/// dropping it unsettled leaves it to the broker to deliver again.
pub struct Delivery {
    pub body: Vec<u8>,
    pub headers: Headers,
    /// The queue a client asked replies on (AMQP `reply_to`).
    pub reply_to: Option<String>,
    /// Whether an earlier delivery of this message went unacknowledged.
    pub redelivered: bool,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("headers", &self.headers)
            .field("reply_to", &self.reply_to)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

type AckFuture = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// How an implementation settles one delivery.
trait Acker: Send + Sync {
    fn ack(self: Box<Self>) -> AckFuture;
    fn nack(self: Box<Self>, requeue: bool) -> AckFuture;
}

impl Delivery {
    /// Done with: the broker forgets the message.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.acker.ack().await
    }
    /// Not done: back to the queue (`requeue`) or to the dead-letter exchange.
    pub async fn nack(self, requeue: bool) -> Result<(), BrokerError> {
        self.acker.nack(requeue).await
    }
    /// Why the message was dead-lettered, if it was: the fleet's reason, or the broker's.
    pub fn dead_letter_reason(&self) -> Option<&str> {
        self.headers
            .get(REASON_HEADER)
            .or_else(|| self.headers.get(FIRST_DEATH_REASON))
            .map(String::as_str)
    }
    /// The queue a dead-lettered message came from.
    pub fn dead_letter_source(&self) -> Option<&str> {
        self.headers
            .get(SOURCE_QUEUE_HEADER)
            .or_else(|| self.headers.get(FIRST_DEATH_QUEUE))
            .map(String::as_str)
    }
}

/// A stream of deliveries from one queue.
pub struct Consumer {
    queue: String,
    stream: Pin<Box<dyn Stream<Item = Result<Delivery, BrokerError>> + Send>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// The next delivery; an error when the broker closed the consumer.
    pub async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match self.stream.next().await {
            Some(delivery) => delivery,
            None => Err(BrokerError::ConsumerClosed(self.queue.clone())),
        }
    }
}

/// What the coordinator, the workers and clients need from a broker.
pub trait Broker: Clone + Send + Sync + 'static {
    fn topology(&self) -> &Topology;

    /// Publishes a persistent message to `queue`; returns once the broker has taken it.
    fn publish(
        &self,
        queue: &str,
        body: &[u8],
        headers: &Headers,
        reply_to: Option<&str>,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Publishes many messages to `queue`, all in flight at once; returns once every one has
    /// been taken (the first failure otherwise). Planning a job publishes its tasks this way.
    fn publish_all(
        &self,
        queue: &str,
        bodies: &[Vec<u8>],
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Publishes a job's result to the results exchange (routing key = job id) and, when the
    /// client asked with `reply_to`, to that queue too.
    fn publish_result(
        &self,
        job_id: &str,
        reply_to: Option<&str>,
        body: &[u8],
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Consumes `queue` with at most `prefetch` unsettled deliveries.
    fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> impl Future<Output = Result<Consumer, BrokerError>> + Send;

    /// Results whose job id matches `pattern` (an id, or `#` for all), from now on.
    fn subscribe_results(
        &self,
        pattern: &str,
    ) -> impl Future<Output = Result<Consumer, BrokerError>> + Send;

    /// Dead-letters a delivery with a reason: a copy (original headers plus the reason and the
    /// source queue) goes to the dead queue, and only once it is taken is the original acked,
    /// so the message is never lost between the two.
    fn dead_letter(
        &self,
        delivery: Delivery,
        source_queue: &str,
        reason: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        async move {
            let mut headers = delivery.headers.clone();
            headers.insert(REASON_HEADER.into(), reason.into());
            headers.insert(SOURCE_QUEUE_HEADER.into(), source_queue.into());
            self.publish(&self.topology().dead(), &delivery.body, &headers, None)
                .await?;
            delivery.ack().await?;
            crate::metrics::dead_lettered(source_queue);
            Ok(())
        }
    }
}
