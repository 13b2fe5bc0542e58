//! Manta as a pull-through cache of upstream registries (docs/upstream.md), through real clients.
//!
//! Upstreams are Debian's `docker-registry` (optionally behind htpasswd basic auth) and
//! [`FakeUpstream`]s that lie, stall or demand the Bearer token flow. Each test starts a fresh
//! `manta serve --config <file>` and asserts what a user sees (digests, bytes, statuses, error
//! codes) and what the upstream saw (which blobs were fetched, how often, with which token).
//!
//! tests/upstream_fixtures.rs proves the fixtures themselves against skopeo and plain HTTP,
//! without Manta, so a failing test here points at the server.
//!
//! Needs: skopeo, umoci, containerd (`ctr`), docker-registry, htpasswd (apache2-utils), and root
//! for containerd's snapshot mounts.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::containerd::{pull_and_verify, Containerd, Expect};
use common::upstream::{fetch, get_manifest, skopeo_pull, ACCEPT_MANIFESTS};
use common::{
    build_test_image, build_test_index, layout_tagged, metric_sum, read_blob, require_tool, run,
    sha256_digest, Descriptor, LayoutImage,
};
use manta_conformance::server::{manta_bin, MantaServer};
use manta_conformance::upstream_fixtures::{
    Credentials, DockerRegistry, FakeMode, FakeUpstream, UpstreamConfig,
};

// ---------------------------------------------------------------------------------------------
// Manta under test, and what every test checks at the end
// ---------------------------------------------------------------------------------------------

/// A `manta serve --config <file>` on a fresh data directory.
struct Manta {
    server: MantaServer,
    _dir: tempfile::TempDir,
}

impl Manta {
    fn start(cfg: &UpstreamConfig) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = cfg.write(&dir.path().join("etc"))?;
        let config_arg = config.to_string_lossy().into_owned();
        let server = MantaServer::start_in(&dir.path().join("data"), &["--config", &config_arg])
            .with_context(|| {
                format!(
                    "start manta serve --config with:\n{}",
                    std::fs::read_to_string(&config).unwrap_or_default()
                )
            })?;
        Ok(Self { server, _dir: dir })
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn addr(&self) -> &str {
        self.server.addr()
    }

    fn logs(&self) -> String {
        self.server.logs()
    }
}

/// Run a test body against Manta; on failure print Manta's log tail and panic with the error
/// chain.
fn with_manta(cfg: &UpstreamConfig, body: impl FnOnce(&Manta) -> Result<()>) {
    let manta = match Manta::start(cfg) {
        Ok(m) => m,
        Err(e) => panic!("{e:?}"),
    };
    if let Err(e) = body(&manta) {
        let logs = manta.logs();
        let lines: Vec<&str> = logs.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        panic!("{e:?}\n--- manta log (last 60 lines) ---\n{tail}\n--- end of manta log ---");
    }
}

