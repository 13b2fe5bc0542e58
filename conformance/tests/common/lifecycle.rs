//! Helpers for the cache lifecycle tests (`cache_lifecycle.rs`): an agent that can be killed and
//! restarted on its data directory, the admin API of issue 4 (space, entries, pins, gc, removal,
//! verify, metrics), pulls through the cache of a Debian `docker-registry` fed with generated
//! images, the store on disk, and a small tmpfs.
//!
//! The tests are `#[tokio::test(flavor = "multi_thread")]`, like the hub tests: blocking calls
//! (skopeo, process start and kill) block only the test's own thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures_util::StreamExt as _;
use manta_conformance::server::MantaServer;
use manta_conformance::upstream_fixtures::{DockerRegistry, UpstreamConfig};
use serde_json::Value;

use super::hub_agent::{
    blob_file, blob_ok, client, log_tail, manifest_ok, poll, send, spawn_agent, Answer,
};
use super::{metric_sum, write_oci_image, LayoutImage};

/// The largest `free` a gc can be asked for: "evict everything that may go".
pub const FREE_ALL: u64 = 1 << 50;

// ---------------------------------------------------------------------------------------------
// The agent
// ---------------------------------------------------------------------------------------------

/// `manta serve` on port 0 that can be killed (`kill -9`) and started again on the same data
/// directory with the same flags. Its log (appended across restarts) is printed when the test
/// panics.
pub struct Agent {
    server: MantaServer,
    hub: Option<String>,
    extra: Vec<String>,
    data: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Agent {
    /// On a fresh temp data dir, with `extra` serve flags; with `hub`, in front of that hub
    /// fixture URL (Hugging Face and ModelScope, no token), as [`spawn_agent`] starts it.
    pub fn start(hub: Option<&str>, extra: &[&str]) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let mut a = Self::start_in(&tmp.path().join("data"), hub, extra)?;
        a._tmp = Some(tmp);
        Ok(a)
    }

    /// On `data` (kept by the caller: a mount point, say).
    pub fn start_in(data: &Path, hub: Option<&str>, extra: &[&str]) -> Result<Self> {
        let hub = hub.map(str::to_string);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let server = Self::spawn(data, hub.as_deref(), &extra)?;
        Ok(Self {
            server,
            hub,
            extra,
            data: data.to_path_buf(),
            _tmp: None,
        })
    }

    fn spawn(data: &Path, hub: Option<&str>, extra: &[String]) -> Result<MantaServer> {
        let mut extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        // The consistency probe's closed upstream must be configured (see `alias_config`).
        let own_config;
        if !extra.contains(&"--config") {
            own_config = UpstreamConfig::default()
                .alias(
                    super::consistency::CLOSED_ALIAS,
                    &super::consistency::closed_upstream()?,
                )
                .write(&data.with_extension("cfg"))?
                .to_string_lossy()
                .into_owned();
            extra.extend(["--config", own_config.as_str()]);
        }
        match hub {
            Some(h) => spawn_agent(h, data, &extra),
            None => MantaServer::start_in(data, &extra),
        }
        .with_context(|| format!("start manta serve on {} with {extra:?}", data.display()))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        self.server.kill9().expect("kill -9 manta serve");
    }

    /// `kill -9` (if still running) and start again on the same data dir with the same flags
    /// (it listens on a new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.server = Self::spawn(&self.data, self.hub.as_deref(), &self.extra)
            .unwrap_or_else(|e| panic!("restart: {e:#}\n{}", log_tail(&self.server.logs(), 60)));
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The running server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn logs(&self) -> String {
        self.server.logs()
    }

