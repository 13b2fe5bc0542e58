//! The OCI distribution API under `/v2/`, plus health and metrics.
//!
//! Repository names have any number of `/`-separated components, so `/v2/…` is routed here by
//! parsing the *raw* path from its end (`…/manifests/<ref>`, `…/blobs/uploads/<id>`, …). Nothing
//! is percent-decoded: a `%` can never be part of a valid name, tag or digest.

mod admin;
mod blobs;
pub mod cluster;
mod discovery;
mod drain;
mod facade;
mod hub;
mod lifecycle;
mod manifests;
pub mod peer;
mod proxy;
pub mod range;
mod uploads;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::{ApiError, ApiResult, Wanted};
use crate::fetch::Fetcher;
use crate::metrics::{Metrics, RouteKind};
use crate::names;
use crate::store::Store;
use crate::upstream::{Target, Upstreams};
pub use uploads::UploadSessions;

/// Limits applied to requests.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest manifest accepted, in bytes (413 above).
    pub max_manifest_bytes: u64,
    /// An upload session that receives nothing for this long is purged with its bytes.
    pub upload_ttl: std::time::Duration,
    /// Upload sessions open at once (429 past it).
    pub max_upload_sessions: usize,
    /// A request body that sends nothing for this long fails (the connections' stall timeout).
    pub body_stall: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 << 20,
            upload_ttl: std::time::Duration::from_secs(24 * 3600),
            max_upload_sessions: 1024,
            body_stall: std::time::Duration::from_secs(60),
        }
    }
}

/// Everything a handler needs.
pub struct AppState {
    pub store: Store,
    pub upstreams: Arc<Upstreams>,
    pub fetcher: Arc<Fetcher>,
    pub hubs: Arc<crate::hub::Hubs>,
    pub jobs: admin::Jobs,
    pub uploads: UploadSessions,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// This node's view of its peers (with `--peers`).
    pub peers: Option<Arc<manta_peer::PeerRouter>>,
    pub ready: std::sync::atomic::AtomicBool,
}

pub type Shared = Arc<AppState>;

pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// The whole HTTP surface of the agent.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/manta/v1/prefetch", axum::routing::post(admin::start))
        .route("/manta/v1/prefetch/{id}", get(admin::status))
        .route("/manta/v1/cache", get(admin::cache))
        .route("/manta/v1/peer/status", get(peer::status))
        .route(
            "/manta/v1/cache/{*reference}",
            axum::routing::delete(lifecycle::remove),
        )
        .route("/manta/v1/pins", get(lifecycle::list_pins))
        .route(
            "/manta/v1/pins/{name}",
            axum::routing::put(lifecycle::put_pin).delete(lifecycle::delete_pin),
        )
        .route("/manta/v1/gc", axum::routing::post(lifecycle::gc))
        .route("/manta/v1/verify", axum::routing::post(lifecycle::verify))
        .route("/hf/{*rest}", axum::routing::any(facade::dispatch))
        .route("/v2", axum::routing::any(dispatch))
        .route("/v2/", axum::routing::any(dispatch))
        .route("/v2/{*rest}", axum::routing::any(dispatch))
        .with_state(state)
        .layer(axum::middleware::from_fn(drain::drain_unread_body))
}

