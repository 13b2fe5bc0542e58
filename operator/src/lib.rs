//! Manta's operator: reconciles `Torrent` objects into prefetches and pins on the nodes that its
//! Filter and Score plugins choose, over each node agent's admin API.

pub mod agents;
pub mod config;
pub mod controller;
pub mod crd;
pub mod inventory;
pub mod leader;
pub mod metrics;
pub mod plugins;

use std::path::PathBuf;

/// What the operator failed to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API")]
    Kube(#[source] kube::Error),
    #[error("agent admin API")]
    Agent(#[from] manta_api::Error),
    #[error("reading the token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {path} holds no token")]
    NoToken { path: PathBuf },
    #[error("{0:?} is not an agent URL")]
    AgentUrl(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("finalizer")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the Torrent has no name")]
    Unnamed,
    #[error("the node, pod and agent inventories are not complete yet")]
    NotSynced,
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl Error {
    /// A label value for metrics (bounded).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Agent(_) => "agent",
            Error::TokenFile { .. } | Error::NoToken { .. } => "token",
            Error::AgentUrl(_) => "agent_url",
            Error::Config(_) => "config",
            Error::Finalizer(_) => "finalizer",
            Error::Unnamed => "unnamed",
            Error::NotSynced => "not_synced",
        }
    }

    /// Whether an agent's error may pass by itself (it did not answer, or answered busy or
    /// unavailable): worth asking again, not a reason to give up on the node.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Agent(e) => {
                e.is_unreachable()
                    || e.status().is_some_and(|s| {
                        s == reqwest::StatusCode::TOO_MANY_REQUESTS
                            || s == reqwest::StatusCode::SERVICE_UNAVAILABLE
                            || s == reqwest::StatusCode::GATEWAY_TIMEOUT
                    })
            }
            _ => false,
        }
    }
}
