//! A pull never fails because the cache is full: a blob the cache has no room for (everything
//! it holds is too young, or pushed, to evict) streams from its source to the client uncached,
//! byte for byte, and is counted. Through skopeo (which checks every digest) for an upstream
//! image and for a model's image form, and through plain GETs (whole and ranged) for the raw
//! form, against real `manta serve`, Debian's docker-registry and the Hugging Face fixture.
//!
//! Needs: docker-registry, skopeo.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use common::hub_agent::{
    blob_file, blob_ok, client, layers_by_title, manifest_ok, sha256_hex, stream_get,
};
use common::lifecycle::*;
use common::upstream::skopeo_pull;
use manta_conformance::hub_fixture::{FixtureFile, FixtureOptions, FixtureRepo, HubFixture};
use manta_conformance::upstream_fixtures::{random_bytes, DockerRegistry};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// Passed-through bytes so far.
async fn passed(admin: &Admin) -> f64 {
    admin.metric("manta_cache_passthrough_bytes_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_through_a_cache_full_of_young_content_streams_through_uncached() {
    let up = DockerRegistry::start(None).expect("docker-registry");
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let images: Vec<UpstreamImage> = (0..4)
        .map(|i| {
            push_image(
                &up,
                &layout,
                &format!("full/img{i}"),
                "v1",
                &[&random_bytes(6 << 20)],
            )
        })
        .collect();
    let cfg = alias_config(&up, work.path());
    // 20 MiB, and nothing younger than the default 300 s may be evicted: three images fill it.
    let agent = Agent::start(None, &["--config", &cfg, "--capacity", "20MiB"]).unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    for img in &images[..3] {
        pull(&c, &base, &data, &img.name, &img.tag).await;
    }
    let before = passed(&admin).await;

    // The fourth, through skopeo: it checks every digest, and succeeds.
    let host = base.trim_start_matches("http://");
    let fourth = &images[3];
    skopeo_pull(
        &format!("{host}/{}:{}", fourth.name, fourth.tag),
        &work.path().join("out"),
        "v1",
        false,
    )
    .unwrap();
    let layer = fourth.image.layers[0].clone();
    let through = passed(&admin).await - before;
    assert!(
        through >= layer.size as f64,
        "{through} bytes counted as passed through, the layer has {}",
        layer.size
    );
    assert!(admin.metric("manta_cache_passthrough_fetches_total").await >= 1.0);
    // Uncached: not on disk, nothing left in tmp/, the capacity never passed.
    assert!(!blob_file(&data, &layer.digest).exists());
    assert!(temp_file_sizes(&data).is_empty());
    let s = admin.space().await.unwrap();
    assert!(s.used + s.reserved <= 20 * MIB, "{s:?}");
    // A ranged read of it streams through too, exact.
    let bytes = std::fs::read(fourth.image.blob_path(&layer.digest)).unwrap();
    let url = format!("{base}/v2/{}/blobs/{}", fourth.name, layer.digest);
    let r = c
        .get(&url)
        .header("range", "bytes=1000-2999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == bytes[1000..3000]);
    // And a whole GET again: identical, still uncached.
    blob_ok(&c, &base, &fourth.name, &layer.digest, layer.size).await;
    assert!(!blob_file(&data, &layer.digest).exists());
    // What was cached before is still served from the cache.
    for img in &images[..3] {
        let l = &img.image.layers[0];
        assert!(
            blob_file(&data, &l.digest).exists(),
            "{} was evicted",
            img.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hub_files_and_image_form_layers_stream_through_a_full_cache() {
    let weights = random_bytes(8 << 20);
    let weights_sha = sha256_hex(&weights);
    let hub = HubFixture::start(
        vec![FixtureRepo::with_main(
            "pass/model",
            vec![
                FixtureFile::bytes("config.json", br#"{"model_type": "pass"}"#.to_vec()),
                FixtureFile::bytes("model.safetensors", weights.clone())
                    .lfs()
                    .with_sha256(&weights_sha),
            ],
        )],
        FixtureOptions::default(),
    )
    .unwrap();
    let agent = Agent::start(Some(&hub.url()), &["--capacity", "6MiB"]).unwrap();
    let (admin, base, data) = (agent.admin(), agent.url(), agent.data_dir().to_path_buf());
    let c = client();
    // Pushed content, never evicted, takes most of the capacity.
    push_blob(&c, &base, "local/filler", &random_bytes(5 << 20)).await;
    let before = passed(&admin).await;

    // The raw form: the manifest, then the weights, whole and ranged.
    let (m, _, _) = manifest_ok(&c, &base, "hf-raw/pass/model", "main").await;
    let w = layers_by_title(&m)["model.safetensors"].clone();
    assert_eq!(w.digest, format!("sha256:{weights_sha}"));
    let url = format!("{base}/v2/hf-raw/pass/model/blobs/{}", w.digest);
    let s = stream_get(&c, &url, &[], None).await;
    assert!(s.complete(), "{:?} {}", s.error, s.error_body);
    assert_eq!(s.sha256, weights_sha);
    let r = c
        .get(&url)
        .header("range", "bytes=4096-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == weights[4096..]);
    assert!(!blob_file(&data, &w.digest).exists());

    // The image form, through skopeo: built with no room (each file only hashed), and its tar
    // layers streamed from the hub through their recipes.
    let host = base.trim_start_matches("http://");
    let out = tempfile::tempdir().unwrap();
    skopeo_pull(
        &format!("{host}/hf/pass/model:main"),
        &out.path().join("image"),
        "main",
        false,
    )
    .unwrap();
    assert!(!blob_file(&data, &w.digest).exists());
    let through = passed(&admin).await - before;
    assert!(
        through >= 2.0 * weights.len() as f64,
        "{through} bytes counted as passed through"
    );

    // A prefetch, whose point is to keep the files, says it could not.
    let r = c
        .post(format!("{base}/manta/v1/prefetch"))
        .json(&json!({"hub": "hf", "repo": "pass/model", "revision": "main", "forms": ["raw"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: serde_json::Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let end = common::hub_agent::poll(
        "the prefetch to end",
        std::time::Duration::from_secs(60),
        || {
            let (c, url) = (c.clone(), format!("{base}/manta/v1/prefetch/{id}"));
            async move {
                let v: serde_json::Value = c.get(url).send().await?.json().await?;
                Ok((v["state"] == "failed" || v["state"] == "succeeded").then_some(v))
            }
        },
    )
    .await;
    assert_eq!(end["state"], "failed", "{end}");
    assert!(
        end["error"]
            .as_str()
            .unwrap_or("")
            .contains("insufficient storage"),
        "{end}"
    );
    assert_eq!(end["failure"], "noSpace", "{end}");
}
