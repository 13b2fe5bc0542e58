//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (session, monolithic `?digest=`, `?mount=`),
//! and `PATCH|PUT|GET|DELETE /v2/<name>/blobs/uploads/<id>`.
//!
//! A session's bytes are in `tmp/uploads/<id>`; its record (repo, algorithm, offset) is in the
//! index, so a session survives a restart: the hash state is rebuilt by re-reading the file.
//! Crash story: the record's offset is written after the bytes, so the file is never shorter
//! than the record says (start-up truncates any excess, and drops sessions whose file is short).
//!
//! A session's bytes count against the cache's capacity while it lives (its [`Reservation`]);
//! a body reserves its announced length before its first byte, or, streamed without a length,
//! step by step as it is written, so a push that cannot fit is refused with 507 before it eats
//! the filesystem's reserve. A `PATCH` with `Content-Range` is all or nothing: refused, it
//! leaves the session byte for byte as it was. At most `--max-upload-sessions` are open.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use oci_spec::image::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

use super::range::parse_content_range;
use super::{
    blob_location, check_name, header_value, Req, Shared, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID,
};
use crate::digest::{self, Algorithm, Hasher};
use crate::error::{ApiError, ApiResult};
use crate::store::{unix_now, Origin, Reservation, Store, StoreError, TempBlob, UploadRecord};

/// A body streamed without a length reserves room this much at a time.
const GROW_STEP: u64 = 8 << 20;

struct Session {
    record: UploadRecord,
    /// Hash of exactly `record.offset` bytes, when known (rebuilt from the file after a restart).
    hasher: Option<Hasher>,
    /// The session's bytes, counted against the capacity until it ends.
    room: Reservation,
}

/// Live upload sessions; the index holds the durable part.
#[derive(Default)]
pub struct UploadSessions {
    live: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Session>>>>,
    /// Held while a session is counted and created, so the cap holds under concurrent POSTs.
    starting: tokio::sync::Mutex<()>,
}

