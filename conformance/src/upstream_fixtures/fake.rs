//! A tiny in-process registry serving one fixed image, able to misbehave on purpose.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, ReadBuf};
use tokio_util::io::ReaderStream;

use super::{random_bytes, random_hex, sha256_digest, Credentials};

/// How a [`FakeUpstream`] behaves.
#[derive(Clone, Debug)]
pub enum FakeMode {
    /// A correct registry (no auth).
    Normal,
    /// Layer blobs are served with the right length and headers but every byte flipped.
    Lying,
    /// Layer blob GETs send `200`, `Content-Length` and the first [`FakeUpstream::HANG_AFTER`]
    /// bytes, then nothing, ever.
    HangAfterHeaders,
    /// Every manifest and blob request is accepted and never answered (`/v2/` still answers).
    HangBeforeHeaders,
    /// The first request for each manifest or blob path answers `503` with `Retry-After: 1`;
    /// the next one is served normally.
    Flaky,
    /// Layer blobs are sent whole and correct, but slowly: [`FakeUpstream::TRICKLE_CHUNK`] bytes
    /// every [`FakeUpstream::TRICKLE_EVERY`], so a test can act while a download is under way.
    Trickle,
    /// The Docker token flow: `/v2/…` needs `Authorization: Bearer <token>`; tokens come from
    /// `GET /token?service=fake&scope=…` with basic auth of these credentials.
    Token(Credentials),
    /// Layer blob GETs answer `307` to `<this base URL>/v2/<repo>/blobs/<digest>?redirected=1`
    /// (a request carrying `redirected=1` is served), as registries send clients to storage.
    RedirectBlobs(String),
    /// The same, to the fake's own URL (a registry sending clients to storage on its host).
    RedirectBlobsToSelf,
    /// Every `/v2/<repo>/…` request answers `401` with a Bearer challenge naming this realm
    /// URL (no token is ever accepted).
    ChallengeAt(String),
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub user_agent: Option<String>,
}

/// The image every fake serves, at `<repo>:<tag>`: an OCI manifest, an image config and two
/// uncompressed layers of random bytes (different on every start).
#[derive(Clone, Debug)]
pub struct FakeImage {
    pub repo: String,
    pub tag: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    /// `(digest, bytes)` in manifest order.
    pub layers: Vec<(String, Vec<u8>)>,
}

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

impl FakeImage {
    fn generate(repo: &str, tag: &str) -> Result<Self> {
        let layers: Vec<(String, Vec<u8>)> = [96 * 1024, 300 * 1024 + 7]
            .into_iter()
            .map(|n| {
                let b = random_bytes(n);
                (sha256_digest(&b), b)
            })
            .collect();
        let diff_ids: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))?;
        let config_digest = sha256_digest(&config);
        let layer_descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|(d, b)| serde_json::json!({"mediaType": LAYER_MEDIA_TYPE, "digest": d, "size": b.len()}))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layer_descs,
        }))?;
        Ok(Self {
            repo: repo.to_string(),
            tag: tag.to_string(),
            manifest_digest: sha256_digest(&manifest),
            manifest,
            config,
            config_digest,
            layers,
        })
    }

    /// Digests of the config and every layer.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut v = vec![self.config_digest.clone()];
        v.extend(self.layers.iter().map(|(d, _)| d.clone()));
        v
    }

    fn blob(&self, digest: &str) -> Option<(&[u8], bool)> {
        if digest == self.config_digest {
            return Some((&self.config, false));
        }
        self.layers
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, b)| (b.as_slice(), true))
    }
}

struct Shared {
    mode: FakeMode,
    image: FakeImage,
    addr: SocketAddr,
    requests: Mutex<Vec<RecordedRequest>>,
    tokens: Mutex<Vec<String>>,
}

/// A running fake upstream on `127.0.0.1:<port>`; dropping it stops it (and every stalled
/// response with it).
pub struct FakeUpstream {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeUpstream {
    /// Bytes a [`FakeMode::HangAfterHeaders`] blob response sends before stalling.
    pub const HANG_AFTER: usize = 16 * 1024;
    /// A [`FakeMode::Trickle`] blob response sends this much...
    pub const TRICKLE_CHUNK: usize = 8 * 1024;
    /// ...this often.
    pub const TRICKLE_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

