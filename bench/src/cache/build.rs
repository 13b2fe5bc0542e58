//! The benchmark's data directories, built offline: a Manta store through the store's own
//! library API (`Store::open_with`, `commit_blob`, the index's `put_manifest`), exactly as the
//! agent writes them, and the same blobs in docker-registry's filesystem layout.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use manta_registry::digest::Algorithm;
use manta_registry::store::{unix_now, CacheOptions, ManifestPut, ManifestRecord, Origin, Store};

use super::step;
use crate::content::{self, BlobFile};

/// Seeds of the generated blobs: one range per kind, so that no two blobs are alike.
pub const SEED_CACHE: u64 = 1 << 40;
pub const SEED_PUSHED: u64 = 2 << 40;
pub const SEED_STARTUP: u64 = 3 << 40;
pub const SEED_WRITES: u64 = 4 << 40;

/// Builder tasks in flight (so that the store's blocking pool always has work).
const WINDOW: usize = 32;

/// What to put in a store.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    /// Cache (`Origin::Upstream`) blobs in all.
    pub cache_blobs: usize,
    /// Blobs per cached image (a config and `n - 1` layers, under one tag of its own
    /// pull-through repository); 0 for bare cache blobs that no manifest references.
    pub blobs_per_image: usize,
    /// Size of each cache layer (or bare cache blob).
    pub cache_blob_size: usize,
    pub cache_seed: u64,
    /// Pushed (`Origin::Pushed`, never evicted) blobs, in [`PUSHED_REPO`].
    pub pushed_blobs: usize,
    pub pushed_blob_size: usize,
}

/// The repository pushed blobs are linked into.
pub const PUSHED_REPO: &str = "bench/pushed";
/// The pull-through repositories cached images live in: `<host>/<repo>`, as the agent names
/// them, one per image, tag [`CACHE_TAG`].
pub const CACHE_HOST: &str = "127.0.0.1:5000";
pub const CACHE_TAG: &str = "v1";

/// What a built store holds.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    /// Pushed blobs: digest and size.
    pub pushed: Vec<(String, u64)>,
    pub pushed_bytes: u64,
    pub cache_blobs: u64,
    pub cache_bytes: u64,
    /// Cached images (tags); 0 for bare blobs.
    pub images: usize,
}

impl Contents {
    pub fn total_bytes(&self) -> u64 {
        self.pushed_bytes + self.cache_bytes
    }
}

/// A blob through the store's write path: a temp file hashed while written (not fsynced: the
/// store is on tmpfs and copied before use), installed and indexed by `commit_blob`.
async fn commit(store: &Store, repo: &str, bytes: &[u8], origin: Origin) -> anyhow::Result<String> {
    let mut w = store.files().temp_writer(Algorithm::Sha256).await?;
    w.write(bytes).await?;
    let (blob, digest) = w.finish_unsynced().await?;
    store.commit_blob(repo, blob, &digest, origin).await?;
    Ok(digest.to_string())
}

/// The config blob of cached image `m` (small JSON, unique per image).
fn image_config(m: usize) -> Vec<u8> {
    format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"manta.bench.image":"{m}"}}}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    )
    .into_bytes()
}

/// Cached image `m`: its config and layers committed as cache blobs into its repository, then
/// its manifest recorded under its tag as the pull-through path records it. Blobs and bytes.
async fn cached_image(store: Store, spec: StoreSpec, m: usize) -> anyhow::Result<(u64, u64)> {
    let repo = format!("{CACHE_HOST}/bench/cache-{m:05}");
    let config = image_config(m);
    commit(&store, &repo, &config, Origin::Upstream).await?;
    let mut bytes = config.len() as u64;
    let mut layers = Vec::with_capacity(spec.blobs_per_image.saturating_sub(1));
    for l in 1..spec.blobs_per_image {
        let seed = spec.cache_seed + (m * spec.blobs_per_image + l) as u64;
        let data = content::random_bytes(spec.cache_blob_size, seed);
        let digest = commit(&store, &repo, &data, Origin::Upstream).await?;
        bytes += data.len() as u64;
        layers.push(BlobFile {
            path: PathBuf::new(),
            size: data.len() as u64,
            digest,
        });
    }
    let manifest = content::image_manifest_bytes(&config, &layers)?;
    let digest = content::sha256_digest(&manifest);
    let record = ManifestRecord {
        media_type: content::MANIFEST_MEDIA_TYPE.to_string(),
        subject: None,
        origin: Origin::Upstream,
        bytes: manifest,
    };
    let key = digest.clone();
    store
        .blocking(move |idx| {
            idx.put_manifest(&ManifestPut {
                repo: &repo,
                digest: &key,
                record: &record,
                tag: Some(CACHE_TAG),
                referrer_descriptor: None,
                resolved_at: Some(unix_now()),
            })
        })
        .await?;
    store.touch(&digest);
    Ok((spec.blobs_per_image as u64, bytes))
}

