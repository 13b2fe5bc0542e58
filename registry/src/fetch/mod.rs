//! Single-flight blob fetches that stream while they cache.
//!
//! The first request for a digest the node lacks starts one *leader* task, detached from any
//! client: it writes the upstream's bytes to `tmp/` while hashing, and publishes its progress on a
//! watch channel. Every client — the first included, and any that joins later, with or without a
//! `Range` — *follows* the temp file: it reads what is already there, then waits for more. A
//! client that disconnects stops following; the download goes on for the others and the cache.
//!
//! Nothing unverified is ever delivered as a complete blob: followers never send the last byte
//! until the leader has verified the digest (then it fsyncs, installs and indexes the file for
//! the cache; a failure there costs the cache its copy, never a client a byte). A mismatch fails
//! every follower's stream, so its client sees a broken connection, and nothing is indexed.
//!
//! A pull never fails because the cache is full. When the leader cannot reserve the blob's
//! size (the cache is full of content too young or pinned to evict, or the disk is short), the
//! fetch becomes a *passthrough* ([`pass`]): nothing is written, and every follower streams the
//! bytes from the source itself, the first one on the leader's own response, the others each
//! on a request of its own from the offset it wants (`Range`). A whole-blob read is still
//! verified before its last byte. A leader that must know the blob's image-form tar digest
//! hashes its response instead of handing it on, and records the layer's recipe, so the image
//! form of a model can be built, and served, with no room to keep it.

mod follow;
pub mod pass;
mod pieces;
mod route;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use manta_peer::pieces::{piece_range, PieceHasher};
use manta_peer::proto::{Event, Pieces};
use manta_peer::PeerRouter;
use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::digest;
use crate::metrics::Metrics;
use crate::source::{BlobSource, Download, SourceError};
use crate::store::{Checkpoint, Origin, RecipeRecord, Reservation, Store, TempWriter};
use crate::upstream::UpstreamError;
pub use follow::{follow, IfPassedThrough};
pub use pass::PassSource;
use route::{Opened, Reading, Routing};

/// The leader makes written bytes visible to followers at least this often...
const PUBLISH_BYTES: u64 = 256 << 10;
/// ...or after this long, whichever comes first.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// A peer that sends nothing for this long is left for another source.
const PEER_STALL: Duration = Duration::from_secs(10);
/// A fetch tells the digest's owners how far it is at least this often (and at every piece).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

fn progress(have: u64, size: u64, reading: &Reading) -> Event {
    progress_with(have, size, reading, Vec::new())
}

/// Progress, reading pieces from the peers `also` besides.
fn progress_with(have: u64, size: u64, reading: &Reading, mut also: Vec<String>) -> Event {
    let from = match reading {
        Reading::Origin => None,
        Reading::Peer(a) => Some(a.clone()),
    };
    // As many as an owner accepts, each once, and not the one followed.
    also.retain(|a| Some(a) != from.as_ref());
    also.dedup();
    also.truncate(manta_peer::proto::MAX_ALSO);
    Event::Progress {
        have,
        size,
        origin: *reading == Reading::Origin,
        from,
        also,
    }
}

/// Why a fetch failed, shared by every follower.
pub type FetchError = Arc<UpstreamError>;

#[derive(Clone, Debug)]
pub enum FetchState {
    /// Waiting for the upstream's response headers.
    Starting,
    /// `written` bytes of `size` are in `path`, readable by peers (who check each piece
    /// themselves); the first `checked` of them passed their piece checks (or came from the
    /// origin), readable by this node's own clients.
    Streaming {
        size: u64,
        written: u64,
        checked: u64,
        path: Arc<PathBuf>,
        /// Byte ranges `[start, end)` past `written`, in order, of pieces read from several
        /// peers that are in `path`: checked pieces, and the bytes landed so far of pieces in
        /// flight. Peers may read them before the prefix reaches them (they check each piece
        /// themselves).
        ahead: Arc<Vec<(u64, u64)>>,
    },
    /// All `size` bytes are in `path` and match the digest; being made durable and indexed.
    Verified {
        size: u64,
        path: Arc<PathBuf>,
    },
    /// Verified and in the store.
    Done {
        size: u64,
    },
    /// No room to keep it: each follower streams it from `source` itself. `ended` once the
    /// leader is done with it (it may hash the blob first, for an image form's tar layer).
    Passthrough {
        size: u64,
        source: Arc<PassSource>,
        ended: bool,
    },
    Failed(FetchError),
}

