//! The park's resources: `GET /enterprises`, `GET /gateways`, `GET /gateways/{id}` (registry entries
//! with what each gateway last reported about itself) and `GET /health`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use vigil_common::GatewayState;

use super::auth::READ_DATA;
use super::{ApiError, ApiState, Principal, limit, page};
use crate::store::GatewayEntry;

/// The last state (birth or will) each gateway published, with central's receive time.
#[derive(Clone, Default)]
pub struct GatewayStatus {
    states: Arc<RwLock<HashMap<String, (GatewayState, i64)>>>,
}

impl GatewayStatus {
    /// Records a verified state received at `received_ms`.
    pub fn record(&self, state: &GatewayState, received_ms: i64) {
        let mut m = self.states.write().unwrap_or_else(|p| p.into_inner());
        m.insert(state.gateway.as_str().to_owned(), (state.clone(), received_ms));
    }

    /// Follows ingest's verified states until the sender goes away.
    pub async fn follow(self, mut rx: broadcast::Receiver<Arc<(GatewayState, i64)>>) {
        loop {
            match rx.recv().await {
                Ok(s) => self.record(&s.0, s.1),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // States are retained per gateway and re-sent on every connect: a lag only
                    // delays the figures until the next state.
                    tracing::warn!(missed = n, "api: gateway states lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// The configuration report of the gateway's last state.
    pub fn config(&self, gateway: &str) -> Option<vigil_common::ConfigReport> {
        self.get(gateway).map(|(s, _)| s.config)
    }

    /// The agent version and update report of the gateway's last state.
    pub fn update(&self, gateway: &str) -> Option<(String, vigil_common::UpdateReport)> {
        self.get(gateway).map(|(s, _)| (s.version, s.update))
    }

    fn get(&self, gateway: &str) -> Option<(GatewayState, i64)> {
        self.states.read().unwrap_or_else(|p| p.into_inner()).get(gateway).cloned()
    }
}

/// A gateway as the API shows it.
#[derive(Debug, Serialize)]
pub struct GatewayView {
    /// Gateway id.
    pub id: String,
    /// Its enterprise.
    pub enterprise: String,
    /// Online per its last state message (`null`: no state seen since central started).
    pub online: Option<bool>,
    /// Last accepted batch, UTC ms.
    pub last_seen_ms: Option<i64>,
    /// Last state message, UTC ms.
    pub state_ms: Option<i64>,
    /// Agent version it reported.
    pub agent_version: Option<String>,
    /// Version of the configuration it runs (0: the file installed on it, never pushed).
    pub config_version: Option<u64>,
    /// The last configuration push it handled: version and status.
    pub config_push: Option<serde_json::Value>,
    /// Installed agent version, version on trial and recent update history it reported.
    pub agent_update: Option<serde_json::Value>,
    /// Unacknowledged batches in its spool (alarm/event, live, backfill).
    pub spool_batches: Option<[u64; 3]>,
    /// Bytes they take.
    pub spool_bytes: Option<u64>,
    /// Age of the oldest unacknowledged batch at its last state, ms.
    pub oldest_unacked_age_ms: Option<i64>,
    /// Cumulative drops it reported (JSON).
    pub dropped: Option<serde_json::Value>,
    /// Receive time minus its birth message's creation time, ms (includes the transit delay).
    pub clock_offset_ms: Option<i64>,
    /// Its keys.
    pub keys: Vec<crate::store::KeyEntry>,
}

fn view(g: GatewayEntry, status: &GatewayStatus) -> GatewayView {
    let state = status.get(&g.id);
    let dropped = match &state {
        Some((s, _)) => serde_json::to_value(s.spool.dropped).ok(),
        None => g.drops_json.as_deref().and_then(|d| serde_json::from_str(d).ok()),
    };
    GatewayView {
        online: state.as_ref().map(|(s, _)| s.online),
        agent_version: state.as_ref().map(|(s, _)| s.version.clone()),
        config_version: state.as_ref().map(|(s, _)| s.config.running),
        config_push: state.as_ref().and_then(|(s, _)| s.config.last_push.as_ref()).map(|l| {
            let (status, detail) = push_status(&l.result);
            serde_json::json!({ "version": l.version, "status": status, "detail": detail, "ts_ms": l.ts_ms })
        }),
        agent_update: state.as_ref().and_then(|(s, _)| serde_json::to_value(&s.update).ok()),
        spool_batches: state.as_ref().map(|(s, _)| s.spool.batches),
        spool_bytes: state.as_ref().map(|(s, _)| s.spool.bytes),
        oldest_unacked_age_ms: state
            .as_ref()
            .and_then(|(s, _)| s.spool.oldest_unacked_ms.map(|o| s.ts_ms.saturating_sub(o).max(0))),
        clock_offset_ms: state.as_ref().filter(|(s, _)| s.online).map(|(s, recv)| recv.saturating_sub(s.ts_ms)),
        dropped,
        id: g.id,
        enterprise: g.enterprise,
        last_seen_ms: g.last_seen_ms,
        state_ms: g.state_ms,
        keys: g.keys,
    }
}

/// A push outcome as the API names it.
pub fn push_status(r: &vigil_common::PushResult) -> (&'static str, Option<&str>) {
    use vigil_common::PushResult;
    match r {
        PushResult::OnTrial => ("on_trial", None),
        PushResult::Applied => ("applied", None),
        PushResult::Rejected(why) => ("rejected", Some(why.as_str())),
        PushResult::RolledBack(why) => ("rolled_back", Some(why.as_str())),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQ {
    enterprise: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /gateways`: by id; `cursor` is the last id of the previous page.
async fn gateways(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<ListQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let n = limit(q.limit) as usize;
    let list = st.registry.list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let items: Vec<GatewayView> = list
        .into_iter()
        .filter(|g| p.sees_name(&g.enterprise))
        .filter(|g| q.enterprise.as_ref().is_none_or(|e| *e == g.enterprise))
        .filter(|g| q.cursor.as_ref().is_none_or(|c| g.id > *c))
        .take(n)
        .map(|g| view(g, &st.gateways))
        .collect();
    let next = (items.len() == n).then(|| items.last().map(|g| g.id.clone())).flatten();
    Ok(page(items, next))
}

/// `GET /gateways/{id}`.
async fn gateway(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<GatewayView>, ApiError> {
    p.require(READ_DATA)?;
    let list = st.registry.list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let g = list
        .into_iter()
        .find(|g| g.id == id && p.sees_name(&g.enterprise))
        .ok_or_else(|| ApiError::not_found(format!("gateway {id} not found")))?;
    Ok(axum::Json(view(g, &st.gateways)))
}

#[derive(Debug, Default, Serialize)]
struct EnterpriseView {
    id: String,
    gateways: usize,
    online: usize,
}

/// `GET /enterprises`: every enterprise with registered gateways, with counts.
async fn enterprises(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<ListQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let n = limit(q.limit) as usize;
    let list = st.registry.list().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let mut by: BTreeMap<String, EnterpriseView> = BTreeMap::new();
    for g in list.into_iter().filter(|g| p.sees_name(&g.enterprise)) {
        let e = by
            .entry(g.enterprise.clone())
            .or_insert_with(|| EnterpriseView { id: g.enterprise.clone(), ..Default::default() });
        e.gateways += 1;
        if st.gateways.get(&g.id).is_some_and(|(s, _)| s.online) {
            e.online += 1;
        }
    }
    let items: Vec<EnterpriseView> =
        by.into_values().filter(|e| q.cursor.as_ref().is_none_or(|c| e.id > *c)).take(n).collect();
    let next = (items.len() == n).then(|| items.last().map(|e| e.id.clone())).flatten();
    Ok(page(items, next))
}

/// `GET /health` (public): whether central's parts answer. 503 when one does not.
async fn health(State(st): State<ApiState>) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    let identity = st.identity.user_count().await.is_ok();
    let registry = st.registry.list().await.is_ok();
    let historian = st.historian.read().is_ok();
    let ok = identity && registry && historian;
    let status = if ok { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "started_ms": st.started_ms,
        "checks": {
            "access_db": identity,
            "registry": registry,
            "historian": historian,
            "alarm_engine": st.alarms.is_some(),
        },
    });
    (status, axum::Json(body))
}

/// The resource routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/enterprises", get(enterprises))
        .route("/api/v1/gateways", get(gateways))
        .route("/api/v1/gateways/{id}", get(gateway))
        .route("/api/v1/health", get(health))
}
