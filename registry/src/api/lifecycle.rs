//! The cache's lifecycle in the admin API: pins, eviction (`gc`), removal (`rm`), verification,
//! and what the cache holds as eviction sees it. Clients: the CLI and the operator (a Torrent's
//! `reclaimPolicy` is a pin released with `Retain` or `Delete`).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use manta_api::{CacheEntry, GcRequest, PinList, PinView, Reclaim, SpaceView, Unpinned};
use serde::Deserialize;

use super::Shared;
use crate::error::{ApiError, ApiResult};
use crate::hub::Form;
use crate::names;
use crate::store::gc::{self, GcReport, Graph, Select};
use crate::store::{unix_now, PinRecord, PinTarget, Root};

/// A pin name: what Kubernetes allows in a resource name, and then some (`.`, `_`).
fn valid_pin_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// Check a pin target (or an `rm` reference) names one thing this registry can hold.
fn check_target(t: &PinTarget) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::Unsupported(m));
    match (t.hub, t.repo.as_deref(), t.reference.as_deref()) {
        (Some(hub), Some(repo), None) => {
            let name = repo.to_ascii_lowercase();
            if !names::valid_name(&crate::hub::oci_repo(hub, Form::Raw, &name)) {
                return bad(format!("{repo:?} is not a repo id"));
            }
            let rev = t
                .revision
                .clone()
                .unwrap_or_else(|| crate::hub::default_revision(hub).to_string());
            if !names::valid_tag(&crate::hub::tag_of_request(&rev, &t.filter)) {
                return bad(format!("revision {rev:?} cannot be named by a tag"));
            }
            Ok(())
        }
        (None, None, Some(r)) if t.revision.is_none() && t.filter.is_all() => check_reference(r),
        _ => bad("a target is either {hub, repo[, revision, filters]} or {reference}".into()),
    }
}

/// A repository this registry may hold: an OCI name, or a pull-through cache's
/// `<host[:port]>/<name>`.
fn valid_repo(repo: &str) -> bool {
    names::valid_name(repo)
        || repo.split_once('/').is_some_and(|(host, rest)| {
            names::valid_name(rest)
                && host.split_once(':').is_none_or(|(_, port)| {
                    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                })
                && names::valid_name(&host.split(':').next().unwrap_or("").to_ascii_lowercase())
        })
}

/// `<repo>:<tag>` or `<repo>@<digest>` of this registry's namespace.
fn check_reference(r: &str) -> ApiResult<()> {
    if let Some((repo, d)) = r.split_once('@') {
        valid_repo(repo)
            .then_some(())
            .ok_or(ApiError::NameInvalid)?;
        crate::digest::parse(d).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
        return Ok(());
    }
    match r.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
        Some((repo, tag)) if valid_repo(repo) && names::valid_tag(tag) => Ok(()),
        _ => Err(ApiError::Unsupported(format!(
            "{r:?} is not <repo>:<tag> or <repo>@<digest>"
        ))),
    }
}

/// What `manta rm` and `DELETE /manta/v1/cache/<ref>` accept: `hf://Org/Name[@rev]`,
/// `ms://…`, `<repo>:<tag>`, `<repo>@<digest>`, or a bare digest.
fn parse_ref(r: &str) -> ApiResult<PinTarget> {
    let mut t = PinTarget {
        hub: None,
        repo: None,
        revision: None,
        filter: Default::default(),
        reference: None,
    };
    if let Some((scheme, rest)) = r.split_once("://") {
        let hub = manta_hub::HubKind::parse(scheme)
            .ok_or_else(|| ApiError::Unsupported(format!("unknown hub {scheme:?}")))?;
        let (repo, rev) = match rest.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev.to_string())),
            None => (rest, None),
        };
        t.hub = Some(hub);
        t.repo = Some(repo.to_string());
        t.revision = rev;
    } else if r.starts_with("sha256:") || r.starts_with("sha512:") {
        crate::digest::parse(r).map_err(|e| ApiError::DigestInvalid(e.to_string()))?;
        // A bare digest: `pin_roots` reads the digest of `<repo>@<digest>`, whatever the repo.
        t.reference = Some(format!("_@{r}"));
        return Ok(t);
    } else {
        t.reference = Some(r.to_string());
    }
    check_target(&t)?;
    Ok(t)
}

