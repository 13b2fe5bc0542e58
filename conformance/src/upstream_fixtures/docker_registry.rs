//! Debian's `docker-registry` as an upstream: filesystem storage in a temp dir, optional htpasswd
//! basic auth, an access log (one Apache combined-format line per request on stdout) captured to a
//! file, and stop/start on the same port and storage.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{free_port, run_cmd, Credentials};

/// One request as the registry's access log recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// The request URI, query included.
    pub uri: String,
    pub status: u16,
    pub user_agent: String,
}

impl AccessLogEntry {
    /// The URI without its query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or(&self.uri)
    }

    /// Parse `host ident user [time] "METHOD URI PROTO" status size "referer" "user-agent"`.
    fn parse(line: &str) -> Option<Self> {
        let mut quoted = line.split('"');
        let _prefix = quoted.next()?;
        let request = quoted.next()?;
        let after = quoted.next()?;
        let _referer = quoted.next()?;
        let _sep = quoted.next()?;
        let user_agent = quoted.next()?.to_string();
        let mut parts = request.split_whitespace();
        let method = parts.next()?.to_string();
        let uri = parts.next()?.to_string();
        if !parts.next()?.starts_with("HTTP/") {
            return None;
        }
        let status = after.split_whitespace().next()?.parse().ok()?;
        Some(Self {
            method,
            uri,
            status,
            user_agent,
        })
    }
}

/// A running (or stopped) `docker-registry`. Dropping it kills the process and removes storage.
pub struct DockerRegistry {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    storage: PathBuf,
    creds: Option<Credentials>,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// Start on a free port; with `creds`, every request needs that user's basic auth.
    /// Needs `/usr/bin/docker-registry` (`apt-get install docker-registry`) and, for auth,
    /// `htpasswd` (`apt-get install apache2-utils`).
    pub fn start(creds: Option<Credentials>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("manta-upstream-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let auth = match &creds {
            None => String::new(),
            Some(c) => {
                let htpasswd = dir.path().join("htpasswd");
                let line = run_cmd(
                    Command::new("htpasswd").args(["-Bbn", &c.username, &c.password]),
                    Duration::from_secs(60),
                )
                .context("htpasswd -Bbn (install it with `apt-get install apache2-utils`)")?;
                std::fs::write(&htpasswd, line.trim_end().to_string() + "\n")?;
                format!(
                    "auth:\n  htpasswd:\n    realm: manta-test-realm\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n\
             {auth}",
            storage.display()
        );
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yaml)?;
        let mut me = Self {
            child: None,
            port,
            config,
            log: dir.path().join("registry.log"),
            storage,
            creds,
            _dir: dir,
        };
        me.restart()?;
        Ok(me)
    }

    /// Start the process again (same port, config and storage) after [`DockerRegistry::stop`].
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("docker-registry is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn docker-registry (install it with `apt-get install docker-registry`)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "docker-registry exited with {st}; log:\n{}",
                        self.log_text()
                    );
                }
            }
            match self.probe() {
                Ok(200) | Ok(401) => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => bail!(
                    "docker-registry on port {} not ready within 30s ({other:?}); log:\n{}",
                    self.port,
                    self.log_text()
                ),
            }
        }
    }

    /// Kill the process and wait until its port refuses connections. Storage is kept.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.probe().is_ok() {
            if Instant::now() >= deadline {
                bail!(
                    "port {} still answers after stopping docker-registry",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Status of `GET /v2/` over a raw HTTP/1.0 connection (no client library involved).
    fn probe(&self) -> Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        let line = String::from_utf8_lossy(&head);
        line.get(9..12)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, as in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.creds.as_ref()
    }

    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// Everything the registry wrote so far (access log and its own log lines).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every request the access log recorded so far, in order (across restarts).
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.log_text()
            .lines()
            .filter_map(AccessLogEntry::parse)
            .collect()
    }

    /// `(method, path without query)` of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.access_log()
            .into_iter()
            .map(|e| (e.method.clone(), e.path().to_string()))
            .collect()
    }

    /// How many `GET /v2/<repo>/blobs/<digest>` the registry answered with a 2xx so far.
    /// [`Self::blob_gets`] once it reaches `want`, or what it is after 5 s: the registry logs a
    /// request after its response, so a client can hold the whole body before the line exists.
    pub fn blob_gets_settled(&self, repo: &str, digest: &str, want: usize) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let n = self.blob_gets(repo, digest);
            if n >= want || std::time::Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let path = format!("/v2/{repo}/blobs/{digest}");
        self.access_log()
            .iter()
            .filter(|e| e.method == "GET" && e.path() == path && (200..300).contains(&e.status))
            .count()
    }

    /// `skopeo copy --preserve-digests oci:<layout>:<tag> docker://<host>/<dest>` (with the
    /// registry's credentials; `all` copies every image of an index).
    pub fn push_oci(&self, layout: &Path, tag: &str, dest: &str, all: bool) -> Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--preserve-digests", "--dest-tls-verify=false"]);
        if all {
            cmd.arg("--all");
        }
        if let Some(c) = &self.creds {
            cmd.arg("--dest-creds").arg(c.colon_pair());
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{dest}", self.host()));
        run_cmd(&mut cmd, Duration::from_secs(180))?;
        Ok(())
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AccessLogEntry;

    #[test]
    fn parses_combined_log_lines() {
        let line = r#"127.0.0.1 - - [01/Jan/2024:10:00:00 +0000] "GET /v2/a/b/blobs/sha256:ab?ns=x HTTP/1.1" 200 1234 "" "containerd/1.6.20""#;
        let e = AccessLogEntry::parse(line);
        assert_eq!(
            e,
            Some(AccessLogEntry {
                method: "GET".into(),
                uri: "/v2/a/b/blobs/sha256:ab?ns=x".into(),
                status: 200,
                user_agent: "containerd/1.6.20".into(),
            })
        );
        assert_eq!(
            e.map(|e| e.path().to_string()).as_deref(),
            Some("/v2/a/b/blobs/sha256:ab")
        );
        assert_eq!(
            AccessLogEntry::parse(r#"time="x" level=info msg="listening""#),
            None
        );
    }
}
