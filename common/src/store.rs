//! Redis: the fleet's shared state. Every write carries a TTL (Redis runs with `noeviction`, so
//! nothing else would ever free a job's keys), and writes are keyed deterministically so that a
//! redelivered task overwrites or no-ops instead of double-counting.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

#[derive(Debug, thiserror::Error)]
#[error("redis {op} {key}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    pub message: String,
}

/// A Redis connection that reconnects by itself.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}

impl RedisStore {
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let err = |e: redis::RedisError| StoreError {
            op: "connect",
            key: url.to_string(),
            message: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(err)?;
        let conn = ConnectionManager::new(client).await.map_err(err)?;
        Ok(RedisStore { conn })
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        conn.get(key).await.map_err(|e| StoreError {
            op: "GET",
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    /// Writes `value` with a TTL, replacing any previous value.
    pub async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        conn.set_ex::<_, _, ()>(key, value, ttl_secs(ttl))
            .await
            .map_err(|e| StoreError {
                op: "SET",
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    /// Writes `value` with a TTL only if `key` does not exist; returns whether it wrote.
    pub async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs(ttl))
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreError {
                op: "SET NX",
                key: key.to_string(),
                message: e.to_string(),
            })?;
        Ok(reply.is_some())
    }

    /// Seconds left on `key`, or `None` if it does not exist or never expires.
    pub async fn ttl(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let mut conn = self.conn.clone();
        let secs: i64 = conn.ttl(key).await.map_err(|e| StoreError {
            op: "TTL",
            key: key.to_string(),
            message: e.to_string(),
        })?;
        Ok(u64::try_from(secs).ok())
    }

    pub async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        conn.del(keys).await.map_err(|e| StoreError {
            op: "DEL",
            key: keys.join(" "),
            message: e.to_string(),
        })
    }
}
