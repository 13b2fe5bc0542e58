//! A process killed at any point restarts into a consistent store.
#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;

/// Every blob file on disk hashes to its name; every tagged manifest is served byte for byte
/// and every blob it references is served whole. Returns how many manifests were checked.
async fn check_consistent(url: &str, data: &std::path::Path, repos: &[String]) -> usize {
    for f in files_under(&data.join("blobs")) {
        let bytes = std::fs::read(data.join("blobs").join(&f)).unwrap();
        let name = f.rsplit('/').next().unwrap();
        assert_eq!(
            sha256(&bytes),
            format!("sha256:{name}"),
            "blob file {f} does not match its name"
        );
    }
    let tmp: Vec<_> = files_under(&data.join("tmp"))
        .into_iter()
        .filter(|f| !f.starts_with("uploads/"))
        .collect();
    assert!(tmp.is_empty(), "temp files left after restart: {tmp:?}");
    let c = client();
    let mut checked = 0;
    for repo in repos {
        let r = c
            .get(format!("{url}/v2/{repo}/tags/list"))
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            continue;
        }
        let tags: serde_json::Value = r.json().await.unwrap();
        for tag in tags["tags"].as_array().unwrap() {
            let r = c
                .get(format!(
                    "{url}/v2/{repo}/manifests/{}",
                    tag.as_str().unwrap()
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let digest = r.headers()["docker-content-digest"]
                .to_str()
                .unwrap()
                .to_string();
            let body = r.bytes().await.unwrap();
            assert_eq!(sha256(&body), digest, "torn manifest in {repo}");
            let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let mut refs = vec![m["config"].clone()];
            refs.extend(m["layers"].as_array().unwrap().iter().cloned());
            for d in refs {
                let d = d["digest"].as_str().unwrap();
                let r = c
                    .get(format!("{url}/v2/{repo}/blobs/{d}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    200,
                    "manifest {digest} references missing blob {d}"
                );
                assert_eq!(sha256(&r.bytes().await.unwrap()), d);
            }
            checked += 1;
        }
    }
    checked
}

#[tokio::test]
async fn kill_mid_upload_keeps_the_session_or_fails_it_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut srv = start(&data, &[]);
    let c = client();
    let url = srv.url();
    let blob = bytes(3 << 20, 7);
    let digest = sha256(&blob);

    // A chunked upload: the first MiB arrives whole.
    let r = c
        .post(format!("{url}/v2/crash/up/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .patch(format!("{url}{loc}"))
        .header("content-range", format!("0-{}", (1 << 20) - 1))
        .body(blob[..1 << 20].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // The second chunk is half sent when the process dies; so is a monolithic upload.
    let path = loc.clone();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Range: {}-{}\r\nContent-Length: {}\r\n\r\n",
        1 << 20,
        (2 << 20) - 1,
        1 << 20
    );
    let _s1 = partial_request(srv.addr(), &head, &blob[1 << 20..(3 << 19)]);
    let mono = bytes(4 << 20, 8);
    let head = format!(
        "POST /v2/crash/mono/blobs/uploads/?digest={} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        sha256(&mono),
        mono.len()
    );
    let _s2 = partial_request(srv.addr(), &head, &mono[..2 << 20]);
    // Wait until the server has written some of the monolithic body to tmp/.
    let tmpdir = data.join("tmp");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_dir(&tmpdir)
            .map(|d| d.flatten().any(|e| e.path().is_file()))
            .unwrap_or(false))
        .await
    );
    srv.kill9().unwrap();

    let srv = start(&data, &[]);
    let url = srv.url();
    // The monolithic upload left nothing.
    let r = c
        .head(format!("{url}/v2/crash/mono/blobs/{}", sha256(&mono)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The session survived with what was acknowledged (at least the first MiB); resume from its Range.
    let r = c.get(format!("{url}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), 204, "session lost after restart");
    let range = r.headers()["range"].to_str().unwrap().to_string();
    let end: usize = range.strip_prefix("0-").unwrap().parse().unwrap();
    let have = end + 1;
    assert!((1 << 20..3 << 20).contains(&have), "range {range}");
    let r = c
        .put(format!("{url}{loc}?digest={digest}"))
        .header("content-range", format!("{}-{}", have, blob.len() - 1))
        .body(blob[have..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let got = c
        .get(format!("{url}/v2/crash/up/blobs/{digest}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&got), digest);
    check_consistent(&url, &data, &[]).await;
}

#[tokio::test]
async fn restart_reconciles_what_a_crash_can_leave() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut srv = start(&data, &[]);
    let c = client();
    let url = srv.url();
    let a = bytes(10_000, 1);
    let b = bytes(20_000, 2);
    let da = push_blob(&c, &url, "rec/x", &a).await;
    let db = push_blob(&c, &url, "rec/x", &b).await;
    srv.kill9().unwrap();

    let blob_path = |d: &str| blob_file(&data, d);
    // A blob renamed into place but never indexed (crash between rename and index).
    let orphan = bytes(5000, 3);
    let orphan_path = blob_path(&sha256(&orphan));
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, &orphan).unwrap();
    // A download in flight, a blob file that vanished, and one that shrank.
    std::fs::write(
        data.join("tmp/5f0d0a8e-0000-4000-8000-000000000000"),
        b"partial",
    )
    .unwrap();
    std::fs::remove_file(blob_path(&da)).unwrap();
    std::fs::write(blob_path(&db), &b[..100]).unwrap();

    let srv = start(&data, &[]);
    let url = srv.url();
    assert!(!orphan_path.exists(), "unindexed blob file kept");
    assert!(files_under(&data.join("tmp")).is_empty(), "temp file kept");
    for d in [&da, &db] {
        let r = c
            .get(format!("{url}/v2/rec/x/blobs/{d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "a blob whose file is gone or short must be unknown, not served short"
        );
    }
    // Pushing again heals.
    push_blob(&c, &url, "rec/x", &b).await;
    let got = c
        .get(format!("{url}/v2/rec/x/blobs/{db}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &b[..]);
}

#[tokio::test]
async fn random_kills_during_pushes_leave_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let repos: Vec<String> = (0..4).map(|i| format!("storm/r{i}")).collect();
    let mut total_checked = 0;
    for round in 0..4u64 {
        let mut srv = start(&data, &[]);
        let url = srv.url();
        total_checked += check_consistent(&url, &data, &repos).await;
        // Writers push blobs and manifests as fast as they can until the process dies.
        let mut tasks = Vec::new();
        for (i, repo) in repos.iter().enumerate() {
            let (url, repo) = (url.clone(), repo.clone());
            tasks.push(tokio::spawn(async move {
                let c = client();
                for n in 0u64.. {
                    let seed = round * 1_000_000 + i as u64 * 10_000 + n;
                    let cfg = format!("{{\"seed\":{seed}}}").into_bytes();
                    let layer = bytes(64 << 10, seed);
                    let (Ok(r1), Ok(r2)) = (
                        c.post(format!(
                            "{url}/v2/{repo}/blobs/uploads/?digest={}",
                            sha256(&cfg)
                        ))
                        .body(cfg.clone())
                        .send()
                        .await,
                        c.post(format!(
                            "{url}/v2/{repo}/blobs/uploads/?digest={}",
                            sha256(&layer)
                        ))
                        .body(layer.clone())
                        .send()
                        .await,
                    ) else {
                        return;
                    };
                    assert!(r1.status() == 201 && r2.status() == 201);
                    let m = image_manifest(
                        (&sha256(&cfg), cfg.len()),
                        &[(&sha256(&layer), layer.len())],
                    );
                    let r = c
                        .put(format!("{url}/v2/{repo}/manifests/t{seed}"))
                        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                        .body(m)
                        .send()
                        .await;
                    if r.is_err() {
                        return;
                    }
                }
            }));
        }
        // Kill at a different moment each round.
        tokio::time::sleep(Duration::from_millis(150 + round * 170)).await;
        srv.kill9().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let srv = start(&data, &[]);
    total_checked += check_consistent(&srv.url(), &data, &repos).await;
    assert!(
        total_checked > 0,
        "no manifest survived any round: the test exercised nothing"
    );
}

#[tokio::test]
async fn a_blob_file_that_vanishes_while_running_is_a_miss_and_a_push_heals_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start(&data, &[]);
    let (c, url) = (client(), srv.url());
    let blob = bytes(50_000, 4);
    let d = push_blob(&c, &url, "heal/x", &blob).await;
    let path = blob_file(&data, &d);
    std::fs::write(&path, &blob[..10]).unwrap();
    let r = c
        .get(format!("{url}/v2/heal/x/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a short blob file must not be served");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        c.head(format!("{url}/v2/heal/x/blobs/{d}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    push_blob(&c, &url, "heal/x", &blob).await;
    let got = c
        .get(format!("{url}/v2/heal/x/blobs/{d}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &blob[..]);
}
