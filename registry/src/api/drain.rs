//! An early answer must reach the client: a handler that refuses a request before reading its
//! body (413 for an oversize manifest, 401, 507) leaves the body unread, and closing a socket
//! with unread bytes in it sends a reset, which the client sees *instead of* the answer when it
//! is still writing (Python's `http.client` sends a 5 MiB body in one write). So the rest of an
//! unread body is read and dropped before the answer goes out: up to [`MAX_DRAIN`] bytes within
//! [`DRAIN_TIME`]. A larger body is not read; the answer then says `Connection: close`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::Body as _;

/// Most bytes of an unread body read and dropped.
pub const MAX_DRAIN: u64 = 16 << 20;
/// Longest a drain may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

type Slot = Arc<Mutex<Option<Body>>>;

/// A request body that, dropped before its end, leaves what remains in its slot.
struct Reclaimable {
    inner: Option<Body>,
    slot: Slot,
}

impl http_body::Body for Reclaimable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let r = Pin::new(inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Read to its end (or broken): nothing to reclaim.
            self.inner = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| http_body::SizeHint::with_exact(0))
    }
}

impl Drop for Reclaimable {
    fn drop(&mut self) {
        if let Some(b) = self.inner.take() {
            if !b.is_end_stream() {
                *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
            }
        }
    }
}

/// Read and drop up to `MAX_DRAIN` bytes of `body`; whether it ended.
async fn drain(body: Body) -> bool {
    let work = async {
        let mut stream = body.into_data_stream();
        let mut read = 0u64;
        while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
            let Ok(chunk) = chunk else { return false };
            read += chunk.len() as u64;
            if read > MAX_DRAIN {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, work)
        .await
        .unwrap_or(false)
}

/// Middleware: drain what the handler left of the request body before its answer goes out.
pub async fn drain_unread_body(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let slot = Slot::default();
    let req = req.map(|b| {
        Body::new(Reclaimable {
            inner: Some(b),
            slot: slot.clone(),
        })
    });
    let mut resp = next.run(req).await;
    let left = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(body) = left {
        let drained = match announced {
            Some(n) if n > MAX_DRAIN => false,
            _ => drain(body).await,
        };
        if !drained {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    resp
}
