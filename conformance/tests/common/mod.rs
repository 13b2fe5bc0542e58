//! Shared helpers for the real-client end-to-end tests (skopeo, containerd, oras).
//!
//! Each test starts its own `manta serve` (through [`Registry::start`]), drives a real client as a
//! subprocess and asserts what a user would see: digests, bytes, statuses.
//!
//! Requirements (CI installs the same): `apt-get install skopeo containerd umoci python3-pip`
//! (containerd provides `ctr`), `pip install oras` (oras-py), and root with CAP_SYS_ADMIN for the
//! bind mount of containerd's native snapshot. A missing tool fails the test with a hint.
//!
//! Everything here is synchronous: the clients are processes, and the few direct HTTP requests run
//! on a private current-thread tokio runtime ([`http`]).

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use manta_conformance::server::MantaServer;
use sha2::{Digest as _, Sha256};

pub mod consistency;
pub mod containerd;
pub mod hub;
pub mod hub_agent;
pub mod lifecycle;
pub mod upstream;

/// Default deadline for one client command: generous, but a stalled server fails the test
/// instead of hanging CI.
#[allow(unused_imports)]
pub use manta_conformance::process::COMMAND_TIMEOUT;

// ---------------------------------------------------------------------------------------------
// The registry under test
// ---------------------------------------------------------------------------------------------

/// The registry the clients talk to: a fresh `manta serve` on `127.0.0.1:0`.
///
/// For developing these tests while the server is incomplete, `MANTA_E2E_REGISTRY_ADDR=host:port`
/// points them at an already running registry instead (e.g. Debian's `docker-registry`). It is a
/// development aid only; CI must not set it.
pub struct Registry {
    manta: Option<MantaServer>,
    addr: String,
}

impl Registry {
    pub fn start() -> Result<Self> {
        if let Ok(addr) = std::env::var("MANTA_E2E_REGISTRY_ADDR") {
            eprintln!("WARNING: MANTA_E2E_REGISTRY_ADDR={addr}: testing that registry, NOT manta");
            return Ok(Self { manta: None, addr });
        }
        let manta = MantaServer::start().context("start manta serve")?;
        let addr = manta.addr().to_string();
        Ok(Self {
            manta: Some(manta),
            addr,
        })
    }

    /// A registry someone else runs (one of several agents a test started), at `addr`.
    #[allow(dead_code)] // not every test binary that includes `common` uses it
    pub fn at(addr: &str) -> Self {
        Self {
            manta: None,
            addr: addr.to_string(),
        }
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's log so far (empty for an external registry).
    pub fn logs(&self) -> String {
        self.manta
            .as_ref()
            .map(MantaServer::logs)
            .unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        let start = lines.len().saturating_sub(80);
        lines[start..].join("\n")
    }
}

/// Prints the server's log tail when the test panics (assert failures), so a failure report
/// carries what the server saw.
struct LogOnPanic<'a>(&'a Registry);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- registry log (last 80 lines) ---\n{}\n--- end of log ---",
                self.0.log_tail()
            );
        }
    }
}

/// Start a registry, run `body` against it, and fail with the error chain plus the server's log
/// tail if `body` fails or panics.
pub fn with_registry(body: impl FnOnce(&Registry) -> Result<()>) {
    let registry = match Registry::start() {
        Ok(r) => r,
        Err(e) => panic!("cannot start the registry under test: {e:?}"),
    };
    let _guard = LogOnPanic(&registry);
    if let Err(e) = body(&registry) {
        let mut msg = format!("{e}");
        for cause in e.chain().skip(1) {
            msg.push_str(&format!("\ncaused by: {cause}"));
        }
        panic!("{msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// Running client commands
// ---------------------------------------------------------------------------------------------

#[allow(unused_imports)] // each test binary uses its own share of these
pub use manta_conformance::process::{poll_until, require_tool, run, run_with_timeout, Output};

// ---------------------------------------------------------------------------------------------
// Digests and random content
// ---------------------------------------------------------------------------------------------

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Non-cryptographic random bytes (xorshift64*, seeded from time and pid): incompressible test
/// content, different on every run.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut state = nanos ^ (u64::from(std::process::id()) << 32) ^ (len as u64) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// OCI image-spec chain ID of a list of diff IDs (the snapshot key containerd commits an
/// unpacked image's top layer under).
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut chain = String::new();
    for d in diff_ids {
        chain = if chain.is_empty() {
            d.clone()
        } else {
            sha256_digest(format!("{chain} {d}").as_bytes())
        };
    }
    chain
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Prometheus text: the sum of every sample of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, lbls) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| lbls.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Filesystem trees
// ---------------------------------------------------------------------------------------------

/// One entry of a filesystem tree, compared by content hash, size and permission bits.
#[derive(Clone, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File {
        sha256: String,
        size: u64,
        mode: u32,
    },
    Symlink(String),
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Dir => write!(f, "directory"),
            Entry::File { sha256, size, mode } => {
                write!(f, "file {size} bytes, mode {mode:o}, {sha256}")
            }
            Entry::Symlink(t) => write!(f, "symlink -> {t}"),
        }
    }
}

