//! [`Store`] over Redis, through a connection manager that reconnects by itself. Every round
//! trip is timed into `starkscale_redis_op_duration_seconds`.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use super::{ttl_secs, Store, StoreError};
use crate::metrics;

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

fn err<'k>(op: &'static str, key: &'k str) -> impl Fn(redis::RedisError) -> StoreError + 'k {
    move |e| StoreError {
        op,
        key: key.to_string(),
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
    pub async fn connect(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(err("connect", url))?;
        let conn = ConnectionManager::new(client)
            .await
            .map_err(err("connect", url))?;
        Ok(RedisStore { conn })
    }
}

impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        timed("get", conn.get(key)).await.map_err(err("GET", key))
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
