//! Which files of a revision a request wants: `filename`, `allowPatterns`, `ignorePatterns` (the
//! fields of llmaz's ModelHub), with `huggingface_hub`'s glob semantics.

use serde::{Deserialize, Serialize};

/// A subset of a revision's files. The default selects every file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// One file, by path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_patterns: Vec<String>,
}

impl Filter {
    /// Does this filter select every file?
    pub fn is_all(&self) -> bool {
        self.filename.is_none() && self.allow_patterns.is_empty() && self.ignore_patterns.is_empty()
    }

    /// Is `path` selected?
    pub fn matches(&self, path: &str) -> bool {
        unimplemented!("{path}")
    }

    /// A short, stable fingerprint of a non-trivial filter (12 lowercase hex), used in the
    /// derived tag of a subset (`<revision>-<fingerprint>`): the same filter gives the same tag on
    /// every node.
    pub fn fingerprint(&self) -> String {
        unimplemented!()
    }
}
