//! Central's API over HTTPS end to end with real processes: `vigil-central pki init` and `pki
//! issue-server` make the park CA and the API's certificate, `vigil-central run` serves the API on
//! HTTPS only (a plain-HTTP login is turned away), and `vigil-edge enroll --central https://...`
//! refuses without `--ca`, fails its handshake with another CA (the token stays usable), and
//! enrols with the park CA; the snippet's `[update] central_url` is the https URL. The enrolled
//! gateway then runs under `vigil-edge launch`, and an update central orders is downloaded over
//! HTTPS (trusting `[uplink.tls] ca_file`), installed and committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use vigil_tests::{binary, run_to_end, spawn, terminate};
use vigil_tools::broker::free_port;

/// One HTTPS request to 127.0.0.1:`port` trusting only the CA in `ca`; returns (status, body).
fn https(
    port: u16,
    ca: &Path,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let content = if method == "GET" {
        String::new()
    } else {
        format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len())
    };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}{content}\r\n")?;
    s.write_all(body)?;
    s.flush()?;
    let mut raw = Vec::new();
    // A close without close_notify after the whole answer is not an error of the answer.
    if let Err(e) = s.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(format!("no head: {text}")))?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_owned()
    };
    Ok((status, body))
}

struct Park {
    dir: tempfile::TempDir,
    api_port: u16,
    ca: PathBuf,
    admin: String,
}

impl Park {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn logs(&self) -> String {
        let log = |n: &str| std::fs::read_to_string(self.path(n)).unwrap_or_default();
        format!("launcher/agent:\n{}\ncentral:\n{}", log("edge.log"), log("central.log"))
    }

