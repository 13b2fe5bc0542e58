//! Leader election against the fake API server: the Lease as a compare-and-swap, and two real
//! `manta-operator` processes of which one acts and the other takes over when it stops.

#![allow(clippy::unwrap_used)] // a test: a panic is the failure report

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use manta_conformance::kube_fake::FakeApiServer;
use manta_operator::leader::{Candidate, LeaderConfig};

async fn client(server: &FakeApiServer) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let c = kube::Client::try_from(config).unwrap();
    // The Lease's namespace (the fake, like the real one, refuses objects in a missing one).
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    let ns =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "manta-system"}})).unwrap();
    let _ = namespaces.create(&Default::default(), &ns).await;
    // The Torrent CRD, as the chart installs it (the controller's watch lists Torrents).
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd = serde_yaml::from_str(include_str!(
        "../../charts/manta/crds/torrents.manta.io.yaml"
    ))
    .unwrap();
    let _ = crds.create(&Default::default(), &crd).await;
    c
}

fn candidate(name: &str) -> LeaderConfig {
    let mut c = LeaderConfig::new("manta-system".into(), "manta-operator".into(), name.into());
    c.lease_duration = Duration::from_secs(1);
    c
}

#[tokio::test]
async fn one_candidate_holds_the_lease_until_it_expires_or_is_released() {
    let server = FakeApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client(&server).await, "manta-system");
    let mut a = Candidate::new(leases.clone(), candidate("a"));
    let mut b = Candidate::new(leases.clone(), candidate("b"));
    assert!(a.try_acquire().await.unwrap(), "a creates it");
    assert!(!b.try_acquire().await.unwrap(), "b waits");
    assert!(a.try_acquire().await.unwrap(), "a renews");
    assert!(!b.try_acquire().await.unwrap(), "b sees it renewed");
    let spec = leases.get("manta-operator").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_transitions, Some(0));

    // a stops renewing: once b has seen the same record for the lease's duration, b takes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(b.try_acquire().await.unwrap(), "b takes an expired lease");
    assert!(!a.try_acquire().await.unwrap(), "a lost it");
    let spec = leases.get("manta-operator").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));

    // b releases it: a takes it at once, without waiting for it to expire.
    b.release().await;
    assert!(a.try_acquire().await.unwrap());
    // Releasing a lease one does not hold changes nothing.
    b.release().await;
    let spec = leases.get("manta-operator").await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
}

#[tokio::test]
async fn racing_candidates_cannot_both_win() {
    let server = FakeApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client(&server).await, "manta-system");
    let mut all: Vec<Candidate> = (0..8)
        .map(|i| Candidate::new(leases.clone(), candidate(&format!("c{i}"))))
        .collect();
    let won = futures_util::future::join_all(all.iter_mut().map(|c| c.try_acquire())).await;
    let winners = won.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(winners, 1);
}

struct Operator {
    child: Child,
    http: String,
    log: std::path::PathBuf,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn readyz(addr: &str) -> Option<String> {
    manta_conformance::process::http_get(addr, "/readyz").map(|(_, body)| body)
}

fn start(dir: &std::path::Path, name: &str, kubeconfig: &std::path::Path) -> Operator {
    let cfg = dir.join("operator.toml");
    std::fs::write(
        &cfg,
        "[agents]\nnamespace = \"manta-system\"\npollSeconds = 1\n",
    )
    .unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_manta-operator"))
        .args(["--config", cfg.to_str().unwrap(), "--metrics-listen", &http])
        .args([
            "--leader-election",
            "--leader-election-namespace",
            "manta-system",
        ])
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAME", name)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Operator { child, http, log }
}

/// Poll until `f` holds (30 s at most).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operators_one_acts_and_the_other_takes_over_when_it_stops() {
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kc).unwrap();
    let leases: Api<Lease> = Api::namespaced(client(&server).await, "manta-system");

    let first = start(dir.path(), "op-1", &kc);
    until("op-1 leads and is ready", || {
        readyz(&first.http).as_deref() == Some("ok")
    })
    .await;
    let second = start(dir.path(), "op-2", &kc);
    until("op-2 stands by", || {
        readyz(&second.http).as_deref() == Some("standby")
    })
    .await;
    let held = lease_holder(&leases).await;
    assert!(held.starts_with("op-1_"), "{held}");
    // Still standing by a few renewals later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(readyz(&second.http).as_deref(), Some("standby"));

    // op-1 stops (SIGTERM, as kubelet stops a pod): it releases the lease, op-2 leads.
    let st = Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut first = first;
    assert!(first.child.wait().unwrap().success());
    assert!(std::fs::read_to_string(&first.log)
        .unwrap()
        .contains("released the lease"));
    until("op-2 leads", || {
        readyz(&second.http).as_deref() == Some("ok")
    })
    .await;
    let held = lease_holder(&leases).await;
    assert!(held.starts_with("op-2_"), "{held}");
    drop(second);
}

/// Who holds the operator's Lease now.
async fn lease_holder(leases: &Api<Lease>) -> String {
    leases
        .get("manta-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap()
}
