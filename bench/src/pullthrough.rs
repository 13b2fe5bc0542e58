//! `manta-bench pull-through`: pulls of one image from a rate-limited upstream, directly, through
//! Manta (alias `up1`) and through docker-registry in proxy mode, cold and warm, and N concurrent
//! cold pulls with the bytes the upstream sent. See bench/README.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::content::{self, BlobFile};
use crate::pull::{self, Pulled};
use crate::ratelimit::RateLimiter;
use crate::rss::RssSampler;
use crate::servers::{self, Server};

mod report;

pub(crate) const REPO: &str = "bench/image";
pub(crate) const TAG: &str = "v1";
pub(crate) const ALIAS: &str = "up1";
pub(crate) const MIB: f64 = 1024.0 * 1024.0;

/// Pull-through benchmark: Manta and docker-registry's proxy mode in front of a rate-limited
/// upstream (docker-registry on 127.0.0.1 behind a token-bucket TCP proxy).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Total size of the image's layers, in MiB.
    #[arg(long, default_value_t = 2048)]
    pub image_mib: u64,
    /// Number of layers the image is split into (pseudo-random bytes, equal sizes).
    #[arg(long, default_value_t = 4)]
    pub layers: u64,
    /// Upstream→client rate limit of the proxy in front of the upstream, MB/s (10^6 bytes/s),
    /// shared by all connections.
    #[arg(long, default_value_t = 200.0)]
    pub rate_mbps: f64,
    /// Concurrent cold pulls in the single-flight phase.
    #[arg(long, default_value_t = 8)]
    pub concurrent_pulls: usize,
    /// Runs of the direct, cold and warm pulls (interleaved); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the concurrent cold pulls through docker-registry's proxy mode.
    #[arg(long)]
    skip_docker_concurrent: bool,
    /// Where to write the markdown report (it is also printed on stdout).
    #[arg(long, default_value = "bench/pull-through.md")]
    out: PathBuf,
    #[command(flatten)]
    pub manta: servers::MantaBinArgs,
    /// The docker-registry binary (Debian package docker-registry).
    #[arg(
        long,
        env = "DOCKER_REGISTRY_BIN",
        default_value = "/usr/bin/docker-registry"
    )]
    pub docker_registry_bin: PathBuf,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

fn step(msg: &str) {
    eprintln!("manta-bench pull-through: {msg}");
}

/// The image pushed upstream.
pub(crate) struct Image {
    pub manifest_digest: String,
    /// Manifest + config + layers: what one pull reads.
    pub bytes: u64,
}

/// Generates the layers, pushes config, layers and manifest to `base` (monolithic uploads).
async fn push_image(
    client: &reqwest::Client,
    base: &reqwest::Url,
    dir: &Path,
    args: &Args,
) -> anyhow::Result<Image> {
    let total = args.image_mib * 1024 * 1024;
    let n = args.layers;
    let mut layers: Vec<BlobFile> = vec![];
    for i in 0..n {
        let size = total / n + u64::from(i < total % n);
        let path = dir.join(format!("layer-{i}.bin"));
        step(&format!(
            "generating layer {}/{n} ({:.0} MiB)",
            i + 1,
            size as f64 / MIB
        ));
        let b = tokio::task::spawn_blocking(move || content::write_blob(&path, size, 1000 + i))
            .await
            .context("layer generator panicked")??;
        layers.push(b);
    }
    let config = content::config_bytes();
    let manifest = content::image_manifest_bytes(&config, &layers)?;
    crate::client::upload_bytes(client, base, REPO, config.clone()).await?;
    for l in &layers {
        step(&format!("pushing {} upstream", l.digest));
        crate::client::upload_file(client, base, REPO, l).await?;
        std::fs::remove_file(&l.path)?;
    }
    crate::client::put_manifest(client, base, REPO, TAG, manifest.clone()).await?;
    crate::client::check_manifest(client, base, REPO, TAG, &manifest).await?;
    Ok(Image {
        manifest_digest: content::sha256_digest(&manifest),
        bytes: manifest.len() as u64
            + config.len() as u64
            + layers.iter().map(|l| l.size).sum::<u64>(),
    })
}

/// One measured pull (or set of concurrent pulls).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Phase {
    pub pulled: Pulled,
    /// Upstream→client bytes the rate limiter forwarded during the phase.
    pub upstream: u64,
    /// Peak RSS of the cache server during the phase, bytes.
    pub rss: Option<u64>,
}

