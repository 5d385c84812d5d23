//! Gateway enrolment over HTTP: `POST /enrolments` (an administrator creates a one-time token for a
//! gateway id and enterprise), `GET /enrolments` (pending ones, never the tokens),
//! `DELETE /enrolments/{id}` (revokes a pending token, e.g. one sent to the wrong person) and `POST /enrol`
//! (public: the gateway redeems its token with its signing public key and a certificate request and
//! gets its certificate, the park CA, central's public key and the broker's address). The token
//! itself never travels on redemption: the gateway names it and proves it holds it with a MAC over
//! its request, and central's answer carries a MAC by the same token (`vigil_common::enrolment`).
//! Tokens are shown once, in the create answer; the API-call log does not record request bodies.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use vigil_common::{EnterpriseId, GatewayId, PublicKey, enrolment};

use super::auth::Role;
use super::calllog::CallActor;
use super::{ApiError, ApiState, JsonBody, Principal, bad, page, problem};
use crate::enrol::{Enrolments, METRICS, Refusal};
use crate::ingest::now_ms;

/// Roles that create and list enrolment tokens (a field technician for assigned enterprises only).
pub const ENROL: &[Role] = &[Role::ParkAdmin, Role::FieldTechnician];

/// Default token lifetime, seconds.
const DEFAULT_TTL_S: u64 = 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    gateway: String,
    enterprise: String,
    #[serde(default)]
    ttl_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedeemBody {
    /// Names the token (`vigil_common::enrolment::token_id`); the token itself never travels.
    token_id: String,
    public_key: String,
    csr: String,
    /// `vigil_common::enrolment::request_mac` over `public_key` and `csr`, keyed by the token.
    mac: String,
}

