//! The Hugging Face Hub fixture (manta_conformance::hub_fixture) is faithful: the real
//! `huggingface_hub` client downloads the real all-MiniLM-L6-v2 files from it byte for byte,
//! lists and paginates its trees, finds repos by search, and raises its own exception classes for
//! gated repos, missing revisions, missing files and wrongly cased ids. Its bodies honour Range,
//! misbehave on request, share a rate limit and stop for good; its ModelScope routes answer in
//! ModelScope's shapes; its synthetic safetensors files open with `safetensors`. When a Manta test
//! against the fixture fails, these passing means Manta is at fault.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use manta_conformance::hub_fixture::{
    minilm_dir, minilm_repo, synthetic_safetensors, synthetic_safetensors_with_sha256, Fault,
    FixtureCommit, FixtureFile, FixtureHost, FixtureOptions, FixtureRepo, HubFixture,
    MINILM_COMMIT, MINILM_ID,
};
use manta_conformance::process::run_with_timeout;
use manta_conformance::upstream_fixtures::{random_bytes, random_hex};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

const GATED: &str = "acme/Gated-Model";
const LEGACY: &str = "gpt2";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Git's blob id, computed here independently of the fixture.
fn git_oid(bytes: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex::encode(h.finalize())
}

fn commit_id(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

fn gated_repo() -> (FixtureRepo, Vec<u8>) {
    let weights = random_bytes(200 * 1024 + 3);
    let repo = FixtureRepo::with_main(
        GATED,
        vec![
            FixtureFile::bytes("config.json", &b"{\"model_type\": \"gated\"}\n"[..]),
            FixtureFile::bytes("model.safetensors", weights.clone()).lfs(),
        ],
    )
    .gated(true);
    (repo, weights)
}

/// `gpt2`: a one-segment id with a branch, a tag and a pull request, each at its own commit.
fn legacy_repo() -> FixtureRepo {
    let cfg = |v: &str| FixtureFile::bytes("config.json", format!("{{\"rev\": \"{v}\"}}\n"));
    FixtureRepo::new(LEGACY)
        .commit(FixtureCommit::new(&commit_id(1), vec![cfg("main")]))
        .commit(FixtureCommit::new(&commit_id(2), vec![cfg("v1.0")]))
        .commit(FixtureCommit::new(&commit_id(3), vec![cfg("pr1")]))
        .branch("main", &commit_id(1))
        .tag("v1.0", &commit_id(2))
        .pull_request(1, &commit_id(3))
}

use manta_conformance::hub_fixture::hf_python as python;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
}

fn error_class(results: &Value, name: &str) -> String {
    results["errors"][name]["class"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} did not fail: {}", results["errors"][name]))
        .to_string()
}

