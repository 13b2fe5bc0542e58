//! The content store: verified blob files on disk plus the [`Index`].
//!
//! Crash story of a blob write: bytes go to `tmp/<uuid>` while hashing; once the digest is
//! verified the file is fsynced, renamed to `blobs/<alg>/<xx>/<hex>` and the directory
//! fsynced; only then is it indexed (one durable batch). A crash before the rename leaves a temp
//! file (removed on start-up); between rename and index, an unindexed file (removed on
//! start-up); after, a complete blob. Start-up also drops records whose file is gone or short.

mod files;
pub mod gc;
pub mod index;
pub mod reserve;
mod rocks;
pub mod space;
pub mod usage;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::Digest;

pub use files::{BlobFiles, Checkpoint, TempBlob, TempWriter};
pub use gc::{Protection, Root};
pub use index::{
    hub_key, hub_repo_prefix, BlobRecord, Health, HubFileRecord, HubRevisionRecord, HubSource,
    Index, ManifestPut, ManifestRecord, Origin, PinRecord, PinTarget, RecipeRecord, UploadRecord,
};
pub use rocks::RocksIndex;
pub use space::{Capacity, Reservation, Space, SpaceConfig};
pub use usage::{AccessLog, Lease, Leases};
pub use verify::{DanglingManifest, VerifyReport};

/// Failures of the store. Callers map them to 500s; the detail goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index database error")]
    Db(#[source] rocksdb::Error),
    #[error("index record corrupt: {0}")]
    Corrupt(String),
    #[error("blocking task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("insufficient storage: {needed} bytes do not fit {}", no_space_detail(*.capacity, *.used, *.reserved, *.fs_available))]
    NoSpace {
        needed: u64,
        capacity: u64,
        used: u64,
        reserved: u64,
        /// Set when the filesystem's free space, not the capacity, is short.
        fs_available: Option<u64>,
    },
}

impl StoreError {
    pub(crate) fn io<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn no_space_detail(capacity: u64, used: u64, reserved: u64, fs: Option<u64>) -> String {
    match fs {
        Some(avail) => format!(
            "the filesystem ({avail} bytes available, {reserved} reserved for downloads in flight, {} kept for the index), even after evicting what may be evicted",
            space::FS_HEADROOM
        ),
        None => format!(
            "the cache (capacity {capacity}, used {used}, reserved {reserved}), even after evicting what may be evicted"
        ),
    }
}

impl StoreError {
    /// The disk (or the cache's capacity) is full: the client gets a 507, not a 500.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::NoSpace { .. } => true,
            StoreError::Io { source, .. } => {
                source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
                    || source.kind() == std::io::ErrorKind::StorageFull
            }
            StoreError::Db(e) => e.to_string().contains("No space left"),
            _ => false,
        }
    }

    /// The process (or the system) ran out of file descriptors: a 503, retry shortly.
    pub fn is_fd_exhaustion(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => crate::server::conn::is_fd_exhaustion(source),
            _ => false,
        }
    }

    /// What a client is told (paths and database details stay in the log).
    pub fn client_message(&self) -> String {
        match self {
            StoreError::NoSpace { .. } => self.to_string(),
            _ if self.is_no_space() => "insufficient storage: the disk is full".into(),
            _ if self.is_fd_exhaustion() => {
                "the agent is out of file descriptors; retry shortly".into()
            }
            _ => "internal storage error".into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Unix milliseconds (last-use times: a burst of pulls within one second still has an order).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Stripes of async locks keyed by digest: commit and delete of one digest never interleave.
struct DigestLocks(Vec<tokio::sync::Mutex<()>>);

impl DigestLocks {
    fn new() -> Self {
        Self((0..256).map(|_| tokio::sync::Mutex::new(())).collect())
    }

    fn stripe(&self, hex: &str) -> &tokio::sync::Mutex<()> {
        let b = hex.as_bytes();
        let i = b.first().copied().unwrap_or(0) as usize
            ^ ((b.get(1).copied().unwrap_or(0) as usize) << 1);
        &self.0[i % self.0.len()]
    }

    async fn lock(&self, digest: &Digest) -> tokio::sync::MutexGuard<'_, ()> {
        self.stripe(digest.digest()).lock().await
    }

    /// From a blocking thread (eviction, verification).
    fn lock_blocking(&self, digest: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
        self.stripe(hex).blocking_lock()
    }
}

/// How long a write that frees space waits for a full index to take writes again.
const FREEING_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// How the cache manages its space.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheOptions {
    pub space: SpaceConfig,
    /// A root used less than this long ago is not evicted (so a burst of new models cannot
    /// churn the whole cache).
    pub min_age_secs: u64,
    /// Hash a whole-blob read of a file not verified since start-up (or changed since) on its
    /// way out, and withhold the last byte until it matches.
    pub verify_reads: bool,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            space: SpaceConfig::default(),
            min_age_secs: 300,
            verify_reads: true,
        }
    }
}

