//! Filter and Score plugins: which nodes may hold a Torrent, and which of them are best.
//!
//! Filters rule nodes out, each with a reason. Scores rate each remaining node 0–100 (each
//! plugin's own scale, documented on it); a node's total is the sum of weight × score over the
//! enabled scores, in the configuration's order, in integers, so the same inputs always give the
//! same choice. Ties go to the node whose name sorts first. Nodes are chosen one at a time, so
//! `Spread` sees the nodes already chosen.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::crd::Torrent;
use crate::inventory::NodeInfo;
use crate::Error;

/// What the plugins are asked about.
pub struct Request<'a> {
    pub torrent: &'a Torrent,
    /// The model's size on one node, once a node has resolved it.
    pub size: Option<u64>,
    /// Nodes that hold or fetch the Torrent already (and those chosen so far in this pass).
    pub holders: Vec<&'a NodeInfo>,
}

impl Request<'_> {
    /// Bytes of the model the node still lacks, when the size is known.
    fn needed(&self, node: &NodeInfo) -> Option<u64> {
        let size = self.size?;
        let hub = &self.torrent.spec.hub;
        let cached = node
            .agent_state()
            .and_then(|s| s.cached(hub.kind(), &hub.repo_id, hub.revision()))
            .map_or(0, |(c, _)| c);
        Some(size.saturating_sub(cached))
    }
}

pub trait Filter: Send + Sync {
    fn name(&self) -> &'static str;
    /// `Err(reason)` rules the node out.
    fn filter(&self, req: &Request, node: &NodeInfo) -> Result<(), String>;
}

pub trait Score: Send + Sync {
    fn name(&self) -> &'static str;
    /// 0 (worst) to 100 (best); more is clamped.
    fn score(&self, req: &Request, node: &NodeInfo) -> u8;
}

/// `nodeSelector`: the node has every label the Torrent names.
pub struct NodeSelector;

impl Filter for NodeSelector {
    fn name(&self) -> &'static str {
        "NodeSelector"
    }

    fn filter(&self, req: &Request, node: &NodeInfo) -> Result<(), String> {
        match req
            .torrent
            .spec
            .node_selector
            .iter()
            .find(|(k, v)| node.labels.get(*k) != Some(*v))
        {
            Some((k, v)) => Err(format!("label {k}={v} not on the node")),
            None => Ok(()),
        }
    }
}

/// The node is Ready and schedulable, and has a ready agent that answers.
pub struct NodeReady;

impl Filter for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn filter(&self, _: &Request, node: &NodeInfo) -> Result<(), String> {
        if !node.ready {
            return Err("node not Ready".into());
        }
        if !node.schedulable {
            return Err("node cordoned".into());
        }
        match &node.agent {
            None => Err("no agent on the node".into()),
            Some(a) if !a.ready => Err("agent not ready".into()),
            Some(a) if a.state.is_none() => Err("agent not answering".into()),
            Some(_) => Ok(()),
        }
    }
}

/// The model fits in what the agent can give it without evicting pinned content (its capacity
/// less pinned and reserved bytes; unpinned content is evictable). Scores the room left after
/// the model, as a share of the capacity.
pub struct DiskAware;

impl Filter for DiskAware {
    fn name(&self) -> &'static str {
        "DiskAware"
    }

    fn filter(&self, req: &Request, node: &NodeInfo) -> Result<(), String> {
        let Some(state) = node.agent_state() else {
            return Err("no space report from the agent".into());
        };
        let available = state.space.available_without_pinned();
        match req.needed(node) {
            Some(need) if need > available => Err(format!(
                "needs {need} bytes, {available} available without evicting pinned content"
            )),
            _ => Ok(()),
        }
    }
}

impl Score for DiskAware {
    fn name(&self) -> &'static str {
        "DiskAware"
    }

    fn score(&self, req: &Request, node: &NodeInfo) -> u8 {
        let Some(state) = node.agent_state() else {
            return 0;
        };
        let capacity = state.space.capacity.max(1);
        let left = state
            .space
            .available_without_pinned()
            .saturating_sub(req.needed(node).unwrap_or(0));
        percent(left, capacity)
    }
}

