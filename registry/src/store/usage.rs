//! What the cache knows of use: which blobs are being read or written right now (leases), and
//! when each blob, manifest and hub record was last used (the LRU order).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Blobs in use: streamed to a client or being downloaded. Eviction never deletes a leased blob.
#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<String, usize>>,
}

impl Leases {
    /// Hold `digest` until the returned guard drops.
    pub fn lease(self: &Arc<Self>, digest: &str) -> Lease {
        *self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.to_string())
            .or_default() += 1;
        Lease {
            leases: self.clone(),
            digest: digest.to_string(),
        }
    }

    pub fn is_leased(&self, digest: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(digest)
    }

    /// Every leased digest, now.
    pub fn snapshot(&self) -> std::collections::HashSet<String> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// One use of a blob; the blob may be evicted again once every lease on it is dropped.
pub struct Lease {
    leases: Arc<Leases>,
    digest: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut held = self.leases.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.digest);
            }
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("digest", &self.digest)
            .finish()
    }
}

/// Last-use times not yet written to the index: recording a use is a map insert, and the map is
/// written out in one unsynced batch every few seconds (a crash forgets a few seconds of recency,
/// never content).
#[derive(Default)]
pub struct AccessLog {
    pending: Mutex<HashMap<String, u64>>,
}

impl AccessLog {
    pub fn touch(&self, key: &str, at: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match p.get_mut(key) {
            Some(t) => *t = (*t).max(at),
            None => {
                p.insert(key.to_string(), at);
            }
        }
    }

    /// Everything recorded since the last drain.
    pub fn drain(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// Put back what a failed write could not store (newer touches win).
    pub fn restore(&self, entries: Vec<(String, u64)>) {
        for (k, at) in entries {
            self.touch(&k, at);
        }
    }

    /// The last use of `key` recorded since the last drain.
    pub fn last(&self, key: &str) -> Option<u64> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// A copy of what is pending (the eviction planner merges it with the index).
    pub fn pending(&self) -> HashMap<String, u64> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_and_release() {
        let l = Arc::new(Leases::default());
        let a = l.lease("d");
        let b = l.lease("d");
        drop(a);
        assert!(l.is_leased("d"));
        drop(b);
        assert!(!l.is_leased("d"));
    }

    #[test]
    fn access_keeps_the_newest() {
        let a = AccessLog::default();
        a.touch("k", 5);
        a.touch("k", 3);
        assert_eq!(a.drain(), vec![("k".to_string(), 5)]);
        assert!(a.drain().is_empty());
    }
}
