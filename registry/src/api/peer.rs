//! The peer protocol's endpoints on the cluster listener (`/manta/v1/peer/…`, see
//! [`manta_peer::proto`]): who this node is, and, as the owner of some digests, where the
//! others should read them. Nothing here reads a path or starts a fetch.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use manta_peer::proto::{
    Announce, Hello, LocateReply, LocateRequest, Pieces, PiecesQuery, Status, MAX_STRIPES,
};
use manta_peer::PeerRouter;

use super::Shared;
use crate::digest;
use crate::error::{ApiError, ApiResult};

/// Most nodes a locate may exclude.
const MAX_EXCLUDE: usize = 64;
/// Longest node address accepted.
const MAX_ADDR: usize = 261;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/manta/v1/peer/hello", get(hello))
        .route("/manta/v1/peer/status", get(status))
        .route("/manta/v1/peer/locate", post(locate))
        .route("/manta/v1/peer/announce", post(announce))
        .route("/manta/v1/peer/announce-batch", post(announce_batch))
        .route("/manta/v1/peer/pieces/{digest}", get(pieces))
        .route("/manta/v1/peer/recipe/{digest}", get(recipe))
        .route("/manta/v1/peer/revision", get(revision))
}

#[derive(serde::Deserialize)]
struct RevisionQuery {
    hub: String,
    repo: String,
    tag: String,
}

/// `GET /manta/v1/peer/revision?hub=hf&repo=<repo>&tag=<tag>`: this node's record of a hub
/// tag (the commit and its files with their sha256), for a peer that cannot reach the hub.
async fn revision(
    State(st): State<Shared>,
    Query(q): Query<RevisionQuery>,
) -> ApiResult<Json<crate::store::HubRevisionRecord>> {
    router(&st)?;
    let hub = manta_hub::HubKind::parse(&q.hub).ok_or(ApiError::NotFound)?;
    if !crate::names::valid_tag(&q.tag) || q.repo.len() > 256 {
        return Err(ApiError::NotFound);
    }
    st.store
        .index()
        .hub_revision(&crate::store::hub_key(hub, &q.repo, &q.tag))?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

#[derive(serde::Deserialize)]
struct RecipeQuery {
    path: String,
}

/// What a peer answers for `GET /manta/v1/peer/recipe/<raw digest>?path=<path in the repo>`:
/// the image-form tar layer of that file, so the asker builds the image form without hashing
/// the file.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct PeerRecipe {
    pub tar: String,
    pub recipe: crate::store::RecipeRecord,
}

async fn recipe(
    State(st): State<Shared>,
    Path(digest_s): Path<String>,
    Query(q): Query<RecipeQuery>,
) -> ApiResult<Json<PeerRecipe>> {
    router(&st)?;
    check_digest(&digest_s)?;
    let idx = st.store.index();
    let Some(tar) = idx.recipe_for(&digest_s, &q.path)? else {
        return Err(ApiError::NotFound);
    };
    match idx.recipe(&tar)? {
        // Only what this node hashed (or checked) itself is passed on.
        Some(recipe) if recipe.verified => Ok(Json(PeerRecipe { tar, recipe })),
        _ => Err(ApiError::NotFound),
    }
}

fn router(st: &Shared) -> ApiResult<&Arc<PeerRouter>> {
    // Without --peers this node takes no part: the endpoints do not exist.
    st.peers.as_ref().ok_or(ApiError::NotFound)
}

fn bad(e: JsonRejection) -> ApiError {
    ApiError::Unsupported(format!("the request body: {}", e.body_text()))
}

fn check_digest(d: &str) -> ApiResult<()> {
    digest::parse(d)
        .map(drop)
        .map_err(|e| ApiError::DigestInvalid(e.to_string()))
}

fn check_addr(a: &str) -> ApiResult<()> {
    let ok = a.len() <= MAX_ADDR
        && a.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        && a.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unsupported(format!("{a:?} is no node address")))
    }
}