impl FetchState {
    /// The fetch is over: in the store, passed through, or failed.
    fn is_over(&self) -> bool {
        matches!(
            self,
            FetchState::Done { .. }
                | FetchState::Failed(_)
                | FetchState::Passthrough { ended: true, .. }
        )
    }
}

/// Takes a fetch whose leader never finished out of the map, failing its followers.
struct Unfinished {
    fetcher: Arc<Fetcher>,
    fetch: Arc<Fetch>,
    finished: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.fetcher
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.fetch.digest.as_ref());
        self.fetch
            .state
            .send_replace(FetchState::Failed(Arc::new(UpstreamError::Internal(
                "the fetch's leader stopped",
            ))));
    }
}

/// How a leader's fetch ended well.
enum Outcome {
    /// Verified and in the store.
    Stored(u64),
    /// Verified (when the leader read it) or handed on, and not kept.
    PassedThrough(u64, Arc<PassSource>),
}

pub struct Fetch {
    pub digest: Digest,
    state: watch::Sender<FetchState>,
}

impl Fetch {
    pub fn subscribe(&self) -> watch::Receiver<FetchState> {
        self.state.subscribe()
    }
}

/// Also hash a blob as the content of an image-form tar layer while it streams (the layer's
/// digest is then known the moment the blob is, without reading it again), and record the
/// layer's recipe with the blob.
#[derive(Clone, Debug)]
pub struct TarHash {
    /// The file's path in the layer.
    pub path: String,
    /// Tar headers before the content.
    pub prefix: Vec<u8>,
}

/// The in-flight fetches of one agent.
pub struct Fetcher {
    inflight: Mutex<HashMap<String, Arc<Fetch>>>,
    store: Store,
    metrics: Arc<Metrics>,
    peers: Option<Arc<PeerRouter>>,
}

impl Fetcher {
    /// With `peers`, a blob this node lacks is read from the peers that have it, and from
    /// its origin only when none has or is fetching it.
    pub fn new(store: Store, metrics: Arc<Metrics>, peers: Option<Arc<PeerRouter>>) -> Arc<Self> {
        Arc::new(Self {
            inflight: Mutex::new(HashMap::new()),
            store,
            metrics,
            peers,
        })
    }

    /// Join the fetch of `digest`, starting it if none is running: from the peers, else from
    /// `origin`. `repo` is the cache repository the blob is linked into; `idle` bounds how
    /// long a source may stall.
    pub fn fetch(
        self: &Arc<Self>,
        digest: &Digest,
        repo: &str,
        idle: Duration,
        tar: Option<TarHash>,
        origin: Arc<dyn BlobSource>,
    ) -> (Arc<Fetch>, bool) {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(digest.as_ref()) {
            return (f.clone(), false);
        }
        let (tx, _) = watch::channel(FetchState::Starting);
        let fetch = Arc::new(Fetch {
            digest: digest.clone(),
            state: tx,
        });
        map.insert(digest.to_string(), fetch.clone());
        drop(map);
        let (me, f, repo) = (self.clone(), fetch.clone(), repo.to_string());
        tokio::spawn(async move {
            // Should the leader panic, its fetch still leaves the map and fails its followers.
            let mut guard = Unfinished {
                fetcher: me.clone(),
                fetch: f.clone(),
                finished: false,
            };
            let outcome = me.lead(&f, &repo, idle, tar, origin).await;
            guard.finished = true;
            let state = match outcome {
                Ok(Outcome::Stored(size)) => FetchState::Done { size },
                Ok(Outcome::PassedThrough(size, source)) => FetchState::Passthrough {
                    size,
                    source,
                    ended: true,
                },
                Err(e) => {
                    tracing::warn!(digest = %f.digest, error = %e, "upstream blob fetch failed");
                    FetchState::Failed(Arc::new(e))
                }
            };
            // Out of the map first: a request that comes after the outcome starts afresh (a
            // retry after a failure; a store hit after success) instead of joining a dead fetch.
            me.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(f.digest.as_ref());
            f.state.send_replace(state);
        });
        (fetch, true)
    }

