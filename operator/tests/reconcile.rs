//! The reconciler against a mocked Kubernetes API (kube-rs's `tower_test::mock::pair`) and fake
//! agents that are real HTTP servers: each test asserts the requests the reconciler makes.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector;
use kube::runtime::watcher;
use manta_api::{CachedRevision, Form, HubKind, JobFailure, PinTarget};
use manta_conformance::fake_agent::{fake_agent, AgentLog, Behaviour, FakeAgent};
use manta_operator::agents::Agents;
use manta_operator::controller::{error_policy, pin_name, reconcile, sweep, Context};
use manta_operator::crd::{Phase, Torrent};
use manta_operator::inventory::Inventory;
use manta_operator::metrics::Metrics;
use manta_operator::plugins::{Framework, PluginConfig};
use serde_json::{json, Value};

const GIB: u64 = 1 << 30;

/// One recorded request to the mocked API server.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    content_type: String,
    body: Value,
}

/// A mocked API server that records every request and answers each plausibly: a patch or a
/// delete of the Torrent echoes `torrent` (with the patched status), an event is created.
fn mock_api(torrent: Torrent) -> (kube::Client, Arc<Mutex<Vec<Call>>>) {
    let (svc, mut handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log = calls.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                body: body.clone(),
            };
            log.lock().unwrap().push(call.clone());
            let mut obj = serde_json::to_value(&torrent).unwrap();
            let answer = if call.path.contains("/events") {
                body
            } else if call.path.ends_with("/status") {
                obj["status"] = body["status"].clone();
                obj
            } else {
                obj
            };
            let resp = http::Response::builder()
                .status(if call.method == "POST" { 201 } else { 200 })
                .header("content-type", "application/json")
                .body(kube::client::Body::from(
                    serde_json::to_vec(&answer).unwrap(),
                ))
                .unwrap();
            send.send_response(resp);
        }
    });
    (kube::Client::new(svc, "default"), calls)
}

fn node(name: &str, labels: &[(&str, &str)]) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn agent_pod(node: &str, port: u16) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("agent-{node}"), "namespace": "manta-system"},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "ports": [{"name": "cluster", "containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn torrent(spec: Value, finalized: bool) -> Torrent {
    let mut meta = json!({"name": "qwen", "uid": "u-1", "generation": 1});
    if finalized {
        meta["finalizers"] = json!([manta_operator::crd::FINALIZER]);
    }
    serde_json::from_value(json!({
        "apiVersion": "manta.io/v1alpha1", "kind": "Torrent",
        "metadata": meta, "spec": spec
    }))
    .unwrap()
}

struct Cluster {
    agents: BTreeMap<String, FakeAgent>,
    inventory: Inventory,
    client_agents: Agents,
}

/// Nodes with their labels and fake agents, as the reflectors and the agent poll see them.
/// A node: its name, labels, how its agent answers a prefetch, and its capacity.
type NodeSpec<'a> = (&'a str, Vec<(&'a str, &'a str)>, Behaviour, u64);

async fn cluster(nodes: Vec<NodeSpec<'_>>) -> Cluster {
    let (node_store, mut node_writer) = reflector::store::<Node>();
    let (pod_store, mut pod_writer) = reflector::store::<Pod>();
    let mut agents = BTreeMap::new();
    for (name, labels, behaviour, capacity) in nodes {
        let agent = fake_agent(behaviour, capacity).await.unwrap();
        node_writer.apply_watcher_event(&watcher::Event::Apply(node(name, &labels)));
        pod_writer.apply_watcher_event(&watcher::Event::Apply(agent_pod(name, agent.port)));
        agents.insert(name.to_string(), agent);
    }
    let inventory = Inventory {
        nodes: node_store,
        pods: pod_store,
        states: Arc::default(),
        agent_port: 5001,
        fresh: Duration::from_secs(60),
    };
    let client_agents = Agents::new(None, Duration::from_secs(5));
    let c = Cluster {
        agents,
        inventory,
        client_agents,
    };
    c.poll().await;
    c
}

impl Cluster {
    /// What the background poll does: every agent's report.
    async fn poll(&self) {
        for a in self.agents.values() {
            let r = self.client_agents.report(&a.url).await.ok();
            self.inventory.states.set(&a.url, r, self.inventory.fresh);
        }
        self.inventory.states.mark_synced();
    }

