//! The fixture's repositories as given by a test, and as prepared at start: sizes, sha256, git
//! object ids (blobs, LFS pointers, trees), refs resolved to commits, directory listings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

/// Where a file's bytes come from.
#[derive(Clone)]
pub enum FileSource {
    /// Held in memory (small files).
    Bytes(Bytes),
    /// Read from disk on every request, never loaded whole (big files).
    Disk(PathBuf),
}

impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Self::Disk(p) => write!(f, "Disk({})", p.display()),
        }
    }
}

/// One file of a commit.
#[derive(Clone, Debug)]
pub struct FixtureFile {
    /// Path in the repository, `/`-separated, no leading `/` (`1_Pooling/config.json`).
    pub path: String,
    pub source: FileSource,
    /// Stored in Git LFS: listed with `lfs {oid, size, pointerSize}`, its git blob is the LFS
    /// pointer, and `resolve` redirects to the CDN host.
    pub lfs: bool,
    /// The content's sha256 (hex), when the caller already knows it: the fixture then does not
    /// read an LFS file at start. Trusted as given.
    pub sha256: Option<String>,
}

impl FixtureFile {
    /// A regular (non-LFS) file held in memory.
    pub fn bytes(path: &str, content: impl Into<Bytes>) -> Self {
        Self {
            path: path.to_string(),
            source: FileSource::Bytes(content.into()),
            lfs: false,
            sha256: None,
        }
    }

    /// A regular (non-LFS) file read from `disk` on each request.
    pub fn disk(path: &str, disk: impl Into<PathBuf>) -> Self {
        Self {
            path: path.to_string(),
            source: FileSource::Disk(disk.into()),
            lfs: false,
            sha256: None,
        }
    }

    /// The same file, stored in LFS.
    pub fn lfs(mut self) -> Self {
        self.lfs = true;
        self
    }

    /// The same file with its sha256 (hex) given, so that start-up does not hash it.
    pub fn with_sha256(mut self, sha256: &str) -> Self {
        self.sha256 = Some(sha256.to_ascii_lowercase());
        self
    }
}

/// A commit: its id (40 lowercase hex), title, date and complete file set.
#[derive(Clone, Debug)]
pub struct FixtureCommit {
    pub id: String,
    pub title: String,
    /// Seconds since the epoch; `lastModified` on the Hugging Face side, `CreatedAt` and
    /// `CommittedDate` on the ModelScope side.
    pub date: u64,
    pub files: Vec<FixtureFile>,
}

impl FixtureCommit {
    /// A commit dated 2023-11-14T22:13:20Z titled "Upload files".
    pub fn new(id: &str, files: Vec<FixtureFile>) -> Self {
        Self {
            id: id.to_ascii_lowercase(),
            title: "Upload files".to_string(),
            date: 1_700_000_000,
            files,
        }
    }
}

/// The kind of a named revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    Branch,
    Tag,
    /// `refs/pr/<n>` (Hugging Face pull requests; not listed on the ModelScope side).
    PullRequest,
}

/// A named revision: a branch (`main`), a tag (`v1.0`) or a pull request (`refs/pr/1`).
#[derive(Clone, Debug)]
pub struct FixtureRef {
    /// As a client names it: `main`, `v1.0`, `refs/pr/1`.
    pub name: String,
    pub kind: RefKind,
    pub commit: String,
}

/// A repository served by the fixture.
#[derive(Clone, Debug)]
pub struct FixtureRepo {
    /// Canonical, case-sensitive id: `owner/name` or a one-segment legacy id (`gpt2`).
    pub id: String,
    /// Gated (`"gated": "manual"`): metadata and listings are public, file content needs
    /// `Authorization: Bearer <FixtureOptions::token>` (401 without a token, 403 with another).
    pub gated: bool,
    pub refs: Vec<FixtureRef>,
    pub commits: Vec<FixtureCommit>,
}

