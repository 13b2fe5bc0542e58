//! Manta's admin API under `/manta/v1/`, written once: the request and response types the agent
//! serves, and a typed [`Client`] for them. The agent's handlers, the `manta` CLI and the operator
//! all use these types, so a field changes in one place (kube-rs's `kube-core` idea).
//!
//! The agent answers on its loopback listener without authentication, and on its cluster
//! listener with the shared token (`Client::new(…, Some(token), …)`).

mod cache;
mod client;
mod pins;
mod prefetch;

pub use cache::{CacheEntry, CacheView, CachedRevision, Protection, RootKind, SpaceView};
pub use client::{encode_path, first_token, Answer, Client, Error};
pub use manta_hub::{Filter, HubKind};
pub use pins::{
    DanglingManifest, Evicted, GcReport, GcRequest, PinList, PinTarget, PinView, Reclaim, Unpinned,
    VerifyReport,
};
pub use prefetch::{FileProgress, FileState, Form, Job, JobFailure, JobState, PrefetchRequest};