#[test]
fn huggingface_hub_downloads_minilm_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let token = format!("hf_{}", random_hex(12));
    let (gated, gated_weights) = gated_repo();
    let hub = HubFixture::start(
        vec![minilm_repo().unwrap(), gated, legacy_repo()],
        FixtureOptions {
            page_size: 2,
            token: Some(token.clone()),
            ..Default::default()
        },
    )
    .unwrap();

    // What the package ships, read here, independently of the fixture.
    let expected = package_files();

    let config = tmp.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "repo": MINILM_ID, "gated": GATED, "token": token, "pr_repo": LEGACY,
            "pr_file": "config.json", "commit": MINILM_COMMIT,
        })
        .to_string(),
    )
    .unwrap();
    let out_path = tmp.path().join("results.json");
    let home = tmp.path().join("hf_home");
    run_with_timeout(
        python(&hub.url(), &home)
            .arg(script("hf_fixture_client.py"))
            .arg(&config)
            .arg(&out_path),
        Duration::from_secs(300),
    )
    .unwrap();
    let r: Value = serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();

    // snapshot_download: every file, byte for byte, and nothing else.
    let snapshot = PathBuf::from(r["snapshot"].as_str().unwrap());
    assert!(
        snapshot.ends_with(format!("snapshots/{MINILM_COMMIT}")),
        "{snapshot:?}"
    );
    assert_same_files(&snapshot, &expected);
    for (key, file) in [
        ("single", "1_Pooling/config.json"),
        ("by_commit", "config.json"),
    ] {
        let p = r[key].as_str().unwrap();
        assert_eq!(std::fs::read(p).unwrap(), expected[file], "{key}");
        assert!(p.contains(MINILM_COMMIT), "{key}: {p}");
    }

    // list_repo_tree(recursive=True) across pages of 2: every file with its git oid (of the LFS
    // pointer for LFS files), size and sha256, and the one directory.
    let tree = r["tree"].as_array().unwrap();
    let mut listed = BTreeSet::new();
    for e in tree {
        let path = e["path"].as_str().unwrap().to_string();
        if e["kind"] == "RepoFolder" {
            assert_eq!(path, "1_Pooling");
            assert_eq!(e["oid"].as_str().unwrap().len(), 40);
        } else {
            let bytes = &expected[&path];
            assert_eq!(e["size"].as_u64().unwrap(), bytes.len() as u64, "{path}");
            let sha = sha256_hex(bytes);
            if path == "model.safetensors" {
                let pointer = format!(
                    "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {}\n",
                    bytes.len()
                );
                assert_eq!(e["lfs"]["sha256"], sha.as_str());
                assert_eq!(e["lfs"]["size"].as_u64().unwrap(), bytes.len() as u64);
                assert_eq!(
                    e["lfs"]["pointer_size"].as_u64().unwrap(),
                    pointer.len() as u64
                );
                assert_eq!(e["oid"], git_oid(pointer.as_bytes()).as_str());
            } else {
                assert!(e["lfs"].is_null(), "{path} should not be in LFS");
                assert_eq!(e["oid"], git_oid(bytes).as_str(), "{path}");
            }
        }
        assert!(listed.insert(path), "listed twice");
    }
    assert_eq!(listed.len(), expected.len() + 1);
    let tree_pages = hub
        .requests()
        .iter()
        .filter(|q| {
            q.path
                .starts_with(&format!("/api/models/{MINILM_ID}/tree/"))
        })
        .count();
    assert!(
        tree_pages >= 2 * tree.len().div_ceil(2),
        "{tree_pages} tree requests"
    );
    assert_eq!(r["tree_sub"], serde_json::json!(["1_Pooling/config.json"]));
    assert_eq!(
        r["paths_info"],
        serde_json::json!(["config.json", "1_Pooling"])
    );

    // model_info(files_metadata=True)
    assert_eq!(r["info"]["id"], MINILM_ID);
    assert_eq!(r["info"]["sha"], MINILM_COMMIT);
    assert_eq!(r["info"]["gated"], false);
    let siblings = r["info"]["siblings"].as_array().unwrap();
    assert_eq!(siblings.len(), expected.len());
    for s in siblings {
        let bytes = &expected[s["path"].as_str().unwrap()];
        assert_eq!(s["size"].as_u64().unwrap(), bytes.len() as u64);
    }

    // Refs, search by lowercase name, author, and one-segment ids at a tag and a PR.
    assert_eq!(r["refs"]["branches"], serde_json::json!(["main"]));
    assert_eq!(r["refs"]["tags"], serde_json::json!(["v1.0"]));
    assert_eq!(r["refs"]["pull_requests"], serde_json::json!(["refs/pr/1"]));
    assert_eq!(r["search"], serde_json::json!([MINILM_ID]));
    assert_eq!(r["by_author"], serde_json::json!([MINILM_ID]));
    for (key, content) in [("main", "main"), ("tag", "v1.0"), ("pr", "pr1")] {
        let text = std::fs::read_to_string(r[key].as_str().unwrap()).unwrap();
        assert_eq!(text, format!("{{\"rev\": \"{content}\"}}\n"), "{key}");
    }
    assert!(
        hub.requests()
            .iter()
            .any(|q| q.path == format!("/{LEGACY}/resolve/refs%2Fpr%2F1/config.json")),
        "the client percent-encodes refs/pr/1"
    );

    // Gated: metadata public, content needs the approved token.
    assert_eq!(r["gated_info"], "manual");
    let gated_dir = PathBuf::from(r["gated_ok"].as_str().unwrap());
    assert_eq!(
        std::fs::read(gated_dir.join("model.safetensors")).unwrap(),
        gated_weights
    );
    assert_eq!(error_class(&r, "gated_no_token"), "GatedRepoError");
    assert_eq!(error_class(&r, "gated_wrong_token"), "GatedRepoError");
    assert_eq!(error_class(&r, "gated_snapshot_no_token"), "GatedRepoError");
    let gated_statuses: BTreeSet<u16> = hub
        .requests()
        .iter()
        .filter(|q| q.path.starts_with(&format!("/{GATED}/resolve/")))
        .map(|q| q.status)
        .collect();
    assert!(
        gated_statuses.is_superset(&[200, 302, 401, 403].into()),
        "{gated_statuses:?}"
    );

    // Missing revision, missing file, wrong casing.
    for key in [
        "missing_revision",
        "missing_revision_snapshot",
        "missing_revision_info",
    ] {
        assert_eq!(error_class(&r, key), "RevisionNotFoundError", "{key}");
    }
    assert!(error_class(&r, "missing_entry").ends_with("EntryNotFoundError"));
    assert_eq!(error_class(&r, "lowercase_info"), "RepositoryNotFoundError");
    assert_eq!(
        error_class(&r, "lowercase_download"),
        "RepositoryNotFoundError"
    );

    // Counters: each content GET once; LFS content came from the CDN, without the token.
    for path in expected.keys() {
        let want = match path.as_str() {
            "1_Pooling/config.json" | "config.json" => 2,
            _ => 1,
        };
        assert_eq!(hub.downloads(MINILM_ID, path), want, "{path}");
    }
    assert_eq!(hub.downloads(GATED, "model.safetensors"), 1);
    let cdn: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|q| q.host == FixtureHost::Cdn)
        .collect();
    let weights_sha = sha256_hex(&expected["model.safetensors"]);
    assert!(cdn
        .iter()
        .any(|q| q.method == "GET" && q.status == 200 && q.path.ends_with(&weights_sha)));
    assert!(cdn.iter().all(|q| q.authorization.is_none()), "{cdn:#?}");
    let total: u64 = expected.values().map(|b| b.len() as u64).sum();
    assert!(hub.bytes_served() >= total + gated_weights.len() as u64);
    assert!(hub.requests().iter().all(|q| q.status < 500));
    assert!(hub.api_calls() > 0);
    hub.stop();
}

