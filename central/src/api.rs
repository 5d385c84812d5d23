//! HTTP query endpoints of the historian under `/api/v1/` (JSON), and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use vigil_common::{GatewayId, PointId, Sample, Value};

use crate::historian::{Bucket, Historian, SeriesKey};
use crate::ingest::IngestMetrics;

/// Most samples one raw query returns.
pub const MAX_RAW: usize = 100_000;
/// Most points one latest query names.
pub const MAX_LATEST: usize = 10_000;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The historian.
    pub historian: Arc<RwLock<Historian>>,
    /// Ingest counters.
    pub metrics: Arc<IngestMetrics>,
    /// The alarm engine, when central runs one.
    pub alarms: Option<Arc<tokio::sync::Mutex<crate::alarms::AlarmEngine>>>,
}

/// A JSON error body with a status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

fn read(h: &RwLock<Historian>) -> Result<std::sync::RwLockReadGuard<'_, Historian>, ApiError> {
    h.read().map_err(|_| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "historian lock poisoned".into()))
}

async fn latest(
    State(st): State<ApiState>,
    Query(q): Query<LatestQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let keys = q.points.split(',').map(parse_point).collect::<Result<Vec<_>, _>>()?;
    if keys.len() > MAX_LATEST {
        return Err(bad(format!("{} points; at most {MAX_LATEST}", keys.len())));
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

async fn raw(State(st): State<ApiState>, Query(q): Query<RangeQ>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let key = parse_point(&q.point)?;
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
    Query(q): Query<RangeQ>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let key = parse_point(&q.point)?;
    let bucket = q.bucket_ms.ok_or_else(|| bad("bucket_ms is required"))?;
    blocking(move || {
        let h = read(&st.historian)?;
        let buckets: Vec<Bucket> = h.aggregate(&key, q.from, q.to, bucket).map_err(|e| bad(e.to_string()))?;
        Ok(axum::Json(serde_json::json!({ "point": q.point, "buckets": buckets })))
    })
    .await
}

/// Alarms not yet back to normal and closed, oldest first.
async fn open_alarms(State(st): State<ApiState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let engine = st.alarms.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "central runs no alarm engine".into()))?;
    let engine = engine.lock().await;
    let alarms: Vec<&crate::alarms::Alarm> = engine.open_alarms();
    Ok(axum::Json(serde_json::json!({ "alarms": alarms })))
}

async fn points(State(st): State<ApiState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    blocking(move || {
        let h = read(&st.historian)?;
        let keys: Vec<String> = h.series_keys().iter().map(|k| format!("{}/{}", k.gateway, k.point)).collect();
        Ok(axum::Json(serde_json::json!({ "points": keys })))
    })
    .await
}

async fn metrics(State(st): State<ApiState>) -> Result<String, ApiError> {
    let mut s = st.metrics.prometheus();
    let h = read(&st.historian)?;
    let hs = h.stats();
    for (name, v) in [
        ("vigil_historian_samples_total", hs.samples),
        ("vigil_historian_late_samples_total", hs.late_samples),
        ("vigil_historian_chunks_written_total", hs.chunks_written),
        ("vigil_historian_chunk_bytes_total", hs.chunk_bytes),
        ("vigil_historian_chunk_samples_total", hs.chunk_samples),
        ("vigil_historian_chunks_dropped_total", hs.chunks_dropped),
        ("vigil_historian_head_samples", h.head_samples() as u64),
    ] {
        s.push_str(&format!("{name} {v}\n"));
    }
    Ok(s)
}

/// The router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/points", get(points))
        .route("/api/v1/alarms", get(open_alarms))
        .route("/api/v1/latest", get(latest))
        .route("/api/v1/raw", get(raw))
        .route("/api/v1/aggregate", get(aggregate))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves the router on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, state: ApiState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "api: listening");
    axum::serve(listener, router(state)).await
}
