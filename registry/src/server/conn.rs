//! Connections: accepted under a cap, timed out when a client dawdles, refused with a 503 (never a
//! bare error or a hang) when the cap or the process's file descriptors are exhausted.
//!
//! Timeouts, per connection (see [`ConnLimits`]):
//! - *header read*: from a connection's accept, or from the first byte of a later request, until
//!   its head is complete;
//! - *idle*: between the end of one response and the first byte of the next request;
//! - *stall*: a client that takes nothing of a response for this long is cut (a request body that
//!   sends nothing for this long is the handlers' to time out, with the same duration).
//!
//! The read timers run only while no request of the connection is being handled, so a long
//! download or a slow build of a model's image form is never mistaken for an idle client.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::{Metrics, RefusalReason};

/// How connections are bounded and timed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub stall_timeout: Duration,
    /// Connections served at once, over every listener; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            stall_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// File descriptors kept free of connections for everything else (the index, logs, upstream
/// sockets beyond one per connection).
const FD_RESERVE: u64 = 64;
/// File descriptors one connection may need at once: its socket, a blob file, an upstream socket.
const FDS_PER_CONNECTION: u64 = 3;

/// The connection cap that fits an open-file limit of `nofile`.
pub fn auto_max_connections(nofile: u64) -> usize {
    (nofile.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION).clamp(16, 1 << 20) as usize
}

/// Raise the soft open-file limit to the hard one; returns the soft limit in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim).map_err(io::Error::from)?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// The answer to a connection that cannot be served now: a complete HTTP/1.1 response.
fn refusal(message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "errors": [{"code": "TOOMANYREQUESTS", "message": message}]
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Refusals being written at once; beyond this, accepting waits for one to end.
const MAX_REFUSALS: usize = 64;

/// Read the request's head (an answer that comes before the question is a broken connection
/// to most clients), write the refusal, then read (and drop) what the client still sends, so
/// that its bytes do not turn the close into a reset before it has read the answer.
async fn refuse(mut stream: TcpStream, why: &'static str) {
    let work = async {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let asked = tokio::time::timeout(Duration::from_secs(1), async {
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Ok::<_, io::Error>(())
        })
        .await;
        if let Ok(Err(e)) = asked {
            return Err(e);
        }
        stream.write_all(&refusal(why)).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left = 256usize << 10;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), work).await;
}

/// `EMFILE` / `ENFILE`: the process or the system is out of file descriptors.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::MFILE.raw_os_error())
        || code == Some(rustix::io::Errno::NFILE.raw_os_error())
}

/// Everything the listeners of one agent share.
pub struct Connections {
    pub limits: ConnLimits,
    permits: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Cancelled when in-flight connections must be cut (the shutdown grace ran out).
    cut: CancellationToken,
}