/// `POST /enrolments`: 201 with the token (shown once) and its expiry.
async fn create(
    State(st): State<ApiState>,
    p: Principal,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    p.require(ENROL)?;
    let gateway = GatewayId::new(body.gateway.as_str()).map_err(|e| bad(format!("gateway: {e}")))?;
    let enterprise = EnterpriseId::new(body.enterprise.as_str()).map_err(|e| bad(format!("enterprise: {e}")))?;
    if !p.sees(&enterprise) {
        return Err(ApiError::forbidden(format!(
            "{} ({}) is not assigned enterprise {enterprise}; enrol only gateways of your enterprises",
            p.user, p.role
        )));
    }
    match st.registry.enterprise_of(&gateway).await.map_err(|e| ApiError::internal(e.to_string()))? {
        Some(e) if e != enterprise.as_str() => {
            // A confined caller learns only that the id is taken, not by whom.
            let whose = if p.sees_name(&e) { format!("enterprise {e}") } else { "another enterprise".into() };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("gateway {gateway} is registered under {whose}, not {enterprise}"),
            ));
        }
        _ => {}
    }
    let ttl_s = body.ttl_s.unwrap_or(DEFAULT_TTL_S);
    let (token, expires_ms) = Enrolments::new(&st.registry)
        .create(&gateway, &enterprise, ttl_s, &p.user, now_ms())
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Invalid(why) => bad(why),
            other => ApiError::internal(other.to_string()),
        })?;
    tracing::info!(%gateway, %enterprise, by = %p.user, expires_ms, "enrolment token created");
    let body = serde_json::json!({
        "token": token, "expires_ms": expires_ms, "gateway": gateway.as_str(), "enterprise": enterprise.as_str(),
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `GET /enrolments`: pending enrolments the caller may see, soonest expiry first.
async fn list(State(st): State<ApiState>, p: Principal) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(ENROL)?;
    let all = Enrolments::new(&st.registry).pending(now_ms()).await.map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(page(all.into_iter().filter(|e| p.sees_name(&e.enterprise)).collect(), None))
}

/// `DELETE /enrolments/{id}`: revokes a pending enrolment the caller may see; 404 otherwise.
async fn revoke(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<crate::enrol::Pending>, ApiError> {
    p.require(ENROL)?;
    let revoked = Enrolments::new(&st.registry)
        .revoke(&id, |e| p.sees_name(e), &p.user, now_ms())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let Some(revoked) = revoked else {
        return Err(ApiError::not_found(format!(
            "no pending enrolment {id} (ids are listed by GET /api/v1/enrolments; a used token cannot be revoked: revoke the gateway instead)"
        )));
    };
    tracing::info!(gateway = %revoked.gateway, enterprise = %revoked.enterprise, by = %p.user, id = %revoked.id, "enrolment token revoked");
    Ok(axum::Json(revoked))
}

fn refused(why: Refusal) -> Response {
    METRICS.refuse(Some(why));
    let (status, detail) = match why {
        Refusal::Unknown => (
            StatusCode::UNAUTHORIZED,
            "the enrolment token is unknown; check it was copied whole, or ask for a new one",
        ),
        Refusal::Used => {
            (StatusCode::GONE, "the enrolment token was used already; a token enrols once: ask for a new one")
        }
        Refusal::Expired => (StatusCode::GONE, "the enrolment token has expired; ask for a new one"),
        Refusal::Revoked => {
            (StatusCode::GONE, "the enrolment token was revoked by an administrator; ask for a new one")
        }
        Refusal::BadProof => (
            StatusCode::UNAUTHORIZED,
            "the request's MAC does not verify with the enrolment token it names: it was altered on the way, or made without the token",
        ),
    };
    problem(status, detail, serde_json::json!({ "reason": why.as_str() }))
}

fn unfit(detail: String) -> ApiError {
    METRICS.refuse(None);
    bad(detail)
}

/// The host part of a `Host` header (`h`, `h:port`, `[v6]:port`).
fn request_host(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::HOST)?.to_str().ok()?.trim();
    let host = match v.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => v.rsplit_once(':').map_or(v, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The files enrolment signs with, read per request (enrolment is rare; an exchanged CA or key
/// takes effect at once).
struct Material {
    ca_pem: String,
    ca_key_pem: String,
    central_key: PublicKey,
}

fn material(st: &ApiState) -> Result<Material, ApiError> {
    let s = &st.settings.enrolment;
    let unavailable = |why: String| {
        tracing::error!(why = %why, "enrolment unavailable");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "central cannot enrol gateways now (see central's log)")
    };
    let (Some(ca), Some(ca_key), Some(key)) = (&s.ca_cert_file, &s.ca_key_file, &s.central_key_file) else {
        return Err(unavailable("enrolment needs the embedded broker and its park CA ([broker])".into()));
    };
    let read =
        |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| unavailable(format!("{}: {e}", p.display())));
    let ca_pem = read(ca)?;
    vigil_common::keyfile::check_owner_only(ca_key).map_err(|e| unavailable(e.to_string()))?;
    let ca_key_pem = read(ca_key)?;
    let central_key = vigil_common::keyfile::load(key).map_err(|e| unavailable(e.to_string()))?.public_key();
    Ok(Material { ca_pem, ca_key_pem, central_key })
}

/// `POST /enrol` (public): redeems a token once.
async fn redeem(State(st): State<ApiState>, headers: HeaderMap, JsonBody(body): JsonBody<RedeemBody>) -> Response {
    match redeem_inner(&st, &headers, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn redeem_inner(st: &ApiState, headers: &HeaderMap, body: RedeemBody) -> Result<Response, Response> {
    let ents = Enrolments::new(&st.registry);
    let internal = |e: crate::store::StoreError| ApiError::internal(e.to_string()).into_response();
    let proves = |k: &[u8; 32]| enrolment::request_mac_ok(k, &body.public_key, &body.csr, &body.mac);
    let ticket = match ents.check(body.token_id.trim(), proves, now_ms()).await.map_err(internal)? {
        Ok(t) => t,
        Err(why) => return Err(refused(why)),
    };
    let token_key: [u8; 32] = hex::decode(&ticket.hash).ok().and_then(|k| k.try_into().ok()).ok_or_else(|| {
        ApiError::internal(format!("enrolment {}: stored key is not 32 bytes of hex", body.token_id)).into_response()
    })?;
    let key = PublicKey::from_text(body.public_key.trim())
        .map_err(|e| unfit(format!("public_key: {e}; expected ed25519:<hex>")).into_response())?;
    let m = material(st).map_err(IntoResponse::into_response)?;
    let cert_pem = crate::broker::pki::sign_gateway_csr(&m.ca_pem, &m.ca_key_pem, &body.csr, ticket.gateway.as_str())
        .map_err(|e| match e {
        crate::broker::pki::PkiError::Csr(why) => {
            unfit(format!("csr: {why} (this token enrols gateway {})", ticket.gateway)).into_response()
        }
        other => ApiError::internal(format!("signing the gateway certificate: {other}")).into_response(),
    })?;
    let claimed_ms = now_ms();
    if let Err(why) = ents.claim(&ticket, &key.to_text(), claimed_ms).await.map_err(internal)? {
        return Err(refused(why));
    }
    if let Err(e) = st.registry.add(&ticket.gateway, &ticket.enterprise, &key, claimed_ms).await {
        // Not enrolled: the token stays redeemable (with another key, or once the conflict is fixed).
        if let Err(r) = ents.release(&ticket, claimed_ms).await {
            tracing::error!(error = %r, gateway = %ticket.gateway, "enrolment: releasing the token failed");
        }
        return Err(match e {
            crate::store::StoreError::Invalid(why) => {
                METRICS.refuse(None);
                ApiError::new(StatusCode::CONFLICT, why).into_response()
            }
            other => ApiError::internal(other.to_string()).into_response(),
        });
    }
    METRICS.redeemed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let s = &st.settings.enrolment;
    let host = s.broker_host.clone().or_else(|| request_host(headers)).unwrap_or_else(|| "localhost".into());
    tracing::info!(gateway = %ticket.gateway, enterprise = %ticket.enterprise, key = %key.key_id(), "gateway enrolled");
    let answer = serde_json::json!({
        "gateway": ticket.gateway.as_str(),
        "enterprise": ticket.enterprise.as_str(),
        "cert_pem": cert_pem,
        "ca_pem": m.ca_pem,
        "central_public_key": m.central_key.to_text(),
        "broker": { "host": host, "port": s.broker_port },
    });
    let answer = answer.to_string();
    let mac = enrolment::answer_mac(&token_key, answer.as_bytes());
    let mut resp = (
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                enrolment::ANSWER_MAC_HEADER
                    .parse()
                    .map_err(|_| ApiError::internal("mac header name").into_response())?,
                mac,
            ),
        ],
        answer,
    )
        .into_response();
    resp.extensions_mut().insert(CallActor { user: format!("gateway:{}", ticket.gateway), role: None });
    Ok(resp)
}

/// The enrolment routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/enrolments", get(list).post(create))
        .route("/api/v1/enrolments/{id}", delete(revoke))
        .route("/api/v1/enrol", post(redeem))
}
