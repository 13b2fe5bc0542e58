//! A containerd 1.6 owned by its caller (own root, state, socket and config under a temp dir),
//! for the tests that pull through it and for the benchmark's `ctr images pull` figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::process::{poll_until, require_tool, run};

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
        Self::start_under(&std::env::temp_dir())
    }

    /// With its root, state and socket in a new directory under `base` (`/dev/shm`, say, to
    /// take the disk out of a benchmark).
    pub fn start_under(base: &Path) -> Result<Self> {
        require_tool(
            "containerd",
            "install it with `apt-get install containerd` (tested with 1.6.20)",
        );
        require_tool(
            "ctr",
            "it ships with containerd (`apt-get install containerd`)",
        );
        // The snapshot paths and the socket path must stay short and on a filesystem that allows
        // bind mounts: a temp dir under /tmp by default.
        let dir = tempfile::Builder::new()
            .prefix("manta-ctrd-")
            .tempdir_in(base)?;
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
                Ok(crate::process::run_with_timeout(
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
