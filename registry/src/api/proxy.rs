//! Pull-through: `GET|HEAD` of manifests and blobs of an upstream repository.
//!
//! Manifests by digest are immutable: served from the cache forever once fetched. A tag is
//! served from the cache while younger than the tag TTL; after that it is confirmed with a HEAD
//! upstream, and when the upstream is unreachable the last answer is served (stale-if-error).
//! Blobs come from the store when held, else through the single-flight fetch (`crate::fetch`).

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::Response;
use futures_util::StreamExt;
use oci_spec::image::Digest;
use reqwest::Method as UpMethod;

use super::blobs::{blob_response, range_of, serve_fetch, serve_file};
use super::manifests::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::{header_value, Head, Shared, DOCKER_CONTENT_DIGEST};
use crate::digest;
use crate::error::{ApiError, ApiResult, Wanted};
use crate::metrics::{CacheResult, ObjectKind};
use crate::names::{Reference, ReferenceError};
use crate::store::{unix_now, ManifestPut, ManifestRecord};
use crate::upstream::{Target, UpstreamError};
use std::sync::Arc;

const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
/// What we accept from upstreams: every manifest type we serve (as containerd asks).
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, */*;q=0.1";

fn with_ns(mut resp: Response, target: &Target) -> Response {
    if let Some(ns) = target
        .ns
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        resp.headers_mut().insert(OCI_NAMESPACE, ns);
    }
    resp
}

/// A manifest's response (GET or HEAD); serving it is a use of it (the LRU order).
pub(super) fn manifest_response(
    st: &Shared,
    digest: &str,
    record: ManifestRecord,
    head: bool,
) -> ApiResult<Response> {
    st.store.touch(digest);
    let len = record.bytes.len();
    let mut resp = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(record.bytes))
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(&record.media_type)?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(DOCKER_CONTENT_DIGEST, header_value(digest)?);
    h.insert(header::ETAG, header_value(&format!("\"{digest}\""))?);
    Ok(resp)
}

fn cached_manifest(st: &Shared, repo: &str, digest: &str) -> ApiResult<Option<ManifestRecord>> {
    if !st.store.index().manifest_linked(repo, digest)? {
        return Ok(None);
    }
    Ok(st.store.index().manifest(digest)?)
}

/// GET a manifest upstream, verify it, store it (with the tag, when by tag). Returns its digest.
async fn fetch_manifest(
    st: &Shared,
    target: &Target,
    reference: &str,
    tag: Option<&str>,
    expected: Option<&Digest>,
) -> ApiResult<(String, ManifestRecord)> {
    let up = |e| ApiError::upstream(Wanted::Manifest, e);
    let resp = target
        .client
        .request(
            UpMethod::GET,
            &target.repo,
            &format!("manifests/{reference}"),
            Some(ACCEPT),
        )
        .await
        .map_err(up)?;
    if !resp.status().is_success() {
        return Err(up(UpstreamError::from_response("manifest", resp).await));
    }
    let header_digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let limit = st.limits.max_manifest_bytes;
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge {
            what: "upstream manifest",
            limit,
        });
    }
    let mut bytes = Vec::new();
    let mut body = resp.bytes_stream();
    loop {
        let next = tokio::time::timeout(target.client.timeout, body.next())
            .await
            .map_err(|_| up(UpstreamError::Timeout("manifest body")))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| up(UpstreamError::Connect(e)))?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::TooLarge {
                what: "upstream manifest",
                limit,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    let alg = expected
        .map(digest::algorithm_of)
        .unwrap_or(digest::Algorithm::Sha256);
    let actual = digest::of_bytes(alg, &bytes);
    let want = expected
        .map(|d| d.to_string())
        .or(header_digest.filter(|h| h.starts_with(alg.as_str())));
    if let Some(want) = want {
        if want != actual.as_ref() {
            return Err(up(UpstreamError::DigestMismatch { expected: want }));
        }
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        media_type: Option<String>,
        manifests: Option<Vec<serde_json::Value>>,
    }
    let peek: Peek = serde_json::from_slice(&bytes).map_err(|e| {
        up(UpstreamError::Malformed(format!(
            "manifest is not JSON: {e}"
        )))
    })?;
    let media_type = match (peek.media_type, content_type) {
        (Some(m), _) => m,
        (None, Some(c))
            if [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(&c.as_str()) =>
        {
            c
        }
        (None, _) if peek.manifests.is_some() => OCI_INDEX.to_string(),
        (None, _) => OCI_MANIFEST.to_string(),
    };
    let digest = actual.to_string();
    let record = ManifestRecord {
        origin: crate::store::Origin::Upstream,
        media_type,
        subject: None,
        bytes,
    };
    let (repo, key, rec, tag) = (
        target.cache_repo.clone(),
        digest.clone(),
        record.clone(),
        tag.map(str::to_string),
    );
    st.store
        .blocking(move |idx| {
            idx.put_manifest(&ManifestPut {
                repo: &repo,
                digest: &key,
                record: &rec,
                tag: tag.as_deref(),
                referrer_descriptor: None,
                resolved_at: Some(unix_now()),
            })
        })
        .await?;
    st.store.touch(&digest);
    if record.media_type == OCI_INDEX || record.media_type == DOCKER_LIST {
        cache_children(st.clone(), target, &record.bytes);
    }
    Ok((digest, record))
}

/// Cache an index's child manifests in the background, so every platform works offline later.
fn cache_children(st: Shared, target: &Target, index: &[u8]) {
    let children: Vec<String> = serde_json::from_slice::<serde_json::Value>(index)
        .ok()
        .and_then(|v| v.get("manifests")?.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.get("digest")?.as_str().map(str::to_string))
        .collect();
    let target = Target {
        client: target.client.clone(),
        repo: target.repo.clone(),
        cache_repo: target.cache_repo.clone(),
        ns: None,
    };
    tokio::spawn(async move {
        for child in children {
            let Ok((d, _)) = digest::parse(&child) else {
                continue;
            };
            if matches!(
                cached_manifest(&st, &target.cache_repo, &child),
                Ok(Some(_))
            ) {
                continue;
            }
            if let Err(e) = fetch_manifest(&st, &target, &child, None, Some(&d)).await {
                tracing::debug!(error = %e, "caching a child manifest failed");
            }
        }
    });
}

pub(super) async fn manifest(
    st: &Shared,
    target: Target,
    reference: &str,
    req: &Head,
) -> ApiResult<Response> {
    let head = req.method == Method::HEAD;
    let result = manifest_inner(st, &target, reference, head).await;
    if let Err(ApiError::Upstream { .. }) = &result {
        st.metrics.upstream_error(ObjectKind::manifest);
    }
    result.map(|r| with_ns(r, &target))
}

async fn manifest_inner(
    st: &Shared,
    target: &Target,
    reference: &str,
    head: bool,
) -> ApiResult<Response> {
    let repo = &target.cache_repo;
    match Reference::parse(reference) {
        Err(ReferenceError::InvalidTag(_)) => Err(ApiError::ManifestUnknown),
        Err(ReferenceError::InvalidDigest(e)) => Err(ApiError::DigestInvalid(e.to_string())),
        Ok(Reference::Digest(d, _)) => {
            if let Some(rec) = cached_manifest(st, repo, d.as_ref())? {
                st.metrics.lookup(ObjectKind::manifest, CacheResult::hit);
                return manifest_response(st, d.as_ref(), rec, head);
            }
            let (digest, rec) = fetch_manifest(st, target, d.as_ref(), None, Some(&d)).await?;
            st.metrics.lookup(ObjectKind::manifest, CacheResult::miss);
            manifest_response(st, &digest, rec, head)
        }
        Ok(Reference::Tag(tag)) => {
            let cached = match st.store.index().tag(repo, &tag)? {
                Some(d) => st.store.index().manifest(&d)?.map(|r| (d, r)),
                None => None,
            };
            let resolved_at = st.store.index().tag_resolved_at(repo, &tag)?.unwrap_or(0);
            if let Some((d, rec)) = &cached {
                if unix_now().saturating_sub(resolved_at) < st.upstreams.tag_ttl().as_secs() {
                    st.metrics.lookup(ObjectKind::manifest, CacheResult::hit);
                    return manifest_response(st, d, rec.clone(), head);
                }
            }
            let Some((cached_digest, cached_record)) = cached else {
                // Nothing to revalidate: one GET (whose error body, unlike a HEAD's, tells why).
                let (digest, rec) = fetch_manifest(st, target, &tag, Some(&tag), None).await?;
                st.metrics.lookup(ObjectKind::manifest, CacheResult::miss);
                return manifest_response(st, &digest, rec, head);
            };
            // Confirm the tag upstream with a HEAD: the manifest itself is only fetched when it changed.
            let confirmed = async {
                let resp = target
                    .client
                    .request(
                        UpMethod::HEAD,
                        &target.repo,
                        &format!("manifests/{tag}"),
                        Some(ACCEPT),
                    )
                    .await?;
                if !resp.status().is_success() {
                    return Err(UpstreamError::from_response("manifest", resp).await);
                }
                Ok(resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string))
            }
            .await;
            match confirmed {
                Ok(Some(upstream_digest)) if upstream_digest == cached_digest => {
                    let (r, t) = (repo.clone(), tag.clone());
                    st.store
                        .blocking(move |idx| idx.touch_tag(&r, &t, unix_now()))
                        .await?;
                    st.metrics.lookup(ObjectKind::manifest, CacheResult::hit);
                    manifest_response(st, &cached_digest, cached_record, head)
                }
                Err(e) if e.is_unavailable() => {
                    tracing::warn!(upstream = %target.client.host, error = %e, "upstream unavailable; serving the cached tag (stale-if-error)");
                    st.metrics.lookup(ObjectKind::manifest, CacheResult::stale);
                    manifest_response(st, &cached_digest, cached_record, head)
                }
                Err(e) => Err(ApiError::upstream(Wanted::Manifest, e)),
                Ok(upstream_digest) => {
                    let expected = upstream_digest
                        .as_deref()
                        .and_then(|d| digest::parse(d).ok())
                        .map(|(d, _)| d);
                    let by = expected
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| tag.clone());
                    let (digest, rec) =
                        fetch_manifest(st, target, &by, Some(&tag), expected.as_ref()).await?;
                    st.metrics.lookup(ObjectKind::manifest, CacheResult::miss);
                    manifest_response(st, &digest, rec, head)
                }
            }
        }
    }
}

pub(super) async fn blob(
    st: &Shared,
    target: Target,
    digest_s: &str,
    req: &Head,
) -> ApiResult<Response> {
    let result = blob_inner(st, &target, digest_s, req).await;
    if let Err(ApiError::Upstream { .. }) = &result {
        st.metrics.upstream_error(ObjectKind::blob);
    }
    result.map(|r| with_ns(r, &target))
}

async fn blob_inner(
    st: &Shared,
    target: &Target,
    digest_s: &str,
    req: &Head,
) -> ApiResult<Response> {
    let (digest, _) =
        digest::parse(digest_s).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
    let head = req.method == Method::HEAD;
    // Held already (through any repository: content addressed and verified).
    if let Some((file, size)) = st.store.open_verified(&digest).await? {
        if !st
            .store
            .index()
            .blob_linked(&target.cache_repo, digest.as_ref())?
        {
            st.store.link_blob(&target.cache_repo, &digest).await?;
        }
        st.metrics.lookup(ObjectKind::blob, CacheResult::hit);
        if !head {
            let (_, _, len) = range_of(req, size)?;
            st.metrics.cache_served_bytes.inc_by(len);
        }
        return serve_file(st, &digest, file, size, req).await;
    }
    let up = |e| ApiError::upstream(Wanted::Blob, e);
    if head {
        // Existence and size, without starting a download.
        let resp = target
            .client
            .request(
                UpMethod::HEAD,
                &target.repo,
                &format!("blobs/{digest}"),
                None,
            )
            .await
            .map_err(up)?;
        if !resp.status().is_success() {
            return Err(up(UpstreamError::from_response("blob", resp).await));
        }
        let size = resp.content_length().ok_or_else(|| {
            up(UpstreamError::Malformed(
                "blob HEAD without Content-Length".into(),
            ))
        })?;
        let (status, start, len) = range_of(req, size)?;
        return blob_response(Body::empty(), &digest, status, start, len, size);
    }
    let origin = Arc::new(crate::source::RegistryBlob {
        client: target.client.clone(),
        repo: target.repo.clone(),
        digest: digest.to_string(),
    });
    let idle = st.upstreams.timeout();
    let (f, started) = st
        .fetcher
        .fetch(&digest, &target.cache_repo, idle, None, origin);
    st.metrics.lookup(
        ObjectKind::blob,
        if started {
            CacheResult::miss
        } else {
            CacheResult::hit
        },
    );
    serve_fetch(
        st,
        &f,
        &digest,
        req,
        idle,
        crate::fetch::IfPassedThrough::OpenSource,
    )
    .await
}
