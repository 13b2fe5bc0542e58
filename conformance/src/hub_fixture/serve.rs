//! Serving file bodies (Range, faults, the shared rate limit, counters), the CDN host, and the
//! accept loop that lets `stop` close a port for good.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::model::{FileInfo, FileSource, PreparedRepo};
use super::{Fault, FixtureHost, FixtureOptions, FixtureRequest};

/// Body chunks are at most this long (smaller under a rate limit: a sixteenth of a second's
/// worth, at least 1 KiB).
const CHUNK: usize = 256 * 1024;

/// State shared by both hosts and the test hooks.
pub(crate) struct Shared {
    pub repos: Vec<PreparedRepo>,
    pub opts: FixtureOptions,
    pub main_base: String,
    pub cdn_base: String,
    /// Signs CDN URLs, so the CDN serves only what `resolve` handed out (as signed URLs do).
    pub secret: String,
    pub downloads: Mutex<HashMap<(String, String), u64>>,
    pub bytes_served: AtomicU64,
    pub faults: Mutex<HashMap<(String, String), Fault>>,
    pub requests: Mutex<Vec<FixtureRequest>>,
    pub bucket: Option<Mutex<Bucket>>,
}

impl Shared {
    pub fn repo(&self, id: &str) -> Option<&PreparedRepo> {
        self.repos.iter().find(|r| r.id == id)
    }

    pub fn fault(&self, repo: &str, path: &str) -> Fault {
        self.faults
            .lock()
            .ok()
            .and_then(|f| f.get(&(repo.to_string(), path.to_string())).copied())
            .unwrap_or(Fault::None)
    }

    fn count_download(&self, repo: &str, path: &str) {
        if let Ok(mut d) = self.downloads.lock() {
            *d.entry((repo.to_string(), path.to_string())).or_insert(0) += 1;
        }
    }

    /// The signature of a CDN URL for this content.
    pub fn sign(&self, repo: &str, path: &str, sha256: &str) -> String {
        let mut h = Sha256::new();
        for part in [self.secret.as_str(), repo, path, sha256] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        hex::encode(&h.finalize()[..16])
    }

    /// The signed CDN URL an LFS file's `resolve` redirects to.
    pub fn cdn_url(&self, repo: &str, file: &FileInfo) -> String {
        let name = file.path.rsplit('/').next().unwrap_or(&file.path);
        let disposition = format!(
            "inline; filename*=UTF-8''{}; filename=\"{}\";",
            pct_encode(name, false),
            name
        );
        format!(
            "{}/repos/{}/{}?response-content-disposition={}&x-fixture-path={}&Signature={}",
            self.cdn_base,
            pct_encode(repo, true),
            file.sha256,
            pct_encode(&disposition, false),
            pct_encode(&file.path, false),
            self.sign(repo, &file.path, &file.sha256)
        )
    }
}

