//! The content loaded into both servers: a deterministic pseudo-random blob written to a file
//! (hashed while it is written), a small image config and a manifest that references both.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest as _, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// A blob on disk, with its size and `sha256:` digest.
#[derive(Clone, Debug)]
pub struct BlobFile {
    pub path: std::path::PathBuf,
    pub size: u64,
    pub digest: String,
}

/// xoshiro256++: fast (several GB/s), deterministic, incompressible output.
struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    fn new(seed: u64) -> Self {
        // Expand the seed with splitmix64, as the authors recommend.
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// Writes `size` pseudo-random bytes from `seed` to `path`, hashing them on the way.
pub fn write_blob(path: &Path, size: u64, seed: u64) -> anyhow::Result<BlobFile> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut rng = Xoshiro256pp::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64))?;
        let chunk = &mut buf[..n];
        rng.fill(chunk);
        hasher.update(&*chunk);
        out.write_all(chunk)
            .with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    out.flush()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(BlobFile {
        path: path.to_path_buf(),
        size,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
    })
}

/// `len` pseudo-random bytes from `seed` (the generator of [`write_blob`], in memory).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    Xoshiro256pp::new(seed).fill(&mut buf);
    buf
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The image config blob (small, fixed bytes).
pub fn config_bytes() -> Vec<u8> {
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#
        .to_vec()
}

/// An OCI image manifest referencing `config` and the single layer `layer`.
pub fn manifest_bytes(config: &[u8], layer: &BlobFile) -> anyhow::Result<Vec<u8>> {
    image_manifest_bytes(config, std::slice::from_ref(layer))
}

/// An OCI image manifest referencing `config` and `layers`, in order.
pub fn image_manifest_bytes(config: &[u8], layers: &[BlobFile]) -> anyhow::Result<Vec<u8>> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": l.digest,
                "size": l.size,
            })
        })
        .collect();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": sha256_digest(config),
            "size": config.len(),
        },
        "layers": layers,
    });
    Ok(serde_json::to_vec(&m)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_deterministic_and_digest_matches_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = write_blob(&dir.path().join("a"), 100_003, 7).expect("write a");
        let b = write_blob(&dir.path().join("b"), 100_003, 7).expect("write b");
        let c = write_blob(&dir.path().join("c"), 100_003, 8).expect("write c");
        let bytes = std::fs::read(&a.path).expect("read a");
        assert_eq!(bytes.len(), 100_003);
        assert_eq!(a.digest, sha256_digest(&bytes));
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
    }
}
