//! The uplink's TLS client configuration: the broker's CA pinned (no system roots), the gateway's
//! certificate as client identity, ring as the only crypto provider.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{TlsFiles, UplinkError};

/// Builds the rustls client configuration from the configured files.
pub(super) fn client_config(files: &TlsFiles) -> Result<rumqttc::TlsConfiguration, UplinkError> {
    let err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        UplinkError::Tls(format!("{what} {}: {e}", path.display()))
    };
    vigil_common::keyfile::check_owner_only(&files.key_file).map_err(|e| UplinkError::Tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.ca_file)
        .map_err(|e| err("CA file", &files.ca_file, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("CA file", &files.ca_file, &e))?;
    if cas.is_empty() {
        return Err(UplinkError::Tls(format!("CA file {}: no certificate in it", files.ca_file.display())));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| err("CA file", &files.ca_file, &e))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| err("certificate file", &files.cert_file, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("certificate file", &files.cert_file, &e))?;
    if chain.is_empty() {
        return Err(UplinkError::Tls(format!("certificate file {}: no certificate in it", files.cert_file.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| err("key file", &files.key_file, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| err("certificate/key pair", &files.cert_file, &e))?;
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}
