//! Central's HTTP API under `/api/v1/` (JSON; errors as `application/problem+json`) and `/metrics`.
//! One file per resource family; each contributes its routes to [`router`]. Every request passes
//! the API-call log, the size and time limits and authentication (in that order) before a handler.

pub mod alarms;
pub mod auth;
pub mod calllog;
pub mod configs;
pub mod enrolments;
pub mod evidence;
pub mod history;
pub mod keys;
pub mod openapi;
pub mod points;
pub mod resources;
pub mod scope;
pub mod tls;
pub mod updates;
pub mod users;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

pub use auth::{Principal, Role};
pub use history::{MAX_LATEST, MAX_RAW, SampleJson, parse_point};

use crate::config::ApiConfig;
use crate::historian::Historian;
use crate::identity::{AuthConfig, Identity};
use crate::ingest::IngestMetrics;
use crate::store::Registry;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The historian.
    pub historian: Arc<RwLock<Historian>>,
    /// Ingest counters.
    pub metrics: Arc<IngestMetrics>,
    /// The alarm engine, when central runs one.
    pub alarms: Option<Arc<tokio::sync::Mutex<crate::alarms::AlarmEngine>>>,
    /// What listing alarms reads instead of locking the engine (taken from `alarms` by [`ApiState::open`]).
    pub alarm_reads: Option<alarms::AlarmReads>,
    /// The alarm stream's hub and the alarm-side counters, when central runs the engine.
    pub alarm_services: Option<Arc<alarms::AlarmServices>>,
    /// The embedded broker's counters, when central runs it.
    pub broker: Option<Arc<crate::broker::BrokerMetrics>>,
    /// The evidence store (camera snapshots), when central keeps one.
    pub evidence: Option<Arc<crate::evidence::EvidenceStore>>,
    /// Users, sessions, lockout, security audit.
    pub identity: Identity,
    /// The gateway registry.
    pub registry: Registry,
    /// Which enterprise each gateway belongs to (for scoping).
    pub scope: scope::Scope,
    /// The API-call log.
    pub calls: calllog::CallLog,
    /// What gateways last reported about themselves.
    pub gateways: resources::GatewayStatus,
    /// Configuration pushes, when central has an MQTT client to send them with.
    pub pushes: Option<crate::config_push::ConfigPushes>,
    /// Update bundles and orders, when central has an MQTT client to send orders with.
    pub updates: Option<crate::updates::Updates>,
    /// The gateways' point catalogues (central's process shares ingest's, see [`crate::ingest::Core`]).
    pub catalogues: crate::catalogue::Catalogues,
    /// The HTTPS listener's counters, when [`tls::serve`] serves the API.
    pub tls: Option<Arc<tls::TlsMetrics>>,
    /// Limits and cookie settings.
    pub settings: Arc<ApiConfig>,
    /// When this process started, UTC ms.
    pub started_ms: i64,
}

impl ApiState {
    /// Opens everything the API keeps in `data_dir` (`access.db`: users, tokens, audit and API-call
    /// logs; `meta.db`: the registry) and starts the API-call log writer.
    pub async fn open(
        data_dir: &Path,
        settings: ApiConfig,
        auth: AuthConfig,
        historian: Arc<RwLock<Historian>>,
        metrics: Arc<IngestMetrics>,
        alarms: Option<Arc<tokio::sync::Mutex<crate::alarms::AlarmEngine>>>,
    ) -> Result<ApiState, anyhow::Error> {
        let pool = crate::identity::open_access_db(data_dir).await?;
        let identity = Identity::open(pool.clone(), auth).await?;
        let calls = calllog::CallLog::start(pool, settings.call_log_queue).await?;
        let registry = Registry::open(data_dir).await?;
        let catalogues = crate::catalogue::Catalogues::open(&registry).await?;
        let alarm_reads = match &alarms {
            Some(e) => Some(alarms::AlarmReads::of(e).await),
            None => None,
        };
        Ok(ApiState {
            historian,
            metrics,
            alarms,
            alarm_reads,
            alarm_services: None,
            broker: None,
            evidence: None,
            identity,
            scope: scope::Scope::new(registry.clone()),
            registry,
            calls,
            gateways: resources::GatewayStatus::default(),
            pushes: None,
            updates: None,
            catalogues,
            tls: None,
            settings: Arc::new(settings),
            started_ms: crate::ingest::now_ms(),
        })
    }
}