    /// Start serving `fake/app:v1` in `mode`.
    pub fn start(mode: FakeMode) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode,
            image: FakeImage::generate("fake/app", "v1")?,
            addr,
            requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            shared,
            runtime: Some(runtime),
        })
    }

    /// `127.0.0.1:<port>`
    pub fn host(&self) -> String {
        self.shared.addr.to_string()
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn image(&self) -> &FakeImage {
        &self.shared.image
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Requests to the token endpoint so far (whatever their outcome).
    pub fn token_requests(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path == "/token")
            .count()
    }

    /// Tokens issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared
            .tokens
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// `GET /v2/<repo>/blobs/<digest>` requests so far.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let path = format!("/v2/{}/blobs/{digest}", self.shared.image.repo);
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .count()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// An `AsyncRead` that never produces anything and never wakes: a peer gone silent.
struct Silence;

impl AsyncRead for Silence {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    (status, axum::Json(body)).into_response()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    if let Ok(mut r) = s.requests.lock() {
        r.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            authorization: header_str(&headers, header::AUTHORIZATION),
            range: header_str(&headers, header::RANGE),
            user_agent: header_str(&headers, header::USER_AGENT),
        });
    }
    if let FakeMode::Token(creds) = &s.mode {
        if path == "/token" {
            return token(&s, creds, &headers, query.as_deref());
        }
        let authorized = header_str(&headers, header::AUTHORIZATION)
            .and_then(|h| h.strip_prefix("Bearer ").map(str::to_string))
            .is_some_and(|t| s.tokens.lock().map(|ts| ts.contains(&t)).unwrap_or(false));
        if !authorized {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "fake upstream: authentication required",
            );
            let challenge = format!(
                "Bearer realm=\"http://{}/token\",service=\"fake\",scope=\"repository:{}:pull\"",
                s.addr, s.image.repo
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return resp;
        }
    }
    if path == "/v2/" || path == "/v2" {
        return (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response();
    }
    if let FakeMode::ChallengeAt(realm) = &s.mode {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "fake upstream: authentication required",
        );
        let challenge = format!(
            "Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:{}:pull\"",
            s.image.repo
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return resp;
    }
    if method != Method::GET && method != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "fake upstream is read-only",
        );
    }
    let prefix = format!("/v2/{}/", s.image.repo);
    let Some(rest) = path.strip_prefix(&prefix) else {
        return error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "fake upstream: repository not known",
        );
    };
    if matches!(s.mode, FakeMode::HangBeforeHeaders) {
        std::future::pending::<()>().await;
    }
    if matches!(s.mode, FakeMode::Flaky) {
        let seen = s
            .requests
            .lock()
            .map(|r| r.iter().filter(|q| q.path == path).count())
            .unwrap_or(0);
        if seen <= 1 {
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "fake upstream: try again",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
    }
    let head = method == Method::HEAD;
    if let Some(reference) = rest.strip_prefix("manifests/") {
        if reference != s.image.tag && reference != s.image.manifest_digest {
            return error(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "fake upstream: manifest unknown",
            );
        }
        return content(
            &s.image.manifest,
            &s.image.manifest_digest,
            MANIFEST_MEDIA_TYPE,
            head,
        );
    }
    if let Some(digest) = rest.strip_prefix("blobs/") {
        let Some((bytes, is_layer)) = s.image.blob(digest) else {
            return error(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "fake upstream: blob unknown",
            );
        };
        if head || !is_layer {
            return content(bytes, digest, "application/octet-stream", head);
        }
        return match &s.mode {
            FakeMode::RedirectBlobs(_) | FakeMode::RedirectBlobsToSelf
                if !query.as_deref().unwrap_or("").contains("redirected=1") =>
            {
                let base = match &s.mode {
                    FakeMode::RedirectBlobs(b) => b.clone(),
                    _ => format!("http://{}", s.addr),
                };
                let to = format!("{base}/v2/{}/blobs/{digest}?redirected=1", s.image.repo);
                let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
                if let Ok(v) = HeaderValue::from_str(&to) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            FakeMode::Lying => {
                let flipped: Vec<u8> = bytes.iter().map(|b| !b).collect();
                content(&flipped, digest, "application/octet-stream", false)
            }
            FakeMode::HangAfterHeaders => {
                let start = bytes[..FakeUpstream::HANG_AFTER.min(bytes.len())].to_vec();
                let reader = std::io::Cursor::new(start).chain(Silence);
                let mut resp = content(bytes, digest, "application/octet-stream", true);
                *resp.body_mut() = Body::from_stream(ReaderStream::new(reader));
                resp
            }
            FakeMode::Trickle => {
                let chunks: Vec<Vec<u8>> = bytes
                    .chunks(FakeUpstream::TRICKLE_CHUNK)
                    .map(<[u8]>::to_vec)
                    .collect();
                let stream = futures_util::stream::iter(chunks).then(|c| async move {
                    tokio::time::sleep(FakeUpstream::TRICKLE_EVERY).await;
                    Ok::<_, std::io::Error>(bytes::Bytes::from(c))
                });
                let mut resp = content(bytes, digest, "application/octet-stream", true);
                *resp.body_mut() = Body::from_stream(stream);
                resp
            }
            _ => content(bytes, digest, "application/octet-stream", false),
        };
    }
    error(
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
        "fake upstream: unknown route",
    )
}

/// A 200 with the registry headers; `Content-Length` is the full size even for HEAD.
fn content(bytes: &[u8], digest: &str, media_type: &str, head: bool) -> Response {
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes.to_vec())
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, media_type.to_string()),
        (header::CONTENT_LENGTH, bytes.len().to_string()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            digest.to_string(),
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

fn token(s: &Shared, creds: &Credentials, headers: &HeaderMap, query: Option<&str>) -> Response {
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
    let service_ok = params.iter().any(|(k, v)| k == "service" && v == "fake");
    if header_str(headers, header::AUTHORIZATION).as_deref() != Some(&creds.basic_header()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                serde_json::json!({"details": "fake token server: incorrect username or password"}),
            ),
        )
            .into_response();
    }
    if !service_ok {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                serde_json::json!({"details": "fake token server: service must be \"fake\""}),
            ),
        )
            .into_response();
    }
    let token = format!("faketoken-{}", random_hex(16));
    if let Ok(mut t) = s.tokens.lock() {
        t.push(token.clone());
    }
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"token": token, "access_token": token, "expires_in": 60})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_self_consistent() -> Result<()> {
        let img = FakeImage::generate("fake/app", "v1")?;
        let m: serde_json::Value = serde_json::from_slice(&img.manifest)?;
        assert_eq!(m["config"]["digest"], img.config_digest.as_str());
        assert_eq!(m["layers"].as_array().map(Vec::len), Some(2));
        for (d, b) in &img.layers {
            assert_eq!(&sha256_digest(b), d);
        }
        Ok(())
    }
}
