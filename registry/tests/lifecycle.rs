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
