//! Test support for Manta: start real `manta serve` processes, and the OCI distribution-spec
//! conformance workflows (pull, push, content discovery, content management) as a library that
//! runs against any registry URL and reports pass/fail per case.

pub mod containerd;
pub mod fake_agent;
pub mod hub_fixture;
pub mod kube_fake;
pub mod oci;
pub mod process;
pub mod server;
pub mod upstream_fixtures;
