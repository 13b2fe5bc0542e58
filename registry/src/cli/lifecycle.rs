//! `manta rm`, `gc`, `pins`, `pin`, `unpin` and `verify`: the cache lifecycle commands.

use std::io::{self, IsTerminal, Write};
use std::str::FromStr;
use std::time::Duration;

use clap::builder::PossibleValue;
use indicatif::ProgressBar;
use manta_api::{GcReport, GcRequest, PinTarget, PinView, Unpinned, VerifyReport};
use reqwest::StatusCode;

use super::{
    age, client, emit, format_table, human_bytes, list_or_dash, unix_now, ClientError, FilterArgs,
    ModelUri, ServerArgs, UriError, TIMEOUT,
};
use crate::store::space::parse_size;

/// `manta rm <ref>`
#[derive(Debug, Clone, clap::Args)]
pub struct RmArgs {
    /// What to remove: hf://Org/Name[@revision], hf-raw/org/name:tag, <repo>:<tag>,
    /// <repo>@sha256:… or sha256:… (a blob).
    #[arg(value_name = "REF")]
    pub reference: CacheRef,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `manta gc`
#[derive(Debug, Clone, clap::Args)]
pub struct GcArgs {
    /// Report what would be evicted, evict nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Free this much (`20GiB`, `1.5TB`, bytes) [default: down to the low watermark].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub free: Option<u64>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `manta pins`
#[derive(Debug, Clone, clap::Args)]
pub struct PinsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `manta pin <name> <target>`
#[derive(Debug, Clone, clap::Args)]
pub struct PinArgs {
    /// The pin's name (lowercase letters, digits, '.', '_', '-'; replaces a pin of that name).
    #[arg(value_name = "NAME", value_parser = parse_pin_name)]
    pub name: String,
    /// What it protects: hf://Org/Name[@revision], or a reference in the agent's registry
    /// (hf-raw/org/name:main, 127.0.0.1:5055/a/b:v1, <repo>@sha256:…). --include, --exclude and
    /// --file narrow a hub target to the revision's subset of that name.
    #[arg(value_name = "TARGET")]
    pub target: CacheRef,
    #[command(flatten)]
    pub files: FilterArgs,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the pin as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `manta unpin <name>`
#[derive(Debug, Clone, clap::Args)]
pub struct UnpinArgs {
    #[arg(value_name = "NAME", value_parser = parse_pin_name)]
    pub name: String,
    /// Retain: leave the content to LRU eviction; Delete: remove it now (unless another pin
    /// holds it).
    #[arg(long, value_enum, ignore_case = true, default_value_t)]
    pub reclaim: Reclaim,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--reclaim`: what `manta unpin` does with what the pin protected ([`manta_api::Reclaim`] on
/// the command line) [default: `Retain`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaim(pub manta_api::Reclaim);

impl clap::ValueEnum for Reclaim {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            Reclaim(manta_api::Reclaim::Retain),
            Reclaim(manta_api::Reclaim::Delete),
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.0.as_str()))
    }
}

/// `manta verify`
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `manta rm` removes and `manta pin` protects: a hub repo, or a name in the agent's registry
/// (`hf-raw/org/name:main`, `<repo>@sha256:…`, `sha256:…`), left for the agent to interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheRef {
    Hub(ModelUri),
    Oci(String),
}

/// Why a cache reference was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error(transparent)]
    Uri(#[from] UriError),
    #[error("empty reference")]
    Empty,
    #[error("invalid character {0:?} in reference")]
    Char(char),
    #[error("{0:?} is not a name in the registry (it has an empty, '.' or '..' path component)")]
    Segment(String),
}

impl FromStr for CacheRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, RefError> {
        if s.contains("://") {
            return Ok(CacheRef::Hub(s.parse()?));
        }
        if s.is_empty() {
            return Err(RefError::Empty);
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(RefError::Char(c));
        }
        // A dot segment would be resolved away by the URL and name another endpoint.
        if s.split('/').any(|p| matches!(p, "" | "." | "..")) {
            return Err(RefError::Segment(s.to_owned()));
        }
        Ok(CacheRef::Oci(s.to_owned()))
    }
}

impl std::fmt::Display for CacheRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheRef::Hub(uri) => uri.fmt(f),
            CacheRef::Oci(name) => f.write_str(name),
        }
    }
}

/// A pin name: `[a-z0-9][a-z0-9._-]{0,252}`.
fn parse_pin_name(s: &str) -> Result<String, String> {
    let valid = s.len() <= 253
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(s.to_owned())
    } else {
        Err(
            "a pin name is 1 to 253 of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
                .to_owned(),
        )
    }
}

/// `manta rm`: remove one root from the cache now, whatever its age; write what was freed.
pub async fn rm(args: RmArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = client(&args.server, Some(TIMEOUT))?;
    let reference = args.reference.to_string();
    let answer = agent.remove(&reference).await.map_err(|e| match e {
        manta_api::Error::Api {
            status, message, ..
        } if status == StatusCode::NOT_FOUND => ClientError::NotCached {
            reference: reference.clone(),
            message,
        },
        manta_api::Error::Api {
            status, message, ..
        } if status == StatusCode::CONFLICT => ClientError::Pinned {
            reference: reference.clone(),
            message,
        },
        e => e.into(),
    })?;
    emit(out, args.json, &answer, |r| format_gc(r, unix_now()))
}

/// `manta gc`: evict least recently used content now; write each evicted root and the total.
pub async fn gc(args: GcArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let request = GcRequest {
        dry_run: args.dry_run,
        free: args.free,
    };
    let answer = client(&args.server, Some(TIMEOUT))?.gc(&request).await?;
    emit(out, args.json, &answer, |r| format_gc(r, unix_now()))
}

/// `manta pins`: write the agent's pins, sorted by name.
pub async fn pins(args: PinsArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let answer = client(&args.server, Some(TIMEOUT))?.pins().await?;
    emit(out, args.json, &answer, |pins| {
        format_pins(pins, unix_now())
    })
}

/// `manta pin`: create or replace a pin; write what it protects so far.
pub async fn pin(args: PinArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let target = pin_target(&args.target, &args.files)?;
    let answer = client(&args.server, Some(TIMEOUT))?
        .put_pin(&args.name, &target)
        .await?;
    let created = answer.status == StatusCode::CREATED;
    emit(out, args.json, &answer, |p| format_pinned(p, created))
}

/// `manta unpin`: drop a pin; with `--reclaim delete`, write what was freed.
pub async fn unpin(args: UnpinArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let answer = client(&args.server, Some(TIMEOUT))?
        .delete_pin(&args.name, args.reclaim.0)
        .await?
        .ok_or_else(|| ClientError::NoSuchPin {
            name: args.name.clone(),
        })?;
    emit(out, args.json, &answer, |u| format_unpinned(u, unix_now()))
}

/// `manta verify`: have the agent re-hash every blob (as long as that takes) and write what it
/// found; [`ClientError::Damaged`] when a blob is corrupt or missing.
pub async fn verify(args: VerifyArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = client(&args.server, None)?;
    let spinner = io::stderr().is_terminal().then(|| {
        let s = ProgressBar::new_spinner().with_message("re-hashing every blob in the cache");
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let answer = agent.verify().await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let answer = answer?;
    emit(out, args.json, &answer, format_verify)?;
    let report = &answer.value;
    if !report.is_damaged() {
        return Ok(());
    }
    Err(ClientError::Damaged {
        corrupt: report.corrupt.len(),
        missing: report.missing.len(),
        dangling: report.dangling.len(),
    })
}

fn pin_target(target: &CacheRef, files: &FilterArgs) -> Result<PinTarget, ClientError> {
    match target {
        CacheRef::Hub(uri) => Ok(PinTarget::hub(
            uri.hub,
            &uri.repo,
            uri.revision.as_deref(),
            files.filter(),
        )),
        CacheRef::Oci(_) if !files.is_all() => Err(ClientError::FilterOnReference {
            target: target.to_string(),
        }),
        CacheRef::Oci(reference) => Ok(PinTarget::reference(reference)),
    }
}

/// The evicted roots (if any), then what was freed and what was left alone.
fn format_gc(r: &GcReport, now: u64) -> String {
    let mut text = String::new();
    if !r.evicted.is_empty() {
        let rows: Vec<[String; 4]> = r
            .evicted
            .iter()
            .map(|e| {
                [
                    e.kind.as_str().to_owned(),
                    e.name.clone(),
                    human_bytes(e.bytes),
                    age(e.last_access, now),
                ]
            })
            .collect();
        text.push_str(&format_table(["KIND", "NAME", "SIZE", "ACCESSED"], &rows));
    }
    let verb = if r.dry_run { "would free" } else { "freed" };
    text.push_str(&format!(
        "{verb} {} ({} root(s), {} blob(s), {} manifest(s))\n",
        human_bytes(r.freed_bytes),
        r.evicted.len(),
        r.blobs_deleted,
        r.manifests_deleted
    ));
    if !r.refused_pinned.is_empty() {
        let names = r.refused_pinned.join(", ");
        text.push_str(&format!("pinned, left alone: {names}\n"));
    }
    if r.kept_in_use > 0 {
        let n = r.kept_in_use;
        text.push_str(&format!("{n} blob(s) kept: being read or downloaded\n"));
    }
    let protected = [
        (r.protected_pinned, "pinned"),
        (r.protected_in_use, "in use"),
        (r.protected_young, "used too recently"),
    ];
    let protected: Vec<String> = protected
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, why)| format!("{n} {why}"))
        .collect();
    if !protected.is_empty() {
        let list = protected.join(", ");
        text.push_str(&format!("not evictable: {list}\n"));
    }
    text
}

fn format_pins(pins: &[PinView], now: u64) -> String {
    let mut pins: Vec<&PinView> = pins.iter().collect();
    pins.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<[String; 5]> = pins
        .into_iter()
        .map(|p| {
            [
                p.name.clone(),
                target_text(&p.target),
                human_bytes(p.bytes),
                age(p.created_at, now),
                list_or_dash(p.roots.iter().map(String::as_str)),
            ]
        })
        .collect();
    format_table(["NAME", "TARGET", "SIZE", "CREATED", "ROOTS"], &rows)
}

fn format_pinned(p: &PinView, created: bool) -> String {
    let verb = if created { "created" } else { "replaced" };
    let mut text = format!("pin {} {verb}: {}\n", p.name, target_text(&p.target));
    if p.roots.is_empty() {
        text.push_str("nothing cached matches it yet; it is protected once fetched\n");
    } else {
        text.push_str(&format!(
            "protects {} root(s), {}: {}\n",
            p.roots.len(),
            human_bytes(p.bytes),
            p.roots.join(", ")
        ));
    }
    text
}

fn format_unpinned(u: &Unpinned, now: u64) -> String {
    let mut text = format!("pin {} removed\n", u.name);
    match &u.gc {
        Some(report) => text.push_str(&format_gc(report, now)),
        None => text.push_str("its content stays in the cache until evicted\n"),
    }
    text
}

fn format_verify(r: &VerifyReport) -> String {
    let mut text = format!("checked {} blob(s), {}", r.checked, human_bytes(r.bytes));
    if !r.is_damaged() {
        text.push_str(": all intact\n");
        return text;
    }
    text.push('\n');
    for (what, digests) in [("corrupt", &r.corrupt), ("missing", &r.missing)] {
        for d in digests {
            text.push_str(&format!("{what}  {d}\n"));
        }
    }
    for m in &r.dangling {
        text.push_str(&format!(
            "dangling  {}@{}: lacks {}\n",
            m.repo,
            m.manifest,
            m.missing.join(", ")
        ));
    }
    text
}

/// `hf://Org/Name@main[include=*.json,*.md;exclude=*.bin]`, or the reference.
fn target_text(t: &PinTarget) -> String {
    if let Some(reference) = &t.reference {
        return reference.clone();
    }
    let mut text = format!(
        "{}://{}",
        t.hub.map_or("?", |h| h.as_str()),
        t.repo.as_deref().unwrap_or("?")
    );
    if let Some(revision) = &t.revision {
        text.push('@');
        text.push_str(revision);
    }
    let f = &t.filter;
    let parts: Vec<String> = [
        ("file", f.filename.iter().cloned().collect::<Vec<_>>()),
        ("include", f.allow_patterns.clone()),
        ("exclude", f.ignore_patterns.clone()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={}", v.join(",")))
    .collect();
    if !parts.is_empty() {
        text.push_str(&format!("[{}]", parts.join(";")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    use manta_api::encode_path;
    use reqwest::Url;

    use super::super::tests::NOW;

    #[test]
    fn parses_cache_refs() {
        let hub = |s: &str| s.parse::<CacheRef>().map(|r| r.to_string());
        assert_eq!(
            hub("hf://Org/Name@main"),
            Ok("hf://Org/Name@main".to_owned())
        );
        assert_eq!(
            hub("huggingface://Org/Name"),
            Ok("hf://Org/Name".to_owned())
        );
        for oci in [
            "hf-raw/org/name:main",
            "registry-1.docker.io/library/alpine:3",
            "127.0.0.1:5055/a/b@sha256:0123",
            "sha256:0123abcd",
        ] {
            assert_eq!(
                oci.parse::<CacheRef>(),
                Ok(CacheRef::Oci(oci.to_owned())),
                "{oci}"
            );
        }
        let cases = [
            ("", RefError::Empty),
            (
                "s3://x/y",
                RefError::Uri(UriError::UnknownScheme("s3".to_owned())),
            ),
            ("hf://a/b@", RefError::Uri(UriError::EmptyRevision)),
            ("a b:1", RefError::Char(' ')),
            ("a/../v2/x:1", RefError::Segment("a/../v2/x:1".to_owned())),
            ("./x:1", RefError::Segment("./x:1".to_owned())),
            ("a//b:1", RefError::Segment("a//b:1".to_owned())),
            ("/a:1", RefError::Segment("/a:1".to_owned())),
        ];
        for (s, expected) in cases {
            assert_eq!(s.parse::<CacheRef>(), Err(expected), "{s:?}");
        }
    }

    #[test]
    fn encodes_refs_as_url_paths() {
        assert_eq!(
            encode_path("hf://Org/Name@refs/pr/1"),
            "hf://Org/Name@refs/pr/1"
        );
        assert_eq!(encode_path("sha256:ab+c~d"), "sha256:ab+c~d");
        assert_eq!(
            encode_path("a b?c#d%e\\f\"<>é"),
            "a%20b%3Fc%23d%25e%5Cf%22%3C%3E%C3%A9"
        );
        // The URL keeps what the agent's wildcard route is to see.
        for r in ["hf://Org/Name@refs/pr/1", "a%b?c", "x/y@sha256:00"] {
            let url = Url::parse(&format!("http://h:1/manta/v1/cache/{}", encode_path(r)));
            assert_eq!(
                url.map(|u| u.path().to_owned()),
                Ok(format!("/manta/v1/cache/{}", encode_path(r))),
                "{r}"
            );
        }
    }

    #[test]
    fn checks_pin_names() {
        for ok in ["a", "0", "torrent-1.b_c", &"a".repeat(253)] {
            assert_eq!(parse_pin_name(ok), Ok(ok.to_owned()));
        }
        for bad in ["", "A", "-a", ".a", "a/b", "a b", "é", &"a".repeat(254)] {
            assert!(parse_pin_name(bad).is_err(), "{bad:?}");
        }
    }

    fn gc_report(dry_run: bool) -> GcReport {
        let json = serde_json::json!({
            "dryRun": dry_run, "freedBytes": 3 << 20, "blobsDeleted": 3, "manifestsDeleted": 2,
            "evicted": [
                {"kind": "hub", "name": "hf://org/m:main", "bytes": 2 << 20, "lastAccess": NOW - 180},
                {"kind": "blob", "name": "sha256:ab", "bytes": 1 << 20, "lastAccess": NOW - 7200},
            ],
            "refusedPinned": [], "keptInUse": 1, "protectedPinned": 2, "protectedInUse": 0,
            "protectedYoung": 4,
        });
        match serde_json::from_value(json) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn formats_gc_reports() {
        assert_eq!(
            format_gc(&gc_report(false), NOW),
            "KIND  NAME             SIZE     ACCESSED\n\
             hub   hf://org/m:main  2.0 MiB  3m ago\n\
             blob  sha256:ab        1.0 MiB  2h ago\n\
             freed 3.0 MiB (2 root(s), 3 blob(s), 2 manifest(s))\n\
             1 blob(s) kept: being read or downloaded\n\
             not evictable: 2 pinned, 4 used too recently\n"
        );
        assert!(format_gc(&gc_report(true), NOW).contains("\nwould free 3.0 MiB "));
        let empty = GcReport {
            dry_run: false,
            freed_bytes: 0,
            blobs_deleted: 0,
            manifests_deleted: 0,
            evicted: Vec::new(),
            refused_pinned: vec!["hf://a/b:main".to_owned()],
            kept_in_use: 0,
            protected_pinned: 0,
            protected_in_use: 0,
            protected_young: 0,
        };
        assert_eq!(
            format_gc(&empty, NOW),
            "freed 0 B (0 root(s), 0 blob(s), 0 manifest(s))\n\
             pinned, left alone: hf://a/b:main\n"
        );
    }

    fn pin_view(json: serde_json::Value) -> PinView {
        match serde_json::from_value(json) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn formats_pins() {
        let hub = pin_view(
            serde_json::json!({"name": "qwen", "createdAt": NOW - 90_000,
            "target": {"hub": "hf", "repo": "Qwen/Q", "revision": "main",
                "allowPatterns": ["*.json", "*.md"], "ignorePatterns": ["*.bin"]},
            "roots": ["hf://qwen/q:main"], "bytes": 2048}),
        );
        let oci = pin_view(serde_json::json!({"name": "alpine", "createdAt": NOW - 60,
            "target": {"reference": "docker.io/library/alpine:3"}, "roots": [], "bytes": 0}));
        assert_eq!(
            format_pins(&[hub, oci], NOW),
            "NAME    TARGET                                               SIZE     CREATED  ROOTS\n\
             alpine  docker.io/library/alpine:3                           0 B      1m ago   -\n\
             qwen    hf://Qwen/Q@main[include=*.json,*.md;exclude=*.bin]  2.0 KiB  1d ago   hf://qwen/q:main\n"
        );
        let one = pin_view(serde_json::json!({"name": "c", "createdAt": NOW,
            "target": {"hub": "hf", "repo": "a/b", "filename": "config.json"},
            "roots": ["hf://a/b:main", "hf/a/b:x"], "bytes": 10}));
        assert_eq!(
            format_pinned(&one, true),
            "pin c created: hf://a/b[file=config.json]\n\
             protects 2 root(s), 10 B: hf://a/b:main, hf/a/b:x\n"
        );
        let none = pin_view(serde_json::json!({"name": "c", "createdAt": NOW,
            "target": {"reference": "x/y:1"}, "roots": [], "bytes": 0}));
        assert_eq!(
            format_pinned(&none, false),
            "pin c replaced: x/y:1\nnothing cached matches it yet; it is protected once fetched\n"
        );
    }

    #[test]
    fn formats_unpins() {
        let retained = Unpinned {
            name: "a".to_owned(),
            reclaim: manta_api::Reclaim::Retain,
            gc: None,
        };
        assert_eq!(
            format_unpinned(&retained, NOW),
            "pin a removed\nits content stays in the cache until evicted\n"
        );
        let deleted = Unpinned {
            name: "a".to_owned(),
            reclaim: manta_api::Reclaim::Delete,
            gc: Some(gc_report(false)),
        };
        assert!(format_unpinned(&deleted, NOW).starts_with("pin a removed\nKIND  NAME"));
    }

    #[test]
    fn formats_verify_reports() {
        let clean = VerifyReport {
            checked: 3,
            bytes: 3072,
            corrupt: Vec::new(),
            missing: Vec::new(),
            dangling: Vec::new(),
        };
        assert_eq!(
            format_verify(&clean),
            "checked 3 blob(s), 3.0 KiB: all intact\n"
        );
        let damaged = VerifyReport {
            corrupt: vec!["sha256:aa".to_owned()],
            missing: vec!["sha256:bb".to_owned(), "sha256:cc".to_owned()],
            ..clean
        };
        assert_eq!(
            format_verify(&damaged),
            "checked 3 blob(s), 3.0 KiB\n\
             corrupt  sha256:aa\n\
             missing  sha256:bb\n\
             missing  sha256:cc\n"
        );
        let dangling = VerifyReport {
            dangling: vec![manta_api::DanglingManifest {
                repo: "team/app".into(),
                manifest: "sha256:dd".into(),
                missing: vec!["sha256:ee".into(), "sha256:ff".into()],
            }],
            ..clean
        };
        assert_eq!(
            format_verify(&dangling),
            "checked 3 blob(s), 3.0 KiB\n\
             dangling  team/app@sha256:dd: lacks sha256:ee, sha256:ff\n"
        );
    }

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: TestCommand,
    }

    #[derive(clap::Subcommand)]
    enum TestCommand {
        Gc(GcArgs),
        Pin(PinArgs),
        Unpin(UnpinArgs),
        Rm(RmArgs),
    }

    fn parse(args: &[&str]) -> Result<TestCommand, clap::Error> {
        use clap::Parser;
        TestCli::try_parse_from([&["manta"], args].concat()).map(|c| c.command)
    }

    #[test]
    fn parses_gc_args_and_requests() {
        let body = |args: &[&str]| match parse(args) {
            Ok(TestCommand::Gc(a)) => serde_json::to_string(&GcRequest {
                dry_run: a.dry_run,
                free: a.free,
            })
            .map_err(|e| e.to_string()),
            Ok(_) => Err("not gc".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(body(&["gc"]), Ok("{}".to_owned()));
        assert_eq!(
            body(&["gc", "--dry-run", "--free", "20GiB"]),
            Ok(r#"{"dryRun":true,"free":21474836480}"#.to_owned())
        );
        assert_eq!(
            body(&["gc", "--free", "1.5KB"]),
            Ok(r#"{"free":1500}"#.to_owned())
        );
        for bad in ["80%", "lots", "0"] {
            assert!(body(&["gc", "--free", bad]).is_err(), "{bad}");
        }
    }

    fn pin_json(args: &[&str]) -> Result<serde_json::Value, String> {
        match parse(args) {
            Ok(TestCommand::Pin(a)) => pin_target(&a.target, &a.files)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::to_value(b).map_err(|e| e.to_string())),
            Ok(_) => Err("not pin".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn parses_pins_into_targets() {
        assert_eq!(
            pin_json(&[
                "pin",
                "p",
                "hf://Org/Name@v1",
                "--include",
                "*.json",
                "--exclude",
                "x/"
            ]),
            Ok(
                serde_json::json!({"hub": "hf", "repo": "Org/Name", "revision": "v1",
                "allowPatterns": ["*.json"], "ignorePatterns": ["x/"]})
            )
        );
        assert_eq!(
            pin_json(&["pin", "p", "hf://Org/Name", "--file", "config.json"]),
            Ok(serde_json::json!({"hub": "hf", "repo": "Org/Name", "filename": "config.json"}))
        );
        assert_eq!(
            pin_json(&["pin", "p", "hf-raw/org/name:main"]),
            Ok(serde_json::json!({"reference": "hf-raw/org/name:main"}))
        );
        assert_eq!(
            pin_json(&["pin", "p", "a/b:1", "--include", "*"]),
            Err(
                "--include, --exclude and --file apply to hub targets (hf://…), not to a/b:1"
                    .to_owned()
            )
        );
        assert!(pin_json(&["pin", "Bad", "a/b:1"]).is_err());
        assert!(pin_json(&["pin", "p", "hf://a b"]).is_err());
    }

    #[test]
    fn unpin_takes_the_reclaim_policy_in_any_case() {
        use manta_api::Reclaim::{Delete, Retain};
        let reclaim = |args: &[&str]| match parse(args) {
            Ok(TestCommand::Unpin(a)) => Ok(a.reclaim.0),
            Ok(_) => Err("not unpin".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(reclaim(&["unpin", "p"]), Ok(Retain));
        assert_eq!(reclaim(&["unpin", "p", "--reclaim", "Delete"]), Ok(Delete));
        assert_eq!(reclaim(&["unpin", "p", "--reclaim", "delete"]), Ok(Delete));
        assert_eq!(reclaim(&["unpin", "p", "--reclaim", "RETAIN"]), Ok(Retain));
        assert!(reclaim(&["unpin", "p", "--reclaim", "purge"]).is_err());
    }

    #[test]
    fn rm_takes_one_ref() {
        assert!(matches!(
            parse(&["rm", "hf://Org/Name@main"]),
            Ok(TestCommand::Rm(RmArgs {
                reference: CacheRef::Hub(_),
                ..
            }))
        ));
        assert!(parse(&["rm"]).is_err());
        assert!(parse(&["rm", "a/../b:1"]).is_err());
    }
}
