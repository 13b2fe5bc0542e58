//! The main host: the Hugging Face Hub routes (`/api/models…`, `/{repo}/resolve/…`), and the
//! dispatch to the ModelScope routes (`/api/v1/models/…`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::model::{PreparedCommit, PreparedRepo, RefKind, TreeEntry};
use super::serve::{
    content_type, file_body, pct_decode, pct_encode, record, set, RequestInfo, Shared,
};
use super::{ms, FixtureHost};

const X_ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");
const X_ERROR_MESSAGE: HeaderName = HeaderName::from_static("x-error-message");
const X_REPO_COMMIT: HeaderName = HeaderName::from_static("x-repo-commit");
const X_LINKED_ETAG: HeaderName = HeaderName::from_static("x-linked-etag");
const X_LINKED_SIZE: HeaderName = HeaderName::from_static("x-linked-size");

pub(crate) async fn main_host(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let info = RequestInfo::of(&req);
    let body = if info.method == Method::POST {
        axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap_or_default()
    } else {
        Bytes::new()
    };
    let resp = route(&s, &info, &body).await;
    record(&s, FixtureHost::Main, &info, resp.status());
    resp
}

async fn route(s: &Arc<Shared>, info: &RequestInfo, body: &Bytes) -> Response {
    let path = info.path.as_str();
    if let Some(rest) = path.strip_prefix("/api/v1/models/") {
        return ms::handle(s, info, rest).await;
    }
    if path == "/api/models" || path == "/api/models/" {
        return list_models(s, info);
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        return api_model(s, info, rest, body);
    }
    if path.starts_with("/api/") {
        return hf_error(
            StatusCode::NOT_FOUND,
            None,
            "Sorry, we can't find the page you are looking for.",
        );
    }
    resolve(s, info).await
}

/// An error as the hub sends it: `X-Error-Code` (when known), `X-Error-Message`, `{"error"}`.
pub(crate) fn hf_error(status: StatusCode, code: Option<&str>, message: &str) -> Response {
    let mut resp = (status, axum::Json(json!({ "error": message }))).into_response();
    let h = resp.headers_mut();
    if let Some(code) = code {
        set(h, X_ERROR_CODE, code);
    }
    set(h, X_ERROR_MESSAGE, message);
    resp
}

fn repo_not_found(s: &Shared, info: &RequestInfo) -> Response {
    let anonymous = !info.headers.contains_key(header::AUTHORIZATION);
    let status = if s.opts.anonymous_missing_repo_401 && anonymous {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::NOT_FOUND
    };
    hf_error(status, Some("RepoNotFound"), "Repository not found")
}

fn revision_not_found(rev: &str) -> Response {
    hf_error(
        StatusCode::NOT_FOUND,
        Some("RevisionNotFound"),
        &format!("Invalid rev id: {rev}"),
    )
}

fn entry_not_found(commit: &str, message: &str) -> Response {
    let mut resp = hf_error(StatusCode::NOT_FOUND, Some("EntryNotFound"), message);
    set(resp.headers_mut(), X_REPO_COMMIT, commit);
    resp
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// For a gated repo: `None` when the request carries the approved token, else why not.
pub(crate) fn gate_refusal(
    s: &Shared,
    repo: &PreparedRepo,
    headers: &HeaderMap,
) -> Option<(StatusCode, String)> {
    if !repo.gated {
        return None;
    }
    match bearer(headers) {
        None => Some((
            StatusCode::UNAUTHORIZED,
            format!(
                "Access to model {} is restricted. You must have access to it and be authenticated to access it. Please log in.",
                repo.id
            ),
        )),
        Some(t) if s.opts.token.as_deref() == Some(t) => None,
        Some(_) => Some((
            StatusCode::FORBIDDEN,
            format!(
                "Access to model {} is restricted and you are not in the authorized list. Visit {}/{} to ask for access.",
                repo.id, s.main_base, repo.id
            ),
        )),
    }
}

/// Split raw path segments into a repo id and what follows it. The id has two segments or one
/// (`gpt2`); what follows starts with one of `keywords` (or is empty when `bare_ok`). An id that
/// names an existing repo wins; otherwise the two-segment reading.
fn split_repo<'a>(
    s: &Shared,
    segs: &'a [&'a str],
    keywords: &[&str],
    bare_ok: bool,
) -> Option<(String, &'a [&'a str])> {
    let fits = |n: usize| match segs.get(n) {
        None => bare_ok && segs.len() == n,
        Some(k) => keywords.contains(k),
    };
    let id = |n: usize| -> Option<String> {
        let parts: Option<Vec<String>> = segs[..n].iter().map(|p| pct_decode(p)).collect();
        parts.map(|p| p.join("/"))
    };
    let two = (segs.len() >= 2 && fits(2)).then(|| id(2)).flatten();
    let one = (!segs.is_empty() && fits(1)).then(|| id(1)).flatten();
    match (two, one) {
        (Some(t), _) if s.repo(&t).is_some() => Some((t, &segs[2..])),
        (_, Some(o)) if s.repo(&o).is_some() => Some((o, &segs[1..])),
        (Some(t), _) => Some((t, &segs[2..])),
        (None, Some(o)) => Some((o, &segs[1..])),
        (None, None) => None,
    }
}

