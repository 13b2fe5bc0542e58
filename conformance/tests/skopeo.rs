//! skopeo (containers/image) against a fresh `manta serve`: push a multi-layer umoci image, copy
//! it back out, inspect it by tag and by digest, list tags, and copy it to another repository
//! inside Manta (cross-repository blob mount).

mod common;

use std::process::Command;

use anyhow::{ensure, Context, Result};
use common::{
    build_test_image, build_test_index, http, layout_tagged, read_blob, require_skopeo, run,
    sha256_digest, skopeo_push, with_registry, LayoutImage, Registry,
};

fn skopeo() -> Command {
    require_skopeo();
    Command::new("skopeo")
}

/// `skopeo inspect` output fields we check.
struct Inspect {
    name: String,
    digest: String,
    layers: Vec<String>,
}

fn inspect(reference: &str) -> Result<Inspect> {
    let out = run(skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{reference}")))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("skopeo inspect output is not JSON: {}", out.stdout_str()))?;
    Ok(Inspect {
        name: v["Name"].as_str().context("Name")?.to_string(),
        digest: v["Digest"].as_str().context("Digest")?.to_string(),
        layers: v["Layers"]
            .as_array()
            .context("Layers")?
            .iter()
            .map(|l| l.as_str().map(str::to_string).context("layer digest"))
            .collect::<Result<_>>()?,
    })
}

fn inspect_raw(reference: &str, config: bool) -> Result<Vec<u8>> {
    let mut cmd = skopeo();
    cmd.args(["inspect", "--tls-verify=false", "--raw"]);
    if config {
        cmd.arg("--config");
    }
    Ok(run(cmd.arg(format!("docker://{reference}")))?.stdout)
}

/// Assert that `copy` (an OCI layout written by skopeo) holds exactly `orig`'s manifest, config
/// and layers, byte for byte.
fn assert_same_image(orig: &LayoutImage, copy: &LayoutImage) -> Result<()> {
    ensure!(
        copy.manifest_digest == orig.manifest_digest,
        "manifest digest changed: pushed {}, pulled {}",
        orig.manifest_digest,
        copy.manifest_digest
    );
    ensure!(copy.manifest == orig.manifest, "manifest bytes differ");
    ensure!(
        copy.config == orig.config,
        "config descriptor differs: {:?} vs {:?}",
        orig.config,
        copy.config
    );
    ensure!(
        copy.config_bytes == orig.config_bytes,
        "config bytes differ"
    );
    ensure!(
        copy.layers == orig.layers,
        "layers differ:\npushed {:#?}\npulled {:#?}",
        orig.layers,
        copy.layers
    );
    for layer in &orig.layers {
        let a = read_blob(&orig.layout, layer)?;
        let b = read_blob(&copy.layout, layer)?;
        ensure!(a == b, "layer {} bytes differ", layer.digest);
    }
    Ok(())
}

#[test]
fn skopeo_push_pull_inspect_roundtrip() {
    with_registry(roundtrip);
}

fn roundtrip(reg: &Registry) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let built = build_test_image(tmp.path(), "v1")?;
    let orig = &built.image;
    let big = orig.layers.iter().map(|l| l.size).max().unwrap_or(0);
    ensure!(
        big > 5 * 1024 * 1024,
        "expected a layer over 5 MiB, largest is {big}"
    );

    let repo = format!("{}/e2e/skopeo/multi-layer", reg.addr());
    let tagged = format!("{repo}:v1");
    let by_digest = format!("{repo}@{}", orig.manifest_digest);

    // Push.
    skopeo_push(orig, &tagged)?;

    // Inspect by tag and by digest.
    for reference in [&tagged, &by_digest] {
        let i = inspect(reference)?;
        ensure!(
            i.name == repo,
            "inspect {reference}: Name {} != {repo}",
            i.name
        );
        ensure!(
            i.digest == orig.manifest_digest,
            "inspect {reference}: Digest {} != pushed {}",
            i.digest,
            orig.manifest_digest
        );
        let want: Vec<String> = orig.layers.iter().map(|l| l.digest.clone()).collect();
        ensure!(
            i.layers == want,
            "inspect {reference}: Layers {:?} != pushed {want:?}",
            i.layers
        );
    }

    // --raw is the manifest byte for byte; --config --raw the config blob.
    for reference in [&tagged, &by_digest] {
        let raw = inspect_raw(reference, false)?;
        ensure!(
            raw == orig.manifest,
            "skopeo inspect --raw {reference} returned different bytes:\n{}\npushed:\n{}",
            String::from_utf8_lossy(&raw),
            String::from_utf8_lossy(&orig.manifest)
        );
        let cfg = inspect_raw(reference, true)?;
        ensure!(
            cfg == orig.config_bytes,
            "skopeo inspect --config --raw {reference}: config bytes differ"
        );
    }

    // Tags.
    let out = run(skopeo()
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{repo}")))?;
    let tags: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        tags["Tags"] == serde_json::json!(["v1"]),
        "list-tags: {}",
        out.stdout_str()
    );

    // Pull back out by tag and by digest into fresh OCI layouts.
    for (i, source) in [&tagged, &by_digest].into_iter().enumerate() {
        let out_layout = tmp.path().join(format!("pulled-{i}"));
        run(skopeo()
            .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
            .arg(format!("docker://{source}"))
            .arg(format!("oci:{}:back", out_layout.display())))?;
        let copy = LayoutImage::read(&out_layout, "back")?;
        assert_same_image(orig, &copy).with_context(|| format!("pulled from {source}"))?;
    }

    // Registry-to-registry copy into another repository (skopeo mounts blobs across repos),
    // then pull that one out too.
    let other = format!("{}/e2e/other-repo:copied", reg.addr());
    run(skopeo()
        .args([
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{tagged}"))
        .arg(format!("docker://{other}")))?;
    let i = inspect(&other)?;
    ensure!(
        i.digest == orig.manifest_digest,
        "copied image digest {} != {}",
        i.digest,
        orig.manifest_digest
    );
    let out_layout = tmp.path().join("pulled-other");
    run(skopeo()
        .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{other}"))
        .arg(format!("oci:{}:back", out_layout.display())))?;
    assert_same_image(orig, &LayoutImage::read(&out_layout, "back")?)
        .context("pulled from the copied repository")?;

    // A tag that does not exist is an error skopeo reports, not an empty image.
    let missing = run(skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{repo}:no-such-tag")));
    ensure!(missing.is_err(), "inspect of a missing tag succeeded");

    // `skopeo delete` removes the copy's manifest (DELETE by digest); the original repository,
    // which shares every blob with it, must be untouched.
    run(skopeo()
        .args(["delete", "--tls-verify=false"])
        .arg(format!("docker://{other}")))?;
    let gone = run(skopeo()
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{other}")));
    ensure!(gone.is_err(), "{other} still resolves after skopeo delete");
    let accept = [("Accept", "application/vnd.oci.image.manifest.v1+json")];
    for (repo_path, want) in [("e2e/other-repo", 404), ("e2e/skopeo/multi-layer", 200)] {
        let url = format!(
            "{}/v2/{repo_path}/manifests/{}",
            reg.url(),
            orig.manifest_digest
        );
        let status = http("GET", &url, &accept, None)?.status;
        ensure!(
            status == want,
            "after skopeo delete: GET {url} answered {status}, want {want}"
        );
    }
    let out_layout = tmp.path().join("pulled-after-delete");
    run(skopeo()
        .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{tagged}"))
        .arg(format!("oci:{}:back", out_layout.display())))?;
    assert_same_image(orig, &LayoutImage::read(&out_layout, "back")?)
        .context("pulled from the original repository after deleting the copy")?;
    Ok(())
}

#[test]
fn skopeo_multi_arch_index_roundtrip() {
    with_registry(multi_arch);
}

/// `skopeo copy --all` of an OCI image index with two platforms: the index and both platform
/// manifests keep their digests; skopeo picks the right platform from the index when asked.
fn multi_arch(reg: &Registry) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let idx = build_test_index(tmp.path(), "multi")?;
    let repo = format!("{}/e2e/skopeo/multi-arch", reg.addr());
    let tagged = format!("{repo}:multi");
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:multi", idx.layout.display()))
        .arg(format!("docker://{tagged}")))?;

    // The index itself, byte for byte, with its media type.
    let raw = inspect_raw(&tagged, false)?;
    ensure!(
        raw == idx.index_bytes,
        "skopeo inspect --raw {tagged}: not the pushed index:\n{}",
        String::from_utf8_lossy(&raw)
    );
    let url = format!("{}/v2/e2e/skopeo/multi-arch/manifests/multi", reg.url());
    let resp = http(
        "GET",
        &url,
        &[(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
        )],
        None,
    )?;
    ensure!(resp.status == 200, "GET {url}: {}", resp.status);
    ensure!(
        resp.header("content-type").as_deref() == Some("application/vnd.oci.image.index.v1+json"),
        "GET {url}: Content-Type {:?}",
        resp.header("content-type")
    );
    ensure!(
        resp.header("docker-content-digest").as_deref() == Some(idx.index_digest.as_str()),
        "GET {url}: Docker-Content-Digest {:?}, want {}",
        resp.header("docker-content-digest"),
        idx.index_digest
    );

    // skopeo resolves each platform through the index.
    for arch in ["amd64", "arm64"] {
        let want = idx.platform(arch)?;
        let out = run(skopeo()
            .args([
                "--override-os",
                "linux",
                "--override-arch",
                arch,
                "inspect",
                "--tls-verify=false",
            ])
            .arg(format!("docker://{tagged}")))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        // skopeo 1.9 reports the digest of what the tag names (the index), and the layers and
        // architecture of the platform image it chose from it.
        ensure!(
            v["Digest"].as_str() == Some(idx.index_digest.as_str()),
            "inspect {tagged} for {arch}: Digest {}, want the index {}",
            v["Digest"],
            idx.index_digest
        );
        let layers: Vec<&str> = want
            .image
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .collect();
        ensure!(
            v["Layers"] == serde_json::json!(layers),
            "inspect {tagged} for {arch}: Layers {}, want {layers:?}",
            v["Layers"]
        );
        ensure!(
            v["Architecture"].as_str() == Some(arch),
            "inspect for {arch}: Architecture {}",
            v["Architecture"]
        );
        let by_digest = format!("{repo}@{}", want.image.manifest_digest);
        ensure!(
            inspect_raw(&by_digest, false)? == want.image.manifest,
            "{by_digest}: manifest bytes differ"
        );
    }

    // Everything back out.
    let out_layout = tmp.path().join("pulled");
    run(skopeo()
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{tagged}"))
        .arg(format!("oci:{}:back", out_layout.display())))?;
    let (digest, bytes) = layout_tagged(&out_layout, "back")?;
    ensure!(
        digest == idx.index_digest,
        "pulled index digest {digest} != pushed {}",
        idx.index_digest
    );
    ensure!(bytes == idx.index_bytes, "pulled index bytes differ");
    for p in &idx.platforms {
        let manifest = read_blob(
            &out_layout,
            &common::Descriptor {
                media_type: p.image.manifest_media_type.clone(),
                digest: p.image.manifest_digest.clone(),
                size: p.image.manifest.len() as u64,
            },
        )?;
        ensure!(
            manifest == p.image.manifest,
            "{} manifest bytes differ after pull",
            p.architecture
        );
        for l in &p.image.layers {
            ensure!(
                read_blob(&out_layout, l)? == read_blob(&p.image.layout, l)?,
                "{} layer {} differs after pull",
                p.architecture,
                l.digest
            );
        }
    }
    Ok(())
}

#[test]
fn skopeo_docker_schema2_and_manifest_list() {
    with_registry(docker_formats);
}

const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Docker's formats: skopeo converts the image to schema 2 on the way in; Manta serves it with
/// its media type, byte for byte; a Docker manifest list over it resolves to the instance.
fn docker_formats(reg: &Registry) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let img = build_test_image(tmp.path(), "v1")?;
    let repo = "e2e/skopeo/docker-v2";
    let tagged = format!("{}/{repo}:v2s2", reg.addr());
    run(skopeo()
        .args(["copy", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(format!(
            "oci:{}:{}",
            img.image.layout.display(),
            img.image.tag
        ))
        .arg(format!("docker://{tagged}")))?;
    let raw = inspect_raw(&tagged, false)?;
    let m: serde_json::Value = serde_json::from_slice(&raw)?;
    ensure!(
        m["mediaType"] == DOCKER_V2,
        "not converted to schema 2: {m}"
    );
    let digest = sha256_digest(&raw);
    let resp = http(
        "GET",
        &format!("{}/v2/{repo}/manifests/v2s2", reg.url()),
        &[("Accept", DOCKER_V2)],
        None,
    )?;
    ensure!(resp.status == 200, "GET manifest: {}", resp.status);
    ensure!(
        resp.header("content-type").as_deref() == Some(DOCKER_V2),
        "Content-Type {:?}",
        resp.header("content-type")
    );
    ensure!(resp.header("docker-content-digest").as_deref() == Some(digest.as_str()));
    ensure!(resp.body == raw, "GET body differs from what skopeo saw");

    // Out again to a `dir:` copy, which keeps the manifest bytes and names blobs by digest.
    let out = tmp.path().join("dir-out");
    run(skopeo()
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{tagged}"))
        .arg(format!("dir:{}", out.display())))?;
    ensure!(
        std::fs::read(out.join("manifest.json"))? == raw,
        "dir: manifest differs"
    );
    let layers: Vec<String> = m["layers"]
        .as_array()
        .context("layers")?
        .iter()
        .map(|l| {
            l["digest"]
                .as_str()
                .map(str::to_string)
                .context("layer digest")
        })
        .collect::<Result<_>>()?;
    ensure!(
        layers.len() == img.image.layers.len(),
        "layer count changed"
    );
    for d in &layers {
        let bytes = std::fs::read(out.join(d.trim_start_matches("sha256:")))?;
        ensure!(sha256_digest(&bytes) == *d, "layer {d} copied out corrupt");
    }

    // A Docker manifest list referencing it.
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{
            "mediaType": DOCKER_V2, "digest": digest, "size": raw.len(),
            "platform": {"architecture": "amd64", "os": "linux"}
        }]
    }))?;
    let put = http(
        "PUT",
        &format!("{}/v2/{repo}/manifests/list", reg.url()),
        &[("Content-Type", DOCKER_LIST)],
        Some(list.clone()),
    )?;
    ensure!(
        put.status == 201,
        "PUT manifest list: {} {}",
        put.status,
        String::from_utf8_lossy(&put.body)
    );
    let listed = format!("{}/{repo}:list", reg.addr());
    ensure!(
        inspect_raw(&listed, false)? == list,
        "manifest list not served byte for byte"
    );
    let out = run(skopeo()
        .args([
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "amd64",
            "--override-os",
            "linux",
        ])
        .arg(format!("docker://{listed}")))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let got: Vec<String> = v["Layers"]
        .as_array()
        .context("Layers")?
        .iter()
        .filter_map(|l| l.as_str().map(str::to_string))
        .collect();
    ensure!(
        got == layers,
        "the list did not resolve to its instance: {got:?}"
    );
    Ok(())
}
