//! Eviction: least recently used artifacts first, never what is pushed, pinned, in use or young.
//!
//! The planner takes the index as it is (mark and sweep, no reference counts kept on disk that a
//! crash could leave wrong):
//! - **Roots** are what a client names: a hub revision record (with the `hf/`, `hf-raw/` tags it
//!   owns), a tag of a cached repository, a cached manifest no tag or index reaches (pulled by
//!   digest), and a cached blob nothing references.
//! - Each root's **closure** is every manifest and blob it reaches: config, layers, child
//!   manifests of an index, the raw blob behind an image-form tar layer's recipe, a hub record's
//!   files. A node shared by several roots is freed only with the last of them.
//! - **Pushed** manifests (and everything they reach) and pushed blobs are never evicted.
//! - A root is **protected** while a pin names it, while any blob of its closure is leased (being
//!   read or written), or while it was used less than the minimum age ago.
//!
//! Eviction removes a root's own entries first (record, tags), then the manifests and blobs no
//! remaining root reaches: index entry first, then the file. A crash in between leaves either an
//! unreferenced node (the next pass takes it) or an unindexed file (start-up removes it).

use std::collections::{HashMap, HashSet};

use manta_api::RootKind;
pub use manta_api::{Evicted, GcReport, Protection};

use super::index::{hub_key, HubRevisionRecord, Index, Origin, PinTarget};
use super::{unix_now_ms, Result, Store, StoreError};
use crate::hub::{oci_repo, Form};

/// A thing eviction can remove, with what it owns.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Root {
    /// A hub revision record (key from `hub_key`).
    Hub(String),
    Tag {
        repo: String,
        tag: String,
    },
    /// A cached manifest that no tag and no index reaches.
    Manifest(String),
    /// A cached blob that nothing references.
    Blob(String),
}

impl Root {
    pub fn kind(&self) -> RootKind {
        match self {
            Root::Hub(_) => RootKind::Hub,
            Root::Tag { .. } => RootKind::Tag,
            Root::Manifest(_) => RootKind::Manifest,
            Root::Blob(_) => RootKind::Blob,
        }
    }

    /// How `manta ls`/`gc` print it.
    pub fn name(&self) -> String {
        match self {
            Root::Hub(key) => {
                let mut p = key.splitn(3, '\0');
                let (hub, repo, tag) = (
                    p.next().unwrap_or(""),
                    p.next().unwrap_or(""),
                    p.next().unwrap_or(""),
                );
                format!("{hub}://{repo}:{tag}")
            }
            Root::Tag { repo, tag } => format!("{repo}:{tag}"),
            Root::Manifest(d) | Root::Blob(d) => d.clone(),
        }
    }
}

/// One root as the planner sees it.
#[derive(Clone, Debug)]
pub struct RootInfo {
    pub root: Root,
    /// Manifests and blobs it reaches (itself included for manifests and blobs).
    pub closure: Vec<String>,
    /// Unix milliseconds of the last use of the root (its record, its manifests).
    pub last_access: u64,
    /// Pins naming it.
    pub pins: Vec<String>,
    pub protection: Option<Protection>,
}

#[derive(Clone, Copy, Debug)]
pub struct BlobNode {
    pub size: u64,
    pub origin: Origin,
}

/// The whole cache as a graph, at one moment.
pub struct Graph {
    pub roots: Vec<RootInfo>,
    pub blobs: HashMap<String, BlobNode>,
    pub manifests: HashSet<String>,
    /// Nodes reached from pushed manifests or pinned by digest: never evicted.
    pub permanent: HashSet<String>,
    /// Nodes a pin names by digest (and what they reach).
    pub pinned_nodes: HashSet<String>,
    /// How many roots reach each node.
    pub refs: HashMap<String, usize>,
}

/// What the planner needs besides the index.
pub struct PlanInput<'a> {
    /// Unix milliseconds.
    pub now: u64,
    pub min_age_secs: u64,
    pub leased: &'a HashSet<String>,
    /// Last-use times not yet in the index.
    pub pending_access: &'a HashMap<String, u64>,
}

