//! The HTTP side of the status page: the listener, Basic authentication against the Argon2 hash,
//! the three routes, and the client `vigil-edge status` uses.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use sha2::Digest as _;
use tokio::sync::watch;

use super::{Board, Status, StatusConfig, metrics_text, render_html};

/// Largest status document the client reads.
const MAX_STATUS_BYTES: usize = 16 * 1024 * 1024;

struct App {
    board: Arc<Board>,
    user: String,
    hash: String,
    /// SHA-256 of the last Authorization header that verified, so a page refreshing every 5 s
    /// does not cost an Argon2 run (tens of ms and MiBs on a small ARM box) each time.
    verified: Mutex<Option<[u8; 32]>>,
}

/// Serves the status page on `config.listen` until `shutdown` turns true. A failure to listen is
/// logged and shown as a source fault; it never stops the agent.
pub async fn serve(config: StatusConfig, board: Arc<Board>, mut shutdown: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen, error = %e, "status page: cannot listen");
            board.event(&vigil_common::Event {
                ts_ms: crate::spool::now_ms(),
                clock: vigil_common::ClockQuality { synchronised: false, source: vigil_common::TimeSource::Gateway },
                kind: vigil_common::EventKind::SourceFault {
                    source: "status page".into(),
                    message: format!("cannot listen on {}: {e}", config.listen),
                },
            });
            return;
        }
    };
    tracing::info!(listen = %config.listen, "status page listening");
    let app = Arc::new(App { board, user: config.user, hash: config.password_hash, verified: Mutex::new(None) });
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, router(app)).with_graceful_shutdown(stop).await {
        tracing::error!(error = %e, "status page failed");
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(html))
        .route("/status.json", get(json))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .with_state(app)
}

async fn html(State(app): State<Arc<App>>) -> Response {
    let s = app.board.status();
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], render_html(&s)).into_response()
}

async fn json(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.board.status()).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let s = app.board.status();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics_text(&app.board, &s)).into_response()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    app.board.requests.fetch_add(1, Ordering::Relaxed);
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(h) = presented
        && check(&app, &h).await
    {
        return next.run(req).await;
    }
    app.board.auth_failures.fetch_add(1, Ordering::Relaxed);
    let mut resp = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"vigil gateway\""));
    resp
}

async fn check(app: &Arc<App>, header_value: &str) -> bool {
    let digest: [u8; 32] = sha2::Sha256::digest(header_value.as_bytes()).into();
    if app.verified.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|v| same(v, &digest)) {
        return true;
    }
    let Some(b64) = header_value.strip_prefix("Basic ") else { return false };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
    let Ok(text) = String::from_utf8(decoded) else { return false };
    let Some((user, password)) = text.split_once(':') else { return false };
    if user != app.user {
        return false;
    }
    let hash = app.hash.clone();
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false);
    if ok {
        *app.verified.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest);
    }
    ok
}

/// Argon2id PHC string of `password`, for `[status] password_hash`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("random source: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Why `vigil-edge status` could not show the status.
#[derive(Debug, thiserror::Error)]
pub enum FetchStatusError {
    /// No answer.
    #[error("{url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// What failed.
        source: crate::sources::camera::client::FetchError,
    },
    /// Wrong user or password.
    #[error("{0}: wrong user or password (401)")]
    Unauthorized(String),
    /// Another HTTP status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// Not a status document.
    #[error("{url}: not a status document: {why}")]
    Decode {
        /// The URL.
        url: String,
        /// The decode error.
        why: String,
    },
}

/// Fetches `/status.json` from a status page at `base` (`http://host:port`).
pub async fn fetch(base: &str, user: &str, password: &str, timeout: Duration) -> Result<Status, FetchStatusError> {
    let url = format!("{}/status.json", base.trim_end_matches('/'));
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
    let resp = crate::sources::camera::client::send(
        axum::http::Method::GET,
        &url,
        &[("authorization", auth)],
        Vec::new(),
        timeout,
        MAX_STATUS_BYTES,
    )
    .await
    .map_err(|source| FetchStatusError::Http { url: url.clone(), source })?;
    match resp.status {
        200 => serde_json::from_slice(&resp.body).map_err(|e| FetchStatusError::Decode { url, why: e.to_string() }),
        401 => Err(FetchStatusError::Unauthorized(url)),
        status => Err(FetchStatusError::Status { url, status }),
    }
}
