//! What a node's cache holds: `GET /manta/v1/cache`.

use std::collections::BTreeMap;

use manta_hub::HubKind;
use serde::{Deserialize, Serialize};

use crate::Form;

/// The node's space figures, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpaceView {
    /// What the cache may use (`--capacity`, else the filesystem's size).
    pub capacity: u64,
    pub used: u64,
    /// Promised to downloads and uploads in flight.
    pub reserved: u64,
    /// Held by pins (never evicted).
    pub pinned: u64,
    pub high_watermark: u64,
    pub low_watermark: u64,
}

impl SpaceView {
    /// Bytes a new download can take without evicting pinned content: the capacity less what
    /// pins hold and what is promised (unpinned content is evictable, so it does not count).
    pub fn available_without_pinned(&self) -> u64 {
        self.capacity
            .saturating_sub(self.pinned)
            .saturating_sub(self.reserved)
    }
}

/// One hub revision the node knows, with what it holds of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedRevision {
    pub hub: HubKind,
    pub repo: String,
    pub revision: String,
    pub tag: String,
    pub commit: String,
    pub files: u64,
    pub size: u64,
    pub cached_bytes: u64,
    /// Of the cached bytes, those that came from peers (the rest from the hub).
    #[serde(default)]
    pub from_peers: u64,
    pub forms: Vec<Form>,
    #[serde(default)]
    pub references: BTreeMap<Form, String>,
    /// Unix seconds.
    pub resolved_at: u64,
}

/// What kind of eviction root an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKind {
    /// A hub revision record (`hf://Org/Name:tag`).
    Hub,
    /// A pull-through tag.
    Tag,
    /// An untagged cached manifest.
    Manifest,
    /// An unreferenced cached blob.
    Blob,
}

impl RootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Hub => "hub",
            RootKind::Tag => "tag",
            RootKind::Manifest => "manifest",
            RootKind::Blob => "blob",
        }
    }
}

/// Why a root is not evicted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Protection {
    Pinned,
    InUse,
    Young,
}

/// One eviction root, as `manta ls` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEntry {
    pub kind: RootKind,
    pub name: String,
    pub bytes: u64,
    /// Unix seconds.
    pub last_access: u64,
    #[serde(default)]
    pub pins: Vec<String>,
    #[serde(default)]
    pub protection: Option<Protection>,
    #[serde(default)]
    pub forms: Vec<Form>,
}

/// `GET /manta/v1/cache`. `?entries=false` leaves out the entries (what the operator asks for).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheView {
    pub revisions: Vec<CachedRevision>,
    pub space: SpaceView,
    /// Every root, least recently used (next to be evicted) first.
    #[serde(default)]
    pub entries: Vec<CacheEntry>,
}