impl Entry {
    pub fn file(bytes: &[u8], mode: u32) -> Self {
        Entry::File {
            sha256: sha256_digest(bytes),
            size: bytes.len() as u64,
            mode,
        }
    }
}

/// Every path under `root` (relative, `/`-separated, without a leading `/`), not following
/// symlinks.
pub fn read_tree(root: &Path) -> Result<BTreeMap<String, Entry>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) -> Result<()> {
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("read_dir {}", dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&path)?;
                out.insert(rel, Entry::Symlink(target.to_string_lossy().into_owned()));
            } else if ft.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(root, &path, out)?;
            } else if ft.is_file() {
                let bytes =
                    std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
                out.insert(rel, Entry::file(&bytes, meta.permissions().mode() & 0o7777));
            } else {
                bail!("unexpected file type at {}: {ft:?}", path.display());
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// Assert two trees are equal, listing every difference (not one huge `Debug` dump).
pub fn assert_trees_equal(
    expected: &BTreeMap<String, Entry>,
    actual: &BTreeMap<String, Entry>,
    context: &str,
) -> Result<()> {
    let mut diff = String::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => writeln!(diff, "  missing: /{path} (expected {want:?})")?,
            Some(got) if got != want => {
                writeln!(diff, "  differs: /{path}: expected {want:?}, got {got:?}")?
            }
            Some(_) => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            writeln!(diff, "  unexpected: /{path} ({got:?})")?;
        }
    }
    ensure!(diff.is_empty(), "{context}: file trees differ:\n{diff}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A multi-layer OCI image built with umoci
// ---------------------------------------------------------------------------------------------

/// A descriptor as it appears in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn from_json(v: &serde_json::Value) -> Result<Self> {
        Ok(Self {
            media_type: v["mediaType"]
                .as_str()
                .context("descriptor mediaType")?
                .to_string(),
            digest: v["digest"]
                .as_str()
                .context("descriptor digest")?
                .to_string(),
            size: v["size"].as_u64().context("descriptor size")?,
        })
    }
}

/// An OCI image layout holding one tagged image manifest, as read back from disk.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    pub layout: PathBuf,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest: Vec<u8>,
    pub config: Descriptor,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<String>,
}

impl LayoutImage {
    /// Read the manifest tagged `tag` from the OCI layout at `layout`, verifying that every
    /// blob it references is present and hashes to its digest.
    pub fn read(layout: &Path, tag: &str) -> Result<Self> {
        let index_bytes = std::fs::read(layout.join("index.json"))
            .with_context(|| format!("read {}/index.json", layout.display()))?;
        let index: serde_json::Value = serde_json::from_slice(&index_bytes)?;
        let entries = index["manifests"]
            .as_array()
            .context("index.json has no manifests")?;
        let entry = entries
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag))
            .with_context(|| {
                format!(
                    "no manifest tagged {tag:?} in {}",
                    String::from_utf8_lossy(&index_bytes)
                )
            })?;
        let desc = Descriptor::from_json(entry)?;
        let manifest = read_blob(layout, &desc)?;
        let m: serde_json::Value = serde_json::from_slice(&manifest).context("manifest JSON")?;
        let config = Descriptor::from_json(&m["config"])?;
        let config_bytes = read_blob(layout, &config)?;
        let layers = m["layers"]
            .as_array()
            .context("manifest has no layers array")?
            .iter()
            .map(Descriptor::from_json)
            .collect::<Result<Vec<_>>>()?;
        for l in &layers {
            read_blob(layout, l)?;
        }
        let cfg: serde_json::Value =
            serde_json::from_slice(&config_bytes).context("config JSON")?;
        let diff_ids = cfg["rootfs"]["diff_ids"]
            .as_array()
            .context("config has no rootfs.diff_ids")?
            .iter()
            .map(|d| {
                d.as_str()
                    .map(str::to_string)
                    .context("diff_id is not a string")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layout: layout.to_path_buf(),
            tag: tag.to_string(),
            manifest_digest: desc.digest,
            manifest_media_type: desc.media_type,
            manifest,
            config,
            config_bytes,
            layers,
            diff_ids,
        })
    }

    /// Path of a blob in this layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.layout, digest)
    }
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(alg).join(hex)
}

