//! Reading one blob's pieces from several peers at once, as [`manta_peer::schedule`] decides.
//!
//! Each piece is a ranged read of one peer, written at its offset in the temp file as it
//! arrives. When a piece is all there, the leader reads it back and checks it against the hash
//! the owners published; a bad one is asked of another peer, and its sender is banned for the
//! digest. Checked pieces join the blob's digest (and tar hash) in order, as the contiguous
//! prefix grows, so this node's clients and its peers still see one ordered stream. A piece
//! that is late is asked of another peer; a peer that fails mid-piece costs that piece only.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{StreamExt, TryStreamExt};
use manta_peer::pieces::{piece_range, PieceHasher};
use manta_peer::proto::{Event, Pieces};
use manta_peer::schedule::{Assignment, Limits, Schedule, SourceSpec};
use manta_peer::{PeerError, PeerRouter, Route};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use super::route::{Reading, Routing};
use super::{progress_with, Fetch, Fetcher, Progress, ANNOUNCE_EVERY, PEER_STALL};
use crate::metrics::{Metrics, SourceKind};
use crate::source::{BlobSource, SourceError};
use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// A piece is written to the file in runs of at most this much...
const WRITE_RUN: usize = 1 << 20;
/// ...and read back in runs of this much.
const READ_RUN: u64 = 1 << 20;
/// How often the leader looks for late pieces.
const TICK: Duration = Duration::from_millis(200);

/// The temp file as piece reads write it. A write lands only while its attempt still owns the
/// piece, so a read taken back (late, or the fetch moved on) never writes again, not even a
/// write already under way.
struct PieceFile {
    file: File,
    /// Piece → the attempt that owns it, and the bytes it has written so far (from the piece's
    /// start on); `None` once the fetch stopped reading pieces.
    owners: Mutex<Option<HashMap<u64, Owned>>>,
    /// Woken at every write: peers may read the bytes of a piece as they land.
    wrote: tokio::sync::Notify,
}

#[derive(Clone, Copy)]
struct Owned {
    attempt: u64,
    /// Bytes `start..end` written by this attempt (`None`: nothing yet).
    landed: Option<(u64, u64)>,
}

impl PieceFile {
    fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?,
            owners: Mutex::new(Some(HashMap::new())),
            wrote: tokio::sync::Notify::new(),
        })
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, Owned>>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn own(&self, piece: u64, attempt: u64) {
        if let Some(o) = self.owners().as_mut() {
            o.insert(
                piece,
                Owned {
                    attempt,
                    landed: None,
                },
            );
        }
    }

    fn release(&self, piece: u64, attempt: u64) {
        if let Some(o) = self.owners().as_mut() {
            if o.get(&piece).is_some_and(|w| w.attempt == attempt) {
                o.remove(&piece);
            }
        }
    }

    fn close(&self) {
        *self.owners() = None;
    }

    /// Write `data` at `offset` for `attempt` at `piece`; `false`: the attempt no longer owns
    /// it, and nothing was written. An attempt writes its piece in order. (Blocking.)
    fn write(&self, piece: u64, attempt: u64, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        let mut owners = self.owners();
        let Some(w) = owners
            .as_mut()
            .and_then(|o| o.get_mut(&piece))
            .filter(|w| w.attempt == attempt)
        else {
            return Ok(false);
        };
        self.file.write_all_at(data, offset)?;
        let end = offset + data.len() as u64;
        w.landed = Some(match w.landed {
            Some((start, _)) => (start, end),
            None => (offset, end),
        });
        drop(owners);
        self.wrote.notify_one();
        Ok(true)
    }

    /// The bytes of the pieces in flight written so far, `[start, end)` each.
    fn landed(&self) -> Vec<(u64, u64)> {
        self.owners()
            .iter()
            .flat_map(|o| o.values())
            .filter_map(|w| w.landed)
            .collect()
    }

    /// Bytes `offset..offset + len`. (Blocking.)
    fn read(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, UpstreamError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| UpstreamError::Internal("a piece file task failed"))?
        .map_err(|e| UpstreamError::Local(StoreError::io("piece io", path)(e)))
}

