//! The pull-through fixtures (manta_conformance::upstream_fixtures) proven against real clients
//! without Manta: docker-registry with htpasswd auth, its access log and restart; the token fake
//! through skopeo's Bearer flow; the lying and stalling fakes misbehaving exactly as designed. When
//! a test in tests/upstream.rs fails, these passing means the server is at fault.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::upstream::{fetch, get_manifest, skopeo_pull};
use common::{build_test_index, layout_tagged, require_tool, run, sha256_digest};
use manta_conformance::upstream_fixtures::{Credentials, DockerRegistry, FakeMode, FakeUpstream};

#[test]
fn fixture_docker_registry_auth_log_and_restart() {
    require_tool(
        "htpasswd",
        "install it with `apt-get install apache2-utils`",
    );
    let tmp = tempfile::tempdir().unwrap();
    let creds = Credentials::random("alice");
    let mut up = DockerRegistry::start(Some(creds.clone())).unwrap();
    let idx = build_test_index(tmp.path(), "multi").unwrap();
    let amd = &idx.platform("amd64").unwrap().image;
    up.push_oci(&idx.layout, "multi", "fx/multi:multi", true)
        .unwrap();
    let src = format!("docker://{}/fx/multi:multi", up.host());
    let inspect = |with_creds: bool| {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if with_creds {
            cmd.arg("--creds").arg(creds.colon_pair());
        }
        run(cmd.arg(&src))
    };
    // Auth is enforced.
    assert!(
        inspect(false).is_err(),
        "docker-registry let skopeo in without credentials"
    );
    let raw = inspect(true).unwrap();
    assert_eq!(sha256_digest(&raw.stdout), idx.index_digest);

    // The access log counts requests.
    let mark = up.access_log().len();
    let out = tmp.path().join("out");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--src-tls-verify=false", "--src-creds"])
        .arg(creds.colon_pair())
        .arg(format!(
            "docker://{}/fx/multi@{}",
            up.host(),
            amd.manifest_digest
        ))
        .arg(format!("oci:{}:x", out.display()));
    run(&mut cmd).unwrap();
    let seen = &up.access_log()[mark..];
    for l in amd.layers.iter().chain([&amd.config]) {
        assert_eq!(up.blob_gets("fx/multi", &l.digest), 1, "{l:?} in {seen:#?}");
    }
    assert!(
        up.requests().contains(&(
            "GET".to_string(),
            format!("/v2/fx/multi/manifests/{}", amd.manifest_digest)
        )),
        "{:?}",
        up.requests()
    );

    // Offline, then back on the same port with the same storage.
    up.stop().unwrap();
    assert!(inspect(true).is_err(), "skopeo reached a stopped registry");
    up.restart().unwrap();
    let raw = inspect(true).unwrap();
    assert_eq!(sha256_digest(&raw.stdout), idx.index_digest);
}