impl Connections {
    pub fn new(limits: ConnLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            limits,
            metrics,
            cut: CancellationToken::new(),
        })
    }

    /// Wait until every connection is closed, at most `grace`; then cut those still open.
    pub async fn drain(&self, grace: Duration) {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(grace, self.permits.acquire_many(all)).await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "connections still open after the shutdown grace; cutting them"
            );
            self.cut.cancel();
            // Their tasks end at their next poll; give them a moment to drop their permits.
            let _ =
                tokio::time::timeout(Duration::from_secs(2), self.permits.acquire_many(all)).await;
        }
    }

    /// Answer 503 and close, in a task of its own. At most [`MAX_REFUSALS`] run at once; past
    /// that, accepting waits (the clients wait in the listen backlog rather than being reset).
    async fn refuse(&self, stream: TcpStream, reason: RefusalReason, why: &'static str) {
        self.metrics.connection_refused(reason);
        let Ok(p) = self.refusals.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            refuse(stream, why).await;
            drop(p);
        });
    }

    /// Accept on `listener` and serve `router` until `stop` resolves (then stop accepting; the
    /// connections already open are watched by `graceful`).
    pub async fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        router: Router,
        graceful: &hyper_util::server::graceful::GracefulShutdown,
        stop: CancellationToken,
    ) {
        // One descriptor held back, to accept and refuse a connection when the rest are gone.
        let mut spare = std::fs::File::open("/dev/null").ok();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            match accepted {
                Ok((stream, _peer)) => match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (me, router, watcher) =
                            (self.clone(), router.clone(), graceful.watcher());
                        tokio::spawn(async move {
                            me.connection(stream, router, watcher, permit).await
                        });
                    }
                    Err(_) => {
                        self.refuse(
                            stream,
                            RefusalReason::cap,
                            "too many connections; retry shortly",
                        )
                        .await
                    }
                },
                Err(e) if is_fd_exhaustion(&e) => {
                    match spare.take() {
                        Some(file) => {
                            tracing::warn!(error = %e, "out of file descriptors; refusing a connection");
                            drop(file);
                            let accepted = tokio::select! {
                                a = listener.accept() => a,
                                _ = stop.cancelled() => return,
                            };
                            if let Ok((stream, _)) = accepted {
                                self.refuse(
                                    stream,
                                    RefusalReason::fds,
                                    "the agent is out of file descriptors; retry shortly",
                                )
                                .await;
                            }
                            spare = std::fs::File::open("/dev/null").ok();
                        }
                        // Nothing to accept with: wait for descriptors to come back.
                        None => {
                            spare = std::fs::File::open("/dev/null").ok();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                Err(e) => {
                    // ECONNABORTED and the like: the next connection is unaffected.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        router: Router,
        watcher: Watcher,
        _permit: OwnedSemaphorePermit,
    ) {
        let _ = stream.set_nodelay(true);
        self.metrics.connections_open.inc();
        let shared = Arc::new(ConnShared::new());
        let io = TimedIo::new(stream, shared.clone(), &self.limits);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = shared.begin();
            let router = router.clone();
            async move {
                let resp = router
                    .oneshot(req.map(Body::new))
                    .await
                    .unwrap_or_else(|e: Infallible| match e {});
                Ok::<_, Infallible>(resp.map(|b| Body::new(Tracked::new(b, guard))))
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // Header and idle timeouts are TimedIo's: hyper's one timer would close idle
        // keep-alive connections at the header timeout.
        builder.http1().header_read_timeout(None);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        tokio::select! {
            r = watcher.watch(conn) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            _ = self.cut.cancelled() => {}
        }
        self.metrics.connections_open.dec();
    }
}

/// What the timers of one connection know of its requests.
struct ConnShared {
    epoch: Instant,
    /// Requests being handled (their responses not yet sent whole).
    active: AtomicUsize,
    /// Since when (ms after `epoch`) the connection has had no request.
    idle_since: AtomicU64,
    /// When (ms after `epoch`, plus one) the first byte of the next request head arrived; 0: none.
    head_started: AtomicU64,
    /// `true` until the first request: a new connection's wait is header time, not idle time.
    fresh: std::sync::atomic::AtomicBool,
    /// The connection task, woken when it goes idle so that its idle timer starts.
    waker: Mutex<Option<Waker>>,
}

impl ConnShared {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            fresh: std::sync::atomic::AtomicBool::new(true),
            waker: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        self.fresh.store(false, Ordering::Release);
        ActiveGuard(self.clone())
    }

    /// The deadline of the read side while no request is being handled.
    fn read_deadline(&self, limits: &Timeouts) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |ms: u64, d: Duration| self.epoch + Duration::from_millis(ms) + d;
        let head = self.head_started.load(Ordering::Acquire);
        Some(if head > 0 {
            at(head - 1, limits.header_read)
        } else if self.fresh.load(Ordering::Acquire) {
            at(0, limits.header_read)
        } else {
            at(self.idle_since.load(Ordering::Acquire), limits.idle)
        })
    }
}

/// One request being handled; dropped when its response body ends or is dropped.
struct ActiveGuard(Arc<ConnShared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.now_ms(), Ordering::Release);
        if s.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(w) = s.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        }
    }
}

/// A response body that ends its request's [`ActiveGuard`] with its last frame.
struct Tracked {
    inner: Body,
    guard: Option<ActiveGuard>,
}

impl Tracked {
    fn new(inner: Body, guard: ActiveGuard) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Clone, Copy)]
struct Timeouts {
    header_read: Duration,
    idle: Duration,
    stall: Duration,
}

