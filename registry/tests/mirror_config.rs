//! `manta mirror-config`: the files it writes for containerd and CRI-O, idempotence, backups
//! and `--restore`, through the real binary on real files in temp directories.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const MARKER: &str = "# Written by manta mirror-config";

fn manta(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_manta"))
        .arg("mirror-config")
        .args(args)
        .env_remove("MANTA_MIRROR_REGISTRIES")
        .env_remove("MANTA_CONTAINERD_HOSTS_DIR")
        .env_remove("MANTA_MIRROR_URL")
        .env_remove("MANTA_MIRROR_DIAL_TIMEOUT")
        .env_remove("MANTA_CRIO_REGISTRIES_FILE")
        .env_remove("MANTA_MIRROR_ADDR")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = manta(args);
    assert!(
        out.status.success(),
        "manta mirror-config {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(args: &[&str]) -> String {
    let out = manta(args);
    assert!(
        !out.status.success(),
        "manta mirror-config {args:?} succeeded"
    );
    String::from_utf8(out.stderr).unwrap()
}

fn toml_file(path: &Path) -> toml::Table {
    let text = fs::read_to_string(path).unwrap();
    assert!(
        text.starts_with(MARKER),
        "{} has no marker:\n{text}",
        path.display()
    );
    toml::from_str(&text).unwrap()
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if p.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

const REGISTRIES: &str = "docker.io,ghcr.io,127.0.0.1:5055";

fn containerd_args<'a>(root: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "containerd",
        "--registries",
        REGISTRIES,
        "--root",
        root,
        "--mirror",
        "http://127.0.0.1:5000",
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn containerd_writes_one_hosts_toml_per_registry_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    let root_s = root.to_str().unwrap();

    let report = ok(&containerd_args(root_s, &["--dial-timeout", "500ms"]));
    assert_eq!(report.matches(": written").count(), 3, "{report}");

    // containerd looks "host:port" registries up in a "host:port" directory (after "host_port_").
    assert_eq!(
        tree(&root),
        [
            "127.0.0.1:5055/",
            "127.0.0.1:5055/hosts.toml",
            "docker.io/",
            "docker.io/hosts.toml",
            "ghcr.io/",
            "ghcr.io/hosts.toml"
        ]
    );
    for (dir, server) in [
        ("docker.io", "https://registry-1.docker.io"),
        ("ghcr.io", "https://ghcr.io"),
        ("127.0.0.1:5055", "http://127.0.0.1:5055"),
    ] {
        let t = toml_file(&root.join(dir).join("hosts.toml"));
        assert_eq!(t["server"].as_str(), Some(server), "{dir}");
        let hosts = t["host"].as_table().unwrap();
        assert_eq!(hosts.keys().collect::<Vec<_>>(), ["http://127.0.0.1:5000"]);
        let mirror = hosts["http://127.0.0.1:5000"].as_table().unwrap();
        assert_eq!(
            mirror["capabilities"],
            toml::Value::Array(vec!["pull".into(), "resolve".into()])
        );
        assert_eq!(mirror["dial_timeout"].as_str(), Some("500ms"));
        assert_eq!(t.len(), 2, "{dir}: only server and host: {t:?}");
    }

    let before: Vec<Vec<u8>> = ["docker.io", "ghcr.io", "127.0.0.1:5055"]
        .iter()
        .map(|d| fs::read(root.join(d).join("hosts.toml")).unwrap())
        .collect();
    let again = ok(&containerd_args(root_s, &["--dial-timeout", "500ms"]));
    assert_eq!(again.matches(": unchanged").count(), 3, "{again}");
    assert!(!again.contains("written"), "{again}");
    let after: Vec<Vec<u8>> = ["docker.io", "ghcr.io", "127.0.0.1:5055"]
        .iter()
        .map(|d| fs::read(root.join(d).join("hosts.toml")).unwrap())
        .collect();
    assert_eq!(before, after);

    // A changed setting rewrites Manta's own files without backing them up.
    let changed = ok(&containerd_args(root_s, &["--dial-timeout", "none"]));
    assert_eq!(changed.matches(": updated").count(), 3, "{changed}");
    let t = toml_file(&root.join("ghcr.io/hosts.toml"));
    assert!(!t["host"]["http://127.0.0.1:5000"]
        .as_table()
        .unwrap()
        .contains_key("dial_timeout"));
    assert!(!tree(&root).iter().any(|f| f.contains("manta-backup")));

    // Nothing was there before: --restore removes Manta's files and their directories.
    let restored = ok(&["containerd", "--restore", "--root", root_s]);
    assert_eq!(restored.matches("removed").count(), 3, "{restored}");
    assert_eq!(tree(&root), Vec::<String>::new());
}

#[test]
fn containerd_backs_up_a_foreign_hosts_toml_once_and_restores_it_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    let root_s = root.to_str().unwrap();
    let foreign: &[u8] = b"server = \"https://ghcr.io\"\n\n[host.\"https://other-mirror.example\"]\n  capabilities = [\"pull\"]\n\x00\xff";
    fs::create_dir_all(root.join("ghcr.io")).unwrap();
    fs::write(root.join("ghcr.io/hosts.toml"), foreign).unwrap();
    // A foreign file for a registry Manta is not asked about.
    fs::create_dir_all(root.join("quay.io")).unwrap();
    fs::write(
        root.join("quay.io/hosts.toml"),
        b"server = \"https://quay.io\"\n",
    )
    .unwrap();

    let report = ok(&containerd_args(root_s, &[]));
    assert!(report.contains("backed up as"), "{report}");
    let backup = root.join("ghcr.io/hosts.toml.manta-backup");
    assert_eq!(fs::read(&backup).unwrap(), foreign);
    assert_eq!(
        toml_file(&root.join("ghcr.io/hosts.toml"))["server"].as_str(),
        Some("https://ghcr.io")
    );

    // Second run (with other content): Manta's file is replaced, the backup is not.
    let again = ok(&containerd_args(root_s, &["--dial-timeout", "2s"]));
    assert_eq!(again.matches(": updated").count(), 3, "{again}");
    assert_eq!(fs::read(&backup).unwrap(), foreign);

    let restored = ok(&["containerd", "--restore", "--root", root_s]);
    assert!(restored.contains("restored from"), "{restored}");
    assert_eq!(fs::read(root.join("ghcr.io/hosts.toml")).unwrap(), foreign);
    assert_eq!(
        fs::read(root.join("quay.io/hosts.toml")).unwrap(),
        b"server = \"https://quay.io\"\n"
    );
    assert_eq!(
        tree(&root),
        [
            "ghcr.io/",
            "ghcr.io/hosts.toml",
            "quay.io/",
            "quay.io/hosts.toml"
        ]
    );

    // Restoring again, or naming a foreign file, changes nothing.
    let twice = ok(&[
        "containerd",
        "--restore",
        "--root",
        root_s,
        "--registries",
        "ghcr.io,quay.io",
    ]);
    assert_eq!(
        twice.matches("not written by Manta, left alone").count(),
        2,
        "{twice}"
    );
    assert_eq!(fs::read(root.join("ghcr.io/hosts.toml")).unwrap(), foreign);
}

