//! Prefetch jobs: `POST /manta/v1/prefetch` starts one, `GET /manta/v1/prefetch/<id>` follows it.

use std::collections::BTreeMap;

use manta_hub::{Filter, HubKind};
use serde::{Deserialize, Serialize};

/// The two forms of a hub revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// ModelPack (`hf-raw/…`): the original files, for `oras pull`.
    Raw,
    /// An OCI image (`hf/…`): one tar layer per file, for image volumes.
    Image,
}

impl Form {
    /// How the API spells it (`raw`, `image`).
    pub fn as_str(self) -> &'static str {
        match self {
            Form::Raw => "raw",
            Form::Image => "image",
        }
    }
}

/// `POST /manta/v1/prefetch`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefetchRequest {
    pub hub: HubKind,
    /// Repo id on the hub (`Qwen/Qwen2.5-0.5B-Instruct`).
    pub repo: String,
    /// Branch, tag, `refs/pr/N` or commit [default: `main` on Hugging Face, `master` on ModelScope].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(flatten)]
    pub filter: Filter,
    /// The forms to make ready [default: both].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forms: Vec<Form>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    /// Whether the job has ended (it changes no more).
    pub fn is_ended(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    Pending,
    Running,
    Done,
    Failed,
}

/// One file of a job's revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileProgress {
    pub path: String,
    pub size: u64,
    pub bytes_done: u64,
    pub state: FileState,
}

/// A prefetch job as the agent reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    /// Grows at every change of the job's state or of what it knows of the revision: a caller
    /// waits for the next one with [`crate::Client::job_wait`].
    #[serde(default)]
    pub version: u64,
    pub state: JobState,
    pub hub: HubKind,
    /// The repo id, canonical once resolved (`Qwen/Qwen2.5-0.5B-Instruct`).
    pub repo: String,
    pub revision: String,
    /// The commit the revision resolved to.
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub bytes_done: u64,
    /// Known once the revision's file list is.
    #[serde(default)]
    pub bytes_total: Option<u64>,
    #[serde(default)]
    pub files: Vec<FileProgress>,
    /// The references to pull each prepared form by (`hf/<repo>:<tag>`), once the job succeeded.
    #[serde(default)]
    pub references: BTreeMap<Form, String>,
    /// Why the job failed (the hub's reason for a gated or missing repo).
    #[serde(default)]
    pub error: Option<String>,
    /// What kind of failure it was, for a caller that acts on it (the operator tells a hub's
    /// refusal, the same on every node, from a node's own trouble).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<JobFailure>,
}

/// Why a prefetch job failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobFailure {
    /// The hub refused: a gated or private repo, a token that may not read it.
    HubRefused,
    /// The hub has no such repo, revision or file.
    NotFound,
    /// The repo cannot be served as an OCI artifact (a path no tar can hold).
    Unrepresentable,
    /// The hub could not be reached, timed out, or rate-limited the agent.
    HubUnavailable,
    /// The node has no room for it.
    NoSpace,
    /// Anything else (a digest mismatch, a local error).
    Other,
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

    #[test]
    fn forms_are_spelled_as_in_json() {
        for f in [Form::Raw, Form::Image] {
            assert_eq!(
                serde_json::to_value(f).unwrap(),
                serde_json::Value::from(f.as_str())
            );
        }
    }

    #[test]
    fn prefetch_requests_omit_what_is_defaulted() {
        let r = PrefetchRequest {
            hub: HubKind::Hf,
            repo: "a/b".into(),
            revision: None,
            filter: Filter::default(),
            forms: vec![],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"hub":"hf","repo":"a/b"}"#
        );
    }

    #[test]
    fn jobs_round_trip_with_references_by_form() {
        let json = r#"{"id":"1","state":"succeeded","hub":"hf","repo":"a/B","revision":"main",
            "commit":"c","bytesDone":3,"bytesTotal":3,
            "files":[{"path":"x","size":3,"bytesDone":3,"state":"done"}],
            "references":{"raw":"hf-raw/a/b:main","image":"hf/a/b:main"},"error":null}"#;
        let job: Job = serde_json::from_str(json).unwrap();
        assert_eq!(job.references[&Form::Image], "hf/a/b:main");
        assert!(job.state.is_ended());
        let again: Job = serde_json::from_value(serde_json::to_value(&job).unwrap()).unwrap();
        assert_eq!(again, job);
    }
}
