//! Run the OCI distribution-spec conformance workflows against a registry.
//!
//! `oci-conformance --url http://127.0.0.1:5000 [--namespace myorg/myrepo] [--workflows pull,push]`
//! prints one line per case and `N passed, N failed, N skipped`, and exits 1 when a case failed.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use manta_conformance::oci::{run_all, SuiteConfig, Workflow};

#[derive(Parser, Debug)]
#[command(
    name = "oci-conformance",
    about = "OCI distribution-spec conformance suite (pull, push, discovery, management)"
)]
struct Args {
    /// Registry root URL (`OCI_ROOT_URL`).
    #[arg(long, env = "OCI_ROOT_URL")]
    url: String,
    /// Repository to push to; may have several `/`-separated segments (`OCI_NAMESPACE`).
    #[arg(
        long,
        env = "OCI_NAMESPACE",
        default_value = "conformance/myorg/myrepo"
    )]
    namespace: String,
    /// Repository used as the target of cross-repository mounts (`OCI_CROSSMOUNT_NAMESPACE`);
    /// a fresh `conformance-<random>` by default.
    #[arg(long, env = "OCI_CROSSMOUNT_NAMESPACE")]
    cross_mount_namespace: Option<String>,
    /// Comma-separated workflows: pull, push, discovery, management.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pull,push,discovery,management"
    )]
    workflows: Vec<Workflow>,
    /// Delete manifests before blobs in teardowns (`OCI_DELETE_MANIFEST_BEFORE_BLOBS`).
    #[arg(long, env = "OCI_DELETE_MANIFEST_BEFORE_BLOBS", default_value_t = true, action = clap::ArgAction::Set)]
    delete_manifest_before_blobs: bool,
    /// Whether the registry mounts without `from` (`OCI_AUTOMATIC_CROSSMOUNT`); unset skips those cases.
    #[arg(long, env = "OCI_AUTOMATIC_CROSSMOUNT", action = clap::ArgAction::Set)]
    automatic_crossmount: Option<bool>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = SuiteConfig {
        cross_mount_namespace: args.cross_mount_namespace,
        workflows: args.workflows,
        delete_manifest_before_blobs: args.delete_manifest_before_blobs,
        automatic_crossmount: args.automatic_crossmount,
        timeout: Duration::from_secs(args.timeout_secs),
        ..SuiteConfig::new(args.url, args.namespace)
    };
    let report = run_all(&cfg).await;
    println!("{report}");
    if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