    /// This node's peers, when it has any.
    pub fn peers(&self) -> Option<&Arc<PeerRouter>> {
        self.peers.as_ref()
    }

    /// The fetch of `digest` in flight, if any.
    pub fn get(&self, digest: &str) -> Option<Arc<Fetch>> {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    async fn lead(
        &self,
        fetch: &Fetch,
        repo: &str,
        idle: Duration,
        tar: Option<TarHash>,
        origin: Arc<dyn BlobSource>,
    ) -> Result<Outcome, UpstreamError> {
        let mut route = Routing::new(
            self.peers.clone(),
            fetch.digest.to_string(),
            self.metrics.clone(),
        );
        let outcome = self
            .lead_from(fetch, repo, idle, tar, &origin, &mut route)
            .await;
        match &outcome {
            Ok(Outcome::Stored(_)) => {}
            // Not held here (failed, or streamed through): the owners must not send anyone.
            _ => route.announce(Event::Gone, None),
        }
        route.done();
        outcome
    }

    async fn lead_from(
        &self,
        fetch: &Fetch,
        repo: &str,
        idle: Duration,
        tar: Option<TarHash>,
        origin: &Arc<dyn BlobSource>,
        route: &mut Routing,
    ) -> Result<Outcome, UpstreamError> {
        let store_err = UpstreamError::Local;
        // Held against eviction from the first byte to the index (and by each reader after).
        let _lease = self.store.lease(fetch.digest.as_ref());
        let mut opened = route.open(origin, 0, None).await?;
        let size = opened.size();
        // The whole size is promised before a byte is written. A blob that cannot fit is not
        // cached: it streams through.
        let room = match self.store.reserve(size).await {
            Ok(r) => r,
            Err(e) if e.is_no_space() => {
                // Passed-through bytes are read from the origin only (a peer's are checked a
                // piece at a time, which only a kept blob can do).
                let dl = match opened {
                    Opened::Stream(dl, Reading::Origin) => dl,
                    other => {
                        drop(other);
                        origin.open(0).await.map_err(SourceError::into_origin)?
                    }
                };
                return self
                    .pass_through(fetch, dl, idle, tar, origin.clone(), &e)
                    .await;
            }
            Err(e) => return Err(store_err(e)),
        };
        let w = self
            .store
            .files()
            .temp_writer(digest::algorithm_of(&fetch.digest))
            .await
            .map_err(store_err)?;
        let tar_hasher = tar.as_ref().map(|t| {
            let mut h = Sha256::new();
            h.update(&t.prefix);
            h
        });
        let mut p = Progress::new(size, w, room, tar_hasher);
        fetch.state.send_replace(FetchState::Streaming {
            size,
            written: 0,
            checked: 0,
            path: p.path.clone(),
            ahead: Arc::default(),
        });
        loop {
            let reading = opened.reading();
            route.set_root(reading == Reading::Origin);
            route.announce(progress(p.trusted, size, &reading), None);
            route.note(&reading, p.trusted, size);
            match opened {
                Opened::Stream(dl, reading) => {
                    self.lead_stream(fetch, &mut p, route, dl.body, reading, origin, idle)
                        .await?
                }
                Opened::Pieces {
                    sources, stripes, ..
                } => {
                    self.lead_pieces(fetch, &mut p, route, sources, stripes, origin, idle)
                        .await?
                }
            }
            if p.trusted == size && p.w.len() == size {
                break;
            }
            opened = route.open(origin, p.w.len(), Some(size)).await?;
            tracing::info!(digest = %fetch.digest, from = opened.reading().describe(),
                offset = p.w.len(), "blob fetch goes on from another source");
        }
        let Progress {
            w,
            tar: tar_hasher,
            hashes,
            from_peers,
            path,
            ..
        } = p;
        let (blob, actual) = w.finish_unsynced().await.map_err(store_err)?;
        if actual != fetch.digest {
            // `blob` is dropped: its temp file goes; followers fail on the state below.
            return Err(UpstreamError::DigestMismatch {
                expected: fetch.digest.to_string(),
            });
        }
        // The layer recipe is content-addressed over verified bytes: record it now, so an image
        // form waiting on it is built while the blob is made durable (a recipe whose raw blob is
        // not held just fetches it again).
        if let (Some(t), Some(h)) = (tar, tar_hasher) {
            self.record_recipe(fetch, t, h, size).await?;
        }
        // Verified: followers may send the last byte now. Durability is the cache's business:
        // the file is fsynced before it is installed and indexed, never indexed before.
        fetch
            .state
            .send_replace(FetchState::Verified { size, path });
        blob.sync().await.map_err(store_err)?;
        self.store
            .commit_blob_from(
                repo,
                blob,
                &fetch.digest,
                Origin::Upstream,
                Some(from_peers),
            )
            .await
            .map_err(store_err)?;
        // Verified whole: every piece hash is now good for the others to check against.
        route.announce(
            Event::Complete { size },
            Some(Pieces {
                size,
                first: 0,
                hashes,
            }),
        );
        Ok(Outcome::Stored(size))
    }

    /// Read one source's bytes in order into the temp file, until the blob is all there, or
    /// a peer failed (its bytes since the last trusted piece are then cut off again, and the
    /// caller finds another source). The origin failing fails the fetch.
    ///
    /// Bytes from a peer are trusted a piece at a time, once the piece matches the hash the
    /// origin fetcher published; until then this node's own clients do not see them (its peers
    /// do, and check every piece themselves).
    #[allow(clippy::too_many_arguments)]
    async fn lead_stream(
        &self,
        fetch: &Fetch,
        p: &mut Progress,
        route: &mut Routing,
        mut body: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, SourceError>>,
        reading: Reading,
        origin: &Arc<dyn BlobSource>,
        idle: Duration,
    ) -> Result<(), UpstreamError> {
        let store_err = UpstreamError::Local;
        let size = p.size;
        // A peer that sends nothing for a while is left for another source well before a
        // client following this fetch would give up on it. (A peer may itself be waiting on
        // its source: give it half the upstream's time.)
        let stall = match reading {
            Reading::Origin => idle,
            Reading::Peer(_) => (idle / 2).max(PEER_STALL),
        };
        let peer = matches!(reading, Reading::Peer(_));
        loop {
            // What went wrong with the source, if anything. While nothing comes, the owners
            // still hear from this fetch (or they would forget it, and with it who reads from
            // whom).
            let next = {
                let deadline = tokio::time::Instant::now() + stall;
                loop {
                    let wait = deadline.min(tokio::time::Instant::now() + ANNOUNCE_EVERY);
                    match tokio::time::timeout_at(wait, body.next()).await {
                        Err(_) if wait < deadline => {
                            route.announce(progress(p.trusted, size, &reading), None);
                            p.announced = Instant::now();
                        }
                        r => break r,
                    }
                }
            };
            let broken: SourceError = match next {
                Err(_) => UpstreamError::Timeout("blob body").into(),
                Ok(None) if p.w.len() == size => return Ok(()),
                Ok(None) => UpstreamError::Malformed(format!(
                    "blob ended after {} of {size} bytes",
                    p.w.len()
                ))
                .into(),
                Ok(Some(Err(e))) => e,
                Ok(Some(Ok(chunk))) if p.w.len() + chunk.len() as u64 > size => {
                    UpstreamError::Malformed(format!("blob longer than the announced {size} bytes"))
                        .into()
                }
                Ok(Some(Ok(mut chunk))) => {
                    if peer {
                        route.throttle(chunk.len()).await;
                    }
                    let mut bad_piece = None;
                    // Written a piece at a time, so each piece boundary is a checkpoint.
                    while !chunk.is_empty() {
                        let (_, end) = piece_range(size, p.pieces.current());
                        let part = chunk.split_to(((end - p.w.len()) as usize).min(chunk.len()));
                        p.w.write(&part).await.map_err(store_err)?;
                        p.room.written(part.len() as u64);
                        if let Some(h) = p.tar.as_mut() {
                            h.update(&part);
                        }
                        self.metrics
                            .fetched(reading.kind(origin.as_ref()), part.len() as u64);
                        if peer {
                            p.from_peers += part.len() as u64;
                        } else {
                            p.trusted = p.w.len();
                        }
                        let Some((i, hash)) = p.pieces.update(&part).pop() else {
                            continue;
                        };
                        if peer {
                            let alive = progress(p.trusted, size, &reading);
                            match route.expected(i, size, &alive).await {
                                Some(want) if want != hash => {
                                    bad_piece = Some(i);
                                    break;
                                }
                                _ => p.trusted = p.w.len(),
                            }
                        }
                        p.hashes.push(hash.clone());
                        p.mark_trusted();
                        // The origin fetcher publishes each piece's hash as it has it.
                        let published_hash = (!peer).then(|| Pieces {
                            size,
                            first: i,
                            hashes: vec![hash],
                        });
                        route.announce(progress(p.trusted, size, &reading), published_hash);
                        p.announced = Instant::now();
                    }
                    p.publish_due(fetch, route, &reading).await?;
                    match bad_piece {
                        None => continue,
                        Some(i) => {
                            self.metrics.peer_pieces_rejected.inc();
                            manta_peer::PeerError::BadPiece(reading.describe().to_string(), i)
                                .into()
                        }
                    }
                }
            };
            // The origin failing fails the fetch; a peer failing costs what it sent since the
            // last trusted piece, and the fetch goes on from there elsewhere.
            let Reading::Peer(addr) = &reading else {
                return Err(broken.into_origin());
            };
            // Every byte is here and checked: whatever the peer did after does not matter.
            if p.trusted == size && p.w.len() == size {
                return Ok(());
            }
            route.lost(addr, &broken);
            self.metrics.peer_switches.inc();
            p.rollback(fetch).await?;
            return Ok(());
        }
    }

    /// No room for the blob: hand the source to the followers (the leader's own response to
    /// the first). With a [`TarHash`], first read the response through, verifying the digest
    /// and recording the layer's recipe, while the followers open their own.
    async fn pass_through(
        &self,
        fetch: &Fetch,
        dl: Download,
        idle: Duration,
        tar: Option<TarHash>,
        open: Arc<dyn BlobSource>,
        why: &crate::store::StoreError,
    ) -> Result<Outcome, UpstreamError> {
        let size = dl.size;
        let kind = open.kind();
        tracing::warn!(digest = %fetch.digest, size, reason = %why,
            "no room in the cache: streaming the blob through to its clients, uncached");
        self.metrics.passthrough_fetches.inc();
        let Some(t) = tar else {
            let source = PassSource::new(open, Some(dl), self.metrics.passthrough_bytes.clone());
            return Ok(Outcome::PassedThrough(size, source));
        };
        let source = PassSource::new(open, None, self.metrics.passthrough_bytes.clone());
        fetch.state.send_replace(FetchState::Passthrough {
            size,
            source: source.clone(),
            ended: false,
        });
        let mut hasher = digest::Hasher::new(digest::algorithm_of(&fetch.digest));
        let mut tar_hasher = Sha256::new();
        tar_hasher.update(&t.prefix);
        let (mut body, mut len) = (dl.body, 0u64);
        while let Some(chunk) = tokio::time::timeout(idle, body.next())
            .await
            .map_err(|_| UpstreamError::Timeout("blob body"))?
        {
            let chunk = chunk.map_err(SourceError::into_origin)?;
            len += chunk.len() as u64;
            if len > size {
                return Err(UpstreamError::Malformed(format!(
                    "blob longer than the announced {size} bytes"
                )));
            }
            hasher.update(&chunk);
            tar_hasher.update(&chunk);
            self.metrics.fetched(kind, chunk.len() as u64);
        }
        if len != size {
            return Err(UpstreamError::Malformed(format!(
                "blob ended after {len} of {size} bytes"
            )));
        }
        if hasher.finish() != fetch.digest {
            return Err(UpstreamError::DigestMismatch {
                expected: fetch.digest.to_string(),
            });
        }
        self.record_recipe(fetch, t, tar_hasher, size).await?;
        Ok(Outcome::PassedThrough(size, source))
    }

    /// Record the image-form tar layer of a verified blob (content addressed: safe to keep
    /// whether or not the blob itself is kept).
    async fn record_recipe(
        &self,
        fetch: &Fetch,
        t: TarHash,
        mut h: Sha256,
        size: u64,
    ) -> Result<(), UpstreamError> {
        finish_tar_hash(&mut h, size);
        let tar_digest = format!("sha256:{}", hex::encode(h.finalize()));
        let recipe = RecipeRecord {
            version: 1,
            raw: fetch.digest.to_string(),
            size,
            prefix: t.prefix,
            verified: true,
        };
        self.store
            .blocking(move |idx| idx.put_recipe(&tar_digest, &t.path, &recipe))
            .await
            .map_err(UpstreamError::Local)
    }
}

/// A kept fetch's temp file, and what is known of the bytes in it.
struct Progress {
    size: u64,
    path: Arc<PathBuf>,
    w: TempWriter,
    room: Reservation,
    /// The image-form tar layer's hash, when one is wanted.
    tar: Option<Sha256>,
    /// Hashes the pieces after the writer's position as they are written in order.
    pieces: PieceHasher,
    /// The hashes of the pieces written so far.
    hashes: Vec<String>,
    /// Bytes from the origin or in pieces that passed their checks.
    trusted: u64,
    /// The writer, tar hash and piece hasher at `trusted`, to come back to.
    at_trusted: (Checkpoint, Option<Sha256>, PieceHasher),
    /// Bytes kept that came from peers (what a source sent after the last trusted piece is
    /// its own, and is what a rollback takes back).
    from_peers: u64,
    /// What followers were last told: checked bytes (this node's clients) and written bytes
    /// (peers, which check each piece themselves).
    published: u64,
    pub_written: u64,
    /// Checked pieces past the prefix, and the bytes landed of pieces in flight, for peers
    /// (see [`FetchState::Streaming`]).
    ahead: Arc<Vec<(u64, u64)>>,
    last: Instant,
    announced: Instant,
}

impl Progress {
    fn new(size: u64, w: TempWriter, room: Reservation, tar: Option<Sha256>) -> Self {
        let path = Arc::new(w.path().to_path_buf());
        let pieces = PieceHasher::new(size, 0);
        Self {
            size,
            path,
            at_trusted: (w.checkpoint(), tar.clone(), pieces.clone()),
            w,
            room,
            tar,
            pieces,
            hashes: Vec::new(),
            trusted: 0,
            from_peers: 0,
            published: 0,
            pub_written: 0,
            ahead: Arc::default(),
            last: Instant::now(),
            announced: Instant::now(),
        }
    }

