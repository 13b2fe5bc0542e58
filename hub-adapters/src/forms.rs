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

// ---- tar recipes ----

const BLOCK: u64 = 512;
/// The largest size the 11 octal digits of a ustar header hold (8 GiB - 1).
const USTAR_MAX_SIZE: u64 = 0o777_7777_7777;
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
const TYPE_FILE: u8 = b'0';
const TYPE_DIR: u8 = b'5';
const TYPE_PAX: u8 = b'x';

/// The tar bytes that come before a file's content in its image-form layer: entries for each
/// parent directory, then the file's header (long paths and sizes ≥ 8 GiB encoded so Go's
/// archive/tar and GNU tar read them). Deterministic: mtime 0, uid/gid 0, no user/group names,
/// dirs 0755, files 0644.
///
/// Headers are ustar (`ustar\0` `00`); a path that is not ASCII or does not fit ustar's
/// name/prefix split gets a PAX `path` record, a size ≥ 8 GiB a PAX `size` record, in a
/// preceding `x` entry named `PaxHeaders.0/<base name>` (as Go's writer does, whose rules these
/// follow).
pub fn tar_prefix(path: &str, size: u64) -> Result<Vec<u8>, FormError> {
    validate_path(path)?;
    let mut out = Vec::new();
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        end += i + 1;
        write_entry(&mut out, &path[..end], TYPE_DIR, 0o755, 0);
    }
    write_entry(&mut out, path, TYPE_FILE, 0o644, size);
    Ok(out)
}

/// Zero bytes after the content: padding to a 512-byte block, then the 1024-byte end marker.
pub fn tar_suffix_len(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK + 2 * BLOCK
}

fn write_entry(out: &mut Vec<u8>, name: &str, typeflag: u8, mode: u32, size: u64) {
    let split = ustar_split(name);
    let mut records = Vec::new();
    if split.is_none() {
        records.push(("path", name.to_owned()));
    }
    if size > USTAR_MAX_SIZE {
        records.push(("size", size.to_string()));
    }
    if !records.is_empty() {
        let data = pax_records(&records);
        let base = to_ascii(basename(name.trim_end_matches('/')));
        let pax_name = truncate(&format!("PaxHeaders.0/{base}"), NAME_LEN).to_owned();
        out.extend_from_slice(&header(&pax_name, "", TYPE_PAX, 0o644, data.len() as u64));
        out.extend_from_slice(&data);
        pad(out);
    }
    let (prefix, short) = match split {
        Some(split) => split,
        None => ("", truncate(&to_ascii(name), NAME_LEN).to_owned()),
    };
    // A size that needs PAX is written as 0 in the ustar field, as Go does.
    let field_size = if size > USTAR_MAX_SIZE { 0 } else { size };
    out.extend_from_slice(&header(&short, prefix, typeflag, mode, field_size));
}

/// Go's `splitUSTARPath`: the whole name when it fits, else a prefix (≤ 155 bytes) and name
/// (≤ 100 bytes) split at a `/`. `None` when neither works or the name is not ASCII.
fn ustar_split(name: &str) -> Option<(&str, String)> {
    if !name.is_ascii() {
        return None;
    }
    if name.len() <= NAME_LEN {
        return Some(("", name.to_owned()));
    }
    let mut length = name.len();
    if length > PREFIX_LEN + 1 {
        length = PREFIX_LEN + 1;
    } else if name.as_bytes()[length - 1] == b'/' {
        length -= 1;
    }
    let i = name[..length].rfind('/')?;
    let suffix = &name[i + 1..];
    if i == 0 || suffix.is_empty() || suffix.len() > NAME_LEN || i > PREFIX_LEN {
        return None;
    }
    Some((&name[..i], suffix.to_owned()))
}

/// PAX records `"<len> <key>=<value>\n"`, `<len>` counting the whole record, itself included.
fn pax_records(records: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + rest.to_string().len();
        if len.to_string().len() != rest.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
    }
    out
}

