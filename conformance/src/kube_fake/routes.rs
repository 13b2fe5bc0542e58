//! The HTTP surface: discovery and OpenAPI routes, and one dispatcher for the resource paths
//! (`/api/v1/[namespaces/<ns>/]<resource>[/<name>[/status]]`, the same under
//! `/apis/<group>/<version>`), which parses the path, query and headers and calls the verbs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::delete::{self, DeleteOpts};
use super::discovery;
use super::ops::{self, present, FieldValidation, WriteOpts, Written};
use super::patch::PatchType;
use super::resources::ResourceDef;
use super::selector::{FieldSelector, LabelSelector, Selectors};
use super::status::ApiError;
use super::store::Store;
use super::table::{self, IncludeObject};
use super::watch::{self, Format, WatchRequest};

/// The fake API server's routes over a store.
pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/version", get(|| async { Json(discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/openapi/v2", get(|| async { ApiError::no_route() }))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/{*gv}", get(openapi_gv))
        .fallback(dispatch)
        .with_state(store)
}

async fn openapi_index(State(store): State<Arc<Store>>) -> Response {
    Json(discovery::openapi_index(store.lock().resources())).into_response()
}

async fn openapi_gv(State(store): State<Arc<Store>>, Path(gv): Path<String>) -> Response {
    let parts: Vec<&str> = gv.trim_matches('/').split('/').collect();
    let (group, version) = match parts.as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return ApiError::no_route().into_response(),
    };
    let state = store.lock();
    if discovery::resource_list(state.resources(), group, version).is_none() {
        return ApiError::no_route().into_response();
    }
    Json(discovery::openapi_gv(state.resources(), group, version)).into_response()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a resource path names.
struct Target {
    def: Arc<ResourceDef>,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

enum Route {
    ApiVersions,
    Groups,
    Group(String),
    Resources(String, String),
    Resource(Target),
}

fn route(store: &Store, segs: &[String]) -> Result<Route, ApiError> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match s.as_slice() {
        ["api"] => return Ok(Route::ApiVersions),
        ["api", v] => return Ok(Route::Resources(String::new(), v.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis"] => return Ok(Route::Groups),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["apis", g, v] => return Ok(Route::Resources(g.to_string(), v.to_string())),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let state = store.lock();
    let (def, namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => match state
            .resource(group, version, plural)
            .filter(|d| d.namespaced)
        {
            Some(def) => (def, Some(ns.to_string()), more),
            None => (
                state
                    .resource(group, version, "namespaces")
                    .ok_or_else(ApiError::no_route)?,
                None,
                &rest[1..],
            ),
        },
        [plural, more @ ..] => (
            state
                .resource(group, version, plural)
                .ok_or_else(ApiError::no_route)?,
            None,
            more,
        ),
        [] => return Err(ApiError::no_route()),
    };
    let (name, status) = match rest {
        [] => (None, false),
        [name] => (Some(name.to_string()), false),
        [name, "status"] if def.status_subresource => (Some(name.to_string()), true),
        _ => return Err(ApiError::no_route()),
    };
    if def.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::no_route());
    }
    Ok(Route::Resource(Target {
        def,
        namespace,
        name,
        status,
    }))
}

type Query = Vec<(String, String)>;

fn param<'a>(q: &'a Query, key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("1") | Some("true") | Some("True"))
}

/// The rendering `Accept` asks for: the first media range this server can answer.
fn format(headers: &HeaderMap, q: &Query) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    for range in accept.split(',') {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        let has = |p: &str| params.iter().any(|x| x.eq_ignore_ascii_case(p));
        if has("as=Table") && has("g=meta.k8s.io") {
            if has("v=v1") {
                return Format::Table(IncludeObject::parse(param(q, "includeObject")));
            }
            continue;
        }
        if (has("as=PartialObjectMetadata") || has("as=PartialObjectMetadataList"))
            && has("g=meta.k8s.io")
        {
            return Format::Metadata;
        }
        if params.iter().any(|p| p.contains("as=")) {
            continue;
        }
        return Format::Object;
    }
    Format::Object
}

