//! The content the suite pushes: configs, layers, manifests, referrers artifacts (setup.go).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};

pub const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const EMPTY_JSON_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_JSON_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
pub const EMPTY_BLOB_DIGEST: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub const TEST_TAG: &str = "tagtest0";
pub const EMPTY_LAYER_TAG: &str = "emptylayer";
pub const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";
pub const INVALID_MANIFEST: &[u8] = b"blablabla";
pub const ANNOTATION_KEY: &str = "org.opencontainers.conformance.test";
pub const ARTIFACT_TYPE_A: &str = "application/vnd.nhl.peanut.butter.bagel";
pub const ARTIFACT_TYPE_B: &str = "application/vnd.nba.strawberry.jam.croissant";
pub const ARTIFACT_TYPE_INDEX: &str = "application/vnd.food.stand";

/// The error codes of the distribution spec.
pub const ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
];

/// A gzipped tarball holding one text file (the Go suite's `layerBase64String`).
const LAYER_HEX: &str = "1f8b0800000000000003edce410ac2301085e1ae3dc578014949da1cc093441a6d411369a7a8b7b745\
0457ba2a22fedf6206e6cde2691c74a3572d166426b573f32e7d655ef7837745696b67bdb1de4ff7d2785b1562962cf5340e1a7a91e2\
7c8a6fff3ee53fea9647d9656d631f1bd12cfb2e359247954b1ba61106e992cce946b6391dfaa0e3316897d3b05e7dbb3b0000000000\
0000000000000000fcb33b7e0c9eaa00280000";

/// Content and its sha256 digest.
#[derive(Debug, Clone)]
pub struct TestBlob {
    pub content: Vec<u8>,
    pub digest: String,
}

impl TestBlob {
    pub fn new(content: Vec<u8>) -> Self {
        let digest = sha256_digest(&content);
        Self { content, digest }
    }

    pub fn len(&self) -> usize {
        self.content.len()
    }

    pub fn is_empty(&self) -> bool {
        self.content.is_empty()
    }

    /// An OCI descriptor of this content.
    pub fn descriptor(&self, media_type: &str) -> Value {
        json!({ "mediaType": media_type, "size": self.len(), "digest": self.digest })
    }
}

pub fn sha256_digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub fn sha512_digest(b: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(b)))
}

/// A blob split in two chunks (`setupChunkedBlob`).
#[derive(Debug, Clone)]
pub struct ChunkedBlob {
    pub blob: TestBlob,
    pub split: usize,
}

impl ChunkedBlob {
    pub fn new(size: usize, seed: u64) -> Self {
        Self {
            blob: TestBlob::new(pseudo_random(size, seed)),
            split: size / 2 + 1,
        }
    }

    pub fn chunk1(&self) -> &[u8] {
        &self.blob.content[..self.split]
    }

    pub fn chunk2(&self) -> &[u8] {
        &self.blob.content[self.split..]
    }

    /// `0-<end of chunk 1>`
    pub fn chunk1_range(&self) -> String {
        format!("0-{}", self.split - 1)
    }

    /// `<start of chunk 2>-<end>`
    pub fn chunk2_range(&self) -> String {
        format!("{}-{}", self.split, self.blob.len() - 1)
    }
}

/// Everything one run pushes. Configs carry a random author so that each run has its own digests.
#[derive(Debug, Clone)]
pub struct Fixtures {
    pub seed: u64,
    pub configs: Vec<TestBlob>,
    pub layer: TestBlob,
    pub manifests: Vec<TestBlob>,
    pub empty_layer_manifest: TestBlob,
    pub blob_a: TestBlob,
    pub chunked: ChunkedBlob,
    pub empty_json: TestBlob,
    pub ref_blob_a: TestBlob,
    pub ref_blob_b: TestBlob,
    pub refs_a_config: TestBlob,
    pub refs_b_config: TestBlob,
    pub refs_a_layer: TestBlob,
    pub refs_b_layer: TestBlob,
    pub refs_c_layer: TestBlob,
    pub refs_index: TestBlob,
    pub push_config_type: TestBlob,
    pub push_artifact_type: TestBlob,
    /// Annotation value of each referrer, by digest.
    pub annotation_values: HashMap<String, String>,
    /// Expected `artifactType` of each referrer, by digest.
    pub artifact_types: HashMap<String, String>,
    pub dummy_digest: String,
}

