//! Manta's node agent: an OCI distribution-spec v1.1 endpoint over a crash-safe content store.

pub mod api;
pub mod cli;
pub mod digest;
pub mod error;
pub mod fetch;
pub mod hub;
pub mod metrics;
pub mod mirror_config;
pub mod names;
pub mod server;
pub mod source;
pub mod store;
pub mod upstream;