/// Counters of the cache's lifecycle (exported as metrics).
#[derive(Clone, Default)]
pub struct CacheStats {
    pub evicted_bytes: prometheus_client::metrics::counter::Counter,
    pub evicted_blobs: prometheus_client::metrics::counter::Counter,
    pub evicted_roots: prometheus_client::metrics::counter::Counter,
    pub eviction_runs: prometheus_client::metrics::counter::Counter,
    pub reservations_refused: prometheus_client::metrics::counter::Counter,
    pub verified_blobs: prometheus_client::metrics::counter::Counter,
    pub verified_bytes: prometheus_client::metrics::counter::Counter,
    pub corrupt_blobs: prometheus_client::metrics::counter::Counter,
    pub missing_blobs: prometheus_client::metrics::counter::Counter,
    /// Bytes reached by pinned roots, as of the last plan.
    pub pinned_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What start-up reconciliation found and fixed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub blobs_indexed: u64,
    pub records_dropped: u64,
    pub orphan_files_removed: u64,
    pub temp_files_removed: u64,
    pub uploads_resumable: u64,
    pub uploads_dropped: u64,
}

#[derive(Clone)]
pub struct Store {
    index: Arc<dyn Index>,
    files: Arc<BlobFiles>,
    locks: Arc<DigestLocks>,
    space: Arc<Space>,
    leases: Arc<Leases>,
    access: Arc<AccessLog>,
    /// One eviction (or removal, or pin release) at a time.
    gc: Arc<tokio::sync::Mutex<()>>,
    options: Arc<CacheOptions>,
    stats: CacheStats,
    /// Woken when a commit takes the cache above its high watermark.
    pressure: Arc<tokio::sync::Notify>,
    /// Set at shutdown: long blocking work (a verification pass) stops early.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// Blob files known to match their digest, with the file's identity when they did.
    /// (Value: the stamp, and when it was taken, Unix nanoseconds.)
    verified: Arc<std::sync::Mutex<std::collections::HashMap<String, (FileStamp, i128)>>>,
    /// Room kept on the disk for the index, given to it when the disk fills.
    reserve: Arc<reserve::IndexReserve>,
}