impl FixtureRepo {
    /// An empty repository; add commits and refs with the builder methods.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            gated: false,
            refs: Vec::new(),
            commits: Vec::new(),
        }
    }

    /// One commit holding `files`, on branch `main`. The commit id is derived from the repo id
    /// and the file paths, so it is stable across runs.
    pub fn with_main(id: &str, files: Vec<FixtureFile>) -> Self {
        let mut h = Sha1::new();
        h.update(b"manta-hub-fixture\0");
        h.update(id.as_bytes());
        for f in &files {
            h.update(b"\0");
            h.update(f.path.as_bytes());
        }
        let commit = hex::encode(h.finalize());
        Self::new(id)
            .commit(FixtureCommit::new(&commit, files))
            .branch("main", &commit)
    }

    pub fn gated(mut self, gated: bool) -> Self {
        self.gated = gated;
        self
    }

    pub fn commit(mut self, commit: FixtureCommit) -> Self {
        self.commits.push(commit);
        self
    }

    pub fn branch(self, name: &str, commit: &str) -> Self {
        self.reference(name, RefKind::Branch, commit)
    }

    pub fn tag(self, name: &str, commit: &str) -> Self {
        self.reference(name, RefKind::Tag, commit)
    }

    /// `refs/pr/<n>` → `commit`.
    pub fn pull_request(self, n: u32, commit: &str) -> Self {
        self.reference(&format!("refs/pr/{n}"), RefKind::PullRequest, commit)
    }

    fn reference(mut self, name: &str, kind: RefKind, commit: &str) -> Self {
        self.refs.push(FixtureRef {
            name: name.to_string(),
            kind,
            commit: commit.to_ascii_lowercase(),
        });
        self
    }

    /// The commit a ref name points to.
    pub fn ref_commit(&self, name: &str) -> Option<&str> {
        self.refs
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.commit.as_str())
    }
}

/// What the fixture serves for one file of one commit.
#[derive(Clone, Debug)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    /// Hex sha256 of the content (the LFS oid, the ETag of LFS files, ModelScope's `Sha256`).
    pub sha256: String,
    /// Hex git blob id: sha1 of `blob <len>\0<content>`; for LFS files, of the pointer file.
    pub git_oid: String,
    pub lfs: bool,
    /// Length of the LFS pointer file, for LFS files.
    pub pointer_size: Option<u64>,
    pub(crate) source: FileSource,
}

/// The text of the Git LFS pointer file for content of this sha256 and size.
pub fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

/// Hex git object id of a blob with this content.
pub fn git_blob_oid(content: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex::encode(h.finalize())
}

pub(crate) struct PreparedCommit {
    pub id: String,
    pub title: String,
    pub date: u64,
    pub files: BTreeMap<String, Arc<FileInfo>>,
    /// Directory path (not the root) → git tree oid.
    pub dirs: BTreeMap<String, String>,
    /// Directory ("" for the root) → child directory paths, sorted.
    child_dirs: BTreeMap<String, BTreeSet<String>>,
    /// Directory ("" for the root) → child file paths, sorted.
    child_files: BTreeMap<String, BTreeSet<String>>,
}

/// One entry of a tree listing.
pub(crate) enum TreeEntry<'a> {
    Dir { path: &'a str, oid: &'a str },
    File(&'a FileInfo),
}

impl PreparedCommit {
    /// The entries under `base` ("" for the root): directories first, then files, each sorted;
    /// with `recursive`, each directory is followed by its own listing. `None` when `base` is
    /// not a directory of this commit.
    pub fn tree(&self, base: &str, recursive: bool) -> Option<Vec<TreeEntry<'_>>> {
        if !base.is_empty() && !self.dirs.contains_key(base) {
            return None;
        }
        let mut out = Vec::new();
        self.walk(base, recursive, &mut out);
        Some(out)
    }

    fn walk<'a>(&'a self, dir: &str, recursive: bool, out: &mut Vec<TreeEntry<'a>>) {
        if let Some(children) = self.child_dirs.get(dir) {
            for d in children {
                if let Some((path, oid)) = self.dirs.get_key_value(d.as_str()) {
                    out.push(TreeEntry::Dir { path, oid });
                    if recursive {
                        self.walk(path, true, out);
                    }
                }
            }
        }
        if let Some(children) = self.child_files.get(dir) {
            for f in children {
                if let Some(info) = self.files.get(f.as_str()) {
                    out.push(TreeEntry::File(info));
                }
            }
        }
    }

    /// The entry at exactly `path` (a file or a directory).
    pub fn entry(&self, path: &str) -> Option<TreeEntry<'_>> {
        if let Some(f) = self.files.get(path) {
            return Some(TreeEntry::File(f));
        }
        self.dirs
            .get_key_value(path)
            .map(|(path, oid)| TreeEntry::Dir { path, oid })
    }
}

