//! Manta's peers: how the agents of a cluster find each other and one another's blobs, with no
//! central service.
//!
//! - [`members`]: who the peers are (`--peers`: a static list or a DNS name), with backoff.
//! - [`ring`]: each digest's owner nodes, by rendezvous hashing over the live membership.
//! - [`tracker`]: what an owner knows of its digests, and the routing rule that answers
//!   `locate` so that nodes pulling together read from each other and the origin once.
//! - [`pieces`]: the units blobs are checked in while they move between peers.
//! - [`schedule`]: which piece to read next, and from which peer, when reading from several.
//! - [`proto`] and [`client`]: the wire protocol on the cluster listener.
//! - [`PeerRouter`]: all of it for one node.
//!
//! This crate knows nothing of the store or of HTTP servers; the agent serves the protocol's
//! endpoints by calling [`PeerRouter`]'s `handle_*` methods.

pub mod client;
pub mod members;
pub mod pieces;
pub mod proto;
pub mod rate;
pub mod ring;
mod router;
pub mod schedule;
pub mod tracker;

pub use client::{PeerBlob, PeerClient, Timeouts, TokenSource};
pub use members::{Membership, Seeds};
pub use rate::RateLimit;
pub use router::{PeerConfig, PeerRouter, Route};

/// What can go wrong talking to peers.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0}")]
    Config(String),
    #[error("cannot build the peer HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot resolve {0}")]
    Resolve(String, #[source] std::io::Error),
    #[error("peer {0} is unreachable")]
    Unreachable(String, #[source] reqwest::Error),
    #[error("peer {0} did not answer in time")]
    Timeout(String),
    #[error("peer {0} is busy")]
    Busy(String),
    #[error("peer {0} does not hold the blob")]
    NotHeld(String),
    #[error("peer {0} refused the cluster token")]
    Refused(String),
    #[error("peer {0} answered {1}")]
    Status(String, u16),
    #[error("peer {0} sent a malformed answer: {1}")]
    Malformed(String, String),
    #[error("peer {0} sent bytes that do not match piece {1}")]
    BadPiece(String, u64),
    #[error("no owner of the digest answered")]
    NoOwner,
}

impl PeerError {
    fn request(addr: &str, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            PeerError::Timeout(addr.to_string())
        } else {
            PeerError::Unreachable(addr.to_string(), e)
        }
    }

    /// The peer could not be reached at all (back it off), as opposed to an answer.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PeerError::Unreachable(..) | PeerError::Timeout(_))
    }
}
