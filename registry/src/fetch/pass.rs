//! Passthrough: a blob the cache has no room for, streamed from its source to each client.
//!
//! The first client to read from the start gets the leader's own response (one request to the
//! source for one client); every other client opens the source itself, from the offset it
//! wants. A whole-blob read is hashed on its way and its last bytes go out only if the digest
//! matches; a ranged read cannot be checked (the source's word, as with any proxy). Every byte
//! is counted in `manta_cache_passthrough_bytes_total`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use oci_spec::image::Digest;
use prometheus_client::metrics::counter::Counter;

use crate::digest;
use crate::source::{BlobSource, Download, SourceError};
use crate::upstream::UpstreamError;

/// Where the followers of a passthrough get their bytes.
pub struct PassSource {
    open: Arc<dyn BlobSource>,
    /// The leader's response, for the first client that reads the blob from its start.
    first: Mutex<Option<Download>>,
    passed: Counter,
}

impl PassSource {
    pub fn new(open: Arc<dyn BlobSource>, first: Option<Download>, passed: Counter) -> Arc<Self> {
        Arc::new(Self {
            open,
            first: Mutex::new(first),
            passed,
        })
    }

    /// The source's bytes from `offset`.
    async fn from(&self, offset: u64) -> Result<Download, SourceError> {
        if offset == 0 {
            let first = self.first.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(d) = first {
                return Ok(d);
            }
        }
        self.open.open(offset).await
    }
}

impl std::fmt::Debug for PassSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassSource")
    }
}

/// One client's bytes `start..=end` of a passed-through blob.
pub(super) struct PassStream {
    body: BoxStream<'static, Result<Bytes, SourceError>>,
    pos: u64,
    end: u64,
    size: u64,
    /// Set for a whole-blob read: the digest is checked before the last bytes go out.
    check: Option<(digest::Hasher, Digest)>,
    idle: Duration,
    passed: Counter,
}

impl PassStream {
    pub(super) async fn open(
        source: &PassSource,
        digest: Digest,
        start: u64,
        end: u64,
        size: u64,
        idle: Duration,
    ) -> Result<Self, SourceError> {
        let dl = source.from(start).await?;
        if dl.size != size {
            return Err(UpstreamError::Malformed(format!(
                "the blob is {} bytes now, {size} a moment ago",
                dl.size
            ))
            .into());
        }
        let check = (start == 0 && end + 1 == size)
            .then(|| (digest::Hasher::new(digest::algorithm_of(&digest)), digest));
        Ok(Self {
            body: dl.body,
            pos: start,
            end,
            size,
            check,
            idle,
            passed: source.passed.clone(),
        })
    }

    pub(super) async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.pos > self.end {
            return None;
        }
        let chunk = match tokio::time::timeout(self.idle, self.body.next()).await {
            Err(_) => return Some(Err(std::io::Error::other("the source stalled"))),
            Ok(None) => {
                return Some(Err(std::io::Error::other(format!(
                    "the source ended after {} of {} bytes",
                    self.pos, self.size
                ))))
            }
            Ok(Some(Err(e))) => return Some(Err(std::io::Error::other(e.to_string()))),
            Ok(Some(Ok(c))) => c,
        };
        // The range may end inside this chunk.
        let want = (self.end + 1 - self.pos).min(chunk.len() as u64) as usize;
        let chunk = chunk.slice(..want);
        self.pos += chunk.len() as u64;
        if let Some((h, _)) = self.check.as_mut() {
            h.update(&chunk);
        }
        if self.pos > self.end {
            if let Some((h, d)) = self.check.take() {
                if h.finish() != d {
                    return Some(Err(std::io::Error::other(format!(
                        "the source sent content that does not match {d}"
                    ))));
                }
            }
        }
        self.passed.inc_by(chunk.len() as u64);
        Some(Ok(chunk))
    }
}

/// Skip the first `n` bytes of a body (a source that answered a ranged request whole).
pub fn skip<E: Send + 'static>(
    body: BoxStream<'static, Result<Bytes, E>>,
    n: u64,
) -> BoxStream<'static, Result<Bytes, E>> {
    let mut left = n;
    body.filter_map(move |c| {
        let out = match c {
            Ok(c) if left >= c.len() as u64 => {
                left -= c.len() as u64;
                None
            }
            Ok(c) => {
                let from = left as usize;
                left = 0;
                Some(Ok(c.slice(from..)))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(out)
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(&'static [u8]);

    impl BlobSource for Fixed {
        fn kind(&self) -> crate::source::SourceKind {
            crate::source::SourceKind::upstream
        }

        fn open_range(
            &self,
            offset: u64,
            _end: Option<u64>,
        ) -> futures_util::future::BoxFuture<'static, Result<Download, SourceError>> {
            let data = self.0;
            let body = futures_util::stream::iter(
                data[offset as usize..]
                    .chunks(3)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            )
            .boxed();
            Box::pin(async move {
                Ok(Download {
                    size: data.len() as u64,
                    body,
                })
            })
        }
    }

    fn source(data: &'static [u8]) -> Arc<PassSource> {
        PassSource::new(Arc::new(Fixed(data)), None, Counter::default())
    }

    async fn read(mut s: PassStream) -> Result<Vec<u8>, std::io::Error> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn ranges_are_cut_from_the_source_and_whole_reads_are_verified() {
        let data: &'static [u8] = b"the quick brown fox";
        let good = digest::of_bytes(digest::Algorithm::Sha256, data);
        let bad = digest::of_bytes(digest::Algorithm::Sha256, b"something else");
        let src = source(data);
        let idle = Duration::from_secs(5);
        let n = data.len() as u64;
        let whole = PassStream::open(&src, good.clone(), 0, n - 1, n, idle)
            .await
            .unwrap();
        assert_eq!(read(whole).await.unwrap(), data);
        let part = PassStream::open(&src, good.clone(), 4, 8, n, idle)
            .await
            .unwrap();
        assert_eq!(read(part).await.unwrap(), b"quick");
        let lied = PassStream::open(&src, bad, 0, n - 1, n, idle)
            .await
            .unwrap();
        assert!(
            read(lied).await.is_err(),
            "a wrong digest must break the stream"
        );
        assert_eq!(
            src.passed.get(),
            n + 5 + n - 1,
            "every byte passed is counted"
        );
    }

    #[tokio::test]
    async fn skip_drops_a_prefix_across_chunks() {
        let body = futures_util::stream::iter(
            [&b"abc"[..], b"def", b"gh"].map(|c| Ok::<_, UpstreamError>(Bytes::from_static(c))),
        )
        .boxed();
        let out: Vec<u8> = skip(body, 4).map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(out, b"efgh");
    }
}
