//! [`Store`] over Redis, through a connection manager that reconnects by itself. Every round
//! trip is bounded by [`RESPONSE_TIMEOUT`] and timed into `starkscale_redis_op_duration_seconds`;
//! every error says whether Redis was unavailable (retry later) or refused the operation.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ClientTlsConfig, ErrorKind, RedisError, TlsCertificates};

use super::{ttl_secs, Store, StoreError};
use crate::metrics;
use crate::tls::Tls;

/// A Redis connection that reconnects by itself. Clones share it.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// Longest wait for one reply: a Redis that stops answering is an outage, not a slow call.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether an error means Redis is (for now) unreachable, loading, out of memory or read-only,
/// rather than refusing this operation on this key.
fn unavailable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::ReadOnly
        )
        || e.code() == Some("OOM")
}

fn err<'k>(op: &'static str, key: &'k str) -> impl Fn(RedisError) -> StoreError + 'k {
    move |e| StoreError {
        op,
        key: key.to_string(),
        unavailable: unavailable(&e),
        message: e.to_string(),
    }
}

/// Runs one Redis round trip, recording its latency under `op` (whatever its result).
async fn timed<T>(op: &'static str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let result = call.await;
    metrics::redis_op(op, started.elapsed());
    result
}

impl RedisStore {
    /// Connects to `url`; errors name it with its password redacted.
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        Self::connect_with(url, &Tls::default()).await
    }

    /// [`RedisStore::connect`] with TLS material for a `rediss://` URL.
    pub async fn connect_with(url: &str, tls: &Tls) -> Result<RedisStore, StoreError> {
        let shown = crate::broker::redact(url);
        let client = if tls.is_empty() {
            redis::Client::open(url)
        } else {
            redis::Client::build_with_tls(
                url,
                TlsCertificates {
                    client_tls: tls.identity.as_ref().map(|id| ClientTlsConfig {
                        client_cert: id.cert.clone(),
                        client_key: id.key.clone(),
                    }),
                    root_cert: tls.ca.clone(),
                },
            )
        }
        .map_err(err("connect", &shown))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(2000);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(err("connect", &shown))?;
        Ok(RedisStore { conn })
    }
}

impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        timed("get", conn.get(key)).await.map_err(err("GET", key))
    }

    async fn len(&self, key: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        timed("strlen", conn.strlen(key))
            .await
            .map_err(err("STRLEN", key))
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let (first, last) = (start as isize, (start + len - 1) as isize);
        timed("getrange", conn.getrange(key, first, last))
            .await
            .map_err(err("GETRANGE", key))
    }

    async fn append(&self, key: &str, bytes: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .append(key, bytes)
            .ignore()
            .expire(key, ttl_secs(ttl) as i64)
            .ignore();
        let mut conn = self.conn.clone();
        timed("append", pipe.query_async::<()>(&mut conn))
            .await
            .map_err(err("APPEND", key))
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        timed("set", conn.set_ex::<_, _, ()>(key, value, ttl_secs(ttl)))
            .await
            .map_err(err("SET", key))
    }

    async fn put_all(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        let first = first.clone();
        let mut pipe = redis::pipe();
        for (key, value) in &entries {
            pipe.set_ex(key, value, ttl_secs(ttl)).ignore();
        }
        let mut conn = self.conn.clone();
        timed("set_many", pipe.query_async::<()>(&mut conn))
            .await
            .map_err(err("SET (pipelined)", &first))
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs(ttl));
        let reply: Option<String> = timed("set_nx", cmd.query_async(&mut conn))
            .await
            .map_err(err("SET NX", key))?;
        Ok(reply.is_some())
    }

    async fn put_field(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(key, field, value)
            .ignore()
            .expire(key, ttl_secs(ttl) as i64)
            .ignore();
        timed("hset", pipe.query_async::<()>(&mut conn))
            .await
            .map_err(err("HSET", key))
    }

    async fn put_fields(
        &self,
        key: &str,
        fields: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if fields.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(key, &fields)
            .ignore()
            .expire(key, ttl_secs(ttl) as i64)
            .ignore();
        timed("hset", pipe.query_async::<()>(&mut conn))
            .await
            .map_err(err("HSET", key))
    }

    async fn delete_field(&self, key: &str, field: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        timed("hdel", conn.hdel::<_, _, ()>(key, field))
            .await
            .map_err(err("HDEL", key))
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        // Take the lease when it is free, renew it when it is ours, in one atomic step.
        let script = redis::Script::new(
            r"local v = redis.call('GET', KEYS[1])
              if v == false or v == ARGV[1] then
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                return 1
              end
              return 0",
        );
        let mut conn = self.conn.clone();
        let millis = ttl.as_millis().max(1) as u64;
        let mut invocation = script.key(key);
        invocation.arg(holder).arg(millis);
        let held: i64 = timed("lease", invocation.invoke_async(&mut conn))
            .await
            .map_err(err("lease", key))?;
        Ok(held == 1)
    }

    async fn exist(&self, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.exists(key);
        }
        let mut conn = self.conn.clone();
        timed("exists", pipe.query_async::<Vec<bool>>(&mut conn))
            .await
            .map_err(err("EXISTS (pipelined)", first))
    }

    async fn fields(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut conn = self.conn.clone();
        timed("hgetall", conn.hgetall(key))
            .await
            .map_err(err("HGETALL", key))
    }

    async fn ttl(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let secs: i64 = timed("ttl", conn.ttl(key)).await.map_err(err("TTL", key))?;
        Ok(u64::try_from(secs).ok())
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        timed("del", conn.del(keys))
            .await
            .map_err(err("DEL", &keys[0]))
    }
}
