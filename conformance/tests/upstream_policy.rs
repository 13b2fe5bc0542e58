//! Upstream policy through HTTP: the allow-list answers `DENIED`, pull-through repositories are
//! read-only, and an upstream that asks to retry later (503 + `Retry-After`) is retried, not failed.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::time::{Duration, Instant};

use manta_conformance::server::MantaServer;
use manta_conformance::upstream_fixtures::{FakeMode, FakeUpstream, UpstreamConfig};

fn manta(dir: &std::path::Path, cfg: &UpstreamConfig) -> MantaServer {
    let config = cfg.write(&dir.join("cfg")).unwrap();
    MantaServer::start_in(&dir.join("data"), &["--config", config.to_str().unwrap()]).unwrap()
}

fn code_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not an OCI error: {body}"));
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn allow_list_and_read_only_repositories() {
    let fake = FakeUpstream::start(FakeMode::Normal).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = UpstreamConfig {
        allow: Some(vec!["docker.io".into()]),
        ..Default::default()
    }
    .alias("up1", &fake.url());
    let m = manta(tmp.path(), &cfg);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        // Not on the allow-list, by prefix and by ns: refused before any connection.
        for url in [
            format!("{}/v2/ghcr.io/org/img/manifests/v1", m.url()),
            format!("{}/v2/org/img/manifests/v1?ns=ghcr.io", m.url()),
            format!(
                "{}/v2/{}/manifests/v1?ns={}",
                m.url(),
                fake.image().repo,
                fake.host()
            ),
        ] {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 403, "{url}");
            assert_eq!(code_of(&r.text().await.unwrap()), "DENIED", "{url}");
        }
        // A configured alias is allowed, and its repositories take no writes.
        let image = fake.image();
        let r = c
            .get(format!(
                "{}/v2/up1/{}/manifests/{}",
                m.url(),
                image.repo,
                image.tag
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        for (method, path) in [
            (
                reqwest::Method::POST,
                format!("/v2/up1/{}/blobs/uploads/", image.repo),
            ),
            (
                reqwest::Method::PUT,
                format!("/v2/up1/{}/manifests/x", image.repo),
            ),
            (
                reqwest::Method::DELETE,
                format!("/v2/up1/{}/manifests/{}", image.repo, image.manifest_digest),
            ),
        ] {
            let r = c
                .request(method.clone(), format!("{}{path}", m.url()))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{method} {path}");
            assert_eq!(
                code_of(&r.text().await.unwrap()),
                "UNSUPPORTED",
                "{method} {path}"
            );
        }
    });
    drop(rt);
    assert!(
        fake.requests().iter().all(|r| !r.path.contains("org/img")),
        "a denied upstream was contacted"
    );
}

#[test]
fn upstreams_that_ask_to_retry_are_retried() {
    let fake = FakeUpstream::start(FakeMode::Flaky).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let m = manta(
        tmp.path(),
        &UpstreamConfig {
            timeout_secs: Some(10),
            ..Default::default()
        }
        .alias("up1", &fake.url()),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let image = fake.image();
        let started = Instant::now();
        let r = c
            .get(format!(
                "{}/v2/up1/{}/manifests/{}",
                m.url(),
                image.repo,
                image.tag
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &image.manifest[..]);
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After was not honoured"
        );
        let (digest, bytes) = &image.layers[0];
        let r = c
            .get(format!("{}/v2/up1/{}/blobs/{digest}", m.url(), image.repo))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap().as_ref() == &bytes[..]);
    });
    drop(rt);
    let manifest_path = format!("/v2/{}/manifests/{}", fake.image().repo, fake.image().tag);
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.path == manifest_path)
            .count(),
        2,
        "one 503, one retry"
    );
}