fn header(name: &str, prefix: &str, typeflag: u8, mode: u32, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    put(&mut h[0..100], name.as_bytes());
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0); // mtime
    h[156] = typeflag;
    put(&mut h[257..263], b"ustar\0");
    put(&mut h[263..265], b"00");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    put(&mut h[345..500], prefix.as_bytes());
    // Checksum: the header's bytes summed with the checksum field as spaces.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h
}

fn put(field: &mut [u8], bytes: &[u8]) {
    let n = bytes.len().min(field.len());
    field[..n].copy_from_slice(&bytes[..n]);
}

/// Zero-padded octal digits filling all but the last byte of `field`, then NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    put(field, s.as_bytes());
    field[digits] = 0;
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % BLOCK as usize;
    if rem != 0 {
        out.resize(out.len() + BLOCK as usize - rem, 0);
    }
}

/// Go's `toASCII`: non-ASCII characters (and NUL) dropped.
fn to_ascii(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii() && *c != '\0').collect()
}

fn truncate(s: &str, max: usize) -> &str {
    // Only ever called on ASCII, where every index is a char boundary.
    &s[..s.len().min(max)]
}

// ---- image form ----

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
///
/// Platforms are sorted (os, architecture, variant) and deduplicated first, so the same set in
/// any order gives the same index; `manifests[i]` and `configs[i]` follow that order. Each
/// config is `{architecture, os, [variant], config: {}, rootfs: {type: layers, diff_ids}}`;
/// each manifest has no `artifactType` and un-annotated `…layer.v1.tar` layers. `meta` does not
/// enter the bytes: the image is identified by its layers alone.
pub fn image_form(
    meta: &ModelMeta,
    layers: &[ImageLayer],
    platforms: &[Platform],
) -> Result<ImageForm, FormError> {
    let _ = meta;
    if platforms.is_empty() {
        return Err(FormError::NoPlatform);
    }
    for l in layers {
        validate_digest(&l.digest)?;
    }
    let mut platforms: Vec<&Platform> = platforms.iter().collect();
    for p in &platforms {
        validate_platform(p)?;
    }
    platforms.sort_by(|a, b| {
        (&a.os, &a.architecture, &a.variant).cmp(&(&b.os, &b.architecture, &b.variant))
    });
    platforms.dedup();

    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let mut manifests = Vec::with_capacity(platforms.len());
    let mut configs = Vec::with_capacity(platforms.len());
    for p in &platforms {
        let config = ImageConfigJson {
            architecture: &p.architecture,
            os: &p.os,
            variant: p.variant.as_deref(),
            config: EmptyJson {},
            rootfs: RootFsJson {
                kind: "layers",
                diff_ids: diff_ids.clone(),
            },
        };
        let config = Blob::new(OCI_CONFIG, to_json(&config)?);
        let manifest = ManifestJson {
            schema_version: 2,
            media_type: OCI_MANIFEST,
            artifact_type: None,
            config: DescriptorJson {
                media_type: OCI_CONFIG,
                digest: &config.digest,
                size: config.bytes.len() as u64,
                annotations: None,
                platform: None,
            },
            layers: layers
                .iter()
                .map(|l| DescriptorJson {
                    media_type: OCI_LAYER_TAR,
                    digest: &l.digest,
                    size: l.size,
                    annotations: None,
                    platform: None,
                })
                .collect(),
        };
        manifests.push(Blob::new(OCI_MANIFEST, to_json(&manifest)?));
        configs.push(config);
    }

    let top = if manifests.len() == 1 {
        manifests[0].clone()
    } else {
        let index = IndexJson {
            schema_version: 2,
            media_type: OCI_INDEX,
            manifests: manifests
                .iter()
                .zip(&platforms)
                .map(|(m, p)| DescriptorJson {
                    media_type: OCI_MANIFEST,
                    digest: &m.digest,
                    size: m.bytes.len() as u64,
                    annotations: None,
                    platform: Some(PlatformJson {
                        architecture: &p.architecture,
                        os: &p.os,
                        variant: p.variant.as_deref(),
                    }),
                })
                .collect(),
        };
        Blob::new(OCI_INDEX, to_json(&index)?)
    };
    Ok(ImageForm {
        top,
        manifests,
        configs,
    })
}

