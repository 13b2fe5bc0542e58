//! A fake Kubernetes API server for end-to-end tests of the operator, in memory and on
//! loopback, faithful for what the operator and its users touch, and proven so with the real
//! `kubectl` and kube-rs (`conformance/tests/kube_fake.rs`).
//!
//! Served: discovery (`/api`, `/apis`, resource lists, `/version`, an OpenAPI v3 index),
//! Namespaces, Nodes, Pods, Events (core and `events.k8s.io`), CustomResourceDefinitions and
//! the resources they define (cluster- or namespace-scoped, with the status subresource);
//! get, list (label and field selectors, `limit`/`continue`), watch (bounded history, 410
//! Expired past it), create, update, delete (finalizers and `deletionTimestamp`), patch (JSON,
//! merge, strategic for built-ins, server-side apply); CRD schema pruning, defaulting,
//! validation and CEL rules (kube-cel); server-side Table printing.
//!
//! Approximations, each named where it is made:
//! - server-side apply merges the applied configuration into the object without managed
//!   fields ([`patch::apply_merge`]); on a status subresource the applied status replaces it;
//! - strategic merge patch knows the merge keys of a fixed list of built-in fields
//!   ([`patch::strategic_merge`]) and drops `$setElementOrder`/`$retainKeys`;
//! - one schema for every version of a resource (no conversion); core and `events.k8s.io`
//!   Events are stored apart;
//! - no garbage collector (owner references and propagation policies are not acted on), no
//!   graceful pod termination (pods go at once), a deleted namespace takes its objects at
//!   once, a deleted CRD its custom resources;
//! - list pages are offsets, not snapshots; watches send no periodic bookmarks;
//! - no authentication, admission webhooks, `managedFields` or CRD validation ratcheting.

mod cel;
mod clock;
mod delete;
mod discovery;
mod ops;
pub mod patch;
mod resources;
mod routes;
mod schema;
mod selector;
mod status;
mod store;
mod table;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use routes::router;
pub use status::ApiError;
pub use store::Store;

/// Why the fake API server could not start, or write its kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum FakeKubeError {
    #[error("the fake API server listens on loopback or a private address only, not on {0}")]
    NotLoopback(SocketAddr),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the kubeconfig {path}")]
    WriteKubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// A loopback address; port 0 for any free port.
    pub listen: SocketAddr,
    /// Changes kept for watches to resume from; older versions get 410 Expired.
    pub history: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            history: 1000,
        }
    }
}

/// A running fake API server; it stops when dropped (open watches end).
pub struct FakeApiServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    store: Arc<Store>,
}

/// One request to a resource, as Kubernetes' authorizer sees it: who (the client's
/// User-Agent: the fake has no authentication), the verb, and what. RBAC is not enforced here;
/// tests check these against the Roles a chart grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub user_agent: String,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    pub group: String,
    /// The plural, with `/status` for the status subresource.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl FakeApiServer {
    /// Starts on `127.0.0.1`, on a free port.
    pub async fn start() -> Result<Self, FakeKubeError> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Result<Self, FakeKubeError> {
        // No authentication: never on a public address. A private one is a bridge a test made
        // for pods in network namespaces.
        let private = match opts.listen.ip() {
            std::net::IpAddr::V4(ip) => ip.is_private(),
            std::net::IpAddr::V6(_) => false,
        };
        if !opts.listen.ip().is_loopback() && !private {
            return Err(FakeKubeError::NotLoopback(opts.listen));
        }
        let listener =
            TcpListener::bind(opts.listen)
                .await
                .map_err(|source| FakeKubeError::Bind {
                    addr: opts.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| FakeKubeError::Bind {
                addr: opts.listen,
                source,
            })?;
        let shutdown = CancellationToken::new();
        let store = Store::new(opts.history, shutdown.clone());
        let app = router(store.clone());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            // The listener failing ends the server; tests then see connection errors.
            let _ = serve.await;
        });
        Ok(FakeApiServer {
            addr,
            shutdown,
            task: Some(task),
            store,
        })
    }

    /// Every resource request served so far, in order.
    pub fn accesses(&self) -> Vec<Access> {
        self.store.accesses()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: no auth, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), FakeKubeError> {
        std::fs::write(path, self.kubeconfig()).map_err(|source| FakeKubeError::WriteKubeconfig {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Stops serving: open watches end, and the call returns when the server has.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            // A panicked server task has nothing more to clean up.
            let _ = task.await;
        }
    }

    /// Resolves when the server stops (a shutdown, or the listener failing).
    pub async fn stopped(&mut self) {
        if let Some(task) = self.task.as_mut() {
            let _ = task.await;
            self.task = None;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The kubeconfig text for a server URL: one cluster, context and user, namespace `default`.
pub fn kubeconfig_for(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
users:
- name: fake
  user: {{}}
preferences: {{}}
"
    )
}

/// Serving state kept for tests that start the router themselves.
pub fn new_store(history: usize) -> Arc<Store> {
    Store::new(history, CancellationToken::new())
}
