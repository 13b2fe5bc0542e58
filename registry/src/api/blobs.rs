//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`, and the pieces every blob response shares.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use oci_spec::image::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::range::{self, RangeRequest};
use super::{header_value, Head, Shared, DOCKER_CONTENT_DIGEST};
use std::sync::Arc;
use std::time::Duration;

use crate::digest;
use crate::error::{ApiError, ApiResult, Wanted};
use crate::fetch::{self, Fetch, FetchState};
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// Read size for blob bodies: large enough for throughput, small enough that many concurrent
/// streams stay within a few MiB.
const READ_CHUNK: usize = 256 << 10;

/// The status and the `start, len` a request's `Range` asks of a blob of `size` bytes.
pub(super) fn range_of(req: &Head, size: u64) -> ApiResult<(StatusCode, u64, u64)> {
    let h = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    match range::parse(h, size) {
        RangeRequest::Full => Ok((StatusCode::OK, 0, size)),
        RangeRequest::Partial { start, end } => {
            Ok((StatusCode::PARTIAL_CONTENT, start, end - start + 1))
        }
        RangeRequest::Unsatisfiable => Err(ApiError::RangeNotSatisfiable { size }),
    }
}

/// A blob response: `body` is `len` bytes from `start` of a blob of `size`.
pub(super) fn blob_response(
    body: Body,
    digest: &Digest,
    status: StatusCode,
    start: u64,
    len: u64,
    size: u64,
) -> ApiResult<Response> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(DOCKER_CONTENT_DIGEST, header_value(digest.as_ref())?);
    h.insert(header::ETAG, header_value(&format!("\"{digest}\""))?);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {}-{}/{}", start, start + len - 1, size))?,
        );
    }
    Ok(resp)
}

/// `len` bytes of an open blob file from `start`, read in bounded chunks.
pub(super) async fn file_stream(
    st: &Shared,
    digest: &Digest,
    mut file: tokio::fs::File,
    start: u64,
    len: u64,
) -> ApiResult<tokio_util::io::ReaderStream<tokio::io::Take<tokio::fs::File>>> {
    if start > 0 {
        let path = st.store.files().blob_path(digest);
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(StoreError::io("seek", &path))?;
    }
    Ok(tokio_util::io::ReaderStream::with_capacity(
        file.take(len),
        READ_CHUNK,
    ))
}

/// A body of `len` bytes of an open blob file from `start`.
pub(super) async fn file_body(
    st: &Shared,
    digest: &Digest,
    file: tokio::fs::File,
    start: u64,
    len: u64,
) -> ApiResult<Body> {
    let stream = file_stream(st, digest, file, start, len).await?;
    st.metrics.blob_bytes_served.inc_by(len);
    Ok(Body::from_stream(stream))
}

/// Serve an open blob file (GET or HEAD, with `Range`).
pub(super) async fn serve_file(
    st: &Shared,
    digest: &Digest,
    file: tokio::fs::File,
    size: u64,
    req: &Head,
) -> ApiResult<Response> {
    let (status, start, len) = range_of(req, size)?;
    let body = if req.method == Method::HEAD {
        Body::empty()
    } else {
        file_body(st, digest, file, start, len).await?
    };
    blob_response(body, digest, status, start, len, size)
}

/// Serve a blob (GET, with `Range`) while a fetch brings it in: wait for its size, then follow
/// the bytes as they arrive.
pub(super) async fn serve_fetch(
    st: &Shared,
    f: &Arc<Fetch>,
    digest: &Digest,
    req: &Head,
    idle: Duration,
) -> ApiResult<Response> {
    let up = |e: Arc<UpstreamError>| ApiError::upstream(Wanted::Blob, e);
    let mut rx = f.subscribe();
    let size = fetch::size_of(&mut rx, idle + Duration::from_secs(5))
        .await
        .map_err(up)?;
    if size == 0 {
        // Nothing to stream: answer once the (empty) content is verified.
        let done = tokio::time::timeout(
            idle,
            rx.wait_for(|s| {
                matches!(
                    s,
                    FetchState::Verified { .. } | FetchState::Done { .. } | FetchState::Failed(_)
                )
            }),
        )
        .await
        .map_err(|_| up(Arc::new(UpstreamError::Timeout("blob"))))?
        .map(|s| s.clone());
        if let Ok(FetchState::Failed(e)) = done {
            return Err(up(e));
        }
    }
    let (status, start, len) = range_of(req, size)?;
    st.metrics.blob_bytes_served.inc_by(len);
    let body = if len == 0 {
        Body::empty()
    } else {
        Body::from_stream(fetch::follow(
            f,
            st.store.files().blob_path(digest),
            start,
            start + len - 1,
            idle,
        ))
    };
    blob_response(body, digest, status, start, len, size)
}

pub(super) async fn get(
    st: &Shared,
    name: &str,
    digest_s: &str,
    req: &Head,
) -> ApiResult<Response> {
    let (digest, _) =
        digest::parse(digest_s).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
    let Some((file, size)) = st.store.open_blob(name, &digest).await? else {
        return Err(ApiError::BlobUnknown);
    };
    serve_file(st, &digest, file, size, req).await
}

pub(super) async fn delete(st: &Shared, name: &str, digest_s: &str) -> ApiResult<Response> {
    let (digest, _) =
        digest::parse(digest_s).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
    if !st.store.delete_blob(name, &digest).await? {
        return Err(ApiError::BlobUnknown);
    }
    Ok((
        StatusCode::ACCEPTED,
        [(DOCKER_CONTENT_DIGEST, header_value(digest.as_ref())?)],
    )
        .into_response())
}
