//! Model hubs (Hugging Face, ModelScope) as Manta sees them, and the two OCI forms of a revision.
//!
//! A [`HubAdapter`] resolves a revision to its commit and full file list, maps a lowercase OCI
//! name back to the hub's canonical repo id, and downloads a file (from an offset). [`forms`]
//! turns a resolved file list into deterministic OCI manifests: the raw ModelPack form and the
//! image form (one uncompressed tar layer per file, described by a recipe, never stored twice).
//!
//! This crate knows nothing of the registry, axum or rocksdb: the registry wraps an adapter as a
//! blob source and stores what [`forms`] builds.

pub mod filter;
pub mod forms;
pub mod hf;
mod http;
pub mod ms;

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use filter::Filter;

/// Which hub a repository lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HubKind {
    /// Hugging Face (`hf/…`, `hf-raw/…`).
    Hf,
    /// ModelScope (`ms/…`, `ms-raw/…`).
    Ms,
}

impl HubKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HubKind::Hf => "hf",
            HubKind::Ms => "ms",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hf" | "huggingface" | "Huggingface" | "HuggingFace" => Some(HubKind::Hf),
            "ms" | "modelscope" | "ModelScope" => Some(HubKind::Ms),
            _ => None,
        }
    }
}

/// One file of a revision, as the hub lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubFile {
    /// Path relative to the repo root, `/`-separated (`1_Pooling/config.json`).
    pub path: String,
    pub size: u64,
    /// Lowercase hex sha256 of the content, when the hub lists it (Hugging Face LFS files,
    /// every ModelScope file). Files without one are hashed by the registry on download.
    pub sha256: Option<String>,
    /// The git blob id (sha1 hex) Hugging Face lists for every file; the facade's `ETag` for
    /// non-LFS files.
    pub oid: Option<String>,
}

/// A revision resolved to its commit, with every file of the repo at that commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// Canonical repo id (`Qwen/Qwen2.5-0.5B-Instruct`).
    pub repo: String,
    /// The commit (40 hex for Hugging Face; ModelScope's revision id).
    pub commit: String,
    /// Sorted by path.
    pub files: Vec<HubFile>,
}

/// File bytes as the hub sends them: `len` bytes starting at the requested offset.
pub struct Download {
    /// Bytes the body will carry (to the file's or the range's end, from the offset).
    pub len: u64,
    /// The whole file's size.
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, HubError>>,
}

/// What went wrong talking to a hub. Messages are the hub's own (`X-Error-Message` or body),
/// never a token.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("repository not found: {0}")]
    RepoNotFound(String),
    #[error("revision not found: {0}")]
    RevisionNotFound(String),
    #[error("file not found: {0}")]
    EntryNotFound(String),
    /// A gated or private repo asked for without a token (401).
    #[error("authentication required: {0}")]
    Unauthorized(String),
    /// A token that may not read the repo (403).
    #[error("access denied: {0}")]
    Denied(String),
    #[error("rate limited by the hub: {0}")]
    RateLimited(String),
    #[error("hub answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("hub unreachable: {0}")]
    Connect(#[source] reqwest::Error),
    #[error("hub timed out: {0}")]
    Timeout(&'static str),
    #[error("unexpected answer from the hub: {0}")]
    Malformed(String),
}

impl HubError {
    /// The hub could not be asked (network, timeout, 5xx, rate limit): a cached resolution may
    /// be served instead (stale-if-error). A definite answer (not found, denied) is never masked.
    pub fn is_unavailable(&self) -> bool {
        match self {
            HubError::Connect(_) | HubError::Timeout(_) | HubError::RateLimited(_) => true,
            HubError::Status { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }
}

/// Connection settings shared by the adapters.
#[derive(Clone)]
pub struct HubConfig {
    /// Base URL (`https://huggingface.co`, `https://www.modelscope.cn`), no trailing slash.
    pub endpoint: String,
    /// Bearer token (`HF_TOKEN`, `MODELSCOPE_API_TOKEN`); never logged, never sent across hosts.
    pub token: Option<String>,
    /// Connect and per-read timeout.
    pub timeout: Duration,
    /// Attempts for one request on 408/429/5xx and connection errors (`Retry-After` honoured).
    pub retries: u32,
    /// `User-Agent` sent with every request.
    pub user_agent: String,
}

impl std::fmt::Debug for HubConfig {
    /// The token is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// One model hub.
#[async_trait::async_trait]
pub trait HubAdapter: Send + Sync + 'static {
    fn kind(&self) -> HubKind;

    /// The canonical repo id for a lowercase OCI name (`qwen/qwen2.5-0.5b-instruct` →
    /// `Qwen/Qwen2.5-0.5B-Instruct`). An id already in canonical casing is returned as is.
    async fn canonical_repo(&self, name: &str) -> Result<String, HubError>;

    /// Resolve `revision` (branch, tag, `refs/pr/N`, or commit) of `repo` (canonical id) to its
    /// commit and list every file at that commit.
    async fn resolve(&self, repo: &str, revision: &str) -> Result<Resolved, HubError>;

    /// Download `path` of `repo` at `commit` from byte `offset` on. A connection that breaks
    /// mid-body is resumed with `Range` (within the retry budget) before the stream errors.
    async fn download(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        offset: u64,
    ) -> Result<Download, HubError> {
        self.download_range(repo, commit, path, offset, None).await
    }

    /// Download bytes `offset..end` of `path` (`end` `None`: to the file's end), asking the hub
    /// for only those (`Range: bytes=offset-(end-1)`); a hub that sends more is not read past
    /// `end`. Resumed as [`Self::download`] is.
    async fn download_range(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        offset: u64,
        end: Option<u64>,
    ) -> Result<Download, HubError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_token() {
        let cfg = HubConfig {
            endpoint: "https://huggingface.co".into(),
            token: Some("hf_secret123".into()),
            timeout: Duration::from_secs(1),
            retries: 1,
            user_agent: "t".into(),
        };
        let s = format!("{cfg:?}");
        assert!(!s.contains("hf_secret123"), "{s}");
        assert!(s.contains("<redacted>"));
    }
}
