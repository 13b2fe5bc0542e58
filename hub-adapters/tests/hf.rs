//! The Hugging Face adapter against a stand-in hub (and a stand-in CDN) on 127.0.0.1.
#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use common::{
    after, collect, config, content, cut_short, json, json_with, mock, ranged, redirect, status,
};
use manta_hub::hf::HfAdapter;
use manta_hub::{HubAdapter, HubError, HubKind};
use serde_json::json;

const COMMIT: &str = "7ae557604adf67be50417f59c2c2f167def9a775";
const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

fn hf(endpoint: &str, token: Option<&str>) -> HfAdapter {
    HfAdapter::new(config(endpoint, token)).unwrap()
}

fn file(path: &str, size: u64) -> serde_json::Value {
    json!({"type": "file", "oid": "1111111111111111111111111111111111111111", "size": size, "path": path})
}

fn lfs(path: &str, size: u64, sha: &str) -> serde_json::Value {
    json!({"type": "file", "oid": "2222222222222222222222222222222222222222", "size": size, "path": path,
           "lfs": {"oid": sha, "size": size, "pointerSize": 134}, "xetHash": "ignored"})
}

#[tokio::test]
async fn resolve_follows_three_tree_pages() {
    let tree = format!("/api/models/Org/Model/tree/{COMMIT}");
    let hub = mock(move |req, base| match req.path.as_str() {
        "/api/models/org/model/revision/refs%2Fpr%2F1" => {
            json(json!({"id": "Org/Model", "sha": COMMIT, "siblings": []}))
        }
        p if p == tree => {
            let next = |cursor: &str| {
                vec![("link", format!("<{base}{tree}?recursive=true&expand=false&cursor={cursor}>; rel=\"next\""))]
            };
            match req.param("cursor").as_deref() {
                None => json_with(
                    &next("p2"),
                    json!([file(".gitattributes", 1519), {"type": "directory", "oid": "3333333333333333333333333333333333333333", "size": 0, "path": "1_Pooling"}, file("1_Pooling/config.json", 190)]),
                ),
                Some("p2") => json_with(&next("p3"), json!([lfs("model.safetensors", 90_868_376, SHA_A)])),
                Some("p3") => json(json!([file("config.json", 612), lfs("big/model.bin", 5, SHA_B)])),
                other => panic!("unexpected cursor {other:?}"),
            }
        }
        other => panic!("unexpected path {other}"),
    })
    .await;

    let resolved = hf(&hub.url, None)
        .resolve("org/model", "refs/pr/1")
        .await
        .unwrap();
    assert_eq!(resolved.repo, "Org/Model");
    assert_eq!(resolved.commit, COMMIT);
    let paths: Vec<&str> = resolved.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            ".gitattributes",
            "1_Pooling/config.json",
            "big/model.bin",
            "config.json",
            "model.safetensors"
        ]
    );
    let model = &resolved.files[4];
    assert_eq!(model.size, 90_868_376);
    assert_eq!(model.sha256.as_deref(), Some(SHA_A));
    assert_eq!(
        model.oid.as_deref(),
        Some("2222222222222222222222222222222222222222")
    );
    assert_eq!(
        resolved.files[2].sha256.as_deref(),
        Some(SHA_B.to_ascii_lowercase().as_str())
    );
    assert_eq!(resolved.files[3].sha256, None);
    assert_eq!(
        resolved.files[3].oid.as_deref(),
        Some("1111111111111111111111111111111111111111")
    );

    let pages = hub.seen_at(&format!("/api/models/Org/Model/tree/{COMMIT}"));
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0].param("recursive").as_deref(), Some("true"));
    assert_eq!(pages[0].param("expand").as_deref(), Some("false"));
    assert!(pages
        .iter()
        .all(|p| p.user_agent.as_deref() == Some("manta-test/1")));
}