/// The MiniLM files as the package ships them: path → bytes.
fn package_files() -> BTreeMap<String, Vec<u8>> {
    let originals = minilm_dir().unwrap();
    let mut expected = BTreeMap::new();
    for entry in walk(&originals) {
        let rel = entry
            .strip_prefix(&originals)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        expected.insert(rel, std::fs::read(&entry).unwrap());
    }
    assert!(
        expected.contains_key("model.safetensors")
            && expected.contains_key("1_Pooling/config.json")
    );
    expected
}

/// Every file under `dir` equals the package's copy, and every package file is there.
fn assert_same_files(dir: &Path, expected: &BTreeMap<String, Vec<u8>>) {
    let mut got = BTreeSet::new();
    for entry in walk(dir) {
        let rel = entry
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let want = expected
            .get(&rel)
            .unwrap_or_else(|| panic!("unexpected file {rel}"));
        let bytes = std::fs::read(&entry).unwrap();
        assert!(bytes == *want, "{rel} differs from the package's copy");
        got.insert(rel);
    }
    assert_eq!(got, expected.keys().cloned().collect::<BTreeSet<_>>());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            // The hub cache holds symlinks into blobs/; follow them.
            if std::fs::metadata(&p).unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

struct Blobs {
    small: Vec<u8>,
    big: Vec<u8>,
    disk: PathBuf,
}

const BLOBS: &str = "acme/Blobs";

fn blobs_repo(dir: &Path) -> (FixtureRepo, Blobs) {
    let small = random_bytes(1000);
    let big = random_bytes(300 * 1024);
    let disk = synthetic_safetensors(dir, 1 << 20).unwrap();
    let repo = FixtureRepo::with_main(
        BLOBS,
        vec![
            FixtureFile::bytes("small.txt", small.clone()),
            FixtureFile::bytes("sub/big.bin", big.clone()).lfs(),
            FixtureFile::disk("weights/model.safetensors", &disk).lfs(),
        ],
    );
    let main = repo.ref_commit("main").unwrap().to_string();
    let repo = repo.tag("v1", &main);
    (repo, Blobs { small, big, disk })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn assert_no_xet(resp: &reqwest::Response) {
    for (name, value) in resp.headers() {
        assert!(!name.as_str().starts_with("x-xet"), "{name}");
        assert!(
            !value.to_str().unwrap_or("").contains("xet-auth"),
            "{name}: {value:?}"
        );
    }
}

/// Read a body until it ends or breaks: (bytes, whether it broke).
async fn drain(mut resp: reqwest::Response) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c),
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}

