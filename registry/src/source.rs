//! Where blob bytes come from: one [`BlobSource`] trait, one adapter per kind of source.
//!
//! - [`RegistryBlob`]: an upstream OCI registry (pull-through);
//! - [`HubFile`]: a file of a model hub revision (Hugging Face, ModelScope);
//! - [`PeerBlob`]: another Manta node, on its cluster listener.
//!
//! The first two are *origins*. The order — local store, then peers, then the origin — is
//! decided in one place, the fetch leader ([`crate::fetch`]); the routes ask only for the
//! blob's origin. Each source fails with its own error type ([`SourceError`]), and the bytes
//! each delivers are counted by kind (`manta_source_fetched_bytes{source=…}`).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};

use crate::store::HubSource;
use reqwest::Method as UpMethod;

use crate::upstream::{RegistryClient, UpstreamError};

/// The kinds of source, as the `source` label of metrics.
pub use crate::metrics::SourceKind;

/// Why a source could not deliver, typed by the kind of source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An origin (upstream registry or model hub) failed; this is what a client is told.
    #[error(transparent)]
    Origin(#[from] UpstreamError),
    /// A peer failed; the fetch moves on to another peer or the origin, and no client sees it.
    #[error(transparent)]
    Peer(#[from] manta_peer::PeerError),
}

impl SourceError {
    /// What a client is told: an origin's error as it is; a peer's, as a malformed answer.
    pub fn into_origin(self) -> UpstreamError {
        match self {
            SourceError::Origin(e) => e,
            SourceError::Peer(e) => UpstreamError::Malformed(e.to_string()),
        }
    }
}

/// The bytes of a blob as its source sends them: the whole blob's size, then the body from the
/// offset asked for.
pub struct Download {
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, SourceError>>,
}

/// A blob at one source, readable from any offset (0: the whole blob).
pub trait BlobSource: Send + Sync {
    fn kind(&self) -> SourceKind;
    /// The blob's size, when the source knows it before opening it (a hub lists its files'
    /// sizes): what any other source of the blob must agree with.
    fn size(&self) -> Option<u64> {
        None
    }
    /// The blob from `offset` on.
    fn open(&self, offset: u64) -> BoxFuture<'static, Result<Download, SourceError>> {
        self.open_range(offset, None)
    }
    /// Bytes `offset..end` (`end` `None`: to the blob's end), asking the source for those only;
    /// the reader stops at `end` either way (a source that sends more is cut off there).
    fn open_range(
        &self,
        offset: u64,
        end: Option<u64>,
    ) -> BoxFuture<'static, Result<Download, SourceError>>;
}

/// A blob of an upstream registry's repository.
pub struct RegistryBlob {
    pub client: Arc<RegistryClient>,
    pub repo: String,
    pub digest: String,
}

impl BlobSource for RegistryBlob {
    fn kind(&self) -> SourceKind {
        SourceKind::upstream
    }

    fn open_range(
        &self,
        offset: u64,
        end: Option<u64>,
    ) -> BoxFuture<'static, Result<Download, SourceError>> {
        let (client, repo, path) = (
            self.client.clone(),
            self.repo.clone(),
            format!("blobs/{}", self.digest),
        );
        Box::pin(async move {
            let resp = client
                .request_from(UpMethod::GET, &repo, &path, None, offset, end)
                .await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(UpstreamError::from_response("blob", resp).await.into());
            }
            let partial = status == reqwest::StatusCode::PARTIAL_CONTENT;
            let size = if partial {
                resp.headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.rsplit_once('/'))
                    .and_then(|(_, total)| total.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        UpstreamError::Malformed("a 206 blob answer without a total size".into())
                    })?
            } else {
                resp.content_length()
                    .ok_or_else(|| UpstreamError::Malformed("blob without Content-Length".into()))?
            };
            let body = resp
                .bytes_stream()
                .map(|c| c.map_err(|e| SourceError::Origin(UpstreamError::Connect(e))))
                .boxed();
            // A registry that ignored the Range header sent the whole blob: skip to the offset.
            let body = if offset > 0 && !partial {
                crate::fetch::pass::skip(body, offset)
            } else {
                body
            };
            Ok(Download { size, body })
        })
    }
}

/// A file of a resolved hub revision.
pub struct HubFile {
    pub adapter: Result<Arc<dyn manta_hub::HubAdapter>, Arc<UpstreamError>>,
    pub source: HubSource,
}

impl BlobSource for HubFile {
    fn kind(&self) -> SourceKind {
        SourceKind::hub
    }

    fn size(&self) -> Option<u64> {
        Some(self.source.size)
    }

    fn open_range(
        &self,
        offset: u64,
        end: Option<u64>,
    ) -> BoxFuture<'static, Result<Download, SourceError>> {
        let adapter = self.adapter.clone();
        let s = self.source.clone();
        Box::pin(async move {
            let adapter = adapter.map_err(|e| match &*e {
                UpstreamError::HubNotConfigured(h) => UpstreamError::HubNotConfigured(h),
                _ => UpstreamError::Internal("no adapter for the hub"),
            })?;
            let dl = adapter
                .download_range(&s.repo, &s.commit, &s.path, offset, end)
                .await
                .map_err(UpstreamError::from)?;
            if dl.size != s.size {
                return Err(UpstreamError::Malformed(format!(
                    "{}: {} bytes, the hub listed {}",
                    s.path, dl.size, s.size
                ))
                .into());
            }
            Ok(Download {
                size: dl.size,
                body: dl
                    .body
                    .map_err(|e| SourceError::Origin(UpstreamError::from(e)))
                    .boxed(),
            })
        })
    }
}

/// A blob on a peer (which may still be downloading it).
pub struct PeerBlob {
    pub client: manta_peer::PeerClient,
    pub addr: String,
    pub digest: String,
}

impl BlobSource for PeerBlob {
    fn kind(&self) -> SourceKind {
        SourceKind::peer
    }

    fn open_range(
        &self,
        offset: u64,
        end: Option<u64>,
    ) -> BoxFuture<'static, Result<Download, SourceError>> {
        let (client, addr, digest) = (self.client.clone(), self.addr.clone(), self.digest.clone());
        Box::pin(async move {
            let b = client.blob_range(&addr, &digest, offset, end).await?;
            Ok(Download {
                size: b.size,
                body: b.body.map_err(SourceError::from).boxed(),
            })
        })
    }
}
