//! Helpers for the pull-through tests (tests/upstream.rs, tests/upstream_fixtures.rs): direct
//! HTTP that tolerates broken or stalled bodies and measures time, and skopeo pulls.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{require_skopeo, run};

pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Fetched {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    /// Set when the body stream failed or timed out before its end.
    pub body_error: Option<String>,
    pub elapsed: Duration,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `errors[0].code` of an OCI error body.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_string)
    }

    pub fn describe(&self) -> String {
        format!(
            "status {}, {} body bytes{}, after {:?}: {}",
            self.status,
            self.body.len(),
            self.body_error
                .as_ref()
                .map(|e| format!(" (body failed: {e})"))
                .unwrap_or_default(),
            self.elapsed,
            String::from_utf8_lossy(&self.body[..self.body.len().min(400)])
        )
    }
}

/// One request with an overall deadline. `Err` only when no response head arrived at all.
pub fn fetch(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Fetched> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    rt.block_on(async {
        let client = reqwest::Client::builder().build()?;
        let mut req = client.request(reqwest::Method::from_bytes(method.as_bytes())?, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = tokio::time::timeout(timeout, req.send())
            .await
            .with_context(|| format!("{method} {url}: no response within {timeout:?}"))?
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        let mut body_error = None;
        let deadline = tokio::time::Instant::from_std(start + timeout);
        loop {
            match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Ok(Ok(Some(c))) => body.extend_from_slice(&c),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    body_error = Some(format!("{e:#}"));
                    break;
                }
                Err(_) => {
                    body_error = Some(format!("body still open after {timeout:?}"));
                    break;
                }
            }
        }
        Ok(Fetched {
            status,
            headers,
            body,
            body_error,
            elapsed: start.elapsed(),
        })
    })
}

pub fn get_manifest(url: &str) -> Result<Fetched> {
    fetch(
        "GET",
        url,
        &[("Accept", ACCEPT_MANIFESTS)],
        Duration::from_secs(60),
    )
}

/// `skopeo copy --preserve-digests [--all] docker://<src> oci:<dest>:<tag>` over plain HTTP.
pub fn skopeo_pull(src: &str, dest: &Path, tag: &str, all: bool) -> Result<()> {
    require_skopeo();
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--preserve-digests", "--src-tls-verify=false"]);
    if all {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{src}"))
        .arg(format!("oci:{}:{tag}", dest.display()));
    run(&mut cmd)?;
    Ok(())
}
