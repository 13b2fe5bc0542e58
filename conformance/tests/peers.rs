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

    /// Start every node and wait until they have found each other.
    async fn formed(endpoint: &str, net: u8, n: usize, extra: &[&str]) -> Self {
        let mut c = Self::new(endpoint, net, n, extra);
        for i in 0..n {
            c.start(i);
        }
        c.wait_formed().await;
        c
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
            .get(format!(
                "{}/manta/v1/peer/status",
                self.node(i).cluster_url().unwrap()
            ))
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
            poll(
                "the peers to find each other",
                Duration::from_secs(30),
                || {
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
                        Ok(
                            (s["addr"].is_string() && running.iter().all(|a| healthy.contains(a)))
                                .then_some(()),
                        )
                    }
                },
            )
            .await;
        }
    }

    /// Agents 1..`n` on `127.0.<net>.x`, with the node at `fake` (a test's own server) in place
    /// of node 0, once every agent has found itself and sees every member healthy.
    async fn with_fake(endpoint: &str, net: u8, n: usize, fake: &str) -> Self {
        let mut c = Self::new(endpoint, net, n, &[]);
        c.addrs[0] = fake.to_string();
        for i in 1..n {
            c.start(i);
        }
        for i in 1..n {
            poll(
                "the peers to find each other",
                Duration::from_secs(30),
                || {
                    let c = &c;
                    async move {
                        let s = c.status(i).await;
                        let ok = s["addr"].is_string()
                            && s["members"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .all(|m| m["healthy"] == true);
                        Ok(ok.then_some(()))
                    }
                },
            )
            .await;
        }
        c
    }

    /// Tell nodes `nodes` (the digest's owners among them) that `holder` holds all of `digest`.
    async fn claim_complete(
        &self,
        nodes: std::ops::Range<usize>,
        holder: &str,
        digest: &str,
        size: u64,
    ) {
        for i in nodes {
            let r = client()
                .post(format!(
                    "{}/manta/v1/peer/announce",
                    self.node(i).cluster_url().unwrap()
                ))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({
                    "digest": digest, "node": holder, "event": {"kind": "complete", "size": size}
                }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 204);
        }
    }

    /// Node `i` resolves the model's raw form and its client pulls `digest` whole: `size`
    /// bytes that hash to `sha`.
    async fn pull_true(&self, i: usize, digest: &str, size: u64, sha: &str) {
        let c = client();
        manifest_ok(&c, &self.url(i), &format!("hf-raw/{REPO}"), "main").await;
        let url = format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", self.url(i));
        let s = stream_get(&c, &url, &[], None).await;
        assert!(
            s.complete(),
            "node {i}: {:?} {}\n{}",
            s.error,
            s.error_body,
            self.logs()
        );
        assert_eq!((s.len, s.sha256.as_str()), (size, sha), "node {i}");
    }

    /// Wait until node `i` installed `digest`, and check the file hashes to `sha`.
    async fn stored_true(&self, i: usize, digest: &str, sha: &str) {
        let stored = common::hub_agent::blob_file(self.node(i).data_dir(), digest);
        poll(
            &format!("node {i} to install the blob"),
            Duration::from_secs(30),
            || {
                let stored = stored.clone();
                async move { Ok(stored.exists().then_some(())) }
            },
        )
        .await;
        assert_eq!(
            common::hub_agent::sha256_hex(&std::fs::read(stored).unwrap()),
            sha
        );
    }

    /// What `manta ls` on node `i` says of the `main` revision: bytes cached, and of them
    /// from peers.
    fn came_from(&self, i: usize) -> (u64, u64) {
        let out =
            common::hub_agent::manta_cli(&["ls", "--json", "--server", &self.url(i)]).unwrap();
        let v: Value = serde_json::from_str(&out.stdout_str()).unwrap();
        let r = v["revisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tag"] == "main")
            .unwrap()
            .clone();
        (
            r["cachedBytes"].as_u64().unwrap(),
            r["fromPeers"].as_u64().unwrap(),
        )
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
                FixtureFile::disk("model.safetensors", path)
                    .lfs()
                    .with_sha256(&sha),
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
    // `manta peers`, as a user reads it: itself, three healthy peers, the fifth backed off.
    let out = common::hub_agent::manta_cli(&["peers", "--server", &cluster.url(0)]).unwrap();
    let text = out.stdout_str();
    for (i, addr) in cluster.addrs.iter().enumerate() {
        let line = text
            .lines()
            .find(|l| l.starts_with(addr.as_str()))
            .unwrap_or_else(|| panic!("{addr} not listed:\n{text}"));
        let want = match i {
            0 => "self",
            4 => "backing off",
            _ => "healthy",
        };
        assert!(line.contains(want), "{addr}: {line}");
        assert!(i == 4 || line.contains(&format!("node-{i}")), "{line}");
    }
    let c = client();
    let digest = format!("sha256:{sha}");
    // Each resolves the revision itself (metadata only); no file byte moves yet.
    for i in 0..4 {
        let (m, _, _) = manifest_ok(&c, &cluster.url(i), &format!("hf-raw/{REPO}"), "main").await;
        assert_eq!(layers_by_title(&m)["model.safetensors"].digest, digest);
    }
    let before = hub.bytes_served();
    let pulls = (0..4).map(|i| {
        let (c, url) = (
            c.clone(),
            format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(i)),
        );
        tokio::spawn(async move { stream_get(&c, &url, &[], None).await })
    });
    for (i, p) in futures_util::future::join_all(pulls)
        .await
        .into_iter()
        .enumerate()
    {
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

    // From the late agent, with the clients a user runs: containerd pulls the image form (its
    // layers hashed from bytes the peers send) and oras pulls the raw form. Same files, and
    // still no weights byte from the hub.
    let addr = cluster.node(4).addr().to_string();
    let (m, _, _) = manifest_ok(&c, &cluster.url(4), &format!("hf/{REPO}"), "main").await;
    let config: Value = c
        .get(format!(
            "{}/v2/hf/{REPO}/blobs/{}",
            cluster.url(4),
            m["config"]["digest"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let diff_ids: Vec<String> =
        serde_json::from_value(config["rootfs"]["diff_ids"].clone()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let (ctr_files, oras_files) = {
        let (addr, work) = (addr.clone(), work.path().to_path_buf());
        tokio::task::spawn_blocking(move || image_and_raw_files(&addr, &diff_ids, &work))
            .await
            .unwrap()
    };
    assert_eq!(
        ctr_files, oras_files,
        "containerd's files and oras's differ"
    );
    assert_eq!(
        ctr_files.get("model.safetensors"),
        Some(&format!("sha256:{sha}"))
    );
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);
}

/// Pull `hf/<REPO>:main` with containerd and `hf-raw/<REPO>:main` with oras from the agent at
/// `addr`: each one's files, path → sha256.
fn image_and_raw_files(
    addr: &str,
    diff_ids: &[String],
    work: &std::path::Path,
) -> (
    std::collections::BTreeMap<String, String>,
    std::collections::BTreeMap<String, String>,
) {
    use common::containerd::Containerd;
    let files = |tree: std::collections::BTreeMap<String, common::Entry>| {
        tree.into_iter()
            .filter_map(|(p, e)| match e {
                common::Entry::File { sha256, .. } => Some((p, sha256)),
                _ => None,
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let mut ctrd = Containerd::start().unwrap();
    let reference = format!("{addr}/hf/{REPO}:main");
    ctrd.run_ctr(
        "peers",
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
    // The unpacked root filesystem: the top snapshot is the chain ID of the config's diff IDs.
    let mnt = work.join("mnt");
    ctrd.mount_view("peers", "peers-view", &common::chain_id(diff_ids), &mnt)
        .unwrap();
    let image = files(common::read_tree(&mnt).unwrap());
    ctrd.unmount_all();
    drop(ctrd);
    let out = work.join("oras");
    common::hub::oras_pull(
        &common::Registry::at(addr),
        &format!("{addr}/hf-raw/{REPO}:main"),
        &out,
        work,
    )
    .unwrap();
    let raw = files(common::read_tree(&out).unwrap());
    (image, raw)
}

/// `name` summed over its label sets in node `i`'s /metrics (0 when absent).
async fn metric(cluster: &Cluster, i: usize, name: &str) -> f64 {
    metric_of(cluster, i, name, &[]).await
}

/// The sum of node `i`'s series `name` with `labels`.
async fn metric_of(cluster: &Cluster, i: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client()
        .get(format!("{}/metrics", cluster.url(i)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::metric_sum(&text, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_origin_fetcher_dies_the_others_finish_and_the_hub_sends_little_again() {
    let files = tempfile::tempdir().unwrap();
    let (hub, sha, size) = weights_hub(files.path(), 200 * MIB, 50 * MIB);
    let mut cluster = Cluster::formed(&hub.url(), 13, 3, &[]).await;
    let c = client();
    let digest = format!("sha256:{sha}");
    for i in 0..3 {
        manifest_ok(&c, &cluster.url(i), &format!("hf-raw/{REPO}"), "main").await;
    }
    let before = hub.bytes_served();
    let pulls = pull_raw(&cluster, &c, &digest, 0..3);
    // The node reading from the origin, once it is a third of the way.
    let fetcher = poll(
        "a node to be a third through the origin fetch",
        Duration::from_secs(60),
        || {
            let cluster = &cluster;
            async move {
                for i in 0..3 {
                    let s = cluster.status(i).await;
                    let third =
                        s["fetching"].as_array().unwrap().iter().any(|f| {
                            f["from"] == "origin" && f["have"].as_u64().unwrap() > size / 3
                        });
                    if third {
                        return Ok(Some(i));
                    }
                }
                Ok(None)
            }
        },
    )
    .await;
    cluster.nodes[fetcher].as_mut().unwrap().kill9().unwrap();
    for (i, p) in pulls.into_iter().enumerate() {
        let s = p.await.unwrap();
        if i == fetcher {
            continue;
        }
        assert!(s.complete(), "node {i}: {:?} {}", s.error, s.error_body);
        assert_eq!((s.len, s.sha256.as_str()), (size, sha.as_str()), "node {i}");
    }
    let origin = hub.bytes_served() - before;
    eprintln!("origin fetcher killed: {origin} bytes from the hub for a {size}-byte file");
    // The survivor furthest along resumes the origin fetch from where it stood: only what the
    // dead node had and nobody else (its last piece, what was in flight) is sent twice.
    assert!(
        origin <= size + 24 * MIB,
        "{origin} bytes from the hub for a {size}-byte file"
    );
    let mut switches = 0.0;
    for i in (0..3).filter(|i| *i != fetcher) {
        switches += metric(&cluster, i, "manta_peer_source_switches_total").await;
    }
    assert!(switches >= 1.0, "no survivor moved to another source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_agent_reads_pieces_from_every_holder_at_once_and_a_holder_that_dies_costs_its_pieces_only(
) {
    let files = tempfile::tempdir().unwrap();
    let (hub, sha, size) = weights_hub(files.path(), 48 * MIB, 400 * MIB);
    // Holders that upload at 10 MiB/s each (a node alone would take about 5 s from one).
    let mut cluster = Cluster::new(&hub.url(), 21, 4, &["--peer-rate-limit", "10MiB"]);
    for i in 0..3 {
        cluster.start(i);
    }
    cluster.wait_formed().await;
    let c = client();
    let digest = format!("sha256:{sha}");
    let url = |c: &Cluster, i: usize| format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", c.url(i));
    for i in 0..3 {
        manifest_ok(&c, &cluster.url(i), &format!("hf-raw/{REPO}"), "main").await;
        let s = stream_get(&c, &url(&cluster, i), &[], None).await;
        assert!(s.complete() && s.sha256 == sha, "node {i}: {:?}", s.error);
    }
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);

    // A fourth agent, not rate-limited itself, reads from all three; one of them dies a
    // quarter of the way through.
    cluster.extra.clear();
    cluster.start(3);
    cluster.wait_formed().await;
    manifest_ok(&c, &cluster.url(3), &format!("hf-raw/{REPO}"), "main").await;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(metric(&cluster, i, "manta_peer_uploaded_bytes_total").await);
    }
    let pull = {
        let (c, url) = (c.clone(), url(&cluster, 3));
        tokio::spawn(async move { stream_get(&c, &url, &[], None).await })
    };
    let victim = poll(
        "node 3 to read pieces from all three holders",
        Duration::from_secs(60),
        || {
            let cluster = &cluster;
            async move {
                let s = cluster.status(3).await;
                let Some(f) = s["fetching"].as_array().unwrap().first().cloned() else {
                    return Ok(None);
                };
                let from = f["from"].as_str().unwrap_or_default().to_string();
                let all = (0..3).all(|i| from.contains(&cluster.addrs[i]));
                Ok((all && f["have"].as_u64().unwrap() >= size / 4).then_some(1))
            }
        },
    )
    .await;
    cluster.nodes[victim].as_mut().unwrap().kill9().unwrap();
    let s = pull.await.unwrap();
    assert!(
        s.complete(),
        "{:?} {}\n{}",
        s.error,
        s.error_body,
        cluster.logs()
    );
    assert_eq!((s.len, s.sha256.as_str()), (size, sha.as_str()));
    // Nothing from the hub; the survivors each sent their share.
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);
    let piece = (4 * MIB) as f64;
    for i in [0, 2] {
        let up = metric(&cluster, i, "manta_peer_uploaded_bytes_total").await - sent[i];
        assert!(up >= piece, "holder {i} sent node 3 only {up} bytes");
    }
    // The dead holder cost the pieces it had in flight (at most two), not the rest of the blob.
    let peer = [("source", "peer")];
    let received = metric_of(&cluster, 3, "manta_source_fetched_bytes_total", &peer).await;
    assert!(
        received <= size as f64 + 2.0 * piece,
        "node 3 took {received} bytes from peers for a {size}-byte blob"
    );
    let retried = metric(&cluster, 3, "manta_peer_pieces_retried_total").await;
    assert!(
        retried >= 1.0,
        "no piece was asked again after the holder died"
    );
    // Stored, and true.
    cluster.stored_true(3, &digest, &sha).await;
}

/// A node on the peer list that serves a blob with the bytes of `bad` flipped (none, with an
/// empty range), at `rate` bytes/s if given, and says it holds the whole blob.
struct Liar {
    addr: String,
    served: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Liar {
    async fn start(ip: &str, file: PathBuf, bad_piece: (u64, u64)) -> Self {
        Self::start_at(ip, file, bad_piece, None).await
    }

    async fn start_at(ip: &str, file: PathBuf, bad_piece: (u64, u64), rate: Option<u64>) -> Self {
        use axum::extract::{Path as P, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use futures_util::StreamExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        type St = (PathBuf, (u64, u64), std::sync::Arc<AtomicU64>, Option<u64>);
        async fn blob(
            State((file, bad, served, rate)): State<St>,
            P(_d): P<String>,
            headers: HeaderMap,
        ) -> axum::response::Response {
            let data = std::fs::read(&file).unwrap();
            let size = data.len() as u64;
            // `bytes=a-` or `bytes=a-b`, as a real node answers them.
            let (start, end): (u64, u64) = headers
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
                    let end = if b.is_empty() {
                        size
                    } else {
                        b.parse::<u64>().ok()? + 1
                    };
                    Some((a.parse().ok()?, end.min(size)))
                })
                .unwrap_or((0, size));
            let mut body = data[start as usize..end as usize].to_vec();
            for (i, b) in body.iter_mut().enumerate() {
                let at = start + i as u64;
                if at >= bad.0 && at < bad.1 {
                    *b = !*b;
                }
            }
            let range = [("content-range", format!("bytes {start}-{}/{size}", end - 1))];
            let Some(rate) = rate else {
                served.fetch_add(body.len() as u64, Ordering::Relaxed);
                return (StatusCode::PARTIAL_CONTENT, range, body).into_response();
            };
            // Slowly: 64 KiB at a time, counted as it goes.
            let chunks: Vec<Vec<u8>> = body.chunks(64 << 10).map(<[u8]>::to_vec).collect();
            let stream = futures_util::stream::iter(chunks).then(move |c| {
                let served = served.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs_f64(c.len() as f64 / rate as f64)).await;
                    served.fetch_add(c.len() as u64, Ordering::Relaxed);
                    Ok::<_, std::io::Error>(c)
                }
            });
            (
                StatusCode::PARTIAL_CONTENT,
                range,
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        let served = std::sync::Arc::new(AtomicU64::new(0));
        let app = axum::Router::new()
            .route(
                "/manta/v1/peer/hello",
                axum::routing::get(|| async {
                    axum::Json(serde_json::json!({"node": "liar", "instance": "liar"}))
                }),
            )
            .route("/manta/v1/blobs/{digest}", axum::routing::get(blob))
            .with_state((file, bad_piece, served.clone(), rate));
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, served, task }
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lying_peer_is_caught_at_the_piece_and_banned_and_nothing_corrupt_is_stored() {
    let files = tempfile::tempdir().unwrap();
    let (hub, sha, size) = weights_hub(files.path(), 40 * MIB, 400 * MIB);
    let weights = walk_one(files.path());
    // The liar sorts first among equals (127.0.14.1 before the agents' .2, .3, .4): the owners
    // send the next reader to it (and name node 1 beside it, to read pieces from both). Every
    // byte it sends is wrong, so whichever piece it serves first is caught.
    let liar = Liar::start("127.0.14.1", weights, (0, size)).await;
    // Formed: the three agents see each other and the liar.
    let cluster = Cluster::with_fake(&hub.url(), 14, 4, &liar.addr).await;
    let c = client();
    let digest = format!("sha256:{sha}");
    // Node 1 pulls from the hub; it holds the blob and its pieces' hashes are published.
    cluster.pull_true(1, &digest, size, &sha).await;
    let url = |i: usize| format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(i));
    // The liar claims the whole blob, to every agent.
    cluster
        .claim_complete(1..4, &liar.addr, &digest, size)
        .await;
    let hub_before = hub.downloads(REPO, "model.safetensors");
    cluster.pull_true(2, &digest, size, &sha).await;
    assert!(
        liar.served.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the liar was never read from: the test proves nothing"
    );
    // Banned at its first bad piece: at most the pieces it had in flight then are rejected.
    let rejected = metric(&cluster, 2, "manta_peer_pieces_rejected_total").await;
    assert!(
        (1.0..=2.0).contains(&rejected),
        "{rejected} pieces rejected"
    );
    assert!(metric(&cluster, 2, "manta_peer_bans_total").await >= 1.0);
    assert_eq!(
        hub.downloads(REPO, "model.safetensors"),
        hub_before,
        "the rest came from node 1"
    );
    // What node 2 stored is the true blob (installed just after its last byte was released).
    cluster.stored_true(2, &digest, &sha).await;
    // The owners forgot the liar: node 3 is not sent to it.
    let served = liar.served.load(std::sync::atomic::Ordering::Relaxed);
    manifest_ok(&c, &cluster.url(3), &format!("hf-raw/{REPO}"), "main").await;
    let s = stream_get(&c, &url(3), &[], None).await;
    assert!(s.complete() && s.sha256 == sha, "{:?}", s.error);
    assert_eq!(
        liar.served.load(std::sync::atomic::Ordering::Relaxed),
        served
    );
    assert_eq!(
        metric(&cluster, 3, "manta_peer_pieces_rejected_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_holder_s_pieces_are_asked_of_another_after_their_deadline() {
    let files = tempfile::tempdir().unwrap();
    let (hub, sha, size) = weights_hub(files.path(), 40 * MIB, 400 * MIB);
    let weights = walk_one(files.path());
    let data = std::fs::read(&weights).unwrap();
    // A true copy, sent at 256 KiB/s: a 4 MiB piece from it would take 16 s.
    let slow = Liar::start_at("127.0.22.1", weights, (0, 0), Some(256 << 10)).await;
    let cluster = Cluster::with_fake(&hub.url(), 22, 3, &slow.addr).await;
    let digest = format!("sha256:{sha}");
    cluster.pull_true(1, &digest, size, &sha).await;
    // The slow node says it holds the blob: node 2 reads pieces from it (the first, which sorts
    // first among equals: pieces 0 and 2) and from node 1 (the others).
    cluster
        .claim_complete(1..3, &slow.addr, &digest, size)
        .await;
    let pull = {
        let (cluster, digest, sha) = (&cluster, digest.clone(), sha.clone());
        async move { cluster.pull_true(2, &digest, size, &sha).await }
    };
    // While its prefix waits for piece 0, node 2 serves a peer piece 3, checked already.
    let ahead = async {
        poll(
            "node 2 to read pieces from both holders",
            Duration::from_secs(30),
            || {
                let cluster = &cluster;
                async move {
                    let s = cluster.status(2).await;
                    let from = s["fetching"][0]["from"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    Ok(
                        (from.contains(&cluster.addrs[0]) && from.contains(&cluster.addrs[1]))
                            .then_some(()),
                    )
                }
            },
        )
        .await;
        let (start, end) = (12 * MIB, 16 * MIB);
        let r = client()
            .get(format!(
                "{}/manta/v1/blobs/{digest}",
                cluster.node(2).cluster_url().unwrap()
            ))
            .bearer_auth(TOKEN)
            .header("range", format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        let body = r.bytes().await.unwrap();
        let have = cluster.status(2).await["fetching"][0]["have"].as_u64();
        assert!(
            body[..] == data[start as usize..end as usize],
            "piece 3 as node 2 served it is not the blob's"
        );
        assert_eq!(have, Some(0), "served only once the prefix got there");
    };
    tokio::join!(pull, ahead);
    let served = slow.served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        served > 0,
        "the slow node was never read from: the test proves nothing"
    );
    // Its pieces were taken back at their deadline (well before it could finish one) and read
    // from node 1; late twice, it was asked for nothing more.
    assert!(
        served < 4 * MIB,
        "the slow node sent {served} bytes: a whole piece was waited for"
    );
    let retried = metric(&cluster, 2, "manta_peer_pieces_retried_total").await;
    assert!(retried >= 1.0, "no piece was asked again");
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);
}

/// The one file under `dir`.
fn walk_one(dir: &std::path::Path) -> PathBuf {
    let files = common::hub_agent::walk(dir);
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_protocol_needs_the_cluster_token() {
    let hub = HubFixture::start(vec![], FixtureOptions::default()).unwrap();
    let mut cluster = Cluster::new(&hub.url(), 15, 1, &[]);
    cluster.start(0);
    let base = cluster.node(0).cluster_url().unwrap();
    let c = client();
    let digest = format!("sha256:{}", "a".repeat(64));
    let locate = serde_json::json!({"digest": digest, "node": "127.0.15.9:1"});
    for token in [None, Some("wrong-token-0123456789"), Some(&TOKEN[1..])] {
        let auth = |r: reqwest::RequestBuilder| match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        for r in [
            auth(c.get(format!("{base}/manta/v1/peer/hello"))),
            auth(c.get(format!("{base}/manta/v1/peer/status"))),
            auth(c.post(format!("{base}/manta/v1/peer/locate")).json(&locate)),
            auth(c.get(format!("{base}/manta/v1/peer/pieces/{digest}"))),
            auth(c.get(format!("{base}/manta/v1/blobs/{digest}"))),
        ] {
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{token:?}");
        }
        // Nothing was recorded: a locate with the token finds no holder.
    }
    let r: Value = c
        .post(format!("{base}/manta/v1/peer/locate"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"digest": digest, "probe": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["action"], "fetch");
    // Malformed asks are refused, and change nothing; so are announcements naming a malformed
    // node, or too many, as read from.
    let progress = |also: Vec<String>| {
        serde_json::json!({"digest": digest, "node": "127.0.0.9:1", "event": {
            "kind": "progress", "have": 0, "size": 10, "origin": false,
            "from": "127.0.0.8:1", "also": also}})
    };
    for (path, bad) in [
        ("locate", serde_json::json!({"digest": "sha256:short"})),
        (
            "locate",
            serde_json::json!({"digest": digest, "node": "no-port"}),
        ),
        (
            "locate",
            serde_json::json!({"digest": digest, "node": "a/b:1"}),
        ),
        ("announce", progress(vec!["no-port".into()])),
        (
            "announce",
            progress((1..=9).map(|i| format!("127.0.0.{i}:1")).collect()),
        ),
    ] {
        let r = c
            .post(format!("{base}/manta/v1/peer/{path}"))
            .bearer_auth(TOKEN)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path} {bad}");
    }
    let r = c
        .post(format!("{base}/manta/v1/peer/announce"))
        .bearer_auth(TOKEN)
        .json(&progress(vec!["127.0.0.7:1".into()]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// Accepts connections and never answers (a peer that hangs), counting them.
struct Silent {
    addr: String,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Silent {
    fn start(ip: &str) -> Self {
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(s);
            }
        });
        Self { addr, count }
    }

    fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_peers_are_backed_off_not_waited_for_on_every_pull() {
    let n = 12;
    let repo_files: Vec<FixtureFile> = (0..n)
        .map(|i| FixtureFile::bytes(&format!("w{i}.bin"), common::random_bytes(256 << 10)).lfs())
        .collect();
    let hub = HubFixture::start(
        vec![FixtureRepo::with_main(REPO, repo_files)],
        FixtureOptions::default(),
    )
    .unwrap();
    // Two hanging peers and one that refuses connections, beside the agent itself.
    let (hang1, hang2) = (Silent::start("127.0.16.2"), Silent::start("127.0.16.3"));
    let refused = format!("127.0.16.4:{}", free_port("127.0.16.4"));
    let mut cluster = Cluster::new(&hub.url(), 16, 4, &[]);
    cluster.addrs[1] = hang1.addr.clone();
    cluster.addrs[2] = hang2.addr.clone();
    cluster.addrs[3] = refused;
    cluster.start(0);
    poll(
        "the dead peers to be backed off",
        Duration::from_secs(30),
        || {
            let cluster = &cluster;
            async move {
                let s = cluster.status(0).await;
                let down = s["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["healthy"] == false && m["backoff_secs"].as_u64().is_some())
                    .count();
                Ok((s["addr"].is_string() && down == 3).then_some(()))
            }
        },
    )
    .await;
    let c = client();
    let (m, _, _) = manifest_ok(&c, &cluster.url(0), &format!("hf-raw/{REPO}"), "main").await;
    let layers = layers_by_title(&m);
    let before = hang1.connections() + hang2.connections();
    for l in layers.values() {
        let s = stream_get(
            &c,
            &format!("{}/v2/hf-raw/{REPO}/blobs/{}", cluster.url(0), l.digest),
            &[],
            None,
        )
        .await;
        assert!(s.complete(), "{:?}", s.error);
    }
    let tried = hang1.connections() + hang2.connections() - before;
    // A retry of each after its backoff at most, however many pulls: not one per pull.
    assert!(
        tried <= 4,
        "{tried} connections to hanging peers for {n} pulls"
    );
    assert!(metric(&cluster, 0, "manta_peer_locates_total").await >= n as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_through_image_is_shared_the_same_way() {
    use common::lifecycle::{alias_config, pull, push_image};
    let up = manta_conformance::upstream_fixtures::DockerRegistry::start(None).unwrap();
    let work = tempfile::tempdir().unwrap();
    let layers = [
        common::random_bytes(12 << 20),
        common::random_bytes(9 << 20),
    ];
    let img = push_image(
        &up,
        &work.path().join("layout"),
        "shared/app",
        "v1",
        &[&layers[0], &layers[1]],
    );
    let cfg = alias_config(&up, work.path());
    let hub = HubFixture::start(vec![], FixtureOptions::default()).unwrap();
    let cluster = Cluster::formed(&hub.url(), 17, 3, &["--config", &cfg]).await;
    let c = client();
    // Two nodes pull it at once, through plain GETs.
    let (a, b) = (cluster.url(0), cluster.url(1));
    let (d0, d1) = (
        cluster.node(0).data_dir().to_path_buf(),
        cluster.node(1).data_dir().to_path_buf(),
    );
    tokio::join!(
        pull(&c, &a, &d0, &img.name, &img.tag),
        pull(&c, &b, &d1, &img.name, &img.tag)
    );
    // The third, through skopeo (which checks every digest).
    let host = cluster.url(2).trim_start_matches("http://").to_string();
    let out = work.path().join("out");
    tokio::task::spawn_blocking(move || {
        common::upstream::skopeo_pull(&format!("{host}/{}:v1", img.name), &out, "v1", false)
    })
    .await
    .unwrap()
    .unwrap();
    for (l, layer) in layers.iter().enumerate() {
        let digest = common::sha256_digest(layer);
        assert_eq!(
            up.blob_gets_settled("shared/app", &digest, 1),
            1,
            "layer {l} was fetched from the registry more than once\n{}",
            cluster.logs()
        );
    }
    assert!(metric(&cluster, 2, "manta_source_fetched_bytes_total").await >= 21.0 * MIB as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_peer_says_so_and_readers_move_on_and_the_rate_limit_holds() {
    let files = tempfile::tempdir().unwrap();
    let (hub, sha, size) = weights_hub(files.path(), 16 * MIB, 1 << 30);
    let rate = 8 * MIB;
    let rate_s = rate.to_string();
    let cluster = Cluster::formed(
        &hub.url(),
        18,
        3,
        &["--peer-max-uploads", "1", "--peer-rate-limit", &rate_s],
    )
    .await;
    let c = client();
    let digest = format!("sha256:{sha}");
    let url = |i: usize| format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(i));
    manifest_ok(&c, &cluster.url(0), &format!("hf-raw/{REPO}"), "main").await;
    let s = stream_get(&c, &url(0), &[], None).await;
    assert!(s.complete() && s.sha256 == sha, "{:?}", s.error);

    // Node 1 reads it from node 0, held to the rate (a lower bound: a slow machine only adds).
    manifest_ok(&c, &cluster.url(1), &format!("hf-raw/{REPO}"), "main").await;
    let t = std::time::Instant::now();
    let s = stream_get(&c, &url(1), &[], None).await;
    let took = t.elapsed();
    assert!(s.complete() && s.sha256 == sha, "{:?}", s.error);
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);
    let floor = Duration::from_secs_f64(0.8 * (size - rate / 10) as f64 / rate as f64);
    assert!(took >= floor, "{size} bytes at {rate} B/s in {took:?}");

    // Both holders busy: a reader that holds their one upload slot each, reading nothing.
    let mut held = Vec::new();
    for i in 0..2 {
        let r = c
            .get(format!(
                "{}/manta/v1/blobs/{digest}",
                cluster.node(i).cluster_url().unwrap()
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        held.push(r);
        let again = c
            .get(format!(
                "{}/manta/v1/blobs/{digest}",
                cluster.node(i).cluster_url().unwrap()
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 429);
        assert_eq!(again.headers()["retry-after"], "1");
    }
    // Node 2 is told 429 by both and moves on to the origin rather than wait.
    manifest_ok(&c, &cluster.url(2), &format!("hf-raw/{REPO}"), "main").await;
    let s = stream_get(&c, &url(2), &[], None).await;
    assert!(s.complete() && s.sha256 == sha, "{:?}", s.error);
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 2);
    assert!(metric(&cluster, 2, "manta_peer_bans_total").await >= 2.0);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forms_travel_between_peers_and_a_model_a_peer_holds_is_served_while_the_hub_is_down() {
    let files = tempfile::tempdir().unwrap();
    let (hub, sha, size) = weights_hub(files.path(), 40 * MIB, 1 << 30);
    let cluster = Cluster::formed(&hub.url(), 19, 3, &[]).await;
    let c = client();
    let digest = format!("sha256:{sha}");
    // Node 0 builds the image form: every file hashed as a tar layer.
    let (m0, image0, _) = manifest_ok(&c, &cluster.url(0), &format!("hf/{REPO}"), "main").await;
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);

    // Node 1 has it ready from node 0's recipes, without the weights: the same image form.
    let (m1, image1, _) = manifest_ok(&c, &cluster.url(1), &format!("hf/{REPO}"), "main").await;
    assert_eq!(image1, image0, "the image forms differ");
    assert_eq!(m1, m0);
    let weights_on_1 = common::hub_agent::blob_file(cluster.node(1).data_dir(), &digest);
    assert!(
        !weights_on_1.exists(),
        "node 1 downloaded the weights to build the image form"
    );
    assert_eq!(metric(&cluster, 1, "manta_peer_bans_total").await, 0.0);
    // Node 1 does not pass on a recipe it took on a peer's word...
    let recipe_on_1 = format!(
        "{}/manta/v1/peer/recipe/{digest}?path=model.safetensors",
        cluster.node(1).cluster_url().unwrap()
    );
    let status = |url: String| {
        let c = c.clone();
        async move { c.get(url).bearer_auth(TOKEN).send().await.unwrap().status() }
    };
    assert_eq!(status(recipe_on_1.clone()).await, 404);
    // containerd pulls it from node 1 (the layers stream from node 0, each checked whole).
    let addr = cluster.node(1).addr().to_string();
    let ctr = tokio::task::spawn_blocking(move || {
        let ctrd = common::containerd::Containerd::start().unwrap();
        ctrd.run_ctr(
            "forms",
            &[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "native",
                &format!("{addr}/hf/{REPO}:main"),
            ],
        )
        .map(drop)
    })
    .await
    .unwrap();
    ctr.unwrap();
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);
    // ...until a whole read of the layer hashed to its digest.
    assert_eq!(status(recipe_on_1).await, 200);

    // The hub goes away. Node 2 never resolved the model: a peer's record of it, and the
    // peers' bytes, serve it.
    let raw0 = manifest_ok(&c, &cluster.url(0), &format!("hf-raw/{REPO}"), "main")
        .await
        .1;
    hub.stop();
    let (_, raw2, _) = manifest_ok(&c, &cluster.url(2), &format!("hf-raw/{REPO}"), "main").await;
    assert_eq!(raw2, raw0);
    let s = stream_get(
        &c,
        &format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(2)),
        &[],
        None,
    )
    .await;
    assert!(s.complete(), "{:?} {}", s.error, s.error_body);
    assert_eq!((s.len, s.sha256.as_str()), (size, sha.as_str()));

    // `manta ls` says where each node's copy came from.
    let from = |i: usize| cluster.came_from(i);
    let (cached0, peers0) = from(0);
    assert_eq!(peers0, 0, "node 0 fetched from the hub");
    assert!(cached0 >= size);
    // (Node 2 installs the blob just after its last byte went out.)
    let (cached2, peers2) = poll("node 2 to list the model", Duration::from_secs(30), || {
        let r = from(2);
        async move { Ok((r.0 >= size).then_some(r)) }
    })
    .await;
    assert!(
        cached2 >= size && peers2 >= size,
        "node 2: {cached2} cached, {peers2} from peers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_can_come_from_a_dns_name() {
    // `localhost` stands for a headless Service: every address it resolves to, at the port.
    let hub = HubFixture::start(vec![], FixtureOptions::default()).unwrap();
    let port = free_port("127.0.0.1");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let cluster = format!("127.0.0.1:{port}");
    let peers = format!("dns:localhost:{port}");
    let token = tmp.path().join("token");
    let agent = spawn_agent(
        &hub.url(),
        &tmp.path().join("data"),
        &[
            "--cluster-listen",
            &cluster,
            "--cluster-token-file",
            token.to_str().unwrap(),
            "--peers",
            &peers,
        ],
    )
    .unwrap();
    let c = client();
    let s: Value = poll("the agent to find itself", Duration::from_secs(30), || {
        let (c, url) = (c.clone(), format!("{}/manta/v1/peer/status", agent.url()));
        async move {
            let s: Value = c.get(url).send().await?.json().await?;
            Ok(s["addr"].is_string().then_some(s))
        }
    })
    .await;
    assert_eq!(s["addr"], cluster.as_str());
    let members: Vec<&str> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["addr"].as_str().unwrap())
        .collect();
    assert!(members.contains(&cluster.as_str()), "{members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_every_agent_restarts_the_copies_held_are_found_again() {
    let files = tempfile::tempdir().unwrap();
    let (hub, sha, size) = weights_hub(files.path(), 24 * MIB, 1 << 30);
    let mut cluster = Cluster::formed(&hub.url(), 20, 3, &[]).await;
    let c = client();
    let digest = format!("sha256:{sha}");
    manifest_ok(&c, &cluster.url(0), &format!("hf-raw/{REPO}"), "main").await;
    let s = stream_get(
        &c,
        &format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(0)),
        &[],
        None,
    )
    .await;
    assert!(s.complete() && s.sha256 == sha, "{:?}", s.error);
    assert_eq!(hub.downloads(REPO, "model.safetensors"), 1);
    let stored = common::hub_agent::blob_file(cluster.node(0).data_dir(), &digest);
    poll(
        "node 0 to install the blob",
        Duration::from_secs(30),
        || {
            let stored = stored.clone();
            async move { Ok(stored.exists().then_some(())) }
        },
    )
    .await;
    // A rollout: every agent restarts, and every owner's table is gone with it.
    for i in 0..3 {
        cluster.nodes[i].as_mut().unwrap().kill9().unwrap();
    }
    for i in 0..3 {
        cluster.start(i);
    }
    cluster.wait_formed().await;
    // Node 0 tells the owners it holds the blob; node 2 reads it from there.
    manifest_ok(&c, &cluster.url(2), &format!("hf-raw/{REPO}"), "main").await;
    poll(
        "the held blob to be announced",
        Duration::from_secs(30),
        || {
            let (c, url) = (
                c.clone(),
                format!(
                    "{}/manta/v1/peer/locate",
                    cluster.node(2).cluster_url().unwrap()
                ),
            );
            let digest = digest.clone();
            async move {
                let r: Value = c
                    .post(url)
                    .bearer_auth(TOKEN)
                    .json(&serde_json::json!({"digest": digest, "probe": true}))
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok((r["action"] == "follow").then_some(()))
            }
        },
    )
    .await;
    let s = stream_get(
        &c,
        &format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(2)),
        &[],
        None,
    )
    .await;
    assert!(s.complete(), "{:?} {}", s.error, s.error_body);
    assert_eq!((s.len, s.sha256.as_str()), (size, sha.as_str()));
    assert_eq!(
        hub.downloads(REPO, "model.safetensors"),
        1,
        "the restarted cluster went back to the hub\n{}",
        cluster.logs()
    );
}

/// Agents that read large blobs in stripes from 8 live nodes on (a real cluster stripes from
/// 16), each taking and sending at most 32 MiB/s to its peers.
const STRIPED: &[&str] = &[
    "--peer-stripes",
    "4",
    "--peer-stripe-min-nodes",
    "8",
    "--peer-rate-limit",
    "32MiB",
];

/// A striped cluster of `n` agents on `127.0.<net>.x` pulling the model's weights (96 MiB,
/// 24 pieces: 6 a stripe) from a hub sending 12 MiB/s, all at once: the hub, the digest, the
/// size and sha256, the cluster, the hub's bytes before the pulls, and the pulls.
struct StripedPull {
    hub: HubFixture,
    digest: String,
    sha: String,
    size: u64,
    cluster: Cluster,
    before: u64,
    pulls: Vec<tokio::task::JoinHandle<common::hub_agent::Streamed>>,
    _files: tempfile::TempDir,
}

impl StripedPull {
    async fn start(net: u8, n: usize) -> Self {
        let files = tempfile::tempdir().unwrap();
        let (hub, sha, size) = weights_hub(files.path(), 96 * MIB, 12 * MIB);
        let cluster = Cluster::formed(&hub.url(), net, n, STRIPED).await;
        let c = client();
        let digest = format!("sha256:{sha}");
        for i in 0..n {
            manifest_ok(&c, &cluster.url(i), &format!("hf-raw/{REPO}"), "main").await;
        }
        let before = hub.bytes_served();
        let pulls = pull_raw(&cluster, &c, &digest, 0..n);
        Self {
            hub,
            digest,
            sha,
            size,
            cluster,
            before,
            pulls,
            _files: files,
        }
    }

    /// Every pull but `dead`'s got the true bytes, and every survivor installed them; the
    /// hub's bytes since the pulls began.
    async fn survivors_true(&mut self, dead: usize) -> u64 {
        for (i, p) in std::mem::take(&mut self.pulls).into_iter().enumerate() {
            let s = p.await.unwrap();
            if i == dead {
                continue;
            }
            assert!(
                s.complete(),
                "node {i}: {:?} {}\n{}",
                s.error,
                s.error_body,
                self.cluster.logs()
            );
            assert_eq!((s.len, s.sha256.as_str()), (self.size, self.sha.as_str()));
        }
        for i in (0..self.cluster.nodes.len()).filter(|i| *i != dead) {
            self.cluster.stored_true(i, &self.digest, &self.sha).await;
        }
        self.hub.bytes_served() - self.before
    }

    /// Kill -9 the node `pick` names, once it names one from who reads the blob from whom now
    /// (see [`fetching`]); its index.
    async fn kill_when(
        &mut self,
        what: &str,
        pick: impl Fn(&Cluster, &[(usize, u64, Vec<String>)]) -> Option<usize>,
    ) -> usize {
        let victim = poll(what, Duration::from_secs(60), || {
            let cluster = &self.cluster;
            let pick = &pick;
            async move { Ok(pick(cluster, &fetching(cluster).await)) }
        })
        .await;
        self.cluster.nodes[victim]
            .as_mut()
            .unwrap()
            .kill9()
            .unwrap();
        victim
    }

    /// The sum of `name` over the nodes but `dead`.
    async fn total(&self, name: &str, dead: usize) -> f64 {
        let mut sum = 0.0;
        for i in (0..self.cluster.nodes.len()).filter(|i| *i != dead) {
            sum += metric(&self.cluster, i, name).await;
        }
        sum
    }
}

/// Each of `nodes` streams `digest` of the raw form through its own endpoint, all at once.
fn pull_raw(
    cluster: &Cluster,
    c: &reqwest::Client,
    digest: &str,
    nodes: std::ops::Range<usize>,
) -> Vec<tokio::task::JoinHandle<common::hub_agent::Streamed>> {
    nodes
        .map(|i| {
            let (c, url) = (
                c.clone(),
                format!("{}/v2/hf-raw/{REPO}/blobs/{digest}", cluster.url(i)),
            );
            tokio::spawn(async move { stream_get(&c, &url, &[], None).await })
        })
        .collect()
}

/// Who reads the blob from whom now, from each node's `manta peers` status: for each node
/// fetching it, `(node, bytes it holds, the peers it reads pieces from, or "origin")`.
async fn fetching(cluster: &Cluster) -> Vec<(usize, u64, Vec<String>)> {
    let mut out = Vec::new();
    for i in 0..cluster.nodes.len() {
        if cluster.nodes[i].is_none() {
            continue;
        }
        let s = cluster.status(i).await;
        for f in s["fetching"].as_array().unwrap() {
            // "origin", one peer's address, or "addr (n pieces), addr (m pieces)".
            let from = f["from"]
                .as_str()
                .unwrap()
                .split(", ")
                .map(|x| x.split(' ').next().unwrap().to_string())
                .collect();
            out.push((i, f["have"].as_u64().unwrap(), from));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_large_cluster_a_blob_is_read_in_stripes_and_a_parent_that_dies_costs_a_relocation() {
    const N: usize = 10;
    let mut run = StripedPull::start(23, N).await;
    // A node that others read a stripe from, other than the origin fetcher, before it is
    // half-way.
    let size = run.size;
    let victim = run
        .kill_when("a stripe parent half-way or less", |cluster, now| {
            let fetcher = now
                .iter()
                .find(|(_, _, from)| from == &["origin"])
                .map(|f| f.0);
            now.iter()
                .filter(|(_, _, from)| from.len() > 1)
                .flat_map(|(_, _, from)| from.iter())
                .filter_map(|a| cluster.addrs.iter().position(|x| x == a))
                .find(|p| {
                    Some(*p) != fetcher && now.iter().any(|(i, have, _)| i == p && *have < size / 2)
                })
        })
        .await;
    let origin = run.survivors_true(victim).await;
    eprintln!("a stripe parent killed: {origin} bytes from the hub for a {size}-byte file");
    // Its readers took their stripe from other peers: the hub still sent the file once.
    assert!(
        origin <= size + size / 20,
        "{origin} bytes from the hub for a {size}-byte file"
    );
    let striped = run.total("manta_peer_striped_fetches_total", victim).await;
    assert!(
        striped >= (N - 2) as f64,
        "{striped} striped fetches among {} survivors\n{}",
        N - 1,
        run.cluster.logs()
    );
    let relocated = run
        .total("manta_peer_stripe_relocations_total", victim)
        .await;
    assert!(relocated >= 1.0, "no stripe was located again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_root_of_the_stripes_dies_each_stripe_is_read_from_the_origin_from_where_it_stands(
) {
    const N: usize = 10;
    let mut run = StripedPull::start(24, N).await;
    let size = run.size;
    let fetcher = run
        .kill_when("the origin fetcher to be a third through", |_, now| {
            now.iter()
                .find(|(_, have, from)| from == &["origin"] && *have > size / 3)
                .map(|f| f.0)
        })
        .await;
    let origin = run.survivors_true(fetcher).await;
    eprintln!("the root killed: {origin} bytes from the hub for a {size}-byte file");
    // Each stripe's first reader took the rest of its stripe from the origin, from where it
    // stood: what the dead node had and nobody else (what it had not yet sent them) is all
    // that was sent twice. (About a megabyte here; four pieces allow for a slow machine.)
    assert!(
        origin <= size + 4 * 4 * MIB,
        "{origin} bytes from the hub for a {size}-byte file"
    );
    // Those reads asked the hub for their pieces only (a range with an end), not for the rest
    // of the file, cut off when the piece was in.
    let open_ended: Vec<String> = run
        .hub
        .requests()
        .into_iter()
        .filter_map(|r| r.range)
        .filter(|r| r.ends_with('-'))
        .collect();
    assert!(
        open_ended.is_empty(),
        "ranges asked of the hub without an end: {open_ended:?}"
    );
    // `manta ls` counts the pieces a survivor read from the origin as its own, not as from
    // peers.
    let from_origin: u64 = (0..N)
        .filter(|i| *i != fetcher)
        .map(|i| size - run.cluster.came_from(i).1.min(size))
        .sum();
    assert!(
        from_origin > 0 && from_origin <= origin,
        "the survivors say {from_origin} of their bytes came from the origin; the hub sent {origin}"
    );
    let striped = run.total("manta_peer_striped_fetches_total", fetcher).await;
    assert!(striped >= (N - 1) as f64, "{striped} striped fetches");
    let relocated = run
        .total("manta_peer_stripe_relocations_total", fetcher)
        .await;
    assert!(relocated >= 1.0, "no stripe was located again");
}
