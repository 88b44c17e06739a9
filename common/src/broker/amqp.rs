//! [`Broker`] over RabbitMQ.
//!
//! Quorum work queues with an explicit `x-delivery-limit` and a dead-letter exchange; persistent
//! messages; every publish is `mandatory` and waits for its publisher confirm, so a nack or a
//! returned (unroutable) message is an error; consumers set their prefetch before consuming.
//! Every process declares the whole topology on connect (idempotent). Connecting and waiting for
//! a confirm are bounded ([`CONNECT_TIMEOUT`], [`CONFIRM_TIMEOUT`]); while RabbitMQ blocks the
//! connection's publishers (a resource alarm) the process reports not-ready. Publishes (through
//! their confirm), acks and nacks are timed into `starkscale_amqp_op_duration_seconds`.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::try_join_all;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, DefaultConnectionBuilder,
    ExchangeKind, PublisherConfirm,
};

use crate::metrics;
use crate::tls::Tls;

use super::{
    AckFuture, Acker, Broker, BrokerError, Consumer, Delivery, Headers, Topology, CONFIRM_TIMEOUT,
    CONNECT_TIMEOUT, DELIVERY_LIMIT, RESULTS_LOG_LENGTH,
};

/// A RabbitMQ connection with a confirming publisher channel and the topology declared.
/// Clones share the connection.
#[derive(Clone)]
pub struct AmqpBroker {
    connection: Arc<Connection>,
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
    move |e| {
        let refused = matches!(
            e.kind(),
            lapin::ErrorKind::ProtocolError(amqp)
                if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
        );
        let (what, message) = (what.to_string(), e.to_string());
        match refused {
            true => BrokerError::NotPermitted { what, message },
            false => BrokerError::Declare { what, message },
        }
    }
}

fn field_table(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            k.as_str().into(),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    table
}

fn headers_of(properties: &BasicProperties) -> Headers {
    let Some(table) = properties.headers().as_ref() else {
        return Headers::new();
    };
    table
        .inner()
        .iter()
        .filter_map(|(k, v)| {
            let value = match v {
                AMQPValue::LongString(s) => s.to_string(),
                AMQPValue::ShortString(s) => s.to_string(),
                AMQPValue::LongLongInt(n) => n.to_string(),
                AMQPValue::LongInt(n) => n.to_string(),
                _ => return None,
            };
            Some((k.to_string(), value))
        })
        .collect()
}

struct AmqpAcker(lapin::Acker);

impl Acker for AmqpAcker {
    fn ack(self: Box<Self>) -> AckFuture {
        Box::pin(async move {
            let started = Instant::now();
            let acked = self.0.ack(BasicAckOptions::default()).await;
            metrics::amqp_op("ack", started.elapsed());
            acked
                .map(|_| ())
                .map_err(|e| BrokerError::Ack(e.to_string()))
        })
    }
    fn nack(self: Box<Self>, requeue: bool) -> AckFuture {
        Box::pin(async move {
            let started = Instant::now();
            let options = BasicNackOptions {
                requeue,
                ..BasicNackOptions::default()
            };
            let nacked = self.0.nack(options).await;
            metrics::amqp_op("nack", started.elapsed());
            nacked
                .map(|_| ())
                .map_err(|e| BrokerError::Ack(e.to_string()))
        })
    }
}

fn delivery(d: lapin::message::Delivery) -> Delivery {
    Delivery {
        headers: headers_of(&d.properties),
        reply_to: d.properties.reply_to().as_ref().map(|q| q.to_string()),
        redelivered: d.redelivered,
        body: d.data,
        acker: Box::new(AmqpAcker(d.acker)),
    }
}

impl AmqpBroker {
    /// Connects as the topology's owner (the coordinator): declares every queue and exchange,
    /// and fails if the credentials may not.
    pub async fn connect(url: &str, topology: Topology) -> Result<AmqpBroker, BrokerError> {
        Self::connect_with(url, topology, &Tls::default()).await
    }

    /// [`AmqpBroker::connect`] with TLS material for an `amqps://` URL.
    pub async fn connect_with(
        url: &str,
        topology: Topology,
        tls: &Tls,
    ) -> Result<AmqpBroker, BrokerError> {
        let broker = Self::open(url, topology, tls).await?;
        broker.declare().await?;
        Ok(broker)
    }

