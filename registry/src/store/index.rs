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
    /// Fetched from an upstream registry, a model hub or a peer: cache, may be evicted.
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
    /// Of a fetched blob: how many of its bytes came from peers (the rest from its origin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_peers: Option<u64>,
}

/// A manifest: its exact bytes, with what serving and referrers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestRecord {
    pub media_type: String,
    /// Digest of the manifest's `subject`, when it has one.
    pub subject: Option<String>,
    /// Pushed by a client (kept for good, with what it references), or cached from an upstream
    /// or a hub (evictable). Records written before this field existed read as pushed.
    pub origin: Origin,
    pub bytes: Vec<u8>,
}

/// What a pin holds: the admin API's target (`PUT /manta/v1/pins/<name>`), stored as it is sent.
/// Its serde shape is part of [`PinRecord`]'s: a change to it is a change of the stored record.
pub use manta_api::PinTarget;

/// A named pin (the operator names them after the Torrent that asked).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinRecord {
    #[serde(rename = "v")]
    pub version: u8,
    pub target: PinTarget,
    /// Unix seconds.
    pub created_at: u64,
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

/// One file of a hub revision as the cache knows it: every file has its sha256 (listed by the
/// hub for LFS files, hashed on download for the rest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubFileRecord {
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// Git blob id (Hugging Face), the facade's `ETag` for non-LFS files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    /// Stored in LFS on the hub (the facade's `ETag` is then the sha256).
    #[serde(default)]
    pub lfs: bool,
}

/// What a tag of a hub repository stands for: a revision (and subset) resolved to a commit,
/// with the digests of the forms built from it. Keyed by hub, lowercase repo and tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubRevisionRecord {
    #[serde(rename = "v")]
    pub version: u8,
    /// Canonical repo id.
    pub repo: String,
    /// The revision as asked of the hub (`main`, `refs/pr/1`, a commit).
    pub revision: String,
    pub filter: manta_hub::Filter,
    pub commit: String,
    /// The selected files, sorted by path.
    pub files: Vec<HubFileRecord>,
    /// Unix seconds of the last confirmation by the hub.
    pub resolved_at: u64,
    /// Digest of the raw-form manifest.
    pub raw: String,
    /// Digest of the image form's tagged manifest or index, once every layer is hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Where the bytes of a blob can be fetched from the hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubSource {
    pub hub: manta_hub::HubKind,
    pub repo: String,
    pub commit: String,
    pub path: String,
    pub size: u64,
}

/// An image-form tar layer that is never stored: `prefix` ++ the raw blob ++ zeros.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeRecord {
    #[serde(rename = "v")]
    pub version: u8,
    /// `sha256:<hex>` of the file's content.
    pub raw: String,
    /// The file's size.
    pub size: u64,
    /// Tar headers before the content (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub prefix: Vec<u8>,
    /// The tar digest it is recorded under was computed from the bytes (here, or on a peer and
    /// then checked here). A recipe taken from a peer is not, until a whole read of its layer
    /// has hashed to that digest; until then such a read withholds its last bytes.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub verified: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

impl RecipeRecord {
    /// Size of the whole tar layer.
    pub fn tar_len(&self) -> u64 {
        self.prefix.len() as u64 + self.size + manta_hub::forms::tar_suffix_len(self.size)
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
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

/// The index's health, for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// The database stopped accepting writes (a background error: a full disk, an I/O error).
    Degraded(String),
}

/// The index of the content store. Methods block (they are quick reads, or writes that may
/// fsync); callers on an async runtime run writes on the blocking pool.
pub trait Index: Send + Sync + 'static {
    fn blob(&self, digest: &str) -> Result<Option<BlobRecord>>;
    fn blob_linked(&self, repo: &str, digest: &str) -> Result<bool>;
    /// Record a verified blob (if new) and link it into `repo`, atomically. True if the record
    /// is new.
    fn put_blob(&self, repo: &str, digest: &str, record: &BlobRecord) -> Result<bool>;
    /// Link an existing blob into `repo` (cross-repository mount).
    fn link_blob(&self, repo: &str, digest: &str) -> Result<()>;
    /// Remove `repo`'s link; returns how many links remain, or `None` if there was no link.
    fn unlink_blob(&self, repo: &str, digest: &str) -> Result<Option<usize>>;
    /// Forget a blob entirely: its record and every link. `durable: false` (eviction) skips the
    /// fsync: a record that comes back after a power loss names a removed file, which start-up
    /// reconciliation drops.
    fn delete_blob(&self, digest: &str, durable: bool) -> Result<()>;
    /// Every blob record (start-up reconciliation).
    fn for_each_blob(&self, f: &mut dyn FnMut(&str, &BlobRecord)) -> Result<()>;

