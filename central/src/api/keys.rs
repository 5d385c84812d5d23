//! Gateway signing keys through the API: `POST /gateways/{id}/keys` registers a new key (rotation:
//! made on the gateway with `vigil-edge keygen`), `DELETE /gateways/{id}/keys/{key_id}` revokes one,
//! `POST /gateways/{id}/revoke` revokes them all (a stolen or retired gateway). From the next
//! registry reload on, ingest refuses batches signed by a revoked key and the broker disconnects a
//! gateway left without a usable key. Every change is written to the security audit log.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use serde::Deserialize;
use vigil_common::{EnterpriseId, GatewayId, PublicKey};

use super::auth::Role;
use super::calllog::ClientAddr;
use super::scope::visible_gateway;
use super::{ApiError, ApiState, JsonBody, Principal, bad};
use crate::store::StoreError;

/// Roles that add and revoke gateway keys (a field technician for assigned enterprises only).
pub const MANAGE_KEYS: &[Role] = &[Role::ParkAdmin, Role::FieldTechnician];
/// Roles that revoke a whole gateway (decommissioning, theft): the park administrator alone.
pub const REVOKE_GATEWAY: &[Role] = &[Role::ParkAdmin];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    /// `ed25519:<64 hex>`, as `vigil-edge keygen` or `pubkey` prints it.
    public_key: String,
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(why) => ApiError::new(StatusCode::CONFLICT, why),
        other => ApiError::internal(other.to_string()),
    }
}

/// The gateway's keys as `GET /gateways/{id}` lists them.
async fn keys_of(st: &ApiState, gateway: &GatewayId) -> Result<serde_json::Value, ApiError> {
    let list = st.registry.list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let entry = list.into_iter().find(|g| g.id == gateway.as_str());
    Ok(serde_json::json!({ "gateway": gateway.as_str(), "keys": entry.map(|g| g.keys).unwrap_or_default() }))
}

async fn audit(
    st: &ApiState,
    p: &Principal,
    client: &ClientAddr,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) {
    if let Err(e) =
        st.identity.record_security(&p.user, &client.0, action, target, detail, crate::ingest::now_ms()).await
    {
        // The registry change stands; the API-call log still holds the call.
        tracing::error!(error = %e, action, target, "security audit log write failed");
    }
}

/// `POST /gateways/{id}/keys`: 201 with the gateway's keys. The old key stays valid until revoked,
/// so batches it signed that are still in the gateway's spool are accepted.
async fn add(
    State(st): State<ApiState>,
    p: Principal,
    client: ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<Response, ApiError> {
    p.require(MANAGE_KEYS)?;
    let (gateway, enterprise): (GatewayId, EnterpriseId) = visible_gateway(&st, &p, &id).await?;
    let key = PublicKey::from_text(body.public_key.trim()).map_err(|e| bad(format!("public_key: {e}")))?;
    st.registry.add(&gateway, &enterprise, &key, crate::ingest::now_ms()).await.map_err(store_error)?;
    let key_id = key.key_id().to_string();
    audit(&st, &p, &client, "gateway_key_added", gateway.as_str(), serde_json::json!({ "key_id": key_id })).await;
    Ok((StatusCode::CREATED, axum::Json(keys_of(&st, &gateway).await?)).into_response())
}

/// `DELETE /gateways/{id}/keys/{key_id}`: revokes one key (409 when it is unknown or revoked already).
async fn revoke_one(
    State(st): State<ApiState>,
    p: Principal,
    client: ClientAddr,
    Path((id, key_id)): Path<(String, String)>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(MANAGE_KEYS)?;
    let (gateway, _) = visible_gateway(&st, &p, &id).await?;
    st.registry.revoke(&gateway, Some(&key_id), crate::ingest::now_ms()).await.map_err(store_error)?;
    audit(&st, &p, &client, "gateway_key_revoked", gateway.as_str(), serde_json::json!({ "key_id": key_id })).await;
    Ok(axum::Json(keys_of(&st, &gateway).await?))
}

/// `POST /gateways/{id}/revoke`: revokes every key of the gateway.
async fn revoke_all(
    State(st): State<ApiState>,
    p: Principal,
    client: ClientAddr,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(REVOKE_GATEWAY)?;
    let (gateway, _) = visible_gateway(&st, &p, &id).await?;
    let n = st.registry.revoke(&gateway, None, crate::ingest::now_ms()).await.map_err(store_error)?;
    audit(&st, &p, &client, "gateway_revoked", gateway.as_str(), serde_json::json!({ "keys": n })).await;
    Ok(axum::Json(keys_of(&st, &gateway).await?))
}

/// The key routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/gateways/{id}/keys", post(add))
        .route("/api/v1/gateways/{id}/keys/{key_id}", delete(revoke_one))
        .route("/api/v1/gateways/{id}/revoke", post(revoke_all))
}
