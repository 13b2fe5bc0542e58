//! A test-owned containerd 1.6 (own root, state, socket and config under a temp dir) and the
//! pull-unpack-compare check the containerd tests share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use super::{
    assert_trees_equal, chain_id, poll_until, read_tree, require_tool, run, Entry, LayoutImage,
};

/// A containerd owned by the test: own root, state, socket and config under a temp dir.
/// Dropping it unmounts whatever the test mounted, then kills containerd.
pub struct Containerd {
    child: Option<Child>,
    address: PathBuf,
    log: PathBuf,
    mounts: Vec<PathBuf>,
    // Last field: removed after the unmounts and the kill above.
    _dir: tempfile::TempDir,
}

impl Containerd {
    pub fn start() -> Result<Self> {
        require_tool(
            "containerd",
            "install it with `apt-get install containerd` (tested with 1.6.20)",
        );
        require_tool(
            "ctr",
            "it ships with containerd (`apt-get install containerd`)",
        );
        // The snapshot paths and the socket path must stay short and on a filesystem that allows
        // bind mounts: a temp dir under /tmp.
        let dir = tempfile::Builder::new().prefix("manta-ctrd-").tempdir()?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let address = dir.path().join("containerd.sock");
        let log = dir.path().join("containerd.log");
        let config = dir.path().join("config.toml");
        // Only what a pull + unpack needs: no CRI, no kernel-specific snapshotters. Content is
        // isolated per namespace so the by-digest pull (another namespace) really downloads.
        let toml = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = root.display(),
            state = state.display(),
            address = address.display(),
            ttrpc = dir.path().join("containerd.ttrpc.sock").display(),
            opt = dir.path().join("opt").display(),
        );
        std::fs::write(&config, toml)?;
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawn containerd")?;
        let mut me = Self {
            child: Some(child),
            address,
            log,
            mounts: Vec::new(),
            _dir: dir,
        };
        let ready = poll_until(
            "containerd to answer `ctr version`",
            Duration::from_secs(30),
            || {
                if let Some(c) = me.child.as_mut() {
                    if let Some(st) = c.try_wait()? {
                        bail!("containerd exited early with {st}");
                    }
                }
                Ok(super::run_with_timeout(
                    me.ctr("default").arg("version"),
                    Duration::from_secs(5),
                )
                .ok())
            },
        );
        if let Err(e) = ready {
            bail!("{e:#}\n--- containerd log ---\n{}", me.log_text());
        }
        Ok(me)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr --address <sock> --namespace <ns>`
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(namespace);
        c
    }

    /// Run a ctr command; on failure the error carries containerd's log tail as well.
    pub fn run_ctr(&self, namespace: &str, args: &[&str]) -> Result<String> {
        match run(self.ctr(namespace).args(args)) {
            Ok(out) => Ok(out.stdout_str()),
            Err(e) => {
                let log = self.log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{e:#}\n--- containerd log tail ---\n{}", tail.join("\n"))
            }
        }
    }

    /// Mount a read-only view of the committed snapshot `parent` at `target`.
    pub fn mount_view(
        &mut self,
        namespace: &str,
        key: &str,
        parent: &str,
        target: &Path,
    ) -> Result<()> {
        let out = self.run_ctr(
            namespace,
            &[
                "snapshots",
                "--snapshotter",
                "native",
                "view",
                "--mounts",
                key,
                parent,
            ],
        )?;
        let mounts: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("`ctr snapshots view --mounts` printed {out:?}"))?;
        let mounts = mounts.as_array().context("mounts is not an array")?;
        ensure!(
            mounts.len() == 1,
            "expected one mount from the native snapshotter, got {mounts:?}"
        );
        let m = &mounts[0];
        let typ = m["Type"].as_str().context("mount Type")?;
        let source = m["Source"].as_str().context("mount Source")?;
        let options: Vec<&str> = m["Options"]
            .as_array()
            .context("mount Options")?
            .iter()
            .filter_map(|o| o.as_str())
            .collect();
        std::fs::create_dir_all(target)?;
        run(Command::new("mount")
            .args(["-t", typ, "-o", &options.join(",")])
            .arg(source)
            .arg(target))
        .context("mount the snapshot view (the test needs root / CAP_SYS_ADMIN)")?;
        self.mounts.push(target.to_path_buf());
        Ok(())
    }

    pub fn unmount_all(&mut self) {
        while let Some(m) = self.mounts.pop() {
            if run(Command::new("umount").arg(&m)).is_err() {
                let _ = run(Command::new("umount").arg("-l").arg(&m));
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.unmount_all();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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
