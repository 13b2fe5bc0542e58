//! What the operator knows of the cluster: Nodes and agent Pods (from reflector caches fed by
//! watches), and what each agent last reported of its space, cache and pins (polled over its
//! admin API in the background, never per reconcile).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store;
use manta_api::{CachedRevision, SpaceView};

use crate::agents::Agents;

/// One node as the plugins see it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
    /// Not cordoned (`spec.unschedulable`).
    pub schedulable: bool,
    /// The node's agent, if it has a running one.
    pub agent: Option<AgentInfo>,
}

/// A node's agent.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub pod: String,
    /// `http://<pod IP>:<cluster port>`.
    pub url: String,
    /// The pod's `Ready` condition is `True`.
    pub ready: bool,
    /// What it last reported; `None` until it answered, or after it stopped answering.
    pub state: Option<Arc<AgentState>>,
}

impl NodeInfo {
    /// The agent's state, when the node has a ready agent that answers.
    pub fn agent_state(&self) -> Option<&AgentState> {
        self.agent
            .as_ref()
            .filter(|a| a.ready)
            .and_then(|a| a.state.as_deref())
    }
}

/// What an agent reported.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentState {
    pub space: SpaceView,
    pub revisions: Vec<CachedRevision>,
    /// The names of its pins.
    pub pins: BTreeSet<String>,
}

impl AgentState {
    /// Bytes of a hub revision the node holds, and its size (the best match of repo and
    /// revision, whatever the subset).
    pub fn cached(
        &self,
        hub: manta_api::HubKind,
        repo: &str,
        revision: &str,
    ) -> Option<(u64, u64)> {
        self.revisions
            .iter()
            .filter(|r| {
                r.hub == hub
                    && r.repo.eq_ignore_ascii_case(repo)
                    && (r.revision == revision || r.commit == revision)
            })
            .map(|r| (r.cached_bytes, r.size))
            .max()
    }
}

/// The agents' last reports, by agent URL.
#[derive(Default)]
pub struct AgentStates {
    states: Mutex<HashMap<String, Reported>>,
    /// One complete poll of every agent has been recorded (after the Node and Pod caches
    /// filled): until then "no report" means "not asked yet", not "not answering".
    synced: AtomicBool,
}

struct Reported {
    state: Option<Arc<AgentState>>,
    ok_at: Option<Instant>,
}

impl AgentStates {
    pub fn get(&self, url: &str, fresh: Duration) -> Option<Arc<AgentState>> {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let r = states.get(url)?;
        r.ok_at
            .filter(|t| t.elapsed() <= fresh)
            .and(r.state.clone())
    }

    /// Whether every agent has been asked once: before that, the controller acts on nothing.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Note that every agent has been asked once.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Record a report (`None`: the agent did not answer); whether that matters to the
    /// Torrents: the agent started or stopped answering, or its pins changed. (Progress and
    /// space are read when a reconcile runs; they do not wake one.) A missed answer keeps the
    /// last report until it is older than `fresh`: one slow answer (an agent busy hashing) must
    /// not make its nodes Lost and start their models' downloads elsewhere.
    pub fn set(&self, url: &str, state: Option<AgentState>, fresh: Duration) -> bool {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let e = states.entry(url.to_string()).or_insert(Reported {
            state: None,
            ok_at: None,
        });
        match state {
            Some(s) => {
                let changed = e.state.as_ref().is_none_or(|old| old.pins != s.pins);
                e.state = Some(Arc::new(s));
                e.ok_at = Some(Instant::now());
                changed
            }
            None if e.ok_at.is_some_and(|t| t.elapsed() <= fresh) => false,
            None => e.state.take().is_some(),
        }
    }

    /// Note a pin the operator just made or released, so the next reconcile sees it before the
    /// next poll does.
    pub fn note_pin(&self, url: &str, pin: &str, present: bool) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Some(s)) = states.get_mut(url).map(|r| r.state.as_mut()) {
            let mut next = (**s).clone();
            if present {
                next.pins.insert(pin.to_string());
            } else {
                next.pins.remove(pin);
            }
            *s = Arc::new(next);
        }
    }

    /// Forget agents that are gone.
    pub fn retain(&self, urls: &BTreeSet<String>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|u, _| urls.contains(u));
    }
}

/// The cluster as of the reflectors and the last agent reports.
#[derive(Clone)]
pub struct Inventory {
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub states: Arc<AgentStates>,
    /// The agents' cluster port, when their pod names none (`cluster`).
    pub agent_port: u16,
    /// How old a report may be before the agent counts as not answering.
    pub fresh: Duration,
}

fn condition_true(conds: Option<&Vec<impl ConditionLike>>, ty: &str) -> bool {
    conds
        .map(|c| c.iter().any(|c| c.kind() == ty && c.status() == "True"))
        .unwrap_or(false)
}

