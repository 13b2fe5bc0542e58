//! Real clients against `manta serve --hf-endpoint <local Hugging Face fixture>` serving the real
//! all-MiniLM-L6-v2 files (`sentence-transformers/all-MiniLM-L6-v2`, mixed case on the hub,
//! addressed by its lowercase OCI name): oras-py pulls the raw ModelPack form, containerd pulls
//! and unpacks the image form, skopeo copies both, `safetensors` opens the pulled weights, two
//! agents agree on every digest, and Range requests on an image-form tar layer answer the exact
//! bytes whether or not the raw blob under it is held. Every file is compared byte for byte with
//! the originals the fixture serves.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use common::containerd::{listed_digest, pull_and_verify, Containerd, Expect};
use common::hub::{
    check_modelpack, fetch_blob, get_blob, get_manifest, head_manifest, layers, oras_pull,
    safetensors_listing, with_hub_agents, with_mode, Originals, Served, IMAGE_REPO, MODEL_ARTIFACT,
    MODEL_CONFIG, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST, RAW_REPO,
};
use common::{
    assert_trees_equal, poll_until, read_tree, require_skopeo, require_tool, run, sha256_digest,
    Descriptor, LayoutImage, Registry,
};
use manta_conformance::hub_fixture::{HubFixture, MINILM_COMMIT, MINILM_ID};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// 1. oras pulls the raw form
// ---------------------------------------------------------------------------------------------

#[test]
fn oras_pulls_the_raw_form_byte_for_byte() {
    with_hub_agents(1, |_hub, regs| oras_raw(&regs[0]));
}

fn oras_raw(reg: &Registry) -> Result<()> {
    let originals = Originals::load()?;
    let tmp = tempfile::tempdir()?;
    let outdir = tmp.path().join("pulled");
    let target = format!("{}/{RAW_REPO}:main", reg.addr());

    // oras-py first, on a cold agent: the lowercase name must find the hub's casing.
    let result = oras_pull(reg, &target, &outdir, tmp.path())?;

    let served = get_manifest(reg, RAW_REPO, "main")?;
    check_modelpack(reg, &served, &originals, MINILM_ID, MINILM_COMMIT)?;
    ensure!(
        result["manifest"] == served.json,
        "oras-py read the manifest {}, the agent serves {}",
        result["manifest"],
        served.json
    );
    // oras resolves by HEAD: Docker-Content-Digest and Content-Length of the same manifest.
    let (digest, len) = head_manifest(reg, RAW_REPO, "main")?;
    ensure!(
        digest == served.digest && len == served.bytes.len() as u64,
        "HEAD {RAW_REPO}:main: {digest} / {len} bytes, GET serves {} / {} bytes",
        served.digest,
        served.bytes.len()
    );

    let want_files: Vec<&String> = originals.files.keys().collect();
    let got_files: Vec<String> = serde_json::from_value(result["files"].clone())?;
    ensure!(
        got_files.iter().collect::<Vec<_>>() == want_files,
        "oras-py wrote {got_files:?}, the repo holds {want_files:?}"
    );
    // oras-py does not set file modes: compare content and paths.
    assert_trees_equal(
        &originals.tree(0o644),
        &with_mode(read_tree(&outdir)?, 0o644),
        "files oras-py pulled from the raw form",
    )
}

// ---------------------------------------------------------------------------------------------
// 2. containerd pulls and unpacks the image form
// ---------------------------------------------------------------------------------------------

#[test]
fn containerd_pulls_and_unpacks_the_image_form() {
    with_hub_agents(1, |_hub, regs| containerd_image(&regs[0]));
}

fn containerd_image(reg: &Registry) -> Result<()> {
    let originals = Originals::load()?;
    let tmp = tempfile::tempdir()?;
    let reference = format!("{}/{IMAGE_REPO}:main", reg.addr());
    let mut ctrd = Containerd::start()?;

    // First pull on a cold agent: containerd's HEAD waits while the agent downloads and hashes
    // every file into its tar layer.
    ctrd.run_ctr(
        "cold",
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            &reference,
        ],
    )
    .with_context(|| format!("first ctr images pull {reference}"))?;

    let served = get_manifest(reg, IMAGE_REPO, "main")?;
    let image = check_image_form(reg, &served, &originals)?;
    let cold = listed_digest(&ctrd, "cold", &reference)?;
    ensure!(
        cold == served.digest,
        "containerd recorded {cold}, the agent serves {}",
        served.digest
    );

    // A second pull in a namespace of its own (its own content), unpacked, mounted and compared
    // file by file: paths (the subfolder too), bytes and mode 0644.
    pull_and_verify(
        &mut ctrd,
        "verify",
        &reference,
        &[],
        &Expect {
            listed_digest: &served.digest,
            image: &image,
            rootfs: &originals.tree(0o644),
        },
        &tmp.path().join("mnt"),
    )?;
    drop(ctrd);
    Ok(())
}