impl Fixtures {
    pub fn generate() -> Result<Self> {
        let seed = fresh_seed();
        let layer = TestBlob::new(hex::decode(LAYER_HEX).context("layer fixture")?);
        let configs = (0..5u64)
            .map(|i| {
                let config = json!({
                    "author": random_string(16, seed.wrapping_add(100 + i)),
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": { "type": "layers", "diff_ids": [] },
                });
                Ok(TestBlob::new(serde_json::to_vec_pretty(&config)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let config_descriptor = |c: &TestBlob| {
            json!({
                "mediaType": CONFIG_TYPE,
                "digest": c.digest,
                "size": c.len(),
                // The config inlined, and a field no spec defines: both must be stored untouched.
                "data": base64(&c.content),
                "newUnspecifiedField": base64(b"hello world"),
            })
        };
        let manifests = configs
            .iter()
            .map(|c| {
                let m = json!({
                    "schemaVersion": 2,
                    "mediaType": MANIFEST_TYPE,
                    "config": config_descriptor(c),
                    "layers": [layer.descriptor(LAYER_TYPE)],
                });
                Ok(TestBlob::new(serde_json::to_vec_pretty(&m)?))
            })
            .collect::<Result<Vec<_>>>()?;
        // No mediaType and no layers.
        let empty_layer_manifest = pretty(
            &json!({ "schemaVersion": 2, "config": config_descriptor(&configs[1]), "layers": [] }),
        )?;

        let empty_json = TestBlob::new(b"{}".to_vec());
        let ref_blob_a = TestBlob::new(b"NHL Peanut Butter on my NHL bagel".to_vec());
        let ref_blob_b = TestBlob::new(b"NBA Strawberry Jam on my NBA croissant".to_vec());
        let subject4 = manifests[4].descriptor(MANIFEST_TYPE);
        let subject3 = manifests[3].descriptor(MANIFEST_TYPE);
        let empty_desc = empty_json.descriptor(EMPTY_JSON_TYPE);

        let config_artifact = |art: &str, blob: &TestBlob, note: &str| {
            pretty(&json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": blob.descriptor(art),
                "subject": subject4,
                "layers": [empty_desc],
                "annotations": { ANNOTATION_KEY: note },
            }))
        };
        let layer_artifact = |art: &str, blob: &TestBlob, subject: &Value, note: Option<&str>| {
            let mut m = json!({
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "artifactType": art,
                "config": empty_desc,
                "subject": subject,
                "layers": [blob.descriptor(art)],
            });
            if let (Some(note), Some(obj)) = (note, m.as_object_mut()) {
                obj.insert("annotations".into(), json!({ ANNOTATION_KEY: note }));
            }
            pretty(&m)
        };
        let refs_a_config = config_artifact(ARTIFACT_TYPE_A, &ref_blob_a, "test config a")?;
        let refs_b_config = config_artifact(ARTIFACT_TYPE_B, &ref_blob_b, "test config b")?;
        let refs_a_layer = layer_artifact(
            ARTIFACT_TYPE_A,
            &ref_blob_a,
            &subject4,
            Some("test layer a"),
        )?;
        let refs_b_layer = layer_artifact(
            ARTIFACT_TYPE_B,
            &ref_blob_b,
            &subject4,
            Some("test layer b"),
        )?;
        // Same as B, about a subject that is never pushed before it.
        let refs_c_layer = layer_artifact(ARTIFACT_TYPE_B, &ref_blob_b, &subject3, None)?;
        let refs_index = pretty(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "artifactType": ARTIFACT_TYPE_INDEX,
            "manifests": [refs_a_config.descriptor(MANIFEST_TYPE), refs_a_layer.descriptor(MANIFEST_TYPE)],
            "subject": subject4,
            "annotations": { ANNOTATION_KEY: "test index" },
        }))?;

        // Push workflow: artifacts without a subject.
        let push_config_type = pretty(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": ref_blob_a.descriptor(ARTIFACT_TYPE_A),
            "layers": [empty_desc],
        }))?;
        let push_artifact_type = pretty(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": ARTIFACT_TYPE_A,
            "config": empty_desc,
            "layers": [ref_blob_a.descriptor(ARTIFACT_TYPE_A)],
        }))?;

        let mut annotation_values = HashMap::new();
        let mut artifact_types = HashMap::new();
        for (m, note, art) in [
            (&refs_a_config, "test config a", ARTIFACT_TYPE_A),
            (&refs_b_config, "test config b", ARTIFACT_TYPE_B),
            (&refs_a_layer, "test layer a", ARTIFACT_TYPE_A),
            (&refs_b_layer, "test layer b", ARTIFACT_TYPE_B),
            (&refs_index, "test index", ARTIFACT_TYPE_INDEX),
        ] {
            annotation_values.insert(m.digest.clone(), note.to_string());
            artifact_types.insert(m.digest.clone(), art.to_string());
        }
        artifact_types.insert(refs_c_layer.digest.clone(), ARTIFACT_TYPE_B.to_string());

        Ok(Self {
            seed,
            configs,
            layer,
            manifests,
            empty_layer_manifest,
            blob_a: TestBlob::new(pseudo_random(42, seed.wrapping_add(1))),
            chunked: ChunkedBlob::new(42, seed.wrapping_add(2)),
            empty_json,
            ref_blob_a,
            ref_blob_b,
            refs_a_config,
            refs_b_config,
            refs_a_layer,
            refs_b_layer,
            refs_c_layer,
            refs_index,
            push_config_type,
            push_artifact_type,
            annotation_values,
            artifact_types,
            dummy_digest: sha256_digest(b"hello world"),
        })
    }
}

fn pretty(v: &Value) -> Result<TestBlob> {
    Ok(TestBlob::new(serde_json::to_vec_pretty(v)?))
}

/// A seed that differs between runs and between calls within a run.
pub fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// `size` reproducible pseudo-random bytes (sha256 in counter mode).
pub fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 32);
    let mut counter = 0u64;
    while out.len() < size {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(counter.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(size);
    out
}

/// Letters, digits and `-` (`randomString`).
pub fn random_string(n: usize, seed: u64) -> String {
    const LETTERS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-";
    pseudo_random(n, seed)
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect()
}

/// Standard base64 with padding, as Go's `encoding/json` writes `[]byte`.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_go() {
        assert_eq!(base64(b"hello world"), "aGVsbG8gd29ybGQ=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn fixed_digests() {
        let f = Fixtures::generate().unwrap();
        assert_eq!(f.empty_json.digest, EMPTY_JSON_DIGEST);
        assert_eq!(sha256_digest(b""), EMPTY_BLOB_DIGEST);
        assert_eq!(f.chunked.chunk1().len() + f.chunked.chunk2().len(), 42);
        assert_ne!(f.configs[0].digest, f.configs[1].digest);
    }
}