    fn context(&self, client: kube::Client, plugins: &PluginConfig) -> Arc<Context> {
        let mut registry = prometheus_client::registry::Registry::default();
        Arc::new(Context::new(
            client,
            self.client_agents.clone(),
            self.inventory.clone(),
            Framework::new(plugins).unwrap(),
            Metrics::new(&mut registry),
            "localhost:5000".into(),
        ))
    }

    fn log(&self, node: &str) -> std::sync::MutexGuard<'_, AgentLog> {
        self.agents[node].log()
    }
}

fn status_patches(calls: &[Call]) -> Vec<Value> {
    calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.path.ends_with("/status"))
        .map(|c| {
            assert_eq!(c.content_type, "application/apply-patch+yaml");
            c.body["status"].clone()
        })
        .collect()
}

fn with_status(t: &Torrent, status: &Value) -> Torrent {
    let mut v = serde_json::to_value(t).unwrap();
    v["status"] = status.clone();
    serde_json::from_value(v).unwrap()
}

fn sample_spec() -> Value {
    json!({"hub": {"repoID": "Org/Model"}, "nodeSelector": {"gpu": "true"}})
}

#[tokio::test]
async fn a_torrent_without_the_finalizer_gets_it_before_anything_else() {
    let c = cluster(vec![(
        "a",
        vec![("gpu", "true")],
        Behaviour::Succeed(GIB),
        10 * GIB,
    )])
    .await;
    let t = torrent(sample_spec(), false);
    let (client, calls) = mock_api(t.clone());
    reconcile(Arc::new(t), c.context(client, &PluginConfig::default()))
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "PATCH");
    assert_eq!(calls[0].path, "/apis/manta.io/v1alpha1/torrents/qwen");
    assert_eq!(calls[0].content_type, "application/json-patch+json");
    assert_eq!(
        calls[0].body[1],
        json!({"op": "add", "path": "/metadata/finalizers", "value": [manta_operator::crd::FINALIZER]})
    );
    assert!(c.log("a").prefetches.is_empty());
}

#[tokio::test]
async fn a_new_torrent_is_pinned_and_prefetched_on_the_node_the_plugins_choose_then_ready() {
    let c = cluster(vec![
        (
            "a",
            vec![("gpu", "true")],
            Behaviour::Succeed(GIB),
            10 * GIB,
        ),
        (
            "b",
            vec![("gpu", "true")],
            Behaviour::Succeed(GIB),
            10 * GIB,
        ),
        ("c", vec![], Behaviour::Succeed(GIB), 100 * GIB),
    ])
    .await;
    // b holds most of the revision already: CacheAware prefers it.
    c.log("b").cached.push(CachedRevision {
        hub: HubKind::Hf,
        repo: "Org/Model".into(),
        revision: "main".into(),
        tag: "main".into(),
        commit: "c0ffee".into(),
        files: 3,
        size: GIB,
        cached_bytes: GIB / 2,
        from_peers: 0,
        forms: vec![Form::Raw],
        references: BTreeMap::new(),
        resolved_at: 0,
    });
    c.poll().await;
    let t = torrent(sample_spec(), true);
    let (client, calls) = mock_api(t.clone());
    let ctx = c.context(client, &PluginConfig::default());
    reconcile(Arc::new(t.clone()), ctx.clone()).await.unwrap();

    let pin = pin_name("qwen");
    assert!(c.log("a").pins.is_empty() && c.log("c").pins.is_empty());
    assert_eq!(
        c.log("b").pins.get(&pin),
        Some(&PinTarget::hub(
            HubKind::Hf,
            "Org/Model",
            Some("main"),
            Default::default()
        ))
    );
    assert_eq!(
        c.log("b").prefetches,
        vec![json!({"hub": "hf", "repo": "Org/Model", "revision": "main"})]
    );
    let patches = status_patches(&calls.lock().unwrap());
    let first = patches.last().unwrap().clone();
    assert_eq!(first["phase"], "Resolving", "{first}");

    // The next pass finds b's job done: Ready, with the references to pull.
    c.poll().await;
    reconcile(Arc::new(with_status(&t, &first)), ctx.clone())
        .await
        .unwrap();
    let patches = status_patches(&calls.lock().unwrap());
    let st = patches.last().unwrap();
    assert_eq!(st["phase"], "Ready", "{st}");
    assert_eq!(st["readyNodes"], "1/1");
    assert_eq!(st["commit"], "c0ffee");
    assert_eq!(
        st["references"]["image"],
        "localhost:5000/hf/org/model:main"
    );
    assert_eq!(
        st["references"]["raw"],
        "localhost:5000/hf-raw/org/model:main"
    );
    assert_eq!(st["size"], "1.0 GiB");
    let ready = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    assert_eq!(
        c.log("b").prefetches.len(),
        1,
        "a succeeded job is not asked again"
    );

    // A spec change (a form asked for) is a new generation: the holder is asked again.
    let st = st.clone();
    let mut spec = sample_spec();
    spec["forms"] = json!(["raw"]);
    let mut changed = serde_json::to_value(with_status(&t, &st)).unwrap();
    changed["spec"] = spec;
    changed["metadata"]["generation"] = json!(2);
    let changed: Torrent = serde_json::from_value(changed).unwrap();
    reconcile(Arc::new(changed), ctx).await.unwrap();
    let log = c.log("b");
    assert_eq!(log.prefetches.len(), 2, "{:?}", log.prefetches);
    assert_eq!(log.prefetches[1]["forms"], json!(["raw"]));
}

