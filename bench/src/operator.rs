//! The operator at scale: one Torrent over N nodes (fake agents answering the admin API), against
//! the fake Kubernetes API server, with the real reconciler. Measures each reconcile pass, the
//! status's size, and the operator's memory.
//!
//! What is real: the reconciler (`manta_operator::controller::reconcile`), its plugins, its
//! agent client (HTTP to N listeners), kube-rs talking HTTP to the fake API server (finalizer
//! patch, server-side apply of the status, events), and the reflectors fed by watches. What is
//! fake: the agents (each answers a prefetch with a job that has succeeded) and the API server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::CustomResourceExt;
use manta_conformance::fake_agent::{fake_agent, Behaviour, FakeAgent};
use manta_conformance::kube_fake::FakeApiServer;
use manta_operator::agents::Agents;
use manta_operator::controller::{reconcile, Context};
use manta_operator::crd::Torrent;
use manta_operator::inventory::Inventory;
use manta_operator::metrics::Metrics;
use manta_operator::plugins::{Framework, PluginConfig};
use serde_json::json;

use crate::report::{Goal, Row};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Nodes, each with a fake agent.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// The Torrent's `replicas`: a number, or `All`.
    #[arg(long, default_value = "All")]
    replicas: String,
    /// The model's size on one node, in MiB (what the fake agents report).
    #[arg(long, default_value_t = 15 * 1024)]
    size_mib: u64,
    /// The agents' jobs never end (every node stays in progress: the largest status).
    #[arg(long)]
    running: bool,
    /// Where to write the markdown report (it is also printed on stdout).
    #[arg(long, default_value = "bench/results-operator-scale.md")]
    out: std::path::PathBuf,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
}

/// One reconcile pass.
struct Pass {
    secs: f64,
    phase: String,
    ready: String,
    status_bytes: usize,
}

