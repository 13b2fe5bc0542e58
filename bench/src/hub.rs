//! `manta-bench hub`: Manta in front of a rate-limited local Hugging Face Hub (the fixture of
//! `manta-conformance`, serving one synthetic safetensors file from LFS through its CDN host).
//! Every figure is a ratio against a peer run side by side: cold `hf-raw` pulls against direct
//! downloads from the fixture, warm pulls against cold ones, concurrent cold pulls against the
//! bytes of one file, an image-form prefetch against a direct download. See bench/README.md.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use manta_conformance::hub_fixture::{
    synthetic_safetensors_with_sha256, FixtureFile, FixtureHost, FixtureOptions, FixtureRepo,
    HubFixture,
};
use reqwest::{StatusCode, Url};

use crate::rawget::{self, Timed};
use crate::rss::{self, RssSampler};
use crate::servers::{self, Server};

mod report;

/// The fixture's repository (lowercase, so its OCI name is the same) and its one file.
pub(crate) const REPO: &str = "manta-bench/synthetic-model";
pub(crate) const FILE: &str = "model.safetensors";
pub(crate) const REVISION: &str = "main";
/// How often a prefetch job, or what the cache holds, is polled.
const POLL: Duration = Duration::from_millis(20);
/// How long a pulled blob may take to be fsynced and indexed.
const CACHE_DEADLINE: Duration = Duration::from_secs(120);
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.oci.image.index.v1+json";

/// Hub benchmark: `hf-raw` and `hf` pulls through Manta against direct downloads from a
/// rate-limited local Hugging Face Hub fixture.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the synthetic safetensors file, in MiB.
    #[arg(long, default_value_t = 4096)]
    pub size_mib: u64,
    /// The fixture's cap on all file bodies together (main host and CDN, every connection),
    /// MB/s (10^6 bytes/s).
    #[arg(long, default_value_t = 200.0)]
    pub rate_mbps: f64,
    /// Runs of the direct download, the cold + warm pull and the prefetch (interleaved);
    /// medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Concurrent cold pulls of the file on one fresh agent.
    #[arg(long, default_value_t = 16)]
    pub concurrent_pulls: usize,
    /// Directory for the synthetic file and every agent's data (a `manta-bench-hub-*`
    /// directory in it, removed at the end).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Where to write the markdown report (it is also printed on stdout).
    #[arg(long, default_value = "bench/hub.md")]
    out: PathBuf,
    #[command(flatten)]
    pub manta: servers::MantaBinArgs,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
}

fn step(msg: &str) {
    eprintln!("manta-bench hub: {msg}");
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One pull of the file (directly, or through Manta's `hf-raw` form), in seconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pull {
    /// From the first request (the resolve, or the manifest GET) to the last byte of the file.
    pub total: f64,
    /// From the first request to the file's first body byte.
    pub ttfb: f64,
    /// The blob GET alone (for a direct download, the same as `total` and `ttfb`).
    pub blob_total: f64,
    pub blob_ttfb: f64,
    /// The blob GET to the end of its response head (a direct download's first byte comes with
    /// it; Manta answers the head once the hub's head is in, then streams what it has cached).
    pub blob_head: f64,
    /// The manifest GET before the blob GET (0 for a direct download).
    pub manifest: f64,
}

impl Pull {
    fn direct(t: &Timed) -> Self {
        Self {
            total: secs(t.elapsed),
            ttfb: secs(t.first_byte),
            blob_total: secs(t.elapsed),
            blob_ttfb: secs(t.first_byte),
            blob_head: secs(t.head),
            manifest: 0.0,
        }
    }
}

/// What a phase cost: the fixture's body bytes and requests, and CPU seconds of the agent and
/// of this process (client and fixture together).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Cost {
    pub served: u64,
    pub requests: usize,
    pub agent_cpu: f64,
    pub bench_cpu: f64,
}

