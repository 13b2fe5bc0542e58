//! The `Torrent` custom resource (`manta.io/v1alpha1`, cluster-scoped).
//!
//! It keeps the original Manta API's fields and defaults, so that project's samples apply
//! unchanged: `preheat` (default true), `hub{name, repoID, filename, revision}`, `replicas`
//! (default 1), `nodeSelector`, `reclaimPolicy` (default `Retain`), `ttlSecondsAfterReady`. It
//! adds llmaz's `allowPatterns` / `ignorePatterns` (in `hub`, beside `filename`), ModelScope,
//! `forms`, and `replicas: All` (every node that passes the filters, including nodes that join
//! later).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The finalizer that releases a Torrent's pins before it goes.
pub const FINALIZER: &str = "manta.io/torrent-protection";

/// Kept in status: nodes in progress or failed named one by one, at most this many.
pub const NODE_LIST_CAP: usize = 32;

/// A model to have on chosen nodes, and keep there.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "manta.io",
    version = "v1alpha1",
    kind = "Torrent",
    plural = "torrents",
    status = "TorrentStatus",
    category = "manta",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.readyNodes","description":"nodes that hold the model / nodes wanted"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TorrentSpec {
    /// Whether to fetch the model onto the chosen nodes now. `false` keeps the Torrent on
    /// standby (nothing is fetched); it can change from false to true, not back.
    #[serde(default = "default_true")]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("preheat can change from false to true, not back"))]
    pub preheat: bool,

    /// Where the model comes from. Immutable: a new model is a new Torrent.
    #[x_kube(validation = Rule::new("self == oldSelf").message("hub is immutable"))]
    pub hub: Hub,

    /// How many nodes hold the model: a number (default 1), or `All` for every node that passes
    /// the filters, including nodes that join later.
    #[serde(default)]
    pub replicas: Replicas,

    /// What releasing the Torrent does to the model on its nodes: `Retain` unpins it (it stays
    /// cached until the cache needs the room), `Delete` unpins it and deletes it now (what no
    /// other pin holds).
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,

    /// Delete the Torrent this many seconds after it is Ready (its reclaim policy then applies).
    /// Unset: it stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_ready: Option<i64>,

    /// Only nodes with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// The forms to prepare: `image` (for image volumes), `raw` (for `oras pull`) [default: both].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub forms: Vec<TorrentForm>,
}

fn default_true() -> bool {
    true
}

/// A model repo on a hub, and which of its files.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.filename) || (!has(self.allowPatterns) && !has(self.ignorePatterns))").message("filename and allowPatterns/ignorePatterns are exclusive")
)]
pub struct Hub {
    /// The model hub [default: Huggingface].
    #[serde(default)]
    pub name: HubName,
    /// The repo on the hub, `<org>/<name>` (`Qwen/Qwen2.5-0.5B-Instruct`).
    #[serde(rename = "repoID")]
    #[schemars(regex(
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$"
    ))]
    pub repo_id: String,
    /// One file rather than the whole repo (one GGUF of many, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub filename: Option<String>,
    /// A branch, tag, `refs/pr/N` or commit [default: `main`; `master` on ModelScope].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub revision: Option<String>,
    /// Only files matching one of these globs (`huggingface_hub`'s semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_patterns: Option<Vec<String>>,
    /// No file matching one of these globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_patterns: Option<Vec<String>>,
}