/// The descriptors a manifest (or index) names, in order.
pub fn manifest_children(bytes: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let digest = |d: &serde_json::Value| d.get("digest")?.as_str().map(str::to_string);
    if let Some(d) = v.get("config").and_then(digest) {
        out.push(d);
    }
    for list in ["layers", "manifests", "blobs"] {
        if let Some(a) = v.get(list).and_then(|l| l.as_array()) {
            out.extend(a.iter().filter_map(digest));
        }
    }
    out
}

/// Split a hub record key into hub, lowercase repo and tag.
fn split_hub_key(key: &str) -> Option<(manta_hub::HubKind, &str, &str)> {
    let mut p = key.splitn(3, '\0');
    let hub = manta_hub::HubKind::parse(p.next()?)?;
    Some((hub, p.next()?, p.next()?))
}

/// The OCI tags a hub record owns (one per form).
pub fn hub_tags(key: &str) -> Vec<(String, String)> {
    split_hub_key(key)
        .map(|(hub, repo, tag)| {
            [Form::Raw, Form::Image]
                .iter()
                .map(|f| (oci_repo(hub, *f, repo), tag.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn hub_seeds(rec: &HubRevisionRecord) -> Vec<String> {
    let mut s = vec![rec.raw.clone()];
    s.extend(rec.image.clone());
    s.extend(rec.files.iter().map(|f| format!("sha256:{}", f.sha256)));
    s
}

impl Graph {
    /// Read the whole index into a graph, and decide which roots are protected.
    pub fn build(
        index: &dyn Index,
        input: &PlanInput<'_>,
        pins: &HashMap<Root, Vec<String>>,
    ) -> Result<Self> {
        let mut blobs = HashMap::new();
        index.for_each_blob(&mut |d, r| {
            pace();
            blobs.insert(
                d.to_string(),
                BlobNode {
                    size: r.size,
                    origin: r.origin,
                },
            );
        })?;
        // Manifests and what each names; an image-form tar layer stands for its raw blob.
        let mut children: HashMap<String, (Origin, Vec<String>)> = HashMap::new();
        index.for_each_manifest(&mut |d, r| {
            pace();
            children.insert(d.to_string(), (r.origin, manifest_children(&r.bytes)));
        })?;
        let mut recipe_raw: HashMap<String, Option<String>> = HashMap::new();
        for (_, kids) in children.values_mut() {
            for k in kids.iter_mut() {
                if blobs.contains_key(k) || !k.starts_with("sha256:") {
                    continue;
                }
                let raw = match recipe_raw.get(k) {
                    Some(r) => r.clone(),
                    None => {
                        let r = index.recipe(k)?.map(|r| r.raw);
                        recipe_raw.insert(k.clone(), r.clone());
                        r
                    }
                };
                if let Some(raw) = raw {
                    *k = raw;
                }
            }
        }
        let manifests: HashSet<String> = children.keys().cloned().collect();
        let closure_of = |seeds: &[String]| -> Vec<String> {
            let mut seen = HashSet::new();
            let mut stack: Vec<String> = seeds.to_vec();
            let mut out = Vec::new();
            while let Some(n) = stack.pop() {
                pace();
                if !seen.insert(n.clone()) {
                    continue;
                }
                if let Some((_, kids)) = children.get(&n) {
                    stack.extend(kids.iter().cloned());
                    out.push(n);
                } else if blobs.contains_key(&n) {
                    out.push(n);
                }
            }
            out
        };
        let access = |k: &str, stored: &HashMap<String, u64>| -> u64 {
            let a = stored.get(k).copied().unwrap_or(0);
            a.max(input.pending_access.get(k).copied().unwrap_or(0))
        };
        let mut stored_access = HashMap::new();
        index.for_each_access(&mut |k, at| {
            pace();
            stored_access.insert(k.to_string(), at);
        })?;
        // A root's last use: the latest of its manifests' (and of `extra`).
        let last_use = |closure: &[String], extra: &[u64]| -> u64 {
            closure
                .iter()
                .filter(|n| manifests.contains(*n))
                .map(|n| access(n, &stored_access))
                .chain(extra.iter().copied())
                .max()
                .unwrap_or(0)
        };

        let mut roots = Vec::new();
        let mut owned_tags = HashSet::new();
        let mut referenced: HashSet<String> = HashSet::new();
        let mut hub_records = Vec::new();
        index.for_each_hub_revision(&mut |key, rec| {
            hub_records.push((key.to_string(), rec.clone()))
        })?;
        for (key, rec) in hub_records {
            owned_tags.extend(hub_tags(&key));
            let seeds = hub_seeds(&rec);
            referenced.extend(seeds.iter().cloned());
            let closure = closure_of(&seeds);
            let last = last_use(
                &closure,
                &[access(&key, &stored_access), rec.resolved_at * 1000],
            );
            roots.push((Root::Hub(key), closure, last));
        }
        let mut tags = Vec::new();
        index.for_each_tag(&mut |repo, tag, d| {
            tags.push((repo.to_string(), tag.to_string(), d.to_string()))
        })?;
        for (repo, tag, d) in tags {
            referenced.insert(d.clone());
            if owned_tags.contains(&(repo.clone(), tag.clone())) {
                continue;
            }
            match children.get(&d) {
                Some((Origin::Upstream, _)) => {}
                _ => continue, // pushed: permanent below
            }
            let closure = closure_of(std::slice::from_ref(&d));
            let last = last_use(&closure, &[]);
            roots.push((Root::Tag { repo, tag }, closure, last));
        }
        for (_, kids) in children.values() {
            referenced.extend(kids.iter().cloned());
        }
        let mut permanent = HashSet::new();
        for (d, (origin, _)) in &children {
            match origin {
                Origin::Pushed => permanent.extend(closure_of(std::slice::from_ref(d))),
                Origin::Upstream if !referenced.contains(d) => {
                    let closure = closure_of(std::slice::from_ref(d));
                    let last = last_use(&closure, &[]);
                    roots.push((Root::Manifest(d.clone()), closure, last));
                }
                Origin::Upstream => {}
            }
        }
        for (d, b) in &blobs {
            if b.origin == Origin::Pushed {
                permanent.insert(d.clone());
            }
        }
        // A pin of a digest holds that manifest (or blob) and what it reaches, wherever it is.
        let mut pinned_nodes = HashSet::new();
        for root in pins.keys() {
            if let Root::Manifest(d) | Root::Blob(d) = root {
                pinned_nodes.extend(closure_of(std::slice::from_ref(d)));
            }
        }
        permanent.extend(pinned_nodes.iter().cloned());
        let mut refs: HashMap<String, usize> = HashMap::new();
        for (_, closure, _) in &roots {
            for n in closure {
                *refs.entry(n.clone()).or_default() += 1;
            }
        }
        for (d, b) in &blobs {
            if b.origin == Origin::Upstream && !refs.contains_key(d) && !permanent.contains(d) {
                let last = access(d, &stored_access);
                roots.push((Root::Blob(d.clone()), vec![d.clone()], last));
                refs.insert(d.clone(), 1);
            }
        }
        let roots = roots
            .into_iter()
            .map(|(root, closure, last_access)| {
                let pins = pins.get(&root).cloned().unwrap_or_default();
                let protection = if !pins.is_empty() {
                    Some(Protection::Pinned)
                } else if closure.iter().any(|n| input.leased.contains(n)) {
                    Some(Protection::InUse)
                } else if input.now.saturating_sub(last_access) < input.min_age_secs * 1000 {
                    Some(Protection::Young)
                } else {
                    None
                };
                RootInfo {
                    root,
                    closure,
                    last_access,
                    pins,
                    protection,
                }
            })
            .collect();
        Ok(Self {
            roots,
            blobs,
            manifests,
            permanent,
            pinned_nodes,
            refs,
        })
    }

    /// Bytes of blobs reached by a pinned root.
    pub fn pinned_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        self.roots
            .iter()
            .filter(|r| r.protection == Some(Protection::Pinned))
            .flat_map(|r| r.closure.iter())
            .chain(self.pinned_nodes.iter())
            .filter(|n| seen.insert(n.as_str()))
            .filter_map(|n| self.blobs.get(n))
            .map(|b| b.size)
            .sum()
    }

    /// Bytes of the blobs in `closure` (each counted once).
    pub fn closure_bytes(&self, closure: &[String]) -> u64 {
        closure
            .iter()
            .filter_map(|n| self.blobs.get(n))
            .map(|b| b.size)
            .sum()
    }

    /// Take `root` out of the reference counts: the nodes no other root reaches, which go with
    /// it. Pushed content never goes.
    pub fn release(&mut self, closure: &[String]) -> Vec<String> {
        let mut freed = Vec::new();
        for n in closure {
            if let Some(c) = self.refs.get_mut(n) {
                *c = c.saturating_sub(1);
                if *c == 0 && !self.permanent.contains(n) {
                    freed.push(n.clone());
                }
            }
        }
        freed
    }
}

/// The roots a pin holds: a hub pin, its revision's record (and the record of the commit it
/// resolved to); a reference, its tag (a hub repository's tag is its record) or its digest.
pub fn pin_roots(index: &dyn Index, target: &PinTarget) -> Result<Vec<Root>> {
    let mut out = Vec::new();
    if let (Some(hub), Some(repo)) = (target.hub, target.repo.as_deref()) {
        let revision = target
            .revision
            .clone()
            .unwrap_or_else(|| crate::hub::default_revision(hub).to_string());
        let key = hub_key(
            hub,
            repo,
            &crate::hub::tag_of_request(&revision, &target.filter),
        );
        if let Some(rec) = index.hub_revision(&key)? {
            let commit_key = hub_key(hub, repo, &rec.commit);
            if commit_key != key && index.hub_revision(&commit_key)?.is_some() {
                out.push(Root::Hub(commit_key));
            }
        }
        out.push(Root::Hub(key));
    }
    if let Some(r) = target.reference.as_deref() {
        // A digest is content-addressed: the pin holds it whichever repository names it.
        if let Some((_, d)) = r.split_once('@') {
            out.push(if index.manifest(d)?.is_some() {
                Root::Manifest(d.to_string())
            } else {
                Root::Blob(d.to_string())
            });
        } else if let Some((repo, tag)) = r.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            match crate::hub::parse_name(repo) {
                Some(h) => out.push(Root::Hub(hub_key(h.hub, h.repo, tag))),
                None => out.push(Root::Tag {
                    repo: repo.to_string(),
                    tag: tag.to_string(),
                }),
            }
        }
    }
    Ok(out)
}

/// Every pin, resolved to the roots it holds.
pub fn pinned_roots(index: &dyn Index) -> Result<HashMap<Root, Vec<String>>> {
    let mut out: HashMap<Root, Vec<String>> = HashMap::new();
    for (name, pin) in index.pins()? {
        for root in pin_roots(index, &pin.target)? {
            out.entry(root).or_default().push(name.clone());
        }
    }
    Ok(out)
}

/// Give the CPU away now and then. A niced thread that never blocks still keeps its CPU for a
/// whole time slice (milliseconds) before a waking reader gets it; reading the whole index is
/// such a stretch, so the planner and the eviction loop yield every few dozen items.
fn pace() {
    thread_local!(static N: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    N.with(|n| {
        let v = n.get().wrapping_add(1);
        n.set(v);
        if v % 32 == 0 {
            std::thread::yield_now();
        }
    });
}

/// Run `f` on a thread of its own at a lower CPU priority (nice +10): reading the whole index
/// and unlinking thousands of files must not take the cores from readers being served.
async fn low_priority<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("manta-gc".into())
        .spawn(move || {
            // Linux: PRIO_PROCESS with a thread id sets that thread's nice value only.
            if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10)
            {
                tracing::debug!(error = %e, "cannot lower the eviction thread's priority");
            }
            let _ = tx.send(f());
        })
        .map_err(|source| StoreError::Io {
            op: "spawn eviction thread",
            path: Default::default(),
            source,
        })?;
    rx.await
        .map_err(|_| StoreError::Corrupt("the eviction thread panicked".into()))?
}

/// What to evict.
#[derive(Clone, Debug)]
pub enum Select {
    /// Least recently used unprotected roots until `free` bytes are freed.
    Lru { free: u64 },
    /// These roots, now, whatever their age (`manta rm`, a pin released with `Delete`); pinned
    /// ones are refused, and blobs in use stay until their readers are done.
    Roots(Vec<Root>),
}

impl Store {
    /// Evict now (one eviction at a time; readers are never blocked: each blob is deleted under
    /// its own digest lock, and a reader holding it open keeps its bytes).
    pub async fn evict(&self, select: Select, dry_run: bool) -> Result<GcReport> {
        let _one = self.gc.lock().await;
        // Eviction frees space: on a full disk, the index gets its reserve (see
        // `Store::freeing_write`) and the pass runs again (it plans afresh).
        let deadline = std::time::Instant::now() + super::FREEING_PATIENCE;
        loop {
            let (me, sel) = (self.clone(), select.clone());
            match low_priority(move || me.evict_blocking(sel, dry_run)).await {
                Err(e) if e.is_no_space() && !dry_run && std::time::Instant::now() < deadline => {
                    self.reserve.release();
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                r => return r,
            }
        }
    }

    /// The cache as eviction sees it (for `manta ls` and `GET /manta/v1/cache`).
    pub async fn graph(&self) -> Result<Graph> {
        let me = self.clone();
        low_priority(move || me.build_graph()).await
    }

    fn build_graph(&self) -> Result<Graph> {
        let leased = self.leases.snapshot();
        let pending = self.access.pending();
        let pins = pinned_roots(&*self.index)?;
        let g = Graph::build(
            &*self.index,
            &PlanInput {
                now: unix_now_ms(),
                min_age_secs: self.options.min_age_secs,
                leased: &leased,
                pending_access: &pending,
            },
            &pins,
        )?;
        self.stats
            .pinned_bytes
            .store(g.pinned_bytes(), std::sync::atomic::Ordering::Release);
        Ok(g)
    }

    fn evict_blocking(&self, select: Select, dry_run: bool) -> Result<GcReport> {
        // Uses recorded so far go to the index; any use from now on stays in memory until this
        // run is over (the flusher waits for the eviction lock), where `evict_blob` sees it.
        self.flush_access()?;
        let mut g = self.build_graph()?;
        let mut report = GcReport {
            dry_run,
            ..Default::default()
        };
        for r in &g.roots {
            match r.protection {
                Some(Protection::Pinned) => report.protected_pinned += 1,
                Some(Protection::InUse) => report.protected_in_use += 1,
                Some(Protection::Young) => report.protected_young += 1,
                None => {}
            }
        }
        let (candidates, free) = match select {
            Select::Lru { free } => {
                let mut c: Vec<RootInfo> = g
                    .roots
                    .iter()
                    .filter(|r| r.protection.is_none())
                    .cloned()
                    .collect();
                c.sort_by(|a, b| (a.last_access, &a.root).cmp(&(b.last_access, &b.root)));
                (c, free)
            }
            Select::Roots(wanted) => {
                let wanted: HashSet<Root> = wanted.into_iter().collect();
                let mut c = Vec::new();
                for r in &g.roots {
                    if !wanted.contains(&r.root) {
                        continue;
                    }
                    if r.protection == Some(Protection::Pinned) {
                        report.refused_pinned.push(r.root.name());
                    } else {
                        c.push(r.clone());
                    }
                }
                (c, u64::MAX)
            }
        };
        if !dry_run && !candidates.is_empty() {
            self.stats.eviction_runs.inc();
        }
        for r in candidates {
            if report.freed_bytes >= free {
                break;
            }
            pace();
            let gone = g.release(&r.closure);
            let mut bytes = 0;
            if !dry_run {
                self.remove_root_entries(&r.root)?;
                self.stats.evicted_roots.inc();
            }
            for n in &gone {
                if g.manifests.contains(n) {
                    if !dry_run {
                        for repo in self.index.manifest_repos(n)? {
                            self.index.delete_manifest(&repo, n, false)?;
                        }
                        self.index.delete_access(std::slice::from_ref(n))?;
                    }
                    report.manifests_deleted += 1;
                } else if let Some(b) = g.blobs.get(n).copied() {
                    if b.origin != Origin::Upstream {
                        continue;
                    }
                    if dry_run || self.evict_blob(n)? {
                        bytes += b.size;
                        report.blobs_deleted += 1;
                    } else {
                        report.kept_in_use += 1;
                    }
                }
            }
            report.freed_bytes += bytes;
            report.evicted.push(Evicted {
                kind: r.root.kind(),
                name: r.root.name(),
                bytes,
                last_access: r.last_access / 1000,
            });
        }
        if !dry_run && report.freed_bytes > 0 {
            tracing::info!(
                freed_bytes = report.freed_bytes,
                blobs = report.blobs_deleted,
                roots = report.evicted.len(),
                "evicted cache content"
            );
        }
        Ok(report)
    }

    /// A root's own entries: a hub record and the tags it owns, or a tag.
    fn remove_root_entries(&self, root: &Root) -> Result<()> {
        match root {
            Root::Hub(key) => {
                for (repo, tag) in hub_tags(key) {
                    self.index.delete_tag(&repo, &tag, false)?;
                }
                self.index.delete_hub_revision(key, false)
            }
            Root::Tag { repo, tag } => self.index.delete_tag(repo, tag, false).map(|_| ()),
            Root::Manifest(_) | Root::Blob(_) => Ok(()),
        }
    }

    /// Delete a cache blob unless it is in use or was used since the plan was made (a plan is a
    /// snapshot: a blob touched after it may be newly referenced). Index first, then the file.
    fn evict_blob(&self, digest: &str) -> Result<bool> {
        let _g = self.locks.lock_blocking(digest);
        if self.leases.is_leased(digest) || self.access.last(digest).is_some() {
            return Ok(false);
        }
        let Some(rec) = self.index.blob(digest)? else {
            return Ok(false);
        };
        if rec.origin != Origin::Upstream {
            return Ok(false);
        }
        self.index.delete_blob(digest, false)?;
        self.index.delete_access(&[digest.to_string()])?;
        self.files.remove_blob_named(digest)?;
        self.forget_verified(digest);
        self.space.sub_used(rec.size);
        self.stats.evicted_blobs.inc();
        self.stats.evicted_bytes.inc_by(rec.size);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_of_manifests_and_indexes() {
        let m = br#"{"config":{"digest":"sha256:c"},"layers":[{"digest":"sha256:a"},{"digest":"sha256:b"}]}"#;
        assert_eq!(manifest_children(m), ["sha256:c", "sha256:a", "sha256:b"]);
        let i = br#"{"manifests":[{"digest":"sha256:m"}]}"#;
        assert_eq!(manifest_children(i), ["sha256:m"]);
        assert!(manifest_children(b"not json").is_empty());
    }

    use crate::store::{BlobRecord, ManifestPut, ManifestRecord, RocksIndex};

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn blob(idx: &RocksIndex, digest: &str, origin: Origin) {
        let r = BlobRecord {
            version: 1,
            size: 10,
            created_at: 0,
            origin,
            from_peers: None,
        };
        idx.put_blob("r", digest, &r).unwrap();
    }

    fn manifest(idx: &RocksIndex, digest: &str, tag: &str, layers: &[String], origin: Origin) {
        let layers: Vec<_> = layers
            .iter()
            .map(|l| serde_json::json!({"digest": l}))
            .collect();
        let bytes = serde_json::to_vec(&serde_json::json!({"layers": layers})).unwrap();
        let record = ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: None,
            origin,
            bytes,
        };
        idx.put_manifest(&ManifestPut {
            repo: "r",
            digest,
            record: &record,
            tag: Some(tag),
            referrer_descriptor: None,
            resolved_at: None,
        })
        .unwrap();
    }

    /// Two cached images share a layer; a pushed image references a cached blob.
    #[test]
    fn shared_nodes_go_with_their_last_root_and_pushed_references_stay() {
        let dir = tempfile::tempdir().unwrap();
        let idx = RocksIndex::open(dir.path()).unwrap();
        let (shared, only_a, only_b, loose, kept) = (d('1'), d('2'), d('3'), d('4'), d('5'));
        for b in [&shared, &only_a, &only_b, &loose, &kept] {
            blob(&idx, b, Origin::Upstream);
        }
        manifest(
            &idx,
            &d('a'),
            "a",
            &[shared.clone(), only_a.clone()],
            Origin::Upstream,
        );
        manifest(
            &idx,
            &d('b'),
            "b",
            &[shared.clone(), only_b.clone()],
            Origin::Upstream,
        );
        manifest(
            &idx,
            &d('p'),
            "p",
            std::slice::from_ref(&kept),
            Origin::Pushed,
        );
        let input = PlanInput {
            now: 1_000_000,
            min_age_secs: 0,
            leased: &HashSet::new(),
            pending_access: &HashMap::new(),
        };
        let mut g = Graph::build(&idx, &input, &HashMap::new()).unwrap();
        let mut names: Vec<String> = g.roots.iter().map(|r| r.root.name()).collect();
        names.sort();
        assert_eq!(
            names,
            vec!["r:a".to_string(), "r:b".to_string(), loose.clone()]
        );
        assert!(
            g.permanent.contains(&kept),
            "a pushed manifest's blob is never evicted"
        );
        let closure = |g: &Graph, name: &str| {
            let r = g.roots.iter().find(|r| r.root.name() == name).unwrap();
            r.closure.clone()
        };
        let mut gone = g.release(&closure(&g, "r:a"));
        gone.sort();
        assert_eq!(gone, vec![only_a, d('a')], "the shared layer stays with b");
        let mut gone = g.release(&closure(&g, "r:b"));
        gone.sort();
        assert_eq!(gone, vec![shared, only_b, d('b')]);

        // A leased blob protects its root; a young root is protected too.
        let leased: HashSet<String> = [d('2')].into();
        // (Nothing was ever used here: last use 0, and "now" is 5 s after it.)
        let input = PlanInput {
            now: 5_000,
            leased: &leased,
            min_age_secs: 10,
            ..input
        };
        let g = Graph::build(&idx, &input, &HashMap::new()).unwrap();
        let a = g.roots.iter().find(|r| r.root.name() == "r:a").unwrap();
        assert_eq!(a.protection, Some(Protection::InUse));
        assert!(g.roots.iter().all(|r| r.protection.is_some()));
    }

    #[test]
    fn hub_keys_name_their_tags() {
        assert_eq!(
            hub_tags("hf\0org/name\0main"),
            vec![
                ("hf-raw/org/name".to_string(), "main".to_string()),
                ("hf/org/name".to_string(), "main".to_string())
            ]
        );
        assert_eq!(
            Root::Hub("hf\0org/name\0main".into()).name(),
            "hf://org/name:main"
        );
    }
}