    /// Connects as a worker or client, to a topology the coordinator declares. It is declared
    /// here too where the credentials allow it (loopback development), so a worker or client
    /// may start first there; least-privilege credentials may not declare, and that is fine.
    pub async fn join(url: &str, topology: Topology) -> Result<AmqpBroker, BrokerError> {
        Self::join_with(url, topology, &Tls::default()).await
    }

    /// [`AmqpBroker::join`] with TLS material for an `amqps://` URL.
    pub async fn join_with(
        url: &str,
        topology: Topology,
        tls: &Tls,
    ) -> Result<AmqpBroker, BrokerError> {
        let broker = Self::open(url, topology, tls).await?;
        match broker.declare().await {
            Err(BrokerError::NotPermitted { message, .. }) => {
                tracing::debug!(%message, "not permitted to declare; the coordinator does");
            }
            declared => declared?,
        }
        Ok(broker)
    }

    async fn open(url: &str, topology: Topology, tls: &Tls) -> Result<AmqpBroker, BrokerError> {
        let connect_err = |message: String| BrokerError::Connect {
            url: redact(url),
            message,
        };
        // The TLS settings only matter for `amqps://`; lapin ignores them otherwise.
        let builder = DefaultConnectionBuilder::new()
            .map_err(|e| connect_err(e.to_string()))?
            .with_uri_str(url.to_owned())
            .with_properties(ConnectionProperties::default())
            .with_tls_config(OwnedTLSConfig {
                identity: tls.identity.as_ref().map(|id| OwnedIdentity::PKCS8 {
                    pem: id.cert.clone(),
                    key: id.key.clone(),
                }),
                cert_chain: tls
                    .ca
                    .as_ref()
                    .map(|pem| String::from_utf8_lossy(pem).into_owned()),
            });
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, builder.connect())
            .await
            .map_err(|_| connect_err(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| connect_err(e.to_string()))?;
        let mut events = connection.events_listener();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    lapin::Event::ConnectionBlocked(reason) => {
                        tracing::warn!(%reason, "RabbitMQ blocks publishing");
                        metrics::set_blocked(true);
                    }
                    lapin::Event::ConnectionUnblocked => metrics::set_blocked(false),
                    _ => {}
                }
            }
            metrics::set_blocked(false);
        });
        let publisher = connection
            .create_channel()
            .await
            .map_err(declare_err("the publisher channel"))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(declare_err("publisher confirms"))?;
        Ok(AmqpBroker {
            connection: Arc::new(connection),
            publisher,
            topology,
        })
    }

    /// Closes the connection; unacked deliveries go back to their queues.
    pub async fn close(&self) {
        let _ = self.connection.close(200, "closing".into()).await;
    }

    /// Declares everything; declaring again with the same arguments is a no-op. On a channel
    /// of its own, since a refused declaration closes the channel it was made on.
    async fn declare(&self) -> Result<(), BrokerError> {
        let t = &self.topology;
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(declare_err("a declaring channel"))?;
        let ch = &channel;
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
        // Messages that used up their deliveries go to the expired queue, for the coordinator;
        // a deployment declared before that existed bound the dead queue instead.
        ch.queue_unbind(
            dead.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(&dead))?;
        let expired = t.expired();
        ch.queue_declare(expired.as_str().into(), queue_opts, quorum(&[]))
            .await
            .map_err(declare_err(&expired))?;
        ch.queue_bind(
            expired.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_err(&expired))?;
        let work_args = quorum(&[
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(i64::from(DELIVERY_LIMIT)),
            ),
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
        // Intake exchanges: clients and workers publish through these, each bound to its one
        // queue, so that their credentials need no write on the default exchange.
        for (exchange, queue) in [(t.job_intake(), t.jobs()), (t.event_intake(), t.events())] {
            ch.exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(declare_err(&exchange))?;
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare_err(&exchange))?;
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
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Starts a publish; the returned confirm resolves when the broker has taken it.
    async fn start_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: &Headers,
        reply_to: Option<&str>,
    ) -> Result<PublisherConfirm, BrokerError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(field_table(headers));
        if let Some(queue) = reply_to {
            properties = properties.with_reply_to(ShortString::from(queue));
        }
        self.publisher
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
            .map_err(|e| BrokerError::Publish {
                queue: routing_key.to_string(),
                message: e.to_string(),
            })
    }

    async fn await_confirm(
        confirm: PublisherConfirm,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        let confirm = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout(routing_key.to_string()))?
            .map_err(|e| BrokerError::Publish {
                queue: routing_key.to_string(),
                message: e.to_string(),
            })?;
        // Check acked first: take_message consumes the confirmation.
        if !confirm.is_ack() {
            return Err(BrokerError::Nacked(routing_key.to_string()));
        }
        if confirm.take_message().is_some() {
            return Err(BrokerError::Returned(routing_key.to_string()));
        }
        Ok(())
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: &Headers,
        reply_to: Option<&str>,
    ) -> Result<(), BrokerError> {
        let started = Instant::now();
        let confirm = self
            .start_publish(exchange, routing_key, body, headers, reply_to)
            .await?;
        let confirmed = Self::await_confirm(confirm, routing_key).await;
        metrics::amqp_op("publish", started.elapsed());
        confirmed
    }

    async fn consumer_on(
        &self,
        channel: &Channel,
        queue: &str,
        tag: &str,
    ) -> Result<Consumer, lapin::Error> {
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let name = queue.to_string();
        Ok(Consumer {
            queue: queue.to_string(),
            stream: Box::pin(consumer.map(move |d| {
                d.map(delivery).map_err(|e| BrokerError::Consume {
                    queue: name.clone(),
                    message: e.to_string(),
                })
            })),
        })
    }

    /// Deletes every queue and exchange of the topology (tests clean up with this).
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        let t = &self.topology;
        let parked = [t.dead(), t.expired(), t.results_log()];
        for queue in t.work_queues().iter().chain(&parked) {
            self.publisher
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(declare_err(queue))?;
        }
        for exchange in [
            t.dead_letter_exchange(),
            t.results(),
            t.job_intake(),
            t.event_intake(),
        ] {
            self.publisher
                .exchange_delete(exchange.as_str().into(), Default::default())
                .await
                .map_err(declare_err(&exchange))?;
        }
        Ok(())
    }

    /// Messages ready in `queue` and its consumers (tests and benchmarks read these).
    pub async fn depth(&self, queue: &str) -> Result<(u32, u32), BrokerError> {
        let q = self
            .publisher
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(declare_err(queue))?;
        Ok((q.message_count(), q.consumer_count()))
    }
}

