//! `manta-bench peers`: N agents, each in a network namespace of its own behind a rate-limited
//! link, pull one model file cold at the same moment from the Hugging Face fixture (the origin,
//! at a fraction of a link's rate), each through its own loopback endpoint with `curl`.
//! Measured with peers on and off, and one node alone:
//!
//! - origin bytes ÷ file size (goal ≤ 1.05 with peers);
//! - time until the last node has the file ÷ time for one node alone (goal ≤ 1.3);
//! - per agent: peak RSS, CPU seconds, and the CPU share of the run (to show the links, not the
//!   two cores, are the bound).
//!
//! The topology: a bridge `mb0` (10.77.0.254/24, the origin listens there) and, per node, a
//! namespace `mb<i>` joined to it by a veth pair, with a `tbf` qdisc on both ends (the
//! namespace's end limits its upload, the bridge's end its download). Everything is removed at
//! the end, and before the start if a previous run left it. Needs root and iproute2.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use manta_conformance::hub_fixture::{
    synthetic_safetensors_with_sha256, FixtureFile, FixtureOptions, FixtureRepo, HubFixture,
};
use manta_conformance::server::MantaServer;

use crate::rss;

const BRIDGE: &str = "mb0";
const BRIDGE_IP: &str = "10.77.0.254";
const REPO: &str = "bench/swarm";
const CLUSTER_PORT: u16 = 5001;
const TOKEN: &str = "bench-peers-token-0123456789";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Agents, each in its own network namespace.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Size of the model file, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Each node's link, in Mbit/s (upload and download each).
    #[arg(long, default_value_t = 200)]
    link_mbit: u64,
    /// The origin's rate, in Mbit/s [default: half a link].
    #[arg(long)]
    origin_mbit: Option<u64>,
    /// Skip the run with peers off (every node from the origin: slow by design).
    #[arg(long)]
    skip_off: bool,
    /// After the pull with peers, cut every holder's upload to 1/N of its link and time one
    /// more node pulling the file from them (pieces from several holders at once). 0: skip.
    #[arg(long, default_value_t = 4)]
    late_share: u64,
    /// One more argument for every agent (repeat it): `--agent-arg=--peer-stripes=1` reads
    /// blobs as one pipeline, `--agent-arg=--peer-stripe-min-nodes=8` in stripes from 8 nodes.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Where the file and the agents' data go.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Where to write the markdown report (it is also printed on stdout).
    #[arg(long, default_value = "bench/results-peers.md")]
    out: PathBuf,
    #[command(flatten)]
    manta: crate::servers::MantaBinArgs,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub timeout_secs: u64,
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {args:?}"))?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The bridge and the namespaces; removed on drop.
struct Net {
    nodes: usize,
}

impl Net {
    fn ns(i: usize) -> String {
        format!("mb{i}")
    }

    fn ip(i: usize) -> String {
        format!("10.77.0.{}", i + 1)
    }

    fn create(nodes: usize, link_mbit: u64) -> Result<Self> {
        Self::remove(nodes + 8);
        let net = Self { nodes };
        sh(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{BRIDGE_IP}/24"),
            "dev",
            BRIDGE,
        ])?;
        sh(&["ip", "link", "set", BRIDGE, "up"])?;
        let rate = format!("{link_mbit}mbit");
        // A burst of ~10 ms of traffic (at least 64 KiB), a queue of at most 50 ms.
        let burst = format!("{}", (link_mbit * 1_000_000 / 8 / 100).max(64 << 10));
        for i in 0..nodes {
            let (ns, veth) = (Self::ns(i), format!("mbv{i}"));
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            sh(&["ip", "link", "set", &veth, "master", BRIDGE, "up"])?;
            let inside = |args: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", &ns];
                v.extend(args);
                sh(&v)
            };
            inside(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", Self::ip(i)),
                "dev",
                "eth0",
            ])?;
            inside(&["ip", "link", "set", "eth0", "up"])?;
            inside(&["ip", "link", "set", "lo", "up"])?;
            // Upload: the namespace's end; download: the bridge's end.
            inside(&[
                "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", &burst,
                "latency", "50ms",
            ])?;
            sh(&[
                "tc", "qdisc", "add", "dev", &veth, "root", "tbf", "rate", &rate, "burst", &burst,
                "latency", "50ms",
            ])?;
        }
        Ok(net)
    }

    /// Remove what a run (this one, or an earlier one that died) created.
    fn remove(nodes: usize) {
        for i in 0..nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &Self::ns(i)])
                .output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("mbv{i}")])
                .output();
        }
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Self::remove(self.nodes);
    }
}

