//! `manta prefetch`, `ls`, `rm`, `gc`, `pins`, `pin`, `unpin` and `verify`: the command-line
//! client of the agent's admin API (`/manta/v1/…`).
//!
//! Nothing here prints to stdout: results go to the writer given. Progress goes to stderr, as a
//! bar when stderr is a terminal and as a line every few seconds otherwise.

use std::io::{self, Write};
use std::str::FromStr;
use std::time::Duration;

use manta_api::{Answer, CacheEntry, CacheView, CachedRevision, Client, SpaceView};
use manta_hub::{Filter, HubKind};
use reqwest::Url;

mod lifecycle;
mod prefetch;

pub use lifecycle::{
    gc, pin, pins, rm, unpin, verify, CacheRef, GcArgs, PinArgs, PinsArgs, Reclaim, RefError,
    RmArgs, UnpinArgs, VerifyArgs,
};
pub use prefetch::{prefetch, Form, PrefetchArgs};

const SCHEMES: &str = "hf://, huggingface://, ms:// or modelscope://";

/// Where the agent listens.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The agent's address: its admin API, and the registry host the printed references name.
    #[arg(long, env = "MANTA_SERVER", default_value = "http://127.0.0.1:5000", value_parser = parse_server)]
    pub server: Url,
    /// File holding the cluster token, to reach an agent through its cluster listener (the
    /// first token in the file is sent).
    #[arg(long, env = "MANTA_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

/// Which files of a hub repo (`huggingface_hub`'s glob semantics).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only the files matching this glob (repeatable).
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Not the files matching this glob (repeatable).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// This one file of the repo.
    #[arg(long = "file", value_name = "PATH")]
    pub file: Option<String>,
}

impl FilterArgs {
    fn is_all(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.file.is_none()
    }

    fn filter(&self) -> Filter {
        Filter {
            filename: self.file.clone(),
            allow_patterns: self.include.clone(),
            ignore_patterns: self.exclude.clone(),
        }
    }
}

/// `manta ls`
#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `manta peers`
#[derive(Debug, Clone, clap::Args)]
pub struct PeersArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's answer as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `hf://Qwen/Qwen2.5-0.5B-Instruct@main`: a hub, a repo id and an optional revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUri {
    pub hub: HubKind,
    pub repo: String,
    pub revision: Option<String>,
}

/// Why a model URI was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("missing scheme: expected {SCHEMES} followed by the repo id")]
    MissingScheme,
    #[error("unknown scheme {0:?}: expected {SCHEMES}")]
    UnknownScheme(String),
    #[error("empty repo id")]
    EmptyRepo,
    #[error("empty path segment in repo id {0:?}")]
    EmptySegment(String),
    #[error("invalid character {0:?} in repo id: use letters, digits, '-', '_' and '.'")]
    RepoChar(char),
    #[error("empty revision after '@'")]
    EmptyRevision,
    #[error("invalid character {0:?} in revision")]
    RevisionChar(char),
}

impl FromStr for ModelUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let (scheme, rest) = s.split_once("://").ok_or(UriError::MissingScheme)?;
        let hub = HubKind::parse(&scheme.to_ascii_lowercase())
            .ok_or_else(|| UriError::UnknownScheme(scheme.to_owned()))?;
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision)),
            None => (rest, None),
        };
        if repo.is_empty() {
            return Err(UriError::EmptyRepo);
        }
        if repo.split('/').any(str::is_empty) {
            return Err(UriError::EmptySegment(repo.to_owned()));
        }
        if let Some(c) = repo
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
        {
            return Err(UriError::RepoChar(c));
        }
        if let Some(revision) = revision {
            if revision.is_empty() {
                return Err(UriError::EmptyRevision);
            }
            if let Some(c) = revision
                .chars()
                .find(|c| c.is_whitespace() || c.is_control())
            {
                return Err(UriError::RevisionChar(c));
            }
        }
        Ok(ModelUri {
            hub,
            repo: repo.to_owned(),
            revision: revision.map(str::to_owned),
        })
    }
}

impl std::fmt::Display for ModelUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.hub.as_str(), self.repo)?;
        match &self.revision {
            Some(r) => write!(f, "@{r}"),
            None => Ok(()),
        }
    }
}

