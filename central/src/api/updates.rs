//! Gateway updates: `POST /updates` (upload a signed bundle, raw body), `GET /updates` (the stored
//! bundles), `POST /gateways/{id}/update` (order a gateway to install one), `GET
//! /gateways/{id}/update` (its orders with their status and what it runs) and `GET
//! /updates/download` (the gateway fetches an ordered bundle with its download token, no session).
//! The work is in [`crate::updates`].

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::io::AsyncReadExt as _;

use super::auth::{READ_DATA, Role};
use super::scope::visible_gateway;
use super::{ApiError, ApiState, JsonBody, Principal, limit, page};
use crate::updates::{DEFAULT_TOKEN_TTL_S, TOKEN_HEADER, UpdateRefused, Updates};

/// Roles that upload bundles.
pub const UPLOAD: &[Role] = &[Role::ParkAdmin];
/// Roles that list bundles and order updates (a field technician for assigned enterprises only).
pub const ORDER: &[Role] = &[Role::ParkAdmin, Role::FieldTechnician];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    bundle: String,
    token_ttl_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQ {
    limit: Option<u32>,
}

fn service(st: &ApiState) -> Result<&Updates, ApiError> {
    st.updates.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "updates are not available in this central process")
    })
}

fn refused(e: UpdateRefused) -> ApiError {
    let status = match &e {
        UpdateRefused::Invalid(_) => StatusCode::BAD_REQUEST,
        UpdateRefused::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        UpdateRefused::NotFound(_) => StatusCode::NOT_FOUND,
        UpdateRefused::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        UpdateRefused::Gone(_) => StatusCode::GONE,
        UpdateRefused::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

/// `POST /updates`: 201 with the bundle (the stored one for an identical upload).
async fn upload(State(st): State<ApiState>, p: Principal, body: Body) -> Result<Response, ApiError> {
    p.require(UPLOAD)?;
    let (entry, _new) = service(&st)?.upload(body, &p.user).await.map_err(refused)?;
    Ok((StatusCode::CREATED, axum::Json(entry)).into_response())
}

/// `GET /updates`: the stored bundles, newest first.
async fn list(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<ListQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(ORDER)?;
    let items = match &st.updates {
        Some(svc) => svc.bundles(limit(q.limit)).await.map_err(refused)?,
        None => Vec::new(),
    };
    Ok(page(items, None))
}

/// `POST /gateways/{id}/update`: 202 with the order (status `pending`).
async fn order(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<OrderBody>,
) -> Result<Response, ApiError> {
    p.require(ORDER)?;
    let (gateway, enterprise) = visible_gateway(&st, &p, &id).await?;
    let ttl = body.token_ttl_s.unwrap_or(DEFAULT_TOKEN_TTL_S);
    let entry = service(&st)?.order(&gateway, &enterprise, &body.bundle, ttl, &p.user).await.map_err(refused)?;
    Ok((StatusCode::ACCEPTED, axum::Json(entry)).into_response())
}

/// `GET /gateways/{id}/update`: what the gateway runs (from its last state) and its orders.
async fn status(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<String>,
    Query(q): Query<ListQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let (gateway, _) = visible_gateway(&st, &p, &id).await?;
    let items = match &st.updates {
        Some(svc) => svc.orders(&gateway, limit(q.limit)).await.map_err(refused)?,
        None => Vec::new(),
    };
    let state = st.gateways.update(gateway.as_str());
    let report = state.as_ref().map(|(_, r)| r);
    Ok(axum::Json(serde_json::json!({
        "gateway": gateway.as_str(),
        "agent_version": state.as_ref().map(|(v, _)| v.clone()),
        "installed": report.and_then(|r| r.installed.clone()),
        "on_trial": report.and_then(|r| r.on_trial.clone()),
        "history": report.map(|r| r.history.clone()).unwrap_or_default(),
        "items": items,
    })))
}

/// `GET /updates/download`: the ordered bundle, for the holder of the order's download token.
async fn download(State(st): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    let d = service(&st)?.authorize_download(token).await.map_err(refused)?;
    let file = tokio::fs::File::open(&d.path)
        .await
        .map_err(|e| ApiError::internal(format!("stored bundle {}: {e}", d.sha256)))?;
    let len = file.metadata().await.map_err(|e| ApiError::internal(e.to_string()))?.len();
    if len != d.size {
        return Err(ApiError::internal(format!("stored bundle {} has {len} bytes, {} recorded", d.sha256, d.size)));
    }
    // 64 KiB at a time; a read error ends the body early, which the gateway sees as a short download.
    let chunks = futures_util::stream::unfold(Some(file), |state| async move {
        let mut f = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, d.size.to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Body::from_stream(chunks),
    )
        .into_response())
}

/// The routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/updates", get(list).post(upload))
        .route("/api/v1/updates/download", get(download))
        .route("/api/v1/gateways/{id}/update", get(status).post(order))
}
