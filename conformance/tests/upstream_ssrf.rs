//! Pull-through cannot be turned against the node's own network: loopback and private addresses
//! only when the configuration names them, link-local (the metadata service) never, and neither
//! through `?ns=`, a host prefix, an upstream's redirect nor a token realm. Every refusal is 403
//! `DENIED`, and a listener on the refused address counts no connection.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use manta_conformance::server::MantaServer;
use manta_conformance::upstream_fixtures::{
    ConnectionCounter, Credentials, FakeMode, FakeUpstream, UpstreamConfig,
};

fn manta(dir: &std::path::Path, cfg: &UpstreamConfig) -> MantaServer {
    let config = cfg.write(&dir.join("cfg")).unwrap();
    MantaServer::start_in(&dir.join("data"), &["--config", config.to_str().unwrap()]).unwrap()
}

fn code_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn denied(c: &reqwest::Client, url: &str) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_eq!(status, 403, "{url}: {body}");
    assert_eq!(code_of(&body), "DENIED", "{url}: {body}");
}

#[test]
fn names_and_namespaces_reach_no_unconfigured_internal_address() {
    let fake = FakeUpstream::start(FakeMode::Normal).unwrap();
    let counter_lo = ConnectionCounter::start("127.0.0.1").unwrap();
    let counter_2 = ConnectionCounter::start("127.0.0.2").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // An open allow-list (any public registry) and one configured loopback upstream.
    let m = manta(
        tmp.path(),
        &UpstreamConfig::default().alias("up1", &fake.url()),
    );
    let base = m.url();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = reqwest::Client::new();
        for url in [
            format!("{base}/v2/a/b/manifests/v1?ns={}", counter_lo.host()),
            format!(
                "{base}/v2/a/b/blobs/sha256:{}?ns={}",
                "0".repeat(64),
                counter_lo.host()
            ),
            "{base}/v2/127.0.0.1/a/b/manifests/v1".replace("{base}", &base),
            format!("{base}/v2/a/b/manifests/v1?ns={}", counter_2.host()),
            "{base}/v2/127.0.0.2/a/b/manifests/v1".replace("{base}", &base),
            "{base}/v2/10.0.0.1/a/b/manifests/v1".replace("{base}", &base),
            // A name that resolves to loopback is judged by what it resolves to.
            format!(
                "{base}/v2/a/b/manifests/v1?ns=localhost:{}",
                counter_lo.port()
            ),
            "{base}/v2/localhost/a/b/manifests/v1".replace("{base}", &base),
            // The configured upstream's host, on another port, is not the configured upstream.
            format!(
                "{base}/v2/a/b/manifests/v1?ns=127.0.0.1:{}",
                counter_lo.port()
            ),
            // The metadata service and link-local addresses, never.
            format!("{base}/v2/latest/meta-data/manifests/v1?ns=169.254.169.254"),
            format!("{base}/v2/169.254.169.254/latest/meta-data/manifests/v1"),
            format!("{base}/v2/a/b/manifests/v1?ns=169.254.169.254:80"),
            format!("{base}/v2/a/b/manifests/v1?ns=[fe80::1]:5000"),
            format!("{base}/v2/a/b/manifests/v1?ns=[::ffff:169.254.169.254]"),
            format!("{base}/v2/a/b/manifests/v1?ns=[::1]:{}", counter_lo.port()),
        ] {
            denied(&c, &url).await;
        }
        // The configured upstream is reached, by alias and by its host.
        let image = fake.image();
        for url in [
            format!("{base}/v2/up1/{}/manifests/{}", image.repo, image.tag),
            format!(
                "{base}/v2/{}/manifests/{}?ns={}",
                image.repo,
                image.tag,
                fake.host()
            ),
        ] {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
        }
    });
    assert_eq!(
        counter_lo.connections(),
        0,
        "an unconfigured loopback port was contacted"
    );
    assert_eq!(
        counter_2.connections(),
        0,
        "an unconfigured loopback address was contacted"
    );
}

