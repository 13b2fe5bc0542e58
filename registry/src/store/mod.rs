//! The content store: verified blob files on disk plus the [`Index`].
//!
//! Crash story of a blob write: bytes go to `tmp/<uuid>` while hashing; once the digest is
//! verified the file is fsynced, renamed to `blobs/<alg>/<xx>/<hex>` and the directory
//! fsynced; only then is it indexed (one durable batch). A crash before the rename leaves a temp
//! file (removed on start-up); between rename and index, an unindexed file (removed on
//! start-up); after, a complete blob. Start-up also drops records whose file is gone or short.

mod files;
pub mod index;
mod rocks;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::Digest;

pub use files::{BlobFiles, TempBlob};
pub use index::{
    hub_key, BlobRecord, HubFileRecord, HubRevisionRecord, HubSource, Index, ManifestPut,
    ManifestRecord, Origin, RecipeRecord, UploadRecord,
};
pub use rocks::RocksIndex;

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

pub type Result<T> = std::result::Result<T, StoreError>;

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

    async fn lock(&self, digest: &Digest) -> tokio::sync::MutexGuard<'_, ()> {
        let b = digest.digest().as_bytes();
        let i = b.first().copied().unwrap_or(0) as usize
            ^ ((b.get(1).copied().unwrap_or(0) as usize) << 1);
        self.0[i % self.0.len()].lock().await
    }
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
}

impl Store {
    /// Open (creating) the store in `data_dir` with the embedded rocksdb index, reconciling
    /// the index with the disk.
    pub fn open(data_dir: &Path) -> Result<(Self, Recovery)> {
        let files = BlobFiles::create(data_dir)?;
        let index = RocksIndex::open(&data_dir.join("db"))?;
        Self::with_index(Arc::new(index), files)
    }

    pub fn with_index(index: Arc<dyn Index>, files: BlobFiles) -> Result<(Self, Recovery)> {
        let store = Self {
            index,
            files: Arc::new(files),
            locks: Arc::new(DigestLocks::new()),
        };
        let recovery = store.reconcile()?;
        Ok((store, recovery))
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
        }
        let record = BlobRecord {
            version: 1,
            size,
            created_at: unix_now(),
            origin,
        };
        let (repo, key) = (repo.to_string(), digest.to_string());
        self.blocking(move |idx| idx.put_blob(&repo, &key, &record))
            .await
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
    pub async fn open_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<(tokio::fs::File, u64)>> {
        if !self.index.blob_linked(repo, digest.as_ref())? {
            return Ok(None);
        }
        self.open_verified(digest).await
    }

    /// Open a blob the node holds, whichever repository it came through: content addressed and
    /// verified, so a pull-through repository may be served it.
    pub async fn open_verified(&self, digest: &Digest) -> Result<Option<(tokio::fs::File, u64)>> {
        let Some(rec) = self.index.blob(digest.as_ref())? else {
            return Ok(None);
        };
        let path = self.files.blob_path(digest);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(%digest, "indexed blob file is missing; treating as unknown");
                return Ok(None);
            }
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(StoreError::io("stat", &path))?
            .len();
        if len != rec.size {
            tracing::warn!(%digest, expected = rec.size, found = len, "blob file has the wrong size; treating as unknown");
            return Ok(None);
        }
        Ok(Some((file, len)))
    }

    /// Remove `repo`'s link to a blob; the file and record go with the last link.
    pub async fn delete_blob(&self, repo: &str, digest: &Digest) -> Result<bool> {
        let _g = self.locks.lock(digest).await;
        let (r, key) = (repo.to_string(), digest.to_string());
        let Some(remaining) = self.blocking(move |idx| idx.unlink_blob(&r, &key)).await? else {
            return Ok(false);
        };
        if remaining == 0 {
            let key = digest.to_string();
            self.blocking(move |idx| idx.delete_blob(&key)).await?;
            self.files.remove_blob(digest)?;
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
        self.index
            .for_each_blob(&mut |d, r| match self.files.blob_len_of(d) {
                Some(len) if len == r.size => {
                    indexed.insert(d.to_string());
                }
                _ => bad.push(d.to_string()),
            })?;
        for d in &bad {
            tracing::warn!(digest = %d, "dropping index record of a missing or short blob file");
            self.index.delete_blob(d)?;
            self.files.remove_blob_named(d)?;
        }
        rec.records_dropped = bad.len() as u64;
        rec.blobs_indexed = indexed.len() as u64;
        // 3. Blob files nobody indexed (a crash between rename and index) are removed.
        rec.orphan_files_removed = self.files.remove_unindexed(&indexed)?;
        Ok(rec)
    }

    pub fn flush(&self) -> Result<()> {
        self.index.flush()
    }
}