/// Runs `task(i)` for every `i` in `0..n`, at most [`WINDOW`] at a time; results in any order.
async fn bounded<T, F, Fut>(n: usize, what: &str, task: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(n);
    let tenth = (n / 10).max(1);
    for i in 0..n {
        while set.len() >= WINDOW {
            if let Some(r) = set.join_next().await {
                out.push(r.context("a builder task panicked")??);
            }
        }
        set.spawn(task(i));
        if (i + 1) % tenth == 0 {
            step(&format!("  {what}: {} of {n}", i + 1));
        }
    }
    while let Some(r) = set.join_next().await {
        out.push(r.context("a builder task panicked")??);
    }
    Ok(out)
}

/// A Manta data directory at `dir` holding `spec`, closed cleanly (index flushed) at the end.
pub async fn manta_store(dir: &Path, spec: &StoreSpec) -> anyhow::Result<Contents> {
    let d = dir.to_path_buf();
    let (store, _) =
        tokio::task::spawn_blocking(move || Store::open_with(&d, CacheOptions::default()))
            .await
            .context("opening the store panicked")??;
    let mut c = Contents::default();
    let pushed = {
        let (store, size) = (store.clone(), spec.pushed_blob_size);
        bounded(spec.pushed_blobs, "pushed blobs", move |i| {
            let store = store.clone();
            async move {
                let data = content::random_bytes(size, SEED_PUSHED + i as u64);
                let d = commit(&store, PUSHED_REPO, &data, Origin::Pushed).await?;
                Ok((d, data.len() as u64))
            }
        })
        .await?
    };
    c.pushed_bytes = pushed.iter().map(|(_, s)| s).sum();
    c.pushed = pushed;
    let done: Vec<(u64, u64)> = if spec.blobs_per_image == 0 {
        let (store, size, seed) = (store.clone(), spec.cache_blob_size, spec.cache_seed);
        bounded(spec.cache_blobs, "cache blobs", move |i| {
            let store = store.clone();
            async move {
                let data = content::random_bytes(size, seed + i as u64);
                let repo = format!("{CACHE_HOST}/bench/cache");
                commit(&store, &repo, &data, Origin::Upstream).await?;
                Ok((1, data.len() as u64))
            }
        })
        .await?
    } else {
        c.images = spec.cache_blobs.div_ceil(spec.blobs_per_image);
        let (store, s) = (store.clone(), spec.clone());
        bounded(c.images, "cached images", move |m| {
            cached_image(store.clone(), s.clone(), m)
        })
        .await?
    };
    c.cache_blobs = done.iter().map(|(n, _)| n).sum();
    c.cache_bytes = done.iter().map(|(_, b)| b).sum();
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .context("flushing the store panicked")??;
    Ok(c)
}

/// The startup store's blobs in docker-registry's layout under `root` (its `rootdirectory`):
/// `blobs/sha256/<xx>/<hex>/data` and a `_layers` link in `repo` for each. Blocking.
pub fn docker_layout(
    root: &Path,
    repo: &str,
    n: usize,
    size: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let v2 = root.join("docker/registry/v2");
    let tenth = (n / 10).max(1);
    for i in 0..n {
        let data = content::random_bytes(size, seed + i as u64);
        let digest = content::sha256_digest(&data);
        let hex = digest.trim_start_matches("sha256:");
        let blob = v2.join("blobs/sha256").join(&hex[..2]).join(hex);
        std::fs::create_dir_all(&blob).with_context(|| format!("create {}", blob.display()))?;
        std::fs::write(blob.join("data"), &data)?;
        let link = v2
            .join("repositories")
            .join(repo)
            .join("_layers/sha256")
            .join(hex);
        std::fs::create_dir_all(&link).with_context(|| format!("create {}", link.display()))?;
        std::fs::write(link.join("link"), digest.as_bytes())?;
        if (i + 1) % tenth == 0 {
            step(&format!("  docker-registry blobs: {} of {n}", i + 1));
        }
    }
    Ok(())
}

/// `cp -a src dst` (dst must not exist): a store built on tmpfs, put on the disk under test.
pub fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .context("cannot run cp")?;
    if !status.success() {
        bail!(
            "cp -a {} {} failed ({status})",
            src.display(),
            dst.display()
        );
    }
    Ok(())
}

/// Regular files under `dir`, recursively.
pub fn count_files(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}