/// Read a blob from an OCI layout and check its size and digest.
pub fn read_blob(layout: &Path, desc: &Descriptor) -> Result<Vec<u8>> {
    let path = blob_path(layout, &desc.digest);
    let bytes = std::fs::read(&path).with_context(|| format!("read blob {}", path.display()))?;
    ensure!(
        bytes.len() as u64 == desc.size,
        "blob {} is {} bytes, descriptor says {}",
        desc.digest,
        bytes.len(),
        desc.size
    );
    let actual = sha256_digest(&bytes);
    ensure!(
        actual == desc.digest,
        "blob file {} hashes to {actual}",
        path.display()
    );
    Ok(bytes)
}

/// A multi-layer image built with umoci, plus the file tree its layers produce when applied in
/// order.
pub struct TestImage {
    pub image: LayoutImage,
    /// Expected root filesystem after unpacking every layer in order.
    pub rootfs: BTreeMap<String, Entry>,
}

/// Build `<dir>/layout:<tag>` with umoci: five gzip layers that together exercise nested
/// directories, a relative symlink, an executable, a ~5 MiB random file, a file overwritten by a
/// later layer and a whiteout.
pub fn build_test_image(dir: &Path, tag: &str) -> Result<TestImage> {
    require_tool("umoci", "install it with `apt-get install umoci`");
    let layout = dir.join("layout");
    let src = dir.join("src");
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    let insert = |source: &Path, target: &str| -> Result<()> {
        run(Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(source)
            .arg(target))?;
        Ok(())
    };
    let write = |rel: &str, bytes: &[u8], mode: u32| -> Result<PathBuf> {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(p)
    };

    let mut rootfs = BTreeMap::new();
    let dir_entry = |rootfs: &mut BTreeMap<String, Entry>, path: &str| {
        let mut acc = String::new();
        for comp in path.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(comp);
            rootfs.insert(acc.clone(), Entry::Dir);
        }
    };

    // Layer 1: /etc/manta/{hello.txt,gone.txt}
    let hello_v1 = b"hello from layer one\n".to_vec();
    let gone = b"this file is removed by a whiteout in layer 5\n".to_vec();
    write("l1/hello.txt", &hello_v1, 0o644)?;
    write("l1/gone.txt", &gone, 0o644)?;
    insert(&src.join("l1"), "/etc/manta")?;
    dir_entry(&mut rootfs, "etc/manta");
    rootfs.insert("etc/manta/hello.txt".into(), Entry::file(&hello_v1, 0o644));

    // Layer 2: /opt/app with a subdirectory, an executable and a relative symlink.
    let two = random_bytes(3000);
    let tool = b"#!/bin/sh\necho manta\n".to_vec();
    write("l2/sub/dir/two.bin", &two, 0o600)?;
    write("l2/bin/tool.sh", &tool, 0o755)?;
    std::os::unix::fs::symlink("sub/dir/two.bin", src.join("l2/link-to-two"))?;
    insert(&src.join("l2"), "/opt/app")?;
    dir_entry(&mut rootfs, "opt/app/sub/dir");
    dir_entry(&mut rootfs, "opt/app/bin");
    rootfs.insert("opt/app/sub/dir/two.bin".into(), Entry::file(&two, 0o600));
    rootfs.insert("opt/app/bin/tool.sh".into(), Entry::file(&tool, 0o755));
    rootfs.insert(
        "opt/app/link-to-two".into(),
        Entry::Symlink("sub/dir/two.bin".into()),
    );

    // Layer 3: ~5 MiB of random bytes (incompressible: the gzip layer stays ~5 MiB).
    let big = random_bytes(5 * 1024 * 1024 + 123);
    let big_path = write("l3/big.bin", &big, 0o644)?;
    insert(&big_path, "/data/big.bin")?;
    dir_entry(&mut rootfs, "data");
    rootfs.insert("data/big.bin".into(), Entry::file(&big, 0o644));

    // Layer 4: overwrite /etc/manta/hello.txt (layer order matters).
    let hello_v2 = b"hello from layer four, which replaced layer one\n".to_vec();
    let hello_path = write("l4/hello.txt", &hello_v2, 0o644)?;
    insert(&hello_path, "/etc/manta/hello.txt")?;
    rootfs.insert("etc/manta/hello.txt".into(), Entry::file(&hello_v2, 0o644));

    // Layer 5: whiteout of /etc/manta/gone.txt.
    run(Command::new("umoci").args([
        "insert",
        "--image",
        &image,
        "--whiteout",
        "/etc/manta/gone.txt",
    ]))?;

    run(Command::new("umoci").arg("gc").arg("--layout").arg(&layout))?;
    let image = LayoutImage::read(&layout, tag)?;
    ensure!(
        image.layers.len() == 5,
        "umoci produced {} layers, expected 5",
        image.layers.len()
    );
    ensure!(
        image.diff_ids.len() == image.layers.len(),
        "config diff_ids do not match layers"
    );
    for l in &image.layers {
        ensure!(
            l.media_type == "application/vnd.oci.image.layer.v1.tar+gzip",
            "unexpected layer media type {}",
            l.media_type
        );
    }
    let distinct: std::collections::BTreeSet<_> = image.layers.iter().map(|l| &l.digest).collect();
    ensure!(
        distinct.len() == image.layers.len(),
        "layer digests are not distinct"
    );
    Ok(TestImage { image, rootfs })
}

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