    pub fn admin(&self) -> Admin {
        Admin::new(&self.url())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- manta serve log (last 80 lines) ---\n{}\n--- end of log ---",
                log_tail(&self.server.logs(), 80)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------------------------

/// `space` of `GET /manta/v1/cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub capacity: u64,
    pub used: u64,
    pub reserved: u64,
    pub pinned: u64,
    pub high_watermark: u64,
    pub low_watermark: u64,
}

/// The agent's admin API (`/manta/v1/…`), `/metrics` and `/readyz`. Calls that must succeed
/// panic with the status and body when they do not; the others return the [`Answer`].
#[derive(Clone)]
pub struct Admin {
    c: reqwest::Client,
    base: String,
}

fn must(a: &Answer, want: u16, what: &str) -> Value {
    assert_eq!(a.status, want, "{what}: {}", a.text());
    a.json()
}

impl Admin {
    pub fn new(base: &str) -> Self {
        Self {
            c: client(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn try_send(&self, req: reqwest::RequestBuilder, what: &str) -> Answer {
        send(req).await.unwrap_or_else(|e| panic!("{what}: {e:#}"))
    }

    /// `GET /manta/v1/cache`, which must answer 200.
    pub async fn cache(&self) -> Result<Value> {
        let a = send(self.c.get(self.url("/manta/v1/cache"))).await?;
        ensure!(
            a.status == 200,
            "GET /manta/v1/cache: {} {}",
            a.status,
            a.text()
        );
        serde_json::from_slice(&a.body).context("GET /manta/v1/cache: JSON")
    }

    /// `GET /manta/v1/cache?<query>`; status unchecked.
    pub async fn cache_with(&self, query: &str) -> Answer {
        let url = self.url(&format!("/manta/v1/cache?{query}"));
        self.try_send(self.c.get(url), "GET cache").await
    }

    /// The `space` of `GET /manta/v1/cache`.
    pub async fn space(&self) -> Result<Space> {
        let v = self.cache().await?;
        let s = &v["space"];
        let n = |k: &str| {
            s[k].as_u64()
                .with_context(|| format!("GET /manta/v1/cache: no space.{k} in {s}"))
        };
        Ok(Space {
            capacity: n("capacity")?,
            used: n("used")?,
            reserved: n("reserved")?,
            pinned: n("pinned")?,
            high_watermark: n("highWatermark")?,
            low_watermark: n("lowWatermark")?,
        })
    }

    /// The `entries` of `GET /manta/v1/cache`.
    pub async fn entries(&self) -> Vec<Value> {
        let v = self.cache().await.unwrap_or_else(|e| panic!("{e:#}"));
        v["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /manta/v1/cache has no entries: {v}"))
            .clone()
    }

    /// The cache entry named `name`, if any.
    pub async fn entry(&self, name: &str) -> Option<Value> {
        self.entries()
            .await
            .into_iter()
            .find(|e| e["name"].as_str() == Some(name))
    }

    /// `PUT /manta/v1/pins/<name>` with `target`; status unchecked.
    pub async fn put_pin(&self, name: &str, target: &Value) -> Answer {
        self.try_send(
            self.c
                .put(self.url(&format!("/manta/v1/pins/{name}")))
                .json(target),
            "PUT pin",
        )
        .await
    }

    /// `GET /manta/v1/pins`: the pins.
    pub async fn pins(&self) -> Vec<Value> {
        let a = self
            .try_send(self.c.get(self.url("/manta/v1/pins")), "GET pins")
            .await;
        let v = must(&a, 200, "GET /manta/v1/pins");
        v["pins"]
            .as_array()
            .unwrap_or_else(|| panic!("GET /manta/v1/pins: no pins array: {v}"))
            .clone()
    }

    /// `DELETE /manta/v1/pins/<name>[?reclaim=…]`; status unchecked.
    pub async fn delete_pin(&self, name: &str, reclaim: Option<&str>) -> Answer {
        let mut url = self.url(&format!("/manta/v1/pins/{name}"));
        if let Some(r) = reclaim {
            url.push_str(&format!("?reclaim={r}"));
        }
        self.try_send(self.c.delete(url), "DELETE pin").await
    }

    /// `POST /manta/v1/gc` (body `{"free": free}`, or none): the GcReport.
    pub async fn gc(&self, free: Option<u64>) -> Value {
        let mut req = self.c.post(self.url("/manta/v1/gc"));
        if let Some(f) = free {
            req = req.json(&serde_json::json!({ "free": f }));
        }
        let a = self.try_send(req, "POST gc").await;
        must(&a, 200, "POST /manta/v1/gc")
    }

    /// `POST /manta/v1/gc {"dryRun": true, "free": free}`: the GcReport.
    pub async fn gc_dry_run(&self, free: u64) -> Value {
        let a = self
            .try_send(
                self.c
                    .post(self.url("/manta/v1/gc"))
                    .json(&serde_json::json!({ "dryRun": true, "free": free })),
                "POST gc (dry run)",
            )
            .await;
        must(&a, 200, "POST /manta/v1/gc (dry run)")
    }

    /// `DELETE /manta/v1/cache/<reference>`; status unchecked.
    pub async fn remove(&self, reference: &str) -> Answer {
        self.try_send(
            self.c
                .delete(self.url(&format!("/manta/v1/cache/{reference}"))),
            "DELETE cache entry",
        )
        .await
    }

    /// `POST /manta/v1/verify`: `{checked, bytes, corrupt, missing}`.
    pub async fn verify(&self) -> Result<Value> {
        let a = send(self.c.post(self.url("/manta/v1/verify"))).await?;
        ensure!(
            a.status == 200,
            "POST /manta/v1/verify: {} {}",
            a.status,
            a.text()
        );
        serde_json::from_slice(&a.body).context("POST /manta/v1/verify: JSON")
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        let a = self
            .try_send(self.c.get(self.url("/metrics")), "GET /metrics")
            .await;
        assert_eq!(a.status, 200, "GET /metrics: {}", a.text());
        a.text()
    }

    /// The value of metric `name` (all label sets summed); panics, listing the cache metrics
    /// there are, when it is absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        metric_sum(&text, name, &[]).unwrap_or_else(|| {
            let ours: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("manta_cache") || l.starts_with("manta_verify"))
                .collect();
            panic!("no {name} in /metrics; cache metrics:\n{}", ours.join("\n"))
        })
    }

    /// Status of `GET /readyz`.
    pub async fn readyz(&self) -> Result<u16> {
        Ok(send(self.c.get(self.url("/readyz"))).await?.status)
    }
}

