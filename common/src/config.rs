//! Settings every fleet process shares: where RabbitMQ and Redis are, how to reach them over TLS,
//! and the name prefix; connecting by them ([`FleetConfig::broker`], [`FleetConfig::store`]); and
//! the reconnect loop every fleet service runs in ([`FleetConfig::serve`]).

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::access::Role;
use crate::broker::{redact, AmqpBroker, BrokerError, Topology};
use crate::metrics;
use crate::store::{RedisStore, StoreError};
use crate::tls::{Tls, TlsError, TlsOptions};

/// RabbitMQ on loopback with the default account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Redis on loopback.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Where the fleet is; flattened into each process's configuration. Its `Debug` redacts the
/// URLs' passwords.
#[derive(Clone, PartialEq, Eq, clap::Args)]
pub struct FleetConfig {
    /// RabbitMQ URL.
    #[arg(long, env = "STARKSCALE_AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(long, env = "STARKSCALE_REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Prefix of queue, exchange and key names.
    #[arg(long, env = "STARKSCALE_PREFIX", default_value = "starkscale")]
    pub prefix: String,
    #[command(flatten)]
    pub tls: TlsOptions,
}

/// Why a process could not reach the fleet's services.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("amqp_url", &redact(&self.amqp_url))
            .field("redis_url", &redact(&self.redis_url))
            .field("prefix", &self.prefix)
            .field("tls", &self.tls)
            .finish()
    }
}

impl FleetConfig {
    /// Loopback services under `prefix`.
    pub fn local(prefix: impl Into<String>) -> FleetConfig {
        FleetConfig {
            amqp_url: DEFAULT_AMQP_URL.into(),
            redis_url: DEFAULT_REDIS_URL.into(),
            prefix: prefix.into(),
            tls: TlsOptions::default(),
        }
    }

    /// The TLS material, read from its files now (so a renewed certificate is used from the
    /// next connection on).
    pub fn tls(&self) -> Result<Tls, TlsError> {
        self.tls.load(&[&self.amqp_url, &self.redis_url])
    }

    /// Connects to RabbitMQ as `role`: the coordinator declares the topology, the others join
    /// it.
    pub async fn broker(&self, role: Role) -> Result<AmqpBroker, ConnectError> {
        let tls = self.tls()?;
        let topology = Topology::new(self.prefix.clone());
        Ok(match role {
            Role::Coordinator => AmqpBroker::connect_with(&self.amqp_url, topology, &tls).await?,
            Role::Worker | Role::Client => {
                AmqpBroker::join_with(&self.amqp_url, topology, &tls).await?
            }
        })
    }

    /// Connects to Redis.
    pub async fn store(&self) -> Result<RedisStore, ConnectError> {
        let tls = self.tls()?;
        Ok(RedisStore::connect_with(&self.redis_url, &tls).await?)
    }
}

impl FleetConfig {
    /// Runs `serve` over fresh RabbitMQ and Redis connections until it returns `Ok` (it does on
    /// shutdown). A lost connection is not fatal: unacked deliveries return to their queues, and
    /// the loop reconnects with backoff (250 ms doubling to 10 s, reset after a long good run).
    pub async fn serve<F, Fut, E>(&self, role: Role, shutdown: &CancellationToken, mut serve: F)
    where
        F: FnMut(AmqpBroker, RedisStore) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        const FIRST: Duration = Duration::from_millis(250);
        let mut backoff = FIRST;
        loop {
            let started = Instant::now();
            let error = match self.broker(role).await {
                Err(e) => e.to_string(),
                Ok(broker) => {
                    let served = match self.store().await {
                        Err(e) => Err(e.to_string()),
                        Ok(store) => {
                            metrics::set_connected(true);
                            let served = serve(broker.clone(), store).await;
                            metrics::set_connected(false);
                            served.map_err(|e| e.to_string())
                        }
                    };
                    broker.close().await;
                    match served {
                        Ok(()) => return,
                        Err(e) => e,
                    }
                }
            };
            if started.elapsed() > Duration::from_secs(60) {
                backoff = FIRST;
            }
            let role = role.name();
            warn!(%error, retry_in = ?backoff, "{role} lost RabbitMQ or Redis; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// A prefix no other run uses, so each test gets queues and keys of its own.
pub fn unique_prefix(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("test-{label}-{}-{nanos}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedisStore;

    /// Secrets in URLs stay out of errors and debug output: nothing listens on port 1, so both
    /// connections fail, naming the URL without its password.
    #[tokio::test]
    async fn passwords_stay_out_of_errors_and_debug_output() {
        let config = FleetConfig {
            amqp_url: "amqp://fleet:hunter2-amqp@127.0.0.1:1/%2f".into(),
            redis_url: "redis://worker:hunter2-redis@127.0.0.1:1/".into(),
            prefix: "p".into(),
            tls: TlsOptions::default(),
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("fleet:***@"),
            "{shown}"
        );
        let Err(amqp) = AmqpBroker::connect(&config.amqp_url, Topology::new("p")).await else {
            panic!("nothing listens on port 1");
        };
        let amqp = amqp.to_string();
        assert!(
            !amqp.contains("hunter2") && amqp.contains("127.0.0.1:1"),
            "{amqp}"
        );
        let Err(redis) = RedisStore::connect(&config.redis_url).await else {
            panic!("nothing listens on port 1");
        };
        let redis = redis.to_string();
        assert!(
            !redis.contains("hunter2") && redis.contains("worker:***@"),
            "{redis}"
        );
    }
}
