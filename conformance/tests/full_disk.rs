//! A full disk the agent recovers from by itself: a streamed push stops short of filling it,
//! deletes and cancels still work when something else has filled it, `/readyz` comes back as
//! soon as there is room, and an agent started on a full disk waits for room instead of dying.
//! On small tmpfs mounts (needs root, as CI has; skipped otherwise).

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::time::Duration;

use common::consistency::assert_consistent;
use common::hub_agent::{client, poll};
use common::lifecycle::*;
use manta_conformance::upstream_fixtures::random_bytes;

const MIB: u64 = 1 << 20;
const SETTLE: Duration = Duration::from_secs(30);

/// A body of unknown length (chunked), as a streaming client sends it.
fn streamed(len: usize) -> reqwest::Body {
    let chunk = random_bytes(1 << 20);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..len >> 20).map(|_| Ok(chunk.clone())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_push_stops_short_of_filling_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("data"), 160).unwrap() else {
        return;
    };
    // The capacity is beyond the disk: only the disk can say no.
    let agent = Agent::start_in(fs.path(), None, &["--capacity", "1GiB"]).unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    let r = c
        .post(format!("{base}/v2/full/push/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .patch(format!("{base}{loc}"))
        .body(streamed(300 << 20))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 507, "{}", r.text().await.unwrap());
    }
    // It stopped with room left for the index: still ready, deletes work, pushes that fit too.
    let free = fs_available(&data);
    assert!(free >= 16 * MIB, "the push left {free} bytes free");
    assert_eq!(admin.readyz().await.unwrap(), 200);
    let r = c.delete(format!("{base}{loc}")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let small = random_bytes(4 << 20);
    push_blob(&c, &base, "full/push", &small).await;
    assert_consistent(&base, &data, SETTLE).await;
    drop(agent);
    drop(fs);
}

/// An upload session with a chunk in it, and two pushed blobs; the session's location and the
/// blobs' digests (kept, doomed) and the kept bytes.
async fn some_content(c: &reqwest::Client, base: &str) -> (String, String, String, Vec<u8>) {
    let kept = random_bytes(2 << 20);
    let kept_digest = push_blob(c, base, "full/kept", &kept).await;
    let doomed_digest = push_blob(c, base, "full/doomed", &random_bytes(2 << 20)).await;
    let r = c
        .post(format!("{base}/v2/full/session/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = c
        .patch(format!("{base}{loc}"))
        .body(random_bytes(1 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    (loc, kept_digest, doomed_digest, kept)
}

/// Fill the disk under `data` and wait for the agent to notice (it gives its index its reserve).
async fn fill_disk(filler: &std::path::Path) {
    let f = filler.to_path_buf();
    tokio::task::spawn_blocking(move || fill(&f)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_work_on_a_disk_filled_by_another_and_readiness_returns_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("data"), 128).unwrap() else {
        return;
    };
    let mut agent = Agent::start_in(fs.path(), None, &["--capacity", "1GiB"]).unwrap();
    let c = client();
    let (loc, kept_digest, doomed_digest, kept) = some_content(&c, &agent.url()).await;
    // Restarted, the index has a fresh log with nothing preallocated: its first write after
    // the disk fills needs new blocks.
    agent.restart();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let filler = data.join("filler");
    fill_disk(&filler).await;
    eprintln!(
        "full: {} bytes free, /readyz {:?}",
        fs_available(&data),
        admin.readyz().await
    );

    // Deletes and cancels free space even now.
    let r = c.delete(format!("{base}{loc}")).send().await.unwrap();
    assert_eq!(
        r.status(),
        204,
        "cancel on a full disk: {}",
        r.text().await.unwrap()
    );
    let r = c
        .delete(format!("{base}/v2/full/doomed/blobs/{doomed_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "delete on a full disk: {}",
        r.text().await.unwrap()
    );
    let r = c
        .get(format!("{base}/v2/full/doomed/blobs/{doomed_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // What is held is still served.
    let r = c
        .get(format!("{base}/v2/full/kept/blobs/{kept_digest}"))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == kept);
    assert_eq!(
        admin.readyz().await.unwrap(),
        200,
        "the index has its reserve"
    );

    // The other tenant takes the reserve too: the index refuses writes (a clean 507, never a
    // crash), and readiness says so...
    fill_disk(&filler).await;
    let r = c
        .post(format!("{base}/v2/full/session/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 507, "{}", r.text().await.unwrap());
    assert_eq!(admin.readyz().await.unwrap(), 503);
    // ...until there is room again: ready by itself, no restart; consistent, taking pushes.
    std::fs::remove_file(&filler).unwrap();
    poll("/readyz to be 200", Duration::from_secs(30), || async {
        Ok((admin.readyz().await? == 200).then_some(()))
    })
    .await;
    push_blob(&c, &base, "full/after", &random_bytes(1 << 20)).await;
    assert_consistent(&base, &data, SETTLE).await;
    drop(agent);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_started_on_a_full_disk_waits_for_room_then_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("data"), 96).unwrap() else {
        return;
    };
    let mut agent = Agent::start_in(fs.path(), None, &["--capacity", "1GiB"]).unwrap();
    let (base, data) = (agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    let held = random_bytes(1 << 20);
    let digest = push_blob(&c, &base, "full/restart", &held).await;
    agent.kill9();
    // Full, and without its reserve (as if it had been used up before the crash).
    let _ = std::fs::remove_file(data.join("index-reserve"));
    let filler = data.join("filler");
    fill(&filler);
    let freer = {
        let filler = filler.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(3));
            std::fs::remove_file(filler).unwrap();
        })
    };
    // It neither dies nor serves a broken index: it waits, and starts once there is room.
    agent.restart();
    freer.join().unwrap();
    let base = agent.url();
    assert_eq!(agent.admin().readyz().await.unwrap(), 200);
    let r = c
        .get(format!("{base}/v2/full/restart/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.unwrap() == held);
    assert_consistent(&base, &data, SETTLE).await;
    drop(agent);
    drop(fs);
}