/// One run's figures.
struct Run {
    /// Seconds from the start until each node had the whole file.
    times: Vec<f64>,
    origin_bytes: u64,
    /// Per agent: peak RSS (bytes) and CPU seconds.
    rss: Vec<u64>,
    cpu: Vec<f64>,
    /// Fetches that read the blob in stripes.
    striped: u64,
    late: Option<Late>,
}

/// One more node, pulling from the holders once their uploads were cut.
struct Late {
    secs: f64,
    origin_bytes: u64,
    /// Bytes each holder uploaded meanwhile.
    uploaded: Vec<u64>,
    rss: u64,
}

impl Run {
    fn last(&self) -> f64 {
        self.times.iter().copied().fold(0.0, f64::max)
    }
}

/// Start `n` agents (peers on or off), have each `curl` the file at once, and measure.
#[allow(clippy::too_many_arguments)]
async fn run_once(
    bin: &Path,
    work: &Path,
    hub: &HubFixture,
    n: usize,
    peers: bool,
    digest: &str,
    size: u64,
    late: Option<(u64, u64)>,
    extra: &[String],
) -> Result<Run> {
    let dir = tempfile::tempdir_in(work)?;
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    let members: Vec<String> = (0..n)
        .map(|i| format!("{}:{CLUSTER_PORT}", Net::ip(i)))
        .collect();
    let members = members.join(",");
    let hub_url = hub.url();
    let mut agents = Vec::new();
    for i in 0..n {
        let ns = Net::ns(i);
        let cluster = format!("{}:{CLUSTER_PORT}", Net::ip(i));
        let name = format!("node-{i}");
        let token_s = token.to_string_lossy().into_owned();
        let mut args = vec![
            "--hf-endpoint",
            &hub_url,
            "--hf-token",
            "",
            "--cluster-listen",
            &cluster,
            "--cluster-token-file",
            &token_s,
            "--node-name",
            &name,
        ];
        if peers {
            args.extend(["--peers", &members]);
        }
        args.extend(extra.iter().map(String::as_str));
        let a = MantaServer::spawn_under(
            &["ip", "netns", "exec", &ns],
            bin,
            &dir.path().join(format!("node{i}")),
            &args,
        )?;
        agents.push(a);
    }
    // Peers must have found each other before the pull (as a DaemonSet's would have).
    if peers {
        for (i, a) in agents.iter().enumerate() {
            wait_formed(&Net::ns(i), a.addr(), n).await?;
        }
    }
    // Each resolves the revision (metadata), then all pull at once.
    for (i, a) in agents.iter().enumerate() {
        curl(
            &Net::ns(i),
            &format!("http://{}/v2/hf-raw/{REPO}/manifests/main", a.addr()),
            true,
        )
        .await?;
    }
    let before = hub.bytes_served();
    let cpu0: Vec<f64> = agents
        .iter()
        .map(|a| a.pid().and_then(rss::cpu_seconds).unwrap_or(0.0))
        .collect();
    let start = Instant::now();
    let pulls = agents.iter().enumerate().map(|(i, a)| {
        let url = format!("http://{}/v2/hf-raw/{REPO}/blobs/{digest}", a.addr());
        let ns = Net::ns(i);
        async move {
            let got = curl_size(&ns, &url).await?;
            ensure!(got == size, "node {i} got {got} bytes of {size}");
            Ok::<f64, anyhow::Error>(start.elapsed().as_secs_f64())
        }
    });
    let times = futures_util::future::try_join_all(pulls).await?;
    let origin_bytes = hub.bytes_served() - before;
    let rss: Vec<u64> = agents
        .iter()
        .map(|a| {
            a.pid()
                .and_then(|p| rss::status_field(p, "VmHWM"))
                .unwrap_or(0)
        })
        .collect();
    let cpu: Vec<f64> = agents
        .iter()
        .zip(&cpu0)
        .map(|(a, c0)| a.pid().and_then(rss::cpu_seconds).unwrap_or(0.0) - c0)
        .collect();
    let mut striped = 0;
    for (i, a) in agents.iter().enumerate() {
        striped += metric(&Net::ns(i), a.addr(), "manta_peer_striped_fetches_total").await? as u64;
    }
    let late = match late {
        Some((link_mbit, share)) if peers => {
            let holders: Vec<String> = agents.iter().map(|a| a.addr().to_string()).collect();
            let a = Late::spawn(
                bin,
                dir.path(),
                &hub_url,
                &token.to_string_lossy(),
                n,
                &members,
                extra,
            )?;
            Some(Late::run(a, hub, &holders, n, link_mbit, share, digest, size).await?)
        }
        _ => None,
    };
    drop(agents);
    // MANTA_BENCH_KEEP=1 keeps the agents' data and logs (`node<i>.log`) to read afterwards.
    if std::env::var_os("MANTA_BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
    Ok(Run {
        times,
        origin_bytes,
        rss,
        cpu,
        striped,
        late,
    })
}

impl Late {
    /// The extra agent, in namespace `n`, listing the `n` holders and itself.
    fn spawn(
        bin: &Path,
        dir: &Path,
        hub_url: &str,
        token: &str,
        n: usize,
        members: &str,
        extra: &[String],
    ) -> Result<MantaServer> {
        let cluster = format!("{}:{CLUSTER_PORT}", Net::ip(n));
        let members = format!("{members},{cluster}");
        let mut args = vec![
            "--hf-endpoint",
            hub_url,
            "--hf-token",
            "",
            "--cluster-listen",
            &cluster,
            "--cluster-token-file",
            token,
            "--node-name",
            "late",
            "--peers",
            &members,
        ];
        args.extend(extra.iter().map(String::as_str));
        MantaServer::spawn_under(
            &["ip", "netns", "exec", &Net::ns(n)],
            bin,
            &dir.join("late"),
            &args,
        )
    }

    /// Cut each holder's upload to 1/`share` of its link, then pull the file on `a`.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        a: MantaServer,
        hub: &HubFixture,
        holders: &[String],
        n: usize,
        link_mbit: u64,
        share: u64,
        digest: &str,
        size: u64,
    ) -> Result<Late> {
        let rate = format!("{}mbit", (link_mbit / share).max(1));
        let burst = format!("{}", (link_mbit * 1_000_000 / 8 / 100).max(64 << 10));
        for i in 0..n {
            sh(&[
                "ip",
                "netns",
                "exec",
                &Net::ns(i),
                "tc",
                "qdisc",
                "change",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                &rate,
                "burst",
                &burst,
                "latency",
                "50ms",
            ])?;
        }
        let ns = Net::ns(n);
        wait_formed(&ns, a.addr(), n + 1).await?;
        curl(
            &ns,
            &format!("http://{}/v2/hf-raw/{REPO}/manifests/main", a.addr()),
            true,
        )
        .await?;
        let mut up0 = Vec::new();
        for (i, h) in holders.iter().enumerate() {
            up0.push(uploaded(&Net::ns(i), h).await?);
        }
        let before = hub.bytes_served();
        let start = Instant::now();
        let url = format!("http://{}/v2/hf-raw/{REPO}/blobs/{digest}", a.addr());
        let got = curl_size(&ns, &url).await?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(got == size, "the late node got {got} bytes of {size}");
        let origin_bytes = hub.bytes_served() - before;
        let mut up = Vec::new();
        for (i, h) in holders.iter().enumerate() {
            up.push(uploaded(&Net::ns(i), h).await? - up0[i]);
        }
        let rss = a
            .pid()
            .and_then(|p| rss::status_field(p, "VmHWM"))
            .unwrap_or(0);
        Ok(Late {
            secs,
            origin_bytes,
            uploaded: up,
            rss,
        })
    }
}

