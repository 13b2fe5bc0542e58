//! `manta-operator`: reconciles Torrents into prefetches and pins on chosen nodes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::response::IntoResponse;
use clap::Parser;
use manta_operator::config::Config;
use manta_operator::inventory::AgentStates;
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
    let listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = axum::Router::new()
        .route("/livez", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let states = ready.clone();
                async move {
                    if states.synced() {
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
    manta_operator::controller::run(client, cfg, metrics, states).await?;
    Ok(())
}
