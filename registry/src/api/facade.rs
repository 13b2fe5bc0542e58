//! The Hugging Face facade under `/hf`: enough of the Hub's HTTP API that
//! `HF_ENDPOINT=http://<agent>/hf` makes `huggingface_hub` download through the node's cache.
//!
//! Repo info, revision info, the recursive tree and `resolve` are answered from the same records
//! and blobs as `hf/…` and `hf-raw/…`, filling them through the same single-flight path. Errors
//! carry `X-Error-Code` as the Hub's do. No Xet header is ever sent: the client stays on HTTP.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use manta_hub::{Filter, HubError, HubKind};
use sha1::{Digest as _, Sha1};

use super::{Head, Query, Shared};
use crate::error::{ApiError, Wanted};
use crate::hub::{self, Form, Spec};
use crate::store::HubRevisionRecord;
use crate::upstream::UpstreamError;

const X_REPO_COMMIT: HeaderName = HeaderName::from_static("x-repo-commit");
const X_ERROR_CODE: HeaderName = HeaderName::from_static("x-error-code");
const X_ERROR_MESSAGE: HeaderName = HeaderName::from_static("x-error-message");
const X_LINKED_ETAG: HeaderName = HeaderName::from_static("x-linked-etag");
const X_LINKED_SIZE: HeaderName = HeaderName::from_static("x-linked-size");
/// Entries per tree page, as the Hub.
const TREE_PAGE: usize = 1000;

/// An error as the Hub sends it: status, `X-Error-Code`, `X-Error-Message`, `{"error": …}`.
struct HubHttpError {
    status: StatusCode,
    code: Option<&'static str>,
    message: String,
}

impl HubHttpError {
    fn new(status: StatusCode, code: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ApiError> for HubHttpError {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        if let ApiError::Upstream { error, .. } = &e {
            if let UpstreamError::Hub(h) = &**error {
                let (status, code) = match h {
                    HubError::RepoNotFound(_) => (StatusCode::NOT_FOUND, Some("RepoNotFound")),
                    HubError::RevisionNotFound(_) => {
                        (StatusCode::NOT_FOUND, Some("RevisionNotFound"))
                    }
                    HubError::EntryNotFound(_) => (StatusCode::NOT_FOUND, Some("EntryNotFound")),
                    HubError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, Some("GatedRepo")),
                    HubError::Denied(_) => (StatusCode::FORBIDDEN, Some("GatedRepo")),
                    HubError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, None),
                    HubError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, None),
                    _ => (StatusCode::BAD_GATEWAY, None),
                };
                return Self::new(status, code, h.to_string());
            }
        }
        let resp = e.into_response();
        Self::new(resp.status(), None, message)
    }
}

impl IntoResponse for HubHttpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(code) = self.code {
            h.insert(X_ERROR_CODE, HeaderValue::from_static(code));
        }
        // Header values must be visible ASCII: keep the message readable, drop the rest.
        let ascii: String = self
            .message
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(300)
            .collect();
        if let Ok(v) = HeaderValue::from_str(&ascii) {
            h.insert(X_ERROR_MESSAGE, v);
        }
        resp
    }
}

type FResult<T> = Result<T, HubHttpError>;

fn not_found(code: &'static str, msg: impl Into<String>) -> HubHttpError {
    HubHttpError::new(StatusCode::NOT_FOUND, Some(code), msg)
}

/// Decode `%XX` escapes of one path segment (or several, `/` kept).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A repo-relative path from a request: no empty, `.` or `..` segment, no backslash or NUL.
fn clean_path(p: &str) -> Option<String> {
    let p = percent_decode(p)?;
    let ok = !p.is_empty()
        && p.split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']));
    ok.then_some(p)
}

/// What a facade path asks for.
#[derive(Debug, PartialEq, Eq)]
enum FacadeRoute {
    RepoInfo {
        repo: String,
        revision: Option<String>,
    },
    Tree {
        repo: String,
        revision: String,
        path: Option<String>,
    },
    Resolve {
        repo: String,
        revision: String,
        path: String,
    },
}