/// Counters read before a phase, turned into its [`Cost`] after it.
struct Meter {
    served: u64,
    requests: usize,
    agent: Option<(u32, f64)>,
    bench: f64,
}

impl Meter {
    fn start(hub: &HubFixture, agent: Option<u32>) -> Self {
        Self {
            served: hub.bytes_served(),
            requests: hub.requests().len(),
            agent: agent.map(|pid| (pid, rss::cpu_seconds(pid).unwrap_or(0.0))),
            bench: rss::cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }

    fn stop(&self, hub: &HubFixture) -> Cost {
        Cost {
            served: hub.bytes_served() - self.served,
            requests: hub.requests().len() - self.requests,
            agent_cpu: self.agent.map_or(0.0, |(pid, before)| {
                rss::cpu_seconds(pid).unwrap_or(before) - before
            }),
            bench_cpu: rss::cpu_seconds(std::process::id()).unwrap_or(0.0) - self.bench,
        }
    }
}

/// A fresh `manta serve` on the fixture, with its own data directory (removed on drop, after
/// the process is killed) and an RSS sampler.
struct Agent {
    server: Server,
    sampler: RssSampler,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.server.pid()
    }

    fn peak_mib(&self) -> f64 {
        self.sampler.run_peak(self.pid()).unwrap_or(0) as f64 / crate::MIB
    }

    /// `err` with whether the agent is alive and its log's tail.
    fn explain(&mut self, err: anyhow::Error) -> anyhow::Error {
        let alive = self.server.check_alive().err();
        let alive = alive.map_or(String::new(), |e| format!("\n{e:#}"));
        err.context(format!(
            "{alive}\nmanta log tail:\n{}",
            self.server.log_tail()
        ))
    }
}

/// The file the fixture serves.
#[derive(Clone, Debug)]
pub(crate) struct Model {
    pub size: u64,
    pub digest: String,
}

/// `GET url`: a 2xx and its JSON.
async fn get_json(client: &reqwest::Client, url: &Url) -> anyhow::Result<serde_json::Value> {
    let resp = client.get(url.clone()).send().await?.error_for_status()?;
    resp.json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))
}

/// A manifest of `repo` by tag `main`: 200, and its JSON.
async fn manifest(
    client: &reqwest::Client,
    base: &Url,
    repo: &str,
) -> anyhow::Result<serde_json::Value> {
    let url = base.join(&format!("/v2/{repo}/manifests/{REVISION}"))?;
    let resp = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, ACCEPT)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await.with_context(|| format!("GET {url}"))?;
    ensure!(
        status == StatusCode::OK,
        "GET {url}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: not JSON"))
}

/// What a client of the raw form does: the manifest by tag (which must list the file as a
/// layer), then the file's blob on a new connection, counted like a direct download.
async fn pull(client: &reqwest::Client, base: &Url, model: &Model) -> anyhow::Result<Pull> {
    let t0 = Instant::now();
    let repo = format!("hf-raw/{REPO}");
    let m = manifest(client, base, &repo).await?;
    let listed = m["layers"].as_array().is_some_and(|ls| {
        ls.iter().any(|l| {
            l["digest"].as_str() == Some(&model.digest) && l["size"].as_u64() == Some(model.size)
        })
    });
    ensure!(
        listed,
        "the raw manifest does not list {} ({} bytes): {m}",
        model.digest,
        model.size
    );
    let url = base.join(&format!("/v2/{repo}/blobs/{}", model.digest))?;
    let size = model.size;
    let t = tokio::task::spawn_blocking(move || rawget::get_timed(&url, size))
        .await
        .context("a reader thread panicked")??;
    let before = secs(t.started.saturating_duration_since(t0));
    Ok(Pull {
        total: before + secs(t.elapsed),
        ttfb: before + secs(t.first_byte),
        blob_total: secs(t.elapsed),
        blob_ttfb: secs(t.first_byte),
        blob_head: secs(t.head),
        manifest: before,
    })
}

