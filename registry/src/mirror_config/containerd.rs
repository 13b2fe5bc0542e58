//! containerd: one `hosts.toml` per registry under the hosts directory (`config_path`).
//!
//! containerd (remotes/docker/config, `HostDirFromRoot`) looks a registry up, on Unix, in
//! `<root>/<host>_<port>_`, then `<root>/<host>:<port>`, then `<root>/_default`; a registry
//! without a port is just `<root>/<host>`, and `docker.io` is looked up as `docker.io` (its default
//! server is `https://registry-1.docker.io`). Manta writes the `<host>:<port>` form that
//! containerd's docs use, and warns when a `<host>_<port>_` directory would take precedence.
//!
//! `dial_timeout` is honoured by containerd ≥ 1.7. containerd 1.6 has no such key: its parser
//! (go-toml v1 `Tree.Unmarshal`, not strict) ignores unknown keys, so the file works there too,
//! with the 30 s default connect timeout.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::files::{self, Restored};
use super::{
    comment_path, parse_registries, report, split_host_port, toml_str, MirrorConfigError, Registry,
};

/// `manta mirror-config containerd …`
#[derive(Debug, clap::Args)]
pub struct ContainerdArgs {
    /// Registries to send through Manta, comma-separated host[:port] as in image references
    /// (e.g. docker.io,ghcr.io,127.0.0.1:5055). With --restore: only these (default: all).
    #[arg(
        long,
        value_delimiter = ',',
        env = "MANTA_MIRROR_REGISTRIES",
        required_unless_present = "restore"
    )]
    pub registries: Vec<String>,
    /// containerd's hosts directory: `config_path` under
    /// [plugins."io.containerd.grpc.v1.cri".registry], or `ctr --hosts-dir`.
    #[arg(
        long,
        env = "MANTA_CONTAINERD_HOSTS_DIR",
        default_value = "/etc/containerd/certs.d"
    )]
    pub root: PathBuf,
    /// Manta as containerd reaches it: http[s]://host[:port].
    #[arg(
        long,
        env = "MANTA_MIRROR_URL",
        default_value = "http://127.0.0.1:5000"
    )]
    pub mirror: String,
    /// How long containerd tries to connect to Manta before falling back to the upstream, as a Go
    /// duration ("none": leave containerd's 30 s default). containerd ≥ 1.7 honours it; 1.6
    /// ignores the key.
    #[arg(long, env = "MANTA_MIRROR_DIAL_TIMEOUT", default_value = "500ms")]
    pub dial_timeout: String,
    /// Undo: put backed-up hosts.toml files back, remove Manta's where there was none; never
    /// touches a hosts.toml Manta did not write.
    #[arg(long)]
    pub restore: bool,
}

pub(super) fn run(args: &ContainerdArgs, out: &mut dyn Write) -> Result<(), MirrorConfigError> {
    if args.restore {
        return restore(args, out);
    }
    let registries = parse_registries(args.registries.iter().map(String::as_str))?;
    let mirror = parse_mirror_url(&args.mirror)?;
    let dial_timeout = parse_dial_timeout(&args.dial_timeout)?;
    for r in &registries {
        let path = args.root.join(r.as_str()).join("hosts.toml");
        let content = hosts_toml(&args.root, r, &mirror, dial_timeout);
        let outcome = files::install(&path, &content)?;
        report(out, format_args!("{}: {outcome}", path.display()))?;
        if let Some(port) = r.port() {
            let first = args.root.join(format!("{}_{port}_", r.host()));
            if files::exists(&first)? {
                report(
                    out,
                    format_args!(
                        "warning: containerd reads {} before {}; remove it for Manta's file to apply",
                        first.display(),
                        path.display()
                    ),
                )?;
            }
        }
    }
    report(
        out,
        format_args!(
            "containerd uses these when config_path = {} (CRI) or ctr --hosts-dir points there; \
             no restart needed",
            toml_str(&args.root.display().to_string())
        ),
    )
}

/// The upstream containerd falls back to: what it would reach without a hosts.toml.
fn upstream_server(r: &Registry) -> String {
    if r.as_str() == "docker.io" {
        "https://registry-1.docker.io".to_owned()
    } else if r.is_loopback() {
        format!("http://{r}")
    } else {
        format!("https://{r}")
    }
}

fn hosts_toml(root: &Path, r: &Registry, mirror: &str, dial_timeout: Option<&str>) -> String {
    let mut s = format!(
        "{marker}; restore with: manta mirror-config containerd --restore --root {root}\n\
         # Pulls of {r} try Manta first, then the upstream server.\n\
         server = {server}\n\
         \n\
         [host.{mirror}]\n\
         capabilities = [\"pull\", \"resolve\"]\n",
        marker = files::MARKER,
        root = comment_path(root),
        server = toml_str(&upstream_server(r)),
        mirror = toml_str(mirror),
    );
    if let Some(t) = dial_timeout {
        s.push_str(&format!("dial_timeout = {}\n", toml_str(t)));
    }
    s
}