    /// Everything written so far is trusted: the point to come back to.
    fn mark_trusted(&mut self) {
        self.at_trusted = (self.w.checkpoint(), self.tar.clone(), self.pieces.clone());
    }

    /// Tell followers how far the file is written and checked.
    fn publish(&mut self, fetch: &Fetch) {
        (self.published, self.pub_written) = (self.trusted, self.w.len());
        self.last = Instant::now();
        self.send(fetch);
    }

    /// Send followers what was last published.
    fn send(&self, fetch: &Fetch) {
        fetch.state.send_replace(FetchState::Streaming {
            size: self.size,
            written: self.pub_written,
            checked: self.published,
            path: self.path.clone(),
            ahead: self.ahead.clone(),
        });
    }

    /// Publish when enough is new or enough time passed, and tell the owners between pieces
    /// too (or they would take a slow fetch for a dead one).
    async fn publish_due(
        &mut self,
        fetch: &Fetch,
        route: &Routing,
        reading: &Reading,
    ) -> Result<(), UpstreamError> {
        // Peers reading from this node see every byte as it lands (they check each piece
        // themselves, so a chain of nodes costs no piece of delay per hop); this node's own
        // clients see checked bytes only.
        let more = self.w.len() > self.pub_written || self.trusted > self.published;
        if more
            && (self.pub_written == 0
                || self.w.len() - self.pub_written >= PUBLISH_BYTES
                || self.trusted - self.published >= PUBLISH_BYTES
                || self.last.elapsed() >= PUBLISH_EVERY)
        {
            self.w.flush().await.map_err(UpstreamError::Local)?;
            self.publish(fetch);
            route.note(reading, self.published, self.size);
        }
        if self.announced.elapsed() >= ANNOUNCE_EVERY {
            route.announce(progress(self.trusted, self.size, reading), None);
            self.announced = Instant::now();
        }
        Ok(())
    }