/// A token bucket shared by every body the fixture sends. Chunks take tokens on credit, so
/// concurrent bodies queue behind each other and the total rate stays at `rate`.
pub(crate) struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u64) -> Self {
        let capacity = chunk_len(Some(rate)) as f64;
        Self {
            rate: rate.max(1) as f64,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Take `n` tokens; how long to wait before sending them.
    fn take(&mut self, n: usize) -> Duration {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

fn chunk_len(rate: Option<u64>) -> usize {
    match rate {
        Some(r) => (r / 16).clamp(1024, CHUNK as u64) as usize,
        None => CHUNK,
    }
}

/// Percent-encode everything but unreserved characters (and `/` when `keep_slash`).
pub(crate) fn pct_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decode a path segment; `None` for bad escapes or bytes that are not UTF-8.
pub(crate) fn pct_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A parsed `Range` request header, against a body of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeReq {
    /// No range, or one this server ignores (several ranges, not `bytes=`, malformed): 200.
    Full,
    /// `start..=end`: 206.
    Part(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// RFC 9110 single byte ranges: `a-b`, `a-`, `-n`; an end past the size is clipped.
pub(crate) fn parse_range(value: Option<&str>, size: u64) -> RangeReq {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeReq::Full;
        };
        if n == 0 || size == 0 {
            return RangeReq::Unsatisfiable;
        }
        return RangeReq::Part(size.saturating_sub(n), size - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeReq::Full;
    };
    let end = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        let Ok(end) = b.parse::<u64>() else {
            return RangeReq::Full;
        };
        if end < start {
            return RangeReq::Unsatisfiable;
        }
        end.min(size.saturating_sub(1))
    };
    if start >= size {
        return RangeReq::Unsatisfiable;
    }
    RangeReq::Part(start, end)
}

pub(crate) fn set(headers: &mut HeaderMap, name: impl Into<HeaderName>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name.into(), v);
    }
}

/// A content type for a file the hub serves itself (text files are `text/plain`).
pub(crate) fn content_type(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "json" | "txt" | "md" | "py" | "yaml" | "yml" | "gitattributes" | "csv" | "jinja" => {
            "text/plain; charset=utf-8"
        }
        "" if name.starts_with('.') => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Serve a file's bytes: HEAD (headers only), GET (200, or 206 for a satisfiable range), 416.
/// `extra` headers go on every answer. Counts the download, applies the fault and the rate.
pub(crate) async fn file_body(
    s: &Arc<Shared>,
    repo: &str,
    file: &FileInfo,
    method: &Method,
    req_headers: &HeaderMap,
    extra: HeaderMap,
) -> Response {
    let range = parse_range(
        req_headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        file.size,
    );
    let mut resp = Response::new(Body::empty());
    *resp.headers_mut() = extra;
    let h = resp.headers_mut();
    set(h, header::ACCEPT_RANGES, "bytes");
    if *method == Method::HEAD {
        set(h, header::CONTENT_LENGTH, &file.size.to_string());
        return resp;
    }
    let (start, len) = match range {
        RangeReq::Full => (0, file.size),
        RangeReq::Part(a, b) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            set(
                resp.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes {a}-{b}/{}", file.size),
            );
            (a, b - a + 1)
        }
        RangeReq::Unsatisfiable => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            set(
                resp.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes */{}", file.size),
            );
            set(resp.headers_mut(), header::CONTENT_LENGTH, "0");
            return resp;
        }
    };
    let reader = match &file.source {
        FileSource::Bytes(b) => Reader::Mem(b.clone(), start as usize),
        FileSource::Disk(p) => {
            let opened = async {
                let mut f = tokio::fs::File::open(p).await?;
                f.seek(SeekFrom::Start(start)).await?;
                Ok::<_, std::io::Error>(f)
            }
            .await;
            match opened {
                Ok(f) => Reader::Disk(f),
                Err(e) => {
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("fixture: cannot read {}: {e}", p.display()),
                    )
                        .into_response()
                }
            }
        }
    };
    s.count_download(repo, &file.path);
    set(resp.headers_mut(), header::CONTENT_LENGTH, &len.to_string());
    let state = BodyState {
        shared: s.clone(),
        reader,
        remaining: len,
        sent: 0,
        fault: s.fault(repo, &file.path),
        chunk: chunk_len(s.opts.rate_limit),
        done: false,
    };
    *resp.body_mut() = Body::from_stream(futures_util::stream::unfold(state, next_chunk));
    resp
}

enum Reader {
    Mem(Bytes, usize),
    Disk(tokio::fs::File),
}

struct BodyState {
    shared: Arc<Shared>,
    reader: Reader,
    remaining: u64,
    sent: u64,
    fault: Fault,
    chunk: usize,
    done: bool,
}

async fn next_chunk(mut st: BodyState) -> Option<(std::io::Result<Bytes>, BodyState)> {
    if st.done || st.remaining == 0 {
        return None;
    }
    let mut want = (st.chunk as u64).min(st.remaining);
    if let Fault::DieAfter(limit) = st.fault {
        if st.sent >= limit {
            st.done = true;
            // hyper drops its write buffer when a body fails: stay pending a moment first, so
            // it flushes what was sent (it flushes whenever the body is pending).
            tokio::time::sleep(Duration::from_millis(100)).await;
            let err = std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "fixture fault: connection cut",
            );
            return Some((Err(err), st));
        }
        want = want.min(limit - st.sent);
    }
    let want = want as usize;
    let chunk = match &mut st.reader {
        Reader::Mem(b, pos) => {
            let c = b.slice(*pos..*pos + want);
            *pos += want;
            c
        }
        Reader::Disk(f) => {
            let mut buf = BytesMut::zeroed(want);
            if let Err(e) = f.read_exact(&mut buf).await {
                st.done = true;
                return Some((Err(e), st));
            }
            buf.freeze()
        }
    };
    let chunk = if st.fault == Fault::WrongContent {
        Bytes::from(chunk.iter().map(|b| !b).collect::<Vec<u8>>())
    } else {
        chunk
    };
    if let Some(bucket) = &st.shared.bucket {
        let wait = bucket.lock().map(|mut b| b.take(want)).unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    st.remaining -= want as u64;
    st.sent += want as u64;
    st.shared
        .bytes_served
        .fetch_add(want as u64, Ordering::Relaxed);
    Some((Ok(chunk), st))
}

/// Record a request and its status.
pub(crate) fn record(s: &Shared, host: FixtureHost, parts: &RequestInfo, status: StatusCode) {
    if let Ok(mut r) = s.requests.lock() {
        r.push(FixtureRequest {
            host,
            method: parts.method.to_string(),
            path: parts.path.clone(),
            query: parts.query.clone(),
            range: header_string(&parts.headers, header::RANGE),
            authorization: header_string(&parts.headers, header::AUTHORIZATION),
            status: status.as_u16(),
        });
    }
}