#[tokio::test]
async fn lying_tree_paths_are_refused() {
    for evil in [
        "../escape.bin",
        "/etc/passwd",
        "a/../../b",
        "./x",
        "a//b",
        "a\\b",
        "dir/",
        "a/\0b",
        "",
    ] {
        let evil_owned = evil.to_owned();
        let hub = mock(move |req, _| match req.path.as_str() {
            "/api/models/org/model/revision/main" => {
                json(json!({"id": "org/model", "sha": COMMIT}))
            }
            _ => json(json!([file("ok.json", 1), file(&evil_owned, 1)])),
        })
        .await;
        match hf(&hub.url, None).resolve("org/model", "main").await {
            Err(HubError::Malformed(_)) => {}
            other => panic!("{evil:?} gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn lfs_redirect_to_another_host_drops_the_token() {
    let blob = content(300_000);
    let cdn_blob = blob.clone();
    let cdn = mock(move |req, _| ranged(&cdn_blob, req.range.as_deref())).await;
    let cdn_url = cdn.url.clone();
    let small = b"{\"hidden_size\": 896}".to_vec();
    let small_served = small.clone();
    let hub = mock(move |req, _| match req.path.as_str() {
        p if p.ends_with("/model.safetensors") => redirect(
            302,
            &format!("{cdn_url}/repos/ab/cd/blob?X-Amz-Signature=sig"),
        ),
        p if p.ends_with("/resolve/main/config.json") => {
            // Same host, relative Location, as huggingface.co does for non-LFS files.
            redirect(
                307,
                &format!("/api/resolve-cache/models/Org/Model/{COMMIT}/config.json"),
            )
        }
        p if p.starts_with("/api/resolve-cache/") => ranged(&small_served, req.range.as_deref()),
        other => panic!("unexpected path {other}"),
    })
    .await;
    let adapter = hf(&hub.url, Some("hf_secret"));

    let download = adapter
        .download("Org/Model", COMMIT, "model.safetensors", 0)
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (300_000, 300_000));
    assert_eq!(collect(download).await.unwrap(), blob);
    let at_hub = hub.seen_at(&format!("/Org/Model/resolve/{COMMIT}/model.safetensors"));
    assert_eq!(at_hub[0].auth.as_deref(), Some("Bearer hf_secret"));
    let at_cdn = cdn.seen();
    assert_eq!(at_cdn.len(), 1);
    assert_eq!(at_cdn[0].auth, None, "the CDN must not see the token");
    assert_eq!(at_cdn[0].query, "X-Amz-Signature=sig");

    // Ranged through the redirect: the Range header follows, the token does not.
    let download = adapter
        .download("Org/Model", COMMIT, "model.safetensors", 100_000)
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (200_000, 300_000));
    assert_eq!(collect(download).await.unwrap(), blob[100_000..]);
    let at_cdn = cdn.seen();
    assert_eq!(at_cdn[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(at_cdn[1].auth, None);

    // A range with an end: only those bytes are asked for.
    let download = adapter
        .download_range(
            "Org/Model",
            COMMIT,
            "model.safetensors",
            100_000,
            Some(150_000),
        )
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (50_000, 300_000));
    assert_eq!(collect(download).await.unwrap(), blob[100_000..150_000]);
    assert_eq!(cdn.seen()[2].range.as_deref(), Some("bytes=100000-149999"));

    // Same host: the token stays.
    let download = adapter
        .download("Org/Model", "main", "config.json", 0)
        .await
        .unwrap();
    assert_eq!(collect(download).await.unwrap(), small);
    let cached = hub.seen_at(&format!(
        "/api/resolve-cache/models/Org/Model/{COMMIT}/config.json"
    ));
    assert_eq!(cached[0].auth.as_deref(), Some("Bearer hf_secret"));
}

#[tokio::test]
async fn too_many_redirects_are_refused() {
    let hub = mock(|req, _| redirect(302, &format!("{}x", req.path))).await;
    match hf(&hub.url, None).download("a/b", COMMIT, "f", 0).await {
        Err(HubError::Malformed(m)) => assert!(m.contains("redirects"), "{m}"),
        other => panic!("{:?}", other.map(|d| d.len)),
    }
    assert_eq!(hub.seen().len(), 6, "the request and five hops");
}

#[tokio::test]
async fn a_broken_body_resumes_byte_identical() {
    let blob = content(1_000_000);
    let served = blob.clone();
    let hub = mock(move |req, _| match req.range.as_deref() {
        None => cut_short(200, &[], served.len(), served[..400_000].to_vec()),
        Some("bytes=400000-") => cut_short(
            206,
            &[(
                "content-range",
                format!("bytes 400000-999999/{}", served.len()),
            )],
            600_000,
            served[400_000..700_000].to_vec(),
        ),
        // This time the hub ignores the range: the adapter skips what it already has.
        Some("bytes=700000-") => served.to_vec().into_response(),
        Some(other) => panic!("unexpected range {other}"),
    })
    .await;
    let download = hf(&hub.url, None)
        .download("org/model", COMMIT, "model.bin", 0)
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (1_000_000, 1_000_000));
    assert!(collect(download).await.unwrap() == blob, "bytes differ");
    let ranges: Vec<Option<String>> = hub.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=400000-".to_owned()),
            Some("bytes=700000-".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_broken_range_resumes_within_its_end() {
    let blob = content(1_000_000);
    let served = blob.clone();
    let total = served.len();
    let hub = mock(move |req, _| match req.range.as_deref() {
        Some("bytes=100000-599999") => cut_short(
            206,
            &[("content-range", format!("bytes 100000-599999/{total}"))],
            500_000,
            served[100_000..300_000].to_vec(),
        ),
        Some("bytes=300000-599999") => ranged(&served, req.range.as_deref()),
        other => panic!("unexpected range {other:?}"),
    })
    .await;
    let download = hf(&hub.url, None)
        .download_range("org/model", COMMIT, "model.bin", 100_000, Some(600_000))
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (500_000, 1_000_000));
    assert!(
        collect(download).await.unwrap() == blob[100_000..600_000],
        "bytes differ"
    );
    assert_eq!(hub.seen().len(), 2);
}

#[tokio::test]
async fn a_body_that_keeps_breaking_gives_up_after_the_retries() {
    let blob = content(10_000);
    let hub = mock(move |req, _| match req.range {
        None => cut_short(200, &[], blob.len(), blob[..4_000].to_vec()),
        Some(_) => cut_short(
            206,
            &[("content-range", "bytes 4000-9999/10000".to_owned())],
            6_000,
            Vec::new(),
        ),
    })
    .await;
    let download = hf(&hub.url, None)
        .download("org/model", COMMIT, "model.bin", 0)
        .await
        .unwrap();
    let err = collect(download).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    // The first request and three resumes (`retries: 3`), none of which made progress.
    assert_eq!(hub.seen().len(), 4);
}

#[tokio::test]
async fn a_200_to_a_ranged_request_is_skipped_to_the_offset() {
    let blob = content(5_000);
    let served = blob.clone();
    let hub = mock(move |_, _| served.clone().into_response()).await;
    let download = hf(&hub.url, None)
        .download("org/model", COMMIT, "a/b c.bin", 1_234)
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (5_000 - 1_234, 5_000));
    assert_eq!(collect(download).await.unwrap(), blob[1_234..]);
    let seen = hub.seen();
    assert_eq!(
        seen[0].path,
        format!("/org/model/resolve/{COMMIT}/a/b%20c.bin")
    );
    assert_eq!(seen[0].range.as_deref(), Some("bytes=1234-"));
}

#[tokio::test]
async fn a_200_to_a_range_with_an_end_is_cut_at_the_end() {
    let blob = content(5_000);
    let served = blob.clone();
    let hub = mock(move |_, _| served.clone().into_response()).await;
    let download = hf(&hub.url, None)
        .download_range("org/model", COMMIT, "f", 1_234, Some(2_000))
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (766, 5_000));
    assert_eq!(collect(download).await.unwrap(), blob[1_234..2_000]);
    assert_eq!(hub.seen()[0].range.as_deref(), Some("bytes=1234-1999"));
}

