//! The cluster listener (`--cluster-listen`): what other nodes need of this agent and nothing
//! more, every request authenticated with the shared cluster token.
//!
//! - `GET|HEAD /manta/v1/blobs/<digest>` (with `Range`): a blob this node holds, or is fetching
//!   right now (the bytes written so far, then the rest as they arrive). It never starts a fetch:
//!   a digest the node has not got is 404.
//! - the admin API the operator drives: `POST /manta/v1/prefetch`, `GET /manta/v1/prefetch/<id>`,
//!   `GET /manta/v1/cache`, `GET /manta/v1/pins`, `PUT|DELETE /manta/v1/pins/<name>`.
//!
//! Nothing here pushes, deletes a blob or a manifest, reads a path, fetches a name the caller
//! picks from a registry, or serves `/v2/` or `/hf/`. The token file holds one token per line
//! (blank lines and `#` comments ignored); a request is accepted with any of them, so a token can
//! be rotated by adding the new one, rolling the callers, then removing the old. The file is
//! re-read when it changes (a Kubernetes Secret's symlink swap included). Tokens are compared as
//! SHA-256 digests, in constant time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use sha2::{Digest as _, Sha256};

use super::{admin, blobs, lifecycle, Shared};
use crate::digest;
use crate::error::{ApiError, ApiResult};
use crate::fetch::IfPassedThrough;

/// Why the cluster token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the cluster token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster token file {path} holds no token of at least {MIN_TOKEN_LEN} characters")]
    Empty { path: PathBuf },
}

/// Shortest token accepted: a guessable token is no authentication.
pub const MIN_TOKEN_LEN: usize = 16;
/// How often the token file is checked for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The tokens of a token file: SHA-256 of each.
type Digests = Vec<[u8; 32]>;

/// The cluster token file and the tokens it held when last read.
pub struct ClusterToken {
    path: PathBuf,
    tokens: RwLock<Digests>,
    /// The file's first token, which this node sends to its peers.
    first: RwLock<String>,
    stamp: std::sync::Mutex<Option<Stamp>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp_of(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks: a Secret volume's `..data` swap changes the file seen here.
    let m = std::fs::metadata(path)?;
    let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
    Ok(Stamp {
        ino: m.ino(),
        size: m.size(),
        mtime_ns: ns(m.mtime(), m.mtime_nsec()),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
    })
}

/// The tokens of a token file's text: one per line, blank lines and `#` comments skipped.
pub fn parse_tokens(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn read_tokens(path: &Path) -> Result<(Digests, String), TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let usable: Vec<&str> = parse_tokens(&text)
        .into_iter()
        .filter(|t| t.len() >= MIN_TOKEN_LEN)
        .collect();
    let Some(first) = usable.first() else {
        return Err(TokenError::Empty {
            path: path.to_path_buf(),
        });
    };
    let tokens = usable
        .iter()
        .map(|t| Sha256::digest(t.as_bytes()).into())
        .collect();
    Ok((tokens, first.to_string()))
}

/// Equal in time independent of where the digests differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ClusterToken {
    /// Read the token file (it must hold a usable token).
    pub fn load(path: &Path) -> Result<Arc<Self>, TokenError> {
        let stamp = stamp_of(path).ok();
        let (tokens, first) = read_tokens(path)?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            tokens: RwLock::new(tokens),
            first: RwLock::new(first),
            stamp: std::sync::Mutex::new(stamp),
        }))
    }

    /// The token this node presents to its peers: the file's first (in a rotation, list the
    /// new token first once every node accepts it).
    pub fn current(&self) -> String {
        self.first.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `presented` is one of the tokens.
    pub fn accepts(&self, presented: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        // Every token is compared, whichever matches.
        tokens.iter().fold(false, |ok, t| ok | ct_eq(t, &d))
    }

    /// Re-read the file if it changed. A file that became unreadable or empty keeps the tokens
    /// in force (a rotation half-done must not lock every caller out); that is logged.
    pub fn reload_if_changed(&self) {
        let now = stamp_of(&self.path).ok();
        {
            let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *last == now {
                return;
            }
            *last = now;
        }
        match read_tokens(&self.path) {
            Ok((tokens, first)) => {
                let n = tokens.len();
                *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
                *self.first.write().unwrap_or_else(|p| p.into_inner()) = first;
                tracing::info!(tokens = n, "cluster token file changed; reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster token file changed but cannot be used; keeping the tokens in force")
            }
        }
    }

    /// Watch the file until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        loop {
            tick.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }
}

/// 401 unless the request carries `Authorization: Bearer <a cluster token>`.
async fn require_token(
    State(token): State<Arc<ClusterToken>>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, t) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
        });
    match presented {
        Some(t) if token.accepts(t) => next.run(req).await,
        _ => {
            let mut resp = ApiError::Unauthorized(
                "the cluster listener needs the cluster token (Authorization: Bearer …)".into(),
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"manta-cluster\""),
            );
            resp
        }
    }
}

/// `GET|HEAD /manta/v1/blobs/<digest>`: held or being fetched, never fetched for the caller.
async fn blob(
    State(st): State<Shared>,
    axum::extract::Path(digest_s): axum::extract::Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let (digest, _) =
        digest::parse(&digest_s).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
    let (parts, _) = req.into_parts();
    let head = super::Head {
        method: parts.method,
        headers: parts.headers,
        query: super::Query::parse(None),
    };
    // A busy node says so at once; the peer reads elsewhere.
    let slot = match &st.peers {
        Some(p) if head.method == axum::http::Method::GET => match p.upload_slot() {
            Some(s) => Some((p.clone(), s)),
            None => {
                let mut resp = ApiError::TooMany(
                    "this node serves as many peers as it may; read elsewhere".into(),
                )
                .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return Ok(resp);
            }
        },
        _ => None,
    };
    let resp = if let Some((file, size)) = st.store.open_verified(&digest).await? {
        blobs::serve_file(&st, &digest, file, size, &head).await?
    } else {
        serve_held(&st, &digest, &head).await?
    };
    Ok(match slot {
        Some((peers, slot)) => {
            let sent = st.metrics.peer_uploaded_bytes.clone();
            resp.map(|body| upload_body(body, peers, slot, sent))
        }
        None => resp,
    })
}