struct Ctx {
    bin: PathBuf,
    work: PathBuf,
    hub: HubFixture,
    client: reqwest::Client,
    model: Model,
    agents: usize,
}

impl Ctx {
    async fn start_agent(&mut self) -> anyhow::Result<Agent> {
        self.agents += 1;
        let dir = tempfile::Builder::new()
            .prefix(&format!("agent-{}-", self.agents))
            .tempdir_in(&self.work)?;
        let log = self.work.join(format!("agent-{}.log", self.agents));
        let endpoint = self.hub.url();
        let mut server = servers::start_manta_with_args(
            &self.bin,
            dir.path(),
            &log,
            &["--hf-endpoint".as_ref(), endpoint.as_ref()],
        )?;
        servers::wait_ready(&mut server, &self.client).await?;
        let sampler = RssSampler::start(vec![server.pid()])?;
        Ok(Agent {
            server,
            sampler,
            _dir: dir,
        })
    }

    fn direct_url(hub: &HubFixture) -> anyhow::Result<Url> {
        Ok(Url::parse(&format!(
            "{}/{REPO}/resolve/{REVISION}/{FILE}",
            hub.url()
        ))?)
    }

    /// The file straight from `hub`: resolve (302), then the CDN, as `curl -L` does.
    async fn direct(&self, hub: &HubFixture) -> anyhow::Result<Timed> {
        let url = Self::direct_url(hub)?;
        let size = self.model.size;
        tokio::task::spawn_blocking(move || rawget::get_timed(&url, size))
            .await
            .context("a reader thread panicked")?
    }

    /// One pull through `agent`, with its cost and the agent's peak RSS (MiB) during it.
    async fn measured_pull(
        &self,
        agent: &mut Agent,
        name: &str,
    ) -> anyhow::Result<(Pull, Cost, f64)> {
        agent.sampler.begin_phase();
        let m = Meter::start(&self.hub, Some(agent.pid()));
        let base = agent.server.base.clone();
        let p = match pull(&self.client, &base, &self.model).await {
            Ok(p) => p,
            Err(e) => return Err(agent.explain(e.context(name.to_owned()))),
        };
        let c = m.stop(&self.hub);
        let rss = agent.sampler.phase_peak(agent.pid()).unwrap_or(0) as f64 / crate::MIB;
        log_pull(name, &p, &c, self.model.size);
        Ok((p, c, rss))
    }

