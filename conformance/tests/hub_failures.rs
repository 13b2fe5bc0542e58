//! The OCI side of hub repositories (`hf/…`, `hf-raw/…`, `ms-raw/…`) when things go wrong or
//! many ask at once, with reqwest in front and the hub fixture behind: a hub that lies about a
//! file's sha256 or dies mid-file, gated / missing revisions / missing repos as OCI errors,
//! concurrent cold pulls sharing one download per file, prefetch through the admin API and the
//! `manta` CLI, a branch that moves under a short TTL and a hub that goes away, ModelScope.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::hub_agent::*;
use manta_conformance::hub_fixture::{
    minilm_repo, Fault, FixtureCommit, FixtureFile, FixtureHost, FixtureOptions, FixtureRepo,
    HubFixture, MINILM_COMMIT, MINILM_ID,
};
use manta_conformance::upstream_fixtures::{random_bytes, random_hex};
use serde_json::json;

const WEIGHTS: &str = "model.safetensors";

fn raw_name() -> String {
    format!("hf-raw/{MINILM_NAME}")
}

fn image_name() -> String {
    format!("hf/{MINILM_NAME}")
}

/// Until the agent has deleted its temp files (a failed download leaves none behind).
async fn no_temp_files(env: &HubAgent) {
    poll(
        "the agent's temp files to go",
        Duration::from_secs(30),
        || async {
            let left = temp_files(env.data_dir());
            Ok(left.is_empty().then_some(()))
        },
    )
    .await;
}

