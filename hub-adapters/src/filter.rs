//! Which files of a revision a request wants: `filename`, `allowPatterns`, `ignorePatterns` (the
//! fields of llmaz's ModelHub), with `huggingface_hub`'s glob semantics.
//!
//! The patterns behave exactly as in `huggingface_hub.utils.filter_repo_objects`: a backslash is
//! read as `/` (in patterns and paths), a pattern ending in `/` gets a `*` appended (a directory
//! selects everything below it), and matching is Python's `fnmatch.fnmatchcase`: case-sensitive,
//! `*` matches any run of characters *including* `/`, `?` one character, `[seq]` / `[!seq]` one
//! character in / not in the set, and nothing escapes anything.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

    /// Is `path` selected? `filename`, when set, selects that exact path only; the patterns
    /// apply on top of it (an empty list means "no such list", as `None` does in Python).
    pub fn matches(&self, path: &str) -> bool {
        if let Some(filename) = &self.filename {
            if path != filename {
                return false;
            }
        }
        let path = path.replace('\\', "/");
        if !self.allow_patterns.is_empty()
            && !self
                .allow_patterns
                .iter()
                .any(|p| pattern_matches(p, &path))
        {
            return false;
        }
        !self
            .ignore_patterns
            .iter()
            .any(|p| pattern_matches(p, &path))
    }

    /// A short, stable fingerprint of a non-trivial filter (12 lowercase hex), used in the
    /// derived tag of a subset (`<revision>-<fingerprint>`): the same filter gives the same tag on
    /// every node.
    ///
    /// The first 12 hex digits of the sha256 of the canonical JSON
    /// `["manta-filter/v1", filename|null, sorted unique allow, sorted unique ignore]`, so the
    /// order and repetition of patterns do not change it.
    pub fn fingerprint(&self) -> String {
        fn canonical(patterns: &[String]) -> Vec<&str> {
            let mut v: Vec<&str> = patterns.iter().map(String::as_str).collect();
            v.sort_unstable();
            v.dedup();
            v
        }
        let doc = serde_json::json!([
            "manta-filter/v1",
            self.filename,
            canonical(&self.allow_patterns),
            canonical(&self.ignore_patterns),
        ]);
        let digest = Sha256::digest(doc.to_string().as_bytes());
        let mut hex = hex::encode(digest);
        hex.truncate(12);
        hex
    }
}

/// `fnmatchcase(path, pattern)` after huggingface_hub's normalisation of the pattern.
fn pattern_matches(pattern: &str, path: &str) -> bool {
    let mut pattern = pattern.replace('\\', "/");
    if pattern.ends_with('/') {
        pattern.push('*');
    }
    fnmatchcase(path, &pattern)
}

/// One element of a compiled pattern.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// `*`: any run of characters (consecutive stars are one).
    Star,
    /// `?`: any one character.
    Any,
    /// `[...]`: one character in (or, negated, not in) the set.
    Set {
        negated: bool,
        items: Vec<(char, char)>,
    },
    Literal(char),
}

impl Token {
    /// Does this single-character token accept `c`? (`Star` is handled by the matcher.)
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Literal(l) => *l == c,
            Token::Set { negated, items } => {
                items.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
            }
        }
    }
}

/// Compile a pattern the way CPython's `fnmatch.translate` does.
fn compile(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' => {
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::Any),
            '[' => {
                // Find the closing bracket: a `!` first, then a `]` right after it (or first),
                // are part of the set.
                let mut j = i;
                if j < chars.len() && chars[j] == '!' {
                    j += 1;
                }
                if j < chars.len() && chars[j] == ']' {
                    j += 1;
                }
                while j < chars.len() && chars[j] != ']' {
                    j += 1;
                }
                if j >= chars.len() {
                    // No closing bracket: a literal `[`.
                    tokens.push(Token::Literal('['));
                    continue;
                }
                let mut body = &chars[i..j];
                i = j + 1;
                let negated = body.first() == Some(&'!');
                if negated {
                    body = &body[1..];
                }
                tokens.push(Token::Set {
                    negated,
                    items: set_items(body),
                });
            }
            other => tokens.push(Token::Literal(other)),
        }
    }
    tokens
}

