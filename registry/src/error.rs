//! Errors of the registry, and the one place they become OCI error responses.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` chooses the OCI code, the HTTP status and
//! the JSON body. Internal detail (paths, rocksdb messages) is logged, never sent.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;
use crate::upstream::UpstreamError;
use manta_hub::HubError;

/// What a request through an upstream was after, to name a 404 right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    Manifest,
    Blob,
}

/// An error answered to an OCI client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("provided digest did not match uploaded content")]
    DigestMismatch { expected: String, actual: String },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest references a blob or manifest unknown to the repository: {0}")]
    ManifestBlobUnknown(String),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    #[error("invalid repository name")]
    NameInvalid,
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{what} exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    UploadRangeInvalid(String),
    #[error("the operation is unsupported: {0}")]
    Unsupported(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request conflicts with the cache's state (removing pinned content).
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("{error}")]
    Upstream {
        wanted: Wanted,
        error: Arc<UpstreamError>,
    },
    #[error("{}", .0.client_message())]
    Store(#[from] StoreError),
    /// The request lacks the credentials this listener needs.
    #[error("authentication required: {0}")]
    Unauthorized(String),
    /// Too many of something at once (open upload sessions); try again later.
    #[error("{0}")]
    TooMany(String),
}

impl ApiError {
    pub fn upstream(wanted: Wanted, error: impl Into<Arc<UpstreamError>>) -> Self {
        ApiError::Upstream {
            wanted,
            error: error.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            BlobUnknown => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            BlobUploadUnknown => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            DigestMismatch { .. } | DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            ManifestUnknown => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            NameInvalid => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            NameUnknown | NotFound => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN"),
            UploadRangeInvalid(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
            Unsupported(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Conflict(_) => (StatusCode::CONFLICT, "DENIED"),
            Upstream { wanted, error } => upstream_parts(*wanted, error),
            Store(e) if e.is_no_space() => (StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN"),
            Store(e) if e.is_fd_exhaustion() => {
                (StatusCode::SERVICE_UNAVAILABLE, "TOOMANYREQUESTS")
            }
            Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
        }
    }

    fn detail(&self) -> Option<serde_json::Value> {
        match self {
            ApiError::DigestMismatch { expected, actual } => {
                Some(serde_json::json!({ "expected": expected, "actual": actual }))
            }
            ApiError::RangeNotSatisfiable { size } => Some(serde_json::json!({ "size": size })),
            ApiError::Upstream { error, .. } => match &**error {
                UpstreamError::Hub(h) => Some(serde_json::json!({ "hub": h.to_string() })),
                _ => None,
            },
            _ => None,
        }
    }
}

/// An upstream's own answer keeps its meaning (401, 403, 404, 429); its failures are 502/504.
fn upstream_parts(wanted: Wanted, e: &UpstreamError) -> (StatusCode, &'static str) {
    match e {
        UpstreamError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
        UpstreamError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "UNKNOWN"),
        UpstreamError::Auth(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        UpstreamError::Status { status, code, .. } => match status {
            401 => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            403 => (StatusCode::FORBIDDEN, "DENIED"),
            404 => match (code.as_deref(), wanted) {
                (Some("NAME_UNKNOWN"), _) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
                (_, Wanted::Manifest) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
                (_, Wanted::Blob) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            },
            429 => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            _ => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
        },
        UpstreamError::Connect(e) if crate::upstream::is_fd_exhaustion(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, "TOOMANYREQUESTS")
        }
        UpstreamError::Connect(_)
        | UpstreamError::DigestMismatch { .. }
        | UpstreamError::Malformed(_)
        | UpstreamError::Unrepresentable(_) => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
        UpstreamError::HubNotConfigured(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        UpstreamError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        UpstreamError::Hub(h) => hub_parts(wanted, h),
        UpstreamError::Local(l) if l.is_no_space() => (StatusCode::INSUFFICIENT_STORAGE, "UNKNOWN"),
        UpstreamError::Local(l) if l.is_fd_exhaustion() => {
            (StatusCode::SERVICE_UNAVAILABLE, "TOOMANYREQUESTS")
        }
        UpstreamError::Local(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
    }
}

/// A hub's answer as an OCI error: a missing repo is an unknown name, a missing revision an
/// unknown manifest, a gated repo unauthorized (no token) or denied (token not approved).
fn hub_parts(wanted: Wanted, e: &HubError) -> (StatusCode, &'static str) {
    match e {
        HubError::RepoNotFound(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        HubError::RevisionNotFound(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
        HubError::EntryNotFound(_) => match wanted {
            Wanted::Manifest => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Wanted::Blob => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
        },
        HubError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        HubError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
        HubError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
        HubError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "UNKNOWN"),
        HubError::Status { .. } | HubError::Connect(_) | HubError::Malformed(_) => {
            (StatusCode::BAD_GATEWAY, "UNKNOWN")
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(e), "storage error")
            }
            ApiError::Upstream { error, .. } if matches!(&**error, UpstreamError::Internal(_)) => {
                tracing::error!(%status, error = %error, "internal error")
            }
            ApiError::Upstream { error, .. } => {
                tracing::warn!(%status, error = %error, cause = ?std::error::Error::source(&**error), "upstream error")
            }
            _ => tracing::debug!(%status, error = %self, "request refused"),
        }
        let mut info = serde_json::json!({ "code": code, "message": self.to_string() });
        if let Some(d) = self.detail() {
            info["detail"] = d;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "errors": [info] })).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ApiError::RangeNotSatisfiable { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            ApiError::Upstream { error, .. } => {
                if let UpstreamError::Status {
                    retry_after: Some(r),
                    ..
                } = &**error
                {
                    if let Ok(v) = HeaderValue::from_str(r) {
                        h.insert(header::RETRY_AFTER, v);
                    }
                }
            }
            _ => {}
        }
        // Our own "not now" answers (too many uploads, out of file descriptors) say when to retry.
        if (status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS)
            && !h.contains_key(header::RETRY_AFTER)
        {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
