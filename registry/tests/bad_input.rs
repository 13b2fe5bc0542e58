//! Bad input gets a clear OCI error and changes nothing.
#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::io::{Read, Write};

use common::*;

async fn expect_error(r: reqwest::Response, status: u16, code: &str) {
    let got = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(got, status, "body: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not an OCI error body: {body}"));
    assert_eq!(v["errors"][0]["code"], code, "body: {body}");
}

/// A raw request, so no client library normalises the path first. Returns (status, body).
fn raw(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test]
async fn path_tricks_never_leave_the_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start(&data, &[]);
    let before = files_under(tmp.path());
    let d = sha256(b"x");
    for path in [
        "/v2/../../etc/blobs/uploads/".to_string(),
        "/v2/%2e%2e/%2e%2e/etc/blobs/uploads/".to_string(),
        "/v2/a%2fb/blobs/uploads/".to_string(),
        "/v2//etc/passwd/blobs/uploads/".to_string(),
        "/v2/a/./b/blobs/uploads/".to_string(),
        "/v2/UPPER/blobs/uploads/".to_string(),
        format!("/v2/ok/blobs/uploads/?mount={d}&from=..%2f..%2fetc"),
        format!("/v2/..%2f..%2fetc/blobs/uploads/?digest={d}"),
    ] {
        let (status, body) = raw(srv.addr(), "POST", &path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("NAME_INVALID"), "{path}: {body}");
    }
    for path in [
        "/v2/a/blobs/sha256:..%2f..%2f..%2fetc%2fpasswd",
        "/v2/a/blobs/sha256:../../etc/passwd",
        "/v2/a/blobs/uploads/..%2f..%2fdb",
        "/v2/a/blobs/uploads/../../db",
    ] {
        let (status, body) = raw(srv.addr(), "GET", path);
        assert!(status == 400 || status == 404, "{path}: {status} {body}");
        assert!(body.contains("\"errors\""), "{path}: {body}");
    }
    assert_eq!(
        files_under(tmp.path()),
        before,
        "a bad request changed files"
    );
    assert!(srv.logs().contains("listening"));
}

