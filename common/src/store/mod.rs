//! The fleet's shared state, as one small trait with two implementations:
//!
//! - [`RedisStore`]: what a deployed fleet uses (Redis runs with `noeviction`).
//! - [`MemoryStore`]: the embedded mode's map, with the same TTL semantics.
//!
//! Every write carries a TTL, since nothing else would ever free a job's keys, and writes are
//! keyed deterministically, so a redelivered task overwrites or no-ops instead of double-counting.
//! [`Store::put_if_absent`] is the compare-and-set a claim needs (duplicate submissions).
//! [`parts`] stores a value too large for one store value (a job certificate) as parts.

mod memory;
pub mod parts;
mod redis;

use std::future::Future;
use std::time::Duration;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

#[derive(Debug, thiserror::Error)]
#[error("store {op} {key}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    pub message: String,
    /// The store could not be reached or did not answer in time: worth retrying later. Otherwise
    /// the store refused this operation on this key (a key of the wrong type, say), and
    /// retrying the same operation cannot succeed.
    pub unavailable: bool,
}

impl StoreError {
    /// The store refused `op` on `key`.
    pub fn refused(op: &'static str, key: &str, message: impl Into<String>) -> StoreError {
        StoreError {
            op,
            key: key.to_string(),
            message: message.into(),
            unavailable: false,
        }
    }
}

/// What the coordinator, the workers and clients need from a key-value store.
pub trait Store: Clone + Send + Sync + 'static {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Writes `value` with a TTL, replacing any previous value.
    fn put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes many keys with one TTL in one round trip.
    fn put_all(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes `value` with a TTL only if `key` does not exist; returns whether it wrote.
    fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets one field of the hash at `key` and (re)sets the hash's TTL.
    fn put_field(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Sets many fields of the hash at `key` in one round trip and (re)sets its TTL.
    fn put_fields(
        &self,
        key: &str,
        fields: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes one field of the hash at `key`.
    fn delete_field(
        &self,
        key: &str,
        field: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes or renews the lease at `key` for `holder`: true when `holder` now holds it for
    /// `ttl`, false when someone else does.
    fn lease(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Whether each of `keys` exists, in one round trip.
    fn exist(&self, keys: &[String]) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;

    /// Every field of the hash at `key` (empty when absent).
    fn fields(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;

    /// Seconds left on `key`, or `None` if it does not exist or never expires.
    fn ttl(&self, key: &str) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// Deletes `keys`; returns how many existed.
    fn delete(&self, keys: &[String]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Bytes in the value at `key` (0 when absent): what a reader checks before reading a
    /// value whole or in ranges.
    fn len(&self, key: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Up to `len` bytes of the value at `key` from byte `start` (fewer past its end).
    fn get_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    /// Appends `bytes` to the value at `key` (created when absent) and sets its TTL, atomically:
    /// how a large value is written a block at a time.
    fn append(
        &self,
        key: &str,
        bytes: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}
