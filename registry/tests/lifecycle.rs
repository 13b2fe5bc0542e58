//! The agent's process contract: flags, health, metrics, graceful shutdown.
#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use common::*;

#[test]
fn help_explains_every_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "MANTA_LISTEN",
        "127.0.0.1:5000",
        "--data-dir",
        "MANTA_DATA_DIR",
        "--max-manifest-bytes",
        "--log-format",
        "--cluster-listen",
        "MANTA_CLUSTER_LISTEN",
        "--cluster-token-file",
        "--header-read-timeout-secs",
        "--idle-timeout-secs",
        "--stall-timeout-secs",
        "--max-connections",
        "--max-upload-sessions",
        "--hf-token-file",
        "--ms-token-file",
    ] {
        assert!(
            help.contains(flag),
            "`manta serve --help` does not mention {flag}:\n{help}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("serve"));
}

#[tokio::test]
async fn health_metrics_and_graceful_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut srv = start(&data, &[]);
    let (c, url) = (client(), srv.url());
    assert_eq!(
        c.get(format!("{url}/livez")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c.get(format!("{url}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let d = push_blob(&c, &url, "life/x", &bytes(4096, 1)).await;
    c.get(format!("{url}/v2/life/x/blobs/{d}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"manta_http_requests_total{route="blob",method="get",status="2xx"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("manta_blob_served_bytes_total 4096"),
        "{metrics}"
    );
    assert!(
        !metrics.contains(d.trim_start_matches("sha256:")),
        "a digest leaked into metric labels"
    );

    let status = srv.terminate().unwrap();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    assert!(srv.logs().contains("index flushed"), "{}", srv.logs());
    // It comes back with the blob.
    let srv = start(&data, &[]);
    let r = client()
        .get(format!("{}/v2/life/x/blobs/{d}", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn idle_upload_sessions_are_purged_with_their_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start(&data, &["--upload-ttl-secs", "1"]);
    let (c, url) = (client(), srv.url());
    let r = c
        .post(format!("{url}/v2/idle/x/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .patch(format!("{url}{loc}"))
        .body(bytes(1 << 20, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(files_under(&data.join("tmp/uploads")).len(), 1);
    let uploads = data.join("tmp/uploads");
    assert!(
        eventually(std::time::Duration::from_secs(30), || files_under(&uploads)
            .is_empty())
        .await,
        "idle session's bytes were not purged"
    );
    let r = c.get(format!("{url}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // A new session works as before.
    let d = push_blob(&c, &url, "idle/x", b"still serving").await;
    assert_eq!(
        c.head(format!("{url}/v2/idle/x/blobs/{d}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// The spec lets a client delete a layer of a tagged manifest, or a child of a tagged index;
/// `verify` (API and CLI) must then say the parent can no longer be pulled, not "all intact".
#[tokio::test]
async fn verify_reports_manifests_whose_layers_or_children_were_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(&tmp.path().join("data"), &[]);
    let (c, url) = (client(), srv.url());
    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    let config_d = push_blob(&c, &url, "team/app", &config).await;
    // A: tagged v1. B: a child of the index tagged multi.
    let mut manifests = Vec::new();
    for (seed, tag) in [(1, Some("v1")), (2, None)] {
        let layer = bytes(4096, seed);
        let layer_d = push_blob(&c, &url, "team/app", &layer).await;
        let m = image_manifest((&config_d, config.len()), &[(&layer_d, layer.len())]);
        let reference = sha256(&m);
        let r = put_manifest(&c, &url, "team/app", tag.unwrap_or(&reference), &m).await;
        assert_eq!(r.status(), 201);
        manifests.push((sha256(&m), m.len(), layer_d));
    }
    let (a, a_layer) = (manifests[0].0.clone(), manifests[0].2.clone());
    let (b, b_len) = (manifests[1].0.clone(), manifests[1].1);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": b, "size": b_len,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .unwrap();
    let r = c
        .put(format!("{url}/v2/team/app/manifests/multi"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let index_d = sha256(&index);
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
            .args(["verify", "--server", &url])
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all intact"));

    // Both deletes are allowed...
    let r = c
        .delete(format!("{url}/v2/team/app/blobs/{a_layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = c
        .delete(format!("{url}/v2/team/app/manifests/{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // ...and leave both parents unpullable, which verify reports.
    let report: serde_json::Value = c
        .post(format!("{url}/manta/v1/verify"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let missing_of = |m: &str| {
        report["dangling"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["manifest"] == m && d["repo"] == "team/app")
            .map(|d| d["missing"].clone())
            .unwrap_or_else(|| panic!("{m} is not reported: {report}"))
    };
    assert_eq!(missing_of(&a), serde_json::json!([a_layer]));
    assert_eq!(missing_of(&index_d), serde_json::json!([b]));
    let out = verify();
    assert_eq!(out.status.code(), Some(1), "verify must fail on damage");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("dangling  team/app@{a}: lacks {a_layer}"),
        format!("dangling  team/app@{index_d}: lacks {b}"),
    ] {
        assert!(text.contains(&line), "{line} not in:\n{text}");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line, no backtrace: {err}");
    assert!(err.starts_with("manta: verify found"), "{err}");
}

/// The CLI's failures: one line on stderr (never a backtrace, even with `RUST_BACKTRACE=1`),
/// and an exit code that says which failure: 2 unreachable agent, 3 refused or failed request
/// or bad configuration, 64 usage.
#[test]
fn cli_errors_are_one_line_with_an_exit_code_per_kind() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let tmp = tempfile::tempdir().unwrap();
    let bad_config = tmp.path().join("manta.toml");
    std::fs::write(&bad_config, "[upstream]\nno_such_field = 1\n").unwrap();
    let server = format!("http://127.0.0.1:{port}");
    let data = tmp.path().join("data");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["ls", "--server", &server],
            2,
            "cannot reach the Manta agent",
        ),
        (
            vec!["verify", "--server", &server],
            2,
            "cannot reach the Manta agent",
        ),
        (
            vec!["prefetch", "hf://org/name", "--server", &server],
            2,
            "cannot reach the Manta agent",
        ),
        (
            vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                "--config",
                bad_config.to_str().unwrap(),
            ],
            3,
            "no_such_field",
        ),
        (vec!["ls", "--no-such-flag"], 64, "--no-such-flag"),
    ];
    for (args, code, says) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_manta"))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("backtrace") && !err.contains("Stack"),
            "{args:?}: {err}"
        );
        if code != 64 {
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{args:?}: not one line: {err}"
            );
            assert!(err.starts_with("manta: "), "{args:?}: {err}");
        }
    }
}
