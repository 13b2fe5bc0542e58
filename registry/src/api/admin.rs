//! The admin API under `/manta/v1/`: prefetch jobs and what the cache holds. Its clients are the
//! CLI (`manta prefetch`, `manta ls`) and the operator.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{StreamExt, TryStreamExt};
use manta_api::{
    CacheView, CachedRevision, FileProgress, FileState, Job, JobFailure, JobState, PrefetchRequest,
};
use manta_hub::{HubError, HubKind};
use serde::Deserialize;

use super::Shared;
use crate::error::ApiError;
use crate::fetch::{FetchError, FetchState};
use crate::hub::{self, Form, Spec};
use crate::names;
use crate::store::HubRevisionRecord;
use crate::upstream::UpstreamError;

/// Files downloaded at once by a raw-form prefetch.
const PARALLEL_FILES: usize = 4;

struct JobStatus {
    state: JobState,
    record: Option<HubRevisionRecord>,
    error: Option<String>,
    /// What kind of failure `error` is.
    failure: Option<JobFailure>,
    /// When the job ended; ended jobs are forgotten after [`KEEP_ENDED`].
    ended: Option<std::time::Instant>,
}

/// How long an ended job stays readable.
const KEEP_ENDED: std::time::Duration = std::time::Duration::from_secs(3600);

/// A prefetch job as this agent runs it ([`Job`] is how it is reported).
struct PrefetchJob {
    id: String,
    hub: HubKind,
    repo: String,
    revision: String,
    tag: String,
    forms: Vec<Form>,
    status: Mutex<JobStatus>,
    /// The job's version: it grows at every change of state or record, and wakes the callers
    /// waiting on it (`?wait=`).
    version: tokio::sync::watch::Sender<u64>,
}

/// The longest a `GET /manta/v1/prefetch/<id>?wait=` waits for a change.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The prefetch jobs of this agent, in memory: a restart forgets them (not what they fetched),
/// and an ended job is forgotten an hour after it ended.
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<String, Arc<PrefetchJob>>>,
}

impl PrefetchJob {
    fn set(&self, f: impl FnOnce(&mut JobStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
        self.version.send_modify(|v| *v += 1);
    }

    fn references(&self) -> BTreeMap<Form, String> {
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

    fn view(&self, st: &Shared) -> Job {
        let (state, record, error, failure) = {
            let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            (s.state, s.record.clone(), s.error.clone(), s.failure)
        };
        let files: Vec<FileProgress> = record
            .as_ref()
            .map(|r| r.files.iter().map(|f| file_progress(st, f)).collect())
            .unwrap_or_default();
        Job {
            id: self.id.clone(),
            version: *self.version.borrow(),
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
                BTreeMap::new()
            },
            error,
            failure,
        }
    }
}

/// How much of a file the node holds or is fetching.
fn file_progress(st: &Shared, f: &crate::store::HubFileRecord) -> FileProgress {
    let digest = format!("sha256:{}", f.sha256);
    let held = matches!(st.store.index().blob(&digest), Ok(Some(_)));
    let (bytes_done, state) = if held {
        (f.size, FileState::Done)
    } else {
        match st
            .fetcher
            .get(&digest)
            .map(|x| x.subscribe().borrow().clone())
        {
            Some(FetchState::Streaming { checked, .. }) => (checked, FileState::Running),
            Some(FetchState::Verified { size, .. } | FetchState::Done { size }) => {
                (size, FileState::Done)
            }
            Some(FetchState::Starting | FetchState::Passthrough { .. }) => (0, FileState::Running),
            Some(FetchState::Failed(_)) => (0, FileState::Failed),
            None => (0, FileState::Pending),
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
        let job = Arc::new(PrefetchJob {
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
                failure: None,
                ended: None,
            }),
            version: tokio::sync::watch::channel(0).0,
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

async fn run(st: Shared, job: Arc<PrefetchJob>, spec: Spec) {
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
                s.failure = Some(job_failure(&e));
            });
        }
    }
}

