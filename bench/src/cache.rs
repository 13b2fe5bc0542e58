//! `manta-bench cache`: the cache lifecycle's figures (issue 4), against a real `manta serve`.
//!
//! - **Eviction**: an agent holding 10,000 cache blobs (1,000 cached images of 10 blobs by
//!   default) and some pushed blobs, with `--capacity` such that it sits below its high
//!   watermark, is asked to free every cache byte (`POST /manta/v1/gc` `{"free": …}`) while
//!   readers GET the pushed blobs at a fixed rate. Wall time, blobs/s, the agent's peak RSS,
//!   and the readers' p50/p99 during the eviction against the same load idle just before.
//!   No peer: docker-registry has no online eviction (its `garbage-collect` is an offline
//!   mark-and-sweep that wants the registry stopped or read-only), so these are absolute
//!   figures, with the machine's load average.
//! - **Start-up** with 100,000 indexed blobs: spawn → "manta listening" line and → `/readyz`
//!   200, after a SIGTERM and after a kill -9 (with fresh writes in the index's log), next to
//!   docker-registry's spawn → `/v2/` 200 on the same blobs in its own layout; plus one start
//!   under strace that counts the blob files start-up opens and stats.
//!
//! Data directories are built offline with the store's library API on tmpfs (`--build-dir`)
//! and copied (`cp -a`) to `--work-dir`, where every agent runs. See bench/README.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use reqwest::{StatusCode, Url};

use crate::rss::{self, RssSampler};
use crate::servers::{self, Server};

mod build;
mod readers;
mod report;

use build::{Contents, StoreSpec};
use readers::{Latency, Readers, Target};

/// How often a starting server is polled for readiness.
const READY_POLL: Duration = Duration::from_millis(2);
/// How long a SIGTERM'd server may take to exit.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);
/// How long an eviction may take.
const GC_TIMEOUT: Duration = Duration::from_secs(600);
/// Readers run this long before their idle window opens (connections, caches warm up).
const WARM_UP: Duration = Duration::from_millis(500);
/// Between the dry run and the eviction.
const PAUSE: Duration = Duration::from_millis(300);
/// The start of an eviction that is left out of the "rest" window: its plan (the whole index
/// read into a graph) runs there.
const PLAN_WINDOW: Duration = Duration::from_millis(100);
/// The repository the pre-exit writes go to.
const WRITES_REPO: &str = "bench/writes";
/// The repository the start-up store's blobs are linked into (docker-registry's too).
const STARTUP_REPO: &str = "bench/startup";

