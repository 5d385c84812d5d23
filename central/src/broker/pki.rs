//! The park's certificates for a fresh install: `vigil-central pki init` (CA, the embedded broker's
//! server certificate, central's client certificate), `pki issue-gateway` (one gateway's client
//! certificate, with the CA, for the technician) and `pki issue-server` (another server certificate
//! of central's, such as the management API's for HTTPS). Private keys are written owner-only.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// CA certificate file name in the PKI directory.
pub const CA_CERT: &str = "ca.pem";
/// CA private key file name.
pub const CA_KEY: &str = "ca.key";
/// The embedded broker's server certificate.
pub const BROKER_CERT: &str = "broker.pem";
/// Its key.
pub const BROKER_KEY: &str = "broker.key";
/// Central's client certificate (for its connection to the broker).
pub const CENTRAL_CERT: &str = "central-tls.pem";
/// Its key.
pub const CENTRAL_KEY: &str = "central-tls.key";

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Refusing to replace an existing file.
    #[error("{0} exists already; refusing to replace it (move it away to start over)")]
    Exists(PathBuf),
    /// Certificate generation or parsing.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A bad gateway id or name.
    #[error("{0}")]
    Invalid(String),
    /// A certificate signing request that is malformed or asks for another name.
    #[error("certificate signing request: {0}")]
    Csr(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_owned(), source }
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists { PkiError::Exists(path.to_owned()) } else { io(path)(e) }
    })?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The current UTC year (certificates are valid from its first day).
fn this_year() -> i32 {
    let days = crate::ingest::now_ms() / 86_400_000;
    (1970 + days * 400 / 146_097) as i32
}

fn leaf(cn: &str, sans: &[String], usage: ExtendedKeyUsagePurpose, years: i32) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let y = this_year();
    params.not_before = rcgen::date_time_ymd(y, 1, 1);
    params.not_after = rcgen::date_time_ymd(y + years, 1, 1);
    Ok(params)
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    params: CertificateParams,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), PkiError> {
    for p in [cert_path, key_path] {
        if p.exists() {
            return Err(PkiError::Exists(p.to_owned()));
        }
    }
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write_new(key_path, &key.serialize_pem(), 0o600)?;
    write_new(cert_path, &cert.pem(), 0o644)
}

/// Creates a new park CA in `dir`, the broker's server certificate (CN `vigil-broker`; subject
/// alternative names `localhost`, `127.0.0.1`, `::1` and `extra_sans`, DNS names or IP addresses
/// gateways use to reach central) and central's client certificate (CN `central_cn`). Existing files
/// are never replaced. Returns the files written.
pub fn init(dir: &Path, central_cn: &str, extra_sans: &[String]) -> Result<Vec<PathBuf>, PkiError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    for name in [CA_CERT, CA_KEY, BROKER_CERT, BROKER_KEY, CENTRAL_CERT, CENTRAL_KEY] {
        if dir.join(name).exists() {
            return Err(PkiError::Exists(dir.join(name)));
        }
    }
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Vigil park CA");
    ca.distinguished_name = dn;
    let y = this_year();
    ca.not_before = rcgen::date_time_ymd(y, 1, 1);
    ca.not_after = rcgen::date_time_ymd(y + 20, 1, 1);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    write_new(&dir.join(CA_KEY), &ca_key.serialize_pem(), 0o600)?;
    write_new(&dir.join(CA_CERT), &ca_cert.pem(), 0o644)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut sans: Vec<String> = ["localhost", "127.0.0.1", "::1"].iter().map(|s| s.to_string()).collect();
    sans.extend(extra_sans.iter().cloned());
    let server = leaf("vigil-broker", &sans, ExtendedKeyUsagePurpose::ServerAuth, 10)?;
    issue(&issuer, server, &dir.join(BROKER_CERT), &dir.join(BROKER_KEY))?;
    let central = leaf(central_cn, &[], ExtendedKeyUsagePurpose::ClientAuth, 10)?;
    issue(&issuer, central, &dir.join(CENTRAL_CERT), &dir.join(CENTRAL_KEY))?;
    Ok([CA_CERT, CA_KEY, BROKER_CERT, BROKER_KEY, CENTRAL_CERT, CENTRAL_KEY].iter().map(|n| dir.join(n)).collect())
}