/// What kind of failure ended a job: the hub's answer (the same on every node) or this node's
/// own trouble (another node may do better).
fn job_failure(e: &UpstreamError) -> JobFailure {
    match e {
        UpstreamError::Hub(HubError::Unauthorized(_) | HubError::Denied(_)) => {
            JobFailure::HubRefused
        }
        UpstreamError::Hub(
            HubError::RepoNotFound(_) | HubError::RevisionNotFound(_) | HubError::EntryNotFound(_),
        ) => JobFailure::NotFound,
        UpstreamError::Hub(h) if h.is_unavailable() => JobFailure::HubUnavailable,
        UpstreamError::Status {
            status: 401 | 403, ..
        } => JobFailure::HubRefused,
        UpstreamError::Status { status: 404, .. } => JobFailure::NotFound,
        e if e.is_unavailable() => JobFailure::HubUnavailable,
        UpstreamError::Unrepresentable(_) => JobFailure::Unrepresentable,
        UpstreamError::Local(s) if s.is_no_space() => JobFailure::NoSpace,
        _ => JobFailure::Other,
    }
}

/// Fetch what the job asks for; it succeeds only when every file is in the cache (a file that
/// found no room streamed through uncached, which a prefetch is not).
async fn prefetch(st: &Shared, job: &PrefetchJob, spec: Spec) -> Result<(), FetchError> {
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
/// The query of `GET /manta/v1/prefetch/<id>`: with `wait` (seconds, at most 60), answer once the
/// job's version differs from `version` (at once if it does already), or when the wait is over.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobQuery {
    #[serde(default)]
    wait: Option<u64>,
    #[serde(default)]
    version: Option<u64>,
}

/// `GET /manta/v1/prefetch/<id>[?wait=<s>&version=<n>]`.
pub(super) async fn status(
    State(st): State<Shared>,
    Path(id): Path<String>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return ApiError::Unsupported(e.body_text()).into_response(),
    };
    let job = st
        .jobs
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned();
    let Some(job) = job else {
        return ApiError::NotFound.into_response();
    };
    if let (Some(wait), Some(seen)) = (q.wait, q.version) {
        let mut rx = job.version.subscribe();
        let wait = std::time::Duration::from_secs(wait).min(MAX_WAIT);
        // Wakes at the first version other than `seen` (a version already past it returns at once).
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| *v != seen)).await;
    }
    Json(job.view(&st)).into_response()
}

/// The query of `GET /manta/v1/cache`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheQuery {
    /// List every eviction root [default: true]; the operator, which reads the space figures
    /// and the revisions only, asks for `false`.
    #[serde(default = "yes")]
    entries: bool,
}

fn yes() -> bool {
    true
}

