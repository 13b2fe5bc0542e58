//! The HTTP client a node uses to talk to its peers' cluster listeners.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::{Announce, Hello, LocateReply, LocateRequest, Pieces, Status, PREFIX};
use crate::PeerError;

/// Gives the token to send (the first of the cluster token file), read at each request so a
/// rotation takes effect at once.
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How long peer calls may take.
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// To connect to a peer.
    pub connect: Duration,
    /// For a control call (hello, locate, announce) to answer.
    pub control: Duration,
    /// For a blob read's response headers.
    pub blob_open: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            control: Duration::from_secs(5),
            blob_open: Duration::from_secs(40),
        }
    }
}

/// A blob read from a peer: its whole size, and the body from the offset asked for.
pub struct PeerBlob {
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, PeerError>>,
}

#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    token: TokenSource,
    timeouts: Timeouts,
}

impl PeerClient {
    pub fn new(token: TokenSource, timeouts: Timeouts) -> Result<Self, PeerError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .tcp_nodelay(true)
            // Peers are addresses from the membership, never redirected elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(PeerError::Client)?;
        Ok(Self {
            http,
            token,
            timeouts,
        })
    }

    fn url(addr: &str, path: &str) -> String {
        format!("http://{addr}{PREFIX}{path}")
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (self.token)() {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
            None => req,
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        addr: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, PeerError> {
        let resp = self
            .auth(req)
            .timeout(self.timeouts.control)
            .send()
            .await
            .map_err(|e| PeerError::request(addr, e))?;
        let resp = check(addr, resp)?;
        json_body(addr, resp).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &B,
    ) -> Result<T, PeerError> {
        let req = self.http.post(Self::url(addr, path)).json(body);
        self.json(addr, req).await
    }

    pub async fn hello(&self, addr: &str) -> Result<Hello, PeerError> {
        let req = self.http.get(Self::url(addr, "/hello"));
        self.json(addr, req).await
    }

    /// `GET <PREFIX><path>` (path and query) decoded as `T`; `None` when the peer has none.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
    ) -> Result<Option<T>, PeerError> {
        let req = self
            .http
            .get(Self::url(addr, path))
            .timeout(self.timeouts.control);
        let resp = self
            .auth(req)
            .send()
            .await
            .map_err(|e| PeerError::request(addr, e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(addr, resp)?;
        json_body(addr, resp).await.map(Some)
    }

    pub async fn status(&self, addr: &str) -> Result<Status, PeerError> {
        let req = self.http.get(Self::url(addr, "/status"));
        self.json(addr, req).await
    }

    pub async fn locate(&self, owner: &str, req: &LocateRequest) -> Result<LocateReply, PeerError> {
        self.post(owner, "/locate", req).await
    }

    pub async fn announce(&self, owner: &str, a: &Announce) -> Result<(), PeerError> {
        let req = self.http.post(Self::url(owner, "/announce")).json(a);
        let resp = self
            .auth(req)
            .timeout(self.timeouts.control)
            .send()
            .await
            .map_err(|e| PeerError::request(owner, e))?;
        check(owner, resp).map(drop)
    }

    /// Several announcements to one owner at once (at most [`crate::proto::MAX_BATCH`]).
    pub async fn announce_batch(&self, owner: &str, a: &[Announce]) -> Result<(), PeerError> {
        let req = self.http.post(Self::url(owner, "/announce-batch")).json(a);
        let resp = self
            .auth(req)
            .timeout(self.timeouts.control * 4)
            .send()
            .await
            .map_err(|e| PeerError::request(owner, e))?;
        check(owner, resp).map(drop)
    }

    /// The owner's piece hashes of `digest` from piece `from`, waiting up to `wait` for it.
    pub async fn pieces(
        &self,
        owner: &str,
        digest: &str,
        from: u64,
        wait: Duration,
    ) -> Result<Option<Pieces>, PeerError> {
        let url = Self::url(
            owner,
            &format!("/pieces/{digest}?from={from}&wait_ms={}", wait.as_millis()),
        );
        let req = self.http.get(url).timeout(self.timeouts.control + wait);
        let resp = self
            .auth(req)
            .send()
            .await
            .map_err(|e| PeerError::request(owner, e))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = check(owner, resp)?;
        json_body(owner, resp).await.map(Some)
    }

    /// Read `digest` from `addr` from byte `offset` on. The body has no overall deadline (the
    /// peer may be downloading it still); the caller bounds how long it may stall.
    pub async fn blob(&self, addr: &str, digest: &str, offset: u64) -> Result<PeerBlob, PeerError> {
        self.blob_range(addr, digest, offset, None).await
    }

    /// Read bytes `offset..end` of `digest` from `addr` (to the end without `end`).
    pub async fn blob_range(
        &self,
        addr: &str,
        digest: &str,
        offset: u64,
        end: Option<u64>,
    ) -> Result<PeerBlob, PeerError> {
        let url = format!("http://{addr}/manta/v1/blobs/{digest}");
        let mut req = self.http.get(url);
        match end {
            Some(end) if end > offset => {
                req = req.header(RANGE, format!("bytes={offset}-{}", end - 1));
            }
            Some(_) => return Err(PeerError::Malformed(addr.into(), "an empty range".into())),
            None if offset > 0 => req = req.header(RANGE, format!("bytes={offset}-")),
            None => {}
        }
        // A peer whose own fetch is starting answers once its source has (it waits for up to
        // its upstream timeout): wait longer than that before giving up on it, and count a
        // slow answer as busy, not as the peer being unreachable.
        let resp = tokio::time::timeout(self.timeouts.blob_open, self.auth(req).send())
            .await
            .map_err(|_| PeerError::Busy(addr.to_string()))?
            .map_err(|e| PeerError::request(addr, e))?;
        let resp = check(addr, resp)?;
        let size = match resp.status() {
            StatusCode::PARTIAL_CONTENT => content_range(addr, &resp, offset)?,
            StatusCode::OK if offset == 0 => resp
                .content_length()
                .ok_or_else(|| PeerError::Malformed(addr.into(), "no Content-Length".into()))?,
            s => {
                return Err(PeerError::Malformed(
                    addr.into(),
                    format!("{s} to a ranged read"),
                ))
            }
        };
        let a = addr.to_string();
        let body = resp
            .bytes_stream()
            .map_err(move |e| PeerError::request(&a, e))
            .boxed();
        Ok(PeerBlob { size, body })
    }
}

/// The most a peer's JSON answer may hold (a 100 GB blob's piece hashes are about 100 KiB).
const MAX_REPLY: usize = 8 << 20;

/// A peer's JSON answer, read to at most [`MAX_REPLY`] bytes.
async fn json_body<T: DeserializeOwned>(
    addr: &str,
    mut resp: reqwest::Response,
) -> Result<T, PeerError> {
    let too_big = || PeerError::Malformed(addr.into(), format!("an answer over {MAX_REPLY} bytes"));
    if resp.content_length().is_some_and(|n| n > MAX_REPLY as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| PeerError::request(addr, e))?
    {
        if body.len() + chunk.len() > MAX_REPLY {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| PeerError::Malformed(addr.into(), e.to_string()))
}

fn check(addr: &str, resp: reqwest::Response) -> Result<reqwest::Response, PeerError> {
    let s = resp.status();
    if s.is_success() {
        return Ok(resp);
    }
    Err(match s {
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            PeerError::Busy(addr.to_string())
        }
        StatusCode::NOT_FOUND | StatusCode::RANGE_NOT_SATISFIABLE => {
            PeerError::NotHeld(addr.to_string())
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PeerError::Refused(addr.to_string()),
        s => PeerError::Status(addr.to_string(), s.as_u16()),
    })
}

/// The total size from `Content-Range: bytes <offset>-<end>/<size>`.
fn content_range(addr: &str, resp: &reqwest::Response, offset: u64) -> Result<u64, PeerError> {
    let bad = |why: &str| PeerError::Malformed(addr.into(), format!("Content-Range: {why}"));
    let v = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad("missing"))?;
    let rest = v.strip_prefix("bytes ").ok_or_else(|| bad(v))?;
    let (range, size) = rest.split_once('/').ok_or_else(|| bad(v))?;
    let (start, _) = range.split_once('-').ok_or_else(|| bad(v))?;
    if start.parse::<u64>().ok() != Some(offset) {
        return Err(bad(v));
    }
    size.parse().map_err(|_| bad(v))
}