/// The `name`s of a GcReport's `evicted` list.
pub fn evicted_names(report: &Value) -> Vec<String> {
    report["evicted"]
        .as_array()
        .unwrap_or_else(|| panic!("GcReport without evicted: {report}"))
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect()
}

/// A number of a GcReport (0 when absent is not accepted: the field is part of the report).
pub fn report_u64(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("GcReport without {field}: {report}"))
}

// ---------------------------------------------------------------------------------------------
// Pulling through the cache
// ---------------------------------------------------------------------------------------------

/// An image pulled whole through the agent: its manifest digest and the (digest, size) of its
/// config and layers.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub manifest_digest: String,
    pub config: (String, u64),
    pub layers: Vec<(String, u64)>,
}

/// GET `<name>:<tag>`'s manifest, then its config and every layer (eight at a time) through
/// the agent at `base`, each checked (status, length, digest); then wait until each is installed
/// in the store at `data` (a client has its last byte once the content is verified; the file is
/// made durable and installed right after).
pub async fn pull(c: &reqwest::Client, base: &str, data: &Path, name: &str, tag: &str) -> Pulled {
    let (m, manifest_digest, _) = manifest_ok(c, base, name, tag).await;
    let desc = |d: &Value| {
        (
            d["digest"].as_str().expect("descriptor digest").to_string(),
            d["size"].as_u64().expect("descriptor size"),
        )
    };
    let config = desc(&m["config"]);
    let layers: Vec<(String, u64)> = m["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(desc)
        .collect();
    let all: Vec<&(String, u64)> = std::iter::once(&config).chain(&layers).collect();
    futures_util::stream::iter(all.iter().copied())
        .for_each_concurrent(8, |(d, s)| async move {
            blob_ok(c, base, name, d, *s).await;
        })
        .await;
    let blobs: Vec<(&str, u64)> = all.iter().map(|(d, s)| (d.as_str(), *s)).collect();
    installed(base, data, &blobs).await;
    Pulled {
        manifest_digest,
        config,
        layers,
    }
}

/// Until every blob of `blobs` (digest, size) is installed in the store of the agent at `base`
/// with data dir `data`: its file whole, and its record indexed (the cache alone serves it).
pub async fn installed(base: &str, data: &Path, blobs: &[(&str, u64)]) {
    let c = client();
    poll(
        "the blobs to be installed",
        Duration::from_secs(30),
        || async {
            let mut missing = Vec::new();
            for (d, size) in blobs {
                let file = std::fs::metadata(blob_file(data, d)).map(|m| m.len()).ok();
                let head = super::consistency::cached_head(&c, base, d).await?;
                if file != Some(*size) || head.0 != 200 {
                    missing.push(format!("{d}: file {file:?}, HEAD {}", head.0));
                }
            }
            if missing.is_empty() {
                Ok(Some(()))
            } else {
                anyhow::bail!("not installed: {missing:?}")
            }
        },
    )
    .await;
}

/// Push `bytes` as a blob of the agent's own (local) repository `repo`: `POST` an upload,
/// `PUT` it whole. Pushed content, never evicted.
pub async fn push_blob(c: &reqwest::Client, base: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = super::sha256_digest(bytes);
    let post = send(c.post(format!("{base}/v2/{repo}/blobs/uploads/")))
        .await
        .expect("POST upload");
    assert_eq!(post.status, 202, "POST upload: {}", post.text());
    let loc = post
        .header("location")
        .expect("upload Location")
        .to_string();
    let url = if loc.starts_with('/') {
        format!("{base}{loc}")
    } else {
        loc
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let put = send(
        c.put(format!("{url}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec()),
    )
    .await
    .expect("PUT upload");
    assert_eq!(put.status, 201, "PUT upload: {}", put.text());
    digest
}

/// The alias under which [`alias_config`] puts the upstream.
pub const UPSTREAM_ALIAS: &str = "up1";

/// `<dir>/manta.toml` with `up` as alias [`UPSTREAM_ALIAS`] (a name cannot carry the
/// `127.0.0.1:<port>` host itself: `:` is not allowed in a repository name); its path, for
/// `--config`.
pub fn alias_config(up: &DockerRegistry, dir: &Path) -> String {
    UpstreamConfig::default()
        .alias(UPSTREAM_ALIAS, &up.url())
        .alias(
            super::consistency::CLOSED_ALIAS,
            &super::consistency::closed_upstream().expect("a closed port"),
        )
        .write(dir)
        .expect("write the upstream config")
        .to_string_lossy()
        .into_owned()
}

/// An upstream image: where it lives on the upstream, its names on the agent, and what it
/// holds.
#[derive(Clone, Debug)]
pub struct UpstreamImage {
    /// `<repo>` on the upstream.
    pub repo: String,
    pub tag: String,
    /// `up1/<repo>`: the name pulls use on the agent.
    pub name: String,
    /// `127.0.0.1:<port>/<repo>`: the repository the cache keeps it under.
    pub cache_repo: String,
    pub image: LayoutImage,
}

impl UpstreamImage {
    /// `127.0.0.1:<port>/<repo>:<tag>`: the cache entry (and pin reference) of the tag.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.cache_repo, self.tag)
    }

    /// The `i`th layer's digest.
    pub fn layer(&self, i: usize) -> &str {
        &self.image.layers[i].digest
    }
}

/// Write an image of `layers` into the OCI layout at `layout` and push it to `up` as
/// `<repo>:<tag>` with skopeo. The agent must have `up` as [`UPSTREAM_ALIAS`] ([`alias_config`]).
pub fn push_image(
    up: &DockerRegistry,
    layout: &Path,
    repo: &str,
    tag: &str,
    layers: &[&[u8]],
) -> UpstreamImage {
    let layout_tag = format!("{}-{tag}", repo.replace('/', "-"));
    let image = write_oci_image(layout, &layout_tag, layers)
        .unwrap_or_else(|e| panic!("write {repo}:{tag}: {e:#}"));
    up.push_oci(layout, &layout_tag, &format!("{repo}:{tag}"), false)
        .unwrap_or_else(|e| panic!("push {repo}:{tag}: {e:#}"));
    UpstreamImage {
        repo: repo.to_string(),
        tag: tag.to_string(),
        name: format!("{UPSTREAM_ALIAS}/{repo}"),
        cache_repo: format!("{}/{repo}", up.host()),
        image,
    }
}

// ---------------------------------------------------------------------------------------------
// The store on disk
// ---------------------------------------------------------------------------------------------

/// `digest → size` of every regular file under `<data>/blobs` that has a blob's path
/// (`sha256/<xx>/<hex>`), and the relative paths of any other file there.
pub fn blob_files(data: &Path) -> (BTreeMap<String, u64>, Vec<String>) {
    let root = data.join("blobs");
    let mut blobs = BTreeMap::new();
    let mut strays = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue; // removed meanwhile
            };
            if meta.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(&root)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            let parts: Vec<&str> = rel.split('/').collect();
            let well_formed = meta.is_file()
                && parts.len() == 3
                && parts[0] == "sha256"
                && parts[2].len() == 64
                && parts[2]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && parts[1] == &parts[2][..2];
            if well_formed {
                blobs.insert(format!("sha256:{}", parts[2]), meta.len());
            } else {
                strays.push(rel);
            }
        }
    }
    (blobs, strays)
}

