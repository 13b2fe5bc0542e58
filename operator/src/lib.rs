//! Manta's operator: reconciles `Torrent` objects into prefetches and pins on the nodes that its
//! Filter and Score plugins choose, over each node agent's admin API.

pub mod agents;
pub mod config;
pub mod controller;
pub mod crd;
pub mod inventory;
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
        }
    }
}
