//! The image form of a revision: every file hashed as an uncompressed tar layer (while it streams
//! in, or from disk when held), its recipe recorded, and the config, manifest(s) and index built.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use manta_hub::forms::{self, ImageLayer, ModelMeta};
use manta_hub::HubKind;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;

use super::{oci_repo, parse_digest, store_err, Form, Hubs, Spec, PARALLEL_FILES};
use crate::fetch::{self, FetchError, TarHash};
use crate::store::{hub_key, HubFileRecord, HubRevisionRecord, RecipeRecord};
use crate::upstream::UpstreamError;

impl Hubs {
    /// Resolve (if needed), then hash every file as a tar layer and build the image form.
    pub(super) async fn build_image(
        self: &Arc<Self>,
        hub: HubKind,
        repo: &str,
        tag: &str,
        spec: Option<Spec>,
    ) -> Result<HubRevisionRecord, FetchError> {
        let rec = self.revision(hub, repo, tag, Form::Raw, spec).await?;
        if rec.image.is_some() {
            return Ok(rec);
        }
        let layers: Vec<ImageLayer> = futures_util::stream::iter(rec.files.clone())
            .map(|f| self.tar_layer(f))
            .buffered(PARALLEL_FILES)
            .try_collect()
            .await?;
        let meta = ModelMeta {
            repo: rec.repo.clone(),
            commit: rec.commit.clone(),
        };
        let form = forms::image_form(&meta, &layers, &self.settings.platforms)
            .map_err(|e| Arc::new(UpstreamError::Unrepresentable(e.to_string())))?;
        let image_repo = oci_repo(hub, Form::Image, repo);
        for c in &form.configs {
            self.put_config(&image_repo, &c.bytes)
                .await
                .map_err(store_err)?;
        }
        if form.manifests.len() > 1 || form.manifests.first() != Some(&form.top) {
            for m in &form.manifests {
                self.put_manifest(&image_repo, m, None)
                    .await
                    .map_err(store_err)?;
            }
        }
        self.put_manifest(&image_repo, &form.top, Some(tag))
            .await
            .map_err(store_err)?;
        // Record the image form on the record of the commit it was built from (a branch that moved
        // meanwhile keeps its new record).
        let key = hub_key(hub, repo, tag);
        let (top, commit) = (form.top.digest.clone(), rec.commit.clone());
        let updated = self
            .store
            .blocking(move |idx| {
                let Some(mut cur) = idx.hub_revision(&key)? else {
                    return Ok(None);
                };
                if cur.commit != commit {
                    return Ok(None);
                }
                cur.image = Some(top);
                idx.put_hub_revision(&key, &cur, &[])?;
                Ok(Some(cur))
            })
            .await
            .map_err(store_err)?;
        Ok(updated.unwrap_or(HubRevisionRecord {
            image: Some(form.top.digest),
            ..rec
        }))
    }

    /// The tar layer of one file: its recipe when known, else hashed from the held blob or
    /// while the blob streams in.
    async fn tar_layer(&self, f: HubFileRecord) -> Result<ImageLayer, FetchError> {
        let raw = format!("sha256:{}", f.sha256);
        if let Some(layer) = self.known_layer(&raw, &f.path)? {
            return Ok(layer);
        }
        let prefix = forms::tar_prefix(&f.path, f.size)
            .map_err(|e| Arc::new(UpstreamError::Unrepresentable(e.to_string())))?;
        if let Some(layer) = self.peer_layer(&raw, &f, &prefix).await? {
            return Ok(layer);
        }
        let raw_d = parse_digest(&raw)?;
        let mut held = self.store.open_verified(&raw_d).await.map_err(store_err)?;
        // Not held: fetch it, hashing the tar on the way (kept, or with no room, only hashed).
        // A fetch joined that does not hash the tar leaves the blob in the store, or, passed
        // through, leaves the next round to a fetch of our own.
        for _ in 0..3 {
            if held.is_some() {
                break;
            }
            let tar = TarHash {
                path: f.path.clone(),
                prefix: prefix.clone(),
            };
            let fetch = self.fetch_blob(&raw_d, Some(tar))?;
            fetch::wait_verified(&fetch).await?;
            if let Some(layer) = self.known_layer(&raw, &f.path)? {
                return Ok(layer);
            }
            fetch::wait_done(&fetch).await?;
            held = self.store.open_verified(&raw_d).await.map_err(store_err)?;
        }
        // Held, or fetched by a request that did not hash the tar: hash it from disk.
        let Some((file, size)) = held else {
            return Err(Arc::new(UpstreamError::Internal(
                "a file could neither be kept nor hashed while building the image form",
            )));
        };
        let path = self.store.files().blob_path(&raw_d);
        let tar_digest = hash_tar(file.file, &prefix, size)
            .await
            .map_err(|e| store_err(crate::store::StoreError::io("read", &path)(e)))?;
        let recipe = RecipeRecord {
            version: 1,
            raw: raw.clone(),
            size,
            prefix,
            verified: true,
        };
        let layer = ImageLayer {
            digest: tar_digest.clone(),
            size: recipe.tar_len(),
        };
        let path = f.path.clone();
        self.store
            .blocking(move |idx| idx.put_recipe(&tar_digest, &path, &recipe))
            .await
            .map_err(store_err)?;
        Ok(layer)
    }