pub(crate) struct PreparedRepo {
    pub id: String,
    pub gated: bool,
    pub refs: Vec<FixtureRef>,
    pub commits: HashMap<String, PreparedCommit>,
    /// A stable 24-hex `_id`, like the hub's database ids.
    pub object_id: String,
    /// sha256 → content, for the CDN host.
    pub by_sha256: HashMap<String, Arc<FileInfo>>,
}

impl PreparedRepo {
    /// A ref name, or a full commit id of this repository.
    pub fn resolve(&self, revision: &str) -> Option<&PreparedCommit> {
        if let Some(r) = self.refs.iter().find(|r| r.name == revision) {
            return self.commits.get(&r.commit);
        }
        if is_commit_id(revision) {
            return self.commits.get(revision);
        }
        None
    }

    pub fn ref_named(&self, name: &str) -> Option<&FixtureRef> {
        self.refs.iter().find(|r| r.name == name)
    }

    /// Whether `name` is a ref of this repository or one of its commit ids.
    pub fn knows_revision(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    /// The default branch: `main`, else the first branch given.
    pub fn default_branch(&self) -> Option<&FixtureRef> {
        self.refs
            .iter()
            .find(|r| r.kind == RefKind::Branch && r.name == "main")
            .or_else(|| self.refs.iter().find(|r| r.kind == RefKind::Branch))
    }

    pub fn owner(&self) -> Option<&str> {
        self.id.split_once('/').map(|(o, _)| o)
    }
}

pub(crate) fn is_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn valid_repo_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.ends_with('/')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

struct Hashed {
    size: u64,
    sha256: String,
    git_oid: Option<String>,
}

/// Size, sha256 and (when `blob_oid`) the git blob id of a source, reading it once, streaming.
fn hash_source(source: &FileSource, blob_oid: bool) -> Result<Hashed> {
    match source {
        FileSource::Bytes(b) => Ok(Hashed {
            size: b.len() as u64,
            sha256: hex::encode(Sha256::digest(b)),
            git_oid: blob_oid.then(|| git_blob_oid(b)),
        }),
        FileSource::Disk(path) => {
            let mut file =
                std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
            let size = file.metadata()?.len();
            let mut sha256 = Sha256::new();
            let mut sha1 = Sha1::new();
            if blob_oid {
                sha1.update(format!("blob {size}\0").as_bytes());
            }
            let mut buf = vec![0u8; 1 << 20];
            let mut read = 0u64;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                read += n as u64;
                sha256.update(&buf[..n]);
                if blob_oid {
                    sha1.update(&buf[..n]);
                }
            }
            if read != size {
                bail!("{} changed size while being hashed", path.display());
            }
            Ok(Hashed {
                size,
                sha256: hex::encode(sha256.finalize()),
                git_oid: blob_oid.then(|| hex::encode(sha1.finalize())),
            })
        }
    }
}

fn source_size(source: &FileSource) -> Result<u64> {
    match source {
        FileSource::Bytes(b) => Ok(b.len() as u64),
        FileSource::Disk(p) => Ok(std::fs::metadata(p)
            .with_context(|| format!("stat {}", p.display()))?
            .len()),
    }
}

/// Hash every file that needs it, on as many threads as there are cores.
fn file_infos(files: Vec<FixtureFile>) -> Result<Vec<FileInfo>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<FileInfo>>>> =
        Mutex::new((0..files.len()).map(|_| None).collect());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(files.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = files.get(i) else { break };
                let r = file_info(f);
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a hashing thread panicked"))?;
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("file was not hashed"))))
        .collect()
}

