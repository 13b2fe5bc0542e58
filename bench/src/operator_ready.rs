//! `kubectl apply` of a Torrent to Ready, against the prefetch of the same model on one node
//! alone: what the operator adds to getting a model onto nodes.
//!
//! Real: the agents (`manta serve`, release build), `manta-operator`, `kubectl` (apply, then
//! `kubectl wait` on the status), the Hugging Face fixture (rate-limited, so the fetch is what
//! takes time, as it does from the internet). The API server is the fake one
//! (conformance/src/kube_fake). One node alone is timed from `POST /manta/v1/prefetch` to the
//! job's end (followed with `?wait=`), and with the CLI a user runs, `manta prefetch`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use manta_conformance::hub_fixture::{FixtureOptions, HubFixture};
use manta_conformance::kube_fake::FakeApiServer;
use manta_conformance::server::MantaServer;
use serde_json::{json, Value};

use manta_conformance::process::kubectl;

use crate::report::{Goal, Row};

const REPO: &str = "bench/operator";
const TOKEN: &str = "operator-bench-token-0123456789";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Size of the model's weights file, in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// The hub's rate, in MiB/s.
    #[arg(long, default_value_t = 64)]
    hub_mib_s: u64,
    /// Nodes (agents) for the operator's runs.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the file and the agents' data go.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Where to write the markdown report (it is also printed on stdout).
    #[arg(long, default_value = "bench/results-operator.md")]
    out: PathBuf,
    #[command(flatten)]
    manta: crate::servers::MantaBinArgs,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
}

fn sibling_bin(name: &str) -> Result<PathBuf> {
    let p = std::env::current_exe()?
        .parent()
        .context("no parent directory")?
        .join(name);
    if !p.is_file() {
        bail!(
            "no {name} at {}: run `cargo build --release -p manta-operator` first",
            p.display()
        );
    }
    Ok(p)
}