/// Check the image form: an OCI image manifest without `artifactType`, an image config for this
/// node's platform whose `rootfs.diff_ids` are the layer digests, one uncompressed tar layer per
/// file. Returns it as a [`LayoutImage`] (without a layout on disk) for the containerd checks.
fn check_image_form(reg: &Registry, m: &Served, originals: &Originals) -> Result<LayoutImage> {
    let j = &m.json;
    ensure!(
        m.media_type == OCI_MANIFEST && j["mediaType"] == OCI_MANIFEST,
        "image form: Content-Type {} / mediaType {}, want {OCI_MANIFEST} (one platform)",
        m.media_type,
        j["mediaType"]
    );
    ensure!(
        j.get("artifactType").is_none(),
        "image form has an artifactType ({}): CRI-O would treat it as an artifact",
        j["artifactType"]
    );
    ensure!(
        j["config"]["mediaType"] == OCI_CONFIG,
        "image config mediaType {}",
        j["config"]["mediaType"]
    );
    let config = descriptor(&j["config"])?;
    let config_bytes = fetch_blob(reg, IMAGE_REPO, &config.digest, config.size)?;
    let cfg: Value = serde_json::from_slice(&config_bytes)?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ensure!(
        cfg["os"] == "linux" && cfg["architecture"] == arch,
        "image config platform {}/{}, want linux/{arch}",
        cfg["os"],
        cfg["architecture"]
    );
    let layers: Vec<Descriptor> = layers(j)?
        .into_iter()
        .map(descriptor)
        .collect::<Result<_>>()?;
    for l in &layers {
        ensure!(
            l.media_type == OCI_LAYER_TAR,
            "image layer {} is {}, want {OCI_LAYER_TAR}",
            l.digest,
            l.media_type
        );
    }
    ensure!(
        layers.len() == originals.files.len(),
        "{} image layers for {} files",
        layers.len(),
        originals.files.len()
    );
    let diff_ids: Vec<String> = serde_json::from_value(cfg["rootfs"]["diff_ids"].clone())
        .context("image config rootfs.diff_ids")?;
    let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
    ensure!(
        cfg["rootfs"]["type"] == "layers" && diff_ids == digests,
        "image config rootfs {}, want the layer digests {digests:?} (uncompressed layers)",
        cfg["rootfs"]
    );
    Ok(LayoutImage {
        layout: Default::default(),
        tag: "main".into(),
        manifest_digest: m.digest.clone(),
        manifest_media_type: m.media_type.clone(),
        manifest: m.bytes.clone(),
        config,
        config_bytes,
        layers,
        diff_ids,
    })
}

