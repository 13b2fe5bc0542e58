//! Peers: agents of one cluster read blobs from each other, and the origin is asked once.
//! Several real `manta serve` processes, each with its own data directory, loopback endpoint
//! and cluster listener on its own 127.0.x.y address, in front of the Hugging Face fixture
//! (rate-limited, so that pulls overlap as they do in a rollout).

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::hub_agent::{
    client, layers_by_title, log_tail, manifest_ok, poll, spawn_agent, stream_get,
};
use manta_conformance::hub_fixture::{
    synthetic_safetensors_with_sha256, FixtureFile, FixtureOptions, FixtureRepo, HubFixture,
};
use manta_conformance::server::MantaServer;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const TOKEN: &str = "peers-test-token-0123456789";
const REPO: &str = "peers/model";

/// A free port on `ip` (the agent binds it a moment later; nothing else uses these addresses).
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Agents on `127.0.<net>.<1..>`, every one listing every other (and itself) in `--peers`.
struct Cluster {
    tmp: tempfile::TempDir,
    endpoint: String,
    addrs: Vec<String>,
    nodes: Vec<Option<MantaServer>>,
    extra: Vec<String>,
}

impl Cluster {
    fn new(endpoint: &str, net: u8, n: usize, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let addrs = (1..=n)
            .map(|i| {
                let ip = format!("127.0.{net}.{i}");
                let port = free_port(&ip);
                format!("{ip}:{port}")
            })
            .collect();
        Self {
            tmp,
            endpoint: endpoint.to_string(),
            addrs,
            nodes: (0..n).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn token_file(&self) -> PathBuf {
        self.tmp.path().join("token")
    }

    fn start(&mut self, i: usize) {
        let data = self.tmp.path().join(format!("node{i}"));
        let token = self.token_file();
        let peers = self.addrs.join(",");
        let name = format!("node-{i}");
        let mut args = vec![
            "--cluster-listen",
            &self.addrs[i],
            "--cluster-token-file",
            token.to_str().unwrap(),
            "--peers",
            &peers,
            "--node-name",
            &name,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        self.nodes[i] = Some(spawn_agent(&self.endpoint, &data, &args).unwrap());
    }

    fn node(&self, i: usize) -> &MantaServer {
        self.nodes[i].as_ref().unwrap()
    }

    fn url(&self, i: usize) -> String {
        self.node(i).url()
    }

    async fn status(&self, i: usize) -> Value {
        client()
            .get(format!("{}/manta/v1/peer/status", self.node(i).cluster_url().unwrap()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait until every running node has found itself and sees every other running node.
    async fn wait_formed(&self) {
        for i in (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()) {
            let running: Vec<String> = (0..self.nodes.len())
                .filter(|j| self.nodes[*j].is_some())
                .map(|j| self.addrs[j].clone())
                .collect();
            poll("the peers to find each other", Duration::from_secs(30), || {
                let running = running.clone();
                async move {
                    let s = self.status(i).await;
                    let healthy: Vec<String> = s["members"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|m| m["healthy"] == true)
                        .map(|m| m["addr"].as_str().unwrap().to_string())
                        .collect();
                    Ok((s["addr"].is_string() && running.iter().all(|a| healthy.contains(a)))
                        .then_some(()))
                }
            })
            .await;
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(n) = n {
                out.push_str(&format!("--- node {i} ---\n{}\n", log_tail(&n.logs(), 40)));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// A fixture serving one LFS weights file of about `size` bytes at `rate` bytes/s: the fixture,
/// the file's sha256 and its exact size.
fn weights_hub(dir: &std::path::Path, size: u64, rate: u64) -> (HubFixture, String, u64) {
    let (path, sha) = synthetic_safetensors_with_sha256(dir, size).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let hub = HubFixture::start(
        vec![FixtureRepo::with_main(
            REPO,
            vec![
                FixtureFile::bytes("config.json", br#"{"model_type": "peers"}"#.to_vec()),
                FixtureFile::disk("model.safetensors", path).lfs().with_sha256(&sha),
            ],
        )],
        FixtureOptions {
            rate_limit: Some(rate),
            ..FixtureOptions::default()
        },
    )
    .unwrap();
    (hub, sha, size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_pulling_together_cost_the_hub_one_download_and_a_late_one_costs_nothing() {
    let files = tempfile::tempdir().unwrap();
    let (hub, sha, size) = weights_hub(files.path(), 300 * MIB, 150 * MIB);
    let mut cluster = Cluster::new(&hub.url(), 11, 5, &[]);
    for i in 0..4 {
        cluster.start(i);
    }
    cluster.wait_formed().await;
    let c = client();
    let digest = format!("sha256:{sha}");
    // Each resolves the revision itself (metadata only); no file byte moves yet.
    for i in 0..4 {
        let (m, _, _) = manifest_ok(&c, &cluster.url(i), &format!("hf-raw/{REPO}"), "main").await;
        assert_eq!(layers_by_title(&m)["model.safetensors"].digest, digest);
    }
    let before = hub.bytes_served();
    let pulls = (0..4).map(|i| {
        let (c, url) = (c.clone(), format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(i)));
        tokio::spawn(async move { stream_get(&c, &url, &[], None).await })
    });
    for (i, p) in futures_util::future::join_all(pulls).await.into_iter().enumerate() {
        let s = p.unwrap();
        assert!(s.complete(), "node {i}: {:?} {}", s.error, s.error_body);
        assert_eq!((s.len, s.sha256.as_str()), (size, sha.as_str()), "node {i}");
    }
    let origin = hub.bytes_served() - before;
    eprintln!("four agents, one {size}-byte file: {origin} bytes from the hub");
    assert!(
        origin as f64 <= 1.05 * size as f64,
        "four agents cost the hub {origin} bytes of a {size}-byte file\n{}",
        cluster.logs()
    );
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);

    // A fifth agent, started afterwards, reads it from the others.
    cluster.start(4);
    cluster.wait_formed().await;
    let before = hub.bytes_served();
    let (m, _, _) = manifest_ok(&c, &cluster.url(4), &format!("hf-raw/{REPO}"), "main").await;
    assert_eq!(layers_by_title(&m)["model.safetensors"].digest, digest);
    let s = stream_get(
        &c,
        &format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(4)),
        &[],
        None,
    )
    .await;
    assert!(s.complete(), "{:?} {}", s.error, s.error_body);
    assert_eq!(s.sha256, sha);
    // Resolving the revision reads its small (non-LFS) files, to hash them; the weights come
    // from the peers alone.
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);
    let config = br#"{"model_type": "peers"}"#.len() as u64;
    assert_eq!(
        hub.bytes_served() - before,
        config,
        "the late agent took weights bytes from the hub"
    );
}
