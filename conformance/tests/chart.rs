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

use manta_conformance::process::require_tool;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/manta")
}

/// A binary of this workspace, next to the test executable's directory.
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "cannot find {name} near {}; build it (`cargo build --workspace --bins`)",
        exe.display()
    );
}

fn go(dir: &Path, args: &[&str]) -> std::process::Output {
    let go = require_tool(
        "go",
        "apt-get install golang-go golang-github-masterminds-sprig-dev golang-github-ghodss-yaml-dev",
    );
    let out = Command::new(go)
        .args(args)
        .current_dir(dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOFLAGS", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
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
    ] {
        let e = check(&["--set", typo]).unwrap_err();
        assert!(e.contains(why), "{typo}: {e}");
    }
}

#[test]
fn wrong_values_stop_the_render_with_a_reason() {
    for (set, extra, why) in [
        ("operator.replicas=2", None, "does not elect a leader"),
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