#[test]
fn containerd_refuses_bad_registries_and_mirrors_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("certs.d");
    let root_s = root.to_str().unwrap();
    for (registries, named) in [
        ("https://ghcr.io", "https://ghcr.io"),
        ("docker.io,ghcr.io/org/repo", "ghcr.io/org/repo"),
        ("docker.io,,ghcr.io", "empty entry"),
        ("ghcr.io:99999", "ghcr.io:99999"),
        ("Docker.io", "Docker.io"),
        ("docker.io,../etc", "../etc"),
    ] {
        let err = refused(&["containerd", "--registries", registries, "--root", root_s]);
        assert!(err.contains(named), "{registries:?}: {err}");
        assert!(err.contains("--registries"), "{registries:?}: {err}");
        assert!(!root.exists(), "{registries:?} wrote {:?}", tree(&root));
    }
    for mirror in [
        "127.0.0.1:5000",
        "ftp://127.0.0.1:5000",
        "http://127.0.0.1:5000/v2",
    ] {
        let err = refused(&[
            "containerd",
            "--registries",
            "docker.io",
            "--root",
            root_s,
            "--mirror",
            mirror,
        ]);
        assert!(err.contains("--mirror"), "{mirror}: {err}");
        assert!(!root.exists());
    }
    let err = refused(&[
        "containerd",
        "--registries",
        "docker.io",
        "--root",
        root_s,
        "--dial-timeout",
        "500",
    ]);
    assert!(err.contains("--dial-timeout"), "{err}");
    assert!(!root.exists());
    // --registries is required unless restoring.
    refused(&["containerd", "--root", root_s]);
}

