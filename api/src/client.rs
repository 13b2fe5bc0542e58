//! A typed client for the admin API.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::pins::PinList;
use crate::{
    CacheView, GcReport, GcRequest, Job, PinTarget, PinView, PrefetchRequest, Reclaim, Unpinned,
    VerifyReport,
};

/// What a call to the admin API failed to do. No variant carries the token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("the token is not a valid header value")]
    Token,
    #[error("{method} {url}: cannot reach the Manta agent")]
    Request {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error status; `message` is its OCI error list.
    #[error("{method} {url}: {status}: {message}")]
    Api {
        method: Method,
        url: String,
        status: StatusCode,
        /// The first OCI error code (`NAME_UNKNOWN`, `UNSUPPORTED`, …), when the body had one.
        code: Option<String>,
        message: String,
    },
    #[error("{method} {url}: unexpected answer from the agent")]
    Decode {
        method: Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// The agent's status, when it answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The first OCI error code of the agent's answer, when it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the agent could not be reached or did not answer in time (as opposed to
    /// answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Request { .. })
    }
}

/// A decoded answer, with the JSON it came from (for a CLI's `--json`) and its status.
#[derive(Debug)]
pub struct Answer<T> {
    pub value: T,
    pub json: serde_json::Value,
    pub status: StatusCode,
}

/// One agent's admin API.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

/// The first token of a token file's text (one per line; blank lines and `#` comments skipped):
/// the one a client sends.
pub fn first_token(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

impl Client {
    /// A client of the agent at `base` (`http://127.0.0.1:5000`). `token` is sent as a bearer
    /// token (the cluster listener needs it); `timeout` bounds each whole request (`None`: wait as
    /// long as the agent works on an answer; connecting still gives up after 10 s).
    pub fn new(base: Url, token: Option<&str>, timeout: Option<Duration>) -> Result<Self, Error> {
        Ok(Client {
            http: Self::http_client(token, timeout)?,
            base,
        })
    }

    /// The HTTP client [`Client::new`] builds: share one among the clients of many agents that
    /// take the same token ([`Client::with_http`]), so they share its connection pool.
    pub fn http_client(
        token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Client, Error> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(token) = token {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Error::Token)?;
            v.set_sensitive(true);
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, v);
            builder = builder.default_headers(h);
        }
        builder.build().map_err(Error::Client)
    }

    /// A client of the agent at `base` over an existing HTTP client ([`Client::http_client`]).
    pub fn with_http(http: reqwest::Client, base: Url) -> Self {
        Client { http, base }
    }

    /// The agent's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The underlying HTTP client (its default headers carry the token).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The URL of `/manta/v1/<path>` (`path` already encoded).
    pub fn endpoint(&self, path: &str) -> String {
        format!(
            "{}/manta/v1/{path}",
            self.base.as_str().trim_end_matches('/')
        )
    }

    /// Send `req`; decode a success as `T`, and an error status as its OCI error list.
    pub async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<Answer<T>, Error> {
        let req = req.build().map_err(|e| Error::Client(e.without_url()))?;
        let (method, url) = (req.method().clone(), req.url().to_string());
        let failed = |source: reqwest::Error| Error::Request {
            method: method.clone(),
            url: url.clone(),
            source: source.without_url(),
        };
        let resp = self.http.execute(req).await.map_err(&failed)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(&failed)?;
        if !status.is_success() {
            let (code, message) = oci_errors(&body);
            return Err(Error::Api {
                method,
                url,
                status,
                code,
                message,
            });
        }
        let decoded = serde_json::from_slice::<serde_json::Value>(&body).and_then(|json| {
            Ok(Answer {
                value: T::deserialize(&json)?,
                json,
                status,
            })
        });
        decoded.map_err(|source| Error::Decode {
            method,
            url,
            source,
        })
    }

    /// `POST /manta/v1/prefetch`: start a job.
    pub async fn prefetch(&self, req: &PrefetchRequest) -> Result<Answer<Job>, Error> {
        self.call(self.http.post(self.endpoint("prefetch")).json(req))
            .await
    }

    /// `GET /manta/v1/prefetch/<id>`.
    pub async fn job(&self, id: &str) -> Result<Answer<Job>, Error> {
        let url = self.endpoint(&format!("prefetch/{}", encode_path(id)));
        self.call(self.http.get(url)).await
    }

    /// `GET /manta/v1/prefetch/<id>?wait=…&version=…`: the job once its version is not
    /// `version` (at once if it is not already), or after `wait` (at most 60 s) unchanged.
    pub async fn job_wait(
        &self,
        id: &str,
        version: u64,
        wait: Duration,
    ) -> Result<Answer<Job>, Error> {
        let url = self.endpoint(&format!(
            "prefetch/{}?wait={}&version={version}",
            encode_path(id),
            wait.as_secs()
        ));
        self.call(self.http.get(url).timeout(wait + Duration::from_secs(10)))
            .await
    }

    /// `GET /manta/v1/cache`, with every eviction root when `entries`.
    pub async fn cache(&self, entries: bool) -> Result<Answer<CacheView>, Error> {
        let mut url = self.endpoint("cache");
        if !entries {
            url.push_str("?entries=false");
        }
        self.call(self.http.get(url)).await
    }

    /// `GET /manta/v1/pins`.
    pub async fn pins(&self) -> Result<Answer<Vec<PinView>>, Error> {
        let a: Answer<PinList> = self.call(self.http.get(self.endpoint("pins"))).await?;
        Ok(Answer {
            value: a.value.pins,
            json: a.json,
            status: a.status,
        })
    }

    /// `PUT /manta/v1/pins/<name>`: 201 when the pin is new, 200 when it was replaced.
    pub async fn put_pin(&self, name: &str, target: &PinTarget) -> Result<Answer<PinView>, Error> {
        let url = self.endpoint(&format!("pins/{}", encode_path(name)));
        self.call(self.http.put(url).json(target)).await
    }

    /// `DELETE /manta/v1/pins/<name>?reclaim=…`; `None` when there is no such pin.
    pub async fn delete_pin(
        &self,
        name: &str,
        reclaim: Reclaim,
    ) -> Result<Option<Answer<Unpinned>>, Error> {
        let url = self.endpoint(&format!(
            "pins/{}?reclaim={}",
            encode_path(name),
            reclaim.as_str()
        ));
        match self.call(self.http.delete(url)).await {
            // The agent's own answer for an unknown pin: a 404 from anything else (a proxy, a
            // route this agent lacks) is an error, not "already released".
            Err(e)
                if e.status() == Some(StatusCode::NOT_FOUND)
                    && e.code() == Some("NAME_UNKNOWN") =>
            {
                Ok(None)
            }
            r => r.map(Some),
        }
    }

    /// `POST /manta/v1/gc`.
    pub async fn gc(&self, req: &GcRequest) -> Result<Answer<GcReport>, Error> {
        self.call(self.http.post(self.endpoint("gc")).json(req))
            .await
    }

    /// `DELETE /manta/v1/cache/<ref>`.
    pub async fn remove(&self, reference: &str) -> Result<Answer<GcReport>, Error> {
        let url = self.endpoint(&format!("cache/{}", encode_path(reference)));
        self.call(self.http.delete(url)).await
    }

    /// `POST /manta/v1/verify`.
    pub async fn verify(&self) -> Result<Answer<VerifyReport>, Error> {
        self.call(self.http.post(self.endpoint("verify"))).await
    }
}