/// Strings that must never appear in Manta's log or in a response body.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn credentials(&mut self, what: &str, c: &Credentials) {
        self.0
            .push((format!("{what} password"), c.password.clone()));
        let basic = c.basic_header();
        let encoded = basic.trim_start_matches("Basic ").to_string();
        self.0
            .push((format!("{what} basic-auth header value"), encoded));
    }

    fn tokens(&mut self, fake: &FakeUpstream) {
        for t in fake.issued_tokens() {
            self.0.push(("bearer token".into(), t));
        }
    }

    fn check(&self, text: &str, place: &str) -> Result<()> {
        for (what, secret) in &self.0 {
            ensure!(
                !text.contains(secret.as_str()),
                "the {what} appears in {place}:\n{}",
                text.lines()
                    .filter(|l| l.contains(secret.as_str()))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(())
    }
}

fn metrics(manta: &Manta) -> Result<String> {
    let m = fetch(
        "GET",
        &format!("{}/metrics", manta.url()),
        &[],
        Duration::from_secs(30),
    )?;
    ensure!(m.status == 200, "/metrics: {}", m.describe());
    Ok(m.text())
}

/// Pull-through metric names, as registry/src/metrics.rs registers them (prometheus-client adds
/// `_total` to counters).
const LOOKUPS: &str = "manta_cache_lookups_total";
const FETCHED_BYTES: &str = "manta_source_fetched_bytes_total";

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    metric_sum(text, name, labels).with_context(|| {
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("manta_upstream")
                    || l.starts_with("manta_source")
                    || l.starts_with("manta_cache")
            })
            .collect();
        format!(
            "no {name} sample with labels {labels:?} in /metrics; pull-through samples:\n{}",
            ours.join("\n")
        )
    })
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------
/// Whether this `manta` has the `mirror-config` subcommand yet.
fn has_mirror_config() -> Result<bool> {
    Ok(Command::new(manta_bin()?)
        .args(["mirror-config", "containerd", "--help"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false))
}

/// `<root>/<upstream>/hosts.toml` sending pulls of `<upstream>` to Manta first: written by
/// `manta mirror-config containerd` when the binary has it, by hand otherwise.
fn containerd_hosts_dir(root: &Path, upstream: &str, mirror: &str) -> Result<PathBuf> {
    let file = root.join(upstream).join("hosts.toml");
    if has_mirror_config()? {
        let root_arg = root.to_string_lossy().into_owned();
        run(Command::new(manta_bin()?).args([
            "mirror-config",
            "containerd",
            "--root",
            &root_arg,
            "--registries",
            upstream,
            "--mirror",
            mirror,
        ]))?;
    } else {
        eprintln!(
            "NOTE: `manta mirror-config` is missing; writing {} by hand",
            file.display()
        );
        std::fs::create_dir_all(root.join(upstream))?;
        std::fs::write(
            &file,
            format!(
                "server = \"http://{upstream}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )?;
    }
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("mirror-config did not write {}", file.display()))?;
    ensure!(
        text.contains(&format!("[host.\"{mirror}\"]")) && text.contains("resolve"),
        "{} does not send pulls to {mirror}:\n{text}",
        file.display()
    );
    Ok(file)
}

/// Wait until `since` is more than `ttl` ago: lets a cached tag go stale. This exercises the
/// documented time-to-live; it synchronises nothing.
fn let_tag_expire(since: Instant, ttl: Duration) {
    let until = since + ttl + Duration::from_millis(300);
    let now = Instant::now();
    if until > now {
        std::thread::sleep(until - now);
    }
}

fn layer_digests(img: &LayoutImage) -> Vec<String> {
    img.layers.iter().map(|l| l.digest.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. containerd with Manta as its mirror of an authenticated upstream
// ---------------------------------------------------------------------------------------------

#[test]
fn containerd_mirror_pulls_each_blob_from_upstream_once() {
    require_tool(
        "htpasswd",
        "install it with `apt-get install apache2-utils`",
    );
    let tmp = tempfile::tempdir().unwrap();
    let creds = Credentials::random("alice");
    let up = DockerRegistry::start(Some(creds.clone())).unwrap();
    let img = build_test_image(tmp.path(), "v1").unwrap();
    let repo = "e2e/mirror/image";
    up.push_oci(&img.image.layout, "v1", &format!("{repo}:v1"), false)
        .unwrap();
    let cfg = UpstreamConfig {
        tag_ttl_secs: Some(300),
        timeout_secs: Some(30),
        ..Default::default()
    }
    .credentials(&up.host(), &creds);
    with_manta(&cfg, |manta| {
        let mut secrets = Secrets::default();
        secrets.credentials("upstream", &creds);
        let hosts = tmp.path().join("certs.d");
        containerd_hosts_dir(&hosts, &up.host(), &manta.url())?;
        let hosts_arg = hosts.to_string_lossy().into_owned();
        let reference = format!("{}/{repo}:v1", up.host());
        let want = Expect {
            listed_digest: &img.image.manifest_digest,
            image: &img.image,
            rootfs: &img.rootfs,
        };
        let mut blobs = vec![img.image.config.clone()];
        blobs.extend(img.image.layers.iter().cloned());
        let blob_bytes: u64 = blobs.iter().map(|b| b.size).sum();

        // First pull: every blob comes from the upstream through Manta, exactly once.
        let mark = up.access_log().len();
        let mut ctrd = Containerd::start()?;
        pull_and_verify(
            &mut ctrd,
            "first",
            &reference,
            &["--hosts-dir", &hosts_arg],
            &want,
            &tmp.path().join("mnt-first"),
        )?;
        drop(ctrd);
        let seen = up.access_log()[mark..].to_vec();
        let direct: Vec<_> = seen
            .iter()
            .filter(|e| e.user_agent.contains("containerd"))
            .collect();
        ensure!(
            direct.is_empty(),
            "containerd went to the upstream directly (Manta did not serve it):\n{direct:#?}"
        );
        for b in &blobs {
            let path = format!("/v2/{repo}/blobs/{}", b.digest);
            let gets = seen
                .iter()
                .filter(|e| e.method == "GET" && e.path() == path && e.status == 200)
                .count();
            ensure!(
                gets == 1,
                "the upstream served {path} {gets} times during the first pull (want 1); its log:\n{seen:#?}"
            );
        }
        let m = metrics(manta)?;
        let misses = metric(&m, LOOKUPS, &[("kind", "blob"), ("result", "miss")])?;
        ensure!(
            misses >= blobs.len() as f64,
            "{LOOKUPS}{{kind=blob,result=miss}} = {misses}, want >= {}",
            blobs.len()
        );
        let fetched = metric(&m, FETCHED_BYTES, &[("source", "upstream")])?;
        ensure!(
            fetched >= blob_bytes as f64,
            "{FETCHED_BYTES} = {fetched}, want >= {blob_bytes}"
        );

        // Second containerd root: everything from Manta's cache, no blob from the upstream.
        let mark = up.access_log().len();
        let mut ctrd = Containerd::start()?;
        pull_and_verify(
            &mut ctrd,
            "second",
            &reference,
            &["--hosts-dir", &hosts_arg],
            &want,
            &tmp.path().join("mnt-second"),
        )?;
        drop(ctrd);
        let again: Vec<_> = up.access_log()[mark..]
            .iter()
            .filter(|e| e.method == "GET" && e.path().contains("/blobs/"))
            .cloned()
            .collect();
        ensure!(
            again.is_empty(),
            "the second pull fetched blobs from the upstream again:\n{again:#?}"
        );
        let m = metrics(manta)?;
        let hits = metric(&m, LOOKUPS, &[("kind", "blob"), ("result", "hit")])?;
        ensure!(
            hits >= blobs.len() as f64,
            "{LOOKUPS}{{kind=blob,result=hit}} = {hits} after the second pull, want >= {}",
            blobs.len()
        );
        secrets.check(&manta.logs(), "Manta's log")
    });
}

// ---------------------------------------------------------------------------------------------
// 2. skopeo through an alias
// ---------------------------------------------------------------------------------------------

#[test]
fn skopeo_pulls_image_and_index_through_an_alias() {
    let tmp = tempfile::tempdir().unwrap();
    let up = DockerRegistry::start(None).unwrap();
    let img = build_test_image(tmp.path(), "v1").unwrap();
    let idx = build_test_index(tmp.path(), "multi").unwrap();
    up.push_oci(&img.image.layout, "v1", "e2e/alias/image:v1", false)
        .unwrap();
    up.push_oci(&idx.layout, "multi", "e2e/alias/multi:multi", true)
        .unwrap();
    let cfg = UpstreamConfig::default().alias("up1", &up.url());
    with_manta(&cfg, |manta| {
        // The manifest as Manta serves it: the upstream's exact bytes.
        let url = format!("{}/v2/up1/e2e/alias/image/manifests/v1", manta.url());
        let m = get_manifest(&url)?;
        ensure!(m.status == 200, "GET {url}: {}", m.describe());
        ensure!(
            m.body == img.image.manifest,
            "GET {url} answered other bytes than the upstream's manifest: {}",
            m.describe()
        );
        ensure!(
            m.header("docker-content-digest") == Some(img.image.manifest_digest.as_str()),
            "GET {url}: Docker-Content-Digest {:?}, want {}",
            m.header("docker-content-digest"),
            img.image.manifest_digest
        );

        let out = tmp.path().join("pulled");
        skopeo_pull(
            &format!("{}/up1/e2e/alias/image:v1", manta.addr()),
            &out,
            "v1",
            false,
        )?;
        let got = LayoutImage::read(&out, "v1")?;
        ensure!(
            got.manifest_digest == img.image.manifest_digest,
            "skopeo pulled manifest {} through the alias, the upstream has {}",
            got.manifest_digest,
            img.image.manifest_digest
        );
        ensure!(got.config == img.image.config, "config descriptor differs");
        ensure!(
            layer_digests(&got) == layer_digests(&img.image),
            "layers differ: {:?} vs {:?}",
            layer_digests(&got),
            layer_digests(&img.image)
        );

        // The index with both platforms.
        let out = tmp.path().join("pulled-multi");
        skopeo_pull(
            &format!("{}/up1/e2e/alias/multi:multi", manta.addr()),
            &out,
            "multi",
            true,
        )?;
        let (digest, bytes) = layout_tagged(&out, "multi")?;
        ensure!(
            digest == idx.index_digest && bytes == idx.index_bytes,
            "skopeo --all pulled index {digest}, the upstream has {}",
            idx.index_digest
        );
        for p in &idx.platforms {
            let manifest = read_blob(
                &out,
                &Descriptor {
                    media_type: p.image.manifest_media_type.clone(),
                    digest: p.image.manifest_digest.clone(),
                    size: p.image.manifest.len() as u64,
                },
            )
            .with_context(|| format!("{} manifest", p.architecture))?;
            ensure!(manifest == p.image.manifest);
            for l in p.image.layers.iter().chain([&p.image.config]) {
                read_blob(&out, l).with_context(|| format!("{} blob", p.architecture))?;
            }
        }

        // The upstream saw the repository without the alias.
        let upstream_paths = up.requests();
        ensure!(
            upstream_paths
                .iter()
                .any(|(m, p)| m == "GET" && p == "/v2/e2e/alias/image/manifests/v1")
                || upstream_paths
                    .iter()
                    .any(|(m, p)| m == "HEAD" && p == "/v2/e2e/alias/image/manifests/v1"),
            "the upstream never saw /v2/e2e/alias/image/manifests/v1: {upstream_paths:?}"
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// 3. The upstream goes offline
// ---------------------------------------------------------------------------------------------

#[test]
fn offline_upstream_serves_cached_tags_and_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let mut up = DockerRegistry::start(None).unwrap();
    let img = build_test_index(tmp.path(), "multi").unwrap();
    let amd = &img.platform("amd64").unwrap().image;
    up.push_oci(&img.layout, "amd64", "e2e/offline/image:v1", false)
        .unwrap();
    let ttl = Duration::from_secs(1);
    let cfg = UpstreamConfig {
        tag_ttl_secs: Some(ttl.as_secs()),
        timeout_secs: Some(5),
        ..Default::default()
    }
    .alias("up1", &up.url());
    with_manta(&cfg, |manta| {
        let src = format!("{}/up1/e2e/offline/image", manta.addr());
        skopeo_pull(
            &format!("{src}:v1"),
            &tmp.path().join("online"),
            "v1",
            false,
        )?;
        let pulled_at = Instant::now();

        up.stop()?;
        let_tag_expire(pulled_at, ttl);

        // By digest: content-addressed, needs no upstream.
        let out = tmp.path().join("offline-digest");
        skopeo_pull(&format!("{src}@{}", amd.manifest_digest), &out, "d", false)
            .context("pull by digest with the upstream offline")?;
        ensure!(LayoutImage::read(&out, "d")?.manifest_digest == amd.manifest_digest);

        // By tag, past its TTL: the re-resolution fails, the last known answer is served.
        let out = tmp.path().join("offline-tag");
        skopeo_pull(&format!("{src}:v1"), &out, "v1", false)
            .context("pull by (stale) tag with the upstream offline")?;
        ensure!(LayoutImage::read(&out, "v1")?.manifest_digest == amd.manifest_digest);
        let url = format!("{}/v2/up1/e2e/offline/image/manifests/v1", manta.url());
        let m = get_manifest(&url)?;
        ensure!(
            m.status == 200 && m.body == amd.manifest,
            "GET {url} with the upstream offline: {}",
            m.describe()
        );

        // A tag never seen: a clear error, quickly.
        let out = tmp.path().join("never");
        let err = match skopeo_pull(&format!("{src}:never-seen"), &out, "x", false) {
            Ok(()) => bail!("skopeo pulled a tag that never existed, with the upstream offline"),
            Err(e) => format!("{e:#}"),
        };
        let url = format!(
            "{}/v2/up1/e2e/offline/image/manifests/never-seen",
            manta.url()
        );
        let m = get_manifest(&url)?;
        let code = m.error_code();
        let ok = match m.status {
            404 => code.as_deref() == Some("MANIFEST_UNKNOWN"),
            502..=504 => code.is_some(),
            _ => false,
        };
        ensure!(
            ok,
            "GET {url} (upstream offline) wants 404 MANIFEST_UNKNOWN or 502/503/504 with an OCI error body; got {}\n(skopeo said: {err})",
            m.describe()
        );
        ensure!(
            m.elapsed < Duration::from_secs(5 + 10),
            "the error for a never-seen tag took {:?}",
            m.elapsed
        );

        // The upstream comes back on the same port: new content flows again.
        up.restart()?;
        let arm = &img.platform("arm64")?.image;
        up.push_oci(&img.layout, "arm64", "e2e/offline/image:v2", false)?;
        let out = tmp.path().join("back");
        skopeo_pull(&format!("{src}:v2"), &out, "v2", false)
            .context("pull a new tag once the upstream is back")?;
        ensure!(LayoutImage::read(&out, "v2")?.manifest_digest == arm.manifest_digest);
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// 4. Upstreams that refuse, lie or stall
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_upstream_credentials_answer_unauthorized() {
    require_tool(
        "htpasswd",
        "install it with `apt-get install apache2-utils`",
    );
    let right = Credentials::random("alice");
    let wrong = Credentials::random("alice");
    let up = DockerRegistry::start(Some(right.clone())).unwrap();
    let cfg = UpstreamConfig::default()
        .alias("up1", &up.url())
        .credentials(&up.host(), &wrong);
    with_manta(&cfg, |manta| {
        let mut secrets = Secrets::default();
        secrets.credentials("configured", &wrong);
        secrets.credentials("upstream's", &right);
        for method in ["GET", "HEAD"] {
            let url = format!("{}/v2/up1/e2e/auth/image/manifests/v1", manta.url());
            let r = fetch(
                method,
                &url,
                &[("Accept", ACCEPT_MANIFESTS)],
                Duration::from_secs(60),
            )?;
            ensure!(
                r.status == 401,
                "{method} {url} with wrong upstream credentials: want 401, got {}",
                r.describe()
            );
            if method == "GET" {
                ensure!(
                    r.error_code().as_deref() == Some("UNAUTHORIZED"),
                    "{method} {url}: want code UNAUTHORIZED, got {}",
                    r.describe()
                );
                // docker-registry's htpasswd answer is "authentication required".
                ensure!(
                    r.text().contains("authentication required"),
                    "{method} {url}: the error does not carry the upstream's message: {}",
                    r.describe()
                );
                secrets.check(&r.text(), "the 401 body")?;
            }
        }
        ensure!(
            up.requests()
                .iter()
                .any(|(_, p)| p.starts_with("/v2/e2e/auth/image/")),
            "Manta never asked the upstream: {:?}",
            up.requests()
        );
        secrets.check(&manta.logs(), "Manta's log")
    });
}

#[test]
fn lying_upstream_blob_is_neither_served_whole_nor_cached() {
    let fake = FakeUpstream::start(FakeMode::Lying).unwrap();
    let image = fake.image().clone();
    let cfg = UpstreamConfig {
        timeout_secs: Some(10),
        ..Default::default()
    }
    .alias("up1", &fake.url());
    with_manta(&cfg, |manta| {
        let base = format!("{}/v2/up1/{}", manta.url(), image.repo);
        let m = get_manifest(&format!("{base}/manifests/{}", image.tag))?;
        ensure!(
            m.status == 200 && m.body == image.manifest,
            "manifest from the lying upstream (its manifest is honest): {}",
            m.describe()
        );
        // The config blob is honest too.
        let c = fetch(
            "GET",
            &format!("{base}/blobs/{}", image.config_digest),
            &[],
            Duration::from_secs(60),
        )?;
        ensure!(
            c.status == 200 && c.body == image.config && c.body_error.is_none(),
            "honest config blob: {}",
            c.describe()
        );

        let (digest, bytes) = &image.layers[1];
        let url = format!("{base}/blobs/{digest}");
        for attempt in 1..=2 {
            let before = fake.blob_gets(digest);
            let r = fetch("GET", &url, &[], Duration::from_secs(60))?;
            let whole = r.status == 200 && r.body_error.is_none() && r.body.len() == bytes.len();
            ensure!(
                !whole,
                "attempt {attempt}: Manta served all {} bytes of a blob whose bytes do not match {digest} (body hashes to {}): {}",
                bytes.len(),
                sha256_digest(&r.body),
                r.describe()
            );
            ensure!(
                fake.blob_gets(digest) > before,
                "attempt {attempt}: Manta did not go to the upstream for {digest} (served from a cache that must not hold it?): {}",
                r.describe()
            );
        }

        // A real client sees the failure.
        let tmp = tempfile::tempdir()?;
        let res = skopeo_pull(
            &format!("{}/up1/{}:{}", manta.addr(), image.repo, image.tag),
            &tmp.path().join("out"),
            "v1",
            false,
        );
        ensure!(res.is_err(), "skopeo pulled an image whose layer bytes lie");
        Ok(())
    });
}

#[test]
fn stalled_upstream_times_out_and_frees_the_server() {
    let before_headers = FakeUpstream::start(FakeMode::HangBeforeHeaders).unwrap();
    let inside_body = FakeUpstream::start(FakeMode::HangAfterHeaders).unwrap();
    let healthy = FakeUpstream::start(FakeMode::Normal).unwrap();
    let timeout = Duration::from_secs(2);
    let limit = timeout + Duration::from_secs(8);
    let cfg = UpstreamConfig {
        timeout_secs: Some(timeout.as_secs()),
        ..Default::default()
    }
    .alias("up1", &before_headers.url())
    .alias("up2", &inside_body.url())
    .alias("up3", &healthy.url());
    with_manta(&cfg, |manta| {
        let img = before_headers.image().clone();
        let client_deadline = Duration::from_secs(30);

        // (a) No response head from the upstream: an error within the timeout.
        for attempt in 1..=2 {
            let url = format!("{}/v2/up1/{}/manifests/{}", manta.url(), img.repo, img.tag);
            let r = fetch(
                "GET",
                &url,
                &[("Accept", ACCEPT_MANIFESTS)],
                client_deadline,
            )
            .with_context(|| format!("attempt {attempt}: Manta did not answer {url}"))?;
            ensure!(
                r.status >= 500 && r.error_code().is_some() && r.elapsed < limit,
                "attempt {attempt}: GET {url} on a silent upstream (timeout_secs = {}): want a 5xx OCI error within {limit:?}, got {}",
                timeout.as_secs(),
                r.describe()
            );
        }

        // (b) The blob stalls inside its body: the stream ends (error or short) in time.
        let img = inside_body.image().clone();
        let base = format!("{}/v2/up2/{}", manta.url(), img.repo);
        let m = get_manifest(&format!("{base}/manifests/{}", img.tag))?;
        ensure!(m.status == 200, "manifest of up2: {}", m.describe());
        let (digest, bytes) = &img.layers[1];
        for attempt in 1..=2 {
            let url = format!("{base}/blobs/{digest}");
            let r = fetch("GET", &url, &[], client_deadline)
                .with_context(|| format!("attempt {attempt}: Manta did not answer {url}"))?;
            let whole = r.status == 200 && r.body_error.is_none() && r.body.len() == bytes.len();
            ensure!(
                !whole,
                "attempt {attempt}: a blob the upstream never finished was served whole"
            );
            let ended_by_server = r
                .body_error
                .as_deref()
                .is_none_or(|e| !e.starts_with("body still open"));
            ensure!(
                ended_by_server && r.elapsed < limit,
                "attempt {attempt}: GET {url} stalled upstream after {} bytes (timeout_secs = {}): want the response to end within {limit:?}, got {}",
                FakeUpstream::HANG_AFTER,
                timeout.as_secs(),
                r.describe()
            );
        }

        // (c) Nothing is stuck: a healthy upstream is served promptly.
        let img = healthy.image().clone();
        let base = format!("{}/v2/up3/{}", manta.url(), img.repo);
        let m = get_manifest(&format!("{base}/manifests/{}", img.tag))?;
        ensure!(
            m.status == 200 && m.body == img.manifest && m.elapsed < Duration::from_secs(5),
            "healthy alias after the stalls: {}",
            m.describe()
        );
        for (digest, bytes) in &img.layers {
            let r = fetch(
                "GET",
                &format!("{base}/blobs/{digest}"),
                &[],
                Duration::from_secs(30),
            )?;
            ensure!(
                r.status == 200 && &r.body == bytes && r.elapsed < Duration::from_secs(5),
                "healthy blob {digest}: {}",
                r.describe()
            );
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// 5. The Bearer token flow
// ---------------------------------------------------------------------------------------------

#[test]
fn token_upstream_pulls_with_cached_tokens() {
    let creds = Credentials::random("bob");
    let fake = FakeUpstream::start(FakeMode::Token(creds.clone())).unwrap();
    let image = fake.image().clone();
    let ttl = Duration::from_secs(1);
    let cfg = UpstreamConfig {
        tag_ttl_secs: Some(ttl.as_secs()),
        timeout_secs: Some(10),
        ..Default::default()
    }
    .alias("up1", &fake.url())
    .credentials(&fake.host(), &creds);
    with_manta(&cfg, |manta| {
        let base = format!("{}/v2/up1/{}", manta.url(), image.repo);
        // Round 1: the manifest and the config.
        let m = get_manifest(&format!("{base}/manifests/{}", image.tag))?;
        ensure!(
            m.status == 200 && m.body == image.manifest,
            "manifest through the token upstream: {}",
            m.describe()
        );
        let c = fetch(
            "GET",
            &format!("{base}/blobs/{}", image.config_digest),
            &[],
            Duration::from_secs(60),
        )?;
        ensure!(
            c.status == 200 && c.body == image.config,
            "config: {}",
            c.describe()
        );
        let fetched_at = Instant::now();
        let tokens = fake.token_requests();
        ensure!(tokens >= 1, "Manta never asked the token endpoint");
        let issued = fake.issued_tokens();
        ensure!(
            !issued.is_empty(),
            "no token was issued: token requests {:?}",
            fake.requests()
        );

        // Round 2, within the token's life: the tag re-resolves and the layers are fetched with
        // the cached token.
        let mark = fake.requests().len();
        let_tag_expire(fetched_at, ttl);
        let m = get_manifest(&format!("{base}/manifests/{}", image.tag))?;
        ensure!(
            m.status == 200 && m.body == image.manifest,
            "manifest again: {}",
            m.describe()
        );
        for (digest, bytes) in &image.layers {
            let r = fetch(
                "GET",
                &format!("{base}/blobs/{digest}"),
                &[],
                Duration::from_secs(60),
            )?;
            ensure!(
                r.status == 200 && &r.body == bytes,
                "layer {digest}: {}",
                r.describe()
            );
        }
        let round2 = fake.requests()[mark..].to_vec();
        let bearer: Vec<_> = round2
            .iter()
            .filter(|r| r.path.starts_with(&format!("/v2/{}/", image.repo)))
            .filter(|r| {
                r.authorization
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .is_some_and(|t| issued.iter().any(|i| i == t))
            })
            .collect();
        ensure!(
            !bearer.is_empty(),
            "round 2 made no authorised request to the upstream (the stale tag was not re-resolved?): {round2:#?}"
        );
        ensure!(
            fake.token_requests() == tokens,
            "round 2 asked for {} new token(s) although the first ({}s) is still valid: {round2:#?}",
            fake.token_requests() - tokens,
            60
        );

        // A real client pulls the whole image through Manta.
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("out");
        skopeo_pull(
            &format!("{}/up1/{}:{}", manta.addr(), image.repo, image.tag),
            &out,
            "v1",
            false,
        )?;
        let got = LayoutImage::read(&out, "v1")?;
        ensure!(
            got.manifest_digest == image.manifest_digest
                && got.config.digest == image.config_digest,
            "skopeo pulled {} through the token upstream, it has {}",
            got.manifest_digest,
            image.manifest_digest
        );

        let mut secrets = Secrets::default();
        secrets.credentials("token server", &creds);
        secrets.tokens(&fake);
        secrets.check(&manta.logs(), "Manta's log")
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Credentials never leak
// ---------------------------------------------------------------------------------------------

#[test]
fn credentials_never_reach_logs_or_error_bodies() {
    require_tool(
        "htpasswd",
        "install it with `apt-get install apache2-utils`",
    );
    let basic_right = Credentials::random("carol");
    let basic_wrong = Credentials::random("carol");
    let token_right = Credentials::random("dave");
    let token_wrong = Credentials::random("dave");
    let basic_up = DockerRegistry::start(Some(basic_right.clone())).unwrap();
    let token_ok = FakeUpstream::start(FakeMode::Token(token_right.clone())).unwrap();
    let token_bad = FakeUpstream::start(FakeMode::Token(token_right.clone())).unwrap();
    let cfg = UpstreamConfig {
        timeout_secs: Some(10),
        ..Default::default()
    }
    .alias("basic", &basic_up.url())
    .alias("tok", &token_ok.url())
    .alias("badtok", &token_bad.url())
    .credentials(&basic_up.host(), &basic_wrong)
    .credentials(&token_ok.host(), &token_right)
    .credentials(&token_bad.host(), &token_wrong);
    with_manta(&cfg, |manta| {
        let mut bodies = Vec::new();
        let image = token_ok.image().clone();
        let cases = [
            ("basic", format!("manifests/{}", image.tag), 401),
            ("basic", format!("blobs/{}", image.layers[0].0), 401),
            ("badtok", format!("manifests/{}", image.tag), 401),
            ("badtok", format!("blobs/{}", image.layers[0].0), 401),
            ("badtok", "manifests/no-such-tag".to_string(), 401),
            ("tok", format!("manifests/{}", image.tag), 200),
            ("tok", format!("blobs/{}", image.layers[0].0), 200),
            ("tok", "manifests/no-such-tag".to_string(), 404),
        ];
        for (alias, path, want) in cases {
            let url = format!("{}/v2/{alias}/{}/{path}", manta.url(), image.repo);
            let r = get_manifest(&url)?;
            ensure!(
                r.status == want,
                "GET {url}: want {want}, got {}",
                r.describe()
            );
            if want == 401 {
                ensure!(
                    r.error_code().as_deref() == Some("UNAUTHORIZED"),
                    "GET {url}: want code UNAUTHORIZED, got {}",
                    r.describe()
                );
            }
            bodies.push((url, r.text(), format!("{:?}", r.headers)));
        }
        let mut secrets = Secrets::default();
        secrets.credentials("basic upstream (configured)", &basic_wrong);
        secrets.credentials("basic upstream (real)", &basic_right);
        secrets.credentials("token server (configured right)", &token_right);
        secrets.credentials("token server (configured wrong)", &token_wrong);
        secrets.tokens(&token_ok);
        secrets.tokens(&token_bad);
        ensure!(
            !token_ok.issued_tokens().is_empty(),
            "the good token upstream issued no token"
        );
        for (url, body, headers) in &bodies {
            secrets.check(body, &format!("the body of GET {url}"))?;
            secrets.check(headers, &format!("the headers of GET {url}"))?;
        }
        secrets.check(&manta.logs(), "Manta's log")
    });
}
