//! The OCI distribution-spec conformance workflows against a fresh `manta serve`, one test per
//! workflow, each pushing to a multi-segment repository name.

use manta_conformance::oci::{run_workflow, Outcome, SuiteConfig, Workflow};
use manta_conformance::server::MantaServer;

async fn conformance(workflow: Workflow) {
    let server = MantaServer::start().expect("start manta serve");
    let mut cfg = SuiteConfig::new(server.url(), "conformance/a/b/c");
    cfg.cross_mount_namespace = Some("conformance/mount/x".to_string());
    cfg.workflows = vec![workflow];
    let report = run_workflow(&cfg, workflow).await;
    println!("{report}");
    assert!(
        report.cases.iter().any(|c| c.outcome == Outcome::Pass)
            || report.cases.is_empty()
            || !report.is_success(),
        "no case ran"
    );
    if !report.is_success() {
        let failures: Vec<String> = report.failures().map(ToString::to_string).collect();
        panic!(
            "{} of {} {workflow} cases failed:\n{}\n--- manta log (tail) ---\n{}",
            failures.len(),
            report.cases.len(),
            failures.join("\n"),
            tail(&server.logs(), 40)
        );
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull() {
    conformance(Workflow::Pull).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push() {
    conformance(Workflow::Push).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_discovery() {
    conformance(Workflow::ContentDiscovery).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_management() {
    conformance(Workflow::ContentManagement).await;
}