/// Split a repo id (one or two segments) from the segments that follow it: the segment after
/// the id must be `keyword`.
fn split_repo<'a>(segs: &'a [&'a str], keyword: &str) -> Option<(String, &'a [&'a str])> {
    for n in [2, 1] {
        if segs.len() > n && segs[n] == keyword {
            let repo = segs[..n].join("/");
            return Some((repo, &segs[n + 1..]));
        }
    }
    None
}

fn parse_facade(path: &str) -> Option<FacadeRoute> {
    let rest = path.strip_prefix("/hf/")?;
    let segs: Vec<&str> = rest.split('/').collect();
    if let Some(api) = rest.strip_prefix("api/models/") {
        let segs: Vec<&str> = api.split('/').collect();
        if let Some((repo, after)) = split_repo(&segs, "revision") {
            let rev = percent_decode(&after.join("/"))?;
            return (!rev.is_empty()).then_some(FacadeRoute::RepoInfo {
                repo,
                revision: Some(rev),
            });
        }
        if let Some((repo, after)) = split_repo(&segs, "tree") {
            let (rev, p) = after.split_first()?;
            let path = if p.is_empty() || (p.len() == 1 && p[0].is_empty()) {
                None
            } else {
                Some(clean_path(&p.join("/"))?)
            };
            return Some(FacadeRoute::Tree {
                repo,
                revision: percent_decode(rev)?,
                path,
            });
        }
        return match segs.as_slice() {
            [a] | [a, ""] if !a.is_empty() => Some(FacadeRoute::RepoInfo {
                repo: a.to_string(),
                revision: None,
            }),
            [a, b] if !a.is_empty() && !b.is_empty() => Some(FacadeRoute::RepoInfo {
                repo: format!("{a}/{b}"),
                revision: None,
            }),
            _ => None,
        };
    }
    let (repo, after) = split_repo(&segs, "resolve")?;
    let (rev, p) = after.split_first()?;
    Some(FacadeRoute::Resolve {
        repo,
        revision: percent_decode(rev)?,
        path: clean_path(&p.join("/"))?,
    })
}

/// `ANY /hf/…`.
pub(super) async fn dispatch(State(st): State<Shared>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let head = Head {
        method: parts.method,
        headers: parts.headers,
        query: Query::parse(parts.uri.query()),
    };
    let route = parse_facade(parts.uri.path());
    let result = match (route, &head.method) {
        (Some(FacadeRoute::RepoInfo { repo, revision }), &Method::GET) => {
            repo_info(&st, &repo, revision.as_deref()).await
        }
        (
            Some(FacadeRoute::Tree {
                repo,
                revision,
                path,
            }),
            &Method::GET,
        ) => tree(&st, &repo, &revision, path.as_deref(), &head).await,
        (
            Some(FacadeRoute::Resolve {
                repo,
                revision,
                path,
            }),
            &Method::GET | &Method::HEAD,
        ) => resolve(&st, &repo, &revision, &path, &head).await,
        (Some(_), _) => Err(HubHttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            "method not allowed",
        )),
        (None, _) => Err(not_found(
            "RepoNotFound",
            "not a model route of this facade (datasets and spaces are not served)",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The record of a revision of a Hugging Face repo, resolving through the cache.
async fn record(st: &Shared, repo: &str, revision: &str) -> FResult<HubRevisionRecord> {
    let name = repo.to_ascii_lowercase();
    if !crate::names::valid_name(&hub::oci_repo(HubKind::Hf, Form::Raw, &name)) {
        return Err(not_found(
            "RepoNotFound",
            format!("{repo}: not a valid repo id"),
        ));
    }
    let tag = hub::tag_of_revision(revision);
    if !crate::names::valid_tag(&tag) {
        return Err(not_found(
            "RevisionNotFound",
            format!("{revision}: not a revision this facade can name"),
        ));
    }
    let spec = Spec {
        revision: revision.to_string(),
        filter: Filter::default(),
        repo: Some(repo.to_string()),
    };
    let rec = st
        .hubs
        .revision(HubKind::Hf, &name, &tag, Form::Raw, Some(spec))
        .await
        .map_err(|e| HubHttpError::from(ApiError::upstream(Wanted::Manifest, e)))?;
    if !rec.filter.is_all() {
        return Err(not_found(
            "RevisionNotFound",
            format!("{revision}: names a subset of the repo here"),
        ));
    }
    st.store
        .touch(&crate::store::hub_key(HubKind::Hf, &name, &tag));
    Ok(rec)
}

/// `GET /api/models/{repo}[/revision/{rev}]`.
async fn repo_info(st: &Shared, repo: &str, revision: Option<&str>) -> FResult<Response> {
    let rec = record(st, repo, revision.unwrap_or("main")).await?;
    let siblings: Vec<_> = rec
        .files
        .iter()
        .map(|f| serde_json::json!({ "rfilename": f.path, "size": f.size }))
        .collect();
    let body = serde_json::json!({
        "_id": rec.commit,
        "id": rec.repo,
        "modelId": rec.repo,
        "sha": rec.commit,
        "private": false,
        "gated": false,
        "disabled": false,
        "tags": [],
        "siblings": siblings,
    });
    Ok(json_response(&body, &rec.commit))
}

fn json_response(body: &serde_json::Value, commit: &str) -> Response {
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(commit) {
        h.insert(X_REPO_COMMIT, v);
    }
    resp
}

/// The git LFS pointer file of a blob, whose size the tree lists as `pointerSize`.
fn lfs_pointer_len(sha256: &str, size: u64) -> usize {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n").len()
}

/// Git's tree id of a directory, from its entries `(name, is_dir, id)`. Files are taken as mode
/// 100644 (the hub does not list modes).
fn git_tree_id(entries: &mut [(String, bool, String)]) -> String {
    // Git sorts tree entries by name, directories as if their name ended in '/'.
    entries.sort_by(|a, b| {
        let ka = if a.1 {
            format!("{}/", a.0)
        } else {
            a.0.clone()
        };
        let kb = if b.1 {
            format!("{}/", b.0)
        } else {
            b.0.clone()
        };
        ka.cmp(&kb)
    });
    let mut body = Vec::new();
    for (name, is_dir, id) in entries.iter() {
        body.extend_from_slice(if *is_dir { b"40000 " } else { b"100644 " });
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(&hex::decode(id).unwrap_or_default());
    }
    let mut h = Sha1::new();
    h.update(format!("tree {}\0", body.len()).as_bytes());
    h.update(&body);
    hex::encode(h.finalize())
}

/// The tree id of directory `dir` ("" for the root) of a record.
fn dir_id(rec: &HubRevisionRecord, dir: &str) -> String {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let mut entries: Vec<(String, bool, String)> = Vec::new();
    let mut subdirs = std::collections::BTreeSet::new();
    for f in &rec.files {
        let Some(rest) = f.path.strip_prefix(&prefix) else {
            continue;
        };
        match rest.split_once('/') {
            Some((d, _)) => {
                subdirs.insert(d.to_string());
            }
            None => entries.push((rest.to_string(), false, f.oid.clone().unwrap_or_default())),
        }
    }
    for d in subdirs {
        let id = dir_id(rec, &format!("{prefix}{d}"));
        entries.push((d, true, id));
    }
    git_tree_id(&mut entries)
}

/// `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=&cursor=`.
async fn tree(
    st: &Shared,
    repo: &str,
    revision: &str,
    path: Option<&str>,
    head: &Head,
) -> FResult<Response> {
    let rec = record(st, repo, revision).await?;
    let recursive = matches!(head.query.get("recursive"), Some("true" | "True" | "1"));
    let prefix = path.map(|p| format!("{p}/")).unwrap_or_default();
    if let Some(p) = path {
        if !rec.files.iter().any(|f| f.path.starts_with(&prefix)) {
            return Err(not_found(
                "EntryNotFound",
                format!("{p}: no such directory"),
            ));
        }
    }
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for f in &rec.files {
        let Some(rest) = f.path.strip_prefix(&prefix) else {
            continue;
        };
        // Directories between the listed one and the file.
        let parts: Vec<&str> = rest.split('/').collect();
        let depth = if recursive {
            parts.len() - 1
        } else {
            parts.len().min(2) - 1
        };
        for i in 0..depth {
            dirs.insert(format!("{prefix}{}", parts[..=i].join("/")));
        }
        if !recursive && parts.len() > 1 {
            continue;
        }
        let mut e = serde_json::json!({
            "type": "file",
            "oid": f.oid.clone().unwrap_or_default(),
            "size": f.size,
            "path": f.path,
        });
        if f.lfs {
            e["lfs"] = serde_json::json!({
                "oid": f.sha256,
                "size": f.size,
                "pointerSize": lfs_pointer_len(&f.sha256, f.size),
            });
        }
        entries.push(e);
    }
    for d in &dirs {
        entries.push(serde_json::json!({ "type": "directory", "oid": dir_id(&rec, d), "size": 0, "path": d }));
    }
    entries.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    let cursor: usize = head
        .query
        .get("cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let page: Vec<_> = entries
        .iter()
        .skip(cursor)
        .take(TREE_PAGE)
        .cloned()
        .collect();
    let mut resp = json_response(&serde_json::Value::Array(page), &rec.commit);
    if cursor + TREE_PAGE < entries.len() {
        let host = head
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let rev = encode_segment(revision);
        let sub = path.map(|p| format!("/{p}")).unwrap_or_default();
        let link = format!(
            "<http://{host}/hf/api/models/{repo}/tree/{rev}{sub}?recursive={recursive}&cursor={}>; rel=\"next\"",
            cursor + TREE_PAGE
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `HEAD|GET /{repo}/resolve/{rev}/{path}`: the file, from the cache or through it.
async fn resolve(
    st: &Shared,
    repo: &str,
    revision: &str,
    path: &str,
    head: &Head,
) -> FResult<Response> {
    let rec = record(st, repo, revision).await?;
    let Some(f) = rec.files.iter().find(|f| f.path == path) else {
        return Err(not_found(
            "EntryNotFound",
            format!("{path} does not exist at {revision}"),
        ));
    };
    let digest = crate::digest::parse(&format!("sha256:{}", f.sha256))
        .map_err(|e| HubHttpError::new(StatusCode::BAD_GATEWAY, None, e.to_string()))?
        .0;
    let mut resp = super::hub::file_blob(st, &digest, head)
        .await
        .map_err(HubHttpError::from)?;
    let etag = if f.lfs {
        f.sha256.clone()
    } else {
        f.oid.clone().unwrap_or_else(|| f.sha256.clone())
    };
    let h: &mut HeaderMap = resp.headers_mut();
    h.remove(super::DOCKER_CONTENT_DIGEST);
    h.remove(header::CACHE_CONTROL);
    let quoted = HeaderValue::from_str(&format!("\"{etag}\"")).ok();
    if let Some(v) = quoted {
        h.insert(header::ETAG, v.clone());
        if f.lfs {
            h.insert(X_LINKED_ETAG, v);
            h.insert(X_LINKED_SIZE, HeaderValue::from(f.size));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&rec.commit) {
        h.insert(X_REPO_COMMIT, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            parse_facade("/hf/api/models/org/name/revision/refs%2Fpr%2F1"),
            Some(FacadeRoute::RepoInfo {
                repo: "org/name".into(),
                revision: Some("refs/pr/1".into())
            })
        );
        assert_eq!(
            parse_facade("/hf/api/models/gpt2"),
            Some(FacadeRoute::RepoInfo {
                repo: "gpt2".into(),
                revision: None
            })
        );
        assert_eq!(
            parse_facade("/hf/api/models/gpt2/tree/main"),
            Some(FacadeRoute::Tree {
                repo: "gpt2".into(),
                revision: "main".into(),
                path: None
            })
        );
        assert_eq!(
            parse_facade("/hf/api/models/a/b/tree/main/1_Pooling"),
            Some(FacadeRoute::Tree {
                repo: "a/b".into(),
                revision: "main".into(),
                path: Some("1_Pooling".into())
            })
        );
        assert_eq!(
            parse_facade("/hf/a/b/resolve/abc/1_Pooling/config.json"),
            Some(FacadeRoute::Resolve {
                repo: "a/b".into(),
                revision: "abc".into(),
                path: "1_Pooling/config.json".into()
            })
        );
        assert_eq!(
            parse_facade("/hf/gpt2/resolve/main/config.json"),
            Some(FacadeRoute::Resolve {
                repo: "gpt2".into(),
                revision: "main".into(),
                path: "config.json".into()
            })
        );
        assert_eq!(parse_facade("/hf/a/b/resolve/main/../x"), None);
        assert_eq!(parse_facade("/hf/a/b/resolve/main/%2e%2e/x"), None);
        assert_eq!(parse_facade("/hf/a/b/resolve/main/"), None);
    }

    #[test]
    fn git_tree_ids() {
        // `git mktree` of one empty blob named "a": 496d6428b9cf92981dc9495211e6e1120fb6f2ba.
        let mut e = vec![(
            "a".to_string(),
            false,
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391".to_string(),
        )];
        assert_eq!(
            git_tree_id(&mut e),
            "496d6428b9cf92981dc9495211e6e1120fb6f2ba"
        );
    }

    #[test]
    fn pointer_len() {
        // version line (43) + oid line (75) + "size 90868376\n" (14) + … = 133 bytes.
        assert_eq!(lfs_pointer_len(&"0".repeat(64), 90868376), 133);
    }
}
