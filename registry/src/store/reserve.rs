//! The index's reserve: a file of allocated blocks (`<data>/index-reserve`) kept on the data
//! directory's filesystem for the index alone.
//!
//! Blob writes stop short of a full disk (reservations keep [`super::space::FS_HEADROOM`] free),
//! but another tenant of the disk can still fill it. The index must then still take writes,
//! or no delete could free anything: so when the filesystem's free space falls below
//! [`LOW_WATER`], or an index write fails for want of space, the reserve file is removed and its
//! blocks go to the index (rocksdb's log, its next table file). Once the disk has room again the
//! reserve is taken back. The same mechanism as Pebble's "ballast" in CockroachDB.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// The reserve's size: rocksdb's preallocated log (about 1.1 × its 8 MiB memtable), its
/// manifest, and the table file of a flushed memtable, with room to spare.
pub const RESERVE: u64 = 32 << 20;
/// Free space below which the reserve is given to the index: above the free space the index
/// refuses writes below ([`super::rocks::INDEX_MIN_FREE`]), so it is given before it is needed.
pub const LOW_WATER: u64 = 24 << 20;

pub struct IndexReserve {
    path: PathBuf,
    /// The reserve file is in place.
    held: AtomicBool,
}

impl IndexReserve {
    /// The reserve of the store in `data_dir` (taken if the disk has room for it).
    pub fn new(data_dir: &std::path::Path) -> Self {
        let r = Self {
            path: data_dir.join("index-reserve"),
            held: AtomicBool::new(false),
        };
        let whole = std::fs::metadata(&r.path).is_ok_and(|m| m.len() == RESERVE);
        r.held.store(whole, Ordering::Release);
        r
    }

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Give the reserve's blocks back to the filesystem (for the index). Returns whether it was
    /// held.
    pub fn release(&self) -> bool {
        if !self.held.swap(false, Ordering::AcqRel) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::warn!(
                    bytes = RESERVE,
                    "the disk is full: released the index's reserve so that deletes can still free space"
                );
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "releasing the index's reserve failed");
                false
            }
        }
    }

    /// Look at the filesystem's free space `available`: give the reserve up when it is nearly
    /// gone, take it (back) when there is room for it and `headroom` more.
    pub fn balance(&self, available: u64, headroom: u64) {
        if self.is_held() {
            if available < LOW_WATER {
                self.release();
            }
        } else if available >= RESERVE + headroom + LOW_WATER {
            if let Err(e) = self.take() {
                tracing::warn!(error = %e, "taking the index's reserve failed");
            }
        }
    }

    /// Allocate the reserve file (blocks, not a sparse file).
    fn take(&self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.with_extension("new");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let allocated = rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, RESERVE)
            .map_err(std::io::Error::from);
        if let Err(e) = allocated.and_then(|()| f.sync_all()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &self.path)?;
        self.held.store(true, Ordering::Release);
        tracing::info!(bytes = RESERVE, "took the index's reserve");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_taken_with_room_and_given_up_without() {
        let dir = tempfile::tempdir().unwrap();
        let r = IndexReserve::new(dir.path());
        assert!(!r.is_held());
        r.balance(RESERVE, 0);
        assert!(
            !r.is_held(),
            "not without room for it and the low water mark"
        );
        r.balance(10 * RESERVE, 0);
        assert!(r.is_held());
        let m = std::fs::metadata(dir.path().join("index-reserve")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(m.blocks() * 512 >= RESERVE, "allocated, not sparse");
        r.balance(LOW_WATER, 0);
        assert!(r.is_held(), "kept at the low water mark");
        r.balance(LOW_WATER - 1, 0);
        assert!(!r.is_held());
        assert!(!dir.path().join("index-reserve").exists());
        assert!(!IndexReserve::new(dir.path()).is_held());
    }
}
