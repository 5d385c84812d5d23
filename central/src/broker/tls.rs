//! The broker's TLS: a server certificate, and client certificates required and verified against the
//! park CA; a client's identity is its certificate's common name.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::BrokerError;

fn read(path: &Path) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path).map_err(|e| BrokerError::Tls(format!("{}: {e}", path.display())))
}

/// The server configuration: `cert`/`key` as the broker's identity, clients must present a
/// certificate signed by `ca`.
pub(crate) fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, BrokerError> {
    let err = |p: &Path, e: &dyn std::fmt::Display| BrokerError::Tls(format!("{}: {e}", p.display()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(ca)?) {
        roots.add(c.map_err(|e| err(ca, &e))?).map_err(|e| err(ca, &e))?;
    }
    if roots.is_empty() {
        return Err(BrokerError::Tls(format!("{}: no CA certificate in the file", ca.display())));
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(ca, &e))?;
    let certs =
        CertificateDer::pem_slice_iter(&read(cert)?).collect::<Result<Vec<_>, _>>().map_err(|e| err(cert, &e))?;
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| err(key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key_der)
        .map_err(|e| err(cert, &e))?;
    Ok(Arc::new(config))
}

/// The subject common name of a DER certificate (the first one, as UTF-8).
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_owned())
}