/// Closes the piece file when dropped.
struct Closed(Arc<PieceFile>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Why a piece read ended without the piece.
enum PieceError {
    /// The peer failed.
    Source(SourceError),
    /// The origin failed (it fails the fetch, as it does a stream from the origin).
    Origin(UpstreamError),
    /// The peer sent nothing for the stall limit.
    Stalled,
    /// The read's task ended abnormally.
    Failed,
    /// This node's disk failed.
    Local(UpstreamError),
    /// The piece was taken back from this read.
    Taken,
}

impl From<PeerError> for PieceError {
    fn from(e: PeerError) -> Self {
        PieceError::Source(e.into())
    }
}

/// Where a piece is read from.
#[derive(Clone)]
enum PieceFrom {
    Peer(String),
    /// The origin: this node reads a stripe from it that no peer has (a read of the piece's
    /// range, cut at its end if the origin sends more).
    Origin(Arc<dyn BlobSource>),
}

/// What a piece read needs.
struct PieceRead {
    peers: Arc<PeerRouter>,
    from: PieceFrom,
    digest: String,
    size: u64,
    file: Arc<PieceFile>,
    path: Arc<std::path::PathBuf>,
    metrics: Arc<Metrics>,
    stall: Duration,
}

impl PieceRead {
    /// Read piece `a` and write it at its offset.
    async fn run(self, a: Assignment) -> Result<(), PieceError> {
        let (addr, kind, total, mut body) = match &self.from {
            PieceFrom::Peer(addr) => {
                let b = self
                    .peers
                    .client()
                    .blob_range(addr, &self.digest, a.start, Some(a.end))
                    .await?;
                let body = b.body.map_err(SourceError::from).boxed();
                (addr.clone(), SourceKind::peer, b.size, body)
            }
            PieceFrom::Origin(origin) => {
                let dl = origin
                    .open_range(a.start, Some(a.end))
                    .await
                    .map_err(|e| match e {
                        SourceError::Origin(e) => PieceError::Origin(e),
                        e => PieceError::Source(e),
                    })?;
                ("origin".to_string(), origin.kind(), dl.size, dl.body)
            }
        };
        let origin = matches!(self.from, PieceFrom::Origin(_));
        if total != self.size {
            let why = format!("says {total} bytes, not {}", self.size);
            return Err(match origin {
                true => PieceError::Origin(UpstreamError::Malformed(why)),
                false => PeerError::Malformed(addr, why).into(),
            });
        }
        let (mut pos, mut buf) = (a.start, BytesMut::new());
        loop {
            // The origin is asked for the piece only; one that sends more (it ignored the
            // range) is cut off at the piece's end.
            let next = match pos + buf.len() as u64 >= a.end && origin {
                true => None,
                false => tokio::time::timeout(self.stall, body.next())
                    .await
                    .map_err(|_| match origin {
                        true => PieceError::Origin(UpstreamError::Timeout("blob body")),
                        false => PieceError::Stalled,
                    })?,
            };
            let last = match next {
                None => true,
                Some(chunk) => {
                    let mut chunk = chunk.map_err(|e| match e {
                        SourceError::Origin(e) => PieceError::Origin(e),
                        e => PieceError::Source(e),
                    })?;
                    let room = (a.end - pos - buf.len() as u64) as usize;
                    if origin {
                        chunk.truncate(room);
                    } else if chunk.len() > room {
                        return Err(PeerError::Malformed(
                            addr,
                            format!("sent more than bytes {}-{}", a.start, a.end - 1),
                        )
                        .into());
                    } else if let Some(limit) = self.peers.download_limit() {
                        limit.take(chunk.len()).await;
                    }
                    self.metrics.fetched(kind, chunk.len() as u64);
                    buf.extend_from_slice(&chunk);
                    false
                }
            };
            if buf.len() >= WRITE_RUN || (last && !buf.is_empty()) {
                let data = buf.split().freeze();
                let (file, at) = (self.file.clone(), pos);
                pos += data.len() as u64;
                let wrote = blocking(&self.path, move || {
                    file.write(a.piece, a.attempt, at, &data)
                })
                .await
                .map_err(PieceError::Local)?;
                if !wrote {
                    return Err(PieceError::Taken);
                }
            }
            if last {
                break;
            }
        }
        if pos != a.end {
            let why = format!(
                "ended after {} of bytes {}-{}",
                pos - a.start,
                a.start,
                a.end - 1
            );
            return Err(match origin {
                true => PieceError::Origin(UpstreamError::Malformed(why)),
                false => PeerError::Malformed(addr, why).into(),
            });
        }
        Ok(())
    }
}

/// The name of the origin among a striped fetch's sources (never a node's address: it is
/// never announced).
const ORIGIN_SOURCE: &str = "origin";

/// The peers besides the first that pieces are read from, for the owners (not the origin).
fn others(sched: &Schedule) -> Vec<String> {
    let mut all = sched.others();
    all.retain(|a| a != ORIGIN_SOURCE);
    all
}

/// A striped fetch locates one stripe again at most this many times (then the whole fetch
/// finds another source).
const MAX_RELOCATIONS_PER_STRIPE: usize = 4;

/// The stripes of a striped fetch: which source each reads from now.
struct Stripes {
    count: u32,
    /// Per stripe, its source in the schedule (`None` while it is located again).
    parent: Vec<Option<usize>>,
    /// Sources that are the origin (stripes no peer had).
    origin: Vec<usize>,
    /// Stripes being located again, by task.
    pending: HashMap<tokio::task::Id, u32>,
    relocations: usize,
    /// When each stripe's owners last heard from this fetch (they forget a silent one).
    announced: std::time::Instant,
}

impl Stripes {
    fn new(count: u32) -> Self {
        Self {
            count,
            parent: (0..count as usize).map(Some).collect(),
            origin: Vec::new(),
            pending: HashMap::new(),
            relocations: 0,
            announced: std::time::Instant::now(),
        }
    }

    /// How this fetch reads stripe `s` now, for its owners.
    fn progress(&self, sched: &Schedule, s: u32, have: u64, size: u64) -> Option<Event> {
        // (A parent dropped and not replaced is not named: the stripe's owners forget it.)
        let src = self.parent[s as usize].filter(|i| !sched.dropped(*i))?;
        let origin = self.origin.contains(&src);
        Some(Event::Progress {
            have,
            size,
            origin,
            from: (!origin).then(|| sched.addr(src).to_string()),
            also: Vec::new(),
        })
    }
}

impl Fetcher {
    /// Read the rest of the blob as pieces from `sources` at once, into `p` from its writer's
    /// position (a piece boundary). Returns when every piece is in, or when what is left has
    /// no source here any more (the caller then finds another).
    ///
    /// With `stripes`, source `s` is this node's parent in stripe `s`'s tree and serves that
    /// stripe only. A stripe whose parent is lost is located again while the others go on;
    /// a stripe that no peer has or fetches any more (its fetcher from the origin died) is
    /// read from `origin` by this node, which publishes those pieces' hashes.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn lead_pieces(
        &self,
        fetch: &Fetch,
        p: &mut Progress,
        route: &mut Routing,
        sources: Vec<SourceSpec>,
        stripes: Option<u32>,
        origin: &Arc<dyn BlobSource>,
        idle: Duration,
    ) -> Result<(), UpstreamError> {
        let Some(peers) = route.peers().cloned() else {
            return Ok(());
        };
        let size = p.size;
        // What the writer holds goes out first: pieces land beyond it.
        p.w.flush().await.map_err(UpstreamError::Local)?;
        let path = p.path.clone();
        let file = Arc::new(
            PieceFile::open(&path)
                .map_err(|e| UpstreamError::Local(StoreError::io("open", &path)(e)))?,
        );
        // However this ends, no read writes again (dropping the tasks aborts them, and a write
        // under way finishes before the file is closed).
        let _closed = Closed(file.clone());
        let mut sched = Schedule::new(size, p.w.len(), sources, Limits::default());
        let mut striped = stripes.map(Stripes::new);
        // The node followed, for the owners of the blob itself (striped: stripe 0's parent).
        let primary = Reading::Peer(sched.addr(0).to_string());
        tracing::info!(digest = %fetch.digest, peers = sched.live(), offset = p.w.len(),
            stripes = stripes.unwrap_or(1), "reading the blob's pieces from several peers");
        route.note_pieces(&sched, p.trusted, size);
        if let Some(st) = &striped {
            self.metrics.peer_striped_fetches.inc();
            announce_stripes(route, st, &sched, p.trusted, size);
        }
        let mut tasks = JoinSet::new();
        // The reads in flight: by task, what each is for; by attempt, how to stop it.
        let mut reads: HashMap<tokio::task::Id, (u64, u64, usize)> = HashMap::new();
        let mut timings = Timings::new(stripes.unwrap_or(1));
        let mut aborts: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
        // Stripes located again (striped only).
        let mut relocating: JoinSet<Route> = JoinSet::new();
        // Checked pieces not yet in the digest (they wait for the ones before them).
        let mut checked: HashMap<u64, Checked> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let outcome = loop {
            while let Some(a) = sched.next(std::time::Instant::now()) {
                file.own(a.piece, a.attempt);
                let from_origin = striped
                    .as_ref()
                    .is_some_and(|st| st.origin.contains(&a.source));
                let read = PieceRead {
                    peers: peers.clone(),
                    from: match from_origin {
                        true => PieceFrom::Origin(origin.clone()),
                        false => PieceFrom::Peer(sched.addr(a.source).to_string()),
                    },
                    digest: route.digest().to_string(),
                    size,
                    file: file.clone(),
                    path: path.clone(),
                    metrics: self.metrics.clone(),
                    stall: match from_origin {
                        true => idle,
                        false => (idle / 2).max(PEER_STALL),
                    },
                };
                let (piece, attempt, source) = (a.piece, a.attempt, a.source);
                timings.asked(attempt);
                let h = tasks.spawn(read.run(a));
                reads.insert(h.id(), (piece, attempt, source));
                aborts.insert(attempt, h);
            }
            if sched.finished() {
                break Ok(());
            }
            // A stripe that lost its parent is located again, on its own.
            if let Some(st) = striped.as_mut() {
                let k = st.count;
                for s in sched.orphaned_stripes(k) {
                    if st.pending.values().any(|x| *x == s)
                        || st.relocations >= MAX_RELOCATIONS_PER_STRIPE * k as usize
                    {
                        continue;
                    }
                    st.relocations += 1;
                    self.metrics.peer_stripe_relocations.inc();
                    st.parent[s as usize] = None;
                    let (peers, digest) = (peers.clone(), route.digest().to_string());
                    let (exclude, avoid) = route.not_to_use();
                    let have = p.trusted;
                    let h = relocating.spawn(async move {
                        peers
                            .locate_stripe(&digest, s, k, have, &exclude, &avoid, true)
                            .await
                    });
                    st.pending.insert(h.id(), s);
                }
            }
            if sched.stuck() && relocating.is_empty() {
                break Ok(());
            }
            tokio::select! {
                Some(joined) = tasks.join_next_with_id() => {
                    let (id, result) = match joined {
                        Ok((id, r)) => (id, r),
                        // Aborted (taken back, and asked of another peer already), or
                        // panicked (asked again below).
                        Err(e) => (e.id(), Err(PieceError::Failed)),
                    };
                    let Some((piece, attempt, src)) = reads.remove(&id) else {
                        continue;
                    };
                    aborts.remove(&attempt);
                    let read_for = timings.answered(attempt);
                    file.release(piece, attempt);
                    if !sched.current(piece, attempt) {
                        continue;
                    }
                    let addr = sched.addr(src).to_string();
                    let from_origin = striped.as_ref().is_some_and(|st| st.origin.contains(&src));
                    match result {
                        Ok(()) => {
                            let (start, end) = piece_range(size, piece);
                            let t = std::time::Instant::now();
                            let hash = {
                                let file = file.clone();
                                blocking(&path, move || hash_range(&file, start, end)).await?
                            };
                            timings.hash += t.elapsed();
                            let alive = progress_with(p.trusted, size, &primary, others(&sched));
                            let want = match from_origin {
                                // This node is the stripe's fetcher from the origin: the
                                // others check against what it publishes.
                                true => {
                                    route.announce(
                                        progress_with(p.trusted, size, &Reading::Origin, vec![]),
                                        Some(Pieces { size, first: piece, hashes: vec![hash.clone()] }),
                                    );
                                    None
                                }
                                false => {
                                    let t = std::time::Instant::now();
                                    let want = route.expected(piece, size, &alive).await;
                                    timings.expect += t.elapsed();
                                    want
                                }
                            };
                            match want {
                                Some(want) if want != hash => {
                                    self.metrics.peer_pieces_rejected.inc();
                                    self.metrics.peer_pieces_retried.inc();
                                    route.ban(&addr, &PeerError::BadPiece(addr.clone(), piece));
                                    sched.failed(piece, attempt, true);
                                }
                                _ => {
                                    sched.done(piece, attempt, std::time::Instant::now());
                                    timings.piece(piece, read_for);
                                    checked.insert(piece, Checked { hash, from_origin });
                                    let alive = progress_with(0, size, &primary, others(&sched));
                                    let t = std::time::Instant::now();
                                    self.adopt(fetch, p, &file, &mut checked, route, alive)
                                        .await?;
                                    timings.adopt += t.elapsed();
                                    // Peers may read the checked pieces past the prefix now.
                                    p.ahead = Arc::new(ranges(size, &checked, &file.landed()));
                                    p.publish(fetch);
                                }
                            }
                        }
                        Err(PieceError::Origin(e)) => break Err(e),
                        Err(PieceError::Source(e)) => {
                            self.metrics.peer_pieces_retried.inc();
                            route.lost(&addr, &e);
                            sched.failed(piece, attempt, true);
                        }
                        // A peer that sent nothing for a while may be waiting on its own
                        // source: read elsewhere, without reporting it.
                        Err(PieceError::Stalled) => {
                            self.metrics.peer_pieces_retried.inc();
                            route.ban_here(&addr, &"sent nothing for the stall limit");
                            sched.failed(piece, attempt, true);
                        }
                        Err(PieceError::Failed | PieceError::Taken) => {
                            self.metrics.peer_pieces_retried.inc();
                            sched.failed(piece, attempt, false);
                        }
                        Err(PieceError::Local(e)) => break Err(e),
                    }
                    route.note_pieces(&sched, p.trusted, size);
                }
                Some(joined) = relocating.join_next_with_id() => {
                    let Some(st) = striped.as_mut() else { continue };
                    let (id, found) = match joined {
                        Ok((id, r)) => (id, Some(r)),
                        Err(e) => (e.id(), None),
                    };
                    let Some(s) = st.pending.remove(&id) else { continue };
                    let spec = |addr: &str| SourceSpec {
                        stripe: Some((s, st.count)),
                        ..SourceSpec::any(addr, None)
                    };
                    match found {
                        // Asked again at the next turn (while relocations are left).
                        None => {}
                        Some(Route::Peer { addr, .. }) if !peers.members().is_member(&addr) => {
                            route.ban(&addr, &"not a member of the cluster");
                        }
                        Some(Route::Peer { addr, .. }) if route.not_using(&addr) => {}
                        Some(Route::Peer { addr, pieces, .. }) => {
                            if let Some(pcs) = pieces.filter(|pcs| pcs.size == size) {
                                route.learn(&pcs);
                            }
                            tracing::info!(digest = %fetch.digest, stripe = s, peer = addr,
                                "the stripe goes on from another peer");
                            let i = sched.add_source(spec(&addr));
                            st.parent[s as usize] = Some(i);
                        }
                        Some(Route::Origin | Route::Alone) => {
                            tracing::info!(digest = %fetch.digest, stripe = s,
                                "no peer has the rest of the stripe: reading it from the origin");
                            let i = sched.add_source(spec(ORIGIN_SOURCE));
                            st.origin.push(i);
                            st.parent[s as usize] = Some(i);
                        }
                    }
                    if let Some(ev) = st.progress(&sched, s, p.trusted, size) {
                        route.announce_stripe(s, st.count, ev);
                    }
                }
                // Peers may read a piece's bytes as they land, before it is checked here (a
                // node reading from this one checks each piece itself): so a stripe's tree
                // costs a write, not a piece, of delay per hop.
                _ = file.wrote.notified() => {
                    p.ahead = Arc::new(ranges(size, &checked, &file.landed()));
                    p.send(fetch);
                }
                _ = tick.tick() => {
                    for (piece, attempt, src) in sched.overdue(std::time::Instant::now()) {
                        if let Some(h) = aborts.remove(&attempt) {
                            reads.remove(&h.id());
                            h.abort();
                        }
                        file.release(piece, attempt);
                        self.metrics.peer_pieces_retried.inc();
                        let addr = sched.addr(src).to_string();
                        tracing::info!(digest = %fetch.digest, peer = addr, piece,
                            "piece late: asking another peer");
                        if sched.dropped(src) {
                            route.ban_here(&addr, &"late with two pieces");
                        }
                    }
                    if p.announced.elapsed() >= ANNOUNCE_EVERY {
                        let also = others(&sched);
                        route.announce(progress_with(p.trusted, size, &primary, also), None);
                        p.announced = std::time::Instant::now();
                    }
                    // (On a clock of their own: the blob's owners hear at every piece.)
                    if let Some(st) = striped.as_mut().filter(|st| st.announced.elapsed() >= ANNOUNCE_EVERY) {
                        announce_stripes(route, st, &sched, p.trusted, size);
                        st.announced = std::time::Instant::now();
                    }
                }
            }
        };
        tasks.shutdown().await;
        relocating.shutdown().await;
        timings.report(fetch.digest.as_ref(), route.hash_asks);
        // What lies past the prefix may be written again by another source.
        if !p.ahead.is_empty() {
            p.ahead = Arc::default();
            p.publish(fetch);
        }
        outcome
    }

    /// Take the checked pieces at the writer's position into the blob, in order (those read
    /// from peers count as bytes from peers).
    async fn adopt(
        &self,
        fetch: &Fetch,
        p: &mut Progress,
        file: &Arc<PieceFile>,
        checked: &mut HashMap<u64, Checked>,
        route: &Routing,
        // What to announce (its `have` is set here).
        mut alive: manta_peer::proto::Event,
    ) -> Result<(), UpstreamError> {
        let size = p.size;
        let mut moved = false;
        while let Some(c) = checked.remove(&p.pieces.current()) {
            let (start, end) = piece_range(size, p.pieces.current());
            let mut pos = start;
            while pos < end {
                let n = (end - pos).min(READ_RUN);
                let data = {
                    let file = file.clone();
                    blocking(&p.path, move || file.read(pos, n)).await?
                };
                p.w.adopt(&data).await.map_err(UpstreamError::Local)?;
                if let Some(h) = p.tar.as_mut() {
                    h.update(&data);
                }
                pos += n;
            }
            p.room.written(end - start);
            if !c.from_origin {
                p.from_peers += end - start;
            }
            p.trusted = end;
            p.hashes.push(c.hash);
            p.pieces = PieceHasher::new(size, end);
            p.mark_trusted();
            moved = true;
        }
        if moved {
            p.publish(fetch);
            if let manta_peer::proto::Event::Progress { have, .. } = &mut alive {
                *have = p.trusted;
            }
            route.announce(alive, None);
            p.announced = std::time::Instant::now();
        }
        Ok(())
    }
}

