//! Upload sessions a careless client cannot corrupt or multiply: a refused `PATCH` leaves the
//! session byte for byte as it was, sessions are capped, a streamed push without a length is
//! counted against the capacity as it writes, and an oversize manifest sent in one write (as
//! Python's `http.client` sends it) gets its 413, not a reset.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::time::Duration;

use common::{bytes, client, sha256, start};

/// `POST /v2/<repo>/blobs/uploads/` → the session's location.
async fn open_session(c: &reqwest::Client, url: &str, repo: &str) -> String {
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    r.headers()["location"].to_str().unwrap().to_string()
}

/// A body of unknown length (chunked), as a streaming client sends it.
fn streamed(data: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

fn code_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_patch_refused_for_its_content_range_leaves_the_session_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(&tmp.path().join("data"), &[]);
    let (url, c) = (m.url(), client());
    let loc = open_session(&c, &url, "up/x").await;
    let first = bytes(100, 1);
    let r = c
        .patch(format!("{url}{loc}"))
        .header("content-range", "0-99")
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let extra = bytes(150, 2);
    // Content-Range says 100 bytes; the body (sent whole, with its length) has 150.
    let r = c
        .patch(format!("{url}{loc}"))
        .header("content-range", "100-199")
        .body(extra.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "length mismatch");
    // The same, streamed: the mismatch shows only once the body has been read.
    for body in [extra.clone(), bytes(60, 3)] {
        let r = c
            .patch(format!("{url}{loc}"))
            .header("content-range", "100-199")
            .body(streamed(body))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "streamed length mismatch");
        assert_eq!(code_of(&r.text().await.unwrap()), "SIZE_INVALID");
    }
    // The session is as it was: 100 bytes...
    let r = c.get(format!("{url}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-99");
    let file = m
        .data_dir()
        .join("tmp/uploads")
        .join(loc.rsplit('/').next().unwrap());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        first,
        "the session file changed"
    );
    // ...so the digest of what a refused PATCH carried does not finalize it...
    let mut appended = first.clone();
    appended.extend_from_slice(&extra);
    let r = c
        .put(format!("{url}{loc}?digest={}", sha256(&appended)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // ...and a correct next chunk and finish store exactly the bytes that were accepted.
    let loc = open_session(&c, &url, "up/x").await;
    for (range, body, next) in [
        ("0-99", first.clone(), "100-109"),
        ("100-249", extra.clone(), "250-259"),
    ] {
        let r = c
            .patch(format!("{url}{loc}"))
            .header("content-range", range)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let r = c
            .patch(format!("{url}{loc}"))
            .header("content-range", next)
            .body(streamed(bytes(7, 9)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "a short chunk after {range}");
    }
    let r = c
        .put(format!("{url}{loc}?digest={}", sha256(&appended)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(format!("{url}/v2/up/x/blobs/{}", sha256(&appended)))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == appended);
}

#[tokio::test]
async fn upload_sessions_past_the_cap_get_429() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(&tmp.path().join("data"), &["--max-upload-sessions", "3"]);
    let (url, c) = (m.url(), client());
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(open_session(&c, &url, "cap/x").await);
    }
    let r = c
        .post(format!("{url}/v2/cap/x/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(code_of(&r.text().await.unwrap()), "TOOMANYREQUESTS");
    // A monolithic push opens no session and is not refused.
    let blob = bytes(1000, 4);
    let r = c
        .post(format!(
            "{url}/v2/cap/x/blobs/uploads/?digest={}",
            sha256(&blob)
        ))
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Ending one frees its place.
    let r = c.delete(format!("{url}{}", open[0])).send().await.unwrap();
    assert_eq!(r.status(), 204);
    open_session(&c, &url, "cap/x").await;
}

#[tokio::test]
async fn a_streamed_push_without_a_length_counts_against_the_capacity_as_it_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let m = start(&data, &["--capacity", "24MiB"]);
    let (url, c) = (m.url(), client());
    // Never more on disk than the capacity, while the pushes below run.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, tmpdir) = (stop.clone(), data.join("tmp"));
        std::thread::spawn(move || {
            let mut most = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let held: u64 = common::files_under(&tmpdir)
                    .iter()
                    .filter_map(|f| std::fs::metadata(tmpdir.join(f)).ok())
                    .map(|m| m.len())
                    .sum();
                most = most.max(held);
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        })
    };
    let big = bytes(40 << 20, 5);
    // A session's streamed PATCH: 507 once the capacity is reached.
    let loc = open_session(&c, &url, "big/x").await;
    let r = c
        .patch(format!("{url}{loc}"))
        .body(streamed(big.clone()))
        .send()
        .await;
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 507);
            assert!(r.text().await.unwrap().contains("insufficient storage"));
        }
        // Refused while the body was still streaming: the connection closed under it.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    let r = c.delete(format!("{url}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    // A monolithic streamed push.
    let r = c
        .post(format!(
            "{url}/v2/big/x/blobs/uploads/?digest={}",
            sha256(&big)
        ))
        .body(streamed(big.clone()))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 507);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert!(
        most <= 24 << 20,
        "{most} bytes in tmp/ with a 24 MiB capacity"
    );
    // Nothing is left reserved, and a streamed push that fits goes through.
    let fits = bytes(10 << 20, 6);
    let r = c
        .post(format!(
            "{url}/v2/big/x/blobs/uploads/?digest={}",
            sha256(&fits)
        ))
        .body(streamed(fits.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cache: serde_json::Value = c
        .get(format!("{url}/manta/v1/cache"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cache["space"]["reserved"], 0, "{cache}");
    assert_eq!(cache["space"]["used"], fits.len() as u64, "{cache}");
}

/// Python's `http.client` sends a request's body in one write: a 5 MiB manifest over the
/// 4 MiB limit must come back as 413, not as a reset connection.
#[test]
fn an_oversize_manifest_sent_in_one_write_gets_its_413() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(&tmp.path().join("data"), &[]);
    let script = r#"
import http.client, json, sys
host, port = sys.argv[1].split(":")
body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","x":"' + b"a" * (5 << 20) + b'"}'
c = http.client.HTTPConnection(host, int(port), timeout=60)
c.request("PUT", "/v2/big/manifest/manifests/v1", body=body,
          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
r = c.getresponse()
print(r.status, json.loads(r.read())["errors"][0]["code"])
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(m.addr())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python http.client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "413 SIZE_INVALID"
    );
    let mut s = std::net::TcpStream::connect(m.addr()).unwrap();
    use std::io::{Read, Write};
    s.write_all(
        b"GET /v2/big/manifest/manifests/v1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 404"),
        "something was stored: {answer}"
    );
}