#[tokio::test]
async fn weights_decide_between_plugins() {
    // a: holds the revision (CacheAware 100), three quarters of its room pinned (DiskAware 25);
    // b: holds nothing (CacheAware 0), all its room free (DiskAware 100).
    let nodes = || {
        vec![
            ("a", vec![("gpu", "true")], Behaviour::Succeed(GIB), 4 * GIB),
            ("b", vec![("gpu", "true")], Behaviour::Succeed(GIB), 4 * GIB),
        ]
    };
    for (scores, expect) in [
        (
            "[{ name = \"CacheAware\", weight = 10 }, { name = \"DiskAware\", weight = 1 }]",
            "a",
        ),
        (
            "[{ name = \"CacheAware\", weight = 1 }, { name = \"DiskAware\", weight = 10 }]",
            "b",
        ),
    ] {
        let c = cluster(nodes()).await;
        c.log("a").cached.push(CachedRevision {
            hub: HubKind::Hf,
            repo: "org/model".into(),
            revision: "main".into(),
            tag: "main".into(),
            commit: "c0ffee".into(),
            files: 1,
            size: GIB,
            cached_bytes: GIB,
            from_peers: 0,
            forms: vec![Form::Raw],
            references: BTreeMap::new(),
            resolved_at: 0,
        });
        c.log("a").pinned = 3 * GIB;
        c.poll().await;
        let cfg = manta_operator::config::Config::parse(&format!("[plugins]\nscores = {scores}\n"))
            .unwrap();
        let t = torrent(sample_spec(), true);
        let (client, _) = mock_api(t.clone());
        reconcile(Arc::new(t), c.context(client, &cfg.plugins))
            .await
            .unwrap();
        let other = if expect == "a" { "b" } else { "a" };
        assert_eq!(
            c.log(expect).prefetches.len(),
            1,
            "{scores}: {expect} chosen"
        );
        assert!(
            c.log(other).prefetches.is_empty(),
            "{scores}: {other} not chosen"
        );
    }
}

