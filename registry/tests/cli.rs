//! `manta prefetch` and `manta ls` against a mock of the agent's admin API on a real socket.
//! Arguments go through clap as a user types them, embedded as subcommands as `main` does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use manta_registry::cli::{self, ClientError, LsArgs, PrefetchArgs};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    Prefetch(PrefetchArgs),
    Ls(LsArgs),
}

/// The admin API, walking each job through pending → running → its end:
/// `org/gated` fails, `org/slow` never ends, `org/missing` is refused, the rest succeed.
#[derive(Default)]
struct Mock {
    /// Job id → (the POSTed body, the number of GETs so far).
    jobs: Mutex<HashMap<String, (Value, u32)>>,
    polled: Notify,
}

const TOTAL: u64 = 1000;

fn job(id: &str, request: &Value, state: &str) -> Value {
    let repo = request["repo"].as_str().unwrap_or_default();
    let revision = request["revision"].as_str().unwrap_or("main");
    let forms = request
        .get("forms")
        .cloned()
        .unwrap_or(json!(["raw", "image"]));
    let mut references = serde_json::Map::new();
    for form in forms.as_array().into_iter().flatten() {
        let prefix = if form == "raw" { "hf-raw" } else { "hf" };
        let tag = revision.replace('/', "-");
        let reference = format!("{prefix}/{}:{tag}", repo.to_lowercase());
        references.insert(
            form.as_str().unwrap_or_default().to_owned(),
            reference.into(),
        );
    }
    let (done, file_states) = match state {
        "pending" => (0, ["pending", "pending"]),
        "running" => (500, ["done", "running"]),
        "failed" => (100, ["done", "failed"]),
        _ => (TOTAL, ["done", "done"]),
    };
    json!({
        "id": id,
        "state": state,
        "hub": request["hub"],
        "repo": repo,
        "revision": revision,
        "commit": (state == "succeeded").then_some("0123456789abcdef0123456789abcdef01234567"),
        "bytesDone": done,
        "bytesTotal": TOTAL,
        "files": [
            {"path": "config.json", "size": 100, "bytesDone": 100, "state": file_states[0]},
            {"path": "model.safetensors", "size": 900, "bytesDone": done.saturating_sub(100), "state": file_states[1]},
        ],
        "references": references,
        "error": (state == "failed").then_some("hf answered 401: repo is gated"),
    })
}

