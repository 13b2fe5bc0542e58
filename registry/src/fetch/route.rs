//! The fetch order for one blob, in one place: peers first (as the digest's owners direct),
//! then the origin. Also the piece hashes a peer's bytes are checked against, and the peers
//! this fetch no longer uses (unreachable, busy, broken or lying).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manta_peer::pieces::{piece_count, piece_size};
use manta_peer::proto::{Event, Holding, Pieces};
use manta_peer::schedule::SourceSpec;
use manta_peer::{PeerRouter, Route};

use crate::metrics::{LocateResult, Metrics};
use crate::source::{BlobSource, Download, PeerBlob, SourceError, SourceKind};
use crate::upstream::UpstreamError;

/// The newest `MAX_NAMED` of `all`: what an owner takes in a locate's `exclude` or `avoid`.
fn last(all: &[String]) -> Vec<String> {
    all[all.len().saturating_sub(MAX_NAMED)..].to_vec()
}

/// Most nodes a locate names in `exclude`, and in `avoid` (what owners accept).
const MAX_NAMED: usize = 64;

/// After this many peers failed one fetch, it goes to the origin.
const MAX_PEER_TRIES: usize = 6;
/// A stripe whose owners know nobody in it is asked up to this many times...
const STRIPE_ASKS: usize = 10;
/// ...this long apart.
const STRIPE_ASK_AGAIN: Duration = Duration::from_millis(200);
/// How long a piece from a peer may wait for its hash from the owners before it is taken on
/// the whole blob's digest alone.
const PIECE_HASH_WAIT: Duration = Duration::from_secs(20);

/// Where the leader reads from now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    Origin,
    Peer(String),
}

impl Reading {
    pub fn kind(&self, origin: &dyn BlobSource) -> SourceKind {
        match self {
            Reading::Origin => origin.kind(),
            Reading::Peer(_) => SourceKind::peer,
        }
    }

    pub fn describe(&self) -> &str {
        match self {
            Reading::Origin => "origin",
            Reading::Peer(a) => a,
        }
    }
}

/// What [`Routing::open`] found.
pub enum Opened {
    /// One source's bytes, in order.
    Stream(Download, Reading),
    /// Pieces to read from several peers at once (the first is the node the owners named,
    /// which may still be fetching it). With `stripes`, source `s` is this node's parent in
    /// the tree of stripe `s`, and serves that stripe only.
    Pieces {
        sources: Vec<SourceSpec>,
        size: u64,
        stripes: Option<u32>,
    },
}

impl Opened {
    /// Where the bytes come from (for pieces: the node followed).
    pub fn reading(&self) -> Reading {
        match self {
            Opened::Stream(_, r) => r.clone(),
            Opened::Pieces { sources, .. } => Reading::Peer(sources[0].addr.clone()),
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            Opened::Stream(dl, _) => dl.size,
            Opened::Pieces { size, .. } => *size,
        }
    }
}

pub struct Routing {
    peers: Option<Arc<PeerRouter>>,
    digest: String,
    metrics: Arc<Metrics>,
    /// Peers this fetch does not use again, reported to the owners (unreachable, broken,
    /// lying)...
    banned: Vec<String>,
    /// ...and not reported (busy).
    busy: Vec<String>,
    /// The owners had no hash for a piece: later pieces do not wait for theirs either.
    hashless: bool,
    /// Expected piece hashes, as the owners published them.
    hashes: Vec<Option<String>>,
    /// This fetch reads the whole blob from the origin in a cluster that reads it in stripes:
    /// it is the root of every stripe's tree, and says so to each stripe's owners.
    root: bool,
    root_announced: Mutex<Option<Instant>>,
    /// Times this fetch asked the owners for piece hashes it did not have yet.
    pub hash_asks: u32,
}

