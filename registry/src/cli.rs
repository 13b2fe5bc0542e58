//! `manta prefetch`, `ls`, `rm`, `gc`, `pins`, `pin`, `unpin` and `verify`: the command-line
//! client of the agent's admin API (`/manta/v1/…`).
//!
//! Nothing here prints to stdout: results go to the writer given. Progress goes to stderr, as a
//! bar when stderr is a terminal and as a line every few seconds otherwise.

use std::future::Future;
use std::io::{self, IsTerminal, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use manta_hub::{Filter, HubKind};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::space::parse_size;

const POLL_INTERVAL: Duration = Duration::from_millis(250);
const LINE_INTERVAL: Duration = Duration::from_secs(5);
const SCHEMES: &str = "hf://, huggingface://, ms:// or modelscope://";

/// Where the agent listens.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The agent's address: its admin API, and the registry host the printed references name.
    #[arg(long, env = "MANTA_SERVER", default_value = "http://127.0.0.1:5000", value_parser = parse_server)]
    pub server: Url,
}

/// `manta prefetch <hub>://<repo>[@revision]`
#[derive(Debug, Clone, clap::Args)]
pub struct PrefetchArgs {
    /// The model repo, e.g. hf://Qwen/Qwen2.5-0.5B-Instruct@main or ms://qwen/Qwen2.5-0.5B-Instruct
    /// (the revision defaults to the hub's default branch).
    #[arg(value_name = "URI")]
    pub uri: ModelUri,
    #[command(flatten)]
    pub files: FilterArgs,
    /// The OCI form(s) to build (repeatable or comma-separated) [default: raw,image].
    #[arg(long = "form", value_name = "FORM", value_enum, value_delimiter = ',')]
    pub forms: Vec<Form>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Show no progress on stderr.
    #[arg(long)]
    pub no_progress: bool,
    /// Print the final job as JSON instead of the references.
    #[arg(long)]
    pub json: bool,
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
    #[arg(long, value_enum, ignore_case = true, default_value_t = Reclaim::Retain)]
    pub reclaim: Reclaim,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `manta unpin` does with what the pin protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Reclaim {
    Retain,
    Delete,
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

/// An OCI form a repo revision is served as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// One layer per file (`<hub>-raw/<repo>:<revision>`).
    Raw,
    /// A model image (`<hub>/<repo>:<revision>`).
    Image,
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

/// `s` as a URL path, each character a path segment cannot hold as itself percent-encoded (RFC
/// 3986 `pchar`, with `/` kept: the agent's routes take the rest of the path).
fn encode_path(s: &str) -> String {
    const KEEP: &[u8] = b"-._~!$&'()*+,;=:@/";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || KEEP.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a client command failed to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("{method} {url}: cannot reach the Manta agent")]
    Request {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error status; `message` is its OCI error list.
    #[error("{method} {url}: {status}: {message}")]
    Api {
        method: Method,
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{method} {url}: unexpected answer from the agent")]
    Decode {
        method: Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
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
    #[error("verify found {corrupt} corrupt and {missing} missing blob(s)")]
    Damaged { corrupt: usize, missing: usize },
    #[error("cannot write the output")]
    Output(#[source] io::Error),
}

/// `manta prefetch`: start a prefetch job on the agent and follow it until it ends; on success,
/// write the references it made (`<form>  <host:port>/<reference>`, or the job JSON with
/// `--json`) to `out`. When `interrupt` completes first, return [`ClientError::Interrupted`]: the
/// job goes on without us.
pub async fn prefetch(
    args: PrefetchArgs,
    out: &mut dyn Write,
    interrupt: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    let agent = Agent::new(&args.server)?;
    let mut forms = args.forms.clone();
    forms.sort();
    forms.dedup();
    let request = PrefetchRequest {
        hub: args.uri.hub,
        repo: &args.uri.repo,
        revision: args.uri.revision.as_deref(),
        filter: args.files.filter(),
        forms,
    };
    let first: Answer<Job> = agent
        .call(agent.http.post(agent.endpoint("prefetch")).json(&request))
        .await?;
    let id = first.value.id.clone();
    let mut progress = Progress::new(!args.no_progress, args.uri.to_string());
    let followed = tokio::select! {
        r = follow(&agent, first, &mut progress) => r,
        () = interrupt => Err(ClientError::Interrupted {
            url: agent.endpoint(&format!("prefetch/{id}")),
            id,
        }),
    };
    progress.finish(followed.as_ref().ok().map(|a| &a.value));
    let last = followed?;
    if args.json {
        write_json(out, &last.json)?;
    }
    let job = last.value;
    if job.state == JobState::Failed {
        return Err(ClientError::JobFailed {
            uri: args.uri.to_string(),
            message: job.error.unwrap_or_else(|| "no reason given".to_owned()),
        });
    }
    if !args.json {
        let host = registry_host(&args.server.server);
        for (form, reference) in [
            ("raw", &job.references.raw),
            ("image", &job.references.image),
        ] {
            if let Some(reference) = reference {
                writeln!(out, "{form:<5}  {host}/{reference}").map_err(ClientError::Output)?;
            }
        }
    }
    Ok(())
}

/// `manta ls`: write the agent's space use, its cached hub repo revisions (sorted by hub, repo and
/// revision) and every cache entry (least recently used, i.e. next to be evicted, first) to `out`,
/// or the agent's JSON with `--json`.
pub async fn ls(args: LsArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = Agent::new(&args.server)?;
    let answer: Answer<Cache> = agent.call(agent.http.get(agent.endpoint("cache"))).await?;
    emit(out, args.json, &answer, |cache| {
        format_cache(cache, unix_now())
    })
}

/// `manta rm`: remove one root from the cache now, whatever its age; write what was freed.
pub async fn rm(args: RmArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = Agent::new(&args.server)?;
    let reference = args.reference.to_string();
    let url = agent.endpoint(&format!("cache/{}", encode_path(&reference)));
    let answer: Answer<GcReport> =
        agent
            .call(agent.http.delete(url))
            .await
            .map_err(|e| match e {
                ClientError::Api {
                    status, message, ..
                } if status == StatusCode::NOT_FOUND => ClientError::NotCached {
                    reference: reference.clone(),
                    message,
                },
                ClientError::Api {
                    status, message, ..
                } if status == StatusCode::CONFLICT => ClientError::Pinned {
                    reference: reference.clone(),
                    message,
                },
                e => e,
            })?;
    emit(out, args.json, &answer, |r| format_gc(r, unix_now()))
}

/// `manta gc`: evict least recently used content now; write each evicted root and the total.
pub async fn gc(args: GcArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = Agent::new(&args.server)?;
    let request = GcRequest {
        dry_run: args.dry_run,
        free: args.free,
    };
    let answer: Answer<GcReport> = agent
        .call(agent.http.post(agent.endpoint("gc")).json(&request))
        .await?;
    emit(out, args.json, &answer, |r| format_gc(r, unix_now()))
}

/// `manta pins`: write the agent's pins, sorted by name.
pub async fn pins(args: PinsArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = Agent::new(&args.server)?;
    let answer: Answer<PinList> = agent.call(agent.http.get(agent.endpoint("pins"))).await?;
    emit(out, args.json, &answer, |list| {
        format_pins(&list.pins, unix_now())
    })
}

/// `manta pin`: create or replace a pin; write what it protects so far.
pub async fn pin(args: PinArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let body = pin_body(&args.target, &args.files)?;
    let agent = Agent::new(&args.server)?;
    let url = agent.endpoint(&format!("pins/{}", encode_path(&args.name)));
    let answer: Answer<PinView> = agent.call(agent.http.put(url).json(&body)).await?;
    let created = answer.status == StatusCode::CREATED;
    emit(out, args.json, &answer, |p| format_pinned(p, created))
}

/// `manta unpin`: drop a pin; with `--reclaim delete`, write what was freed.
pub async fn unpin(args: UnpinArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = Agent::new(&args.server)?;
    let url = agent.endpoint(&format!("pins/{}", encode_path(&args.name)));
    let request = agent.http.delete(url).query(&[("reclaim", args.reclaim)]);
    let answer: Answer<Unpinned> = agent.call(request).await.map_err(|e| match e {
        ClientError::Api { status, .. } if status == StatusCode::NOT_FOUND => {
            ClientError::NoSuchPin {
                name: args.name.clone(),
            }
        }
        e => e,
    })?;
    emit(out, args.json, &answer, |u| format_unpinned(u, unix_now()))
}

/// `manta verify`: have the agent re-hash every blob (as long as that takes) and write what it
/// found; [`ClientError::Damaged`] when a blob is corrupt or missing.
pub async fn verify(args: VerifyArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = Agent::patient(&args.server)?;
    let spinner = io::stderr().is_terminal().then(|| {
        let s = ProgressBar::new_spinner().with_message("re-hashing every blob in the cache");
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let answer = agent
        .call::<VerifyReport>(agent.http.post(agent.endpoint("verify")))
        .await;
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    let answer = answer?;
    emit(out, args.json, &answer, format_verify)?;
    let report = &answer.value;
    if report.corrupt.is_empty() && report.missing.is_empty() {
        return Ok(());
    }
    Err(ClientError::Damaged {
        corrupt: report.corrupt.len(),
        missing: report.missing.len(),
    })
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

fn pin_body(target: &CacheRef, files: &FilterArgs) -> Result<PinBody, ClientError> {
    match target {
        CacheRef::Hub(uri) => Ok(PinBody::Hub {
            hub: uri.hub,
            repo: uri.repo.clone(),
            revision: uri.revision.clone(),
            filter: files.filter(),
        }),
        CacheRef::Oci(_) if !files.is_all() => Err(ClientError::FilterOnReference {
            target: target.to_string(),
        }),
        CacheRef::Oci(reference) => Ok(PinBody::Reference {
            reference: reference.clone(),
        }),
    }
}

/// Sections a blank line apart: the space line, the hub revisions (always, from an agent that
/// lists no entries), the entries.
fn format_cache(cache: &Cache, now: u64) -> String {
    let mut sections = Vec::new();
    if let Some(space) = &cache.space {
        sections.push(format_space(space));
    }
    if cache.entries.is_none() || !cache.revisions.is_empty() {
        sections.push(format_revisions(&cache.revisions));
    }
    if let Some(entries) = &cache.entries {
        sections.push(format_entries(entries, now));
    }
    sections.join("\n")
}

fn format_space(s: &Space) -> String {
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
    revisions.sort_by(|a, b| (&a.hub, &a.repo, &a.revision).cmp(&(&b.hub, &b.repo, &b.revision)));
    let rows: Vec<[String; 8]> = revisions
        .into_iter()
        .map(|r| {
            [
                r.hub.clone(),
                r.repo.clone(),
                r.revision.clone(),
                r.commit
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |c| c.chars().take(12).collect()),
                r.files.to_string(),
                human_bytes(r.size),
                percent(r.cached_bytes, r.size),
                r.forms.join(","),
            ]
        })
        .collect();
    let header = [
        "HUB", "REPO", "REVISION", "COMMIT", "FILES", "SIZE", "CACHED", "FORMS",
    ];
    format_table(header, &rows)
}

fn format_entries(entries: &[Entry], now: u64) -> String {
    let mut entries: Vec<&Entry> = entries.iter().collect();
    entries.sort_by(|a, b| (a.last_access, &a.name).cmp(&(b.last_access, &b.name)));
    let rows: Vec<[String; 6]> = entries
        .into_iter()
        .map(|e| {
            [
                e.kind.clone(),
                e.name.clone(),
                human_bytes(e.bytes),
                age(e.last_access, now),
                list_or_dash(&e.pins),
                list_or_dash(&e.forms),
            ]
        })
        .collect();
    let header = ["KIND", "NAME", "SIZE", "ACCESSED", "PINNED", "FORMS"];
    format_table(header, &rows)
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
                    e.kind.clone(),
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
                list_or_dash(&p.roots),
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
    if r.corrupt.is_empty() && r.missing.is_empty() {
        text.push_str(": all intact\n");
        return text;
    }
    text.push('\n');
    for (what, digests) in [("corrupt", &r.corrupt), ("missing", &r.missing)] {
        for d in digests {
            text.push_str(&format!("{what}  {d}\n"));
        }
    }
    text
}

/// `hf://Org/Name@main[include=*.json,*.md;exclude=*.bin]`, or the reference.
fn target_text(t: &PinTargetView) -> String {
    if let Some(reference) = &t.reference {
        return reference.clone();
    }
    let mut text = format!(
        "{}://{}",
        t.hub.as_deref().unwrap_or("?"),
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

fn list_or_dash(items: &[String]) -> String {
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

/// Poll the job until it succeeds or fails.
async fn follow(
    agent: &Agent,
    mut answer: Answer<Job>,
    progress: &mut Progress,
) -> Result<Answer<Job>, ClientError> {
    let url = agent.endpoint(&format!("prefetch/{}", answer.value.id));
    loop {
        progress.update(&answer.value);
        if matches!(answer.value.state, JobState::Succeeded | JobState::Failed) {
            return Ok(answer);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        answer = agent.call(agent.http.get(&url)).await?;
    }
}

/// The agent's admin API.
struct Agent {
    http: reqwest::Client,
    base: String,
}

/// A decoded answer, with the JSON it came from (for `--json`).
struct Answer<T> {
    value: T,
    json: serde_json::Value,
    status: StatusCode,
}

impl Agent {
    /// A client whose requests give up after a minute.
    fn new(args: &ServerArgs) -> Result<Self, ClientError> {
        Self::build(args, Some(Duration::from_secs(60)))
    }

    /// A client that waits as long as the agent works on an answer (it still gives up on
    /// connecting after a while).
    fn patient(args: &ServerArgs) -> Result<Self, ClientError> {
        Self::build(args, None)
    }

    fn build(args: &ServerArgs, timeout: Option<Duration>) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let http = builder.build().map_err(ClientError::Client)?;
        let base = args.server.as_str().trim_end_matches('/').to_owned();
        Ok(Agent { http, base })
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/manta/v1/{path}", self.base)
    }

    /// Send the request; decode a success as `T`, and an error status as its OCI error list.
    async fn call<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> Result<Answer<T>, ClientError> {
        let req = req
            .build()
            .map_err(|e| ClientError::Client(e.without_url()))?;
        let (method, url) = (req.method().clone(), req.url().to_string());
        let failed = |source: reqwest::Error| ClientError::Request {
            method: method.clone(),
            url: url.clone(),
            source: source.without_url(),
        };
        let resp = self.http.execute(req).await.map_err(&failed)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(&failed)?;
        if !status.is_success() {
            let message = oci_errors(&body);
            return Err(ClientError::Api {
                method,
                url,
                status,
                message,
            });
        }
        let decoded = serde_json::from_slice::<serde_json::Value>(&body).and_then(|json| {
            Ok(Answer {
                value: T::deserialize(&json)?,
                json,
                status,
            })
        });
        decoded.map_err(|source| ClientError::Decode {
            method,
            url,
            source,
        })
    }
}

/// The message of an OCI error body (`{"errors":[{"code","message"}]}`), else the body's text.
fn oci_errors(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) if !b.errors.is_empty() => b
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "no error body".to_owned()
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

fn write_json(out: &mut dyn Write, json: &serde_json::Value) -> Result<(), ClientError> {
    serde_json::to_writer_pretty(&mut *out, json)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(out))
        .map_err(ClientError::Output)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PrefetchRequest<'a> {
    hub: HubKind,
    repo: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<&'a str>,
    #[serde(flatten)]
    filter: Filter,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    forms: Vec<Form>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Job {
    id: String,
    state: JobState,
    #[serde(default)]
    bytes_done: u64,
    bytes_total: Option<u64>,
    #[serde(default)]
    files: Vec<JobFile>,
    #[serde(default)]
    references: References,
    error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Deserialize)]
struct JobFile {
    path: String,
    state: String,
}

#[derive(Debug, Default, Deserialize)]
struct References {
    raw: Option<String>,
    image: Option<String>,
}

#[derive(Deserialize)]
struct Cache {
    revisions: Vec<CachedRevision>,
    /// Absent from an agent that predates cache lifecycle.
    space: Option<Space>,
    entries: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Space {
    capacity: u64,
    used: u64,
    reserved: u64,
    pinned: u64,
    high_watermark: u64,
    low_watermark: u64,
}

/// One eviction root.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    kind: String,
    name: String,
    bytes: u64,
    last_access: u64,
    #[serde(default)]
    pins: Vec<String>,
    #[serde(default)]
    forms: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GcRequest {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    free: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GcReport {
    dry_run: bool,
    freed_bytes: u64,
    blobs_deleted: u64,
    manifests_deleted: u64,
    evicted: Vec<Evicted>,
    #[serde(default)]
    refused_pinned: Vec<String>,
    kept_in_use: u64,
    protected_pinned: u64,
    protected_in_use: u64,
    protected_young: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Evicted {
    kind: String,
    name: String,
    bytes: u64,
    last_access: u64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PinBody {
    Hub {
        hub: HubKind,
        repo: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        revision: Option<String>,
        #[serde(flatten)]
        filter: Filter,
    },
    Reference {
        reference: String,
    },
}

#[derive(Deserialize)]
struct PinList {
    pins: Vec<PinView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PinView {
    name: String,
    target: PinTargetView,
    created_at: u64,
    roots: Vec<String>,
    bytes: u64,
}

#[derive(Deserialize)]
struct PinTargetView {
    hub: Option<String>,
    repo: Option<String>,
    revision: Option<String>,
    reference: Option<String>,
    #[serde(flatten)]
    filter: Filter,
}

#[derive(Deserialize)]
struct Unpinned {
    name: String,
    gc: Option<GcReport>,
}

#[derive(Deserialize)]
struct VerifyReport {
    checked: u64,
    bytes: u64,
    corrupt: Vec<String>,
    missing: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedRevision {
    hub: String,
    repo: String,
    revision: String,
    commit: Option<String>,
    files: u64,
    size: u64,
    cached_bytes: u64,
    #[serde(default)]
    forms: Vec<String>,
}

/// How a job's progress is shown on stderr.
enum Progress {
    Off,
    Bar(ProgressBar),
    Lines {
        label: String,
        next: Instant,
        since: (Instant, u64),
    },
}

impl Progress {
    fn new(enabled: bool, label: String) -> Self {
        if !enabled {
            Progress::Off
        } else if io::stderr().is_terminal() {
            let bar = ProgressBar::no_length().with_style(bar_style(false));
            bar.enable_steady_tick(Duration::from_millis(100));
            Progress::Bar(bar)
        } else {
            let now = Instant::now();
            Progress::Lines {
                label,
                next: now,
                since: (now, 0),
            }
        }
    }

    fn update(&mut self, job: &Job) {
        let file = job
            .files
            .iter()
            .find(|f| f.state == "running")
            .map(|f| f.path.as_str());
        match self {
            Progress::Off => {}
            Progress::Bar(bar) => {
                if let Some(total) = job.bytes_total.filter(|&t| bar.length() != Some(t)) {
                    bar.set_length(total);
                    bar.set_style(bar_style(true));
                }
                bar.set_position(job.bytes_done);
                bar.set_message(file.unwrap_or_default().to_owned());
            }
            Progress::Lines { label, next, since } => {
                let now = Instant::now();
                if now < *next {
                    return;
                }
                let secs = now.duration_since(since.0).as_secs_f64();
                let rate = job.bytes_done.saturating_sub(since.1) as f64 / secs.max(0.001);
                let total = job.bytes_total.map_or_else(|| "?".to_owned(), human_bytes);
                let mut line = format!(
                    "{label}: {} of {total}, {}/s",
                    human_bytes(job.bytes_done),
                    human_bytes(rate as u64)
                );
                if let Some(file) = file {
                    line.push_str(", ");
                    line.push_str(file);
                }
                let _ = writeln!(io::stderr(), "{line}");
                *next = now + LINE_INTERVAL;
                *since = (now, job.bytes_done);
            }
        }
    }

    /// Leave the bar drawn (full on success), or log how a followed job ended.
    fn finish(self, ended: Option<&Job>) {
        match (self, ended) {
            (Progress::Bar(bar), Some(job)) if job.state == JobState::Succeeded => bar.finish(),
            (Progress::Bar(bar), _) => bar.abandon(),
            (Progress::Lines { label, .. }, Some(job)) => {
                let state = match job.state {
                    JobState::Succeeded => "succeeded",
                    _ => "failed",
                };
                let _ = writeln!(
                    io::stderr(),
                    "{label}: {state}, {}",
                    human_bytes(job.bytes_done)
                );
            }
            _ => {}
        }
    }
}

fn bar_style(known_total: bool) -> ProgressStyle {
    let template = if known_total {
        "{spinner} [{elapsed_precise}] {bar:30} {binary_bytes}/{binary_total_bytes} \
         {binary_bytes_per_sec} ETA {eta} {wide_msg}"
    } else {
        "{spinner} [{elapsed_precise}] {binary_bytes} {binary_bytes_per_sec} {wide_msg}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
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

/// The agent's `host[:port]` as a registry host in image references.
fn registry_host(server: &Url) -> String {
    let host = server.host_str().unwrap_or_default();
    match (server.scheme(), server.port_or_known_default()) {
        ("https", Some(443)) | (_, None) => host.to_owned(),
        (_, Some(port)) => format!("{host}:{port}"),
    }
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
    fn registry_host_is_host_and_port() {
        let host = |s: &str| parse_server(s).map(|u| registry_host(&u));
        assert_eq!(
            host("http://127.0.0.1:5000"),
            Ok("127.0.0.1:5000".to_owned())
        );
        assert_eq!(host("127.0.0.1:5000/"), Ok("127.0.0.1:5000".to_owned()));
        assert_eq!(host("http://node-1"), Ok("node-1:80".to_owned()));
        assert_eq!(
            host("https://manta.example"),
            Ok("manta.example".to_owned())
        );
        assert_eq!(host("http://[::1]:5000"), Ok("[::1]:5000".to_owned()));
        assert!(host("ftp://x").is_err());
    }

    #[test]
    fn oci_error_bodies_become_messages() {
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN","message":"no such repo","detail":null},{"code":"DENIED","message":"gated"}]}"#;
        assert_eq!(
            oci_errors(body),
            "NAME_UNKNOWN: no such repo; DENIED: gated"
        );
        assert_eq!(oci_errors(b" bad gateway\n"), "bad gateway");
        assert_eq!(oci_errors(b""), "no error body");
    }
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

    const NOW: u64 = 1_700_000_000;

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

    fn cache(json: serde_json::Value) -> Cache {
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
                "forms": ["raw", "image"]}],
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
             HUB  REPO   REVISION  COMMIT        FILES  SIZE     CACHED  FORMS\n\
             hf   Org/M  main      0123456789ab  2      2.0 KiB  50%     raw,image\n\
             \n\
             KIND  NAME                        SIZE     ACCESSED  PINNED  FORMS\n\
             tag   docker.io/library/alpine:3  3.3 MiB  2h ago    -       -\n\
             hub   hf://org/m:main             1.0 KiB  30s ago   a,b     raw,image\n"
        );
        // No revisions: no revisions table.
        let c = cache(serde_json::json!({"revisions": [], "entries": []}));
        assert_eq!(
            format_cache(&c, NOW),
            "KIND  NAME  SIZE  ACCESSED  PINNED  FORMS\n"
        );
        // An agent without entries: the revisions table alone, even empty.
        let c = cache(serde_json::json!({"revisions": []}));
        assert_eq!(
            format_cache(&c, NOW),
            "HUB  REPO  REVISION  COMMIT  FILES  SIZE  CACHED  FORMS\n"
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
            gc: None,
        };
        assert_eq!(
            format_unpinned(&retained, NOW),
            "pin a removed\nits content stays in the cache until evicted\n"
        );
        let deleted = Unpinned {
            name: "a".to_owned(),
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
            Ok(TestCommand::Pin(a)) => pin_body(&a.target, &a.files)
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
    fn unpin_sends_the_reclaim_policy() {
        let url = |args: &[&str]| match parse(args) {
            Ok(TestCommand::Unpin(a)) => reqwest::Client::new()
                .delete("http://h:1/manta/v1/pins/p")
                .query(&[("reclaim", a.reclaim)])
                .build()
                .map(|r| r.url().query().unwrap_or_default().to_owned())
                .map_err(|e| e.to_string()),
            Ok(_) => Err("not unpin".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(url(&["unpin", "p"]), Ok("reclaim=Retain".to_owned()));
        assert_eq!(
            url(&["unpin", "p", "--reclaim", "Delete"]),
            Ok("reclaim=Delete".to_owned())
        );
        assert_eq!(
            url(&["unpin", "p", "--reclaim", "delete"]),
            Ok("reclaim=Delete".to_owned())
        );
        assert!(url(&["unpin", "p", "--reclaim", "purge"]).is_err());
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