/// `manta_peer_uploaded_bytes_total` of the agent at `addr` in `ns`.
async fn uploaded(ns: &str, addr: &str) -> Result<u64> {
    Ok(metric(ns, addr, "manta_peer_uploaded_bytes_total").await? as u64)
}

/// The unlabelled series `name` of the agent at `addr` in `ns` (0 when absent).
async fn metric(ns: &str, addr: &str, name: &str) -> Result<f64> {
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sf"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .await?;
    ensure!(out.status.success(), "metrics of {addr}: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0))
}

/// `curl` inside namespace `ns`; the body is dropped. `manifest` asks for a manifest.
async fn curl(ns: &str, url: &str, manifest: bool) -> Result<()> {
    let mut c = tokio::process::Command::new("ip");
    c.args(["netns", "exec", ns, "curl", "-sf", "-o", "/dev/null"]);
    if manifest {
        c.args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"]);
    }
    let st = c.arg(url).status().await?;
    ensure!(st.success(), "curl {url} in {ns}: {st}");
    Ok(())
}

/// `curl` a blob inside `ns`; the bytes received.
async fn curl_size(ns: &str, url: &str) -> Result<u64> {
    let out = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            url,
        ])
        .output()
        .await?;
    ensure!(out.status.success(), "curl {url} in {ns}: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// Wait until the agent in `ns` has found itself and sees `n` healthy members.
async fn wait_formed(ns: &str, addr: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sf"])
            .arg(format!("http://{addr}/manta/v1/peer/status"))
            .output()
            .await?;
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            let healthy = v["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["healthy"] == true).count());
            if v["addr"].is_string() && healthy == n {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the agent in {ns} did not find its {n} peers in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: Args) -> Result<()> {
    ensure!(args.nodes >= 2, "--nodes must be at least 2");
    let bin = args.manta.resolve()?;
    let origin_mbit = args.origin_mbit.unwrap_or(args.link_mbit / 2);
    let file_dir = tempfile::tempdir_in(&args.work_dir)?;
    let (path, sha) = {
        let dir = file_dir.path().to_path_buf();
        let size = args.size_mib << 20;
        tokio::task::spawn_blocking(move || synthetic_safetensors_with_sha256(&dir, size)).await??
    };
    let size = std::fs::metadata(&path)?.len();
    let digest = format!("sha256:{sha}");
    // One namespace more for the late node.
    let net = Net::create(args.nodes + 1, args.link_mbit)?;
    let hub = HubFixture::start(
        vec![FixtureRepo::with_main(
            REPO,
            vec![FixtureFile::disk("model.safetensors", &path)
                .lfs()
                .with_sha256(&sha)],
        )],
        FixtureOptions {
            rate_limit: Some(origin_mbit * 1_000_000 / 8),
            bind: BRIDGE_IP.parse()?,
            ..FixtureOptions::default()
        },
    )?;
    let work = args.work_dir.clone();
    eprintln!("one node alone…");
    let extra = &args.agent_args;
    let alone = run_once(&bin, &work, &hub, 1, false, &digest, size, None, extra).await?;
    eprintln!("{} nodes with peers…", args.nodes);
    let late = (args.late_share > 0).then_some((args.link_mbit, args.late_share));
    let with = run_once(
        &bin, &work, &hub, args.nodes, true, &digest, size, late, extra,
    )
    .await?;
    let off = if args.skip_off {
        None
    } else {
        eprintln!("{} nodes with peers off…", args.nodes);
        Some(
            run_once(
                &bin, &work, &hub, args.nodes, false, &digest, size, None, extra,
            )
            .await?,
        )
    };
    drop(hub);
    drop(net);
    let report = report(&args, origin_mbit, size, &alone, &with, off.as_ref());
    print!("{report}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, report)?;
    Ok(())
}

fn report(
    args: &Args,
    origin_mbit: u64,
    size: u64,
    alone: &Run,
    with: &Run,
    off: Option<&Run>,
) -> String {
    use std::fmt::Write as _;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Peers: {} nodes, {:.0} MiB, {} Mbit/s links, origin {} Mbit/s\n",
        args.nodes,
        mib(size),
        args.link_mbit,
        origin_mbit
    );
    let _ = writeln!(
        s,
        "| run | last node done (s) | ÷ one node alone (goal ≤ 1.3 with peers) | origin bytes ÷ size (goal ≤ 1.05) | peak RSS per agent, max (MiB) | CPU per agent, max (% of one core) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let mut row = |name: &str, r: &Run| {
        let cpu = r.cpu.iter().copied().fold(0.0, f64::max) / r.last().max(1e-9) * 100.0;
        let _ = writeln!(
            s,
            "| {name} | {:.1} | {:.2} | {:.3} | {:.1} | {:.0} |",
            r.last(),
            r.last() / alone.last(),
            r.origin_bytes as f64 / size as f64,
            mib(r.rss.iter().copied().max().unwrap_or(0)),
            cpu
        );
    };
    row("one node alone", alone);
    row("all nodes, peers on", with);
    if let Some(off) = off {
        row("all nodes, peers off", off);
    }
    let total_cpu: f64 = with.cpu.iter().sum();
    let _ = writeln!(
        s,
        "\nWith peers, the agents used {total_cpu:.1} CPU seconds together over {:.1} s: {:.0}% of the machine's 2 cores.",
        with.last(),
        total_cpu / (2.0 * with.last()) * 100.0
    );
    let _ = writeln!(
        s,
        "Fetches that read the blob in stripes: {} of {}.",
        with.striped,
        with.times.len()
    );
    let mut times = with.times.clone();
    times.sort_by(f64::total_cmp);
    let _ = writeln!(
        s,
        "Completion times with peers (s): {}",
        times
            .iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(l) = &with.late {
        let share = args.late_share;
        let _ = writeln!(
            s,
            "\n### A late node, with every holder's upload cut to 1/{share} of its link\n\n\
             | late node done (s) | ÷ one node alone | ÷ its own link's time (S/B) | one holder alone would take (s) | origin bytes | holders that sent a piece or more | peak RSS (MiB) |\n\
             |---|---|---|---|---|---|---|\n\
             | {:.1} | {:.2} | {:.2} | {:.1} | {} | {} of {} | {:.1} |",
            l.secs,
            l.secs / alone.last(),
            l.secs / (size as f64 * 8.0 / (args.link_mbit as f64 * 1e6)),
            size as f64 * 8.0 / ((args.link_mbit / share).max(1) as f64 * 1e6),
            l.origin_bytes,
            l.uploaded.iter().filter(|b| **b >= 4 << 20).count(),
            l.uploaded.len(),
            mib(l.rss),
        );
        let _ = writeln!(
            s,
            "Bytes each holder sent (MiB): {}",
            l.uploaded
                .iter()
                .map(|b| format!("{:.0}", mib(*b)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\nCommand: `manta-bench peers --nodes {} --size-mib {} --link-mbit {} --origin-mbit {origin_mbit} --late-share {}{}` (root; iproute2 and curl).",
        args.nodes,
        args.size_mib,
        args.link_mbit,
        args.late_share,
        args.agent_args
            .iter()
            .map(|a| format!(" --agent-arg={a}"))
            .collect::<String>()
    );
    s
}
