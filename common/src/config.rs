//! Settings every fleet process shares: where RabbitMQ and Redis are, and the name prefix.

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

/// A prefix no other run uses, so each test gets queues and keys of its own.
pub fn unique_prefix(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("test-{label}-{}-{nanos}", std::process::id())
}
