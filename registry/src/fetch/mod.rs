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
use crate::store::{Origin, RecipeRecord, Store};
use crate::upstream::UpstreamError;
pub use follow::{follow, IfPassedThrough};
pub use pass::PassSource;
use route::{Reading, Routing};

/// The leader makes written bytes visible to followers at least this often...
const PUBLISH_BYTES: u64 = 256 << 10;
/// ...or after this long, whichever comes first.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// A peer that sends nothing for this long is left for another source.
const PEER_STALL: Duration = Duration::from_secs(10);
/// A fetch tells the digest's owners how far it is at least this often (and at every piece).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

fn progress(have: u64, size: u64, reading: &Reading) -> Event {
    Event::Progress {
        have,
        size,
        origin: *reading == Reading::Origin,
        from: match reading {
            Reading::Origin => None,
            Reading::Peer(a) => Some(a.clone()),
        },
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
        let (dl, mut reading) = route.open(origin, 0, None).await?;
        let size = dl.size;
        // The whole size is promised before a byte is written. A blob that cannot fit is not
        // cached: it streams through.
        let mut room = match self.store.reserve(size).await {
            Ok(r) => r,
            Err(e) if e.is_no_space() => {
                // Passed-through bytes are read from the origin only (a peer's are checked a
                // piece at a time, which only a kept blob can do).
                let dl = match reading {
                    Reading::Origin => dl,
                    Reading::Peer(_) => {
                        drop(dl);
                        origin.open(0).await.map_err(|e| match e {
                            SourceError::Origin(e) => e,
                            SourceError::Peer(e) => UpstreamError::Malformed(e.to_string()),
                        })?
                    }
                };
                return self
                    .pass_through(fetch, dl, idle, tar, origin.clone(), &e)
                    .await;
            }
            Err(e) => return Err(store_err(e)),
        };
        let mut body = dl.body;
        let mut w = self
            .store
            .files()
            .temp_writer(digest::algorithm_of(&fetch.digest))
            .await
            .map_err(store_err)?;
        let path = Arc::new(w.path().to_path_buf());
        let mut tar_hasher = tar.as_ref().map(|t| {
            let mut h = Sha256::new();
            h.update(&t.prefix);
            h
        });
        fetch.state.send_replace(FetchState::Streaming {
            size,
            written: 0,
            checked: 0,
            path: path.clone(),
        });
        // Bytes from a peer are trusted a piece at a time, once the piece matches the hash
        // the origin fetcher published; until then this node's own clients do not see them
        // (its peers do, and check every piece themselves), and a piece that fails is cut off
        // the file and fetched elsewhere.
        let mut pieces = PieceHasher::new(size, 0);
        let mut hashes: Vec<String> = Vec::new();
        let mut trusted = 0u64;
        let mut at_trusted = (w.checkpoint(), tar_hasher.clone(), pieces.clone());
        // Bytes kept that came from peers (what a source sent after the last trusted piece is
        // its own, and is what a rollback takes back).
        let mut from_peers = 0u64;
        route.announce(progress(0, size, &reading), None);
        route.note(&reading, 0, size);
        let (mut published, mut last, mut announced) = (0u64, Instant::now(), Instant::now());
        let mut pub_written = 0u64;
        loop {
            // What went wrong with the current source, if anything.
            // A peer that sends nothing for a while is left for another source well before a
            // client following this fetch would give up on it.
            let stall = match reading {
                Reading::Origin => idle,
                // (A peer may itself be waiting on its source: give it half the upstream's time.)
                Reading::Peer(_) => (idle / 2).max(PEER_STALL),
            };
            let broken: SourceError = match tokio::time::timeout(stall, body.next()).await {
                Err(_) => UpstreamError::Timeout("blob body").into(),
                Ok(None) if w.len() == size => break,
                Ok(None) => UpstreamError::Malformed(format!(
                    "blob ended after {} of {size} bytes",
                    w.len()
                ))
                .into(),
                Ok(Some(Err(e))) => e,
                Ok(Some(Ok(chunk))) if w.len() + chunk.len() as u64 > size => {
                    UpstreamError::Malformed(format!("blob longer than the announced {size} bytes"))
                        .into()
                }
                Ok(Some(Ok(mut chunk))) => {
                    if let Reading::Peer(_) = reading {
                        route.throttle(chunk.len()).await;
                    }
                    let mut bad_piece = None;
                    // Written a piece at a time, so each piece boundary is a checkpoint.
                    while !chunk.is_empty() {
                        let (_, end) = piece_range(size, pieces.current());
                        let part = chunk.split_to(((end - w.len()) as usize).min(chunk.len()));
                        w.write(&part).await.map_err(store_err)?;
                        room.written(part.len() as u64);
                        if let Some(h) = tar_hasher.as_mut() {
                            h.update(&part);
                        }
                        self.metrics
                            .fetched(reading.kind(origin.as_ref()), part.len() as u64);
                        if let Reading::Peer(_) = reading {
                            from_peers += part.len() as u64;
                        }
                        if reading == Reading::Origin {
                            trusted = w.len();
                        }
                        let Some((i, hash)) = pieces.update(&part).pop() else {
                            continue;
                        };
                        if let Reading::Peer(_) = reading {
                            match route.expected(i, size).await {
                                Some(want) if want != hash => {
                                    bad_piece = Some(i);
                                    break;
                                }
                                _ => trusted = w.len(),
                            }
                        }
                        hashes.push(hash.clone());
                        at_trusted = (w.checkpoint(), tar_hasher.clone(), pieces.clone());
                        // The origin fetcher publishes each piece's hash as it has it.
                        let published_hash = (reading == Reading::Origin).then(|| Pieces {
                            size,
                            first: i,
                            hashes: vec![hash],
                        });
                        route.announce(progress(trusted, size, &reading), published_hash);
                        announced = Instant::now();
                    }
                    // Peers reading from this node see every byte as it lands (they check each
                    // piece themselves, so a chain of nodes costs no piece of delay per hop);
                    // this node's own clients see checked bytes only.
                    let more = w.len() > pub_written || trusted > published;
                    if more
                        && (pub_written == 0
                            || w.len() - pub_written >= PUBLISH_BYTES
                            || trusted - published >= PUBLISH_BYTES
                            || last.elapsed() >= PUBLISH_EVERY)
                    {
                        w.flush().await.map_err(store_err)?;
                        (published, pub_written) = (trusted, w.len());
                        last = Instant::now();
                        fetch.state.send_replace(FetchState::Streaming {
                            size,
                            written: pub_written,
                            checked: published,
                            path: path.clone(),
                        });
                        route.note(&reading, published, size);
                    }
                    // Heard from between pieces too, or the owners would take a slow fetch
                    // for a dead one.
                    if announced.elapsed() >= ANNOUNCE_EVERY {
                        route.announce(progress(trusted, size, &reading), None);
                        announced = Instant::now();
                    }
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
                return Err(match broken {
                    SourceError::Origin(e) => e,
                    SourceError::Peer(e) => UpstreamError::Malformed(e.to_string()),
                });
            };
            // Every byte is here and checked: whatever the peer did after does not matter.
            if trusted == size && w.len() == size {
                break;
            }
            route.lost(&addr.clone(), &broken);
            self.metrics.peer_switches.inc();
            let (cp, tar_at, pieces_at) = at_trusted.clone();
            from_peers -= w.len() - cp.len();
            w.rollback(&cp).await.map_err(store_err)?;
            room.shrink_written_to(cp.len());
            // Peers reading past the cut wait for the bytes that replace what was cut (and the
            // piece checks of their own reject what they already took of it).
            pub_written = cp.len();
            fetch.state.send_replace(FetchState::Streaming {
                size,
                written: pub_written,
                checked: published,
                path: path.clone(),
            });
            tar_hasher = tar_at;
            pieces = pieces_at;
            hashes.truncate(pieces.current() as usize);
            let (dl, r) = route.open(origin, cp.len(), Some(size)).await?;
            tracing::info!(digest = %fetch.digest, from = r.describe(), offset = cp.len(),
                "blob fetch goes on from another source");
            body = dl.body;
            reading = r;
            route.announce(progress(cp.len(), size, &reading), None);
        }
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
            let chunk = chunk.map_err(|e| match e {
                SourceError::Origin(e) => e,
                SourceError::Peer(e) => UpstreamError::Malformed(e.to_string()),
            })?;
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