/// The characters of a set body: `a-z` is a range (empty when reversed), any other character
/// (including a leading or trailing `-`) is itself.
fn set_items(body: &[char]) -> Vec<(char, char)> {
    let mut items = Vec::new();
    let mut k = 0;
    while k < body.len() {
        if k + 2 < body.len() && body[k + 1] == '-' {
            items.push((body[k], body[k + 2]));
            k += 3;
        } else {
            items.push((body[k], body[k]));
            k += 1;
        }
    }
    items
}

/// Python's `fnmatch.fnmatchcase(name, pattern)`.
fn fnmatchcase(name: &str, pattern: &str) -> bool {
    let tokens = compile(pattern);
    let name: Vec<char> = name.chars().collect();
    // Iterative wildcard matching with backtracking to the last star: every non-star token
    // consumes exactly one character, so this is exact and O(len(name) * len(pattern)).
    let (mut t, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match tokens.get(t) {
            Some(Token::Star) => {
                backtrack = Some((t, n));
                t += 1;
            }
            Some(token) if token.accepts(name[n]) => {
                t += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((star, from)) => {
                    t = star + 1;
                    n = from + 1;
                    backtrack = Some((star, from + 1));
                }
                None => return false,
            },
        }
    }
    tokens[t..].iter().all(|token| *token == Token::Star)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(patterns: &[&str]) -> Filter {
        Filter {
            allow_patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..Filter::default()
        }
    }

    fn ignore(patterns: &[&str]) -> Filter {
        Filter {
            ignore_patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..Filter::default()
        }
    }

    fn select<'a>(filter: &Filter, items: &[&'a str]) -> Vec<&'a str> {
        items
            .iter()
            .copied()
            .filter(|p| filter.matches(p))
            .collect()
    }

    const DUMMY: &[&str] = &[
        "not_hidden.pdf",
        "profile.jpg",
        ".hidden.pdf",
        ".hidden_picture.png",
    ];

    // The cases of huggingface_hub's tests/test_utils_paths.py.
    #[test]
    fn all_pdfs_even_hidden() {
        assert_eq!(
            select(&allow(&["*.pdf"]), DUMMY),
            ["not_hidden.pdf", ".hidden.pdf"]
        );
    }

    #[test]
    fn all_pdfs_except_hidden() {
        let mut f = allow(&["*.pdf"]);
        f.ignore_patterns = vec![".*".into()];
        assert_eq!(select(&f, DUMMY), ["not_hidden.pdf"]);
    }

    #[test]
    fn all_images() {
        assert_eq!(
            select(&allow(&["*.png", "*.jpg"]), DUMMY),
            ["profile.jpg", ".hidden_picture.png"]
        );
    }

    #[test]
    fn folder_pattern_gets_a_star() {
        let items = [
            "file.txt",
            "lfs.bin",
            "path/to/file.txt",
            "path/to/lfs.bin",
            "nested/path/to/file.txt",
            "nested/path/to/lfs.bin",
        ];
        assert_eq!(
            select(&allow(&["path/to/"]), &items),
            ["path/to/file.txt", "path/to/lfs.bin"]
        );
    }

    #[test]
    fn empty_pattern() {
        let items = ["file.txt", "lfs.bin"];
        assert!(select(&allow(&[""]), &items).is_empty());
        assert_eq!(select(&ignore(&[""]), &items), items);
    }

    #[test]
    fn case_sensitive() {
        let items = ["README.md", "notes.MD"];
        assert_eq!(select(&allow(&["*.MD"]), &items), ["notes.MD"]);
        assert_eq!(select(&allow(&["*.md"]), &items), ["README.md"]);
        let items = ["keep.txt", "drop.LOG", "keep.log"];
        assert_eq!(
            select(&ignore(&["*.LOG"]), &items),
            ["keep.txt", "keep.log"]
        );
    }

    #[test]
    fn backslashes_are_separators() {
        let items = ["unet/config.json", "vae/config.json", "unet/model.bin"];
        assert_eq!(
            select(&allow(&["unet\\config.json"]), &items),
            ["unet/config.json"]
        );
        let items = ["unet/config.json", "unet/model.bin"];
        assert_eq!(
            select(&ignore(&["unet\\*.json"]), &items),
            ["unet/model.bin"]
        );
        assert!(allow(&["unet/*.json"]).matches("unet\\config.json"));
    }

    #[test]
    fn default_git_ignore_patterns() {
        let f = ignore(&[
            ".git",
            ".git/*",
            "*/.git",
            "**/.git/**",
            ".cache/huggingface",
            ".cache/huggingface/*",
            "*/.cache/huggingface",
            "**/.cache/huggingface/**",
        ]);
        for ignored in [
            ".git",
            ".git/file.txt",
            ".git/folder/file.txt",
            "path/to/folder/.git",
            "path/to/folder/.git/file.txt",
            "path/to/.git/folder/file.txt",
            ".cache/huggingface",
            ".cache/huggingface/file.txt",
            ".cache/huggingface/folder/file.txt",
            "path/to/.cache/huggingface",
            "path/to/.cache/huggingface/file.txt",
        ] {
            assert!(!f.matches(ignored), "{ignored} must be ignored");
        }
        for kept in [
            ".gitignore",
            "path/foo.git/file.txt",
            "path/.git_bar/file.txt",
            "path/to/file.git",
            "file.huggingface",
            "path/file.huggingface",
            ".cache/huggingface_folder",
            ".cache/huggingface_folder/file.txt",
        ] {
            assert!(f.matches(kept), "{kept} must be kept");
        }
    }

    #[test]
    fn star_crosses_slashes() {
        let f = allow(&["*.json"]);
        assert!(f.matches("config.json"));
        assert!(f.matches("1_Pooling/config.json"));
        assert!(!f.matches("model.safetensors"));
        let f = allow(&["1_Pooling/*"]);
        assert!(f.matches("1_Pooling/config.json"));
        assert!(f.matches("1_Pooling/a/b.bin"));
        assert!(!f.matches("2_Dense/config.json"));
        assert!(!f.matches("1_Pooling"));
        let f = allow(&["*/"]);
        assert!(f.matches("1_Pooling/config.json"));
        assert!(!f.matches("config.json"));
    }

    #[test]
    fn sentence_transformers_selection() {
        // A typical `allowPatterns` for a sentence-transformers model.
        let f = Filter {
            allow_patterns: vec!["*.json".into(), "*.safetensors".into(), "1_Pooling/".into()],
            ignore_patterns: vec!["onnx/*".into(), "*.bin".into()],
            ..Filter::default()
        };
        let items = [
            "1_Pooling/config.json",
            "README.md",
            "config.json",
            "model.safetensors",
            "onnx/model.json",
            "pytorch_model.bin",
            "tokenizer.json",
        ];
        assert_eq!(
            select(&f, &items),
            [
                "1_Pooling/config.json",
                "config.json",
                "model.safetensors",
                "tokenizer.json"
            ]
        );
    }

    #[test]
    fn filename_selects_one_path() {
        let f = Filter {
            filename: Some("config.json".into()),
            ..Filter::default()
        };
        assert!(f.matches("config.json"));
        assert!(!f.matches("1_Pooling/config.json"));
        assert!(!f.matches("config.jsonx"));
        let f = Filter {
            filename: Some("config.json".into()),
            ignore_patterns: vec!["*.json".into()],
            ..Filter::default()
        };
        assert!(!f.matches("config.json"));
    }

    #[test]
    fn default_selects_everything() {
        let f = Filter::default();
        assert!(f.is_all());
        for p in DUMMY {
            assert!(f.matches(p));
        }
    }

    #[test]
    fn fnmatch_question_mark_and_sets() {
        assert!(fnmatchcase("a/b", "a?b"));
        assert!(!fnmatchcase("ab", "a?b"));
        assert!(fnmatchcase("model-00001.bin", "model-0000[0-9].bin"));
        assert!(!fnmatchcase("model-0000a.bin", "model-0000[0-9].bin"));
        assert!(fnmatchcase("model-0000a.bin", "model-0000[!0-9].bin"));
        assert!(!fnmatchcase("model-00001.bin", "model-0000[!0-9].bin"));
        // `]` first in a set is literal; `-` first or last is literal.
        assert!(fnmatchcase("]", "[]]"));
        assert!(fnmatchcase("]", "[!a]"));
        assert!(fnmatchcase("-", "[a-]"));
        assert!(fnmatchcase("-", "[-a]"));
        assert!(!fnmatchcase("b", "[a-]"));
        // Unclosed bracket: a literal `[`.
        assert!(fnmatchcase("[abc", "[abc"));
        assert!(!fnmatchcase("a", "[abc"));
        // Reversed ranges are empty; the rest of the set still counts.
        assert!(!fnmatchcase("b", "[z-a]"));
        assert!(fnmatchcase("b", "[z-ab]"));
        assert!(fnmatchcase("q", "[!z-a]"));
        // `a-b-c`: range a-b, then `-` and `c`.
        assert!(fnmatchcase("-", "[a-b-c]"));
        assert!(fnmatchcase("c", "[a-b-c]"));
        assert!(!fnmatchcase("bb", "[a-b-c]"));
        // No escaping: a backslash is an ordinary character.
        assert!(fnmatchcase("a\\b", "a\\b"));
        assert!(fnmatchcase("*", "[*]"));
        assert!(!fnmatchcase("x", "[*]"));
        // Newlines are characters like any other.
        assert!(fnmatchcase("a\nb", "a*b"));
        assert!(fnmatchcase("a\nb", "a?b"));
        // Case-sensitive.
        assert!(!fnmatchcase("A", "a"));
        assert!(!fnmatchcase("A", "[a-z]"));
    }

    #[test]
    fn fnmatch_stars() {
        assert!(fnmatchcase("", "*"));
        assert!(fnmatchcase("", "**"));
        assert!(!fnmatchcase("", "?"));
        assert!(fnmatchcase("abc", "*"));
        assert!(fnmatchcase("abcabd", "*abd"));
        assert!(fnmatchcase("aaab", "*a*b"));
        assert!(!fnmatchcase("aaac", "*a*b"));
        assert!(fnmatchcase("x/y/z.safetensors", "**/*.safetensors"));
        assert!(!fnmatchcase("z.safetensors", "**/*.safetensors"));
        assert!(fnmatchcase("mississippi", "m*iss*ppi"));
        assert!(!fnmatchcase("mississippi", "m*iss*ppix"));
    }

    #[test]
    fn fingerprint_is_canonical_and_stable() {
        let a = Filter {
            filename: None,
            allow_patterns: vec!["*.json".into(), "*.safetensors".into(), "*.json".into()],
            ignore_patterns: vec!["onnx/".into()],
        };
        let b = Filter {
            filename: None,
            allow_patterns: vec!["*.safetensors".into(), "*.json".into()],
            ignore_patterns: vec!["onnx/".into()],
        };
        let fp = a.fingerprint();
        assert_eq!(fp.len(), 12);
        assert!(fp
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_eq!(fp, b.fingerprint());
        // Allow and ignore are not interchangeable, nor is the filename.
        let swapped = Filter {
            filename: None,
            allow_patterns: vec!["onnx/".into()],
            ignore_patterns: vec!["*.json".into(), "*.safetensors".into()],
        };
        assert_ne!(fp, swapped.fingerprint());
        let with_name = Filter {
            filename: Some("config.json".into()),
            ..b.clone()
        };
        assert_ne!(fp, with_name.fingerprint());
        // Pinned: a fingerprint is part of tags stored on other nodes; it must never drift.
        let digest =
            Sha256::digest(br#"["manta-filter/v1",null,["*.json","*.safetensors"],["onnx/"]]"#);
        assert_eq!(fp, hex::encode(digest)[..12]);
    }
}
