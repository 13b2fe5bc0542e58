//! The rocksdb implementation of [`Index`]: one column family per record kind.
//!
//! Keys (`\0` cannot occur in names, tags or digests):
//! - `blobs`: digest → [`BlobRecord`] (JSON)
//! - `blob_links`: digest `\0` repo → ""   (which repositories may read a blob)
//! - `manifests`: digest → [`ManifestRecord`] (version byte, u32 header length, JSON header, exact bytes)
//! - `manifest_links`: digest `\0` repo → ""
//! - `tags`: repo `\0` tag → digest
//! - `referrers`: repo `\0` subject `\0` digest → descriptor JSON
//! - `repos`: repo → ""
//! - `uploads`: session id → [`UploadRecord`] (JSON)
//! - `tag_resolved`: repo `\0` tag → Unix seconds (u64 BE) the pull-through tag was last confirmed upstream
//! - `hub_revisions`: hub `\0` lowercase repo `\0` tag → [`HubRevisionRecord`] (JSON)
//! - `hub_sources`: digest → [`HubSource`] (JSON): where a hub file's bytes come from
//! - `layer_recipes`: `t\0` tar digest → [`RecipeRecord`] (JSON); `f\0` raw digest `\0` path → tar digest
//! - `access`: digest or `hub\0…` record key → Unix milliseconds (u64 BE) of the last use (not synced)
//! - `pins`: pin name → [`PinRecord`] (JSON)
//!
//! Compound updates are one `WriteBatch`: a crash leaves either all of a manifest PUT or none.

use std::path::Path;
use std::sync::Mutex;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use super::index::{
    BlobRecord, Health, HubRevisionRecord, HubSource, Index, ManifestPut, ManifestRecord, Origin,
    PinRecord, RecipeRecord, Result, UploadRecord,
};
use super::StoreError;

const CF_BLOBS: &str = "blobs";
const CF_BLOB_LINKS: &str = "blob_links";
const CF_MANIFESTS: &str = "manifests";
const CF_MANIFEST_LINKS: &str = "manifest_links";
const CF_TAGS: &str = "tags";
const CF_REFERRERS: &str = "referrers";
const CF_REPOS: &str = "repos";
const CF_UPLOADS: &str = "uploads";
const CF_TAG_RESOLVED: &str = "tag_resolved";
const CF_HUB_REVISIONS: &str = "hub_revisions";
const CF_HUB_SOURCES: &str = "hub_sources";
const CF_LAYER_RECIPES: &str = "layer_recipes";
const CF_ACCESS: &str = "access";
const CF_PINS: &str = "pins";
const ALL_CFS: [&str; 14] = [
    CF_BLOBS,
    CF_BLOB_LINKS,
    CF_MANIFESTS,
    CF_MANIFEST_LINKS,
    CF_TAGS,
    CF_REFERRERS,
    CF_REPOS,
    CF_UPLOADS,
    CF_TAG_RESOLVED,
    CF_HUB_REVISIONS,
    CF_HUB_SOURCES,
    CF_LAYER_RECIPES,
    CF_ACCESS,
    CF_PINS,
];

const MANIFEST_RECORD_VERSION: u8 = 1;

/// Memtable size of every column family.
const WRITE_BUFFER: usize = 8 << 20;

pub struct RocksIndex {
    db: DB,
    /// Serialises read-modify-write updates (deletes that depend on what remains).
    write_lock: Mutex<()>,
    /// The database's directory, whose filesystem's free space is checked before each write.
    dir: std::path::PathBuf,
}

/// Free space below which the index refuses writes itself: rocksdb needs room for its log's
/// next preallocation, a memtable's table file and its manifest, and a write it attempts on a
/// full disk can leave it stopped, or (Debian's build keeps its assertions) abort the process.
pub const INDEX_MIN_FREE: u64 = 16 << 20;

/// Fail unless the filesystem holding `dir` has [`INDEX_MIN_FREE`] bytes free.
pub fn room_for_index(dir: &Path) -> Result<()> {
    match super::space::fs_space(dir) {
        Ok((_, available)) if available < INDEX_MIN_FREE => Err(StoreError::Io {
            op: "write to the index: the disk is full",
            path: dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        }),
        _ => Ok(()),
    }
}

fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

fn key3(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut k = key2(a, b);
    k.push(0);
    k.extend_from_slice(c.as_bytes());
    k
}

fn prefix(a: &str) -> Vec<u8> {
    let mut k = a.as_bytes().to_vec();
    k.push(0);
    k
}

#[derive(Serialize, Deserialize)]
struct ManifestHeader {
    media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    /// Absent in records written before eviction existed: those count as pushed (kept).
    #[serde(default = "pushed")]
    origin: Origin,
}

fn pushed() -> Origin {
    Origin::Pushed
}

fn encode_manifest(r: &ManifestRecord) -> Result<Vec<u8>> {
    let header = serde_json::to_vec(&ManifestHeader {
        media_type: r.media_type.clone(),
        subject: r.subject.clone(),
        origin: r.origin,
    })
    .map_err(|e| StoreError::Corrupt(format!("encode manifest header: {e}")))?;
    let len = u32::try_from(header.len())
        .map_err(|_| StoreError::Corrupt("manifest header too long".into()))?;
    let mut v = Vec::with_capacity(5 + header.len() + r.bytes.len());
    v.push(MANIFEST_RECORD_VERSION);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&header);
    v.extend_from_slice(&r.bytes);
    Ok(v)
}

fn decode_manifest(v: &[u8]) -> Result<ManifestRecord> {
    let bad = |what: &str| StoreError::Corrupt(format!("manifest record: {what}"));
    if v.len() < 5 || v[0] != MANIFEST_RECORD_VERSION {
        return Err(bad("unknown version"));
    }
    let len = u32::from_be_bytes([v[1], v[2], v[3], v[4]]) as usize;
    let header = v.get(5..5 + len).ok_or_else(|| bad("truncated"))?;
    let h: ManifestHeader = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    Ok(ManifestRecord {
        media_type: h.media_type,
        subject: h.subject,
        origin: h.origin,
        bytes: v[5 + len..].to_vec(),
    })
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<'a, T: Deserialize<'a>>(kind: &str, v: &'a [u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("{kind} record: {e}")))
}

impl RocksIndex {
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(64 << 20);
        // Small memtables: the records are small, and rocksdb preallocates its log at about the
        // largest memtable size of any column family (the default one included: left at its
        // 64 MiB, it made the first write preallocate 64 MiB), which on a small disk is space the
        // cache cannot use. All memtables together are bounded too.
        opts.set_write_buffer_size(WRITE_BUFFER);
        opts.set_db_write_buffer_size(2 * WRITE_BUFFER);
        opts.set_manifest_preallocation_size(1 << 20);
        let cf_opts = || {
            let mut o = Options::default();
            o.set_write_buffer_size(WRITE_BUFFER);
            o
        };
        let cfs = std::iter::once(ColumnFamilyDescriptor::new(
            rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
            cf_opts(),
        ))
        .chain(
            ALL_CFS
                .iter()
                .map(|n| ColumnFamilyDescriptor::new(*n, cf_opts())),
        );
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(StoreError::Db)?;
        Ok(Self {
            db,
            write_lock: Mutex::new(()),
            dir: path.to_path_buf(),
        })
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Corrupt(format!("missing column family {name}")))
    }

    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf)?, key).map_err(StoreError::Db)
    }

    fn write(&self, batch: WriteBatch, durable: bool) -> Result<()> {
        room_for_index(&self.dir)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(durable);
        self.db.write_opt(batch, &wo).map_err(StoreError::Db)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keys (without the prefix) and values of every entry under `prefix` in `cf`, starting
    /// strictly after `after` (a key suffix), at most `limit`.
    fn scan(
        &self,
        cf: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut start = prefix.to_vec();
        if let Some(a) = after {
            start.extend_from_slice(a);
            start.push(0); // the smallest key greater than prefix+after
        }
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for item in self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item.map_err(StoreError::Db)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every entry of `cf`, without filling the block cache: whole-index scans (start-up,
    /// eviction plans, listings) must not push out what readers' point lookups keep warm.
    fn scan_all(&self, cf: &str) -> Result<rocksdb::DBIteratorWithThreadMode<'_, DB>> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.fill_cache(false);
        Ok(self
            .db
            .iterator_cf_opt(self.cf(cf)?, ro, IteratorMode::Start))
    }

    fn count_prefix(&self, cf: &str, p: &[u8]) -> Result<usize> {
        Ok(self.scan(cf, p, None, usize::MAX)?.len())
    }
}

impl Index for RocksIndex {
    fn blob(&self, digest: &str) -> Result<Option<BlobRecord>> {
        self.get(CF_BLOBS, digest.as_bytes())?
            .map(|v| from_json("blob", &v))
            .transpose()
    }

    fn blob_linked(&self, repo: &str, digest: &str) -> Result<bool> {
        Ok(self.get(CF_BLOB_LINKS, &key2(digest, repo))?.is_some())
    }

    fn put_blob(&self, repo: &str, digest: &str, record: &BlobRecord) -> Result<bool> {
        let _g = self.lock();
        let mut b = WriteBatch::default();
        let new = self.blob(digest)?.is_none();
        if new {
            b.put_cf(self.cf(CF_BLOBS)?, digest.as_bytes(), json(record)?);
        }
        b.put_cf(self.cf(CF_BLOB_LINKS)?, key2(digest, repo), b"");
        b.put_cf(self.cf(CF_REPOS)?, repo.as_bytes(), b"");
        self.write(b, true)?;
        Ok(new)
    }

    fn link_blob(&self, repo: &str, digest: &str) -> Result<()> {
        let _g = self.lock();
        if self.blob(digest)?.is_none() {
            return Err(StoreError::Corrupt(format!(
                "link of unknown blob {digest}"
            )));
        }
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_BLOB_LINKS)?, key2(digest, repo), b"");
        b.put_cf(self.cf(CF_REPOS)?, repo.as_bytes(), b"");
        self.write(b, true)
    }

    fn unlink_blob(&self, repo: &str, digest: &str) -> Result<Option<usize>> {
        let _g = self.lock();
        let k = key2(digest, repo);
        if self.get(CF_BLOB_LINKS, &k)?.is_none() {
            return Ok(None);
        }
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_BLOB_LINKS)?, &k);
        self.write(b, true)?;
        Ok(Some(self.count_prefix(CF_BLOB_LINKS, &prefix(digest))?))
    }

    fn delete_blob(&self, digest: &str, durable: bool) -> Result<()> {
        let _g = self.lock();
        let p = prefix(digest);
        let mut b = WriteBatch::default();
        for (repo, _) in self.scan(CF_BLOB_LINKS, &p, None, usize::MAX)? {
            let mut k = p.clone();
            k.extend_from_slice(&repo);
            b.delete_cf(self.cf(CF_BLOB_LINKS)?, k);
        }
        b.delete_cf(self.cf(CF_BLOBS)?, digest.as_bytes());
        self.write(b, durable)
    }

    fn for_each_blob(&self, f: &mut dyn FnMut(&str, &BlobRecord)) -> Result<()> {
        for item in self.scan_all(CF_BLOBS)? {
            let (k, v) = item.map_err(StoreError::Db)?;
            let d = std::str::from_utf8(&k)
                .map_err(|_| StoreError::Corrupt("blob key not utf-8".into()))?;
            f(d, &from_json("blob", &v)?);
        }
        Ok(())
    }

    fn manifest(&self, digest: &str) -> Result<Option<ManifestRecord>> {
        self.get(CF_MANIFESTS, digest.as_bytes())?
            .map(|v| decode_manifest(&v))
            .transpose()
    }

    fn for_each_manifest(&self, f: &mut dyn FnMut(&str, &ManifestRecord)) -> Result<()> {
        for item in self.scan_all(CF_MANIFESTS)? {
            let (k, v) = item.map_err(StoreError::Db)?;
            let d = std::str::from_utf8(&k)
                .map_err(|_| StoreError::Corrupt("manifest key not utf-8".into()))?;
            f(d, &decode_manifest(&v)?);
        }
        Ok(())
    }

    fn manifest_repos(&self, digest: &str) -> Result<Vec<String>> {
        self.scan(CF_MANIFEST_LINKS, &prefix(digest), None, usize::MAX)?
            .into_iter()
            .map(|(k, _)| {
                String::from_utf8(k).map_err(|_| StoreError::Corrupt("repo not utf-8".into()))
            })
            .collect()
    }

    fn manifest_linked(&self, repo: &str, digest: &str) -> Result<bool> {
        Ok(self.get(CF_MANIFEST_LINKS, &key2(digest, repo))?.is_some())
    }

    fn put_manifest(&self, put: &ManifestPut<'_>) -> Result<()> {
        let _g = self.lock();
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_MANIFESTS)?,
            put.digest.as_bytes(),
            encode_manifest(put.record)?,
        );
        b.put_cf(self.cf(CF_MANIFEST_LINKS)?, key2(put.digest, put.repo), b"");
        b.put_cf(self.cf(CF_REPOS)?, put.repo.as_bytes(), b"");
        if let Some(tag) = put.tag {
            b.put_cf(
                self.cf(CF_TAGS)?,
                key2(put.repo, tag),
                put.digest.as_bytes(),
            );
        }
        if let (Some(subject), Some(desc)) = (&put.record.subject, put.referrer_descriptor) {
            b.put_cf(
                self.cf(CF_REFERRERS)?,
                key3(put.repo, subject, put.digest),
                desc,
            );
        }
        self.write(b, true)
    }

    fn delete_manifest(&self, repo: &str, digest: &str, durable: bool) -> Result<bool> {
        let _g = self.lock();
        let link = key2(digest, repo);
        if self.get(CF_MANIFEST_LINKS, &link)?.is_none() {
            return Ok(false);
        }
        let record = self.manifest(digest)?;
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_MANIFEST_LINKS)?, &link);
        let repo_prefix = prefix(repo);
        for (tag, target) in self.scan(CF_TAGS, &repo_prefix, None, usize::MAX)? {
            if target == digest.as_bytes() {
                let mut k = repo_prefix.clone();
                k.extend_from_slice(&tag);
                b.delete_cf(self.cf(CF_TAG_RESOLVED)?, &k);
                b.delete_cf(self.cf(CF_TAGS)?, k);
            }
        }
        if let Some(subject) = record.as_ref().and_then(|r| r.subject.as_deref()) {
            b.delete_cf(self.cf(CF_REFERRERS)?, key3(repo, subject, digest));
        }
        if self.count_prefix(CF_MANIFEST_LINKS, &prefix(digest))? <= 1 {
            b.delete_cf(self.cf(CF_MANIFESTS)?, digest.as_bytes());
        }
        self.write(b, durable)?;
        Ok(true)
    }

    fn tag(&self, repo: &str, tag: &str) -> Result<Option<String>> {
        self.get(CF_TAGS, &key2(repo, tag))?
            .map(|v| {
                String::from_utf8(v).map_err(|_| StoreError::Corrupt("tag target not utf-8".into()))
            })
            .transpose()
    }

    fn tags(&self, repo: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.scan(CF_TAGS, &prefix(repo), after.map(str::as_bytes), limit)?
            .into_iter()
            .map(|(k, _)| {
                String::from_utf8(k).map_err(|_| StoreError::Corrupt("tag not utf-8".into()))
            })
            .collect()
    }

    fn delete_tag(&self, repo: &str, tag: &str, durable: bool) -> Result<bool> {
        let _g = self.lock();
        let k = key2(repo, tag);
        if self.get(CF_TAGS, &k)?.is_none() {
            return Ok(false);
        }
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_TAG_RESOLVED)?, &k);
        b.delete_cf(self.cf(CF_TAGS)?, k);
        self.write(b, durable)?;
        Ok(true)
    }

    fn for_each_tag(&self, f: &mut dyn FnMut(&str, &str, &str)) -> Result<()> {
        for item in self.scan_all(CF_TAGS)? {
            let (k, v) = item.map_err(StoreError::Db)?;
            let bad = || StoreError::Corrupt("tag entry not utf-8".into());
            let k = std::str::from_utf8(&k).map_err(|_| bad())?;
            let (repo, tag) = k.split_once('\0').ok_or_else(bad)?;
            f(repo, tag, std::str::from_utf8(&v).map_err(|_| bad())?);
        }
        Ok(())
    }

    fn tag_resolved_at(&self, repo: &str, tag: &str) -> Result<Option<u64>> {
        Ok(self
            .get(CF_TAG_RESOLVED, &key2(repo, tag))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    fn touch_tag(&self, repo: &str, tag: &str, at: u64) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_TAG_RESOLVED)?, key2(repo, tag), at.to_be_bytes());
        self.write(b, false)
    }

    fn referrers(&self, repo: &str, subject: &str) -> Result<Vec<Vec<u8>>> {
        let mut p = key2(repo, subject);
        p.push(0);
        Ok(self
            .scan(CF_REFERRERS, &p, None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    fn repo_exists(&self, repo: &str) -> Result<bool> {
        Ok(self.get(CF_REPOS, repo.as_bytes())?.is_some())
    }

    fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        self.get(CF_UPLOADS, id.as_bytes())?
            .map(|v| from_json("upload", &v))
            .transpose()
    }

    fn put_upload(&self, id: &str, record: &UploadRecord, durable: bool) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_UPLOADS)?, id.as_bytes(), json(record)?);
        self.write(b, durable)
    }

    fn delete_upload(&self, id: &str) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_UPLOADS)?, id.as_bytes());
        self.write(b, false)
    }

    fn for_each_upload(&self, f: &mut dyn FnMut(&str, &UploadRecord)) -> Result<()> {
        for item in self.scan_all(CF_UPLOADS)? {
            let (k, v) = item.map_err(StoreError::Db)?;
            let id = std::str::from_utf8(&k)
                .map_err(|_| StoreError::Corrupt("upload key not utf-8".into()))?;
            f(id, &from_json("upload", &v)?);
        }
        Ok(())
    }

    fn hub_revision(&self, key: &str) -> Result<Option<HubRevisionRecord>> {
        self.get(CF_HUB_REVISIONS, key.as_bytes())?
            .map(|v| from_json("hub revision", &v))
            .transpose()
    }

    fn put_hub_revision(
        &self,
        key: &str,
        record: &HubRevisionRecord,
        sources: &[(String, HubSource)],
    ) -> Result<()> {
        let mut b = WriteBatch::default();
        for (digest, source) in sources {
            b.put_cf(self.cf(CF_HUB_SOURCES)?, digest.as_bytes(), json(source)?);
        }
        b.put_cf(self.cf(CF_HUB_REVISIONS)?, key.as_bytes(), json(record)?);
        self.write(b, true)
    }

    fn hub_revisions_of(&self, prefix: &str) -> Result<Vec<HubRevisionRecord>> {
        self.scan(CF_HUB_REVISIONS, prefix.as_bytes(), None, usize::MAX)?
            .iter()
            .map(|(_, v)| from_json("hub revision", v))
            .collect()
    }

    fn for_each_hub_revision(&self, f: &mut dyn FnMut(&str, &HubRevisionRecord)) -> Result<()> {
        for item in self.scan_all(CF_HUB_REVISIONS)? {
            let (k, v) = item.map_err(StoreError::Db)?;
            let key = std::str::from_utf8(&k)
                .map_err(|_| StoreError::Corrupt("hub revision key not utf-8".into()))?;
            f(key, &from_json("hub revision", &v)?);
        }
        Ok(())
    }

    fn delete_hub_revision(&self, key: &str, durable: bool) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_HUB_REVISIONS)?, key.as_bytes());
        b.delete_cf(self.cf(CF_ACCESS)?, key.as_bytes());
        self.write(b, durable)
    }

    fn hub_source(&self, digest: &str) -> Result<Option<HubSource>> {
        self.get(CF_HUB_SOURCES, digest.as_bytes())?
            .map(|v| from_json("hub source", &v))
            .transpose()
    }

    fn recipe(&self, tar_digest: &str) -> Result<Option<RecipeRecord>> {
        self.get(CF_LAYER_RECIPES, &key2("t", tar_digest))?
            .map(|v| from_json("layer recipe", &v))
            .transpose()
    }

    fn recipe_for(&self, raw: &str, path: &str) -> Result<Option<String>> {
        self.get(CF_LAYER_RECIPES, &key3("f", raw, path))?
            .map(|v| {
                String::from_utf8(v)
                    .map_err(|_| StoreError::Corrupt("recipe target not utf-8".into()))
            })
            .transpose()
    }

    fn put_recipe(&self, tar_digest: &str, path: &str, recipe: &RecipeRecord) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(
            self.cf(CF_LAYER_RECIPES)?,
            key2("t", tar_digest),
            json(recipe)?,
        );
        b.put_cf(
            self.cf(CF_LAYER_RECIPES)?,
            key3("f", &recipe.raw, path),
            tar_digest.as_bytes(),
        );
        self.write(b, true)
    }

    fn set_recipe(&self, tar_digest: &str, recipe: Option<&RecipeRecord>) -> Result<()> {
        let mut b = WriteBatch::default();
        let cf = self.cf(CF_LAYER_RECIPES)?;
        match recipe {
            Some(r) => b.put_cf(cf, key2("t", tar_digest), json(r)?),
            None => b.delete_cf(cf, key2("t", tar_digest)),
        }
        self.write(b, true)
    }

    fn put_access(&self, entries: &[(String, u64)]) -> Result<()> {
        let mut b = WriteBatch::default();
        for (k, at) in entries {
            b.put_cf(self.cf(CF_ACCESS)?, k.as_bytes(), at.to_be_bytes());
        }
        self.write(b, false)
    }

    fn for_each_access(&self, f: &mut dyn FnMut(&str, u64)) -> Result<()> {
        for item in self.scan_all(CF_ACCESS)? {
            let (k, v) = item.map_err(StoreError::Db)?;
            let (Ok(k), Ok(v)) = (std::str::from_utf8(&k), <[u8; 8]>::try_from(&*v)) else {
                continue;
            };
            f(k, u64::from_be_bytes(v));
        }
        Ok(())
    }

    fn delete_access(&self, keys: &[String]) -> Result<()> {
        let mut b = WriteBatch::default();
        for k in keys {
            b.delete_cf(self.cf(CF_ACCESS)?, k.as_bytes());
        }
        self.write(b, false)
    }

    fn pin(&self, name: &str) -> Result<Option<PinRecord>> {
        self.get(CF_PINS, name.as_bytes())?
            .map(|v| from_json("pin", &v))
            .transpose()
    }

    fn put_pin(&self, name: &str, record: &PinRecord) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put_cf(self.cf(CF_PINS)?, name.as_bytes(), json(record)?);
        self.write(b, true)
    }

    fn delete_pin(&self, name: &str) -> Result<bool> {
        let _g = self.lock();
        if self.get(CF_PINS, name.as_bytes())?.is_none() {
            return Ok(false);
        }
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_PINS)?, name.as_bytes());
        self.write(b, true)?;
        Ok(true)
    }

    fn pins(&self) -> Result<Vec<(String, PinRecord)>> {
        let mut out = Vec::new();
        for item in self.scan_all(CF_PINS)? {
            let (k, v) = item.map_err(StoreError::Db)?;
            let name = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt("pin name not utf-8".into()))?;
            out.push((name, from_json("pin", &v)?));
        }
        Ok(out)
    }

    fn health(&self) -> Result<Health> {
        if let Err(e) = room_for_index(&self.dir) {
            return Ok(Health::Degraded(e.to_string()));
        }
        // A write probe (a no-op delete, not synced): a database that stopped accepting writes
        // after a background error (a full disk, an I/O error) fails it.
        // Not logged to the WAL: the probe must not itself write to a disk that may be full.
        let mut b = WriteBatch::default();
        b.delete_cf(self.cf(CF_REPOS)?, b"\0health-probe");
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        Ok(match self.db.write_opt(b, &wo).map_err(StoreError::Db) {
            Ok(()) => Health::Ok,
            Err(e) => Health::Degraded(format!("index writes fail: {e}")),
        })
    }

    fn flush(&self) -> Result<()> {
        for name in ALL_CFS {
            self.db.flush_cf(self.cf(name)?).map_err(StoreError::Db)?;
        }
        self.db.flush_wal(true).map_err(StoreError::Db)
    }
}