async fn deletion(policy: &str) {
    let c = cluster(vec![
        (
            "a",
            vec![("gpu", "true")],
            Behaviour::Succeed(GIB),
            10 * GIB,
        ),
        (
            "b",
            vec![("gpu", "true")],
            Behaviour::Succeed(GIB),
            10 * GIB,
        ),
    ])
    .await;
    let pin = pin_name("qwen");
    c.log("a").pins.insert(
        pin.clone(),
        PinTarget::hub(HubKind::Hf, "Org/Model", Some("main"), Default::default()),
    );
    c.poll().await;
    let mut spec = sample_spec();
    spec["reclaimPolicy"] = json!(policy);
    let mut t = torrent(spec, true);
    t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (client, calls) = mock_api(t.clone());
    reconcile(Arc::new(t), c.context(client, &PluginConfig::default()))
        .await
        .unwrap();
    assert_eq!(c.log("a").unpins, vec![(pin.clone(), policy.to_string())]);
    assert!(c.log("a").pins.is_empty());
    // b is asked too (it might hold a pin its last report did not show): it has none.
    assert_eq!(c.log("b").unpins, vec![(pin, policy.to_string())]);
    let calls = calls.lock().unwrap().clone();
    let statuses = status_patches(&calls);
    assert_eq!(statuses[0]["phase"], "Reclaiming");
    let last = calls
        .iter()
        .rfind(|c| c.path == "/apis/manta.io/v1alpha1/torrents/qwen")
        .unwrap();
    assert_eq!(last.content_type, "application/json-patch+json");
    assert_eq!(
        last.body[1],
        json!({"op": "remove", "path": "/metadata/finalizers/0"}),
        "the finalizer goes once the pins are released"
    );
}

#[tokio::test]
async fn deleting_with_retain_releases_the_pins_and_keeps_the_content() {
    deletion("Retain").await;
}

#[tokio::test]
async fn deleting_with_delete_releases_the_pins_and_deletes_the_content() {
    deletion("Delete").await;
}

#[tokio::test]
async fn a_failing_agent_is_passed_over_for_the_next_candidate() {
    let c = cluster(vec![
        ("a", vec![("gpu", "true")], Behaviour::Broken, 100 * GIB),
        (
            "b",
            vec![("gpu", "true")],
            Behaviour::Succeed(GIB),
            10 * GIB,
        ),
    ])
    .await;
    let t = torrent(sample_spec(), true);
    let (client, calls) = mock_api(t.clone());
    let ctx = c.context(client, &PluginConfig::default());
    // DiskAware prefers a (more room); its prefetch fails.
    reconcile(Arc::new(t.clone()), ctx.clone()).await.unwrap();
    assert_eq!(c.log("a").prefetches.len(), 1);
    let st = status_patches(&calls.lock().unwrap())
        .last()
        .unwrap()
        .clone();
    assert_eq!(st["nodes"]["failed"], 1, "{st}");
    assert_eq!(st["nodes"]["items"][0]["name"], "a");
    assert!(st["nodes"]["items"][0]["message"]
        .as_str()
        .unwrap()
        .contains("disk on fire"));
    c.poll().await;
    reconcile(Arc::new(with_status(&t, &st)), ctx)
        .await
        .unwrap();
    assert_eq!(c.log("b").prefetches.len(), 1, "b takes a's place");
    assert_eq!(c.log("a").prefetches.len(), 1, "a is not asked again");
}

#[tokio::test]
async fn a_gated_repo_fails_the_torrent_with_the_hubs_reason() {
    let c = cluster(vec![(
        "a",
        vec![("gpu", "true")],
        Behaviour::Fail(
            JobFailure::HubRefused,
            "authentication required: Org/Model is gated",
        ),
        10 * GIB,
    )])
    .await;
    let t = torrent(sample_spec(), true);
    let (client, calls) = mock_api(t.clone());
    let ctx = c.context(client, &PluginConfig::default());
    reconcile(Arc::new(t.clone()), ctx.clone()).await.unwrap();
    c.poll().await;
    let st = status_patches(&calls.lock().unwrap())
        .last()
        .unwrap()
        .clone();
    reconcile(Arc::new(with_status(&t, &st)), ctx)
        .await
        .unwrap();
    let st = status_patches(&calls.lock().unwrap())
        .last()
        .unwrap()
        .clone();
    assert_eq!(st["phase"], "Failed", "{st}");
    let failed = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()
        .clone();
    assert_eq!(failed["reason"], "HubRefused");
    assert!(failed["message"].as_str().unwrap().contains("gated"));
    assert!(c.log("a").pins.is_empty(), "the pin is released");
    let events: Vec<Call> = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.path.contains("/events"))
        .cloned()
        .collect();
    assert!(
        events.iter().any(|e| e.body["reason"] == "HubRefused"),
        "{events:?}"
    );
}

