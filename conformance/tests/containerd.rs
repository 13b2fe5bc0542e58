//! containerd 1.6 (`ctr`) against a fresh `manta serve`: a test-owned containerd pulls a
//! multi-layer umoci image (pushed with skopeo) by tag and by digest over plain HTTP, unpacks it
//! with the native snapshotter, and every file of the mounted root filesystem is compared with
//! what was put into the layers.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::Result;
use common::containerd::{pull_and_verify, Containerd, Expect};
use common::{
    build_test_image, build_test_index, require_tool, run, skopeo_push, with_registry, Entry,
    Registry,
};

#[test]
fn containerd_pulls_and_unpacks_by_tag_and_digest() {
    with_registry(containerd_flow);
}

fn containerd_flow(reg: &Registry) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let img = build_test_image(tmp.path(), "v1")?;
    let repo = format!("{}/e2e/containerd/image", reg.addr());
    let tagged = format!("{repo}:v1");
    skopeo_push(&img.image, &tagged)?;

    let mut ctrd = Containerd::start()?;
    let want = Expect {
        listed_digest: &img.image.manifest_digest,
        image: &img.image,
        rootfs: &img.rootfs,
    };
    pull_and_verify(
        &mut ctrd,
        "bytag",
        &tagged,
        &[],
        &want,
        &tmp.path().join("mnt-tag"),
    )?;
    let by_digest = format!("{repo}@{}", img.image.manifest_digest);
    let mnt = tmp.path().join("mnt-digest");
    pull_and_verify(&mut ctrd, "bydigest", &by_digest, &[], &want, &mnt)?;
    drop(ctrd);
    Ok(())
}

#[test]
fn containerd_pulls_platforms_from_an_index() {
    with_registry(containerd_index_flow);
}

/// An image index with linux/amd64 and linux/arm64: containerd resolves the index, picks the
/// requested platform's manifest and unpacks that platform's layer.
fn containerd_index_flow(reg: &Registry) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let idx = build_test_index(tmp.path(), "multi")?;
    let repo = format!("{}/e2e/containerd/multi-arch", reg.addr());
    let tagged = format!("{repo}:multi");
    require_tool("skopeo", "install it with `apt-get install skopeo`");
    run(Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:multi", idx.layout.display()))
        .arg(format!("docker://{tagged}")))?;

    let mut ctrd = Containerd::start()?;
    for arch in ["arm64", "amd64"] {
        let p = idx.platform(arch)?;
        let rootfs = BTreeMap::from([
            ("etc".to_string(), Entry::Dir),
            (
                "etc/manta-arch".to_string(),
                Entry::file(&p.arch_file, 0o644),
            ),
        ]);
        let want = Expect {
            listed_digest: &idx.index_digest,
            image: &p.image,
            rootfs: &rootfs,
        };
        let platform = format!("linux/{arch}");
        let mnt = tmp.path().join(format!("mnt-{arch}"));
        pull_and_verify(
            &mut ctrd,
            arch,
            &tagged,
            &["--platform", &platform],
            &want,
            &mnt,
        )?;
    }
    drop(ctrd);
    Ok(())
}