/// A socket with the connection's timers: reads time out by [`ConnShared::read_deadline`],
/// writes when the client takes nothing for the stall timeout.
struct TimedIo<T> {
    inner: T,
    shared: Arc<ConnShared>,
    timeouts: Timeouts,
    read_timer: Option<Pin<Box<Sleep>>>,
    /// Runs while a write is pending (reset, not reallocated: a busy stream fills its socket
    /// buffer thousands of times a second).
    write_timer: Option<Pin<Box<Sleep>>>,
    write_armed: bool,
}

impl<T> TimedIo<T> {
    fn new(inner: T, shared: Arc<ConnShared>, limits: &ConnLimits) -> Self {
        Self {
            inner,
            shared,
            timeouts: Timeouts {
                header_read: limits.header_read_timeout,
                idle: limits.idle_timeout,
                stall: limits.stall_timeout,
            },
            read_timer: None,
            write_timer: None,
            write_armed: false,
        }
    }

    /// Poll the timer to `deadline`; ready when it passed.
    fn expired(
        timer: &mut Option<Pin<Box<Sleep>>>,
        deadline: Instant,
        cx: &mut Context<'_>,
    ) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if t.deadline() != deadline {
            t.as_mut().reset(deadline);
        }
        t.as_mut().poll(cx).is_ready()
    }

    fn write_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = tokio::time::Instant::now() + self.timeouts.stall;
        let t = self
            .write_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.write_armed {
            t.as_mut().reset(deadline);
            self.write_armed = true;
        }
        t.as_mut().poll(cx).is_ready()
    }

    fn remember_waker(&self, cx: &Context<'_>) {
        let mut w = self.shared.waker.lock().unwrap_or_else(|p| p.into_inner());
        match w.as_ref() {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
    }
}

fn timed_out(what: &str) -> io::Error {
    tracing::debug!(what, "connection timed out");
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let s = &self.shared;
                    if s.active.load(Ordering::Acquire) == 0
                        && s.head_started.load(Ordering::Acquire) == 0
                    {
                        s.head_started.store(s.now_ms() + 1, Ordering::Release);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.remember_waker(cx);
                let me = &mut *self;
                match me.shared.read_deadline(&me.timeouts) {
                    None => {
                        me.read_timer = None;
                        Poll::Pending
                    }
                    Some(deadline) if Self::expired(&mut me.read_timer, deadline, cx) => {
                        let what = if me.shared.head_started.load(Ordering::Acquire) > 0
                            || me.shared.fresh.load(Ordering::Acquire)
                        {
                            "request head not received within the header read timeout"
                        } else {
                            "idle connection closed"
                        };
                        Poll::Ready(Err(timed_out(what)))
                    }
                    Some(_) => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending if self.write_stalled(cx) => Poll::Ready(Err(timed_out(
                "the client took nothing for the stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
            r => {
                self.write_armed = false;
                r
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending if self.write_stalled(cx) => Poll::Ready(Err(timed_out(
                "the client took nothing for the stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
            r => {
                self.write_armed = false;
                r
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        assert_eq!(auto_max_connections(1024), 320);
        assert_eq!(auto_max_connections(64), 16, "never below a usable floor");
        assert!(auto_max_connections(1 << 20) * 3 < 1 << 20);
    }

    #[test]
    fn a_refusal_is_a_whole_http_response() {
        let r = String::from_utf8(refusal("busy")).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains("\r\nRetry-After: 1\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
    }

    #[test]
    fn read_deadlines_follow_the_connection_state() {
        let t = Timeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            stall: Duration::from_secs(5),
        };
        let s = Arc::new(ConnShared::new());
        assert_eq!(
            s.read_deadline(&t),
            Some(s.epoch + t.header_read),
            "a new connection"
        );
        let g = s.begin();
        assert_eq!(
            s.read_deadline(&t),
            None,
            "no read timer while a request is handled"
        );
        drop(g);
        let idle = s.read_deadline(&t).unwrap();
        assert!(idle >= s.epoch + t.idle, "then the idle timeout");
        s.head_started.store(5_001, Ordering::Release);
        assert_eq!(
            s.read_deadline(&t),
            Some(s.epoch + Duration::from_secs(5) + t.header_read),
            "from the first byte of the next head, the header timeout"
        );
    }
}