#[test]
fn bodies_ranges_errors_faults_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, b) = blobs_repo(tmp.path());
    let hub = HubFixture::start(vec![repo], FixtureOptions::default()).unwrap();
    let url = hub.url();
    let commit = hub.commit(BLOBS, "main").unwrap();
    let disk_bytes = std::fs::read(&b.disk).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let resolve = |path: &str| format!("{url}/{BLOBS}/resolve/main/{path}");

        // A regular file: HEAD, 206, 416.
        let head = c.head(resolve("small.txt")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "etag"), format!("\"{}\"", git_oid(&b.small)));
        assert_eq!(header(&head, "content-length"), "1000");
        assert_eq!(header(&head, "x-repo-commit"), commit);
        assert_eq!(header(&head, "accept-ranges"), "bytes");
        assert_no_xet(&head);
        let part = c
            .get(resolve("small.txt"))
            .header("Range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(header(&part, "content-range"), "bytes 10-19/1000");
        assert_eq!(part.bytes().await.unwrap(), b.small[10..20]);
        let bad = c
            .get(resolve("small.txt"))
            .header("Range", "bytes=2000-")
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 416);
        assert_eq!(header(&bad, "content-range"), "bytes */1000");

        // An LFS file: 302 to the CDN with the linked etag and size; ranges there.
        let redirect = c.head(resolve("sub/big.bin")).send().await.unwrap();
        assert_eq!(redirect.status(), 302);
        let sha = sha256_hex(&b.big);
        assert_eq!(header(&redirect, "x-linked-etag"), format!("\"{sha}\""));
        assert_eq!(header(&redirect, "etag"), format!("\"{sha}\""));
        assert_eq!(header(&redirect, "x-linked-size"), b.big.len().to_string());
        assert_no_xet(&redirect);
        let location = header(&redirect, "location").to_string();
        assert!(location.starts_with(&hub.cdn_url()), "{location}");
        let tail = c
            .get(&location)
            .header("Range", "bytes=-100")
            .send()
            .await
            .unwrap();
        assert_eq!(tail.status(), 206);
        assert_eq!(tail.bytes().await.unwrap(), b.big[b.big.len() - 100..]);
        let forged = location.replace("Signature=", "Signature=00");
        assert_eq!(c.get(&forged).send().await.unwrap().status(), 403);

        // A disk-backed file, whole and in the middle.
        let get = c
            .get(resolve("weights/model.safetensors"))
            .send()
            .await
            .unwrap();
        let loc = header(&get, "location").to_string();
        assert_eq!(
            c.get(&loc).send().await.unwrap().bytes().await.unwrap(),
            disk_bytes
        );
        let mid = c
            .get(&loc)
            .header("Range", "bytes=300000-400000")
            .send()
            .await
            .unwrap();
        assert_eq!(mid.bytes().await.unwrap(), disk_bytes[300_000..=400_000]);

        // Errors as the hub sends them.
        for (path, status, code) in [
            (
                format!("/api/models/{}", BLOBS.to_lowercase()),
                404,
                "RepoNotFound",
            ),
            (
                format!("/api/models/{BLOBS}/revision/nope"),
                404,
                "RevisionNotFound",
            ),
            (
                format!("/{BLOBS}/resolve/nope/small.txt"),
                404,
                "RevisionNotFound",
            ),
            (
                format!("/{BLOBS}/resolve/main/nope.txt"),
                404,
                "EntryNotFound",
            ),
            (
                format!("/api/models/{BLOBS}/tree/main/nope"),
                404,
                "EntryNotFound",
            ),
        ] {
            let resp = c.get(format!("{url}{path}")).send().await.unwrap();
            assert_eq!(resp.status(), status, "{path}");
            assert_eq!(header(&resp, "x-error-code"), code, "{path}");
            let message = header(&resp, "x-error-message").to_string();
            if code == "EntryNotFound" {
                assert_eq!(header(&resp, "x-repo-commit"), commit);
            }
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"], message.as_str(), "{path}");
        }

        // Counters: content GETs only (not HEADs, redirects or 416s), each once.
        assert_eq!(hub.downloads(BLOBS, "small.txt"), 1);
        assert_eq!(hub.downloads(BLOBS, "sub/big.bin"), 1);
        assert_eq!(hub.downloads(BLOBS, "weights/model.safetensors"), 2);
        assert_eq!(
            hub.bytes_served(),
            10 + 100 + disk_bytes.len() as u64 + 100_001
        );

        // Faults: lying bytes of the right length; a connection cut after n bytes; then healed.
        hub.set_fault(BLOBS, "small.txt", Fault::WrongContent);
        let lie = c
            .get(resolve("small.txt"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(lie.len(), b.small.len());
        assert_ne!(sha256_hex(&lie), sha256_hex(&b.small));
        hub.set_fault(BLOBS, "sub/big.bin", Fault::DieAfter(70_000));
        let cut = c.get(&location).send().await.unwrap();
        assert_eq!(header(&cut, "content-length"), b.big.len().to_string());
        let (bytes, broke) = drain(cut).await;
        assert!(broke, "the body ended cleanly after {} bytes", bytes.len());
        assert_eq!(bytes, b.big[..70_000]);
        hub.set_fault(BLOBS, "small.txt", Fault::None);
        hub.set_fault(BLOBS, "sub/big.bin", Fault::None);
        let healed = c
            .get(&location)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(healed, b.big);
        assert_eq!(
            c.get(resolve("small.txt"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
            b.small
        );

        // Search finds the canonical casing; pages link onward with absolute URLs.
        let found: Value = c
            .get(format!("{url}/api/models?search=BLOBS"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(found[0]["id"], BLOBS);
    });

    let addrs = [hub.addr(), hub.cdn_addr()];
    hub.stop();
    for addr in addrs {
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
            "{addr} still accepts connections after stop"
        );
    }
}

#[test]
fn tree_pages_link_onward_until_done() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, _) = blobs_repo(tmp.path());
    let hub = HubFixture::start(
        vec![repo],
        FixtureOptions {
            page_size: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let mut next = Some(format!(
            "{}/api/models/{BLOBS}/tree/main?recursive=True&expand=false",
            hub.url()
        ));
        let mut paths = Vec::new();
        let mut pages = 0;
        while let Some(u) = next.take() {
            let resp = c.get(&u).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            if let Some(link) = resp.headers().get("link") {
                let link = link.to_str().unwrap();
                assert!(link.ends_with(">; rel=\"next\""), "{link}");
                let target = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string();
                assert!(
                    target.starts_with(&hub.url()) && target.contains("recursive=True"),
                    "{target}"
                );
                next = Some(target);
            }
            let page: Value = resp.json().await.unwrap();
            assert!(page.as_array().unwrap().len() <= 2);
            paths.extend(
                page.as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["path"].as_str().unwrap().to_string()),
            );
            pages += 1;
        }
        assert_eq!(pages, 3);
        assert_eq!(
            paths,
            [
                "sub",
                "sub/big.bin",
                "weights",
                "weights/model.safetensors",
                "small.txt"
            ]
        );
        let shallow: Value = c
            .get(format!("{}/api/models/{BLOBS}/tree/main/sub", hub.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(shallow[0]["path"], "sub/big.bin");
        assert_eq!(shallow[0]["type"], "file");
        assert!(shallow[0].get("xetHash").is_none());
    });
}

#[test]
fn rate_limit_is_shared_by_all_bodies() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, b) = blobs_repo(tmp.path());
    let rate = 1024 * 1024;
    let hub = HubFixture::start(
        vec![repo],
        FixtureOptions {
            rate_limit: Some(rate),
            ..Default::default()
        },
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{}/{BLOBS}/resolve/main/sub/big.bin", hub.url());
    let elapsed = rt.block_on(async {
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let start = Instant::now();
        let one = async { c.get(&url).send().await.unwrap().bytes().await.unwrap() };
        let (x, y) = tokio::join!(one, async {
            c.get(&url).send().await.unwrap().bytes().await.unwrap()
        });
        assert_eq!(x, b.big);
        assert_eq!(y, b.big);
        start.elapsed()
    });
    // 600 KiB at 1 MiB/s, less one chunk of burst: never faster than ~0.52 s in total.
    let floor = (2 * b.big.len() as u64 - 64 * 1024) as f64 / rate as f64;
    assert!(
        elapsed.as_secs_f64() >= floor * 0.9,
        "{elapsed:?} < {floor} s"
    );
}

