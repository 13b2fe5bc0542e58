//! The HTTP plumbing both adapters share: one `reqwest` client that never follows redirects by
//! itself, retries with backoff (honouring `Retry-After`), redirects that drop the token when they
//! leave the hub's origin, error mapping (`X-Error-Code`, status, the hub's message), `Link`
//! pagination, and downloads that resume with `Range` when the body breaks.
//!
//! The token lives in one sensitive header value and is only ever attached to requests for the
//! configured endpoint's origin; no log line or error carries a header.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{redirect, Client, Response, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::{HubConfig, HubError, HubFile};

mod body;
mod link;

use link::next_link;

/// Redirect hops followed for one request (Hugging Face: at most two for an LFS file).
const MAX_REDIRECTS: usize = 5;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);
/// The hub's own message is cut to this many characters.
const MESSAGE_MAX: usize = 300;
/// Bytes of an error body read to find the hub's message.
const ERROR_BODY_MAX: usize = 16 * 1024;
/// An API answer (one tree page, a ModelScope file list) larger than this is refused.
const JSON_BODY_MAX: usize = 64 * 1024 * 1024;

/// What a 404 without an `X-Error-Code` means for the request that got it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Missing {
    Repo,
    Revision,
    Entry,
}

/// A client for one hub endpoint.
#[derive(Clone)]
pub(crate) struct Http {
    client: Client,
    endpoint: Url,
    /// `Bearer <token>`, marked sensitive.
    auth: Option<HeaderValue>,
    /// The token itself, only to scrub it from a hub message that would echo it.
    token: Option<String>,
    /// Attempts per request (at least one).
    attempts: u32,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("endpoint", &self.endpoint.as_str())
            .field("token", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// Why one attempt failed: worth another attempt, or final.
enum Failure {
    Transport(reqwest::Error),
    Fatal(HubError),
}

/// The bytes of a file to ask for: from `from` up to `to` (exclusive), or to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ByteRange {
    pub from: u64,
    pub to: Option<u64>,
}

impl ByteRange {
    fn header(self) -> String {
        match self.to {
            Some(to) => format!("bytes={}-{}", self.from, to.saturating_sub(1)),
            None => format!("bytes={}-", self.from),
        }
    }
}

impl Http {
    pub(crate) fn new(cfg: &HubConfig) -> Result<Self, HubError> {
        let endpoint = Url::parse(cfg.endpoint.trim_end_matches('/')).map_err(|e| {
            HubError::Malformed(format!("hub endpoint {:?} is not a URL: {e}", cfg.endpoint))
        })?;
        if endpoint.cannot_be_a_base() || !matches!(endpoint.scheme(), "http" | "https") {
            return Err(HubError::Malformed(format!(
                "hub endpoint {:?} is not an http(s) base URL",
                cfg.endpoint
            )));
        }
        let token = cfg.token.clone().filter(|t| !t.is_empty());
        let auth = match &token {
            Some(t) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    HubError::Malformed("the hub token is not a valid header value".into())
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = Client::builder()
            .redirect(redirect::Policy::none())
            .connect_timeout(cfg.timeout)
            .read_timeout(cfg.timeout)
            .user_agent(cfg.user_agent.clone())
            .build()
            .map_err(HubError::Connect)?;
        Ok(Http {
            client,
            endpoint,
            auth,
            token,
            attempts: cfg.retries.max(1),
        })
    }

    /// `{endpoint}/{segments…}`, each segment percent-encoded (a `/` inside one becomes `%2F`).
    /// Callers check segments with [`check_segment`] first (`.` and `..` would be dropped).
    pub(crate) fn url<S: AsRef<str>>(&self, segments: impl IntoIterator<Item = S>) -> Url {
        let mut url = self.endpoint.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.origin() == self.endpoint.origin()
    }

    /// GET `url` and read its (JSON) body, retried as a whole.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        url: &Url,
        missing: Missing,
        subject: &str,
    ) -> Result<(HeaderMap, T), HubError> {
        let (headers, body) = self
            .execute(
                url,
                None,
                self.attempts,
                missing,
                subject,
                |resp| async move {
                    let headers = resp.headers().clone();
                    read_capped(resp, JSON_BODY_MAX)
                        .await
                        .map(|body| (headers, body))
                },
            )
            .await?;
        let value = serde_json::from_slice(&body).map_err(|e| {
            HubError::Malformed(format!(
                "{subject}: the hub's answer is not the expected JSON: {e}"
            ))
        })?;
        Ok((headers, value))
    }

