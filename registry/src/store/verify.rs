//! Integrity: re-hash blobs on disk (`manta verify`, and the background scrub). A blob whose
//! bytes no longer match its digest, or whose file vanished or shrank, is dropped from the index
//! (and its file removed), counted, and fetched again on its next use.
//!
//! `manta verify` also reports pushed manifests that can no longer be pulled: the spec lets a
//! client delete a layer of a tagged manifest, or a child of a tagged index, and nothing else
//! would say the parent is broken. (Cached manifests are not reported: what they lack is
//! fetched again when it is pulled.)

use std::io::Read;
use std::time::{Duration, Instant};

pub use manta_api::{DanglingManifest, VerifyReport};

use super::{Result, Store, StoreError};
use crate::digest::{self, Hasher};

/// The blobs and the child manifests a manifest or index references.
fn references(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return (Vec::new(), Vec::new());
    };
    let digest = |d: &serde_json::Value| d.get("digest")?.as_str().map(str::to_string);
    let list = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(|l| l.as_array())
            .map(|a| a.iter().filter_map(digest).collect())
            .unwrap_or_default()
    };
    let mut blobs: Vec<String> = v.get("config").and_then(digest).into_iter().collect();
    blobs.extend(list("layers"));
    blobs.extend(list("blobs"));
    (blobs, list("manifests"))
}

/// The state of one blob on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCheck {
    Ok {
        size: u64,
    },
    Corrupt,
    Missing,
    /// No longer indexed (evicted or deleted meanwhile).
    Gone,
}

/// Spreads reads over time: at most `rate` bytes per second.
struct Throttle {
    rate: Option<u64>,
    start: Instant,
    done: u64,
}

impl Throttle {
    fn pace(&mut self, n: u64) {
        self.done += n;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.done as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

impl Store {
    /// Re-hash every blob, at most `rate` bytes per second (`None`: as fast as the disk goes).
    pub async fn verify_all(&self, rate: Option<u64>) -> Result<VerifyReport> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut digests = Vec::new();
            me.index
                .for_each_blob(&mut |d, _| digests.push(d.to_string()))?;
            let mut report = VerifyReport::default();
            let mut throttle = Throttle {
                rate,
                start: Instant::now(),
                done: 0,
            };
            for d in digests {
                if me.is_closing() {
                    break;
                }
                match me.verify_blocking(&d, &mut throttle)? {
                    BlobCheck::Ok { size } => {
                        report.checked += 1;
                        report.bytes += size;
                    }
                    BlobCheck::Corrupt => {
                        report.checked += 1;
                        report.corrupt.push(d);
                    }
                    BlobCheck::Missing => {
                        report.checked += 1;
                        report.missing.push(d);
                    }
                    BlobCheck::Gone => {}
                }
            }
            report.dangling = me.dangling_manifests()?;
            Ok(report)
        })
        .await
        .map_err(StoreError::Join)?
    }

    /// Pushed manifests, in each repository they are in, that reference a blob or a child
    /// manifest the repository cannot serve.
    fn dangling_manifests(&self) -> Result<Vec<DanglingManifest>> {
        let mut pushed = Vec::new();
        self.index.for_each_manifest(&mut |d, rec| {
            if rec.origin == super::Origin::Pushed {
                pushed.push((d.to_string(), references(&rec.bytes)));
            }
        })?;
        let idx = &*self.index;
        let mut out = Vec::new();
        for (manifest, (blobs, children)) in pushed {
            for repo in idx.manifest_repos(&manifest)? {
                let mut missing = Vec::new();
                for b in &blobs {
                    if idx.blob(b)?.is_none() || !idx.blob_linked(&repo, b)? {
                        missing.push(b.clone());
                    }
                }
                for m in &children {
                    if idx.manifest(m)?.is_none() || !idx.manifest_linked(&repo, m)? {
                        missing.push(m.clone());
                    }
                }
                if !missing.is_empty() {
                    out.push(DanglingManifest {
                        repo,
                        manifest: manifest.clone(),
                        missing,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Re-hash one blob (dropping it if it is corrupt or missing).
    pub async fn verify_blob(&self, digest: &str) -> Result<BlobCheck> {
        let (me, d) = (self.clone(), digest.to_string());
        tokio::task::spawn_blocking(move || {
            let mut t = Throttle {
                rate: None,
                start: Instant::now(),
                done: 0,
            };
            me.verify_blocking(&d, &mut t)
        })
        .await
        .map_err(StoreError::Join)?
    }

    fn verify_blocking(&self, digest: &str, throttle: &mut Throttle) -> Result<BlobCheck> {
        let _lease = self.lease(digest);
        let Some(rec) = self.index.blob(digest)? else {
            return Ok(BlobCheck::Gone);
        };
        let Ok((d, alg)) = digest::parse(digest) else {
            return Err(StoreError::Corrupt(format!("blob key {digest:?}")));
        };
        let path = self.files.blob_path(&d);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.drop_bad_blob(digest, BlobCheck::Missing)?;
                return Ok(BlobCheck::Missing);
            }
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        };
        let stamp = file
            .metadata()
            .map(|m| super::FileStamp::of(&m))
            .map_err(StoreError::io("stat", &path))?;
        let mut hasher = Hasher::new(alg);
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(StoreError::io("read", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
            throttle.pace(n as u64);
            if self.is_closing() {
                return Ok(BlobCheck::Gone);
            }
        }
        self.stats.verified_blobs.inc();
        self.stats.verified_bytes.inc_by(len);
        let check = if len != rec.size {
            BlobCheck::Missing
        } else if hasher.finish() != d {
            BlobCheck::Corrupt
        } else {
            self.mark_verified(digest, stamp);
            return Ok(BlobCheck::Ok { size: len });
        };
        self.drop_bad_blob(digest, check)?;
        Ok(check)
    }

    /// Forget a blob found corrupt or missing (from a blocking thread): the next request for it
    /// fetches it again (or, pushed content, reports it unknown).
    pub(super) fn drop_bad_blob(&self, digest: &str, why: BlobCheck) -> Result<()> {
        let _g = self.locks.lock_blocking(digest);
        let Some(rec) = self.index.blob(digest)? else {
            return Ok(());
        };
        match why {
            BlobCheck::Corrupt => {
                tracing::error!(%digest, origin = ?rec.origin, "blob on disk does not match its digest; dropped from the cache");
                self.stats.corrupt_blobs.inc();
            }
            _ => {
                tracing::warn!(%digest, origin = ?rec.origin, "blob file missing or short; dropped from the index");
                self.stats.missing_blobs.inc();
            }
        }
        self.index.delete_blob(digest, true)?;
        self.files.remove_blob_named(digest)?;
        self.forget_verified(digest);
        self.space.sub_used(rec.size);
        Ok(())
    }

    /// A read found the blob's bytes do not match its digest: drop it.
    pub async fn report_corrupt(&self, digest: &str) {
        let (me, d) = (self.clone(), digest.to_string());
        let r = tokio::task::spawn_blocking(move || me.drop_bad_blob(&d, BlobCheck::Corrupt)).await;
        if let Ok(Err(e)) = r {
            tracing::error!(error = %e, "dropping a corrupt blob failed");
        }
    }
}
