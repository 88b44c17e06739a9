//! RabbitMQ: the fleet's queues, declared the same way by every process.
//!
//! Reliability rules this module enforces (DESIGN.md): quorum queues with an explicit
//! `x-delivery-limit` and a dead-letter exchange; persistent messages; every publish waits for its
//! publisher confirm and is `mandatory`, so a nack or an unroutable (returned) message is an
//! error, never a silent loss; consumers set their prefetch before consuming.
//!
//! Names come from a [`Topology`] prefix (`starkscale` in production, unique per test).

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

/// Deliveries of one message before the broker dead-letters it (a poison task must not loop).
pub const DELIVERY_LIMIT: i64 = 5;
/// Results kept in the results log queue (oldest dropped first).
pub const RESULTS_LOG_LENGTH: i64 = 10_000;
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-starkscale-reason";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to RabbitMQ at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("declaring {what}: {message}")]
    Declare { what: String, message: String },
    #[error("publishing to {queue}: {message}")]
    Publish { queue: String, message: String },
    #[error("RabbitMQ refused (nacked) a message for {0}")]
    Nacked(String),
    #[error("message for {0} was returned unroutable")]
    Returned(String),
    #[error("consuming {queue}: {message}")]
    Consume { queue: String, message: String },
    #[error("acknowledging: {0}")]
    Ack(String),
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
    /// Jobs submitted by clients.
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
    /// Where rejected and undeliverable messages end up, with their reason.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
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
    pub fn work_queues(&self) -> [String; 3] {
        [self.jobs(), self.tasks(), self.events()]
    }
}

/// A connection with a confirming publisher channel and the topology declared.
pub struct AmqpBroker {
    connection: Connection,
    publisher: Channel,
    topology: Topology,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

fn declare_err(what: &str) -> impl Fn(lapin::Error) -> BrokerError + '_ {
    move |e| BrokerError::Declare {
        what: what.to_string(),
        message: e.to_string(),
    }
}

impl AmqpBroker {
    pub async fn connect(url: &str, topology: Topology) -> Result<AmqpBroker, BrokerError> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| BrokerError::Connect {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(declare_err("the publisher channel"))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(declare_err("publisher confirms"))?;
        let broker = AmqpBroker {
            connection,
            publisher,
            topology,
        };
        broker.declare().await?;
        Ok(broker)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Declares everything; declaring again with the same arguments is a no-op.
    async fn declare(&self) -> Result<(), BrokerError> {
        let t = &self.topology;
        let ch = &self.publisher;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let dlx = t.dead_letter_exchange();
        ch.exchange_declare(
            dlx.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(&dlx))?;
        ch.exchange_declare(
            t.results().as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(declare_err("the results exchange"))?;

        let quorum = |extra: &[(&str, AMQPValue)]| {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            for (k, v) in extra {
                args.insert((*k).into(), v.clone());
            }
            args
        };
        let queue_opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let dead = t.dead();
        ch.queue_declare(dead.as_str().into(), queue_opts, quorum(&[]))
            .await
            .map_err(declare_err(&dead))?;
        ch.queue_bind(
            dead.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(&dead))?;
        let work_args = quorum(&[
            ("x-delivery-limit", AMQPValue::LongLongInt(DELIVERY_LIMIT)),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(LongString::from(dlx.as_str())),
            ),
        ]);
        for queue in t.work_queues() {
            ch.queue_declare(queue.as_str().into(), queue_opts, work_args.clone())
                .await
                .map_err(declare_err(&queue))?;
        }
        let log = t.results_log();
        let mut log_args = FieldTable::default();
        log_args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(RESULTS_LOG_LENGTH),
        );
        ch.queue_declare(log.as_str().into(), queue_opts, log_args)
            .await
            .map_err(declare_err(&log))?;
        ch.queue_bind(
            log.as_str().into(),
            t.results().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(&log))?;
        Ok(())
    }

    /// Publishes a job's result to the results exchange (routing key = job id) and, when the
    /// client asked with `reply_to`, to that queue too.
    pub async fn publish_result(
        &self,
        job_id: &str,
        reply_to: Option<&str>,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        self.publish_to(
            &self.topology.results(),
            job_id,
            body,
            FieldTable::default(),
        )
        .await?;
        if let Some(queue) = reply_to {
            self.publish(queue, body, FieldTable::default()).await?;
        }
        Ok(())
    }

    /// Subscribes to results whose routing key matches `pattern` (a job id, or `#` for all),
    /// through an exclusive queue that disappears with the connection.
    pub async fn subscribe_results(&self, pattern: &str) -> Result<Consumer, BrokerError> {
        let err = |e: lapin::Error| BrokerError::Consume {
            queue: self.topology.results(),
            message: e.to_string(),
        };
        let channel = self.connection.create_channel().await.map_err(err)?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        let name = queue.name().as_str().to_string();
        channel
            .queue_bind(
                name.as_str().into(),
                self.topology.results().as_str().into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        channel
            .basic_consume(
                name.as_str().into(),
                "results".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)
    }

    /// Publishes a persistent message to `queue` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        self.publish_to("", queue, body, headers).await
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), BrokerError> {
        let err = |message: String| BrokerError::Publish {
            queue: routing_key.to_string(),
            message,
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers);
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        // Check acked first: take_message consumes the confirmation.
        if !confirm.is_ack() {
            return Err(BrokerError::Nacked(routing_key.to_string()));
        }
        if confirm.take_message().is_some() {
            return Err(BrokerError::Returned(routing_key.to_string()));
        }
        Ok(())
    }

    /// Consumes `queue` on a channel of its own with at most `prefetch` unacknowledged deliveries.
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, BrokerError> {
        let err = |e: lapin::Error| BrokerError::Consume {
            queue: queue.to_string(),
            message: e.to_string(),
        };
        let channel = self.connection.create_channel().await.map_err(err)?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(err)?;
        channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)
    }

    /// Dead-letters a delivery with a reason: a copy (original headers plus the reason) goes to
    /// the dead queue, confirmed, and only then is the original acknowledged — so the message is
    /// never lost between the two.
    pub async fn dead_letter(
        &self,
        delivery: &lapin::message::Delivery,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        headers.insert(
            "x-starkscale-queue".into(),
            AMQPValue::LongString(LongString::from(delivery.routing_key.as_str())),
        );
        self.publish(&self.topology.dead(), &delivery.data, headers)
            .await?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| BrokerError::Ack(e.to_string()))
    }

    /// Deletes every queue and exchange of the topology (tests clean up with this).
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        let t = &self.topology;
        for queue in t.work_queues().iter().chain([&t.dead(), &t.results_log()]) {
            self.publisher
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(declare_err(queue))?;
        }
        for exchange in [t.dead_letter_exchange(), t.results()] {
            self.publisher
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await
                .map_err(declare_err(&exchange))?;
        }
        Ok(())
    }
}

/// The reason header of a dead-lettered message, if any.
pub fn dead_letter_reason(properties: &BasicProperties) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(REASON_HEADER)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    }
}