    fn json(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, answer) =
            https(self.api_port, &self.ca, method, path, Some(&self.admin), "application/json", body.as_bytes())
                .unwrap();
        (status, serde_json::from_str(&answer).unwrap_or(serde_json::Value::String(answer)))
    }

    fn updates(&self) -> serde_json::Value {
        let (status, v) = self.json("GET", "/api/v1/gateways/gw-tls/update", None);
        assert_eq!(status, 200, "{v}");
        v
    }

    fn wait(&self, what: &str, mut ok: impl FnMut(&serde_json::Value) -> bool) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let v = self.updates();
            if ok(&v) {
                return v;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for {what}: {v}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// `vigil-edge enroll` with `extra` arguments into `dir`.
fn enroll(central_url: &str, token: &str, dir: &Path, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["enroll", "--central", central_url, "--token", token, "--id", "gw-tls"];
    args.extend(["--dir", dir.to_str().unwrap()]);
    args.extend(extra);
    run_to_end("vigil-edge", &args)
}

#[test]
fn a_gateway_enrols_over_https_with_the_park_ca_and_downloads_an_ordered_update_over_https() {
    // `enroll --ca` and the HTTPS listener are new: never run stale binaries.
    vigil_tests::build_binaries().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let (broker_port, api_port) = (free_port().unwrap(), free_port().unwrap());
    let conf = d.join("central.toml");
    std::fs::write(
        &conf,
        format!(
            "data_dir = \"data\"\nkey_file = \"central.key\"\n\n[broker]\nlisten = \"127.0.0.1:{broker_port}\"\n\n\
             [ingest]\nregistry_reload_s = 1\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             tls_cert_file = \"pki/api.pem\"\ntls_key_file = \"pki/api.key\"\n"
        ),
    )
    .unwrap();
    run_to_end("vigil-central", &["keygen", "--out", &s(&d.join("central.key"))]).unwrap();
    let pki = d.join("pki");
    run_to_end("vigil-central", &["pki", "init", "--dir", &s(&pki)]).unwrap();
    let cert = run_to_end("vigil-central", &["pki", "issue-server", "--dir", &s(&pki)]).unwrap();
    assert_eq!(PathBuf::from(cert.trim()), pki.join("api.pem"));
    assert_eq!(std::fs::metadata(pki.join("api.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let password = run_to_end(
        "vigil-central",
        &["user", "--config", &s(&conf), "add", "admin", "--role", "park_admin", "--generate"],
    )
    .unwrap();
    let mut central = spawn("vigil-central", &["run", "--config", &s(&conf)], &d.join("central.log")).unwrap();
    let ca = pki.join("ca.pem");
    let login = serde_json::json!({ "user": "admin", "password": password.trim() }).to_string();
    let start = Instant::now();
    let admin = loop {
        match https(api_port, &ca, "POST", "/api/v1/auth/login", None, "application/json", login.as_bytes()) {
            Ok((200, body)) => {
                break serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"].as_str().unwrap().to_owned();
            }
            Ok((status, body)) => panic!("login: {status} {body}"),
            Err(e) => {
                let log = std::fs::read_to_string(d.join("central.log")).unwrap_or_default();
                assert!(start.elapsed() < Duration::from_secs(30), "central's HTTPS API did not come up: {e}\n{log}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    let park = Park { dir, api_port, ca: ca.clone(), admin };
    // Plain HTTP to the same port gets no session: the password never reached the API.
    let (status, body) = vigil_tests::http_request(api_port, "POST", "/api/v1/auth/login", None, Some(&login)).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("HTTPS only") && !body.contains("token"), "{body}");

    let (status, answer) = park.json(
        "POST",
        "/api/v1/enrolments",
        Some(&serde_json::json!({ "gateway": "gw-tls", "enterprise": "ent-a", "ttl_s": 600 })),
    );
    assert_eq!(status, 201, "{answer}");
    let token = answer["token"].as_str().unwrap().to_owned();
    let central_url = format!("https://127.0.0.1:{api_port}");

    // Without --ca: refused before anything is made or sent.
    let e = enroll(&central_url, &token, &d.join("gw-noca"), &[]).unwrap_err().to_string();
    assert!(e.contains("no --ca was given") && e.contains("pass --ca FILE") && e.contains("park CA"), "{e}");
    assert!(!d.join("gw-noca/gateway.key").exists());
    // With another park's CA: the handshake fails, nothing stays, and the token is not used up.
    let other = d.join("other-pki");
    run_to_end("vigil-central", &["pki", "init", "--dir", &s(&other)]).unwrap();
    let e = enroll(&central_url, &token, &d.join("gw-wrong"), &["--ca", &s(&other.join("ca.pem"))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("TLS with central") && e.contains("--ca"), "{e}");
    assert!(!d.join("gw-wrong/gateway.key").exists() && !d.join("gw-wrong/gateway-tls.key").exists());

    // With the park CA: enrolled; the snippet points updates at the https URL.
    let gw_dir = d.join("gw");
    let snippet_path = enroll(&central_url, &token, &gw_dir, &["--ca", &s(&ca)]).unwrap();
    let snippet = std::fs::read_to_string(snippet_path.trim()).unwrap();
    let mut config: toml::Table = toml::from_str(&snippet).unwrap();
    assert_eq!(config["update"]["central_url"].as_str(), Some(central_url.as_str()), "{snippet}");
    assert_eq!(config["uplink"]["port"].as_integer(), Some(i64::from(broker_port)));
    assert_eq!(std::fs::read(gw_dir.join("ca.pem")).unwrap(), std::fs::read(&ca).unwrap());

    // The enrolled gateway under the launcher, with updates ordered by central.
    let release_pub = run_to_end("vigil-edge", &["update", "keygen", "--out", &s(&d.join("release.key"))]).unwrap();
    std::fs::write(d.join("release-keys"), release_pub).unwrap();
    let update = config["update"].as_table_mut().unwrap();
    update.insert("root".into(), s(&d.join("agent")).into());
    update.insert("release_keys_file".into(), s(&d.join("release-keys")).into());
    update.insert("trial_window_s".into(), 30.into());
    update.insert("healthy_for_s".into(), 2.into());
    update.insert("max_attempts".into(), 2.into());
    update.insert("download_timeout_s".into(), 30.into());
    let gw_conf = d.join("gateway.toml");
    std::fs::write(
        &gw_conf,
        format!(
            "{}\n[spool]\npath = \"{}\"\nbatch_max_age_ms = 100\n\n[system]\ninterval_ms = 200\n",
            toml::to_string(&config).unwrap(),
            d.join("spool").display()
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("edge.log")).unwrap();
    let mut launcher = Command::new(binary("vigil-edge").unwrap())
        .args(["launch", "--config", &s(&gw_conf)])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    park.wait("the gateway's first state", |v| v["agent_version"].is_string());

    // A bundle of the "new agent" (a script exec'ing the real binary: the debug binary is above
    // the bundle limit), uploaded and ordered over HTTPS, downloaded by the gateway over HTTPS.
    let script = d.join("new-agent");
    std::fs::write(&script, format!("#!/bin/sh\nexec {} \"$@\"\n", binary("vigil-edge").unwrap().display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = d.join("2.0.0.bundle");
    let key = s(&d.join("release.key"));
    run_to_end(
        "vigil-edge",
        &["update", "pack", "--binary", &s(&script), "--version", "2.0.0", "--key", &key, "--out", &s(&bundle)],
    )
    .unwrap();
    let bytes = std::fs::read(&bundle).unwrap();
    let (status, answer) =
        https(api_port, &ca, "POST", "/api/v1/updates", Some(&park.admin), "application/octet-stream", &bytes).unwrap();
    assert_eq!(status, 201, "{answer}");
    let sha = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["sha256"].as_str().unwrap().to_owned();
    let (status, order) =
        park.json("POST", "/api/v1/gateways/gw-tls/update", Some(&serde_json::json!({ "bundle": sha })));
    assert_eq!(status, 202, "{order}");
    let id = order["id"].as_i64().unwrap();
    let v = park.wait("the ordered update to finish", |v| {
        v["items"].as_array().unwrap().iter().any(|o| {
            o["id"] == id && ["committed", "rolled_back", "failed"].contains(&o["status"].as_str().unwrap_or(""))
        })
    });
    let o = v["items"].as_array().unwrap().iter().find(|o| o["id"] == id).unwrap();
    assert_eq!(o["status"], "committed", "{v}\n{}", park.logs());
    assert!(o["downloads"].as_i64().unwrap() >= 1, "{o}");
    park.wait("the committed version reported as installed", |v| v["installed"] == "2.0.0");
    let central_log = std::fs::read_to_string(park.path("central.log")).unwrap();
    assert!(central_log.contains("api: listening (HTTPS)"), "{central_log}");
    assert!(!central_log.contains(&token), "the enrolment token reached the log");

    terminate(&mut launcher).unwrap();
    terminate(&mut central).unwrap();
}