/// A piece checked, waiting for the ones before it to join the blob.
struct Checked {
    hash: String,
    /// Read from the origin (a stripe nobody else had), not from a peer.
    from_origin: bool,
}

/// Where a multi-source fetch's time went, logged as it ends: what an operator (and the bench)
/// needs to tell a slow parent from a leader that is busy between pieces.
struct Timings {
    start: std::time::Instant,
    asked: HashMap<u64, std::time::Instant>,
    /// Pieces checked, and their reads' total time.
    pieces: u64,
    reading: Duration,
    /// Per stripe (one when not striped): when its last piece was checked, from the start.
    stripe_done: Vec<Duration>,
    /// The leader's own work between pieces: hashing a piece, waiting for its expected hash,
    /// taking it into the blob.
    hash: Duration,
    expect: Duration,
    adopt: Duration,
}

impl Timings {
    fn new(stripes: u32) -> Self {
        Self {
            start: std::time::Instant::now(),
            asked: HashMap::new(),
            pieces: 0,
            reading: Duration::ZERO,
            stripe_done: vec![Duration::ZERO; stripes.max(1) as usize],
            hash: Duration::ZERO,
            expect: Duration::ZERO,
            adopt: Duration::ZERO,
        }
    }

    fn asked(&mut self, attempt: u64) {
        self.asked.insert(attempt, std::time::Instant::now());
    }

