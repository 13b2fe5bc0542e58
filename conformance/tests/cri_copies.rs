//! How many copies of a model a node holds after kubelet pulls its image form through
//! containerd's CRI plugin (what an image volume does), with containerd's
//! `discard_unpacked_layers` off (its default) and on: Manta's cache, containerd's content store,
//! and the unpacked snapshot, each measured on disk, as multiples of the model's size.
//!
//! The pull is the CRI call kubelet makes (`tools/cri-pull`: no crictl ships in the registries
//! these machines reach), against a test-owned containerd 1.6 with its CRI plugin on, from a
//! Manta agent in front of the Hugging Face fixture.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use manta_conformance::hub_fixture::{FixtureOptions, HubFixture};
use manta_conformance::process::{require_tool, workspace_bin};
use manta_conformance::server::MantaServer;

const REPO: &str = "copies/model";
/// The hub's rate, bytes per second.
const RATE: u64 = 16 << 20;

fn cri_pull_bin(dir: &Path) -> PathBuf {
    let bin = dir.join("cri-pull");
    manta_conformance::process::go(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/cri-pull"),
        &["build", "-o", bin.to_str().unwrap(), "."],
        "apt-get install golang-go golang-google-grpc-dev",
    );
    bin
}

/// Bytes of regular files under `dir` (each inode once).
fn disk_bytes(dir: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1", "--apparent-size"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

struct Containerd {
    child: std::process::Child,
    socket: PathBuf,
    root: PathBuf,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The native snapshotter leaves no mounts; nothing else to undo.
    }
}

fn containerd(dir: &Path, registry: &str, discard: bool) -> Containerd {
    require_tool("containerd", "apt-get install containerd");
    let root = dir.join("root");
    let socket = dir.join("c.sock");
    let certs = dir.join("certs.d");
    std::fs::create_dir_all(certs.join(registry)).unwrap();
    std::fs::write(
        certs.join(registry).join("hosts.toml"),
        format!(
            "server = \"http://{registry}\"\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{ttrpc}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    discard_unpacked_layers = {discard}
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni-bin"
    conf_dir = "{dir}/cni-conf"
"#,
        root = root.display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        ttrpc = dir.join("c.ttrpc.sock").display(),
        opt = dir.join("opt").display(),
        certs = certs.display(),
        dir = dir.display(),
    );
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("containerd.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("containerd.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Containerd {
        child,
        socket,
        root,
    }
}

#[test]
fn a_model_pulled_through_cri_is_on_disk_three_times_or_twice_with_discard_unpacked_layers() {
    let tmp = tempfile::tempdir().unwrap();
    // Rate-limited, so that building the image form (fetching and hashing the model) takes a
    // time the pull can be compared with.
    let (hub, size) = HubFixture::single_model(
        tmp.path(),
        REPO,
        32 << 20,
        FixtureOptions {
            rate_limit: Some(RATE),
            ..FixtureOptions::default()
        },
    )
    .unwrap();
    let cri_pull = cri_pull_bin(tmp.path());
    let mut report = Vec::new();
    for discard in [false, true] {
        let run = tmp.path().join(format!("discard-{discard}"));
        std::fs::create_dir_all(&run).unwrap();
        let agent = MantaServer::spawn(
            &workspace_bin("manta"),
            &run.join("manta"),
            &["--hf-endpoint", &hub.url(), "--hf-token", ""],
        )
        .unwrap();
        let registry = agent.addr().to_string();
        let c = containerd(&run.join("containerd"), &registry, discard);
        let reference = format!("{registry}/hf/{REPO}:main");
        let out = Command::new(&cri_pull)
            .args(["--socket", c.socket.to_str().unwrap(), &reference])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(run.join("containerd/containerd.err")).unwrap_or_default()
        );
        // containerd discards unpacked layers at its next garbage collection: run one (a lease
        // deleted with --sync collects synchronously).
        let ctr = |args: &[&str]| {
            let out = Command::new("ctr")
                .args(["--address", c.socket.to_str().unwrap(), "-n", "k8s.io"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ctr {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let lease = ctr(&["leases", "create"]);
        let lease = lease.split_whitespace().next().unwrap().to_string();
        ctr(&["leases", "delete", "--sync", &lease]);
        // The first pull of a model no node held: one PullImage call, held while the agent
        // fetched and hashed the model (its output: the image's ref and the seconds it took).
        let pulled = String::from_utf8_lossy(&out.stdout).into_owned();
        let secs: f64 = pulled
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let fetch = size as f64 / RATE as f64;
        report.push(format!(
            "a cold PullImage took {secs:.2} s in one call; the model's download from the hub alone takes {fetch:.2} s ({:.2}x)",
            secs / fetch
        ));
        let content = disk_bytes(&c.root.join("io.containerd.content.v1.content"));
        let snapshot = disk_bytes(&c.root.join("io.containerd.snapshotter.v1.native"));
        // Manta's blobs (its data dir also holds a fixed index reserve and the index itself).
        let manta = disk_bytes(&run.join("manta/blobs"));
        let copies = |b: u64| b as f64 / size as f64;
        report.push(format!(
            "discard_unpacked_layers = {discard}: Manta {:.2}×, content store {:.2}×, snapshot {:.2}×, total {:.2}× the model",
            copies(manta),
            copies(content),
            copies(snapshot),
            copies(manta + content + snapshot)
        ));
        // The unpacked files and Manta's cache hold the model whatever the setting.
        assert!(copies(snapshot) >= 0.99, "{}", report.join("\n"));
        // One copy in Manta: the image form's tar layers are recipes over the raw file.
        assert!(
            (0.99..1.05).contains(&copies(manta)),
            "{}",
            report.join("\n")
        );
        if discard {
            assert!(copies(content) < 0.05, "{}", report.join("\n"));
        } else {
            assert!(copies(content) >= 0.99, "{}", report.join("\n"));
        }
        drop(c);
        drop(agent);
    }
    eprintln!("{}", report.join("\n"));
}
