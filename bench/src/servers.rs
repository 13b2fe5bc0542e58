//! Starting the two servers side by side, each owning its process and killed on drop.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running server: its process (killed and reaped on drop), base URL and log file.
pub struct Server {
    pub name: &'static str,
    pub base: reqwest::Url,
    pub log: PathBuf,
    child: Child,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tail of the server's stderr log, for error messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails (with the log tail) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// `kill -TERM <pid>` (what an init system sends), then waits for the exit: how long the
    /// server took to shut down. Fails if it is still running after `deadline`, or exits with
    /// an error.
    pub fn terminate(&mut self, deadline: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed ({status})", self.pid());
        }
        loop {
            if let Some(status) = self.child.try_wait()? {
                // A server without a SIGTERM handler (docker-registry without a drain timeout)
                // dies of the signal: that is its way of shutting down.
                use std::os::unix::process::ExitStatusExt as _;
                if !status.success() && status.signal() != Some(15) {
                    bail!(
                        "{} exited with {status} after SIGTERM; log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
                return Ok(start.elapsed());
            }
            if start.elapsed() > deadline {
                bail!("{} still running {deadline:?} after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL (`kill -9`) and reap: no chance to flush anything.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which `manta` binary a benchmark runs (flattened into each subcommand's arguments).
#[derive(clap::Args, Clone, Debug)]
pub struct MantaBinArgs {
    /// The manta binary [default: `manta` next to this executable, i.e. target/release/manta,
    /// built first with `cargo build --release -p manta-registry`].
    #[arg(long, env = "MANTA_BIN")]
    pub manta_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p manta-registry` before starting.
    #[arg(long)]
    pub no_build: bool,
}

impl MantaBinArgs {
    /// Build the binary (unless given one, or told not to) and find it.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        if self.manta_bin.is_none() && !self.no_build {
            build_manta()?;
        }
        locate_manta(self.manta_bin.clone())
    }
}

/// Where the `manta` binary is: `explicit`, else next to this executable (`target/release/manta`).
pub fn locate_manta(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this executable's path")?
            .parent()
            .context("this executable has no parent directory")?
            .join("manta"),
    };
    if !path.is_file() {
        bail!(
            "no manta binary at {}: run `cargo build --release -p manta-registry` first, \
             or pass --manta-bin / MANTA_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// `cargo build --release -p manta-registry --bin manta` in the workspace this crate belongs to.
pub fn build_manta() -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench crate has no parent directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building manta: cargo build --release -p manta-registry --bin manta");
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "manta-registry",
            "--bin",
            "manta",
        ])
        .current_dir(workspace)
        .status()
        .context("cannot run cargo (pass --no-build or --manta-bin to skip the build)")?;
    if !status.success() {
        bail!("`cargo build --release -p manta-registry` failed ({status})");
    }
    Ok(())
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))
}

/// `manta serve --listen 127.0.0.1:0 --data-dir <data_dir>`; waits for its "listening" line.
pub fn start_manta(bin: &Path, data_dir: &Path, log: &Path) -> anyhow::Result<Server> {
    start_manta_with_config(bin, data_dir, log, None)
}

/// [`start_manta`] with `--config <config>` when given.
pub fn start_manta_with_config(
    bin: &Path,
    data_dir: &Path,
    log: &Path,
    config: Option<&Path>,
) -> anyhow::Result<Server> {
    let mut extra: Vec<&std::ffi::OsStr> = vec![];
    if let Some(c) = config {
        extra.extend(["--config".as_ref(), c.as_os_str()]);
    }
    start_manta_with_args(bin, data_dir, log, &extra)
}

/// [`start_manta`] with more `manta serve` arguments (`--hf-endpoint <url>`, …).
pub fn start_manta_with_args(
    bin: &Path,
    data_dir: &Path,
    log: &Path,
    extra: &[&std::ffi::OsStr],
) -> anyhow::Result<Server> {
    std::fs::create_dir_all(data_dir)?;
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra);
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut server = Server {
        name: "manta",
        base: reqwest::Url::parse("http://127.0.0.1/")?,
        log: log.to_path_buf(),
        child,
    };
    let stdout = server
        .child
        .stdout
        .take()
        .context("manta's stdout was not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(START_DEADLINE) {
        Ok(Some(Ok(line))) => line,
        Ok(_) | Err(_) => {
            server.check_alive()?;
            bail!(
                "manta printed no listening line within {START_DEADLINE:?}; log:\n{}",
                server.log_tail()
            );
        }
    };
    let url = line
        .strip_prefix("manta listening on ")
        .with_context(|| format!("unexpected first line from manta: {line:?}"))?;
    server.base = reqwest::Url::parse(url)?;
    Ok(server)
}

/// A port that was free a moment ago on 127.0.0.1 (docker-registry cannot listen on port 0 and
/// tell us which port it got).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `/usr/bin/docker-registry serve <config>` with filesystem storage under `root`.
pub fn start_docker_registry(bin: &Path, root: &Path, log: &Path) -> anyhow::Result<Server> {
    start_docker_registry_with_proxy(bin, root, log, None)
}

/// [`start_docker_registry`], in pull-through cache mode (`proxy: remoteurl:`) when
/// `remote_url` is given.
pub fn start_docker_registry_with_proxy(
    bin: &Path,
    root: &Path,
    log: &Path,
    remote_url: Option<&str>,
) -> anyhow::Result<Server> {
    let storage = root.join("storage");
    std::fs::create_dir_all(&storage)?;
    let port = free_port()?;
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
         cache:\n    blobdescriptor: inmemory\n\
         http:\n  addr: 127.0.0.1:{port}\n{}",
        storage.display(),
        remote_url.map_or(String::new(), |u| format!("proxy:\n  remoteurl: {u}\n")),
    );
    let config_path = root.join("config.yml");
    std::fs::write(&config_path, config)?;
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log_file(&root.join("stdout.log"))?)
        .stderr(log_file(log)?)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (Debian: apt-get install docker-registry)",
                bin.display()
            )
        })?;
    Ok(Server {
        name: "docker-registry",
        base: reqwest::Url::parse(&format!("http://127.0.0.1:{port}/"))?,
        log: log.to_path_buf(),
        child,
    })
}

/// Polls `GET /v2/` until it answers 200 (or the deadline passes, or the process exits).
pub async fn wait_ready(server: &mut Server, client: &reqwest::Client) -> anyhow::Result<()> {
    wait_ok(server, client, "/v2/", Duration::from_millis(50)).await
}

/// Polls `GET <path>` every `every` until it answers 200 (or the deadline passes, or the
/// process exits).
pub async fn wait_ok(
    server: &mut Server,
    client: &reqwest::Client,
    path: &str,
    every: Duration,
) -> anyhow::Result<()> {
    let url = server.base.join(path)?;
    let start = Instant::now();
    loop {
        server.check_alive()?;
        if let Ok(r) = client.get(url.clone()).send().await {
            if r.status() == reqwest::StatusCode::OK {
                return Ok(());
            }
        }
        if start.elapsed() > START_DEADLINE {
            bail!(
                "{} did not answer 200 on {url} within {START_DEADLINE:?}; log:\n{}",
                server.name,
                server.log_tail()
            );
        }
        tokio::time::sleep(every).await;
    }
}