pub fn require_skopeo() {
    require_tool(
        "skopeo",
        "install it with `apt-get install skopeo` (tested with 1.9.3)",
    );
}

/// `skopeo copy --preserve-digests oci:<layout>:<tag> docker://<dest>` over plain HTTP.
pub fn skopeo_push(image: &LayoutImage, dest: &str) -> Result<()> {
    require_skopeo();
    run(Command::new("skopeo")
        .args(["copy", "--preserve-digests", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{}", image.layout.display(), image.tag))
        .arg(format!("docker://{dest}")))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Direct HTTP
// ---------------------------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "response body is not JSON: {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP request on a private runtime.
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<HttpResponse> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut req = client.request(reqwest::Method::from_bytes(method.as_bytes())?, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {url}: body"))?
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    })
}

// ---------------------------------------------------------------------------------------------
// A multi-platform image index
// ---------------------------------------------------------------------------------------------

/// One platform's image inside a [`TestIndex`].
pub struct PlatformImage {
    pub architecture: String,
    pub image: LayoutImage,
    /// Content of `/etc/manta-arch` in this platform's rootfs.
    pub arch_file: Vec<u8>,
}

/// An OCI layout whose tag points at an image index of two single-layer platform images
/// (linux/amd64 and linux/arm64), each with a distinct `/etc/manta-arch`.
pub struct TestIndex {
    pub layout: PathBuf,
    pub tag: String,
    pub index_digest: String,
    pub index_bytes: Vec<u8>,
    pub platforms: Vec<PlatformImage>,
}

impl TestIndex {
    pub fn platform(&self, arch: &str) -> Result<&PlatformImage> {
        self.platforms
            .iter()
            .find(|p| p.architecture == arch)
            .with_context(|| format!("no {arch} image"))
    }
}

pub fn build_test_index(dir: &Path, tag: &str) -> Result<TestIndex> {
    require_tool("umoci", "install it with `apt-get install umoci`");
    let layout = dir.join("index-layout");
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout))?;
    let mut platforms = Vec::new();
    for arch in ["amd64", "arm64"] {
        let image = format!("{}:{arch}", layout.display());
        run(Command::new("umoci").args(["new", "--image", &image]))?;
        run(Command::new("umoci").args([
            "config",
            "--image",
            &image,
            "--os",
            "linux",
            "--architecture",
            arch,
        ]))?;
        let arch_file = format!("built for linux/{arch}\n").into_bytes();
        let src = dir.join(format!("arch-{arch}"));
        std::fs::write(&src, &arch_file)?;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644))?;
        run(Command::new("umoci")
            .args(["insert", "--image", &image])
            .arg(&src)
            .arg("/etc/manta-arch"))?;
        platforms.push((arch, arch_file));
    }
    run(Command::new("umoci").arg("gc").arg("--layout").arg(&layout))?;
    let platforms = platforms
        .into_iter()
        .map(|(arch, arch_file)| {
            Ok(PlatformImage {
                architecture: arch.to_string(),
                image: LayoutImage::read(&layout, arch)?,
                arch_file,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let manifests: Vec<serde_json::Value> = platforms
        .iter()
        .map(|p| {
            serde_json::json!({
                "mediaType": p.image.manifest_media_type,
                "digest": p.image.manifest_digest,
                "size": p.image.manifest.len(),
                "platform": {"architecture": p.architecture, "os": "linux"},
            })
        })
        .collect();
    let index_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))?;
    let index_digest = sha256_digest(&index_bytes);
    std::fs::write(blob_path(&layout, &index_digest), &index_bytes)?;

    // Tag the index in index.json next to the per-platform tags.
    let index_json = layout.join("index.json");
    let mut top: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_json)?)?;
    top["manifests"]
        .as_array_mut()
        .context("index.json manifests")?
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    std::fs::write(&index_json, serde_json::to_vec(&top)?)?;
    Ok(TestIndex {
        layout,
        tag: tag.to_string(),
        index_digest,
        index_bytes,
        platforms,
    })
}

