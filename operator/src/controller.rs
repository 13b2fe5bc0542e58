//! The Torrent controller (controller-rs's shape): a level-triggered, idempotent reconcile behind
//! a finalizer.
//!
//! The nodes hold the truth of where a Torrent is: a node is one of its holders while its agent
//! holds the Torrent's pin (`torrent-<name>`), which is made before the prefetch starts and
//! released (with the reclaim policy) when the node is no longer wanted. So an operator that
//! restarts finds every holder again; it only asks each holder's agent to prefetch once more,
//! which ends at once where the model is complete. Per-file progress stays on the nodes; the
//! status counts nodes and names at most [`NODE_LIST_CAP`] of those in progress or failed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use manta_api::{Form, Job, JobFailure, JobState, PinTarget, PrefetchRequest, Reclaim};

use crate::agents::Agents;
use crate::config::Config;
use crate::crd::{
    NodeState, NodeStateKind, NodeSummary, Phase, References, Replicas, Torrent, TorrentStatus,
    FINALIZER, NODE_LIST_CAP,
};
use crate::inventory::{Inventory, NodeInfo};
use crate::metrics::{AgentOp, Metrics};
use crate::plugins::{Framework, Request};
use crate::Error;

/// The field manager of the operator's status writes.
pub const MANAGER: &str = "manta-operator";
/// Requeue while nodes fetch (for the progress figures: a job's end, or its revision's size,
/// wakes the Torrent at once through the job's follower).
const BUSY_REQUEUE: Duration = Duration::from_secs(5);
/// How long a job's follower waits on the agent for a change before asking again.
const JOB_WAIT: Duration = Duration::from_secs(30);
/// Requeue when nothing moves (node and agent changes wake the controller sooner).
const IDLE_REQUEUE: Duration = Duration::from_secs(60);
/// A node whose prefetch failed (not the hub's refusal) is not chosen again for this long.
const NODE_BACKOFF: Duration = Duration::from_secs(300);
/// A Torrent the hub refused is tried again after this long (a token may have been fixed).
const FAILED_RETRY: Duration = Duration::from_secs(300);
/// How long deletion waits on an agent that answers with errors before giving up on its pin.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(300);
/// Agent calls in flight at once in one reconcile.
const PARALLEL_CALLS: usize = 32;
/// How soon a Torrent is looked at again while the inventories fill.
const SYNC_REQUEUE: Duration = Duration::from_secs(1);
/// How often pins of Torrents that are gone are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// The prefix of every pin the operator makes (`pin_name`): pins with it belong to Torrents.
pub const PIN_PREFIX: &str = "torrent-";

/// What the reconciler works with.
pub struct Context {
    pub client: kube::Client,
    pub agents: Agents,
    pub inventory: Inventory,
    pub plugins: Framework,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub registry_host: String,
    /// Prefetch jobs this process started, by Torrent uid and node.
    jobs: Mutex<HashMap<(String, String), JobRef>>,
    /// Nodes whose prefetch failed, by Torrent uid and node: when, and why.
    failed: Mutex<HashMap<(String, String), (Instant, String)>>,
    /// Wakes a Torrent when one of its jobs ends or learns its size.
    wake: tokio::sync::mpsc::UnboundedSender<ObjectRef<Torrent>>,
    wakeups: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Torrent>>>>,
    /// Jobs followed now, by Torrent uid and node.
    following: Arc<Mutex<HashSet<(String, String)>>>,
    /// Reconciles failed in a row, by Torrent uid (for `error_policy`'s backoff).
    retries: Mutex<HashMap<String, u32>>,
}

#[derive(Clone, Debug)]
struct JobRef {
    id: String,
    url: String,
    /// The last view of the job (a succeeded job is not asked about again).
    last: Option<Job>,
    /// The Torrent's generation it was asked for: after a spec change (new forms, say) an
    /// ended job is asked for again (what is complete ends at once).
    generation: Option<i64>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        agents: Agents,
        inventory: Inventory,
        plugins: Framework,
        metrics: Metrics,
        registry_host: String,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let (wake, wakeups) = tokio::sync::mpsc::unbounded_channel();
        Context {
            client,
            agents,
            inventory,
            plugins,
            metrics,
            recorder,
            registry_host,
            jobs: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
            wake,
            wakeups: Mutex::new(Some(wakeups)),
            following: Arc::default(),
            retries: Mutex::default(),
        }
    }

    /// The Torrents to reconcile now because one of their jobs moved (once: the controller
    /// takes it).
    pub fn take_wakeups(
        &self,
    ) -> Option<impl futures_util::Stream<Item = ObjectRef<Torrent>> + Send + 'static> {
        let mut rx = self
            .wakeups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// Follow a job that has not ended: wake the Torrent when it ends, or when it learns the
    /// revision's size (the other nodes wait on it), so that Ready is seen at once rather than
    /// at the next requeue.
    fn follow(&self, t: &Torrent, uid: &str, node: &str, url: &str, job: &Job) {
        if job.state.is_ended() {
            return;
        }
        let key = (uid.to_string(), node.to_string());
        if !self
            .following
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return;
        }
        let (agents, wake, following) = (
            self.agents.clone(),
            self.wake.clone(),
            self.following.clone(),
        );
        let torrent = ObjectRef::from_obj(t);
        let (url, id) = (url.to_string(), job.id.clone());
        let (mut version, mut total) = (job.version, job.bytes_total);
        tokio::spawn(async move {
            // Gone, unreachable, or ended: the reconciles that follow take it from there.
            loop {
                let asked = Instant::now();
                let Ok(Some(j)) = agents.job_wait(&url, &id, version, JOB_WAIT).await else {
                    break;
                };
                if j.version == version && asked.elapsed() < JOB_WAIT / 2 {
                    // An agent that answers at once with nothing new (one that predates
                    // waiting): ask again later, not in a loop.
                    tokio::time::sleep(JOB_WAIT).await;
                }
                let ended = j.state.is_ended();
                if ended || (total.is_none() && j.bytes_total.is_some()) {
                    let _ = wake.send(torrent.clone());
                }
                version = j.version;
                total = j.bytes_total;
                if ended {
                    break;
                }
            }
            following
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        });
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), JobRef>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (Instant, String)>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn retries(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn event(&self, t: &Torrent, type_: EventType, reason: &str, note: String) {
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &t.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish an event");
        }
    }
}

