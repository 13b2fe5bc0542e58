//! `manta prefetch`: start a prefetch job on the agent and follow it, with progress on stderr.

use std::future::Future;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::builder::PossibleValue;
use indicatif::{ProgressBar, ProgressStyle};
use manta_api::{Answer, Client, FileState, Job, JobState, PrefetchRequest};
use reqwest::Url;

use super::{
    client, human_bytes, write_json, ClientError, FilterArgs, ModelUri, ServerArgs, TIMEOUT,
};

const POLL_INTERVAL: Duration = Duration::from_millis(250);
const LINE_INTERVAL: Duration = Duration::from_secs(5);

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

/// `--form`: an OCI form a repo revision is served as ([`manta_api::Form`] on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Form(pub manta_api::Form);

impl clap::ValueEnum for Form {
    fn value_variants<'a>() -> &'a [Self] {
        &[Form(manta_api::Form::Raw), Form(manta_api::Form::Image)]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self.0 {
            manta_api::Form::Raw => "One layer per file (`<hub>-raw/<repo>:<revision>`)",
            manta_api::Form::Image => "A model image (`<hub>/<repo>:<revision>`)",
        };
        Some(PossibleValue::new(self.0.as_str()).help(help))
    }
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
    let agent = client(&args.server, Some(TIMEOUT))?;
    let mut forms: Vec<manta_api::Form> = args.forms.iter().map(|f| f.0).collect();
    forms.sort();
    forms.dedup();
    let request = PrefetchRequest {
        hub: args.uri.hub,
        repo: args.uri.repo.clone(),
        revision: args.uri.revision.clone(),
        filter: args.files.filter(),
        forms,
    };
    let first = agent.prefetch(&request).await?;
    let id = first.value.id.clone();
    let mut progress = Progress::new(!args.no_progress, args.uri.to_string());
    let followed = tokio::select! {
        r = follow(&agent, first, &mut progress) => r,
        () = interrupt => Err(ClientError::Interrupted {
            url: agent.endpoint(&format!("prefetch/{}", manta_api::encode_path(&id))),
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
        for (form, reference) in &job.references {
            let form = form.as_str();
            writeln!(out, "{form:<5}  {host}/{reference}").map_err(ClientError::Output)?;
        }
    }
    Ok(())
}

/// Poll the job until it succeeds or fails.
async fn follow(
    agent: &Client,
    mut answer: Answer<Job>,
    progress: &mut Progress,
) -> Result<Answer<Job>, ClientError> {
    let id = answer.value.id.clone();
    loop {
        progress.update(&answer.value);
        if answer.value.state.is_ended() {
            return Ok(answer);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        answer = agent.job(&id).await?;
    }
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
            .find(|f| f.state == FileState::Running)
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

/// The agent's `host[:port]` as a registry host in image references.
fn registry_host(server: &Url) -> String {
    let host = server.host_str().unwrap_or_default();
    match (server.scheme(), server.port_or_known_default()) {
        ("https", Some(443)) | (_, None) => host.to_owned(),
        (_, Some(port)) => format!("{host}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::parse_server;

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
}
