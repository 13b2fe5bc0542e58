//! Content discovery: `GET /v2/<name>/tags/list` and `GET /v2/<name>/referrers/<digest>`.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::manifests::OCI_INDEX;
use super::{header_value, Head, Shared};
use crate::digest;
use crate::error::{ApiError, ApiResult};

/// The most tags one page returns when the client asks for more (or gives no `n`).
const MAX_PAGE: usize = 100_000;
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<String>,
}

pub(super) async fn tags(st: &Shared, name: &str, req: &Head) -> ApiResult<Response> {
    if !st.store.index().repo_exists(name)? {
        return Err(ApiError::NameUnknown);
    }
    let n = match req.query.get("n") {
        None => None,
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| ApiError::Unsupported(format!("invalid page size n={v:?}")))?,
        ),
    };
    let last = req.query.get("last").filter(|l| !l.is_empty());
    let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let mut tags = st.store.index().tags(name, last, limit.saturating_add(1))?;
    let more = tags.len() > limit;
    tags.truncate(limit);
    let next = if more && limit > 0 {
        tags.last().cloned()
    } else {
        None
    };
    let mut resp = axum::Json(TagList { name, tags }).into_response();
    let h = resp.headers_mut();
    if let Some(last) = next {
        let link = format!("</v2/{name}/tags/list?n={limit}&last={last}>; rel=\"next\"");
        h.insert(header::LINK, header_value(&link)?);
    }
    Ok(resp)
}

pub(super) async fn referrers(
    st: &Shared,
    name: &str,
    digest_s: &str,
    req: &Head,
) -> ApiResult<Response> {
    let (subject, _) =
        digest::parse(digest_s).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
    // A `+` sent unencoded arrives decoded as a space; media types never contain spaces.
    let filter = req.query.get("artifactType").map(|f| f.replace(' ', "+"));
    let filter = filter.as_deref();
    let mut entries = Vec::new();
    for raw in st.store.index().referrers(name, subject.as_ref())? {
        let v: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|e| crate::store::StoreError::Corrupt(format!("referrer descriptor: {e}")))?;
        if filter.is_none_or(|f| v.get("artifactType").and_then(|a| a.as_str()) == Some(f)) {
            entries.push(v);
        }
    }
    let body =
        serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    let mut resp = axum::Json(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
    if filter.is_some() {
        h.insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
