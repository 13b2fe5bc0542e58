//! The two OCI forms of one model revision, built deterministically from its file list: the same
//! files give the same bytes (and digests) on every node.
//!
//! Every document is serialised from structs with a fixed field order (Go's field order, so the
//! bytes look like what the Go tools write), compact, without a trailing newline. Nothing that
//! varies (time, host, asked-for revision name) goes in.
//!
//! - Raw form: ModelPack (CNCF model-spec v1). One `application/vnd.cncf.model.<kind>.v1.raw`
//!   layer per file, whose digest is the file's own digest.
//! - Image form: an OCI image with one uncompressed tar layer per file. The tar is a *recipe*
//!   ([`tar_prefix`] ++ the file ++ [`tar_suffix_len`] zero bytes), streamed, never stored.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod image;
mod tar;

pub use image::{image_form, parse_platform, platform_of_host, ImageForm, ImageLayer, Platform};
pub use tar::{tar_prefix, tar_suffix_len};

pub const MODEL_ARTIFACT_TYPE: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const MODEL_CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.model.config.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
pub const ANNOTATION_FILEPATH: &str = "org.cncf.model.filepath";
/// model-spec's per-layer file metadata (`FileMetadata` of `specs-go/v1/annotations.go`).
pub const ANNOTATION_FILE_METADATA: &str = "org.cncf.model.file.metadata+json";

/// Model weights (`*.safetensors`, `*.gguf`, …).
pub const MODEL_WEIGHT_RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
/// What loads the weights: `config.json`, tokenizer files, `*.json`, `*.model`, ….
pub const MODEL_WEIGHT_CONFIG_RAW: &str = "application/vnd.cncf.model.weight.config.v1.raw";
/// Documentation (`README*`, `LICENSE*`, `*.md`, `*.txt`, images) and anything unrecognised.
pub const MODEL_DOC_RAW: &str = "application/vnd.cncf.model.doc.v1.raw";
/// Code (`*.py`, `*.sh`, `*.ipynb`, `requirements*.txt`, …).
pub const MODEL_CODE_RAW: &str = "application/vnd.cncf.model.code.v1.raw";
/// Data (`*.parquet`, `*.arrow`, `*.csv`, `*.tsv`, `*.jsonl`).
pub const MODEL_DATASET_RAW: &str = "application/vnd.cncf.model.dataset.v1.raw";

/// An unrecognised file larger than this is taken for weights (modctl's
/// `WeightFileSizeThreshold`).
pub const WEIGHT_SIZE_THRESHOLD: u64 = 128 * 1024 * 1024;

/// A content-addressed document (manifest, index or config) and its identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    /// A blob of `bytes`, its digest computed.
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Blob {
            media_type: media_type.to_owned(),
            digest: sha256_digest(&bytes),
            bytes,
        }
    }
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
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

// ---- JSON documents (field order fixed; Go's struct order) ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson<'a> {
    schema_version: u32,
    media_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'static str>,
    config: DescriptorJson<'a>,
    layers: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson<'a> {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorJson<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<LayerAnnotations<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformJson<'a>>,
}

/// Keys in byte order, as Go marshals a map.
#[derive(Serialize)]
struct LayerAnnotations<'a> {
    #[serde(rename = "org.cncf.model.file.metadata+json")]
    file_metadata: String,
    #[serde(rename = "org.cncf.model.filepath")]
    filepath: &'a str,
    #[serde(rename = "org.opencontainers.image.title")]
    title: &'a str,
}

/// model-spec `FileMetadata`. Fixed values: nothing of the local file system leaks in.
#[derive(Serialize)]
struct FileMetadataJson<'a> {
    name: &'a str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    /// Go's zero `time.Time`: modctl treats it as unset and leaves the file's mtime alone.
    mtime: &'static str,
    typeflag: u8,
}

#[derive(Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
}

/// model-spec config (`schema/config-schema.json`): `descriptor`, `modelfs`, `config`.
#[derive(Serialize)]
struct ModelConfigJson<'a> {
    descriptor: ModelDescriptorJson<'a>,
    modelfs: ModelFsJson<'a>,
    config: ModelConfigInnerJson,
}

#[derive(Serialize)]
struct ModelDescriptorJson<'a> {
    name: &'a str,
    revision: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelFsJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
struct ModelConfigInnerJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
}

/// OCI image config, minimal: no `created`, no `history`.
#[derive(Serialize)]
struct ImageConfigJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: EmptyJson,
    rootfs: RootFsJson<'a>,
}

#[derive(Serialize)]
struct EmptyJson {}

#[derive(Serialize)]
struct RootFsJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<&'a str>,
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, FormError> {
    serde_json::to_vec(value).map_err(|e| FormError::Encode(e.to_string()))
}

