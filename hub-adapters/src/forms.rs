//! The two OCI forms of one model revision, built deterministically from its file list: the same
//! files give the same bytes (and digests) on every node.

use serde::{Deserialize, Serialize};

pub const MODEL_ARTIFACT_TYPE: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const MODEL_CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.model.config.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_FILEPATH: &str = "org.cncf.model.filepath";

/// A content-addressed document (manifest, index or config) and its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

/// What identifies the revision inside the artifacts. Never the asked-for revision name, so
/// `main` and its commit give the same digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelMeta {
    /// Canonical repo id.
    pub repo: String,
    pub commit: String,
}

/// A file with its content digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawFile {
    pub path: String,
    pub size: u64,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// The raw (ModelPack) form: manifest and config.
#[derive(Clone, Debug)]
pub struct RawForm {
    pub manifest: Blob,
    pub config: Blob,
}

/// Build the raw form. `files` in any order; layers come out sorted by path.
pub fn raw_form(meta: &ModelMeta, files: &[RawFile]) -> Result<RawForm, FormError> {
    unimplemented!("{meta:?} {files:?}")
}

/// The ModelPack layer media type of a file (`…weight.v1.raw`, `…weight.config.v1.raw`, …).
pub fn raw_media_type(path: &str) -> &'static str {
    unimplemented!("{path}")
}

/// The tar bytes that come before a file's content in its image-form layer: entries for each
/// parent directory, then the file's header (long paths and sizes ≥ 8 GiB encoded so Go's
/// archive/tar and GNU tar read them). Deterministic: mtime 0, uid/gid 0, no user/group names,
/// dirs 0755, files 0644.
pub fn tar_prefix(path: &str, size: u64) -> Result<Vec<u8>, FormError> {
    unimplemented!("{path} {size}")
}

/// Zero bytes after the content: padding to a 512-byte block, then the 1024-byte end marker.
pub fn tar_suffix_len(size: u64) -> u64 {
    unimplemented!("{size}")
}

/// A layer of the image form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLayer {
    /// `sha256:<hex>` of the whole tar (= its diff_id: uncompressed).
    pub digest: String,
    /// Tar size: prefix + content + suffix.
    pub size: u64,
}

/// An OS/architecture the image form is offered for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// The image form: `top` is what the tag names — the manifest when one platform is asked for,
/// else an index of one manifest per platform. `manifests` are the per-platform manifests
/// (just `top` when there is one), `configs` their image configs.
#[derive(Clone, Debug)]
pub struct ImageForm {
    pub top: Blob,
    pub manifests: Vec<Blob>,
    pub configs: Vec<Blob>,
}

/// Build the image form from the layers in file-path order.
pub fn image_form(
    meta: &ModelMeta,
    layers: &[ImageLayer],
    platforms: &[Platform],
) -> Result<ImageForm, FormError> {
    unimplemented!("{meta:?} {layers:?} {platforms:?}")
}

#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("invalid file path {0:?}")]
    Path(String),
    #[error("no platform to build the image form for")]
    NoPlatform,
    #[error("cannot encode: {0}")]
    Encode(String),
}