/// Until the blob is in the store (the client gets its last byte once the content is verified;
/// the file is made durable and installed right after).
async fn blob_installed(env: &HubAgent, digest: &str) {
    poll(
        "the blob to be installed",
        Duration::from_secs(30),
        || async { Ok(blob_file(env.data_dir(), digest).is_file().then_some(())) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_lying_about_a_sha256_is_never_served_whole_nor_stored() {
    let pkg = Package::minilm();
    let env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let c = client();
    let (m, _, _) = manifest_ok(&c, &env.url(), &raw_name(), "main").await;
    let w = pkg.file(WEIGHTS);
    let layer = layers_by_title(&m)[WEIGHTS].clone();
    assert_eq!(layer.digest, format!("sha256:{}", w.sha256));

    env.hub().set_fault(MINILM_ID, WEIGHTS, Fault::WrongContent);
    let url = format!("{}/v2/{}/blobs/{}", env.url(), raw_name(), layer.digest);
    let s = stream_get(&c, &url, &[], None).await;
    assert!(
        !s.complete(),
        "a body that fails verification arrived whole: status {}, {} bytes",
        s.status,
        s.len
    );
    if (200..300).contains(&s.status) {
        assert!(s.len < w.size, "the last byte went out before verification");
    }
    assert_eq!(env.hub().downloads(MINILM_ID, WEIGHTS), 1);

    // Nothing of it is kept: no temp file, no blob, not counted as cached.
    no_temp_files(&env).await;
    assert!(!blob_file(env.data_dir(), &layer.digest).exists());
    let rev = cached_revision(&c, &env.url(), "hf", MINILM_ID, "main").await;
    assert_eq!(rev["cachedBytes"], pkg.total_size() - w.size, "{rev}");

    // The image form is not built from lying bytes either.
    let a = get_manifest(&c, &env.url(), &image_name(), "main").await;
    assert_eq!(a.status, 502, "image form from a lying hub: {}", a.text());
    assert!(!blob_file(env.data_dir(), &layer.digest).exists());

    // The hub behaves again: the next request fetches anew and gets the right bytes.
    env.hub().set_fault(MINILM_ID, WEIGHTS, Fault::None);
    let before = env.hub().downloads(MINILM_ID, WEIGHTS);
    blob_ok(&c, &env.url(), &raw_name(), &layer.digest, w.size).await;
    assert_eq!(env.hub().downloads(MINILM_ID, WEIGHTS), before + 1);
    blob_installed(&env, &layer.digest).await;
    assert_eq!(
        sha256_file_hex(&blob_file(env.data_dir(), &layer.digest)),
        w.sha256
    );
    poll(
        "the cache to count the file",
        Duration::from_secs(30),
        || async {
            let rev = cached_revision(&c, &env.url(), "hf", MINILM_ID, "main").await;
            Ok((rev["cachedBytes"] == pkg.total_size()).then_some(()))
        },
    )
    .await;
}

fn sha256_file_hex(p: &std::path::Path) -> String {
    manta_conformance::hub_fixture::sha256_file(p).unwrap()
}

/// The `bytes=<start>-` of a request's Range header.
fn range_start(range: &str) -> u64 {
    range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Range {range:?}"))
}

/// The hub cuts the connection mid-file. The adapter resumes a broken body with `Range` from
/// the byte reached (its retry budget counts attempts without progress), so a hub that keeps
/// sending *something* is followed to the end and the client gets the whole, right file; a hub
/// that sends nothing at all exhausts the budget and the client's body breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_dying_mid_file_is_resumed_with_range_or_fails_the_body() {
    let pkg = Package::minilm();
    let env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let c = client();
    let (m, _, _) = manifest_ok(&c, &env.url(), &raw_name(), "main").await;
    let w = pkg.file(WEIGHTS);
    let layer = layers_by_title(&m)[WEIGHTS].clone();
    let url = format!("{}/v2/{}/blobs/{}", env.url(), raw_name(), layer.digest);

    // Not one byte, ever: the client's body breaks, nothing is kept.
    env.hub().set_fault(MINILM_ID, WEIGHTS, Fault::DieAfter(0));
    let s = stream_get(&c, &url, &[], None).await;
    assert!(
        !s.complete(),
        "a download that never got a byte arrived whole: status {}, {} bytes",
        s.status,
        s.len
    );
    assert!(env.hub().downloads(MINILM_ID, WEIGHTS) >= 1);
    no_temp_files(&env).await;
    assert!(!blob_file(env.data_dir(), &layer.digest).exists());

    // 1 MB per connection: resumed from where each one broke, to the end.
    env.hub().reset_counters();
    env.hub()
        .set_fault(MINILM_ID, WEIGHTS, Fault::DieAfter(1_000_000));
    blob_ok(&c, &env.url(), &raw_name(), &layer.digest, w.size).await;
    let gets: Vec<_> = env
        .hub()
        .requests()
        .into_iter()
        .filter(|q| q.host == FixtureHost::Cdn && q.method == "GET" && q.path.ends_with(&w.sha256))
        .collect();
    assert!(
        gets.len() as u64 >= w.size.div_ceil(1_000_000),
        "{} content GETs for {} bytes cut every 1 MB",
        gets.len(),
        w.size
    );
    assert_eq!(
        env.hub().downloads(MINILM_ID, WEIGHTS),
        gets.len() as u64,
        "every content GET of the file went to the CDN"
    );
    assert!(
        gets[0].range.is_none(),
        "first GET: Range {:?}",
        gets[0].range
    );
    let mut last = 0;
    for q in &gets[1..] {
        let range = q.range.as_deref().expect("a resumed GET carries Range");
        let start = range_start(range);
        assert!(
            start > last && start < w.size,
            "resumed at {start} after {last}: not from the byte reached"
        );
        assert_eq!(q.status, 206, "{range}");
        last = start;
    }
    blob_installed(&env, &layer.digest).await;

    // Fault cleared: served from the node, the hub is not asked.
    env.hub().set_fault(MINILM_ID, WEIGHTS, Fault::None);
    env.hub().reset_counters();
    blob_ok(&c, &env.url(), &raw_name(), &layer.digest, w.size).await;
    assert_eq!(env.hub().downloads(MINILM_ID, WEIGHTS), 0);
}

const GATED: &str = "acme/Gated-Model";
const GATED_NAME: &str = "acme/gated-model";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gated_repos_missing_revisions_and_missing_repos_as_oci_errors() {
    let token = format!("hf_{}", random_hex(12));
    let config = b"{\"model_type\": \"gated\"}\n".to_vec();
    let weights = random_bytes(200 * 1024 + 3);
    let gated = FixtureRepo::with_main(
        GATED,
        vec![
            FixtureFile::bytes("config.json", config.clone()),
            FixtureFile::bytes(WEIGHTS, weights.clone()).lfs(),
        ],
    )
    .gated(true);
    let env = HubAgent::start(
        vec![minilm_repo().unwrap(), gated],
        FixtureOptions {
            token: Some(token.clone()),
            ..Default::default()
        },
        &[],
    );
    let c = client();
    let base = env.url();

    // No token: 401 UNAUTHORIZED with the hub's message, for both forms.
    for form in ["hf-raw", "hf"] {
        let name = format!("{form}/{GATED_NAME}");
        let a = get_manifest(&c, &base, &name, "main").await;
        assert_eq!(a.status, 401, "{name}: {}", a.text());
        let e = a.oci_error();
        assert_eq!(e["code"], "UNAUTHORIZED", "{name}: {e}");
        let detail = e["detail"].to_string();
        assert!(
            detail.contains("Access to model acme/Gated-Model is restricted"),
            "{name}: the hub's message is not in the detail: {e}"
        );
    }
    // A revision the hub does not have, a repo it does not have.
    for form in ["hf-raw", "hf"] {
        let name = format!("{form}/{MINILM_NAME}");
        let a = get_manifest(&c, &base, &name, "no-such-branch").await;
        assert_eq!(a.status, 404, "{name}:no-such-branch: {}", a.text());
        assert_eq!(a.oci_error()["code"], "MANIFEST_UNKNOWN", "{}", a.text());
        let name = format!("{form}/acme/no-such-model");
        let a = get_manifest(&c, &base, &name, "main").await;
        assert_eq!(a.status, 404, "{name}: {}", a.text());
        assert_eq!(a.oci_error()["code"], "NAME_UNKNOWN", "{}", a.text());
    }

    // The approved token: the files.
    let with_token = spawn_agent(
        &env.hub().url(),
        &env.scratch("with-token").join("data"),
        &["--hf-token", &token],
    )
    .unwrap();
    let name = format!("hf-raw/{GATED_NAME}");
    let (m, _, _) = manifest_ok(&c, &with_token.url(), &name, "main").await;
    let by_title = layers_by_title(&m);
    for (path, bytes) in [("config.json", &config), (WEIGHTS, &weights)] {
        let l = &by_title[path];
        assert_eq!(l.digest, format!("sha256:{}", sha256_hex(bytes)), "{path}");
        blob_ok(&c, &with_token.url(), &name, &l.digest, bytes.len() as u64).await;
    }
    let (_, _, _) = manifest_ok(&c, &with_token.url(), &format!("hf/{GATED_NAME}"), "main").await;

    // A token the repo does not approve: 403 DENIED.
    let wrong = spawn_agent(
        &env.hub().url(),
        &env.scratch("wrong-token").join("data"),
        &["--hf-token", "hf_not_approved"],
    )
    .unwrap();
    let a = get_manifest(&c, &wrong.url(), &name, "main").await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.oci_error()["code"], "DENIED", "{}", a.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_cold_raw_pulls_share_one_download_per_file() {
    const CLIENTS: usize = 20;
    let pkg = Package::minilm();
    let env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let base = env.url();
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (base, barrier) = (base.clone(), barrier.clone());
            tokio::spawn(async move {
                let c = client();
                let name = raw_name();
                barrier.wait().await;
                let (m, digest, _) = manifest_ok(&c, &base, &name, "main").await;
                let cfg = &m["config"];
                blob_ok(
                    &c,
                    &base,
                    &name,
                    cfg["digest"].as_str().unwrap(),
                    cfg["size"].as_u64().unwrap(),
                )
                .await;
                let got = futures_util::future::join_all(layers(&m).into_iter().map(|l| {
                    let (c, base, name) = (c.clone(), base.clone(), name.clone());
                    async move {
                        let s = blob_ok(&c, &base, &name, &l.digest, l.size).await;
                        (l.title.unwrap(), (s.len, s.sha256))
                    }
                }))
                .await;
                (digest, got.into_iter().collect::<BTreeMap<_, _>>())
            })
        })
        .collect();
    let want: BTreeMap<String, (u64, String)> = pkg
        .files
        .iter()
        .map(|(p, f)| (p.clone(), (f.size, f.sha256.clone())))
        .collect();
    let mut digests = BTreeSet::new();
    for t in tasks {
        let (digest, files) = t.await.unwrap();
        assert!(files == want, "a client got other files than the originals");
        digests.insert(digest);
    }
    assert_eq!(
        digests.len(),
        1,
        "clients got different manifests: {digests:?}"
    );
    for path in pkg.files.keys() {
        assert_eq!(env.hub().downloads(MINILM_ID, path), 1, "{path}");
    }
}

/// The one regular file of a one-file layer (after its directories' entries): path and content.
fn tar_file(tar: &[u8]) -> (String, &[u8]) {
    let mut off = 0;
    while off + 512 <= tar.len() {
        let h = &tar[off..off + 512];
        assert!(h.iter().any(|&b| b != 0), "no file entry in the layer");
        let cstr = |b: &[u8]| {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8(b[..end].to_vec()).unwrap()
        };
        let (name, prefix) = (cstr(&h[..100]), cstr(&h[345..500]));
        let size = u64::from_str_radix(cstr(&h[124..136]).trim(), 8).unwrap() as usize;
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let data = off + 512;
        match h[156] {
            b'0' | 0 => return (path, &tar[data..data + size]),
            b'5' => off = data,
            t => panic!("unexpected tar entry type {t} for {path}"),
        }
    }
    panic!("no file entry in the layer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_cold_image_manifest_gets_share_one_build() {
    const CLIENTS: usize = 10;
    let pkg = Package::minilm();
    let env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let base = env.url();
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (base, barrier) = (base.clone(), barrier.clone());
            tokio::spawn(async move {
                let c = client();
                barrier.wait().await;
                get_manifest(&c, &base, &image_name(), "main").await
            })
        })
        .collect();
    let mut bodies = BTreeSet::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        bodies.insert(a.body);
    }
    assert_eq!(bodies.len(), 1, "clients got different image manifests");
    for path in pkg.files.keys() {
        assert_eq!(env.hub().downloads(MINILM_ID, path), 1, "{path}");
    }

    // The image: a plain OCI image whose layers are the original files, one per layer.
    let c = client();
    let (m, _, _) = manifest_ok(&c, &base, &image_name(), "main").await;
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    assert!(m.get("artifactType").is_none(), "{m}");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let cfg = send(c.get(format!(
        "{base}/v2/{}/blobs/{}",
        image_name(),
        m["config"]["digest"].as_str().unwrap()
    )))
    .await
    .unwrap();
    assert_eq!(cfg.status, 200);
    let cfg = cfg.json();
    let ls = layers(&m);
    let diff_ids: Vec<String> = ls.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(cfg["rootfs"]["diff_ids"], json!(diff_ids));
    assert_eq!(cfg["os"], "linux");
    let mut files = BTreeMap::new();
    for l in &ls {
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar");
        let a = send(c.get(format!("{base}/v2/{}/blobs/{}", image_name(), l.digest)))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{}", l.digest);
        assert_eq!(a.body.len() as u64, l.size);
        assert_eq!(format!("sha256:{}", sha256_hex(&a.body)), l.digest);
        let (path, content) = tar_file(&a.body);
        files.insert(path, (content.len() as u64, sha256_hex(content)));
    }
    let want: BTreeMap<String, (u64, String)> = pkg
        .files
        .iter()
        .map(|(p, f)| (p.clone(), (f.size, f.sha256.clone())))
        .collect();
    assert!(
        files == want,
        "the layers hold other files than the originals"
    );
    // Building the image and reading its layers took nothing more from the hub.
    for path in pkg.files.keys() {
        assert_eq!(env.hub().downloads(MINILM_ID, path), 1, "{path}");
    }
}

