//! `GET|HEAD|DELETE /v2/<name>/blobs/<digest>`, and the pieces every blob response shares.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use oci_spec::image::Digest;

use super::range::{self, RangeRequest};
use super::{header_value, Head, Shared, DOCKER_CONTENT_DIGEST};
use std::sync::Arc;
use std::time::Duration;

use crate::digest;
use crate::error::{ApiError, ApiResult, Wanted};
use crate::fetch::{self, Fetch, FetchState};
use crate::store::{BlobFile, FileStamp};
use crate::upstream::UpstreamError;

/// Read size for blob bodies: large enough for throughput, small enough that many concurrent
/// streams stay within a few MiB.
const READ_CHUNK: usize = 512 << 10;

/// A blob file's bytes `pos..pos + left`, a chunk at a time. Bytes in the page cache are read
/// on the async worker itself (`preadv2` with `RWF_NOWAIT` fails rather than wait for the
/// disk); only what must come from the disk goes to the blocking pool. Serving a cached blob,
/// what the agent does most, costs no thread hop per chunk.
struct FileChunks {
    file: Arc<std::fs::File>,
    pos: u64,
    left: u64,
}

impl FileChunks {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.left == 0 {
            return None;
        }
        let n = self.left.min(READ_CHUNK as u64) as usize;
        let mut buf = BytesMut::zeroed(n);
        let cached = rustix::io::preadv2(
            &*self.file,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            self.pos,
            rustix::io::ReadWriteFlags::NOWAIT,
        );
        let (buf, got) = match cached {
            Ok(k) if k > 0 => (buf, k),
            // Not in the page cache (or a filesystem without RWF_NOWAIT): read on the pool.
            Ok(_) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::OPNOTSUPP) => {
                let (file, pos) = (self.file.clone(), self.pos);
                let read = tokio::task::spawn_blocking(move || {
                    let k = rustix::io::pread(&*file, &mut buf[..], pos)?;
                    Ok::<_, std::io::Error>((buf, k))
                })
                .await;
                match read {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Some(Err(e)),
                    Err(e) => return Some(Err(std::io::Error::other(e))),
                }
            }
            Err(e) => return Some(Err(e.into())),
        };
        if got == 0 {
            self.left = 0;
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "blob file shorter than its record",
            )));
        }
        let mut buf = buf;
        buf.truncate(got);
        self.pos += got as u64;
        self.left -= got as u64;
        Some(Ok(buf.freeze()))
    }

    fn stream(self) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        futures_util::stream::unfold(self, |mut c| async move { c.next().await.map(|r| (r, c)) })
    }
}

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

/// `len` bytes of an open blob file from `start`, read in bounded chunks; the stream holds the
/// blob against eviction. A whole-blob read of a file not verified since start-up, or changed
/// since it was, is hashed on its way out (with `verify_reads`) and its last chunk is withheld
/// until the digest matches: a blob altered on disk breaks the stream (and is dropped from the
/// cache) instead of reaching the client whole. Later reads of the unchanged file go unhashed.
pub(super) async fn file_stream(
    st: &Shared,
    digest: &Digest,
    blob: BlobFile,
    start: u64,
    len: u64,
    size: u64,
) -> ApiResult<BoxStream<'static, std::io::Result<Bytes>>> {
    let BlobFile { file, lease, stamp } = blob;
    // Checked: whole reads of a file not verified since start-up or changed since it was.
    let unverified = !st.store.is_verified(digest.as_ref(), &stamp);
    let chunks = FileChunks {
        file: Arc::new(file.into_std().await),
        pos: start,
        left: len,
    }
    .stream();
    if !(st.store.options().verify_reads && start == 0 && len == size && unverified) {
        return Ok(chunks
            .map(move |c| {
                let _held = &lease;
                c
            })
            .boxed());
    }
    let check = Verify {
        hasher: Some(digest::Hasher::new(digest::algorithm_of(digest))),
        digest: digest.clone(),
        left: len,
        store: st.store.clone(),
        stamp,
        _lease: lease,
    };
    Ok(futures_util::stream::unfold(
        (chunks.boxed(), check),
        |(mut chunks, mut check)| async move {
            let item = match chunks.next().await? {
                Ok(chunk) => check.pass(chunk).await,
                Err(e) => Err(e),
            };
            Some((item, (chunks, check)))
        },
    )
    .boxed())
}

/// Hashes a whole blob as it is served; the last chunk goes out only if the digest matches.
struct Verify {
    hasher: Option<digest::Hasher>,
    digest: Digest,
    left: u64,
    store: crate::store::Store,
    stamp: FileStamp,
    _lease: crate::store::Lease,
}

impl Verify {
    async fn pass(&mut self, chunk: Bytes) -> std::io::Result<Bytes> {
        let Some(h) = self.hasher.as_mut() else {
            return Ok(chunk);
        };
        h.update(&chunk);
        self.left = self.left.saturating_sub(chunk.len() as u64);
        if self.left > 0 {
            return Ok(chunk);
        }
        let actual = self.hasher.take().map(|h| h.finish());
        if actual.as_ref() == Some(&self.digest) {
            self.store.mark_verified(self.digest.as_ref(), self.stamp);
            return Ok(chunk);
        }
        self.store.report_corrupt(self.digest.as_ref()).await;
        Err(std::io::Error::other(format!(
            "blob {} is corrupt on disk; dropped from the cache",
            self.digest
        )))
    }
}

/// A body of `len` bytes of an open blob file from `start`.
pub(super) async fn file_body(
    st: &Shared,
    digest: &Digest,
    blob: BlobFile,
    start: u64,
    len: u64,
    size: u64,
) -> ApiResult<Body> {
    let stream = file_stream(st, digest, blob, start, len, size).await?;
    st.metrics.blob_bytes_served.inc_by(len);
    Ok(Body::from_stream(stream))
}

/// Serve an open blob file (GET or HEAD, with `Range`).
pub(super) async fn serve_file(
    st: &Shared,
    digest: &Digest,
    blob: BlobFile,
    size: u64,
    req: &Head,
) -> ApiResult<Response> {
    let (status, start, len) = range_of(req, size)?;
    let body = if req.method == Method::HEAD {
        Body::empty()
    } else {
        file_body(st, digest, blob, start, len, size).await?
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
    if_passed: fetch::IfPassedThrough,
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
                    FetchState::Verified { .. }
                        | FetchState::Done { .. }
                        | FetchState::Passthrough { .. }
                        | FetchState::Failed(_)
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
        let lease = st.store.lease(digest.as_ref());
        Body::from_stream(
            fetch::follow(
                f,
                st.store.files().blob_path(digest),
                start,
                start + len - 1,
                idle,
                if_passed,
            )
            .map(move |c| {
                let _held = &lease;
                c
            }),
        )
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
