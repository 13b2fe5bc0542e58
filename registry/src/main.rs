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
    Serve(Box<ServeArgs>),
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
    /// Show the agent's peers (health, backoff) and the blobs it is fetching, and from where.
    Peers(manta_registry::cli::PeersArgs),
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

/// `ip:port`, `[ipv6]:port`, or an IPv6 address and port without brackets (the last colon
/// separates the port): what a Kubernetes `$(NODE_IP):<port>` gives on an IPv6 node.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad = || format!("{s:?} is not an address and port (ip:port, [ipv6]:port)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let ip: std::net::Ipv6Addr = host.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(SocketAddr::from((ip, port)))
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the bound address is printed on stdout).
    /// The node's own endpoint: the whole OCI API, /hf and the admin API, unauthenticated, so
    /// keep it on loopback.
    #[arg(long, env = "MANTA_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// The cluster listener, on the node address: blob reads by digest and the operator's admin
    /// API, for other nodes, every request carrying the cluster token [default: none]. An IPv6
    /// address may come without brackets (`fd00::5:5001`, as `$(NODE_IP):5001` expands).
    #[arg(
        long,
        env = "MANTA_CLUSTER_LISTEN",
        requires = "cluster_token_file",
        value_parser = parse_listen
    )]
    cluster_listen: Option<SocketAddr>,
    /// File holding the cluster token (one per line; any is accepted, so a rotation can list the
    /// new one first, then drop the old). Re-read when it changes.
    #[arg(long, env = "MANTA_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// The other agents' cluster listeners, to read blobs from before going to the origin:
    /// `host:port,host:port,…` (this node's own may be listed), or `dns:<name>:<port>` (every
    /// address of a headless Service, re-resolved every few seconds). Needs --cluster-listen.
    #[arg(long, env = "MANTA_PEERS", requires = "cluster_listen")]
    peers: Option<String>,
    /// This node's name, shown to peers and in `manta peers` [default: the host name].
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Nodes that track each digest (its owners): more survive more failures, at the cost of
    /// more announcements.
    #[arg(long, env = "MANTA_PEER_OWNERS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    peer_owners: u16,
    /// Most bytes per second this node sends to its peers, and most it takes from them (each
    /// way, over all transfers: `100MiB`, `1GB`) [default: unlimited].
    #[arg(long, env = "MANTA_PEER_RATE_LIMIT", value_parser = manta_registry::store::space::parse_size)]
    peer_rate_limit: Option<u64>,
    /// Blob reads served to peers at once; more are answered 429 and the peer reads elsewhere.
    #[arg(long, env = "MANTA_PEER_MAX_UPLOADS", default_value_t = 16)]
    peer_max_uploads: usize,
    /// Stripes a large blob's pieces are cut into in a large cluster: each spreads down a
    /// tree of its own, and each node uploads to one stripe's tree (1: one pipeline).
    #[arg(long, env = "MANTA_PEER_STRIPES", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    peer_stripes: u32,
    /// Live agents from which on large blobs are read in stripes. A pipeline is at most 16
    /// hops long, so up to 17 nodes read at the link rate from one; from 18 on it branches,
    /// and each branch halves the rate, where stripes cost a piece per hop.
    #[arg(long, env = "MANTA_PEER_STRIPE_MIN_NODES", default_value_t = 18)]
    peer_stripe_min_nodes: usize,
    /// Seconds a client may take to send a request's head (from connecting, or from the first
    /// byte of a later request).
    #[arg(long, env = "MANTA_HEADER_READ_TIMEOUT_SECS", default_value_t = 30)]
    header_read_timeout_secs: u64,
    /// Seconds a keep-alive connection may sit idle between requests before it is closed.
    #[arg(long, env = "MANTA_IDLE_TIMEOUT_SECS", default_value_t = 90)]
    idle_timeout_secs: u64,
    /// Seconds a client may take nothing of a response, or send nothing of a request body,
    /// before its connection is cut.
    #[arg(long, env = "MANTA_STALL_TIMEOUT_SECS", default_value_t = 60)]
    stall_timeout_secs: u64,
    /// Connections served at once over both listeners; more are answered 503 with Retry-After
    /// and closed [default: 0, auto: (open-file limit - 64) / 3].
    #[arg(long, env = "MANTA_MAX_CONNECTIONS", default_value_t = 0)]
    max_connections: usize,
    /// Upload sessions open at once; a POST past it is answered 429 with Retry-After.
    #[arg(long, env = "MANTA_MAX_UPLOAD_SESSIONS", default_value_t = 1024)]
    max_upload_sessions: usize,
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
    /// Prefer --hf-token-file: a flag's value shows in the process list.
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    hf_token: Option<String>,
    /// File holding the Hugging Face token (a mounted Secret, say), read at start; it wins over
    /// --hf-token.
    #[arg(long, env = "MANTA_HF_TOKEN_FILE")]
    hf_token_file: Option<PathBuf>,
    /// ModelScope endpoint for `ms/…` and `ms-raw/…` repositories.
    #[arg(
        long,
        env = "MODELSCOPE_ENDPOINT",
        default_value = "https://www.modelscope.cn"
    )]
    ms_endpoint: String,
    /// ModelScope token (prefer --ms-token-file).
    #[arg(long, env = "MODELSCOPE_API_TOKEN", hide_env_values = true)]
    ms_token: Option<String>,
    /// File holding the ModelScope token, read at start; it wins over --ms-token.
    #[arg(long, env = "MANTA_MS_TOKEN_FILE")]
    ms_token_file: Option<PathBuf>,
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