/// The derived tag of a subset, computed here from the documented definition.
fn subset_tag(revision: &str, allow: &[&str]) -> String {
    let doc = json!(["manta-filter/v1", null, allow, []]).to_string();
    format!("{revision}-{}", &sha256_hex(doc.as_bytes())[..12])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefetch_job_is_followed_by_waiting_on_its_version() {
    // Slow enough that the job moves while a waiter waits.
    let opts = FixtureOptions {
        rate_limit: Some(20 << 20),
        ..FixtureOptions::default()
    };
    let env = HubAgent::start(vec![minilm_repo().unwrap()], opts, &[]);
    let c = client();
    let base = env.url();
    let job = start_prefetch(&c, &base, json!({"hub": "hf", "repo": MINILM_ID})).await;
    let id = job["id"].as_str().unwrap().to_string();
    let mut version = job["version"].as_u64().unwrap();
    let mut seen = vec![job["state"].as_str().unwrap().to_string()];
    loop {
        // Each wait answers with a newer version (the job ends well within 60 s): the agent
        // waits for a change, and a change wakes it.
        let a = send(c.get(format!(
            "{base}/manta/v1/prefetch/{id}?wait=60&version={version}"
        )))
        .await
        .unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        let j = a.json();
        let v = j["version"].as_u64().unwrap();
        assert!(v > version, "waited on version {version}, got {j}");
        version = v;
        seen.push(j["state"].as_str().unwrap().to_string());
        if matches!(j["state"].as_str(), Some("succeeded" | "failed")) {
            assert_eq!(j["state"], "succeeded", "{j}");
            break;
        }
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("succeeded"),
        "{seen:?}"
    );
    // A bad query is refused, not ignored.
    let a = send(c.get(format!("{base}/manta/v1/prefetch/{id}?wait=x&version=1")))
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{}", a.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetch_makes_both_forms_servable_without_the_hub() {
    let pkg = Package::minilm();
    let mut env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let c = client();
    let base = env.url();
    let job = start_prefetch(
        &c,
        &base,
        json!({"hub": "hf", "repo": MINILM_ID, "revision": "main"}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    let job = wait_job(&c, &base, &id, Duration::from_secs(300)).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["repo"], MINILM_ID);
    assert_eq!(job["commit"], MINILM_COMMIT);
    assert_eq!(job["bytesTotal"], pkg.total_size(), "{job}");
    assert_eq!(job["bytesDone"], job["bytesTotal"], "{job}");
    assert_eq!(
        job["references"],
        json!({"raw": format!("{}:main", raw_name()), "image": format!("{}:main", image_name())})
    );
    let files = job["files"].as_array().unwrap();
    assert_eq!(files.len(), pkg.files.len(), "{job}");
    for f in files {
        let path = f["path"].as_str().unwrap();
        assert_eq!(f["size"], pkg.file(path).size, "{path}");
        assert_eq!(f["bytesDone"], f["size"], "{path}");
        assert_eq!(f["state"], "done", "{path}");
    }
    for path in pkg.files.keys() {
        assert_eq!(env.hub().downloads(MINILM_ID, path), 1, "{path}");
    }

    // A subset: its own derived tag, only its files.
    let sub = start_prefetch(
        &c,
        &base,
        json!({"hub": "hf", "repo": MINILM_ID, "revision": "main", "allowPatterns": ["*.json"]}),
    )
    .await;
    let sub = wait_job(
        &c,
        &base,
        sub["id"].as_str().unwrap(),
        Duration::from_secs(300),
    )
    .await;
    assert_eq!(sub["state"], "succeeded", "{sub}");
    let tag = subset_tag("main", &["*.json"]);
    assert_eq!(
        sub["references"],
        json!({"raw": format!("{}:{tag}", raw_name()), "image": format!("{}:{tag}", image_name())})
    );
    let json_files: BTreeSet<&String> = pkg.files.keys().filter(|p| p.ends_with(".json")).collect();
    let (m, _, _) = manifest_ok(&c, &base, &raw_name(), &tag).await;
    let titles = layers_by_title(&m);
    assert_eq!(titles.keys().collect::<BTreeSet<_>>(), json_files);

    // The hub goes away: both forms, manifests and blobs, are served from the node.
    env.stop_hub();
    let (raw, _, _) = manifest_ok(&c, &base, &raw_name(), "main").await;
    let raw_layers = layers_by_title(&raw);
    assert_eq!(
        raw_layers.keys().collect::<Vec<_>>(),
        pkg.files.keys().collect::<Vec<_>>()
    );
    for (path, l) in &raw_layers {
        assert_eq!(
            l.digest,
            format!("sha256:{}", pkg.file(path).sha256),
            "{path}"
        );
        blob_ok(&c, &base, &raw_name(), &l.digest, l.size).await;
    }
    let (image, _, _) = manifest_ok(&c, &base, &image_name(), "main").await;
    let cfg = &image["config"];
    blob_ok(
        &c,
        &base,
        &image_name(),
        cfg["digest"].as_str().unwrap(),
        cfg["size"].as_u64().unwrap(),
    )
    .await;
    let image_layers = layers(&image);
    assert_eq!(image_layers.len(), pkg.files.len());
    for l in &image_layers {
        blob_ok(&c, &base, &image_name(), &l.digest, l.size).await;
    }
    let (sub_m, _, _) = manifest_ok(&c, &base, &raw_name(), &tag).await;
    assert_eq!(sub_m, m);
    manifest_ok(&c, &base, &image_name(), &tag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manta_cli_prefetches_lists_and_reports_a_missing_repo() {
    let env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let c = client();
    let server = env.url();
    let uri = format!("hf://{MINILM_ID}@main");
    let out = manta_cli(&["prefetch", &uri, "--server", &server]).unwrap();
    let addr = env.addr();
    let lines: Vec<Vec<String>> = out
        .stdout_str()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["raw".to_string(), format!("{addr}/{}:main", raw_name())],
            vec!["image".to_string(), format!("{addr}/{}:main", image_name())],
        ],
        "stdout: {}",
        out.stdout_str()
    );
    // What it printed is pullable.
    manifest_ok(&c, &server, &raw_name(), "main").await;
    manifest_ok(&c, &server, &image_name(), "main").await;

    let ls = manta_cli(&["ls", "--server", &server])
        .unwrap()
        .stdout_str();
    let row: Vec<&str> = ls
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.len() > 3 && cols[0] == "hf" && cols[1] == MINILM_ID && cols[2] == "main")
        .unwrap_or_else(|| panic!("manta ls lists no hf {MINILM_ID} main:\n{ls}"));
    assert_eq!(row[3], &MINILM_COMMIT[..12], "{ls}");
    assert!(row.contains(&"100%"), "{ls}");
    assert_eq!(row.last(), Some(&"raw,image"), "{ls}");

    let err = manta_cli(&[
        "prefetch",
        "hf://acme/No-Such-Model@main",
        "--server",
        &server,
    ])
    .expect_err("a prefetch of a missing repo must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("failed with exit status"), "{msg}");
    assert!(
        msg.contains("Repository not found"),
        "the hub's message is not reported: {msg}"
    );
}

const MOVING: &str = "acme/Moving-Model";
const MOVING_NAME: &str = "acme/moving-model";

fn moving_files(version: u32, weights: &[u8]) -> Vec<FixtureFile> {
    vec![
        FixtureFile::bytes("config.json", format!("{{\"version\": {version}}}\n")),
        FixtureFile::bytes(WEIGHTS, weights.to_vec()).lfs(),
    ]
}

/// A branch is re-resolved once its TTL is over and follows the hub to a new commit; when the
/// hub cannot be asked, the last resolution is served. The fixture's refs are fixed at start,
/// so the move is two fixtures behind one endpoint (a switchable TCP forwarder).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_branch_follows_its_hub_after_the_ttl_and_outlives_the_hub() {
    let weights = random_bytes(64 * 1024);
    let (c1, c2) = ("1".repeat(40), "2".repeat(40));
    let old = FixtureRepo::new(MOVING)
        .commit(FixtureCommit::new(&c1, moving_files(1, &weights)))
        .branch("main", &c1);
    let new = FixtureRepo::new(MOVING)
        .commit(FixtureCommit::new(&c1, moving_files(1, &weights)))
        .commit(FixtureCommit::new(&c2, moving_files(2, &weights)))
        .branch("main", &c2);
    let hub_old = HubFixture::start(vec![old], FixtureOptions::default()).unwrap();
    let hub_new = HubFixture::start(vec![new], FixtureOptions::default()).unwrap();
    let proxy = SwitchProxy::start(hub_old.addr()).await;
    let env = HubAgent::start_at(&proxy.url(), &["--hub-revision-ttl-secs", "1"]);
    let c = client();
    let base = env.url();
    let name = format!("hf-raw/{MOVING_NAME}");
    let config_digest = |v: u32| {
        format!(
            "sha256:{}",
            sha256_hex(format!("{{\"version\": {v}}}\n").as_bytes())
        )
    };

    let (m1, d1, _) = manifest_ok(&c, &base, &name, "main").await;
    assert_eq!(layers_by_title(&m1)["config.json"].digest, config_digest(1));

    // main moves to c2 on the hub.
    proxy.set_target(Some(hub_new.addr()));
    hub_old.stop();
    let d2 = poll(
        "main to follow the hub to c2",
        Duration::from_secs(60),
        || async {
            let a = get_manifest(&c, &base, &name, "main").await;
            anyhow::ensure!(a.status == 200, "status {}: {}", a.status, a.text());
            let m = a.json();
            let moved = layers_by_title(&m)["config.json"].digest == config_digest(2);
            Ok(moved.then(|| format!("sha256:{}", sha256_hex(&a.body))))
        },
    )
    .await;
    assert_ne!(d1, d2);
    let (m2, _, _) = manifest_ok(&c, &base, &name, "main").await;
    let l = &layers_by_title(&m2)["config.json"];
    blob_ok(&c, &base, &name, &l.digest, l.size).await;
    // The old commit keeps its own tag.
    let (_, by_commit, _) = manifest_ok(&c, &base, &name, &c1).await;
    assert_eq!(by_commit, d1);

    // The hub goes away: main is still served, as last resolved.
    proxy.set_target(None);
    hub_new.stop();
    poll(
        "the agent to serve main from its last resolution",
        Duration::from_secs(60),
        || async {
            let a = get_manifest(&c, &base, &name, "main").await;
            assert_eq!(a.status, 200, "main with the hub gone: {}", a.text());
            assert_eq!(format!("sha256:{}", sha256_hex(&a.body)), d2);
            Ok(env
                .logs()
                .contains("serving the last resolution")
                .then_some(()))
        },
    )
    .await;
    let (_, d, _) = manifest_ok(&c, &base, &name, "main").await;
    assert_eq!(d, d2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modelscope_raw_form_is_byte_identical() {
    let pkg = Package::minilm();
    // The fixture's ModelScope routes match ids case-sensitively, so the repo is given the
    // lowercase id an OCI name carries (ModelScope itself ignores case).
    let mut repo = minilm_repo().unwrap();
    repo.id = MINILM_NAME.to_string();
    let env = HubAgent::start(vec![repo], FixtureOptions::default(), &[]);
    let c = client();
    let base = env.url();
    let name = format!("ms-raw/{MINILM_NAME}");
    let (m, _, _) = manifest_ok(&c, &base, &name, "master").await;
    assert_eq!(
        m["artifactType"],
        "application/vnd.cncf.model.manifest.v1+json"
    );
    let by_title = layers_by_title(&m);
    // The ModelScope SDK skips .gitattributes; so does the adapter.
    let want: Vec<&String> = pkg
        .files
        .keys()
        .filter(|p| p.as_str() != ".gitattributes")
        .collect();
    assert_eq!(by_title.keys().collect::<Vec<_>>(), want);
    for (path, l) in &by_title {
        let f = pkg.file(path);
        assert_eq!(l.digest, format!("sha256:{}", f.sha256), "{path}");
        assert_eq!(l.size, f.size, "{path}");
    }
    for path in [WEIGHTS, "config.json", "1_Pooling/config.json"] {
        let l = &by_title[path];
        blob_ok(&c, &base, &name, &l.digest, l.size).await;
        assert_eq!(env.hub().downloads(MINILM_NAME, path), 1, "{path}");
    }
    // It went through the ModelScope API, not the Hugging Face one.
    let reqs = env.hub().requests();
    assert!(reqs
        .iter()
        .any(|q| q.path == format!("/api/v1/models/{MINILM_NAME}/repo/files")));
    assert!(
        !reqs.iter().any(|q| q.path.starts_with("/api/models")),
        "the Hugging Face API was asked for a ModelScope repo"
    );
}

/// The node's hub token opens a gated repo for the clients that ask for it by name; its files
/// are not readable under any other name: a hub blob is served only under a repo whose
/// resolved revisions list it (raw file, or image-form tar layer), held or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hub_blob_is_served_only_under_a_repo_that_lists_it() {
    let token = format!("hf_{}", random_hex(12));
    let weights = random_bytes(300 * 1024 + 5);
    let gated = FixtureRepo::with_main(
        GATED,
        vec![FixtureFile::bytes(WEIGHTS, weights.clone()).lfs()],
    )
    .gated(true);
    // The token from a file (as a mounted Secret gives it): it never shows in the process list.
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("hf-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let env = HubAgent::start(
        vec![minilm_repo().unwrap(), gated],
        FixtureOptions {
            token: Some(token.clone()),
            ..Default::default()
        },
        &["--hf-token-file", token_file.to_str().unwrap()],
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", env.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&token));
    let (c, base) = (client(), env.url());
    let gated_raw = format!("hf-raw/{GATED_NAME}");
    let gated_image = format!("hf/{GATED_NAME}");
    let (m, _, _) = manifest_ok(&c, &base, &gated_raw, "main").await;
    let raw_layer = layers_by_title(&m)[WEIGHTS].clone();
    let (mi, _, _) = manifest_ok(&c, &base, &gated_image, "main").await;
    let tar_layer = mi["layers"][0]["digest"].as_str().unwrap().to_string();
    // A public repo the node also resolved, and names it never resolved.
    manifest_ok(&c, &base, &raw_name(), "main").await;
    let strangers = [
        raw_name(),
        image_name(),
        "hf-raw/someone/else".to_string(),
        "hf/someone/else".to_string(),
        "ms-raw/acme/gated-model".to_string(),
    ];
    for held in [false, true] {
        if held {
            blob_ok(&c, &base, &gated_raw, &raw_layer.digest, raw_layer.size).await;
        }
        for name in &strangers {
            for digest in [&raw_layer.digest, &tar_layer] {
                for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
                    let r = c
                        .request(method.clone(), format!("{base}/v2/{name}/blobs/{digest}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(
                        r.status(),
                        404,
                        "{method} {name} {digest} (held: {held}) was served"
                    );
                }
            }
        }
        // Under its own names, both forms' blobs are served.
        blob_ok(&c, &base, &gated_raw, &raw_layer.digest, raw_layer.size).await;
        let r = c
            .get(format!("{base}/v2/{gated_image}/blobs/{tar_layer}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
