//! A rate-limited TCP proxy on 127.0.0.1: forwards both directions between each client and one
//! upstream address, limiting the upstream→client bytes of all connections together to a rate
//! (one shared token bucket), and counting them.
//!
//! Memory is bounded: one 64 KiB buffer per connection for the limited direction, and
//! `tokio::io::copy`'s buffer for the other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;

/// A token bucket that can go into debt: a caller takes its bytes at once and sleeps until the
/// bucket is back at zero, so the aggregate rate over all callers is `rate`, with bursts of at
/// most `burst` bytes.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes `n` bytes at `now`; returns how long the caller must wait before sending them.
    fn take(&mut self, n: usize, now: Instant) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

struct Shared {
    bucket: Mutex<Bucket>,
    down_bytes: AtomicU64,
    connections: AtomicU64,
}

/// The running proxy; dropping it stops the listener and every connection.
pub struct RateLimiter {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl RateLimiter {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`, limiting upstream→client
    /// bytes to `bytes_per_sec` in aggregate.
    pub async fn start(upstream: SocketAddr, bytes_per_sec: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(bytes_per_sec > 0.0, "the rate must be positive");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // Bursts of at most 50 ms worth of bytes (and at least one chunk).
        let burst = (bytes_per_sec / 20.0).max(CHUNK as f64);
        let shared = Arc::new(Shared {
            bucket: Mutex::new(Bucket::new(bytes_per_sec, burst)),
            down_bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this set, so aborting the accept loop ends them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        s.connections.fetch_add(1, Ordering::Relaxed);
                        let s = s.clone();
                        conns.spawn(async move {
                            if let Err(e) = serve(client, upstream, &s).await {
                                eprintln!("manta-bench: rate limiter connection: {e}");
                            }
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// Upstream→client bytes forwarded so far (headers included).
    pub fn down_bytes(&self) -> u64 {
        self.shared.down_bytes.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    pub fn base_url(&self) -> anyhow::Result<reqwest::Url> {
        Ok(reqwest::Url::parse(&format!("http://{}/", self.addr))?)
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, shared: &Shared) -> anyhow::Result<()> {
    let up = TcpStream::connect(upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (mut client_r, mut client_w) = client.into_split();
    let (mut up_r, mut up_w) = up.into_split();
    let to_upstream = async {
        let r = tokio::io::copy(&mut client_r, &mut up_w).await;
        let _ = up_w.shutdown().await;
        r.map(|_| ())
    };
    let to_client = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = up_r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let wait = shared
                .bucket
                .lock()
                .map_err(|_| anyhow::anyhow!("rate limiter lock poisoned"))?
                .take(n, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            client_w.write_all(&buf[..n]).await?;
            shared.down_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        let _ = client_w.shutdown().await;
        anyhow::Ok(())
    };
    // A client that closes early (or resets) ends both directions.
    let (a, b) = tokio::join!(to_upstream, to_client);
    match (a, b) {
        (Err(e), _) if !is_disconnect(&e) => Err(e.into()),
        (_, Err(e)) if !e.downcast_ref().is_some_and(is_disconnect) => Err(e),
        _ => Ok(()),
    }
}

fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_aggregate_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000.0, 100.0);
        assert_eq!(b.take(100, t0), Duration::ZERO);
        // Two callers at once: the second waits for both.
        assert_eq!(b.take(100, t0), Duration::from_millis(100));
        assert_eq!(b.take(100, t0), Duration::from_millis(200));
        // After the debt is paid and a pause, at most `burst` is free again.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.take(100, later), Duration::ZERO);
        assert!(b.take(1, later) > Duration::ZERO);
    }

    #[tokio::test]
    async fn forwards_and_limits() {
        let up = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up_addr = up.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = up.accept().await.expect("accept");
            let mut req = [0u8; 5];
            s.read_exact(&mut req).await.expect("read");
            assert_eq!(&req, b"hello");
            s.write_all(&vec![9u8; 300_000]).await.expect("write");
        });
        // 1 MB/s: 300 kB takes about 0.25 s after the 64 KiB burst.
        let rl = RateLimiter::start(up_addr, 1e6).await.expect("start");
        let start = Instant::now();
        let mut c = TcpStream::connect(rl.addr).await.expect("connect");
        c.write_all(b"hello").await.expect("send");
        let mut got = vec![];
        c.read_to_end(&mut got).await.expect("read");
        let took = start.elapsed();
        assert_eq!(got.len(), 300_000);
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert_eq!(rl.down_bytes(), 300_000);
        assert_eq!(rl.connections(), 1);
        server.await.expect("server");
    }
}
