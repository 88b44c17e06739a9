//! Values larger than one store value should be: a job certificate holds every proof of its
//! job, and past a few hundred tiles it outgrows what one Redis value may hold (512 MB) and what
//! one round trip should carry. Such a value is stored as **parts** of at most
//! [`PART_BYTES`] under `<key>:part:<i>`, and a small **manifest** at `<key>` — part count,
//! length and SHA-256 of the whole — written after every part, so a reader that finds the
//! manifest finds every part it names. Reading checks the length and the digest, so a part
//! that expired or was overwritten is an error, never a silently different value.
//!
//! Writing the same value again writes the same keys (idempotent); the parts of an older,
//! longer value under the same key are left to their TTL, unreachable from the new manifest.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{Store, StoreError};

/// The part size writers use: well under Redis's `proto-max-bulk-len` and small enough that
/// one part in flight costs a process little memory.
pub const PART_BYTES: usize = 16 << 20;
/// The largest part size a reader accepts from a manifest: 64 MiB.
pub const MAX_PART_BYTES: u64 = 64 << 20;

/// What `<key>` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub parts: u32,
    /// Bytes of the whole value.
    pub bytes: u64,
    /// Bytes of every part but the last (which may be shorter).
    pub part_bytes: u64,
    /// SHA-256 of the whole value, hex.
    pub sha256: String,
}

/// The key of part `index` of the value at `key`.
pub fn part_key(key: &str, index: u32) -> String {
    format!("{key}:part:{index}")
}

/// A parted value that cannot be read whole.
#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key} holds no readable manifest of parts")]
    Manifest { key: String },
    #[error("{key} is {bytes} bytes, over the {max}-byte limit for reading it")]
    TooLarge { key: String, bytes: u64, max: u64 },
    #[error("part {part} of {key} is missing (expired or deleted)")]
    Missing { key: String, part: u32 },
    #[error("the parts of {key} are not the value its manifest names: {why}")]
    Mismatch { key: String, why: String },
}

/// Writes `value` as parts of at most `part_bytes`, then its manifest; returns the manifest.
pub async fn put_parts<S: Store>(
    store: &S,
    key: &str,
    value: &[u8],
    part_bytes: usize,
    ttl: Duration,
) -> Result<Manifest, StoreError> {
    let part_bytes = part_bytes.max(1);
    let mut parts = 0u32;
    for chunk in value.chunks(part_bytes) {
        store.put(&part_key(key, parts), chunk, ttl).await?;
        parts += 1;
    }
    let manifest = Manifest {
        parts,
        bytes: value.len() as u64,
        part_bytes: part_bytes as u64,
        sha256: hex::encode(sha2::Sha256::digest(value)),
    };
    let body = serde_json::to_vec(&manifest).unwrap_or_default();
    store.put(key, &body, ttl).await?;
    Ok(manifest)
}

/// The manifest at `key`, if there is one.
pub async fn manifest<S: Store>(store: &S, key: &str) -> Result<Option<Manifest>, PartsError> {
    let Some(body) = store.get(key).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|_| PartsError::Manifest { key: key.into() })
}

/// Reads the parted value at `key` whole (`None` when there is no manifest), refusing one over
/// `max_bytes` before reading any part, and a part longer than the manifest's part size before
/// reading it: what a reader allocates is bounded by what it accepts, not by what it is told.
pub async fn get_parts<S: Store>(
    store: &S,
    key: &str,
    max_bytes: u64,
) -> Result<Option<Vec<u8>>, PartsError> {
    let Some(manifest) = manifest(store, key).await? else {
        return Ok(None);
    };
    if manifest.bytes > max_bytes {
        return Err(PartsError::TooLarge {
            key: key.into(),
            bytes: manifest.bytes,
            max: max_bytes,
        });
    }
    let mismatch = |why: String| PartsError::Mismatch {
        key: key.into(),
        why,
    };
    let expected_parts = manifest.bytes.div_ceil(manifest.part_bytes.max(1));
    if (manifest.part_bytes == 0 && manifest.bytes > 0)
        || manifest.part_bytes > MAX_PART_BYTES
        || u64::from(manifest.parts) != expected_parts
    {
        return Err(PartsError::Manifest { key: key.into() });
    }
    // Grown as parts arrive: a manifest's claim alone never makes a reader allocate.
    let mut value = Vec::with_capacity(manifest.bytes.min(MAX_PART_BYTES) as usize);
    for part in 0..manifest.parts {
        let part_key = part_key(key, part);
        let len = store.len(&part_key).await?;
        if len > manifest.part_bytes {
            return Err(mismatch(format!("part {part} is {len} bytes")));
        }
        let Some(bytes) = store.get(&part_key).await? else {
            return Err(PartsError::Missing {
                key: key.into(),
                part,
            });
        };
        if value.len() as u64 + bytes.len() as u64 > manifest.bytes {
            return Err(mismatch(format!("longer than {} bytes", manifest.bytes)));
        }
        value.extend_from_slice(&bytes);
    }
    if value.len() as u64 != manifest.bytes {
        return Err(mismatch(format!(
            "{} bytes, not {}",
            value.len(),
            manifest.bytes
        )));
    }
    if hex::encode(sha2::Sha256::digest(&value)) != manifest.sha256 {
        return Err(mismatch("a different SHA-256".into()));
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_value_comes_back_whole_and_a_changed_part_is_caught() {
        let store = MemoryStore::new();
        let value: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let manifest = put_parts(&store, "k", &value, 300, TTL).await.unwrap();
        assert_eq!((manifest.parts, manifest.bytes), (4, 1000));
        assert_eq!(
            get_parts(&store, "k", 1000).await.unwrap(),
            Some(value.clone())
        );
        assert!(get_parts(&store, "absent", 1000).await.unwrap().is_none());
        assert!(matches!(
            get_parts(&store, "k", 999).await,
            Err(PartsError::TooLarge { .. })
        ));

        let mut changed = value[300..600].to_vec();
        changed[5] ^= 1;
        store.put(&part_key("k", 1), &changed, TTL).await.unwrap();
        assert!(matches!(
            get_parts(&store, "k", 1000).await,
            Err(PartsError::Mismatch { .. })
        ));
        store.delete(&[part_key("k", 3)]).await.unwrap();
        assert!(matches!(
            get_parts(&store, "k", 1000).await,
            Err(PartsError::Missing { part: 3, .. })
        ));
        // A manifest may not make a reader take parts of any size.
        let inflated = format!(
            r#"{{"parts":1,"bytes":900,"part_bytes":{},"sha256":"00"}}"#,
            MAX_PART_BYTES + 1
        );
        store.put("k", inflated.as_bytes(), TTL).await.unwrap();
        assert!(matches!(
            get_parts(&store, "k", 1000).await,
            Err(PartsError::Manifest { .. })
        ));
        store.put("k", b"not a manifest", TTL).await.unwrap();
        assert!(matches!(
            get_parts(&store, "k", 1000).await,
            Err(PartsError::Manifest { .. })
        ));
    }

    #[tokio::test]
    async fn an_empty_value_has_no_parts() {
        let store = MemoryStore::new();
        let manifest = put_parts(&store, "e", &[], 16, TTL).await.unwrap();
        assert_eq!(manifest.parts, 0);
        assert_eq!(get_parts(&store, "e", 0).await.unwrap(), Some(Vec::new()));
    }
}