/// `GET /manta/v1/cache[?entries=false]`: every hub revision the node knows, with what it holds
/// of it, the space figures, and (unless `entries=false`) every eviction root.
pub(super) async fn cache(
    State(st): State<Shared>,
    query: Result<Query<CacheQuery>, QueryRejection>,
) -> Response {
    async {
        let Query(q) = query.map_err(|e| ApiError::Unsupported(e.body_text()))?;
        let records = {
            let st = st.clone();
            tokio::task::spawn_blocking(move || st.hubs.records())
                .await
                .map_err(crate::store::StoreError::Join)??
        };
        let index = st.store.index();
        let revisions = records
            .into_iter()
            .map(|(hub_kind, name, tag, r)| cached_revision(index, hub_kind, &name, tag, r))
            .collect();
        let (space, entries) = super::lifecycle::space_and_entries(&st, q.entries).await?;
        Ok::<_, ApiError>(
            Json(CacheView {
                revisions,
                space,
                entries,
            })
            .into_response(),
        )
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// What the node holds of one hub revision.
fn cached_revision(
    index: &dyn crate::store::Index,
    hub_kind: HubKind,
    name: &str,
    tag: String,
    r: HubRevisionRecord,
) -> CachedRevision {
    let held: Vec<crate::store::BlobRecord> = r
        .files
        .iter()
        .filter_map(|f| index.blob(&format!("sha256:{}", f.sha256)).ok().flatten())
        .collect();
    let mut forms = vec![Form::Raw];
    if r.image.is_some() {
        forms.push(Form::Image);
    }
    let references = forms
        .iter()
        .map(|f| (*f, format!("{}:{}", hub::oci_repo(hub_kind, *f, name), tag)))
        .collect();
    CachedRevision {
        hub: hub_kind,
        repo: r.repo,
        revision: r.revision,
        tag,
        commit: r.commit,
        files: r.files.len() as u64,
        size: r.files.iter().map(|f| f.size).sum(),
        cached_bytes: held.iter().map(|b| b.size).sum(),
        from_peers: held.iter().filter_map(|b| b.from_peers).sum(),
        forms,
        references,
        resolved_at: r.resolved_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_query(uri: &str) -> Result<bool, String> {
        let uri: axum::http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
        Query::<CacheQuery>::try_from_uri(&uri)
            .map(|Query(q)| q.entries)
            .map_err(|e| e.body_text())
    }

    #[test]
    fn a_failed_job_says_whether_the_hub_or_the_node_failed_it() {
        let status = |status| UpstreamError::Status {
            status,
            code: None,
            message: None,
            retry_after: None,
        };
        let no_space = crate::store::StoreError::NoSpace {
            needed: 2,
            capacity: 1,
            used: 1,
            reserved: 0,
            fs_available: None,
        };
        let cases = [
            (
                UpstreamError::Hub(HubError::Unauthorized("gated".into())),
                JobFailure::HubRefused,
            ),
            (
                UpstreamError::Hub(HubError::Denied("token".into())),
                JobFailure::HubRefused,
            ),
            (
                UpstreamError::Hub(HubError::RepoNotFound("a/b".into())),
                JobFailure::NotFound,
            ),
            (
                UpstreamError::Hub(HubError::RevisionNotFound("v9".into())),
                JobFailure::NotFound,
            ),
            (
                UpstreamError::Hub(HubError::RateLimited("slow down".into())),
                JobFailure::HubUnavailable,
            ),
            (
                UpstreamError::Hub(HubError::Timeout("headers")),
                JobFailure::HubUnavailable,
            ),
            (status(403), JobFailure::HubRefused),
            (status(404), JobFailure::NotFound),
            (status(503), JobFailure::HubUnavailable),
            (UpstreamError::Timeout("body"), JobFailure::HubUnavailable),
            (
                UpstreamError::Unrepresentable("a/../b".into()),
                JobFailure::Unrepresentable,
            ),
            (UpstreamError::Local(no_space), JobFailure::NoSpace),
            (
                UpstreamError::DigestMismatch {
                    expected: "sha256:00".into(),
                },
                JobFailure::Other,
            ),
            (UpstreamError::HubNotConfigured("ms"), JobFailure::Other),
        ];
        for (e, want) in cases {
            assert_eq!(job_failure(&e), want, "{e}");
        }
    }

    #[test]
    fn the_cache_query_names_entries_only() {
        assert_eq!(cache_query("/manta/v1/cache"), Ok(true));
        assert_eq!(cache_query("/manta/v1/cache?entries=true"), Ok(true));
        assert_eq!(cache_query("/manta/v1/cache?entries=false"), Ok(false));
        for bad in ["entries=no", "entries=", "entry=false", "entries=false&x=1"] {
            let e = cache_query(&format!("/manta/v1/cache?{bad}"));
            assert!(e.is_err(), "?{bad}: {e:?}");
        }
        let e = cache_query("/manta/v1/cache?bogus=1").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }
}