    /// Polls `GET /manta/v1/cache` until the agent holds every byte of the file (fsynced and
    /// indexed); seconds waited.
    async fn wait_cached(&self, agent: &mut Agent) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let url = agent.server.base.join("/manta/v1/cache")?;
        loop {
            let v = get_json(&self.client, &url).await?;
            let held = v["revisions"].as_array().is_some_and(|revs| {
                revs.iter()
                    .any(|r| r["cachedBytes"].as_u64() == Some(self.model.size))
            });
            if held {
                return Ok(secs(t0.elapsed()));
            }
            ensure!(
                t0.elapsed() < CACHE_DEADLINE,
                "the blob was not in the cache {CACHE_DEADLINE:?} after the pull: {v}"
            );
            agent.server.check_alive()?;
            tokio::time::sleep(POLL).await;
        }
    }

    /// The held blob, hashed by the client: proves the agent serves the file's bytes (not timed).
    async fn verify(&self, base: &Url) -> anyhow::Result<()> {
        let url = base.join(&format!("/v2/hf-raw/{REPO}/blobs/{}", self.model.digest))?;
        let (size, digest) = (self.model.size, self.model.digest.clone());
        tokio::task::spawn_blocking(move || rawget::get_verify(&url, size, &digest))
            .await
            .context("a reader thread panicked")??;
        Ok(())
    }

    /// `n` pulls at once; the wall time from the start to the end of the slowest.
    async fn pull_concurrently(&self, base: &Url, n: usize) -> anyhow::Result<f64> {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (client, base, model) = (self.client.clone(), base.clone(), self.model.clone());
            tasks.spawn(async move { pull(&client, &base, &model).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.context("a pull panicked")??;
        }
        Ok(secs(start.elapsed()))
    }

    /// `POST /manta/v1/prefetch` of the image form, the job polled until it succeeds, then the
    /// `hf/…` manifest: seconds from the POST to the manifest's last byte.
    async fn prefetch_image(&self, agent: &mut Agent) -> anyhow::Result<Prefetched> {
        let base = agent.server.base.clone();
        let t0 = Instant::now();
        let url = base.join("/manta/v1/prefetch")?;
        let resp = self
            .client
            .post(url.clone())
            .json(&serde_json::json!({
                "hub": "hf",
                "repo": REPO,
                "revision": REVISION,
                "forms": ["image"],
            }))
            .send()
            .await?;
        let status = resp.status();
        let job: serde_json::Value = resp.json().await?;
        ensure!(
            status == StatusCode::ACCEPTED,
            "POST {url}: {status}: {job}"
        );
        let id = job["id"].as_str().context("prefetch job without id")?;
        let job_url = base.join(&format!("/manta/v1/prefetch/{id}"))?;
        let mut downloaded = None;
        let succeeded = loop {
            let job = get_json(&self.client, &job_url).await?;
            if downloaded.is_none()
                && job["bytesTotal"].as_u64() == Some(self.model.size)
                && job["bytesDone"].as_u64() == Some(self.model.size)
            {
                downloaded = Some(secs(t0.elapsed()));
            }
            match job["state"].as_str() {
                Some("succeeded") => break secs(t0.elapsed()),
                Some("failed") => bail!("prefetch job failed: {job}"),
                _ => {}
            }
            agent.server.check_alive()?;
            tokio::time::sleep(POLL).await;
        };
        let m = manifest(&self.client, &base, &format!("hf/{REPO}")).await?;
        let total = secs(t0.elapsed());
        ensure!(
            m["layers"].as_array().is_some_and(|l| !l.is_empty()),
            "image manifest without layers: {m}"
        );
        Ok(Prefetched {
            total,
            downloaded: downloaded.unwrap_or(succeeded),
            succeeded,
        })
    }
}

/// A prefetch of the image form, seconds from the POST: to the first poll that saw every byte
/// of the file (downloaded and verified), to the first that saw the job succeeded, and to the
/// image manifest's last byte.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefetched {
    pub downloaded: f64,
    pub succeeded: f64,
    pub total: f64,
}

/// Everything measured, in the order it ran.
#[derive(Default)]
pub(crate) struct Results {
    pub direct: Vec<(Pull, Cost)>,
    pub unlimited: Vec<Pull>,
    pub cold: Vec<(Pull, Cost)>,
    pub warm: Vec<(Pull, Cost)>,
    /// Seconds from a cold pull's last byte to the blob being in the cache (fsynced, indexed).
    pub settled: Vec<f64>,
    pub prefetch: Vec<(Prefetched, Cost)>,
    /// Wall time, cost, and the fixture's content GETs of the file.
    pub concurrent: Option<(f64, Cost, u64)>,
    /// Agent peak RSS (MiB) per phase: cold pulls, warm pulls, prefetches, concurrent pulls.
    pub rss_cold: f64,
    pub rss_warm: f64,
    pub rss_prefetch: f64,
    pub rss_concurrent: f64,
    pub load_before: String,
    pub load_after: String,
}