pub(crate) struct RequestInfo {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

impl RequestInfo {
    pub fn of(req: &Request) -> Self {
        Self {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            headers: req.headers().clone(),
        }
    }

    /// Query pairs, decoded.
    pub fn params(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_str(self.query.as_deref().unwrap_or("")).unwrap_or_default()
    }

    pub fn param(&self, name: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

pub(crate) fn header_string(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The CDN host: `GET|HEAD /repos/<repo>/<sha256>?…&x-fixture-path=<path>&Signature=<sig>`.
pub(crate) async fn cdn(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let info = RequestInfo::of(&req);
    let resp = cdn_inner(&s, &info).await;
    record(&s, FixtureHost::Cdn, &info, resp.status());
    resp
}

async fn cdn_inner(s: &Arc<Shared>, info: &RequestInfo) -> Response {
    if info.method != Method::GET && info.method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "fixture CDN: GET or HEAD only",
        )
            .into_response();
    }
    let denied = || {
        (
            StatusCode::FORBIDDEN,
            "AccessDenied: bad or missing signature",
        )
            .into_response()
    };
    let Some(rest) = info.path.strip_prefix("/repos/") else {
        return denied();
    };
    let Some((repo_enc, sha256)) = rest.rsplit_once('/') else {
        return denied();
    };
    let (Some(repo_id), Some(path), Some(sig)) = (
        pct_decode(repo_enc),
        info.param("x-fixture-path"),
        info.param("Signature"),
    ) else {
        return denied();
    };
    if sig != s.sign(&repo_id, &path, sha256) {
        return denied();
    }
    let Some(file) = s
        .repo(&repo_id)
        .and_then(|r| r.by_sha256.get(sha256))
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, "NoSuchKey").into_response();
    };
    let mut extra = HeaderMap::new();
    set(&mut extra, header::CONTENT_TYPE, "application/octet-stream");
    set(&mut extra, header::ETAG, &format!("\"{}\"", file.sha256));
    // ModelScope's client reads the content sha256 from the storage host's answer.
    set(
        &mut extra,
        HeaderName::from_static("x-linked-etag"),
        &format!("\"{}\"", file.sha256),
    );
    if let Some(d) = info.param("response-content-disposition") {
        set(&mut extra, header::CONTENT_DISPOSITION, &d);
    }
    let attributed = FileInfo {
        path,
        ..(*file).clone()
    };
    file_body(s, &repo_id, &attributed, &info.method, &info.headers, extra).await
}

/// Serve `app` on `listener` until `stop` fires; then close the listener (the port refuses
/// connections from then on) and say so on `stopped`.
pub(crate) async fn serve_until(
    listener: tokio::net::TcpListener,
    app: Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    stopped: std::sync::mpsc::Sender<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    drop(listener);
    let _ = stopped.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc9110() {
        let r = |v: &str| parse_range(Some(v), 1000);
        assert_eq!(r("bytes=0-99"), RangeReq::Part(0, 99));
        assert_eq!(r("bytes=500-"), RangeReq::Part(500, 999));
        assert_eq!(r("bytes=-100"), RangeReq::Part(900, 999));
        assert_eq!(r("bytes=-5000"), RangeReq::Part(0, 999));
        assert_eq!(r("bytes=900-5000"), RangeReq::Part(900, 999));
        assert_eq!(r("bytes=500-0"), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=1000-"), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=-0"), RangeReq::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), RangeReq::Full);
        assert_eq!(r("items=0-1"), RangeReq::Full);
        assert_eq!(parse_range(None, 10), RangeReq::Full);
        assert_eq!(parse_range(Some("bytes=0-"), 0), RangeReq::Unsatisfiable);
    }

    #[test]
    fn percent_coding_round_trips() {
        assert_eq!(pct_encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(pct_encode("a b/c", true), "a%20b/c");
        assert_eq!(pct_decode("refs%2Fpr%2F1").as_deref(), Some("refs/pr/1"));
        assert_eq!(pct_decode("%zz"), None);
        assert_eq!(pct_decode("%E2%9C%93").as_deref(), Some("✓"));
    }

    #[test]
    fn bucket_charges_on_credit() {
        let mut b = Bucket::new(1_000_000);
        // The capacity is one chunk: that much goes at once, then 100 kB more waits ~0.1 s.
        assert_eq!(b.take(chunk_len(Some(1_000_000))), Duration::ZERO);
        let wait = b.take(100_000);
        assert!(wait >= Duration::from_millis(90), "{wait:?}");
    }
}