/// `http[s]://host[:port]`, with an optional trailing `/`; returned without it.
fn parse_mirror_url(value: &str) -> Result<String, MirrorConfigError> {
    let bad = |reason| MirrorConfigError::InvalidMirror {
        value: value.to_owned(),
        reason,
    };
    let (scheme, rest) = value
        .split_once("://")
        .ok_or_else(|| bad("containerd needs a URL with a scheme, e.g. http://127.0.0.1:5000"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(bad(
            "has a path; Manta serves /v2/ at the root of its address",
        ));
    }
    split_host_port(authority).map_err(bad)?;
    Ok(format!("{scheme}://{authority}"))
}

/// A Go `time.ParseDuration` string of positive components (`500ms`, `1m30s`), or `none`.
fn parse_dial_timeout(value: &str) -> Result<Option<&str>, MirrorConfigError> {
    if value == "none" {
        return Ok(None);
    }
    let bad = || MirrorConfigError::InvalidDialTimeout {
        value: value.to_owned(),
    };
    let mut rest = value;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number = &rest[..end];
        let well_formed = !number.is_empty()
            && !number.starts_with('.')
            && !number.ends_with('.')
            && number.matches('.').count() <= 1;
        if !well_formed {
            return Err(bad());
        }
        rest = &rest[end..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u))
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
    }
    Ok(Some(value))
}

fn restore(args: &ContainerdArgs, out: &mut dyn Write) -> Result<(), MirrorConfigError> {
    let explicit = !args.registries.is_empty();
    let dirs: Vec<PathBuf> = if explicit {
        parse_registries(args.registries.iter().map(String::as_str))?
            .iter()
            .map(|r| args.root.join(r.as_str()))
            .collect()
    } else {
        host_dirs(&args.root)?
    };
    let mut said_anything = false;
    for dir in dirs {
        let path = dir.join("hosts.toml");
        let line = match files::restore(&path)? {
            Restored::FromBackup { backup } => {
                format!("{}: restored from {}", path.display(), backup.display())
            }
            Restored::Removed => {
                let also = if remove_empty_dir(&dir)? {
                    " and its empty directory"
                } else {
                    ""
                };
                format!(
                    "{}: removed{also} (there was no file before)",
                    path.display()
                )
            }
            Restored::NotOurs {
                backup: Some(backup),
            } => format!(
                "{}: not written by Manta, left alone; {} left in place",
                path.display(),
                backup.display()
            ),
            Restored::NotOurs { backup: None } if explicit => {
                format!("{}: not written by Manta, left alone", path.display())
            }
            Restored::Nothing if explicit => format!("{}: nothing to restore", path.display()),
            Restored::NotOurs { backup: None } | Restored::Nothing => continue,
        };
        report(out, format_args!("{line}"))?;
        said_anything = true;
    }
    if !said_anything {
        report(
            out,
            format_args!("nothing to restore under {}", args.root.display()),
        )?;
    }
    Ok(())
}

/// The subdirectories of `root`, sorted; none when `root` does not exist.
fn host_dirs(root: &Path) -> Result<Vec<PathBuf>, MirrorConfigError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(files::io_err("list", root)(e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(files::io_err("list", root))?;
        let is_dir = entry
            .file_type()
            .map_err(files::io_err("inspect", &entry.path()))?
            .is_dir();
        if is_dir {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn remove_empty_dir(dir: &Path) -> Result<bool, MirrorConfigError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
        Err(e) => Err(files::io_err("remove directory", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls() {
        assert_eq!(
            parse_mirror_url("http://127.0.0.1:5000/").unwrap(),
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            parse_mirror_url("https://manta.local").unwrap(),
            "https://manta.local"
        );
        for bad in [
            "127.0.0.1:5000",
            "ftp://x",
            "http://x/v2",
            "http://",
            "http://a b",
        ] {
            assert!(parse_mirror_url(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn dial_timeouts() {
        for ok in ["500ms", "2s", "1m30s", "1.5s", "100us", "100µs"] {
            assert_eq!(parse_dial_timeout(ok).unwrap(), Some(ok));
        }
        assert_eq!(parse_dial_timeout("none").unwrap(), None);
        for bad in ["", "500", "ms", "5 s", "1.s", ".5s", "-1s", "1d"] {
            assert!(parse_dial_timeout(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn servers_match_containerds_defaults() {
        let s = |n| upstream_server(&Registry::parse(n).unwrap());
        assert_eq!(s("docker.io"), "https://registry-1.docker.io");
        assert_eq!(s("ghcr.io"), "https://ghcr.io");
        assert_eq!(s("127.0.0.1:5055"), "http://127.0.0.1:5055");
        assert_eq!(s("localhost:5055"), "http://localhost:5055");
        assert_eq!(s("10.1.2.3:5000"), "https://10.1.2.3:5000");
    }
}