fn selectors(def: &ResourceDef, q: &Query) -> Result<Selectors, ApiError> {
    Ok(Selectors {
        labels: LabelSelector::parse(param(q, "labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(
            param(q, "fieldSelector").unwrap_or_default(),
            def.is_custom(),
        )?,
    })
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn written(w: Written, ok: StatusCode) -> Response {
    let code = if w.created { StatusCode::CREATED } else { ok };
    with_warnings((code, Json(w.object)).into_response(), &w.warnings)
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let parsed: Result<Value, String> = if ct.contains("yaml") {
        serde_yaml::from_slice(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::bad_request(format!("the object provided is unrecognized: {e}")))
}

fn write_opts(q: &Query) -> Result<WriteOpts, ApiError> {
    Ok(WriteOpts {
        validation: FieldValidation::parse(param(q, "fieldValidation"))?,
        dry_run: param(q, "dryRun") == Some("All"),
    })
}

async fn dispatch(
    State(store): State<Arc<Store>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle(&store, &method, &uri, &headers, &body) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn handle(
    store: &Arc<Store>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let q: Query = serde_urlencoded::from_str(uri.query().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let discovery_only = |r: Result<Response, ApiError>| {
        if method == Method::GET {
            r
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    let target = match route(store, &segs)? {
        Route::ApiVersions => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1");
            return discovery_only(Ok(Json(discovery::api_versions(host)).into_response()));
        }
        Route::Groups => {
            return discovery_only(Ok(Json(discovery::api_group_list(
                store.lock().resources(),
            ))
            .into_response()))
        }
        Route::Group(g) => {
            let found = discovery::api_group(store.lock().resources(), &g)
                .ok_or_else(ApiError::no_route)?;
            return discovery_only(Ok(Json(found).into_response()));
        }
        Route::Resources(g, v) => {
            let found = discovery::resource_list(store.lock().resources(), &g, &v)
                .ok_or_else(ApiError::no_route)?;
            return discovery_only(Ok(Json(found).into_response()));
        }
        Route::Resource(t) => t,
    };
    let def = target.def.clone();
    let ns = target.namespace.as_deref();
    let verb = match (method.clone(), target.name.is_some()) {
        (Method::GET, false) if truthy(param(&q, "watch")) => "watch",
        (Method::GET, false) => "list",
        (Method::GET, true) => "get",
        (Method::POST, _) => "create",
        (Method::PUT, _) => "update",
        (Method::PATCH, _) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        _ => "other",
    };
    store.record(super::Access {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        verb: verb.to_string(),
        group: def.group.clone(),
        resource: if target.status {
            format!("{}/status", def.plural)
        } else {
            def.plural.clone()
        },
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    });
    match (method.clone(), target.name.as_deref()) {
        (Method::GET, None) if truthy(param(&q, "watch")) => {
            let rv = match param(&q, "resourceVersion").filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(s.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("resourceVersion: Invalid value: {s:?}: strconv.ParseUint: parsing {s:?}: invalid syntax"))
                })?),
            };
            let timeout = param(&q, "timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs);
            Ok(watch::watch(
                store.clone(),
                WatchRequest {
                    selectors: selectors(&def, &q)?,
                    def,
                    namespace: target.namespace.clone(),
                    resource_version: rv,
                    send_initial_events: truthy(param(&q, "sendInitialEvents")),
                    timeout,
                    format: format(headers, &q),
                },
            ))
        }
        (Method::GET, None) => list(store, &def, ns, &q, format(headers, &q)),
        (Method::GET, Some(name)) => {
            let state = store.lock();
            let obj = state
                .get(&def.storage_key(), ns.unwrap_or_default(), name)
                .map(|o| present(&def, o))
                .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, name))?;
            Ok(Json(render_one(&def, obj, format(headers, &q))).into_response())
        }
        (Method::POST, None) => {
            let obj = parse_body(headers, body)?;
            let w = ops::create(&mut store.lock(), &def, ns, obj, &write_opts(&q)?)?;
            Ok(written(
                Written {
                    object: present(&def, &w.object),
                    ..w
                },
                StatusCode::CREATED,
            ))
        }
        (Method::PUT, Some(name)) => {
            let obj = parse_body(headers, body)?;
            let w = ops::update(
                &mut store.lock(),
                &def,
                ns,
                name,
                obj,
                target.status,
                &write_opts(&q)?,
            )?;
            Ok(written(
                Written {
                    object: present(&def, &w.object),
                    ..w
                },
                StatusCode::OK,
            ))
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let ty = PatchType::from_content_type(ct, def.is_custom())?;
            if ty == PatchType::Apply && param(&q, "fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
            }
            let w = ops::patch(
                &mut store.lock(),
                &def,
                ns,
                name,
                ty,
                body,
                target.status,
                &write_opts(&q)?,
            )?;
            Ok(written(
                Written {
                    object: present(&def, &w.object),
                    ..w
                },
                StatusCode::OK,
            ))
        }
        (Method::DELETE, Some(name)) => {
            let opts = delete_opts(&q, body)?;
            let (code, obj) = delete::delete(&mut store.lock(), &def, ns, name, &opts)?;
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            Ok((code, Json(obj)).into_response())
        }
        (Method::DELETE, None) => delete_collection(store, &def, ns, &q, body),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn render_one(def: &ResourceDef, obj: Value, format: Format) -> Value {
    match format {
        Format::Object => obj,
        Format::Metadata => table::partial_metadata(&obj),
        Format::Table(include) => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            table::table(def, &[obj], rv, include, true)
        }
    }
}

/// LIST, with `limit` and `continue` (the token is the offset of the next item: pages are not
/// a snapshot, an approximation of the real server's consistent pages).
fn list(
    store: &Arc<Store>,
    def: &ResourceDef,
    ns: Option<&str>,
    q: &Query,
    format: Format,
) -> Result<Response, ApiError> {
    let sel = selectors(def, q)?;
    let state = store.lock();
    let all: Vec<Value> = state
        .list(&def.storage_key(), ns)
        .into_iter()
        .filter(|o| sel.matches(o))
        .map(|o| present(def, o))
        .collect();
    let rv = state.resource_version().to_string();
    drop(state);
    let offset = match param(q, "continue").filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request("continue key is not valid: illegal base64 data"))?,
    };
    let limit = param(q, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let end = limit.map_or(all.len(), |l| (offset + l).min(all.len()));
    let items: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .cloned()
        .collect();
    let mut metadata = json!({"resourceVersion": rv});
    if end < all.len() {
        metadata["continue"] = json!(end.to_string());
        metadata["remainingItemCount"] = json!(all.len() - end);
    }
    let out = match format {
        Format::Object => {
            json!({"kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": metadata, "items": items})
        }
        Format::Metadata => json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "items": items.iter().map(table::partial_metadata).collect::<Vec<_>>(),
        }),
        Format::Table(include) => {
            let mut t = table::table(def, &items, None, include, true);
            t["metadata"] = metadata;
            t
        }
    };
    Ok(Json(out).into_response())
}