    /// GET a JSON array and every page after it (`Link: <…>; rel="next"`), at most `max_pages`.
    pub(crate) async fn get_paged<T: DeserializeOwned>(
        &self,
        first: Url,
        max_pages: usize,
        missing: Missing,
        subject: &str,
    ) -> Result<Vec<T>, HubError> {
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            if !seen.insert(url.to_string()) {
                return Err(HubError::Malformed(format!("{subject}: pagination loops")));
            }
            if seen.len() > max_pages {
                return Err(HubError::Malformed(format!(
                    "{subject}: more than {max_pages} pages"
                )));
            }
            let (headers, page): (_, Vec<T>) = self.get_json(&url, missing, subject).await?;
            items.extend(page);
            next = next_link(&headers, &url);
        }
        Ok(items)
    }

    /// One request with up to `attempts` tries: redirects followed, 408/429/5xx and transport
    /// errors retried with backoff, then `accept` run on the success answer (its transport
    /// errors are retried too).
    async fn execute<T, F, Fut>(
        &self,
        url: &Url,
        range: Option<ByteRange>,
        attempts: u32,
        missing: Missing,
        subject: &str,
        mut accept: F,
    ) -> Result<T, HubError>
    where
        F: FnMut(Response) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 1;
        loop {
            let transport = match self.follow(url, range).await {
                Ok(resp) if resp.status().is_success() => match accept(resp).await {
                    Ok(value) => return Ok(value),
                    Err(Failure::Fatal(e)) => return Err(e),
                    Err(Failure::Transport(e)) => e,
                },
                Ok(resp) => {
                    let status = resp.status();
                    if retryable(status) && attempt < attempts {
                        let wait = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                        tracing::debug!(
                            status = status.as_u16(),
                            attempt,
                            wait_ms = wait.as_millis() as u64,
                            "{subject}: hub busy, retrying"
                        );
                        drop(resp);
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(self.error_from(resp, missing, subject).await);
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transport(e)) => e,
            };
            if attempt >= attempts {
                return Err(self.transport_error(transport));
            }
            let wait = backoff(attempt);
            tracing::debug!(attempt, error = %describe(&transport), "{subject}: retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Send a GET and follow its redirects. The token goes only to the endpoint's origin, and
    /// never again once a hop has left it.
    async fn follow(&self, url: &Url, range: Option<ByteRange>) -> Result<Response, Failure> {
        let mut current = url.clone();
        let mut authorised = self.same_origin(&current);
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client.get(current.clone());
            if let (true, Some(auth)) = (authorised, &self.auth) {
                req = req.header(header::AUTHORIZATION, auth.clone());
            }
            if let Some(r) = range {
                req = req.header(header::RANGE, r.header());
            }
            let resp = req.send().await.map_err(Failure::Transport)?;
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    Failure::Fatal(HubError::Malformed(format!(
                        "redirect without a usable Location from {}",
                        current.path()
                    )))
                })?;
            let next = current.join(location).map_err(|e| {
                Failure::Fatal(HubError::Malformed(format!("bad redirect Location: {e}")))
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(Failure::Fatal(HubError::Malformed(format!(
                    "redirect to a {} URL",
                    next.scheme()
                ))));
            }
            if next.origin() != current.origin() {
                authorised = false;
            }
            tracing::debug!(
                status = resp.status().as_u16(),
                to_host = next.host_str().unwrap_or(""),
                to_path = next.path(),
                "following redirect"
            );
            current = next;
        }
        Err(Failure::Fatal(HubError::Malformed(format!(
            "more than {MAX_REDIRECTS} redirects from {}",
            url.path()
        ))))
    }

    /// The `HubError` for an unsuccessful answer, with the hub's message.
    async fn error_from(&self, resp: Response, missing: Missing, subject: &str) -> HubError {
        let status = resp.status().as_u16();
        let headers = resp.headers();
        let code = header_text(headers, "x-error-code");
        let header_message = header_text(headers, "x-error-message");
        let body = read_capped(resp, ERROR_BODY_MAX).await.unwrap_or_default();
        let hub_message = header_message.or_else(|| body_message(&body));
        map_error(
            status,
            code.as_deref(),
            missing,
            self.message(subject, hub_message),
        )
    }

    /// `subject: hub message` (cut to [`MESSAGE_MAX`] characters), never carrying the token.
    pub(crate) fn message(&self, subject: &str, hub_message: Option<String>) -> String {
        let text = match hub_message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            Some(m) => format!("{subject}: {}", truncate(m, MESSAGE_MAX)),
            None => subject.to_owned(),
        };
        match &self.token {
            Some(token) => text.replace(token.as_str(), "<redacted>"),
            None => text,
        }
    }

    /// A transport error as a `HubError`, without its URL when that URL is not the hub's own
    /// (a signed CDN URL is a credential of sorts).
    fn transport_error(&self, e: reqwest::Error) -> HubError {
        if e.is_timeout() {
            return HubError::Timeout("no answer within the connect/read timeout");
        }
        if e.url().is_some_and(|u| !self.same_origin(u)) {
            HubError::Connect(e.without_url())
        } else {
            HubError::Connect(e)
        }
    }
}