fn file_info(f: &FixtureFile) -> Result<FileInfo> {
    let (size, sha256, git_oid) = match (&f.sha256, f.lfs) {
        (Some(sha), true) => {
            let size = source_size(&f.source)?;
            (size, sha.clone(), None)
        }
        _ => {
            let h = hash_source(&f.source, !f.lfs)?;
            if let Some(given) = &f.sha256 {
                if *given != h.sha256 {
                    bail!(
                        "{}: given sha256 {given} but the content hashes to {}",
                        f.path,
                        h.sha256
                    );
                }
            }
            (h.size, h.sha256, h.git_oid)
        }
    };
    let (git_oid, pointer_size) = if f.lfs {
        let pointer = lfs_pointer(&sha256, size);
        (git_blob_oid(pointer.as_bytes()), Some(pointer.len() as u64))
    } else {
        (git_oid.unwrap_or_default(), None)
    };
    Ok(FileInfo {
        path: f.path.clone(),
        size,
        sha256,
        git_oid,
        lfs: f.lfs,
        pointer_size,
        source: f.source.clone(),
    })
}

/// Git tree ids of every directory of a file set ("" for the root), bottom-up (git's entry order: by name, a
/// directory sorting as if its name ended with `/`).
fn tree_oids(files: &BTreeMap<String, Arc<FileInfo>>) -> Result<BTreeMap<String, String>> {
    // dir → (name, is_dir, raw oid)
    let mut entries: BTreeMap<String, Vec<(String, bool, Vec<u8>)>> = BTreeMap::new();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    dirs.insert(String::new());
    for (path, info) in files {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        entries.entry(dir.to_string()).or_default().push((
            name.to_string(),
            false,
            hex::decode(&info.git_oid)?,
        ));
        let mut d = dir;
        while !d.is_empty() {
            dirs.insert(d.to_string());
            d = d.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        }
    }
    let mut by_depth: Vec<String> = dirs.into_iter().collect();
    by_depth.sort_by_key(|d| {
        std::cmp::Reverse(if d.is_empty() {
            0
        } else {
            d.matches('/').count() + 1
        })
    });
    let mut oids = BTreeMap::new();
    for dir in by_depth {
        let mut list = entries.remove(&dir).unwrap_or_default();
        list.sort_by(|a, b| {
            let ka = if a.1 {
                format!("{}/", a.0)
            } else {
                a.0.clone()
            };
            let kb = if b.1 {
                format!("{}/", b.0)
            } else {
                b.0.clone()
            };
            ka.as_bytes().cmp(kb.as_bytes())
        });
        let mut body = Vec::new();
        for (name, is_dir, oid) in &list {
            body.extend_from_slice(if *is_dir { b"40000 " } else { b"100644 " });
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(oid);
        }
        let mut h = Sha1::new();
        h.update(format!("tree {}\0", body.len()).as_bytes());
        h.update(&body);
        let oid = h.finalize().to_vec();
        if !dir.is_empty() {
            let (parent, name) = dir.rsplit_once('/').unwrap_or(("", dir.as_str()));
            entries.entry(parent.to_string()).or_default().push((
                name.to_string(),
                true,
                oid.clone(),
            ));
        }
        oids.insert(dir, hex::encode(oid));
    }
    Ok(oids)
}

fn prepare_commit(c: FixtureCommit) -> Result<PreparedCommit> {
    let mut seen = BTreeSet::new();
    for f in &c.files {
        if !valid_repo_path(&f.path) {
            bail!("commit {}: invalid file path {:?}", c.id, f.path);
        }
        if !seen.insert(f.path.clone()) {
            bail!("commit {}: {} listed twice", c.id, f.path);
        }
    }
    let infos = file_infos(c.files)?;
    let files: BTreeMap<String, Arc<FileInfo>> = infos
        .into_iter()
        .map(|i| (i.path.clone(), Arc::new(i)))
        .collect();
    for dir_path in files
        .keys()
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d))
    {
        if files.contains_key(dir_path) {
            bail!("commit {}: {dir_path} is both a file and a directory", c.id);
        }
    }
    let mut dirs = tree_oids(&files)?;
    dirs.remove("");
    let mut child_dirs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut child_files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in dirs.keys() {
        let parent = d.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        child_dirs
            .entry(parent.to_string())
            .or_default()
            .insert(d.clone());
    }
    for f in files.keys() {
        let parent = f.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        child_files
            .entry(parent.to_string())
            .or_default()
            .insert(f.clone());
    }
    Ok(PreparedCommit {
        id: c.id,
        title: c.title,
        date: c.date,
        files,
        dirs,
        child_dirs,
        child_files,
    })
}

