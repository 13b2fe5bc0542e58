//! `GET|HEAD|PUT|DELETE /v2/<name>/manifests/<reference>`.
//!
//! Manifests are stored and served byte for byte; PUT parses them only to validate and to learn
//! what they reference. The record, its repository link, the tag and the referrers entry are one
//! atomic index write, so a crash never leaves a torn manifest.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{header_value, Head, Req, Shared, DOCKER_CONTENT_DIGEST};
use crate::digest::{self, Algorithm};
use crate::error::{ApiError, ApiResult};
use crate::names::{Reference, ReferenceError};
use crate::store::{ManifestPut, ManifestRecord};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

/// The parts of a manifest or index Manta looks at; everything else is kept as sent.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

/// An entry of a referrers response.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferrerDescriptor<'a> {
    media_type: &'a str,
    digest: &'a str,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a BTreeMap<String, String>>,
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::ManifestInvalid(msg.into())
}

/// Resolve a reference in `name` to (digest, record); 404 when unknown.
fn resolve(st: &Shared, name: &str, reference: &str) -> ApiResult<(String, ManifestRecord)> {
    let digest = match Reference::parse(reference) {
        Ok(Reference::Tag(tag)) => st
            .store
            .index()
            .tag(name, &tag)?
            .ok_or(ApiError::ManifestUnknown)?,
        Ok(Reference::Digest(d, _)) => {
            let d = d.to_string();
            if !st.store.index().manifest_linked(name, &d)? {
                return Err(ApiError::ManifestUnknown);
            }
            d
        }
        // Not a valid tag: no such manifest can exist.
        Err(ReferenceError::InvalidTag(_)) => return Err(ApiError::ManifestUnknown),
        Err(ReferenceError::InvalidDigest(e)) => {
            return Err(ApiError::DigestInvalid(e.to_string()))
        }
    };
    let record = st
        .store
        .index()
        .manifest(&digest)?
        .ok_or(ApiError::ManifestUnknown)?;
    Ok((digest, record))
}

pub(super) async fn get(
    st: &Shared,
    name: &str,
    reference: &str,
    req: &Head,
) -> ApiResult<Response> {
    let (digest, record) = resolve(st, name, reference)?;
    super::proxy::manifest_response(st, &digest, record, req.method == Method::HEAD)
}