/// The revision at the start of `segs` (percent-encoded `refs%2Fpr%2F1`, or written out
/// `refs/pr/1`), and the segments after it.
fn take_revision<'a>(repo: &PreparedRepo, segs: &'a [&'a str]) -> Option<(String, &'a [&'a str])> {
    let first = pct_decode(segs.first()?)?;
    if !repo.knows_revision(&first) && first == "refs" && segs.len() >= 3 {
        let joined: Option<Vec<String>> = segs[..3].iter().map(|p| pct_decode(p)).collect();
        if let Some(joined) = joined.map(|j| j.join("/")) {
            if repo.knows_revision(&joined) {
                return Some((joined, &segs[3..]));
            }
        }
    }
    Some((first, &segs[1..]))
}

fn decoded_path(segs: &[&str]) -> Option<String> {
    let parts: Option<Vec<String>> = segs.iter().map(|p| pct_decode(p)).collect();
    parts.map(|p| p.join("/"))
}

fn truthy(v: Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "True" | "1"))
}

/// `YYYY-MM-DDTHH:MM:SS.000Z` for seconds since the epoch.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn gated_value(repo: &PreparedRepo) -> Value {
    if repo.gated {
        json!("manual")
    } else {
        json!(false)
    }
}

fn model_json(repo: &PreparedRepo, commit: &PreparedCommit, blobs: bool) -> Value {
    let siblings: Vec<Value> = commit
        .files
        .values()
        .map(|f| {
            let mut v = json!({ "rfilename": f.path });
            if blobs {
                v["size"] = json!(f.size);
                v["blobId"] = json!(f.git_oid);
                if f.lfs {
                    v["lfs"] = json!({
                        "sha256": f.sha256,
                        "size": f.size,
                        "pointerSize": f.pointer_size,
                    });
                }
            }
            v
        })
        .collect();
    let used: u64 = commit.files.values().map(|f| f.size).sum();
    let created = repo
        .commits
        .values()
        .map(|c| c.date)
        .min()
        .unwrap_or(commit.date);
    json!({
        "_id": repo.object_id,
        "id": repo.id,
        "modelId": repo.id,
        "author": repo.owner(),
        "sha": commit.id,
        "lastModified": rfc3339(commit.date),
        "createdAt": rfc3339(created),
        "private": false,
        "gated": gated_value(repo),
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "spaces": [],
        "usedStorage": used,
    })
}

fn list_entry(repo: &PreparedRepo) -> Value {
    let created = repo.commits.values().map(|c| c.date).min().unwrap_or(0);
    json!({
        "_id": repo.object_id,
        "id": repo.id,
        "modelId": repo.id,
        "likes": 0,
        "trendingScore": 0,
        "private": false,
        "gated": gated_value(repo),
        "downloads": 0,
        "tags": [],
        "createdAt": rfc3339(created),
    })
}

