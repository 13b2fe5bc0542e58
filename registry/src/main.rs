//! `manta`: the node agent's command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use manta_registry::api::Limits;
use manta_registry::server::{ServeConfig, Server};

/// Manta: a P2P-backed, OCI-compatible pull-through cache for model distribution on Kubernetes.
#[derive(Parser)]
#[command(name = "manta", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr (levels come from RUST_LOG, default "info").
    #[arg(
        long,
        global = true,
        env = "MANTA_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: an OCI distribution endpoint over the local content store.
    Serve(ServeArgs),
    /// Point containerd or CRI-O at Manta as a registry mirror (hosts.toml files or a
    /// registries.conf drop-in; --restore undoes it).
    MirrorConfig(manta_registry::mirror_config::Args),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed on stdout).
    #[arg(long, env = "MANTA_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Where blobs, temp files and the index live [default: $XDG_DATA_HOME/manta, else ~/.local/share/manta].
    #[arg(long, env = "MANTA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest manifest accepted on PUT, in bytes (larger ones get 413).
    #[arg(long, env = "MANTA_MAX_MANIFEST_BYTES", default_value_t = 4 << 20)]
    max_manifest_bytes: u64,
    /// Configuration file (TOML) for what flags cannot hold: upstream registries, aliases,
    /// credentials (see docs/upstream.md).
    #[arg(long, env = "MANTA_CONFIG")]
    config: Option<PathBuf>,
    /// Purge an upload session (and its bytes) after this many seconds without a chunk.
    #[arg(long, env = "MANTA_UPLOAD_TTL_SECS", default_value_t = 24 * 3600)]
    upload_ttl_secs: u64,
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("manta"));
    }
    let home = std::env::var_os("HOME")
        .context("neither --data-dir, MANTA_DATA_DIR, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/manta"))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => default_data_dir()?,
    };
    let file = match &args.config {
        Some(p) => manta_registry::upstream::FileConfig::load(p)?,
        None => Default::default(),
    };
    let cfg = ServeConfig {
        upstream: file.upstream,
        listen: args.listen,
        data_dir,
        limits: Limits {
            max_manifest_bytes: args.max_manifest_bytes,
            upload_ttl: std::time::Duration::from_secs(args.upload_ttl_secs),
        },
    };
    let server = Server::bind(cfg, prometheus_client::registry::Registry::default()).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("manta listening on http://{addr}");
    server.run(shutdown_signal()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::MirrorConfig(args) => {
            manta_registry::mirror_config::run(args, &mut std::io::stdout()).map_err(Into::into)
        }
    }
}
