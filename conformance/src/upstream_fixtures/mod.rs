//! Stand-ins for the upstream registries Manta caches, for the pull-through tests.
//!
//! - [`DockerRegistry`]: Debian's `docker-registry` (CNCF distribution 2.8) on a free loopback
//!   port with filesystem storage, optional htpasswd basic auth, an access log that tests parse to
//!   count requests, and stop/start on the same port and storage (an upstream going offline).
//! - [`FakeUpstream`]: a tiny in-process registry serving one fixed image that can misbehave on
//!   purpose (lying blob bytes, stalls before or inside a response) or demand the Bearer token flow.
//! - [`UpstreamConfig`]: the `[upstream]` TOML file given to `manta serve --config`.
//!
//! Secrets used here are random per run, so a test can grep logs and bodies for them.

mod docker_registry;
mod fake;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};

pub use docker_registry::{AccessLogEntry, DockerRegistry};
pub use fake::{FakeImage, FakeMode, FakeUpstream, RecordedRequest};

/// A username and password for an upstream (basic auth, or the token server's basic auth).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// `user` with a random password that no log line could contain by accident.
    pub fn random(username: &str) -> Self {
        Self {
            username: username.to_string(),
            password: format!("pw-{}", random_hex(12)),
        }
    }

    /// `user:password`, as skopeo's `--creds` takes it.
    pub fn colon_pair(&self) -> String {
        format!("{}:{}", self.username, self.password)
    }

    /// The value of an `Authorization: Basic …` header for these credentials.
    pub fn basic_header(&self) -> String {
        format!("Basic {}", base64_encode(self.colon_pair().as_bytes()))
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Non-cryptographic random bytes (xorshift64*), different on every call.
pub fn random_bytes(len: usize) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let mut state = (nanos ^ (u64::from(std::process::id()) << 32) ^ call.rotate_left(17)) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}

/// A TCP listener that only counts the connections it accepts (and closes them): proof that
/// nothing was connected to an address.
pub struct ConnectionCounter {
    addr: std::net::SocketAddr,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectionCounter {
    /// Listen on `<ip>:<a free port>` (`127.0.0.2`, say: any 127/8 address is loopback).
    pub fn start(ip: &str) -> Result<Self> {
        let listener = std::net::TcpListener::bind((ip, 0)).context("bind a counter")?;
        let addr = listener.local_addr()?;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(s);
            }
        });
        Ok(Self { addr, count })
    }

    /// `<ip>:<port>`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Run `cmd` to completion within `timeout`; its stdout, or an error with everything it printed.
pub(crate) fn run_cmd(cmd: &mut Command, timeout: Duration) -> Result<String> {
    crate::process::run_with_timeout(cmd, timeout).map(|o| o.stdout_str())
}

/// The `[upstream]` part of Manta's configuration file, as docs/upstream.md specifies it.
#[derive(Clone, Debug, Default)]
pub struct UpstreamConfig {
    pub tag_ttl_secs: Option<u64>,
    pub timeout_secs: Option<u64>,
    pub allow: Option<Vec<String>>,
    /// `(alias, url)`: `/v2/<alias>/<repo>/…` → `<url>/v2/<repo>/…`.
    pub aliases: Vec<(String, String)>,
    /// `(host[:port], credentials)`: the password goes to a file next to the config
    /// (`password_file`), as a mounted Kubernetes Secret would.
    pub registries: Vec<(String, Credentials)>,
}

impl UpstreamConfig {
    pub fn alias(mut self, name: &str, url: &str) -> Self {
        self.aliases.push((name.to_string(), url.to_string()));
        self
    }

    pub fn credentials(mut self, host: &str, creds: &Credentials) -> Self {
        self.registries.push((host.to_string(), creds.clone()));
        self
    }

    /// Write `<dir>/manta.toml` (and one password file per registry); returns the config path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let mut t = String::from("[upstream]\n");
        if let Some(v) = self.tag_ttl_secs {
            writeln!(t, "tag_ttl_secs = {v}")?;
        }
        if let Some(v) = self.timeout_secs {
            writeln!(t, "timeout_secs = {v}")?;
        }
        if let Some(allow) = &self.allow {
            let quoted: Vec<String> = allow.iter().map(|a| toml_str(a)).collect();
            writeln!(t, "allow = [{}]", quoted.join(", "))?;
        }
        if !self.aliases.is_empty() {
            t.push_str("\n[upstream.aliases]\n");
            for (name, url) in &self.aliases {
                writeln!(t, "{name} = {}", toml_str(url))?;
            }
        }
        for (i, (host, creds)) in self.registries.iter().enumerate() {
            let pw = dir.join(format!("password-{i}"));
            std::fs::write(&pw, &creds.password)?;
            writeln!(t, "\n[upstream.registries.{}]", toml_str(host))?;
            writeln!(t, "username = {}", toml_str(&creds.username))?;
            writeln!(t, "password_file = {}", toml_str(&pw.to_string_lossy()))?;
        }
        let path = dir.join("manta.toml");
        std::fs::write(&path, t)?;
        Ok(path)
    }
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn config_is_the_documented_toml() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let creds = Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let path = UpstreamConfig {
            tag_ttl_secs: Some(300),
            timeout_secs: Some(2),
            ..Default::default()
        }
        .alias("up1", "http://127.0.0.1:5055")
        .credentials("127.0.0.1:5055", &creds)
        .write(dir.path())?;
        let text = std::fs::read_to_string(path)?;
        let pw = dir.path().join("password-0");
        assert_eq!(
            text,
            format!(
                "[upstream]\ntag_ttl_secs = 300\ntimeout_secs = 2\n\n[upstream.aliases]\nup1 = \"http://127.0.0.1:5055\"\n\n[upstream.registries.\"127.0.0.1:5055\"]\nusername = \"alice\"\npassword_file = \"{}\"\n",
                pw.display()
            )
        );
        assert_eq!(std::fs::read_to_string(pw)?, "s3cret");
        Ok(())
    }
}