/// Cache lifecycle benchmark: eviction of 10,000 cache blobs under a reading load, and
/// start-up with 100,000 indexed blobs.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Cache blobs to evict.
    #[arg(long, default_value_t = 10_000)]
    pub cache_blobs: usize,
    /// Cache blobs per cached image (a config and n-1 layers under one tag of a pull-through
    /// repository); 0 for bare cache blobs no manifest references.
    #[arg(long, default_value_t = 10)]
    pub blobs_per_image: usize,
    /// Size of each cache layer (or bare cache blob), KiB.
    #[arg(long, default_value_t = 64)]
    pub cache_blob_kib: usize,
    /// Pushed blobs (never evicted) the readers GET.
    #[arg(long, default_value_t = 64)]
    pub pushed_blobs: usize,
    /// Size of each pushed blob, KiB.
    #[arg(long, default_value_t = 16)]
    pub pushed_blob_kib: usize,
    /// Readers' GETs per second, all threads together (open loop: due times are fixed).
    #[arg(long, default_value_t = 400.0)]
    pub reader_rate: f64,
    /// Reader threads.
    #[arg(long, default_value_t = 4)]
    pub reader_threads: usize,
    /// Seconds of the idle window (the same load, no eviction), before each eviction.
    #[arg(long, default_value_t = 5.0)]
    pub idle_secs: f64,
    /// Eviction runs (each on a fresh copy of the store); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub evict_runs: usize,
    /// Blobs indexed for the start-up measurement.
    #[arg(long, default_value_t = 100_000)]
    pub startup_blobs: usize,
    /// Size of each of those blobs, bytes.
    #[arg(long, default_value_t = 1024)]
    pub startup_blob_bytes: usize,
    /// Starts measured after a SIGTERM, and as many after a kill -9 (alternating); medians.
    #[arg(long, default_value_t = 3)]
    pub startup_runs: usize,
    /// Blobs uploaded (1 KiB each) before every exit, so a kill -9 leaves fresh entries in
    /// the index's write-ahead log.
    #[arg(long, default_value_t = 100)]
    pub writes_before_exit: usize,
    /// Where stores are built (tmpfs: the store's fsyncs cost nothing there) before they are
    /// copied to --work-dir; a `manta-bench-cache-*` directory in it, removed at the end.
    #[arg(long, default_value = "/dev/shm")]
    pub build_dir: PathBuf,
    /// Where every agent's data directory lives (the disk under test); a
    /// `manta-bench-cache-*` directory in it, removed at the end.
    #[arg(long, default_value = "/var/tmp")]
    pub work_dir: PathBuf,
    /// Where to write the markdown report (it is also printed on stdout).
    #[arg(long, default_value = "bench/cache.md")]
    pub out: PathBuf,
    #[command(flatten)]
    pub manta: servers::MantaBinArgs,
    /// The docker-registry binary (Debian package docker-registry), the start-up peer.
    #[arg(
        long,
        env = "DOCKER_REGISTRY_BIN",
        default_value = "/usr/bin/docker-registry"
    )]
    docker_registry_bin: PathBuf,
    /// Skip docker-registry's start-up (no peer column then).
    #[arg(long)]
    skip_docker: bool,
    /// The strace binary for the start-up file-access check (skipped if it is missing).
    #[arg(long, default_value = "/usr/bin/strace")]
    strace_bin: PathBuf,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 1200)]
    pub timeout_secs: u64,
}

fn step(msg: &str) {
    eprintln!("manta-bench cache: {msg}");
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / crate::MIB
}

/// `GET url`: a 2xx and its JSON.
async fn get_json(client: &reqwest::Client, url: &Url) -> anyhow::Result<serde_json::Value> {
    let resp = client.get(url.clone()).send().await?.error_for_status()?;
    resp.json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))
}

/// A sample's value from the agent's `/metrics` (first series of that name).
async fn metric(client: &reqwest::Client, base: &Url, name: &str) -> anyhow::Result<Option<f64>> {
    let text = client
        .get(base.join("/metrics")?)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix(' ').or_else(|| {
            // A labelled series: `name{…} value`.
            rest.starts_with('{')
                .then(|| rest.split_once("} ").map(|(_, v)| v))?
        })?;
        rest.split_whitespace().next()?.parse().ok()
    }))
}

/// `err` with the agent's log tail (and whether it is still alive).
fn explain(server: &mut Server, err: anyhow::Error) -> anyhow::Error {
    let alive = server.check_alive().err();
    let alive = alive.map_or(String::new(), |e| format!("\n{e:#}"));
    err.context(format!("{alive}\nmanta log tail:\n{}", server.log_tail()))
}

/// One eviction run, in the order it was measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct EvictRun {
    /// Seconds from the POST to the GC report.
    pub wall: f64,
    pub blobs_deleted: u64,
    pub manifests_deleted: u64,
    pub freed_bytes: u64,
    pub roots: u64,
    pub kept_in_use: u64,
    /// Roots the report says were protected (pinned, in use, young).
    pub protected: [u64; 3],
    pub idle: Latency,
    /// The same load with one core kept busy by another process (no eviction).
    pub busy: Latency,
    pub during: Latency,
    /// The requests due during the eviction after its first [`PLAN_WINDOW`].
    pub during_rest: Latency,
    /// The dry run just before (`"dryRun": true`: the plan alone): seconds, the blobs it
    /// would delete, the readers' latencies while it ran.
    pub dry_wall: f64,
    pub dry_blobs: u64,
    pub dry: Latency,
    /// Agent RSS (MiB): peak over the idle window, peak during the eviction.
    pub rss_idle: f64,
    pub rss_evict: f64,
    /// CPU seconds the agent used during the eviction.
    pub agent_cpu: f64,
    /// Blob files in the data directory before and after.
    pub files_before: u64,
    pub files_after: u64,
    /// `space` of `GET /manta/v1/cache`, when the agent reports it.
    pub used_before: Option<u64>,
    pub used_after: Option<u64>,
    pub high_watermark: Option<u64>,
}

