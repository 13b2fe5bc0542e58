//! Errors of the registry, and the one place they become OCI error responses.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` chooses the OCI code, the HTTP status and
//! the JSON body. Internal detail (paths, rocksdb messages) is logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use oci_spec::distribution::{ErrorCode, ErrorInfoBuilder, ErrorResponseBuilder};

use crate::store::StoreError;

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
    #[error("not found")]
    NotFound,
    #[error("internal storage error")]
    Store(#[from] StoreError),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, ErrorCode) {
        use ApiError::*;
        match self {
            BlobUnknown => (StatusCode::NOT_FOUND, ErrorCode::BlobUnknown),
            BlobUploadUnknown => (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown),
            BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid),
            DigestMismatch { .. } | DigestInvalid(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid)
            }
            ManifestBlobUnknown(_) => (StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown),
            ManifestInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid),
            ManifestUnknown => (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown),
            NameInvalid => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            NameUnknown | NotFound => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            SizeInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::SizeInvalid),
            TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid),
            RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BlobUnknown)
            }
            UploadRangeInvalid(_) => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::BlobUploadInvalid,
            ),
            Unsupported(_) => (StatusCode::BAD_REQUEST, ErrorCode::Unsupported),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
            Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unsupported),
        }
    }

    fn detail(&self) -> Option<serde_json::Value> {
        match self {
            ApiError::DigestMismatch { expected, actual } => {
                Some(serde_json::json!({ "expected": expected, "actual": actual }))
            }
            ApiError::RangeNotSatisfiable { size } => Some(serde_json::json!({ "size": size })),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let ApiError::Store(e) = &self {
            tracing::error!(error = %e, source = ?std::error::Error::source(e), "storage error");
        } else {
            tracing::debug!(%status, error = %self, "request refused");
        }
        let mut info = ErrorInfoBuilder::default()
            .code(code)
            .message(self.to_string());
        if let Some(d) = self.detail() {
            info = info.detail(d.to_string());
        }
        let body = info
            .build()
            .and_then(|i| ErrorResponseBuilder::default().errors(vec![i]).build())
            .ok()
            .and_then(|r| serde_json::to_vec(&r).ok())
            .unwrap_or_else(|| {
                br#"{"errors":[{"code":"UNSUPPORTED","message":"error"}]}"#.to_vec()
            });
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let ApiError::RangeNotSatisfiable { size } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
