//! `manta serve`: open the store, bind the listeners, serve until a shutdown signal, flush the
//! index.
//!
//! Two listeners: the node's own (`--listen`, loopback: the whole OCI API, `/hf`, the admin API,
//! unauthenticated) and, optionally, the cluster listener (`--cluster-listen`, the node address:
//! blob reads and the operator's admin API, behind the cluster token; see `api::cluster`). Both
//! share one connection cap and the connection timeouts of [`conn`].

pub mod conn;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::api::cluster::{ClusterToken, TokenError};
use crate::api::{self, AppState, Limits, UploadSessions};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
pub use conn::ConnLimits;

/// How long in-flight requests may go on after a shutdown signal before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// The cluster listener: where, and the file holding the shared token.
#[derive(Clone, Debug)]
pub struct ClusterListen {
    pub addr: SocketAddr,
    pub token_file: PathBuf,
    /// The other agents, to read blobs from (`--peers`).
    pub peers: Option<PeersConfig>,
}

/// How this node finds its peers.
#[derive(Clone, Debug)]
pub struct PeersConfig {
    pub seeds: manta_peer::Seeds,
    pub node_name: String,
    /// Owners per digest.
    pub owners: usize,
    /// Bytes per second sent to peers, and taken from them.
    pub rate_limit: Option<u64>,
    /// Blob reads served to peers at once.
    pub max_uploads: usize,
    /// Stripes a large blob is read in, in a cluster of `stripe_min_nodes` or more.
    pub stripes: u32,
    pub stripe_min_nodes: usize,
}

/// Everything `manta serve` needs, already validated.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub cluster: Option<ClusterListen>,
    pub conn: ConnLimits,
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub upstream: crate::upstream::UpstreamConfig,
    pub hubs: HubServeConfig,
    pub cache: crate::store::CacheOptions,
    /// Background scrub, bytes per second (`None`: off).
    pub scrub_rate: Option<u64>,
}

/// The model hubs the agent turns into OCI repositories.
#[derive(Clone, Debug)]
pub struct HubServeConfig {
    pub hf: manta_hub::HubConfig,
    pub ms: manta_hub::HubConfig,
    pub settings: crate::hub::HubSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the store in {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("peers: {0}")]
    Peers(String),
    #[error("the cluster token")]
    Token(#[source] TokenError),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("configuring the model hubs: {0}")]
    Hub(String),
    #[error("flushing the index at shutdown")]
    Flush(#[source] StoreError),
}

/// A bound, ready server.
pub struct Server {
    listener: tokio::net::TcpListener,
    cluster: Option<(tokio::net::TcpListener, Arc<ClusterToken>)>,
    state: Arc<AppState>,
    conn: ConnLimits,
    scrub_rate: Option<u64>,
}

/// Connections the kernel queues for `accept`: a burst of pulls (containerd opens several
/// connections per image) must not overflow the queue while the agent is busy, which would cost
/// clients a dropped SYN and a second of retry, or a reset. (std and tokio use 128; the kernel
/// caps this at `net.core.somaxconn`.)
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    let err = |source| ServeError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

impl Server {
    /// Open the store (reconciling it with the disk) and bind the listener.
    pub async fn bind(
        cfg: ServeConfig,
        registry: prometheus_client::registry::Registry,
    ) -> Result<Self, ServeError> {
        let (dir, cache) = (cfg.data_dir.clone(), cfg.cache.clone());
        let (store, recovery) = tokio::task::spawn_blocking(move || Store::open_with(&dir, cache))
            .await
            .map_err(|e| ServeError::Store {
                path: cfg.data_dir.clone(),
                source: StoreError::Join(e),
            })?
            .map_err(|source| ServeError::Store {
                path: cfg.data_dir.clone(),
                source,
            })?;
        tracing::info!(data_dir = %cfg.data_dir.display(), ?recovery, "store open");
        let metrics = Arc::new(Metrics::new(registry, store.stats()));
        metrics.blobs_indexed.set(recovery.blobs_indexed as i64);
        metrics
            .recovered_orphans
            .inc_by(recovery.orphan_files_removed + recovery.temp_files_removed);
        let listener = bind(cfg.listen).await?;
        let cluster = match &cfg.cluster {
            Some(c) => {
                let token = ClusterToken::load(&c.token_file).map_err(ServeError::Token)?;
                Some((bind(c.addr).await?, token))
            }
            None => None,
        };
        let peers = match (&cfg.cluster, &cluster) {
            (Some(ClusterListen { peers: Some(p), .. }), Some((_, token))) => {
                let token = token.clone();
                let router = manta_peer::PeerRouter::start(manta_peer::PeerConfig {
                    seeds: p.seeds.clone(),
                    node_name: p.node_name.clone(),
                    owners: p.owners,
                    refresh: Duration::from_secs(2),
                    token: Arc::new(move || Some(token.current())),
                    timeouts: manta_peer::Timeouts::default(),
                    rate_limit: p.rate_limit,
                    max_uploads: p.max_uploads,
                    stripes: p.stripes,
                    stripe_min_nodes: p.stripe_min_nodes,
                })
                .map_err(|e| ServeError::Peers(e.to_string()))?;
                Some(router)
            }
            _ => None,
        };
        let fetcher = crate::fetch::Fetcher::new(store.clone(), metrics.clone(), peers.clone());
        let hub_err = |e: manta_hub::HubError| ServeError::Hub(e.to_string());
        let adapters: Vec<Arc<dyn manta_hub::HubAdapter>> = vec![
            Arc::new(manta_hub::hf::HfAdapter::new(cfg.hubs.hf).map_err(hub_err)?),
            Arc::new(manta_hub::ms::MsAdapter::new(cfg.hubs.ms).map_err(hub_err)?),
        ];
        let hubs =
            crate::hub::Hubs::new(adapters, cfg.hubs.settings, store.clone(), fetcher.clone());
        let state = Arc::new(AppState {
            hubs,
            jobs: Default::default(),
            upstreams: Arc::new(crate::upstream::Upstreams::new(cfg.upstream)),
            fetcher,
            store,
            uploads: UploadSessions::default(),
            limits: cfg.limits,
            metrics,
            peers,
            ready: AtomicBool::new(true),
        });
        Ok(Self {
            listener,
            cluster,
            state,
            conn: cfg.conn,
            scrub_rate: cfg.scrub_rate,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The cluster listener's address, when there is one.
    pub fn cluster_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.cluster.as_ref().map(|(l, _)| l.local_addr())
    }

    /// Serve until `shutdown` resolves; then stop accepting, let in-flight requests finish, and
    /// flush the index.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let state = self.state.clone();
        let trace = TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            // The method only: paths carry digests and repository names.
            tracing::debug_span!("request", method = %req.method())
        });
        let app = api::router(self.state.clone()).layer(trace.clone());
        let conns = conn::Connections::new(self.conn.clone(), state.metrics.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let stop = CancellationToken::new();
        let mut watcher = None;
        let cluster = self.cluster.map(|(listener, token)| {
            watcher = Some(tokio::spawn(token.clone().watch()));
            let app = api::cluster::router(self.state.clone(), token).layer(trace);
            (listener, app)
        });
        let main_loop = conns.serve(self.listener, app, &graceful, stop.clone());
        let cluster_loop = async {
            if let Some((listener, app)) = cluster {
                conns.serve(listener, app, &graceful, stop.clone()).await;
            }
        };
        let purger = tokio::spawn(purge_uploads(state.clone()));
        let upkeep = tokio::spawn(state.store.clone().upkeep());
        let gone = state
            .peers
            .clone()
            .map(|p| tokio::spawn(announce_removals(p, state.store.files().removals())));
        let held = state
            .peers
            .clone()
            .map(|p| tokio::spawn(announce_held(p, state.store.clone())));
        let disk = tokio::spawn(state.store.clone().watch_disk());
        let scrub = self
            .scrub_rate
            .map(|rate| tokio::spawn(state.store.clone().scrub(rate)));
        let stopper = {
            let (stop, flag) = (stop.clone(), state.clone());
            async move {
                shutdown.await;
                flag.ready.store(false, Ordering::Release);
                tracing::info!("shutting down: finishing in-flight requests");
                stop.cancel();
            }
        };
        tokio::join!(main_loop, cluster_loop, stopper);
        // Not accepting any more: ask open connections to finish, and cut them after the grace.
        tokio::spawn(graceful.shutdown());
        conns.drain(SHUTDOWN_GRACE).await;
        if let Some(w) = watcher {
            w.abort();
        }
        purger.abort();
        upkeep.abort();
        for task in [gone, held].into_iter().flatten() {
            task.abort();
        }
        disk.abort();
        state.store.close();
        if let Some(s) = scrub {
            s.abort();
        }
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| ServeError::Flush(StoreError::Join(e)))?
            .map_err(ServeError::Flush)?;
        tracing::info!("index flushed; bye");
        Ok(())
    }
}

/// Purge idle upload sessions now (start-up) and then every tenth of the TTL.
async fn purge_uploads(state: Arc<AppState>) {
    let ttl = state.limits.upload_ttl;
    let period = (ttl / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(600),
    );
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        match state.uploads.purge_idle(&state.store, ttl.as_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "purged idle upload sessions"),
            Err(e) => tracing::warn!(error = %e, "purging idle upload sessions failed"),
        }
    }
}

