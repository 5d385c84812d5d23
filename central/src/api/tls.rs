//! HTTPS on the management API's listener (`[api] tls_cert_file`/`tls_key_file`), so passwords and
//! session tokens never cross the network in clear. Server authentication only: browsers and
//! gateways check central's certificate (signed by the park CA with `vigil-central pki
//! issue-server`); users authenticate with their session as over plain HTTP.
//!
//! Not `axum::serve`, which has no TLS: an accept loop of our own with tokio-rustls and hyper's
//! HTTP/1.1 server. Every connection is bounded: at most `tls_max_connections` open (handshakes
//! included; one more is closed at accept and counted), the handshake within
//! `tls_handshake_timeout_ms`, each request head within `request_timeout_s`. A failed or stalled
//! handshake ends its own connection only; the loop never waits on a client. The client address
//! reaches the handlers as `ConnectInfo<SocketAddr>`, as with the plain listener, for the API-call
//! log.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use super::ApiState;

/// The first byte of a TLS handshake record; anything else is not a TLS client.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Longest a plain-HTTP client is given to take its answer.
const TURN_AWAY: Duration = Duration::from_secs(2);
/// What a plain-HTTP client is told before the connection is closed (nothing of the API's).
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 51\r\n\
connection: close\r\n\r\nthis port speaks HTTPS only: use https:// instead.\n";

/// Counters of the HTTPS listener, on `/metrics` as `vigil_api_tls_*`.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    /// Connections accepted (handed to a TLS handshake).
    pub connections: AtomicU64,
    /// Connections open now (handshaking or serving).
    pub open: AtomicU64,
    /// Connections closed at accept because `tls_max_connections` were open.
    pub refused: AtomicU64,
    /// Handshakes completed.
    pub handshakes: AtomicU64,
    /// Handshakes that failed: bad certificate on the client's side, wrong protocol version, garbage.
    pub handshake_errors: AtomicU64,
    /// Handshakes not finished within `tls_handshake_timeout_ms`.
    pub handshake_timeouts: AtomicU64,
    /// Clients that spoke plain HTTP to the HTTPS port.
    pub plain_http: AtomicU64,
    /// Failed accepts (out of file descriptors and the like).
    pub accept_errors: AtomicU64,
}

impl TlsMetrics {
    /// Prometheus text.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "vigil_api_tls_connections_total {}\nvigil_api_tls_connections_open {}\n\
             vigil_api_tls_connections_refused_total {}\nvigil_api_tls_handshakes_total {}\n\
             vigil_api_tls_handshake_failures_total{{reason=\"error\"}} {}\n\
             vigil_api_tls_handshake_failures_total{{reason=\"timeout\"}} {}\n\
             vigil_api_tls_handshake_failures_total{{reason=\"plain_http\"}} {}\n\
             vigil_api_tls_accept_errors_total {}\n",
            g(&self.connections),
            g(&self.open),
            g(&self.refused),
            g(&self.handshakes),
            g(&self.handshake_errors),
            g(&self.handshake_timeouts),
            g(&self.plain_http),
            g(&self.accept_errors),
        )
    }
}

/// The API's TLS acceptor: certificate chain `cert` and key `key` (PEM), no client certificates,
/// HTTP/1.1 offered by ALPN.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, crate::tls::TlsError> {
    Ok(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(cert, key, None, &[b"http/1.1"])?))
}

/// Counts a connection open until dropped (whichever way its task ends).
struct Open(Arc<TlsMetrics>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves the router over HTTPS on `listener` with `acceptor`, bounded by `state.settings`
/// (`tls_max_connections`, `tls_handshake_timeout_ms`, `request_timeout_s` for each request head).
/// Returns only if the listener's address cannot be read; accept errors are counted and waited out.
pub async fn serve(
    listener: TcpListener,
    mut state: ApiState,
    acceptor: tokio_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let metrics = Arc::new(TlsMetrics::default());
    state.tls = Some(metrics.clone());
    if !state.settings.secure_cookie {
        // HTTPS only on this listener: the session cookie must never be sent back over plain HTTP
        // (the configuration forces this too; here it holds for every caller).
        let mut settings = (*state.settings).clone();
        settings.secure_cookie = true;
        state.settings = Arc::new(settings);
    }
    let settings = state.settings.clone();
    let handshake_timeout = Duration::from_millis(settings.tls_handshake_timeout_ms);
    let max_connections = settings.tls_max_connections.max(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that trickles request heads holds a slot at most this long per request.
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(settings.request_timeout_s.max(1)));
    let http = Arc::new(http);
    let app = super::router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    tracing::info!(%addr, max_connections, handshake_timeout_ms = settings.tls_handshake_timeout_ms, "api: listening (HTTPS)");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "api: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, max_connections, "api: connection limit reached; refused");
            drop(tcp);
            continue;
        };
        metrics.connections.fetch_add(1, Ordering::Relaxed);
        metrics.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(metrics.clone());
        let (acceptor, app, http) = (acceptor.clone(), app.clone(), http.clone());
        tokio::spawn(async move {
            // Both released however the task ends: the slot for the next client, the open count.
            let (_slot, open) = (slot, open);
            let Some(tls) = handshake(tcp, peer, &acceptor, handshake_timeout, &open.0).await else { return };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
            if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await
                && !e.is_incomplete_message()
            {
                tracing::debug!(%peer, error = %e, "api: HTTPS connection ended with an error");
            }
        });
    }
}

/// Answers a plain-HTTP client [`PLAIN_HTTP_ANSWER`] and closes, within [`TURN_AWAY`]. What it sent
/// is read and dropped (at most 64 KiB) after the answer, so the close is a FIN, not a reset that
/// could discard the answer before the client reads it.
async fn turn_away(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        tcp.write_all(PLAIN_HTTP_ANSWER).await?;
        tcp.shutdown().await?;
        let (mut buf, mut total) = ([0u8; 4096], 0usize);
        while total < 64 * 1024 {
            match tcp.read(&mut buf).await? {
                0 => break,
                n => total += n,
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(TURN_AWAY, exchange).await;
}

/// The TLS handshake with `peer` within `timeout`; `None` (counted, logged) when it fails. A client
/// speaking plain HTTP is told to use https:// ([`turn_away`]).
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    timeout: Duration,
    metrics: &TlsMetrics,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let _ = tcp.set_nodelay(true);
    let attempt = async {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
            return Ok(Err(tcp));
        }
        acceptor.accept(tcp).await.map(Ok)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(Ok(tls))) => {
            metrics.handshakes.fetch_add(1, Ordering::Relaxed);
            Some(tls)
        }
        Ok(Ok(Err(tcp))) => {
            metrics.plain_http.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, "api: plain HTTP on the HTTPS port; told to use https://");
            turn_away(tcp).await;
            None
        }
        Ok(Err(e)) => {
            metrics.handshake_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, error = %e, "api: TLS handshake failed");
            None
        }
        Err(_) => {
            metrics.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, timeout_ms = timeout.as_millis() as u64, "api: TLS handshake not finished in time; closed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_has_the_right_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head:?} / {}", body.len());
    }

    #[test]
    fn every_counter_is_exported() {
        let m = TlsMetrics::default();
        m.handshake_timeouts.fetch_add(3, Ordering::Relaxed);
        let text = m.prometheus();
        assert!(text.contains("vigil_api_tls_handshake_failures_total{reason=\"timeout\"} 3\n"), "{text}");
        assert_eq!(text.lines().count(), 8);
    }
}