/// One page of `items` (the `cursor` parameter is an offset), with a `Link: <…>; rel="next"`
/// to the next page, an absolute URL carrying the request's other parameters.
fn paginate(s: &Shared, info: &RequestInfo, items: Vec<Value>, page: usize) -> Response {
    let offset = match info.param("cursor") {
        None => 0,
        Some(c) => match hex::decode(&c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| {
                t.strip_prefix("offset:")
                    .and_then(|n| n.parse::<usize>().ok())
            }) {
            Some(n) => n,
            None => return hf_error(StatusCode::BAD_REQUEST, None, "Invalid cursor"),
        },
    };
    let page = page.max(1);
    let end = (offset + page).min(items.len());
    let slice: Vec<Value> = items
        .get(offset..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut resp = axum::Json(Value::Array(slice)).into_response();
    if end < items.len() {
        let mut params: Vec<(String, String)> = info
            .params()
            .into_iter()
            .filter(|(k, _)| k != "cursor")
            .collect();
        params.push(("cursor".into(), hex::encode(format!("offset:{end}"))));
        let query = serde_urlencoded::to_string(&params).unwrap_or_default();
        let link = format!("<{}{}?{query}>; rel=\"next\"", s.main_base, info.path);
        set(resp.headers_mut(), header::LINK, &link);
    }
    resp
}

fn list_models(s: &Shared, info: &RequestInfo) -> Response {
    let search = info.param("search").map(|q| q.to_lowercase());
    let author = info.param("author");
    let limit = info.param("limit").and_then(|l| l.parse::<usize>().ok());
    let mut items: Vec<Value> = s
        .repos
        .iter()
        .filter(|r| {
            search
                .as_ref()
                .is_none_or(|q| r.id.to_lowercase().contains(q.as_str()))
        })
        .filter(|r| {
            author
                .as_ref()
                .is_none_or(|a| r.owner().is_some_and(|o| o.eq_ignore_ascii_case(a)))
        })
        .map(list_entry)
        .collect();
    if let Some(l) = limit {
        items.truncate(l);
    }
    paginate(s, info, items, s.opts.page_size)
}

fn api_model(s: &Shared, info: &RequestInfo, rest: &str, body: &Bytes) -> Response {
    let segs: Vec<&str> = rest.split('/').collect();
    let Some((id, tail)) = split_repo(s, &segs, &["revision", "tree", "paths-info", "refs"], true)
    else {
        return repo_not_found(s, info);
    };
    let Some(repo) = s.repo(&id) else {
        return repo_not_found(s, info);
    };
    let get = info.method == Method::GET;
    match tail.split_first() {
        None if get => {
            let Some(commit) = repo.default_branch().and_then(|b| repo.resolve(&b.name)) else {
                return revision_not_found("main");
            };
            axum::Json(model_json(repo, commit, truthy(info.param("blobs")))).into_response()
        }
        Some((&"revision", rev)) if get && !rev.is_empty() => {
            let Some(rev) = decoded_path(rev) else {
                return revision_not_found(rest);
            };
            match repo.resolve(&rev) {
                Some(c) => {
                    axum::Json(model_json(repo, c, truthy(info.param("blobs")))).into_response()
                }
                None => revision_not_found(&rev),
            }
        }
        Some((&"tree", after)) if get && !after.is_empty() => tree(s, info, repo, after),
        Some((&"paths-info", after)) if info.method == Method::POST && !after.is_empty() => {
            paths_info(info, repo, after, body)
        }
        Some((&"refs", [])) if get => refs(info, repo),
        _ => hf_error(StatusCode::NOT_FOUND, None, "Not Found"),
    }
}

fn entry_json(e: &TreeEntry<'_>, commit: &PreparedCommit, expand: bool) -> Value {
    let mut v = match e {
        TreeEntry::Dir { path, oid } => {
            json!({"type": "directory", "oid": oid, "size": 0, "path": path})
        }
        TreeEntry::File(f) => {
            let mut v = json!({"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path});
            if f.lfs {
                v["lfs"] = json!({"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size});
            }
            v
        }
    };
    if expand {
        v["lastCommit"] =
            json!({"id": commit.id, "title": commit.title, "date": rfc3339(commit.date)});
    }
    v
}

fn tree(s: &Shared, info: &RequestInfo, repo: &PreparedRepo, after: &[&str]) -> Response {
    let Some((rev, path_segs)) = take_revision(repo, after) else {
        return revision_not_found("");
    };
    let Some(commit) = repo.resolve(&rev) else {
        return revision_not_found(&rev);
    };
    let Some(base) = decoded_path(path_segs) else {
        return entry_not_found(&commit.id, "Invalid path");
    };
    let base = base.trim_matches('/');
    let recursive = truthy(info.param("recursive"));
    let expand = truthy(info.param("expand"));
    let Some(entries) = commit.tree(base, recursive) else {
        return entry_not_found(&commit.id, &format!("{base} does not exist on \"{rev}\""));
    };
    let items: Vec<Value> = entries
        .iter()
        .map(|e| entry_json(e, commit, expand))
        .collect();
    let page = if expand {
        s.opts.page_size.min(50)
    } else {
        s.opts.page_size
    };
    paginate(s, info, items, page)
}

fn paths_info(info: &RequestInfo, repo: &PreparedRepo, after: &[&str], body: &Bytes) -> Response {
    let Some(rev) = decoded_path(after) else {
        return revision_not_found("");
    };
    let Some(commit) = repo.resolve(&rev) else {
        return revision_not_found(&rev);
    };
    let is_json = info
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (paths, expand) = if is_json {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let paths = v["paths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (paths, v["expand"].as_bool().unwrap_or(false))
    } else {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        let paths: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "paths")
            .map(|(_, v)| v.clone())
            .collect();
        let expand = pairs
            .iter()
            .any(|(k, v)| k == "expand" && matches!(v.as_str(), "true" | "True" | "1"));
        (paths, expand)
    };
    let items: Vec<Value> = paths
        .iter()
        .filter_map(|p| commit.entry(p.trim_matches('/')))
        .map(|e| entry_json(&e, commit, expand))
        .collect();
    axum::Json(Value::Array(items)).into_response()
}

fn refs(info: &RequestInfo, repo: &PreparedRepo) -> Response {
    let of = |kind: RefKind, prefix: &str| -> Vec<Value> {
        repo.refs
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| {
                let full = if kind == RefKind::PullRequest {
                    r.name.clone()
                } else {
                    format!("{prefix}{}", r.name)
                };
                json!({"name": r.name, "ref": full, "targetCommit": r.commit})
            })
            .collect()
    };
    let mut v = json!({
        "branches": of(RefKind::Branch, "refs/heads/"),
        "converts": [],
        "tags": of(RefKind::Tag, "refs/tags/"),
    });
    if truthy(info.param("include_prs")) {
        v["pullRequests"] = json!(of(RefKind::PullRequest, ""));
    }
    axum::Json(v).into_response()
}

/// `HEAD|GET /{repo}/resolve/{revision}/{path}`.
async fn resolve(s: &Arc<Shared>, info: &RequestInfo) -> Response {
    let raw = info.path.trim_start_matches('/');
    let segs: Vec<&str> = raw.split('/').collect();
    let Some((id, tail)) = split_repo(s, &segs, &["resolve"], false) else {
        return hf_error(
            StatusCode::NOT_FOUND,
            None,
            "Sorry, we can't find the page you are looking for.",
        );
    };
    if info.method != Method::GET && info.method != Method::HEAD {
        return hf_error(StatusCode::METHOD_NOT_ALLOWED, None, "Method not allowed");
    }
    let Some(repo) = s.repo(&id) else {
        return repo_not_found(s, info);
    };
    if let Some((status, message)) = gate_refusal(s, repo, &info.headers) {
        return hf_error(status, Some("GatedRepo"), &message);
    }
    let Some((rev, path_segs)) = take_revision(repo, &tail[1..]) else {
        return revision_not_found("");
    };
    let Some(commit) = repo.resolve(&rev) else {
        return revision_not_found(&rev);
    };
    let Some(file) = decoded_path(path_segs).and_then(|p| commit.files.get(&p).cloned()) else {
        return entry_not_found(&commit.id, "Entry not found");
    };
    let name = file.path.rsplit('/').next().unwrap_or(&file.path);
    let mut extra = HeaderMap::new();
    set(&mut extra, X_REPO_COMMIT, &commit.id);
    set(
        &mut extra,
        header::CONTENT_DISPOSITION,
        &format!(
            "inline; filename*=UTF-8''{}; filename=\"{name}\";",
            pct_encode(name, false)
        ),
    );
    if file.lfs {
        let location = s.cdn_url(&repo.id, &file);
        let etag = format!("\"{}\"", file.sha256);
        set(&mut extra, header::LOCATION, &location);
        set(&mut extra, header::ETAG, &etag);
        set(&mut extra, X_LINKED_ETAG, &etag);
        set(&mut extra, X_LINKED_SIZE, &file.size.to_string());
        set(
            &mut extra,
            header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        );
        let body = if info.method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(format!("Found. Redirecting to {location}"))
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::FOUND;
        *resp.headers_mut() = extra;
        return resp;
    }
    set(&mut extra, header::ETAG, &format!("\"{}\"", file.git_oid));
    set(&mut extra, header::CONTENT_TYPE, content_type(&file.path));
    file_body(s, &repo.id, &file, &info.method, &info.headers, extra).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00.000Z");
    }
}