impl UploadSessions {
    /// Remove sessions idle for longer than `ttl_secs`, with their bytes. A session a request
    /// is using right now is left alone. Returns how many went.
    pub async fn purge_idle(&self, store: &Store, ttl_secs: u64) -> Result<usize, StoreError> {
        let cutoff = unix_now().saturating_sub(ttl_secs);
        let mut idle = Vec::new();
        store.index().for_each_upload(&mut |id, r| {
            if r.updated_at.max(r.started_at) < cutoff {
                idle.push(id.to_string());
            }
        })?;
        let mut purged = 0;
        for key in idle {
            let Ok(id) = Uuid::from_str(&key) else {
                continue;
            };
            let live = self.map().get(&id).cloned();
            // Hold the session's lock (if live) while it goes, so no request writes to it meanwhile.
            let _guard = match &live {
                Some(s) => match s.try_lock() {
                    Ok(g) if g.record.updated_at.max(g.record.started_at) < cutoff => Some(g),
                    _ => continue, // in use, or active since the scan
                },
                None => None,
            };
            self.map().remove(&id);
            let k = key.clone();
            store
                .freeing_write(move |idx| idx.delete_upload(&k))
                .await?;
            let _ = tokio::fs::remove_file(store.files().upload_path(&id)).await;
            purged += 1;
        }
        Ok(purged)
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<tokio::sync::Mutex<Session>>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn location(name: &str, id: &Uuid) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// `Range: 0-<last byte>` as the distribution-spec writes it (`0-0` when empty, as distribution does).
fn range_header(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn accepted(name: &str, id: &Uuid, offset: u64, status: StatusCode) -> ApiResult<Response> {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, header_value(&location(name, id))?);
    h.insert(header::RANGE, header_value(&range_header(offset))?);
    h.insert(DOCKER_UPLOAD_UUID, header_value(&id.to_string())?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(resp)
}

fn created(name: &str, digest: &Digest) -> ApiResult<Response> {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&blob_location(name, digest))?,
    );
    h.insert(DOCKER_CONTENT_DIGEST, header_value(digest.as_ref())?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(resp)
}

fn parse_digest_param(v: &str) -> ApiResult<(Digest, Algorithm)> {
    digest::parse(v).map_err(|e| ApiError::DigestInvalid(e.to_string()))
}

pub(super) async fn start(st: &Shared, name: &str, req: Req) -> ApiResult<Response> {
    // Cross-repository mount.
    if let Some(mount) = req.head.query.get("mount") {
        let (d, _) = parse_digest_param(mount)?;
        let from = req.head.query.get("from");
        if let Some(from) = from {
            check_name(from)?;
        }
        let linked = match from {
            Some(from) => st.store.index().blob_linked(from, d.as_ref())?,
            // Without `from` the registry may look for the blob itself: every blob here is one
            // node's cache, readable by any repository that asks for it by digest.
            None => true,
        };
        if linked && st.store.link_blob(name, &d).await? {
            return created(name, &d);
        }
    }
    // Monolithic upload: POST ?digest= with the whole body.
    if let Some(d) = req.head.query.get("digest") {
        let (expected, alg) = parse_digest_param(d)?;
        let mut room = st.store.space().hold_existing(0);
        if let Some(n) = content_length(&req.head.headers) {
            st.store.grow(&mut room, n).await?;
        }
        let mut w = st.store.files().temp_writer(alg).await?;
        let mut stream = req.body.into_data_stream();
        while let Some(chunk) = next_chunk(st, &mut stream).await? {
            make_room(st, &mut room, chunk.len() as u64).await?;
            w.write(&chunk).await?;
            room.written(chunk.len() as u64);
        }
        st.metrics.blob_bytes_received.inc_by(w.len());
        let (blob, actual) = w.finish().await?;
        return finish_verified(st, name, blob, &expected, &actual).await;
    }
    let alg = match req.head.query.get("digest-algorithm") {
        None => Algorithm::Sha256,
        Some(a) => Algorithm::parse(a)
            .ok_or_else(|| ApiError::Unsupported(format!("digest algorithm {a:?}")))?,
    };
    let _starting = st.uploads.starting.lock().await;
    let mut open = 0usize;
    st.store.index().for_each_upload(&mut |_, _| open += 1)?;
    if open >= st.limits.max_upload_sessions {
        return Err(ApiError::TooMany(format!(
            "{open} upload sessions are open, as many as this agent allows; finish or cancel one, or retry later"
        )));
    }
    let id = Uuid::new_v4();
    let path = st.store.files().upload_path(&id);
    tokio::fs::File::create(&path)
        .await
        .map_err(StoreError::io("create", &path))?;
    let record = UploadRecord {
        version: 1,
        repo: name.to_string(),
        algorithm: alg,
        offset: 0,
        started_at: unix_now(),
        updated_at: unix_now(),
    };
    let (key, rec) = (id.to_string(), record.clone());
    let recorded = st
        .store
        .blocking(move |idx| idx.put_upload(&key, &rec, true))
        .await;
    if let Err(e) = recorded {
        // No session without its record: its file goes too.
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e.into());
    }
    let session = Session {
        record,
        hasher: Some(Hasher::new(alg)),
        room: st.store.space().hold_existing(0),
    };
    st.uploads
        .map()
        .insert(id, Arc::new(tokio::sync::Mutex::new(session)));
    accepted(name, &id, 0, StatusCode::ACCEPTED)
}

async fn finish_verified(
    st: &Shared,
    name: &str,
    blob: TempBlob,
    expected: &Digest,
    actual: &Digest,
) -> ApiResult<Response> {
    if actual != expected {
        // `blob` is dropped here: its temp file goes, nothing is stored.
        return Err(ApiError::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    st.store
        .commit_blob(name, blob, expected, Origin::Pushed)
        .await?;
    created(name, expected)
}

/// Find a session (live, or recorded before a restart) of repository `name`.
async fn session(
    st: &Shared,
    name: &str,
    id: &str,
) -> ApiResult<(Uuid, Arc<tokio::sync::Mutex<Session>>)> {
    let id = Uuid::from_str(id).map_err(|_| ApiError::BlobUploadUnknown)?;
    let found = st.uploads.map().get(&id).cloned();
    let s = match found {
        Some(s) => s,
        None => {
            let key = id.to_string();
            let Some(record) = st.store.index().upload(&key)? else {
                return Err(ApiError::BlobUploadUnknown);
            };
            // Bytes received before a restart: on disk, so counted from now on.
            let room = st.store.space().hold_existing(record.offset);
            let s = Arc::new(tokio::sync::Mutex::new(Session {
                record,
                hasher: None,
                room,
            }));
            st.uploads.map().entry(id).or_insert(s).clone()
        }
    };
    if s.lock().await.record.repo != name {
        return Err(ApiError::BlobUploadUnknown);
    }
    Ok((id, s))
}

/// Make `s.hasher` cover exactly the bytes received (re-reading the file after a restart).
async fn ensure_hasher(
    st: &Shared,
    id: &Uuid,
    s: &mut Session,
    alg: Algorithm,
) -> ApiResult<Hasher> {
    if let Some(h) = &s.hasher {
        if h.algorithm() == alg {
            return Ok(h.clone());
        }
    }
    let path = st.store.files().upload_path(id);
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(StoreError::io("open", &path))?;
    let mut h = Hasher::new(alg);
    let mut left = s.record.offset;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = f
            .read(&mut buf[..want])
            .await
            .map_err(StoreError::io("read", &path))?;
        if n == 0 {
            return Err(ApiError::BlobUploadInvalid(
                "upload data is shorter than recorded".into(),
            ));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    if alg == s.record.algorithm {
        s.hasher = Some(h.clone());
    }
    Ok(h)
}

/// The body's announced length (`Content-Length`), if any and not zero.
fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0)
}

/// The next chunk of a request body; a client that sends nothing for the stall timeout fails.
async fn next_chunk(
    st: &Shared,
    stream: &mut axum::body::BodyDataStream,
) -> ApiResult<Option<bytes::Bytes>> {
    let stall = st.limits.body_stall;
    match tokio::time::timeout(stall, stream.next()).await {
        Err(_) => Err(ApiError::BlobUploadInvalid(format!(
            "the client sent nothing of the body for {}s",
            stall.as_secs()
        ))),
        Ok(None) => Ok(None),
        Ok(Some(Ok(c))) => Ok(Some(c)),
        Ok(Some(Err(e))) => Err(ApiError::BlobUploadInvalid(format!("reading body: {e}"))),
    }
}

/// Make sure `room` holds `n` more unwritten bytes, growing it a step at a time (507 when the
/// cache cannot make room: before the bytes are written, so the filesystem's reserve is kept).
async fn make_room(st: &Shared, room: &mut Reservation, n: u64) -> ApiResult<()> {
    if room.unwritten() < n {
        st.store
            .grow(room, (n - room.unwritten()).max(GROW_STEP))
            .await?;
    }
    Ok(())
}

/// Append the request body at the session's offset. `Content-Range`, when present, must start
/// at the offset (416 otherwise) and match the body's length: such a chunk is appended whole or
/// not at all (a refused one leaves the session exactly as it was). A body without it is
/// streamed, and what reached the file before it broke off is kept, for the client to resume.
async fn append(st: &Shared, id: &Uuid, s: &mut Session, req: Req) -> ApiResult<()> {
    let content_range = match req.head.headers.get(header::CONTENT_RANGE) {
        None => None,
        Some(v) => {
            let r = v.to_str().ok().and_then(parse_content_range);
            Some(r.ok_or_else(|| ApiError::UploadRangeInvalid("malformed Content-Range".into()))?)
        }
    };
    let announced = content_length(&req.head.headers);
    let range_len = content_range.map(|(start, end)| end - start + 1);
    if let Some((start, end)) = content_range {
        if start != s.record.offset {
            return Err(ApiError::UploadRangeInvalid(format!(
                "Content-Range starts at {start}; the upload has {} bytes",
                s.record.offset
            )));
        }
        if announced.is_some_and(|n| Some(n) != range_len) {
            return Err(ApiError::SizeInvalid(format!(
                "Content-Range {start}-{end} announces {} bytes, Content-Length {}",
                end - start + 1,
                announced.unwrap_or(0)
            )));
        }
    }
    let mut chunk_room = st.store.space().hold_existing(0);
    if let Some(n) = announced {
        st.store.grow(&mut chunk_room, n).await?;
    }
    let alg = s.record.algorithm;
    let mut hasher = ensure_hasher(st, id, s, alg).await?;
    let path = st.store.files().upload_path(id);
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .await
        .map_err(StoreError::io("open", &path))?;
    f.seek(std::io::SeekFrom::Start(s.record.offset))
        .await
        .map_err(StoreError::io("seek", &path))?;
    let mut f = tokio::io::BufWriter::with_capacity(1 << 20, f);
    let mut written = 0u64;
    let mut stream = req.body.into_data_stream();
    let mut failure = None;
    loop {
        let chunk = match next_chunk(st, &mut stream).await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let n = chunk.len() as u64;
        if range_len.is_some_and(|len| written + n > len) {
            failure = Some(ApiError::SizeInvalid(format!(
                "the body is longer than its Content-Range's {} bytes",
                range_len.unwrap_or(0)
            )));
            break;
        }
        if let Err(e) = make_room(st, &mut chunk_room, n).await {
            failure = Some(e);
            break;
        }
        if let Err(e) = f.write_all(&chunk).await {
            failure = Some(ApiError::Store(StoreError::io("write", &path)(e)));
            break;
        }
        chunk_room.written(n);
        hasher.update(&chunk);
        written += n;
    }
    let flushed = f.flush().await;
    let whole_range = range_len.is_none_or(|len| written == len);
    if content_range.is_some() && (failure.is_some() || !whole_range || flushed.is_err()) {
        // All or nothing: the session goes back to exactly what it was.
        let file = f.into_inner();
        file.set_len(s.record.offset)
            .await
            .map_err(StoreError::io("truncate", &path))?;
        return Err(failure.unwrap_or_else(|| match flushed {
            Err(e) => ApiError::Store(StoreError::io("write", &path)(e)),
            Ok(()) => ApiError::SizeInvalid(format!(
                "Content-Range announced {} bytes, the body had {written}",
                range_len.unwrap_or(0)
            )),
        }));
    }
    if let Err(e) = flushed {
        // What reached the file is unknown: keep the old offset and rebuild the hash later.
        s.hasher = None;
        return Err(StoreError::io("write", &path)(e).into());
    }
    st.metrics.blob_bytes_received.inc_by(written);
    // A streamed body's bytes that reached the file are kept even when it broke off: the
    // client can ask for the session's Range and resume.
    s.record.offset += written;
    s.record.updated_at = unix_now();
    s.hasher = Some(hasher);
    chunk_room.shrink_to_written();
    s.room.absorb(chunk_room);
    let (key, rec) = (id.to_string(), s.record.clone());
    st.store
        .blocking(move |idx| idx.put_upload(&key, &rec, false))
        .await?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(super) async fn patch(st: &Shared, name: &str, id: &str, req: Req) -> ApiResult<Response> {
    let (id, s) = session(st, name, id).await?;
    let mut s = s.lock().await;
    append(st, &id, &mut s, req).await?;
    accepted(name, &id, s.record.offset, StatusCode::ACCEPTED)
}

pub(super) async fn put(st: &Shared, name: &str, id: &str, req: Req) -> ApiResult<Response> {
    let (id, s) = session(st, name, id).await?;
    let mut s = s.lock().await;
    let Some(d) = req.head.query.get("digest") else {
        return Err(ApiError::DigestInvalid(
            "PUT of an upload needs ?digest=".into(),
        ));
    };
    let (expected, alg) = parse_digest_param(d)?;
    append(st, &id, &mut s, req).await?;
    let actual = ensure_hasher(st, &id, &mut s, alg).await?.finish();
    let path = st.store.files().upload_path(&id);
    let blob = TempBlob::adopt(path.clone(), s.record.offset);
    // The session ends here whatever the outcome: a mismatch stores nothing.
    st.uploads.map().remove(&id);
    let key = id.to_string();
    st.store
        .blocking(move |idx| idx.delete_upload(&key))
        .await?;
    if actual == expected {
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(StoreError::io("open", &path))?;
        f.sync_all().await.map_err(StoreError::io("fsync", &path))?;
    }
    finish_verified(st, name, blob, &expected, &actual).await
}

pub(super) async fn status(st: &Shared, name: &str, id: &str) -> ApiResult<Response> {
    let (id, s) = session(st, name, id).await?;
    let offset = s.lock().await.record.offset;
    accepted(name, &id, offset, StatusCode::NO_CONTENT)
}

pub(super) async fn cancel(st: &Shared, name: &str, id: &str) -> ApiResult<Response> {
    let (id, s) = session(st, name, id).await?;
    let _s = s.lock().await;
    st.uploads.map().remove(&id);
    let key = id.to_string();
    st.store
        .freeing_write(move |idx| idx.delete_upload(&key))
        .await?;
    let path = st.store.files().upload_path(&id);
    let _ = tokio::fs::remove_file(&path).await;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(resp)
}
