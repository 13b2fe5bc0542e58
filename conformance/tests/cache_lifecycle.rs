//! The cache's lifecycle (issue 4), against real `manta serve` processes on 127.0.0.1: a
//! capacity that is never passed, LRU eviction that keeps pinned and shared content, blobs in
//! use that are not deleted under their readers, corrupt files that are never served, `kill -9`
//! mid-download and mid-eviction, a full disk, the pins API and the `manta` CLI.
//!
//! Upstreams are Debian's `docker-registry` fed with generated images (pull-through names
//! `127.0.0.1:<port>/<repo>`) and the in-process Hugging Face fixture (`hf-raw/…`), rate-limited
//! where a test must act while a download is under way. Every test ends with the consistency
//! walker of `common/consistency.rs`: index and disk agree.
//!
//! Needs: docker-registry, skopeo; root (a tmpfs mount) for the full-disk test.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::consistency::assert_consistent;
use common::hub_agent::{
    blob_file, blob_ok, client, layers_by_title, manifest_ok, manta_cli, poll, sha256_hex,
    stream_get, Streamed,
};
use common::lifecycle::*;
use futures_util::StreamExt as _;
use manta_conformance::hub_fixture::{
    sha256_file, synthetic_safetensors_with_sha256, FixtureFile, FixtureOptions, FixtureRepo,
    HubFixture,
};
use manta_conformance::upstream_fixtures::{random_bytes, DockerRegistry};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;
/// How long the end-of-test consistency check may wait for the agent to settle.
const SETTLE: Duration = Duration::from_secs(30);

fn start_upstream() -> DockerRegistry {
    DockerRegistry::start(None).expect("start docker-registry (apt-get install docker-registry)")
}

/// `GET /v2/<name>/blobs/<digest>` of the agent at `base`.
fn blob_url(base: &str, name: &str, digest: &str) -> String {
    format!("{base}/v2/{name}/blobs/{digest}")
}

/// Upstream GETs of `digest` through any of `repos`.
fn upstream_gets(up: &DockerRegistry, repos: &[&str], digest: &str) -> usize {
    repos.iter().map(|r| up.blob_gets(r, digest)).sum()
}

