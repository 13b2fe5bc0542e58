//! Digests: parsing that accepts exactly what Manta can verify, and streaming hashers.

use std::str::FromStr;

use oci_spec::image::{Digest, DigestAlgorithm};
use sha2::Digest as _;

/// The digest algorithms Manta verifies. sha256 is the default; sha512 is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// Parse the value of `?digest-algorithm=`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("malformed digest {0:?}")]
    Malformed(String),
    #[error("unsupported digest algorithm in {0:?} (sha256 and sha512 are supported)")]
    UnsupportedAlgorithm(String),
}

/// Parse a digest and check it is one Manta can verify: a supported algorithm and
/// exactly the right number of lowercase hex characters. Returns the algorithm too.
pub fn parse(s: &str) -> Result<(Digest, Algorithm), DigestError> {
    let d = Digest::from_str(s).map_err(|_| DigestError::Malformed(s.to_string()))?;
    let alg = match d.algorithm() {
        DigestAlgorithm::Sha256 => Algorithm::Sha256,
        DigestAlgorithm::Sha512 => Algorithm::Sha512,
        _ => return Err(DigestError::UnsupportedAlgorithm(s.to_string())),
    };
    let hex = d.digest();
    if hex.len() != alg.hex_len() || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(DigestError::Malformed(s.to_string()));
    }
    Ok((d, alg))
}

/// The algorithm of a digest that came through [`parse`].
pub fn algorithm_of(d: &Digest) -> Algorithm {
    match d.algorithm() {
        DigestAlgorithm::Sha512 => Algorithm::Sha512,
        _ => Algorithm::Sha256,
    }
}

/// A streaming hasher for one algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(alg: Algorithm) -> Self {
        match alg {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (alg, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        // Always well-formed: a known algorithm and lowercase hex.
        match Digest::from_str(&format!("{}:{hex}", alg.as_str())) {
            Ok(d) => d,
            Err(e) => unreachable!("hasher produced an invalid digest: {e}"),
        }
    }
}

/// Digest of a byte slice.
pub fn of_bytes(alg: Algorithm, data: &[u8]) -> Digest {
    let mut h = Hasher::new(alg);
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_the_rest() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(parse(empty).unwrap().1, Algorithm::Sha256);
        assert_eq!(of_bytes(Algorithm::Sha256, b"").to_string(), empty);
        let s512 = of_bytes(Algorithm::Sha512, b"x").to_string();
        assert_eq!(parse(&s512).unwrap().1, Algorithm::Sha512);
        for bad in [
            "sha256:totallywrong",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:../../etc/passwd",
            "",
            "sha256",
        ] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }
}
