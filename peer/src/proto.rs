//! The peer wire protocol: JSON bodies under `/manta/v1/peer/` on the cluster listener, which
//! authenticates every request with the cluster token. Blob bytes themselves are read with
//! `GET /manta/v1/blobs/<digest>` and `Range`, also from nodes still downloading them.
//!
//! Peers name nodes by the cluster address the others reach them at (`host:port`), and blobs by
//! digest; nothing in this protocol names a path or makes a node fetch something for a caller.

use serde::{Deserialize, Serialize};

/// The path prefix of the protocol on the cluster listener.
pub const PREFIX: &str = "/manta/v1/peer";

/// Most nodes one announcement may name as read from besides `from`.
pub const MAX_ALSO: usize = 8;

/// Most stripes a blob's pieces may be cut into.
pub const MAX_STRIPES: u32 = 64;

/// The key a stripe of `digest` is routed under: its owners are this key's, and its readers
/// form a tree of their own there.
pub fn stripe_key(digest: &str, index: u32) -> String {
    format!("{digest}#{index}")
}

/// Most announcements in one `POST /manta/v1/peer/announce-batch`.
pub const MAX_BATCH: usize = 1000;

/// The version of this peer protocol an agent speaks, in its [`Hello`]:
/// - 1 (an agent that says none): blobs routed whole, in pipelines and pieces;
/// - 2: stripes ([`Stripe`], `Announce::stripe`).
pub const PROTOCOL: u32 = 2;

/// The version from which a cluster may read blobs in stripes: an agent that speaks an older one
/// would route a stripe's locate as the whole blob's, so a cluster stripes only once every live
/// member speaks this one (a rolling upgrade finishes first).
pub const STRIPES_PROTOCOL: u32 = 2;

/// `GET /manta/v1/peer/hello`: who answers at an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The node's name (`--node-name`, the Kubernetes node).
    pub node: String,
    /// Random per process start: a node recognises itself in the membership by it.
    pub instance: String,
    /// The peer protocol it speaks ([`PROTOCOL`]; 1 when it says none).
    #[serde(default = "protocol_1")]
    pub protocol: u32,
}

fn protocol_1() -> u32 {
    1
}

/// `POST /manta/v1/peer/locate`, to a digest's first live owner: where to get a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocateRequest {
    pub digest: String,
    /// The asker's cluster address, when it knows it (then it is recorded as fetching, and
    /// named to later askers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How many bytes of the blob the asker holds already (it resumes from there).
    #[serde(default)]
    pub have: u64,
    /// Nodes the asker could not use for this digest (unreachable, broken, lying).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Nodes not to name this time (busy), which the owner keeps naming to others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub avoid: Vec<String>,
    /// Only say who has it: record nothing, grant nothing (`Fetch` then means "nobody I know
    /// of"). Asked of the other owners after the first granted the fetch, in case it is new
    /// and knows less than they do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
    /// Locate one stripe of the blob's pieces (pieces `i` with `i % count == index`), whose
    /// readers form a tree of their own (see [`crate::tracker`]), asked of the owners of its
    /// [`stripe_key`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<Stripe>,
    /// Starting a stripe it is not at home in, the asker has waited long enough for a parent
    /// with room: name one even past its share of readers (see [`crate::tracker`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub settle: bool,
}

/// One stripe of a blob's pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stripe {
    pub index: u32,
    pub count: u32,
    /// The stripe in which the asker takes readers (its place in the sorted membership,
    /// modulo `count`, so each stripe has a fair share of the nodes).
    pub home: u32,
    /// How many other live members take readers in this stripe, as the asker sees the
    /// membership (0: not said). A node starting a stripe it is not at home in waits until
    /// that many are in the stripe's tree, so they take its upper places (see
    /// [`crate::tracker`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub homes: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What an owner tells an asker to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum LocateReply {
    /// Read the blob from this node (it holds it, or is fetching it).
    Follow {
        from: String,
        /// Whether `from` holds all of it.
        complete: bool,
        /// Piece hashes known so far, to check what `from` sends.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pieces: Option<Pieces>,
        /// Other nodes the asker may read pieces from at the same time, within what each
        /// holds (`from` stays the one it follows past that).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<Holding>,
    },
    /// No node has or is fetching it: the asker is now the one fetching it from the origin.
    Fetch,
}

/// A node that holds a blob, or the first `have` bytes of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub addr: String,
    pub have: u64,
    pub complete: bool,
}

/// `POST /manta/v1/peer/announce`, to each of a digest's owners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub digest: String,
    pub node: String,
    pub event: Event,
    /// About one stripe of the blob (sent to the owners of its [`stripe_key`]): `from` is
    /// where the announcer reads that stripe's pieces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripe: Option<u32>,
    /// With `stripe`: the stripe in which the announcer takes readers (see
    /// [`Stripe::home`]). The root of the stripes' trees says it here, as it never asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<u32>,
    /// Hashes of pieces the announcer verified (computed from bytes it fetched from the origin,
    /// or of a blob whose whole digest it verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<Pieces>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// Fetching: `have` bytes of `size` held (from the first byte on), read from the origin
    /// or from the peer `from` (so every owner knows who reads from whom, and never sends a
    /// node to one that reads from it).
    Progress {
        have: u64,
        size: u64,
        origin: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Other nodes it reads pieces from besides `from` (their upload is in use).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<String>,
    },
    /// Holds the whole blob, verified.
    Complete { size: u64 },
    /// No longer has it (evicted, or the fetch failed).
    Gone,
}

/// Hashes of consecutive pieces of a blob: piece `first + i` is `hashes[i]` (hex sha256).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pieces {
    pub size: u64,
    pub first: u64,
    pub hashes: Vec<String>,
}

/// `GET /manta/v1/peer/pieces/<digest>?from=<i>&wait_ms=<ms>`: the owner's piece hashes from
/// piece `from`, waiting up to `wait_ms` for piece `from` if it is not known yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiecesQuery {
    #[serde(default)]
    pub from: u64,
    #[serde(default)]
    pub wait_ms: u64,
}

/// `GET /manta/v1/peer/status`: what a node knows and does, for `manta peers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// This node's cluster address, once it has found itself in the membership.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    pub members: Vec<MemberStatus>,
    /// Digests this node owns and the nodes it knows hold or fetch them.
    pub tracked: usize,
    /// Blobs this node is fetching now, and from where.
    pub fetching: Vec<Fetching>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub healthy: bool,
    pub is_self: bool,
    /// The peer protocol it speaks ([`PROTOCOL`]), once heard from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// Seconds until the next try of a member that failed.
    #[serde(default)]
    pub backoff_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetching {
    pub digest: String,
    /// A peer's address, or `origin`.
    pub from: String,
    pub have: u64,
    pub size: u64,
}