#[test]
fn redirects_may_not_lead_to_an_unconfigured_internal_address() {
    let counter = ConnectionCounter::start("127.0.0.2").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for to in [
        format!("http://{}", counter.host()),
        "http://169.254.169.254".to_string(),
        "http://[fe80::1]:80".to_string(),
        "http://localhost:1".to_string(),
    ] {
        let fake = FakeUpstream::start(FakeMode::RedirectBlobs(to.clone())).unwrap();
        let m = manta(
            &tmp.path().join(fake.host().replace(':', "_")),
            &UpstreamConfig::default().alias("up1", &fake.url()),
        );
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let c = reqwest::Client::new();
            let (layer, _) = &fake.image().layers[0];
            let url = format!("{}/v2/up1/{}/blobs/{layer}", m.url(), fake.image().repo);
            denied(&c, &url).await;
        });
        assert_eq!(fake.blob_gets(&fake.image().layers[0].0), 1, "{to}");
    }
    assert_eq!(
        counter.connections(),
        0,
        "a redirect reached an unconfigured address"
    );

    // A redirect to the configured upstream's own host (its storage) is followed.
    let fake = FakeUpstream::start(FakeMode::RedirectBlobsToSelf).unwrap();
    let m = manta(
        &tmp.path().join("own"),
        &UpstreamConfig::default().alias("up1", &fake.url()),
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = reqwest::Client::new();
        let (layer, bytes) = &fake.image().layers[0];
        let url = format!("{}/v2/up1/{}/blobs/{layer}", m.url(), fake.image().repo);
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == bytes[..]);
    });
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.query.as_deref() == Some("redirected=1")),
        "the redirect was not followed"
    );
}

#[test]
fn token_realms_are_judged_and_get_credentials_only_over_https_or_on_the_upstreams_host() {
    let counter = ConnectionCounter::start("127.0.0.2").unwrap();
    let creds = Credentials::random("alice");
    let tmp = tempfile::tempdir().unwrap();
    // Realms at unconfigured internal addresses: refused before any connection.
    for realm in [
        format!("http://{}/token", counter.host()),
        "http://169.254.169.254/latest/meta-data/iam".to_string(),
    ] {
        let fake = FakeUpstream::start(FakeMode::ChallengeAt(realm.clone())).unwrap();
        let m = manta(
            &tmp.path().join(fake.host().replace(':', "_")),
            &UpstreamConfig::default()
                .alias("up1", &fake.url())
                .credentials(&fake.host(), &creds),
        );
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let c = reqwest::Client::new();
            let url = format!(
                "{}/v2/up1/{}/manifests/{}",
                m.url(),
                fake.image().repo,
                fake.image().tag
            );
            denied(&c, &url).await;
        });
    }
    assert_eq!(
        counter.connections(),
        0,
        "a realm at an unconfigured address was contacted"
    );

    // A realm on another configured host over plain HTTP is asked, but without credentials.
    let token_server = FakeUpstream::start(FakeMode::Token(creds.clone())).unwrap();
    let realm = format!(
        "http://localhost:{}/token",
        token_server.host().rsplit(':').next().unwrap()
    );
    let fake = FakeUpstream::start(FakeMode::ChallengeAt(realm)).unwrap();
    let m = manta(
        &tmp.path().join("plain"),
        &UpstreamConfig {
            allow: Some(vec![format!(
                "localhost:{}",
                token_server.host().rsplit(':').next().unwrap()
            )]),
            ..Default::default()
        }
        .alias("up1", &fake.url())
        .credentials(&fake.host(), &creds),
    );
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = reqwest::Client::new();
        let url = format!(
            "{}/v2/up1/{}/manifests/{}",
            m.url(),
            fake.image().repo,
            fake.image().tag
        );
        let r = c.get(&url).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(
            status,
            401,
            "refused for want of credentials: {body}\n{}",
            m.logs()
        );
    });
    let asked: Vec<_> = token_server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .collect();
    assert!(!asked.is_empty(), "the configured realm was not asked");
    assert!(
        asked.iter().all(|r| r.authorization.is_none()),
        "credentials were sent to a plain-HTTP realm on another host"
    );
}
