//! `/v2/hf/…`, `/v2/hf-raw/…`, `/v2/ms/…`, `/v2/ms-raw/…`: model hub repositories, read-only.
//!
//! A manifest by tag resolves the revision (see [`crate::hub`]); by digest it is whatever the
//! node built. A blob is a held file, an image-form tar layer (streamed from its recipe), or a
//! hub file fetched on first use through the single-flight fetcher; and only under the name of
//! a repo whose resolved revisions list it: the node's hub token (which opened a gated repo for
//! one client) must not make that repo's files readable under any other name.

use axum::body::Body;
use axum::http::Method;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use oci_spec::image::Digest;

use super::blobs::{blob_response, file_stream, range_of, serve_fetch, serve_file};
use super::proxy::manifest_response;
use super::{Head, Shared};
use crate::digest;
use crate::error::{ApiError, ApiResult, Wanted};
use crate::fetch;
use crate::hub::{self, Form, HubName};
use crate::metrics::{CacheResult, ObjectKind};
use crate::names::{Reference, ReferenceError};
use crate::store::{RecipeRecord, StoreError};

pub(super) async fn manifest(
    st: &Shared,
    hn: HubName<'_>,
    reference: &str,
    req: &Head,
) -> ApiResult<Response> {
    let head = req.method == Method::HEAD;
    let repo = hub::oci_repo(hn.hub, hn.form, hn.repo);
    let digest = match Reference::parse(reference) {
        Ok(Reference::Digest(d, _)) => d.to_string(),
        Ok(Reference::Tag(tag)) => {
            let rec = st
                .hubs
                .revision(hn.hub, hn.repo, &tag, hn.form, None)
                .await
                .map_err(|e| {
                    st.metrics.upstream_error(ObjectKind::manifest);
                    ApiError::upstream(Wanted::Manifest, e)
                })?;
            match hn.form {
                Form::Raw => rec.raw,
                Form::Image => rec.image.ok_or(ApiError::ManifestUnknown)?,
            }
        }
        Err(ReferenceError::InvalidTag(_)) => return Err(ApiError::ManifestUnknown),
        Err(ReferenceError::InvalidDigest(e)) => {
            return Err(ApiError::DigestInvalid(e.to_string()))
        }
    };
    if !st.store.index().manifest_linked(&repo, &digest)? {
        return Err(ApiError::ManifestUnknown);
    }
    let record = st
        .store
        .index()
        .manifest(&digest)?
        .ok_or(ApiError::ManifestUnknown)?;
    manifest_response(st, &digest, record, head)
}

pub(super) async fn blob(
    st: &Shared,
    hn: HubName<'_>,
    digest_s: &str,
    req: &Head,
) -> ApiResult<Response> {
    let (digest, _) =
        digest::parse(digest_s).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
    let recipe = match hn.form {
        Form::Image => st.store.index().recipe(digest.as_ref())?,
        Form::Raw => None,
    };
    if !belongs(st, &hn, &digest, recipe.as_ref())? {
        return Err(ApiError::BlobUnknown);
    }
    if let Some(recipe) = recipe {
        if st.store.index().blob(digest.as_ref())?.is_none() {
            return serve_recipe(st, &digest, recipe, req).await;
        }
    }
    file_blob(st, &digest, req).await
}

/// Whether `digest` is content of the repo `hn` names: a blob linked to its OCI repository (a
/// form's config, a file fetched for it), or a file one of its resolved revisions lists (for
/// the image form, through the tar layer's recipe).
fn belongs(
    st: &Shared,
    hn: &HubName<'_>,
    digest: &Digest,
    recipe: Option<&RecipeRecord>,
) -> ApiResult<bool> {
    let index = st.store.index();
    if index.blob_linked(&hub::oci_repo(hn.hub, hn.form, hn.repo), digest.as_ref())? {
        return Ok(true);
    }
    let file = recipe.map_or(digest.as_ref(), |r| r.raw.as_str());
    let Some(sha256) = file.strip_prefix("sha256:") else {
        return Ok(false);
    };
    let records = index.hub_revisions_of(&crate::store::hub_repo_prefix(hn.hub, hn.repo))?;
    Ok(records
        .iter()
        .any(|r| r.files.iter().any(|f| f.sha256 == sha256)))
}

/// A hub file's blob: held, or fetched through the single-flight fetcher (HEAD answers from the
/// file list without fetching).
pub(super) async fn file_blob(st: &Shared, digest: &Digest, req: &Head) -> ApiResult<Response> {
    if let Some((file, size)) = st.store.open_verified(digest).await? {
        st.metrics.lookup(ObjectKind::blob, CacheResult::hit);
        return serve_file(st, digest, file, size, req).await;
    }
    let up = |e| ApiError::upstream(Wanted::Blob, e);
    let Some(size) = st.hubs.source_size(digest).map_err(up)? else {
        return Err(ApiError::BlobUnknown);
    };
    if req.method == Method::HEAD {
        let (status, start, len) = range_of(req, size)?;
        return blob_response(Body::empty(), digest, status, start, len, size);
    }
    let f = st.hubs.fetch_blob(digest, None).map_err(up)?;
    st.metrics.lookup(ObjectKind::blob, CacheResult::miss);
    serve_fetch(
        st,
        &f,
        digest,
        req,
        st.hubs.settings().idle,
        fetch::IfPassedThrough::OpenSource,
    )
    .await
}

