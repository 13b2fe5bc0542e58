//! ModelScope, through the `/api/v1` endpoints the `modelscope` SDK uses (`modelscope/hub/api.py`):
//!
//! - revisions: `GET /api/v1/models/{owner}/{name}/revisions` →
//!   `{"Code":200,"Data":{"RevisionMap":{"Branches":[{"Revision":"master",…}],"Tags":[{"Revision":"v1.0.0","CreatedAt":…}]}}}`;
//! - files: `GET /api/v1/models/{owner}/{name}/repo/files?Revision=&Recursive=True` →
//!   `{"Code":200,"Data":{"Files":[{"Name","Path","Type":"blob"|"tree","Size","Sha256","Revision",…}]}}`;
//! - download: `GET /api/v1/models/{owner}/{name}/repo?Revision=&FilePath=` (ranges honoured);
//! - model info: `GET /api/v1/models/{owner}/{name}` → `{"Data":{"Path":owner,"Name":name,…}}`.
//!
//! Errors come as an HTTP status, or as `200` with `{"Code":<not 200>,"Success":false,"Message":…}`.

use serde::Deserialize;

use crate::http::{
    check_path, check_segment, file_subject, hex_id, map_error, sorted_files, Http, Missing,
};
use crate::{Download, HubAdapter, HubConfig, HubError, HubFile, HubKind, Resolved};

/// The revision asked for when none is given.
pub const DEFAULT_REVISION: &str = "master";

/// A ModelScope hub (`https://www.modelscope.cn`, or `MODELSCOPE_DOMAIN`).
#[derive(Debug)]
pub struct MsAdapter {
    http: Http,
}

