//! The images' root filesystems (`images/rootfs.sh`: Debian bookworm from Debian's mirror with
//! the packages the Containerfiles install, and the built binary): the agent and the operator
//! run inside them, so the images name every runtime library the binaries need. These machines
//! reach no image registry; the root is what `podman import` would make the image from.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use manta_conformance::process::{http_get, require_tool};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory holding this workspace's binaries (the test executable's parent's parent).
fn bins() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for b in ["manta", "manta-operator"] {
        assert!(
            dir.join(b).is_file(),
            "no {b} in {}: build the workspace's binaries",
            dir.display()
        );
    }
    dir
}

fn rootfs(kind: &str, out: &Path) {
    require_tool("mmdebstrap", "apt-get install mmdebstrap");
    let st = Command::new(repo().join("images/rootfs.sh"))
        .args([kind, bins().to_str().unwrap(), out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success(), "images/rootfs.sh {kind}");
}

/// A process in `root` (its own mount namespace: /proc and /dev mounted, then chroot); killed
/// with its group on drop.
struct InRoot(Child);

impl InRoot {
    fn start(root: &Path, argv: &[&str], stdout: Stdio) -> Self {
        use std::os::unix::process::CommandExt as _;
        let r = root.display();
        let mut script = format!(
            "set -e\nmount -t proc proc {r}/proc\nmount --rbind /dev {r}/dev\nexec chroot {r}"
        );
        for a in argv {
            script.push_str(&format!(" '{}'", a.replace('\'', r"'\''")));
        }
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap();
        InRoot(child)
    }
}

impl Drop for InRoot {
    fn drop(&mut self) {
        // Only while its leader lives is the group this process's.
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .output();
            let _ = self.0.wait();
        }
    }
}

fn get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_once('/')?;
    http_get(addr, &format!("/{path}"))
}

#[test]
fn the_agent_runs_in_its_image_root_with_its_store_open() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("agent");
    rootfs("agent", &root);
    std::fs::create_dir_all(root.join("data")).unwrap();
    let mut agent = InRoot::start(
        &root,
        &[
            "/usr/local/bin/manta",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/data",
            "--log-format",
            "json",
        ],
        Stdio::piped(),
    );
    let stdout = agent.0.stdout.take().unwrap();
    let url = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("manta listening on ")
                .map(|u| u.trim().to_string())
        })
        .expect("the agent printed no address");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if get(&format!("{url}/readyz")).is_some_and(|(s, _)| s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent is not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The registry API answers from the store (rocksdb, linked from the image's packages).
    let (status, _) = get(&format!("{url}/v2/")).unwrap();
    assert_eq!(status, 200);
    // Its store is in the image's /data.
    assert!(std::fs::read_dir(root.join("data"))
        .unwrap()
        .next()
        .is_some());
}

#[test]
fn the_operator_runs_in_its_image_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("operator");
    rootfs("operator", &root);
    let out = Command::new("chroot")
        .arg(&root)
        .args(["/usr/local/bin/manta-operator", "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("--leader-election"));
    // It starts and serves its probes (no API server: it keeps retrying, and is live).
    std::fs::write(
        root.join("kubeconfig"),
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"http://127.0.0.1:1\"}}]\n\
         contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {}}]\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _op = InRoot::start(
        &root,
        &[
            "/usr/bin/env",
            "KUBECONFIG=/kubeconfig",
            "/usr/local/bin/manta-operator",
            "--metrics-listen",
            &listen,
        ],
        Stdio::null(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if get(&format!("http://{listen}/livez")).is_some_and(|(s, _)| s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the operator is not live");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Not ready: it has no inventory without an API server.
    let (status, _) = get(&format!("http://{listen}/readyz")).unwrap();
    assert_eq!(status, 503);
}
