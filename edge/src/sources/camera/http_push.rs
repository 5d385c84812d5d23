//! The HTTP push endpoint: `POST /cameras/{name}/events` with the camera's JSON detection.
//!
//! Order of checks, each with its status and counter: known pushing camera (404), credentials (401),
//! room (503), body size (413, read no further than the limit), JSON (400), mapping (422, naming the
//! field), duplicate (200, taken once), then the snapshot is fetched and the detection queued for
//! the spool (202). A refused detection (503) is not remembered as seen, so the camera's retry counts.

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use tokio::sync::watch;

use super::{Camera, Hub, PushAuth, SendError};

/// Serves the push endpoint on `listener` until `shutdown` turns true.
pub async fn serve(listener: tokio::net::TcpListener, hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router(hub)).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "cameras: push endpoint failed");
    }
}

/// The push routes.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/cameras/{name}/events", post(push))
        // The handler enforces the configured limit itself, to count and answer 413.
        .layer(DefaultBodyLimit::disable())
        .with_state(hub)
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "status": status.as_u16(), "message": message.into() });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Constant-time comparison, so a wrong secret's timing says nothing about the right one.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

fn authorized(auth: &PushAuth, headers: &HeaderMap) -> bool {
    match auth {
        PushAuth::Secret { header, secret } => {
            headers.get(header.as_str()).is_some_and(|v| same(v.as_bytes(), secret.as_bytes()))
        }
        PushAuth::Basic { user, password } => {
            let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
                .is_some_and(|v| same(v.trim().as_bytes(), expected.as_bytes()))
        }
    }
}

async fn push(State(hub): State<Arc<Hub>>, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let m = &hub.metrics;
    m.posts.inc();
    let Some((camera, auth, map)) =
        hub.cameras.get(&name).and_then(|c| Some((c, c.config.auth.as_ref()?, c.model.push.as_ref()?)))
    else {
        m.unknown_camera.inc();
        return answer(StatusCode::NOT_FOUND, "no such pushing camera");
    };
    if !authorized(auth, &headers) {
        m.auth_failures.inc();
        tracing::warn!(camera = %name, "cameras: push with missing or wrong credentials refused");
        let mut r = answer(StatusCode::UNAUTHORIZED, "credentials missing or wrong");
        if matches!(auth, PushAuth::Basic { .. }) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"vigil\""));
        }
        return r;
    }
    let Ok(_permit) = hub.in_flight.try_acquire() else {
        m.busy.inc();
        return answer(StatusCode::SERVICE_UNAVAILABLE, "too many pushes in flight; retry");
    };
    let limit = hub.settings.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        m.too_large.inc();
        return answer(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes"));
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            m.too_large.inc();
            return answer(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes"));
        }
        Err(e) => {
            m.malformed.inc();
            return answer(StatusCode::BAD_REQUEST, format!("body not received: {e}"));
        }
    };
    let json: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            m.malformed.inc();
            tracing::warn!(camera = %name, error = %e, "cameras: push body is not JSON");
            return answer(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}"));
        }
    };
    let mapped = match map.map(&json, &camera.config.name) {
        Ok(m) => m,
        Err(e) => {
            m.unmapped.inc();
            tracing::warn!(camera = %name, error = %e, "cameras: push body does not map to a detection");
            return answer(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
    };
    let fingerprint = fingerprint(&bytes);
    if hub.seen_before(&camera.config.name, fingerprint) {
        m.duplicates.inc();
        return answer(StatusCode::OK, "duplicate; already taken");
    }
    match hub.deliver(camera, mapped.ts_ms, mapped.detection, mapped.snapshot_url).await {
        Ok(()) => answer(StatusCode::ACCEPTED, "accepted"),
        Err(e) => {
            forget(&hub, camera, fingerprint);
            m.busy.inc();
            let why = match e {
                SendError::Full => "gateway queue full; retry",
                SendError::Closed => "gateway stopping; retry",
            };
            answer(StatusCode::SERVICE_UNAVAILABLE, why)
        }
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn forget(hub: &Hub, camera: &Camera, fingerprint: u64) {
    hub.forget(&camera.config.name, fingerprint);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare_is_equality() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"abcd", b"abc"));
        assert!(!same(b"", b"a"));
        assert!(same(b"", b""));
    }
}
