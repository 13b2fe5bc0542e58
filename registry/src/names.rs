//! Repository names, tags and manifest references, validated by the distribution-spec grammar.
//! Nothing that passes here can name a path outside the data directory: components are
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, so `..`, `%`, and empty or absolute components never pass.

use oci_spec::image::Digest;

use crate::digest::{self, Algorithm, DigestError};

/// Longest repository name accepted (distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator: ".", "_", "__" or one or more "-", always followed by alnum
        let sep_start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == sep_start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

/// Is `name` a valid repository name?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('/').all(valid_component)
}

/// Is `tag` a valid tag (`[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`)?
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest, Algorithm),
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
    #[error(transparent)]
    InvalidDigest(#[from] DigestError),
}

impl Reference {
    /// A reference with a `:` is a digest, anything else must be a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            let (d, alg) = digest::parse(s)?;
            Ok(Reference::Digest(d, alg))
        } else if valid_tag(s) {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(ReferenceError::InvalidTag(s.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/ubuntu",
            "a/b/c/d",
            "foo.bar/x_y__z",
            "a-b--c",
            "conformance/a/b/c",
            "0",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "..", "a/../b", "a/./b", "%2e%2e", "a%2fb", "-a", "a-",
            "a___b", "a..b", "a_", "a b", "a\0b",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"a".repeat(256)));
    }

    #[test]
    fn tags_and_references() {
        assert!(
            valid_tag("latest")
                && valid_tag("_x")
                && valid_tag("v1.0-rc_1")
                && valid_tag(&"a".repeat(128))
        );
        assert!(
            !valid_tag(".INVALID_MANIFEST_NAME")
                && !valid_tag("-x")
                && !valid_tag(&"a".repeat(129))
        );
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert!(Reference::parse("sha256:totallywrong").is_err());
        assert!(matches!(
            Reference::parse(".INVALID_MANIFEST_NAME"),
            Err(ReferenceError::InvalidTag(_))
        ));
    }
}
