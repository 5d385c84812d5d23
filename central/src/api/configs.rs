//! Gateway configuration pushes: `POST /gateways/{id}/config` (store the file as the next version
//! and send it signed on the gateway's `down/cmd`), `GET /gateways/{id}/config` (the running
//! version and every push with its outcome) and `GET /gateways/{id}/config/{version}` (one push
//! with its file). The work is in [`crate::config_push`].

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::auth::{READ_DATA, Role};
use super::scope::visible_gateway;
use super::{ApiError, ApiState, JsonBody, Principal, bad, limit};
use crate::config_push::{ConfigPushes, PushRefused};

/// Roles that push configurations (a field technician for assigned enterprises only).
pub const CONFIGURE: &[Role] = &[Role::ParkAdmin, Role::FieldTechnician];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    toml: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQ {
    limit: Option<u32>,
}

fn service(st: &ApiState) -> Result<&ConfigPushes, ApiError> {
    st.pushes.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "configuration push is not available in this central process")
    })
}

/// `POST /gateways/{id}/config`: 202 with the push (status `sent`).
async fn push(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PushBody>,
) -> Result<Response, ApiError> {
    p.require(CONFIGURE)?;
    let (gateway, enterprise) = visible_gateway(&st, &p, &id).await?;
    let entry = service(&st)?.push(&gateway, &enterprise, &body.toml, &p.user).await.map_err(|e| match e {
        PushRefused::Invalid(why) => bad(why),
        PushRefused::Store(e) => ApiError::internal(e.to_string()),
    })?;
    Ok((StatusCode::ACCEPTED, axum::Json(entry)).into_response())
}

/// `GET /gateways/{id}/config`: what the gateway runs and the pushes, newest first.
async fn list(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<String>,
    Query(q): Query<ListQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let (gateway, _) = visible_gateway(&st, &p, &id).await?;
    let items = service(&st)?.list(&gateway, limit(q.limit)).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let running = st.gateways.config(gateway.as_str());
    Ok(axum::Json(serde_json::json!({
        "gateway": gateway.as_str(),
        "running_version": running.as_ref().map(|c| c.running),
        "running_sha256": running.as_ref().map(|c| hex::encode(c.sha256)),
        "items": items,
    })))
}

/// `GET /gateways/{id}/config/{version}`: one push with its file.
async fn one(
    State(st): State<ApiState>,
    p: Principal,
    Path((id, version)): Path<(String, i64)>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let (gateway, _) = visible_gateway(&st, &p, &id).await?;
    let svc = service(&st)?;
    let internal = |e: crate::store::StoreError| ApiError::internal(e.to_string());
    let entry = svc.get(&gateway, version).await.map_err(internal)?;
    let toml = svc.document(&gateway, version).await.map_err(internal)?;
    let (Some(entry), Some(toml)) = (entry, toml) else {
        return Err(ApiError::not_found(format!("gateway {gateway} has no configuration version {version}")));
    };
    let mut v = serde_json::to_value(entry).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("toml".into(), toml.into());
    }
    Ok(axum::Json(v))
}

/// The routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/gateways/{id}/config", get(list).post(push))
        .route("/api/v1/gateways/{id}/config/{version}", get(one))
}
