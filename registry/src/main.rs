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
    /// Ask the agent to fetch a Hugging Face or ModelScope repo (hf://org/name[@revision]) into its
    /// cache and follow the job; prints the OCI references it serves the repo as.
    Prefetch(manta_registry::cli::PrefetchArgs),
    /// Show the agent's cache: space used, hub repo revisions, and every entry eviction can remove
    /// (size, last access, pins).
    Ls(manta_registry::cli::LsArgs),
    /// Remove a repo revision, tag, manifest or blob from the agent's cache now (pinned ones are
    /// refused); prints what was freed.
    Rm(manta_registry::cli::RmArgs),
    /// Evict the least recently used cache content now (down to the low watermark, or --free);
    /// prints each evicted entry and the total freed.
    Gc(manta_registry::cli::GcArgs),
    /// List the pins: named targets the agent never evicts.
    Pins(manta_registry::cli::PinsArgs),
    /// Create or replace a pin on a hub repo (hf://org/name[@revision]) or a reference in the
    /// agent's registry; it protects what is cached now and what is fetched later.
    Pin(manta_registry::cli::PinArgs),
    /// Remove a pin (--reclaim delete also removes what only it protected).
    Unpin(manta_registry::cli::UnpinArgs),
    /// Re-hash every blob in the agent's cache; exits with 1 if any is corrupt or missing.
    Verify(manta_registry::cli::VerifyArgs),
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
    /// Hugging Face endpoint that `hf/…` and `hf-raw/…` repositories (and the /hf facade) fetch from.
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    hf_endpoint: String,
    /// Hugging Face token, for gated and private repos (never logged, never sent to another host).
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    hf_token: Option<String>,
    /// ModelScope endpoint for `ms/…` and `ms-raw/…` repositories.
    #[arg(
        long,
        env = "MODELSCOPE_ENDPOINT",
        default_value = "https://www.modelscope.cn"
    )]
    ms_endpoint: String,
    /// ModelScope token.
    #[arg(long, env = "MODELSCOPE_API_TOKEN", hide_env_values = true)]
    ms_token: Option<String>,
    /// Seconds a branch's resolution to a commit is trusted before the hub is asked again (a
    /// commit is never re-resolved).
    #[arg(long, env = "MANTA_HUB_REVISION_TTL_SECS", default_value_t = 300)]
    hub_revision_ttl_secs: u64,
    /// Seconds a hub request may wait for an answer, or a download may stall.
    #[arg(long, env = "MANTA_HUB_TIMEOUT_SECS", default_value_t = 30)]
    hub_timeout_secs: u64,
    /// Platforms the image form of a model is offered for, comma-separated (`linux/amd64,linux/arm64`).
    /// One platform gives a manifest, several an index; give every node the same list so that
    /// digests agree across the cluster [default: this node's platform].
    #[arg(long, env = "MANTA_IMAGE_PLATFORMS", value_delimiter = ',')]
    image_platforms: Vec<String>,
    /// Most the cache may hold: bytes (`500GiB`, `1.5TB`, `1073741824`) or a share of the
    /// filesystem holding the data directory (`80%`). Pushed content counts, but is never evicted.
    #[arg(long, env = "MANTA_CAPACITY", default_value = "90%")]
    capacity: manta_registry::store::Capacity,
    /// Background eviction starts when the cache holds more than this share of its capacity (%)...
    #[arg(long, env = "MANTA_HIGH_WATERMARK", default_value_t = 85.0)]
    high_watermark: f64,
    /// ...and evicts least recently used content down to this share (%).
    #[arg(long, env = "MANTA_LOW_WATERMARK", default_value_t = 70.0)]
    low_watermark: f64,
    /// Content used less than this many seconds ago is not evicted, so that a burst of new
    /// models cannot churn the whole cache (a download that cannot fit then fails instead).
    #[arg(long, env = "MANTA_EVICT_MIN_AGE_SECS", default_value_t = 300)]
    evict_min_age_secs: u64,
    /// Re-hash blobs on disk in the background at this many bytes per second (`50MiB`); 0: off.
    /// `manta verify` checks everything at once, whatever this says.
    #[arg(long, env = "MANTA_SCRUB_RATE", default_value = "0")]
    scrub_rate: String,
    /// Hash a whole-blob read on its way out when its file was not verified since start-up (or
    /// changed since), and break the stream before its last byte if the blob is corrupt on disk
    /// (ranged reads are not checked; the background scrub finds silent media corruption).
    #[arg(long, env = "MANTA_VERIFY_READS", default_value_t = true, action = clap::ArgAction::Set)]
    verify_reads: bool,
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
    let platforms = if args.image_platforms.is_empty() {
        vec![manta_hub::forms::platform_of_host()]
    } else {
        args.image_platforms
            .iter()
            .map(|p| manta_hub::forms::parse_platform(p.trim()))
            .collect::<Result<_, _>>()
            .context("--image-platforms")?
    };
    let timeout = std::time::Duration::from_secs(args.hub_timeout_secs.max(1));
    let hub = |endpoint: String, token: Option<String>| manta_hub::HubConfig {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        token: token.filter(|t| !t.is_empty()),
        timeout,
        retries: 4,
        user_agent: format!("manta/{}", env!("CARGO_PKG_VERSION")),
    };
    for (flag, w) in [
        ("--high-watermark", args.high_watermark),
        ("--low-watermark", args.low_watermark),
    ] {
        anyhow::ensure!(w > 0.0 && w <= 100.0, "{flag} must be in (0, 100]");
    }
    anyhow::ensure!(
        args.low_watermark <= args.high_watermark,
        "--low-watermark must not exceed --high-watermark"
    );
    let scrub_rate = match args.scrub_rate.trim() {
        "0" | "" => None,
        r => Some(
            manta_registry::store::space::parse_size(r)
                .map_err(anyhow::Error::msg)
                .context("--scrub-rate")?,
        ),
    };
    let cfg = ServeConfig {
        cache: manta_registry::store::CacheOptions {
            space: manta_registry::store::SpaceConfig {
                capacity: args.capacity,
                high_watermark: args.high_watermark / 100.0,
                low_watermark: args.low_watermark / 100.0,
            },
            min_age_secs: args.evict_min_age_secs,
            verify_reads: args.verify_reads,
        },
        scrub_rate,
        hubs: manta_registry::server::HubServeConfig {
            hf: hub(args.hf_endpoint, args.hf_token),
            ms: hub(args.ms_endpoint, args.ms_token),
            settings: manta_registry::hub::HubSettings {
                revision_ttl: std::time::Duration::from_secs(args.hub_revision_ttl_secs),
                platforms,
                idle: timeout,
            },
        },
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
        Command::Prefetch(args) => {
            manta_registry::cli::prefetch(args, &mut std::io::stdout(), shutdown_signal())
                .await
                .map_err(Into::into)
        }
        Command::Ls(args) => manta_registry::cli::ls(args, &mut std::io::stdout())
            .await
            .map_err(Into::into),
        Command::Rm(args) => manta_registry::cli::rm(args, &mut std::io::stdout())
            .await
            .map_err(Into::into),
        Command::Gc(args) => manta_registry::cli::gc(args, &mut std::io::stdout())
            .await
            .map_err(Into::into),
        Command::Pins(args) => manta_registry::cli::pins(args, &mut std::io::stdout())
            .await
            .map_err(Into::into),
        Command::Pin(args) => manta_registry::cli::pin(args, &mut std::io::stdout())
            .await
            .map_err(Into::into),
        Command::Unpin(args) => manta_registry::cli::unpin(args, &mut std::io::stdout())
            .await
            .map_err(Into::into),
        Command::Verify(args) => manta_registry::cli::verify(args, &mut std::io::stdout())
            .await
            .map_err(Into::into),
    }
}