/// The manifest digest an OCI layout's `index.json` tags `tag` with, and that blob's bytes.
pub fn layout_tagged(layout: &Path, tag: &str) -> Result<(String, Vec<u8>)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let entry = index["manifests"]
        .as_array()
        .context("index.json manifests")?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag))
        .with_context(|| format!("{tag} not in {}/index.json", layout.display()))?;
    let desc = Descriptor::from_json(entry)?;
    Ok((desc.digest.clone(), read_blob(layout, &desc)?))
}

// ---------------------------------------------------------------------------------------------
// Generated images, written without umoci
// ---------------------------------------------------------------------------------------------

/// Write an image whose layers are `layers` (uncompressed-tar media type; the bytes are taken as
/// they are, so random bytes make incompressible layers of an exact size) into the OCI layout at
/// `layout` (created if needed; the layout's other tags are kept), tagged `tag`, and read it
/// back. The config names `tag`, so two images with the same layers still differ in config
/// and manifest. Quick enough for many or large images, where umoci is not.
pub fn write_oci_image(layout: &Path, tag: &str, layers: &[&[u8]]) -> Result<LayoutImage> {
    let put = |bytes: &[u8]| -> Result<String> {
        let digest = sha256_digest(bytes);
        let path = blob_path(layout, &digest);
        std::fs::create_dir_all(path.parent().context("blob dir")?)?;
        if !path.is_file() {
            std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(digest)
    };
    std::fs::create_dir_all(layout)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let digest = put(l)?;
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": l.len(),
        }));
        diff_ids.push(digest);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"org.manta.test.tag": tag}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let config_digest = put(&config)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": layer_descs,
    }))?;
    let manifest_digest = put(&manifest)?;
    let index_json = layout.join("index.json");
    let mut index: serde_json::Value = match std::fs::read(&index_json) {
        Ok(b) => serde_json::from_slice(&b).context("index.json")?,
        Err(_) => serde_json::json!({"schemaVersion": 2, "manifests": []}),
    };
    let entries = index["manifests"]
        .as_array_mut()
        .context("index.json manifests")?;
    entries.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(tag));
    entries.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    std::fs::write(&index_json, serde_json::to_vec(&index)?)?;
    LayoutImage::read(layout, tag)
}