/// What a client command failed to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading the token file {path}")]
    TokenFile {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the token file {path} holds no token")]
    NoToken { path: std::path::PathBuf },
    /// The admin API call failed: the agent could not be reached
    /// ([`manta_api::Error::is_unreachable`]), answered with an error status, or with what is not
    /// its API.
    #[error(transparent)]
    Agent(#[from] manta_api::Error),
    #[error("prefetch of {uri} failed: {message}")]
    JobFailed { uri: String, message: String },
    #[error("interrupted; prefetch job {id} continues on the agent (follow it at {url})")]
    Interrupted { id: String, url: String },
    /// `manta rm`: nothing cached matches (pushed content is not cache).
    #[error("nothing in the agent's cache matches {reference} ({message})")]
    NotCached { reference: String, message: String },
    /// `manta rm`: it is pinned.
    #[error("cannot remove {reference}: {message}")]
    Pinned { reference: String, message: String },
    #[error("no pin named {name}")]
    NoSuchPin { name: String },
    #[error("--include, --exclude and --file apply to hub targets (hf://…), not to {target}")]
    FilterOnReference { target: String },
    /// `manta verify` found damage (after printing what).
    #[error("verify found {corrupt} corrupt and {missing} missing blob(s), and {dangling} manifest(s) that cannot be pulled whole")]
    Damaged {
        corrupt: usize,
        missing: usize,
        dangling: usize,
    },
    #[error("cannot write the output")]
    Output(#[source] io::Error),
}

/// `manta ls`: write the agent's space use, its cached hub repo revisions (sorted by hub, repo and
/// revision) and every cache entry (least recently used, i.e. next to be evicted, first) to `out`,
/// or the agent's JSON with `--json`.
pub async fn ls(args: LsArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let answer = client(&args.server, Some(TIMEOUT))?.cache(true).await?;
    emit(out, args.json, &answer, |cache| {
        format_cache(cache, unix_now())
    })
}

/// `manta peers`: the agent's peers (address, node, health, backoff) and the blobs it is
/// fetching now, with where from.
pub async fn peers(args: PeersArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = client(&args.server, Some(TIMEOUT))?;
    let answer: Answer<manta_peer::proto::Status> = agent
        .call(agent.http().get(agent.endpoint("peer/status")))
        .await?;
    emit(out, args.json, &answer, format_peers)
}

fn format_peers(s: &manta_peer::proto::Status) -> String {
    let rows: Vec<[String; 5]> = s
        .members
        .iter()
        .map(|m| {
            let state = if m.is_self {
                "self".to_owned()
            } else if m.healthy {
                "healthy".to_owned()
            } else {
                format!("backing off {}s", m.backoff_secs)
            };
            [
                m.addr.clone(),
                m.node.clone().unwrap_or_else(|| "-".into()),
                state,
                m.protocol.map_or_else(|| "-".into(), |p| p.to_string()),
                m.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let at = s.addr.as_deref().map_or_else(
        || "not found among its peers yet".to_owned(),
        |a| format!("at {a}"),
    );
    let mut text = format!(
        "node {}, {at}; owner of {} tracked digests\n",
        s.node, s.tracked
    );
    text.push_str(&format_table(
        ["PEER", "NODE", "STATE", "PROTOCOL", "LAST ERROR"],
        &rows,
    ));
    if !s.fetching.is_empty() {
        let rows: Vec<[String; 3]> = s
            .fetching
            .iter()
            .map(|f| [f.digest.clone(), f.from.clone(), percent(f.have, f.size)])
            .collect();
        text.push('\n');
        text.push_str(&format_table(["FETCHING", "FROM", "DONE"], &rows));
    }
    text
}

/// The agent's JSON with `--json`, else `text` of its answer.
fn emit<T>(
    out: &mut dyn Write,
    json: bool,
    answer: &Answer<T>,
    text: impl FnOnce(&T) -> String,
) -> Result<(), ClientError> {
    if json {
        return write_json(out, &answer.json);
    }
    out.write_all(text(&answer.value).as_bytes())
        .map_err(ClientError::Output)
}

/// Sections a blank line apart: the space line, the hub revisions (when there are any), the
/// entries.
fn format_cache(cache: &CacheView, now: u64) -> String {
    let mut sections = vec![format_space(&cache.space)];
    if !cache.revisions.is_empty() {
        sections.push(format_revisions(&cache.revisions));
    }
    sections.push(format_entries(&cache.entries, now));
    sections.join("\n")
}

fn format_space(s: &SpaceView) -> String {
    let share = u128::from(s.used) * 100 / u128::from(s.capacity.max(1));
    format!(
        "capacity {}, used {} ({share}%), pinned {}, reserved {}; \
         eviction above {} down to {}\n",
        human_bytes(s.capacity),
        human_bytes(s.used),
        human_bytes(s.pinned),
        human_bytes(s.reserved),
        human_bytes(s.high_watermark),
        human_bytes(s.low_watermark),
    )
}

fn format_revisions(revisions: &[CachedRevision]) -> String {
    let mut revisions: Vec<&CachedRevision> = revisions.iter().collect();
    revisions.sort_by(|a, b| {
        (a.hub.as_str(), &a.repo, &a.revision).cmp(&(b.hub.as_str(), &b.repo, &b.revision))
    });
    let rows: Vec<[String; 9]> = revisions
        .into_iter()
        .map(|r| {
            [
                r.hub.as_str().to_owned(),
                r.repo.clone(),
                r.revision.clone(),
                r.commit.chars().take(12).collect(),
                r.files.to_string(),
                human_bytes(r.size),
                percent(r.cached_bytes, r.size),
                source_of(r.cached_bytes, r.from_peers),
                forms_text(&r.forms),
            ]
        })
        .collect();
    let header = [
        "HUB", "REPO", "REVISION", "COMMIT", "FILES", "SIZE", "CACHED", "FROM", "FORMS",
    ];
    format_table(header, &rows)
}

/// Where the cached bytes came from: `hub`, `peers`, or the share of each.
fn source_of(cached: u64, from_peers: u64) -> String {
    match (cached, from_peers) {
        (0, _) => "-".to_owned(),
        (_, 0) => "hub".to_owned(),
        (c, p) if p >= c => "peers".to_owned(),
        (c, p) => format!("peers {}, hub {}", percent(p, c), percent(c - p, c)),
    }
}

fn format_entries(entries: &[CacheEntry], now: u64) -> String {
    let mut entries: Vec<&CacheEntry> = entries.iter().collect();
    entries.sort_by(|a, b| (a.last_access, &a.name).cmp(&(b.last_access, &b.name)));
    let rows: Vec<[String; 6]> = entries
        .into_iter()
        .map(|e| {
            [
                e.kind.as_str().to_owned(),
                e.name.clone(),
                human_bytes(e.bytes),
                age(e.last_access, now),
                list_or_dash(e.pins.iter().map(String::as_str)),
                list_or_dash(e.forms.iter().map(|f| f.as_str())),
            ]
        })
        .collect();
    let header = ["KIND", "NAME", "SIZE", "ACCESSED", "PINNED", "FORMS"];
    format_table(header, &rows)
}

/// How long before `now` a Unix time was: `42s ago`, `3m ago`, `5h ago`, `2d ago` (`-`: never).
fn age(then: u64, now: u64) -> String {
    if then == 0 {
        return "-".to_owned();
    }
    let secs = now.saturating_sub(then);
    let (n, unit) = match secs {
        s if s < 60 => (s, "s"),
        s if s < 3600 => (s / 60, "m"),
        s if s < 86_400 => (s / 3600, "h"),
        s => (s / 86_400, "d"),
    };
    format!("{n}{unit} ago")
}

/// `raw,image`.
fn forms_text(forms: &[manta_api::Form]) -> String {
    forms
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// `a,b`, or `-` for none.
fn list_or_dash<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.into_iter().collect();
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long a request may take, but for `manta verify`'s (which waits as long as the agent
/// works).
const TIMEOUT: Duration = Duration::from_secs(60);

/// The admin API of the agent `args` name, with the first token of the token file if one is
/// given; each request gives up after `timeout` (`None`: it waits as long as the agent works on
/// an answer, but still gives up on connecting after a while).
fn client(args: &ServerArgs, timeout: Option<Duration>) -> Result<Client, ClientError> {
    let Some(path) = &args.token_file else {
        return Ok(Client::new(args.server.clone(), None, timeout)?);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::TokenFile {
        path: path.clone(),
        source,
    })?;
    let no_token = || ClientError::NoToken { path: path.clone() };
    let token = manta_api::first_token(&text).ok_or_else(no_token)?;
    Client::new(args.server.clone(), Some(token), timeout).map_err(|e| match e {
        manta_api::Error::Token => no_token(),
        e => e.into(),
    })
}

fn write_json(out: &mut dyn Write, json: &serde_json::Value) -> Result<(), ClientError> {
    serde_json::to_writer_pretty(&mut *out, json)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(out))
        .map_err(ClientError::Output)
}

fn parse_server(s: &str) -> Result<Url, String> {
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| format!("{e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("expected http://host:port or https://host".to_owned());
    }
    Ok(url)
}

/// `1536` → `1.5 KiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 KiB would print as "1024.0 KiB".
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `part` of `whole`, rounded down so that only a complete whole shows 100%.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "100%".to_owned();
    }
    format!("{}%", u128::from(part.min(whole)) * 100 / u128::from(whole))
}

/// Left-aligned columns two spaces apart, one line per row, no trailing spaces.
fn format_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    let lines = std::iter::once(header.map(str::to_owned)).chain(rows.iter().cloned());
    for row in lines {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Result<ModelUri, UriError> {
        s.parse()
    }

    #[test]
    fn parses_model_uris() {
        let cases = [
            (
                "hf://Qwen/Qwen2.5-0.5B-Instruct@main",
                HubKind::Hf,
                "Qwen/Qwen2.5-0.5B-Instruct",
                Some("main"),
            ),
            ("huggingface://gpt2", HubKind::Hf, "gpt2", None),
            (
                "ms://qwen/Qwen2.5-0.5B-Instruct",
                HubKind::Ms,
                "qwen/Qwen2.5-0.5B-Instruct",
                None,
            ),
            (
                "modelscope://a/b/c@v1.0",
                HubKind::Ms,
                "a/b/c",
                Some("v1.0"),
            ),
            (
                "HF://org/m_x.y@refs/pr/1",
                HubKind::Hf,
                "org/m_x.y",
                Some("refs/pr/1"),
            ),
        ];
        for (s, hub, repo, revision) in cases {
            let expected = ModelUri {
                hub,
                repo: repo.to_owned(),
                revision: revision.map(str::to_owned),
            };
            assert_eq!(uri(s), Ok(expected), "{s}");
        }
        assert_eq!(
            uri("hf://a/b@refs/pr/1").map(|u| u.to_string()),
            Ok("hf://a/b@refs/pr/1".to_owned())
        );
    }

    #[test]
    fn refuses_bad_model_uris() {
        let cases = [
            ("Qwen/Qwen2.5", UriError::MissingScheme),
            ("", UriError::MissingScheme),
            ("s3://bucket/x", UriError::UnknownScheme("s3".to_owned())),
            (" hf://a/b", UriError::UnknownScheme(" hf".to_owned())),
            ("hf://", UriError::EmptyRepo),
            ("hf://@main", UriError::EmptyRepo),
            ("hf://a/b@", UriError::EmptyRevision),
            ("hf:///a", UriError::EmptySegment("/a".to_owned())),
            ("hf://a//b", UriError::EmptySegment("a//b".to_owned())),
            ("hf://a/b/", UriError::EmptySegment("a/b/".to_owned())),
            ("hf://Qwen/Qwen 2", UriError::RepoChar(' ')),
            ("hf://a/b?x=1", UriError::RepoChar('?')),
            ("hf://a/b@main ", UriError::RevisionChar(' ')),
            ("hf://a/b@ma\tin", UriError::RevisionChar('\t')),
        ];
        for (s, expected) in cases {
            assert_eq!(uri(s), Err(expected), "{s:?}");
        }
    }

    #[test]
    fn formats_byte_sizes() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (1_048_575, "1.0 MiB"),
            (988_097_824, "942.3 MiB"),
            (15 << 30, "15.0 GiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (n, expected) in cases {
            assert_eq!(human_bytes(n), expected, "{n}");
        }
    }

    #[test]
    fn formats_percentages() {
        assert_eq!(percent(0, 0), "100%");
        assert_eq!(percent(0, 10), "0%");
        assert_eq!(percent(999, 1000), "99%");
        assert_eq!(percent(1000, 1000), "100%");
        assert_eq!(percent(u64::MAX, u64::MAX), "100%");
    }

    #[test]
    fn formats_tables() {
        let rows = [
            [
                "hf".to_owned(),
                "Qwen/Qwen2.5-0.5B".to_owned(),
                "".to_owned(),
            ],
            ["ms".to_owned(), "x".to_owned(), "raw,image".to_owned()],
        ];
        assert_eq!(
            format_table(["HUB", "REPO", "FORMS"], &rows),
            "HUB  REPO               FORMS\n\
             hf   Qwen/Qwen2.5-0.5B\n\
             ms   x                  raw,image\n"
        );
        assert_eq!(format_table(["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn formats_ages() {
        let now = 1_000_000;
        let cases = [
            (0, "-"),
            (now, "0s ago"),
            (now + 5, "0s ago"),
            (now - 59, "59s ago"),
            (now - 60, "1m ago"),
            (now - 3599, "59m ago"),
            (now - 3600, "1h ago"),
            (now - 86_399, "23h ago"),
            (now - 86_400, "1d ago"),
            (now - 10 * 86_400, "10d ago"),
        ];
        for (then, expected) in cases {
            assert_eq!(age(then, now), expected, "{then}");
        }
    }

    pub(super) const NOW: u64 = 1_700_000_000;

    fn cache(json: serde_json::Value) -> CacheView {
        match serde_json::from_value(json) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn formats_the_cache() {
        let c = cache(serde_json::json!({
            "revisions": [{"hub": "hf", "repo": "Org/M", "revision": "main", "tag": "main",
                "commit": "0123456789abcdef", "files": 2, "size": 2048, "cachedBytes": 1024,
                "fromPeers": 256, "forms": ["raw", "image"], "resolvedAt": NOW}],
            "space": {"capacity": 10u64 << 30, "used": 1u64 << 30, "reserved": 0,
                "pinned": 512u64 << 20, "highWatermark": 8_589_934_592u64,
                "lowWatermark": 7u64 << 30},
            "entries": [
                {"kind": "tag", "name": "docker.io/library/alpine:3", "bytes": 3_500_000,
                    "lastAccess": NOW - 7200, "pins": [], "protection": null, "forms": []},
                {"kind": "hub", "name": "hf://org/m:main", "bytes": 1024, "lastAccess": NOW - 30,
                    "pins": ["a", "b"], "protection": "pinned", "forms": ["raw", "image"]},
            ],
        }));
        assert_eq!(
            format_cache(&c, NOW),
            "capacity 10.0 GiB, used 1.0 GiB (10%), pinned 512.0 MiB, reserved 0 B; \
             eviction above 8.0 GiB down to 7.0 GiB\n\
             \n\
             HUB  REPO   REVISION  COMMIT        FILES  SIZE     CACHED  FROM                FORMS\n\
             hf   Org/M  main      0123456789ab  2      2.0 KiB  50%     peers 25%, hub 75%  raw,image\n\
             \n\
             KIND  NAME                        SIZE     ACCESSED  PINNED  FORMS\n\
             tag   docker.io/library/alpine:3  3.3 MiB  2h ago    -       -\n\
             hub   hf://org/m:main             1.0 KiB  30s ago   a,b     raw,image\n"
        );
        // No revisions: no revisions table.
        let c = cache(serde_json::json!({"revisions": [], "entries": [],
            "space": {"capacity": 1024, "used": 0, "reserved": 0, "pinned": 0,
                "highWatermark": 1024, "lowWatermark": 512}}));
        assert_eq!(
            format_cache(&c, NOW),
            "capacity 1.0 KiB, used 0 B (0%), pinned 0 B, reserved 0 B; \
             eviction above 1.0 KiB down to 512 B\n\
             \n\
             KIND  NAME  SIZE  ACCESSED  PINNED  FORMS\n"
        );
    }
}
