//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::range::{self, RangeRequest};
use super::{header_value, Head, Shared, DOCKER_CONTENT_DIGEST};
use crate::digest;
use crate::error::{ApiError, ApiResult};
use crate::store::StoreError;

/// Read size for blob bodies: large enough for throughput, small enough that many concurrent
/// streams stay within a few MiB.
const READ_CHUNK: usize = 256 << 10;

pub(super) async fn get(
    st: &Shared,
    name: &str,
    digest_s: &str,
    req: &Head,
) -> ApiResult<Response> {
    let (digest, _) =
        digest::parse(digest_s).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
    let Some((mut file, size)) = st.store.open_blob(name, &digest).await? else {
        return Err(ApiError::BlobUnknown);
    };
    let range_header = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, len) = match range::parse(range_header, size) {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => return Err(ApiError::RangeNotSatisfiable { size }),
    };
    let mut resp = if req.method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        if start > 0 {
            let path = st.store.files().blob_path(&digest);
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(StoreError::io("seek", &path))?;
        }
        st.metrics.blob_bytes_served.inc_by(len);
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_CHUNK);
        Response::new(Body::from_stream(stream))
    };
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
