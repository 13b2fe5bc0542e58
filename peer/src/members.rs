//! Membership: the cluster addresses of the agents, from a static list or a DNS name (a
//! headless Service) re-resolved periodically. Members are presumed healthy until a request to
//! one fails; then it is backed off (1 s, doubling to 60 s) and probed with `hello` when its
//! time comes, so an unreachable peer costs one failed connection per backoff period, not one
//! per request. A node finds its own address in the list by the instance id it answers with.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::client::PeerClient;
use crate::proto::{Hello, MemberStatus};
use crate::PeerError;

/// Where the members come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seeds {
    /// Fixed `host:port` cluster addresses (this node's own among them, or not).
    Static(Vec<String>),
    /// Every address a name resolves to, at `port` (a headless Service's records).
    Dns { name: String, port: u16 },
}

impl Seeds {
    /// `dns:<name>:<port>`, or a comma-separated list of `host:port`.
    pub fn parse(s: &str) -> Result<Self, PeerError> {
        let bad = |why: &str| PeerError::Config(format!("--peers {s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("dns:") {
            let (name, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected dns:<name>:<port>"))?;
            let port = port.parse().map_err(|_| bad("the port is not a number"))?;
            if name.is_empty() {
                return Err(bad("no name"));
            }
            return Ok(Seeds::Dns {
                name: name.to_string(),
                port,
            });
        }
        let mut out = Vec::new();
        for a in s.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let (host, port) = a
                .rsplit_once(':')
                .ok_or_else(|| bad(&format!("{a}: expected host:port")))?;
            if host.is_empty() || port.parse::<u16>().is_err() || a.contains('/') {
                return Err(bad(&format!("{a}: expected host:port")));
            }
            out.push(a.to_string());
        }
        if out.is_empty() {
            return Err(bad("no address"));
        }
        Ok(Seeds::Static(out))
    }
}

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
struct Member {
    node: Option<String>,
    /// The peer protocol it said it speaks (`None`: not heard from yet).
    protocol: Option<u32>,
    failures: u32,
    /// Unhealthy until then.
    retry_at: Option<Instant>,
    last_error: Option<String>,
    probed: bool,
}

impl Member {
    fn new() -> Self {
        Self {
            node: None,
            protocol: None,
            failures: 0,
            retry_at: None,
            last_error: None,
            probed: false,
        }
    }
}

#[derive(Default)]
struct State {
    members: BTreeMap<String, Member>,
    self_addr: Option<String>,
    /// Bumped whenever a member joins, leaves or comes back, or this node finds itself.
    generation: u64,
}

pub struct Membership {
    seeds: Seeds,
    me: Hello,
    client: PeerClient,
    state: Mutex<State>,
}

impl Membership {
    pub fn new(seeds: Seeds, me: Hello, client: PeerClient) -> Arc<Self> {
        Arc::new(Self {
            seeds,
            me,
            client,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's cluster address, once found in the membership.
    pub fn self_addr(&self) -> Option<String> {
        self.state().self_addr.clone()
    }

    /// Changes whenever the membership did (a member joined, left or came back): who owns what
    /// may have moved.
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// Members not backed off, this node included (when found).
    pub fn live(&self) -> Vec<String> {
        let now = Instant::now();
        let s = self.state();
        s.members
            .iter()
            .filter(|(a, m)| {
                Some(a.as_str()) == s.self_addr.as_deref() || m.retry_at.is_none_or(|t| t <= now)
            })
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Whether `addr` is in the membership (only members are sent the token).
    pub fn is_member(&self, addr: &str) -> bool {
        self.state().members.contains_key(addr)
    }

    /// A request to `addr` failed to connect or timed out: back it off.
    pub fn failed(&self, addr: &str, e: &PeerError) {
        let mut s = self.state();
        if Some(addr) == s.self_addr.as_deref() {
            return;
        }
        if let Some(m) = s.members.get_mut(addr) {
            m.failures = m.failures.saturating_add(1);
            let backoff = BACKOFF_MIN
                .saturating_mul(1 << (m.failures - 1).min(6))
                .min(BACKOFF_MAX);
            m.retry_at = Some(Instant::now() + backoff);
            if m.failures == 1 {
                tracing::warn!(peer = addr, error = %e, "peer unreachable; backing off");
            }
            m.last_error = Some(e.to_string());
        }
    }

    /// A request to `addr` succeeded.
    pub fn succeeded(&self, addr: &str) {
        let mut s = self.state();
        let mut back = false;
        if let Some(m) = s.members.get_mut(addr) {
            if m.failures > 0 {
                tracing::info!(peer = addr, "peer reachable again");
                back = true;
            }
            m.failures = 0;
            m.retry_at = None;
            m.last_error = None;
        }
        if back {
            s.generation += 1;
        }
    }

    async fn resolve(&self) -> Result<Vec<String>, PeerError> {
        match &self.seeds {
            Seeds::Static(v) => Ok(v.clone()),
            Seeds::Dns { name, port } => {
                let addrs = tokio::net::lookup_host((name.as_str(), *port))
                    .await
                    .map_err(|e| PeerError::Resolve(name.clone(), e))?;
                let mut v: Vec<String> = addrs.map(|a| a.to_string()).collect();
                v.sort();
                v.dedup();
                Ok(v)
            }
        }
    }

    /// Re-read the seeds, and probe the members that are new, unidentified or due for a retry.
    pub async fn refresh(&self) {
        match self.resolve().await {
            Ok(addrs) => {
                let mut s = self.state();
                let before = s.members.len();
                s.members.retain(|a, _| addrs.contains(a));
                let mut changed = s.members.len() != before;
                for a in addrs {
                    if let std::collections::btree_map::Entry::Vacant(v) = s.members.entry(a) {
                        v.insert(Member::new());
                        changed = true;
                    }
                }
                if changed {
                    s.generation += 1;
                }
                if s.self_addr
                    .as_ref()
                    .is_some_and(|a| !s.members.contains_key(a))
                {
                    s.self_addr = None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot resolve the peers; keeping the last membership")
            }
        }
        let due = self.due(Instant::now());
        let probes = due.into_iter().map(|a| async move {
            let r = self.client.hello(&a).await;
            (a, r)
        });
        for (a, r) in join_all(probes).await {
            match r {
                Ok(h) => {
                    self.heard(&a, h);
                    self.succeeded(&a);
                }
                Err(e) => {
                    if let Some(m) = self.state().members.get_mut(&a) {
                        m.probed = true;
                    }
                    self.failed(&a, &e);
                }
            }
        }
    }

    /// The members to say `hello` to now: those not heard from yet, those due for a retry,
    /// and those that spoke an older protocol than this node (an agent replaced at the same
    /// address in a rolling upgrade says its new one).
    fn due(&self, now: Instant) -> Vec<String> {
        let s = self.state();
        s.members
            .iter()
            .filter(|(a, m)| {
                Some(a.as_str()) != s.self_addr.as_deref()
                    && (!m.probed
                        || m.retry_at.is_some_and(|t| t <= now)
                        || m.protocol.is_some_and(|p| p < self.me.protocol))
            })
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// `addr` answered `hello` with `h`.
    fn heard(&self, addr: &str, h: Hello) {
        let mut s = self.state();
        if h.instance == self.me.instance && s.self_addr.as_deref() != Some(addr) {
            s.self_addr = Some(addr.to_string());
            s.generation += 1;
        }
        if let Some(m) = s.members.get_mut(addr) {
            m.node = Some(h.node);
            m.protocol = Some(h.protocol);
            m.probed = true;
        }
    }

    /// The oldest peer protocol among the live members (1 for one not heard from yet): what
    /// the whole cluster understands.
    pub fn oldest_protocol(&self) -> u32 {
        let now = Instant::now();
        let s = self.state();
        s.members
            .iter()
            .filter(|(a, m)| {
                Some(a.as_str()) != s.self_addr.as_deref() && m.retry_at.is_none_or(|t| t <= now)
            })
            .map(|(_, m)| m.protocol.unwrap_or(1))
            .fold(self.me.protocol, u32::min)
    }

    pub fn status(&self) -> Vec<MemberStatus> {
        let now = Instant::now();
        let s = self.state();
        s.members
            .iter()
            .map(|(a, m)| {
                let is_self = Some(a.as_str()) == s.self_addr.as_deref();
                let wait = m.retry_at.map(|t| t.saturating_duration_since(now));
                MemberStatus {
                    addr: a.clone(),
                    node: if is_self {
                        Some(self.me.node.clone())
                    } else {
                        m.node.clone()
                    },
                    healthy: is_self || (m.probed && m.failures == 0),
                    is_self,
                    protocol: if is_self {
                        Some(self.me.protocol)
                    } else {
                        m.protocol
                    },
                    backoff_secs: wait.map_or(0, |w| w.as_secs()),
                    last_error: m.last_error.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_lists_and_dns_names_and_refuse_nonsense() {
        assert_eq!(
            Seeds::parse("10.0.0.1:5001, 10.0.0.2:5001").ok(),
            Some(Seeds::Static(vec![
                "10.0.0.1:5001".into(),
                "10.0.0.2:5001".into()
            ]))
        );
        assert_eq!(
            Seeds::parse("dns:manta-peers.manta.svc:5001").ok(),
            Some(Seeds::Dns {
                name: "manta-peers.manta.svc".into(),
                port: 5001
            })
        );
        for bad in ["", "dns:x", "dns::5001", "10.0.0.1", "h:port", "h:1/x", ","] {
            assert!(Seeds::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_cluster_speaks_the_oldest_protocol_among_its_live_members() {
        let hello = |node: &str, protocol: u32| Hello {
            node: node.into(),
            instance: node.into(),
            protocol,
        };
        let client =
            PeerClient::new(Arc::new(|| None), crate::client::Timeouts::default()).unwrap();
        let seeds = Seeds::Static(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        let m = Membership::new(seeds.clone(), hello("a", 2), client);
        {
            let mut s = m.state();
            for a in ["a:1", "b:1", "c:1"] {
                s.members.insert(a.into(), Member::new());
            }
        }
        m.heard("a:1", hello("a", 2));
        m.heard("b:1", hello("b", 2));
        assert_eq!(m.oldest_protocol(), 1, "c not heard from yet");
        // An agent from before protocols were said speaks 1.
        let old: Hello = serde_json::from_str(r#"{"node":"c","instance":"c"}"#).unwrap();
        m.heard("c:1", old);
        assert_eq!(m.oldest_protocol(), 1);
        // It is asked again at every refresh, until it is replaced by one that speaks 2.
        assert_eq!(m.due(Instant::now()), ["c:1"]);
        // Upgraded: the cluster speaks 2.
        m.heard("c:1", hello("c", 2));
        assert_eq!(m.oldest_protocol(), 2);
        // One that cannot be reached does not hold the cluster back.
        m.heard("c:1", hello("c", 1));
        m.failed("c:1", &PeerError::Timeout("c:1".into()));
        assert_eq!(m.oldest_protocol(), 2);
    }
}