impl Routing {
    pub fn new(peers: Option<Arc<PeerRouter>>, digest: String, metrics: Arc<Metrics>) -> Self {
        Self {
            peers,
            digest,
            metrics,
            banned: Vec::new(),
            busy: Vec::new(),
            hashless: false,
            hashes: Vec::new(),
            root: false,
            root_announced: Mutex::new(None),
            hash_asks: 0,
        }
    }

    /// Take the owners' piece hashes of the blob (of `p.size` bytes): only within its pieces.
    pub fn learn(&mut self, p: &Pieces) {
        let Some(end) = p.first.checked_add(p.hashes.len() as u64) else {
            return;
        };
        if end > piece_count(p.size) {
            return;
        }
        if self.hashes.len() < end as usize {
            self.hashes.resize(end as usize, None);
        }
        for (i, h) in p.hashes.iter().enumerate() {
            self.hashes[p.first as usize + i] = Some(h.clone());
        }
    }

    /// Whether this fetch no longer uses `addr` (banned, or avoided as busy or slow).
    pub fn not_using(&self, addr: &str) -> bool {
        self.banned.iter().chain(&self.busy).any(|b| b == addr)
    }

    /// The peers the owners are to forget, and those not to name this time (a locate's
    /// `exclude` and `avoid`).
    pub fn not_to_use(&self) -> (Vec<String>, Vec<String>) {
        (last(&self.banned), last(&self.busy))
    }

    /// This fetch reads the whole blob from the origin now (or no longer does).
    pub fn set_root(&mut self, root: bool) {
        self.root = root;
    }

    /// The stripes to read the rest of a blob of `size` bytes in from `offset`, if any.
    fn striping(&self, peers: &PeerRouter, offset: u64, size: u64) -> Option<u32> {
        let k = peers.stripes_for(size)?;
        (offset % piece_size(size) == 0 && offset < size).then_some(k)
    }

    /// Locate each of `k` stripes (at once): this node's parent in each stripe's tree. A
    /// stripe whose owners know nobody in it is asked again a few times (the blob's fetcher
    /// tells them as its fetch starts, a moment after the blob's owners named it). `None`: a
    /// stripe has nobody still (its owners restarted, or the fetcher does not stripe); the
    /// blob is then read as one stream, and this node leaves the stripes' trees it joined.
    async fn stripe_sources(
        &mut self,
        peers: &PeerRouter,
        k: u32,
        offset: u64,
        size: u64,
    ) -> Option<Vec<SourceSpec>> {
        let mut parents: Vec<Option<String>> = vec![None; k as usize];
        for round in 0..STRIPE_ASKS {
            let missing: Vec<u32> = (0..k).filter(|s| parents[*s as usize].is_none()).collect();
            if missing.is_empty() {
                break;
            }
            if round > 0 {
                tokio::time::sleep(STRIPE_ASK_AGAIN).await;
            }
            // Half-way through the asks, take a parent even past its share of readers.
            let settle = round >= STRIPE_ASKS / 2;
            let (exclude, avoid) = self.not_to_use();
            let found = futures_util::future::join_all(missing.iter().map(|s| {
                peers.locate_stripe(&self.digest, *s, k, offset, &exclude, &avoid, settle)
            }))
            .await;
            for (s, route) in missing.into_iter().zip(found) {
                tracing::debug!(digest = %self.digest, stripe = s, round, ?route, "stripe located");
                if let Route::Peer { addr, pieces, .. } = route {
                    // The token goes only to members (and the owners are told to forget it).
                    if !peers.members().is_member(&addr) {
                        self.ban(&addr, &"not a member of the cluster");
                    } else if !self.not_using(&addr) {
                        if let Some(p) = pieces.filter(|p| p.size == size) {
                            self.learn(&p);
                        }
                        parents[s as usize] = Some(addr);
                    }
                }
            }
        }
        if parents.iter().any(Option::is_none) {
            tracing::info!(digest = %self.digest, stripes = k,
                "a stripe has nobody in it: reading the blob as one stream");
            for s in 0..k {
                self.announce_stripe(s, k, Event::Gone);
            }
            return None;
        }
        let sources: Vec<SourceSpec> = (0..k)
            .zip(parents)
            .filter_map(|(s, addr)| {
                Some(SourceSpec {
                    stripe: Some((s, k)),
                    ..SourceSpec::any(addr?, None)
                })
            })
            .collect();
        tracing::info!(digest = %self.digest, stripes = k, offset,
            parents = ?sources.iter().map(|s| s.addr.as_str()).collect::<Vec<_>>(),
            "reading the blob in stripes");
        Some(sources)
    }