    /// How long the read of `attempt` took.
    fn answered(&mut self, attempt: u64) -> Duration {
        self.asked
            .remove(&attempt)
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    fn piece(&mut self, piece: u64, read_for: Duration) {
        self.pieces += 1;
        self.reading += read_for;
        let n = self.stripe_done.len() as u64;
        self.stripe_done[(piece % n) as usize] = self.start.elapsed();
    }

    fn report(&self, digest: &str, hash_asks: u32) {
        let ms = |d: Duration| d.as_millis() as u64;
        let mean_read = self
            .reading
            .checked_div(self.pieces as u32)
            .unwrap_or_default();
        let stripes: Vec<u64> = self.stripe_done.iter().map(|d| ms(*d)).collect();
        tracing::info!(digest, pieces = self.pieces, ms = ms(self.start.elapsed()),
            mean_read_ms = ms(mean_read), hash_ms = ms(self.hash), expect_ms = ms(self.expect),
            hash_asks, adopt_ms = ms(self.adopt), stripes_done_ms = ?stripes,
            "pieces read");
    }
}

/// Tell each stripe's owners how this node reads it now.
fn announce_stripes(route: &Routing, st: &Stripes, sched: &Schedule, have: u64, size: u64) {
    for s in 0..st.count {
        if let Some(ev) = st.progress(sched, s, have, size) {
            route.announce_stripe(s, st.count, ev);
        }
    }
}

/// The byte ranges of the pieces in `checked` and of the bytes `landed` of pieces in flight,
/// in order, neighbours merged.
fn ranges<V>(size: u64, checked: &HashMap<u64, V>, landed: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = checked.keys().map(|&i| piece_range(size, i)).collect();
    all.extend(landed.iter().filter(|(start, end)| start < end));
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (start, end) in all {
        match out.last_mut() {
            Some(last) if last.1 >= start => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// The hex sha256 of bytes `start..end` of the file. (Blocking.)
fn hash_range(file: &PieceFile, start: u64, end: u64) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut pos = start;
    while pos < end {
        let n = (end - pos).min(READ_RUN);
        h.update(file.read(pos, n)?);
        pos += n;
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_taken_back_never_writes_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![0u8; 16]).unwrap();
        let f = PieceFile::open(&path).unwrap();
        f.own(0, 1);
        assert!(f.write(0, 1, 0, b"aaaa").unwrap());
        // Taken back and asked again: the first attempt's late write is dropped.
        f.release(0, 1);
        f.own(0, 2);
        assert!(!f.write(0, 1, 4, b"bbbb").unwrap());
        assert!(f.write(0, 2, 4, b"cccc").unwrap());
        // Released by another attempt than its owner: nothing changes.
        f.release(0, 1);
        assert!(f.write(0, 2, 8, b"dddd").unwrap());
        // What peers may read of the pieces in flight: the bytes the owning attempt wrote.
        f.own(1, 3);
        assert!(f.write(1, 3, 12, b"ee").unwrap());
        let mut landed = f.landed();
        landed.sort_unstable();
        assert_eq!(landed, [(4, 12), (12, 14)]);
        // Asked again, a piece starts over.
        f.own(1, 4);
        assert_eq!(f.landed(), [(4, 12)]);
        // Closed: nobody writes.
        f.close();
        assert!(!f.write(0, 2, 12, b"eeee").unwrap());
        assert_eq!(f.read(0, 16).unwrap(), b"aaaaccccddddee\0\0");
        assert_eq!(
            hash_range(&f, 0, 4).unwrap(),
            hex::encode(Sha256::digest(b"aaaa"))
        );
    }

    #[test]
    fn peers_may_read_checked_pieces_and_the_bytes_landed_of_those_in_flight() {
        let size = 40 << 20; // ten 4 MiB pieces
        let piece = 4u64 << 20;
        let checked: HashMap<u64, String> =
            [(2, String::new()), (3, String::new()), (7, String::new())].into();
        let landed = [(4 * piece, 4 * piece + 100), (9 * piece, 9 * piece)];
        assert_eq!(
            ranges(size, &checked, &landed),
            [(2 * piece, 4 * piece + 100), (7 * piece, 8 * piece)]
        );
    }

    #[test]
    fn the_origin_among_a_striped_fetch_s_sources_is_never_announced() {
        let stripe = |addr: &str, i: u32| SourceSpec {
            stripe: Some((i, 2)),
            ..SourceSpec::any(addr, None)
        };
        let mut sched = Schedule::new(
            16 << 20,
            0,
            vec![stripe("10.0.0.1:5001", 0), stripe("10.0.0.2:5001", 1)],
            Limits::default(),
        );
        sched.add_source(stripe(ORIGIN_SOURCE, 1));
        // Owners refuse an announcement naming anything but node addresses.
        assert_eq!(others(&sched), ["10.0.0.2:5001"]);
    }
}
