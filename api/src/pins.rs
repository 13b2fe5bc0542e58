//! Pins, eviction and verification: `/manta/v1/pins`, `/manta/v1/gc`, `DELETE
//! /manta/v1/cache/<ref>`, `/manta/v1/verify`.

use manta_hub::{Filter, HubKind};
use serde::{Deserialize, Serialize};

use crate::RootKind;

/// What a pin holds: a hub revision (in the subset a prefetch names), or an OCI reference
/// (`<repo>:<tag>` or `<repo>@<digest>`) of the agent's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PinTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(flatten)]
    pub filter: Filter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl PinTarget {
    /// A hub revision (or a subset of it).
    pub fn hub(hub: HubKind, repo: &str, revision: Option<&str>, filter: Filter) -> Self {
        PinTarget {
            hub: Some(hub),
            repo: Some(repo.to_string()),
            revision: revision.map(str::to_string),
            filter,
            reference: None,
        }
    }

    /// An OCI reference of the agent's namespace.
    pub fn reference(reference: &str) -> Self {
        PinTarget {
            hub: None,
            repo: None,
            revision: None,
            filter: Filter::default(),
            reference: Some(reference.to_string()),
        }
    }
}

/// A pin as `GET /manta/v1/pins` and `PUT /manta/v1/pins/<name>` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinView {
    pub name: String,
    pub target: PinTarget,
    /// Unix seconds.
    pub created_at: u64,
    /// The roots the pin holds now (names as `manta ls` prints them).
    pub roots: Vec<String>,
    /// Bytes of blobs those roots reach.
    pub bytes: u64,
}

/// `GET /manta/v1/pins`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinList {
    pub pins: Vec<PinView>,
}

/// The two ways a pin is released (a Torrent's `reclaimPolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reclaim {
    /// The content stays, now evictable by LRU.
    #[default]
    Retain,
    /// The content goes now (what no other pin or root still needs).
    Delete,
}

impl Reclaim {
    pub fn as_str(self) -> &'static str {
        match self {
            Reclaim::Retain => "Retain",
            Reclaim::Delete => "Delete",
        }
    }
}

/// `DELETE /manta/v1/pins/<name>?reclaim=…`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpinned {
    pub name: String,
    pub reclaim: Reclaim,
    /// What `Delete` evicted.
    #[serde(default)]
    pub gc: Option<GcReport>,
}

/// `POST /manta/v1/gc`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GcRequest {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Bytes to free [default: down to the low watermark].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<u64>,
}

/// One evicted (or, in a dry run, evictable) root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evicted {
    pub kind: RootKind,
    pub name: String,
    /// Bytes of blobs freed with it (shared blobs go with their last root).
    pub bytes: u64,
    /// Unix seconds.
    pub last_access: u64,
}

/// What an eviction did (or would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub dry_run: bool,
    pub freed_bytes: u64,
    pub blobs_deleted: u64,
    pub manifests_deleted: u64,
    pub evicted: Vec<Evicted>,
    /// Roots asked for by name that are pinned (left alone).
    #[serde(default)]
    pub refused_pinned: Vec<String>,
    /// Blobs left in place because a reader or a download holds them.
    pub kept_in_use: u64,
    pub protected_pinned: u64,
    pub protected_in_use: u64,
    pub protected_young: u64,
}

/// What one verification pass found (`POST /manta/v1/verify`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub checked: u64,
    pub bytes: u64,
    /// Digests whose bytes did not match (now dropped).
    pub corrupt: Vec<String>,
    /// Digests whose file was missing or the wrong size (now dropped).
    pub missing: Vec<String>,
    /// Pushed manifests that reference what their repository no longer holds.
    #[serde(default)]
    pub dangling: Vec<DanglingManifest>,
}

impl VerifyReport {
    /// Whether the pass found anything wrong.
    pub fn is_damaged(&self) -> bool {
        !(self.corrupt.is_empty() && self.missing.is_empty() && self.dangling.is_empty())
    }
}

/// A pushed manifest that cannot be pulled whole from `repo`: `missing` lists the blobs
/// (config, layers) and child manifests it references that the repository cannot serve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DanglingManifest {
    pub repo: String,
    pub manifest: String,
    pub missing: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_targets_are_a_hub_revision_or_a_reference() {
        let t = PinTarget::hub(HubKind::Hf, "a/B", Some("main"), Filter::default());
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"hub":"hf","repo":"a/B","revision":"main"}"#
        );
        let r = PinTarget::reference("x/y:1");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"reference":"x/y:1"}"#
        );
        assert!(serde_json::from_str::<PinTarget>(r#"{"reference":"x:1","bogus":1}"#).is_err());
    }

    #[test]
    fn reclaim_policies_are_spelled_as_in_a_torrent() {
        assert_eq!(
            serde_json::to_string(&Reclaim::Delete).unwrap(),
            r#""Delete""#
        );
        assert_eq!(Reclaim::default(), Reclaim::Retain);
    }
}
