//! Model hub repositories as OCI repositories: `hf/<repo>` (image form), `hf-raw/<repo>` (raw
//! ModelPack form), `ms/…` and `ms-raw/…` for ModelScope.
//!
//! A tag names a revision. Its record ([`HubRevisionRecord`], keyed by hub, lowercase repo and
//! tag) holds the commit the revision resolved to, the selected files with their sha256 and the
//! digests of the forms built from them. A branch is re-resolved after the TTL, a commit never;
//! when the hub cannot be asked, the last resolution is served (stale-if-error).
//!
//! The raw form exists as soon as the file list does (small non-LFS files are downloaded and
//! hashed on the way; LFS files are listed with their sha256). The image form needs each file's
//! tar layer digest, hashed while the file streams in (see [`TarHash`]) or, for a file already
//! held, from disk; its layers are recipes, streamed from the raw blob. Concurrent requests for one
//! record share one resolution and one build, run detached from any client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use manta_hub::forms::{self, ModelMeta, Platform, RawFile};
use manta_hub::{Filter, HubAdapter, HubError, HubKind};
use oci_spec::image::Digest;
use sha1::Sha1;
use sha2::Digest as _;
use tokio::sync::watch;

mod image;

pub use image::zeros;

use crate::digest;
use crate::fetch::{Fetch, FetchError, Fetcher, TarHash};
use crate::names;
use crate::store::{
    hub_key, HubFileRecord, HubRevisionRecord, HubSource, ManifestPut, ManifestRecord, Origin,
    Store, StoreError,
};
use crate::upstream::UpstreamError;

/// Files fetched at once while building a revision's forms.
const PARALLEL_FILES: usize = 4;
/// While the hub is unreachable, a branch's last resolution is served this long before the hub
/// is asked again.
const STALE_RETRY_SECS: u64 = 30;
/// Largest file hashed on the way to a raw manifest (non-LFS files are small on every hub).
const MAX_HASHED_FILE: u64 = 1 << 30;

pub use manta_api::Form;

/// A hub repository addressed by an OCI name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubName<'a> {
    pub hub: HubKind,
    pub form: Form,
    /// The repo part, lowercase (`sentence-transformers/all-minilm-l6-v2`).
    pub repo: &'a str,
}

/// `hf/…`, `hf-raw/…`, `ms/…`, `ms-raw/…`; `None` for any other name.
pub fn parse_name(name: &str) -> Option<HubName<'_>> {
    let (first, repo) = name.split_once('/')?;
    let (hub, form) = match first {
        "hf" => (HubKind::Hf, Form::Image),
        "hf-raw" => (HubKind::Hf, Form::Raw),
        "ms" => (HubKind::Ms, Form::Image),
        "ms-raw" => (HubKind::Ms, Form::Raw),
        _ => return None,
    };
    Some(HubName { hub, form, repo })
}

/// The OCI repository of a form of a hub repo (`repo` lowercase).
pub fn oci_repo(hub: HubKind, form: Form, repo: &str) -> String {
    match form {
        Form::Image => format!("{}/{}", hub.as_str(), repo),
        Form::Raw => format!("{}-raw/{}", hub.as_str(), repo),
    }
}

/// The tag that names `revision` (tags cannot hold `/`: `refs/pr/1` is `refs-pr-1`).
/// The revision a request that names none means.
pub fn default_revision(hub: HubKind) -> &'static str {
    match hub {
        HubKind::Hf => "main",
        HubKind::Ms => manta_hub::ms::DEFAULT_REVISION,
    }
}

/// The tag a prefetch (or pin) of `revision` with `filter` is recorded under: the revision's own
/// tag for the whole repo, `<tag>-<12 hex of the filter>` for a subset.
pub fn tag_of_request(revision: &str, filter: &manta_hub::Filter) -> String {
    let base = tag_of_revision(revision);
    if filter.is_all() {
        base
    } else {
        format!("{base}-{}", filter.fingerprint())
    }
}