    /// This node's peers, when it has any.
    pub fn peers(&self) -> Option<&Arc<PeerRouter>> {
        self.peers.as_ref()
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Stop using `addr` for this blob, without telling the owners.
    pub fn ban_here(&mut self, addr: &str, why: &dyn std::fmt::Display) {
        if self.not_using(addr) {
            return;
        }
        tracing::info!(digest = %self.digest, peer = addr, reason = %why,
            "reading this blob elsewhere");
        self.metrics.peer_bans.inc();
        self.busy.push(addr.to_string());
    }

    /// Stop using `addr` for this blob, and tell the owners not to send anyone to it.
    pub fn ban(&mut self, addr: &str, why: &dyn std::fmt::Display) {
        if self.banned.iter().any(|b| b == addr) {
            return;
        }
        tracing::warn!(digest = %self.digest, peer = addr, reason = %why,
            "not reading this blob from the peer again");
        self.metrics.peer_bans.inc();
        self.busy.retain(|b| b != addr);
        self.banned.push(addr.to_string());
        // Now, not at this fetch's next locate: a fetch reading pieces from others may never
        // ask again.
        if let Some(p) = &self.peers {
            p.report(&self.digest, addr);
        }
    }

    /// A peer's stream broke: back the peer off if it became unreachable, and stop using it.
    /// A peer that only stalled (it may be waiting on its own source) is avoided by this fetch
    /// without being reported: the owners keep it, and the readers of a slow branch do not all
    /// erase it at once.
    pub fn lost(&mut self, addr: &str, e: &SourceError) {
        if let SourceError::Origin(UpstreamError::Timeout(_))
        | SourceError::Peer(manta_peer::PeerError::Busy(_)) = e
        {
            self.ban_here(addr, e);
            return;
        }
        if let (Some(p), SourceError::Peer(pe)) = (&self.peers, e) {
            if pe.is_unreachable() {
                p.members().failed(addr, pe);
            }
        }
        self.ban(addr, e);
    }

    /// The other holders the owners named that this fetch may read pieces from alongside
    /// `addr`, from `offset` of a blob of `size` bytes: members not dropped, and only when
    /// there are two pieces or more left.
    fn alongside(
        &self,
        peers: &PeerRouter,
        addr: &str,
        also: &[Holding],
        offset: u64,
        size: u64,
    ) -> Vec<SourceSpec> {
        let piece = piece_size(size);
        if offset % piece != 0 || size.saturating_sub(offset) <= piece {
            return Vec::new();
        }
        let others: Vec<SourceSpec> = also
            .iter()
            .filter(|h| h.addr != addr && peers.members().is_member(&h.addr))
            .filter(|h| !self.banned.contains(&h.addr) && !self.busy.contains(&h.addr))
            .filter(|h| h.complete || h.have > offset)
            .map(|h| SourceSpec::any(h.addr.clone(), (!h.complete).then_some(h.have.min(size))))
            .collect();
        if others.is_empty() {
            return others;
        }
        let mut all = vec![SourceSpec::any(addr, None)];
        all.extend(others);
        all
    }

    /// Open the blob from `offset`: from the peer the owners name (with pieces from other
    /// holders they name alongside it), else from the origin. `size`, once known, is what
    /// every source must agree on.
    pub async fn open(
        &mut self,
        origin: &Arc<dyn BlobSource>,
        offset: u64,
        size: Option<u64>,
    ) -> Result<Opened, UpstreamError> {
        // Whatever a peer says, the size is the origin's when it is known beforehand.
        let size = size.or(origin.size());
        if let Some(peers) = self.peers.clone() {
            while self.banned.len() + self.busy.len() < MAX_PEER_TRIES {
                let route = peers
                    .locate(&self.digest, offset, &self.banned, &self.busy)
                    .await;
                match route {
                    // The token goes only to members: an owner's word is not enough.
                    Route::Peer { addr, .. } if !peers.members().is_member(&addr) => {
                        self.ban(&addr, &"not a member of the cluster");
                    }
                    Route::Peer {
                        addr,
                        pieces,
                        complete,
                        also,
                    } => {
                        self.metrics.located(LocateResult::peer);
                        // A complete copy whose piece hashes the owners lost (they restarted
                        // since) is not waited for: its whole digest is checked all the same.
                        if complete && pieces.is_none() {
                            self.hashless = true;
                        }
                        if let Some(p) =
                            pieces.as_ref().filter(|p| size.is_none_or(|s| s == p.size))
                        {
                            self.learn(p);
                        }
                        // Or the size the origin fetcher published with its piece hashes.
                        let size = size.or(pieces.as_ref().map(|p| p.size));
                        if let Some(size) = size {
                            if let Some(k) = self.striping(&peers, offset, size) {
                                if let Some(sources) =
                                    self.stripe_sources(&peers, k, offset, size).await
                                {
                                    return Ok(Opened::Pieces {
                                        sources,
                                        size,
                                        stripes: Some(k),
                                    });
                                }
                            }
                            let sources = self.alongside(&peers, &addr, &also, offset, size);
                            if !sources.is_empty() {
                                return Ok(Opened::Pieces {
                                    sources,
                                    size,
                                    stripes: None,
                                });
                            }
                        }
                        let src = PeerBlob {
                            client: peers.client().clone(),
                            addr: addr.clone(),
                            digest: self.digest.clone(),
                        };
                        match src.open(offset).await {
                            Ok(dl) if size.is_none_or(|s| s == dl.size) => {
                                peers.members().succeeded(&addr);
                                // The size known only now: a blob read in stripes here.
                                if let Some(k) = self.striping(&peers, offset, dl.size) {
                                    let size = dl.size;
                                    if let Some(sources) =
                                        self.stripe_sources(&peers, k, offset, size).await
                                    {
                                        drop(dl);
                                        return Ok(Opened::Pieces {
                                            sources,
                                            size,
                                            stripes: Some(k),
                                        });
                                    }
                                }
                                return Ok(Opened::Stream(dl, Reading::Peer(addr)));
                            }
                            Ok(dl) => {
                                let why = format!("says {} bytes, not {size:?}", dl.size);
                                self.ban(&addr, &why);
                            }
                            // Busy: read elsewhere this time, without telling the owners (the
                            // peer is fine, and others may read from it).
                            Err(SourceError::Peer(e @ manta_peer::PeerError::Busy(_))) => {
                                self.ban_here(&addr, &e);
                            }
                            Err(SourceError::Peer(e)) => {
                                if e.is_unreachable() {
                                    peers.members().failed(&addr, &e);
                                }
                                self.ban(&addr, &e);
                            }
                            Err(SourceError::Origin(e)) => self.ban(&addr, &e),
                        }
                    }
                    Route::Origin => {
                        self.metrics.located(LocateResult::origin);
                        break;
                    }
                    Route::Alone => {
                        self.metrics.located(LocateResult::alone);
                        break;
                    }
                }
            }
        }
        match origin.open(offset).await {
            Ok(dl) if size.is_none_or(|s| s == dl.size) => Ok(Opened::Stream(dl, Reading::Origin)),
            Ok(dl) => Err(UpstreamError::Malformed(format!(
                "the blob is {} bytes now, {size:?} a moment ago",
                dl.size
            ))),
            Err(e) => Err(e.into_origin()),
        }
    }

    /// The expected hash of piece `i` of a blob of `size` bytes, asking the owners (and
    /// waiting for the origin fetcher to publish it) when it is not known yet. `None`: no
    /// owner published it in time; the piece is then taken on the whole digest's word.
    ///
    /// While it waits, `alive` (this fetch's progress) is announced every 2 s, so the owners
    /// do not take the fetch for a dead one.
    pub async fn expected(&mut self, i: u64, size: u64, alive: &Event) -> Option<String> {
        if let Some(Some(h)) = self.hashes.get(i as usize) {
            return Some(h.clone());
        }
        if self.hashless {
            return None;
        }
        let peers = self.peers.clone()?;
        let deadline = tokio::time::Instant::now() + PIECE_HASH_WAIT;
        let mut announced = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline && i < piece_count(size) {
            if announced.elapsed() >= super::ANNOUNCE_EVERY {
                self.announce(alive.clone(), None);
                announced = tokio::time::Instant::now();
            }
            self.hash_asks += 1;
            let got = peers
                .pieces(&self.digest, i, Duration::from_secs(5))
                .await
                .filter(|p| p.size == size);
            if let Some(p) = got {
                self.learn(&p);
                if let Some(Some(h)) = self.hashes.get(i as usize) {
                    return Some(h.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.hashless = true;
        tracing::warn!(digest = %self.digest, piece = i,
            "no piece hash from the owners; the rest of the blob is checked with its whole digest only");
        None
    }

    /// Wait until `n` more bytes may be taken from peers (`--peer-rate-limit`).
    pub async fn throttle(&self, n: usize) {
        if let Some(limit) = self.peers.as_ref().and_then(|p| p.download_limit()) {
            limit.take(n).await;
        }
    }

    /// Tell the owners (in the background). The root of the stripes' trees tells each
    /// stripe's owners too, every [`super::ANNOUNCE_EVERY`].
    pub fn announce(&self, event: Event, pieces: Option<Pieces>) {
        let Some(p) = &self.peers else { return };
        if let (true, Event::Progress { size, .. }) = (self.root, &event) {
            let mut last = self
                .root_announced
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= super::ANNOUNCE_EVERY);
            // (The membership is read only when due: the fetcher announces at every piece.)
            if let Some(k) = due.then(|| p.stripes_for(*size)).flatten() {
                *last = Some(Instant::now());
                for s in 0..k {
                    self.announce_stripe(s, k, event.clone());
                }
            }
        }
        self.metrics.peer_announcements.inc();
        p.announce(&self.digest, event, pieces);
    }

    /// Tell the owners of stripe `s` of `k` (in the background).
    pub fn announce_stripe(&self, s: u32, k: u32, event: Event) {
        if let Some(p) = &self.peers {
            self.metrics.peer_announcements.inc();
            p.announce_stripe(&self.digest, s, k, event);
        }
    }

    pub fn note(&self, reading: &Reading, have: u64, size: u64) {
        if let Some(p) = &self.peers {
            p.note_fetching(&self.digest, reading.describe(), have, size);
        }
    }

    /// Say (in `manta peers`) that pieces come from the sources of `sched`.
    pub fn note_pieces(&self, sched: &manta_peer::schedule::Schedule, have: u64, size: u64) {
        if let Some(p) = &self.peers {
            let from: Vec<String> = sched
                .served()
                .map(|(addr, n)| format!("{addr} ({n} pieces)"))
                .collect();
            p.note_fetching(&self.digest, &from.join(", "), have, size);
        }
    }

    pub fn done(&self) {
        if let Some(p) = &self.peers {
            p.done_fetching(&self.digest);
        }
    }
}