fn descriptor(v: &Value) -> Result<Descriptor> {
    Ok(Descriptor {
        media_type: v["mediaType"].as_str().context("mediaType")?.to_string(),
        digest: v["digest"].as_str().context("digest")?.to_string(),
        size: v["size"].as_u64().context("size")?,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. skopeo copies and inspects both forms
// ---------------------------------------------------------------------------------------------

#[test]
fn skopeo_copies_and_inspects_both_forms() {
    with_hub_agents(1, |_hub, regs| skopeo_forms(&regs[0]));
}

fn skopeo_inspect_raw(reference: &str, config: bool) -> Result<Vec<u8>> {
    require_skopeo();
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false", "--raw"]);
    if config {
        cmd.arg("--config");
    }
    Ok(run(cmd.arg(format!("docker://{reference}")))?.stdout)
}

fn skopeo_forms(reg: &Registry) -> Result<()> {
    require_skopeo();
    require_tool("tar", "install GNU tar");
    let originals = Originals::load()?;
    let tmp = tempfile::tempdir()?;

    // Image form: copied digest for digest, every blob verified, the layers untar to the files.
    let image_ref = format!("{}/{IMAGE_REPO}:main", reg.addr());
    let layout = tmp.path().join("image");
    run(Command::new("skopeo")
        .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{image_ref}"))
        .arg(format!("oci:{}:main", layout.display())))
    .context("skopeo copy of the image form")?;
    let served = get_manifest(reg, IMAGE_REPO, "main")?;
    let want = check_image_form(reg, &served, &originals)?;
    let copied = LayoutImage::read(&layout, "main")?;
    ensure!(
        copied.manifest_digest == served.digest && copied.manifest == served.bytes,
        "skopeo wrote manifest {}, the agent serves {}",
        copied.manifest_digest,
        served.digest
    );
    ensure!(
        copied.config == want.config && copied.layers == want.layers,
        "skopeo's copy has other blobs: {:?} {:?}",
        copied.config,
        copied.layers
    );
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    for l in &copied.layers {
        run(Command::new("tar")
            .arg("-xf")
            .arg(copied.blob_path(&l.digest))
            .arg("-C")
            .arg(&rootfs))
        .with_context(|| format!("untar layer {}", l.digest))?;
    }
    assert_trees_equal(
        &originals.tree(0o644),
        &read_tree(&rootfs)?,
        "the image form's layers copied by skopeo, untarred",
    )?;

    let raw_manifest = skopeo_inspect_raw(&image_ref, false)?;
    ensure!(
        raw_manifest == served.bytes,
        "skopeo inspect --raw printed another manifest than the agent serves"
    );
    let m: Value = serde_json::from_slice(&raw_manifest)?;
    ensure!(
        m["mediaType"] == OCI_MANIFEST
            && m.get("artifactType").is_none()
            && m["config"]["mediaType"] == OCI_CONFIG
            && layers(&m)?.iter().all(|l| l["mediaType"] == OCI_LAYER_TAR),
        "skopeo inspect --raw of the image form: {m}"
    );
    let cfg = skopeo_inspect_raw(&image_ref, true)?;
    ensure!(
        cfg == want.config_bytes,
        "skopeo inspect --raw --config printed {}, the agent's config is {}",
        String::from_utf8_lossy(&cfg),
        String::from_utf8_lossy(&want.config_bytes)
    );

    // Raw form: a ModelPack artifact (config application/vnd.cncf.model.config.v1+json, layers
    // …model.*.v1.raw).
    let raw_ref = format!("{}/{RAW_REPO}:main", reg.addr());
    let raw_served = get_manifest(reg, RAW_REPO, "main")?;
    check_modelpack(reg, &raw_served, &originals, MINILM_ID, MINILM_COMMIT)?;
    let inspected = skopeo_inspect_raw(&raw_ref, false)?;
    ensure!(
        inspected == raw_served.bytes,
        "skopeo inspect --raw of the raw form printed another manifest than the agent serves"
    );
    let m: Value = serde_json::from_slice(&inspected)?;
    ensure!(
        m["mediaType"] == OCI_MANIFEST
            && m["artifactType"] == MODEL_ARTIFACT
            && m["config"]["mediaType"] == MODEL_CONFIG
            && layers(&m)?
                .iter()
                .all(|l| l["mediaType"].as_str().is_some_and(|t| t
                    .starts_with("application/vnd.cncf.model.")
                    && t.ends_with(".v1.raw"))),
        "skopeo inspect --raw of the raw form: {m}"
    );
    // skopeo 1.9.3 (containers/image 5.23) copies an artifact with a non-image config as long as
    // nothing has to be converted: with --preserve-digests the manifest, the ModelPack config and
    // every `…v1.raw` layer land unchanged. (It refuses image-only operations on it, e.g.
    // `skopeo inspect` without --raw fails with "unsupported image-specific operation on artifact
    // with type \"application/vnd.cncf.model.config.v1+json\"".)
    let raw_layout = tmp.path().join("raw");
    run(Command::new("skopeo")
        .args(["copy", "--preserve-digests", "--src-tls-verify=false"])
        .arg(format!("docker://{raw_ref}"))
        .arg(format!("oci:{}:main", raw_layout.display())))
    .context("skopeo copy of the raw form")?;
    check_raw_layout(reg, &raw_layout, &raw_served, &originals)
}

/// An OCI layout skopeo wrote from the raw form: the same manifest, and every layer blob is the
/// original file.
fn check_raw_layout(
    reg: &Registry,
    layout: &Path,
    served: &Served,
    originals: &Originals,
) -> Result<()> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let entry = index["manifests"]
        .as_array()
        .context("index.json manifests")?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "main")
        .with_context(|| format!("no manifest tagged main in {index}"))?;
    ensure!(
        entry["digest"] == served.digest.as_str(),
        "skopeo stored the raw form as {}, the agent serves {}",
        entry["digest"],
        served.digest
    );
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        std::fs::read(layout.join("blobs/sha256").join(hex))
            .with_context(|| format!("blob {digest} in {}", layout.display()))
    };
    ensure!(
        blob(&served.digest)? == served.bytes,
        "skopeo stored other manifest bytes"
    );
    let cfg = &served.json["config"];
    let cfg_digest = cfg["digest"].as_str().context("config digest")?;
    let cfg_bytes = fetch_blob(
        reg,
        RAW_REPO,
        cfg_digest,
        cfg["size"].as_u64().context("config size")?,
    )?;
    ensure!(
        blob(cfg_digest)? == cfg_bytes,
        "skopeo's copy of the ModelPack config differs from the agent's"
    );
    for l in layers(&served.json)? {
        let title = l["annotations"]["org.opencontainers.image.title"]
            .as_str()
            .context("title")?;
        let digest = l["digest"].as_str().context("digest")?;
        ensure!(
            blob(digest)? == originals.get(title)?,
            "skopeo's copy of layer {title} differs from the original file"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. The pulled model loads
// ---------------------------------------------------------------------------------------------

#[test]
fn safetensors_opens_the_model_oras_pulled() {
    with_hub_agents(1, |_hub, regs| model_loads(&regs[0]));
}

fn model_loads(reg: &Registry) -> Result<()> {
    let originals = Originals::load()?;
    let tmp = tempfile::tempdir()?;
    let outdir = tmp.path().join("pulled");
    let target = format!("{}/{RAW_REPO}:main", reg.addr());
    oras_pull(reg, &target, &outdir, tmp.path())?;

    let pulled = safetensors_listing(&outdir.join("model.safetensors"), tmp.path())?;
    let original = safetensors_listing(&originals.dir.join("model.safetensors"), tmp.path())?;
    let names = |v: &Value| -> Vec<String> {
        v["tensors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect()
    };
    let original_names = names(&original);
    ensure!(
        original_names
            .iter()
            .any(|n| n == "embeddings.word_embeddings.weight")
            && original_names.len() > 50,
        "the original model.safetensors lists unexpected tensors: {original_names:?}"
    );
    ensure!(
        names(&pulled) == original_names,
        "tensor names differ: pulled {:?}, original {original_names:?}",
        names(&pulled)
    );
    ensure!(
        pulled == original,
        "same names, but dtypes, shapes, values or metadata differ"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Determinism
// ---------------------------------------------------------------------------------------------

#[test]
fn two_agents_answer_the_same_digests() {
    with_hub_agents(2, |_hub, regs| determinism(regs));
}

fn determinism(regs: &[Registry]) -> Result<()> {
    let mut seen: Vec<BTreeMap<String, String>> = Vec::new();
    let by_branch_first = [
        (RAW_REPO, "main"),
        (IMAGE_REPO, "main"),
        (RAW_REPO, MINILM_COMMIT),
        (IMAGE_REPO, MINILM_COMMIT),
    ];
    // The second agent is asked in the opposite order: the commit's image form first (built
    // under the commit's tag), then the branch, which must find and reuse that commit.
    let by_commit_first = {
        let mut v = by_branch_first;
        v.reverse();
        v
    };
    for (reg, order) in regs.iter().zip([by_branch_first, by_commit_first]) {
        let mut digests = BTreeMap::new();
        // HEAD by tag first: what clients resolve with, on a cold agent.
        for (repo, tag) in order {
            let (digest, len) = head_manifest(reg, repo, tag)?;
            let got = get_manifest(reg, repo, tag)?;
            ensure!(
                got.digest == digest && got.bytes.len() as u64 == len,
                "{} {repo}:{tag}: HEAD says {digest} / {len} bytes, GET serves {} / {} bytes",
                reg.addr(),
                got.digest,
                got.bytes.len()
            );
            digests.insert(format!("{repo}:{tag}"), digest);
        }
        ensure!(
            digests[&format!("{RAW_REPO}:{MINILM_COMMIT}")] == digests[&format!("{RAW_REPO}:main")],
            "{}: hf-raw by commit and by branch differ: {digests:#?}",
            reg.addr()
        );
        ensure!(
            digests[&format!("{IMAGE_REPO}:{MINILM_COMMIT}")]
                == digests[&format!("{IMAGE_REPO}:main")],
            "{}: hf by commit and by branch differ: {digests:#?}",
            reg.addr()
        );
        seen.push(digests);
    }
    ensure!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "two agents on separate data dirs answer different digests: {seen:#?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Range on an image-form layer
// ---------------------------------------------------------------------------------------------

#[test]
fn range_on_an_image_layer_matches_the_full_layer() {
    with_hub_agents(1, |hub, regs| image_layer_ranges(hub, &regs[0]));
}

/// One ranged GET of an image-form layer: 206, `Content-Range`, `Content-Length`, and the bytes
/// of `full` in that range.
fn check_range(
    reg: &Registry,
    layer: &Descriptor,
    full: &[u8],
    first: u64,
    last: u64,
) -> Result<()> {
    let range = format!("bytes={first}-{last}");
    let resp = get_blob(reg, IMAGE_REPO, &layer.digest, Some(&range))?;
    let what = format!("GET {IMAGE_REPO} blob {} with Range: {range}", layer.digest);
    ensure!(
        resp.status == 206,
        "{what}: status {}, want 206",
        resp.status
    );
    let want_cr = format!("bytes {first}-{last}/{}", layer.size);
    ensure!(
        resp.header("content-range").as_deref() == Some(want_cr.as_str()),
        "{what}: Content-Range {:?}, want {want_cr}",
        resp.header("content-range")
    );
    let len = last - first + 1;
    ensure!(
        resp.header("content-length").as_deref() == Some(len.to_string().as_str()),
        "{what}: Content-Length {:?}, want {len}",
        resp.header("content-length")
    );
    let want = &full[first as usize..=last as usize];
    ensure!(
        resp.body == want,
        "{what}: {} bytes that differ from the full layer's bytes {first}..={last} (first difference at {:?})",
        resp.body.len(),
        resp.body.iter().zip(want).position(|(a, b)| a != b)
    );
    Ok(())
}

fn image_layer_ranges(hub: &HubFixture, reg: &Registry) -> Result<()> {
    let originals = Originals::load()?;
    let tmp = tempfile::tempdir()?;
    let served = get_manifest(reg, IMAGE_REPO, "main")?;
    let image = check_image_form(reg, &served, &originals)?;
    let weights = originals.get("model.safetensors")?;
    let raw_digest = sha256_digest(weights);
    // model.safetensors' layer: the only one larger than the file.
    let layer = image
        .layers
        .iter()
        .find(|l| l.size > weights.len() as u64)
        .context("no image layer as large as model.safetensors")?
        .clone();

    // The full layer: a tar holding exactly model.safetensors.
    let full = fetch_blob(reg, IMAGE_REPO, &layer.digest, layer.size)?;
    let tar_path = tmp.path().join("layer.tar");
    std::fs::write(&tar_path, &full)?;
    let untarred = tmp.path().join("untarred");
    std::fs::create_dir_all(&untarred)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&untarred))?;
    let mut want_tree = originals.tree(0o644);
    want_tree.retain(|p, _| p == "model.safetensors");
    assert_trees_equal(
        &want_tree,
        &read_tree(&untarred)?,
        "the weights' image layer, untarred",
    )?;

    let size = layer.size;
    let ranges = [(100, 5000), (size - 3000, size - 1)];

    // Not held: the build cached the raw blob; lose its file, as a disk cleanup would. The
    // agent must stream the layer's ranges from the hub again (the recipe is all it keeps).
    let hex = raw_digest.trim_start_matches("sha256:");
    let blob_file = reg
        .data_dir()?
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    ensure!(
        blob_file.is_file(),
        "the image build did not leave the raw blob at {}",
        blob_file.display()
    );
    std::fs::remove_file(&blob_file)?;
    let before = hub.downloads(MINILM_ID, "model.safetensors");
    for (first, last) in ranges {
        check_range(reg, &layer, &full, first, last)?;
    }
    let after = hub.downloads(MINILM_ID, "model.safetensors");
    ensure!(
        after > before,
        "the ranges were answered without fetching model.safetensors from the hub, yet its \
         blob file was gone ({before} downloads before, {after} after)"
    );

    // Held again: the raw form's blob, byte for byte, then the same ranges from disk.
    let raw = fetch_blob(reg, RAW_REPO, &raw_digest, weights.len() as u64)?;
    ensure!(raw == weights, "the raw blob is not model.safetensors");
    poll_until(
        "the raw blob to be held again",
        std::time::Duration::from_secs(60),
        || {
            Ok(std::fs::metadata(&blob_file)
                .ok()
                .filter(|m| m.len() == weights.len() as u64)
                .map(|_| ()))
        },
    )?;
    let held = hub.downloads(MINILM_ID, "model.safetensors");
    for (first, last) in ranges {
        check_range(reg, &layer, &full, first, last)?;
    }
    let full_again = fetch_blob(reg, IMAGE_REPO, &layer.digest, layer.size)?;
    ensure!(full_again == full, "the full layer changed");
    let end = hub.downloads(MINILM_ID, "model.safetensors");
    if end != held {
        bail!("ranges of a held blob went to the hub: {held} downloads before, {end} after");
    }
    Ok(())
}
