//! Start and stop real `manta serve` processes for tests.
//!
//! The binary is found through `MANTA_BIN`, else next to the running test executable
//! (`target/<profile>/manta`, which cargo builds because `manta-registry` has integration tests).
//! `manta serve --listen 127.0.0.1:0` prints `manta listening on http://<addr>` on stdout once bound.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Path of the `manta` binary under test.
pub fn manta_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MANTA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    // target/<profile>/deps/<test-binary> -> target/<profile>/manta
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("manta");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the manta binary near {}; run `cargo build -p manta-registry` or set MANTA_BIN",
        exe.display()
    )
}

/// A running `manta serve` with its own data directory.
pub struct MantaServer {
    child: Option<Child>,
    addr: String,
    /// The cluster listener's `127.0.0.1:<port>`, when started with `--cluster-listen`.
    cluster_addr: Option<String>,
    data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    log_path: PathBuf,
}

impl MantaServer {
    /// Start on a fresh temporary data directory.
    pub fn start() -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path().join("data");
        let mut s = Self::start_in(&data, &[])?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Start on a fresh temporary data directory with extra `manta serve` arguments
    /// (`--hf-endpoint <url>`, …).
    pub fn start_with_args(extra_args: &[&str]) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path().join("data");
        let mut s = Self::start_in(&data, extra_args)?;
        s._tmp = Some(tmp);
        Ok(s)
    }

    /// Start on `data_dir` (kept by the caller) with extra `manta serve` arguments.
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::spawn(&manta_bin()?, data_dir, extra_args)
    }

    /// Start the binary `bin` (e.g. `env!("CARGO_BIN_EXE_manta")`) on `data_dir`.
    pub fn spawn(bin: &Path, data_dir: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::spawn_under(&[], bin, data_dir, extra_args)
    }

    /// Start `bin` through a wrapper command (`["prlimit", "--nofile=256:256", "--"]`, say).
    pub fn spawn_under(
        wrapper: &[&str],
        bin: &Path,
        data_dir: &Path,
        extra_args: &[&str],
    ) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let log_path = data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                for (prefix, cluster) in [
                    ("manta listening on http://", false),
                    ("manta cluster listener on http://", true),
                ] {
                    if let Some(url) = line.strip_prefix(prefix) {
                        let _ = tx.send((cluster, url.trim().to_string()));
                    }
                }
            }
        });
        let wants_cluster = extra_args.contains(&"--cluster-listen");
        let (mut addr, mut cluster_addr) = (None, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while addr.is_none() || (wants_cluster && cluster_addr.is_none()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok((false, a)) => addr = Some(a),
                Ok((true, a)) => cluster_addr = Some(a),
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    bail!("manta did not report its address within 60s; log:\n{log}");
                }
            }
        }
        let addr = addr.context("no address")?;
        Ok(Self {
            child: Some(child),
            addr,
            cluster_addr,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            log_path,
        })
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port>` of the cluster listener (started with `--cluster-listen`).
    pub fn cluster_url(&self) -> Option<String> {
        self.cluster_addr.as_ref().map(|a| format!("http://{a}"))
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id while the server runs (for a test that must signal it from another
    /// thread, at a moment it cannot wait for).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server wrote to stderr (its logs) so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up: for crash tests.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait for a graceful exit; returns the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("already stopped")?;
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()?;
        if !st.success() {
            bail!("kill -TERM failed");
        }
        Ok(c.wait()?)
    }
}

impl Drop for MantaServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