/// A token given inline or in a file (trimmed; an empty one is none).
fn token(
    inline: Option<String>,
    file: Option<&std::path::Path>,
    flag: &str,
) -> anyhow::Result<Option<String>> {
    let t = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("{flag}: reading {}", f.display()))?,
        ),
        None => inline,
    };
    Ok(t.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
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
    let hf_token = token(
        args.hf_token,
        args.hf_token_file.as_deref(),
        "--hf-token-file",
    )?;
    let ms_token = token(
        args.ms_token,
        args.ms_token_file.as_deref(),
        "--ms-token-file",
    )?;
    // Every connection needs a descriptor or three: take all the system allows.
    let nofile = match manta_registry::server::conn::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(1024)
        }
    };
    let max_connections = match args.max_connections {
        0 => manta_registry::server::conn::auto_max_connections(nofile),
        n => n.min(1 << 20),
    };
    tracing::info!(
        open_file_limit = nofile,
        max_connections,
        "connection limits"
    );
    for (flag, secs) in [
        ("--header-read-timeout-secs", args.header_read_timeout_secs),
        ("--idle-timeout-secs", args.idle_timeout_secs),
        ("--stall-timeout-secs", args.stall_timeout_secs),
    ] {
        anyhow::ensure!(secs > 0, "{flag} must be at least 1");
    }
    let secs = std::time::Duration::from_secs;
    let cluster = match (args.cluster_listen, args.cluster_token_file) {
        (Some(addr), Some(token_file)) => {
            let peers = match args.peers.as_deref() {
                None => None,
                Some(p) => Some(manta_registry::server::PeersConfig {
                    seeds: manta_peer::Seeds::parse(p)?,
                    node_name: args.node_name.clone().unwrap_or_else(host_name),
                    owners: usize::from(args.peer_owners),
                    rate_limit: args.peer_rate_limit.filter(|r| *r > 0),
                    max_uploads: args.peer_max_uploads.max(1),
                    stripes: args.peer_stripes,
                    stripe_min_nodes: args.peer_stripe_min_nodes,
                }),
            };
            Some(manta_registry::server::ClusterListen {
                addr,
                token_file,
                peers,
            })
        }
        (None, _) => None,
        (Some(_), None) => anyhow::bail!("--cluster-listen needs --cluster-token-file"),
    };
    let cfg = ServeConfig {
        cluster,
        conn: manta_registry::server::ConnLimits {
            header_read_timeout: secs(args.header_read_timeout_secs),
            idle_timeout: secs(args.idle_timeout_secs),
            stall_timeout: secs(args.stall_timeout_secs),
            max_connections,
        },
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
            hf: hub(args.hf_endpoint, hf_token),
            ms: hub(args.ms_endpoint, ms_token),
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
            max_upload_sessions: args.max_upload_sessions.max(1),
            body_stall: secs(args.stall_timeout_secs),
        },
    };
    let server = Server::bind(cfg, prometheus_client::registry::Registry::default()).await?;
    let addr = server.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("manta listening on http://{addr}");
    if let Some(cluster) = server.cluster_addr() {
        let cluster = cluster?;
        tracing::info!(addr = %cluster, "cluster listener");
        println!("manta cluster listener on http://{cluster}");
    }
    server.run(shutdown_signal()).await?;
    Ok(())
}

/// Exit codes: 0 success; 1 `verify` found damage; 2 the agent could not be reached; 3 any other
/// failure (the agent refused or failed the request, a bad configuration); 64 a usage error;
/// 130 interrupted.
fn exit_code(e: &anyhow::Error) -> u8 {
    use manta_registry::cli::ClientError;
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Damaged { .. }) => 1,
        Some(ClientError::Agent(e)) if e.is_unreachable() => 2,
        Some(ClientError::Interrupted { .. }) => 130,
        _ => 3,
    }
}

/// The error and its causes on one line: `manta: <what failed>: <why>: <why>`.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace(['\n', '\r'], " ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
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
        Command::Peers(args) => manta_registry::cli::peers(args, &mut std::io::stdout())
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

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version go to stdout and succeed; a usage error is EX_USAGE.
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return std::process::ExitCode::from(code);
        }
    };
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("manta: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("manta: {}", one_line(&e));
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

/// The host's name, for a node that was given none.
fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_addresses_take_ipv6_with_or_without_brackets() {
        assert_eq!(
            parse_listen("10.0.0.5:5001").unwrap().to_string(),
            "10.0.0.5:5001"
        );
        assert_eq!(
            parse_listen("[fd00::5]:5001").unwrap().to_string(),
            "[fd00::5]:5001"
        );
        assert_eq!(
            parse_listen("fd00::5:5001").unwrap().to_string(),
            "[fd00::5]:5001"
        );
        for bad in ["fd00::5", "node:5001", "10.0.0.5", "10.0.0.5:99999", ""] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}