pub fn tag_of_revision(revision: &str) -> String {
    revision.replace('/', "-")
}

/// The revision a tag names when no record says otherwise.
pub fn revision_of_tag(tag: &str) -> String {
    match tag.strip_prefix("refs-pr-") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => format!("refs/pr/{n}"),
        _ => tag.to_string(),
    }
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Settings of the hub side of the agent.
#[derive(Clone, Debug)]
pub struct HubSettings {
    /// How long a branch's resolution is trusted before the hub is asked again.
    pub revision_ttl: Duration,
    /// Platforms the image form is offered for (one: a manifest; several: an index).
    pub platforms: Vec<Platform>,
    /// How long a hub download may stall.
    pub idle: Duration,
}

type Outcome = Option<Result<HubRevisionRecord, FetchError>>;

/// The hubs of one agent, and their in-flight resolutions and builds.
pub struct Hubs {
    adapters: HashMap<HubKind, Arc<dyn HubAdapter>>,
    settings: HubSettings,
    store: Store,
    fetcher: Arc<Fetcher>,
    flights: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
}

fn store_err(e: StoreError) -> FetchError {
    Arc::new(UpstreamError::Local(e))
}

fn hub_err(e: HubError) -> FetchError {
    Arc::new(UpstreamError::Hub(e))
}

/// What a request asks of a tag when no record exists yet: a revision and a subset.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub revision: String,
    pub filter: Filter,
    /// The canonical repo id when the caller knows it (the facade, a prefetch).
    pub repo: Option<String>,
}