async fn start_job(State(mock): State<Arc<Mock>>, Json(request): Json<Value>) -> Response {
    let repo = request["repo"].as_str().unwrap_or_default();
    if repo == "org/missing" {
        let body = json!({"errors": [{
            "code": "NAME_UNKNOWN",
            "message": "repository org/missing not found on hf",
            "detail": null,
        }]});
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let id = repo.replace('/', "-");
    let answer = job(&id, &request, "pending");
    mock.jobs.lock().expect("lock").insert(id, (request, 0));
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

async fn get_job(State(mock): State<Arc<Mock>>, Path(id): Path<String>) -> Response {
    let (request, polls) = {
        let mut jobs = mock.jobs.lock().expect("lock");
        let Some((request, polls)) = jobs.get_mut(&id) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        *polls += 1;
        (request.clone(), *polls)
    };
    mock.polled.notify_one();
    let state = match (id.as_str(), polls) {
        ("org-slow", _) | (_, 1) => "running",
        ("org-gated", _) => "failed",
        _ => "succeeded",
    };
    Json(job(&id, &request, state)).into_response()
}

async fn cache() -> Json<Value> {
    let entry = |hub: &str, repo: &str, revision: &str, cached: u64, forms: Value| {
        json!({
            "hub": hub, "repo": repo, "revision": revision, "tag": revision,
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "files": 3, "size": 1_572_864, "cachedBytes": cached, "forms": forms,
            "references": {}, "resolvedAt": 1_700_000_000,
        })
    };
    Json(json!({
        "revisions": [
            entry("ms", "qwen/Qwen2.5-0.5B-Instruct", "master", 1_572_864, json!(["image"])),
            entry("hf", "Qwen/Qwen2.5-0.5B-Instruct", "v2", 786_432, json!(["raw", "image"])),
            entry("hf", "Qwen/Qwen2.5-0.5B-Instruct", "main", 1_572_864, json!(["raw"])),
        ],
        "space": {"capacity": 1u64 << 30, "used": 3_932_160, "reserved": 0, "pinned": 0,
            "highWatermark": 966_367_641, "lowWatermark": 858_993_459},
        "entries": [],
    }))
}

/// Serve the mock on 127.0.0.1:0; returns it and its base URL.
async fn serve() -> (Arc<Mock>, String) {
    let mock = Arc::new(Mock::default());
    let app = Router::new()
        .route("/manta/v1/prefetch", post(start_job))
        .route("/manta/v1/prefetch/{id}", get(get_job))
        .route("/manta/v1/cache", get(cache))
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (mock, format!("http://{addr}"))
}

fn prefetch_args(args: &[&str]) -> PrefetchArgs {
    match Cli::try_parse_from([&["manta", "prefetch"], args].concat()) {
        Ok(Cli {
            command: Command::Prefetch(a),
        }) => a,
        Ok(_) => panic!("not a prefetch"),
        Err(e) => panic!("{e}"),
    }
}

async fn prefetch(args: &[&str]) -> (Result<(), ClientError>, String) {
    let mut out = Vec::new();
    let r = cli::prefetch(prefetch_args(args), &mut out, std::future::pending()).await;
    (r, String::from_utf8(out).expect("utf-8"))
}

#[tokio::test]
async fn cli_prefetch_follows_a_job_to_success() {
    let (mock, server) = serve().await;
    let (r, out) = prefetch(&[
        "hf://Qwen/Qwen2.5-0.5B-Instruct@refs/pr/1",
        "--include=*.json",
        "--include",
        "*.safetensors",
        "--exclude",
        "*.bin",
        "--form",
        "image,raw",
        "--server",
        &server,
    ])
    .await;
    r.unwrap();
    let host = server.trim_start_matches("http://");
    assert_eq!(
        out,
        format!(
            "raw    {host}/hf-raw/qwen/qwen2.5-0.5b-instruct:refs-pr-1\n\
             image  {host}/hf/qwen/qwen2.5-0.5b-instruct:refs-pr-1\n"
        )
    );
    let jobs = mock.jobs.lock().unwrap();
    let (request, polls) = &jobs["Qwen-Qwen2.5-0.5B-Instruct"];
    assert_eq!(
        *request,
        json!({
            "hub": "hf",
            "repo": "Qwen/Qwen2.5-0.5B-Instruct",
            "revision": "refs/pr/1",
            "allowPatterns": ["*.json", "*.safetensors"],
            "ignorePatterns": ["*.bin"],
            "forms": ["raw", "image"],
        })
    );
    assert_eq!(*polls, 2, "polled through running to succeeded");
}

#[tokio::test]
async fn cli_prefetch_json_prints_the_final_job_and_sends_only_what_was_given() {
    let (mock, server) = serve().await;
    let (r, out) = prefetch(&[
        "modelscope://org/one-file",
        "--file",
        "config.json",
        "--json",
        "--no-progress",
        "--server",
        &server,
    ])
    .await;
    r.unwrap();
    let printed: Value = serde_json::from_str(&out).unwrap();
    let jobs = mock.jobs.lock().unwrap();
    let (request, _) = &jobs["org-one-file"];
    assert_eq!(
        *request,
        json!({"hub": "ms", "repo": "org/one-file", "filename": "config.json"})
    );
    assert_eq!(printed, job("org-one-file", request, "succeeded"));
}

#[tokio::test]
async fn cli_prefetch_surfaces_a_failed_job() {
    let (_mock, server) = serve().await;
    let (r, out) = prefetch(&["hf://org/gated", "--server", &server]).await;
    let err = r.unwrap_err();
    assert!(matches!(err, ClientError::JobFailed { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "prefetch of hf://org/gated failed: hf answered 401: repo is gated"
    );
    assert_eq!(out, "");
}

#[tokio::test]
async fn cli_prefetch_surfaces_the_agents_error() {
    let (_mock, server) = serve().await;
    let (r, _) = prefetch(&["hf://org/missing", "--no-progress", "--server", &server]).await;
    let err = r.unwrap_err();
    assert!(
        matches!(&err, ClientError::Agent(e) if e.status() == Some(StatusCode::NOT_FOUND)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "POST {server}/manta/v1/prefetch: 404 Not Found: \
             NAME_UNKNOWN: repository org/missing not found on hf"
        )
    );
}

#[tokio::test]
async fn cli_prefetch_interrupted_leaves_the_job_to_the_agent() {
    let (mock, server) = serve().await;
    let args = prefetch_args(&["hf://org/slow", "--no-progress", "--server", &server]);
    let mut out = Vec::new();
    let err = cli::prefetch(args, &mut out, mock.polled.notified())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "interrupted; prefetch job org-slow continues on the agent \
             (follow it at {server}/manta/v1/prefetch/org-slow)"
        )
    );
    assert!(out.is_empty());
}

fn ls_args(args: &[&str]) -> LsArgs {
    match Cli::try_parse_from([&["manta", "ls"], args].concat()) {
        Ok(Cli {
            command: Command::Ls(a),
        }) => a,
        Ok(_) => panic!("not ls"),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn cli_ls_prints_a_sorted_table() {
    let (_mock, server) = serve().await;
    let mut out = Vec::new();
    cli::ls(ls_args(&["--server", &server]), &mut out)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "capacity 1.0 GiB, used 3.8 MiB (0%), pinned 0 B, reserved 0 B; \
         eviction above 921.6 MiB down to 819.2 MiB\n\
         \n\
         HUB  REPO                        REVISION  COMMIT        FILES  SIZE     CACHED  FROM  FORMS\n\
         hf   Qwen/Qwen2.5-0.5B-Instruct  main      0123456789ab  3      1.5 MiB  100%    hub   raw\n\
         hf   Qwen/Qwen2.5-0.5B-Instruct  v2        0123456789ab  3      1.5 MiB  50%     hub   raw,image\n\
         ms   qwen/Qwen2.5-0.5B-Instruct  master    0123456789ab  3      1.5 MiB  100%    hub   image\n\
         \n\
         KIND  NAME  SIZE  ACCESSED  PINNED  FORMS\n"
    );

    let mut out = Vec::new();
    cli::ls(ls_args(&["--server", &server, "--json"]), &mut out)
        .await
        .unwrap();
    let printed: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(printed, cache().await.0);
}

#[tokio::test]
async fn cli_ls_names_an_unreachable_agent() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = cli::ls(ls_args(&["--server", &server]), &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::Agent(e) if e.is_unreachable()),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("GET {server}/manta/v1/cache: cannot reach the Manta agent")
    );
}

#[test]
fn cli_refuses_bad_uris_and_servers() {
    let parse = |args: &[&str]| Cli::try_parse_from([&["manta", "prefetch"], args].concat());
    let err = parse(&["Qwen/Qwen2.5"]).err().unwrap().to_string();
    assert!(err.contains("missing scheme"), "{err}");
    let err = parse(&["hf://a/b@"]).err().unwrap().to_string();
    assert!(err.contains("empty revision after '@'"), "{err}");
    let err = parse(&["hf://a", "--server", "ftp://x"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("expected http://host:port"), "{err}");
    let err = parse(&["hf://a", "--form", "tarball"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tarball"), "{err}");
}