/// Read a body of at most `limit` bytes (413 beyond).
async fn read_limited(body: Body, declared: Option<u64>, limit: u64) -> ApiResult<Vec<u8>> {
    let too_large = ApiError::TooLarge {
        what: "manifest",
        limit,
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(4096).min(limit) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| invalid(format!("reading body: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

fn parse_descriptor_digest(d: &Descriptor, what: &str) -> ApiResult<String> {
    if d.size < 0 {
        return Err(invalid(format!("{what} has a negative size")));
    }
    digest::parse(&d.digest)
        .map(|(d, _)| d.to_string())
        .map_err(|e| invalid(format!("{what}: {e}")))
}

/// Check a manifest and what it references; return (media type, subject digest).
fn validate(
    st: &Shared,
    name: &str,
    content_type: Option<&str>,
    doc: &ManifestDoc,
) -> ApiResult<String> {
    let media_type = match (content_type, doc.media_type.as_deref()) {
        (Some(ct), Some(mt)) if ct != mt => {
            return Err(invalid(format!(
                "Content-Type {ct} does not match the manifest's mediaType {mt}"
            )))
        }
        (Some(ct), _) => ct.to_string(),
        (None, Some(mt)) => mt.to_string(),
        (None, None) if doc.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    if doc.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = doc
                .config
                .as_ref()
                .ok_or_else(|| invalid("an image manifest needs a config"))?;
            let layers = doc.layers.as_deref().unwrap_or_default();
            for (what, d) in
                std::iter::once(("config", config)).chain(layers.iter().map(|l| ("layer", l)))
            {
                let digest = parse_descriptor_digest(d, what)?;
                if d.urls.as_ref().is_some_and(|u| !u.is_empty()) {
                    continue; // non-distributable: fetched from its URLs, not from here
                }
                match st.store.index().blob(&digest)? {
                    Some(rec) if st.store.index().blob_linked(name, &digest)? => {
                        if rec.size != d.size as u64 {
                            return Err(invalid(format!(
                                "{what} {digest} has size {}, not {}",
                                rec.size, d.size
                            )));
                        }
                    }
                    _ => return Err(ApiError::ManifestBlobUnknown(digest)),
                }
            }
        }
        OCI_INDEX | DOCKER_LIST => {
            let children = doc
                .manifests
                .as_deref()
                .ok_or_else(|| invalid("an index needs manifests"))?;
            for d in children {
                let digest = parse_descriptor_digest(d, "manifest")?;
                if !st.store.index().manifest_linked(name, &digest)? {
                    return Err(ApiError::ManifestBlobUnknown(digest));
                }
            }
        }
        other => return Err(invalid(format!("unsupported manifest media type {other}"))),
    }
    if let Some(s) = &doc.subject {
        parse_descriptor_digest(s, "subject")?;
    }
    Ok(media_type)
}

pub(super) async fn put(st: &Shared, name: &str, reference: &str, req: Req) -> ApiResult<Response> {
    let reference = match Reference::parse(reference) {
        Ok(r) => r,
        Err(ReferenceError::InvalidTag(t)) => return Err(invalid(format!("invalid tag {t:?}"))),
        Err(ReferenceError::InvalidDigest(e)) => {
            return Err(ApiError::DigestInvalid(e.to_string()))
        }
    };
    let declared = req
        .head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let content_type = req
        .head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| !v.is_empty());
    let bytes = read_limited(req.body, declared, st.limits.max_manifest_bytes).await?;
    let alg = match &reference {
        Reference::Digest(_, alg) => *alg,
        Reference::Tag(_) => Algorithm::Sha256,
    };
    let digest = digest::of_bytes(alg, &bytes).to_string();
    if let Reference::Digest(d, _) = &reference {
        if d.as_ref() != digest {
            return Err(ApiError::DigestMismatch {
                expected: d.to_string(),
                actual: digest,
            });
        }
    }
    let doc: ManifestDoc =
        serde_json::from_slice(&bytes).map_err(|e| invalid(format!("not a manifest: {e}")))?;
    let media_type = validate(st, name, content_type.as_deref(), &doc)?;
    let subject = doc.subject.as_ref().map(|s| s.digest.clone());
    let referrer = match &subject {
        None => None,
        Some(_) => {
            let artifact_type = doc
                .artifact_type
                .as_deref()
                .or(doc.config.as_ref().and_then(|c| c.media_type.as_deref()));
            let desc = ReferrerDescriptor {
                media_type: &media_type,
                digest: &digest,
                size: bytes.len() as u64,
                artifact_type,
                annotations: doc.annotations.as_ref(),
            };
            Some(serde_json::to_vec(&desc).map_err(|e| invalid(e.to_string()))?)
        }
    };
    let record = ManifestRecord {
        origin: crate::store::Origin::Pushed,
        media_type,
        subject: subject.clone(),
        bytes,
    };
    let tag = match &reference {
        Reference::Tag(t) => Some(t.clone()),
        Reference::Digest(..) => None,
    };
    let (repo, key) = (name.to_string(), digest.clone());
    st.store
        .blocking(move |idx| {
            idx.put_manifest(&ManifestPut {
                repo: &repo,
                digest: &key,
                record: &record,
                tag: tag.as_deref(),
                referrer_descriptor: referrer.as_deref(),
                resolved_at: None,
            })
        })
        .await?;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/manifests/{digest}"))?,
    );
    h.insert(DOCKER_CONTENT_DIGEST, header_value(&digest)?);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(s) = subject {
        h.insert(OCI_SUBJECT, header_value(&s)?);
    }
    Ok(resp)
}

pub(super) async fn delete(st: &Shared, name: &str, reference: &str) -> ApiResult<Response> {
    let found = match Reference::parse(reference) {
        Ok(Reference::Tag(tag)) => {
            let repo = name.to_string();
            st.store
                .freeing_write(move |idx| idx.delete_tag(&repo, &tag, true))
                .await?
        }
        Ok(Reference::Digest(d, _)) => {
            let (repo, key) = (name.to_string(), d.to_string());
            st.store
                .freeing_write(move |idx| idx.delete_manifest(&repo, &key, true))
                .await?
        }
        Err(ReferenceError::InvalidTag(_)) => false,
        Err(ReferenceError::InvalidDigest(e)) => {
            return Err(ApiError::DigestInvalid(e.to_string()))
        }
    };
    if !found {
        return Err(ApiError::ManifestUnknown);
    }
    Ok(StatusCode::ACCEPTED.into_response())
}
