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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use crate::digest;
use crate::metrics::Metrics;
use crate::store::{Origin, RecipeRecord, Store};
use crate::upstream::UpstreamError;

/// Followers read at most this much at a time.
const READ_CHUNK: u64 = 256 << 10;
/// The leader makes written bytes visible to followers at least this often...
const PUBLISH_BYTES: u64 = 256 << 10;
/// ...or after this long, whichever comes first.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Why a fetch failed, shared by every follower.
pub type FetchError = Arc<UpstreamError>;

#[derive(Clone, Debug)]
pub enum FetchState {
    /// Waiting for the upstream's response headers.
    Starting,
    /// `written` bytes of `size` are in `path`, readable.
    Streaming {
        size: u64,
        written: u64,
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
    Failed(FetchError),
}

/// The bytes of a blob as an upstream sends them: the announced size, then the body.
pub struct Download {
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
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
}

impl Fetcher {
    pub fn new(store: Store, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            inflight: Mutex::new(HashMap::new()),
            store,
            metrics,
        })
    }

    /// Join the fetch of `digest`, starting it with `open` if none is running. `repo` is the
    /// cache repository the blob is linked into; `idle` bounds how long the upstream may stall.
    pub fn fetch<F, Fut>(
        self: &Arc<Self>,
        digest: &Digest,
        repo: &str,
        idle: Duration,
        tar: Option<TarHash>,
        open: F,
    ) -> (Arc<Fetch>, bool)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Download, UpstreamError>> + Send + 'static,
    {
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
            let outcome = me.lead(&f, &repo, idle, tar, open).await;
            let state = match outcome {
                Ok(size) => FetchState::Done { size },
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

    /// The fetch of `digest` in flight, if any.
    pub fn get(&self, digest: &str) -> Option<Arc<Fetch>> {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    async fn lead<F, Fut>(
        &self,
        fetch: &Fetch,
        repo: &str,
        idle: Duration,
        tar: Option<TarHash>,
        open: F,
    ) -> Result<u64, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Download, UpstreamError>>,
    {
        let store_err = UpstreamError::Local;
        // Held against eviction from the first byte to the index (and by each reader after).
        let _lease = self.store.lease(fetch.digest.as_ref());
        let Download { size, mut body } = open().await?;
        // The whole size is promised before a byte is written: a blob that cannot fit fails now.
        let mut room = self.store.reserve(size).await.map_err(store_err)?;
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
            path: path.clone(),
        });
        let (mut published, mut last) = (0u64, Instant::now());
        loop {
            let next = tokio::time::timeout(idle, body.next())
                .await
                .map_err(|_| UpstreamError::Timeout("blob body"))?;
            let Some(chunk) = next else { break };
            let chunk = chunk?;
            if w.len() + chunk.len() as u64 > size {
                return Err(UpstreamError::Malformed(format!(
                    "blob longer than the announced {size} bytes"
                )));
            }
            w.write(&chunk).await.map_err(store_err)?;
            room.written(chunk.len() as u64);
            if let Some(h) = tar_hasher.as_mut() {
                h.update(&chunk);
            }
            self.metrics
                .upstream_fetched_bytes
                .inc_by(chunk.len() as u64);
            // The first bytes go out at once (time to first byte); then in batches.
            if published == 0
                || w.len() - published >= PUBLISH_BYTES
                || last.elapsed() >= PUBLISH_EVERY
            {
                w.flush().await.map_err(store_err)?;
                published = w.len();
                last = Instant::now();
                fetch.state.send_replace(FetchState::Streaming {
                    size,
                    written: published,
                    path: path.clone(),
                });
            }
        }
        if w.len() != size {
            return Err(UpstreamError::Malformed(format!(
                "blob ended after {} of {size} bytes",
                w.len()
            )));
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
        if let (Some(t), Some(mut h)) = (tar, tar_hasher) {
            finish_tar_hash(&mut h, size);
            let tar_digest = format!("sha256:{}", hex::encode(h.finalize()));
            let recipe = RecipeRecord {
                version: 1,
                raw: fetch.digest.to_string(),
                size,
                prefix: t.prefix,
            };
            self.store
                .blocking(move |idx| idx.put_recipe(&tar_digest, &t.path, &recipe))
                .await
                .map_err(store_err)?;
        }
        // Verified: followers may send the last byte now. Durability is the cache's business:
        // the file is fsynced before it is installed and indexed, never indexed before.
        fetch
            .state
            .send_replace(FetchState::Verified { size, path });
        blob.sync().await.map_err(store_err)?;
        self.store
            .commit_blob(repo, blob, &fetch.digest, Origin::Upstream)
            .await
            .map_err(store_err)?;
        Ok(size)
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

/// Wait until the fetch is over: the blob is in the store, or the fetch failed.
pub async fn wait_done(fetch: &Fetch) -> Result<(), FetchError> {
    wait_for(fetch, |s| {
        matches!(s, FetchState::Done { .. } | FetchState::Failed(_))
    })
    .await
}

/// Wait until every byte is verified (and, with a [`TarHash`], the layer recipe recorded), or the
/// fetch failed; durability and indexing may still be under way.
pub async fn wait_verified(fetch: &Fetch) -> Result<(), FetchError> {
    wait_for(fetch, |s| {
        matches!(
            s,
            FetchState::Verified { .. } | FetchState::Done { .. } | FetchState::Failed(_)
        )
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
        | FetchState::Done { size } => Ok(size),
        FetchState::Failed(e) => Err(e),
        FetchState::Starting => Err(Arc::new(UpstreamError::Internal("a fetch did not start"))),
    }
}

struct Follower {
    rx: watch::Receiver<FetchState>,
    final_path: PathBuf,
    file: Option<tokio::fs::File>,
    pos: u64,
    end: u64,
    idle: Duration,
    finished: bool,
}

impl Follower {
    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.finished || self.pos > self.end {
            return None;
        }
        loop {
            let state = self.rx.borrow_and_update().clone();
            let (available, path) = match state {
                FetchState::Starting => (0, None),
                // The last byte waits for verification.
                FetchState::Streaming {
                    size,
                    written,
                    path,
                } => (written.min(size.saturating_sub(1)), Some(path)),
                FetchState::Verified { size, path } => (size, Some(path)),
                FetchState::Done { size } => (size, None),
                FetchState::Failed(e) => {
                    self.finished = true;
                    return Some(Err(std::io::Error::other(e.to_string())));
                }
            };
            if available > self.pos {
                if self.file.is_none() {
                    let p = path.as_deref().unwrap_or(&self.final_path);
                    match tokio::fs::File::open(p).await {
                        Ok(mut f) => {
                            if let Err(e) = f.seek(std::io::SeekFrom::Start(self.pos)).await {
                                self.finished = true;
                                return Some(Err(e));
                            }
                            self.file = Some(f);
                        }
                        // Renamed into the store, or removed after a failure, just now: look again.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_some() => {
                            if self.rx.changed().await.is_err() {
                                self.finished = true;
                                return Some(Err(e));
                            }
                            continue;
                        }
                        Err(e) => {
                            self.finished = true;
                            return Some(Err(e));
                        }
                    }
                }
                let n = (available - self.pos)
                    .min(self.end + 1 - self.pos)
                    .min(READ_CHUNK) as usize;
                let mut buf = BytesMut::zeroed(n);
                let Some(file) = self.file.as_mut() else {
                    self.finished = true;
                    return Some(Err(std::io::Error::other("blob file not open")));
                };
                if let Err(e) = file.read_exact(&mut buf).await {
                    self.finished = true;
                    return Some(Err(e));
                }
                self.pos += n as u64;
                return Some(Ok(buf.freeze()));
            }
            match tokio::time::timeout(self.idle, self.rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    self.finished = true;
                    return Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "upstream stalled",
                    )));
                }
            }
        }
    }
}

/// Bytes `start..=end` of a fetching blob, as they arrive. `final_path` is where the verified blob
/// will live.
pub fn follow(
    fetch: &Fetch,
    final_path: PathBuf,
    start: u64,
    end: u64,
    idle: Duration,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let f = Follower {
        rx: fetch.subscribe(),
        final_path,
        file: None,
        pos: start,
        end,
        idle,
        finished: false,
    };
    futures_util::stream::unfold(
        f,
        |mut f| async move { f.next_chunk().await.map(|c| (c, f)) },
    )
}
