//! Pull-through blobs stream while they cache: one upstream download however many clients ask,
//! clients see bytes before the download ends, a `Range` into a blob still downloading is
//! answered, and a client that leaves does not cancel the download for the others.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::time::Instant;

use futures_util::StreamExt;
use manta_conformance::server::MantaServer;
use manta_conformance::upstream_fixtures::{FakeMode, FakeUpstream, UpstreamConfig};

/// A GET that records when its first and last bytes arrived.
async fn timed_get(
    c: &reqwest::Client,
    url: &str,
    range: Option<&str>,
) -> (u16, Option<String>, Vec<u8>, Instant, Instant) {
    let mut req = c.get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let content_range = resp
        .headers()
        .get("content-range")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body = Vec::new();
    let mut first = None;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        first.get_or_insert_with(Instant::now);
        body.extend_from_slice(&chunk);
    }
    let last = Instant::now();
    (status, content_range, body, first.unwrap_or(last), last)
}

#[test]
fn concurrent_and_ranged_clients_share_one_streaming_download() {
    // The fake runs its own runtime: it is made (and dropped) outside the test's.
    let fake = FakeUpstream::start(FakeMode::Trickle).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(check_streaming(&fake));
}

async fn check_streaming(fake: &FakeUpstream) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = UpstreamConfig {
        timeout_secs: Some(10),
        ..Default::default()
    }
    .alias("up1", &fake.url());
    let config = cfg.write(&tmp.path().join("cfg")).unwrap();
    let manta = MantaServer::start_in(
        &tmp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    )
    .unwrap();
    let image = fake.image();
    let (digest, bytes) = image
        .layers
        .iter()
        .max_by_key(|(_, b)| b.len())
        .unwrap()
        .clone();
    let size = bytes.len();
    let url = format!("{}/v2/up1/{}/blobs/{digest}", manta.url(), image.repo);
    let c = reqwest::Client::new();

    // A client that leaves after its first bytes; the download must go on without it.
    let leaver = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move {
            let resp = c.get(&url).send().await.unwrap();
            let mut s = resp.bytes_stream();
            s.next().await.unwrap().unwrap();
        })
    };
    // Four clients for the whole blob, and one for its tail, all while it downloads.
    let full: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { timed_get(&c, &url, None).await })
        })
        .collect();
    let tail_from = size - 50_000;
    let ranged = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move { timed_get(&c, &url, Some(&format!("bytes={tail_from}-"))).await })
    };
    leaver.await.unwrap();
    let trickle = FakeUpstream::TRICKLE_EVERY * size.div_ceil(FakeUpstream::TRICKLE_CHUNK) as u32;
    for f in full {
        let (status, _, body, first, last) = f.await.unwrap();
        assert_eq!(status, 200);
        assert!(body == bytes, "a client got the wrong bytes");
        // Streaming, not download-then-serve: bytes arrived well before the download ended.
        assert!(
            last - first > trickle / 3,
            "first byte {:?} before the last: not streamed",
            last - first
        );
    }
    let (status, content_range, body, _, _) = ranged.await.unwrap();
    assert_eq!(status, 206);
    assert_eq!(
        content_range.as_deref(),
        Some(format!("bytes {tail_from}-{}/{size}", size - 1).as_str())
    );
    assert!(
        body == bytes[tail_from..],
        "the ranged client got the wrong bytes"
    );
    assert_eq!(
        fake.blob_gets(&digest),
        1,
        "the upstream was asked more than once"
    );

    // Cached now: served without the upstream, whole, quickly.
    let started = Instant::now();
    let (status, _, body, _, _) = timed_get(&c, &url, None).await;
    assert_eq!(status, 200);
    assert!(body == bytes);
    assert_eq!(fake.blob_gets(&digest), 1);
    assert!(
        started.elapsed() < trickle,
        "the cached blob was not served from the cache"
    );
}
