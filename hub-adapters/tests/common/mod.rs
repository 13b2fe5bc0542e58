//! A stand-in hub: an axum server on 127.0.0.1 (port 0) whose every request goes to one closure,
//! with each request recorded (raw path, query, `Authorization`, `Range`, `User-Agent`).
#![allow(dead_code)] // each test crate uses part of it

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::StreamExt;
use manta_hub::{Download, HubConfig};

/// One request as the hub saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The raw (still percent-encoded) path.
    pub path: String,
    pub query: String,
    pub auth: Option<String>,
    pub range: Option<String>,
    pub user_agent: Option<String>,
}

impl Seen {
    /// A query parameter, decoded.
    pub fn param(&self, key: &str) -> Option<String> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

pub struct Mock {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests whose raw path is `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

/// Start a hub answering every request with `answer(request, base_url)`.
pub async fn mock<F>(answer: F) -> Mock
where
    F: Fn(&Seen, &str) -> Response + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let (log, base) = (seen.clone(), url.clone());
    let app = Router::new().fallback(move |req: Request| {
        let (answer, log, base) = (answer.clone(), log.clone(), base.clone());
        async move {
            let text = |name: header::HeaderName| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let seen = Seen {
                path: req.uri().path().to_owned(),
                query: req.uri().query().unwrap_or("").to_owned(),
                auth: text(header::AUTHORIZATION),
                range: text(header::RANGE),
                user_agent: text(header::USER_AGENT),
            };
            log.lock().unwrap().push(seen.clone());
            answer(&seen, &base)
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Mock { url, seen }
}

/// An answer that is `first()` for the first `n` requests, then `then()`.
pub fn after<F, G>(
    n: usize,
    first: F,
    then: G,
) -> impl Fn(&Seen, &str) -> Response + Send + Sync + 'static
where
    F: Fn() -> Response + Send + Sync + 'static,
    G: Fn() -> Response + Send + Sync + 'static,
{
    let count = std::sync::atomic::AtomicUsize::new(0);
    move |_, _| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
            first()
        } else {
            then()
        }
    }
}

pub fn config(endpoint: &str, token: Option<&str>) -> HubConfig {
    HubConfig {
        endpoint: endpoint.to_owned(),
        token: token.map(str::to_owned),
        timeout: Duration::from_secs(5),
        retries: 3,
        user_agent: "manta-test/1".to_owned(),
    }
}

pub fn json(value: serde_json::Value) -> Response {
    axum::Json(value).into_response()
}

pub fn json_with(headers: &[(&'static str, String)], value: serde_json::Value) -> Response {
    let mut resp = json(value);
    for (name, v) in headers {
        resp.headers_mut()
            .insert(*name, HeaderValue::from_str(v).unwrap());
    }
    resp
}

pub fn status(code: u16, headers: &[(&'static str, &str)], body: &str) -> Response {
    let mut map = HeaderMap::new();
    for (name, v) in headers {
        map.insert(*name, HeaderValue::from_str(v).unwrap());
    }
    (StatusCode::from_u16(code).unwrap(), map, body.to_owned()).into_response()
}

pub fn redirect(code: u16, location: &str) -> Response {
    status(code, &[("location", location)], "")
}

/// Deterministic content of `len` bytes.
pub fn content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// `content[from..]`, answering a `Range: bytes=n-` like a CDN does (200 without one).
pub fn ranged(content: &[u8], range: Option<&str>) -> Response {
    match range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
    {
        Some((from, last)) => {
            let from: usize = from.parse().unwrap();
            let total = content.len();
            let last = match last {
                "" => total - 1,
                l => l.parse::<usize>().unwrap().min(total - 1),
            };
            (
                StatusCode::PARTIAL_CONTENT,
                [(
                    header::CONTENT_RANGE,
                    format!("bytes {from}-{last}/{total}"),
                )],
                content[from..=last].to_vec(),
            )
                .into_response()
        }
        None => content.to_vec().into_response(),
    }
}

/// A `200`/`206` announcing `announced` bytes that sends `sent` and then drops the connection.
pub fn cut_short(
    code: u16,
    headers: &[(&'static str, String)],
    announced: usize,
    sent: Vec<u8>,
) -> Response {
    // The cut comes after a pause, so the head and the bytes sent are on the wire first (hyper
    // would otherwise drop its unflushed buffer with the connection).
    let body = futures_util::stream::unfold(Some(sent), |state| async move {
        match state {
            Some(sent) => Some((Ok(Bytes::from(sent)), None)),
            None => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                None::<(Result<Bytes, std::io::Error>, _)>
            }
        }
    })
    .chain(futures_util::stream::once(async {
        Err(std::io::Error::other("connection cut by the test"))
    }));
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(announced));
    for (name, v) in headers {
        resp.headers_mut()
            .insert(*name, HeaderValue::from_str(v).unwrap());
    }
    resp
}

/// Every byte of a download, or its first error.
pub async fn collect(download: Download) -> Result<Vec<u8>, manta_hub::HubError> {
    let mut body = download.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}