    fn manifest(&self, digest: &str) -> Result<Option<ManifestRecord>>;
    /// Every manifest record (garbage collection).
    fn for_each_manifest(&self, f: &mut dyn FnMut(&str, &ManifestRecord)) -> Result<()>;
    /// The repositories a manifest is linked into.
    fn manifest_repos(&self, digest: &str) -> Result<Vec<String>>;
    fn manifest_linked(&self, repo: &str, digest: &str) -> Result<bool>;
    fn put_manifest(&self, put: &ManifestPut<'_>) -> Result<()>;
    /// Unlink a manifest from `repo` with its tags and referrer entry there; the record goes
    /// with its last link. Returns false if `repo` did not hold it.
    fn delete_manifest(&self, repo: &str, digest: &str, durable: bool) -> Result<bool>;

    fn tag(&self, repo: &str, tag: &str) -> Result<Option<String>>;
    /// Tags of `repo` in lexical order, strictly after `after`, at most `limit`.
    fn tags(&self, repo: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    /// `durable: false` (eviction, which removes a root's entries in order: tags, manifests,
    /// blobs) skips the fsync: the log replays a prefix after a power loss, so what comes back is
    /// a state the eviction passed through.
    fn delete_tag(&self, repo: &str, tag: &str, durable: bool) -> Result<bool>;
    /// Every tag: repository, tag, target digest.
    fn for_each_tag(&self, f: &mut dyn FnMut(&str, &str, &str)) -> Result<()>;
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

    /// The record of a hub repository's tag (`key` from [`hub_key`]).
    fn hub_revision(&self, key: &str) -> Result<Option<HubRevisionRecord>>;
    /// Store a tag's record and where each of its blobs can be fetched, atomically.
    fn put_hub_revision(
        &self,
        key: &str,
        record: &HubRevisionRecord,
        sources: &[(String, HubSource)],
    ) -> Result<()>;
    fn for_each_hub_revision(&self, f: &mut dyn FnMut(&str, &HubRevisionRecord)) -> Result<()>;
    /// The records of every tag of one hub repo (keys under [`hub_repo_prefix`]).
    fn hub_revisions_of(&self, prefix: &str) -> Result<Vec<HubRevisionRecord>>;
    fn delete_hub_revision(&self, key: &str, durable: bool) -> Result<()>;
    fn hub_source(&self, digest: &str) -> Result<Option<HubSource>>;
    /// The recipe of an image-form tar layer.
    fn recipe(&self, tar_digest: &str) -> Result<Option<RecipeRecord>>;
    /// The tar digest of `raw` laid out at `path`, once hashed.
    fn recipe_for(&self, raw: &str, path: &str) -> Result<Option<String>>;
    fn put_recipe(&self, tar_digest: &str, path: &str, recipe: &RecipeRecord) -> Result<()>;
    /// Rewrite (`Some`) or drop (`None`) the recipe of a tar layer, keeping the paths that map
    /// to it (a path whose recipe is gone is hashed again).
    fn set_recipe(&self, tar_digest: &str, recipe: Option<&RecipeRecord>) -> Result<()>;

    /// Last-access times (Unix milliseconds) of blobs, manifests and hub records, by key. Not synced:
    /// a crash loses at most the last few seconds of recency.
    fn put_access(&self, entries: &[(String, u64)]) -> Result<()>;
    fn for_each_access(&self, f: &mut dyn FnMut(&str, u64)) -> Result<()>;
    fn delete_access(&self, keys: &[String]) -> Result<()>;

    fn pin(&self, name: &str) -> Result<Option<PinRecord>>;
    fn put_pin(&self, name: &str, record: &PinRecord) -> Result<()>;
    /// False if there was no such pin.
    fn delete_pin(&self, name: &str) -> Result<bool>;
    fn pins(&self) -> Result<Vec<(String, PinRecord)>>;

    /// Whether the database still accepts writes.
    fn health(&self) -> Result<Health>;

    /// Flush memtables to disk (graceful shutdown).
    fn flush(&self) -> Result<()>;
}

/// The key of a hub tag's record: hub, lowercase repo, tag.
pub fn hub_key(hub: manta_hub::HubKind, repo: &str, tag: &str) -> String {
    format!("{}\0{}\0{}", hub.as_str(), repo.to_ascii_lowercase(), tag)
}

/// The common prefix of the [`hub_key`]s of one hub repo.
pub fn hub_repo_prefix(hub: manta_hub::HubKind, repo: &str) -> String {
    format!("{}\0{}\0", hub.as_str(), repo.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins written before the admin API's types moved to `manta-api` still read, and are written
    /// again byte for byte (a pin's target is stored as the API sends it).
    #[test]
    fn pin_records_keep_their_stored_shape() {
        for stored in [
            r#"{"v":1,"target":{"hub":"hf","repo":"Org/Name","revision":"main","allowPatterns":["*.json"]},"createdAt":7}"#,
            r#"{"v":1,"target":{"reference":"hf-raw/org/name:main"},"createdAt":7}"#,
        ] {
            let rec: PinRecord = serde_json::from_str(stored).unwrap();
            assert_eq!(serde_json::to_string(&rec).unwrap(), stored);
        }
    }
}
