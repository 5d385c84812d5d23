//! The historian's query endpoints under `/api/v1/` (JSON), and `/metrics` (Prometheus text).
//! A confined caller (enterprise user, field technician) sees only points of its enterprises'
//! gateways; any other point answers 404 as if it did not exist.

use std::sync::RwLock;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use vigil_common::{GatewayId, PointId, Sample, Value};

use super::auth::READ_DATA;
use super::{ApiError, ApiState, Principal, bad};
use crate::historian::{Bucket, Historian, SeriesKey};

/// Most samples one raw query returns.
pub const MAX_RAW: usize = 100_000;
/// Most points one latest query names.
pub const MAX_LATEST: usize = 10_000;

/// Parses `gateway/point` (a gateway id holds no `/`, so the first one separates).
pub fn parse_point(s: &str) -> Result<SeriesKey, ApiError> {
    let (g, p) = s.split_once('/').ok_or_else(|| bad(format!("point {s:?} must be gateway/point")))?;
    Ok(SeriesKey {
        gateway: GatewayId::new(g).map_err(|e| bad(e.to_string()))?,
        point: PointId::new(p).map_err(|e| bad(e.to_string()))?,
    })
}

/// A sample as JSON.
#[derive(Debug, Serialize)]
pub struct SampleJson {
    /// Source time, UTC ms.
    pub ts_ms: i64,
    /// The value (number, bool or string).
    pub value: serde_json::Value,
    /// OPC UA status code.
    pub quality: u32,
}

impl From<&Sample> for SampleJson {
    fn from(s: &Sample) -> Self {
        let value = match &s.value {
            Value::F64(v) => {
                serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Value::I64(v) => serde_json::Value::from(*v),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Text(t) => serde_json::Value::String(t.clone()),
        };
        SampleJson { ts_ms: s.ts_ms, value, quality: s.quality.0 }
    }
}

#[derive(Deserialize)]
struct LatestQ {
    points: String,
}

#[derive(Deserialize)]
struct RangeQ {
    point: String,
    from: i64,
    to: i64,
    limit: Option<usize>,
    bucket_ms: Option<i64>,
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::internal(e.to_string()))?
}

pub(super) fn read(h: &RwLock<Historian>) -> Result<std::sync::RwLockReadGuard<'_, Historian>, ApiError> {
    h.read().map_err(|_| ApiError::internal("historian lock poisoned"))
}

/// 404 unless `p` may see `key`.
async fn visible(st: &ApiState, p: &Principal, key: &SeriesKey) -> Result<(), ApiError> {
    st.scope.check_gateway(p, key.gateway.as_str(), &format!("point {}/{}", key.gateway, key.point)).await
}

async fn latest(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<LatestQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let keys = q.points.split(',').map(parse_point).collect::<Result<Vec<_>, _>>()?;
    if keys.len() > MAX_LATEST {
        return Err(bad(format!("{} points; at most {MAX_LATEST}", keys.len())));
    }
    for k in &keys {
        visible(&st, &p, k).await?;
    }
    blocking(move || {
        let h = read(&st.historian)?;
        let values = h.latest(&keys);
        let out: Vec<serde_json::Value> = keys
            .iter()
            .zip(values)
            .map(|(k, v)| serde_json::json!({ "point": format!("{}/{}", k.gateway, k.point), "sample": v.as_ref().map(SampleJson::from) }))
            .collect();
        Ok(axum::Json(serde_json::json!({ "points": out })))
    })
    .await
}

async fn raw(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<RangeQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let key = parse_point(&q.point)?;
    visible(&st, &p, &key).await?;
    let limit = q.limit.unwrap_or(10_000).min(MAX_RAW);
    blocking(move || {
        let h = read(&st.historian)?;
        let samples = h.raw(&key, q.from, q.to, limit).map_err(|e| bad(e.to_string()))?;
        let out: Vec<SampleJson> = samples.iter().map(SampleJson::from).collect();
        Ok(axum::Json(serde_json::json!({ "point": q.point, "samples": out })))
    })
    .await
}

async fn aggregate(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<RangeQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    p.require(READ_DATA)?;
    let key = parse_point(&q.point)?;
    visible(&st, &p, &key).await?;
    let bucket = q.bucket_ms.ok_or_else(|| bad("bucket_ms is required"))?;
    blocking(move || {
        let h = read(&st.historian)?;
        let buckets: Vec<Bucket> = h.aggregate(&key, q.from, q.to, bucket).map_err(|e| bad(e.to_string()))?;
        Ok(axum::Json(serde_json::json!({ "point": q.point, "buckets": buckets })))
    })
    .await
}

async fn metrics(State(st): State<ApiState>) -> Result<String, ApiError> {
    let mut s = st.metrics.prometheus();
    if let Some(b) = &st.broker {
        s.push_str(&b.prometheus());
    }
    let h = read(&st.historian)?;
    let hs = h.stats();
    for (name, v) in [
        ("vigil_historian_samples_total", hs.samples),
        ("vigil_historian_late_samples_total", hs.late_samples),
        ("vigil_historian_chunks_written_total", hs.chunks_written),
        ("vigil_historian_chunk_bytes_total", hs.chunk_bytes),
        ("vigil_historian_chunk_samples_total", hs.chunk_samples),
        ("vigil_historian_chunks_dropped_total", hs.chunks_dropped),
        ("vigil_historian_samples_compressed_away_total", hs.samples_compressed_away),
        ("vigil_historian_rollup_hits_total", hs.rollup_hits),
        ("vigil_historian_rollup_misses_total", hs.rollup_misses),
        ("vigil_historian_rollup_cached_chunks", hs.rollup_cached_chunks),
        ("vigil_historian_head_samples", h.head_samples() as u64),
    ] {
        s.push_str(&format!("{name} {v}\n"));
    }
    if let Some(a) = &st.alarm_services {
        s.push_str(&a.prometheus());
    }
    drop(h);
    s.push_str(&st.identity.metrics().prometheus());
    s.push_str(&st.calls.metrics().prometheus());
    s.push_str(&crate::enrol::METRICS.prometheus());
    s.push_str(&crate::updates::METRICS.prometheus());
    s.push_str(&st.catalogues.metrics.prometheus());
    s.push_str(&st.tls.as_ref().map(|t| t.prometheus()).unwrap_or_default());
    if let Some(p) = &st.pushes {
        s.push_str(&p.metrics.prometheus());
    }
    Ok(s)
}

/// The historian's routes and `/metrics`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/latest", get(latest))
        .route("/api/v1/raw", get(raw))
        .route("/api/v1/aggregate", get(aggregate))
        .route("/metrics", get(metrics))
}