/// This host as an image platform: `linux` and Go's name for the CPU (`amd64`, `arm64`,
/// `arm/v7`, …).
pub fn platform_of_host() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "mips" if cfg!(target_endian = "little") => ("mipsle", None),
        other => (other, None), // riscv64, s390x, mips, mips64: the same in Go
    };
    Platform {
        os: "linux".to_owned(),
        architecture: architecture.to_owned(),
        variant: variant.map(str::to_owned),
    }
}

/// `os/architecture[/variant]` (`linux/amd64`, `linux/arm64/v8`), lowercased. Rust/uname names
/// `x86_64` and `aarch64` become `amd64` and `arm64`; a bare `arm` becomes `arm/v7`
/// (containerd's default).
pub fn parse_platform(s: &str) -> Result<Platform, FormError> {
    let lower = s.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [os, arch] => (*os, *arch, None),
        [os, arch, variant] => (*os, *arch, Some(*variant)),
        _ => return Err(FormError::Platform(s.to_owned())),
    };
    let arch = match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let variant = match (arch, variant) {
        ("arm", None) => Some("v7"),
        (_, v) => v,
    };
    let platform = Platform {
        os: os.to_owned(),
        architecture: arch.to_owned(),
        variant: variant.map(str::to_owned),
    };
    validate_platform(&platform).map_err(|_| FormError::Platform(s.to_owned()))?;
    Ok(platform)
}

fn validate_platform(p: &Platform) -> Result<(), FormError> {
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    if part_ok(&p.os) && part_ok(&p.architecture) && p.variant.as_deref().is_none_or(part_ok) {
        Ok(())
    } else {
        let variant = p
            .variant
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default();
        Err(FormError::Platform(format!(
            "{}/{}{variant}",
            p.os, p.architecture
        )))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        // "9 a=bcd\n" is 8 bytes + the digit: 9. Crossing a digit boundary: a record whose
        // body is 98 bytes is 100 long with a 3-digit length, not 99 with 2 digits.
        for value_len in 0..2000 {
            let value = "v".repeat(value_len);
            let rec = pax_records(&[("path", value)]);
            let (len, _) = std::str::from_utf8(&rec).unwrap().split_once(' ').unwrap();
            assert_eq!(
                len.parse::<usize>().unwrap(),
                rec.len(),
                "value_len {value_len}"
            );
        }
    }

    #[test]
    fn ustar_split_follows_go() {
        assert_eq!(ustar_split("a/b"), Some(("", "a/b".to_owned())));
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        assert_eq!(ustar_split(&long), Some((&long[..120], "f".repeat(90))));
        // no slash, a last component over 100 bytes, a prefix over 155, not ASCII
        assert_eq!(ustar_split(&"x".repeat(101)), None);
        assert_eq!(ustar_split(&format!("d/{}", "f".repeat(101))), None);
        assert_eq!(ustar_split(&format!("{}/f", "d".repeat(156))), None);
        assert_eq!(ustar_split("模型/权重.bin"), None);
        // a directory name's trailing slash does not count as the split point
        let dir = format!("{}/{}/", "d".repeat(60), "e".repeat(60));
        assert_eq!(
            ustar_split(&dir),
            Some((&dir[..60], format!("{}/", "e".repeat(60))))
        );
    }

    #[test]
    fn header_checksum_and_fields() {
        let h = header("a.txt", "", TYPE_FILE, 0o644, 1234);
        assert_eq!(&h[100..108], b"0000644\0");
        assert_eq!(&h[124..136], b"00000002322\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        let mut sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        sum -= h[148..156].iter().map(|&b| u32::from(b)).sum::<u32>();
        sum += 8 * u32::from(b' ');
        let field = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
        assert_eq!(&h[154..156], b"\0 ");
    }
}