/// An error answered as an RFC 9457 problem document (`application/problem+json`).
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a human, naming the offending input.
    pub detail: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> ApiError {
        ApiError { status, detail: detail.into() }
    }

    /// 500: a fault of central, not of the request.
    pub fn internal(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, detail)
    }

    /// 403: authenticated, but the role may not do this.
    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, detail = %self.detail, "api: request failed");
        }
        problem(self.status, &self.detail, serde_json::json!({}))
    }
}

/// A problem document with extra members (`extra` must be a JSON object; others are ignored).
pub fn problem(status: StatusCode, detail: &str, extra: serde_json::Value) -> Response {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    let mut resp = (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"vigil\""));
    }
    resp
}

/// 400 with `detail`.
pub fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, detail)
}

/// A JSON request body whose rejections (malformed, wrong type, too large) are problem documents.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::new(e.status(), e.body_text())),
        }
    }
}

/// A list page as every list endpoint answers it.
pub fn page<T: serde::Serialize>(items: Vec<T>, next_cursor: Option<String>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "items": items, "next_cursor": next_cursor }))
}

/// `?limit=` as the contract defines it: default 100, at most 1000, at least 1.
pub fn limit(requested: Option<u32>) -> u32 {
    requested.unwrap_or(100).clamp(1, 1000)
}

/// The whole router, with the API-call log, limits and authentication around every route.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(auth::routes())
        .merge(users::routes())
        .merge(calllog::routes())
        .merge(resources::routes())
        .merge(history::routes())
        .merge(points::routes())
        .merge(keys::routes())
        .merge(alarms::routes())
        .merge(evidence::routes())
        .merge(enrolments::routes())
        .merge(configs::routes())
        .merge(updates::routes())
        .merge(openapi::routes())
        .merge(crate::ui::routes(state.settings.park_layout.clone()))
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits))
        .layer(axum::middleware::from_fn(problem_documents))
        .layer(axum::middleware::from_fn_with_state(state.calls.clone(), calllog::record))
        .with_state(state)
}

/// The answer for a path no route matches.
async fn no_route() -> ApiError {
    ApiError::not_found("no such resource")
}

/// Longest plain-text error body turned into a problem document's `detail`.
const MAX_REJECTION_TEXT: usize = 4096;

/// Turns every error answered without a problem document (axum's own rejections of a malformed path
/// or query, 405 for a method a path lacks, the body-size layer's 413) into one, so clients need to
/// parse only one error format. The status and headers such as `Allow` are kept.
async fn problem_documents(req: Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REJECTION_TEXT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let detail = if text.is_empty() {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => "this resource does not answer that method (see Allow)".to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_owned(),
        }
    } else {
        text
    };
    let mut out = problem(status, &detail, serde_json::json!({}));
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// Refuses oversized bodies up front, cuts streamed ones at the limit, and bounds the time to the
/// response head (a streaming body, such as the alarm event stream, is not bounded by this). The
/// bundle upload alone has the bundle limit and at least ten minutes.
async fn limits(
    axum::extract::State(st): axum::extract::State<ApiState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let upload = req.method() == axum::http::Method::POST && req.uri().path() == crate::updates::UPLOAD_PATH;
    let catalogue = req.method() == axum::http::Method::PUT && req.uri().path().ends_with("/catalogue");
    let max_body = if upload {
        crate::updates::MAX_BUNDLE as usize
    } else if catalogue {
        points::MAX_CATALOGUE_BODY.max(st.settings.max_body_bytes)
    } else {
        st.settings.max_body_bytes
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {max_body} bytes"))
            .into_response();
    }
    let req = req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, max_body)));
    let timeout_s = if upload { st.settings.request_timeout_s.max(600) } else { st.settings.request_timeout_s };
    let timeout = Duration::from_secs(timeout_s);
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the request took longer than {timeout_s} s"))
            .into_response(),
    }
}

/// Serves the router over plain HTTP on `listener` (with client addresses for the API-call log)
/// until it fails; [`tls::serve`] is the HTTPS counterpart.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "api: listening");
    axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>()).await
}
