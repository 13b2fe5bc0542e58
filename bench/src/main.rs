//! `manta-bench`: Manta side by side with Debian's docker-registry on loopback, one markdown table.
//! `manta-bench pull-through`: both as pull-through caches of a rate-limited upstream.
//! `manta-bench hub`: Manta in front of a rate-limited local Hugging Face Hub.
//! `manta-bench cache`: eviction of 10,000 cache blobs under readers, start-up with 100,000.
//! `manta-bench peers`: N agents in network namespaces pulling one model cold at once.
//! `manta-bench operator`: `kubectl apply` of a Torrent to Ready, against one node alone.
//! `manta-bench operator-scale`: the operator's reconcile over 1,000 nodes (fake agents).
//!
//! See bench/README.md for what is measured and how to read it.

mod cache;
mod client;
mod content;
mod hub;
mod operator;
mod operator_ready;
mod peers;
mod pull;
mod pullthrough;
mod ratelimit;
mod rawget;
mod report;
mod rss;
mod servers;
mod users;
mod wrk;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use client::Transfer;
use content::BlobFile;
use report::{Goal, Row};
use servers::Server;

const REPO: &str = "bench/model";
/// The single-layer image `ctr images pull` fetches.
const CTR_REPO: &str = "bench/ctr";
const TAG: &str = "bench";
const MIB: f64 = 1024.0 * 1024.0;

/// Benchmark Manta against docker-registry (distribution 2.8) on 127.0.0.1.
///
/// Without a subcommand, runs `registry` (the flags below are its flags).
#[derive(Parser, Debug)]
#[command(
    name = "manta-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    registry: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Both as local registries: blob GETs, manifest GETs, uploads (the default).
    Registry(Args),
    /// Both as pull-through caches of a rate-limited upstream: cold, warm and concurrent pulls.
    PullThrough(pullthrough::Args),
    /// Manta in front of a rate-limited local Hugging Face Hub: cold, warm and concurrent
    /// `hf-raw` pulls and an image-form prefetch, against direct downloads.
    Hub(hub::Args),
    /// Cache lifecycle: eviction of 10,000 cache blobs under a reading load, and start-up time
    /// with 100,000 indexed blobs (after SIGTERM and after kill -9) next to docker-registry's.
    Cache(cache::Args),
    /// Peers: N agents, each in a network namespace behind a rate-limited link, pull one model
    /// cold at once from a slower origin; with peers on, off, and one node alone.
    Peers(peers::Args),
    /// The operator end to end: `kubectl apply` of a Torrent to Ready, against a prefetch on one
    /// node alone.
    Operator(operator_ready::Args),
    /// The operator at scale: one Torrent over N nodes (fake agents), reconcile passes timed,
    /// the status's size.
    OperatorScale(operator::Args),
}