#[tokio::test]
async fn a_hub_that_hides_the_size_in_a_bounded_answer_is_asked_for_the_rest() {
    let blob = content(5_000);
    let served = blob.clone();
    let hub = mock(move |req, _| match req.range.as_deref() {
        Some("bytes=1000-1999") => status(206, &[("content-range", "bytes 1000-1999/*")], ""),
        Some("bytes=1000-") => ranged(&served, Some("bytes=1000-")),
        other => panic!("unexpected range {other:?}"),
    })
    .await;
    let download = hf(&hub.url, None)
        .download_range("org/model", COMMIT, "f", 1_000, Some(2_000))
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (1_000, 5_000));
    assert_eq!(collect(download).await.unwrap(), blob[1_000..2_000]);
    assert_eq!(hub.seen().len(), 2);
}

#[tokio::test]
async fn a_206_from_the_wrong_offset_is_refused() {
    let hub = mock(|_, _| status(206, &[("content-range", "bytes 0-9/10")], "0123456789")).await;
    match hf(&hub.url, None)
        .download("org/model", COMMIT, "f", 5)
        .await
    {
        Err(HubError::Malformed(_)) => {}
        other => panic!("{:?}", other.map(|d| d.len)),
    }
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let info = || json(json!({"id": "org/model", "sha": COMMIT}));
    let limited = || {
        status(
            429,
            &[("retry-after", "1"), ("ratelimit", "\"api\";r=0;t=1")],
            "",
        )
    };
    let hub = mock(after(1, limited, info)).await;
    let started = Instant::now();
    assert_eq!(
        hf(&hub.url, None)
            .canonical_repo("org/model")
            .await
            .unwrap(),
        "org/model"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(hub.seen().len(), 2);

    // Still limited after every attempt: RateLimited, after exactly `retries` requests.
    let hub = mock(|_, _| status(429, &[("retry-after", "0")], "{\"error\": \"slow down\"}")).await;
    match hf(&hub.url, None).canonical_repo("org/model").await {
        Err(HubError::RateLimited(m)) => assert!(m.contains("slow down"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(hub.seen().len(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let info = || json(json!({"id": "org/model", "sha": COMMIT}));
    let hub = mock(after(2, || status(503, &[], "busy"), info)).await;
    assert_eq!(
        hf(&hub.url, None)
            .canonical_repo("org/model")
            .await
            .unwrap(),
        "org/model"
    );
    assert_eq!(hub.seen().len(), 3);

    let hub = mock(|_, _| status(502, &[], "bad gateway")).await;
    let err = hf(&hub.url, None)
        .canonical_repo("org/model")
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::Status { status: 502, .. }),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    assert_eq!(hub.seen().len(), 3);
}

#[tokio::test]
async fn error_codes_map_to_errors() {
    let hub = mock(|req, _| {
        let code = req.path.rsplit('/').next().unwrap().to_owned();
        match code.as_str() {
            "repo" => status(
                401,
                &[
                    ("x-error-code", "RepoNotFound"),
                    ("x-error-message", "Repository not found"),
                ],
                "",
            ),
            "revision" => status(
                404,
                &[
                    ("x-error-code", "RevisionNotFound"),
                    ("x-error-message", "Invalid rev id: nope"),
                ],
                "",
            ),
            "entry" => status(
                404,
                &[
                    ("x-error-code", "EntryNotFound"),
                    ("x-error-message", "Entry not found"),
                ],
                "",
            ),
            "gated" => status(
                401,
                &[("x-error-code", "GatedRepo")],
                "{\"error\": \"Access to model org/gated is restricted.\"}",
            ),
            "unapproved" => status(
                403,
                &[("x-error-code", "GatedRepo")],
                "{\"error\": \"Your request to access model org/gated is awaiting review.\"}",
            ),
            "private" => status(401, &[], ""),
            "forbidden" => status(
                403,
                &[],
                "{\"error\": \"token Bearer hf_secret has no read scope\"}",
            ),
            "plain404" => status(404, &[], "Not Found"),
            "teapot" => status(418, &[], ""),
            other => panic!("unexpected {other}"),
        }
    })
    .await;
    let adapter = hf(&hub.url, Some("hf_secret"));
    let get = |path: &'static str| {
        let adapter = &adapter;
        async move {
            adapter
                .download("org/model", COMMIT, path, 0)
                .await
                .err()
                .unwrap()
        }
    };
    assert!(
        matches!(get("repo").await, HubError::RepoNotFound(m) if m.contains("Repository not found"))
    );
    assert!(
        matches!(get("revision").await, HubError::RevisionNotFound(m) if m.contains("Invalid rev id"))
    );
    assert!(matches!(get("entry").await, HubError::EntryNotFound(_)));
    assert!(matches!(get("gated").await, HubError::Unauthorized(m) if m.contains("is restricted")));
    assert!(
        matches!(get("unapproved").await, HubError::Denied(m) if m.contains("awaiting review"))
    );
    assert!(matches!(get("private").await, HubError::Unauthorized(_)));
    match get("forbidden").await {
        HubError::Denied(m) => {
            assert!(m.contains("no read scope"), "{m}");
            assert!(!m.contains("hf_secret"), "the token leaked: {m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(get("plain404").await, HubError::EntryNotFound(m) if m.contains("Not Found")));
    assert!(matches!(
        get("teapot").await,
        HubError::Status { status: 418, .. }
    ));
    // Not retried: a definite answer.
    assert_eq!(
        hub.seen_at(&format!("/org/model/resolve/{COMMIT}/repo"))
            .len(),
        1
    );
}

#[tokio::test]
async fn error_messages_are_cut() {
    let long = "x".repeat(5_000);
    let hub = mock(move |_, _| {
        status(
            404,
            &[("x-error-code", "RepoNotFound")],
            &format!("{{\"error\": \"{long}\"}}"),
        )
    })
    .await;
    match hf(&hub.url, None).resolve("org/model", "main").await {
        Err(HubError::RepoNotFound(m)) => assert!(m.len() < 400, "{} chars", m.len()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn canonical_casing_from_search() {
    let hub = mock(|req, _| match req.path.as_str() {
        "/api/models/Qwen/Qwen2.5-0.5B-Instruct" => {
            json(json!({"id": "Qwen/Qwen2.5-0.5B-Instruct"}))
        }
        "/api/models/old/name" => redirect(307, "/api/models/New/Name"),
        "/api/models/New/Name" => json(json!({"id": "New/Name"})),
        "/api/models" => match (
            req.param("search").as_deref(),
            req.param("author").as_deref(),
        ) {
            (Some("qwen2.5-0.5b-instruct"), Some("qwen")) => json(json!([
                {"id": "Qwen/Qwen2.5-0.5B-Instruct-GGUF"},
                {"id": "Qwen/Qwen2.5-0.5B-Instruct"},
            ])),
            (Some("gpt2"), None) => json(json!([{"id": "openai-community/gpt2"}, {"id": "GPT2"}])),
            _ => json(json!([])),
        },
        _ => status(
            401,
            &[("x-error-code", "RepoNotFound")],
            "{\"error\": \"Repository Not Found\"}",
        ),
    })
    .await;
    let adapter = hf(&hub.url, None);
    assert_eq!(adapter.kind(), HubKind::Hf);
    assert_eq!(
        adapter
            .canonical_repo("qwen/qwen2.5-0.5b-instruct")
            .await
            .unwrap(),
        "Qwen/Qwen2.5-0.5B-Instruct"
    );
    assert_eq!(
        adapter
            .canonical_repo("Qwen/Qwen2.5-0.5B-Instruct")
            .await
            .unwrap(),
        "Qwen/Qwen2.5-0.5B-Instruct"
    );
    assert_eq!(adapter.canonical_repo("gpt2").await.unwrap(), "GPT2");
    assert_eq!(
        adapter.canonical_repo("old/name").await.unwrap(),
        "New/Name"
    );
    assert!(matches!(
        adapter.canonical_repo("nobody/nothing").await,
        Err(HubError::RepoNotFound(_))
    ));
    assert!(matches!(
        adapter.canonical_repo("a/b/c").await,
        Err(HubError::RepoNotFound(_))
    ));
    assert!(matches!(
        adapter.canonical_repo("../x").await,
        Err(HubError::RepoNotFound(_))
    ));
}

#[tokio::test]
async fn an_empty_file_is_an_empty_body() {
    let hub = mock(|_, _| Vec::<u8>::new().into_response()).await;
    let download = hf(&hub.url, None)
        .download("org/model", COMMIT, "empty.txt", 0)
        .await
        .unwrap();
    assert_eq!((download.len, download.size), (0, 0));
    assert!(collect(download).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_silent_hub_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut cfg = config(&url, Some("hf_secret"));
    cfg.timeout = Duration::from_millis(200);
    cfg.retries = 2;
    let started = Instant::now();
    let err = HfAdapter::new(cfg)
        .unwrap()
        .resolve("org/model", "main")
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Timeout(_)), "{err:?}");
    assert!(err.is_unavailable());
    assert!(started.elapsed() < Duration::from_secs(5));
}