/// The first code and the messages of an OCI error body (`{"errors":[{"code","message"}]}`),
/// else the body's text.
fn oci_errors(body: &[u8]) -> (Option<String>, String) {
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) if !b.errors.is_empty() => (
            b.errors.first().map(|e| e.code.clone()),
            b.errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let message = if text.is_empty() {
                "no error body".to_owned()
            } else {
                text.chars().take(300).collect()
            };
            (None, message)
        }
    }
}

/// `s` as a URL path, each character a path segment cannot hold as itself percent-encoded (RFC
/// 3986 `pchar`, with `/` kept: the agent's routes take the rest of the path).
pub fn encode_path(s: &str) -> String {
    const KEEP: &[u8] = b"-._~!$&'()*+,;=:@/";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || KEEP.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_error_bodies_give_their_code_and_messages() {
        let (code, msg) = oci_errors(br#"{"errors":[{"code":"NAME_UNKNOWN","message":"gone"}]}"#);
        assert_eq!(code.as_deref(), Some("NAME_UNKNOWN"));
        assert_eq!(msg, "NAME_UNKNOWN: gone");
        assert_eq!(oci_errors(b"  "), (None, "no error body".into()));
        assert_eq!(oci_errors(b"teapot"), (None, "teapot".into()));
    }

    #[test]
    fn token_files_give_their_first_token() {
        assert_eq!(first_token("# rotated\n\n  new  \nold\n"), Some("new"));
        assert_eq!(first_token("# only a comment\n"), None);
    }

    #[test]
    fn paths_are_percent_encoded_but_keep_slashes() {
        assert_eq!(encode_path("hf://a/b@main"), "hf://a/b@main");
        assert_eq!(encode_path("a b%?#"), "a%20b%25%3F%23");
    }

    #[tokio::test]
    async fn a_client_sends_its_token_and_decodes_errors() {
        use axum::http::HeaderMap as Headers;
        let app = axum::Router::new().route(
            "/manta/v1/pins/{name}",
            axum::routing::delete(|h: Headers| async move {
                let auth = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if auth == "Bearer s3cret" {
                    (
                        axum::http::StatusCode::NOT_FOUND,
                        r#"{"errors":[{"code":"NAME_UNKNOWN","message":"no pin"}]}"#,
                    )
                } else {
                    (axum::http::StatusCode::UNAUTHORIZED, "")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let c = Client::new(base.clone(), Some("s3cret"), Some(Duration::from_secs(5))).unwrap();
        assert!(c.delete_pin("p", Reclaim::Delete).await.unwrap().is_none());
        // A 404 that is not the agent's "no such pin" (here: no such route) is an error.
        let other = Client::new(
            base.join("elsewhere/").unwrap(),
            Some("s3cret"),
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        let e = other.delete_pin("p", Reclaim::Delete).await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
        let anon = Client::new(base, None, Some(Duration::from_secs(5))).unwrap();
        let e = anon.delete_pin("p", Reclaim::Retain).await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
        assert!(!format!("{e:?}").contains("s3cret"));
    }
}
