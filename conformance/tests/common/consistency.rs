//! Does the agent's index agree with its disk? Checked from outside, through the agent's own
//! API and a walk of its data directory, after crashes, full disks and evictions:
//!
//! - `<data>/tmp` holds no regular file (no download or upload left half-written);
//! - every file under `<data>/blobs` has a blob's path (`sha256/<xx>/<hex>`), and the agent
//!   serves it: `HEAD /v2/closed/…` (a pull-through request through the alias [`CLOSED_ALIAS`],
//!   configured on every test agent, whose upstream refuses connections, so only indexed content
//!   can answer) gives 200 with the file's size and digest;
//! - `POST /manta/v1/verify` checks exactly those files (count and bytes), finding none corrupt
//!   and no indexed blob missing: every indexed blob has its file;
//! - `space.used` is the bytes of those files and nothing is reserved (the agent is idle);
//! - every unreferenced-blob entry of `GET /manta/v1/cache` is one of those files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt as _;
use manta_conformance::upstream_fixtures::free_port;

use super::hub_agent::client;
use super::lifecycle::{blob_files, temp_file_sizes, Admin};

/// Status, `Content-Length` and `Docker-Content-Digest` of a blob HEAD.
pub type HeadAnswer = (u16, Option<String>, Option<String>);

/// The alias of an upstream that refuses connections (configured on every test agent: loopback
/// upstreams are contacted only when configured): a pull-through request through it can only
/// be answered from the cache.
pub const CLOSED_ALIAS: &str = "closed";

/// The URL for [`CLOSED_ALIAS`]: a loopback port nothing listens on.
pub fn closed_upstream() -> Result<String> {
    Ok(format!("http://127.0.0.1:{}", free_port()?))
}

/// `HEAD /v2/closed/manta-consistency/probe/blobs/<digest>`: 200 only for a blob the store
/// holds and has indexed.
pub async fn cached_head(c: &reqwest::Client, base: &str, digest: &str) -> Result<HeadAnswer> {
    let resp = c
        .head(format!(
            "{base}/v2/{CLOSED_ALIAS}/manta-consistency/probe/blobs/{digest}"
        ))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Ok((
        resp.status().as_u16(),
        h("content-length"),
        h("docker-content-digest"),
    ))
}

/// What a consistent store holds.
#[derive(Clone, Debug)]
pub struct StoreView {
    /// `digest → size` of every blob.
    pub blobs: BTreeMap<String, u64>,
    /// `space.used`.
    pub used: u64,
}

/// Check the agent at `base` against its data directory `data`; every disagreement found is
/// listed in the error.
pub async fn check(base: &str, data: &Path) -> Result<StoreView> {
    let admin = Admin::new(base);
    let mut problems = String::new();

    for (p, size) in temp_file_sizes(data) {
        writeln!(problems, "  temp file left: {} ({size} bytes)", p.display())?;
    }
    let (blobs, strays) = blob_files(data);
    for s in &strays {
        writeln!(problems, "  a file under blobs/ that is not a blob: {s}")?;
    }
    let total: u64 = blobs.values().sum();

    // Every blob file is served, with its size, by a request only the cache can answer.
    let c = client();
    let heads: Vec<(String, u64, Result<HeadAnswer>)> =
        futures_util::stream::iter(blobs.iter().map(|(d, s)| {
            let c = c.clone();
            async move { (d.clone(), *s, cached_head(&c, base, d).await) }
        }))
        .buffer_unordered(16)
        .collect()
        .await;
    for (d, size, r) in heads {
        match r {
            Ok((200, len, dcd))
                if len.as_deref() == Some(size.to_string().as_str())
                    && dcd.as_deref() == Some(d.as_str()) => {}
            Ok((status, len, dcd)) => writeln!(
                problems,
                "  blob file {d} ({size} bytes) is not served as such: HEAD {status}, \
                 Content-Length {len:?}, Docker-Content-Digest {dcd:?}"
            )?,
            Err(e) => writeln!(problems, "  HEAD of blob {d}: {e:#}")?,
        }
    }

    // The index's view: every indexed blob has its file, and no more blobs are indexed.
    let v = admin.verify().await?;
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec![format!("<no {k} list in {v}>")])
    };
    let (corrupt, missing) = (list("corrupt"), list("missing"));
    if !corrupt.is_empty() {
        writeln!(problems, "  verify found corrupt blobs: {corrupt:?}")?;
    }
    if !missing.is_empty() {
        writeln!(problems, "  indexed blobs without their file: {missing:?}")?;
    }
    if v["checked"].as_u64() != Some(blobs.len() as u64) || v["bytes"].as_u64() != Some(total) {
        writeln!(
            problems,
            "  verify checked {} blobs of {} bytes; there are {} blob files of {total} bytes",
            v["checked"],
            v["bytes"],
            blobs.len()
        )?;
    }

    let cache = admin.cache().await?;
    let used = cache["space"]["used"].as_u64().context("space.used")?;
    let reserved = cache["space"]["reserved"]
        .as_u64()
        .context("space.reserved")?;
    if used != total {
        writeln!(
            problems,
            "  space.used is {used}, the blob files hold {total} bytes"
        )?;
    }
    if reserved != 0 {
        writeln!(
            problems,
            "  {reserved} bytes still reserved by an idle agent"
        )?;
    }
    for e in cache["entries"].as_array().context("entries")? {
        if e["kind"] == "blob" {
            let name = e["name"].as_str().unwrap_or_default();
            if !blobs.contains_key(name) {
                writeln!(
                    problems,
                    "  cache entry for blob {name} without its file: {e}"
                )?;
            }
        }
    }

    anyhow::ensure!(
        problems.is_empty(),
        "the index and the disk of {} disagree:\n{problems}",
        data.display()
    );
    Ok(StoreView { blobs, used })
}

/// [`check`] until it passes (an agent finishing a failed download's cleanup, say); panics at
/// `timeout` with the last disagreement.
pub async fn assert_consistent(base: &str, data: &Path, timeout: Duration) -> StoreView {
    let deadline = Instant::now() + timeout;
    loop {
        match check(base, data).await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
