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

#[derive(Default)]
struct Map {
    entries: HashMap<String, Entry>,
    writes: usize,
}

/// How many writes between sweeps of expired keys: each access checks its own key's expiry, and
/// an occasional sweep keeps finished jobs from accumulating without scanning on every call.
const SWEEP_EVERY: usize = 1024;

/// A map of keys with TTLs; expired keys read as absent. Clones share the map.
#[derive(Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<Map>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.keys().len())
            .finish()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keys currently held (tests check that finished jobs leave none behind).
    pub fn keys(&self) -> Vec<String> {
        let now = Instant::now();
        let map = self.lock();
        map.entries
            .iter()
            .filter(|(_, e)| e.expires > now)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Map {
    /// The live entry at `key`; an expired one is removed.
    fn live(&mut self, key: &str) -> Option<&mut Entry> {
        if self.entries.get(key)?.expires <= Instant::now() {
            self.entries.remove(key);
            return None;
        }
        self.entries.get_mut(key)
    }

    /// Counts a write and, every [`SWEEP_EVERY`] writes, drops expired keys.
    fn wrote(&mut self, n: usize) {
        self.writes += n;
        if self.writes >= SWEEP_EVERY {
            self.writes = 0;
            let now = Instant::now();
            self.entries.retain(|_, e| e.expires > now);
        }
    }
}

fn wrong_type(op: &'static str, key: &str) -> StoreError {
    StoreError::refused(op, key, "key holds the wrong kind of value")
}

impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.lock().live(key).map(|e| &e.value) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b.clone())),
            Some(Value::Hash(_)) => Err(wrong_type("GET", key)),
        }
    }

    async fn len(&self, key: &str) -> Result<u64, StoreError> {
        match self.lock().live(key).map(|e| &e.value) {
            None => Ok(0),
            Some(Value::Bytes(b)) => Ok(b.len() as u64),
            Some(Value::Hash(_)) => Err(wrong_type("STRLEN", key)),
        }
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        match self.lock().live(key).map(|e| &e.value) {
            None => Ok(Vec::new()),
            Some(Value::Bytes(b)) => {
                let from = (start as usize).min(b.len());
                let to = from.saturating_add(len as usize).min(b.len());
                Ok(b[from..to].to_vec())
            }
            Some(Value::Hash(_)) => Err(wrong_type("GETRANGE", key)),
        }
    }

    async fn append(&self, key: &str, bytes: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let mut map = self.lock();
        let expires = Instant::now() + ttl;
        match map.live(key) {
            Some(Entry {
                value: Value::Bytes(b),
                expires: at,
            }) => {
                b.extend_from_slice(bytes);
                *at = expires;
            }
            Some(_) => return Err(wrong_type("APPEND", key)),
            None => {
                let value = Value::Bytes(bytes.to_vec());
                map.entries
                    .insert(key.to_string(), Entry { value, expires });
            }
        }
        map.wrote(1);
        Ok(())
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let entry = Entry {
            value: Value::Bytes(value.to_vec()),
            expires: Instant::now() + ttl,
        };
        let mut map = self.lock();
        map.entries.insert(key.to_string(), entry);
        map.wrote(1);
        Ok(())
    }

    async fn put_all(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        let mut map = self.lock();
        let n = entries.len();
        for (key, value) in entries {
            let value = Value::Bytes(value);
            map.entries.insert(key, Entry { value, expires });
        }
        map.wrote(n);
        Ok(())
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut map = self.lock();
        if map.live(key).is_some() {
            return Ok(false);
        }
        let entry = Entry {
            value: Value::Bytes(value.to_vec()),
            expires: Instant::now() + ttl,
        };
        map.entries.insert(key.to_string(), entry);
        map.wrote(1);
        Ok(true)
    }

    async fn put_field(
        &self,
        key: &str,
        field: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut map = self.lock();
        map.live(key); // an expired hash starts over
        map.wrote(1);
        let entry = map.entries.entry(key.to_string()).or_insert_with(|| Entry {
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

    async fn put_fields(
        &self,
        key: &str,
        fields: Vec<(String, Vec<u8>)>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        for (field, value) in fields {
            self.put_field(key, &field, &value, ttl).await?;
        }
        Ok(())
    }

    async fn delete_field(&self, key: &str, field: &str) -> Result<(), StoreError> {
        match self.lock().live(key).map(|e| &mut e.value) {
            None => Ok(()),
            Some(Value::Hash(h)) => {
                h.remove(field);
                Ok(())
            }
            Some(Value::Bytes(_)) => Err(wrong_type("HDEL", key)),
        }
    }

    async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut map = self.lock();
        let held_by_other = match map.live(key).map(|e| &e.value) {
            Some(Value::Bytes(b)) => b.as_slice() != holder.as_bytes(),
            Some(Value::Hash(_)) => return Err(wrong_type("lease", key)),
            None => false,
        };
        if held_by_other {
            return Ok(false);
        }
        let entry = Entry {
            value: Value::Bytes(holder.as_bytes().to_vec()),
            expires: Instant::now() + ttl,
        };
        map.entries.insert(key.to_string(), entry);
        Ok(true)
    }

    async fn exist(&self, keys: &[String]) -> Result<Vec<bool>, StoreError> {
        let mut map = self.lock();
        Ok(keys.iter().map(|k| map.live(k).is_some()).collect())
    }

    async fn fields(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match self.lock().live(key).map(|e| &e.value) {
            None => Ok(Vec::new()),
            Some(Value::Hash(h)) => Ok(h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(Value::Bytes(_)) => Err(wrong_type("HGETALL", key)),
        }
    }

    async fn ttl(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .live(key)
            .map(|e| e.expires.saturating_duration_since(now).as_secs()))
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        let mut map = self.lock();
        let live = keys.iter().filter(|k| map.live(k).is_some()).count();
        for key in keys {
            map.entries.remove(key);
        }
        Ok(live as u64)
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

    #[tokio::test]
    async fn a_lease_has_one_holder_until_it_expires() {
        let s = MemoryStore::new();
        let short = Duration::from_millis(30);
        assert!(s.lease("l", "one", short).await.unwrap());
        assert!(!s.lease("l", "two", short).await.unwrap());
        assert!(s.lease("l", "one", short).await.unwrap(), "renewed");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(s.lease("l", "two", short).await.unwrap(), "taken over");
        assert!(!s.lease("l", "one", short).await.unwrap());
        s.put_fields(
            "h",
            vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
            short,
        )
        .await
        .unwrap();
        s.delete_field("h", "a").await.unwrap();
        assert_eq!(
            s.fields("h").await.unwrap(),
            vec![("b".into(), b"2".to_vec())]
        );
        assert_eq!(
            s.exist(&["h".into(), "zz".into()]).await.unwrap(),
            vec![true, false]
        );
    }
}