/// Build the raw form. `files` in any order; layers come out sorted by path.
///
/// Each layer carries `org.opencontainers.image.title` and `org.cncf.model.filepath` (the
/// relative path) and `org.cncf.model.file.metadata+json` with fixed values (mode 0644, uid/gid
/// 0, Go's zero mtime, typeflag `'0'`). The config's `descriptor` is `{name: repo, revision:
/// commit}`, `config.format` names the weights' format when one is recognised.
pub fn raw_form(meta: &ModelMeta, files: &[RawFile]) -> Result<RawForm, FormError> {
    let mut sorted: Vec<&RawFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for (i, f) in sorted.iter().enumerate() {
        validate_path(&f.path)?;
        validate_digest(&f.digest)?;
        if i > 0 && sorted[i - 1].path == f.path {
            return Err(FormError::Path(f.path.clone()));
        }
    }

    let config = ModelConfigJson {
        descriptor: ModelDescriptorJson {
            name: &meta.repo,
            revision: &meta.commit,
        },
        modelfs: ModelFsJson {
            kind: "layers",
            diff_ids: sorted.iter().map(|f| f.digest.as_str()).collect(),
        },
        config: ModelConfigInnerJson {
            format: weight_format(&sorted),
        },
    };
    let config = Blob::new(MODEL_CONFIG_MEDIA_TYPE, to_json(&config)?);

    let mut layers = Vec::with_capacity(sorted.len());
    for f in &sorted {
        let metadata = FileMetadataJson {
            name: basename(&f.path),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: f.size,
            mtime: "0001-01-01T00:00:00Z",
            typeflag: b'0',
        };
        layers.push(DescriptorJson {
            media_type: raw_media_type_sized(&f.path, f.size),
            digest: &f.digest,
            size: f.size,
            annotations: Some(LayerAnnotations {
                file_metadata: serde_json::to_string(&metadata)
                    .map_err(|e| FormError::Encode(e.to_string()))?,
                filepath: &f.path,
                title: &f.path,
            }),
            platform: None,
        });
    }
    let manifest = ManifestJson {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        artifact_type: Some(MODEL_ARTIFACT_TYPE),
        config: DescriptorJson {
            media_type: MODEL_CONFIG_MEDIA_TYPE,
            digest: &config.digest,
            size: config.bytes.len() as u64,
            annotations: None,
            platform: None,
        },
        layers,
    };
    let manifest = Blob::new(OCI_MANIFEST, to_json(&manifest)?);
    Ok(RawForm { manifest, config })
}

/// `config.format`: the first of safetensors, gguf, onnx that some weight file has.
fn weight_format(files: &[&RawFile]) -> Option<&'static str> {
    ["safetensors", "gguf", "onnx"].into_iter().find(|fmt| {
        files.iter().any(|f| {
            raw_media_type_sized(&f.path, f.size) == MODEL_WEIGHT_RAW
                && extension(&f.path.to_ascii_lowercase()) == Some(*fmt)
        })
    })
}

/// The ModelPack layer media type of a file (`…weight.v1.raw`, `…weight.config.v1.raw`, …).
///
/// Decided by the file's base name, case-insensitively, first match wins (modctl's order,
/// `pkg/modelfile/constants.go`, with datasets added):
/// 1. weight.config by name: `*tokenizer.model*` (`tokenizer.model.v3`), `config.json.*`,
///    `vocab.txt`, `merges.txt`;
/// 2. dataset: `*.parquet`, `*.arrow`, `*.csv`, `*.tsv`, `*.jsonl`, `*.ndjson`;
/// 3. weight.config: `*.json`, `*.json5`, `*.jsonc`, `*.yaml`, `*.yml`, `*.toml`, `*.ini`,
///    `*.cfg`, `*.conf`, `*.config`, `*.xml`, `*.model` (sentencepiece), `*.tiktoken`,
///    `*.modelcard`, `*.params`, `*.hparams`;
/// 4. weight: `*.safetensors`, `*.bin`, `*.pt`, `*.pth`, `*.gguf`, `*.onnx`, `*.h5`,
///    `*.msgpack`, `*.ckpt`, `*.tflite`, `*.ot`, `*.pb`, `*.npy`, `*.pkl`, … and TensorFlow's
///    `*.index` / `*.data-*`;
/// 5. code: `*.py`, `*.sh`, `*.ipynb`, other source files, `requirements*.txt`,
///    `Makefile*`, `Dockerfile*`, `CMakeLists.txt`;
/// 6. doc: `README*`, `LICENSE*`, `*.md`, `*.txt`, `*.pdf`, images, …;
/// 7. anything else (`.gitattributes`, audio samples, archives): doc.
///
/// [`raw_media_type_sized`] (what [`raw_form`] uses) differs only in step 7.
pub fn raw_media_type(path: &str) -> &'static str {
    classify(path).unwrap_or(MODEL_DOC_RAW)
}

