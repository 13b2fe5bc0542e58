//! A faithful local Hugging Face Hub (and ModelScope) for tests and benchmarks, in-process on
//! 127.0.0.1: a main host and a "CDN" host (another port) to which LFS files redirect, as the
//! hub redirects to cdn-lfs. The real `huggingface_hub` client accepts it
//! (`conformance/tests/hub_fixture.rs` proves it with `snapshot_download`, `hf_hub_download`,
//! `list_repo_tree`, `list_models`, gated and missing revisions).
//!
//! ```no_run
//! # use manta_conformance::hub_fixture::*;
//! # fn main() -> anyhow::Result<()> {
//! let hub = HubFixture::start(vec![minilm_repo()?], FixtureOptions::default())?;
//! // HF_ENDPOINT=hub.url() …
//! assert_eq!(hub.downloads(MINILM_ID, "model.safetensors"), 0);
//! hub.stop();
//! # Ok(()) }
//! ```
//!
//! # Hugging Face shapes served
//!
//! Checked against `huggingface_hub` 2.4.0 (`hf_api.py` `model_info`, `list_repo_tree`,
//! `get_paths_info`, `list_repo_refs`, `list_models`, the `ModelInfo`/`RepoFile`/`RepoFolder`
//! parsers; `file_download.py` `get_hf_file_metadata`, `http_get`; `utils/_http.py`
//! `hf_raise_for_status`, `_httpx2_follow_hub_redirects_with_backoff`; `utils/_pagination.py`),
//! and against hub responses quoted in public client code for what the client does not read
//! (`pointerSize`, `blobId` of LFS files = sha1 of the pointer).
//!
//! - `GET /api/models/{repo}` (branch `main`) and `GET /api/models/{repo}/revision/{rev}` (`rev`
//!   percent-encoded, `refs%2Fpr%2F1`; a full commit id works too): `{_id, id, modelId, author,
//!   sha, lastModified, createdAt, private: false, gated: false|"manual", disabled: false,
//!   downloads, likes, tags: [], siblings: [{rfilename}], spaces: [], usedStorage}`; with
//!   `?blobs=true` each sibling also has `size`, `blobId` (git oid) and, for LFS files,
//!   `lfs: {sha256, size, pointerSize}`. Siblings are sorted by path.
//! - `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true|True&expand=…` → `[{type: "file",
//!   oid, size, path, lfs?: {oid: sha256, size, pointerSize}} | {type: "directory", oid (git
//!   tree id), size: 0, path}]`, directories first then files at each level, a directory followed
//!   by its contents when recursive; `expand=true` adds `lastCommit {id, title, date}`. Pages of
//!   [`FixtureOptions::page_size`] (50 at most with `expand`) with `Link: <{url}/api/…?…&cursor=…>;
//!   rel="next"` (absolute). Never `xetHash`.
//! - `POST /api/models/{repo}/paths-info/{rev}` (form `paths=…&paths=…&expand=…`, or JSON) → the
//!   tree entries of the paths that exist.
//! - `GET /api/models/{repo}/refs[?include_prs=1]` → `{branches, converts: [], tags,
//!   pullRequests?}` of `{name, ref, targetCommit}`.
//! - `GET /api/models?search=&author=&limit=` → `[{_id, id, modelId, likes, trendingScore,
//!   private, gated, downloads, tags, createdAt}]`; `search` is a case-insensitive substring of the
//!   id (how a client finds the canonical casing), paginated like the tree.
//! - `HEAD|GET /{repo}/resolve/{rev}/{path}`: always `X-Repo-Commit`, `Content-Disposition`.
//!   Regular files: 200, `ETag: "<git oid>"`, `Content-Length`, `Accept-Ranges: bytes`,
//!   `Content-Type` (text files `text/plain; charset=utf-8`), Range → 206 with `Content-Range`,
//!   or 416 with `Content-Range: bytes */size`. LFS files: 302 with `Location` = a signed URL on the CDN
//!   host, `ETag` and `X-Linked-Etag: "<sha256>"`, `X-Linked-Size`; the CDN answers 200/206/416
//!   with `Content-Length`, `Accept-Ranges`, `ETag: "<sha256>"`, and needs no Authorization (the
//!   client drops it across hosts). Never an `X-Xet-*` header or a `Link … rel="xet-auth"`.
//! - Errors: `X-Error-Code` + `X-Error-Message` + `{"error": message}`. `RepoNotFound` (404,
//!   "Repository not found"; 401 for anonymous requests with
//!   [`FixtureOptions::anonymous_missing_repo_401`], as the real hub does): ids are
//!   case-sensitive, so the lowercase id of `Org/Model` is not found. `RevisionNotFound` (404,
//!   "Invalid rev id: …"). `EntryNotFound` (404, with `X-Repo-Commit`). `GatedRepo`: 401 without
//!   a token, 403 with a token other than [`FixtureOptions::token`]; gating covers file content
//!   only (`resolve`, ModelScope downloads): metadata and listings stay public, as on the hub.
//!
//! # ModelScope shapes served
//!
//! From `modelscope` 1.40.2 / `modelscope_hub` 0.5.1 (`_legacy_api.py` `list_revisions`,
//! `list_revisions_detail`, `list_repo_files`; `_download.py`; `compat/hub_api.py`
//! `get_valid_revision_detail`) and the older `modelscope/hub/api.py` (`list_model_revisions`,
//! `get_model_branches_and_tags_details`, `get_model_files`), plus a real `repo/files` response
//! quoted in public client tests. Every two-segment repo is also a ModelScope model
//! `{owner}/{name}`. Revision `master` (ModelScope's default) means `main` when the repo has no
//! `master` ref. Envelope: `{"Code": 200, "Data": …, "Message": "success", "RequestId", "Success":
//! true}`; errors use the HTTP status (404, 401/403 for gated content) and the same envelope with
//! `Code` = that status and `Success: false` (the real service puts its own numeric codes in
//! `Code`; clients should key on the HTTP status).
//!
//! - `GET /api/v1/models/{owner}/{name}` → `Data: {Name, Path (owner), ChineseName, …}`.
//! - `GET /api/v1/models/{owner}/{name}/revisions` → `Data: {RevisionMap: {Branches: [{Revision,
//!   CreatedAt (epoch seconds), CommitId}], Tags: [same]}}` (`CommitId` appears in third-party
//!   clients' fixtures; the SDK reads only `Revision` and `CreatedAt`). Pull-request refs are not
//!   listed.
//! - `GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=True|False[&Root=dir]` →
//!   `Data: {Files: [{Id (git oid), Name (base name), Path, Type: "blob"|"tree", Size, Sha256
//!   ("" for trees), IsLFS, Mode ("33188"|"16384"), Revision (commit id), CommitMessage,
//!   CommittedDate, CommitterName, InCheck}]}`, `.gitattributes` included (the SDK filters it).
//! - `GET|HEAD /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=`: regular files are served
//!   directly (200/206/416, `Content-Length`, `Accept-Ranges`); LFS files 302 to the CDN host
//!   (which sends `X-Linked-Etag: "<sha256>"`, as ModelScope's storage does), unless
//!   [`FixtureOptions::modelscope_lfs_redirect`] is off.
//!
//! # Test hooks
//!
//! [`HubFixture::downloads`] counts content GETs of a file (main host, CDN, ModelScope; HEADs and
//! redirects are not content), [`HubFixture::bytes_served`] the body bytes sent,
//! [`HubFixture::set_fault`] makes a file's bodies lie or break, [`FixtureOptions::rate_limit`]
//! caps all bodies together, [`HubFixture::requests`] lists every request with its status.