/// How the previous process of the data directory ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The store was just built and closed cleanly (the first start).
    Built,
    Term,
    Kill,
}

/// One start.
#[derive(Clone, Debug)]
pub(crate) struct StartRun {
    pub after: Exit,
    /// Seconds from spawn to the "listening" line (Manta only).
    pub listen: Option<f64>,
    /// Seconds from spawn to the readiness probe's 200.
    pub ready: f64,
    /// `/proc/<pid>/io` at readiness: bytes read through read-like calls (files, sockets),
    /// bytes read from the storage layer.
    pub rchar: Option<u64>,
    pub read_bytes: Option<u64>,
    /// Peak RSS at readiness, MiB.
    pub hwm: f64,
    /// Blobs the agent reports indexed (`manta_blobs_indexed`).
    pub indexed: Option<f64>,
    /// Seconds a SIGTERM took to end this process (when it was ended so).
    pub shutdown: Option<f64>,
}

/// What one start under strace did to the blob files.
#[derive(Clone, Debug, Default)]
pub(crate) struct Traced {
    pub opens: u64,
    pub stats: u64,
    pub getdents: u64,
    pub lines: u64,
    pub example_open: Option<String>,
}

/// Everything measured.
#[derive(Default)]
pub(crate) struct Results {
    pub evict: Vec<EvictRun>,
    pub evict_contents: Contents,
    pub capacity: u64,
    pub manta_starts: Vec<StartRun>,
    pub docker_starts: Vec<StartRun>,
    pub startup_contents: Contents,
    pub traced: Option<Traced>,
    pub trace_note: Option<String>,
    /// Seconds: building the eviction store, the start-up store, the docker-registry layout.
    pub build_times: [f64; 3],
    pub load_before: String,
    pub load_after: String,
}

struct Ctx {
    bin: PathBuf,
    work: PathBuf,
    client: reqwest::Client,
    args: Args,
}