/// [`raw_media_type`], except that an unrecognised file over [`WEIGHT_SIZE_THRESHOLD`] is
/// weights, as modctl decides.
pub fn raw_media_type_sized(path: &str, size: u64) -> &'static str {
    classify(path).unwrap_or(if size > WEIGHT_SIZE_THRESHOLD {
        MODEL_WEIGHT_RAW
    } else {
        MODEL_DOC_RAW
    })
}

const DATASET_EXT: &[&str] = &["parquet", "arrow", "csv", "tsv", "jsonl", "ndjson"];
const CONFIG_EXT: &[&str] = &[
    "json",
    "json5",
    "jsonc",
    "yaml",
    "yml",
    "toml",
    "ini",
    "cfg",
    "conf",
    "config",
    "xml",
    "model",
    "tiktoken",
    "modelcard",
    "params",
    "hparams",
];
const WEIGHT_EXT: &[&str] = &[
    "safetensors",
    "bin",
    "pt",
    "pth",
    "pt2",
    "ptl",
    "pte",
    "mar",
    "gguf",
    "ggml",
    "onnx",
    "onnx_data",
    "h5",
    "hdf",
    "hdf5",
    "keras",
    "msgpack",
    "ckpt",
    "checkpoint",
    "tflite",
    "pb",
    "meta",
    "index",
    "ot",
    "engine",
    "trt",
    "npy",
    "npz",
    "pkl",
    "pickle",
    "joblib",
    "nemo",
    "llamafile",
    "mlmodel",
    "caffemodel",
    "tensor",
    "weights",
];
const CODE_EXT: &[&str] = &[
    "py", "pyi", "ipynb", "sh", "bash", "zsh", "patch", "c", "h", "cc", "cpp", "cxx", "hpp", "hh",
    "cu", "cuh", "java", "js", "mjs", "cjs", "ts", "go", "rs", "swift", "rb", "lua", "jl", "r",
    "scala", "kt", "sql", "zig", "ps1", "bat", "cmake", "mk",
];
const DOC_EXT: &[&str] = &[
    "md", "markdown", "rst", "txt", "pdf", "html", "htm", "adoc", "log", "png", "jpg", "jpeg",
    "gif", "bmp", "svg", "webp", "ico", "tiff",
];
const DOC_NAME_PREFIX: &[&str] = &[
    "readme",
    "license",
    "licence",
    "copying",
    "notice",
    "changelog",
    "setup",
];

fn classify(path: &str) -> Option<&'static str> {
    let name = basename(path).to_ascii_lowercase();
    let ext = extension(&name);
    let ext_in = |list: &[&str]| ext.is_some_and(|e| list.contains(&e));
    if name.contains("tokenizer.model")
        || name.starts_with("config.json.")
        || name == "vocab.txt"
        || name == "merges.txt"
    {
        Some(MODEL_WEIGHT_CONFIG_RAW)
    } else if ext_in(DATASET_EXT) {
        Some(MODEL_DATASET_RAW)
    } else if ext_in(CONFIG_EXT) {
        Some(MODEL_WEIGHT_CONFIG_RAW)
    } else if ext_in(WEIGHT_EXT) || ext.is_some_and(|e| e.starts_with("data-")) {
        Some(MODEL_WEIGHT_RAW)
    } else if ext_in(CODE_EXT)
        || name.starts_with("requirements")
        || name.starts_with("makefile")
        || name.starts_with("dockerfile")
        || name == "cmakelists.txt"
    {
        Some(MODEL_CODE_RAW)
    } else if ext_in(DOC_EXT) || DOC_NAME_PREFIX.iter().any(|p| name.starts_with(p)) {
        Some(MODEL_DOC_RAW)
    } else {
        None
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What follows the last dot of a base name, if anything precedes it (`.gitattributes` has none).
fn extension(name: &str) -> Option<&str> {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => Some(ext),
        _ => None,
    }
}

/// A relative `/`-separated path with no empty, `.` or `..` component, no backslash, no NUL.
fn validate_path(path: &str) -> Result<(), FormError> {
    let bad = path.is_empty()
        || path.contains(['\\', '\0'])
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(FormError::Path(path.to_owned()));
    }
    Ok(())
}

/// `sha256:` and 64 lowercase hex digits.
fn validate_digest(digest: &str) -> Result<(), FormError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(FormError::Digest(digest.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("invalid file path {0:?}")]
    Path(String),
    #[error("invalid digest {0:?} (want sha256:<64 lowercase hex>)")]
    Digest(String),
    #[error("invalid platform {0:?} (want os/architecture[/variant])")]
    Platform(String),
    #[error("no platform to build the image form for")]
    NoPlatform,
    #[error("cannot encode: {0}")]
    Encode(String),
}