pub async fn run(args: Args) -> Result<()> {
    let replicas = match args.replicas.as_str() {
        "All" => json!("All"),
        n => json!(n.parse::<u32>().context("--replicas: a number or All")?),
    };
    let api = FakeApiServer::start().await?;
    let cfg = kube::Config::new(api.url().parse()?);
    let client = kube::Client::try_from(cfg)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Torrent::crd()).await?;

    eprintln!(
        "starting {} fake agents and their Nodes and Pods…",
        args.nodes
    );
    let size = args.size_mib << 20;
    let mut agents: Vec<FakeAgent> = Vec::with_capacity(args.nodes);
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..args.nodes {
        let behaviour = if args.running {
            Behaviour::Running(size)
        } else {
            Behaviour::Succeed(size)
        };
        let agent = fake_agent(behaviour, 4 * size).await?;
        let name = format!("node-{i:05}");
        let zone = format!("zone-{}", i % 3);
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone, "gpu": "true"}},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                ),
            )
            .await?;
        let pod_name = format!("agent-{name}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod_name, "labels": {"app.kubernetes.io/name": "manta-agent"}},
            "spec": {"nodeName": name, "containers": [{"name": "agent", "image": "manta",
                     "ports": [{"name": "cluster", "containerPort": agent.port}]}]},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
        pods.patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await?;
        agents.push(agent);
    }

    // The reflectors, fed by watches, as the operator runs them.
    let (node_store, node_writer) = reflector::store();
    let (pod_store, pod_writer) = reflector::store();
    let nodes_watch = reflector(
        node_writer,
        watcher(nodes.clone(), watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .touched_objects();
    let pods_watch = reflector(
        pod_writer,
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default()
                .labels("app.kubernetes.io/name=manta-agent")
                .any_semantic(),
        ),
    )
    .default_backoff()
    .touched_objects();
    use futures_util::StreamExt;
    tokio::spawn(nodes_watch.for_each(|_| async {}));
    tokio::spawn(pods_watch.for_each(|_| async {}));
    let deadline = Instant::now() + Duration::from_secs(120);
    while node_store.state().len() < args.nodes || pod_store.state().len() < args.nodes {
        if Instant::now() > deadline {
            bail!("the reflectors did not fill in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inventory = Inventory {
        nodes: node_store,
        pods: pod_store,
        states: Arc::default(),
        agent_port: 5001,
        fresh: Duration::from_secs(600),
    };
    let client_agents = Agents::new(None, Duration::from_secs(10));
    let polled = Instant::now();
    poll_once(&inventory, &client_agents).await;
    let poll_secs = polled.elapsed().as_secs_f64();

    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Arc::new(Context::new(
        client.clone(),
        client_agents.clone(),
        inventory.clone(),
        Framework::new(&PluginConfig::default())?,
        Metrics::new(&mut registry),
        "localhost:5000".into(),
    ));
    let torrents: Api<Torrent> = Api::all(client.clone());
    let t: Torrent = serde_json::from_value(json!({
        "apiVersion": "manta.io/v1alpha1", "kind": "Torrent",
        "metadata": {"name": "scale"},
        "spec": {"hub": {"repoID": "Org/Model"}, "replicas": replicas,
                 "nodeSelector": {"gpu": "true"}},
    }))?;
    torrents.create(&PostParams::default(), &t).await?;

    let mut passes = Vec::new();
    for _ in 0..8 {
        let t = torrents.get("scale").await?;
        let started = Instant::now();
        reconcile(Arc::new(t), ctx.clone())
            .await
            .map_err(|e| anyhow::anyhow!(manta_operator::controller::error_chain(&e)))?;
        let secs = started.elapsed().as_secs_f64();
        let t = torrents.get("scale").await?;
        let status = t.status.clone().unwrap_or_default();
        let phase = status
            .phase
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        passes.push(Pass {
            secs,
            phase: phase.clone(),
            ready: status.ready_nodes.clone().unwrap_or_default(),
            status_bytes: serde_json::to_vec(&serde_json::to_value(&t)?["status"])?.len(),
        });
        eprintln!("pass {}: {secs:.3} s, {phase}", passes.len());
        // What the background poll would have seen by the next pass.
        poll_once(&inventory, &client_agents).await;
        if passes.len() >= 5 && (phase == "Ready" || args.running) {
            break;
        }
    }
    let rss = crate::rss::status_field(std::process::id(), "VmHWM").unwrap_or(0);
    let prefetches: usize = agents.iter().map(|a| a.log().prefetches.len()).sum();
    let pinned = agents.iter().filter(|a| !a.log().pins.is_empty()).count();
    drop(agents);
    api.shutdown().await;
    let report = report(&args, &passes, poll_secs, rss, prefetches, pinned);
    crate::report::publish(&report, &args.out)
}

async fn poll_once(inv: &Inventory, agents: &Agents) {
    use futures_util::StreamExt;
    let urls: Vec<String> = inv.agents().into_values().map(|(_, u, _)| u).collect();
    let reports = futures_util::stream::iter(urls)
        .map(|u| async move {
            let r = agents.report(&u).await.ok();
            (u, r)
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for (u, r) in reports {
        inv.states.set(&u, r, inv.fresh);
    }
    inv.states.mark_synced();
}

fn report(
    args: &Args,
    passes: &[Pass],
    poll_secs: f64,
    rss: u64,
    prefetches: usize,
    pinned: usize,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## Operator at scale: {} nodes, replicas {}{}, load {}\n",
        args.nodes,
        args.replicas,
        if args.running {
            ", jobs that never end"
        } else {
            ""
        },
        crate::report::loadavg()
    );
    let _ = writeln!(s, "| pass | ms | phase | ready | status bytes |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (i, p) in passes.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} | {} | {} |",
            i + 1,
            p.secs * 1000.0,
            p.phase,
            p.ready,
            p.status_bytes
        );
    }
    let worst = passes.iter().map(|p| p.secs).fold(0.0, f64::max);
    let biggest = passes.iter().map(|p| p.status_bytes).max().unwrap_or(0);
    let steady = passes.last().map(|p| p.secs).unwrap_or(f64::NAN);
    let rows = [
        Row::new(
            "slowest reconcile pass",
            "ms",
            worst * 1000.0,
            f64::NAN,
            Goal::MantaBelow(1000.0),
        ),
        Row::new(
            "last pass (steady state)",
            "ms",
            steady * 1000.0,
            f64::NAN,
            Goal::MantaBelow(1000.0),
        ),
        Row::new(
            "largest status",
            "KiB",
            biggest as f64 / 1024.0,
            f64::NAN,
            Goal::MantaBelow(64.0),
        ),
        Row::new(
            "one poll of every agent",
            "ms",
            poll_secs * 1000.0,
            f64::NAN,
            Goal::None,
        ),
        Row::new(
            "peak RSS (bench process: operator + fake agents + API server)",
            "MiB",
            rss as f64 / (1 << 20) as f64,
            f64::NAN,
            Goal::None,
        ),
    ];
    let _ = writeln!(s);
    s.push_str(&crate::report::table_with(&rows, "—", "—"));
    let _ = writeln!(
        s,
        "\nPrefetches asked of the agents: {prefetches}; nodes pinned: {pinned}.\n\n\
         Reproduce: `cargo run --release -p manta-bench -- operator-scale --nodes {} --replicas {}{}`",
        args.nodes,
        args.replicas,
        if args.running { " --running" } else { "" }
    );
    s
}
