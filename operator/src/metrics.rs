//! The operator's metrics: reconciles, failures, their duration, Torrents by phase, and calls
//! to agents. Labels are bounded (a result, an error kind, a phase): never a Torrent's or a
//! node's name.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::crd::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct PhaseLabel(pub Phase);

impl EncodeLabelValue for PhaseLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.0.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: PhaseLabel,
}

#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum AgentOp {
    prefetch,
    job,
    pin,
    unpin,
}

#[allow(non_camel_case_types)] // the variant names are the label values
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CallResult {
    ok,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentCallLabels {
    pub op: AgentOp,
    pub result: CallResult,
}

pub struct Metrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub torrents: Family<PhaseLabels, Gauge>,
    pub agent_calls: Family<AgentCallLabels, Counter>,
    phases: Mutex<HashMap<String, Phase>>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            torrents: Family::default(),
            agent_calls: Family::default(),
            phases: Mutex::new(HashMap::new()),
        };
        registry.register(
            "manta_operator_reconciles",
            "Torrent reconciles run",
            m.reconciles.clone(),
        );
        registry.register(
            "manta_operator_reconcile_failures",
            "Torrent reconciles that failed, by error kind",
            m.failures.clone(),
        );
        registry.register(
            "manta_operator_reconcile_duration_seconds",
            "How long a Torrent reconcile took",
            m.duration.clone(),
        );
        registry.register(
            "manta_operator_torrents",
            "Torrents by phase",
            m.torrents.clone(),
        );
        registry.register(
            "manta_operator_agent_calls",
            "Calls to agents' admin API, by operation and result",
            m.agent_calls.clone(),
        );
        m
    }

    /// Record a Torrent's phase (`None`: it is gone).
    pub fn set_phase(&self, uid: &str, phase: Option<Phase>) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        match phase {
            Some(p) => {
                phases.insert(uid.to_string(), p);
            }
            None => {
                phases.remove(uid);
            }
        }
        self.recount(&phases);
    }

    /// Forget the Torrents not in `live` (gone without this process seeing their cleanup).
    pub fn retain_phases(&self, live: &std::collections::HashSet<String>) {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        phases.retain(|uid, _| live.contains(uid));
        self.recount(&phases);
    }

    fn recount(&self, phases: &HashMap<String, Phase>) {
        for p in Phase::ALL {
            let n = phases.values().filter(|x| **x == p).count();
            self.torrents
                .get_or_create(&PhaseLabels {
                    phase: PhaseLabel(p),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn agent_call<T, E>(&self, op: AgentOp, r: &Result<T, E>) {
        let result = if r.is_ok() {
            CallResult::ok
        } else {
            CallResult::error
        };
        self.agent_calls
            .get_or_create(&AgentCallLabels { op, result })
            .inc();
    }
}