impl Hubs {
    pub fn new(
        adapters: Vec<Arc<dyn HubAdapter>>,
        settings: HubSettings,
        store: Store,
        fetcher: Arc<Fetcher>,
    ) -> Arc<Self> {
        Arc::new(Self {
            adapters: adapters.into_iter().map(|a| (a.kind(), a)).collect(),
            settings,
            store,
            fetcher,
            flights: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    fn adapter(&self, hub: HubKind) -> Result<Arc<dyn HubAdapter>, FetchError> {
        self.adapters
            .get(&hub)
            .cloned()
            .ok_or_else(|| Arc::new(UpstreamError::HubNotConfigured(hub.as_str())))
    }

    fn is_fresh(&self, rec: &HubRevisionRecord) -> bool {
        (is_commit(&rec.revision) && rec.revision.eq_ignore_ascii_case(&rec.commit))
            || crate::store::unix_now().saturating_sub(rec.resolved_at)
                < self.settings.revision_ttl.as_secs()
    }

    /// The record of `tag` of a hub repo, resolving (and, for `form == Image`, building the image
    /// form) when needed. `spec` says what the tag stands for if it has no record yet.
    pub async fn revision(
        self: &Arc<Self>,
        hub: HubKind,
        repo: &str,
        tag: &str,
        form: Form,
        spec: Option<Spec>,
    ) -> Result<HubRevisionRecord, FetchError> {
        let key = hub_key(hub, repo, tag);
        let rec = self.store.index().hub_revision(&key).map_err(store_err)?;
        if let Some(r) = &rec {
            if self.is_fresh(r) && (form == Form::Raw || r.image.is_some()) {
                return Ok(r.clone());
            }
        }
        let flight = format!("{key}\0{form:?}");
        let mut rx = {
            let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&flight) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(flight.clone(), rx.clone());
                    let (me, repo, tag) = (self.clone(), repo.to_string(), tag.to_string());
                    tokio::spawn(async move {
                        let out = me.clone().run(hub, repo, tag, form, spec).await;
                        me.flights
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&flight);
                        tx.send_replace(Some(out));
                    });
                    rx
                }
            }
        };
        let out = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| {
                Arc::new(UpstreamError::Internal(
                    "a hub resolution ended without an outcome",
                ))
            })?
            .clone();
        out.unwrap_or_else(|| {
            Err(Arc::new(UpstreamError::Internal(
                "a hub resolution ended without an outcome",
            )))
        })
    }

    /// The work of one flight, boxed: building the image form resolves through [`Self::revision`].
    fn run(
        self: Arc<Self>,
        hub: HubKind,
        repo: String,
        tag: String,
        form: Form,
        spec: Option<Spec>,
    ) -> futures_util::future::BoxFuture<'static, Result<HubRevisionRecord, FetchError>> {
        Box::pin(async move {
            match form {
                Form::Raw => self.refresh(hub, &repo, &tag, spec).await,
                Form::Image => self.build_image(hub, &repo, &tag, spec).await,
            }
        })
    }

    /// Re-resolve a tag's revision with the hub; build the raw form of a new commit.
    async fn refresh(
        &self,
        hub: HubKind,
        repo: &str,
        tag: &str,
        spec: Option<Spec>,
    ) -> Result<HubRevisionRecord, FetchError> {
        let key = hub_key(hub, repo, tag);
        let old = self.store.index().hub_revision(&key).map_err(store_err)?;
        if let Some(r) = &old {
            if self.is_fresh(r) {
                return Ok(r.clone());
            }
        }
        let (revision, filter, canonical) = match (&old, spec) {
            (Some(r), _) => (r.revision.clone(), r.filter.clone(), Some(r.repo.clone())),
            (None, Some(s)) => (s.revision, s.filter, s.repo),
            (None, None) => (revision_of_tag(tag), Filter::default(), None),
        };
        let adapter = self.adapter(hub)?;
        let resolved = async {
            let id = match canonical {
                Some(c) => c,
                None => adapter.canonical_repo(repo).await?,
            };
            adapter.resolve(&id, &revision).await
        }
        .await;
        let resolved = match resolved {
            Ok(r) => r,
            Err(e) => {
                return match old {
                    Some(mut r) if e.is_unavailable() => {
                        tracing::warn!(hub = hub.as_str(), repo = %r.repo, %revision, commit = %r.commit, error = %e,
                            "hub unreachable; serving the last resolution of this revision");
                        // Ask the hub again in a while, not on every request (a hung hub would
                        // cost each one its timeouts).
                        let ttl = self.settings.revision_ttl.as_secs();
                        r.resolved_at = crate::store::unix_now().saturating_sub(ttl)
                            + ttl.min(STALE_RETRY_SECS);
                        let stored = r.clone();
                        self.store
                            .blocking(move |idx| idx.put_hub_revision(&key, &stored, &[]))
                            .await
                            .map_err(store_err)?;
                        Ok(r)
                    }
                    None if e.is_unavailable() => match self.peer_record(hub, repo, tag).await {
                        Some(mut r) => {
                            // Asked of the hub again soon, as a stale record would be.
                            let ttl = self.settings.revision_ttl.as_secs();
                            r.resolved_at = crate::store::unix_now().saturating_sub(ttl)
                                + ttl.min(STALE_RETRY_SECS);
                            r.image = None;
                            self.store_resolution(hub, repo, tag, r, false).await
                        }
                        None => Err(hub_err(e)),
                    },
                    _ => Err(hub_err(e)),
                };
            }
        };
        let now = crate::store::unix_now();
        if let Some(mut r) = old {
            if r.commit == resolved.commit {
                r.resolved_at = now;
                let rec = r.clone();
                self.store
                    .blocking(move |idx| idx.put_hub_revision(&key, &rec, &[]))
                    .await
                    .map_err(store_err)?;
                self.announce_record(hub, repo, tag);
                return Ok(r);
            }
            tracing::info!(hub = hub.as_str(), repo = %r.repo, %revision, from = %r.commit, to = %resolved.commit,
                "revision moved to a new commit");
        }
        // The whole commit already known under its own tag (a facade or a pin by commit): reuse it.
        if filter.is_all() && tag != resolved.commit {
            let ck = hub_key(hub, repo, &resolved.commit);
            let known = self.store.index().hub_revision(&ck).map_err(store_err)?;
            if let Some(c) = known.filter(|c| c.commit == resolved.commit && c.filter.is_all()) {
                let rec = HubRevisionRecord {
                    revision,
                    resolved_at: now,
                    ..c
                };
                let raw_repo = oci_repo(hub, Form::Raw, repo);
                self.tag_manifest(&raw_repo, &rec.raw, tag).await?;
                if let Some(image) = &rec.image {
                    self.tag_manifest(&oci_repo(hub, Form::Image, repo), image, tag)
                        .await?;
                }
                let stored = rec.clone();
                self.store
                    .blocking(move |idx| idx.put_hub_revision(&key, &stored, &[]))
                    .await
                    .map_err(store_err)?;
                return Ok(rec);
            }
        }
        let selected: Vec<_> = resolved
            .files
            .into_iter()
            .filter(|f| filter.matches(&f.path))
            .collect();
        if selected.is_empty() {
            return Err(hub_err(HubError::EntryNotFound(format!(
                "no file of {}@{} matches the requested files",
                resolved.repo, revision
            ))));
        }
        let raw_repo = oci_repo(hub, Form::Raw, repo);
        // Files the hub lists without a sha256 are small: fetch and hash them now, unless the
        // same commit's whole record (another subset, or the commit's own tag) knows them.
        let known: HashMap<String, String> = self
            .store
            .index()
            .hub_revision(&hub_key(hub, repo, &resolved.commit))
            .map_err(store_err)?
            .filter(|c| c.commit == resolved.commit)
            .map(|c| c.files.into_iter().map(|f| (f.path, f.sha256)).collect())
            .unwrap_or_default();
        let known = &known;
        let files: Vec<HubFileRecord> = futures_util::stream::iter(selected)
            .map(|f| {
                let (adapter, repo_id, commit) = (
                    adapter.clone(),
                    resolved.repo.clone(),
                    resolved.commit.clone(),
                );
                let raw_repo = raw_repo.clone();
                async move {
                    let lfs = f.sha256.is_some();
                    let sha256 = match f.sha256.or_else(|| known.get(&f.path).cloned()) {
                        Some(s) => s.to_ascii_lowercase(),
                        None => {
                            let file = (f.path.as_str(), f.size, f.oid.as_deref());
                            self.hash_file(&*adapter, &repo_id, &commit, file, &raw_repo)
                                .await?
                        }
                    };
                    Ok::<_, FetchError>(HubFileRecord {
                        path: f.path,
                        size: f.size,
                        sha256,
                        oid: f.oid,
                        lfs,
                    })
                }
            })
            .buffered(PARALLEL_FILES)
            .try_collect()
            .await?;
        let rec = HubRevisionRecord {
            version: 1,
            repo: resolved.repo,
            revision,
            filter,
            commit: resolved.commit,
            files,
            resolved_at: now,
            raw: String::new(),
            image: None,
        };
        self.store_resolution(hub, repo, tag, rec, true).await
    }

    /// Store a resolved revision: its raw form (config, manifest, tag), where each file comes
    /// from, and the record (also under the commit's own tag, for the whole commit, when the
    /// hub itself `confirmed` it: a commit's tag never expires, a peer's word must).
    async fn store_resolution(
        &self,
        hub: HubKind,
        repo: &str,
        tag: &str,
        mut rec: HubRevisionRecord,
        confirmed: bool,
    ) -> Result<HubRevisionRecord, FetchError> {
        let key = hub_key(hub, repo, tag);
        let raw_repo = oci_repo(hub, Form::Raw, repo);
        let meta = ModelMeta {
            repo: rec.repo.clone(),
            commit: rec.commit.clone(),
        };
        let raw_files: Vec<RawFile> = rec
            .files
            .iter()
            .map(|f| RawFile {
                path: f.path.clone(),
                size: f.size,
                digest: format!("sha256:{}", f.sha256),
            })
            .collect();
        let raw = forms::raw_form(&meta, &raw_files)
            .map_err(|e| Arc::new(UpstreamError::Unrepresentable(e.to_string())))?;
        self.put_config(&raw_repo, &raw.config.bytes)
            .await
            .map_err(store_err)?;
        self.put_manifest(&raw_repo, &raw.manifest, Some(tag))
            .await
            .map_err(store_err)?;
        let sources: Vec<(String, HubSource)> = rec
            .files
            .iter()
            .map(|f| {
                (
                    format!("sha256:{}", f.sha256),
                    HubSource {
                        hub,
                        repo: rec.repo.clone(),
                        commit: rec.commit.clone(),
                        path: f.path.clone(),
                        size: f.size,
                    },
                )
            })
            .collect();
        rec.raw = raw.manifest.digest;
        let stored = rec.clone();
        self.store
            .blocking(move |idx| idx.put_hub_revision(&key, &stored, &sources))
            .await
            .map_err(store_err)?;
        self.announce_record(hub, repo, tag);
        // The whole commit is also known by its own tag, which never expires.
        if confirmed && rec.filter.is_all() && tag != rec.commit && names::valid_tag(&rec.commit) {
            let by_commit = HubRevisionRecord {
                revision: rec.commit.clone(),
                ..rec.clone()
            };
            self.tag_manifest(&raw_repo, &rec.raw, &rec.commit).await?;
            let ck = hub_key(hub, repo, &rec.commit);
            self.store
                .blocking(move |idx| idx.put_hub_revision(&ck, &by_commit, &[]))
                .await
                .map_err(store_err)?;
        }
        Ok(rec)
    }

    /// Tell the peers this node holds the record of `tag` (they may take it from here when the
    /// hub cannot be reached).
    fn announce_record(&self, hub: HubKind, repo: &str, tag: &str) {
        if let Some(p) = self.fetcher.peers() {
            p.announce(
                &record_key(hub, repo, tag),
                manta_peer::proto::Event::Complete { size: 0 },
                None,
            );
        }
    }

    /// The record of `tag` from a peer that holds it, for when the hub cannot be reached. Its
    /// files' bytes are still checked against their digests wherever they come from; the record
    /// is asked of the hub again as soon as the hub answers.
    async fn peer_record(&self, hub: HubKind, repo: &str, tag: &str) -> Option<HubRevisionRecord> {
        let peers = self.fetcher.peers()?;
        let holder = peers.holder(&record_key(hub, repo, tag)).await?;
        let path = format!(
            "/revision?{}",
            serde_urlencoded::to_string([
                ("hub", hub.as_str()),
                ("repo", &repo.to_ascii_lowercase()),
                ("tag", tag)
            ])
            .ok()?
        );
        let rec: HubRevisionRecord = match peers.client().get_json(&holder, &path).await {
            Ok(r) => r?,
            Err(e) => {
                tracing::debug!(peer = holder, error = %e, "no revision record from the peer");
                return None;
            }
        };
        let sane = !rec.files.is_empty()
            && rec
                .files
                .iter()
                .all(|f| f.sha256.len() == 64 && f.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
            && rec.repo.eq_ignore_ascii_case(repo);
        if !sane {
            tracing::warn!(
                peer = holder,
                "a peer's revision record does not fit the repo; ignored"
            );
            return None;
        }
        tracing::warn!(hub = hub.as_str(), repo = %rec.repo, %tag, commit = %rec.commit, peer = holder,
            "hub unreachable; serving the revision as a peer resolved it");
        Some(rec)
    }

    /// Point `tag` of `repo` at a manifest the node holds.
    async fn tag_manifest(&self, repo: &str, digest: &str, tag: &str) -> Result<(), FetchError> {
        let Some(record) = self.store.index().manifest(digest).map_err(store_err)? else {
            return Ok(());
        };
        let m = forms::Blob {
            media_type: record.media_type,
            digest: digest.to_string(),
            bytes: record.bytes,
        };
        self.put_manifest(repo, &m, Some(tag))
            .await
            .map_err(store_err)
    }

    /// Download a file the hub lists without a sha256, hash it and keep it (with no room in the
    /// cache, only hash it: it streams through later like any file not kept).
    /// `file` is (path, size, git blob id): a listed git id is checked, so a hub cannot swap
    /// the bytes of a file it lists without a sha256 either.
    async fn hash_file(
        &self,
        adapter: &dyn HubAdapter,
        repo: &str,
        commit: &str,
        (path, size, oid): (&str, u64, Option<&str>),
        cache_repo: &str,
    ) -> Result<String, FetchError> {
        if size > MAX_HASHED_FILE {
            return Err(Arc::new(UpstreamError::Malformed(format!(
                "{path}: {size} bytes without a listed sha256"
            ))));
        }
        let dl = adapter
            .download(repo, commit, path, 0)
            .await
            .map_err(hub_err)?;
        let mut room = match self.store.reserve(size).await {
            Ok(r) => Some(r),
            Err(e) if e.is_no_space() => {
                tracing::warn!(%path, size, reason = %e, "no room in the cache: hashing a hub file without keeping it");
                None
            }
            Err(e) => return Err(store_err(e)),
        };
        let mut w = match room {
            Some(_) => Some(
                self.store
                    .files()
                    .temp_writer(digest::Algorithm::Sha256)
                    .await
                    .map_err(store_err)?,
            ),
            None => None,
        };
        let mut sha = sha2::Sha256::new();
        let mut body = dl.body;
        let mut git = Sha1::new();
        git.update(format!("blob {size}\0").as_bytes());
        let mut len = 0u64;
        while let Some(chunk) = tokio::time::timeout(self.settings.idle, body.next())
            .await
            .map_err(|_| Arc::new(UpstreamError::Timeout("hub file body")))?
        {
            let chunk = chunk.map_err(hub_err)?;
            len += chunk.len() as u64;
            if len > size {
                return Err(Arc::new(UpstreamError::Malformed(format!(
                    "{path}: longer than the listed {size} bytes"
                ))));
            }
            git.update(&chunk);
            match (w.as_mut(), room.as_mut()) {
                (Some(w), Some(room)) => {
                    w.write(&chunk).await.map_err(store_err)?;
                    room.written(chunk.len() as u64);
                }
                _ => sha.update(&chunk),
            }
        }
        if len != size {
            return Err(Arc::new(UpstreamError::Malformed(format!(
                "{path}: {len} bytes, the hub lists {size}"
            ))));
        }
        if let Some(oid) = oid {
            if !hex::encode(git.finalize()).eq_ignore_ascii_case(oid) {
                return Err(Arc::new(UpstreamError::DigestMismatch {
                    expected: format!("git blob {oid} of {path}"),
                }));
            }
        }
        let Some(w) = w else {
            return Ok(hex::encode(sha.finalize()));
        };
        let (blob, d) = w.finish().await.map_err(store_err)?;
        self.store
            .commit_blob(cache_repo, blob, &d, Origin::Upstream)
            .await
            .map_err(store_err)?;
        Ok(d.digest().to_string())
    }

    /// Keep a small document (a config) as a blob of `repo`.
    async fn put_config(&self, repo: &str, bytes: &[u8]) -> crate::store::Result<()> {
        let d = digest::of_bytes(digest::Algorithm::Sha256, bytes);
        if self.store.index().blob(d.as_ref())?.is_some() {
            self.store.link_blob(repo, &d).await?;
            return Ok(());
        }
        let mut w = self
            .store
            .files()
            .temp_writer(digest::Algorithm::Sha256)
            .await?;
        w.write(bytes).await?;
        let (blob, d) = w.finish().await?;
        self.store
            .commit_blob(repo, blob, &d, Origin::Upstream)
            .await
    }

    async fn put_manifest(
        &self,
        repo: &str,
        m: &forms::Blob,
        tag: Option<&str>,
    ) -> crate::store::Result<()> {
        let record = ManifestRecord {
            origin: Origin::Upstream,
            media_type: m.media_type.clone(),
            subject: None,
            bytes: m.bytes.clone(),
        };
        let (repo, digest, tag) = (repo.to_string(), m.digest.clone(), tag.map(str::to_string));
        self.store
            .blocking(move |idx| {
                idx.put_manifest(&ManifestPut {
                    repo: &repo,
                    digest: &digest,
                    record: &record,
                    tag: tag.as_deref(),
                    referrer_descriptor: None,
                    resolved_at: None,
                })
            })
            .await?;
        self.store.touch(&m.digest);
        Ok(())
    }

    /// Join (or start) the single-flight fetch of a hub file's blob.
    pub fn fetch_blob(
        &self,
        digest: &Digest,
        tar: Option<TarHash>,
    ) -> Result<Arc<Fetch>, FetchError> {
        let source = self
            .store
            .index()
            .hub_source(digest.as_ref())
            .map_err(store_err)?
            .ok_or_else(|| {
                hub_err(HubError::EntryNotFound(format!(
                    "{digest} is no file of a resolved revision"
                )))
            })?;
        Ok(self.fetch_source(digest, source, tar))
    }

    fn fetch_source(&self, digest: &Digest, s: HubSource, tar: Option<TarHash>) -> Arc<Fetch> {
        let adapter = self.adapter(s.hub);
        let repo = oci_repo(s.hub, Form::Raw, &s.repo.to_ascii_lowercase());
        let origin = Arc::new(crate::source::HubFile { adapter, source: s });
        let (f, _) = self
            .fetcher
            .fetch(digest, &repo, self.settings.idle, tar, origin);
        f
    }

    /// The size of a hub file's blob, from its source record.
    pub fn source_size(&self, digest: &Digest) -> Result<Option<u64>, FetchError> {
        Ok(self
            .store
            .index()
            .hub_source(digest.as_ref())
            .map_err(store_err)?
            .map(|s| s.size))
    }

    /// Every tag record: `(hub, lowercase repo, tag, record)`.
    pub fn records(
        &self,
    ) -> crate::store::Result<Vec<(HubKind, String, String, HubRevisionRecord)>> {
        let mut out = Vec::new();
        self.store.index().for_each_hub_revision(&mut |key, rec| {
            let mut parts = key.splitn(3, '\0');
            if let (Some(h), Some(r), Some(t)) = (parts.next(), parts.next(), parts.next()) {
                if let Some(h) = HubKind::parse(h) {
                    out.push((h, r.to_string(), t.to_string(), rec.clone()));
                }
            }
        })?;
        Ok(out)
    }
}

