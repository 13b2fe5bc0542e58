//! The admin API under `/manta/v1/`: prefetch jobs and what the cache holds. Its clients are the
//! CLI (`manta prefetch`, `manta ls`) and the operator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{StreamExt, TryStreamExt};
use manta_hub::{Filter, HubKind};
use serde::{Deserialize, Serialize};

use super::Shared;
use crate::error::ApiError;
use crate::fetch::{FetchError, FetchState};
use crate::hub::{self, Form, Spec};
use crate::names;
use crate::store::HubRevisionRecord;
use crate::upstream::UpstreamError;

/// Files downloaded at once by a raw-form prefetch.
const PARALLEL_FILES: usize = 4;

/// `POST /manta/v1/prefetch`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefetchRequest {
    pub hub: HubKind,
    /// Repo id on the hub (`Qwen/Qwen2.5-0.5B-Instruct`).
    pub repo: String,
    /// Branch, tag, `refs/pr/N` or commit [default: `main` on Hugging Face, `master` on ModelScope].
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(flatten)]
    pub filter: Filter,
    /// The forms to make ready [default: both].
    #[serde(default)]
    pub forms: Vec<Form>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FileProgress {
    path: String,
    size: u64,
    bytes_done: u64,
    state: &'static str,
}

/// A prefetch job as `GET /manta/v1/prefetch/<id>` reports it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JobView {
    id: String,
    state: JobState,
    hub: HubKind,
    repo: String,
    revision: String,
    commit: Option<String>,
    bytes_done: u64,
    bytes_total: Option<u64>,
    files: Vec<FileProgress>,
    references: HashMap<Form, String>,
    error: Option<String>,
}

struct JobStatus {
    state: JobState,
    record: Option<HubRevisionRecord>,
    error: Option<String>,
    /// When the job ended; ended jobs are forgotten after [`KEEP_ENDED`].
    ended: Option<std::time::Instant>,
}

/// How long an ended job stays readable.
const KEEP_ENDED: std::time::Duration = std::time::Duration::from_secs(3600);

struct Job {
    id: String,
    hub: HubKind,
    repo: String,
    revision: String,
    tag: String,
    forms: Vec<Form>,
    status: Mutex<JobStatus>,
}