trait ConditionLike {
    fn kind(&self) -> &str;
    fn status(&self) -> &str;
}

impl ConditionLike for k8s_openapi::api::core::v1::NodeCondition {
    fn kind(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
}

impl ConditionLike for k8s_openapi::api::core::v1::PodCondition {
    fn kind(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
}

impl Inventory {
    /// Each agent pod's node, URL and readiness (a ready pod wins over one that is not, then the
    /// newest).
    pub fn agents(&self) -> BTreeMap<String, (String, String, bool)> {
        let mut out: BTreeMap<String, (String, String, bool, String)> = BTreeMap::new();
        for pod in self.pods.state() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let status = pod.status.as_ref();
            let Some(ip) = status.and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let ready = condition_true(status.and_then(|s| s.conditions.as_ref()), "Ready");
            let port = pod
                .spec
                .as_ref()
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some("cluster"))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .unwrap_or(self.agent_port);
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            };
            let url = format!("http://{host}:{port}");
            let name = pod.metadata.name.clone().unwrap_or_default();
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let better = match out.get(&node) {
                None => true,
                Some((_, _, r, c)) => (ready, &created) > (*r, c),
            };
            if better {
                out.insert(node, (name, url, ready, created));
            }
        }
        out.into_iter()
            .map(|(n, (p, u, r, _))| (n, (p, u, r)))
            .collect()
    }

    /// Every node, sorted by name, with its agent.
    pub fn snapshot(&self) -> Vec<NodeInfo> {
        let agents = self.agents();
        let mut nodes: Vec<NodeInfo> = self
            .nodes
            .state()
            .iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .map(|n| {
                let name = n.metadata.name.clone().unwrap_or_default();
                let agent = agents.get(&name).map(|(pod, url, ready)| AgentInfo {
                    pod: pod.clone(),
                    url: url.clone(),
                    ready: *ready,
                    state: self.states.get(url, self.fresh),
                });
                NodeInfo {
                    labels: n.metadata.labels.clone().unwrap_or_default(),
                    ready: condition_true(
                        n.status.as_ref().and_then(|s| s.conditions.as_ref()),
                        "Ready",
                    ),
                    schedulable: !n
                        .spec
                        .as_ref()
                        .and_then(|s| s.unschedulable)
                        .unwrap_or(false),
                    agent,
                    name,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }
}

/// Poll every agent's space, cache and pins every `interval`; `changed` gets a message when an
/// agent starts or stops answering or its report changes (the controller then reconciles all).
pub async fn poll_agents(
    inv: Inventory,
    agents: Agents,
    interval: Duration,
    changed: tokio::sync::mpsc::Sender<()>,
) {
    const PARALLEL: usize = 64;
    // The agents are the pods the cache holds: wait until it holds them all (and the Nodes),
    // or the first poll would find none and every node would look agent-less.
    if inv.nodes.wait_until_ready().await.is_err() || inv.pods.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        let urls: BTreeSet<String> = inv.agents().into_values().map(|(_, u, _)| u).collect();
        inv.states.retain(&urls);
        agents.retain(&urls);
        let results = futures_util::stream::iter(urls)
            .map(|url| {
                let agents = agents.clone();
                async move {
                    let state = agents.report(&url).await;
                    (url, state)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect::<Vec<_>>()
            .await;
        let mut any = false;
        for (url, state) in results {
            if let Err(e) = &state {
                tracing::debug!(agent = %url, error = %e, "agent did not report");
            }
            any |= inv.states.set(&url, state.ok(), inv.fresh);
        }
        if !inv.states.synced() {
            inv.states.mark_synced();
            any = true;
        }
        if any {
            // A full channel already holds a wake-up.
            let _ = changed.try_send(());
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pins: &[&str]) -> AgentState {
        AgentState {
            space: SpaceView {
                capacity: 1,
                used: 0,
                reserved: 0,
                pinned: 0,
                high_watermark: 1,
                low_watermark: 1,
            },
            revisions: vec![],
            pins: pins.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn one_missed_answer_keeps_the_last_report_until_it_is_stale() {
        let s = AgentStates::default();
        let fresh = Duration::from_secs(60);
        assert!(s.set("a", Some(state(&["p"])), fresh), "a new agent wakes");
        assert!(
            !s.set("a", Some(state(&["p"])), fresh),
            "the same pins do not"
        );
        assert!(!s.set("a", None, fresh), "one miss changes nothing");
        assert!(s.get("a", fresh).is_some());
        // Once the last answer is older than `fresh`, a miss drops it, and that wakes.
        assert!(s.set("a", None, Duration::ZERO));
        assert!(s.get("a", fresh).is_none());
        assert!(!s.set("a", None, Duration::ZERO));
        assert!(s.set("a", Some(state(&[])), fresh), "answering again wakes");
    }
}