    /// Cut the file back to the last trusted piece (a peer broke or lied after it).
    async fn rollback(&mut self, fetch: &Fetch) -> Result<(), UpstreamError> {
        let (cp, tar_at, pieces_at) = self.at_trusted.clone();
        self.from_peers -= self.w.len() - cp.len();
        self.w.rollback(&cp).await.map_err(UpstreamError::Local)?;
        self.room.shrink_written_to(cp.len());
        // Peers reading past the cut wait for the bytes that replace what was cut (and the
        // piece checks of their own reject what they already took of it).
        self.pub_written = cp.len();
        self.ahead = Arc::default();
        self.send(fetch);
        self.tar = tar_at;
        self.pieces = pieces_at;
        self.hashes.truncate(self.pieces.current() as usize);
        Ok(())
    }
}

/// Feed a tar hasher the zeros after `size` bytes of content: padding, then the end marker.
pub fn finish_tar_hash(h: &mut Sha256, size: u64) {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut left = manta_hub::forms::tar_suffix_len(size);
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..n]);
        left -= n as u64;
    }
}

/// Wait until the fetch is over: the blob is in the store, passed through uncached (a caller
/// that needs it kept checks the store), or the fetch failed.
pub async fn wait_done(fetch: &Fetch) -> Result<(), FetchError> {
    wait_for(fetch, FetchState::is_over).await
}