/// The key peers track a hub tag's record under: a digest-shaped name (the owners' table knows
/// only digests), sha256 of the hub, lowercase repo and tag.
pub fn record_key(hub: HubKind, repo: &str, tag: &str) -> String {
    use sha2::Digest as _;
    let h =
        sha2::Sha256::digest(format!("manta-hub-record\0{}", hub_key(hub, repo, tag)).as_bytes());
    format!("sha256:{}", hex::encode(h))
}

fn parse_digest(s: &str) -> Result<Digest, FetchError> {
    digest::parse(s).map(|(d, _)| d).map_err(|e| {
        Arc::new(UpstreamError::Local(StoreError::Corrupt(format!(
            "a hub record's digest {s}: {e}"
        ))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_name("hf-raw/qwen/qwen2.5"),
            Some(HubName {
                hub: HubKind::Hf,
                form: Form::Raw,
                repo: "qwen/qwen2.5"
            })
        );
        assert_eq!(parse_name("ms/a/b").map(|n| n.form), Some(Form::Image));
        assert_eq!(parse_name("hf"), None);
        assert_eq!(parse_name("library/hf"), None);
        assert_eq!(oci_repo(HubKind::Ms, Form::Raw, "a/b"), "ms-raw/a/b");
    }

    #[test]
    fn revisions_and_tags() {
        assert_eq!(tag_of_revision("refs/pr/12"), "refs-pr-12");
        assert_eq!(revision_of_tag("refs-pr-12"), "refs/pr/12");
        assert_eq!(revision_of_tag("refs-pr-x"), "refs-pr-x");
        assert_eq!(revision_of_tag("main"), "main");
    }
}
