//! CRI-O (containers/image): one registries.conf drop-in with a `[[registry]]` per registry.
//!
//! Schema from containers-registries.conf(5): `prefix`, `location`, `insecure` on the
//! `[[registry]]` table, and `[[registry.mirror]]` tables with `location` and `insecure`; a
//! mirror location replaces the prefix in the reference, so `docker.io/library/x` is fetched as
//! `<mirror>/docker.io/library/x`. containers-registries.conf.d(5): drop-ins load in
//! alphanumeric order after registries.conf, only `*.conf` files, and a `[[registry]]` with the
//! same prefix as an earlier one replaces it.
//!
//! CRI-O sends no `ns` parameter, so Manta learns the upstream from the first path component of
//! the repository, which it takes for a host when it contains a `.` or is `localhost`
//! (docs/upstream.md). A registry with a port (`127.0.0.1:5055`) cannot be named there — `:` is
//! not allowed in a repository path component — nor can a dotless host. Those are refused unless
//! the entry names a Manta alias for them (`127.0.0.1:5055=up1`, configured in Manta's
//! `[upstream.aliases]`). Writing a mirror without the host path instead would send those pulls
//! to Manta's local repositories of the same name: a silent cache miss at best, another image at
//! worst.

use std::io::Write;
use std::path::PathBuf;

use super::files::{self, Restored};
use super::{comment_path, report, split_host_port, toml_str, MirrorConfigError, Registry};

/// `manta mirror-config crio …`
#[derive(Debug, clap::Args)]
pub struct CrioArgs {
    /// Registries to send through Manta, comma-separated host[:port] as in image references. A
    /// registry with a port (or without a dot) needs the alias Manta serves it under:
    /// 127.0.0.1:5055=up1 (see [upstream.aliases] in Manta's configuration).
    #[arg(
        long,
        value_delimiter = ',',
        env = "MANTA_MIRROR_REGISTRIES",
        required_unless_present = "restore"
    )]
    pub registries: Vec<String>,
    /// The drop-in to write (CRI-O loads only *.conf files there).
    #[arg(
        long,
        env = "MANTA_CRIO_REGISTRIES_FILE",
        default_value = "/etc/containers/registries.conf.d/50-manta.conf"
    )]
    pub file: PathBuf,
    /// Manta as CRI-O reaches it: host[:port], no scheme (plain HTTP; the mirror is written with
    /// insecure = true).
    #[arg(long, env = "MANTA_MIRROR_ADDR", default_value = "127.0.0.1:5000")]
    pub mirror: String,
    /// Undo: remove the drop-in if Manta wrote it, putting back the file it replaced, if any.
    #[arg(long)]
    pub restore: bool,
}

/// One registry and the first path component Manta knows it by.
#[derive(Debug)]
struct Entry {
    registry: Registry,
    path: String,
}

pub(super) fn run(args: &CrioArgs, out: &mut dyn Write) -> Result<(), MirrorConfigError> {
    if args.restore {
        let path = &args.file;
        let line = match files::restore(path)? {
            Restored::FromBackup { backup } => {
                format!("{}: restored from {}", path.display(), backup.display())
            }
            Restored::Removed => format!("{}: removed (there was no file before)", path.display()),
            Restored::NotOurs { backup } => format!(
                "{}: not written by Manta, left alone{}",
                path.display(),
                backup
                    .map(|b| format!("; {} left in place", b.display()))
                    .unwrap_or_default()
            ),
            Restored::Nothing => format!("{}: nothing to restore", path.display()),
        };
        return report(out, format_args!("{line}"));
    }
    let entries = parse_entries(&args.registries)?;
    let mirror = parse_mirror(&args.mirror)?;
    let content = dropin(args, &entries, &mirror);
    let outcome = files::install(&args.file, &content)?;
    report(out, format_args!("{}: {outcome}", args.file.display()))?;
    for e in &entries {
        report(
            out,
            format_args!("  {} → mirror {mirror}/{}", e.registry, e.path),
        )?;
    }
    Ok(())
}

fn parse_entries(raw: &[String]) -> Result<Vec<Entry>, MirrorConfigError> {
    let mut out: Vec<Entry> = Vec::new();
    for raw in raw {
        let (name, alias) = match raw.trim().split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (raw.trim(), None),
        };
        let registry = Registry::parse(name)?;
        let path = match alias {
            Some(a) => {
                validate_alias(a).map_err(|reason| MirrorConfigError::InvalidAlias {
                    registry: registry.to_string(),
                    alias: a.to_owned(),
                    reason,
                })?;
                a.to_owned()
            }
            None => {
                let reason = if registry.as_str().contains(':') {
                    Some("a ':' (port or IPv6 address) is not allowed in a repository path")
                } else if !registry.as_str().contains('.') && registry.as_str() != "localhost" {
                    Some("Manta reads a dotless first path component as a local repository")
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(MirrorConfigError::CrioNeedsAlias {
                        registry: registry.to_string(),
                        reason,
                    });
                }
                registry.as_str().to_owned()
            }
        };
        if !out.iter().any(|e| e.registry == registry) {
            out.push(Entry { registry, path });
        }
    }
    if out.is_empty() {
        return Err(MirrorConfigError::NoRegistries);
    }
    Ok(out)
}