fn crio_args<'a>(file: &'a str, registries: &'a str) -> Vec<&'a str> {
    vec![
        "crio",
        "--registries",
        registries,
        "--file",
        file,
        "--mirror",
        "127.0.0.1:5000",
    ]
}

#[test]
fn crio_writes_one_dropin_idempotently_and_restore_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("registries.conf.d/50-manta.conf");
    let file_s = file.to_str().unwrap();
    let regs = "docker.io,ghcr.io,127.0.0.1:5055=up1,localhost";

    let report = ok(&crio_args(file_s, regs));
    assert!(report.contains(": written"), "{report}");
    let t = toml_file(&file);
    let registries = t["registry"].as_array().unwrap();
    // Manta's own endpoint last, as Pods name it: plain HTTP, no mirror.
    let (mirrored, own): (Vec<_>, Vec<_>) =
        registries.iter().partition(|r| r.get("mirror").is_some());
    let own: Vec<(&str, bool)> = own
        .iter()
        .map(|r| {
            assert_eq!(r["prefix"], r["location"]);
            (
                r["prefix"].as_str().unwrap(),
                r["insecure"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(own, [("localhost:5000", true), ("127.0.0.1:5000", true)]);
    let got: Vec<(String, String, Option<bool>, String, bool)> = mirrored
        .iter()
        .map(|r| {
            let mirrors = r["mirror"].as_array().unwrap();
            assert_eq!(mirrors.len(), 1);
            (
                r["prefix"].as_str().unwrap().to_owned(),
                r["location"].as_str().unwrap().to_owned(),
                r.get("insecure").map(|v| v.as_bool().unwrap()),
                mirrors[0]["location"].as_str().unwrap().to_owned(),
                mirrors[0]["insecure"].as_bool().unwrap(),
            )
        })
        .collect();
    let row = |p: &str, i: Option<bool>, m: &str| (p.into(), p.into(), i, m.into(), true);
    assert_eq!(
        got,
        [
            row("docker.io", None, "127.0.0.1:5000/docker.io"),
            row("ghcr.io", None, "127.0.0.1:5000/ghcr.io"),
            row("127.0.0.1:5055", Some(true), "127.0.0.1:5000/up1"),
            row("localhost", Some(true), "127.0.0.1:5000/localhost"),
        ]
    );
    assert_eq!(t.len(), 1, "only [[registry]] tables: {t:?}");

    let before = fs::read(&file).unwrap();
    let again = ok(&crio_args(file_s, regs));
    assert!(again.contains(": unchanged"), "{again}");
    assert_eq!(fs::read(&file).unwrap(), before);

    let restored = ok(&["crio", "--restore", "--file", file_s]);
    assert!(restored.contains("removed"), "{restored}");
    assert!(!file.exists());
    assert_eq!(
        tree(&tmp.path().join("registries.conf.d")),
        Vec::<String>::new()
    );
    let nothing = ok(&["crio", "--restore", "--file", file_s]);
    assert!(nothing.contains("nothing to restore"), "{nothing}");
}

#[test]
fn crio_backs_up_a_foreign_dropin_and_restores_it_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("50-manta.conf");
    let file_s = file.to_str().unwrap();
    let foreign: &[u8] = b"[[registry]]\nlocation = \"quay.io\"\nblocked = true\n";
    fs::write(&file, foreign).unwrap();

    let report = ok(&crio_args(file_s, "docker.io"));
    assert!(report.contains("backed up as"), "{report}");
    let backup = tmp.path().join("50-manta.conf.manta-backup");
    assert_eq!(fs::read(&backup).unwrap(), foreign);
    let again = ok(&crio_args(file_s, "docker.io,ghcr.io"));
    assert!(again.contains(": updated"), "{again}");
    assert_eq!(fs::read(&backup).unwrap(), foreign);

    let restored = ok(&["crio", "--restore", "--file", file_s]);
    assert!(restored.contains("restored from"), "{restored}");
    assert_eq!(fs::read(&file).unwrap(), foreign);
    assert!(!backup.exists());

    // A foreign file is never touched by --restore.
    let left = ok(&["crio", "--restore", "--file", file_s]);
    assert!(left.contains("not written by Manta, left alone"), "{left}");
    assert_eq!(fs::read(&file).unwrap(), foreign);
}

#[test]
fn crio_refuses_a_registry_with_a_port_unless_given_an_alias() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("50-manta.conf");
    let file_s = file.to_str().unwrap();
    let err = refused(&crio_args(file_s, "docker.io,127.0.0.1:5055"));
    assert!(err.contains("127.0.0.1:5055"), "{err}");
    assert!(err.contains("alias"), "{err}");
    assert!(!file.exists());
    let err = refused(&crio_args(file_s, "127.0.0.1:5055=a.b"));
    assert!(err.contains("a.b"), "{err}");
    let err = refused(&[
        "crio",
        "--registries",
        "docker.io",
        "--file",
        file_s,
        "--mirror",
        "http://127.0.0.1:5000",
    ]);
    assert!(err.contains("--mirror"), "{err}");
    let err = refused(&crio_args(file_s, "ghcr.io/org"));
    assert!(err.contains("ghcr.io/org"), "{err}");
    assert!(!file.exists());
}

/// A stand-in for Manta that records each request line and answers 404, so containerd moves on
/// to the next host.
fn recording_stub() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            if tx.send(first.trim_end().to_owned()).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Kills the throwaway containerd when the test ends, however it ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The installed containerd's own resolver (`ctr images pull --hosts-dir`, which resolves in the
/// ctr process with containerd's hosts.toml parser) reads the generated files: it asks the mirror
/// first, with `ns` naming the registry, for a `host:port` directory and for docker.io. A file it
/// cannot decode is logged ("failed to decode hosts.toml") and the mirror skipped, so this fails
/// if containerd (1.6 included, which has no `dial_timeout`) rejects what Manta writes.
#[test]
fn containerd_itself_reads_the_generated_hosts_files() {
    // CI installs containerd and runs as root; missing either is a failure, not a skip.
    assert!(
        on_path("containerd") && on_path("ctr") && is_root(),
        "needs containerd and ctr on PATH (apt-get install containerd) and root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(
        dir.join("config.toml"),
        format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {sock:?}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
            root = dir.join("root"),
            state = dir.join("state"),
            sock = dir.join("sock"),
            opt = dir.join("opt"),
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.join("containerd.log")).unwrap();
    let _daemon = Daemon(
        Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !dir.join("sock").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not start: {}",
            fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let (mirror_port, requests) = recording_stub();
    // An upstream with a port that nothing listens on.
    let upstream = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let certs = dir.join("certs.d");
    let mirror = format!("http://127.0.0.1:{mirror_port}");
    ok(&[
        "containerd",
        "--registries",
        &format!("{upstream},docker.io"),
        "--root",
        certs.to_str().unwrap(),
        "--mirror",
        &mirror,
    ]);

    for (reference, want) in [
        (
            format!("{upstream}/foo:latest"),
            format!(
                "HEAD /v2/foo/manifests/latest?ns={} HTTP/1.1",
                upstream.replace(':', "%3A")
            ),
        ),
        (
            "docker.io/library/foo:latest".to_owned(),
            "HEAD /v2/library/foo/manifests/latest?ns=docker.io HTTP/1.1".to_owned(),
        ),
    ] {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(dir.join("sock"))
            .args(["images", "pull", "--hosts-dir"])
            .arg(&certs)
            .arg(&reference)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("failed to decode hosts.toml"), "{stderr}");
        let got = requests
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!("{reference}: the mirror saw no request; ctr said: {stderr}")
            });
        assert_eq!(got, want, "{reference}");
        // The mirror said 404, so the pull went on to the upstream (unreachable here) and failed.
        assert!(!out.status.success());
        assert!(requests.try_recv().is_err(), "one request per pull");
    }
}