/// ModelScope's answer envelope.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope<T> {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    success: Option<bool>,
    #[serde(default)]
    message: Option<String>,
    data: Option<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RevisionsData {
    revision_map: RevisionMap,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RevisionMap {
    #[serde(default)]
    branches: Option<Vec<RevisionRef>>,
    #[serde(default)]
    tags: Option<Vec<RevisionRef>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RevisionRef {
    revision: String,
    /// Not documented by the SDK (which reads only `Revision` and `CreatedAt`); used when
    /// present.
    #[serde(default)]
    commit_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FilesData {
    #[serde(default)]
    files: Option<Vec<MsFile>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MsFile {
    #[serde(default)]
    name: Option<String>,
    path: String,
    #[serde(rename = "Type")]
    kind: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ModelData {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl<T> Envelope<T> {
    /// `Data`, or the error the envelope reports.
    fn into_data(self, http: &Http, missing: Missing, subject: &str) -> Result<T, HubError> {
        let code = match &self.code {
            None => None,
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::String(s)) => s.parse::<i64>().ok(),
            Some(_) => Some(-1),
        };
        let failed = self.success == Some(false) || code.is_some_and(|c| c != 200);
        if failed {
            let message = http.message(subject, self.message);
            return Err(match code.and_then(|c| u16::try_from(c).ok()) {
                Some(status @ (401 | 403 | 404 | 429)) => map_error(status, None, missing, message),
                _ => HubError::Malformed(format!(
                    "ModelScope refused (Code {}): {message}",
                    code.map_or_else(|| "?".to_owned(), |c| c.to_string())
                )),
            });
        }
        self.data.ok_or_else(|| {
            HubError::Malformed(format!("{subject}: ModelScope answered without Data"))
        })
    }
}

impl MsAdapter {
    /// An adapter for `cfg.endpoint` (no request is made here).
    pub fn new(cfg: HubConfig) -> Result<Self, HubError> {
        Ok(MsAdapter {
            http: Http::new(&cfg)?,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        url: reqwest::Url,
        missing: Missing,
        subject: &str,
    ) -> Result<T, HubError> {
        let (_, envelope): (_, Envelope<T>) = self.http.get_json(&url, missing, subject).await?;
        envelope.into_data(&self.http, missing, subject)
    }

    /// The commit `revision` names: see [`HubAdapter::resolve`] for this adapter.
    async fn commit_of(
        &self,
        owner: &str,
        name: &str,
        revision: &str,
        subject: &str,
    ) -> Result<String, HubError> {
        let url = self
            .http
            .url(["api", "v1", "models", owner, name, "revisions"]);
        let data: RevisionsData = self.get(url, Missing::Repo, subject).await?;
        let map = data.revision_map;
        let tags = map.tags.unwrap_or_default();
        let branches = map.branches.unwrap_or_default();
        if tags.iter().any(|t| t.revision == revision) {
            return Ok(revision.to_owned());
        }
        let commit_id = |r: &RevisionRef| {
            r.commit_id
                .as_deref()
                .filter(|c| check_segment(c))
                .map(str::to_owned)
        };
        if let Some(branch) = branches.iter().find(|b| b.revision == revision) {
            return Ok(commit_id(branch).unwrap_or_else(|| revision.to_owned()));
        }
        // A commit handed out earlier, or any commit id ModelScope will take as a `Revision`.
        if branches
            .iter()
            .any(|b| commit_id(b).as_deref() == Some(revision))
            || hex_id(revision, 40).is_some()
        {
            return Ok(revision.to_owned());
        }
        Err(HubError::RevisionNotFound(subject.to_owned()))
    }
}

/// `owner/name`: ModelScope ids always have two segments.
fn owner_name(repo: &str) -> Result<(&str, &str), HubError> {
    match repo.split_once('/') {
        Some((owner, name)) if check_segment(owner) && check_segment(name) => Ok((owner, name)),
        _ => Err(HubError::RepoNotFound(format!(
            "{repo:?} is not a ModelScope model id"
        ))),
    }
}

/// Files the `modelscope` SDK leaves out of every listing (`get_model_files`).
fn skipped_by_sdk(name: &str) -> bool {
    name == ".gitignore" || name == ".gitattributes"
}

fn hub_file(file: MsFile, subject: &str) -> Result<Option<HubFile>, HubError> {
    if file.kind != "blob" {
        return Ok(None);
    }
    let name = file
        .name
        .as_deref()
        .unwrap_or_else(|| file.path.rsplit('/').next().unwrap_or(""));
    if skipped_by_sdk(name) {
        return Ok(None);
    }
    if !check_path(&file.path) {
        return Err(HubError::Malformed(format!(
            "{subject}: unsafe path {:?} in the file list",
            file.path
        )));
    }
    let sha256 = match file
        .sha256
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(sha) => Some(hex_id(sha, 64).ok_or_else(|| {
            HubError::Malformed(format!("{subject}: bad Sha256 for {}", file.path))
        })?),
        None => None,
    };
    Ok(Some(HubFile {
        path: file.path,
        size: file.size,
        sha256,
        oid: None,
    }))
}

#[async_trait::async_trait]
impl HubAdapter for MsAdapter {
    fn kind(&self) -> HubKind {
        HubKind::Ms
    }

    /// ModelScope matches ids without regard to case, so a lowercase OCI name already works;
    /// for the display casing, `GET /api/v1/models/{owner}/{name}` and `Data.Path/Data.Name`
    /// when the answer carries both (and they are `name` up to case), else `name` as is. A
    /// missing model is `RepoNotFound`.
    async fn canonical_repo(&self, name: &str) -> Result<String, HubError> {
        let (owner, model) = owner_name(name)?;
        let url = self.http.url(["api", "v1", "models", owner, model]);
        let data: ModelData = self.get(url, Missing::Repo, name).await?;
        match (data.path, data.name) {
            (Some(path), Some(model)) => {
                let id = format!("{path}/{model}");
                Ok(
                    if id.eq_ignore_ascii_case(name) && owner_name(&id).is_ok() {
                        id
                    } else {
                        name.to_owned()
                    },
                )
            }
            _ => Ok(name.to_owned()),
        }
    }

    /// `revision` (default `master`) is looked up in the revisions list. ModelScope's API has no
    /// commit ids of its own there, so `Resolved.commit` is:
    /// - for a tag, the tag name (tags do not move);
    /// - for a branch, the branch's `CommitId` when the answer carries one, else the branch name
    ///   (a branch name is not pinned: resolving it later may list other files);
    /// - a 40-hex revision (or a branch's `CommitId`) is taken as a commit as is.
    ///
    /// Then `GET …/repo/files?Revision={commit}&Recursive=True`, keeping `blob`s, without the
    /// `.gitignore`/`.gitattributes` files the SDK skips too.
    async fn resolve(&self, repo: &str, revision: &str) -> Result<Resolved, HubError> {
        let revision = if revision.is_empty() {
            DEFAULT_REVISION
        } else {
            revision
        };
        let subject = format!("{repo}@{revision}");
        let (owner, name) = owner_name(repo)?;
        let commit = self.commit_of(owner, name, revision, &subject).await?;
        let mut url = self
            .http
            .url(["api", "v1", "models", owner, name, "repo", "files"]);
        url.query_pairs_mut()
            .append_pair("Revision", &commit)
            .append_pair("Recursive", "True");
        let data: FilesData = self.get(url, Missing::Revision, &subject).await?;
        let mut files = Vec::new();
        for file in data.files.unwrap_or_default() {
            if let Some(file) = hub_file(file, &subject)? {
                files.push(file);
            }
        }
        Ok(Resolved {
            repo: repo.to_owned(),
            commit,
            files: sorted_files(files, &subject)?,
        })
    }

    /// `GET /api/v1/models/{owner}/{name}/repo?Revision={commit}&FilePath={path}`.
    async fn download_range(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        offset: u64,
        end: Option<u64>,
    ) -> Result<Download, HubError> {
        let subject = file_subject(repo, commit, path)?;
        let (owner, name) = owner_name(repo)?;
        let mut url = self.http.url(["api", "v1", "models", owner, name, "repo"]);
        url.query_pairs_mut()
            .append_pair("Revision", commit)
            .append_pair("FilePath", path);
        self.http.download(url, offset, end, &subject).await
    }
}
