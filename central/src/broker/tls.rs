//! The broker's TLS: a server certificate, and client certificates required and verified against the
//! park CA; a client's identity is its certificate's common name.

use std::path::Path;
use std::sync::Arc;

use super::BrokerError;

/// The server configuration: `cert`/`key` as the broker's identity, clients must present a
/// certificate signed by `ca` (built by [`crate::tls`], shared with the API's HTTPS listener).
pub(crate) fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, BrokerError> {
    crate::tls::server_config(cert, key, Some(ca), &[]).map_err(|e| BrokerError::Tls(e.to_string()))
}

/// The subject common name of a DER certificate (the first one, as UTF-8).
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_owned())
}
