//! `vigil-edge enroll`: the gateway enrols itself with a one-time token. Its Ed25519 signing key and
//! its TLS key are generated here and written owner-only; only the public key and a certificate
//! request (CN = gateway id) go to central (`POST /api/v1/enrol`, over HTTPS when central's API has
//! a certificate, checked against the park CA given with `--ca`; plain HTTP otherwise), which
//! answers the certificate, the park CA, central's public key and the broker's address. The token
//! never travels: the request names it and carries a MAC keyed by it, and the answer is accepted only
//! with central's MAC by the same token (`vigil_common::enrolment`), so a man in the middle can
//! neither use the token nor slip the gateway another central key, CA or broker. A
//! `gateway-enrolled.toml` snippet with those settings is written for the technician to merge into
//! the gateway configuration.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper::http;
use vigil_common::enrolment;
use vigil_edge::sources::camera::client::{self, FetchError};

/// The signing key's file name in the output directory.
pub const SIGNING_KEY: &str = "gateway.key";
/// The TLS private key.
pub const TLS_KEY: &str = "gateway-tls.key";
/// The gateway's certificate.
pub const CERT: &str = "gateway.pem";
/// The park CA.
pub const CA: &str = "ca.pem";
/// The configuration snippet.
pub const SNIPPET: &str = "gateway-enrolled.toml";

/// Longest wait for central's answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read.
const MAX_ANSWER: usize = 256 * 1024;

#[derive(serde::Deserialize)]
struct Enrolled {
    gateway: String,
    enterprise: String,
    cert_pem: String,
    ca_pem: String,
    central_public_key: String,
    broker: Broker,
}

#[derive(serde::Deserialize)]
struct Broker {
    host: String,
    port: u16,
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", path.display()))
}

/// Removes the keys written before central refused: they were never registered.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Enrols gateway `id` at `central` (`https://HOST:PORT`, whose certificate must chain to the park
/// CA in `ca`, or `http://HOST:PORT`) with `token`, writing into `dir`; returns the snippet's path.
pub async fn enroll(central: &str, token: &str, id: &str, dir: &Path, ca: Option<&Path>) -> Result<PathBuf> {
    let gw = vigil_common::GatewayId::new(id).map_err(|e| anyhow::anyhow!("gateway id {id:?}: {e}"))?;
    let base = central.trim_end_matches('/');
    let url = format!("{base}/api/v1/enrol");
    // Before enrolment the gateway trusts nothing: over HTTPS it checks central by the CA it is
    // given, and without one it refuses rather than accept whatever certificate answers.
    let tls = if base.starts_with("https://") {
        let Some(ca) = ca else {
            bail!(
                "--central {central} is HTTPS, but no --ca was given: pass --ca FILE with the park CA \
                 certificate (ca.pem of `vigil-central pki init`, copied to this gateway) so central's \
                 certificate can be checked; an unchecked certificate is never accepted"
            );
        };
        client::Url::parse_https(&url)
            .map_err(|_| anyhow::anyhow!("--central {central:?}: expected https://HOST:PORT"))?;
        Some(client::trusting(ca).map_err(|e| anyhow::anyhow!("--ca: {e}"))?)
    } else {
        client::Url::parse(&url)
            .map_err(|_| anyhow::anyhow!("--central {central:?}: expected https://HOST:PORT or http://HOST:PORT"))?;
        None
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let path = |name: &str| dir.join(name);
    for name in [SIGNING_KEY, TLS_KEY, CERT, CA, SNIPPET] {
        if path(name).exists() {
            bail!(
                "{} exists already; enrol into an empty directory (or move the old files away)",
                path(name).display()
            );
        }
    }
    // The private keys are made and kept here; removed again unless the enrolment succeeds.
    let mut cleanup = Cleanup(Vec::new());
    let signing = vigil_common::keyfile::create(&path(SIGNING_KEY)).context("creating the gateway's signing key")?;
    cleanup.0.push(path(SIGNING_KEY));
    let tls_key = rcgen::KeyPair::generate().context("generating the TLS key")?;
    write_new(&path(TLS_KEY), &tls_key.serialize_pem(), 0o600)?;
    cleanup.0.push(path(TLS_KEY));
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("certificate request")?;
    params.distinguished_name.push(rcgen::DnType::CommonName, gw.as_str());
    let csr = params.serialize_request(&tls_key).context("making the certificate request")?;
    let csr_pem = csr.pem().context("encoding the certificate request")?;

    // The token stays here: central gets its id and a MAC keyed by it, and proves itself the same way.
    let token_key = enrolment::token_key(token);
    let public_key = signing.public_key().to_text();
    let body = serde_json::json!({
        "token_id": enrolment::token_id(&token_key),
        "mac": enrolment::request_mac(&token_key, &public_key, &csr_pem),
        "public_key": public_key,
        "csr": csr_pem,
    });
    let headers = [("content-type", "application/json".to_owned())];
    let body = body.to_string().into_bytes();
    let answer = match &tls {
        Some(tls) => client::send_tls(http::Method::POST, &url, tls.clone(), &headers, body, TIMEOUT, MAX_ANSWER).await,
        None => client::send(http::Method::POST, &url, &headers, body, TIMEOUT, MAX_ANSWER).await,
    }
    .map_err(|e| match e {
        FetchError::Connect { addr, why } => anyhow::anyhow!("cannot reach central at {addr}: {why}"),
        FetchError::Timeout(t) => anyhow::anyhow!("central at {base} did not answer within {t:?}"),
        FetchError::Tls { addr, why } => anyhow::anyhow!(
            "TLS with central at {addr} failed: {why}. Is --ca the park CA that signed central's API certificate \
             (`vigil-central pki issue-server`), and does that certificate name the host given in --central?"
        ),
        other => anyhow::anyhow!("enrolling at {url}: {other}"),
    })?;
    if answer.status != 200 {
        let detail = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).chars().take(300).collect());
        let what = match answer.status {
            401 | 410 => "central refused the enrolment token",
            400 => "central refused the enrolment request",
            404 => "central has no enrolment endpoint at this address",
            _ => "central could not enrol the gateway",
        };
        bail!("{what} (HTTP {}): {detail}", answer.status);
    }
    let mac = answer.headers.get(enrolment::ANSWER_MAC_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !enrolment::answer_mac_ok(&token_key, &answer.body, mac) {
        bail!(
            "central's answer is not authenticated by the enrolment token ({}): it was altered between this \
             gateway and central, or {base} is not the central that issued the token. Nothing was stored; \
             check the address and the network path, then enrol again (with a new token if central \
             reports this one used)",
            if mac.is_empty() { "no MAC" } else { "wrong MAC" }
        );
    }
    let e: Enrolled =
        serde_json::from_slice(&answer.body).context("central's enrolment answer is not what it should be")?;
    if e.gateway != gw.as_str() {
        bail!("central enrolled gateway {:?}, not {id:?}", e.gateway);
    }
    // Enrolled: from here on the keys are registered at central and must stay.
    cleanup.0.clear();
    write_new(&path(CERT), &e.cert_pem, 0o644)?;
    write_new(&path(CA), &e.ca_pem, 0o644)?;
    let text = snippet(&e, &dir, base)?;
    write_new(&path(SNIPPET), &text, 0o644)?;
    if let Some(ca) = ca
        && tls.is_some()
        && !same_certificates(&std::fs::read(ca).unwrap_or_default(), e.ca_pem.as_bytes())
    {
        // Update downloads check central's API by [uplink.tls] ca_file, the park CA just written.
        eprintln!(
            "warning: --ca {} is not the park CA central answered ({}); update downloads from {base} trust the \
             latter and fail unless central's API certificate is signed by it",
            ca.display(),
            path(CA).display()
        );
    }
    Ok(path(SNIPPET))
}

