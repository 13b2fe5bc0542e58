//! `manta mirror-config`: point a container runtime at Manta as a registry mirror.
//!
//! - containerd reads `<hosts dir>/<host[:port]>/hosts.toml` (containerd's `docs/hosts.md`); one file
//!   per registry is written with the upstream as `server` and Manta as a `[host."…"]`.
//! - CRI-O reads `registries.conf` drop-ins (containers-registries.conf(5) and
//!   containers-registries.conf.d(5)); one drop-in with a `[[registry]]` per registry is written.
//!
//! Every file written here starts with [`files::MARKER`], so a later run recognises its own files:
//! it rewrites them without a backup (or reports "unchanged"), and `--restore` removes them or
//! puts back the file they replaced. A file Manta did not write is backed up once, beside it, as
//! `<name>.manta-backup`, and is never touched by `--restore`.
//!
//! Nothing here prints: [`run`] writes a short human report to the writer it is given.

mod containerd;
mod crio;
mod files;

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

pub use containerd::ContainerdArgs;
pub use crio::CrioArgs;

/// `manta mirror-config <runtime> …`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub runtime: Runtime,
}

/// The runtime to configure.
#[derive(Debug, clap::Subcommand)]
pub enum Runtime {
    /// Write `<root>/<host>/hosts.toml` for each registry: Manta first, the upstream as fallback.
    Containerd(ContainerdArgs),
    /// Write a registries.conf drop-in with Manta as the mirror of each registry.
    Crio(CrioArgs),
}

/// What `mirror-config` refused or failed to do.
#[derive(Debug, thiserror::Error)]
pub enum MirrorConfigError {
    #[error("no registries given: pass --registries, e.g. --registries docker.io,ghcr.io")]
    NoRegistries,
    #[error("invalid registry {entry:?} in --registries: {reason}")]
    InvalidRegistry { entry: String, reason: &'static str },
    #[error("invalid --mirror {value:?}: {reason}")]
    InvalidMirror { value: String, reason: &'static str },
    #[error(
        "invalid --dial-timeout {value:?}: expected a Go duration such as 500ms or 2s, or \"none\""
    )]
    InvalidDialTimeout { value: String },
    #[error("invalid alias {alias:?} for {registry}: {reason}")]
    InvalidAlias {
        registry: String,
        alias: String,
        reason: &'static str,
    },
    #[error(
        "{registry}: {reason}, so CRI-O cannot name it in the mirror location's path; configure an \
         alias for it in Manta ([upstream.aliases] up1 = \"…\") and pass --registries {registry}=up1"
    )]
    CrioNeedsAlias {
        registry: String,
        reason: &'static str,
    },
    #[error(
        "{path}: not written by Manta, and a backup already exists at {backup}; \
         move one of them away and run again"
    )]
    BackupExists { path: PathBuf, backup: PathBuf },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the report")]
    Report(#[source] io::Error),
}

/// Runs `mirror-config`, writing one line per file touched (and any warnings) to `out`.
///
/// All arguments are validated before any file is written.
pub fn run(args: Args, out: &mut dyn Write) -> Result<(), MirrorConfigError> {
    match args.runtime {
        Runtime::Containerd(a) => containerd::run(&a, out),
        Runtime::Crio(a) => crio::run(&a, out),
    }
}

/// A registry as it appears in image references: `host[:port]`, host a DNS name, an IPv4
/// address or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registry {
    name: String,
    host_len: usize,
    port: Option<u16>,
}

impl Registry {
    pub(crate) fn parse(entry: &str) -> Result<Self, MirrorConfigError> {
        let bad = |reason| MirrorConfigError::InvalidRegistry {
            entry: entry.to_owned(),
            reason,
        };
        if entry.is_empty() {
            return Err(bad("empty entry"));
        }
        if entry.contains("://") {
            return Err(bad(
                "has a scheme; give the host only, e.g. ghcr.io or 127.0.0.1:5055",
            ));
        }
        if entry.contains('/') {
            return Err(bad(
                "has a path; give the registry host only, without a repository",
            ));
        }
        let (host, port) = split_host_port(entry).map_err(bad)?;
        Ok(Registry {
            name: entry.to_owned(),
            host_len: host.len(),
            port,
        })
    }