struct Ctx<'a> {
    client: reqwest::Client,
    limiter: &'a RateLimiter,
    image: &'a Image,
}

impl Ctx<'_> {
    /// `n` pulls (1: a single one) from `base`/`repo`, with the upstream bytes and the peak RSS
    /// of `server` (if any) during them.
    async fn phase(
        &self,
        name: &str,
        base: &reqwest::Url,
        repo: &str,
        n: usize,
        server: Option<&mut Server>,
    ) -> anyhow::Result<Phase> {
        let sampler = match &server {
            Some(s) => Some(RssSampler::start(vec![s.pid()])?),
            None => None,
        };
        if let Some(s) = &sampler {
            s.begin_phase();
        }
        let before = self.limiter.down_bytes();
        let conns_before = self.limiter.connections();
        let md = &self.image.manifest_digest;
        let r = if n == 1 {
            pull::pull(&self.client, base, repo, TAG, md).await
        } else {
            pull::pull_concurrently(&self.client, base, repo, TAG, md, n).await
        };
        let upstream = self.limiter.down_bytes() - before;
        let conns = self.limiter.connections() - conns_before;
        let rss = match (&sampler, &server) {
            (Some(s), Some(srv)) => s.phase_peak(srv.pid()),
            _ => None,
        };
        drop(sampler);
        let pulled = match (r, server) {
            (Ok(p), _) => p,
            (Err(e), Some(s)) => {
                let alive = s.check_alive().err().map(|e| format!("\n{e:#}"));
                return Err(e.context(format!(
                    "{name}{}\n{} log tail:\n{}",
                    alive.unwrap_or_default(),
                    s.name,
                    s.log_tail()
                )));
            }
            (Err(e), None) => return Err(e.context(name.to_owned())),
        };
        anyhow::ensure!(
            pulled.bytes == self.image.bytes * n as u64,
            "{name}: read {} bytes, expected {}",
            pulled.bytes,
            self.image.bytes * n as u64
        );
        step(&format!(
            "{name}: {:.2} s, {:.0} MB/s, upstream sent {:.3}× the image over {conns} \
             connections{}",
            pulled.elapsed.as_secs_f64(),
            pulled.bytes as f64 / 1e6 / pulled.elapsed.as_secs_f64(),
            upstream as f64 / self.image.bytes as f64,
            rss.map_or(String::new(), |r| format!(
                ", peak RSS {:.1} MiB",
                r as f64 / MIB
            )),
        ));
        Ok(Phase {
            pulled,
            upstream,
            rss,
        })
    }
}

fn manta_config(dir: &Path, proxy: SocketAddr) -> anyhow::Result<PathBuf> {
    let path = dir.join("manta.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\ntag_ttl_secs = 300\ntimeout_secs = 30\n\n\
             [upstream.aliases]\n{ALIAS} = \"http://{proxy}\"\n"
        ),
    )?;
    Ok(path)
}

/// The two caches compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Manta = 0,
    Docker = 1,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Manta => "Manta",
            Kind::Docker => "docker-registry proxy",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Kind::Manta => "manta",
            Kind::Docker => "dreg-proxy",
        }
    }

    fn repo(self, manta_repo: &str) -> &str {
        match self {
            Kind::Manta => manta_repo,
            Kind::Docker => REPO,
        }
    }
}