/// Whether two PEM texts hold the same certificates (in any order).
fn same_certificates(a: &[u8], b: &[u8]) -> bool {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let ders = |pem: &[u8]| {
        let mut v: Vec<Vec<u8>> =
            CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).map(|c| c.to_vec()).collect();
        v.sort();
        v
    };
    let (a, b) = (ders(a), ders(b));
    !a.is_empty() && a == b
}

fn snippet(e: &Enrolled, dir: &Path, central: &str) -> Result<String> {
    let file = |name: &str| toml::Value::String(dir.join(name).display().to_string());
    let mut gateway = toml::Table::new();
    gateway.insert("id".into(), e.gateway.clone().into());
    gateway.insert("enterprise".into(), e.enterprise.clone().into());
    gateway.insert("key_file".into(), file(SIGNING_KEY));
    let mut tls = toml::Table::new();
    tls.insert("ca_file".into(), file(CA));
    tls.insert("cert_file".into(), file(CERT));
    tls.insert("key_file".into(), file(TLS_KEY));
    let mut uplink = toml::Table::new();
    uplink.insert("host".into(), e.broker.host.clone().into());
    uplink.insert("port".into(), i64::from(e.broker.port).into());
    uplink.insert("central_keys".into(), toml::Value::Array(vec![e.central_public_key.clone().into()]));
    uplink.insert("tls".into(), tls.into());
    let mut all = toml::Table::new();
    all.insert("gateway".into(), gateway.into());
    all.insert("uplink".into(), uplink.into());
    // Central's API, where bundles of updates central orders are downloaded from (as enrolled:
    // https:// when enrolled over HTTPS, checked against [uplink.tls] ca_file).
    let mut update = toml::Table::new();
    update.insert("central_url".into(), central.into());
    all.insert("update".into(), update.into());
    let body = toml::to_string(&all).context("writing the configuration snippet")?;
    Ok(format!(
        "# Written by `vigil-edge enroll`: merge into the gateway configuration (with [spool] and the sources).\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn https_without_a_ca_is_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gw");
        let e = enroll("https://127.0.0.1:1", "t", "gw-1", &out, None).await.unwrap_err().to_string();
        assert!(e.contains("no --ca was given") && e.contains("pass --ca FILE"), "{e}");
        assert!(!out.exists(), "nothing written");
        let e = enroll("https://127.0.0.1:1", "t", "gw-1", &out, Some(&dir.path().join("none.pem")))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ca") && e.contains("none.pem"), "{e}");
        assert!(!out.exists(), "nothing written");
    }

    #[test]
    fn certificates_compare_by_content_not_by_text() {
        let a = rcgen::generate_simple_self_signed(vec!["a".into()]).unwrap().cert.pem();
        let b = rcgen::generate_simple_self_signed(vec!["b".into()]).unwrap().cert.pem();
        assert!(same_certificates(a.as_bytes(), format!("\n{a}").as_bytes()));
        assert!(same_certificates(format!("{a}{b}").as_bytes(), format!("{b}{a}").as_bytes()));
        assert!(!same_certificates(a.as_bytes(), b.as_bytes()));
        assert!(!same_certificates(b"", b""));
    }
}