/// The name of a Torrent's pin on its nodes (pin names allow at most 253 characters).
pub fn pin_name(torrent: &str) -> String {
    let name = format!("{PIN_PREFIX}{torrent}");
    if name.len() <= 253 {
        return name;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in torrent.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{PIN_PREFIX}{}-{h:016x}", &torrent[..200])
}

/// Release the pins of Torrents that are gone, on every agent that answers: a deletion whose
/// agent was not ready, or did not answer within `CLEANUP_PATIENCE`, left them behind, and
/// pinned content is never evicted. `torrents` is every Torrent there is (the controller's
/// cache, read *after* the agents' reports, so a pin just made for a new Torrent is never taken
/// for an orphan). Pins are released with `Retain`: the content stays cached, for LRU to
/// evict. Also forgets what this process kept of Torrents that are gone. Returns the pins
/// released.
pub async fn sweep(ctx: &Context, nodes: &[NodeInfo], torrents: &[Arc<Torrent>]) -> usize {
    let wanted: HashSet<String> = torrents.iter().map(|t| pin_name(&t.name_any())).collect();
    let live: HashSet<String> = torrents.iter().filter_map(|t| t.uid()).collect();
    ctx.jobs().retain(|(u, _), _| live.contains(u));
    ctx.failed().retain(|(u, _), _| live.contains(u));
    ctx.retries().retain(|u, _| live.contains(u));
    ctx.metrics.retain_phases(&live);
    let calls: Vec<_> = nodes
        .iter()
        .filter_map(|n| {
            let state = n.agent_state()?;
            let url = n.agent.as_ref()?.url.clone();
            Some(
                state
                    .pins
                    .iter()
                    .filter(|p| p.starts_with(PIN_PREFIX) && !wanted.contains(*p))
                    .map(move |p| (n.name.clone(), url.clone(), p.clone()))
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .map(|(node, url, pin)| async move {
            let r = ctx.agents.unpin(&url, &pin, Reclaim::Retain).await;
            ctx.metrics.agent_call(AgentOp::unpin, &r);
            match r {
                Ok(_) => {
                    tracing::info!(%node, %pin, "released the pin of a Torrent that is gone");
                    ctx.inventory.states.note_pin(&url, &pin, false);
                    true
                }
                Err(e) => {
                    tracing::warn!(%node, %pin, error = %error_chain(&e), "cannot release the pin of a Torrent that is gone");
                    false
                }
            }
        })
        .collect();
    futures_util::stream::iter(calls)
        .buffer_unordered(PARALLEL_CALLS)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

/// Run the controller until a signal stops it. `states` holds the agents' reports (its
/// `synced()` is the operator's readiness).
pub async fn run(
    client: kube::Client,
    cfg: Config,
    metrics: Metrics,
    states: Arc<crate::inventory::AgentStates>,
) -> Result<(), Error> {
    let plugins = Framework::new(&cfg.plugins)?;
    let nodes_api: Api<Node> = Api::all(client.clone());
    let pods_api: Api<Pod> = match &cfg.agents.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (nodes, node_writer) = reflector::store();
    let (pods, pod_writer) = reflector::store();
    // Nodes change often (kubelet's status updates) in ways placement ignores: the cache keeps
    // what the plugins read, and only a change to that (or a node coming or going) wakes the
    // Torrents.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let node_changes = reflector(
        node_writer,
        watcher(nodes_api, watcher::Config::default().any_semantic()).modify(slim_node),
    )
    .default_backoff()
    .filter_map(move |ev| {
        let wake = match ev {
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                let key = placement_key(&n);
                seen.insert(n.name_any(), key) != Some(key)
            }
            Ok(watcher::Event::Delete(n)) => {
                seen.remove(&n.name_any());
                true
            }
            Ok(watcher::Event::InitDone) => true,
            Ok(watcher::Event::Init) | Err(_) => false,
        };
        std::future::ready(wake.then_some(()))
    });
    let pod_changes = reflector(
        pod_writer,
        watcher(
            pods_api,
            watcher::Config::default()
                .labels(&cfg.agents.selector)
                .any_semantic(),
        )
        .modify(|p: &mut Pod| p.managed_fields_mut().clear()),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| async move { r.ok().map(|_| ()) });

    let inventory = Inventory {
        nodes,
        pods,
        states,
        agent_port: cfg.agents.port,
        fresh: cfg.agents.poll() * 3 + cfg.agents.timeout(),
    };
    let agents = Agents::new(cfg.agents.token_file.clone(), cfg.agents.timeout());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(crate::inventory::poll_agents(
        inventory.clone(),
        agents.clone(),
        cfg.agents.poll(),
        tx,
    ));
    let agent_changes = tokio_stream_from(rx);

    let ctx = Arc::new(Context::new(
        client.clone(),
        agents,
        inventory,
        plugins,
        metrics,
        cfg.registry_host.clone(),
    ));
    let torrents: Api<Torrent> = Api::all(client);
    let wakeups = ctx
        .take_wakeups()
        .ok_or_else(|| Error::Config("the controller runs once per context".into()))?;
    let controller = Controller::new(torrents, watcher::Config::default().any_semantic());
    let store = controller.store();
    let sweeper = ctx.clone();
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            if !sweeper.inventory.states.synced() {
                continue;
            }
            // The agents first, then the Torrents: see `sweep`.
            let nodes = sweeper.inventory.snapshot();
            sweep(&sweeper, &nodes, &store.state()).await;
        }
    });
    controller
        .reconcile_on(wakeups)
        .reconcile_all_on(futures_util::stream::select_all([
            node_changes.boxed(),
            pod_changes.boxed(),
            agent_changes.boxed(),
        ]))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .await;
    tracing::info!("the controller stopped");
    Ok(())
}