#[test]
fn fixture_token_fake_is_accepted_by_skopeo() {
    let creds = Credentials::random("bob");
    let fake = FakeUpstream::start(FakeMode::Token(creds.clone())).unwrap();
    let img = fake.image().clone();
    let v2 = fetch(
        "GET",
        &format!("{}/v2/", fake.url()),
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(v2.status, 401);
    let challenge = v2.header("www-authenticate").unwrap().to_string();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"{}/token\",service=\"fake\",scope=\"repository:{}:pull\"",
            fake.url(),
            img.repo
        )
    );
    let token_url = format!(
        "{}/token?service=fake&scope=repository:{}:pull",
        fake.url(),
        img.repo
    );
    let bad = Credentials::random("bob").basic_header();
    let r = fetch(
        "GET",
        &token_url,
        &[("Authorization", &bad)],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.describe());
    let r = fetch(
        "GET",
        &token_url,
        &[("Authorization", &creds.basic_header())],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["expires_in"], 60);
    let manifest_url = format!("{}/v2/{}/manifests/{}", fake.url(), img.repo, img.tag);
    let r = get_manifest(&manifest_url).unwrap();
    assert_eq!(r.status, 401);
    let auth = format!("Bearer {token}");
    let r = fetch(
        "GET",
        &manifest_url,
        &[("Authorization", &auth)],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!((r.status, &r.body), (200, &img.manifest));
    assert_eq!(fake.token_requests(), 2);

    // skopeo (containers/image) runs the whole flow and verifies every digest.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run(Command::new("skopeo")
        .args([
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-creds",
        ])
        .arg(creds.colon_pair())
        .arg(format!("docker://{}/{}:{}", fake.host(), img.repo, img.tag))
        .arg(format!("oci:{}:v1", out.display())))
    .unwrap();
    let (digest, _) = layout_tagged(&out, "v1").unwrap();
    assert_eq!(digest, img.manifest_digest);
    assert!(fake.token_requests() >= 3);
    let bearer_blob_gets = fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .filter(|r| {
            r.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Bearer faketoken-"))
        })
        .count();
    assert!(bearer_blob_gets >= 3, "{:#?}", fake.requests());
    // Without credentials skopeo is refused.
    let res = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/{}:{}", fake.host(), img.repo, img.tag)));
    assert!(
        res.is_err(),
        "skopeo read the token fake without credentials"
    );
}

#[test]
fn fixture_fakes_misbehave_as_designed() {
    // A normal fake satisfies skopeo.
    let normal = FakeUpstream::start(FakeMode::Normal).unwrap();
    let img = normal.image().clone();
    let tmp = tempfile::tempdir().unwrap();
    skopeo_pull(
        &format!("{}/{}:{}", normal.host(), img.repo, img.tag),
        &tmp.path().join("normal"),
        "v1",
        false,
    )
    .unwrap();

    // Lying: right length, wrong bytes, skopeo refuses.
    let lying = FakeUpstream::start(FakeMode::Lying).unwrap();
    let img = lying.image().clone();
    let (digest, bytes) = &img.layers[0];
    let r = fetch(
        "GET",
        &format!("{}/v2/{}/blobs/{digest}", lying.url(), img.repo),
        &[],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), bytes.len());
    assert_ne!(&sha256_digest(&r.body), digest);
    assert!(skopeo_pull(
        &format!("{}/{}:{}", lying.host(), img.repo, img.tag),
        &tmp.path().join("lying"),
        "v1",
        false,
    )
    .is_err());

    // Hanging inside the body: headers and the first bytes, then silence.
    let hang = FakeUpstream::start(FakeMode::HangAfterHeaders).unwrap();
    let img = hang.image().clone();
    let (digest, bytes) = &img.layers[1];
    let r = fetch(
        "GET",
        &format!("{}/v2/{}/blobs/{digest}", hang.url(), img.repo),
        &[],
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(r.body, bytes[..FakeUpstream::HANG_AFTER]);
    assert!(r
        .body_error
        .as_deref()
        .unwrap()
        .starts_with("body still open"));
    let m = get_manifest(&format!(
        "{}/v2/{}/manifests/{}",
        hang.url(),
        img.repo,
        img.tag
    ))
    .unwrap();
    assert_eq!((m.status, &m.body), (200, &img.manifest));

    // Hanging before headers: no response head at all.
    let silent = FakeUpstream::start(FakeMode::HangBeforeHeaders).unwrap();
    let img = silent.image().clone();
    let start = Instant::now();
    let r = fetch(
        "GET",
        &format!("{}/v2/{}/manifests/{}", silent.url(), img.repo, img.tag),
        &[],
        Duration::from_secs(2),
    );
    assert!(r.is_err(), "the silent fake answered");
    assert!(start.elapsed() >= Duration::from_secs(2));
    let v2 = fetch(
        "GET",
        &format!("{}/v2/", silent.url()),
        &[],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(v2.status, 200);
}
