//! `manta prefetch` and `manta ls`: the command-line client of the agent's admin API
//! (`/manta/v1/prefetch`, `/manta/v1/cache`).
//!
//! Nothing here prints to stdout: results go to the writer given. Progress goes to stderr, as a
//! bar when stderr is a terminal and as a line every few seconds otherwise.

use std::future::Future;
use std::io::{self, IsTerminal, Write};
use std::str::FromStr;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use manta_hub::HubKind;
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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
    /// Fetch only the files matching this glob (repeatable).
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Skip the files matching this glob (repeatable).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Fetch this one file of the repo.
    #[arg(long = "file", value_name = "PATH")]
    pub file: Option<String>,
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

/// `manta ls`
#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Print the agent's answer as JSON instead of a table.
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
        filename: args.file.as_deref(),
        allow_patterns: &args.include,
        ignore_patterns: &args.exclude,
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

/// `manta ls`: write the agent's cached repo revisions to `out`, as a table sorted by hub, repo
/// and revision (or the agent's JSON with `--json`).
pub async fn ls(args: LsArgs, out: &mut dyn Write) -> Result<(), ClientError> {
    let agent = Agent::new(&args.server)?;
    let answer: Answer<Cache> = agent.call(agent.http.get(agent.endpoint("cache"))).await?;
    if args.json {
        return write_json(out, &answer.json);
    }
    let mut revisions = answer.value.revisions;
    revisions.sort_by(|a, b| (&a.hub, &a.repo, &a.revision).cmp(&(&b.hub, &b.repo, &b.revision)));
    let rows: Vec<[String; 8]> = revisions
        .into_iter()
        .map(|r| {
            [
                r.hub,
                r.repo,
                r.revision,
                r.commit
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
    out.write_all(format_table(header, &rows).as_bytes())
        .map_err(ClientError::Output)
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
}

impl Agent {
    fn new(args: &ServerArgs) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(ClientError::Client)?;
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
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    allow_patterns: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    ignore_patterns: &'a [String],
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
}