fn free_port(ip: &str) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// One agent for the given node, with its cluster listener on `ip`.
fn agent(bin: &Path, dir: &Path, hub: &str, ip: &str, peers: Option<&str>) -> Result<MantaServer> {
    let port = free_port(ip)?;
    let token = dir.join("token");
    let cluster = format!("{ip}:{port}");
    let mut args = vec![
        "--hf-endpoint".to_string(),
        hub.to_string(),
        "--hf-token".into(),
        String::new(),
        "--cluster-listen".into(),
        cluster,
        "--cluster-token-file".into(),
        token.to_string_lossy().into_owned(),
        "--node-name".into(),
        ip.to_string(),
    ];
    if let Some(p) = peers {
        args.extend(["--peers".to_string(), p.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    MantaServer::spawn(bin, &dir.join(ip), &args)
}

/// The time a prefetch of the model takes on one fresh node: through the admin API, and with
/// `manta prefetch`.
async fn alone(bin: &Path, work: &Path, hub: &HubFixture) -> Result<(f64, f64)> {
    let mut times = Vec::new();
    for cli in [false, true] {
        let dir = tempfile::tempdir_in(work)?;
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n"))?;
        let a = agent(bin, dir.path(), &hub.url(), "127.0.40.1", None)?;
        let started = Instant::now();
        if cli {
            let out = Command::new(bin)
                .args([
                    "prefetch",
                    "--server",
                    &a.url(),
                    &format!("hf://{REPO}@main"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !out.success() {
                bail!("manta prefetch failed ({out})");
            }
        } else {
            let c = manta_api::Client::new(a.url().parse()?, None, None)?;
            let req = manta_api::PrefetchRequest {
                hub: manta_api::HubKind::Hf,
                repo: REPO.into(),
                revision: Some("main".into()),
                filter: Default::default(),
                forms: vec![],
            };
            let mut job = c.prefetch(&req).await?.value;
            while !job.state.is_ended() {
                job = c
                    .job_wait(&job.id, job.version, Duration::from_secs(30))
                    .await?
                    .value;
            }
            if job.state != manta_api::JobState::Succeeded {
                bail!("the prefetch failed: {:?}", job.error);
            }
        }
        times.push(started.elapsed().as_secs_f64());
    }
    Ok((times[0], times[1]))
}

/// `kubectl apply` of a Torrent with `replicas` to `kubectl wait` seeing it Ready, on `nodes`
/// fresh agents (peers among them when `peers`); seconds, and the hub's bytes.
async fn with_operator(
    bin: &Path,
    work: &Path,
    hub: &HubFixture,
    nodes: usize,
    replicas: usize,
    peers: bool,
) -> Result<(f64, u64)> {
    let dir = tempfile::tempdir_in(work)?;
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n"))?;
    let ips: Vec<String> = (1..=nodes).map(|i| format!("127.0.41.{i}")).collect();
    let mut agents = Vec::new();
    let mut addrs = Vec::new();
    // With peers, each agent's cluster port is picked first so that every one can list all.
    for ip in &ips {
        addrs.push(format!("{ip}:{}", free_port(ip)?));
    }
    let peer_list = addrs.join(",");
    for (ip, addr) in ips.iter().zip(&addrs) {
        let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or_default();
        let token = dir.path().join("token");
        let mut args = vec![
            "--hf-endpoint".to_string(),
            hub.url(),
            "--hf-token".into(),
            String::new(),
            "--cluster-listen".into(),
            format!("{ip}:{port}"),
            "--cluster-token-file".into(),
            token.to_string_lossy().into_owned(),
            "--node-name".into(),
            ip.clone(),
        ];
        if peers {
            args.extend(["--peers".to_string(), peer_list.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agents.push((
            ip.clone(),
            port.to_string(),
            MantaServer::spawn(bin, &dir.path().join(ip), &args)?,
        ));
    }
    let api = FakeApiServer::start().await?;
    let kc = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kc)?;
    let crd =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/manta/crds/torrents.manta.io.yaml");
    kubectl(&kc, &["apply", "-f", &crd.to_string_lossy()], None)?;
    for (i, (ip, port, _)) in agents.iter().enumerate() {
        let node = format!("node-{i}");
        let manifest = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
        kubectl(&kc, &["apply", "-f", "-"], Some(&manifest.to_string()))?;
        kubectl(
            &kc,
            &[
                "patch",
                "node",
                &node,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
            ],
            None,
        )?;
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("agent-{node}"), "namespace": "default",
                         "labels": {"app.kubernetes.io/name": "manta-agent"}},
            "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "manta",
                     "ports": [{"name": "cluster", "containerPort": port.parse::<u16>()?}]}]}});
        kubectl(&kc, &["apply", "-f", "-"], Some(&pod.to_string()))?;
        let status = json!({"status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}]}});
        kubectl(
            &kc,
            &[
                "patch",
                "pod",
                &format!("agent-{node}"),
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        )?;
    }
    let cfg = dir.path().join("operator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agents]\ntokenFile = \"{}\"\npollSeconds = 1\n",
            dir.path().join("token").display()
        ),
    )?;
    let log = std::fs::File::create(dir.path().join("operator.log"))?;
    let mut op = Command::new(sibling_bin("manta-operator")?)
        .arg("--config")
        .arg(&cfg)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &kc)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()?;
    // The operator's first poll of the agents.
    tokio::time::sleep(Duration::from_secs(3)).await;
    hub.reset_counters();
    let torrent = format!(
        "apiVersion: manta.io/v1alpha1\nkind: Torrent\nmetadata:\n  name: bench\nspec:\n  hub:\n    repoID: {REPO}\n  replicas: {replicas}\n"
    );
    let started = Instant::now();
    kubectl(&kc, &["apply", "-f", "-"], Some(&torrent))?;
    let waited = kubectl(
        &kc,
        &[
            "wait",
            "--for=jsonpath={.status.phase}=Ready",
            "torrent/bench",
            "--timeout=1200s",
        ],
        None,
    );
    let secs = started.elapsed().as_secs_f64();
    let _ = op.kill();
    let _ = op.wait();
    if let Err(e) = waited {
        let log = std::fs::read_to_string(dir.path().join("operator.log")).unwrap_or_default();
        bail!("{e}\noperator log:\n{log}");
    }
    let t: Value = serde_json::from_str(&kubectl(
        &kc,
        &["get", "torrent", "bench", "-o", "json"],
        None,
    )?)?;
    if t["status"]["readyNodes"] != format!("{replicas}/{replicas}") {
        bail!("not every node is ready: {}", t["status"]);
    }
    drop(agents);
    Ok((secs, hub.bytes_served()))
}

pub async fn run(args: Args) -> Result<()> {
    let bin = args.manta.resolve()?;
    let files = tempfile::tempdir_in(&args.work_dir)?;
    let (hub, size) = HubFixture::single_model(
        files.path(),
        REPO,
        args.size_mib << 20,
        FixtureOptions {
            rate_limit: Some(args.hub_mib_s << 20),
            ..FixtureOptions::default()
        },
    )?;
    eprintln!("one node alone…");
    let (api_alone, cli_alone) = alone(&bin, &args.work_dir, &hub).await?;
    eprintln!("operator, replicas 1…");
    let (one, one_bytes) = with_operator(&bin, &args.work_dir, &hub, args.nodes, 1, false).await?;
    eprintln!("operator, replicas {} with peers…", args.nodes);
    let (all, all_bytes) =
        with_operator(&bin, &args.work_dir, &hub, args.nodes, args.nodes, true).await?;
    let rows = [
        Row::new(
            "apply → Ready, replicas 1 ÷ admin API prefetch alone",
            "s",
            one,
            api_alone,
            Goal::RatioAtMost(1.1),
        ),
        Row::new(
            "apply → Ready, replicas 1 ÷ `manta prefetch` alone",
            "s",
            one,
            cli_alone,
            Goal::RatioAtMost(1.1),
        ),
        Row::new(
            format!(
                "apply → Ready, replicas {} (peers) ÷ admin API prefetch alone",
                args.nodes
            ),
            "s",
            all,
            api_alone,
            Goal::RatioAtMost(1.1),
        ),
        Row::new(
            "hub bytes, replicas 1",
            "MiB",
            one_bytes as f64 / (1 << 20) as f64,
            size as f64 / (1 << 20) as f64,
            Goal::RatioAtMost(1.0),
        ),
        Row::new(
            format!("hub bytes, replicas {} (peers)", args.nodes),
            "MiB",
            all_bytes as f64 / (1 << 20) as f64,
            size as f64 / (1 << 20) as f64,
            Goal::RatioAtMost(1.0),
        ),
    ];
    let mut s = format!(
        "## Operator: kubectl apply → Ready, {} MiB at {} MiB/s from the hub, load {}\n\n",
        args.size_mib,
        args.hub_mib_s,
        crate::report::loadavg()
    );
    s.push_str(&crate::report::table_with(&rows, "alone", "ratio"));
    s.push_str(&format!(
        "\nReproduce: `cargo build --release -p manta-registry -p manta-operator && cargo run --release -p manta-bench -- operator --size-mib {} --hub-mib-s {} --nodes {}`\n",
        args.size_mib, args.hub_mib_s, args.nodes
    ));
    drop(hub);
    crate::report::publish(&s, &args.out)
}