#[tokio::test]
async fn bad_digests_ranges_and_content_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(&tmp.path().join("data"), &[]);
    let (c, url) = (client(), srv.url());
    let blob = bytes(1000, 1);
    let d = push_blob(&c, &url, "bad/x", &blob).await;

    for bad in [
        "sha256:totallywrong",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:ABC",
    ] {
        expect_error(
            c.get(format!("{url}/v2/bad/x/blobs/{bad}"))
                .send()
                .await
                .unwrap(),
            400,
            "DIGEST_INVALID",
        )
        .await;
    }
    let r = c
        .get(format!("{url}/v2/bad/x/blobs/{d}"))
        .header("range", "bytes=500-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-range"], "bytes */1000");
    expect_error(r, 416, "BLOB_UNKNOWN").await;
    let r = c
        .get(format!("{url}/v2/bad/x/blobs/{d}"))
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    // Chunked upload: malformed and out-of-order Content-Range are refused and change nothing.
    let r = c
        .post(format!("{url}/v2/bad/x/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .patch(format!("{url}{loc}"))
        .header("content-range", "0-9")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-9");
    for cr in ["abc", "20-29", "0-9", "5-1"] {
        let r = c
            .patch(format!("{url}{loc}"))
            .header("content-range", cr)
            .body(vec![2u8; 10])
            .send()
            .await
            .unwrap();
        expect_error(r, 416, "BLOB_UPLOAD_INVALID").await;
    }
    let r = c.get(format!("{url}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"],
        "0-9",
        "a refused chunk changed the upload"
    );
    // PUT without or with a malformed digest.
    expect_error(
        c.put(format!("{url}{loc}")).send().await.unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        c.put(format!("{url}{loc}?digest=sha256:nope"))
            .send()
            .await
            .unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    // Sessions are bound to their repository; unknown ids are unknown.
    let other = loc.replace("/v2/bad/x/", "/v2/bad/y/");
    expect_error(
        c.get(format!("{url}{other}")).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        c.get(format!("{url}/v2/bad/x/blobs/uploads/not-a-uuid"))
            .send()
            .await
            .unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    // An unsupported digest algorithm for a new session.
    expect_error(
        c.post(format!(
            "{url}/v2/bad/x/blobs/uploads/?digest-algorithm=md5"
        ))
        .send()
        .await
        .unwrap(),
        400,
        "UNSUPPORTED",
    )
    .await;
}

#[tokio::test]
async fn uploads_that_do_not_match_their_digest_store_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start(&data, &[]);
    let (c, url) = (client(), srv.url());
    let blob = bytes(3 << 20, 5);
    let claimed = sha256(b"something else");

    let r = c
        .post(format!("{url}/v2/lie/x/blobs/uploads/?digest={claimed}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;

    let r = c
        .post(format!("{url}/v2/lie/x/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    c.patch(format!("{url}{loc}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    let r = c
        .put(format!("{url}{loc}?digest={claimed}"))
        .send()
        .await
        .unwrap();
    expect_error(r, 400, "DIGEST_INVALID").await;
    expect_error(
        c.get(format!("{url}{loc}")).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;

    for d in [&claimed, &sha256(&blob)] {
        expect_error(
            c.get(format!("{url}/v2/lie/x/blobs/{d}"))
                .send()
                .await
                .unwrap(),
            404,
            "BLOB_UNKNOWN",
        )
        .await;
    }
    assert!(
        files_under(&data.join("blobs")).is_empty(),
        "a blob was stored"
    );
    assert!(files_under(&data.join("tmp")).is_empty(), "temp files left");
}

#[tokio::test]
async fn bad_manifests_are_refused_and_not_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(&tmp.path().join("data"), &["--max-manifest-bytes", "2048"]);
    let (c, url) = (client(), srv.url());
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = bytes(500, 9);
    let (dc, dl) = (
        push_blob(&c, &url, "m/x", cfg).await,
        push_blob(&c, &url, "m/x", &layer).await,
    );
    let good = image_manifest((&dc, cfg.len()), &[(&dl, layer.len())]);

    let put = |reference: &str, ct: &str, body: Vec<u8>| {
        c.put(format!("{url}/v2/m/x/manifests/{reference}"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    expect_error(
        put("t1", OCI, b"{not json".to_vec()).await.unwrap(),
        400,
        "MANIFEST_INVALID",
    )
    .await;
    expect_error(
        put("t2", "text/plain", good.clone()).await.unwrap(),
        400,
        "MANIFEST_INVALID",
    )
    .await;
    expect_error(
        put(
            "t3",
            "application/vnd.oci.image.index.v1+json",
            good.clone(),
        )
        .await
        .unwrap(),
        400,
        "MANIFEST_INVALID",
    )
    .await;
    let missing = image_manifest((&dc, cfg.len()), &[(&sha256(b"never pushed"), 12)]);
    expect_error(
        put("t4", OCI, missing).await.unwrap(),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    let wrong_size = image_manifest((&dc, cfg.len()), &[(&dl, 501)]);
    expect_error(
        put("t5", OCI, wrong_size).await.unwrap(),
        400,
        "MANIFEST_INVALID",
    )
    .await;
    expect_error(
        put(&sha256(b"other"), OCI, good.clone()).await.unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        put("-bad-tag", OCI, good.clone()).await.unwrap(),
        400,
        "MANIFEST_INVALID",
    )
    .await;
    // Oversize, with a declared length and streamed without one.
    let mut big: serde_json::Value = serde_json::from_slice(&good).unwrap();
    big["annotations"] = serde_json::json!({ "pad": "x".repeat(4096) });
    let big = serde_json::to_vec(&big).unwrap();
    let r = put("t6", OCI, big.clone()).await.unwrap();
    assert_eq!(r.status(), 413);
    let stream = futures_util::stream::iter(
        big.chunks(512)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = c
        .put(format!("{url}/v2/m/x/manifests/t7"))
        .header("content-type", OCI)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Nothing of the above was stored. A fresh client: the server answered the streamed PUT
    // before reading its body, then closed that connection, which a pooled client may reuse.
    let c = client();
    for t in ["t1", "t2", "t3", "t4", "t5", "t6", "t7"] {
        expect_error(
            c.get(format!("{url}/v2/m/x/manifests/{t}"))
                .send()
                .await
                .unwrap(),
            404,
            "MANIFEST_UNKNOWN",
        )
        .await;
    }
    let tags: serde_json::Value = c
        .get(format!("{url}/v2/m/x/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));
    // And the good one is accepted and served byte for byte.
    let r = put("ok", OCI, good.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(format!("{url}/v2/m/x/manifests/ok"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), &good[..]);
}