fn pin_view(g: &Graph, st: &Shared, name: &str, rec: PinRecord) -> ApiResult<PinView> {
    let roots = gc::pin_roots(st.store.index(), &rec.target)?;
    let mut seen = std::collections::HashSet::new();
    let mut names = Vec::new();
    let mut bytes = 0;
    for root in &roots {
        names.push(root.name());
        let closure: Vec<String> = match g.roots.iter().find(|r| &r.root == root) {
            Some(r) => r.closure.clone(),
            None => match root {
                Root::Manifest(d) | Root::Blob(d) => vec![d.clone()],
                _ => Vec::new(),
            },
        };
        for n in closure {
            if seen.insert(n.clone()) {
                bytes += g.blobs.get(&n).map(|b| b.size).unwrap_or(0);
            }
        }
    }
    Ok(PinView {
        name: name.to_string(),
        target: rec.target,
        created_at: rec.created_at,
        roots: names,
        bytes,
    })
}

/// `GET /manta/v1/pins`.
pub(super) async fn list_pins(State(st): State<Shared>) -> Response {
    async {
        let g = st.store.graph().await?;
        let pins = st.store.index().pins()?;
        let pins = pins
            .into_iter()
            .map(|(name, rec)| pin_view(&g, &st, &name, rec))
            .collect::<ApiResult<Vec<_>>>()?;
        Ok::<_, ApiError>(Json(PinList { pins }).into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// `PUT /manta/v1/pins/<name>`: hold a hub revision or a reference against eviction.
pub(super) async fn put_pin(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    async {
        if !valid_pin_name(&name) {
            return Err(ApiError::Unsupported(format!(
                "pin name {name:?}: lowercase letters, digits, '.', '_', '-', at most 253"
            )));
        }
        let target: PinTarget = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Unsupported(format!("pin target: {e}")))?;
        check_target(&target)?;
        let rec = PinRecord {
            version: 1,
            target,
            created_at: unix_now(),
        };
        let (n, r) = (name.clone(), rec.clone());
        let existed = st
            .store
            .blocking(move |idx| {
                let existed = idx.pin(&n)?.is_some();
                idx.put_pin(&n, &r)?;
                Ok(existed)
            })
            .await?;
        tracing::info!(pin = %name, "pinned");
        let g = st.store.graph().await?;
        let view = pin_view(&g, &st, &name, rec)?;
        let status = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        Ok((status, Json(view)).into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UnpinQuery {
    #[serde(default)]
    reclaim: Reclaim,
}

/// `DELETE /manta/v1/pins/<name>?reclaim=Retain|Delete`.
pub(super) async fn delete_pin(
    State(st): State<Shared>,
    Path(name): Path<String>,
    query: Result<Query<UnpinQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    async {
        let Query(q) = query.map_err(|e| ApiError::Unsupported(e.body_text()))?;
        let n = name.clone();
        let Some(rec) = st
            .store
            .blocking(move |idx| {
                let rec = idx.pin(&n)?;
                if rec.is_some() {
                    idx.delete_pin(&n)?;
                }
                Ok(rec)
            })
            .await?
        else {
            return Err(ApiError::NotFound);
        };
        tracing::info!(pin = %name, reclaim = ?q.reclaim, "unpinned");
        let report = match q.reclaim {
            Reclaim::Retain => None,
            Reclaim::Delete => {
                let roots = gc::pin_roots(st.store.index(), &rec.target)?;
                Some(st.store.evict(Select::Roots(roots), false).await?)
            }
        };
        Ok(Json(Unpinned {
            name,
            reclaim: q.reclaim,
            gc: report,
        })
        .into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /manta/v1/gc`: evict least recently used cache content now.
pub(super) async fn gc(State(st): State<Shared>, body: Bytes) -> Response {
    async {
        let req: GcRequest = if body.is_empty() {
            GcRequest::default()
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| ApiError::Unsupported(format!("gc request: {e}")))?
        };
        let free = req.free.unwrap_or_else(|| st.store.space().over_low());
        let report = st.store.evict(Select::Lru { free }, req.dry_run).await?;
        Ok::<_, ApiError>(Json(report).into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /manta/v1/cache/<ref>`: remove cache content now, whatever its age.
pub(super) async fn remove(State(st): State<Shared>, Path(r): Path<String>) -> Response {
    async {
        let target = parse_ref(&r)?;
        let g = st.store.graph().await?;
        let mut roots = gc::pin_roots(st.store.index(), &target)?;
        roots.retain(|root| g.roots.iter().any(|x| &x.root == root));
        if roots.is_empty() {
            // Pushed content is not cache: the registry API's DELETE removes it.
            return Err(ApiError::NotFound);
        }
        let report: GcReport = st.store.evict(Select::Roots(roots), false).await?;
        if report.evicted.is_empty() && !report.refused_pinned.is_empty() {
            return Err(ApiError::Conflict(format!(
                "{r} is pinned ({}); unpin it first",
                report.refused_pinned.join(", ")
            )));
        }
        Ok(Json(report).into_response())
    }
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /manta/v1/verify`: re-hash every blob now.
pub(super) async fn verify(State(st): State<Shared>) -> Response {
    match st.store.verify_all(None).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The space figures and, with `with_entries`, every root, least recently used first (for
/// `GET /manta/v1/cache`). The graph is read either way: the pinned bytes are its figure.
pub(super) async fn space_and_entries(
    st: &Shared,
    with_entries: bool,
) -> ApiResult<(SpaceView, Vec<CacheEntry>)> {
    let g = st.store.graph().await?;
    let sp = st.store.space();
    let space = SpaceView {
        capacity: sp.capacity(),
        used: sp.used(),
        reserved: sp.reserved(),
        pinned: g.pinned_bytes(),
        high_watermark: sp.high_watermark(),
        low_watermark: sp.low_watermark(),
    };
    if !with_entries {
        return Ok((space, Vec::new()));
    }
    let mut forms: HashMap<String, Vec<Form>> = HashMap::new();
    st.store.index().for_each_hub_revision(&mut |key, rec| {
        let mut f = vec![Form::Raw];
        if rec.image.is_some() {
            f.push(Form::Image);
        }
        forms.insert(key.to_string(), f);
    })?;
    let mut entries: Vec<CacheEntry> = g
        .roots
        .iter()
        .map(|r| CacheEntry {
            kind: r.root.kind(),
            name: r.root.name(),
            bytes: g.closure_bytes(&r.closure),
            last_access: r.last_access / 1000,
            pins: r.pins.clone(),
            protection: r.protection,
            forms: match &r.root {
                Root::Hub(key) => forms.get(key).cloned().unwrap_or_default(),
                _ => Vec::new(),
            },
        })
        .collect();
    entries.sort_by(|a, b| (a.last_access, &a.name).cmp(&(b.last_access, &b.name)));
    Ok((space, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names() {
        for ok in ["a", "torrent-1", "ns.name_x", "0abc"] {
            assert!(valid_pin_name(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a/b", "a b", &"a".repeat(254)] {
            assert!(!valid_pin_name(bad), "{bad}");
        }
    }

    #[test]
    fn references_parse() {
        let t = parse_ref("hf://Org/Name@main").unwrap();
        assert_eq!(t.hub, Some(manta_hub::HubKind::Hf));
        assert_eq!(t.revision.as_deref(), Some("main"));
        assert!(parse_ref("hf-raw/org/name:main").is_ok());
        assert!(parse_ref("127.0.0.1:5055/a/b:v1").is_ok());
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(parse_ref(&d).is_ok());
        assert!(parse_ref(&format!("a/b@{d}")).is_ok());
        for bad in [
            "xx://a/b",
            "a/b",
            "A/B:tag",
            "a@sha256:zz",
            "hf://../x",
            "sha256:zz",
        ] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_are_one_thing() {
        let both: PinTarget =
            serde_json::from_str(r#"{"hub":"hf","repo":"a/b","reference":"x/y:z"}"#).unwrap();
        assert!(check_target(&both).is_err());
        let none: PinTarget = serde_json::from_str(r#"{}"#).unwrap();
        assert!(check_target(&none).is_err());
        assert!(serde_json::from_str::<PinTarget>(r#"{"bogus":1}"#).is_err());
    }
}
