//! Settings every fleet process shares: where RabbitMQ and Redis are, and the name prefix; and
//! the reconnect loop every fleet service runs in ([`FleetConfig::serve`]).

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::broker::{AmqpBroker, Topology};
use crate::metrics;
use crate::store::RedisStore;

/// RabbitMQ on loopback with the default account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Redis on loopback.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Where the fleet is; flattened into each process's configuration.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
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
}

impl FleetConfig {
    /// Loopback services under `prefix`.
    pub fn local(prefix: impl Into<String>) -> FleetConfig {
        FleetConfig {
            amqp_url: DEFAULT_AMQP_URL.into(),
            redis_url: DEFAULT_REDIS_URL.into(),
            prefix: prefix.into(),
        }
    }
}

impl FleetConfig {
    /// Runs `serve` over fresh RabbitMQ and Redis connections until it returns `Ok` (it does on
    /// shutdown). A lost connection is not fatal: unacked deliveries return to their queues, and
    /// the loop reconnects with backoff (250 ms doubling to 10 s, reset after a long good run).
    pub async fn serve<F, Fut, E>(&self, role: &str, shutdown: &CancellationToken, mut serve: F)
    where
        F: FnMut(AmqpBroker, RedisStore) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        const FIRST: Duration = Duration::from_millis(250);
        let mut backoff = FIRST;
        loop {
            let started = Instant::now();
            let topology = Topology::new(self.prefix.clone());
            let error = match AmqpBroker::connect(&self.amqp_url, topology).await {
                Err(e) => e.to_string(),
                Ok(broker) => {
                    let served = match RedisStore::connect(&self.redis_url).await {
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