#[test]
fn modelscope_routes_answer_in_modelscope_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo, b) = blobs_repo(tmp.path());
    let (gated, _) = gated_repo();
    let hub = HubFixture::start(vec![repo, gated], FixtureOptions::default()).unwrap();
    let commit = hub.commit(BLOBS, "main").unwrap();
    let api = format!("{}/api/v1/models/{BLOBS}", hub.url());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let get = |u: String| {
            let c = c.clone();
            async move { c.get(u).send().await.unwrap() }
        };

        let revs: Value = get(format!("{api}/revisions")).await.json().await.unwrap();
        assert_eq!(revs["Code"], 200);
        assert_eq!(revs["Success"], true);
        let branches = revs["Data"]["RevisionMap"]["Branches"].as_array().unwrap();
        let names: Vec<&str> = branches
            .iter()
            .map(|x| x["Revision"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["master", "main"]);
        assert_eq!(branches[0]["CommitId"], commit.as_str());
        assert!(branches[0]["CreatedAt"].as_u64().is_some());
        assert_eq!(revs["Data"]["RevisionMap"]["Tags"][0]["Revision"], "v1");

        let files: Value = get(format!("{api}/repo/files?Revision=master&Recursive=True"))
            .await
            .json()
            .await
            .unwrap();
        let list = files["Data"]["Files"].as_array().unwrap();
        let by_path: BTreeMap<&str, &Value> = list
            .iter()
            .map(|f| (f["Path"].as_str().unwrap(), f))
            .collect();
        assert_eq!(by_path.len(), 5);
        assert_eq!(by_path["sub"]["Type"], "tree");
        let small = by_path["small.txt"];
        assert_eq!(small["Type"], "blob");
        assert_eq!(small["Name"], "small.txt");
        assert_eq!(small["Size"], 1000);
        assert_eq!(small["Sha256"], sha256_hex(&b.small).as_str());
        assert_eq!(small["IsLFS"], false);
        let big = by_path["sub/big.bin"];
        assert_eq!(big["Name"], "big.bin");
        assert_eq!(big["IsLFS"], true);
        assert_eq!(big["Sha256"], sha256_hex(&b.big).as_str());
        let shallow: Value = get(format!("{api}/repo/files?Revision=master&Recursive=False"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(shallow["Data"]["Files"].as_array().unwrap().len(), 3);

        let part = c
            .get(format!("{api}/repo?Revision=master&FilePath=small.txt"))
            .header("Range", "bytes=100-")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.bytes().await.unwrap(), b.small[100..]);
        let redirect = get(format!("{api}/repo?Revision=master&FilePath=sub%2Fbig.bin")).await;
        assert_eq!(redirect.status(), 302);
        let cdn = get(header(&redirect, "location").to_string()).await;
        assert_eq!(
            header(&cdn, "x-linked-etag"),
            format!("\"{}\"", sha256_hex(&b.big))
        );
        assert_eq!(cdn.bytes().await.unwrap(), b.big);
        assert_eq!(hub.downloads(BLOBS, "sub/big.bin"), 1);

        for u in [
            format!("{api}/repo?Revision=master&FilePath=nope.txt"),
            format!("{api}/repo/files?Revision=nope"),
            format!("{}/api/v1/models/acme/blobs/revisions", hub.url()),
        ] {
            let resp = get(u.clone()).await;
            assert_eq!(resp.status(), 404, "{u}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["Success"], false, "{u}");
        }
        let denied = get(format!(
            "{}/api/v1/models/{GATED}/repo?Revision=master&FilePath=config.json",
            hub.url()
        ))
        .await;
        assert_eq!(denied.status(), 401);
    });
}

