//! A test-owned containerd 1.6 (own root, state, socket and config under a temp dir) and the
//! pull-unpack-compare check the containerd tests share.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::{assert_trees_equal, chain_id, read_tree, Entry, LayoutImage};

pub use manta_conformance::containerd::Containerd;

/// The manifest digest `ctr images ls` reports for `reference`.
pub fn listed_digest(ctrd: &Containerd, ns: &str, reference: &str) -> Result<String> {
    let out = ctrd.run_ctr(ns, &["images", "ls"])?;
    for line in out.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() == Some(&reference) {
            return cols
                .get(2)
                .map(|d| d.to_string())
                .context("no DIGEST column");
        }
    }
    bail!("{reference} not in `ctr images ls`:\n{out}")
}

/// What a pull must leave in containerd.
pub struct Expect<'a> {
    /// The digest `ctr images ls` must record (the manifest's, or the index's).
    pub listed_digest: &'a str,
    /// The platform image that gets unpacked.
    pub image: &'a LayoutImage,
    /// Its root filesystem.
    pub rootfs: &'a BTreeMap<String, Entry>,
}

/// Pull `reference` into namespace `ns` (with `extra` pull flags), check what containerd stored,
/// mount the unpacked rootfs read-only and compare every file.
pub fn pull_and_verify(
    ctrd: &mut Containerd,
    ns: &str,
    reference: &str,
    extra: &[&str],
    want: &Expect<'_>,
    mnt: &Path,
) -> Result<()> {
    let image = want.image;
    let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
    args.extend(extra);
    args.push(reference);
    ctrd.run_ctr(ns, &args)
        .with_context(|| format!("ctr images pull {reference}"))?;

    let digest = listed_digest(ctrd, ns, reference)?;
    ensure!(
        digest == want.listed_digest,
        "containerd recorded {reference} as {digest}, pushed {}",
        want.listed_digest
    );

    // Every blob landed in this namespace's content store.
    let content = ctrd.run_ctr(ns, &["content", "ls", "-q"])?;
    let have: std::collections::BTreeSet<&str> = content.lines().map(str::trim).collect();
    let mut blobs = vec![
        want.listed_digest,
        image.manifest_digest.as_str(),
        image.config.digest.as_str(),
    ];
    blobs.extend(image.layers.iter().map(|l| l.digest.as_str()));
    for d in blobs {
        ensure!(
            have.contains(d),
            "content {d} missing from containerd after pulling {reference}; have {have:?}"
        );
    }

    // The unpacked top layer is committed under the image's chain ID.
    let top = chain_id(&image.diff_ids);
    let snaps = ctrd.run_ctr(ns, &["snapshots", "--snapshotter", "native", "ls"])?;
    ensure!(
        snaps.contains(&top),
        "no committed snapshot {top} (chain ID) after unpacking; snapshots:\n{snaps}"
    );

    ctrd.mount_view(ns, &format!("e2e-view-{ns}"), &top, mnt)?;
    let actual = read_tree(mnt)?;
    assert_trees_equal(
        want.rootfs,
        &actual,
        &format!("rootfs of {reference} unpacked by containerd"),
    )?;
    ensure!(
        std::fs::write(mnt.join("probe"), b"x").is_err(),
        "the read-only view of {reference} is writable"
    );
    ctrd.unmount_all();
    Ok(())
}
