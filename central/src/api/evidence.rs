//! Evidence images under `/api/v1/evidence`: `GET /api/v1/evidence/{sha256}` serves one image,
//! `GET /api/v1/evidence?gateway=G&camera=C[&limit=N]` lists a camera's images, newest first.
//! Images of enterprises the caller may not see are answered 404, as if absent.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use vigil_common::EnterpriseId;

use super::auth::READ_DATA;
use super::{ApiError, ApiState, Principal, bad};
use crate::evidence::{Evidence, EvidenceStore, is_sha256};

/// Most entries one listing returns.
const MAX_LIST: usize = 1000;

fn store(st: &ApiState) -> Result<&EvidenceStore, ApiError> {
    st.evidence.as_deref().ok_or_else(|| ApiError::not_found("central keeps no evidence store"))
}

fn visible(p: &Principal, e: &Evidence) -> bool {
    EnterpriseId::new(e.enterprise.clone()).is_ok_and(|ent| p.sees(&ent))
}

/// One image, with its stored content type.
async fn image(
    principal: Principal,
    State(st): State<ApiState>,
    Path(sha): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(READ_DATA)?;
    if !is_sha256(&sha) {
        return Err(bad(format!("{sha:?} is not a SHA-256 in lower-case hex")));
    }
    let store = store(&st)?;
    let meta =
        store.get(&sha).filter(|e| visible(&principal, e)).ok_or_else(|| ApiError::not_found("no such image"))?;
    let bytes = tokio::task::spawn_blocking({
        let path_sha = sha.clone();
        let st = st.clone();
        move || st.evidence.as_deref().map(|s| s.read(&path_sha))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .ok_or_else(|| ApiError::not_found("central keeps no evidence store"))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, meta.content_type),
            (header::CACHE_CONTROL, "private, max-age=31536000, immutable".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        bytes,
    )
        .into_response())
}

/// Query of the listing.
#[derive(Debug, Deserialize)]
struct ListQuery {
    gateway: String,
    camera: String,
    limit: Option<usize>,
}

/// A camera's images, newest first.
async fn list(
    principal: Principal,
    State(st): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    principal.require(READ_DATA)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST {
        return Err(bad(format!("limit {limit} is outside 1..={MAX_LIST}")));
    }
    let items: Vec<Evidence> =
        store(&st)?.of_camera(&q.gateway, &q.camera, limit).into_iter().filter(|e| visible(&principal, e)).collect();
    Ok(axum::Json(serde_json::json!({ "evidence": items })))
}

/// The evidence routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/evidence", get(list)).route("/api/v1/evidence/{sha256}", get(image))
}