/// Issues gateway `id`'s client certificate (CN = `id`) with the CA in `dir`, into
/// `dir/gateways/{id}/`: `ca.pem`, `{id}.pem`, `{id}.key`. Returns that directory.
pub fn issue_gateway(dir: &Path, id: &str) -> Result<PathBuf, PkiError> {
    let gw = vigil_common::GatewayId::new(id).map_err(|e| PkiError::Invalid(format!("gateway id {id:?}: {e}")))?;
    let read = |name: &str| {
        let p = dir.join(name);
        fs::read_to_string(&p).map_err(io(&p))
    };
    let (ca_pem, ca_key) = (read(CA_CERT)?, read(CA_KEY)?);
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key)?)?;
    let out = dir.join("gateways").join(gw.as_str());
    fs::create_dir_all(&out).map_err(io(&out))?;
    let params = leaf(gw.as_str(), &[], ExtendedKeyUsagePurpose::ClientAuth, 10)?;
    issue(&issuer, params, &out.join(format!("{gw}.pem")), &out.join(format!("{gw}.key")))?;
    let ca_copy = out.join(CA_CERT);
    if !ca_copy.exists() {
        write_new(&ca_copy, &ca_pem, 0o644)?;
    }
    Ok(out)
}

/// The default name of the management API's server certificate (`api.pem`, `api.key`).
pub const API_NAME: &str = "api";

/// Issues a server certificate of central's with the CA in `dir`: `dir/{name}.pem` and
/// `dir/{name}.key` (CN `vigil-{name}`; subject alternative names `localhost`, `127.0.0.1`, `::1`
/// and `extra_sans`, the DNS names or IP addresses clients use to reach it; ten years). For the
/// management API's HTTPS ([`API_NAME`]; `[api] tls_cert_file`/`tls_key_file`). Existing files are
/// never replaced. Returns the certificate's and the key's paths.
pub fn issue_server(dir: &Path, name: &str, extra_sans: &[String]) -> Result<(PathBuf, PathBuf), PkiError> {
    let valid =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(PkiError::Invalid(format!(
            "server certificate name {name:?}: use 1 to 64 of A-Z a-z 0-9 - _ (it names the files)"
        )));
    }
    let read = |name: &str| {
        let p = dir.join(name);
        fs::read_to_string(&p).map_err(io(&p))
    };
    let (ca_pem, ca_key) = (read(CA_CERT)?, read(CA_KEY)?);
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key)?)?;
    let mut sans: Vec<String> = ["localhost", "127.0.0.1", "::1"].iter().map(|s| s.to_string()).collect();
    for s in extra_sans {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    let params = leaf(&format!("vigil-{name}"), &sans, ExtendedKeyUsagePurpose::ServerAuth, 10)?;
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    issue(&issuer, params, &cert, &key)?;
    Ok((cert, key))
}