#[test]
fn synthetic_safetensors_open_with_safetensors_and_serve_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 3 * 1024 * 1024 + 123;
    let (path, sha) = synthetic_safetensors_with_sha256(tmp.path(), size).unwrap();
    let hub = HubFixture::start(
        vec![FixtureRepo::with_main(
            "bench/Synthetic",
            vec![FixtureFile::disk("model.safetensors", &path)
                .lfs()
                .with_sha256(&sha)],
        )],
        FixtureOptions::default(),
    )
    .unwrap();
    assert_eq!(
        hub.file("bench/Synthetic", "main", "model.safetensors")
            .unwrap()
            .sha256,
        sha
    );
    let code = "import json, sys, numpy\n\
                from huggingface_hub import hf_hub_download\n\
                from safetensors.numpy import load_file\n\
                p = hf_hub_download('bench/Synthetic', 'model.safetensors')\n\
                t = load_file(p)\n\
                print(json.dumps({'path': p, 'tensors': {k: [list(v.shape), str(v.dtype), float(v.min()), float(v.max())] for k, v in t.items()}}))";
    let out = run_with_timeout(
        python(&hub.url(), &tmp.path().join("home")).args(["-c", code]),
        Duration::from_secs(120),
    )
    .unwrap();
    let r: Value = serde_json::from_str(out.stdout_str().trim()).unwrap();
    let got = std::fs::read(r["path"].as_str().unwrap()).unwrap();
    assert_eq!(sha256_hex(&got), sha);
    let tensors = r["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), 1);
    let t = &tensors["layers.0.weight"];
    assert_eq!(t[0][1], 1024);
    assert_eq!(t[1], "float32");
    assert!(
        t[2].as_f64().unwrap() >= 1.0 && t[3].as_f64().unwrap() < 2.0,
        "{t}"
    );
    let data = t[0][0].as_u64().unwrap() * 1024 * 4;
    assert!(data <= size && data + 8192 > size);
}

