//! Blob files: `blobs/<alg>/<xx>/<hex>` for verified content, `tmp/` for bytes in flight.
//! Paths are only ever built from parsed digests and generated session ids.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::image::Digest;
use tokio::io::AsyncWriteExt;

use super::{Result, StoreError};
use crate::digest::{Algorithm, Hasher};

const WRITE_BUFFER: usize = 1 << 20;

pub struct BlobFiles {
    blobs: PathBuf,
    tmp: PathBuf,
    uploads: PathBuf,
    /// Told the digest of every blob file removed (evicted, deleted, found corrupt).
    removed: tokio::sync::broadcast::Sender<String>,
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("fsync dir", dir))
}

impl BlobFiles {
    pub fn create(data_dir: &Path) -> Result<Self> {
        let s = Self {
            blobs: data_dir.join("blobs"),
            tmp: data_dir.join("tmp"),
            uploads: data_dir.join("tmp/uploads"),
            removed: tokio::sync::broadcast::channel(1024).0,
        };
        for d in [&s.blobs, &s.tmp, &s.uploads] {
            std::fs::create_dir_all(d).map_err(StoreError::io("create dir", d))?;
        }
        Ok(s)
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.digest();
        self.blobs
            .join(d.algorithm().as_ref())
            .join(&hex[..2])
            .join(hex)
    }

    fn blob_path_named(&self, d: &str) -> Option<PathBuf> {
        crate::digest::parse(d)
            .ok()
            .map(|(d, _)| self.blob_path(&d))
    }

