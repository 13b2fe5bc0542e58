//! Hugging Face Hub, through the HTTP API `huggingface_hub` uses: repo info by revision, the
//! recursive tree (paginated with `Link`), search for canonical casing, and `resolve` downloads.

use serde::Deserialize;

use crate::http::{check_path, check_segment, file_subject, hex_id, sorted_files, Http, Missing};
use crate::{Download, HubAdapter, HubConfig, HubError, HubFile, HubKind, Resolved};

/// Tree pages followed for one revision (1000 entries each on huggingface.co).
const MAX_TREE_PAGES: usize = 10_000;
/// Search pages read when looking for a repo's casing.
const MAX_SEARCH_PAGES: usize = 20;

/// A Hugging Face Hub (`https://huggingface.co` or a mirror speaking its API).
#[derive(Debug)]
pub struct HfAdapter {
    http: Http,
}

#[derive(Deserialize)]
struct RepoInfo {
    id: String,
    #[serde(default)]
    sha: Option<String>,
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    oid: String,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
struct SearchHit {
    id: String,
}

impl HfAdapter {
    /// An adapter for `cfg.endpoint` (no request is made here).
    pub fn new(cfg: HubConfig) -> Result<Self, HubError> {
        Ok(HfAdapter {
            http: Http::new(&cfg)?,
        })
    }

    /// `GET /api/models/{repo}[/revision/{rev}]`.
    async fn info(
        &self,
        repo: &str,
        revision: Option<&str>,
        subject: &str,
    ) -> Result<RepoInfo, HubError> {
        let segments = repo_segments(repo)?;
        let mut path = vec!["api", "models"];
        path.extend(segments);
        if let Some(rev) = revision {
            path.extend(["revision", rev]);
        }
        let (_, info): (_, RepoInfo) = self
            .http
            .get_json(&self.http.url(path), Missing::Repo, subject)
            .await?;
        repo_segments(&info.id).map_err(|_| {
            HubError::Malformed(format!("{subject}: the hub names the repo {:?}", info.id))
        })?;
        Ok(info)
    }
}

/// The one or two segments of a repo id (`gpt2`, `Qwen/Qwen2.5-0.5B-Instruct`).
fn repo_segments(repo: &str) -> Result<Vec<&str>, HubError> {
    let segments: Vec<&str> = repo.split('/').collect();
    if segments.len() > 2 || !segments.iter().all(|s| check_segment(s)) {
        return Err(HubError::RepoNotFound(format!("{repo:?} is not a repo id")));
    }
    Ok(segments)
}

/// A tree entry as a `HubFile`, or `None` for a directory. Paths that could leave a directory,
/// and ids that are not hex, are the hub lying.
fn hub_file(entry: TreeEntry, subject: &str) -> Result<Option<HubFile>, HubError> {
    if entry.kind != "file" {
        return Ok(None);
    }
    let malformed = |what: String| HubError::Malformed(format!("{subject}: {what}"));
    if !check_path(&entry.path) {
        return Err(malformed(format!(
            "unsafe path {:?} in the file list",
            entry.path
        )));
    }
    let oid = match &entry.oid {
        Some(oid) => {
            Some(hex_id(oid, 40).ok_or_else(|| malformed(format!("bad oid for {}", entry.path)))?)
        }
        None => None,
    };
    let (sha256, size) = match &entry.lfs {
        Some(lfs) => (
            Some(
                hex_id(&lfs.oid, 64)
                    .ok_or_else(|| malformed(format!("bad LFS sha256 for {}", entry.path)))?,
            ),
            lfs.size.unwrap_or(entry.size),
        ),
        None => (None, entry.size),
    };
    Ok(Some(HubFile {
        path: entry.path,
        size,
        sha256,
        oid,
    }))
}

#[async_trait::async_trait]
impl HubAdapter for HfAdapter {
    fn kind(&self) -> HubKind {
        HubKind::Hf
    }

    /// `GET /api/models/{name}` (redirects followed: a renamed repo answers with its new id);
    /// when that is not found (often a casing mismatch), the search API
    /// `GET /api/models?search=<name>&author=<owner>` and the hit whose id equals `name` ignoring
    /// case.
    async fn canonical_repo(&self, name: &str) -> Result<String, HubError> {
        let segments = repo_segments(name)?;
        match self.info(name, None, name).await {
            Ok(info) => return Ok(info.id),
            Err(HubError::RepoNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let mut url = self.http.url(["api", "models"]);
        match segments.as_slice() {
            [owner, model] => url
                .query_pairs_mut()
                .append_pair("search", model)
                .append_pair("author", owner),
            _ => url.query_pairs_mut().append_pair("search", name),
        };
        let hits: Vec<SearchHit> = self
            .http
            .get_paged(url, MAX_SEARCH_PAGES, Missing::Repo, name)
            .await?;
        hits.into_iter()
            .map(|hit| hit.id)
            .find(|id| id.eq_ignore_ascii_case(name) && repo_segments(id).is_ok())
            .ok_or_else(|| HubError::RepoNotFound(name.to_owned()))
    }

    /// `GET /api/models/{repo}/revision/{rev}` for the commit (`sha`) and canonical id, then
    /// every page of `GET /api/models/{id}/tree/{commit}?recursive=true&expand=false`.
    async fn resolve(&self, repo: &str, revision: &str) -> Result<Resolved, HubError> {
        let revision = if revision.is_empty() {
            "main"
        } else {
            revision
        };
        let subject = format!("{repo}@{revision}");
        if revision == "." || revision == ".." {
            return Err(HubError::RevisionNotFound(subject));
        }
        let info = self.info(repo, Some(revision), &subject).await?;
        let commit = info
            .sha
            .as_deref()
            .and_then(|sha| hex_id(sha, 40))
            .ok_or_else(|| {
                HubError::Malformed(format!("{subject}: no commit sha in the answer"))
            })?;
        let mut path = vec!["api", "models"];
        path.extend(repo_segments(&info.id)?);
        path.extend(["tree", commit.as_str()]);
        let mut url = self.http.url(path);
        url.query_pairs_mut()
            .append_pair("recursive", "true")
            .append_pair("expand", "false");
        let entries: Vec<TreeEntry> = self
            .http
            .get_paged(url, MAX_TREE_PAGES, Missing::Repo, &subject)
            .await?;
        let mut files = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Some(file) = hub_file(entry, &subject)? {
                files.push(file);
            }
        }
        Ok(Resolved {
            repo: info.id,
            commit,
            files: sorted_files(files, &subject)?,
        })
    }

    /// `GET /{repo}/resolve/{commit}/{path}` (LFS files redirect to a CDN, which gets no token).
    async fn download_range(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        offset: u64,
        end: Option<u64>,
    ) -> Result<Download, HubError> {
        let subject = file_subject(repo, commit, path)?;
        if !check_segment(commit) {
            return Err(HubError::RevisionNotFound(subject));
        }
        let mut segments = repo_segments(repo)?;
        segments.extend(["resolve", commit]);
        segments.extend(path.split('/'));
        self.http
            .download(self.http.url(segments), offset, end, &subject)
            .await
    }
}