/// How often a node tells the owners of every blob it holds that it does...
const ANNOUNCE_HELD_EVERY: Duration = Duration::from_secs(600);
/// ...and how often it looks whether the live membership changed (then it tells them at once).
const MEMBERSHIP_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Once this node has found itself among its peers, whenever the live membership changes
/// (which moves some digests to new owners), and every ten minutes, tell each held blob's
/// owners that this node has it: owners that restarted (a rollout restarts them all) or became
/// owners learn the copies there are.
async fn announce_held(peers: Arc<manta_peer::PeerRouter>, store: crate::store::Store) {
    let mut told: Option<(u64, std::time::Instant)> = None;
    loop {
        tokio::time::sleep(MEMBERSHIP_CHECK_EVERY).await;
        if peers.self_addr().is_none() {
            continue;
        }
        let live = peers.members().generation();
        let due = told
            .as_ref()
            .is_none_or(|(g, at)| *g != live || at.elapsed() >= ANNOUNCE_HELD_EVERY);
        if !due {
            continue;
        }
        let held = store
            .blocking(|idx| {
                let mut v = Vec::new();
                idx.for_each_blob(&mut |d, r| v.push((d.to_string(), r.size)))?;
                Ok(v)
            })
            .await;
        match held {
            Ok(held) => peers.announce_held(&held).await,
            Err(e) => tracing::warn!(error = %e, "cannot list the held blobs to announce them"),
        }
        told = Some((live, std::time::Instant::now()));
    }
}

/// Tell the owners of each blob this node removes (evicted, deleted, found corrupt) that it no
/// longer has it, so nobody is sent here for it.
async fn announce_removals(
    peers: Arc<manta_peer::PeerRouter>,
    mut removed: tokio::sync::broadcast::Receiver<String>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match removed.recv().await {
            Ok(d) => peers.announce(&d, manta_peer::proto::Event::Gone, None),
            // Missed some: a reader sent here for one of them gets 404 and tells the owner.
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "removals not announced to the peers")
            }
            Err(RecvError::Closed) => break,
        }
    }
}