/// `url` with its password replaced, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Broker for AmqpBroker {
    fn topology(&self) -> &Topology {
        &self.topology
    }

    async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        headers: &Headers,
        reply_to: Option<&str>,
    ) -> Result<(), BrokerError> {
        let exchange = self.topology.exchange_for(queue);
        self.publish_to(&exchange, queue, body, headers, reply_to)
            .await
    }

    async fn publish_all(&self, queue: &str, bodies: &[Vec<u8>]) -> Result<(), BrokerError> {
        // Confirms are awaited together: one round trip for the batch instead of one per task.
        let started = Instant::now();
        let headers = Headers::new();
        let exchange = self.topology.exchange_for(queue);
        let mut confirms = Vec::with_capacity(bodies.len());
        for body in bodies {
            confirms.push(
                self.start_publish(&exchange, queue, body, &headers, None)
                    .await?,
            );
        }
        try_join_all(confirms.into_iter().map(|c| Self::await_confirm(c, queue))).await?;
        metrics::amqp_op("publish_batch", started.elapsed());
        Ok(())
    }

    async fn publish_result(
        &self,
        job_id: &str,
        reply_to: Option<&str>,
        body: &[u8],
    ) -> Result<(), BrokerError> {
        let headers = Headers::new();
        self.publish_to(&self.topology.results(), job_id, body, &headers, None)
            .await?;
        if let Some(queue) = reply_to {
            self.publish_to("", queue, body, &headers, None).await?;
        }
        Ok(())
    }

    async fn consume(
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
        self.consumer_on(&channel, queue, tag).await.map_err(err)
    }

    /// Through an exclusive queue bound to the results exchange, gone with the connection.
    async fn subscribe_results(&self, pattern: &str) -> Result<Consumer, BrokerError> {
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
        self.consumer_on(&channel, &name, "results")
            .await
            .map_err(err)
    }
}