/// Flags of the `registry` benchmark.
#[derive(clap::Args, Debug)]
struct Args {
    /// Size of the generated blob, in MiB.
    #[arg(long, env = "MANTA_BENCH_SIZE_MIB", default_value_t = 1024)]
    size_mib: u64,
    /// Where to write the markdown report (it is also printed on stdout).
    #[arg(long, env = "MANTA_BENCH_OUT", default_value = "bench/results.md")]
    out: PathBuf,
    #[command(flatten)]
    pub manta: servers::MantaBinArgs,
    /// The docker-registry binary (Debian package docker-registry).
    #[arg(
        long,
        env = "DOCKER_REGISTRY_BIN",
        default_value = "/usr/bin/docker-registry"
    )]
    docker_registry_bin: PathBuf,
    /// Single-stream GET runs per server (alternating servers); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Upload runs per server (alternating servers, a fresh blob each run); the median is reported.
    #[arg(long, default_value_t = 3)]
    upload_runs: usize,
    /// Concurrent GET streams of the blob.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Seconds of `wrk` per server for manifest GETs.
    #[arg(long, default_value_t = 5)]
    wrk_secs: u64,
    /// `wrk` connections.
    #[arg(long, default_value_t = 32)]
    wrk_connections: usize,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    /// Skip the `ctr images pull` phase (it needs containerd and root).
    #[arg(long)]
    skip_ctr: bool,
    /// Where containerd keeps its content and snapshots for the `ctr images pull` phase: tmpfs
    /// by default, so the pull measures the registry and containerd, not the disk.
    #[arg(long, default_value = "/dev/shm")]
    ctr_root: PathBuf,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (limit, bench): (u64, std::pin::Pin<Box<dyn std::future::Future<Output = _>>>) =
        match cli.command {
            None => (cli.registry.timeout_secs, Box::pin(run(cli.registry))),
            Some(Command::Registry(a)) => (a.timeout_secs, Box::pin(run(a))),
            Some(Command::PullThrough(a)) => (a.timeout_secs, Box::pin(pullthrough::run(a))),
            Some(Command::Hub(a)) => (a.timeout_secs, Box::pin(hub::run(a))),
            Some(Command::Cache(a)) => (a.timeout_secs, Box::pin(cache::run(a))),
            Some(Command::Peers(a)) => (a.timeout_secs, Box::pin(peers::run(a))),
            Some(Command::Operator(a)) => (a.timeout_secs, Box::pin(operator_ready::run(a))),
            Some(Command::OperatorScale(a)) => (a.timeout_secs, Box::pin(operator::run(a))),
        };
    let limit = Duration::from_secs(limit);
    // Dropping the benchmark (on Ctrl-C or time-out) kills the servers and removes the temp dirs.
    tokio::select! {
        r = tokio::time::timeout(limit, bench) => match r {
            Ok(r) => r,
            Err(_) => anyhow::bail!("benchmark did not finish within {limit:?}"),
        },
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile (0–100) of `v`, nearest rank; NaN when `v` is empty.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn fmt_runs(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Both servers, indexable in a fixed order: 0 is Manta, 1 is docker-registry.
struct Pair {
    servers: [Server; 2],
}

impl Pair {
    /// Server order for run `i`: alternate who goes first.
    fn order(i: usize) -> [usize; 2] {
        if i.is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in &mut self.servers {
            s.check_alive()?;
        }
        Ok(())
    }
}

fn step(msg: &str) {
    eprintln!("manta-bench: {msg}");
}

fn command_version(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if s.is_empty() {
                String::from_utf8_lossy(&o.stderr).trim().to_owned()
            } else {
                s
            }
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

async fn generate(path: PathBuf, size: u64, seed: u64) -> anyhow::Result<BlobFile> {
    tokio::task::spawn_blocking(move || content::write_blob(&path, size, seed))
        .await
        .context("blob generator panicked")?
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.size_mib > 0, "--size-mib must be positive");
    anyhow::ensure!(
        args.runs > 0 && args.upload_runs > 0 && args.streams > 0,
        "runs and streams must be positive"
    );
    if let Err(e) = std::process::Command::new("wrk").arg("--version").output() {
        anyhow::bail!("cannot run wrk ({e}): install it with `apt-get install wrk`");
    }
    let manta_bin = args.manta.resolve()?;
    let size = args.size_mib * 1024 * 1024;

    let tmp = tempfile::Builder::new().prefix("manta-bench-").tempdir()?;
    step(&format!("work dir {}", tmp.path().display()));
    step(&format!("generating a {} MiB blob", args.size_mib));
    let blob = generate(tmp.path().join("blob-0.bin"), size, 0).await?;
    let config = content::config_bytes();
    let manifest = content::manifest_bytes(&config, &blob)?;

    let manta = servers::start_manta(
        &manta_bin,
        &tmp.path().join("manta"),
        &tmp.path().join("manta.log"),
    )?;
    let docker = servers::start_docker_registry(
        &args.docker_registry_bin,
        &tmp.path().join("docker-registry"),
        &tmp.path().join("docker-registry.log"),
    )?;
    let mut pair = Pair {
        servers: [manta, docker],
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    for s in &mut pair.servers {
        servers::wait_ready(s, &client).await?;
        step(&format!("{} ready at {} (pid {})", s.name, s.base, s.pid()));
    }
    let pids = [pair.servers[0].pid(), pair.servers[1].pid()];
    let sampler = rss::RssSampler::start(pids.to_vec())?;

    // Load: config blob, then the big blob by monolithic upload (timed), then the manifest.
    for s in &pair.servers {
        client::upload_bytes(&client, &s.base, REPO, config.clone()).await?;
    }
    let mut uploads: [Vec<f64>; 2] = [vec![], vec![]];
    for i in 0..args.upload_runs {
        let b = if i == 0 {
            blob.clone()
        } else {
            step(&format!("generating upload blob {i}"));
            generate(tmp.path().join(format!("blob-{i}.bin")), size, i as u64).await?
        };
        for k in Pair::order(i) {
            let s = &pair.servers[k];
            step(&format!(
                "upload {} to {} (run {})",
                b.digest,
                s.name,
                i + 1
            ));
            let t = client::upload_file(&client, &s.base, REPO, &b)
                .await
                .with_context(|| format!("upload to {}", s.name))?;
            uploads[k].push(t.mb_per_s());
        }
        if i > 0 {
            std::fs::remove_file(&b.path)?;
        }
    }
    for s in &pair.servers {
        client::put_manifest(&client, &s.base, REPO, TAG, manifest.clone()).await?;
        client::check_manifest(&client, &s.base, REPO, TAG, &manifest).await?;
        step(&format!("verifying the blob from {}", s.name));
        client::verify_blob(&client, &s.base, REPO, &blob).await?;
    }
    pair.check_alive()?;

    // Single stream, alternating servers.
    let mut single: [Vec<f64>; 2] = [vec![], vec![]];
    for i in 0..args.runs {
        for k in Pair::order(i) {
            let s = &pair.servers[k];
            let t = client::read_blob(&s.base, REPO, &blob).await?;
            step(&format!(
                "single-stream GET from {}: {:.0} MB/s",
                s.name,
                t.mb_per_s()
            ));
            single[k].push(t.mb_per_s());
        }
    }

    // Concurrent streams, with each server's peak RSS during its own run.
    let mut multi: Vec<Transfer> = vec![];
    let mut multi_rss = [0.0; 2];
    for (k, s) in pair.servers.iter().enumerate() {
        sampler.begin_phase();
        let t = client::read_blob_concurrently(&s.base, REPO, &blob, args.streams).await?;
        multi_rss[k] = sampler.phase_peak(pids[k]).unwrap_or(0) as f64 / MIB;
        step(&format!(
            "{} streams from {}: {:.0} MB/s, peak RSS {:.1} MiB",
            args.streams,
            s.name,
            t.mb_per_s(),
            multi_rss[k]
        ));
        multi.push(t);
    }
    pair.check_alive()?;

    // The same GETs with curl, the client users run.
    let mut curl_single: [Vec<f64>; 2] = [vec![], vec![]];
    for i in 0..args.runs {
        for k in Pair::order(i) {
            let s = &pair.servers[k];
            let url = s.base.join(&format!("/v2/{REPO}/blobs/{}", blob.digest))?;
            let t = tokio::task::spawn_blocking(move || users::curl_get(&url, size)).await??;
            step(&format!(
                "curl GET from {}: {:.0} MB/s",
                s.name,
                t.mb_per_s()
            ));
            curl_single[k].push(t.mb_per_s());
        }
    }
    let mut curl_multi = [0.0; 2];
    for k in Pair::order(1) {
        let s = &pair.servers[k];
        let url = s.base.join(&format!("/v2/{REPO}/blobs/{}", blob.digest))?;
        let t = users::curl_concurrently(&url, size, args.streams).await?;
        step(&format!(
            "{} curl GETs from {}: {:.0} MB/s",
            args.streams,
            s.name,
            t.mb_per_s()
        ));
        curl_multi[k] = t.mb_per_s();
    }
    pair.check_alive()?;

    // containerd pulling a single-layer image of the blob (a tar of it), fetch and unpack.
    let mut ctr_runs: [Vec<f64>; 2] = [vec![], vec![]];
    let mut ctr_note = None;
    if args.skip_ctr {
        ctr_note = Some("skipped (--skip-ctr)".to_string());
    } else {
        step("writing the single-layer image for ctr");
        let layer = {
            let (src, path) = (blob.clone(), tmp.path().join("layer.tar"));
            tokio::task::spawn_blocking(move || users::write_tar_layer(&src, &path)).await??
        };
        let ctr_config = users::image_config(&layer);
        let ctr_manifest = content::manifest_bytes(&ctr_config, &layer)?;
        for s in &pair.servers {
            client::upload_bytes(&client, &s.base, CTR_REPO, ctr_config.clone()).await?;
            client::upload_file(&client, &s.base, CTR_REPO, &layer).await?;
            client::put_manifest(&client, &s.base, CTR_REPO, TAG, ctr_manifest.clone()).await?;
        }
        std::fs::remove_file(&layer.path)?;
        let root = args.ctr_root.clone();
        let started = tokio::task::spawn_blocking(move || {
            manta_conformance::containerd::Containerd::start_under(&root)
        });
        match started.await? {
            Err(e) => ctr_note = Some(format!("not run: containerd did not start ({e:#})")),
            Ok(ctrd) => {
                let ctrd = std::sync::Arc::new(ctrd);
                // Run 0 warms containerd up (its first pull is slower, whichever registry).
                for i in 0..=args.runs {
                    for k in Pair::order(i) {
                        let s = &pair.servers[k];
                        let reference = format!("{}/{CTR_REPO}:{TAG}", s.base.authority());
                        let (c, ns) = (ctrd.clone(), format!("bench-{k}-{i}"));
                        let took = tokio::task::spawn_blocking(move || {
                            users::ctr_pull(&c, &ns, &reference)
                        })
                        .await??;
                        let rate = layer.size as f64 / 1e6 / took.as_secs_f64();
                        step(&format!(
                            "ctr images pull from {}: {:.0} MB/s",
                            s.name, rate
                        ));
                        if i > 0 {
                            ctr_runs[k].push(rate);
                        }
                    }
                }
            }
        }
    }
    pair.check_alive()?;

    // Manifest GETs by tag with wrk.
    let accept = content::MANIFEST_MEDIA_TYPE;
    let mut rps = [0.0; 2];
    let mut wrk_notes = vec![];
    for k in Pair::order(1) {
        let s = &pair.servers[k];
        let url = s.base.join(&format!("/v2/{REPO}/manifests/{TAG}"))?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let r = wrk::run(
            &url,
            accept,
            threads,
            args.wrk_connections,
            Duration::from_secs(args.wrk_secs),
        )
        .await?;
        step(&format!(
            "manifest GETs on {}: {:.0} req/s",
            s.name, r.requests_per_sec
        ));
        if let Some(e) = &r.socket_errors {
            wrk_notes.push(format!("{}: wrk reported `{e}`", s.name));
        }
        rps[k] = r.requests_per_sec;
    }
    pair.check_alive()?;
    let run_rss = [
        sampler.run_peak(pids[0]).unwrap_or(0) as f64 / MIB,
        sampler.run_peak(pids[1]).unwrap_or(0) as f64 / MIB,
    ];
    drop(sampler);

    let rows = vec![
        Row::new(
            format!(
                "GET {} MiB blob, 1 stream (median of {})",
                args.size_mib, args.runs
            ),
            "MB/s",
            median(single[0].clone()),
            median(single[1].clone()),
            Goal::RatioAtLeast(1.2),
        ),
        Row::new(
            format!(
                "GET {} MiB blob, {} concurrent streams (aggregate)",
                args.size_mib, args.streams
            ),
            "MB/s",
            multi[0].mb_per_s(),
            multi[1].mb_per_s(),
            Goal::RatioAtLeast(1.0),
        ),
        Row::new(
            format!(
                "GET {} MiB blob with curl, 1 stream (median of {})",
                args.size_mib, args.runs
            ),
            "MB/s",
            median(curl_single[0].clone()),
            median(curl_single[1].clone()),
            Goal::RatioAtLeast(1.2),
        ),
        Row::new(
            format!(
                "GET {} MiB blob with curl, {} concurrent streams (aggregate)",
                args.size_mib, args.streams
            ),
            "MB/s",
            curl_multi[0],
            curl_multi[1],
            Goal::RatioAtLeast(1.0),
        ),
        Row::new(
            format!(
                "`ctr images pull` of a {} MiB single-layer image, fetch + unpack (median of {})",
                args.size_mib, args.runs
            ),
            "MB/s",
            median(ctr_runs[0].clone()),
            median(ctr_runs[1].clone()),
            Goal::None,
        ),
        Row::new(
            format!("peak RSS during the {} streams", args.streams),
            "MiB",
            multi_rss[0],
            multi_rss[1],
            Goal::MantaBelow(64.0),
        ),
        Row::new(
            format!(
                "GET manifest by tag, {} connections (wrk, {} s)",
                args.wrk_connections, args.wrk_secs
            ),
            "req/s",
            rps[0],
            rps[1],
            Goal::RatioAtLeast(2.0),
        ),
        Row::new(
            format!(
                "upload {} MiB blob, POST + PUT (median of {})",
                args.size_mib, args.upload_runs
            ),
            "MB/s",
            median(uploads[0].clone()),
            median(uploads[1].clone()),
            Goal::RatioAtLeast(1.0),
        ),
        Row::new(
            "peak RSS over the whole run",
            "MiB",
            run_rss[0],
            run_rss[1],
            Goal::None,
        ),
    ];

    let mut md = String::new();
    md.push_str("# Manta vs docker-registry\n\n");
    let _ = writeln!(
        md,
        "- Manta: `{}` ({})\n- docker-registry: `{}` ({})\n- machine: {} CPUs (shared by client and servers), Linux {}\n- blob: {} MiB, pseudo-random; repo `{REPO}`, tag `{TAG}`; loopback HTTP/1.1\n",
        manta_bin.display(),
        command_version(&manta_bin),
        args.docker_registry_bin.display(),
        command_version(&args.docker_registry_bin),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        args.size_mib,
    );
    md.push_str(&report::table(&rows));
    md.push_str("\nMB/s = 10^6 bytes per second; ratio = Manta ÷ docker-registry (for RSS, lower is better).\n\n");
    md.push_str("Runs (MB/s, in the order they ran for each server):\n\n");
    let _ = writeln!(
        md,
        "- single stream: Manta {}; docker-registry {}",
        fmt_runs(&single[0]),
        fmt_runs(&single[1])
    );
    let _ = writeln!(
        md,
        "- curl, single stream: Manta {}; docker-registry {}",
        fmt_runs(&curl_single[0]),
        fmt_runs(&curl_single[1])
    );
    let _ = writeln!(
        md,
        "- ctr images pull: Manta {}; docker-registry {}",
        fmt_runs(&ctr_runs[0]),
        fmt_runs(&ctr_runs[1])
    );
    if let Some(n) = &ctr_note {
        let _ = writeln!(md, "- ctr images pull: {n}");
    }
    let _ = writeln!(
        md,
        "- upload: Manta {}; docker-registry {}",
        fmt_runs(&uploads[0]),
        fmt_runs(&uploads[1])
    );
    for n in &wrk_notes {
        let _ = writeln!(md, "- {n}");
    }

    crate::report::publish(&md, &args.out)?;
    step(&format!("report written to {}", args.out.display()));
    drop(pair);
    drop(tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn servers_alternate() {
        assert_eq!(Pair::order(0), [0, 1]);
        assert_eq!(Pair::order(1), [1, 0]);
    }
}
