//! Watches: a chunked stream of JSON lines `{"type": …, "object": …}` with every change after
//! the asked `resourceVersion` (ADDED for every current object first when it is absent or 0, or
//! with `sendInitialEvents=true`, which ends them with the `k8s.io/initial-events-end`
//! BOOKMARK), filtered by namespace and selectors: an object that leaves a selection is
//! DELETED for that watch, one that enters it ADDED. A version older than the history kept is
//! one ERROR event with a 410 Expired Status, as the real server sends it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::ops::present;
use super::resources::ResourceDef;
use super::selector::Selectors;
use super::status::ApiError;
use super::store::{Change, ChangeKind, Store};
use super::table::{self, IncludeObject};

/// How objects are rendered in responses (`Accept`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Object,
    Table(IncludeObject),
    Metadata,
}

/// A watch, as its query asks it.
pub struct WatchRequest {
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
    pub selectors: Selectors,
    /// `None` (or 0): start with the current objects.
    pub resource_version: Option<u64>,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
    pub format: Format,
}

struct Renderer {
    def: Arc<ResourceDef>,
    format: Format,
    headers_sent: bool,
}

impl Renderer {
    fn line(&mut self, ty: &str, obj: &Value) -> Bytes {
        let shown = present(&self.def, obj);
        let object = match self.format {
            Format::Object => shown,
            Format::Metadata => table::partial_metadata(&shown),
            Format::Table(include) => {
                let rv = shown
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let t = table::table(&self.def, &[shown], rv, include, !self.headers_sent);
                self.headers_sent = true;
                t
            }
        };
        event_line(ty, object)
    }
}

fn event_line(ty: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// What a change is for this watch, if anything.
fn classify<'a>(req: &WatchRequest, change: &'a Change) -> Option<(&'static str, &'a Value)> {
    if change.key != req.def.storage_key() {
        return None;
    }
    if req
        .namespace
        .as_ref()
        .is_some_and(|ns| *ns != change.namespace)
    {
        return None;
    }
    let now = req.selectors.matches(&change.object);
    let before = change.prev.as_ref().map(|p| req.selectors.matches(p));
    let ty = match change.kind {
        ChangeKind::Added => now.then_some("ADDED"),
        ChangeKind::Modified => match (before.unwrap_or(false), now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
        ChangeKind::Deleted => before.unwrap_or(now).then_some("DELETED"),
    };
    ty.map(|t| (t, &change.object))
}

/// Starts a watch; the response streams until the timeout, the server's shutdown, or the
/// client going away.
pub fn watch(store: Arc<Store>, req: WatchRequest) -> Response {
    let mut render = Renderer {
        def: req.def.clone(),
        format: req.format,
        headers_sent: false,
    };
    let mut first = Vec::new();
    let (live, start_rv) = {
        let state = store.lock();
        let current = state.resource_version();
        let from = req
            .resource_version
            .filter(|rv| *rv > 0 && !req.send_initial_events);
        match from {
            None => {
                let key = req.def.storage_key();
                for obj in state.list(&key, req.namespace.as_deref()) {
                    if req.selectors.matches(obj) {
                        first.push(render.line("ADDED", obj));
                    }
                }
                if req.send_initial_events {
                    let bookmark = json!({
                        "kind": req.def.kind,
                        "apiVersion": req.def.api_version(),
                        "metadata": {
                            "resourceVersion": current.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    });
                    first.push(event_line("BOOKMARK", bookmark));
                }
            }
            Some(rv) => match state.since(rv) {
                Some(backlog) => {
                    for change in &backlog {
                        if let Some((ty, obj)) = classify(&req, change) {
                            first.push(render.line(ty, obj));
                        }
                    }
                }
                None => {
                    let status = ApiError::expired(rv, state.floor()).status();
                    first.push(event_line("ERROR", status));
                    return stream_response(first, None);
                }
            },
        }
        (state.subscribe(), current)
    };
    stream_response(first, Some((store, req, render, live, start_rv)))
}

type Live = (
    Arc<Store>,
    WatchRequest,
    Renderer,
    broadcast::Receiver<Arc<Change>>,
    u64,
);

fn stream_response(first: Vec<Bytes>, live: Option<Live>) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let Some((store, req, mut render, mut changes, start_rv)) = live else {
            return;
        };
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
        let timeout = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        loop {
            let next = tokio::select! {
                _ = store.shutdown.cancelled() => break,
                _ = &mut timeout => break,
                _ = tx.closed() => break,
                next = changes.recv() => next,
            };
            let change = match next {
                Ok(c) => c,
                // Fell behind, or the server is going: end the stream; clients re-watch from
                // the last version they saw, which the history still holds.
                Err(broadcast::error::RecvError::Lagged(_))
                | Err(broadcast::error::RecvError::Closed) => break,
            };
            if change.rv <= start_rv {
                continue;
            }
            if let Some((ty, obj)) = classify(&req, &change) {
                if tx.send(render.line(ty, obj)).await.is_err() {
                    break;
                }
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}
