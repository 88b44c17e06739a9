//! [`Store`] inside one process: a map with expiry times, for the embedded mode.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Store, StoreError};

enum Value {
    Bytes(Vec<u8>),
    Hash(BTreeMap<String, Vec<u8>>),
}

struct Entry {
    value: Value,
    expires: Instant,
}

/// A map of keys with TTLs; expired keys read as absent. Clones share the map.
#[derive(Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<HashMap<String, Entry>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.live().len())
            .finish()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The map with expired keys dropped (so memory does not grow with finished jobs).
    fn live(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, e| e.expires > now);
        map
    }

    /// Keys currently held (tests check that finished jobs leave none behind).
    pub fn keys(&self) -> Vec<String> {
        self.live().keys().cloned().collect()
    }
}

fn wrong_type(op: &'static str, key: &str) -> StoreError {
    StoreError {
        op,
        key: key.to_string(),
        message: "key holds the wrong kind of value".into(),
    }
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.live().get(key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(Value::Hash(_)) => Err(wrong_type("GET", key)),
        }
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let entry = Entry {
            value: Value::Bytes(value.to_vec()),
            expires: Instant::now() + ttl,
        };
        self.live().insert(key.to_string(), entry);
        Ok(())
    }

    async fn put_all(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        let mut map = self.live();
        for (key, value) in entries {
            let value = Value::Bytes(value);
            map.insert(key, Entry { value, expires });
        }
        Ok(())
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut map = self.live();
        if map.contains_key(key) {
            return Ok(false);
        }
        let entry = Entry {
            value: Value::Bytes(value.to_vec()),
            expires: Instant::now() + ttl,
        };
        map.insert(key.to_string(), entry);
        Ok(true)
    }

    async fn put_field(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut map = self.live();
        let entry = map.entry(key.to_string()).or_insert_with(|| Entry {
            value: Value::Hash(BTreeMap::new()),
            expires: Instant::now(),
        });
        let Value::Hash(hash) = &mut entry.value else {
            return Err(wrong_type("HSET", key));
        };
        hash.insert(field.to_string(), value.to_vec());
        entry.expires = Instant::now() + ttl;
        Ok(())
    }

    async fn fields(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self.live().get(key).map(|e| &e.value) {
            None => Ok(Vec::new()),
            Some(Value::Hash(h)) => Ok(h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(Value::Bytes(_)) => Err(wrong_type("HGETALL", key)),
        }
    }

    async fn ttl(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let now = Instant::now();
        Ok(self
            .live()
            .get(key)
            .map(|e| e.expires.saturating_duration_since(now).as_secs()))
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        let mut map = self.live();
        Ok(keys.iter().filter(|k| map.remove(*k).is_some()).count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_expire_and_claims_happen_once() {
        let s = MemoryStore::new();
        let short = Duration::from_millis(30);
        s.put("a", b"1", short).await.unwrap();
        assert!(s.put_if_absent("b", b"x", short).await.unwrap());
        assert!(!s.put_if_absent("b", b"y", short).await.unwrap());
        assert_eq!(s.get("b").await.unwrap().as_deref(), Some(&b"x"[..]));
        s.put_field("h", "0", b"t0", short).await.unwrap();
        s.put_field("h", "1", b"t1", short).await.unwrap();
        assert_eq!(s.fields("h").await.unwrap().len(), 2);
        assert!(s.get("h").await.is_err(), "a hash is not bytes");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(s.get("a").await.unwrap(), None);
        assert!(s.fields("h").await.unwrap().is_empty());
        assert!(s.keys().is_empty());
        s.put_all(vec![("c".into(), b"3".to_vec())], short)
            .await
            .unwrap();
        assert_eq!(s.delete(&["c".into(), "d".into()]).await.unwrap(), 1);
    }
}