mod hf;
mod minilm;
mod model;
mod ms;
mod serve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;

pub use minilm::{
    gitattributes_match, lfs_patterns, minilm_dir, minilm_repo, sha256_file, synthetic_safetensors,
    synthetic_safetensors_with_sha256, MINILM_COMMIT, MINILM_ID,
};
pub use model::{
    git_blob_oid, lfs_pointer, FileInfo, FileSource, FixtureCommit, FixtureFile, FixtureRef,
    FixtureRepo, RefKind,
};

use serve::{Bucket, Shared};

/// How the fixture behaves.
#[derive(Clone, Debug)]
pub struct FixtureOptions {
    /// Entries per page of tree listings and model searches (the hub uses 1000).
    pub page_size: usize,
    /// The token approved for gated repositories (`Authorization: Bearer <token>`).
    pub token: Option<String>,
    /// A cap, in bytes per second, on all file bodies together (both hosts, all connections).
    pub rate_limit: Option<u64>,
    /// Answer `RepoNotFound` with 401 (not 404) when the request has no Authorization header,
    /// as huggingface.co does so as not to reveal private repositories.
    pub anonymous_missing_repo_401: bool,
    /// ModelScope downloads of LFS files redirect to the CDN host (as ModelScope redirects to
    /// its object storage) rather than being served directly.
    pub modelscope_lfs_redirect: bool,
    /// The address both hosts listen on (a bridge's address, for agents in network namespaces).
    pub bind: std::net::IpAddr,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        Self {
            page_size: 1000,
            token: None,
            rate_limit: None,
            anonymous_missing_repo_401: false,
            modelscope_lfs_redirect: true,
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }
}