async fn readyz(State(st): State<Shared>) -> Response {
    if !st.ready.load(std::sync::atomic::Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match st.store.index().health() {
        Ok(crate::store::Health::Ok) => "ok".into_response(),
        Ok(crate::store::Health::Degraded(why)) => {
            tracing::error!(%why, "readiness: index degraded");
            (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "readiness: index unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "index unavailable").into_response()
        }
    }
}

async fn metrics(State(st): State<Shared>) -> Response {
    let space = st.store.space();
    let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    st.metrics.cache_capacity.set(gauge(space.capacity()));
    st.metrics.cache_used.set(gauge(space.used()));
    st.metrics.cache_reserved.set(gauge(space.reserved()));
    st.metrics.cache_pinned.set(gauge(
        st.store
            .stats()
            .pinned_bytes
            .load(std::sync::atomic::Ordering::Acquire),
    ));
    match st.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A parsed `/v2/…` route.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Blob { name: &'a str, digest: &'a str },
    UploadStart { name: &'a str },
    Upload { name: &'a str, id: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Tags { name: &'a str },
    Referrers { name: &'a str, digest: &'a str },
}

impl Route<'_> {
    fn kind(&self) -> RouteKind {
        match self {
            Route::Base => RouteKind::base,
            Route::Blob { .. } => RouteKind::blob,
            Route::UploadStart { .. } | Route::Upload { .. } => RouteKind::upload,
            Route::Manifest { .. } => RouteKind::manifest,
            Route::Tags { .. } => RouteKind::tags,
            Route::Referrers { .. } => RouteKind::referrers,
        }
    }
}

/// Split `/v2/<rest>` into a route, or `None` when it is no route of the API.
fn parse_route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    // name/tags/list
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags { name });
    }
    // name/blobs/uploads or name/blobs/uploads/
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart { name });
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (before, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some(Route::Manifest {
            name: before,
            reference: last,
        }),
        "blobs" => Some(Route::Blob {
            name: before,
            digest: last,
        }),
        "referrers" => Some(Route::Referrers {
            name: before,
            digest: last,
        }),
        "uploads" => before
            .strip_suffix("/blobs")
            .map(|name| Route::Upload { name, id: last }),
        _ => None,
    }
}

fn check_name(name: &str) -> ApiResult<()> {
    if names::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::NameInvalid)
    }
}

/// Query parameters, decoded.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            q.and_then(|q| serde_urlencoded::from_str(q).ok())
                .unwrap_or_default(),
        )
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// What a handler reads of the request besides its body.
pub(crate) struct Head {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Query,
}

/// The request: its head, and its body for handlers that consume it.
pub(crate) struct Req {
    pub head: Head,
    pub body: Body,
}

