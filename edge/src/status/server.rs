//! The HTTP side of the status page: the listener, Basic authentication against the Argon2 hash,
//! the three routes, and the client `vigil-edge status` uses.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// Counters of the status page's listener, exported on its `/metrics`.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Connections closed because a request head did not arrive within `header_timeout_ms`
    /// (slow or idle clients).
    pub header_timeouts: AtomicU64,
    /// Requests refused for a head over `max_request_bytes` or a body (the page takes none).
    pub too_large: AtomicU64,
    /// Connections closed because they outlived [`CONNECTION_LIFETIME`] (a client not reading).
    pub lifetime_closed: AtomicU64,
    /// Connections that ended with another error, and failed accepts.
    pub errors: AtomicU64,
}

/// Longest a connection may stay open, whatever it does: bounds a client that sends requests but
/// never reads the answers (its writes would otherwise hold a connection slot for ever).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// After the lifetime (or at shutdown) a connection gets this long to finish its answer.
const GRACE: Duration = Duration::from_secs(5);
/// What a connection over the limit is told before it is closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 20\r\nconnection: close\r\n\r\ntoo many connections\n";

/// Serves the status page on `config.listen` until `shutdown` turns true. A failure to listen is
/// logged and shown as a source fault; it never stops the agent.
///
/// Not `axum::serve`: that has no header-read timeout and no connection bound, so a few clients
/// trickling headers (slowloris) could hold the agent's memory and sockets. Here every connection
/// has `header_timeout_ms` for each request head (also between keep-alive requests), a head of at
/// most `max_request_bytes`, at most [`CONNECTION_LIFETIME`] in all, and at most `max_connections`
/// are open; one over that gets a 503 and is closed.
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
    tracing::info!(listen = %config.listen, max_connections = config.max_connections, "status page listening");
    let metrics = board.listener.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.header_timeout_ms.max(1)))
        // hyper refuses a buffer below 8 KiB; the head limit is this buffer.
        .max_buf_size(config.max_request_bytes.max(8192));
    let app = Arc::new(App { board, user: config.user, hash: config.password_hash, verified: Mutex::new(None) });
    let service = hyper_util::service::TowerToHyperService::new(router(app));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { break } else { continue },
        };
        // Finished connections are reaped here so the set stays as small as the open ones.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: count, wait a little, go on.
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "status page: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "status page: too many connections; closing");
            // Never wait on this client: one non-blocking write, then close.
            let _ = stream.try_write(BUSY);
            drop(stream);
            continue;
        };
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        metrics.active.fetch_add(1, Ordering::Relaxed);
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone());
        let (metrics, mut shutdown) = (metrics.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    metrics.lifetime_closed.fetch_add(1, Ordering::Relaxed);
                    None
                }
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let result = match ended {
                Some(r) => Some(r),
                None => {
                    conn.as_mut().graceful_shutdown();
                    // A client that does not read its answer is simply dropped after the grace.
                    tokio::time::timeout(GRACE, conn.as_mut()).await.ok()
                }
            };
            match result {
                Some(Err(e)) if e.is_timeout() => {
                    metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "status page: request head too slow; closed");
                }
                Some(Err(e)) if e.is_parse_too_large() => {
                    metrics.too_large.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) if !e.is_incomplete_message() && !e.is_canceled() => {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, error = %e, "status page: connection error");
                }
                _ => {}
            }
            metrics.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Shutdown: every connection got the signal; give them the grace, then drop what is left.
    let _ = tokio::time::timeout(GRACE + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
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
    // No route takes a body: one announced (or chunked) is refused before anything reads it.
    let length = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if length.is_some_and(|n| n > 0) || req.headers().contains_key(header::TRANSFER_ENCODING) {
        app.board.listener.too_large.fetch_add(1, Ordering::Relaxed);
        let mut resp = (StatusCode::PAYLOAD_TOO_LARGE, "the status page takes no request body\n").into_response();
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
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