/// A file's identity and change times: any write through the filesystem changes `ctime`, so a
/// file with the same stamp still holds the bytes that were verified (silent media corruption
/// does not change it: that is the scrub's to find). Timestamps advance in coarse ticks, so a
/// stamp taken less than [`RACY_NS`] after the file last changed is not trusted (git's "racily
/// clean" entries): a write in the same tick would leave it unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// How long after a file's last change its stamp is trusted.
const RACY_NS: i128 = 1_000_000_000;

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl FileStamp {
    /// Whether a stamp taken at `at` (Unix ns) can vouch for the file: its last change must be
    /// at least [`RACY_NS`] older, or a write in the same timestamp tick would go unseen.
    fn trusted_at(&self, at: i128) -> bool {
        at - self.ctime_ns >= RACY_NS
    }

    pub fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Self {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}

impl Store {
    /// Open (creating) the store in `data_dir` with the embedded rocksdb index, reconciling
    /// the index with the disk.
    pub fn open(data_dir: &Path) -> Result<(Self, Recovery)> {
        Self::open_with(data_dir, CacheOptions::default())
    }

    pub fn open_with(data_dir: &Path, options: CacheOptions) -> Result<(Self, Recovery)> {
        let files = BlobFiles::create(data_dir)?;
        // rocksdb writes as it opens (a new log, a new manifest): on a full disk, first the
        // index's reserve goes, then opening waits for room rather than failing in rocksdb.
        let reserve = reserve::IndexReserve::new(data_dir);
        let mut waited = std::time::Instant::now();
        while rocks::room_for_index(data_dir).is_err() {
            if !reserve.release() && waited.elapsed() >= std::time::Duration::from_secs(10) {
                tracing::error!(
                    data_dir = %data_dir.display(),
                    needed = rocks::INDEX_MIN_FREE,
                    "the data directory's filesystem is full: waiting for room to open the index"
                );
                waited = std::time::Instant::now();
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let index = RocksIndex::open(&data_dir.join("db"))?;
        // Taken now, before anything is served (then kept up by `watch_disk`).
        if let Ok((_, available)) = space::fs_space(data_dir) {
            reserve.balance(available, space::FS_HEADROOM);
        }
        let space = Space::new(data_dir.to_path_buf(), &options.space)
            .map_err(StoreError::io("statvfs", data_dir))?;
        Self::with_index(Arc::new(index), files, space, reserve, options)
    }

    pub fn with_index(
        index: Arc<dyn Index>,
        files: BlobFiles,
        space: Space,
        reserve: reserve::IndexReserve,
        options: CacheOptions,
    ) -> Result<(Self, Recovery)> {
        let store = Self {
            index,
            files: Arc::new(files),
            locks: Arc::new(DigestLocks::new()),
            space: Arc::new(space),
            leases: Arc::default(),
            access: Arc::default(),
            gc: Arc::default(),
            options: Arc::new(options),
            stats: CacheStats::default(),
            pressure: Arc::default(),
            closing: Arc::default(),
            verified: Arc::default(),
            reserve: Arc::new(reserve),
        };
        let recovery = store.reconcile()?;
        Ok((store, recovery))
    }

    pub fn space(&self) -> &Arc<Space> {
        &self.space
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn options(&self) -> &CacheOptions {
        &self.options
    }

    /// Resolves when a commit took the cache above its high watermark (or a timer should look).
    pub async fn pressure(&self) {
        self.pressure.notified().await
    }

    /// Background upkeep: evict above the high watermark (down to the low one) and write
    /// recorded uses to the index. Runs until the task is dropped.
    pub async fn upkeep(self) {
        let mut since_flush = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.pressure() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
            let free = self.space.over_high();
            if free > 0 {
                match self.evict(gc::Select::Lru { free }, false).await {
                    Ok(r) if r.freed_bytes < free => tracing::warn!(
                        wanted = free,
                        freed = r.freed_bytes,
                        protected_pinned = r.protected_pinned,
                        protected_in_use = r.protected_in_use,
                        protected_young = r.protected_young,
                        "cache above its high watermark; not enough is evictable yet"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "background eviction failed"),
                }
            }
            if since_flush.elapsed() >= std::time::Duration::from_secs(5) {
                // Not while an eviction runs: it relies on uses since its plan staying in memory.
                if let Ok(_g) = self.gc.try_lock() {
                    let me = self.clone();
                    let r = tokio::task::spawn_blocking(move || me.flush_access()).await;
                    if let Ok(Err(e)) = r {
                        tracing::warn!(error = %e, "recording last-use times failed");
                    }
                    since_flush = std::time::Instant::now();
                }
            }
        }
    }

    /// Watch the disk's free space: give the index its reserve when the disk is nearly full, and
    /// take it back once there is room. Runs until the task is dropped.
    pub async fn watch_disk(self) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        loop {
            tick.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok((_, available)) = space::fs_space(&me.space.dir) {
                    me.reserve.balance(available, space::FS_HEADROOM);
                }
            })
            .await;
        }
    }

    /// An index write that must succeed on a full disk, because it is how space gets freed (a
    /// delete, a cancel): if it fails for want of space, the index's reserve is released and the
    /// write is tried again until the index takes writes (rocksdb resumes by itself once it has
    /// room, within seconds), for at most [`FREEING_PATIENCE`].
    pub async fn freeing_write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&dyn Index) -> Result<T> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let deadline = std::time::Instant::now() + FREEING_PATIENCE;
        loop {
            let g = f.clone();
            match self.blocking(move |idx| g(idx)).await {
                Err(e) if e.is_no_space() && std::time::Instant::now() < deadline => {
                    self.reserve.release();
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                r => return r,
            }
        }
    }

    /// Background scrub: re-hash every blob at `rate` bytes per second, a pass at most hourly.
    pub async fn scrub(self, rate: u64) {
        loop {
            let started = std::time::Instant::now();
            match self.verify_all(Some(rate)).await {
                Ok(r) => tracing::info!(
                    checked = r.checked,
                    bytes = r.bytes,
                    corrupt = r.corrupt.len(),
                    missing = r.missing.len(),
                    "scrub pass done"
                ),
                Err(e) => tracing::error!(error = %e, "scrub pass failed"),
            }
            let hour = std::time::Duration::from_secs(3600);
            tokio::time::sleep(hour.saturating_sub(started.elapsed())).await;
        }
    }

    /// Whether the blob file with this stamp was verified since start-up (and has not changed).
    pub fn is_verified(&self, digest: &str, stamp: &FileStamp) -> bool {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .is_some_and(|(s, at)| s == stamp && s.trusted_at(*at))
    }

    /// Record that the blob file with this stamp matches its digest.
    pub fn mark_verified(&self, digest: &str, stamp: FileStamp) {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string(), (stamp, now_ns()));
    }

    fn forget_verified(&self, digest: &str) {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }

    /// Hold `digest` against eviction while it is read or written.
    pub fn lease(&self, digest: &str) -> Lease {
        self.leases.lease(digest)
    }

    /// Record a use of a blob, manifest or hub record (for the LRU order).
    pub fn touch(&self, key: &str) {
        self.access.touch(key, unix_now_ms());
    }

    /// Write recorded uses to the index (one unsynced batch).
    pub fn flush_access(&self) -> Result<()> {
        let entries = self.access.drain();
        if entries.is_empty() {
            return Ok(());
        }
        self.index.put_access(&entries).inspect_err(|_| {
            self.access.restore(entries.clone());
        })
    }

    /// Reserve space for `n` bytes about to be written, evicting least recently used cache
    /// content if they do not fit. Fails at once (before anything is written) when even
    /// eviction cannot make room.
    pub async fn reserve(&self, n: u64) -> Result<Reservation> {
        let short = match self.space.try_reserve(n) {
            Ok(r) => return Ok(r),
            Err(s) => s,
        };
        // Free what is missing, and down to the low watermark while at it; but only if that
        // makes room: a blob that cannot fit anyway must not cost the node its whole cache.
        let free = short.to_free.max(self.space.over_low().saturating_add(n));
        let could = match self.evict(gc::Select::Lru { free }, true).await {
            Ok(plan) => plan.freed_bytes >= short.to_free,
            Err(e) => {
                tracing::warn!(error = %e, "planning on-demand eviction failed");
                false
            }
        };
        let short = if could {
            if let Err(e) = self.evict(gc::Select::Lru { free }, false).await {
                tracing::warn!(error = %e, "on-demand eviction failed");
            }
            match self.space.try_reserve(n) {
                Ok(r) => return Ok(r),
                Err(s) => s,
            }
        } else {
            short
        };
        self.stats.reservations_refused.inc();
        Err(StoreError::NoSpace {
            needed: n,
            capacity: self.space.capacity(),
            used: self.space.used(),
            reserved: self.space.reserved(),
            fs_available: short.fs_available,
        })
    }

    /// Grow `room` by `n` bytes, as [`Store::reserve`] would reserve them (evicting if needed,
    /// 507 when even that cannot make room).
    pub async fn grow(&self, room: &mut Reservation, n: u64) -> Result<()> {
        let more = self.reserve(n).await?;
        room.absorb(more);
        Ok(())
    }

    pub fn index(&self) -> &dyn Index {
        &*self.index
    }

    pub fn files(&self) -> &BlobFiles {
        &self.files
    }

    /// Run a blocking index operation on the blocking pool.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Index) -> Result<T> + Send + 'static,
    {
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || f(&*index))
            .await
            .map_err(StoreError::Join)?
    }

    /// Put a verified temp blob in place and link it into `repo`.
    pub async fn commit_blob(
        &self,
        repo: &str,
        blob: TempBlob,
        digest: &Digest,
        origin: Origin,
    ) -> Result<()> {
        self.commit_blob_from(repo, blob, digest, origin, None)
            .await
    }

    /// [`Self::commit_blob`] of a fetched blob, `from_peers` of whose bytes came from peers.
    pub async fn commit_blob_from(
        &self,
        repo: &str,
        blob: TempBlob,
        digest: &Digest,
        origin: Origin,
        from_peers: Option<u64>,
    ) -> Result<()> {
        let size = blob.len();
        let _g = self.locks.lock(digest).await;
        let files = self.files.clone();
        let d = digest.clone();
        // In place already (same digest, whole file)? Then the temp file just goes. A record whose
        // file vanished or shrank is healed by installing this verified copy.
        let in_place = self.index.blob(digest.as_ref())?.is_some()
            && self.files.blob_len_of(digest.as_ref()) == Some(size);
        if in_place {
            drop(blob);
        } else {
            tokio::task::spawn_blocking(move || files.install(blob, &d))
                .await
                .map_err(StoreError::Join)??;
            // Hashed on the way in: the installed file is verified as it stands.
            if let Ok(m) = std::fs::metadata(self.files.blob_path(digest)) {
                self.mark_verified(digest.as_ref(), FileStamp::of(&m));
            }
        }
        let record = BlobRecord {
            version: 1,
            size,
            created_at: unix_now(),
            origin,
            from_peers,
        };
        let (repo, key) = (repo.to_string(), digest.to_string());
        let new = self
            .blocking(move |idx| idx.put_blob(&repo, &key, &record))
            .await?;
        if new {
            self.space.add_used(size);
            if self.space.over_high() > 0 {
                self.pressure.notify_one();
            }
        }
        self.touch(digest.as_ref());
        Ok(())
    }

    /// Mount: link a blob already held into `repo`.
    pub async fn link_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let _g = self.locks.lock(digest).await;
        if self.index.blob(digest.as_ref())?.is_none() {
            return Ok(false);
        }
        let (repo, key) = (repo.to_string(), digest.to_string());
        self.blocking(move |idx| idx.link_blob(&repo, &key)).await?;
        Ok(true)
    }

    /// Open a blob linked into `repo` for reading: the file and its size. A record whose file
    /// vanished or shrank is a miss, never a short body.
    pub async fn open_blob(&self, repo: &str, digest: &Digest) -> Result<Option<(BlobFile, u64)>> {
        if !self.index.blob_linked(repo, digest.as_ref())? {
            return Ok(None);
        }
        self.open_verified(digest).await
    }

    /// Open a blob the node holds, whichever repository it came through: content addressed and
    /// verified, so a pull-through repository may be served it.
    pub async fn open_verified(&self, digest: &Digest) -> Result<Option<(BlobFile, u64)>> {
        // Leased before the record is read: eviction either sees the lease, or has already
        // dropped the record (a miss here), or unlinks a file this reader holds open.
        let lease = self.lease(digest.as_ref());
        let Some(rec) = self.index.blob(digest.as_ref())? else {
            return Ok(None);
        };
        let path = self.files.blob_path(digest);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(%digest, "indexed blob file is missing; treating as unknown");
                self.stats.missing_blobs.inc();
                return Ok(None);
            }
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        };
        let meta = file
            .metadata()
            .await
            .map_err(StoreError::io("stat", &path))?;
        let len = meta.len();
        if len != rec.size {
            tracing::warn!(%digest, expected = rec.size, found = len, "blob file has the wrong size; treating as unknown");
            self.stats.missing_blobs.inc();
            return Ok(None);
        }
        self.touch(digest.as_ref());
        let stamp = FileStamp::of(&meta);
        Ok(Some((BlobFile { file, lease, stamp }, len)))
    }

    /// Remove `repo`'s link to a blob; the file and record go with the last link.
    pub async fn delete_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let _g = self.locks.lock(digest).await;
        let (r, key) = (repo.to_string(), digest.to_string());
        let Some(remaining) = self
            .freeing_write(move |idx| idx.unlink_blob(&r, &key))
            .await?
        else {
            return Ok(false);
        };
        if remaining == 0 {
            let key = digest.to_string();
            let size = self
                .freeing_write(move |idx| {
                    let size = idx.blob(&key)?.map(|r| r.size);
                    idx.delete_blob(&key, true)?;
                    Ok(size)
                })
                .await?;
            self.files.remove_blob(digest)?;
            self.forget_verified(digest.as_ref());
            self.space.sub_used(size.unwrap_or(0));
        }
        Ok(true)
    }

    /// Bring index and disk into agreement (see the module docs for what each crash leaves).
    fn reconcile(&self) -> Result<Recovery> {
        let mut rec = Recovery::default();
        // 1. Upload sessions: keep those whose temp file holds at least the recorded bytes.
        let mut uploads = Vec::new();
        self.index
            .for_each_upload(&mut |id, r| uploads.push((id.to_string(), r.clone())))?;
        let mut live = std::collections::HashSet::new();
        for (id, r) in uploads {
            match self.files.upload_len(&id) {
                Some(len) if len >= r.offset => {
                    self.files.truncate_upload(&id, r.offset)?;
                    live.insert(id);
                    rec.uploads_resumable += 1;
                }
                _ => {
                    self.index.delete_upload(&id)?;
                    rec.uploads_dropped += 1;
                }
            }
        }
        rec.temp_files_removed = self.files.clean_tmp(&live)?;
        // 2. Blob records whose file is missing or the wrong size are dropped.
        let mut indexed = std::collections::HashSet::new();
        let mut bad = Vec::new();
        let mut used = 0u64;
        self.index
            .for_each_blob(&mut |d, r| match self.files.blob_len_of(d) {
                Some(len) if len == r.size => {
                    indexed.insert(d.to_string());
                    used += r.size;
                }
                _ => bad.push(d.to_string()),
            })?;
        self.space.set_used(used);
        for d in &bad {
            tracing::warn!(digest = %d, "dropping index record of a missing or short blob file");
            self.index.delete_blob(d, true)?;
            self.files.remove_blob_named(d)?;
        }
        rec.records_dropped = bad.len() as u64;
        rec.blobs_indexed = indexed.len() as u64;
        // 3. Blob files nobody indexed (a crash between rename and index) are removed.
        rec.orphan_files_removed = self.files.remove_unindexed(&indexed)?;
        Ok(rec)
    }

    /// Shutting down: stop long background work (call before [`Store::flush`]).
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn flush(&self) -> Result<()> {
        self.flush_access()?;
        self.index.flush()
    }
}

/// An open blob file, held against eviction until dropped.
pub struct BlobFile {
    pub file: tokio::fs::File,
    pub lease: Lease,
    /// The file's identity when it was opened (is it verified as it stands?).
    pub stamp: FileStamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_taken_in_the_tick_of_the_last_write_vouches_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let stamp = FileStamp::of(&std::fs::metadata(&p).unwrap());
        // Taken right after the write: a second write in the same tick would leave it equal.
        assert!(!stamp.trusted_at(now_ns()));
        assert!(stamp.trusted_at(stamp.ctime_ns + RACY_NS));
        std::fs::write(&p, b"abd").unwrap();
        let same_tick = FileStamp::of(&std::fs::metadata(&p).unwrap());
        assert_eq!((same_tick.ino, same_tick.size), (stamp.ino, stamp.size));
    }
}