/// A deliberate misbehaviour of one file's bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Every body byte flipped: same length and headers, content not matching the listed
    /// sha256 and git oid.
    WrongContent,
    /// Send this many body bytes (of each response), then abort the connection.
    DieAfter(u64),
}

/// Which listener a request reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixtureHost {
    Main,
    Cdn,
}

/// One request the fixture answered.
#[derive(Clone, Debug)]
pub struct FixtureRequest {
    pub host: FixtureHost,
    pub method: String,
    /// The raw (percent-encoded) path.
    pub path: String,
    pub query: Option<String>,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

/// The running fixture. [`HubFixture::stop`] (or dropping it) closes both ports and cuts
/// every connection.
pub struct HubFixture {
    shared: Arc<Shared>,
    main_addr: SocketAddr,
    cdn_addr: SocketAddr,
    stops: Vec<(
        tokio::sync::oneshot::Sender<()>,
        std::sync::mpsc::Receiver<()>,
    )>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HubFixture {
    /// A hub with one repo, `repo`@main, holding one synthetic `model.safetensors` of about
    /// `size` bytes (an LFS file, written under `dir`); the fixture and the file's exact size.
    pub fn single_model(
        dir: &std::path::Path,
        repo: &str,
        size: u64,
        opts: FixtureOptions,
    ) -> Result<(Self, u64)> {
        let (path, sha) = synthetic_safetensors_with_sha256(dir, size)?;
        let size = std::fs::metadata(&path)?.len();
        let hub = Self::start(
            vec![FixtureRepo::with_main(
                repo,
                vec![FixtureFile::disk("model.safetensors", &path)
                    .lfs()
                    .with_sha256(&sha)],
            )],
            opts,
        )?;
        Ok((hub, size))
    }

    /// Hash what needs hashing (streaming; LFS files given with a sha256 are not read), bind
    /// both hosts on free loopback ports and serve. Callable from sync code and from inside a
    /// tokio runtime alike (the fixture runs its own).
    pub fn start(repos: Vec<FixtureRepo>, opts: FixtureOptions) -> Result<Self> {
        let repos = model::prepare(repos)?;
        let main = std::net::TcpListener::bind((opts.bind, 0)).context("bind the main host")?;
        let cdn = std::net::TcpListener::bind((opts.bind, 0)).context("bind the CDN host")?;
        main.set_nonblocking(true)?;
        cdn.set_nonblocking(true)?;
        let (main_addr, cdn_addr) = (main.local_addr()?, cdn.local_addr()?);
        let shared = Arc::new(Shared {
            repos,
            bucket: opts.rate_limit.map(|r| Mutex::new(Bucket::new(r))),
            opts,
            main_base: format!("http://{main_addr}"),
            cdn_base: format!("http://{cdn_addr}"),
            secret: crate::upstream_fixtures::random_hex(16),
            downloads: Mutex::new(HashMap::new()),
            bytes_served: AtomicU64::new(0),
            faults: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("hub-fixture")
            .enable_all()
            .build()?;
        let mut stops = Vec::new();
        for (listener, app) in [
            (
                main,
                Router::new()
                    .fallback(hf::main_host)
                    .with_state(shared.clone()),
            ),
            (
                cdn,
                Router::new()
                    .fallback(serve::cdn)
                    .with_state(shared.clone()),
            ),
        ] {
            let listener = {
                let _guard = runtime.enter();
                tokio::net::TcpListener::from_std(listener)?
            };
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            runtime.spawn(serve::serve_until(listener, app, stop_rx, done_tx));
            stops.push((stop_tx, done_rx));
        }
        Ok(Self {
            shared,
            main_addr,
            cdn_addr,
            stops,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:<port>`: the hub (`HF_ENDPOINT`) and the ModelScope API.
    pub fn url(&self) -> String {
        self.shared.main_base.clone()
    }

    /// `http://127.0.0.1:<port>` of the CDN host LFS files redirect to.
    pub fn cdn_url(&self) -> String {
        self.shared.cdn_base.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.main_addr
    }

    pub fn cdn_addr(&self) -> SocketAddr {
        self.cdn_addr
    }

    /// Content GETs (200 or 206) of `path` in `repo` so far, both hosts, each request once.
    pub fn downloads(&self, repo: &str, path: &str) -> u64 {
        self.shared
            .downloads
            .lock()
            .ok()
            .and_then(|d| d.get(&(repo.to_string(), path.to_string())).copied())
            .unwrap_or(0)
    }

    /// File-content bytes sent so far (what left the fixture, faults included).
    pub fn bytes_served(&self) -> u64 {
        self.shared.bytes_served.load(Ordering::Relaxed)
    }

    /// Make every later body of `path` in `repo` misbehave (or behave again with
    /// [`Fault::None`]).
    pub fn set_fault(&self, repo: &str, path: &str, fault: Fault) {
        if let Ok(mut f) = self.shared.faults.lock() {
            f.insert((repo.to_string(), path.to_string()), fault);
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<FixtureRequest> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Requests to `/api/…` on the main host so far (Hugging Face and ModelScope).
    pub fn api_calls(&self) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.host == FixtureHost::Main && r.path.starts_with("/api/"))
            .count() as u64
    }

    /// Forget the requests, downloads and bytes counted so far.
    pub fn reset_counters(&self) {
        if let Ok(mut r) = self.shared.requests.lock() {
            r.clear();
        }
        if let Ok(mut d) = self.shared.downloads.lock() {
            d.clear();
        }
        self.shared.bytes_served.store(0, Ordering::Relaxed);
    }

    /// The commit `revision` (ref name or commit id) of `repo` resolves to.
    pub fn commit(&self, repo: &str, revision: &str) -> Option<String> {
        self.shared
            .repo(repo)
            .and_then(|r| r.resolve(revision))
            .map(|c| c.id.clone())
    }

    /// What the fixture serves for `path` at `revision` of `repo`: size, sha256, git oid, LFS.
    pub fn file(&self, repo: &str, revision: &str, path: &str) -> Option<FileInfo> {
        self.shared
            .repo(repo)
            .and_then(|r| r.resolve(revision))
            .and_then(|c| c.files.get(path))
            .map(|f| (**f).clone())
    }

    /// Close both ports (connections to them are refused from the moment this returns) and
    /// cut every connection in flight.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        for (stop, done) in self.stops.drain(..) {
            if stop.send(()).is_ok() {
                let _ = done.recv_timeout(Duration::from_secs(10));
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for HubFixture {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `python3` with `HF_ENDPOINT=endpoint` and a private `HF_HOME`; no token, proxy, offline or
/// Xet setting from the caller's environment leaks in (Xet is left as installed: the facade
/// must keep the client on HTTP by itself).
pub fn hf_python(endpoint: &str, home: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("python3");
    for var in [
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_DISABLE_XET",
        "HF_HUB_ENABLE_HF_TRANSFER",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_XET_CACHE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    cmd
}