/// An OCI error body's first `(code, message)`.
fn oci_error(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "not an OCI error body ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    (
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        v["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// A whole-blob answer that is either incomplete or correct, never wrong bytes delivered whole.
fn never_wrong_whole(s: &Streamed, digest: &str, what: &str) {
    if s.complete() {
        assert_eq!(
            format!("sha256:{}", s.sha256),
            digest,
            "{what}: a corrupt blob was served whole ({} bytes)",
            s.len
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Capacity
// ---------------------------------------------------------------------------------------------

/// The cache metrics of issue 4 (prometheus-client adds `_total` to counters).
const CACHE_METRICS: [&str; 13] = [
    "manta_cache_capacity_bytes",
    "manta_cache_used_bytes",
    "manta_cache_reserved_bytes",
    "manta_cache_pinned_bytes",
    "manta_cache_evicted_bytes_total",
    "manta_cache_evicted_blobs_total",
    "manta_cache_evicted_roots_total",
    "manta_cache_eviction_runs_total",
    "manta_cache_reservations_refused_total",
    "manta_verify_blobs_total",
    "manta_verify_bytes_total",
    "manta_verify_corrupt_blobs_total",
    "manta_cache_missing_blobs_total",
];

/// Six 5 MiB images through a 24 MiB cache (the first pinned before it is pulled): used and
/// the disk never pass the capacity, the oldest unpinned images go first, the pinned one and
/// the newest stay, background eviction brings the cache under the high watermark, and a blob
/// larger than the whole capacity is refused at once with 507 without touching the disk or
/// evicting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_cache_evicts_least_recently_used_keeps_pinned_and_never_passes_capacity() {
    const CAPACITY: u64 = 24 * MIB;
    const LAYER: usize = 5 << 20;
    const N: usize = 6;
    let up = start_upstream();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let images: Vec<UpstreamImage> = (0..N)
        .map(|i| {
            push_image(
                &up,
                &layout,
                &format!("cap/img{i}"),
                "v1",
                &[&random_bytes(LAYER)],
            )
        })
        .collect();
    let huge_layer = random_bytes(30 << 20);
    let huge = push_image(&up, &layout, "cap/huge", "v1", &[&huge_layer]);

    let cfg = alias_config(&up, work.path());
    let agent = Agent::start(
        None,
        &[
            "--config",
            &cfg,
            "--capacity",
            "24MiB",
            "--evict-min-age-secs",
            "0",
        ],
    )
    .unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    let space = admin.space().await.unwrap();
    assert_eq!(space.capacity, CAPACITY, "{space:?}");
    assert!(
        space.high_watermark.abs_diff(CAPACITY * 85 / 100) <= 1
            && space.low_watermark.abs_diff(CAPACITY * 70 / 100) <= 1,
        "default watermarks are 85% and 70%: {space:?}"
    );
    assert_eq!(
        admin.metric("manta_cache_capacity_bytes").await,
        CAPACITY as f64
    );
    for name in CACHE_METRICS {
        admin.metric(name).await; // panics, listing what there is, when absent
    }

    // Pinned before anything is fetched: a pin protects what its target resolves to later too.
    let pin = admin
        .put_pin("keep-first", &json!({ "reference": images[0].reference() }))
        .await;
    assert_eq!(pin.status, 201, "PUT pin: {}", pin.text());

    // Sample the disk and the accounting all along.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, admin, data) = (stop.clone(), admin.clone(), data.clone());
        tokio::spawn(async move {
            let (mut disk, mut accounted, mut samples) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                disk = disk.max(disk_bytes(&data));
                if let Ok(s) = admin.space().await {
                    accounted = accounted.max(s.used + s.reserved);
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (disk, accounted, samples)
        })
    };

    // Each image used in a later second than the one before: a strict LRU order.
    let mut last = 0;
    for img in &images {
        next_second(last).await;
        pull(&c, &base, &data, &img.name, &img.tag).await;
        last = unix_secs();
        let s = admin.space().await.unwrap();
        assert!(
            s.used + s.reserved <= CAPACITY,
            "after pulling {}: {s:?}",
            img.reference()
        );
        let disk = disk_bytes(&data);
        assert!(
            disk <= CAPACITY,
            "after pulling {}: {disk} bytes on disk",
            img.reference()
        );
    }
    // Background eviction: never left above the high watermark for long.
    let s = admin.space().await.unwrap();
    poll(
        "used to come under the high watermark",
        Duration::from_secs(20),
        || async {
            let s = admin.space().await?;
            Ok((s.used <= s.high_watermark).then_some(()))
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (max_disk, max_accounted, samples) = sampler.await.unwrap();
    eprintln!(
        "{samples} samples: at most {max_disk} bytes on disk, {max_accounted} used+reserved; \
         after the last pull {s:?}"
    );
    assert!(
        max_disk <= CAPACITY,
        "the disk held {max_disk} bytes, capacity {CAPACITY}"
    );
    assert!(
        max_accounted <= CAPACITY,
        "used + reserved reached {max_accounted}, capacity {CAPACITY}"
    );

    // Who stayed: the pinned one, the newest; the oldest unpinned ones went, in LRU order.
    let mut kept = Vec::new();
    for img in &images {
        let file = blob_file(&data, img.layer(0)).exists();
        let entry = admin.entry(&img.reference()).await;
        assert_eq!(
            file,
            entry.is_some(),
            "{}: layer file present {file}, cache entry {entry:?}",
            img.reference()
        );
        kept.push(file);
    }
    eprintln!("kept after the fill: {kept:?}");
    assert!(kept[0], "the pinned image was evicted");
    assert!(kept[N - 1], "the newest image was evicted");
    assert!(!kept[1], "the oldest unpinned image was kept: {kept:?}");
    for i in 1..N - 1 {
        assert!(
            !kept[i] || kept[i + 1],
            "image {i} was kept but the newer image {} evicted: not LRU ({kept:?})",
            i + 1
        );
    }
    let evicted = kept.iter().filter(|k| !**k).count();
    assert!(
        evicted >= 2,
        "{N} x 5 MiB cannot fit 24 MiB with fewer than 2 evictions: {kept:?}"
    );
    let pinned = admin.entry(&images[0].reference()).await.unwrap();
    assert_eq!(pinned["pins"], json!(["keep-first"]), "{pinned}");
    assert_eq!(pinned["protection"], "pinned", "{pinned}");
    assert!(admin.space().await.unwrap().pinned >= LAYER as u64);
    assert!(admin.metric("manta_cache_evicted_roots_total").await >= evicted as f64);
    assert!(
        admin.metric("manta_cache_evicted_bytes_total").await >= (evicted * LAYER) as f64,
        "evicted bytes counter"
    );
    assert!(admin.metric("manta_cache_pinned_bytes").await >= LAYER as f64);
    assert_eq!(
        admin.metric("manta_cache_used_bytes").await,
        admin.space().await.unwrap().used as f64
    );
    assert!(admin.metric("manta_cache_eviction_runs_total").await >= 1.0);

    // What the user sees: the pinned layer comes from the cache, an evicted one from upstream.
    let gets = |img: &UpstreamImage| up.blob_gets(&img.repo, img.layer(0));
    assert_eq!(gets(&images[0]), 1);
    blob_ok(&c, &base, &images[0].name, images[0].layer(0), LAYER as u64).await;
    assert_eq!(gets(&images[0]), 1, "the pinned layer was fetched again");
    assert_eq!(gets(&images[1]), 1);
    blob_ok(&c, &base, &images[1].name, images[1].layer(0), LAYER as u64).await;
    assert_eq!(
        gets(&images[1]),
        2,
        "the evicted layer was not fetched again"
    );

    let view = assert_consistent(&base, &data, SETTLE).await;
    assert!(view.used <= CAPACITY);

    // A blob larger than the whole capacity: it cannot be cached, so it streams through to the
    // client (whole and verified), nothing written, nothing evicted.
    let refused_before = admin.metric("manta_cache_reservations_refused_total").await;
    let used_before = admin.space().await.unwrap().used;
    let present: Vec<bool> = images
        .iter()
        .map(|img| blob_file(&data, img.layer(0)).exists())
        .collect();
    let s = stream_get(&c, &blob_url(&base, &huge.name, huge.layer(0)), &[], None).await;
    assert!(
        s.complete() && s.len == huge_layer.len() as u64,
        "a blob larger than the capacity: status {}, {} bytes, error {:?}",
        s.status,
        s.len,
        s.error
    );
    assert_eq!(s.sha256, sha256_hex(&huge_layer));
    assert!(!blob_file(&data, huge.layer(0)).exists());
    assert!(
        admin.metric("manta_cache_reservations_refused_total").await > refused_before,
        "the refusal is not counted"
    );
    assert!(
        temp_file_sizes(&data).is_empty(),
        "a refused download left a temp file"
    );
    for (i, img) in images.iter().enumerate() {
        assert_eq!(
            blob_file(&data, img.layer(0)).exists(),
            present[i],
            "the refused download evicted {}",
            img.reference()
        );
    }
    assert_eq!(
        admin.space().await.unwrap().used,
        used_before,
        "a refused download changed what the cache holds"
    );
    assert_consistent(&base, &data, SETTLE).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Shared blobs
// ---------------------------------------------------------------------------------------------

/// Two images share a 3 MiB layer. Removing one (`DELETE /manta/v1/cache/<ref>`) frees only its
/// own blobs: the shared layer is still served, byte-identical, without another upstream
/// fetch. LRU eviction (`POST /manta/v1/gc {"free": 1}`) takes the least recently used of the
/// two and again keeps the shared layer; it goes with its last reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_blob_survives_the_eviction_of_one_of_its_two_images() {
    let up = start_upstream();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (shared, own_a, own_b) = (
        random_bytes(3 << 20),
        random_bytes(1 << 20),
        random_bytes(1 << 20),
    );
    let a = push_image(&up, &layout, "share/a", "v1", &[&shared, &own_a]);
    let b = push_image(&up, &layout, "share/b", "v1", &[&shared, &own_b]);
    let shared_digest = a.layer(0).to_string();
    assert_eq!(b.layer(0), shared_digest);
    let repos = ["share/a", "share/b"];

    let cfg = alias_config(&up, work.path());
    let agent = Agent::start(None, &["--config", &cfg, "--evict-min-age-secs", "0"]).unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    pull(&c, &base, &data, &a.name, &a.tag).await;
    next_second(unix_secs()).await;
    pull(&c, &base, &data, &b.name, &b.tag).await;
    assert_eq!(upstream_gets(&up, &repos, &shared_digest), 1);
    for d in [&shared_digest, a.layer(1), b.layer(1)] {
        assert!(blob_file(&data, d).exists(), "{d} is not cached");
    }

    // Remove image a: its own layer and config go, the shared layer stays.
    let used_before = admin.space().await.unwrap().used;
    let r = admin.remove(&a.reference()).await;
    assert_eq!(r.status, 200, "DELETE {}: {}", a.reference(), r.text());
    let report = r.json();
    assert!(evicted_names(&report).contains(&a.reference()), "{report}");
    let freed = report_u64(&report, "freedBytes");
    assert!(
        freed >= own_a.len() as u64 && freed < (own_a.len() + shared.len()) as u64,
        "freed {freed} bytes: a's own layer is {}, the shared one {}: {report}",
        own_a.len(),
        shared.len()
    );
    assert!(report_u64(&report, "blobsDeleted") >= 2, "{report}");
    assert!(
        !blob_file(&data, a.layer(1)).exists(),
        "a's own layer is still on disk"
    );
    assert!(!blob_file(&data, &a.image.config.digest).exists());
    assert!(
        blob_file(&data, &shared_digest).exists(),
        "the shared layer was deleted"
    );
    assert!(blob_file(&data, b.layer(1)).exists());
    let used_after = admin.space().await.unwrap().used;
    let dropped = used_before - used_after;
    assert!(
        dropped >= own_a.len() as u64 && dropped < (own_a.len() + shared.len()) as u64,
        "used went from {used_before} to {used_after}"
    );
    assert!(admin.entry(&a.reference()).await.is_none());
    assert!(admin.entry(&b.reference()).await.is_some());

    // The shared layer is served whole, by either name, without the upstream.
    for img in [&b, &a] {
        let s = blob_ok(&c, &base, &img.name, &shared_digest, shared.len() as u64).await;
        assert_eq!(s.sha256, sha256_hex(&shared));
    }
    assert_eq!(
        upstream_gets(&up, &repos, &shared_digest),
        1,
        "the shared layer was fetched again"
    );

    // Pull a again (newest now): only its own blobs come from upstream.
    next_second(unix_secs()).await;
    pull(&c, &base, &data, &a.name, &a.tag).await;
    assert_eq!(up.blob_gets_settled("share/a", a.layer(1), 2), 2);
    assert_eq!(upstream_gets(&up, &repos, &shared_digest), 1);

    // LRU: freeing a byte evicts b (used longest ago), and the shared layer stays for a.
    let report = admin.gc(Some(1)).await;
    let names = evicted_names(&report);
    assert!(names.contains(&b.reference()), "{report}");
    assert!(!names.contains(&a.reference()), "{report}");
    assert!(!blob_file(&data, b.layer(1)).exists());
    assert!(
        blob_file(&data, &shared_digest).exists(),
        "the shared layer was evicted with b"
    );
    blob_ok(&c, &base, &a.name, &shared_digest, shared.len() as u64).await;

    // With its last reference, the shared layer goes too.
    admin.gc(Some(FREE_ALL)).await;
    assert!(!blob_file(&data, &shared_digest).exists());
    assert!(!blob_file(&data, a.layer(1)).exists());
    let view = assert_consistent(&base, &data, SETTLE).await;
    assert!(
        view.blobs.is_empty(),
        "left after evicting everything: {view:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Blobs in use
// ---------------------------------------------------------------------------------------------

/// A client reads a 20 MiB cached blob slowly. While it reads, its image is removed and a gc is
/// asked to free everything: the blob's file stays (the gc reports it in use), and the client
/// gets every byte. Once it is done, the blob can be evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_read_by_a_slow_client_is_not_deleted_under_it() {
    let up = start_upstream();
    let work = tempfile::tempdir().unwrap();
    let layer = random_bytes(20 << 20);
    let img = push_image(
        &up,
        &work.path().join("layout"),
        "slow/img",
        "v1",
        &[&layer],
    );
    let digest = img.layer(0).to_string();

    let cfg = alias_config(&up, work.path());
    let agent = Agent::start(None, &["--config", &cfg, "--evict-min-age-secs", "0"]).unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    pull(&c, &base, &data, &img.name, &img.tag).await;
    let file = blob_file(&data, &digest);
    assert!(file.exists());

    let resp = c
        .get(blob_url(&base, &img.name, &digest))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    while got < 256 << 10 {
        let chunk = body.next().await.expect("body ended early").unwrap();
        hasher.update(&chunk);
        got += chunk.len();
    }

    // Mid-read: the image's root is in use.
    let entry = admin.entry(&img.reference()).await.expect("cache entry");
    assert_eq!(entry["protection"], "inUse", "{entry}");
    let removed = admin.remove(&img.reference()).await;
    assert_eq!(removed.status, 200, "DELETE: {}", removed.text());
    let removed = removed.json();
    assert!(file.exists(), "DELETE removed a blob being read: {removed}");
    let gc = admin.gc(Some(FREE_ALL)).await;
    assert!(file.exists(), "gc deleted a blob being read: {gc}");
    let in_use: u64 = [&removed, &gc]
        .iter()
        .map(|r| report_u64(r, "keptInUse") + report_u64(r, "protectedInUse"))
        .sum();
    assert!(
        in_use >= 1,
        "neither report counts the blob in use:\n{removed}\n{gc}"
    );

    // Read on, slowly.
    let mut chunks = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("body broke after {got} bytes: {e}"));
        hasher.update(&chunk);
        got += chunk.len();
        chunks += 1;
        if chunks % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(got, layer.len());
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        digest,
        "the slow client got other bytes"
    );

    // Released with its last reader.
    poll(
        "the blob to be evictable once read",
        Duration::from_secs(20),
        || async {
            admin.gc(Some(FREE_ALL)).await;
            Ok((!file.exists()).then_some(()))
        },
    )
    .await;
    assert_consistent(&base, &data, SETTLE).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Corruption
// ---------------------------------------------------------------------------------------------

/// Blob files with one byte flipped: `POST /manta/v1/verify` reports one as corrupt (and counts
/// it), after which a GET fetches the right bytes again; a GET of another never delivers the
/// corrupt bytes whole, and the next GET has the right bytes; pushed content, which has no
/// other copy, is dropped (404) rather than served corrupt. A file that shrank is a miss (not
/// served short), one that vanished is reported missing by verify; both are fetched again.
/// A file corrupted while the agent was down is found by the background scrub after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_blob_files_are_never_served_whole_and_verify_finds_them() {
    let up = start_upstream();
    let work = tempfile::tempdir().unwrap();
    let (x_bytes, y_bytes, z_bytes, w_bytes) = (
        random_bytes(2 << 20),
        random_bytes(1 << 20),
        random_bytes(256 << 10),
        random_bytes(256 << 10),
    );
    let img = push_image(
        &up,
        &work.path().join("layout"),
        "bad/img",
        "v1",
        &[&x_bytes, &y_bytes, &z_bytes, &w_bytes],
    );
    let [x, y, z, w] = [0, 1, 2, 3].map(|i| img.layer(i).to_string());

    let cfg = alias_config(&up, work.path());
    let mut agent = Agent::start(None, &["--config", &cfg, "--scrub-rate", "256MiB"]).unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    pull(&c, &base, &data, &img.name, &img.tag).await;
    assert_consistent(&base, &data, SETTLE).await;

    // verify finds a corrupt file, drops it and counts it; the next GET fetches it again.
    let corrupt_before = admin.metric("manta_verify_corrupt_blobs_total").await;
    corrupt_file(&blob_file(&data, &y));
    let v = admin.verify().await.unwrap();
    assert_eq!(v["corrupt"], json!([y]), "{v}");
    assert_eq!(v["missing"], json!([]), "{v}");
    assert!(v["checked"].as_u64().unwrap() >= 5, "{v}");
    assert_eq!(
        admin.metric("manta_verify_corrupt_blobs_total").await,
        corrupt_before + 1.0
    );
    assert!(admin.metric("manta_verify_blobs_total").await >= 5.0);
    assert_eq!(up.blob_gets(&img.repo, &y), 1);
    blob_ok(&c, &base, &img.name, &y, y_bytes.len() as u64).await;
    assert_eq!(
        up.blob_gets_settled(&img.repo, &y, 2),
        2,
        "not fetched again after verify"
    );

    // A GET of a corrupt file: never the corrupt bytes whole; then the right bytes.
    corrupt_file(&blob_file(&data, &x));
    let s = stream_get(&c, &blob_url(&base, &img.name, &x), &[], None).await;
    never_wrong_whole(&s, &x, "GET of a corrupt cached blob");
    eprintln!(
        "GET of the corrupt blob: status {}, {} bytes, error {:?}",
        s.status, s.len, s.error
    );
    let s = blob_ok(&c, &base, &img.name, &x, x_bytes.len() as u64).await;
    assert_eq!(s.sha256, sha256_hex(&x_bytes));
    assert_eq!(
        up.blob_gets_settled(&img.repo, &x, 2),
        2,
        "the corrupt blob was not fetched again"
    );
    poll(
        "the repaired blob file",
        Duration::from_secs(20),
        || async {
            let f = blob_file(&data, &x);
            Ok((f.exists() && format!("sha256:{}", sha256_file(&f)?) == x).then_some(()))
        },
    )
    .await;

    // Pushed content has no other copy: dropped, never served corrupt.
    let pushed_bytes = random_bytes(512 << 10);
    let pushed = push_blob(&c, &base, "local/pushed", &pushed_bytes).await;
    blob_ok(
        &c,
        &base,
        "local/pushed",
        &pushed,
        pushed_bytes.len() as u64,
    )
    .await;
    corrupt_file(&blob_file(&data, &pushed));
    let s = stream_get(&c, &blob_url(&base, "local/pushed", &pushed), &[], None).await;
    never_wrong_whole(&s, &pushed, "GET of a corrupt pushed blob");
    assert!(
        !s.complete(),
        "a corrupt pushed blob cannot be repaired, yet arrived whole"
    );
    let s = stream_get(&c, &blob_url(&base, "local/pushed", &pushed), &[], None).await;
    assert_eq!(
        s.status, 404,
        "the corrupt pushed blob after detection: {s:?}"
    );

    // A file that shrank: a miss, fetched again whole (never served short).
    let missing_before = admin.metric("manta_cache_missing_blobs_total").await;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(blob_file(&data, &w))
        .unwrap();
    f.set_len(w_bytes.len() as u64 / 2).unwrap();
    drop(f);
    blob_ok(&c, &base, &img.name, &w, w_bytes.len() as u64).await;
    assert_eq!(
        up.blob_gets_settled(&img.repo, &w, 2),
        2,
        "a shrunk file was not fetched again"
    );
    assert!(admin.metric("manta_cache_missing_blobs_total").await > missing_before);
    installed(&base, &data, &[(&w, w_bytes.len() as u64)]).await;

    // A file that vanished: verify reports it missing; the next GET fetches it again.
    std::fs::remove_file(blob_file(&data, &z)).unwrap();
    let v = admin.verify().await.unwrap();
    assert_eq!(v["missing"], json!([z]), "{v}");
    assert_eq!(v["corrupt"], json!([]), "{v}");
    blob_ok(&c, &base, &img.name, &z, z_bytes.len() as u64).await;
    assert_eq!(
        up.blob_gets_settled(&img.repo, &z, 2),
        2,
        "a vanished file was not fetched again"
    );
    installed(
        &base,
        &data,
        &[(&z, z_bytes.len() as u64), (&w, w_bytes.len() as u64)],
    )
    .await;
    assert_consistent(&base, &data, SETTLE).await;

    // Corrupted while the agent is down: the scrub (a pass at start-up) finds it.
    agent.kill9();
    corrupt_file(&blob_file(&data, &x));
    agent.restart();
    let (admin, base) = (agent.admin(), agent.url());
    poll("the scrub to find the corrupt blob", SETTLE, || async {
        let n = admin.metric("manta_verify_corrupt_blobs_total").await;
        Ok((n >= 1.0 && !blob_file(&data, &x).exists()).then_some(()))
    })
    .await;
    blob_ok(&c, &base, &img.name, &x, x_bytes.len() as u64).await;
    assert_eq!(up.blob_gets_settled(&img.repo, &x, 3), 3);
    installed(&base, &data, &[(&x, x_bytes.len() as u64)]).await;
    assert_consistent(&base, &data, SETTLE).await;
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9
// ---------------------------------------------------------------------------------------------

const BIG_REPO: &str = "lifecycle/big";
const MANY_REPO: &str = "lifecycle/many";
const MANY_FILES: usize = 400;

/// `kill -9` while a 1 GiB file downloads (the hub rate-limited to 64 MiB/s), restart on the
/// same data dir: no temp file, nothing torn indexed, every blob verified before the kill still
/// there. Then `kill -9` while 400 blobs are being removed, restart: index and disk agree
/// again, what the removal did not target is intact, and the agent serves the repo again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_download_and_mid_eviction_leaves_index_and_disk_consistent() {
    let gen_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cache-lifecycle");
    let (weights, weights_sha) =
        tokio::task::spawn_blocking(move || synthetic_safetensors_with_sha256(&gen_dir, 1 << 30))
            .await
            .unwrap()
            .unwrap();
    let many: Vec<(String, Vec<u8>)> = (0..MANY_FILES)
        .map(|i| (format!("shards/{i:04}.bin"), random_bytes(2048)))
        .collect();
    let hub = HubFixture::start(
        vec![
            FixtureRepo::with_main(
                BIG_REPO,
                vec![
                    FixtureFile::bytes("config.json", br#"{"model_type": "big"}"#.to_vec()),
                    FixtureFile::disk("model.safetensors", &weights)
                        .lfs()
                        .with_sha256(&weights_sha),
                ],
            ),
            FixtureRepo::with_main(
                MANY_REPO,
                many.iter()
                    .map(|(p, b)| {
                        FixtureFile::bytes(p, b.clone())
                            .lfs()
                            .with_sha256(&sha256_hex(b))
                    })
                    .collect(),
            ),
        ],
        FixtureOptions {
            rate_limit: Some(64 * MIB),
            ..Default::default()
        },
    )
    .unwrap();
    let mut agent = Agent::start(
        Some(&hub.url()),
        &["--capacity", "4GiB", "--evict-min-age-secs", "0"],
    )
    .unwrap();
    let data = agent.data_dir().to_path_buf();
    let c = client();
    let big_raw = format!("hf-raw/{BIG_REPO}");
    let many_raw = format!("hf-raw/{MANY_REPO}");

    // Verified content: the many small files, and the big repo's config.json.
    let base = agent.url();
    let pulled_many = pull(&c, &base, &data, &many_raw, "main").await;
    let (m, _, _) = manifest_ok(&c, &base, &big_raw, "main").await;
    let big_layers = layers_by_title(&m);
    let cfg = &big_layers["config.json"];
    blob_ok(&c, &base, &big_raw, &cfg.digest, cfg.size).await;
    let w = big_layers["model.safetensors"].clone();
    assert_eq!(w.size, std::fs::metadata(&weights).unwrap().len());
    assert!(w.size > 1000 * MIB);
    let committed = assert_consistent(&base, &data, SETTLE).await.blobs;
    assert!(committed.len() > MANY_FILES, "{} blobs", committed.len());
    let pin = json!({"hub": "hf", "repo": BIG_REPO, "revision": "main"});
    let r = agent.admin().put_pin("big", &pin).await;
    assert_eq!(r.status, 201, "{}", r.text());

    // kill -9 in the middle of the 1 GiB download.
    let dl = {
        let (c, url) = (c.clone(), blob_url(&base, &big_raw, &w.digest));
        tokio::spawn(async move { stream_get(&c, &url, &[], None).await })
    };
    let in_flight = poll(
        "64 MiB of the 1 GiB download on disk",
        Duration::from_secs(60),
        || async {
            let t = temp_file_sizes(&data);
            Ok(t.iter().any(|(_, n)| *n >= 64 * MIB).then_some(t))
        },
    )
    .await;
    agent.kill9();
    eprintln!("killed with temp files {in_flight:?}");
    let s = dl.await.unwrap();
    assert!(
        !s.complete(),
        "the download finished before the kill: {} bytes",
        s.len
    );
    assert!(
        !temp_file_sizes(&data).is_empty(),
        "no temp file right after the kill: the download was not mid-way"
    );

    agent.restart();
    let base = agent.url();
    let view = assert_consistent(&base, &data, SETTLE).await;
    assert!(
        !view.blobs.contains_key(&w.digest),
        "a torn 1 GiB blob is indexed"
    );
    for (d, size) in &committed {
        assert_eq!(
            view.blobs.get(d),
            Some(size),
            "blob {d} verified before the kill is gone after the restart"
        );
    }
    let pins = agent.admin().pins().await;
    assert!(
        pins.len() == 1 && pins[0]["name"] == "big" && pins[0]["target"] == pin,
        "the pin did not survive kill -9: {pins:?}"
    );

    // kill -9 while the 400 blobs of the many repo are being removed.
    let files: Vec<_> = pulled_many
        .layers
        .iter()
        .map(|(d, _)| blob_file(&data, d))
        .collect();
    assert!(files.iter().all(|f| f.exists()));
    let pid = agent.pid().unwrap();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = files.iter().filter(|f| f.exists()).count();
            if left < files.len() || Instant::now() > deadline {
                // By pid, from this thread: the moment the eviction is seen under way.
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
                return left;
            }
            std::thread::yield_now();
        }
    });
    let remover = {
        let url = format!("{base}/manta/v1/cache/hf://{MANY_REPO}");
        let c = c.clone();
        tokio::spawn(async move { c.delete(url).send().await.map(|r| r.status().as_u16()) })
    };
    let left = tokio::task::spawn_blocking(move || watcher.join().unwrap())
        .await
        .unwrap();
    let removal = remover.await.unwrap();
    agent.kill9();
    eprintln!(
        "killed mid-eviction with {left} of {MANY_FILES} blob files left (the DELETE saw {removal:?})"
    );
    assert!(left < MANY_FILES, "the removal never started within 60 s");

    agent.restart();
    let base = agent.url();
    let view = assert_consistent(&base, &data, SETTLE).await;
    for (d, size) in &committed {
        if !pulled_many.layers.iter().any(|(l, _)| l == d) && *d != pulled_many.config.0 {
            assert_eq!(
                view.blobs.get(d),
                Some(size),
                "blob {d}, not part of the removal, is gone"
            );
        }
    }
    let pins = agent.admin().pins().await;
    assert_eq!(pins.len(), 1, "{pins:?}");
    // The agent serves the repo again, fetching whatever the removal took.
    pull(&c, &base, &data, &many_raw, "main").await;
    blob_ok(&c, &base, &big_raw, &cfg.digest, cfg.size).await;
    assert_consistent(&base, &data, SETTLE).await;
}

// ---------------------------------------------------------------------------------------------
// 6. A full disk
// ---------------------------------------------------------------------------------------------

/// Fill the rest of the filesystem at `path` with a file: every byte it can get.
/// The data dir on a 192 MiB tmpfs (the index takes about 11 MiB, its reserve 32 MiB, and
/// downloads leave 32 MiB free), `--capacity`
/// above that so only the disk can say no. A 40 MiB download (rate-limited) runs into a disk
/// filled under it: that request fails (507, or a broken body), a cached blob is still served
/// from the full disk, nothing half-written is indexed, `/readyz` is 200 once the filler is
/// gone, and the download then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_the_writing_request_only_and_indexes_nothing_torn() {
    const REPO: &str = "lifecycle/full";
    const FS_MIB: u64 = 192;
    let (small, big) = (random_bytes(1 << 20), random_bytes(40 << 20));
    let hub = HubFixture::start(
        vec![FixtureRepo::with_main(
            REPO,
            vec![
                FixtureFile::bytes("small.bin", small.clone()).lfs(),
                FixtureFile::bytes("big.bin", big.clone()).lfs(),
            ],
        )],
        FixtureOptions {
            rate_limit: Some(8 * MIB),
            ..Default::default()
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("data"); // the server's log goes next to it, off the tmpfs
    let Some(fs) = Tmpfs::mount(&mount, FS_MIB).unwrap() else {
        return;
    };
    let agent = Agent::start_in(
        fs.path(),
        Some(&hub.url()),
        &["--capacity", "1GiB", "--evict-min-age-secs", "0"],
    )
    .unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    let raw = format!("hf-raw/{REPO}");
    let (m, _, _) = manifest_ok(&c, &base, &raw, "main").await;
    let layers = layers_by_title(&m);
    let (s_layer, b_layer) = (layers["small.bin"].clone(), layers["big.bin"].clone());
    blob_ok(&c, &base, &raw, &s_layer.digest, s_layer.size).await;
    assert_consistent(&base, &data, SETTLE).await;

    // Start the big download; once it is writing, take the rest of the disk.
    let dl = {
        let (c, url) = (c.clone(), blob_url(&base, &raw, &b_layer.digest));
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(120), stream_get(&c, &url, &[], None)).await
        })
    };
    poll(
        "the big download to be writing",
        Duration::from_secs(30),
        || async {
            let t: u64 = temp_file_sizes(&data).iter().map(|(_, n)| n).sum();
            Ok((t >= 4 * MIB).then_some(()))
        },
    )
    .await;
    let filler = data.join("filler");
    let filled = {
        let f = filler.clone();
        tokio::task::spawn_blocking(move || fill(&f)).await.unwrap()
    };
    let s = dl
        .await
        .unwrap()
        .expect("the download neither ended nor failed within 120 s of a full disk");
    eprintln!(
        "filled {filled} bytes; the big download: status {}, {} bytes, error {:?}, body {}",
        s.status, s.len, s.error, s.error_body
    );
    assert!(!s.complete(), "the download completed on a full disk");
    if s.status == 507 {
        let (code, message) = oci_error(s.error_body.as_bytes());
        assert_eq!(code, "UNKNOWN");
        assert!(message.starts_with("insufficient storage"), "{message:?}");
    } else {
        assert_eq!(s.status, 200, "{s:?}");
    }

    // The disk is still full (take back what the failed download freed): other blobs are served.
    let topped = {
        let f = filler.clone();
        tokio::task::spawn_blocking(move || fill(&f)).await.unwrap()
    };
    let downloads = hub.downloads(REPO, "small.bin");
    blob_ok(&c, &base, &raw, &s_layer.digest, s_layer.size).await;
    assert_eq!(
        hub.downloads(REPO, "small.bin"),
        downloads,
        "not served from the cache"
    );
    eprintln!(
        "readyz with a full disk: {:?} (topped up {topped} bytes)",
        admin.readyz().await
    );

    // Room again: ready, consistent, nothing torn, and the download goes through.
    std::fs::remove_file(&filler).unwrap();
    poll("/readyz to be 200", Duration::from_secs(30), || async {
        Ok((admin.readyz().await? == 200).then_some(()))
    })
    .await;
    let view = assert_consistent(&base, &data, SETTLE).await;
    assert!(
        !view.blobs.contains_key(&b_layer.digest),
        "a torn blob is indexed"
    );
    assert!(view.blobs.contains_key(&s_layer.digest));
    let s = blob_ok(&c, &base, &raw, &b_layer.digest, b_layer.size).await;
    assert_eq!(s.sha256, sha256_hex(&big));
    assert_consistent(&base, &data, SETTLE).await;
    drop(agent);
    drop(fs);
}

// ---------------------------------------------------------------------------------------------
// 7. Pins
// ---------------------------------------------------------------------------------------------

/// `PUT|GET|DELETE /manta/v1/pins`: names checked (400), unknown pins 404; a pinned image
/// cannot be removed (409 DENIED) nor evicted; `reclaim=Retain` leaves the content to LRU,
/// `reclaim=Delete` removes it now unless another pin holds it; the hub form pins a model
/// revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pins_protect_content_and_release_it_retained_or_deleted() {
    let up = start_upstream();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let [a, b, cc] = ["a", "b", "c"].map(|n| {
        push_image(
            &up,
            &layout,
            &format!("pins/{n}"),
            "v1",
            &[&random_bytes(1 << 20)],
        )
    });
    let weights = random_bytes(512 << 10);
    let hub = HubFixture::start(
        vec![FixtureRepo::with_main(
            "lifecycle/pinned",
            vec![FixtureFile::bytes("weights.bin", weights.clone()).lfs()],
        )],
        FixtureOptions::default(),
    )
    .unwrap();
    let cfg = alias_config(&up, work.path());
    let agent = Agent::start(
        Some(&hub.url()),
        &["--config", &cfg, "--evict-min-age-secs", "0"],
    )
    .unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();

    // Names.
    for bad in [
        "Upper",
        "-lead",
        "_lead",
        ".lead",
        "sp%20ace",
        &"a".repeat(254),
    ] {
        let r = admin
            .put_pin(bad, &json!({ "reference": a.reference() }))
            .await;
        assert_eq!(r.status, 400, "pin name {bad:?}: {}", r.text());
    }
    let longest = "a".repeat(253);
    let r = admin
        .put_pin(&longest, &json!({ "reference": a.reference() }))
        .await;
    assert_eq!(r.status, 201, "a 253-character name: {}", r.text());
    assert_eq!(admin.delete_pin(&longest, None).await.status, 200);
    let r = admin.delete_pin("no-such-pin", None).await;
    assert_eq!(r.status, 404, "DELETE of an unknown pin: {}", r.text());
    assert!(admin.pins().await.is_empty());

    // Pin a: created, then replaced; listed; its content protected.
    pull(&c, &base, &data, &a.name, &a.tag).await;
    let target = json!({ "reference": a.reference() });
    let r = admin.put_pin("keep-a", &target).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let view = r.json();
    assert_eq!(view["name"], "keep-a");
    assert_eq!(view["target"], target, "{view}");
    assert!(view["createdAt"].as_u64().unwrap() > 0, "{view}");
    assert!(
        !view["roots"].as_array().unwrap().is_empty(),
        "the pin holds nothing: {view}"
    );
    assert!(view["bytes"].as_u64().unwrap() >= 1 << 20, "{view}");
    let r = admin.put_pin("keep-a", &target).await;
    assert_eq!(r.status, 200, "PUT of an existing pin: {}", r.text());
    let pins = admin.pins().await;
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(pins[0]["name"], "keep-a");
    let entry = admin.entry(&a.reference()).await.unwrap();
    assert_eq!(entry["pins"], json!(["keep-a"]), "{entry}");
    assert_eq!(entry["protection"], "pinned", "{entry}");
    assert!(admin.space().await.unwrap().pinned >= 1 << 20);

    let r = admin.remove(&a.reference()).await;
    assert_eq!(r.status, 409, "DELETE of a pinned image: {}", r.text());
    assert_eq!(oci_error(&r.body).0, "DENIED");
    let gc = admin.gc(Some(FREE_ALL)).await;
    assert!(report_u64(&gc, "protectedPinned") >= 1, "{gc}");
    assert!(!evicted_names(&gc).contains(&a.reference()), "{gc}");
    assert!(
        blob_file(&data, a.layer(0)).exists(),
        "gc evicted a pinned layer"
    );

    // Release with Retain (the default): kept until LRU takes it.
    let r = admin.delete_pin("keep-a", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["name"], "keep-a");
    assert_eq!(v["reclaim"], "Retain");
    assert!(v["gc"].is_null(), "{v}");
    assert!(
        blob_file(&data, a.layer(0)).exists(),
        "Retain deleted the content"
    );
    blob_ok(&c, &base, &a.name, a.layer(0), 1 << 20).await;
    assert_eq!(up.blob_gets(&a.repo, a.layer(0)), 1);
    let entry = admin.entry(&a.reference()).await.unwrap();
    assert_eq!(entry["pins"], json!([]), "{entry}");
    assert!(entry["protection"].is_null(), "{entry}");
    let gc = admin.gc(Some(FREE_ALL)).await;
    assert!(evicted_names(&gc).contains(&a.reference()), "{gc}");
    assert!(!blob_file(&data, a.layer(0)).exists());

    // Release with Delete: gone now.
    pull(&c, &base, &data, &b.name, &b.tag).await;
    assert_eq!(
        admin
            .put_pin("keep-b", &json!({ "reference": b.reference() }))
            .await
            .status,
        201
    );
    let r = admin.delete_pin("keep-b", Some("Delete")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["reclaim"], "Delete");
    assert!(report_u64(&v["gc"], "freedBytes") >= 1 << 20, "{v}");
    assert!(evicted_names(&v["gc"]).contains(&b.reference()), "{v}");
    assert!(
        !blob_file(&data, b.layer(0)).exists(),
        "Delete left the content"
    );
    assert!(admin.entry(&b.reference()).await.is_none());

    // Two pins on one image: deleting one (reclaim Delete) keeps what the other holds.
    pull(&c, &base, &data, &cc.name, &cc.tag).await;
    for p in ["c-one", "c-two"] {
        let r = admin
            .put_pin(p, &json!({ "reference": cc.reference() }))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = admin.delete_pin("c-one", Some("Delete")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        blob_file(&data, cc.layer(0)).exists(),
        "content another pin holds was deleted"
    );
    let entry = admin.entry(&cc.reference()).await.unwrap();
    assert_eq!(entry["pins"], json!(["c-two"]), "{entry}");
    assert_eq!(admin.delete_pin("c-two", Some("Retain")).await.status, 200);

    // Pin by digest.
    let by_digest =
        json!({ "reference": format!("{}@{}", cc.cache_repo, cc.image.manifest_digest) });
    let r = admin.put_pin("c-digest", &by_digest).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let gc = admin.gc(Some(FREE_ALL)).await;
    assert!(
        blob_file(&data, cc.layer(0)).exists(),
        "a pin by digest did not hold: {gc}"
    );
    assert_eq!(
        admin.delete_pin("c-digest", Some("Delete")).await.status,
        200
    );
    assert!(!blob_file(&data, cc.layer(0)).exists());

    // The hub form: a model revision.
    let raw = "hf-raw/lifecycle/pinned";
    pull(&c, &base, &data, raw, "main").await;
    let wd = format!("sha256:{}", sha256_hex(&weights));
    let target = json!({"hub": "hf", "repo": "lifecycle/pinned", "revision": "main"});
    let r = admin.put_pin("model", &target).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let view = r.json();
    let roots: Vec<&str> = view["roots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        roots.iter().any(|r| r.starts_with("hf://lifecycle/pinned")),
        "{view}"
    );
    assert!(
        view["bytes"].as_u64().unwrap() >= weights.len() as u64,
        "{view}"
    );
    admin.gc(Some(FREE_ALL)).await;
    assert!(blob_file(&data, &wd).exists(), "gc evicted a pinned model");
    let r = admin.delete_pin("model", Some("Delete")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!blob_file(&data, &wd).exists(), "Delete left the model");
    assert!(admin.pins().await.is_empty());
    assert_consistent(&base, &data, SETTLE).await;
}

/// `GET /manta/v1/cache?entries=false` (what the operator asks for) answers the revisions and
/// the space figures, pinned bytes included, without the eviction roots; an unknown query
/// parameter, or an `entries` that is not a boolean, is a 400 OCI error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_view_leaves_out_its_entries_when_asked_and_refuses_unknown_queries() {
    let up = start_upstream();
    let work = tempfile::tempdir().unwrap();
    let img = push_image(
        &up,
        &work.path().join("layout"),
        "view/a",
        "v1",
        &[&random_bytes(1 << 20)],
    );
    let cfg = alias_config(&up, work.path());
    let agent = Agent::start(None, &["--config", &cfg]).unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    pull(&client(), &base, &data, &img.name, &img.tag).await;
    let r = admin
        .put_pin("keep", &json!({ "reference": img.reference() }))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    let names = |v: &Value| -> Vec<String> {
        v["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("no entries list: {v}"))
            .iter()
            .map(|e| e["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let full = admin.cache().await.unwrap();
    assert!(names(&full).contains(&img.reference()), "{full}");
    let explicit = admin.cache_with("entries=true").await;
    assert_eq!(explicit.status, 200, "{}", explicit.text());
    assert_eq!(names(&explicit.json()), names(&full));

    let lean = admin.cache_with("entries=false").await;
    assert_eq!(lean.status, 200, "{}", lean.text());
    let lean = lean.json();
    assert_eq!(lean["entries"], json!([]), "{lean}");
    assert_eq!(lean["revisions"], full["revisions"], "{lean}");
    assert_eq!(lean["space"]["pinned"], full["space"]["pinned"], "{lean}");
    assert!(
        lean["space"]["pinned"].as_u64().unwrap() >= 1 << 20,
        "the pinned image is not counted: {lean}"
    );

    for bad in ["entries=maybe", "bogus=1", "entries=false&bogus=1"] {
        let r = admin.cache_with(bad).await;
        assert_eq!(r.status, 400, "?{bad}: {}", r.text());
        let (code, message) = oci_error(&r.body);
        assert_eq!(code, "UNSUPPORTED", "?{bad}: {message}");
    }
    assert_consistent(&base, &data, SETTLE).await;
}

// ---------------------------------------------------------------------------------------------
// 8. The CLI
// ---------------------------------------------------------------------------------------------

/// `manta pin|pins|ls|gc --dry-run|rm|unpin|verify` against a live agent, checked against what
/// the admin API then says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_manta_cli_pins_lists_removes_collects_and_verifies() {
    let up = start_upstream();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let [a, b] = ["a", "b"].map(|n| {
        push_image(
            &up,
            &layout,
            &format!("cli/{n}"),
            "v1",
            &[&random_bytes(1 << 20)],
        )
    });
    let cfg = alias_config(&up, work.path());
    let agent = Agent::start(None, &["--config", &cfg, "--evict-min-age-secs", "0"]).unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    pull(&c, &base, &data, &a.name, &a.tag).await;
    pull(&c, &base, &data, &b.name, &b.tag).await;
    let cli = |args: &[&str]| -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &base]);
        let out = manta_cli(&all).unwrap_or_else(|e| panic!("manta {args:?}: {e:#}"));
        out.stdout_str()
    };
    let cli_fails = |args: &[&str]| -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &base]);
        match manta_cli(&all) {
            Ok(o) => panic!("manta {args:?} succeeded: {}", o.stdout_str()),
            Err(e) => format!("{e:#}"),
        }
    };

    let a_ref = a.reference();
    cli(&["pin", "keep-a", &a_ref]);
    let pins = admin.pins().await;
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(pins[0]["name"], "keep-a");
    assert_eq!(pins[0]["target"], json!({ "reference": a_ref }));
    let listed = cli(&["pins"]);
    assert!(listed.contains("keep-a"), "manta pins:\n{listed}");

    let ls = cli(&["ls"]);
    for img in [&a, &b] {
        assert!(
            ls.contains(&img.reference()),
            "manta ls lacks {}:\n{ls}",
            img.reference()
        );
    }

    let dry = cli(&["gc", "--dry-run", "--free", "1TiB"]);
    assert!(dry.contains(&b.reference()), "manta gc --dry-run:\n{dry}");
    assert!(
        !dry.contains(&a_ref),
        "a dry run would evict a pinned image:\n{dry}"
    );
    assert!(
        blob_file(&data, b.layer(0)).exists(),
        "a dry run removed content"
    );

    let err = cli_fails(&["rm", &a_ref]);
    assert!(
        blob_file(&data, a.layer(0)).exists(),
        "rm removed a pinned image: {err}"
    );
    let rm = cli(&["rm", &b.reference()]);
    assert!(
        !blob_file(&data, b.layer(0)).exists(),
        "manta rm left the content:\n{rm}"
    );
    assert!(admin.entry(&b.reference()).await.is_none());

    cli(&["unpin", "keep-a"]);
    assert!(admin.pins().await.is_empty());
    assert!(
        blob_file(&data, a.layer(0)).exists(),
        "unpin (retain) removed the content"
    );

    // verify exits 1 naming the corrupt blob.
    corrupt_file(&blob_file(&data, &a.image.config.digest));
    let err = cli_fails(&["verify"]);
    assert!(
        err.contains(&a.image.config.digest),
        "manta verify does not name the corrupt blob:\n{err}"
    );
    let gc = cli(&["gc", "--free", "1TiB"]);
    assert!(gc.contains(&a_ref), "manta gc:\n{gc}");
    assert!(
        !blob_file(&data, a.layer(0)).exists(),
        "manta gc left unpinned content"
    );
    assert_consistent(&base, &data, SETTLE).await;
}