fn log_pull(name: &str, p: &Pull, c: &Cost, size: u64) {
    step(&format!(
        "{name}: {:.2} s ({:.0} MB/s), first byte {:.1} ms; manifest GET {:.1} ms; blob GET \
         {:.2} s, response head {:.1} ms, first byte {:.1} ms; fixture sent {:.4}× the file in \
         {} requests; CPU agent {:.1} s, bench {:.1} s",
        p.total,
        size as f64 / 1e6 / p.total,
        p.ttfb * 1e3,
        p.manifest * 1e3,
        p.blob_total,
        p.blob_head * 1e3,
        p.blob_ttfb * 1e3,
        c.served as f64 / size as f64,
        c.requests,
        c.agent_cpu,
        c.bench_cpu,
    ));
}

/// The fixture's requests from the `from`th on, one line each.
fn requests_since(hub: &HubFixture, from: usize) -> String {
    hub.requests()
        .iter()
        .skip(from)
        .map(|r| {
            let host = match r.host {
                FixtureHost::Main => "hub",
                FixtureHost::Cdn => "cdn",
            };
            let q = r.query.as_deref().map_or("", |_| "?…");
            format!("  {} {host} {}{q} → {}", r.method, r.path, r.status)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.size_mib > 0, "--size-mib must be positive");
    ensure!(args.rate_mbps > 0.0, "--rate-mbps must be positive");
    ensure!(
        args.runs > 0 && args.concurrent_pulls > 0,
        "--runs and --concurrent-pulls must be positive"
    );
    let bin = args.manta.resolve()?;
    let tmp = tempfile::Builder::new()
        .prefix("manta-bench-hub-")
        .tempdir_in(&args.work_dir)
        .with_context(|| format!("temp dir in {}", args.work_dir.display()))?;
    let work = tmp.path().to_path_buf();
    step(&format!("work dir {}", work.display()));
    let mut results = Results {
        load_before: crate::report::loadavg(),
        ..Results::default()
    };

    step(&format!(
        "writing a {} MiB synthetic safetensors file",
        args.size_mib
    ));
    let (path, sha) = {
        let dir = work.join("model");
        let size = args.size_mib * 1024 * 1024;
        tokio::task::spawn_blocking(move || synthetic_safetensors_with_sha256(&dir, size))
            .await
            .context("the file generator panicked")??
    };
    let size = std::fs::metadata(&path)?.len();
    let repo = |p: &Path| {
        FixtureRepo::with_main(
            REPO,
            vec![FixtureFile::disk(FILE, p).lfs().with_sha256(&sha)],
        )
    };
    let rate = (args.rate_mbps * 1e6) as u64;
    let hub = HubFixture::start(
        vec![repo(&path)],
        FixtureOptions {
            rate_limit: Some(rate),
            ..FixtureOptions::default()
        },
    )?;
    // The same file without the cap: what client + loopback + disk manage (the warm ceiling).
    let unlimited = HubFixture::start(vec![repo(&path)], FixtureOptions::default())?;
    step(&format!(
        "fixture at {} (CDN {}), {} MB/s; unlimited twin at {}",
        hub.url(),
        hub.cdn_url(),
        args.rate_mbps,
        unlimited.url()
    ));
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let mut ctx = Ctx {
        bin: bin.clone(),
        work: work.clone(),
        hub,
        client,
        model: Model {
            size,
            digest: format!("sha256:{sha}"),
        },
        agents: 0,
    };

    // Interleaved runs, so that noise from the shared machine spreads over every figure.
    for run in 1..=args.runs {
        let m = Meter::start(&ctx.hub, None);
        let d = Pull::direct(&ctx.direct(&ctx.hub).await?);
        let c = m.stop(&ctx.hub);
        log_pull(&format!("run {run}: direct download"), &d, &c, size);
        results.direct.push((d, c));

        let u = Pull::direct(&ctx.direct(&unlimited).await?);
        step(&format!(
            "run {run}: unlimited direct download: {:.2} s ({:.0} MB/s)",
            u.total,
            size as f64 / 1e6 / u.total
        ));
        results.unlimited.push(u);

        let mut agent = ctx.start_agent().await?;
        let base = agent.server.base.clone();
        let name = format!("run {run}: cold pull");
        let (p, c, rss) = ctx.measured_pull(&mut agent, &name).await?;
        if run == 1 {
            step(&format!(
                "the agent's requests to the fixture:\n{}",
                requests_since(&ctx.hub, ctx.hub.requests().len() - c.requests)
            ));
        }
        results.cold.push((p, c));
        results.rss_cold = results.rss_cold.max(rss);
        // The last byte goes out once the file is verified; the cache holds it once it is also
        // fsynced and indexed. The warm pull is of the held blob.
        let settled = match ctx.wait_cached(&mut agent).await {
            Ok(t) => t,
            Err(e) => return Err(agent.explain(e)),
        };
        step(&format!(
            "run {run}: the blob was in the cache {settled:.2} s after the cold pull's last byte"
        ));
        results.settled.push(settled);
        let name = format!("run {run}: warm pull");
        let (p, c, rss) = ctx.measured_pull(&mut agent, &name).await?;
        results.warm.push((p, c));
        results.rss_warm = results.rss_warm.max(rss);
        if run == 1 {
            step("verifying the cached blob's sha256 (not timed)");
            if let Err(e) = ctx.verify(&base).await {
                return Err(agent.explain(e));
            }
        }
        drop(agent);

        let mut agent = ctx.start_agent().await?;
        let m = Meter::start(&ctx.hub, Some(agent.pid()));
        let p = match ctx.prefetch_image(&mut agent).await {
            Ok(p) => p,
            Err(e) => return Err(agent.explain(e.context("image prefetch"))),
        };
        let c = m.stop(&ctx.hub);
        results.rss_prefetch = results.rss_prefetch.max(agent.peak_mib());
        step(&format!(
            "run {run}: image form ready after a cold prefetch: {:.2} s (file downloaded at \
             {:.2} s, job succeeded at {:.2} s); fixture sent {:.4}× the file; CPU agent {:.1} \
             s, bench {:.1} s",
            p.total,
            p.downloaded,
            p.succeeded,
            c.served as f64 / size as f64,
            c.agent_cpu,
            c.bench_cpu
        ));
        results.prefetch.push((p, c));
        // Not timed: let the blob become durable before the agent is killed.
        if let Err(e) = ctx.wait_cached(&mut agent).await {
            return Err(agent.explain(e));
        }
        drop(agent);
    }

    let n = args.concurrent_pulls;
    let mut agent = ctx.start_agent().await?;
    let base = agent.server.base.clone();
    let downloads = ctx.hub.downloads(REPO, FILE);
    let m = Meter::start(&ctx.hub, Some(agent.pid()));
    let wall = match ctx.pull_concurrently(&base, n).await {
        Ok(w) => w,
        Err(e) => return Err(agent.explain(e.context(format!("{n} concurrent cold pulls")))),
    };
    let c = m.stop(&ctx.hub);
    let gets = ctx.hub.downloads(REPO, FILE) - downloads;
    results.rss_concurrent = agent.peak_mib();
    step(&format!(
        "{n} concurrent cold pulls: {wall:.2} s; fixture sent {:.4}× the file in {gets} \
         GET(s); peak RSS {:.1} MiB; CPU agent {:.1} s, bench {:.1} s",
        c.served as f64 / size as f64,
        results.rss_concurrent,
        c.agent_cpu,
        c.bench_cpu
    ));
    results.concurrent = Some((wall, c, gets));
    // Let the fsync end before the agent is killed (the kill would wait for it anyway).
    if let Err(e) = ctx.wait_cached(&mut agent).await {
        return Err(agent.explain(e));
    }
    drop(agent);
    results.load_after = crate::report::loadavg();

    let md = report::render(&args, &bin, &ctx.model, &results);
    crate::report::publish(&md, &args.out)?;
    step(&format!("report written to {}", args.out.display()));
    drop(ctx);
    drop(unlimited);
    drop(tmp);
    Ok(())
}