async fn hello(State(st): State<Shared>) -> ApiResult<Json<Hello>> {
    Ok(Json(router(&st)?.hello()))
}

pub(super) async fn status(State(st): State<Shared>) -> ApiResult<Json<Status>> {
    Ok(Json(router(&st)?.status()))
}

async fn locate(
    State(st): State<Shared>,
    body: Result<Json<LocateRequest>, JsonRejection>,
) -> ApiResult<Json<LocateReply>> {
    let r = router(&st)?;
    let Json(req) = body.map_err(bad)?;
    check_digest(&req.digest)?;
    if let Some(n) = &req.node {
        check_addr(n)?;
    }
    if req.exclude.len() > MAX_EXCLUDE {
        return Err(ApiError::Unsupported(format!(
            "at most {MAX_EXCLUDE} excluded nodes"
        )));
    }
    if req.avoid.len() > MAX_EXCLUDE {
        return Err(ApiError::Unsupported(format!(
            "at most {MAX_EXCLUDE} avoided nodes"
        )));
    }
    for x in req.exclude.iter().chain(&req.avoid) {
        check_addr(x)?;
    }
    if let Some(st) = req.stripe {
        if st.count > MAX_STRIPES || st.index >= st.count || st.home >= st.count {
            return Err(ApiError::Unsupported(format!(
                "stripe {} of {} (home {}): at most {MAX_STRIPES} stripes, each below the count",
                st.index, st.count, st.home
            )));
        }
    }
    Ok(Json(r.handle_locate(&req)))
}

async fn announce(
    State(st): State<Shared>,
    body: Result<Json<Announce>, JsonRejection>,
) -> ApiResult<axum::http::StatusCode> {
    let r = router(&st)?;
    let Json(a) = body.map_err(bad)?;
    check_announce(&a)?;
    r.handle_announce(&a);
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// `POST /manta/v1/peer/announce-batch`: several announcements; all checked before any is
/// taken.
async fn announce_batch(
    State(st): State<Shared>,
    body: Result<Json<Vec<Announce>>, JsonRejection>,
) -> ApiResult<axum::http::StatusCode> {
    let r = router(&st)?;
    let Json(all) = body.map_err(bad)?;
    if all.len() > manta_peer::proto::MAX_BATCH {
        return Err(ApiError::Unsupported(format!(
            "at most {} announcements at once",
            manta_peer::proto::MAX_BATCH
        )));
    }
    for a in &all {
        check_announce(a)?;
    }
    for a in &all {
        r.handle_announce(a);
    }
    Ok(axum::http::StatusCode::NO_CONTENT)
}

fn check_announce(a: &Announce) -> ApiResult<()> {
    check_digest(&a.digest)?;
    check_addr(&a.node)?;
    if a.stripe.is_some_and(|s| s >= MAX_STRIPES) {
        return Err(ApiError::Unsupported(format!(
            "at most {MAX_STRIPES} stripes"
        )));
    }
    if let manta_peer::proto::Event::Progress { from, also, .. } = &a.event {
        if also.len() > manta_peer::proto::MAX_ALSO {
            return Err(ApiError::Unsupported(format!(
                "at most {} nodes read from besides `from`",
                manta_peer::proto::MAX_ALSO
            )));
        }
        for x in from.iter().chain(also) {
            check_addr(x)?;
        }
    }
    if let Some(p) = &a.pieces {
        if p.hashes
            .iter()
            .any(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ApiError::Unsupported("piece hashes are hex sha256".into()));
        }
    }
    Ok(())
}

async fn pieces(
    State(st): State<Shared>,
    Path(digest_s): Path<String>,
    Query(q): Query<PiecesQuery>,
) -> ApiResult<Json<Pieces>> {
    let r = router(&st)?;
    check_digest(&digest_s)?;
    r.handle_pieces(&digest_s, q.from, Duration::from_millis(q.wait_ms))
        .await
        .map(Json)
        .ok_or(ApiError::NotFound)
}
