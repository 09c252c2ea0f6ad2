//! The prefix KV cache: each task prefix is run once per model and shared, read-only, by every batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::kv::KvCache;

/// Identifies a prefix: a hash of the model id and the prefix token ids.
pub type PrefixKey = [u8; 32];

/// Computes the key of `ids` under model `model_id`.
pub fn prefix_key(model_id: &str, ids: &[u32]) -> PrefixKey {
    let mut h = Sha256::new();
    h.update((model_id.len() as u64).to_le_bytes());
    h.update(model_id.as_bytes());
    for id in ids {
        h.update(id.to_le_bytes());
    }
    h.finalize().into()
}

/// A bounded LRU map from prefix key to its KV cache.
pub struct PrefixCache {
    entries: Mutex<Vec<(PrefixKey, Arc<KvCache>)>>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixCacheStats {
    /// Lookups served from the cache.
    pub hits: u64,
    /// Lookups that ran the prefix through the model.
    pub misses: u64,
    /// Prefixes held now.
    pub entries: usize,
}

impl PrefixCache {
    /// A cache holding at most `capacity` prefixes (least recently used evicted first).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            capacity: capacity.max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Returns the cached KV for `key`, computing it with `compute` on a miss.
    ///
    /// The lock is not held while computing: the engine runs on one thread, and a duplicate
    /// computation on a race would only cost time, never correctness.
    pub fn get_or_compute<E>(
        &self,
        key: PrefixKey,
        compute: impl FnOnce() -> Result<KvCache, E>,
    ) -> Result<Arc<KvCache>, E> {
        {
            let mut entries = self.entries.lock().expect("prefix cache lock poisoned");
            if let Some(pos) = entries.iter().position(|(k, _)| *k == key) {
                let entry = entries.remove(pos);
                let kv = entry.1.clone();
                entries.push(entry);
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(kv);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let kv = Arc::new(compute()?);
        let mut entries = self.entries.lock().expect("prefix cache lock poisoned");
        if entries.len() >= self.capacity {
            entries.remove(0);
        }
        entries.push((key, kv.clone()));
        Ok(kv)
    }

    /// Current counters.
    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self
                .entries
                .lock()
                .expect("prefix cache lock poisoned")
                .len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_model_and_ids() {
        assert_eq!(prefix_key("m", &[1, 2]), prefix_key("m", &[1, 2]));
        assert_ne!(prefix_key("m", &[1, 2]), prefix_key("m", &[2, 1]));
        assert_ne!(prefix_key("m", &[1, 2]), prefix_key("n", &[1, 2]));
    }

    #[test]
    fn lru_hits_misses_and_eviction() {
        let cache = PrefixCache::new(2);
        let empty = || Ok::<_, ()>(KvCache { layers: vec![] });
        let (a, b, c) = (
            prefix_key("m", &[1]),
            prefix_key("m", &[2]),
            prefix_key("m", &[3]),
        );
        cache.get_or_compute(a, empty).unwrap();
        cache.get_or_compute(b, empty).unwrap();
        cache.get_or_compute(a, || Err(())).unwrap(); // hit: compute not called
        cache.get_or_compute(c, empty).unwrap(); // evicts b, the least recently used
        assert!(cache.get_or_compute(b, || Err(())).is_err());
        assert_eq!(
            cache.stats(),
            PrefixCacheStats {
                hits: 1,
                misses: 4,
                entries: 2
            }
        );
    }
}
