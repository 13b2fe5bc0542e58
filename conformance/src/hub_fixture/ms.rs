//! The ModelScope routes on the main host, under `/api/v1/models/{owner}/{name}`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::hf::gate_refusal;
use super::model::{PreparedCommit, PreparedRepo, RefKind, TreeEntry};
use super::serve::{file_body, pct_decode, pct_encode, set, RequestInfo, Shared};
use crate::upstream_fixtures::random_hex;

/// `{"Code":200,"Data":…,"Message":"success","RequestId":…,"Success":true}`
fn ok(data: Value) -> Response {
    axum::Json(json!({
        "Code": 200,
        "Data": data,
        "Message": "success",
        "RequestId": random_hex(16),
        "Success": true,
    }))
    .into_response()
}

/// An error envelope with `Code` = the HTTP status (the real service uses its own numeric
/// codes there; clients key on the HTTP status and `Success`).
fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "Code": status.as_u16(),
            "Data": null,
            "Message": message,
            "RequestId": random_hex(16),
            "Success": false,
        })),
    )
        .into_response()
}

/// ModelScope's default branch is `master`; a repository that has `main` and no `master`
/// shows `main`'s commit as `master` too.
fn resolve<'a>(repo: &'a PreparedRepo, revision: &str) -> Option<&'a PreparedCommit> {
    repo.resolve(revision).or_else(|| {
        (revision == "master" && repo.ref_named("master").is_none())
            .then(|| repo.resolve("main"))
            .flatten()
    })
}

pub(crate) async fn handle(s: &Arc<Shared>, info: &RequestInfo, rest: &str) -> Response {
    let segs: Vec<&str> = rest.split('/').collect();
    let (Some(owner), Some(name)) = (
        segs.first().and_then(|o| pct_decode(o)),
        segs.get(1).and_then(|n| pct_decode(n)),
    ) else {
        return error(StatusCode::NOT_FOUND, "model not found");
    };
    let id = format!("{owner}/{name}");
    let Some(repo) = s.repo(&id) else {
        return error(StatusCode::NOT_FOUND, &format!("model {id} not found"));
    };
    let get = info.method == Method::GET;
    match &segs[2..] {
        [] if get => ok(json!({
            "Name": name,
            "Path": owner,
            "ChineseName": "",
            "Description": "",
            "Downloads": 0,
            "Stars": 0,
            "Tags": [],
        })),
        ["revisions"] if get => revisions(repo),
        ["repo", "files"] if get => files(info, repo),
        ["repo"] if get || info.method == Method::HEAD => download(s, info, repo).await,
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn revisions(repo: &PreparedRepo) -> Response {
    let entry = |name: &str, commit: &str| {
        let date = repo.commits.get(commit).map(|c| c.date).unwrap_or(0);
        json!({"Revision": name, "CreatedAt": date, "CommitId": commit})
    };
    let mut branches: Vec<Value> = repo
        .refs
        .iter()
        .filter(|r| r.kind == RefKind::Branch)
        .map(|r| entry(&r.name, &r.commit))
        .collect();
    if repo.ref_named("master").is_none() {
        if let Some(main) = repo.ref_named("main") {
            branches.insert(0, entry("master", &main.commit));
        }
    }
    let tags: Vec<Value> = repo
        .refs
        .iter()
        .filter(|r| r.kind == RefKind::Tag)
        .map(|r| entry(&r.name, &r.commit))
        .collect();
    ok(json!({"RevisionMap": {"Branches": branches, "Tags": tags}}))
}

fn files(info: &RequestInfo, repo: &PreparedRepo) -> Response {
    let revision = info.param("Revision").unwrap_or_else(|| "master".into());
    let Some(commit) = resolve(repo, &revision) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model: {} has no revision: {revision}", repo.id),
        );
    };
    let recursive = matches!(
        info.param("Recursive").as_deref(),
        Some("True" | "true" | "1")
    );
    let root = info.param("Root").unwrap_or_default();
    let root = root.trim_matches('/');
    let Some(entries) = commit.tree(root, recursive) else {
        return error(StatusCode::NOT_FOUND, &format!("{root} not found"));
    };
    let common = |v: &mut Value| {
        v["Revision"] = json!(commit.id);
        v["CommitMessage"] = json!(commit.title);
        v["CommittedDate"] = json!(commit.date);
        v["CommitterName"] = json!("fixture");
        v["InCheck"] = json!(false);
    };
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = match e {
                TreeEntry::Dir { path, oid } => json!({
                    "Id": oid,
                    "Name": path.rsplit('/').next().unwrap_or(path),
                    "Path": path,
                    "Type": "tree",
                    "Size": 0,
                    "Sha256": "",
                    "IsLFS": false,
                    "Mode": "16384",
                }),
                TreeEntry::File(f) => json!({
                    "Id": f.git_oid,
                    "Name": f.path.rsplit('/').next().unwrap_or(&f.path),
                    "Path": f.path,
                    "Type": "blob",
                    "Size": f.size,
                    "Sha256": f.sha256,
                    "IsLFS": f.lfs,
                    "Mode": "33188",
                }),
            };
            common(&mut v);
            v
        })
        .collect();
    ok(json!({"Files": list}))
}

async fn download(s: &Arc<Shared>, info: &RequestInfo, repo: &PreparedRepo) -> Response {
    if let Some((status, message)) = gate_refusal(s, repo, &info.headers) {
        return error(status, &message);
    }
    let revision = info.param("Revision").unwrap_or_else(|| "master".into());
    let Some(commit) = resolve(repo, &revision) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model: {} has no revision: {revision}", repo.id),
        );
    };
    let path = info.param("FilePath").unwrap_or_default();
    let Some(file) = commit.files.get(path.trim_start_matches('/')).cloned() else {
        return error(StatusCode::NOT_FOUND, &format!("file {path} not found"));
    };
    if file.lfs && s.opts.modelscope_lfs_redirect {
        let location = s.cdn_url(&repo.id, &file);
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::FOUND;
        set(resp.headers_mut(), header::LOCATION, &location);
        return resp;
    }
    let name = file.path.rsplit('/').next().unwrap_or(&file.path);
    let mut extra = HeaderMap::new();
    set(&mut extra, header::CONTENT_TYPE, "application/octet-stream");
    set(
        &mut extra,
        header::CONTENT_DISPOSITION,
        &format!("attachment; filename*=UTF-8''{}", pct_encode(name, false)),
    );
    file_body(s, &repo.id, &file, &info.method, &info.headers, extra).await
}