    /// The tar layer of a file as a peer that holds it recorded it, so the image form is built
    /// without the file's bytes. The recipe must be the one this node would write (same raw
    /// blob, size and tar headers); its tar digest is the peer's word until a whole read of
    /// the layer has hashed to it (`verified: false`: such reads withhold their last bytes).
    async fn peer_layer(
        &self,
        raw: &str,
        f: &HubFileRecord,
        prefix: &[u8],
    ) -> Result<Option<ImageLayer>, FetchError> {
        let Some(peers) = self.fetcher.peers() else {
            return Ok(None);
        };
        let Some(holder) = peers.holder(raw).await else {
            return Ok(None);
        };
        let path = format!(
            "/recipe/{raw}?{}",
            serde_urlencoded::to_string([("path", &f.path)]).unwrap_or_default()
        );
        let got: Option<crate::api::peer::PeerRecipe> =
            match peers.client().get_json(&holder, &path).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(peer = holder, error = %e, "no recipe from the peer");
                    return Ok(None);
                }
            };
        let Some(mut got) = got else {
            return Ok(None);
        };
        let valid_tar = crate::digest::parse(&got.tar).is_ok();
        if !valid_tar
            || got.recipe.raw != raw
            || got.recipe.size != f.size
            || got.recipe.prefix != prefix
        {
            tracing::warn!(peer = holder, %raw, path = %f.path,
                "a peer's recipe does not fit the file; hashing it here");
            return Ok(None);
        }
        got.recipe.verified = false;
        let layer = ImageLayer {
            digest: got.tar.clone(),
            size: got.recipe.tar_len(),
        };
        let (tar, path, recipe) = (got.tar, f.path.clone(), got.recipe);
        let taken = self
            .store
            .blocking(move |idx| match idx.recipe(&tar)? {
                None => idx.put_recipe(&tar, &path, &recipe).map(|()| true),
                // A layer this node knows already must be this very file's: a peer must not
                // make one file's layer stand for another's.
                Some(known) => Ok(known.raw == recipe.raw
                    && known.size == recipe.size
                    && known.prefix == recipe.prefix),
            })
            .await
            .map_err(store_err)?;
        if !taken {
            tracing::warn!(peer = holder, %raw, path = %f.path,
                "a peer's recipe names another file's layer; hashing it here");
            return Ok(None);
        }
        Ok(Some(layer))
    }

    fn known_layer(&self, raw: &str, path: &str) -> Result<Option<ImageLayer>, FetchError> {
        let idx = self.store.index();
        let Some(t) = idx.recipe_for(raw, path).map_err(store_err)? else {
            return Ok(None);
        };
        Ok(idx.recipe(&t).map_err(store_err)?.map(|r| ImageLayer {
            digest: t,
            size: r.tar_len(),
        }))
    }
}

/// sha256 of a tar layer: `prefix`, the file's `size` bytes, the zero suffix.
pub async fn hash_tar(
    mut file: tokio::fs::File,
    prefix: &[u8],
    size: u64,
) -> std::io::Result<String> {
    let mut h = Sha256::new();
    h.update(prefix);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "blob shorter than its record",
            ));
        }
        let n = (n as u64).min(left) as usize;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    fetch::finish_tar_hash(&mut h, size);
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Zero bytes, for a tar layer's suffix.
pub fn zeros(len: u64) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    const CHUNK: u64 = 64 << 10;
    futures_util::stream::iter((0..len.div_ceil(CHUNK)).map(move |i| {
        let n = CHUNK.min(len - i * CHUNK) as usize;
        Ok(Bytes::from(vec![0u8; n]))
    }))
}