/// Prefer nodes that hold the revision already, or most of it: the share of its bytes cached.
pub struct CacheAware;

impl Score for CacheAware {
    fn name(&self) -> &'static str {
        "CacheAware"
    }

    fn score(&self, req: &Request, node: &NodeInfo) -> u8 {
        let hub = &req.torrent.spec.hub;
        match node
            .agent_state()
            .and_then(|s| s.cached(hub.kind(), &hub.repo_id, hub.revision()))
        {
            Some((cached, size)) if size > 0 => percent(cached, size),
            _ => 0,
        }
    }
}

/// Spread the copies across a topology key (`topology.kubernetes.io/zone` by default): 100 in a
/// domain with the fewest copies, 0 in the one with the most (a node without the label is its own
/// domain, ``).
pub struct Spread {
    pub topology_key: String,
}

impl Score for Spread {
    fn name(&self) -> &'static str {
        "Spread"
    }

    fn score(&self, req: &Request, node: &NodeInfo) -> u8 {
        let domain = |n: &NodeInfo| {
            n.labels
                .get(&self.topology_key)
                .cloned()
                .unwrap_or_default()
        };
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for h in &req.holders {
            *counts.entry(domain(h)).or_default() += 1;
        }
        let max = counts.values().copied().max().unwrap_or(0);
        if max == 0 {
            return 100;
        }
        let mine = counts.get(&domain(node)).copied().unwrap_or(0);
        percent(max - mine, max)
    }
}

fn percent(part: u64, whole: u64) -> u8 {
    if whole == 0 {
        return 0;
    }
    u8::try_from((u128::from(part.min(whole)) * 100 / u128::from(whole)) as u64).unwrap_or(100)
}

/// The plugins and their weights, from the operator's configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginConfig {
    /// Filters, in the order they run [default: NodeSelector, NodeReady, DiskAware].
    #[serde(default = "default_filters")]
    pub filters: Vec<String>,
    /// Scores and their weights [default: CacheAware 2, DiskAware 1, Spread 1].
    #[serde(default = "default_scores")]
    pub scores: Vec<WeightedScore>,
    /// The label `Spread` spreads across.
    #[serde(default = "default_topology_key")]
    pub topology_key: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WeightedScore {
    pub name: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

fn default_filters() -> Vec<String> {
    ["NodeSelector", "NodeReady", "DiskAware"]
        .map(String::from)
        .to_vec()
}

fn default_scores() -> Vec<WeightedScore> {
    [("CacheAware", 2), ("DiskAware", 1), ("Spread", 1)]
        .map(|(n, w)| WeightedScore {
            name: n.to_string(),
            weight: w,
        })
        .to_vec()
}

fn default_topology_key() -> String {
    "topology.kubernetes.io/zone".to_string()
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            filters: default_filters(),
            scores: default_scores(),
            topology_key: default_topology_key(),
        }
    }
}

/// The enabled plugins, in order.
pub struct Framework {
    filters: Vec<Box<dyn Filter>>,
    scores: Vec<(Box<dyn Score>, u64)>,
}

/// What one choice found.
#[derive(Debug, Default)]
pub struct Choice {
    /// Chosen nodes, best first.
    pub picked: Vec<String>,
    /// Nodes that passed every filter (chosen or not).
    pub feasible: usize,
    /// Why the others were ruled out: `<filter>: <reason>` → how many nodes.
    pub rejected: BTreeMap<String, usize>,
}