    /// `host[:port]`, as in image references and containerd's host directory names.
    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }

    /// The host without the port (IPv6 addresses keep their brackets).
    pub(crate) fn host(&self) -> &str {
        &self.name[..self.host_len]
    }

    pub(crate) fn port(&self) -> Option<u16> {
        self.port
    }

    /// Loopback upstreams are reached over plain HTTP (docs/upstream.md).
    pub(crate) fn is_loopback(&self) -> bool {
        let host = self.host();
        if host == "localhost" {
            return true;
        }
        if let Ok(v4) = host.parse::<Ipv4Addr>() {
            return v4.is_loopback();
        }
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<Ipv6Addr>().ok())
            .is_some_and(|v6| v6.is_loopback())
    }
}

impl std::fmt::Display for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Validates `--registries` entries (trimmed, deduplicated, order kept).
pub(crate) fn parse_registries<'a>(
    entries: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Registry>, MirrorConfigError> {
    let mut out: Vec<Registry> = Vec::new();
    for entry in entries {
        let r = Registry::parse(entry.trim())?;
        if !out.contains(&r) {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(MirrorConfigError::NoRegistries);
    }
    Ok(out)
}

/// Splits `host[:port]` and validates both halves.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<u16>), &'static str> {
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or("unclosed '[' in an IPv6 address")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address between '[' and ']'")?;
        let port = match after {
            "" => None,
            p => Some(parse_port(
                p.strip_prefix(':')
                    .ok_or("unexpected text after the IPv6 address")?,
            )?),
        };
        return Ok((&s[..addr.len() + 2], port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (s, None),
    };
    validate_hostname(host)?;
    Ok((host, port))
}

fn parse_port(p: &str) -> Result<u16, &'static str> {
    const MSG: &str = "the port must be a number from 1 to 65535";
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MSG);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(MSG),
        Ok(n) => Ok(n),
    }
}

fn validate_hostname(h: &str) -> Result<(), &'static str> {
    if h.is_empty() {
        return Err("empty host name");
    }
    if h.len() > 253 {
        return Err("host name longer than 253 characters");
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Err("empty label in the host name (\"..\" or a leading/trailing '.')");
        }
        if label.len() > 63 {
            return Err("a host name label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("a host name may contain only lower-case letters, digits, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a host name label cannot start or end with '-'");
        }
    }
    Ok(())
}

/// Quotes `s` as a TOML basic string.
pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A path as it may appear on one comment line.
pub(crate) fn comment_path(p: &std::path::Path) -> String {
    p.display().to_string().escape_debug().to_string()
}

pub(crate) fn report(
    out: &mut dyn Write,
    line: std::fmt::Arguments<'_>,
) -> Result<(), MirrorConfigError> {
    out.write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(MirrorConfigError::Report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_accept_hosts_ports_and_ipv6() {
        let r = Registry::parse("127.0.0.1:5055").unwrap();
        assert_eq!((r.host(), r.port()), ("127.0.0.1", Some(5055)));
        assert!(r.is_loopback());
        let r = Registry::parse("[::1]:5000").unwrap();
        assert_eq!((r.host(), r.port()), ("[::1]", Some(5000)));
        assert!(r.is_loopback());
        let r = Registry::parse("ghcr.io").unwrap();
        assert_eq!((r.host(), r.port()), ("ghcr.io", None));
        assert!(!r.is_loopback());
        assert!(Registry::parse("localhost:5000").unwrap().is_loopback());
        assert!(!Registry::parse("10.0.0.1").unwrap().is_loopback());
    }

    #[test]
    fn registries_refuse_schemes_paths_and_junk() {
        for bad in [
            "",
            "https://ghcr.io",
            "ghcr.io/org",
            "ghcr.io:",
            "ghcr.io:0",
            "ghcr.io:70000",
            "GHCR.io",
            "a..b",
            "-a.b",
            "a b",
            "[::1",
            "[zz]:1",
            "[::1]x",
            "a:b:c",
        ] {
            assert!(Registry::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn parse_registries_trims_and_dedups() {
        let rs = parse_registries([" docker.io", "ghcr.io", "docker.io"]).unwrap();
        let names: Vec<_> = rs.iter().map(Registry::as_str).collect();
        assert_eq!(names, ["docker.io", "ghcr.io"]);
        assert!(matches!(
            parse_registries([]),
            Err(MirrorConfigError::NoRegistries)
        ));
    }
}
