//! The ModelScope adapter against a stand-in hub on 127.0.0.1, answering in the shapes of
//! `modelscope/hub/api.py` (`{"Code":200,"Data":…,"Message":"success","Success":true}`).
#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use common::{collect, config, content, json, mock, ranged, status};
use manta_hub::ms::MsAdapter;
use manta_hub::{HubAdapter, HubError, HubKind};
use serde_json::{json, Value};

const SHA: &str = "5e8d0f14e1ad7b7d2b2da3ac35b5bbfb3a5d2b6a0c1cbb9bde3c4d2c1b0a9f8e";
const BRANCH_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn ok(data: Value) -> axum::response::Response {
    json(
        json!({"Code": 200, "Data": data, "Message": "success", "RequestId": "r", "Success": true}),
    )
}

fn revisions() -> axum::response::Response {
    ok(json!({"RevisionMap": {
        "Branches": [{"Revision": "master", "CreatedAt": 1700000000}, {"Revision": "dev", "CommitId": BRANCH_COMMIT}],
        "Tags": [{"Revision": "v1.0.0", "CreatedAt": 1710000000}],
    }}))
}

fn files() -> axum::response::Response {
    ok(json!({"Files": [
        {"Name": "model.safetensors", "Path": "model.safetensors", "Type": "blob", "Size": 988097824, "Sha256": SHA.to_uppercase(), "Revision": "abc", "IsLFS": true},
        {"Name": "1_Pooling", "Path": "1_Pooling", "Type": "tree", "Size": 0, "Sha256": ""},
        {"Name": "config.json", "Path": "1_Pooling/config.json", "Type": "blob", "Size": 190, "Sha256": ""},
        {"Name": ".gitattributes", "Path": ".gitattributes", "Type": "blob", "Size": 1519, "Sha256": ""},
        {"Name": "README.md", "Path": "README.md", "Type": "blob", "Size": 30, "Sha256": SHA},
    ]}))
}

fn ms(endpoint: &str, token: Option<&str>) -> MsAdapter {
    MsAdapter::new(config(endpoint, token)).unwrap()
}

#[tokio::test]
async fn resolve_default_revision_and_list_files() {
    let hub = mock(|req, _| match req.path.as_str() {
        "/api/v1/models/Qwen/Qwen2.5-0.5B-Instruct/revisions" => revisions(),
        "/api/v1/models/Qwen/Qwen2.5-0.5B-Instruct/repo/files" => files(),
        other => panic!("unexpected path {other}"),
    })
    .await;
    let adapter = ms(&hub.url, Some("ms-token"));
    assert_eq!(adapter.kind(), HubKind::Ms);

    let resolved = adapter
        .resolve("Qwen/Qwen2.5-0.5B-Instruct", "")
        .await
        .unwrap();
    assert_eq!(resolved.repo, "Qwen/Qwen2.5-0.5B-Instruct");
    assert_eq!(resolved.commit, "master");
    let listed: Vec<(&str, u64, Option<&str>)> = resolved
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.size, f.sha256.as_deref()))
        .collect();
    assert_eq!(
        listed,
        [
            ("1_Pooling/config.json", 190, None),
            ("README.md", 30, Some(SHA)),
            ("model.safetensors", 988097824, Some(SHA)),
        ]
    );
    let listing = hub.seen_at("/api/v1/models/Qwen/Qwen2.5-0.5B-Instruct/repo/files");
    assert_eq!(listing[0].param("Revision").as_deref(), Some("master"));
    assert_eq!(listing[0].param("Recursive").as_deref(), Some("True"));
    assert!(hub
        .seen()
        .iter()
        .all(|s| s.auth.as_deref() == Some("Bearer ms-token")));

    // A tag is its own commit; a branch that carries a CommitId resolves to it.
    assert_eq!(
        adapter
            .resolve("Qwen/Qwen2.5-0.5B-Instruct", "v1.0.0")
            .await
            .unwrap()
            .commit,
        "v1.0.0"
    );
    assert_eq!(
        adapter
            .resolve("Qwen/Qwen2.5-0.5B-Instruct", "dev")
            .await
            .unwrap()
            .commit,
        BRANCH_COMMIT
    );
    let listing = hub.seen_at("/api/v1/models/Qwen/Qwen2.5-0.5B-Instruct/repo/files");
    assert_eq!(listing[2].param("Revision").as_deref(), Some(BRANCH_COMMIT));
    match adapter.resolve("Qwen/Qwen2.5-0.5B-Instruct", "v9").await {
        Err(HubError::RevisionNotFound(_)) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ranged_download() {
    let blob = content(70_000);
    let served = blob.clone();
    let hub = mock(move |req, _| {
        assert_eq!(req.path, "/api/v1/models/AI-ModelScope/bge-small/repo");
        assert_eq!(req.param("Revision").as_deref(), Some("v1.0.0"));
        assert_eq!(
            req.param("FilePath").as_deref(),
            Some("1_Pooling/config.json")
        );
        ranged(&served, req.range.as_deref())
    })
    .await;
    let adapter = ms(&hub.url, None);
    let download = adapter
        .download(
            "AI-ModelScope/bge-small",
            "v1.0.0",
            "1_Pooling/config.json",
            65_536,
        )
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (70_000 - 65_536, 70_000));
    assert_eq!(collect(download).await.unwrap(), blob[65_536..]);
    let seen = hub.seen();
    assert_eq!(seen[0].range.as_deref(), Some("bytes=65536-"));
    assert!(
        seen[0].query.contains("FilePath=1_Pooling%2Fconfig.json"),
        "{}",
        seen[0].query
    );
    assert_eq!(seen[0].auth, None);

    let whole = adapter
        .download(
            "AI-ModelScope/bge-small",
            "v1.0.0",
            "1_Pooling/config.json",
            0,
        )
        .await
        .unwrap();
    assert_eq!(collect(whole).await.unwrap(), blob);
    assert_eq!(hub.seen()[1].range, None);
}

