//! The index: what the store knows about blobs, manifests, tags, referrers and upload sessions.
//! A trait that knows nothing of rocksdb (see `rocks.rs` for the implementation).

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::digest::Algorithm;

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where a blob came from. Pushed content has no other copy and is never evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Pushed,
    /// Fetched from an upstream registry: cache, may be evicted.
    Upstream,
}

/// A verified blob on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRecord {
    #[serde(rename = "v")]
    pub version: u8,
    pub size: u64,
    /// Unix seconds.
    pub created_at: u64,
    pub origin: Origin,
}

/// A manifest: its exact bytes, with what serving and referrers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRecord {
    pub media_type: String,
    /// Digest of the manifest's `subject`, when it has one.
    pub subject: Option<String>,
    pub bytes: Vec<u8>,
}

/// An upload session in progress. Its bytes are in `tmp/uploads/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    #[serde(rename = "v")]
    pub version: u8,
    pub repo: String,
    pub algorithm: Algorithm,
    /// Bytes received so far.
    pub offset: u64,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds of the last chunk received (sessions idle past the upload TTL are purged).
    #[serde(default)]
    pub updated_at: u64,
}

/// One manifest PUT, applied atomically.
pub struct ManifestPut<'a> {
    pub repo: &'a str,
    pub digest: &'a str,
    pub record: &'a ManifestRecord,
    pub tag: Option<&'a str>,
    /// The referrers-API descriptor of this manifest (JSON), when it has a subject.
    pub referrer_descriptor: Option<&'a [u8]>,
    /// For a tag of a pull-through cache: when it was resolved upstream (Unix seconds).
    pub resolved_at: Option<u64>,
}

/// The index of the content store. Methods block (they are quick reads, or writes that may
/// fsync); callers on an async runtime run writes on the blocking pool.
pub trait Index: Send + Sync + 'static {
    fn blob(&self, digest: &str) -> Result<Option<BlobRecord>>;
    fn blob_linked(&self, repo: &str, digest: &str) -> Result<bool>;
    /// Record a verified blob (if new) and link it into `repo`, atomically.
    fn put_blob(&self, repo: &str, digest: &str, record: &BlobRecord) -> Result<()>;
    /// Link an existing blob into `repo` (cross-repository mount).
    fn link_blob(&self, repo: &str, digest: &str) -> Result<()>;
    /// Remove `repo`'s link; returns how many links remain, or `None` if there was no link.
    fn unlink_blob(&self, repo: &str, digest: &str) -> Result<Option<usize>>;
    /// Forget a blob entirely: its record and every link.
    fn delete_blob(&self, digest: &str) -> Result<()>;
    /// Every blob record (start-up reconciliation).
    fn for_each_blob(&self, f: &mut dyn FnMut(&str, &BlobRecord)) -> Result<()>;

    fn manifest(&self, digest: &str) -> Result<Option<ManifestRecord>>;
    fn manifest_linked(&self, repo: &str, digest: &str) -> Result<bool>;
    fn put_manifest(&self, put: &ManifestPut<'_>) -> Result<()>;
    /// Unlink a manifest from `repo` with its tags and referrer entry there; the record goes
    /// with its last link. Returns false if `repo` did not hold it.
    fn delete_manifest(&self, repo: &str, digest: &str) -> Result<bool>;

    fn tag(&self, repo: &str, tag: &str) -> Result<Option<String>>;
    /// Tags of `repo` in lexical order, strictly after `after`, at most `limit`.
    fn tags(&self, repo: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool>;
    /// When a pull-through tag was last resolved upstream (Unix seconds).
    fn tag_resolved_at(&self, repo: &str, tag: &str) -> Result<Option<u64>>;
    /// Record that a pull-through tag was just confirmed upstream.
    fn touch_tag(&self, repo: &str, tag: &str, at: u64) -> Result<()>;
    /// Referrer descriptors (JSON) of `subject` in `repo`.
    fn referrers(&self, repo: &str, subject: &str) -> Result<Vec<Vec<u8>>>;
    fn repo_exists(&self, repo: &str) -> Result<bool>;

    fn upload(&self, id: &str) -> Result<Option<UploadRecord>>;
    /// `durable`: fsync before returning (session creation); progress updates need not.
    fn put_upload(&self, id: &str, record: &UploadRecord, durable: bool) -> Result<()>;
    fn delete_upload(&self, id: &str) -> Result<()>;
    fn for_each_upload(&self, f: &mut dyn FnMut(&str, &UploadRecord)) -> Result<()>;

    /// Flush memtables to disk (graceful shutdown).
    fn flush(&self) -> Result<()>;
}
