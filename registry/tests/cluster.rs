//! The cluster listener: every request needs the cluster token, and it offers blob reads by
//! digest and the operator's admin API, nothing else. Through real sockets and the `manta` CLI.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{bytes, client, push_blob, start};
use manta_conformance::server::MantaServer;
use manta_conformance::upstream_fixtures::{FakeMode, FakeUpstream, UpstreamConfig};

const TOKEN: &str = "cluster-token-0123456789abcdef";

fn start_cluster(dir: &Path, token: &str, extra: &[&str]) -> MantaServer {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut args = vec![
        "--cluster-listen",
        "127.0.0.1:0",
        "--cluster-token-file",
        token_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let m = start(&dir.join("data"), &args);
    assert!(m.cluster_url().is_some());
    m
}

fn code_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_listener_refuses_every_request_without_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start_cluster(tmp.path(), TOKEN, &[]);
    let cluster = m.cluster_url().unwrap();
    let c = client();
    let digest = push_blob(&c, &m.url(), "team/app", &bytes(1000, 1)).await;
    for path in [
        format!("/manta/v1/blobs/{digest}"),
        "/manta/v1/cache".to_string(),
        "/manta/v1/pins".to_string(),
        "/metrics".to_string(),
        "/v2/".to_string(),
        "/nothing/here".to_string(),
    ] {
        for auth in [
            None,
            Some("Bearer wrong-token-0123456789abcdef".to_string()),
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Basic {TOKEN}")),
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        ] {
            let mut req = c.get(format!("{cluster}{path}"));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} with {auth:?}");
            assert_eq!(
                r.headers()["www-authenticate"],
                "Bearer realm=\"manta-cluster\""
            );
            let body = r.text().await.unwrap();
            assert_eq!(code_of(&body), "UNAUTHORIZED", "{body}");
            assert!(!body.contains(TOKEN));
        }
    }
    // A push with a body (sent whole in one write) gets its 401, not a reset.
    let r = c
        .post(format!(
            "{cluster}/v2/team/app/blobs/uploads/?digest={digest}"
        ))
        .body(bytes(2 << 20, 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The token never reaches the logs.
    let r = c
        .get(format!("{cluster}/manta/v1/cache"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!m.logs().contains(TOKEN), "the token was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_listener_offers_blob_reads_and_the_admin_api_only() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start_cluster(tmp.path(), TOKEN, &[]);
    let cluster = m.cluster_url().unwrap();
    let c = client();
    let blob = bytes(3 << 20, 5);
    let digest = push_blob(&c, &m.url(), "team/app", &blob).await;
    let get = |path: &str| c.get(format!("{cluster}{path}")).bearer_auth(TOKEN);

    // Blob reads by digest, whole, ranged and HEAD.
    let r = get(&format!("/manta/v1/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert!(r.bytes().await.unwrap() == blob);
    let r = get(&format!("/manta/v1/blobs/{digest}"))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{}", blob.len()).as_str()
    );
    assert!(r.bytes().await.unwrap() == blob[1000..2000]);
    let r = c
        .head(format!("{cluster}/manta/v1/blobs/{digest}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        blob.len().to_string().as_str()
    );
    let unknown = common::sha256(b"not here");
    let r = get(&format!("/manta/v1/blobs/{unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code_of(&r.text().await.unwrap()), "BLOB_UNKNOWN");
    for bad in ["sha256:zz", "..%2F..%2Fetc%2Fpasswd", "sha256:..%2F..%2Fdb"] {
        let r = get(&format!("/manta/v1/blobs/{bad}")).send().await.unwrap();
        assert!(
            r.status() == 400 || r.status() == 404,
            "{bad}: {}",
            r.status()
        );
    }

    // The admin API the operator uses.
    let r = get("/manta/v1/cache").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let pin = serde_json::json!({"reference": format!("team/app@{digest}")});
    let r = c
        .put(format!("{cluster}/manta/v1/pins/op-pin"))
        .bearer_auth(TOKEN)
        .json(&pin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = get("/manta/v1/pins").send().await.unwrap();
    assert!(r.text().await.unwrap().contains("op-pin"));
    let r = c
        .delete(format!("{cluster}/manta/v1/pins/op-pin"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // Metrics, for Prometheus (with the token, like everything here).
    let r = get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("manta_cache_capacity_bytes"));

    // Nothing else: no registry API, no facade, no deletes, no gc or verify.
    use reqwest::Method as M;
    for (method, path) in [
        (M::GET, "/v2/".to_string()),
        (M::GET, format!("/v2/team/app/blobs/{digest}")),
        (M::HEAD, format!("/v2/team/app/blobs/{digest}")),
        (M::POST, "/v2/team/app/blobs/uploads/".to_string()),
        (M::PUT, "/v2/team/app/manifests/v1".to_string()),
        (M::DELETE, format!("/v2/team/app/blobs/{digest}")),
        (M::DELETE, format!("/manta/v1/blobs/{digest}")),
        (M::PUT, format!("/manta/v1/blobs/{digest}")),
        (M::DELETE, format!("/manta/v1/cache/team/app@{digest}")),
        (M::POST, "/manta/v1/gc".to_string()),
        (M::POST, "/manta/v1/verify".to_string()),
        (M::GET, "/hf/api/models/org/name".to_string()),
        (M::POST, "/metrics".to_string()),
        (M::GET, "/readyz".to_string()),
    ] {
        let r = c
            .request(method.clone(), format!("{cluster}{path}"))
            .bearer_auth(TOKEN)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 404 || r.status() == 405,
            "{method} {path} answered {}",
            r.status()
        );
    }
    // The blob is still there and intact, read through the loopback listener.
    let r = c
        .get(format!("{}/v2/team/app/blobs/{digest}", m.url()))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == blob);
}

#[test]
fn a_blob_the_node_lacks_is_never_fetched_for_a_cluster_caller() {
    // The fake runs a runtime of its own: started outside the test's.
    let fake = FakeUpstream::start(FakeMode::Normal).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(never_fetched(&fake));
}

async fn never_fetched(fake: &FakeUpstream) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = UpstreamConfig::default()
        .alias("up1", &fake.url())
        .write(&tmp.path().join("cfg"))
        .unwrap();
    let m = start_cluster(tmp.path(), TOKEN, &["--config", cfg.to_str().unwrap()]);
    let cluster = m.cluster_url().unwrap();
    let c = client();
    let (layer, bytes_of_layer) = &fake.image().layers[0];
    let r = c
        .get(format!("{cluster}/manta/v1/blobs/{layer}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        fake.requests().is_empty(),
        "a cluster read reached the upstream"
    );
    // Once the node holds it (a local pull), peers can read it.
    let r = c
        .get(format!(
            "{}/v2/up1/{}/blobs/{layer}",
            m.url(),
            fake.image().repo
        ))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == bytes_of_layer[..]);
    let held = common::eventually(Duration::from_secs(10), || {
        common::blob_file(m.data_dir(), layer).exists()
    })
    .await;
    assert!(held);
    let r = c
        .get(format!("{cluster}/manta/v1/blobs/{layer}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == bytes_of_layer[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_rotates_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start_cluster(tmp.path(), TOKEN, &[]);
    let cluster = m.cluster_url().unwrap();
    let token_file = tmp.path().join("token");
    let c = client();
    let status = |t: &'static str| {
        let (c, url) = (c.clone(), format!("{cluster}/manta/v1/cache"));
        async move {
            c.get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    const NEW: &str = "rotated-token-abcdef0123456789";
    assert_eq!(status(NEW).await, 401);
    // As a Kubernetes Secret volume does it: a new file swapped in by a symlink rename.
    let swap = |text: String| {
        let fresh = tmp.path().join(format!("token.{}", uuid_like()));
        std::fs::write(&fresh, text).unwrap();
        std::fs::rename(&fresh, &token_file).unwrap();
    };
    swap(format!("{NEW}\n{TOKEN}\n"));
    let mut both = false;
    for _ in 0..100 {
        if status(NEW).await == 200 {
            both = status(TOKEN).await == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(both, "during a rotation both tokens must work");
    swap(format!("{NEW}\n"));
    let mut old_refused = false;
    for _ in 0..100 {
        if status(TOKEN).await == 401 {
            old_refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(old_refused, "the removed token still works");
    assert_eq!(status(NEW).await, 200);

    // The CLI reaches the cluster listener with --token-file, and says why it cannot without.
    let manta = env!("CARGO_BIN_EXE_manta");
    let out = Command::new(manta)
        .args(["ls", "--server", &cluster, "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(manta)
        .args(["ls", "--server", &cluster])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("manta: ") && err.contains("401"), "{err}");
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn a_cluster_listener_without_a_usable_token_does_not_start() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "short\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_manta"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg("--cluster-token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds no token of at least 16"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_manta"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A blob that streams through uncached (no room) for a client of the node is not offered to
/// peers: following it would make the node fetch it again for the caller.
#[test]
fn a_blob_passed_through_for_a_local_client_is_not_fetched_for_a_peer() {
    let fake = FakeUpstream::start(FakeMode::Trickle).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(passed_through_not_for_peers(&fake));
}

async fn passed_through_not_for_peers(fake: &FakeUpstream) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = UpstreamConfig::default()
        .alias("up1", &fake.url())
        .write(&tmp.path().join("cfg"))
        .unwrap();
    let m = start_cluster(
        tmp.path(),
        TOKEN,
        &["--config", cfg.to_str().unwrap(), "--capacity", "2MiB"],
    );
    let cluster = m.cluster_url().unwrap();
    let c = client();
    // Pushed content (never evicted) fills the cache: upstream blobs stream through.
    push_blob(&c, &m.url(), "local/filler", &bytes(1900 << 10, 9)).await;
    let (layer, layer_bytes) = fake.image().layers[1].clone();
    let local = {
        let url = format!("{}/v2/up1/{}/blobs/{layer}", m.url(), fake.image().repo);
        let c = c.clone();
        tokio::spawn(async move { c.get(url).send().await.unwrap().bytes().await.unwrap() })
    };
    // While the local client's bytes trickle through, a peer asks for the same digest.
    let started = common::eventually(Duration::from_secs(10), || fake.blob_gets(&layer) >= 1).await;
    assert!(started);
    let r = c
        .get(format!("{cluster}/manta/v1/blobs/{layer}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(local.await.unwrap() == layer_bytes[..]);
    assert!(
        !common::blob_file(m.data_dir(), &layer).exists(),
        "it was kept"
    );
    assert_eq!(
        fake.blob_gets(&layer),
        1,
        "the peer's read made the node fetch"
    );
}