fn delete_opts(q: &Query, body: &Bytes) -> Result<DeleteOpts, ApiError> {
    let mut opts = DeleteOpts {
        dry_run: param(q, "dryRun") == Some("All"),
        ..DeleteOpts::default()
    };
    if body.iter().any(|b| !b.is_ascii_whitespace()) {
        let o: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        let s = |p: &str| o.pointer(p).and_then(Value::as_str).map(str::to_string);
        opts.uid = s("/preconditions/uid");
        opts.resource_version = s("/preconditions/resourceVersion");
        if o.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.contains(&json!("All")))
        {
            opts.dry_run = true;
        }
    }
    Ok(opts)
}

fn delete_collection(
    store: &Arc<Store>,
    def: &ResourceDef,
    ns: Option<&str>,
    q: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let sel = selectors(def, q)?;
    let opts = delete_opts(q, body)?;
    let mut state = store.lock();
    let targets: Vec<(String, String)> = state
        .list(&def.storage_key(), ns)
        .into_iter()
        .filter(|o| sel.matches(o))
        .map(|o| {
            let s = |p: &str| {
                o.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            (s("/metadata/namespace"), s("/metadata/name"))
        })
        .collect();
    let mut items = Vec::new();
    for (o_ns, name) in targets {
        let o_ns = Some(o_ns.as_str()).filter(|n| !n.is_empty());
        let (_, obj) = delete::delete(
            &mut state,
            def,
            o_ns,
            &name,
            &DeleteOpts {
                uid: None,
                resource_version: None,
                ..opts.clone()
            },
        )?;
        items.push(obj);
    }
    let rv = state.resource_version().to_string();
    Ok(Json(json!({"kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": {"resourceVersion": rv}, "items": items})).into_response())
}