/// Signs gateway `id`'s certificate signing request (PEM, as `vigil-edge enroll` makes it) with the
/// CA (`ca_pem`, `ca_key_pem`): the request's signature must verify and its subject's common name
/// must be `id`. Only the request's public key is taken from it; names, usages and validity are the
/// same as `issue-gateway` gives (client authentication, ten years). Returns the certificate (PEM).
pub fn sign_gateway_csr(ca_pem: &str, ca_key_pem: &str, csr_pem: &str, id: &str) -> Result<String, PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| PkiError::Csr(e.to_string()))?;
    let cn = match csr.params.distinguished_name.get(&DnType::CommonName) {
        Some(DnValue::Utf8String(s)) => s.clone(),
        Some(DnValue::PrintableString(s)) => s.as_str().to_owned(),
        Some(DnValue::Ia5String(s)) => s.as_str().to_owned(),
        Some(_) => return Err(PkiError::Csr("the common name has an unsupported string type".into())),
        None => return Err(PkiError::Csr("the subject has no common name".into())),
    };
    if cn != id {
        return Err(PkiError::Csr(format!("its common name is {cn:?}, not the gateway id {id:?}")));
    }
    let issuer = Issuer::from_ca_cert_pem(ca_pem, KeyPair::from_pem(ca_key_pem)?)?;
    let signed = CertificateSigningRequestParams {
        params: leaf(id, &[], ExtendedKeyUsagePurpose::ClientAuth, 10)?,
        public_key: csr.public_key,
    };
    Ok(signed.signed_by(&issuer)?.pem())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn init_then_issue_makes_a_chain_with_the_right_names_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), "vigil-central", &["central.park.example".into()]).unwrap();
        assert_eq!(files.len(), 6);
        for k in [CA_KEY, BROKER_KEY, CENTRAL_KEY] {
            assert_eq!(fs::metadata(dir.path().join(k)).unwrap().permissions().mode() & 0o777, 0o600, "{k}");
        }
        let der = |p: &Path| {
            use rustls_pki_types::pem::PemObject as _;
            rustls_pki_types::CertificateDer::from_pem_file(p).unwrap()
        };
        assert_eq!(super::super::tls::common_name(&der(&dir.path().join(CENTRAL_CERT))).unwrap(), "vigil-central");
        assert!(matches!(init(dir.path(), "x", &[]), Err(PkiError::Exists(_))));
        let out = issue_gateway(dir.path(), "gw-7").unwrap();
        assert_eq!(super::super::tls::common_name(&der(&out.join("gw-7.pem"))).unwrap(), "gw-7");
        assert_eq!(fs::read(out.join(CA_CERT)).unwrap(), fs::read(dir.path().join(CA_CERT)).unwrap());
        assert!(matches!(issue_gateway(dir.path(), "gw-7"), Err(PkiError::Exists(_))));
        assert!(matches!(issue_gateway(dir.path(), "bad id/x"), Err(PkiError::Invalid(_))));
        // The gateway certificate verifies against the CA as a client certificate.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&dir.path().join(CA_CERT))).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
        let now = rustls_pki_types::UnixTime::now();
        verifier.verify_client_cert(&der(&out.join("gw-7.pem")), &[], now).unwrap();
    }

    #[test]
    fn a_server_certificate_verifies_for_its_names_only_and_is_never_overwritten() {
        use rustls::client::danger::ServerCertVerifier as _;
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(issue_server(dir.path(), API_NAME, &[]), Err(PkiError::Io { .. })), "no CA yet");
        init(dir.path(), "vigil-central", &[]).unwrap();
        let sans = ["central.park.example".to_owned(), "10.1.2.3".to_owned()];
        let (cert, key) = issue_server(dir.path(), API_NAME, &sans).unwrap();
        assert_eq!((cert.clone(), key.clone()), (dir.path().join("api.pem"), dir.path().join("api.key")));
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let der = |p: &Path| {
            use rustls_pki_types::pem::PemObject as _;
            rustls_pki_types::CertificateDer::from_pem_file(p).unwrap()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&dir.path().join(CA_CERT))).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
        let now = rustls_pki_types::UnixTime::now();
        for name in ["central.park.example", "10.1.2.3", "localhost", "127.0.0.1"] {
            let server = rustls_pki_types::ServerName::try_from(name).unwrap();
            verifier.verify_server_cert(&der(&cert), &[], &server, &[], now).unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("other.park.example").unwrap();
        assert!(verifier.verify_server_cert(&der(&cert), &[], &other, &[], now).is_err());
        assert!(matches!(issue_server(dir.path(), API_NAME, &[]), Err(PkiError::Exists(_))));
        assert!(matches!(issue_server(dir.path(), "../x", &[]), Err(PkiError::Invalid(_))));
    }
}