#[tokio::test]
async fn errors_in_the_envelope_and_the_status() {
    let hub = mock(|req, _| match req.path.as_str() {
        "/api/v1/models/org/private/revisions" => json(json!({
            "Code": 10_010_101_004_i64, "Message": "get model info failed, err: unauthorized permission",
            "RequestId": "", "Success": false})),
        "/api/v1/models/org/gone/revisions" => status(404, &[], "{\"Code\":404,\"Message\":\"model not found\",\"Success\":false}"),
        "/api/v1/models/org/secret/revisions" => status(401, &[], "{\"Code\":401,\"Message\":\"login first\",\"Success\":false}"),
        "/api/v1/models/org/model/repo" => status(404, &[], ""),
        other => panic!("unexpected path {other}"),
    })
    .await;
    let adapter = ms(&hub.url, None);
    match adapter.resolve("org/private", "master").await {
        Err(HubError::Malformed(m)) => assert!(m.contains("unauthorized permission"), "{m}"),
        other => panic!("{other:?}"),
    }
    match adapter.resolve("org/gone", "master").await {
        Err(HubError::RepoNotFound(m)) => assert!(m.contains("model not found"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        adapter.resolve("org/secret", "master").await,
        Err(HubError::Unauthorized(_))
    ));
    assert!(matches!(
        adapter
            .download("org/model", "master", "missing.bin", 0)
            .await
            .err()
            .unwrap(),
        HubError::EntryNotFound(_)
    ));
    assert!(matches!(
        adapter.resolve("single", "master").await,
        Err(HubError::RepoNotFound(_))
    ));
}

#[tokio::test]
async fn lying_file_paths_are_refused() {
    let hub = mock(|req, _| match req.path.as_str() {
        "/api/v1/models/org/model/revisions" => revisions(),
        _ => ok(json!({"Files": [{"Name": "x", "Path": "../../x", "Type": "blob", "Size": 1, "Sha256": ""}]})),
    })
    .await;
    assert!(matches!(
        ms(&hub.url, None).resolve("org/model", "master").await,
        Err(HubError::Malformed(_))
    ));
}

#[tokio::test]
async fn canonical_repo_from_model_info() {
    let hub = mock(|req, _| match req.path.as_str() {
        "/api/v1/models/qwen/qwen2.5-0.5b-instruct" => {
            ok(json!({"Path": "Qwen", "Name": "Qwen2.5-0.5B-Instruct", "Id": 1}))
        }
        "/api/v1/models/org/bare" => ok(json!({"Id": 2})),
        _ => status(
            404,
            &[],
            "{\"Code\":404,\"Message\":\"not found\",\"Success\":false}",
        ),
    })
    .await;
    let adapter = ms(&hub.url, None);
    assert_eq!(
        adapter
            .canonical_repo("qwen/qwen2.5-0.5b-instruct")
            .await
            .unwrap(),
        "Qwen/Qwen2.5-0.5B-Instruct"
    );
    assert_eq!(
        adapter.canonical_repo("org/bare").await.unwrap(),
        "org/bare"
    );
    assert!(matches!(
        adapter.canonical_repo("org/none").await,
        Err(HubError::RepoNotFound(_))
    ));
}
