//! `manta-operator`: reconciles Torrents into prefetches and pins on chosen nodes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::response::IntoResponse;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use manta_operator::config::Config;
use manta_operator::inventory::AgentStates;
use manta_operator::leader::{Candidate, LeaderConfig};
use manta_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "manta-operator", version, about)]
struct Args {
    /// The configuration file (TOML: agents, plugins and their weights).
    #[arg(long, env = "MANTA_OPERATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Where `/metrics`, `/livez` and `/readyz` listen.
    #[arg(
        long,
        env = "MANTA_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    metrics_listen: SocketAddr,
    /// Log as JSON lines.
    #[arg(long, env = "MANTA_LOG_JSON")]
    log_json: bool,
    /// Act only while holding a Lease, so that several replicas can run with one acting
    /// (the others stand by and take over when it stops or stops renewing).
    #[arg(long, env = "MANTA_OPERATOR_LEADER_ELECTION")]
    leader_election: bool,
    /// The Lease's namespace (the pod's own, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", required_if_eq("leader_election", "true"))]
    leader_election_namespace: Option<String>,
    /// The Lease's name.
    #[arg(long, env = "MANTA_OPERATOR_LEASE", default_value = "manta-operator")]
    leader_election_lease: String,
}

/// This candidate's identity: the pod's name (else the host's), made unique per process.
fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "manta-operator".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{base}_{:08x}", nanos ^ std::process::id())
}

/// How long the controller may take to stop after SIGTERM (its reconciles finish first; it
/// waits for nothing else, but a watch that never listed would hold it).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// Run the controller until it stops by itself after a signal, or `STOP_GRACE` after one.
async fn stoppable(
    run: impl std::future::Future<Output = Result<(), manta_operator::Error>>,
) -> anyhow::Result<()> {
    tokio::select! {
        r = run => Ok(r?),
        _ = async { signalled().await; tokio::time::sleep(STOP_GRACE).await } => {
            tracing::warn!("the controller did not stop within {STOP_GRACE:?} of the signal: stopping now");
            Ok(())
        }
    }
}

async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let client = kube::Client::try_default().await?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let registry = Arc::new(registry);
    let states: Arc<AgentStates> = Arc::default();
    let ready = states.clone();
    // With leader election, a standby is ready while it can read the Lease (it could take
    // over): readiness must not hold a rollout back on the replicas that do not lead.
    let leading = Arc::new(std::sync::atomic::AtomicBool::new(!args.leader_election));
    let is_leading = leading.clone();
    // The standby's Lease readability, once a candidate exists.
    type Readable = Arc<std::sync::Mutex<Option<Arc<std::sync::atomic::AtomicBool>>>>;
    let lease_readable: Readable = Arc::default();
    let lease_readable_probe = lease_readable.clone();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = axum::Router::new()
        .route("/livez", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let states = ready.clone();
                let leading = is_leading.clone();
                let readable = lease_readable_probe
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                async move {
                    if !leading.load(std::sync::atomic::Ordering::Acquire) {
                        // A standby is ready while it can read the Lease (it could take over).
                        if readable.is_some_and(|r| r.load(std::sync::atomic::Ordering::Acquire)) {
                            (axum::http::StatusCode::OK, "standby")
                        } else {
                            (
                                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                                "standing by, but cannot read the lease",
                            )
                        }
                    } else if states.synced() {
                        (axum::http::StatusCode::OK, "ok")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "the node, pod and agent inventories are filling",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        )
                            .into_response(),
                        Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                    }
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let Some(ns) = args
        .leader_election_namespace
        .filter(|_| args.leader_election)
    else {
        return stoppable(manta_operator::controller::run(
            client, cfg, metrics, states,
        ))
        .await;
    };
    let le = LeaderConfig::new(ns.clone(), args.leader_election_lease, identity());
    let mut candidate = Candidate::new(Api::<Lease>::namespaced(client.clone(), &ns), le);
    *lease_readable.lock().unwrap_or_else(|p| p.into_inner()) = Some(candidate.readable());
    tokio::select! {
        _ = candidate.acquire() => {}
        _ = signalled() => return Ok(()),
    }
    leading.store(true, std::sync::atomic::Ordering::Release);
    let mut holder = Candidate::new(
        Api::<Lease>::namespaced(client.clone(), &ns),
        candidate.config().clone(),
    );
    tokio::select! {
        // Returns on SIGTERM/SIGINT: give the lease up for a standby to take at once.
        r = stoppable(manta_operator::controller::run(client, cfg, metrics, states)) => {
            candidate.release().await;
            r?;
        }
        // Another may lead now: stop acting at once; the pod restarts as a candidate.
        _ = holder.hold() => {
            std::process::exit(1);
        }
    }
    Ok(())
}