#[tokio::test]
async fn preheat_false_fetches_nothing() {
    let c = cluster(vec![(
        "a",
        vec![("gpu", "true")],
        Behaviour::Succeed(GIB),
        10 * GIB,
    )])
    .await;
    let mut spec = sample_spec();
    spec["preheat"] = json!(false);
    let t = torrent(spec, true);
    let (client, calls) = mock_api(t.clone());
    reconcile(Arc::new(t), c.context(client, &PluginConfig::default()))
        .await
        .unwrap();
    assert!(c.log("a").prefetches.is_empty() && c.log("a").pins.is_empty());
    let st = status_patches(&calls.lock().unwrap())
        .last()
        .unwrap()
        .clone();
    assert_eq!(st["phase"], "Pending");
    assert_eq!(st["conditions"][0]["reason"], "Standby");
    let _ = Phase::Pending;
}

#[tokio::test]
async fn pins_of_torrents_that_are_gone_are_released_and_no_other_pins() {
    let c = cluster(vec![(
        "a",
        vec![("gpu", "true")],
        Behaviour::Succeed(GIB),
        10 * GIB,
    )])
    .await;
    let url = c.agents["a"].url.clone();
    let target = PinTarget::hub(HubKind::Hf, "Org/Model", Some("main"), Default::default());
    for p in ["torrent-gone", "torrent-qwen", "mine"] {
        c.client_agents.pin(&url, p, &target).await.unwrap();
    }
    c.poll().await;
    let t = torrent(sample_spec(), true);
    let (client, calls) = mock_api(t.clone());
    let ctx = c.context(client, &PluginConfig::default());
    let released = sweep(&ctx, &c.inventory.snapshot(), &[Arc::new(t)]).await;
    assert_eq!(released, 1);
    let log = c.log("a");
    assert_eq!(
        log.unpins,
        vec![("torrent-gone".to_string(), "Retain".to_string())]
    );
    assert!(log.pins.contains_key("torrent-qwen") && log.pins.contains_key("mine"));
    assert!(
        calls.lock().unwrap().is_empty(),
        "the sweep never writes to the API"
    );
}

#[tokio::test]
async fn nothing_is_done_before_every_agent_has_been_asked_once() {
    let c = cluster(vec![(
        "a",
        vec![("gpu", "true")],
        Behaviour::Succeed(GIB),
        10 * GIB,
    )])
    .await;
    // A fresh inventory: the same caches, no agent asked yet.
    let fresh = Inventory {
        nodes: c.inventory.nodes.clone(),
        pods: c.inventory.pods.clone(),
        states: Arc::default(),
        agent_port: 5001,
        fresh: Duration::from_secs(60),
    };
    let t = torrent(sample_spec(), true);
    let (client, calls) = mock_api(t.clone());
    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Arc::new(Context::new(
        client,
        c.client_agents.clone(),
        fresh,
        Framework::new(&PluginConfig::default()).unwrap(),
        Metrics::new(&mut registry),
        "localhost:5000".into(),
    ));
    reconcile(Arc::new(t.clone()), ctx.clone()).await.unwrap();
    assert!(
        calls.lock().unwrap().is_empty(),
        "no status before the inventory"
    );
    assert!(c.log("a").prefetches.is_empty());
    // Deleting waits too: releasing against an empty inventory would drop the finalizer.
    let mut deleting = serde_json::to_value(&t).unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let deleting: Torrent = serde_json::from_value(deleting).unwrap();
    assert!(reconcile(Arc::new(deleting), ctx).await.is_err());
    assert!(calls.lock().unwrap().is_empty(), "the finalizer stays");
}

#[tokio::test]
async fn failed_reconciles_back_off_doubling_to_five_minutes() {
    use kube::runtime::controller::Action;
    let c = cluster(vec![]).await;
    let t = Arc::new(torrent(sample_spec(), true));
    let (client, _) = mock_api((*t).clone());
    let ctx = c.context(client, &PluginConfig::default());
    let delays: Vec<Action> = (0..8)
        .map(|_| error_policy(t.clone(), &manta_operator::Error::Unnamed, ctx.clone()))
        .collect();
    let secs = |s| Action::requeue(Duration::from_secs(s));
    assert_eq!(
        delays,
        vec![
            secs(5),
            secs(10),
            secs(20),
            secs(40),
            secs(80),
            secs(160),
            secs(300),
            secs(300)
        ]
    );
}