/// A Node as the operator keeps it: what placement reads (labels, conditions, `unschedulable`),
/// not its images, annotations or managed fields (most of a Node's size, times every node).
fn slim_node(n: &mut Node) {
    n.managed_fields_mut().clear();
    n.annotations_mut().clear();
    if let Some(status) = n.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

/// What of a Node can change a placement: its labels, whether it is Ready or cordoned, whether
/// it is being deleted.
fn placement_key(n: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    n.metadata.labels.hash(&mut h);
    n.metadata.deletion_timestamp.is_some().hash(&mut h);
    n.spec.as_ref().and_then(|s| s.unschedulable).hash(&mut h);
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.as_str())
        .hash(&mut h);
    h.finish()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<()>,
) -> impl futures_util::Stream<Item = ()> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Reconcile one Torrent.
pub async fn reconcile(t: Arc<Torrent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let t_uid = t.uid().unwrap_or_default();
    ctx.metrics.reconciles.inc();
    let api: Api<Torrent> = Api::all(ctx.client.clone());
    let result = finalizer(&api, FINALIZER, t, |event| async {
        match event {
            Event::Apply(t) => apply(&t, &ctx).await,
            Event::Cleanup(t) => cleanup(&t, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.retries().remove(&t_uid);
    }
    result
}

/// Retry a failed reconcile with backoff: 5 s, doubled for each failure in a row, at most 5
/// minutes; a success resets it.
pub fn error_policy(t: Arc<Torrent>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabels {
            kind: e.metric_label(),
        })
        .inc();
    if matches!(e, Error::Finalizer(f) if matches!(**f, kube::runtime::finalizer::Error::CleanupFailed(Error::NotSynced)))
    {
        return Action::requeue(SYNC_REQUEUE);
    }
    let n = {
        let mut retries = ctx.retries();
        let n = retries.entry(t.uid().unwrap_or_default()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = Duration::from_secs(5 << (n - 1).min(6)).min(Duration::from_secs(300));
    tracing::warn!(torrent = %t.name_any(), error = %error_chain(e), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One holder's state, as this reconcile sees it.
#[derive(Clone, Debug)]
enum Held {
    Ready,
    InProgress {
        done: u64,
    },
    /// The node failed the prefetch (why is kept in the context); its pin is released.
    Failed,
    /// The node or its agent is gone or not answering: not counted, kept pinned in case it
    /// returns (it is released then if no longer wanted).
    Lost,
}

/// What the holders' jobs said of the revision.
#[derive(Default)]
struct Learned {
    size: Option<u64>,
    commit: Option<String>,
    references: BTreeMap<Form, String>,
    refused: Option<String>,
}

async fn apply(t: &Torrent, ctx: &Context) -> Result<Action, Error> {
    // Until every agent has been asked once, no node has a report: the Torrent would look
    // unplaceable (a Ready one would flap to Pending). Wait for the inventory instead.
    if !ctx.inventory.states.synced() {
        return Ok(Action::requeue(SYNC_REQUEUE));
    }
    let name = t.meta().name.clone().ok_or(Error::Unnamed)?;
    let uid = t.uid().unwrap_or_default();
    let pin = pin_name(&name);
    let generation = t.meta().generation;
    let old = t.status.clone().unwrap_or_default();
    let mut status = TorrentStatus {
        revision: Some(t.spec.hub.revision().to_string()),
        commit: old.commit.clone(),
        references: old.references.clone(),
        size: old.size.clone(),
        size_bytes: old.size_bytes,
        conditions: old.conditions.clone(),
        observed_generation: generation,
        ..TorrentStatus::default()
    };

    if !t.spec.preheat {
        set_phase(
            &mut status,
            Phase::Pending,
            "Standby",
            "preheat is false: nothing is fetched",
            generation,
        );
        write_status(t, ctx, &old, status).await?;
        return Ok(Action::requeue(IDLE_REQUEUE));
    }

    // A Torrent the hub refused stays Failed for a while (the same answer on every node).
    if let Some(c) = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
    {
        let age = age_of(&c.last_transition_time);
        if old.observed_generation == generation && age < FAILED_RETRY {
            return Ok(Action::requeue(FAILED_RETRY - age));
        }
    }

    let nodes = ctx.inventory.snapshot();
    let by_name: BTreeMap<&str, &NodeInfo> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();

    // Forget jobs of nodes that are gone.
    ctx.jobs()
        .retain(|(u, n), _| u != &uid || by_name.contains_key(n.as_str()));

    // The holders: nodes whose agent holds the pin, or that this process started a job on.
    let mut holders: Vec<&NodeInfo> = nodes
        .iter()
        .filter(|n| {
            n.agent_state().is_some_and(|s| s.pins.contains(&pin))
                || ctx.jobs().contains_key(&(uid.clone(), n.name.clone()))
        })
        .collect();

    // Each holder's state.
    let mut learned = Learned {
        size: old.size_bytes,
        ..Learned::default()
    };
    let calls: Vec<_> = holders
        .iter()
        .map(|n| holder_state(t, ctx, &uid, &pin, n))
        .collect();
    let states = futures_util::stream::iter(calls)
        .buffered(PARALLEL_CALLS)
        .collect::<Vec<_>>()
        .await;
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    for (node, (state, job)) in holders.iter().zip(states) {
        if let Some(job) = job {
            learn(&mut learned, &job, &ctx.registry_host);
        }
        held.insert(node.name.clone(), state);
    }
    if let Some(reason) = learned.refused.clone() {
        return refused(t, ctx, &old, status, &uid, &pin, &holders, reason).await;
    }

    // Failed holders released their pin: they are holders no more.
    holders.retain(|n| !matches!(held.get(&n.name), Some(Held::Failed)));

    // Holders the Torrent no longer wants: off the selector, or more than `replicas`.
    let base_req = || Request {
        torrent: t,
        size: learned.size,
        holders: Vec::new(),
    };
    let selector = crate::plugins::NodeSelector;
    let mut release: Vec<&NodeInfo> = Vec::new();
    holders.retain(|n| {
        let keep = crate::plugins::Filter::filter(&selector, &base_req(), n).is_ok();
        if !keep && is_healthy(&held, n) {
            release.push(n);
        }
        keep
    });
    if let Replicas::Count(want) = t.spec.replicas {
        let mut kept: Vec<&NodeInfo> = holders
            .iter()
            .copied()
            .filter(|n| is_healthy(&held, n))
            .collect();
        // Keep ready ones first, then those furthest along, then by name.
        kept.sort_by_key(|n| match held.get(&n.name) {
            Some(Held::Ready) => (0, 0, n.name.clone()),
            Some(Held::InProgress { done }) => (1, u64::MAX - done, n.name.clone()),
            _ => (2, 0, n.name.clone()),
        });
        for extra in kept.iter().skip(want as usize) {
            release.push(extra);
        }
        holders.retain(|n| !release.iter().any(|r| r.name == n.name));
    }
    release_pins(t, ctx, &uid, &pin, &release).await;

    // New nodes, chosen by the plugins.
    let healthy_now: Vec<&NodeInfo> = holders
        .iter()
        .copied()
        .filter(|n| is_healthy(&held, n))
        .collect();
    let resolving = learned.size.is_none();
    let backoff: Vec<String> = {
        let mut failed = ctx.failed();
        failed.retain(|_, (at, _)| at.elapsed() < NODE_BACKOFF);
        failed
            .keys()
            .filter(|(u, _)| u == &uid)
            .map(|(_, n)| n.clone())
            .collect()
    };
    let candidates: Vec<NodeInfo> = nodes
        .iter()
        .filter(|n| !holders.iter().any(|h| h.name == n.name) && !backoff.contains(&n.name))
        .cloned()
        .collect();
    let wanted = match t.spec.replicas {
        Replicas::Count(n) => Some((n as usize).saturating_sub(healthy_now.len())),
        Replicas::All => None,
    };
    // While no node has resolved the revision, one node resolves it first (a refusal then
    // costs one node, and the size is known before the others are filtered by it).
    let wanted = if !resolving {
        wanted
    } else if healthy_now.is_empty() {
        Some(wanted.unwrap_or(usize::MAX).min(1))
    } else {
        Some(0)
    };
    let req = Request {
        torrent: t,
        size: learned.size,
        holders: healthy_now.clone(),
    };
    let choice = ctx.plugins.choose(req, &candidates, wanted);
    let mut started: Vec<String> = Vec::new();
    if !choice.picked.is_empty() {
        let picked: Vec<&NodeInfo> = choice
            .picked
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).copied())
            .collect();
        let calls: Vec<_> = picked
            .into_iter()
            .map(|n| start(t, ctx, &uid, &pin, n))
            .collect();
        let results = futures_util::stream::iter(calls)
            .buffered(PARALLEL_CALLS)
            .collect::<Vec<_>>()
            .await;
        for (node, r) in choice.picked.iter().zip(results) {
            match r {
                Ok(()) => started.push(node.clone()),
                Err(e) => {
                    let why = error_chain(&e);
                    tracing::warn!(torrent = %name, node = %node, error = %why, "cannot start the prefetch");
                    ctx.failed()
                        .insert((uid.clone(), node.clone()), (Instant::now(), why));
                }
            }
        }
        ctx.event(
            t,
            EventType::Normal,
            "Scheduled",
            format!(
                "prefetch started on {} node(s): {}",
                started.len(),
                summary_list(&started)
            ),
        )
        .await;
    }

    // Status.
    let mut summary = NodeSummary::default();
    let mut items: Vec<NodeState> = Vec::new();
    let mut bytes_done = 0u64;
    for h in holders.iter().filter(|h| is_healthy(&held, h)) {
        match held.get(&h.name) {
            Some(Held::Ready) => {
                summary.ready += 1;
                bytes_done += learned.size.unwrap_or(0);
            }
            Some(Held::InProgress { done }) => {
                summary.in_progress += 1;
                bytes_done += done;
                items.push(NodeState {
                    name: h.name.clone(),
                    state: NodeStateKind::InProgress,
                    bytes_done: *done,
                    message: None,
                });
            }
            _ => {}
        }
    }
    for n in &started {
        summary.in_progress += 1;
        items.push(NodeState {
            name: n.clone(),
            state: NodeStateKind::InProgress,
            bytes_done: 0,
            message: None,
        });
    }
    for ((u, n), (_, why)) in ctx.failed().iter() {
        if u == &uid {
            summary.failed += 1;
            items.push(NodeState {
                name: n.clone(),
                state: NodeStateKind::Failed,
                bytes_done: 0,
                message: Some(truncate(why, 256)),
            });
        }
    }
    items.sort_by(|a, b| a.name.cmp(&b.name));
    if items.len() > NODE_LIST_CAP {
        summary.omitted = u32::try_from(items.len() - NODE_LIST_CAP).unwrap_or(u32::MAX);
        items.truncate(NODE_LIST_CAP);
    }
    summary.items = items;
    let feasible_or_held = choice.feasible + healthy_now.len();
    summary.desired = match t.spec.replicas {
        Replicas::Count(n) => n,
        Replicas::All => u32::try_from(feasible_or_held).unwrap_or(u32::MAX),
    };
    status.size_bytes = learned.size;
    status.size = learned.size.map(human_bytes);
    status.commit = learned.commit.or(status.commit);
    if !learned.references.is_empty() {
        status.references = Some(References {
            image: learned.references.get(&Form::Image).cloned(),
            raw: learned.references.get(&Form::Raw).cloned(),
        });
    }
    status.bytes_done = bytes_done;
    status.bytes_total = learned
        .size
        .map(|s| s.saturating_mul(u64::from(summary.desired)));
    status.ready_nodes = Some(format!("{}/{}", summary.ready, summary.desired));
    let busy = summary.in_progress > 0;
    let (phase, reason, message) = if summary.desired > 0 && summary.ready >= summary.desired {
        (
            Phase::Ready,
            "Replicated",
            format!("{} node(s) hold the model, pinned", summary.ready),
        )
    } else if busy && resolving {
        (
            Phase::Resolving,
            "Resolving",
            "the first node is resolving the revision".to_string(),
        )
    } else if busy {
        (
            Phase::Replicating,
            "Fetching",
            format!(
                "{} of {} node(s) ready, {} fetching",
                summary.ready, summary.desired, summary.in_progress
            ),
        )
    } else {
        let why: Vec<String> = choice
            .rejected
            .iter()
            .map(|(r, n)| format!("{n} node(s) {r}"))
            .collect();
        (
            Phase::Pending,
            "NoNodes",
            format!(
                "{} of {} node(s) ready; no node can take it{}",
                summary.ready,
                summary.desired,
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", why.join("; "))
                }
            ),
        )
    };
    status.nodes = summary;
    set_phase(&mut status, phase, reason, &message, generation);
    let ready_since = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| age_of(&c.last_transition_time));
    write_status(t, ctx, &old, status).await?;

    // ttlSecondsAfterReady: delete the Torrent (its finalizer releases the pins).
    if let (Phase::Ready, Some(ttl), Some(age)) =
        (phase, t.spec.ttl_seconds_after_ready, ready_since)
    {
        let ttl = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
        if age >= ttl {
            tracing::info!(torrent = %name, "ttlSecondsAfterReady passed: deleting");
            let api: Api<Torrent> = Api::all(ctx.client.clone());
            // Only this Torrent: not one of the same name created since.
            let dp = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            api.delete(&name, &dp).await?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue((ttl - age).min(IDLE_REQUEUE)));
    }
    Ok(Action::requeue(if busy || !started.is_empty() {
        BUSY_REQUEUE
    } else {
        IDLE_REQUEUE
    }))
}

/// Ask a holder's agent about its job (starting one if this process has none for it).
async fn holder_state(
    t: &Torrent,
    ctx: &Context,
    uid: &str,
    pin: &str,
    node: &NodeInfo,
) -> (Held, Option<Job>) {
    let Some(agent) = node.agent.as_ref().filter(|_| node.agent_state().is_some()) else {
        return (Held::Lost, None);
    };
    let key = (uid.to_string(), node.name.clone());
    let known = ctx.jobs().get(&key).cloned().filter(|j| {
        j.generation == t.meta().generation || !j.last.as_ref().is_some_and(|l| l.state.is_ended())
    });
    let job = match known {
        Some(JobRef {
            last: Some(job), ..
        }) if job.state == JobState::Succeeded => Ok(Some(job)),
        Some(j) if j.url == agent.url => {
            let r = ctx.agents.job(&agent.url, &j.id).await;
            ctx.metrics.agent_call(AgentOp::job, &r);
            r
        }
        _ => Ok(None),
    };
    let job = match job {
        Ok(Some(job)) => job,
        // No job known here (this process restarted, or the agent did): ask again; a complete
        // model ends the job at once.
        Ok(None) => match prefetch(t, ctx, uid, node, &agent.url).await {
            Ok(job) => job,
            // It holds the pin; a busy or unanswering agent is asked again next pass (if it
            // stays silent, its reports age out and the node is Lost, then replaced).
            Err(e) if e.is_transient() => {
                tracing::debug!(node = %node.name, error = %error_chain(&e), "prefetch not taken yet");
                return (Held::InProgress { done: 0 }, None);
            }
            Err(e) => {
                ctx.failed()
                    .insert(key.clone(), (Instant::now(), error_chain(&e)));
                let (_, r) = unpin_one(
                    ctx,
                    uid,
                    pin,
                    Reclaim::Retain,
                    node.name.clone(),
                    agent.url.clone(),
                )
                .await;
                if let Err(u) = r {
                    tracing::warn!(node = %node.name, error = %error_chain(&u), "cannot release the pin");
                }
                return (Held::Failed, None);
            }
        },
        Err(e) => {
            tracing::debug!(node = %node.name, error = %error_chain(&e), "job status unavailable");
            return (Held::InProgress { done: 0 }, None);
        }
    };
    if let Some(j) = ctx.jobs().get_mut(&key) {
        j.last = Some(job.clone());
    }
    ctx.follow(t, uid, &node.name, &agent.url, &job);
    let state = match job.state {
        JobState::Succeeded => Held::Ready,
        JobState::Pending | JobState::Running => Held::InProgress {
            done: job.bytes_done,
        },
        JobState::Failed if is_refusal(&job) => Held::Failed,
        JobState::Failed => {
            let why = job
                .error
                .clone()
                .unwrap_or_else(|| "prefetch failed".into());
            ctx.jobs().remove(&key);
            ctx.failed()
                .insert(key.clone(), (Instant::now(), why.clone()));
            let r = ctx.agents.unpin(&agent.url, pin, Reclaim::Retain).await;
            ctx.metrics.agent_call(AgentOp::unpin, &r);
            ctx.inventory.states.note_pin(&agent.url, pin, false);
            ctx.event(
                t,
                EventType::Warning,
                "NodeFailed",
                format!("prefetch failed on {}: {}", node.name, truncate(&why, 512)),
            )
            .await;
            Held::Failed
        }
    };
    (state, Some(job))
}

/// Whether a failed job failed because the hub refused the revision (the same answer on every
/// node), rather than because of the node.
fn is_refusal(job: &Job) -> bool {
    matches!(
        job.failure,
        Some(JobFailure::HubRefused | JobFailure::NotFound | JobFailure::Unrepresentable)
    )
}

fn learn(l: &mut Learned, job: &Job, registry_host: &str) {
    if let Some(total) = job.bytes_total {
        l.size = Some(total);
    }
    if job.commit.is_some() {
        l.commit = job.commit.clone();
    }
    if job.state == JobState::Succeeded && l.references.is_empty() {
        l.references = job
            .references
            .iter()
            .map(|(f, r)| (*f, format!("{registry_host}/{r}")))
            .collect();
    }
    if job.state == JobState::Failed && is_refusal(job) && l.refused.is_none() {
        l.refused = Some(
            job.error
                .clone()
                .unwrap_or_else(|| "the hub refused".into()),
        );
    }
}

fn prefetch_request(t: &Torrent) -> PrefetchRequest {
    let hub = &t.spec.hub;
    PrefetchRequest {
        hub: hub.kind(),
        repo: hub.repo_id.clone(),
        revision: Some(hub.revision().to_string()),
        filter: hub.filter(),
        forms: t.spec.forms.iter().map(|f| Form::from(*f)).collect(),
    }
}

async fn prefetch(
    t: &Torrent,
    ctx: &Context,
    uid: &str,
    node: &NodeInfo,
    url: &str,
) -> Result<Job, Error> {
    let r = ctx.agents.prefetch(url, &prefetch_request(t)).await;
    ctx.metrics.agent_call(AgentOp::prefetch, &r);
    let job = r?;
    ctx.follow(t, uid, &node.name, url, &job);
    ctx.jobs().insert(
        (uid.to_string(), node.name.clone()),
        JobRef {
            id: job.id.clone(),
            url: url.to_string(),
            last: Some(job.clone()),
            generation: t.meta().generation,
        },
    );
    Ok(job)
}

/// Pin the Torrent on a new node, then start its prefetch.
async fn start(
    t: &Torrent,
    ctx: &Context,
    uid: &str,
    pin: &str,
    node: &NodeInfo,
) -> Result<(), Error> {
    let url = node
        .agent
        .as_ref()
        .map(|a| a.url.clone())
        .ok_or_else(|| Error::AgentUrl(String::new()))?;
    let hub = &t.spec.hub;
    let target = PinTarget::hub(hub.kind(), &hub.repo_id, Some(hub.revision()), hub.filter());
    let r = ctx.agents.pin(&url, pin, &target).await;
    ctx.metrics.agent_call(AgentOp::pin, &r);
    r?;
    ctx.inventory.states.note_pin(&url, pin, true);
    if let Err(e) = prefetch(t, ctx, uid, node, &url).await {
        // Not a holder after all: the pin would make it one.
        let (_, r) = unpin_one(ctx, uid, pin, Reclaim::Retain, node.name.clone(), url).await;
        if let Err(u) = r {
            tracing::warn!(node = %node.name, error = %error_chain(&u), "cannot release the pin");
        }
        return Err(e);
    }
    Ok(())
}

/// Release a Torrent's pin on nodes it no longer wants, with its reclaim policy.
async fn release_pins(t: &Torrent, ctx: &Context, uid: &str, pin: &str, nodes: &[&NodeInfo]) {
    if nodes.is_empty() {
        return;
    }
    let reclaim = Reclaim::from(t.spec.reclaim_policy);
    let calls: Vec<_> = nodes
        .iter()
        .filter_map(|n| Some((n.name.clone(), n.agent.as_ref()?.url.clone())))
        .map(|(node, url)| unpin_one(ctx, uid, pin, reclaim, node, url))
        .collect();
    let done: Vec<String> = futures_util::stream::iter(calls)
        .buffered(PARALLEL_CALLS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .filter_map(|(node, r)| match r {
            Ok(_) => Some(node),
            Err(e) => {
                tracing::warn!(node = %node, error = %error_chain(&e), "cannot release the pin");
                None
            }
        })
        .collect();
    if !done.is_empty() {
        ctx.event(
            t,
            EventType::Normal,
            "Released",
            format!(
                "released ({:?}) on {} node(s) no longer wanted: {}",
                reclaim,
                done.len(),
                summary_list(&done)
            ),
        )
        .await;
    }
}

fn is_healthy(held: &BTreeMap<String, Held>, n: &NodeInfo) -> bool {
    matches!(
        held.get(&n.name),
        Some(Held::Ready | Held::InProgress { .. })
    )
}

/// Release one node's pin; whether it existed.
async fn unpin_one(
    ctx: &Context,
    uid: &str,
    pin: &str,
    reclaim: Reclaim,
    node: String,
    url: String,
) -> (String, Result<bool, Error>) {
    let r = ctx.agents.unpin(&url, pin, reclaim).await;
    ctx.metrics.agent_call(AgentOp::unpin, &r);
    if r.is_ok() {
        ctx.inventory.states.note_pin(&url, pin, false);
        ctx.jobs().remove(&(uid.to_string(), node.clone()));
    }
    (node, r)
}

/// The hub refused the revision: release what was pinned and say why.
#[allow(clippy::too_many_arguments)]
async fn refused(
    t: &Torrent,
    ctx: &Context,
    old: &TorrentStatus,
    mut status: TorrentStatus,
    uid: &str,
    pin: &str,
    holders: &[&NodeInfo],
    reason: String,
) -> Result<Action, Error> {
    release_pins(t, ctx, uid, pin, holders).await;
    ctx.jobs().retain(|(u, _), _| u != uid);
    let generation = t.meta().generation;
    let was_failed = old.phase == Some(Phase::Failed);
    set_phase(
        &mut status,
        Phase::Failed,
        "HubRefused",
        &reason,
        generation,
    );
    status.ready_nodes = Some(format!("0/{}", desired_count(t)));
    status.nodes = NodeSummary {
        desired: desired_count(t),
        ..NodeSummary::default()
    };
    write_status(t, ctx, old, status).await?;
    if !was_failed {
        ctx.event(t, EventType::Warning, "HubRefused", truncate(&reason, 1024))
            .await;
    }
    Ok(Action::requeue(FAILED_RETRY))
}

fn desired_count(t: &Torrent) -> u32 {
    match t.spec.replicas {
        Replicas::Count(n) => n,
        Replicas::All => 0,
    }
}

/// The Torrent is being deleted: release its pins everywhere, with its reclaim policy.
async fn cleanup(t: &Torrent, ctx: &Context) -> Result<Action, Error> {
    // Releasing against an empty inventory would ask no agent and drop the finalizer.
    if !ctx.inventory.states.synced() {
        return Err(Error::NotSynced);
    }
    let name = t.meta().name.clone().ok_or(Error::Unnamed)?;
    let uid = t.uid().unwrap_or_default();
    let pin = pin_name(&name);
    let old = t.status.clone().unwrap_or_default();
    let mut status = old.clone();
    set_phase(
        &mut status,
        Phase::Reclaiming,
        "Deleting",
        &format!("releasing the pins ({:?})", t.spec.reclaim_policy),
        t.meta().generation,
    );
    write_status(t, ctx, &old, status).await?;
    let reclaim = Reclaim::from(t.spec.reclaim_policy);
    let patient = t
        .meta()
        .deletion_timestamp
        .as_ref()
        .is_none_or(|d| age_of(d) < CLEANUP_PATIENCE);
    // Every ready agent is asked (a pin made just before the operator restarted may not be in
    // its last report); one that has no such pin answers 404.
    let nodes = ctx.inventory.snapshot();
    let calls: Vec<_> = nodes
        .iter()
        .filter_map(|n| {
            let a = n.agent.as_ref().filter(|a| a.ready)?;
            Some((n.name.clone(), a.url.clone()))
        })
        .map(|(node, url)| unpin_one(ctx, &uid, &pin, reclaim, node, url))
        .collect();
    let results = futures_util::stream::iter(calls)
        .buffer_unordered(PARALLEL_CALLS)
        .collect::<Vec<_>>()
        .await;
    let released: Vec<String> = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(true)))
        .map(|(n, _)| n.clone())
        .collect();
    let failed: Vec<(String, String)> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| (n.clone(), error_chain(e))))
        .collect();
    // Holders whose agent is not ready keep the pin: say so.
    let unreachable: Vec<String> = nodes
        .iter()
        .filter(|n| {
            n.agent.as_ref().is_none_or(|a| !a.ready)
                && (ctx.jobs().contains_key(&(uid.clone(), n.name.clone()))
                    || n.agent
                        .as_ref()
                        .and_then(|a| a.state.as_ref())
                        .is_some_and(|s| s.pins.contains(&pin)))
        })
        .map(|n| n.name.clone())
        .collect();
    if !failed.is_empty() && patient {
        let (node, why) = &failed[0];
        return Err(Error::Config(format!(
            "cannot release the pin on {} node(s) yet (first: {node}: {why})",
            failed.len()
        )));
    }
    if !released.is_empty() {
        ctx.event(
            t,
            EventType::Normal,
            "Released",
            format!(
                "released ({reclaim:?}) on {} node(s): {}",
                released.len(),
                summary_list(&released)
            ),
        )
        .await;
    }
    let left: Vec<String> = unreachable
        .into_iter()
        .chain(failed.into_iter().map(|(n, _)| n))
        .collect();
    if !left.is_empty() {
        ctx.event(
            t,
            EventType::Warning,
            "PinLeft",
            format!(
                "the pin stays on {} node(s) whose agent did not answer: {}",
                left.len(),
                summary_list(&left)
            ),
        )
        .await;
    }
    ctx.jobs().retain(|(u, _), _| u != &uid);
    ctx.failed().retain(|(u, _), _| u != &uid);
    ctx.metrics.set_phase(&uid, None);
    Ok(Action::await_change())
}

