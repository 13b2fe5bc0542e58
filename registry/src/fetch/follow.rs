//! Followers: a client's view of a fetch. It reads the temp file as far as the leader has
//! written it, then waits for more; the last byte waits for verification. When the fetch turns
//! out to be a passthrough, it streams from the source instead ([`super::pass`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use oci_spec::image::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

use super::pass::PassStream;
use super::{Fetch, FetchState};

/// Followers read at most this much at a time.
const READ_CHUNK: u64 = 256 << 10;

/// What a follower does when the fetch turns out to be a passthrough (nothing is written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfPassedThrough {
    /// Open the source itself (a client of this node).
    OpenSource,
    /// Fail: the reader may only have what this node writes (a peer, which must never make
    /// the node fetch for it). Such a reader also gets bytes before their piece is checked
    /// here: it checks every piece against the owners' hashes itself, and the last byte still
    /// waits for the whole digest.
    Fail,
}

struct Follower {
    rx: watch::Receiver<FetchState>,
    if_passed: IfPassedThrough,
    digest: Digest,
    final_path: PathBuf,
    file: Option<tokio::fs::File>,
    /// Streaming from the source: the fetch is a passthrough.
    pass: Option<PassStream>,
    pos: u64,
    end: u64,
    idle: Duration,
    finished: bool,
}

impl Follower {
    fn fail(&mut self, e: std::io::Error) -> Option<std::io::Result<Bytes>> {
        self.finished = true;
        Some(Err(e))
    }

    async fn next_from_source(&mut self) -> Option<std::io::Result<Bytes>> {
        let next = self.pass.as_mut()?.next().await;
        match &next {
            Some(Ok(c)) => self.pos += c.len() as u64,
            Some(Err(_)) | None => self.finished = true,
        }
        next
    }

    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.finished || self.pos > self.end {
            return None;
        }
        if self.pass.is_some() {
            return self.next_from_source().await;
        }
        loop {
            let state = self.rx.borrow_and_update().clone();
            let (available, path) = match state {
                FetchState::Starting => (0, None),
                // The last byte waits for verification.
                FetchState::Streaming {
                    size,
                    written,
                    checked,
                    path,
                    ahead,
                } => {
                    // A peer checks each piece itself: it may read what is not checked here yet,
                    // and the checked pieces past the prefix.
                    let readable = if self.if_passed == IfPassedThrough::Fail {
                        ahead
                            .iter()
                            .find(|(start, end)| *start <= self.pos && self.pos < *end)
                            .map_or(written, |(_, end)| (*end).max(written))
                    } else {
                        checked
                    };
                    (readable.min(size.saturating_sub(1)), Some(path))
                }
                FetchState::Verified { size, path } => (size, Some(path)),
                FetchState::Done { size } => (size, None),
                FetchState::Passthrough { .. } if self.if_passed == IfPassedThrough::Fail => {
                    return self.fail(std::io::Error::other(
                        "the blob is not being kept by this node",
                    ));
                }
                FetchState::Passthrough { size, source, .. } => {
                    let opened = PassStream::open(
                        &source,
                        self.digest.clone(),
                        self.pos,
                        self.end,
                        size,
                        self.idle,
                    )
                    .await;
                    match opened {
                        Ok(p) => {
                            self.pass = Some(p);
                            return self.next_from_source().await;
                        }
                        Err(e) => return self.fail(std::io::Error::other(e.to_string())),
                    }
                }
                FetchState::Failed(e) => return self.fail(std::io::Error::other(e.to_string())),
            };
            if available > self.pos {
                if self.file.is_none() {
                    let p = path.as_deref().unwrap_or(&self.final_path);
                    match tokio::fs::File::open(p).await {
                        Ok(mut f) => {
                            if let Err(e) = f.seek(std::io::SeekFrom::Start(self.pos)).await {
                                return self.fail(e);
                            }
                            self.file = Some(f);
                        }
                        // Renamed into the store, or removed after a failure, just now: look again.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.is_some() => {
                            if self.rx.changed().await.is_err() {
                                return self.fail(e);
                            }
                            continue;
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                let n = (available - self.pos)
                    .min(self.end + 1 - self.pos)
                    .min(READ_CHUNK) as usize;
                let mut buf = BytesMut::zeroed(n);
                let Some(file) = self.file.as_mut() else {
                    return self.fail(std::io::Error::other("blob file not open"));
                };
                if let Err(e) = file.read_exact(&mut buf).await {
                    return self.fail(e);
                }
                self.pos += n as u64;
                return Some(Ok(buf.freeze()));
            }
            match tokio::time::timeout(self.idle, self.rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return self.fail(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "upstream stalled",
                    ))
                }
            }
        }
    }
}

/// Bytes `start..=end` of a fetching blob, as they arrive. `final_path` is where the verified blob
/// will live.
pub fn follow(
    fetch: &Arc<Fetch>,
    final_path: PathBuf,
    start: u64,
    end: u64,
    idle: Duration,
    if_passed: IfPassedThrough,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let f = Follower {
        rx: fetch.subscribe(),
        if_passed,
        digest: fetch.digest.clone(),
        final_path,
        file: None,
        pass: None,
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
