//! The OCI distribution-spec conformance workflows (github.com/opencontainers/distribution-spec,
//! `conformance/`), ported to Rust: pull, push, content discovery and content management, plus the
//! cases added on the suite's main branch (blob ranges, sha512, upload cancel, tag pagination, ...).
//!
//! Every case asserts the status codes and headers the Go suite asserts, accepting the same
//! alternatives. Cases run in the Go suite's order and share its state (a later case may depend on
//! an earlier one's response).

pub mod client;
mod discovery;
pub mod fixtures;
mod management;
mod pull;
mod push;
mod push_blobs;
pub mod report;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};
use reqwest::Method;

pub use client::{Client, Resp};
pub use fixtures::Fixtures;
pub use report::{CaseResult, Outcome, Report, Runner};

/// One of the four workflows of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workflow {
    Pull,
    Push,
    ContentDiscovery,
    ContentManagement,
}

impl Workflow {
    pub const ALL: [Workflow; 4] = [
        Workflow::Pull,
        Workflow::Push,
        Workflow::ContentDiscovery,
        Workflow::ContentManagement,
    ];
}

impl fmt::Display for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workflow::Pull => "Pull",
            Workflow::Push => "Push",
            Workflow::ContentDiscovery => "Content Discovery",
            Workflow::ContentManagement => "Content Management",
        })
    }
}

impl FromStr for Workflow {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(
            match s
                .trim()
                .to_ascii_lowercase()
                .replace(['_', ' '], "-")
                .as_str()
            {
                "pull" => Workflow::Pull,
                "push" => Workflow::Push,
                "discovery" | "content-discovery" => Workflow::ContentDiscovery,
                "management" | "content-management" => Workflow::ContentManagement,
                other => bail!(
                    "unknown workflow {other:?} (expected pull, push, discovery or management)"
                ),
            },
        )
    }
}

/// What to test and where (the Go suite's `OCI_*` environment variables).
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// `OCI_ROOT_URL`, e.g. `http://127.0.0.1:5000`.
    pub base_url: String,
    /// `OCI_NAMESPACE`: the repository the workflows push to; may have several `/` segments.
    pub namespace: String,
    /// `OCI_CROSSMOUNT_NAMESPACE`; a fresh `conformance-<random>` when `None`.
    pub cross_mount_namespace: Option<String>,
    /// Workflows to run, in this order.
    pub workflows: Vec<Workflow>,
    /// `OCI_DELETE_MANIFEST_BEFORE_BLOBS` (default true): teardown order.
    pub delete_manifest_before_blobs: bool,
    /// `OCI_AUTOMATIC_CROSSMOUNT`: `None` skips the mount-without-`from` cases.
    pub automatic_crossmount: Option<bool>,
    /// Timeout of each request.
    pub timeout: Duration,
}

impl SuiteConfig {
    /// All four workflows against `base_url`, pushing to `namespace`.
    pub fn new(base_url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            namespace: namespace.into(),
            cross_mount_namespace: None,
            workflows: Workflow::ALL.to_vec(),
            delete_manifest_before_blobs: true,
            automatic_crossmount: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// State shared by the workflows of one run.
pub(crate) struct Ctx<'a> {
    pub cfg: &'a SuiteConfig,
    pub client: Client,
    pub fx: Fixtures,
    pub cross: String,
}

/// Run the configured workflows in order.
pub async fn run_all(cfg: &SuiteConfig) -> Report {
    let mut report = Report::default();
    for wf in &cfg.workflows {
        report.extend(run_workflow(cfg, *wf).await);
    }
    report
}

/// Run one workflow with freshly generated content.
pub async fn run_workflow(cfg: &SuiteConfig, wf: Workflow) -> Report {
    let ctx = match new_ctx(cfg) {
        Ok(c) => c,
        Err(e) => {
            let mut r = Runner::new(wf);
            r.case("Setup / configure the suite", async { Err(e) })
                .await;
            return r.finish();
        }
    };
    match wf {
        Workflow::Pull => pull::run(&ctx).await,
        Workflow::Push => push::run(&ctx).await,
        Workflow::ContentDiscovery => discovery::run(&ctx).await,
        Workflow::ContentManagement => management::run(&ctx).await,
    }
}

fn new_ctx(cfg: &SuiteConfig) -> Result<Ctx<'_>> {
    let client = Client::new(&cfg.base_url, &cfg.namespace, cfg.timeout)?;
    let fx = Fixtures::generate()?;
    let cross = match &cfg.cross_mount_namespace {
        Some(n) => n.clone(),
        None => format!(
            "conformance-{}",
            fixtures::random_string(12, fx.seed)
                .to_ascii_lowercase()
                .replace('-', "0")
        ),
    };
    Ok(Ctx {
        cfg,
        client,
        fx,
        cross,
    })
}

impl Ctx<'_> {
    /// POST an upload session, then PUT the whole blob to its location (the suite's setup idiom).
    pub async fn upload_blob(&self, content: &[u8], digest: &str) -> Result<Resp> {
        let c = &self.client;
        let post = c.send(c.request(Method::POST, &c.uploads_path())?).await?;
        let loc = post.relative_location()?;
        let put = c
            .request(Method::PUT, &loc)?
            .query(&[("digest", digest)])
            .header("Content-Type", "application/octet-stream")
            .body(content.to_vec());
        c.send(put).await
    }

    /// PUT a manifest under `reference` with the given media type.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Result<Resp> {
        let c = &self.client;
        let req = c
            .request(Method::PUT, &c.manifest_path(reference))?
            .header("Content-Type", media_type)
            .body(body.to_vec());
        c.send(req).await
    }

    /// A request without headers or body.
    pub async fn simple(&self, method: Method, path: &str) -> Result<Resp> {
        self.client.send(self.client.request(method, path)?).await
    }

    /// GET or HEAD a manifest with the OCI manifest Accept header.
    pub async fn fetch_manifest(&self, method: Method, reference: &str) -> Result<Resp> {
        let c = &self.client;
        let req = c
            .request(method, &c.manifest_path(reference))?
            .header("Accept", fixtures::MANIFEST_TYPE);
        c.send(req).await
    }

    /// Teardown deletes: 2xx, or one of `also`.
    pub async fn delete_expect(&self, path: &str, also: &[u16]) -> Result<()> {
        self.simple(Method::DELETE, path).await?.expect_2xx_or(also)
    }
}