/// An image-form tar layer: its headers, the raw blob's bytes (held, or streaming in), zeros.
async fn serve_recipe(
    st: &Shared,
    digest: &Digest,
    recipe: RecipeRecord,
    req: &Head,
) -> ApiResult<Response> {
    let total = recipe.tar_len();
    let (status, start, len) = range_of(req, total)?;
    if req.method == Method::HEAD || len == 0 {
        return blob_response(Body::empty(), digest, status, start, len, total);
    }
    let end = start + len; // exclusive
    let plen = recipe.prefix.len() as u64;
    let content_end = plen + recipe.size;
    let mut parts: Vec<BoxStream<'static, std::io::Result<Bytes>>> = Vec::new();
    if start < plen {
        let b = Bytes::from(recipe.prefix[start as usize..end.min(plen) as usize].to_vec());
        parts.push(futures_util::stream::once(async move { Ok(b) }).boxed());
    }
    let (cs, ce) = (start.max(plen), end.min(content_end));
    if cs < ce {
        let raw = digest::parse(&recipe.raw)
            .map_err(|e| StoreError::Corrupt(format!("recipe of {digest}: {e}")))?
            .0;
        parts.push(raw_range(st, &raw, cs - plen, ce - plen).await?);
    }
    if end > content_end {
        parts.push(hub::zeros(end - start.max(content_end)).boxed());
    }
    st.metrics.blob_bytes_served.inc_by(len);
    let stream = futures_util::stream::iter(parts).flatten().boxed();
    // A recipe a peer gave: a whole read is hashed on its way, and its last bytes go out only
    // if the layer is what the recipe says (then the recipe counts as verified).
    let stream = if !recipe.verified && start == 0 && len == total {
        check_layer(st.clone(), digest.clone(), stream)
    } else {
        stream
    };
    blob_response(Body::from_stream(stream), digest, status, start, len, total)
}

/// Pass `stream` (a whole tar layer) on, one chunk behind, hashing it; the last chunk goes out
/// only if the layer hashes to `digest`. A match marks the recipe verified; a mismatch drops
/// it (a peer's wrong word is not served again).
fn check_layer(
    st: Shared,
    digest: Digest,
    stream: BoxStream<'static, std::io::Result<Bytes>>,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    struct Check {
        inner: BoxStream<'static, std::io::Result<Bytes>>,
        held: Option<Bytes>,
        hasher: Option<crate::digest::Hasher>,
    }
    let start = Check {
        inner: stream,
        held: None,
        hasher: Some(crate::digest::Hasher::new(crate::digest::algorithm_of(
            &digest,
        ))),
    };
    futures_util::stream::unfold(start, move |mut c| {
        let (st, digest) = (st.clone(), digest.clone());
        async move {
            loop {
                match c.inner.next().await {
                    Some(Ok(chunk)) => {
                        if let Some(h) = c.hasher.as_mut() {
                            h.update(&chunk);
                        }
                        if let Some(prev) = c.held.replace(chunk) {
                            return Some((Ok(prev), c));
                        }
                    }
                    Some(Err(e)) => {
                        // Nothing after an error goes out: the stream ends with it.
                        c.hasher = None;
                        c.held = None;
                        c.inner = futures_util::stream::empty().boxed();
                        return Some((Err(e), c));
                    }
                    None => {
                        let last = c.held.take()?;
                        let actual = c.hasher.take()?.finish();
                        let ok = actual == digest;
                        let key = digest.to_string();
                        let _ = st
                            .store
                            .blocking(move |idx| {
                                let Some(cur) = idx.recipe(&key)? else {
                                    return Ok(());
                                };
                                if ok {
                                    let done = RecipeRecord {
                                        verified: true,
                                        ..cur
                                    };
                                    idx.set_recipe(&key, Some(&done))
                                } else {
                                    idx.set_recipe(&key, None)
                                }
                            })
                            .await;
                        if ok {
                            return Some((Ok(last), c));
                        }
                        tracing::error!(%digest, %actual,
                            "an image-form layer built from a peer's recipe does not match its digest; recipe dropped");
                        return Some((
                            Err(std::io::Error::other(format!(
                                "the layer does not match {digest}"
                            ))),
                            c,
                        ));
                    }
                }
            }
        }
    })
    .boxed()
}

/// Bytes `start..end` of a raw blob: from disk when held, else following its fetch.
pub(super) async fn raw_range(
    st: &Shared,
    raw: &Digest,
    start: u64,
    end: u64,
) -> ApiResult<BoxStream<'static, std::io::Result<Bytes>>> {
    if let Some((file, size)) = st.store.open_verified(raw).await? {
        return file_stream(st, raw, file, start, end - start, size).await;
    }
    let idle = st.hubs.settings().idle;
    let f = st
        .hubs
        .fetch_blob(raw, None)
        .map_err(|e| ApiError::upstream(Wanted::Blob, e))?;
    Ok(fetch::follow(
        &f,
        st.store.files().blob_path(raw),
        start,
        end - 1,
        idle,
        fetch::IfPassedThrough::OpenSource,
    )
    .boxed())
}
