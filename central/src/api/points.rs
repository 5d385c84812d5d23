//! Points and devices with their metadata: `GET /points` (every configured or stored point with its
//! unit, valid range, device and alarm limits), `GET /devices`, and each gateway's catalogue
//! (`GET`/`PUT /gateways/{id}/catalogue`, the import of a `vigil-edge catalogue` document for a
//! gateway that has not connected yet). The catalogues themselves live in [`crate::catalogue`].
//! A confined caller sees only its enterprises' gateways; anything else answers 404 or is left out.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use vigil_common::PointCatalogue;
use vigil_common::catalogue::CatalogueDocument;

use super::auth::READ_DATA;
use super::configs::CONFIGURE;
use super::history::{blocking, read};
use super::scope::visible_gateway;
use super::{ApiError, ApiState, Principal, bad, limit, page};
use crate::catalogue::{Imported, Source, Stored};

/// Largest catalogue document `PUT /gateways/{id}/catalogue` takes (about 25,000 points).
pub const MAX_CATALOGUE_BODY: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointsQ {
    gateway: Option<String>,
    enterprise: Option<String>,
    device: Option<String>,
    q: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A point with its metadata.
#[derive(Debug, Serialize)]
pub struct PointView {
    /// `gateway/point`.
    pub key: String,
    /// Gateway id.
    pub gateway: String,
    /// Point id.
    pub point: String,
    /// The gateway's enterprise (`null`: gateway not registered).
    pub enterprise: Option<String>,
    /// Its device, from the gateway's catalogue (`null`: no catalogue lists the point).
    pub device: Option<String>,
    /// Engineering unit (`null`: none configured, or no catalogue).
    pub unit: Option<String>,
    /// Valid range `[low, high]` from the gateway's configuration.
    pub range: Option<[f64; 2]>,
    /// Poll interval, ms (0: computed on the gateway).
    pub poll_ms: Option<u64>,
    /// Where the gateway reads it.
    pub address: Option<String>,
    /// Alarm limits from the alarm definitions (`null`: none defined).
    pub limits: Option<crate::alarms::Limits>,
    /// Listed in the gateway's catalogue (its configuration reads it).
    pub configured: bool,
    /// Central holds history for it.
    pub stored: bool,
}

/// `GET /points`: every point the caller may see, configured or stored, by key; `cursor` is the
/// last key of the previous page.
async fn points(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<PointsQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let n = limit(q.limit) as usize;
    let map = st.scope.map().await?;
    let historian = st.historian.clone();
    let stored: Vec<(String, String)> = blocking(move || {
        let h = read(&historian)?;
        Ok(h.series_keys().into_iter().map(|k| (k.gateway.to_string(), k.point.to_string())).collect())
    })
    .await?;
    let visible = |gateway: &str| {
        let enterprise = map.get(gateway).cloned();
        let sees = match (&p.enterprises, &enterprise) {
            (None, _) => true,
            (Some(_), Some(e)) => p.sees_name(e),
            (Some(_), None) => false,
        };
        (sees
            && q.gateway.as_ref().is_none_or(|g| g == gateway)
            && q.enterprise.as_ref().is_none_or(|e| enterprise.as_ref() == Some(e)))
        .then_some(enterprise)
    };
    let needle = q.q.as_ref().map(|s| s.to_lowercase());
    let mut all: BTreeMap<String, PointView> = BTreeMap::new();
    for c in st.catalogues.all() {
        let gateway = c.catalogue.gateway.as_str();
        let Some(enterprise) = visible(gateway) else { continue };
        for e in &c.catalogue.points {
            let device = c.catalogue.devices.get(e.device as usize).map(|d| d.name.clone());
            let key = format!("{gateway}/{}", e.id.as_str());
            let view = PointView {
                key: key.clone(),
                gateway: gateway.to_owned(),
                point: e.id.to_string(),
                enterprise: enterprise.clone(),
                device,
                unit: (!e.unit.is_empty()).then(|| e.unit.clone()),
                range: e.range,
                poll_ms: Some(e.poll_ms),
                address: Some(e.address.clone()),
                limits: None,
                configured: true,
                stored: false,
            };
            all.insert(key, view);
        }
    }
    for (gateway, point) in stored {
        let Some(enterprise) = visible(&gateway) else { continue };
        let key = format!("{gateway}/{point}");
        all.entry(key.clone())
            .or_insert_with(|| PointView {
                key,
                gateway,
                point,
                enterprise,
                device: None,
                unit: None,
                range: None,
                poll_ms: None,
                address: None,
                limits: None,
                configured: false,
                stored: false,
            })
            .stored = true;
    }
    let mut items: Vec<PointView> = all
        .into_iter()
        .filter(|(key, _)| q.cursor.as_ref().is_none_or(|c| key > c))
        .map(|(_, v)| v)
        .filter(|v| q.device.as_ref().is_none_or(|d| v.device.as_ref() == Some(d)))
        .filter(|v| {
            needle.as_ref().is_none_or(|s| {
                [Some(&v.key), v.device.as_ref(), v.enterprise.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|t| t.to_lowercase().contains(s))
            })
        })
        .take(n)
        .collect();
    if let Some(engine) = &st.alarms {
        let engine = engine.lock().await;
        for v in &mut items {
            v.limits = engine.limits(&v.key);
        }
    }
    let next = (items.len() == n).then(|| items.last().map(|v| v.key.clone())).flatten();
    Ok(page(items, next))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesQ {
    gateway: Option<String>,
    enterprise: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A device from a gateway's catalogue.
#[derive(Debug, Serialize)]
pub struct DeviceView {
    /// `gateway/device`.
    pub key: String,
    /// Gateway id.
    pub gateway: String,
    /// The gateway's enterprise.
    pub enterprise: Option<String>,
    /// Device name.
    pub name: String,
    /// `modbus_tcp`, `modbus_rtu`, `opcua` or `derived`.
    pub protocol: &'static str,
    /// Where the gateway reaches it.
    pub address: String,
    /// Register-map profile.
    pub profile: Option<String>,
    /// Points the gateway reads from it.
    pub points: usize,
    /// Where central got the catalogue: `gateway` (signed by it) or `import`.
    pub source: Source,
}

/// `GET /devices`: every device of the gateways the caller may see, by key.
async fn devices(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<DevicesQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let n = limit(q.limit) as usize;
    let map = st.scope.map().await?;
    let mut items: Vec<DeviceView> = Vec::new();
    for c in st.catalogues.all() {
        let gateway = c.catalogue.gateway.as_str();
        let enterprise = map.get(gateway).cloned();
        let sees = match (&p.enterprises, &enterprise) {
            (None, _) => true,
            (Some(_), Some(e)) => p.sees_name(e),
            (Some(_), None) => false,
        };
        if !sees
            || q.gateway.as_ref().is_some_and(|g| g != gateway)
            || q.enterprise.as_ref().is_some_and(|e| enterprise.as_ref() != Some(e))
        {
            continue;
        }
        let mut counts = vec![0usize; c.catalogue.devices.len()];
        for e in &c.catalogue.points {
            if let Some(n) = counts.get_mut(e.device as usize) {
                *n += 1;
            }
        }
        for (d, points) in c.catalogue.devices.iter().zip(counts) {
            items.push(DeviceView {
                key: format!("{gateway}/{}", d.name),
                gateway: gateway.to_owned(),
                enterprise: enterprise.clone(),
                name: d.name.clone(),
                protocol: d.protocol.name(),
                address: d.address.clone(),
                profile: d.profile.clone(),
                points,
                source: c.source,
            });
        }
    }
    items.sort_by(|a, b| a.key.cmp(&b.key));
    let items: Vec<DeviceView> =
        items.into_iter().filter(|d| q.cursor.as_ref().is_none_or(|c| d.key > *c)).take(n).collect();
    let next = (items.len() == n).then(|| items.last().map(|v| v.key.clone())).flatten();
    Ok(page(items, next))
}

fn catalogue_json(st: &ApiState, stored: &Stored) -> serde_json::Value {
    let running = st.gateways.config(stored.catalogue.gateway.as_str());
    serde_json::json!({
        "gateway": stored.catalogue.gateway.as_str(),
        "source": stored.source,
        "received_ms": stored.received_ms,
        "imported_by": stored.imported_by,
        // Whether it describes the configuration the gateway reported running (null: no state yet).
        "current": running.map(|r| r.sha256 == stored.catalogue.config_sha256),
        "document": CatalogueDocument::from(&stored.catalogue),
    })
}

/// `GET /gateways/{id}/catalogue`: the gateway's devices and points as central holds them.
async fn catalogue(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let (gateway, _) = visible_gateway(&st, &p, &id).await?;
    let stored = st.catalogues.get(gateway.as_str()).ok_or_else(|| {
        ApiError::not_found(format!(
            "no point catalogue for gateway {id} yet: it has not connected, and none was imported"
        ))
    })?;
    Ok(axum::Json(catalogue_json(&st, &stored)))
}

/// `PUT /gateways/{id}/catalogue`: imports a `vigil-edge catalogue` document (201); 409 once the
/// gateway has reported its own, which is the one that counts.
async fn import(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    p.require(CONFIGURE)?;
    let (gateway, _) = visible_gateway(&st, &p, &id).await?;
    let body = axum::body::to_bytes(req.into_body(), MAX_CATALOGUE_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a catalogue document is at most {MAX_CATALOGUE_BODY} bytes"),
        )
    })?;
    let doc: CatalogueDocument = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("not a catalogue document (vigil-edge catalogue): {e}")))?;
    if doc.gateway != gateway.as_str() {
        return Err(bad(format!("the document is the catalogue of gateway {:?}, not of {id}", doc.gateway)));
    }
    let catalogue = PointCatalogue::try_from(doc).map_err(|e| bad(e.to_string()))?;
    match st.catalogues.import(catalogue, &p.user, crate::ingest::now_ms()).await {
        Ok(Imported::Stored) => {
            let stored: Arc<Stored> = st
                .catalogues
                .get(gateway.as_str())
                .ok_or_else(|| ApiError::internal("the imported catalogue is not there"))?;
            Ok((StatusCode::CREATED, axum::Json(catalogue_json(&st, &stored))).into_response())
        }
        Ok(Imported::GatewayReported) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "gateway {id} has reported its own catalogue, which describes what it runs; it is not replaced by an import"
            ),
        )),
        Err(e) => Err(ApiError::internal(format!("storing the catalogue: {e}"))),
    }
}

/// The routes of points, devices and catalogues.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/points", get(points))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/gateways/{id}/catalogue", get(catalogue).put(import))
}