/// Set the phase, and its condition `True` (the other phases' conditions `False`); `Ready`
/// is always present so that `kubectl wait --for=condition=Ready` works.
fn set_phase(
    s: &mut TorrentStatus,
    phase: Phase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    s.phase = Some(phase);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let others: Vec<String> = s
        .conditions
        .iter()
        .filter(|c| c.type_ != phase.as_str() && c.type_ != "Ready" && c.status == "True")
        .map(|c| c.type_.clone())
        .collect();
    let mut set = |type_: &str, on: bool, reason: &str, message: &str| {
        let status = if on { "True" } else { "False" };
        match s.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now.clone();
                }
                c.status = status.into();
                c.reason = reason.into();
                c.message = message.into();
                c.observed_generation = generation;
            }
            None => s.conditions.push(Condition {
                type_: type_.into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: now.clone(),
                observed_generation: generation,
            }),
        }
    };
    set(phase.as_str(), true, reason, &truncate(message, 1024));
    if phase != Phase::Ready {
        set("Ready", false, phase.as_str(), &truncate(message, 1024));
    }
    for o in others {
        set(&o, false, phase.as_str(), "");
    }
}

/// Write the status (server-side apply) when it changed.
async fn write_status(
    t: &Torrent,
    ctx: &Context,
    old: &TorrentStatus,
    status: TorrentStatus,
) -> Result<(), Error> {
    ctx.metrics
        .set_phase(&t.uid().unwrap_or_default(), status.phase);
    if &status == old {
        return Ok(());
    }
    let name = t.meta().name.clone().ok_or(Error::Unnamed)?;
    let api: Api<Torrent> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": "manta.io/v1alpha1",
        "kind": "Torrent",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn age_of(t: &Time) -> Duration {
    let now = k8s_openapi::jiff::Timestamp::now();
    let secs = now.as_second() - t.0.as_second();
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// At most eight names, then how many more.
fn summary_list(names: &[String]) -> String {
    let mut s = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        s.push_str(&format!(" and {} more", names.len() - 8));
    }
    s
}

/// `1.2 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