/// The prefetch jobs of this agent, in memory: a restart forgets them (not what they fetched),
/// and an ended job is forgotten an hour after it ended.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Job {
    fn set(&self, f: impl FnOnce(&mut JobStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn references(&self) -> HashMap<Form, String> {
        let name = self.repo.to_ascii_lowercase();
        self.forms
            .iter()
            .map(|f| {
                (
                    *f,
                    format!("{}:{}", hub::oci_repo(self.hub, *f, &name), self.tag),
                )
            })
            .collect()
    }

    fn view(&self, st: &Shared) -> JobView {
        let (state, record, error) = {
            let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            (s.state, s.record.clone(), s.error.clone())
        };
        let files: Vec<FileProgress> = record
            .as_ref()
            .map(|r| r.files.iter().map(|f| file_progress(st, f)).collect())
            .unwrap_or_default();
        JobView {
            id: self.id.clone(),
            state,
            hub: self.hub,
            repo: record
                .as_ref()
                .map(|r| r.repo.clone())
                .unwrap_or_else(|| self.repo.clone()),
            revision: self.revision.clone(),
            commit: record.as_ref().map(|r| r.commit.clone()),
            bytes_done: files.iter().map(|f| f.bytes_done).sum(),
            bytes_total: record.map(|r| r.files.iter().map(|f| f.size).sum()),
            files,
            references: if state == JobState::Succeeded {
                self.references()
            } else {
                HashMap::new()
            },
            error,
        }
    }
}

/// How much of a file the node holds or is fetching.
fn file_progress(st: &Shared, f: &crate::store::HubFileRecord) -> FileProgress {
    let digest = format!("sha256:{}", f.sha256);
    let held = matches!(st.store.index().blob(&digest), Ok(Some(_)));
    let (bytes_done, state) = if held {
        (f.size, "done")
    } else {
        match st
            .fetcher
            .get(&digest)
            .map(|x| x.subscribe().borrow().clone())
        {
            Some(FetchState::Streaming { checked, .. }) => (checked, "running"),
            Some(FetchState::Verified { size, .. } | FetchState::Done { size }) => (size, "done"),
            Some(FetchState::Starting | FetchState::Passthrough { .. }) => (0, "running"),
            Some(FetchState::Failed(_)) => (0, "failed"),
            None => (0, "pending"),
        }
    };
    FileProgress {
        path: f.path.clone(),
        size: f.size,
        bytes_done,
        state,
    }
}

/// `POST /manta/v1/prefetch`: start a job; 202 with its view.
pub(super) async fn start(
    State(st): State<Shared>,
    body: Result<Json<PrefetchRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let result = async {
        let Json(req) =
            body.map_err(|e| ApiError::Unsupported(format!("prefetch request: {e}")))?;
        let revision = req
            .revision
            .clone()
            .unwrap_or_else(|| hub::default_revision(req.hub).to_string());
        let tag = hub::tag_of_request(&revision, &req.filter);
        let name = req.repo.to_ascii_lowercase();
        let forms = if req.forms.is_empty() {
            vec![Form::Raw, Form::Image]
        } else {
            req.forms.clone()
        };
        for f in &forms {
            if !names::valid_name(&hub::oci_repo(req.hub, *f, &name)) {
                return Err(ApiError::NameInvalid);
            }
        }
        if !names::valid_tag(&tag) {
            return Err(ApiError::Unsupported(format!(
                "revision {revision:?} cannot be named by a tag"
            )));
        }
        let job = Arc::new(Job {
            id: uuid::Uuid::new_v4().to_string(),
            hub: req.hub,
            repo: req.repo.clone(),
            revision: revision.clone(),
            tag,
            forms,
            status: Mutex::new(JobStatus {
                state: JobState::Pending,
                record: None,
                error: None,
                ended: None,
            }),
        });
        {
            let mut jobs = st.jobs.jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.retain(|_, j| {
                let s = j.status.lock().unwrap_or_else(|p| p.into_inner());
                s.ended.is_none_or(|t| t.elapsed() < KEEP_ENDED)
            });
            jobs.insert(job.id.clone(), job.clone());
        }
        let spec = Spec {
            revision,
            filter: req.filter,
            repo: Some(req.repo),
        };
        tokio::spawn(run(st.clone(), job.clone(), spec));
        Ok((StatusCode::ACCEPTED, Json(job.view(&st))).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn run(st: Shared, job: Arc<Job>, spec: Spec) {
    job.set(|s| s.state = JobState::Running);
    let outcome = prefetch(&st, &job, spec).await;
    match outcome {
        Ok(()) => {
            tracing::info!(id = %job.id, repo = %job.repo, revision = %job.revision, "prefetch done");
            job.set(|s| {
                s.state = JobState::Succeeded;
                s.ended = Some(std::time::Instant::now());
            });
        }
        Err(e) => {
            tracing::warn!(id = %job.id, repo = %job.repo, revision = %job.revision, error = %e, "prefetch failed");
            job.set(|s| {
                s.state = JobState::Failed;
                s.ended = Some(std::time::Instant::now());
                s.error = Some(e.to_string());
            });
        }
    }
}

/// Fetch what the job asks for; it succeeds only when every file is in the cache (a file that
/// found no room streamed through uncached, which a prefetch is not).
async fn prefetch(st: &Shared, job: &Job, spec: Spec) -> Result<(), FetchError> {
    let name = job.repo.to_ascii_lowercase();
    let rec = st
        .hubs
        .revision(job.hub, &name, &job.tag, Form::Raw, Some(spec))
        .await?;
    job.set(|s| s.record = Some(rec.clone()));
    if job.forms.contains(&Form::Image) {
        // Fetches every file, hashing its tar layer on the way.
        let rec = st
            .hubs
            .revision(job.hub, &name, &job.tag, Form::Image, None)
            .await?;
        job.set(|s| s.record = Some(rec));
    }
    // The image form may have been built with no room to keep the files (only hashed), or its
    // files evicted since: fetch what the store lacks.
    fetch_files(st, &rec).await?;
    let missing: Vec<&str> = rec
        .files
        .iter()
        .filter(|f| {
            !matches!(
                st.store.index().blob(&format!("sha256:{}", f.sha256)),
                Ok(Some(_))
            )
        })
        .map(|f| f.path.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let space = st.store.space();
    Err(Arc::new(UpstreamError::Local(
        crate::store::StoreError::NoSpace {
            needed: rec
                .files
                .iter()
                .filter(|f| missing.contains(&f.path.as_str()))
                .map(|f| f.size)
                .sum(),
            capacity: space.capacity(),
            used: space.used(),
            reserved: space.reserved(),
            fs_available: None,
        },
    )))
}

/// Fetch every file of a record that the store lacks.
async fn fetch_files(st: &Shared, rec: &HubRevisionRecord) -> Result<(), FetchError> {
    futures_util::stream::iter(rec.files.clone())
        .map(|f| async move {
            let digest = crate::digest::parse(&format!("sha256:{}", f.sha256))
                .map_err(|e| Arc::new(UpstreamError::Malformed(e.to_string())))?
                .0;
            if st
                .store
                .index()
                .blob(digest.as_ref())
                .ok()
                .flatten()
                .is_some()
            {
                return Ok(());
            }
            crate::fetch::wait_done(&*st.hubs.fetch_blob(&digest, None)?).await
        })
        .buffer_unordered(PARALLEL_FILES)
        .try_collect::<()>()
        .await
}

/// `GET /manta/v1/prefetch/<id>`.
pub(super) async fn status(State(st): State<Shared>, Path(id): Path<String>) -> Response {
    let job = st
        .jobs
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    match job {
        Some(job) => Json(job.view(&st)).into_response(),
        None => ApiError::NotFound.into_response(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CachedRevision {
    hub: HubKind,
    repo: String,
    revision: String,
    tag: String,
    commit: String,
    files: usize,
    size: u64,
    cached_bytes: u64,
    /// Of the cached bytes, those that came from peers (the rest from the hub).
    from_peers: u64,
    forms: Vec<Form>,
    references: HashMap<Form, String>,
    resolved_at: u64,
}

/// `GET /manta/v1/cache`: every hub revision the node knows, with what it holds of it.
pub(super) async fn cache(State(st): State<Shared>) -> Response {
    let records = {
        let st = st.clone();
        tokio::task::spawn_blocking(move || st.hubs.records()).await
    };
    let records = match records {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => return ApiError::from(crate::store::StoreError::Join(e)).into_response(),
    };
    let index = st.store.index();
    let revisions: Vec<CachedRevision> = records
        .into_iter()
        .map(|(hub_kind, name, tag, r)| {
            let held: Vec<crate::store::BlobRecord> = r
                .files
                .iter()
                .filter_map(|f| index.blob(&format!("sha256:{}", f.sha256)).ok().flatten())
                .collect();
            let cached_bytes = held.iter().map(|b| b.size).sum();
            let from_peers = held.iter().filter_map(|b| b.from_peers).sum();
            let mut forms = vec![Form::Raw];
            if r.image.is_some() {
                forms.push(Form::Image);
            }
            let references = forms
                .iter()
                .map(|f| {
                    (
                        *f,
                        format!("{}:{}", hub::oci_repo(hub_kind, *f, &name), tag),
                    )
                })
                .collect();
            CachedRevision {
                hub: hub_kind,
                repo: r.repo,
                revision: r.revision,
                tag,
                commit: r.commit,
                files: r.files.len(),
                size: r.files.iter().map(|f| f.size).sum(),
                cached_bytes,
                from_peers,
                forms,
                references,
                resolved_at: r.resolved_at,
            }
        })
        .collect();
    match super::lifecycle::entries(&st).await {
        Ok((space, entries)) => Json(serde_json::json!({
            "revisions": revisions,
            "space": space,
            "entries": entries,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_requests_parse_and_refuse_unknown_fields() {
        let r: PrefetchRequest = serde_json::from_str(
            r#"{"hub":"hf","repo":"a/B","revision":"main","allowPatterns":["*.json"],"forms":["raw"]}"#,
        )
        .unwrap();
        assert_eq!(r.filter.allow_patterns, vec!["*.json".to_string()]);
        assert_eq!(r.forms, vec![Form::Raw]);
        assert!(
            serde_json::from_str::<PrefetchRequest>(r#"{"hub":"hf","repo":"a/b","bogus":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<PrefetchRequest>(r#"{"hub":"xx","repo":"a/b"}"#).is_err());
    }
}
