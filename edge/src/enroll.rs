//! `vigil-edge enroll`: the gateway enrols itself with a one-time token. Its Ed25519 signing key and
//! its TLS key are generated here and written owner-only; only the public key and a certificate
//! request (CN = gateway id) go to central (`POST /api/v1/enrol`, plain HTTP in this version), which
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

/// Enrols gateway `id` at `central` (`http://HOST:PORT`) with `token`, writing into `dir`; returns
/// the snippet's path.
pub async fn enroll(central: &str, token: &str, id: &str, dir: &Path) -> Result<PathBuf> {
    let gw = vigil_common::GatewayId::new(id).map_err(|e| anyhow::anyhow!("gateway id {id:?}: {e}"))?;
    let base = central.trim_end_matches('/');
    if base.starts_with("https://") {
        bail!("--central {central}: enrolment speaks plain HTTP in this version; give http://HOST:PORT");
    }
    let url = format!("{base}/api/v1/enrol");
    client::Url::parse(&url).map_err(|_| anyhow::anyhow!("--central {central:?}: expected http://HOST:PORT"))?;
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
    let answer = client::send(http::Method::POST, &url, &headers, body.to_string().into_bytes(), TIMEOUT, MAX_ANSWER)
        .await
        .map_err(|e| match e {
            FetchError::Connect { addr, why } => anyhow::anyhow!("cannot reach central at {addr}: {why}"),
            FetchError::Timeout(t) => anyhow::anyhow!("central at {base} did not answer within {t:?}"),
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
    Ok(path(SNIPPET))
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
    // Central's API, where bundles of updates central orders are downloaded from.
    let mut update = toml::Table::new();
    update.insert("central_url".into(), central.into());
    all.insert("update".into(), update.into());
    let body = toml::to_string(&all).context("writing the configuration snippet")?;
    Ok(format!(
        "# Written by `vigil-edge enroll`: merge into the gateway configuration (with [spool] and the sources).\n{body}"
    ))
}
