//! The Hugging Face facade (`/hf` of `manta serve`) with the real `huggingface_hub` client in
//! front and the hub fixture behind: downloads are byte for byte the original files, each file
//! leaves the hub once, a stopped hub does not stop a download of what the node holds, listings
//! equal the hub's own, ranges work, errors carry the hub's `X-Error-Code` so the client raises
//! its own exception classes, and no Xet header ever reaches the client.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::hub_agent::*;
use manta_conformance::hub_fixture::{minilm_repo, FixtureOptions, MINILM_COMMIT, MINILM_ID};
use serde_json::{json, Value};

/// Check what `hf_facade_client.py download` returned: the snapshot and the single file are
/// the original files, and a raw HEAD of a resolve URL has the headers the client needs and no
/// Xet header.
fn check_download(r: &Value, pkg: &Package, context: &str) {
    let snapshot = std::path::PathBuf::from(r["snapshot"].as_str().unwrap());
    assert!(
        snapshot.ends_with(format!("snapshots/{MINILM_COMMIT}")),
        "{context}: {snapshot:?}"
    );
    pkg.assert_same_files(&snapshot, context);
    let single = r["single"].as_str().unwrap();
    assert!(single.contains(MINILM_COMMIT), "{context}: {single}");
    assert_eq!(
        sha256_hex(&std::fs::read(single).unwrap()),
        pkg.file("1_Pooling/config.json").sha256,
        "{context}: hf_hub_download of 1_Pooling/config.json"
    );
    for (path, lfs) in [("model.safetensors", true), ("config.json", false)] {
        let head = &r["head"][path];
        assert_eq!(head["status"], 200, "{context}: HEAD {path}: {head}");
        let h = head["headers"].as_object().unwrap();
        let get = |k: &str| {
            h.get(k)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{context}: HEAD {path} has no {k}: {head}"))
        };
        let f = pkg.file(path);
        assert_eq!(get("x-repo-commit"), MINILM_COMMIT, "{context}: {path}");
        let etag = if lfs {
            f.sha256.clone()
        } else {
            git_blob_id(&pkg.read(path))
        };
        assert_eq!(get("etag"), format!("\"{etag}\""), "{context}: {path}");
        assert_eq!(
            get("content-length"),
            f.size.to_string(),
            "{context}: {path}"
        );
        assert_eq!(get("accept-ranges"), "bytes", "{context}: {path}");
        for (k, v) in h {
            assert!(!k.starts_with("x-xet"), "{context}: HEAD {path} sent {k}");
            if k == "link" {
                assert!(
                    !v.as_str().unwrap_or("").contains("xet"),
                    "{context}: HEAD {path} sent Link {v}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_download_through_the_facade_then_from_the_cache_alone() {
    let pkg = Package::minilm();
    let mut env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let cfg = json!({
        "repo": MINILM_ID,
        "single": "1_Pooling/config.json",
        "head": ["model.safetensors", "config.json"],
    });

    let first = facade_client(&env.facade(), &env.scratch("first"), "download", &cfg);
    check_download(&first, &pkg, "through the facade");
    // Every file left the hub once, whatever the client asked twice (HEADs, two caches).
    for path in pkg.files.keys() {
        assert_eq!(env.hub().downloads(MINILM_ID, path), 1, "{path}");
    }

    // The hub goes away: a fresh client cache is filled from the agent's alone.
    env.stop_hub();
    let second = facade_client(&env.facade(), &env.scratch("second"), "download", &cfg);
    check_download(&second, &pkg, "with the hub stopped");
}

/// A tree entry as the client parsed it, keyed by path.
fn tree_by_path(r: &Value) -> BTreeMap<String, Value> {
    r["tree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn facade_tree_equals_the_hubs_and_ranges_are_served() {
    let pkg = Package::minilm();
    let env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let cfg = json!({ "repo": MINILM_ID });

    let direct = tree_by_path(&facade_client(
        &env.hub().url(),
        &env.scratch("direct"),
        "tree",
        &cfg,
    ));
    let facade = tree_by_path(&facade_client(
        &env.facade(),
        &env.scratch("facade"),
        "tree",
        &cfg,
    ));
    // The reference listing is the package's files and their one directory.
    let files: Vec<&String> = direct
        .iter()
        .filter(|(_, e)| e["kind"] == "RepoFile")
        .map(|(p, _)| p)
        .collect();
    assert_eq!(files, pkg.files.keys().collect::<Vec<_>>());
    assert_eq!(
        direct.keys().collect::<Vec<_>>(),
        facade.keys().collect::<Vec<_>>(),
        "paths"
    );
    for (path, want) in &direct {
        let got = &facade[path];
        assert_eq!(got["kind"], want["kind"], "{path}");
        assert_eq!(
            got["lfs"], want["lfs"],
            "{path}: lfs (sha256, size, pointer size)"
        );
        assert_eq!(got["oid"], want["oid"], "{path}: git id");
        if want["kind"] == "RepoFile" {
            assert_eq!(got["size"], want["size"], "{path}: size");
            assert_eq!(got["size"].as_u64().unwrap(), pkg.file(path).size, "{path}");
        }
    }
    let lfs = &facade["model.safetensors"]["lfs"];
    assert_eq!(lfs["sha256"], pkg.file("model.safetensors").sha256.as_str());

    // Ranges: a cold LFS file (streaming in) and a small file (hashed, held).
    let c = client();
    for path in ["model.safetensors", "tokenizer.json"] {
        let url = format!("{}/{MINILM_ID}/resolve/main/{path}", env.facade());
        let a = send(c.get(&url).header("Range", "bytes=10-99"))
            .await
            .unwrap();
        assert_eq!(a.status, 206, "{path}: {}", a.text());
        let size = pkg.file(path).size;
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes 10-99/{size}").as_str()),
            "{path}"
        );
        assert_eq!(a.header("content-length"), Some("90"), "{path}");
        assert_eq!(a.header("x-repo-commit"), Some(MINILM_COMMIT), "{path}");
        assert!(
            a.body == pkg.read_range(path, 10, 90),
            "{path}: bytes 10-99"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn facade_errors_carry_the_hubs_error_codes() {
    let env = HubAgent::start(vec![minilm_repo().unwrap()], FixtureOptions::default(), &[]);
    let c = client();
    let f = env.facade();
    let missing_repo = "acme/No-Such-Model";
    let cases = [
        (
            "GET",
            format!("{f}/api/models/{missing_repo}"),
            "RepoNotFound",
        ),
        (
            "GET",
            format!("{f}/api/models/{missing_repo}/revision/main"),
            "RepoNotFound",
        ),
        (
            "HEAD",
            format!("{f}/{missing_repo}/resolve/main/config.json"),
            "RepoNotFound",
        ),
        (
            "GET",
            format!("{f}/api/models/{MINILM_ID}/revision/no-such-branch"),
            "RevisionNotFound",
        ),
        (
            "HEAD",
            format!("{f}/{MINILM_ID}/resolve/no-such-branch/config.json"),
            "RevisionNotFound",
        ),
        (
            "GET",
            format!("{f}/{MINILM_ID}/resolve/no-such-branch/config.json"),
            "RevisionNotFound",
        ),
        (
            "HEAD",
            format!("{f}/{MINILM_ID}/resolve/main/no-such-file.txt"),
            "EntryNotFound",
        ),
        (
            "GET",
            format!("{f}/{MINILM_ID}/resolve/main/no-such-file.txt"),
            "EntryNotFound",
        ),
        (
            "GET",
            format!("{f}/api/models/{MINILM_ID}/tree/main/no-such-dir"),
            "EntryNotFound",
        ),
    ];
    for (method, url, code) in &cases {
        let req = match *method {
            "HEAD" => c.head(url),
            _ => c.get(url),
        };
        let a = send(req).await.unwrap();
        assert_eq!(a.status, 404, "{method} {url}: {}", a.text());
        assert_eq!(a.header("x-error-code"), Some(*code), "{method} {url}");
        assert!(
            a.header("x-error-message").is_some_and(|m| !m.is_empty()),
            "{method} {url}: no X-Error-Message"
        );
        if *method == "GET" {
            let body = a.json();
            assert!(
                body["error"].as_str().is_some_and(|m| !m.is_empty()),
                "{method} {url}: {body}"
            );
        }
    }

    // What the client makes of them.
    let r = facade_client(
        &env.facade(),
        &env.scratch("errors"),
        "errors",
        &json!({
            "repo": MINILM_ID,
            "missing_repo": missing_repo,
            "missing_revision": "no-such-branch",
            "missing_file": "no-such-file.txt",
        }),
    );
    let class = |k: &str| {
        r["errors"][k]["class"]
            .as_str()
            .unwrap_or_else(|| panic!("{k} did not fail: {}", r["errors"][k]))
            .to_string()
    };
    assert_eq!(class("missing_repo"), "RepositoryNotFoundError");
    assert_eq!(class("missing_repo_info"), "RepositoryNotFoundError");
    assert_eq!(class("missing_revision"), "RevisionNotFoundError");
    assert_eq!(class("missing_revision_info"), "RevisionNotFoundError");
    let entry = class("missing_entry");
    assert!(entry.ends_with("EntryNotFoundError"), "{entry}");
}
