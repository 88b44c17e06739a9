//! Types shared by every STARKScale crate.
//!
//! - [`tensor`]: integer matrices and vectors ([`Matrix`], [`Vector`]) with their [`Dtype`],
//!   loaded from JSON arrays or NumPy `.npy` files with range and shape checks.
//! - [`job`]: the job format ([`JobSpec`]), its validation and its JSON Schema.
//! - [`plan`]: how a matrix is cut into tiles ([`TilePlan`]) and how tall tiles should be.
//! - [`messages`]: tasks, task events, and the Redis keyspace ([`messages::Keys`]).
//! - [`access`]: each role's Redis ACL rules and RabbitMQ permissions, and the files that
//!   create a deployment's accounts.
//! - [`config`]: where the fleet is ([`config::FleetConfig`]), shared by every process.
//! - [`tls`]: TLS to RabbitMQ and Redis: the CA to trust and the client certificate to present.
//! - [`broker`]: RabbitMQ topology and confirmed publishing ([`broker::AmqpBroker`]).
//! - [`store`]: Redis with a TTL on every write ([`store::RedisStore`]).
//! - [`metrics`]: every Prometheus metric's name, description and buckets, and `/metrics`.
//! - [`rss`]: a process's peak resident memory, reset and read around each proof.
//!
//! Nothing here touches the proving stack; `starkscale-cairo` owns that.

pub mod access;
pub mod broker;
pub mod config;
pub mod data_dir;
pub mod faults;
pub mod job;
pub mod messages;
pub mod metrics;
pub mod plan;
pub mod rss;
pub mod store;
pub mod tensor;
pub mod tls;

pub use job::{JobError, JobLimits, JobSpec};
pub use plan::{TilePlan, TileSpec};
pub use tensor::{Dtype, Matrix, TensorError, Vector};