pub(crate) fn prepare(repos: Vec<FixtureRepo>) -> Result<Vec<PreparedRepo>> {
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for repo in repos {
        let segments: Vec<&str> = repo.id.split('/').collect();
        if segments.is_empty()
            || segments.len() > 2
            || segments
                .iter()
                .any(|s| s.is_empty() || *s == "." || *s == "..")
        {
            bail!("invalid repo id {:?}", repo.id);
        }
        if !ids.insert(repo.id.clone()) {
            bail!("repo {} given twice", repo.id);
        }
        let mut commits = HashMap::new();
        for c in repo.commits {
            if !is_commit_id(&c.id) {
                bail!("{}: commit id {:?} is not 40 hex digits", repo.id, c.id);
            }
            let id = c.id.clone();
            let prepared =
                prepare_commit(c).with_context(|| format!("prepare {} at {id}", repo.id))?;
            if commits.insert(id.clone(), prepared).is_some() {
                bail!("{}: commit {id} given twice", repo.id);
            }
        }
        let mut names = BTreeSet::new();
        for r in &repo.refs {
            if !commits.contains_key(&r.commit) {
                bail!(
                    "{}: ref {} points to unknown commit {}",
                    repo.id,
                    r.name,
                    r.commit
                );
            }
            if !names.insert(r.name.clone()) {
                bail!("{}: ref {} given twice", repo.id, r.name);
            }
        }
        let mut by_sha256 = HashMap::new();
        for c in commits.values() {
            for f in c.files.values() {
                by_sha256.insert(f.sha256.clone(), f.clone());
            }
        }
        let object_id = hex::encode(&Sha1::digest(repo.id.as_bytes())[..12]);
        out.push(PreparedRepo {
            id: repo.id,
            gated: repo.gated,
            refs: repo.refs,
            commits,
            object_id,
            by_sha256,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_oid_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_oid(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(
            git_blob_oid(b""),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
    }

    #[test]
    fn pointer_size_matches_the_hub() {
        // ggml-tiny.bin (77691713 bytes) lists pointerSize 133 on the hub; 9-digit sizes 134.
        let sha = "be07e048e1e599ad46341c8d2a135645097a538221678b7acdd1b1919c6e1b21";
        assert_eq!(lfs_pointer(sha, 77_691_713).len(), 133);
        assert_eq!(lfs_pointer(sha, 147_951_465).len(), 134);
    }

    #[test]
    fn tree_oids_match_git() -> Result<()> {
        // `git write-tree` of a/hello ("hello\n"), a/z/y ("x"), a.txt ("y"), b (""): a.txt
        // sorts before the directory a, as git orders directories as if named "a/".
        let files = file_infos(vec![
            FixtureFile::bytes("a/hello", &b"hello\n"[..]),
            FixtureFile::bytes("a/z/y", &b"x"[..]),
            FixtureFile::bytes("a.txt", &b"y"[..]),
            FixtureFile::bytes("b", &b""[..]),
        ])?;
        let map = files
            .into_iter()
            .map(|f| (f.path.clone(), Arc::new(f)))
            .collect();
        let oids = tree_oids(&map)?;
        assert_eq!(oids["a/z"], "4a507927e244b807acb6220ef712c71af38a270b");
        assert_eq!(oids["a"], "4320f0f25756a16bd2bb6ce5863eb664bf274777");
        assert_eq!(oids[""], "0e66008e4a806ca9932440e3bac220a30b7d7778");
        Ok(())
    }
}
