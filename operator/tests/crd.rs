//! The CRD the chart ships is what `crdgen` prints, and the original Manta's samples read as
//! they did there.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use kube::CustomResourceExt;
use manta_operator::crd::{HubName, ReclaimPolicy, Replicas, Torrent, TorrentForm};

#[test]
fn the_charts_crd_is_what_crdgen_prints() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/manta/crds/torrents.manta.io.yaml"
    );
    let shipped = std::fs::read_to_string(path).unwrap();
    let generated = serde_yaml::to_string(&Torrent::crd()).unwrap();
    assert!(
        shipped == generated,
        "charts/manta/crds/torrents.manta.io.yaml drifted from the Rust types: run\n  \
         cargo run -q -p manta-operator --bin crdgen > charts/manta/crds/torrents.manta.io.yaml"
    );
}

fn sample(name: &str) -> Torrent {
    let path = format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_original_samples_read_with_the_original_defaults() {
    let t = sample("torrent-sample.yaml");
    assert!(t.spec.preheat);
    assert_eq!(t.spec.replicas, Replicas::Count(1));
    assert_eq!(t.spec.reclaim_policy, ReclaimPolicy::Retain);
    assert_eq!(t.spec.hub.name, HubName::Huggingface);
    assert_eq!(t.spec.hub.repo_id, "Qwen/Qwen2.5-0.5B-Instruct");
    assert_eq!(t.spec.hub.revision(), "main");
    assert_eq!(t.spec.ttl_seconds_after_ready, None);

    let t = sample("torrent-node-selector.yaml");
    assert_eq!(
        t.spec.node_selector.get("zone").map(String::as_str),
        Some("zone-a")
    );
    assert_eq!(
        sample("torrent-delete.yaml").spec.reclaim_policy,
        ReclaimPolicy::Delete
    );
    assert!(!sample("torrent-standby.yaml").spec.preheat);

    let t = sample("torrent-every-gpu-node.yaml");
    assert_eq!(t.spec.replicas, Replicas::All);
    assert_eq!(t.spec.forms, vec![TorrentForm::Image]);
    assert_eq!(t.spec.ttl_seconds_after_ready, Some(3600));
    assert_eq!(
        t.spec.hub.filter().allow_patterns,
        vec!["*.json".to_string(), "*.safetensors".to_string()]
    );
}

#[test]
fn replicas_is_a_positive_number_or_all() {
    let parse = |v: &str| serde_json::from_str::<Replicas>(v);
    assert_eq!(parse("3").unwrap(), Replicas::Count(3));
    assert_eq!(parse("\"All\"").unwrap(), Replicas::All);
    assert!(parse("0").is_err());
    assert!(parse("-1").is_err());
    assert!(parse("\"all\"").is_err());
    assert_eq!(serde_json::to_string(&Replicas::All).unwrap(), "\"All\"");
    assert_eq!(serde_json::to_string(&Replicas::Count(2)).unwrap(), "2");
}

#[test]
fn the_schema_says_what_kubectl_prints_and_validates() {
    let crd = serde_json::to_value(Torrent::crd()).unwrap();
    let v = &crd["spec"]["versions"][0];
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Phase", "Ready", "Size", "Age"]);
    assert_eq!(crd["spec"]["scope"], "Cluster");
    assert!(v["subresources"]["status"].is_object());
    let hub = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["hub"];
    let rules: Vec<&str> = hub["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"self == oldSelf"), "{rules:?}");
    assert!(hub["properties"]["repoID"]["pattern"].is_string());
}
