//! The objects, in memory: one map per resource, a global `resourceVersion` counter, and a
//! bounded history of changes that watches replay from (older than it → 410 Expired).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::resources::{self, ResourceDef};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One change, as watches see it: the object after it (for a delete, its last state at the
/// delete's resourceVersion), and before it (to tell a watch with a selector that an object
/// left or entered the selection).
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub key: (String, String),
    pub namespace: String,
    pub kind: ChangeKind,
    pub object: Value,
    pub prev: Option<Value>,
}

type Objects = BTreeMap<(String, String), Value>;

/// Everything the server holds; one lock.
pub struct State {
    rv: u64,
    resources: Vec<Arc<ResourceDef>>,
    objects: HashMap<(String, String), Objects>,
    history: VecDeque<Arc<Change>>,
    /// The oldest resourceVersion a watch can start from.
    floor: u64,
    history_limit: usize,
    changes: broadcast::Sender<Arc<Change>>,
    /// kube-cel's evaluator, with its function library registered once.
    pub cel: kube_cel::Validator,
}

/// The shared server state.
pub struct Store {
    state: Mutex<State>,
    pub shutdown: CancellationToken,
    /// Every resource request, as an authorizer would see it (for checking a Role's verbs).
    audit: std::sync::Mutex<Vec<super::Access>>,
}

fn name_of(obj: &Value) -> String {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn namespace_of(obj: &Value) -> String {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

impl Store {
    pub fn new(history_limit: usize, shutdown: CancellationToken) -> Arc<Self> {
        let (changes, _) = broadcast::channel(4096);
        let mut state = State {
            rv: 0,
            resources: resources::builtins(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            floor: 0,
            history_limit: history_limit.max(1),
            changes,
            cel: kube_cel::Validator::new(),
        };
        let now = super::clock::now();
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "uid": uuid::Uuid::new_v4().to_string(),
                    "creationTimestamp": now,
                    "labels": {"kubernetes.io/metadata.name": ns},
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            state.put(&(String::new(), "namespaces".into()), obj, None);
        }
        Arc::new(Store {
            state: Mutex::new(state),
            shutdown,
            audit: std::sync::Mutex::default(),
        })
    }

    /// The state, locked; a poisoned lock is recovered (every write leaves it consistent).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, access: super::Access) {
        self.audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(access);
    }

    pub fn accesses(&self) -> Vec<super::Access> {
        self.audit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl State {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn resources(&self) -> &[Arc<ResourceDef>] {
        &self.resources
    }

    /// The resource served at group/version/plural.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// Serves what a CRD defines (again, after an update).
    pub fn register_crd(&mut self, crd: &Value) {
        let name = name_of(crd);
        self.resources
            .retain(|r| r.crd.as_deref() != Some(name.as_str()));
        self.resources.extend(resources::crd_resources(crd));
    }

    /// Stops serving a CRD's resources, and drops their objects (each a DELETED change).
    pub fn unregister_crd(&mut self, crd: &Value) {
        let name = name_of(crd);
        let keys: Vec<(String, String)> = self
            .resources
            .iter()
            .filter(|r| r.crd.as_deref() == Some(name.as_str()))
            .map(|r| r.storage_key())
            .collect();
        for key in keys {
            let names: Vec<(String, String)> = self
                .objects
                .get(&key)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for (ns, n) in names {
                self.remove(&key, &ns, &n);
            }
        }
        self.resources
            .retain(|r| r.crd.as_deref() != Some(name.as_str()));
    }

    pub fn get(&self, key: &(String, String), ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
    }

    /// The objects of a resource, in one namespace or all (`None`), in name order.
    pub fn list(&self, key: &(String, String), ns: Option<&str>) -> Vec<&Value> {
        self.objects
            .get(key)
            .map(|m| {
                m.iter()
                    .filter(|((o_ns, _), _)| ns.is_none_or(|n| n == o_ns))
                    .map(|(_, v)| v)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stores an object (new, or replacing `prev`) at the next resourceVersion, and records
    /// the change. Returns the stored object.
    pub fn put(&mut self, key: &(String, String), mut obj: Value, prev: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        let ns = namespace_of(&obj);
        let name = name_of(&obj);
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.clone(), name), obj.clone());
        let kind = if prev.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(Change {
            rv,
            key: key.clone(),
            namespace: ns,
            kind,
            object: obj.clone(),
            prev,
        });
        obj
    }

    /// Removes an object; the DELETED change carries its last state at a new resourceVersion.
    pub fn remove(&mut self, key: &(String, String), ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(key)?
            .remove(&(ns.to_string(), name.to_string()))?;
        let prev = obj.clone();
        self.rv += 1;
        let rv = self.rv;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
        }
        self.record(Change {
            rv,
            key: key.clone(),
            namespace: ns.to_string(),
            kind: ChangeKind::Deleted,
            object: obj.clone(),
            prev: Some(prev),
        });
        Some(obj)
    }

    fn record(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
        // No receiver is not an error: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// The changes after `rv`, or `None` when some of them are no longer kept.
    pub fn since(&self, rv: u64) -> Option<Vec<Arc<Change>>> {
        if rv < self.floor {
            return None;
        }
        Some(self.history.iter().filter(|c| c.rv > rv).cloned().collect())
    }

    /// Live changes from now on (subscribe under the lock, so nothing falls between).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }
}