/// A transport error for a log line: its kind and causes, never its URL.
fn describe(e: &reqwest::Error) -> String {
    let mut text = String::from(if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect error"
    } else if e.is_body() {
        "body error"
    } else {
        "request error"
    });
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The error for an unsuccessful answer: the `X-Error-Code` first, then the status.
pub(crate) fn map_error(
    status: u16,
    code: Option<&str>,
    missing: Missing,
    message: String,
) -> HubError {
    match (code, status) {
        (Some("RepoNotFound"), _) => HubError::RepoNotFound(message),
        (Some("RevisionNotFound"), _) => HubError::RevisionNotFound(message),
        (Some("EntryNotFound"), _) => HubError::EntryNotFound(message),
        // Gated: 401 without a token, 403 with one that is not (yet) approved.
        (Some("GatedRepo"), 403) => HubError::Denied(message),
        (Some("GatedRepo"), _) => HubError::Unauthorized(message),
        (_, 401) => HubError::Unauthorized(message),
        (_, 403) => HubError::Denied(message),
        (_, 404) => match missing {
            Missing::Repo => HubError::RepoNotFound(message),
            Missing::Revision => HubError::RevisionNotFound(message),
            Missing::Entry => HubError::EntryNotFound(message),
        },
        (_, 429) => HubError::RateLimited(message),
        _ => HubError::Status { status, message },
    }
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429) || status.is_server_error()
}

/// 200ms, 400ms, 800ms, … capped at [`BACKOFF_CAP`].
fn backoff(attempt: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP)
}

/// `Retry-After` in seconds, capped at [`RETRY_AFTER_CAP`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs = header_text(headers, "retry-after")?.parse::<u64>().ok()?;
    Some(Duration::from_secs(secs).min(RETRY_AFTER_CAP))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)?
        .to_str()
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Read at most `max` bytes of a body; more is an error.
async fn read_capped(mut resp: Response, max: usize) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Failure::Transport)? {
        if body.len() + chunk.len() > max {
            return Err(Failure::Fatal(HubError::Malformed(format!(
                "an answer of more than {max} bytes"
            ))));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The message of an error body: `{"error": …}` (Hugging Face), `{"Message": …}` (ModelScope),
/// `{"message": …}`, or short plain text.
fn body_message(body: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        return ["error", "Message", "message"]
            .iter()
            .find_map(|k| value.get(k).and_then(|v| v.as_str()).map(str::to_owned));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty() && !text.starts_with('<')).then(|| text.to_owned())
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// `repo@commit:path`, the subject of a file request; a path no listing would hold is not found.
pub(crate) fn file_subject(repo: &str, commit: &str, path: &str) -> Result<String, HubError> {
    let subject = format!("{repo}@{commit}:{path}");
    if check_path(path) {
        Ok(subject)
    } else {
        Err(HubError::EntryNotFound(subject))
    }
}

/// Is `segment` one safe path component (non-empty, not `.`/`..`, no `/`, `\` or NUL)?
pub(crate) fn check_segment(segment: &str) -> bool {
    !segment.is_empty() && segment != "." && segment != ".." && !segment.contains(['/', '\\', '\0'])
}

/// Is `path` a relative `/`-separated path of safe components? A hub's file list must not make
/// anyone write outside a directory.
pub(crate) fn check_path(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(check_segment)
}

/// Lowercase hex of exactly `len` digits, lowercased; `None` when it is not.
pub(crate) fn hex_id(value: &str, len: usize) -> Option<String> {
    (value.len() == len && value.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| value.to_ascii_lowercase())
}

/// Sort by path, refusing a path listed twice.
pub(crate) fn sorted_files(
    mut files: Vec<HubFile>,
    subject: &str,
) -> Result<Vec<HubFile>, HubError> {
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(pair) = files.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(HubError::Malformed(format!(
            "{subject}: {} is listed twice",
            pair[0].path
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in [
            "a",
            "a/b.bin",
            "1_Pooling/config.json",
            ".gitattributes",
            "a/.b/c..d",
        ] {
            assert!(check_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            ".",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
        ] {
            assert!(!check_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), BACKOFF_CAP);
    }

    #[test]
    fn messages_are_cut_and_scrubbed() {
        let cfg = HubConfig {
            endpoint: "https://hub.example".into(),
            token: Some("hf_secret".into()),
            timeout: Duration::from_secs(1),
            retries: 1,
            user_agent: "t".into(),
        };
        let http = Http::new(&cfg).unwrap();
        let m = http.message(
            "org/x",
            Some(format!("bad token hf_secret {}", "é".repeat(400))),
        );
        assert!(!m.contains("hf_secret"));
        assert!(m.chars().count() < 330);
        assert_eq!(http.message("org/x", Some("  ".into())), "org/x");
        assert!(!format!("{http:?}").contains("hf_secret"));
    }
}