async fn dispatch(State(st): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let head = Head {
        method: parts.method,
        headers: parts.headers,
        query: Query::parse(parts.uri.query()),
    };
    let method = head.method.clone();
    let req = Req { head, body };
    let route = parse_route(&path);
    let kind = route.as_ref().map(Route::kind).unwrap_or(RouteKind::other);
    let mut resp = match route {
        None => ApiError::NotFound.into_response(),
        Some(route) => handle(&st, route, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    };
    resp.headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    st.metrics.observe_request(kind, &method, resp.status());
    resp
}

/// The upstream a name (with the request's `ns`) addresses, if any.
fn upstream_of(st: &Shared, name: &str, req: &Req, wanted: Wanted) -> ApiResult<Option<Target>> {
    st.upstreams
        .resolve(name, req.head.query.get("ns"))
        .map_err(|e| ApiError::upstream(wanted, e))
}

async fn handle(st: &Shared, route: Route<'_>, req: Req) -> ApiResult<Response> {
    use Method as M;
    // Every name is validated before anything else looks at it (a `..` must never look like a host).
    let name = match &route {
        Route::Base => None,
        Route::Blob { name, .. }
        | Route::UploadStart { name }
        | Route::Upload { name, .. }
        | Route::Manifest { name, .. }
        | Route::Tags { name }
        | Route::Referrers { name, .. } => Some(*name),
    };
    if let Some(name) = name {
        check_name(name)?;
    }
    // Model hub repositories: read-only views of a hub, built on demand.
    if let Some(hn) = name.and_then(crate::hub::parse_name) {
        return match (route, &req.head.method) {
            (Route::Manifest { reference, .. }, &M::GET | &M::HEAD) => {
                hub::manifest(st, hn, reference, &req.head).await
            }
            (Route::Blob { digest, .. }, &M::GET | &M::HEAD) => {
                hub::blob(st, hn, digest, &req.head).await
            }
            (Route::Tags { name }, &M::GET | &M::HEAD) => {
                discovery::tags(st, name, &req.head).await
            }
            (Route::Referrers { name, digest }, &M::GET | &M::HEAD) => {
                discovery::referrers(st, name, digest, &req.head).await
            }
            _ => Err(ApiError::Unsupported(
                "model hub repositories are read-only".into(),
            )),
        };
    }
    // Pull-through repositories: reads go to the cache and the upstream; nothing is written to them.
    let wanted = if matches!(
        route,
        Route::Blob { .. } | Route::UploadStart { .. } | Route::Upload { .. }
    ) {
        Wanted::Blob
    } else {
        Wanted::Manifest
    };
    let upstream = match name {
        Some(name) => upstream_of(st, name, &req, wanted)?,
        None => None,
    };
    if let Some(target) = upstream {
        return match (route, &req.head.method) {
            (Route::Manifest { reference, .. }, &M::GET | &M::HEAD) => {
                proxy::manifest(st, target, reference, &req.head).await
            }
            (Route::Blob { digest, .. }, &M::GET | &M::HEAD) => {
                proxy::blob(st, target, digest, &req.head).await
            }
            // What the cache holds of the upstream repository.
            (Route::Tags { .. }, &M::GET | &M::HEAD) => {
                discovery::tags(st, &target.cache_repo, &req.head).await
            }
            (Route::Referrers { digest, .. }, &M::GET | &M::HEAD) => {
                discovery::referrers(st, &target.cache_repo, digest, &req.head).await
            }
            _ => Err(ApiError::Unsupported(
                "pull-through repositories are read-only".into(),
            )),
        };
    }
    match route {
        Route::Base => match req.head.method {
            M::GET | M::HEAD => {
                Ok(([(header::CONTENT_TYPE, "application/json")], "{}").into_response())
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Blob { name, digest } => match req.head.method {
            M::GET | M::HEAD => blobs::get(st, name, digest, &req.head).await,
            M::DELETE => blobs::delete(st, name, digest).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::UploadStart { name } => match req.head.method {
            M::POST => uploads::start(st, name, req).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Upload { name, id } => match req.head.method {
            M::PATCH => uploads::patch(st, name, id, req).await,
            M::PUT => uploads::put(st, name, id, req).await,
            M::GET => uploads::status(st, name, id).await,
            M::DELETE => uploads::cancel(st, name, id).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Manifest { name, reference } => match req.head.method {
            M::GET | M::HEAD => manifests::get(st, name, reference, &req.head).await,
            M::PUT => manifests::put(st, name, reference, req).await,
            M::DELETE => manifests::delete(st, name, reference).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Tags { name } => match req.head.method {
            M::GET | M::HEAD => discovery::tags(st, name, &req.head).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
        Route::Referrers { name, digest } => match req.head.method {
            M::GET | M::HEAD => discovery::referrers(st, name, digest, &req.head).await,
            _ => Err(ApiError::MethodNotAllowed),
        },
    }
}

/// `Location` of a blob.
fn blob_location(name: &str, digest: &impl std::fmt::Display) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

fn header_value(s: &str) -> ApiResult<HeaderValue> {
    HeaderValue::from_str(s)
        .map_err(|_| ApiError::Unsupported("unrepresentable header value".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse_route("/v2/"), Some(Route::Base));
        assert_eq!(parse_route("/v2"), Some(Route::Base));
        assert_eq!(
            parse_route("/v2/a/b/c/d/tags/list"),
            Some(Route::Tags { name: "a/b/c/d" })
        );
        assert_eq!(
            parse_route("/v2/a/b/manifests/latest"),
            Some(Route::Manifest {
                name: "a/b",
                reference: "latest"
            })
        );
        assert_eq!(
            parse_route("/v2/x/manifests/blobs/manifests/v1"),
            Some(Route::Manifest {
                name: "x/manifests/blobs",
                reference: "v1"
            })
        );
        assert_eq!(
            parse_route("/v2/a/blobs/uploads/"),
            Some(Route::UploadStart { name: "a" })
        );
        assert_eq!(
            parse_route("/v2/a/b/blobs/uploads/123"),
            Some(Route::Upload {
                name: "a/b",
                id: "123"
            })
        );
        assert_eq!(
            parse_route("/v2/a/blobs/sha256:00"),
            Some(Route::Blob {
                name: "a",
                digest: "sha256:00"
            })
        );
        assert_eq!(
            parse_route("/v2/a/referrers/sha256:00"),
            Some(Route::Referrers {
                name: "a",
                digest: "sha256:00"
            })
        );
        assert_eq!(parse_route("/v2/a/uploads/x"), None);
        assert_eq!(parse_route("/v2/a"), None);
        assert_eq!(parse_route("/v3/a/tags/list"), None);
    }
}