/// Apparent bytes of every file under `<data>/blobs` and `<data>/tmp`: what the cache holds on
/// disk, downloads in flight included, as one moment's state. `blobs/` is listed before and
/// after `tmp/`, and a listing during which a blob file went is taken again: a blob evicted to
/// make room for a download is then never counted together with that download's temp file
/// (which could not coexist), and a temp file renamed into `blobs/` meanwhile is counted once.
pub fn disk_bytes(data: &Path) -> u64 {
    loop {
        let (before, _) = blob_files(data);
        let temp: u64 = temp_file_sizes(data).iter().map(|(_, n)| n).sum();
        let (after, _) = blob_files(data);
        if before.keys().all(|d| after.contains_key(d)) {
            return before.values().sum::<u64>() + temp;
        }
    }
}

/// Regular files under `<data>/tmp` with their sizes (in-flight downloads and uploads).
pub fn temp_file_sizes(data: &Path) -> Vec<(PathBuf, u64)> {
    super::hub_agent::temp_files(data)
        .into_iter()
        .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.len())))
        .collect()
}

/// Flip one byte in the middle of a file, keeping its size: a blob gone bad on disk.
pub fn corrupt_file(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(path, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Seconds since the epoch (the resolution of the cache's last-access times).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Until the wall clock is past second `after`, so that the next use of something gets a later
/// last-access time than everything used so far.
pub async fn next_second(after: u64) {
    while unix_secs() <= after {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A small filesystem
// ---------------------------------------------------------------------------------------------

/// Append to `path` until the filesystem is full (ENOSPC); the bytes written.
pub fn fill(path: &Path) -> u64 {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let chunk = vec![0xa5u8; 64 << 10];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
    n
}

/// Bytes free on the filesystem holding `path`.
pub fn fs_available(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's answer")
}

/// A tmpfs mounted on a directory, unmounted (lazily, so that a process still holding a file
/// cannot keep it) when dropped.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `mount -t tmpfs -o size=<size_mib>m tmpfs <dir>` (creating `dir`). `Ok(None)` when this
    /// process may not mount (not root, or no CAP_SYS_ADMIN), with the reason printed.
    pub fn mount(dir: &Path, size_mib: u64) -> Result<Option<Self>> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .context("run mount")?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs on {} ({}; {}): this test needs root with \
                 CAP_SYS_ADMIN, as CI has",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(None);
        }
        Ok(Some(Self {
            dir: dir.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.dir).status();
        if !matches!(st, Ok(s) if s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