/// Wait until every byte is verified (and, with a [`TarHash`], the layer recipe recorded), or the
/// fetch failed; durability and indexing may still be under way.
pub async fn wait_verified(fetch: &Fetch) -> Result<(), FetchError> {
    wait_for(fetch, |s| {
        matches!(s, FetchState::Verified { .. }) || s.is_over()
    })
    .await
}

async fn wait_for(fetch: &Fetch, until: impl Fn(&FetchState) -> bool) -> Result<(), FetchError> {
    let mut rx = fetch.subscribe();
    let state = rx
        .wait_for(until)
        .await
        .map_err(|_| Arc::new(UpstreamError::Internal("a fetch ended without an outcome")))?
        .clone();
    match state {
        FetchState::Failed(e) => Err(e),
        _ => Ok(()),
    }
}

/// Wait until the fetch knows the blob's size (or failed).
pub async fn size_of(
    rx: &mut watch::Receiver<FetchState>,
    wait: Duration,
) -> Result<u64, FetchError> {
    let state = tokio::time::timeout(wait, rx.wait_for(|s| !matches!(s, FetchState::Starting)))
        .await
        .map_err(|_| Arc::new(UpstreamError::Timeout("response headers")))?
        .map_err(|_| Arc::new(UpstreamError::Internal("a fetch ended without an outcome")))?
        .clone();
    match state {
        FetchState::Streaming { size, .. }
        | FetchState::Verified { size, .. }
        | FetchState::Passthrough { size, .. }
        | FetchState::Done { size } => Ok(size),
        FetchState::Failed(e) => Err(e),
        FetchState::Starting => Err(Arc::new(UpstreamError::Internal("a fetch did not start"))),
    }
}