/// A peer's read: held until the body ends, and held to `--peer-rate-limit`.
fn upload_body(
    body: axum::body::Body,
    peers: Arc<manta_peer::PeerRouter>,
    slot: tokio::sync::OwnedSemaphorePermit,
    sent: prometheus_client::metrics::counter::Counter,
) -> axum::body::Body {
    use futures_util::StreamExt;
    let stream = body.into_data_stream();
    // Held to the rate only when there is one (no task per chunk otherwise).
    let stream = if peers.upload_limit().is_some() {
        stream
            .then(move |chunk| {
                let peers = peers.clone();
                async move {
                    if let (Ok(c), Some(limit)) = (&chunk, peers.upload_limit()) {
                        limit.take(c.len()).await;
                    }
                    chunk
                }
            })
            .boxed()
    } else {
        stream.boxed()
    };
    // The slot is given back when the body is dropped: sent, or cut.
    let stream = stream.map(move |chunk| {
        let _held = &slot;
        if let Ok(c) = &chunk {
            sent.inc_by(c.len() as u64);
        }
        chunk
    });
    axum::body::Body::from_stream(stream)
}

/// A blob this node is writing to its disk now: the bytes so far, then the rest.
async fn serve_held(
    st: &Shared,
    digest: &oci_spec::image::Digest,
    head: &super::Head,
) -> ApiResult<Response> {
    // A fetch that streams through uncached has nothing to offer a peer (following it would
    // fetch for the caller).
    let Some(f) = st.fetcher.get(digest.as_ref()) else {
        return Err(ApiError::BlobUnknown);
    };
    // Until the fetch knows whether it keeps the blob (its source has answered).
    let idle = st.upstreams.timeout();
    let mut rx = f.subscribe();
    let _ = crate::fetch::size_of(&mut rx, idle).await;
    let kept = matches!(
        *rx.borrow(),
        crate::fetch::FetchState::Streaming { .. }
            | crate::fetch::FetchState::Verified { .. }
            | crate::fetch::FetchState::Done { .. }
    );
    if !kept {
        return Err(ApiError::BlobUnknown);
    }
    blobs::serve_fetch(st, &f, digest, head, idle, IfPassedThrough::Fail).await
}

async fn not_found() -> Response {
    ApiError::NotFound.into_response()
}

/// The cluster listener's routes, behind the token.
pub fn router(state: Shared, token: Arc<ClusterToken>) -> Router {
    Router::new()
        .route("/manta/v1/blobs/{digest}", get(blob))
        .route("/manta/v1/prefetch", post(admin::start))
        .route("/manta/v1/prefetch/{id}", get(admin::status))
        .route("/manta/v1/cache", get(admin::cache))
        .route("/manta/v1/pins", get(lifecycle::list_pins))
        .route(
            "/manta/v1/pins/{name}",
            put(lifecycle::put_pin).delete(lifecycle::delete_pin),
        )
        // Prometheus scrapes here (with the token): the node's own /metrics is on loopback.
        .route("/metrics", get(super::metrics))
        .merge(super::peer::routes())
        .fallback(not_found)
        .with_state(state)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed.into_response() })
        .layer(axum::middleware::from_fn_with_state(token, require_token))
        .layer(axum::middleware::from_fn(super::drain::drain_unread_body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_hold_one_token_per_line() {
        assert_eq!(
            parse_tokens("# rotated 2026-12\n  new-token-0123456789 \n\nold-token-0123456789\n"),
            vec!["new-token-0123456789", "old-token-0123456789"]
        );
    }

    #[test]
    fn tokens_are_accepted_only_whole_and_rotation_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "first-token-abcdefgh\n").unwrap();
        let t = ClusterToken::load(&p).unwrap();
        assert!(t.accepts("first-token-abcdefgh"));
        for bad in [
            "",
            "first-token-abcdefg",
            "first-token-abcdefghi",
            "FIRST-TOKEN-ABCDEFGH",
        ] {
            assert!(!t.accepts(bad), "{bad:?}");
        }
        // A rotation: both, then only the new one.
        std::fs::write(&p, "second-token-abcdefgh\nfirst-token-abcdefgh\n").unwrap();
        t.reload_if_changed();
        assert!(t.accepts("first-token-abcdefgh") && t.accepts("second-token-abcdefgh"));
        std::fs::write(&p, "second-token-abcdefgh\n").unwrap();
        t.reload_if_changed();
        assert!(!t.accepts("first-token-abcdefgh") && t.accepts("second-token-abcdefgh"));
        // Emptied by mistake: the tokens in force stay.
        std::fs::write(&p, "\n").unwrap();
        t.reload_if_changed();
        assert!(t.accepts("second-token-abcdefgh"));
    }

    #[test]
    fn short_or_missing_tokens_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "short\n").unwrap();
        assert!(matches!(
            ClusterToken::load(&p),
            Err(TokenError::Empty { .. })
        ));
        assert!(matches!(
            ClusterToken::load(&dir.path().join("absent")),
            Err(TokenError::Read { .. })
        ));
    }
}