impl Framework {
    pub fn new(cfg: &PluginConfig) -> Result<Self, Error> {
        // Releasing a node that no longer matches its Torrent applies the nodeSelector, and a
        // node without a ready agent cannot be asked anything: placement must agree with both.
        for required in ["NodeSelector", "NodeReady"] {
            if !cfg.filters.iter().any(|f| f == required) {
                return Err(Error::Config(format!(
                    "the filter plugin {required} cannot be disabled (filters = {:?})",
                    cfg.filters
                )));
            }
        }
        let mut filters: Vec<Box<dyn Filter>> = Vec::new();
        for name in &cfg.filters {
            filters.push(match name.as_str() {
                "NodeSelector" => Box::new(NodeSelector),
                "NodeReady" => Box::new(NodeReady),
                "DiskAware" => Box::new(DiskAware),
                other => return Err(Error::Config(format!("no filter plugin named {other:?}"))),
            });
        }
        let mut scores: Vec<(Box<dyn Score>, u64)> = Vec::new();
        for s in &cfg.scores {
            let plugin: Box<dyn Score> = match s.name.as_str() {
                "CacheAware" => Box::new(CacheAware),
                "DiskAware" => Box::new(DiskAware),
                "Spread" => Box::new(Spread {
                    topology_key: cfg.topology_key.clone(),
                }),
                other => return Err(Error::Config(format!("no score plugin named {other:?}"))),
            };
            scores.push((plugin, u64::from(s.weight)));
        }
        Ok(Framework { filters, scores })
    }

    /// The first filter that rules `node` out, with its reason.
    pub fn filter(&self, req: &Request, node: &NodeInfo) -> Result<(), String> {
        for f in &self.filters {
            f.filter(req, node)
                .map_err(|r| format!("{}: {r}", f.name()))?;
        }
        Ok(())
    }

    /// The weighted total of a node's scores.
    pub fn score(&self, req: &Request, node: &NodeInfo) -> u64 {
        self.scores
            .iter()
            .map(|(p, w)| w * u64::from(p.score(req, node).min(100)))
            .sum()
    }

    /// Choose up to `n` of `candidates` (`None`: every one that passes the filters), one at a
    /// time, each chosen node joining `req.holders` before the next is scored.
    pub fn choose<'a>(
        &self,
        mut req: Request<'a>,
        candidates: &'a [NodeInfo],
        n: Option<usize>,
    ) -> Choice {
        let mut choice = Choice::default();
        let mut feasible: Vec<&'a NodeInfo> = Vec::new();
        for node in candidates {
            match self.filter(&req, node) {
                Ok(()) => feasible.push(node),
                Err(reason) => *choice.rejected.entry(reason_class(&reason)).or_default() += 1,
            }
        }
        choice.feasible = feasible.len();
        let want = n.unwrap_or(feasible.len()).min(feasible.len());
        if n.is_none() {
            choice.picked = feasible.iter().map(|n| n.name.clone()).collect();
            return choice;
        }
        for _ in 0..want {
            let best = feasible
                .iter()
                .enumerate()
                .map(|(i, node)| (self.score(&req, node), std::cmp::Reverse(&node.name), i))
                .max()
                .map(|(_, _, i)| i);
            let Some(i) = best else { break };
            let node = feasible.swap_remove(i);
            choice.picked.push(node.name.clone());
            req.holders.push(node);
        }
        choice
    }
}