impl Ctx {
    /// A fresh copy of the eviction store, an agent on it, readers and one eviction.
    async fn evict_run(
        &self,
        template: &Path,
        c: &Contents,
        capacity: u64,
        run: usize,
    ) -> anyhow::Result<EvictRun> {
        let dir = self.work.join(format!("evict-{run}"));
        let t = Instant::now();
        let (src, dst) = (template.to_path_buf(), dir.clone());
        tokio::task::spawn_blocking(move || build::copy_dir(&src, &dst))
            .await
            .context("copy panicked")??;
        step(&format!(
            "run {run}: store copied to {} in {:.1} s",
            dir.display(),
            secs(t.elapsed())
        ));
        let log = self.work.join(format!("evict-{run}.log"));
        let cap = capacity.to_string();
        let mut server = servers::start_manta_with_args(
            &self.bin,
            &dir,
            &log,
            &[
                "--capacity".as_ref(),
                cap.as_ref(),
                "--evict-min-age-secs".as_ref(),
                "0".as_ref(),
            ],
        )?;
        let r = self.evict_on(&mut server, &dir, c).await;
        let r = r.map_err(|e| explain(&mut server, e.context(format!("eviction run {run}"))));
        drop(server);
        let d = dir.clone();
        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&d))
            .await
            .context("remove panicked")??;
        r
    }

    async fn evict_on(
        &self,
        server: &mut Server,
        dir: &Path,
        c: &Contents,
    ) -> anyhow::Result<EvictRun> {
        let a = &self.args;
        servers::wait_ok(server, &self.client, "/readyz", READY_POLL).await?;
        let base = server.base.clone();
        let pid = server.pid();
        let sampler = RssSampler::start(vec![pid])?;
        let mut r = EvictRun {
            files_before: build::count_files(&dir.join("blobs"))?,
            ..EvictRun::default()
        };
        let cache_url = base.join("/manta/v1/cache")?;
        let space = get_json(&self.client, &cache_url).await?;
        r.used_before = space["space"]["used"].as_u64();
        r.high_watermark = space["space"]["highWatermark"].as_u64();
        let targets: Vec<Target> = c
            .pushed
            .iter()
            .map(|(d, size)| {
                Ok(Target {
                    url: base.join(&format!("/v2/{}/blobs/{d}", build::PUSHED_REPO))?,
                    size: *size,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let targets = Arc::new(targets);

        // Idle: the readers alone.
        sampler.begin_phase();
        r.idle = self.window(&targets).await?;
        r.rss_idle = mib(sampler.phase_peak(pid).unwrap_or(0));
        server.check_alive()?;
        // The control: the readers while another process keeps one core busy (what any
        // single-threaded background work costs them on this machine, eviction or not).
        {
            let _spinner = Spinner::start()?;
            r.busy = self.window(&targets).await?;
        }
        server.check_alive()?;

        // The same load: a dry run first (the plan alone), then the eviction.
        let readers = Readers::start(targets, a.reader_rate, a.reader_threads)?;
        tokio::time::sleep(WARM_UP).await;
        let d0 = Instant::now();
        let dry = self.gc(&base, c.cache_bytes, true).await;
        let d1 = Instant::now();
        tokio::time::sleep(PAUSE).await;
        sampler.begin_phase();
        let cpu = rss::cpu_seconds(pid).unwrap_or(0.0);
        let t0 = Instant::now();
        let gc = self.gc(&base, c.cache_bytes, false).await;
        let t1 = Instant::now();
        let samples = readers.stop()?;
        let (dry, gc) = (dry?, gc?);
        r.dry_wall = secs(d1 - d0);
        r.dry_blobs = dry["blobsDeleted"].as_u64().unwrap_or(0);
        r.dry = Latency::of(&samples, d0, d1);
        r.wall = secs(t1 - t0);
        r.agent_cpu = rss::cpu_seconds(pid).unwrap_or(cpu) - cpu;
        r.rss_evict = mib(sampler.phase_peak(pid).unwrap_or(0));
        r.during = Latency::of(&samples, t0, t1);
        r.during_rest = Latency::of(&samples, t0 + PLAN_WINDOW, t1);
        let n = |k: &str| gc[k].as_u64().unwrap_or(0);
        r.blobs_deleted = n("blobsDeleted");
        r.manifests_deleted = n("manifestsDeleted");
        r.freed_bytes = n("freedBytes");
        r.kept_in_use = n("keptInUse");
        r.protected = [
            n("protectedPinned"),
            n("protectedInUse"),
            n("protectedYoung"),
        ];
        r.roots = gc["evicted"].as_array().map_or(0, |v| v.len() as u64);
        server.check_alive()?;
        let space = get_json(&self.client, &cache_url).await?;
        r.used_after = space["space"]["used"].as_u64();
        r.files_after = build::count_files(&dir.join("blobs"))?;
        Ok(r)
    }

    /// `POST /manta/v1/gc` `{"free": free, "dryRun": dry_run}`: the GC report.
    async fn gc(&self, base: &Url, free: u64, dry_run: bool) -> anyhow::Result<serde_json::Value> {
        let url = base.join("/manta/v1/gc")?;
        let resp = self
            .client
            .post(url.clone())
            .json(&serde_json::json!({ "free": free, "dryRun": dry_run }))
            .timeout(GC_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body = resp.text().await?;
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            bail!("POST {url}: {status}: this agent has no eviction endpoint; body {body:?}");
        }
        ensure!(status == StatusCode::OK, "POST {url}: {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("POST {url}: not JSON: {body}"))
    }

    /// The readers for a warm-up and then the idle window: the window's latencies.
    async fn window(&self, targets: &Arc<Vec<Target>>) -> anyhow::Result<Latency> {
        let a = &self.args;
        let readers = Readers::start(targets.clone(), a.reader_rate, a.reader_threads)?;
        let from = Instant::now() + WARM_UP;
        tokio::time::sleep(WARM_UP + Duration::from_secs_f64(a.idle_secs)).await;
        let to = Instant::now();
        let samples = readers.stop()?;
        Ok(Latency::of(&samples, from, to))
    }

    /// Spawns manta on `dir` and times it to the "listening" line and to `/readyz` 200.
    async fn start_manta(
        &self,
        dir: &Path,
        log: &Path,
        after: Exit,
    ) -> anyhow::Result<(Server, StartRun)> {
        let (bin, d, l) = (self.bin.clone(), dir.to_path_buf(), log.to_path_buf());
        let t0 = Instant::now();
        let mut server =
            tokio::task::spawn_blocking(move || servers::start_manta_with_args(&bin, &d, &l, &[]))
                .await
                .context("start panicked")??;
        let listen = secs(t0.elapsed());
        if let Err(e) = servers::wait_ok(&mut server, &self.client, "/readyz", READY_POLL).await {
            return Err(explain(&mut server, e));
        }
        let ready = secs(t0.elapsed());
        let pid = server.pid();
        let run = StartRun {
            after,
            listen: Some(listen),
            ready,
            rchar: rss::io_field(pid, "rchar"),
            read_bytes: rss::io_field(pid, "read_bytes"),
            hwm: mib(rss::status_field(pid, "VmHWM").unwrap_or(0)),
            indexed: metric(&self.client, &server.base, "manta_blobs_indexed").await?,
            shutdown: None,
        };
        Ok((server, run))
    }

    /// Spawns docker-registry on `root` and times it to `/v2/` 200.
    async fn start_docker(
        &self,
        root: &Path,
        log: &Path,
        after: Exit,
    ) -> anyhow::Result<(Server, StartRun)> {
        let t0 = Instant::now();
        let mut server = servers::start_docker_registry(&self.args.docker_registry_bin, root, log)?;
        servers::wait_ok(&mut server, &self.client, "/v2/", READY_POLL).await?;
        let ready = secs(t0.elapsed());
        let pid = server.pid();
        let run = StartRun {
            after,
            listen: None,
            ready,
            rchar: rss::io_field(pid, "rchar"),
            read_bytes: rss::io_field(pid, "read_bytes"),
            hwm: mib(rss::status_field(pid, "VmHWM").unwrap_or(0)),
            indexed: None,
            shutdown: None,
        };
        Ok((server, run))
    }

    /// Small uploads before an exit (fresh entries in the index's log for a kill -9 to lose).
    async fn writes(&self, base: &Url, round: usize) -> anyhow::Result<()> {
        let n = self.args.writes_before_exit;
        for i in 0..n {
            let seed = build::SEED_WRITES + (round * n + i) as u64;
            crate::client::upload_bytes(
                &self.client,
                base,
                WRITES_REPO,
                crate::content::random_bytes(1024, seed),
            )
            .await?;
        }
        Ok(())
    }

    /// Starts `1 + 2 × runs` times, each process ended alternately by SIGTERM and kill -9 (the
    /// first start follows the offline build). `manta` picks the server.
    async fn starts(
        &self,
        manta: bool,
        dir: &Path,
        round0: usize,
    ) -> anyhow::Result<Vec<StartRun>> {
        let name = if manta { "manta" } else { "docker-registry" };
        let mut out = Vec::new();
        let mut after = Exit::Built;
        for i in 0..=2 * self.args.startup_runs {
            let log = self.work.join(format!("start-{name}-{i}.log"));
            let (mut server, mut run) = if manta {
                self.start_manta(dir, &log, after).await?
            } else {
                self.start_docker(dir, &log, after).await?
            };
            let base = server.base.clone();
            if let Err(e) = self.writes(&base, round0 + i).await {
                return Err(explain(&mut server, e.context(format!("{name}: writes"))));
            }
            if i % 2 == 0 {
                run.shutdown = Some(secs(server.terminate(SHUTDOWN_DEADLINE)?));
                after = Exit::Term;
            } else {
                server.kill()?;
                after = Exit::Kill;
            }
            step(&format!(
                "{name} start {i} (after {:?}): listening {}, ready {:.3} s; rchar {} MiB, \
                 read_bytes {} MiB; peak RSS {:.1} MiB; indexed {}; then {}",
                run.after,
                run.listen.map_or("—".into(), |l| format!("{l:.3} s")),
                run.ready,
                run.rchar.map_or("?".into(), |b| format!("{:.1}", mib(b))),
                run.read_bytes
                    .map_or("?".into(), |b| format!("{:.1}", mib(b))),
                run.hwm,
                run.indexed.map_or("?".into(), |n| format!("{n:.0}")),
                run.shutdown
                    .map_or("kill -9".into(), |s| format!("SIGTERM, exited in {s:.3} s")),
            ));
            out.push(run);
        }
        Ok(out)
    }

    /// One more start under strace (untimed): which blob files start-up opens or stats.
    async fn traced_start(&self, dir: &Path) -> anyhow::Result<Traced> {
        let trace = self.work.join("strace.txt");
        let wrapper = self.work.join("manta-under-strace.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec '{}' -f -qq -e trace=%file,getdents64 -o '{}' '{}' \"$@\"\n",
                self.args.strace_bin.display(),
                trace.display(),
                self.bin.display()
            ),
        )?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        }
        let log = self.work.join("start-strace.log");
        let (w, d) = (wrapper.clone(), dir.to_path_buf());
        let mut server =
            tokio::task::spawn_blocking(move || servers::start_manta_with_args(&w, &d, &log, &[]))
                .await
                .context("start panicked")??;
        if let Err(e) = servers::wait_ok(&mut server, &self.client, "/readyz", READY_POLL).await {
            return Err(explain(&mut server, e));
        }
        // SIGTERM the agent (strace's child), then strace ends with it.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", server.pid()))
                .unwrap_or_default();
        let agent = children
            .split_whitespace()
            .next()
            .context("strace has no child")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", agent])
            .status()?;
        ensure!(status.success(), "kill -TERM {agent} failed");
        let t = Instant::now();
        while server.check_alive().is_ok() {
            ensure!(t.elapsed() < SHUTDOWN_DEADLINE, "strace did not end");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&trace)?;
        Ok(count_blob_access(&text))
    }
}

/// A shell spinning on one core until dropped (killed and reaped then).
struct Spinner(std::process::Child);

impl Spinner {
    fn start() -> anyhow::Result<Self> {
        let child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("cannot start sh")?;
        Ok(Self(child))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True if `path` is a blob file of a Manta store: `…/blobs/<alg>/<xx>/<hex>`.
fn is_blob_file(path: &str) -> bool {
    let Some((_, rest)) = path.rsplit_once("/blobs/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), [alg, shard, hex]
        if matches!(*alg, "sha256" | "sha512")
            && shard.len() == 2
            && hex.len() >= 64
            && hex.starts_with(shard)
            && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Counts, in strace output, the calls that name a blob file: opens and stats.
fn count_blob_access(trace: &str) -> Traced {
    let mut t = Traced::default();
    for line in trace.lines() {
        t.lines += 1;
        if line.contains("getdents64(") {
            t.getdents += 1;
        }
        let Some(path) = line.split('"').nth(1) else {
            continue;
        };
        if !is_blob_file(path) {
            continue;
        }
        let call = line
            .split_once('(')
            .map(|(head, _)| head.rsplit(' ').next().unwrap_or(head))
            .unwrap_or("");
        if call.starts_with("open") {
            t.opens += 1;
            t.example_open.get_or_insert_with(|| line.to_string());
        } else if call.contains("stat") {
            t.stats += 1;
        }
    }
    t
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.cache_blobs > 0 && args.pushed_blobs > 0,
        "blob counts must be positive"
    );
    ensure!(
        args.blobs_per_image != 1,
        "--blobs-per-image must be 0 (bare blobs) or at least 2"
    );
    ensure!(
        args.reader_rate > 0.0 && args.reader_threads > 0,
        "the readers need a rate and threads"
    );
    ensure!(
        args.evict_runs > 0 && args.startup_runs > 0,
        "runs must be positive"
    );
    if !args.skip_docker && !args.docker_registry_bin.is_file() {
        bail!(
            "no docker-registry at {} (apt-get install docker-registry, or pass --skip-docker)",
            args.docker_registry_bin.display()
        );
    }
    let bin = args.manta.resolve()?;
    let build_root = tempfile::Builder::new()
        .prefix("manta-bench-cache-")
        .tempdir_in(&args.build_dir)
        .with_context(|| format!("temp dir in {}", args.build_dir.display()))?;
    let work_root = tempfile::Builder::new()
        .prefix("manta-bench-cache-")
        .tempdir_in(&args.work_dir)
        .with_context(|| format!("temp dir in {}", args.work_dir.display()))?;
    step(&format!(
        "building in {}, running in {}",
        build_root.path().display(),
        work_root.path().display()
    ));
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let mut results = Results {
        load_before: crate::report::loadavg(),
        ..Results::default()
    };
    let ctx = Ctx {
        bin: bin.clone(),
        work: work_root.path().to_path_buf(),
        client,
        args,
    };
    let a = &ctx.args;

    // 1. Eviction.
    let template = build_root.path().join("evict");
    step(&format!(
        "building the eviction store: {} cache blobs ({}), {} pushed blobs",
        a.cache_blobs,
        if a.blobs_per_image == 0 {
            "bare".to_string()
        } else {
            format!("{} per image", a.blobs_per_image)
        },
        a.pushed_blobs
    ));
    let t = Instant::now();
    let c = build::manta_store(
        &template,
        &StoreSpec {
            cache_blobs: a.cache_blobs,
            blobs_per_image: a.blobs_per_image,
            cache_blob_size: a.cache_blob_kib * 1024,
            cache_seed: build::SEED_CACHE,
            pushed_blobs: a.pushed_blobs,
            pushed_blob_size: a.pushed_blob_kib * 1024,
        },
    )
    .await?;
    results.build_times[0] = secs(t.elapsed());
    // Everything at 80 % of the capacity: below the high watermark (85 % by default), so
    // nothing is evicted before the measured request asks for it.
    results.capacity = (c.total_bytes() as f64 / 0.80).ceil() as u64;
    step(&format!(
        "built in {:.1} s: {} cache blobs ({:.1} MiB) in {} images, {} pushed ({:.1} MiB); capacity {} bytes",
        results.build_times[0],
        c.cache_blobs,
        mib(c.cache_bytes),
        c.images,
        c.pushed.len(),
        mib(c.pushed_bytes),
        results.capacity
    ));
    for run in 1..=a.evict_runs {
        let r = ctx.evict_run(&template, &c, results.capacity, run).await?;
        step(&format!(
            "run {run}: dry run {:.3} s (would delete {} blobs; readers max {:.2} ms); evicted {} \
             blobs, {} manifests, {} roots, {:.1} MiB in {:.2} s ({:.0} blobs/s); \
             agent CPU {:.1} s, peak RSS {:.1} MiB (idle {:.1}); readers p50/p99 idle {:.2}/{:.2} ms \
             ({} requests), one core busy {:.2}/{:.2} ms, during {:.2}/{:.2} ms ({} requests, {} \
             errors); blob files {} → {}",
            r.dry_wall,
            r.dry_blobs,
            r.dry.max,
            r.blobs_deleted,
            r.manifests_deleted,
            r.roots,
            mib(r.freed_bytes),
            r.wall,
            r.blobs_deleted as f64 / r.wall,
            r.agent_cpu,
            r.rss_evict,
            r.rss_idle,
            r.idle.p50,
            r.idle.p99,
            r.idle.requests,
            r.busy.p50,
            r.busy.p99,
            r.during.p50,
            r.during.p99,
            r.during.requests,
            r.during.errors + r.idle.errors + r.busy.errors,
            r.files_before,
            r.files_after,
        ));
        results.evict.push(r);
    }
    std::fs::remove_dir_all(&template)?;
    results.evict_contents = c;

    // 2. Start-up.
    step(&format!(
        "building the start-up store: {} blobs of {} bytes",
        a.startup_blobs, a.startup_blob_bytes
    ));
    let t = Instant::now();
    let built = build_root.path().join("startup");
    let s = build::manta_store(
        &built,
        &StoreSpec {
            cache_blobs: a.startup_blobs,
            blobs_per_image: 0,
            cache_blob_size: a.startup_blob_bytes,
            cache_seed: build::SEED_STARTUP,
            pushed_blobs: 0,
            pushed_blob_size: 0,
        },
    )
    .await?;
    let manta_dir = ctx.work.join("startup-manta");
    let (src, dst) = (built.clone(), manta_dir.clone());
    tokio::task::spawn_blocking(move || build::copy_dir(&src, &dst))
        .await
        .context("copy panicked")??;
    std::fs::remove_dir_all(&built)?;
    results.build_times[1] = secs(t.elapsed());
    step(&format!(
        "built and copied in {:.1} s",
        results.build_times[1]
    ));
    results.manta_starts = ctx.starts(true, &manta_dir, 0).await?;
    if !a.skip_docker {
        let root = ctx.work.join("startup-docker");
        let t = Instant::now();
        let (r, n, size) = (root.join("storage"), a.startup_blobs, a.startup_blob_bytes);
        tokio::task::spawn_blocking(move || {
            build::docker_layout(&r, STARTUP_REPO, n, size, build::SEED_STARTUP)
        })
        .await
        .context("layout panicked")??;
        results.build_times[2] = secs(t.elapsed());
        step(&format!(
            "docker-registry layout written in {:.1} s",
            results.build_times[2]
        ));
        results.docker_starts = ctx.starts(false, &root, 2 * a.startup_runs + 1).await?;
    }
    if a.strace_bin.is_file() {
        let t = ctx.traced_start(&manta_dir).await?;
        step(&format!(
            "under strace: {} opens and {} stats of blob files, {} getdents64 calls, {} lines",
            t.opens, t.stats, t.getdents, t.lines
        ));
        results.traced = Some(t);
    } else {
        results.trace_note = Some(format!(
            "{} is missing: the strace check was skipped (apt-get install strace)",
            a.strace_bin.display()
        ));
    }
    results.startup_contents = s;
    results.load_after = crate::report::loadavg();

    let md = report::render(&ctx.args, &bin, &results);
    crate::report::publish(&md, &ctx.args.out)?;
    step(&format!("report written to {}", ctx.args.out.display()));
    drop(work_root);
    drop(build_root);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_and_strace_lines() {
        let hex = "ab".to_string() + &"0".repeat(62);
        assert!(is_blob_file(&format!("/d/blobs/sha256/ab/{hex}")));
        assert!(!is_blob_file("/d/blobs/sha256/ab"));
        assert!(!is_blob_file(&format!("/d/blobs/sha256/cd/{hex}")));
        assert!(!is_blob_file(&format!("/d/tmp/{hex}")));
        let trace = format!(
            "12 openat(AT_FDCWD, \"/d/blobs/sha256/ab\", O_RDONLY|O_CLOEXEC|O_DIRECTORY) = 3\n\
             12 getdents64(3, 0x5 /* 4 entries */, 32768) = 112\n\
             13 statx(AT_FDCWD, \"/d/blobs/sha256/ab/{hex}\", AT_STATX_SYNC_AS_STAT, STATX_ALL, {{}}) = 0\n\
             13 openat(AT_FDCWD, \"/d/blobs/sha256/ab/{hex}\", O_RDONLY|O_CLOEXEC) = 9\n\
             13 openat(AT_FDCWD, \"/d/db/CURRENT\", O_RDONLY) = 9\n"
        );
        let t = count_blob_access(&trace);
        assert_eq!((t.opens, t.stats, t.getdents, t.lines), (1, 1, 1, 5));
    }
}
