//! A fake Manta agent: the admin API the operator calls (cache, pins, prefetch jobs), answered
//! from memory, recording what it was asked. The operator's reconciler tests and its 1,000-node
//! benchmark run against it; the end-to-end tests run real agents.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use manta_api::{
    CacheView, CachedRevision, Form, HubKind, Job, JobFailure, JobState, PinTarget, PinView,
    SpaceView,
};
use serde_json::{json, Value};

/// How a fake agent answers a prefetch.
#[derive(Clone)]
pub enum Behaviour {
    /// The job succeeds at once, `size` bytes.
    Succeed(u64),
    /// The job fails with this failure.
    Fail(JobFailure, &'static str),
    /// The agent answers 500 to a prefetch.
    Broken,
    /// The job runs and never ends: half of `size` bytes done.
    Running(u64),
}

#[derive(Default)]
pub struct AgentLog {
    pub pins: BTreeMap<String, PinTarget>,
    pub jobs: HashMap<String, Job>,
    pub prefetches: Vec<Value>,
    pub unpins: Vec<(String, String)>,
    /// Revisions the node already holds (for CacheAware).
    pub cached: Vec<CachedRevision>,
    /// Bytes held by pins (for DiskAware).
    pub pinned: u64,
}

pub struct FakeAgent {
    pub url: String,
    pub port: u16,
    pub log: Arc<Mutex<AgentLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    /// What it has been asked, and what it holds.
    pub fn log(&self) -> std::sync::MutexGuard<'_, AgentLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fake agent on `127.0.0.1`, a port of its own, answering prefetches as `behaviour` says,
/// with `capacity` bytes.
pub async fn fake_agent(behaviour: Behaviour, capacity: u64) -> std::io::Result<FakeAgent> {
    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post, put};
    use axum::Json;
    type St = (Arc<Mutex<AgentLog>>, Behaviour, u64);
    let log = Arc::new(Mutex::new(AgentLog::default()));
    let app = axum::Router::new()
        .route(
            "/manta/v1/cache",
            get(|State((log, _, cap)): State<St>| async move {
                let log = log.lock().unwrap_or_else(|p| p.into_inner());
                Json(CacheView {
                    revisions: log.cached.clone(),
                    space: SpaceView {
                        capacity: cap,
                        used: log.pinned,
                        reserved: 0,
                        pinned: log.pinned,
                        high_watermark: cap,
                        low_watermark: cap,
                    },
                    entries: vec![],
                })
            }),
        )
        .route(
            "/manta/v1/pins",
            get(|State((log, _, _)): State<St>| async move {
                let log = log.lock().unwrap_or_else(|p| p.into_inner());
                let pins: Vec<PinView> = log
                    .pins
                    .iter()
                    .map(|(n, t)| PinView {
                        name: n.clone(),
                        target: t.clone(),
                        created_at: 0,
                        roots: vec![],
                        bytes: 0,
                    })
                    .collect();
                Json(json!({ "pins": pins }))
            }),
        )
        .route(
            "/manta/v1/pins/{name}",
            put(
                |State((log, _, _)): State<St>,
                 Path(name): Path<String>,
                 Json(t): Json<PinTarget>| async move {
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .pins
                        .insert(name.clone(), t.clone());
                    (
                        StatusCode::CREATED,
                        Json(PinView {
                            name,
                            target: t,
                            created_at: 0,
                            roots: vec![],
                            bytes: 0,
                        }),
                    )
                },
            )
            .delete(
                |State((log, _, _)): State<St>,
                 Path(name): Path<String>,
                 Query(q): Query<HashMap<String, String>>| async move {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    let reclaim = q.get("reclaim").cloned().unwrap_or_default();
                    log.unpins.push((name.clone(), reclaim.clone()));
                    if log.pins.remove(&name).is_some() {
                        (
                            StatusCode::OK,
                            Json(json!({"name": name, "reclaim": reclaim, "gc": null})),
                        )
                    } else {
                        (
                            StatusCode::NOT_FOUND,
                            Json(json!({"errors":[{"code":"NAME_UNKNOWN","message":"no pin"}]})),
                        )
                    }
                },
            ),
        )
        .route(
            "/manta/v1/prefetch",
            post(
                |State((log, b, _)): State<St>, Json(req): Json<Value>| async move {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    log.prefetches.push(req.clone());
                    let id = format!("job-{}", log.prefetches.len());
                    let repo = req["repo"].as_str().unwrap_or("").to_string();
                    let mut job = Job {
                        id: id.clone(),
                        version: 1,
                        state: JobState::Succeeded,
                        hub: HubKind::Hf,
                        repo: repo.clone(),
                        revision: req["revision"].as_str().unwrap_or("main").to_string(),
                        commit: Some("c0ffee".into()),
                        bytes_done: 0,
                        bytes_total: None,
                        files: vec![],
                        references: BTreeMap::new(),
                        error: None,
                        failure: None,
                    };
                    match b {
                        Behaviour::Succeed(size) => {
                            job.bytes_done = size;
                            job.bytes_total = Some(size);
                            let name = repo.to_ascii_lowercase();
                            job.references
                                .insert(Form::Image, format!("hf/{name}:main"));
                            job.references
                                .insert(Form::Raw, format!("hf-raw/{name}:main"));
                        }
                        Behaviour::Running(size) => {
                            job.state = JobState::Running;
                            job.bytes_done = size / 2;
                            job.bytes_total = Some(size);
                        }
                        Behaviour::Fail(f, msg) => {
                            job.state = JobState::Failed;
                            job.commit = None;
                            job.error = Some(msg.into());
                            job.failure = Some(f);
                        }
                        Behaviour::Broken => {
                            return (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                Json(
                                    json!({"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}),
                                ),
                            );
                        }
                    }
                    log.jobs.insert(id, job.clone());
                    (
                        StatusCode::ACCEPTED,
                        Json(serde_json::to_value(job).unwrap_or_default()),
                    )
                },
            ),
        )
        .route(
            "/manta/v1/prefetch/{id}",
            get(
                |State((log, _, _)): State<St>,
                 Path(id): Path<String>,
                 Query(q): Query<HashMap<String, String>>| async move {
                    let job = log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .jobs
                        .get(&id)
                        .cloned();
                    let Some(j) = job else {
                        return (StatusCode::NOT_FOUND, Json(json!({"errors":[]})));
                    };
                    // `?wait=&version=`: these jobs never change, so a wait on the current
                    // version lasts its whole length, as on a real agent.
                    let wait = q.get("wait").and_then(|w| w.parse::<u64>().ok());
                    let seen = q.get("version").and_then(|v| v.parse::<u64>().ok());
                    if let (Some(w), Some(v)) = (wait, seen) {
                        if v == j.version && !j.state.is_ended() {
                            tokio::time::sleep(std::time::Duration::from_secs(w.min(60))).await;
                        }
                    }
                    (
                        StatusCode::OK,
                        Json(serde_json::to_value(j).unwrap_or_default()),
                    )
                },
            ),
        )
        .with_state((log.clone(), behaviour, capacity));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(FakeAgent {
        url: format!("http://127.0.0.1:{port}"),
        port,
        log,
        task,
    })
}
