//! A small HTTP helper over reqwest: builds registry URLs, captures whole responses and
//! asserts on them with messages that say which request failed and what came back.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, Url};

/// The registry under test, with a default repository name.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    name: String,
}

impl Client {
    pub fn new(base_url: &str, name: &str, timeout: Duration) -> Result<Self> {
        let base =
            Url::parse(base_url).with_context(|| format!("invalid registry URL {base_url:?}"))?;
        let http = reqwest::Client::builder()
            .user_agent("distribution-spec-conformance-tests (manta)")
            .timeout(timeout)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base,
            name: name.to_string(),
        })
    }

    /// The default repository (`OCI_NAMESPACE`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A request to `path_or_url`: an absolute URL, or a path (with optional query) on the registry.
    pub fn request(&self, method: Method, path_or_url: &str) -> Result<RequestBuilder> {
        let url = self
            .base
            .join(path_or_url)
            .with_context(|| format!("joining {path_or_url:?}"))?;
        Ok(self.http.request(method, url))
    }

    pub fn blob_path(&self, digest: &str) -> String {
        format!("/v2/{}/blobs/{}", self.name, digest)
    }

    pub fn manifest_path(&self, reference: &str) -> String {
        format!("/v2/{}/manifests/{}", self.name, reference)
    }

    pub fn uploads_path(&self) -> String {
        uploads_path_in(&self.name)
    }

    pub fn tags_path(&self) -> String {
        format!("/v2/{}/tags/list", self.name)
    }

    pub fn referrers_path(&self, digest: &str) -> String {
        format!("/v2/{}/referrers/{}", self.name, digest)
    }
}

/// `/v2/<name>/blobs/uploads/` for another repository.
pub fn uploads_path_in(name: &str) -> String {
    format!("/v2/{name}/blobs/uploads/")
}

/// A whole response, body read.
#[derive(Debug, Clone)]
pub struct Resp {
    pub method: Method,
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Why the body could not be read, when it could not.
    pub body_error: Option<String>,
}

impl Client {
    /// Send a request built from this client and read the whole response.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Resp> {
        let req = rb.build().context("building request")?;
        let method = req.method().clone();
        let url = req.url().to_string();
        let resp = self
            .http
            .execute(req)
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        // A body that cannot be read (e.g. shorter than its Content-Length) does not hide the
        // status and headers; cases that look at the body see it empty and the error in messages.
        let (body, body_error) = match resp.bytes().await {
            Ok(b) => (b, None),
            Err(e) => (Bytes::new(), Some(format!("{:#}", anyhow::Error::new(e)))),
        };
        Ok(Resp {
            method,
            url,
            status,
            headers,
            body,
            body_error,
        })
    }
}

impl Resp {
    /// A header as text (`None` when absent or not UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header that must be present and non-empty.
    pub fn require_header(&self, name: &str) -> Result<&str> {
        match self.header(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => bail!(
                "{}: missing {name} header ({})",
                self.what(),
                self.summary()
            ),
        }
    }

    /// `Location` reduced to path and query, as reggie's `GetRelativeLocation`.
    pub fn relative_location(&self) -> Result<String> {
        let loc = self.require_header("Location")?;
        Ok(relative(loc))
    }

    /// `METHOD URL`
    pub fn what(&self) -> String {
        format!("{} {}", self.method, self.url)
    }

    /// Status and the start of the body, for failure messages.
    pub fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body = body.trim();
        let body: String = body.chars().take(300).collect();
        if let Some(e) = &self.body_error {
            format!("status {}, body unreadable: {e}", self.status)
        } else if body.is_empty() {
            format!("status {}", self.status)
        } else {
            format!("status {}, body {body}", self.status)
        }
    }

    /// The status must be one of `allowed`.
    pub fn expect_status(&self, allowed: &[u16]) -> Result<()> {
        ensure!(
            allowed.contains(&self.status),
            "{}: expected status {}, got {}",
            self.what(),
            allowed
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            self.summary()
        );
        Ok(())
    }

    /// 200 <= status < 300 (the Go suite's `BeNumerically(">=", 200), BeNumerically("<", 300)`).
    pub fn expect_2xx(&self) -> Result<()> {
        ensure!(
            (200..300).contains(&self.status),
            "{}: expected a 2xx status, got {}",
            self.what(),
            self.summary()
        );
        Ok(())
    }

    /// 2xx, or one of `also`.
    pub fn expect_2xx_or(&self, also: &[u16]) -> Result<()> {
        ensure!(
            (200..300).contains(&self.status) || also.contains(&self.status),
            "{}: expected a 2xx status or {}, got {}",
            self.what(),
            also.iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            self.summary()
        );
        Ok(())
    }

    /// A header must equal `expected` exactly.
    pub fn expect_header(&self, name: &str, expected: &str) -> Result<()> {
        match self.header(name) {
            Some(v) if v == expected => Ok(()),
            Some(v) => bail!(
                "{}: header {name} is {v:?}, expected {expected:?}",
                self.what()
            ),
            None => bail!(
                "{}: header {name} missing, expected {expected:?} ({})",
                self.what(),
                self.summary()
            ),
        }
    }

    /// When the header is present it must equal `expected` (the Go suite's optional checks).
    pub fn expect_header_if_present(&self, name: &str, expected: &str) -> Result<()> {
        match self.header(name) {
            Some(v) if !v.is_empty() && v != expected => {
                bail!(
                    "{}: header {name} is {v:?}, expected {expected:?}",
                    self.what()
                )
            }
            _ => Ok(()),
        }
    }

    /// The body must be exactly `expected`.
    pub fn expect_body(&self, expected: &[u8], what: &str) -> Result<()> {
        if let Some(e) = &self.body_error {
            bail!("{}: {what}: body unreadable: {e}", self.what());
        }
        ensure!(
            self.body[..] == expected[..],
            "{}: {what}: body differs ({} bytes received, {} expected)",
            self.what(),
            self.body.len(),
            expected.len()
        );
        Ok(())
    }

    /// The error codes of an OCI error body, in order.
    pub fn error_codes(&self) -> Result<Vec<String>> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "{}: error body is not JSON ({})",
                self.what(),
                self.summary()
            )
        })?;
        let errors = v
            .get("errors")
            .and_then(|e| e.as_array())
            .with_context(|| {
                format!(
                    "{}: error body has no \"errors\" array ({})",
                    self.what(),
                    self.summary()
                )
            })?;
        errors
            .iter()
            .map(|e| {
                e.get("code")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
                    .with_context(|| {
                        format!(
                            "{}: error without a \"code\" ({})",
                            self.what(),
                            self.summary()
                        )
                    })
            })
            .collect()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "{}: body is not the expected JSON ({})",
                self.what(),
                self.summary()
            )
        })
    }
}

/// Path and query of a URL or reference; relative references are returned unchanged.
pub fn relative(loc: &str) -> String {
    match Url::parse(loc) {
        Ok(u) => match u.query() {
            Some(q) => format!("{}?{}", u.path(), q),
            None => u.path().to_string(),
        },
        Err(_) => loc.to_string(),
    }
}
