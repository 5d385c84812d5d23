//! A bounded HTTP/1.1 client for talking to cameras (snapshots, SOAP, liveness) and to central's API
//! (enrolment, update downloads): one request per connection, the whole exchange under a timeout,
//! and the response body read only up to a bound; a larger `Content-Length` is refused before any of
//! the body is read. `https://` only with [`send_tls`] and a CA to check the server against (never
//! the system roots, never unchecked).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::http::{self, header};
use hyper_util::rt::TokioIo;

/// A camera's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// Every header of the answer.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http://host[:port]/path`.
    #[error("bad URL {0:?}: only http://host[:port]/path is supported")]
    Url(String),
    /// No connection.
    #[error("connect to {addr}: {why}")]
    Connect {
        /// host:port.
        addr: String,
        /// The error.
        why: String,
    },
    /// The exchange did not complete in time.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The body is larger than allowed; reading stopped at the bound.
    #[error("answer larger than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: usize,
    },
    /// HTTP protocol error.
    #[error("HTTP: {0}")]
    Http(String),
    /// The TLS handshake failed (most often: the server's certificate is not signed by the trusted
    /// CA, or not for the host name used).
    #[error("TLS with {addr}: {why}")]
    Tls {
        /// host:port.
        addr: String,
        /// The error.
        why: String,
    },
}

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port][/path]`; no user info, no fragments.
    pub fn parse(url: &str) -> Result<Url, FetchError> {
        Url::parse_scheme(url, "http://", 80)
    }

    /// Parses `https://host[:port][/path]` (default port 443) likewise.
    pub fn parse_https(url: &str) -> Result<Url, FetchError> {
        Url::parse_scheme(url, "https://", 443)
    }

    fn parse_scheme(url: &str, scheme: &str, default_port: u16) -> Result<Url, FetchError> {
        let bad = || FetchError::Url(url.chars().take(200).collect());
        let rest = url.strip_prefix(scheme).ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains('@')
            || path.contains('#')
            || path.chars().any(char::is_whitespace)
        {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(bad)?;
            (h, p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => default_port,
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Url { host: host.to_owned(), port, path: path.to_owned() })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Sends one request and reads the answer: everything within `timeout`, the body up to `max_body`.
pub async fn send(
    method: http::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
    max_body: usize,
) -> Result<Response, FetchError> {
    let url = Url::parse(url)?;
    let attempt = async { exchange(method, &url, connect(&url).await?, headers, body, max_body).await };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| FetchError::Timeout(timeout))?
}

/// A TLS client configuration trusting only the CA certificate(s) in the PEM file `ca_file` (the
/// park CA), ring as the provider, no client certificate.
pub fn trusting(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    if cas.is_empty() {
        return Err(format!("CA file {}: no certificate in it", ca_file.display()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| format!("CA file {}: {e}", ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Like [`send`], to an `https://` URL: the server's certificate must chain to `tls`'s roots and
/// name the URL's host.
pub async fn send_tls(
    method: http::Method,
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    headers: &[(&str, String)],
    body: Vec<u8>,
    timeout: Duration,
    max_body: usize,
) -> Result<Response, FetchError> {
    let url = Url::parse_https(url)?;
    let attempt = async {
        let addr = url.authority();
        let tcp = connect(&url).await?;
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| FetchError::Tls { addr: addr.clone(), why: format!("host name: {e}") })?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Tls { addr, why: e.to_string() })?;
        exchange(method, &url, stream, headers, body, max_body).await
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| FetchError::Timeout(timeout))?
}

async fn connect(url: &Url) -> Result<tokio::net::TcpStream, FetchError> {
    let stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| FetchError::Connect { addr: url.authority(), why: e.to_string() })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn exchange<S>(
    method: http::Method,
    url: &Url,
    stream: S,
    headers: &[(&str, String)],
    body: Vec<u8>,
    max_body: usize,
) -> Result<Response, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let addr = url.authority();
    let http = |e: &dyn std::fmt::Display| FetchError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http(&e))?;
    // Dropping the connection future (when this function returns) closes the socket.
    let conn = tokio::spawn(conn);
    let _abort = AbortOnDrop(conn);
    let mut req = http::Request::builder().method(method).uri(url.path.as_str()).header(header::HOST, addr);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status().as_u16();
    let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(FetchError::TooLarge { limit: max_body });
    }
    let (parts, mut incoming) = resp.into_parts();
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(max_body));
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| http(&e))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max_body {
                return Err(FetchError::TooLarge { limit: max_body });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Response { status, content_type, headers: parts.headers, body: out })
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_camera_urls() {
        let u = Url::parse("http://10.0.0.5:8080/snap/1.jpg?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("10.0.0.5", 8080, "/snap/1.jpg?x=1"));
        assert_eq!(Url::parse("http://cam").unwrap().path, "/");
        assert_eq!(Url::parse("http://[::1]:81/a").unwrap().host, "::1");
        for bad in ["https://cam/", "http://u:p@cam/", "http://:80/", "ftp://x", "http://cam:99999/", "http://c/a b"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        let u = Url::parse_https("https://central.park.example/api").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("central.park.example", 443, "/api"));
        assert_eq!(Url::parse_https("https://[::1]:8443").unwrap().port, 8443);
        assert!(Url::parse_https("http://central/").is_err());
    }
}