/// A reason without its numbers, so that reasons count by kind (`DiskAware: needs …` is one).
fn reason_class(reason: &str) -> String {
    match reason.split_once(": needs ") {
        Some((f, _)) => format!("{f}: not enough space"),
        None => reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::inventory::{AgentInfo, AgentState};

    const GIB: u64 = 1 << 30;

    fn torrent(spec: serde_json::Value) -> Torrent {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "manta.io/v1alpha1", "kind": "Torrent",
            "metadata": {"name": "t"}, "spec": spec
        }))
        .unwrap()
    }

    fn node(name: &str, zone: &str, capacity: u64, pinned: u64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: [("topology.kubernetes.io/zone".to_string(), zone.to_string())].into(),
            ready: true,
            schedulable: true,
            agent: Some(AgentInfo {
                pod: format!("agent-{name}"),
                url: format!("http://{name}"),
                ready: true,
                state: Some(Arc::new(AgentState {
                    space: manta_api::SpaceView {
                        capacity,
                        used: pinned,
                        reserved: 0,
                        pinned,
                        high_watermark: capacity,
                        low_watermark: capacity,
                    },
                    revisions: vec![],
                    pins: Default::default(),
                })),
            }),
        }
    }

    fn req(t: &Torrent, size: Option<u64>) -> Request<'_> {
        Request {
            torrent: t,
            size,
            holders: vec![],
        }
    }

    #[test]
    fn filters_say_why_a_node_is_ruled_out() {
        let t =
            torrent(serde_json::json!({"hub": {"repoID": "a/b"}, "nodeSelector": {"gpu": "true"}}));
        let f = Framework::new(&PluginConfig::default()).unwrap();
        let mut n = node("n", "a", 10 * GIB, 0);
        assert_eq!(
            f.filter(&req(&t, None), &n).unwrap_err(),
            "NodeSelector: label gpu=true not on the node"
        );
        n.labels.insert("gpu".into(), "true".into());
        assert!(f.filter(&req(&t, None), &n).is_ok());
        n.schedulable = false;
        assert_eq!(
            f.filter(&req(&t, None), &n).unwrap_err(),
            "NodeReady: node cordoned"
        );
        n.schedulable = true;
        n.agent.as_mut().unwrap().state = None;
        assert_eq!(
            f.filter(&req(&t, None), &n).unwrap_err(),
            "NodeReady: agent not answering"
        );
    }

    #[test]
    fn disk_aware_keeps_pinned_content_and_counts_evictable_content_as_room() {
        let t = torrent(serde_json::json!({"hub": {"repoID": "a/b"}}));
        // 10 GiB, 8 pinned: a 3 GiB model does not fit; 2 GiB does.
        let n = node("n", "a", 10 * GIB, 8 * GIB);
        assert!(DiskAware.filter(&req(&t, Some(3 * GIB)), &n).is_err());
        assert!(DiskAware.filter(&req(&t, Some(2 * GIB)), &n).is_ok());
        // Unknown size (not resolved yet): no node is ruled out by it.
        assert!(DiskAware.filter(&req(&t, None), &n).is_ok());
        assert_eq!(DiskAware.score(&req(&t, Some(GIB)), &n), 10);
    }

    #[test]
    fn spread_puts_copies_in_different_zones_and_ties_go_to_the_first_name() {
        let t = torrent(serde_json::json!({"hub": {"repoID": "a/b"}, "replicas": 3}));
        let cfg = PluginConfig {
            scores: vec![WeightedScore {
                name: "Spread".into(),
                weight: 1,
            }],
            ..PluginConfig::default()
        };
        let f = Framework::new(&cfg).unwrap();
        let nodes = vec![
            node("a1", "a", GIB, 0),
            node("a2", "a", GIB, 0),
            node("b1", "b", GIB, 0),
            node("c1", "c", GIB, 0),
        ];
        let c = f.choose(req(&t, None), &nodes, Some(3));
        assert_eq!(c.picked, vec!["a1", "b1", "c1"]);
        assert_eq!(c.feasible, 4);
        // Every node: `None` takes every feasible one.
        let c = f.choose(req(&t, None), &nodes, None);
        assert_eq!(c.picked.len(), 4);
    }

    #[test]
    fn scores_are_weighted_sums_in_integers() {
        let t = torrent(serde_json::json!({"hub": {"repoID": "a/b"}}));
        let cfg = PluginConfig {
            scores: vec![
                WeightedScore {
                    name: "DiskAware".into(),
                    weight: 3,
                },
                WeightedScore {
                    name: "Spread".into(),
                    weight: 2,
                },
            ],
            ..PluginConfig::default()
        };
        let f = Framework::new(&cfg).unwrap();
        // DiskAware 50 × 3 + Spread 100 × 2.
        assert_eq!(
            f.score(&req(&t, None), &node("n", "a", 10 * GIB, 5 * GIB)),
            350
        );
    }

    #[test]
    fn rejected_nodes_are_counted_by_reason() {
        let t = torrent(serde_json::json!({"hub": {"repoID": "a/b"}}));
        let f = Framework::new(&PluginConfig::default()).unwrap();
        let nodes = vec![node("a", "a", GIB, GIB), node("b", "a", GIB, GIB)];
        let c = f.choose(req(&t, Some(GIB)), &nodes, Some(1));
        assert!(c.picked.is_empty());
        assert_eq!(c.rejected.get("DiskAware: not enough space"), Some(&2));
    }
}