    pub(super) fn blob_len_of(&self, d: &str) -> Option<u64> {
        std::fs::metadata(self.blob_path_named(d)?)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// A new temp file for a blob being received, hashed with `alg`.
    pub async fn temp_writer(&self, alg: Algorithm) -> Result<TempWriter> {
        let path = self.tmp.join(uuid::Uuid::new_v4().to_string());
        TempWriter::create(path, alg).await
    }

    pub fn upload_path(&self, id: &uuid::Uuid) -> PathBuf {
        self.uploads.join(id.to_string())
    }

    pub(super) fn upload_len(&self, id: &str) -> Option<u64> {
        let id = uuid::Uuid::from_str(id).ok()?;
        std::fs::metadata(self.upload_path(&id))
            .ok()
            .map(|m| m.len())
    }

    pub(super) fn truncate_upload(&self, id: &str, len: u64) -> Result<()> {
        let Ok(id) = uuid::Uuid::from_str(id) else {
            return Ok(());
        };
        let p = self.upload_path(&id);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(StoreError::io("open", &p))?;
        f.set_len(len).map_err(StoreError::io("truncate", &p))
    }

    /// Move a verified temp file into place (blocking).
    pub fn install(&self, mut blob: TempBlob, d: &Digest) -> Result<()> {
        let dst = self.blob_path(d);
        let parent = dst.parent().unwrap_or(&self.blobs).to_path_buf();
        if !parent.is_dir() {
            std::fs::create_dir_all(&parent).map_err(StoreError::io("create dir", &parent))?;
            if let Some(alg_dir) = parent.parent() {
                sync_dir(alg_dir)?;
            }
        }
        let src = blob
            .path
            .take()
            .ok_or_else(|| StoreError::Corrupt("temp blob already installed".into()))?;
        std::fs::rename(&src, &dst).map_err(StoreError::io("rename", &dst))?;
        sync_dir(&parent)
    }

    pub fn remove_blob(&self, d: &Digest) -> Result<()> {
        let p = self.blob_path(d);
        let r = match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::io("remove", &p)(e))
            }
            _ => Ok(()),
        };
        // Nobody listening (no peers) is fine.
        let _ = self.removed.send(d.to_string());
        r
    }

    /// The digests of blob files removed from now on (a receiver that lags misses some).
    pub fn removals(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.removed.subscribe()
    }

    pub(super) fn remove_blob_named(&self, d: &str) -> Result<()> {
        match crate::digest::parse(d) {
            Ok((d, _)) => self.remove_blob(&d),
            Err(_) => Ok(()),
        }
    }

    /// Remove every temp file except live upload sessions'. Returns how many went.
    pub(super) fn clean_tmp(&self, live_uploads: &HashSet<String>) -> Result<u64> {
        let mut n = 0;
        for dir in [&self.tmp, &self.uploads] {
            for e in std::fs::read_dir(dir).map_err(StoreError::io("read dir", dir))? {
                let e = e.map_err(StoreError::io("read dir", dir))?;
                let p = e.path();
                if p == self.uploads
                    || (dir == &self.uploads
                        && live_uploads.contains(&*e.file_name().to_string_lossy()))
                {
                    continue;
                }
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(StoreError::io("remove temp", &p))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Remove blob files whose digest is not in `indexed`. Returns how many went.
    pub(super) fn remove_unindexed(&self, indexed: &HashSet<String>) -> Result<u64> {
        let mut n = 0;
        let read = |d: &Path| std::fs::read_dir(d).map_err(StoreError::io("read dir", d));
        for alg in read(&self.blobs)? {
            let alg = alg.map_err(StoreError::io("read dir", &self.blobs))?;
            if !alg.path().is_dir() {
                continue;
            }
            for shard in read(&alg.path())? {
                let shard = shard.map_err(StoreError::io("read dir", &alg.path()))?;
                if !shard.path().is_dir() {
                    continue;
                }
                for f in read(&shard.path())? {
                    let f = f.map_err(StoreError::io("read dir", &shard.path()))?;
                    let key = format!(
                        "{}:{}",
                        alg.file_name().to_string_lossy(),
                        f.file_name().to_string_lossy()
                    );
                    if !indexed.contains(&key) {
                        tracing::info!(file = %f.path().display(), "removing unindexed blob file");
                        std::fs::remove_file(f.path())
                            .map_err(StoreError::io("remove orphan", &f.path()))?;
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }
}

/// A file of received bytes not yet in the store; removed on drop unless installed.
pub struct TempBlob {
    path: Option<PathBuf>,
    len: u64,
}

impl TempBlob {
    /// Take over an existing file (a finished upload session's).
    pub fn adopt(path: PathBuf, len: u64) -> Self {
        Self {
            path: Some(path),
            len,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Make the bytes durable (before the blob is installed and indexed).
    pub async fn sync(&self) -> Result<()> {
        let path = self.path.clone().unwrap_or_default();
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(StoreError::io("open", &path))?;
        f.sync_all().await.map_err(StoreError::io("fsync", &path))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A [`TempWriter`]'s position and digest state at some point.
#[derive(Clone)]
pub struct Checkpoint {
    len: u64,
    hasher: Hasher,
}

impl Checkpoint {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Writes a temp blob while hashing it.
pub struct TempWriter {
    blob: TempBlob,
    file: tokio::io::BufWriter<tokio::fs::File>,
    hasher: Hasher,
}

impl TempWriter {
    async fn create(path: PathBuf, alg: Algorithm) -> Result<Self> {
        let f = tokio::fs::File::create(&path)
            .await
            .map_err(StoreError::io("create", &path))?;
        Ok(Self {
            blob: TempBlob {
                path: Some(path),
                len: 0,
            },
            file: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, f),
            hasher: Hasher::new(alg),
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.hasher.update(chunk);
        let path = self.blob.path.as_deref().unwrap_or(Path::new("tmp"));
        self.file
            .write_all(chunk)
            .await
            .map_err(StoreError::io("write", path))?;
        self.blob.len += chunk.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.blob.len
    }

    /// Where the bytes are being written.
    pub fn path(&self) -> &Path {
        self.blob.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Make everything written so far visible to readers of the file (no fsync).
    pub async fn flush(&mut self) -> Result<()> {
        let path = self.blob.path.clone().unwrap_or_default();
        self.file
            .flush()
            .await
            .map_err(StoreError::io("flush", &path))
    }

    pub fn is_empty(&self) -> bool {
        self.blob.len == 0
    }

    /// Take `chunk`, which is already in the file at the writer's position (written there out
    /// of order, by position): hash it and move past it.
    pub async fn adopt(&mut self, chunk: &[u8]) -> Result<()> {
        use tokio::io::AsyncSeekExt;
        self.hasher.update(chunk);
        self.blob.len += chunk.len() as u64;
        let path = self.blob.path.clone().unwrap_or_default();
        // (A BufWriter writes out what it holds before it seeks.)
        self.file
            .seek(std::io::SeekFrom::Start(self.blob.len))
            .await
            .map_err(StoreError::io("seek", &path))?;
        Ok(())
    }

    /// Where the writer stands now, to come back to with [`Self::rollback`].
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            len: self.blob.len,
            hasher: self.hasher.clone(),
        }
    }

    /// Forget everything written after `cp` (bytes a peer sent that failed their piece hash):
    /// the file is cut back to it and the digest is computed as if they never came.
    pub async fn rollback(&mut self, cp: &Checkpoint) -> Result<()> {
        use tokio::io::AsyncSeekExt;
        let path = self.blob.path.clone().unwrap_or_default();
        self.file
            .flush()
            .await
            .map_err(StoreError::io("flush", &path))?;
        let f = self.file.get_mut();
        f.set_len(cp.len)
            .await
            .map_err(StoreError::io("truncate", &path))?;
        f.seek(std::io::SeekFrom::Start(cp.len))
            .await
            .map_err(StoreError::io("seek", &path))?;
        self.blob.len = cp.len;
        self.hasher = cp.hasher.clone();
        Ok(())
    }

    /// Flush (no fsync) and return the digest of everything written: for a fetch that wants to
    /// tell its readers the bytes are verified before it pays for durability.
    pub async fn finish_unsynced(mut self) -> Result<(TempBlob, Digest)> {
        let path = self.blob.path.clone().unwrap_or_default();
        self.file
            .flush()
            .await
            .map_err(StoreError::io("flush", &path))?;
        Ok((self.blob, self.hasher.finish()))
    }

    /// Flush and fsync; the digest of everything written.
    pub async fn finish(mut self) -> Result<(TempBlob, Digest)> {
        let path = self.blob.path.clone().unwrap_or_default();
        self.file
            .flush()
            .await
            .map_err(StoreError::io("flush", &path))?;
        self.file
            .get_mut()
            .sync_all()
            .await
            .map_err(StoreError::io("fsync", &path))?;
        Ok((self.blob, self.hasher.finish()))
    }
}