impl Hub {
    /// The revision asked for, with the hub's default.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(match self.name {
            HubName::Huggingface => "main",
            HubName::ModelScope => "master",
        })
    }

    /// The subset of files, as the admin API takes it.
    pub fn filter(&self) -> manta_api::Filter {
        manta_api::Filter {
            filename: self.filename.clone(),
            allow_patterns: self.allow_patterns.clone().unwrap_or_default(),
            ignore_patterns: self.ignore_patterns.clone().unwrap_or_default(),
        }
    }

    pub fn kind(&self) -> manta_api::HubKind {
        match self.name {
            HubName::Huggingface => manta_api::HubKind::Hf,
            HubName::ModelScope => manta_api::HubKind::Ms,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum HubName {
    #[default]
    Huggingface,
    ModelScope,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    #[default]
    Retain,
    Delete,
}

impl From<ReclaimPolicy> for manta_api::Reclaim {
    fn from(p: ReclaimPolicy) -> Self {
        match p {
            ReclaimPolicy::Retain => manta_api::Reclaim::Retain,
            ReclaimPolicy::Delete => manta_api::Reclaim::Delete,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TorrentForm {
    Image,
    Raw,
}

impl From<TorrentForm> for manta_api::Form {
    fn from(f: TorrentForm) -> Self {
        match f {
            TorrentForm::Image => manta_api::Form::Image,
            TorrentForm::Raw => manta_api::Form::Raw,
        }
    }
}

/// `replicas`: a number of nodes, or `All`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    Count(u32),
    All,
}

impl Default for Replicas {
    fn default() -> Self {
        Replicas::Count(1)
    }
}

impl Serialize for Replicas {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Replicas::Count(n) => s.serialize_u32(*n),
            Replicas::All => s.serialize_str("All"),
        }
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) if (1..=i64::from(u32::MAX)).contains(&n) => Ok(Replicas::Count(
                u32::try_from(n).map_err(serde::de::Error::custom)?,
            )),
            Raw::N(n) => Err(serde::de::Error::custom(format!(
                "replicas must be at least 1, not {n}"
            ))),
            Raw::S(s) if s == "All" => Ok(Replicas::All),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "replicas is a number or \"All\", not {s:?}"
            ))),
        }
    }
}

impl JsonSchema for Replicas {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Replicas".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How many nodes hold the model: a number (default 1), or `All`.",
            "x-kubernetes-int-or-string": true,
            // Not nullable (kube marks optional int-or-string fields nullable unless told): the
            // API server then prunes a `replicas: null` (an empty Helm value) and applies the
            // default, where a kept null would fail every client's decode of the Torrent list.
            "nullable": false,
            "default": 1,
            "x-kubernetes-validations": [{
                "rule": "type(self) == int ? self >= 1 : self == 'All'",
                "message": "replicas is a number of at least 1, or All"
            }]
        })
    }
}

/// Where a Torrent is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Waiting: on standby (`preheat: false`), or for a node that can take it.
    Pending,
    /// The first node is asking the hub what the revision holds.
    Resolving,
    /// Nodes are fetching it.
    Replicating,
    /// Every node wanted holds it, pinned.
    Ready,
    /// The hub refused it (a gated repo, a missing revision): the reason is in the conditions.
    Failed,
    /// Being deleted: its pins are being released.
    Reclaiming,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Resolving => "Resolving",
            Phase::Replicating => "Replicating",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
            Phase::Reclaiming => "Reclaiming",
        }
    }

    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Resolving,
        Phase::Replicating,
        Phase::Ready,
        Phase::Failed,
        Phase::Reclaiming,
    ];
}

/// What a Torrent has become. Bounded whatever the model or the cluster: no per-file list, and
/// nodes are counted, with only those in progress or failed named (at most [`NODE_LIST_CAP`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TorrentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The revision asked for (with the hub's default applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The commit it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// What to pull on a chosen node (`localhost:5000/hf/<repo>:<tag>`, `…/hf-raw/…`); a subset
    /// gets its derived tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<References>,
    /// Bytes held on the chosen nodes, over all of them.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes the chosen nodes hold when done, over all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// The model's size on one node, for people (`1.2 GiB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The model's size on one node, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// `<ready>/<desired>`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_nodes: Option<String>,
    #[serde(default)]
    pub nodes: NodeSummary,
}

/// The references to pull a prepared Torrent by, one per form.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct References {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

/// The chosen nodes, counted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// Nodes wanted (with `All`, the nodes that pass the filters now).
    #[serde(default)]
    pub desired: u32,
    #[serde(default)]
    pub ready: u32,
    #[serde(default)]
    pub in_progress: u32,
    #[serde(default)]
    pub failed: u32,
    /// Nodes in progress or failed, by name (at most 32; `omitted` counts the rest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<NodeState>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One chosen node that is not (yet) ready.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    pub name: String,
    pub state: NodeStateKind,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodeStateKind {
    InProgress,
    Failed,
}