/// An alias is one repository path component Manta does not take for a host:
/// `[a-z0-9]+((_|__|-+)[a-z0-9]+)*` (no `.`), and not `localhost`.
fn validate_alias(a: &str) -> Result<(), &'static str> {
    if a.is_empty() {
        return Err("empty alias");
    }
    if a == "localhost" {
        return Err("Manta reads \"localhost\" as a host, not an alias");
    }
    let b = a.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.iter().all(|&c| alnum(c) || c == b'_' || c == b'-') {
        return Err("an alias may contain only lower-case letters, digits, '_' and '-'");
    }
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) || a.contains("___") {
        return Err(
            "an alias must start and end with a letter or digit, with at most \"__\" between",
        );
    }
    Ok(())
}

/// `host[:port]` without a scheme.
fn parse_mirror(value: &str) -> Result<String, MirrorConfigError> {
    let bad = |reason| MirrorConfigError::InvalidMirror {
        value: value.to_owned(),
        reason,
    };
    if value.contains("://") {
        return Err(bad(
            "CRI-O takes host[:port] without a scheme; plain HTTP is allowed by insecure = true",
        ));
    }
    if value.contains('/') {
        return Err(bad("has a path; give Manta's host[:port] only"));
    }
    split_host_port(value).map_err(bad)?;
    Ok(value.to_owned())
}

fn dropin(args: &CrioArgs, entries: &[Entry], mirror: &str) -> String {
    let mut s = format!(
        "{marker}; restore with: manta mirror-config crio --restore --file {file}\n\
         # Each [[registry]] below replaces a table with the same prefix in registries.conf and in\n\
         # earlier drop-ins (containers-registries.conf.d(5)). CRI-O sends mirrors no \"ns\"\n\
         # parameter, so the mirror location names the upstream (or its Manta alias) in its path.\n",
        marker = files::MARKER,
        file = comment_path(&args.file),
    );
    for e in entries {
        let r = e.registry.as_str();
        s.push_str(&format!(
            "\n[[registry]]\nprefix = {p}\nlocation = {p}\n",
            p = toml_str(r)
        ));
        if e.registry.is_loopback() {
            // Loopback upstreams speak plain HTTP (docs/upstream.md), as Manta reaches them.
            s.push_str("insecure = true\n");
        }
        s.push_str(&format!(
            "\n[[registry.mirror]]\nlocation = {}\ninsecure = true\n",
            toml_str(&format!("{mirror}/{}", e.path))
        ));
    }
    // Manta itself, as Pods name it (`localhost:5000/hf/…` in an image volume): CRI-O speaks
    // HTTPS to every registry, localhost included, unless its table says insecure.
    let mut own = vec![mirror.to_string()];
    if let Ok((host, port)) = super::split_host_port(mirror) {
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            own = vec![format!("localhost{port}"), format!("127.0.0.1{port}")];
        }
    }
    for o in own
        .into_iter()
        .filter(|o| entries.iter().all(|e| e.registry.as_str() != o))
    {
        s.push_str(&format!(
            "
# Manta's own endpoint: plain HTTP.
[[registry]]
prefix = {p}
location = {p}
insecure = true
",
            p = toml_str(&o)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(raw: &[&str]) -> Result<Vec<Entry>, MirrorConfigError> {
        parse_entries(&raw.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn hosts_with_ports_need_an_alias() {
        assert!(matches!(
            entries(&["127.0.0.1:5055"]),
            Err(MirrorConfigError::CrioNeedsAlias { .. })
        ));
        assert!(matches!(
            entries(&["registry"]),
            Err(MirrorConfigError::CrioNeedsAlias { .. })
        ));
        let e = entries(&["127.0.0.1:5055=up1", "localhost", "ghcr.io"]).unwrap();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["up1", "localhost", "ghcr.io"]);
        for bad in [
            "x:1=",
            "x:1=a.b",
            "x:1=localhost",
            "x:1=-a",
            "x:1=A",
            "x:1=a___b",
        ] {
            assert!(
                matches!(entries(&[bad]), Err(MirrorConfigError::InvalidAlias { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn mirrors_are_host_port() {
        assert_eq!(parse_mirror("127.0.0.1:5000").unwrap(), "127.0.0.1:5000");
        for bad in ["http://127.0.0.1:5000", "127.0.0.1:5000/x", ""] {
            assert!(parse_mirror(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