#[test]
fn modelscope_sdk_downloads_minilm_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (gated, _) = gated_repo();
    let hub = HubFixture::start(
        vec![minilm_repo().unwrap(), gated],
        FixtureOptions::default(),
    )
    .unwrap();
    let expected = package_files();
    let results = tmp.path().join("results.json");
    let mut cmd = Command::new("python3");
    for var in [
        "MODELSCOPE_API_TOKEN",
        "MODELSCOPE_ENDPOINT",
        "MODELSCOPE_DOMAIN",
        "MODELSCOPE_CACHE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", tmp.path())
        .env("MODELSCOPE_CACHE", tmp.path().join("cache"))
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .arg(script("ms_fixture_client.py"))
        .arg(hub.url())
        .arg(MINILM_ID)
        .arg(GATED)
        .arg(tmp.path().join("out"))
        .arg(&results);
    run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap();
    let r: Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();

    let revisions: Vec<&str> = r["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["Revision"].as_str().unwrap())
        .collect();
    assert!(revisions.contains(&"master"), "{revisions:?}");
    let mut listed = BTreeSet::new();
    for f in r["files"].as_array().unwrap() {
        let path = f["path"].as_str().unwrap();
        if f["type"] == "tree" {
            assert_eq!(path, "1_Pooling");
        } else {
            let bytes = &expected[path];
            assert_eq!(f["size"].as_u64().unwrap(), bytes.len() as u64, "{path}");
            assert_eq!(f["sha256"], sha256_hex(bytes).as_str(), "{path}");
        }
        listed.insert(path.to_string());
    }
    assert_eq!(listed.len(), expected.len() + 1);

    assert_same_files(Path::new(r["snapshot"].as_str().unwrap()), &expected);
    assert_eq!(
        std::fs::read(r["single"].as_str().unwrap()).unwrap(),
        expected["1_Pooling/config.json"]
    );
    for (key, class) in [
        ("missing_file", "NotExistError"),
        ("missing_revision", "NotExistError"),
        ("gated", "AuthenticationError"),
    ] {
        assert_eq!(
            r["errors"][key]["class"], class,
            "{key}: {}",
            r["errors"][key]
        );
    }
    // The weights came once, from the CDN host, through the redirect.
    assert_eq!(hub.downloads(MINILM_ID, "model.safetensors"), 1);
    assert!(hub
        .requests()
        .iter()
        .any(|q| q.host == FixtureHost::Cdn && q.status == 200));
    assert_eq!(hub.downloads(GATED, "config.json"), 0);
    hub.stop();
}

/// The bench starts the fixture from async code: starting, serving and stopping must not need a
/// blocking context.
#[tokio::test]
async fn starts_serves_and_stops_inside_a_tokio_runtime() {
    let hub = HubFixture::start(
        vec![FixtureRepo::with_main(
            "acme/Tiny",
            vec![FixtureFile::bytes("a.txt", &b"a"[..])],
        )],
        FixtureOptions::default(),
    )
    .unwrap();
    let c = client();
    let info: Value = c
        .get(format!("{}/api/models/acme/Tiny", hub.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        info["sha"],
        hub.commit("acme/Tiny", "main").unwrap().as_str()
    );
    let addr = hub.addr();
    hub.stop();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