/// Per run: a cold pull on a fresh instance, then a warm one on the same; and `n` concurrent cold
/// pulls on another fresh instance.
#[derive(Default)]
pub(crate) struct CacheResult {
    pub cold: Vec<Phase>,
    pub warm: Vec<Phase>,
    pub concurrent: Option<Phase>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.image_mib > 0 && args.layers > 0, "empty image");
    anyhow::ensure!(args.rate_mbps > 0.0, "--rate-mbps must be positive");
    anyhow::ensure!(
        args.concurrent_pulls > 0 && args.runs > 0,
        "--concurrent-pulls and --runs must be positive"
    );
    let manta_bin = args.manta.resolve()?;
    let dreg = args.docker_registry_bin.clone();
    let tmp = tempfile::Builder::new()
        .prefix("manta-bench-pt-")
        .tempdir()?;
    let t = tmp.path();
    step(&format!("work dir {}", t.display()));
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()?;

    let mut upstream =
        servers::start_docker_registry(&dreg, &t.join("upstream"), &t.join("upstream.log"))?;
    servers::wait_ready(&mut upstream, &client).await?;
    step(&format!("upstream docker-registry at {}", upstream.base));
    let image = push_image(&client, &upstream.base, t, &args).await?;
    let up_addr: SocketAddr = format!(
        "127.0.0.1:{}",
        upstream.base.port().context("upstream URL without port")?
    )
    .parse()?;
    let limiter = RateLimiter::start(up_addr, args.rate_mbps * 1e6).await?;
    let proxy_url = limiter.base_url()?;
    step(&format!(
        "rate limiter at {proxy_url} ({} MB/s upstream→client)",
        args.rate_mbps
    ));
    let ctx = Ctx {
        client: client.clone(),
        limiter: &limiter,
        image: &image,
    };
    let n = args.concurrent_pulls;
    let config = manta_config(t, limiter.addr)?;
    let manta_repo = format!("{ALIAS}/{REPO}");
    let remote = proxy_url.as_str().trim_end_matches('/').to_owned();
    // Each cold pull gets a fresh instance with its own (then removed) storage directory.
    let start = |kind: Kind, i: usize| -> anyhow::Result<(Server, PathBuf)> {
        let dir = t.join(format!("{}-{i}", kind.dir()));
        let log = t.join(format!("{}-{i}.log", kind.dir()));
        let s = match kind {
            Kind::Manta => servers::start_manta_with_config(&manta_bin, &dir, &log, Some(&config))?,
            Kind::Docker => {
                servers::start_docker_registry_with_proxy(&dreg, &dir, &log, Some(&remote))?
            }
        };
        Ok((s, dir))
    };

    // Interleaved runs (direct, Manta cold + warm, docker-registry cold + warm), so that noise
    // from the shared machine spreads over all of them.
    let mut direct = vec![];
    let mut ceiling = vec![];
    let mut results = [CacheResult::default(), CacheResult::default()];
    let mut next_instance = 0;
    for run in 1..=args.runs {
        let d = ctx
            .phase(
                &format!("run {run}: direct pull"),
                &proxy_url,
                REPO,
                1,
                None,
            )
            .await?;
        direct.push(d);
        // The same pull without the rate limiter: what client and loopback manage at best.
        let u = upstream.base.clone();
        let c = ctx
            .phase(&format!("run {run}: unlimited pull"), &u, REPO, 1, None)
            .await?;
        ceiling.push(c);
        upstream.check_alive()?;
        for kind in [Kind::Manta, Kind::Docker] {
            next_instance += 1;
            let (mut srv, dir) = start(kind, next_instance)?;
            servers::wait_ready(&mut srv, &client).await?;
            let base = srv.base.clone();
            let repo = kind.repo(&manta_repo);
            let r = &mut results[kind as usize];
            for (warm, out) in [(false, &mut r.cold), (true, &mut r.warm)] {
                let name = format!(
                    "run {run}: {} pull through {}",
                    if warm { "warm" } else { "cold" },
                    kind.name()
                );
                out.push(ctx.phase(&name, &base, repo, 1, Some(&mut srv)).await?);
            }
            drop(srv);
            std::fs::remove_dir_all(&dir)?;
        }
    }
    // n concurrent cold pulls, once per cache.
    for kind in [Kind::Manta, Kind::Docker] {
        if kind == Kind::Docker && args.skip_docker_concurrent {
            continue;
        }
        next_instance += 1;
        let (mut srv, dir) = start(kind, next_instance)?;
        servers::wait_ready(&mut srv, &client).await?;
        let name = format!("{n} concurrent cold pulls through {}", kind.name());
        let base = srv.base.clone();
        let p = ctx
            .phase(&name, &base, kind.repo(&manta_repo), n, Some(&mut srv))
            .await?;
        srv.check_alive()?;
        drop(srv);
        std::fs::remove_dir_all(&dir)?;
        results[kind as usize].concurrent = Some(p);
    }
    upstream.check_alive()?;
    let [manta, docker] = results;

    let md = report::render(
        &args, &manta_bin, &image, &direct, &ceiling, &manta, &docker,
    );
    crate::report::publish(&md, &args.out)?;
    step(&format!("report written to {}", args.out.display()));
    drop(limiter);
    drop(upstream);
    drop(tmp);
    Ok(())
}
