#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTPS on the management API over real sockets, with certificates from `pki init` and `pki
//! issue-server`: login with a client trusting the park CA (cookie `Secure`, the client address in
//! the API-call log), plain HTTP to the HTTPS port gets no API answer, a client trusting another CA
//! fails its handshake while the server goes on serving, a stalled handshake is cut at the timeout,
//! and connections over the cap are closed at accept; each counted on `/metrics`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject as _;
use support::{Answer, parse_answer as parse};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vigil_central::api::{ApiState, Role};
use vigil_central::config::ApiConfig;
use vigil_central::historian::{FileChunkStore, Historian};
use vigil_central::identity::{AuthConfig, NewUser};

const PASSWORD: &str = "Correct-Horse-7";

struct Api {
    port: u16,
    state: ApiState,
    /// The park CA (`pki/ca.pem`).
    ca: PathBuf,
    dir: tempfile::TempDir,
}

/// Central's API over HTTPS on 127.0.0.1 with a fresh park CA and an API certificate from it.
async fn start(handshake_timeout_ms: u64, max_connections: usize) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    vigil_central::broker::pki::init(&pki, "vigil-central", &[]).unwrap();
    let (cert, key) = vigil_central::broker::pki::issue_server(&pki, "api", &["central.park.example".into()]).unwrap();
    let store = FileChunkStore::open(&dir.path().join("chunks")).unwrap();
    let h = Historian::open(Box::new(store), 0, 1_000_000).unwrap();
    // secure_cookie left false on purpose: the HTTPS listener must make the cookie Secure itself.
    let settings = ApiConfig {
        tls_cert_file: Some(cert.clone()),
        tls_key_file: Some(key.clone()),
        tls_handshake_timeout_ms: handshake_timeout_ms,
        tls_max_connections: max_connections,
        ..ApiConfig::default()
    };
    let state =
        ApiState::open(dir.path(), settings, AuthConfig::default(), Arc::new(RwLock::new(h)), Arc::default(), None)
            .await
            .unwrap();
    let acceptor = vigil_central::api::tls::acceptor(&cert, &key).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(vigil_central::api::tls::serve(listener, state.clone(), acceptor));
    Api { port, state, ca: pki.join("ca.pem"), dir }
}

/// A TLS client configuration trusting only the CA in `ca`.
fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// One request over HTTPS to 127.0.0.1:`port` as `server_name`, trusting `tls`; the handshake's
/// error when it fails.
async fn https(
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Answer> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if method != "GET" {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    // The server closes after the answer (Connection: close); rustls may report the missing
    // close_notify as an error at the very end, after the whole answer was read.
    let read =
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf)).await.expect("answer within 60 s");
    if let Err(e) = read
        && buf.is_empty()
    {
        return Err(e);
    }
    Ok(parse(&buf))
}

impl Api {
    async fn user(&self, name: &str, role: Role) {
        let new = NewUser { name: name.into(), role, enterprises: None, password: PASSWORD.into(), must_change: false };
        self.state.identity.add_user(new, "test", "test", vigil_central::ingest::now_ms()).await.unwrap();
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        https(self.port, client_config(&self.ca), "localhost", "GET", path, token, None).await.unwrap()
    }

    /// `vigil_api_tls_*` value of the sample `name` (with labels) on `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let m = self.get("/metrics", None).await;
        assert_eq!(m.status, 200, "{}", m.body);
        let line = m.body.lines().find(|l| l.rsplit_once(' ').is_some_and(|(n, _)| n == name));
        line.and_then(|l| l.rsplit_once(' ')).and_then(|(_, v)| v.parse().ok()).unwrap_or_else(|| {
            panic!("{name} not on /metrics:\n{}", m.body);
        })
    }

    /// Waits until `name` reaches `want` (the server counts after the client has seen the outcome).
    async fn wait_metric(&self, name: &str, want: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(name).await;
            if v >= want {
                assert_eq!(v, want, "{name}");
                return;
            }
            assert!(Instant::now() < deadline, "{name} stayed {v}, expected {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_over_https_works_with_a_secure_cookie_and_the_client_address_logged() {
    let api = start(10_000, 64).await;
    api.user("olga", Role::Operator).await;
    api.user("aud", Role::Auditor).await;
    let login = serde_json::json!({ "user": "olga", "password": PASSWORD }).to_string();
    let tls = client_config(&api.ca);
    // Reached by the name in its certificate as well as by localhost.
    let a = https(api.port, tls.clone(), "central.park.example", "POST", "/api/v1/auth/login", None, Some(&login))
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let token = a.json()["token"].as_str().unwrap().to_owned();
    let cookie = a.header("set-cookie").unwrap();
    assert!(cookie.starts_with(&format!("vigil_session={token};")), "{cookie}");
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");
    let me = api.get("/api/v1/auth/me", Some(&token)).await;
    assert_eq!((me.status, me.json()["user"].as_str()), (200, Some("olga")), "{}", me.body);
    // The UI is served on the same HTTPS listener.
    let ui = api.get("/", None).await;
    assert_eq!(ui.status, 200);
    assert!(ui.header("content-type").unwrap().starts_with("text/html"), "{:?}", ui.headers);

    // The API-call log has the client's address (ConnectInfo reaches the handlers over TLS too).
    api.state.calls.flush().await;
    let aud = https(
        api.port,
        tls,
        "localhost",
        "POST",
        "/api/v1/auth/login",
        None,
        Some(&serde_json::json!({ "user": "aud", "password": PASSWORD }).to_string()),
    )
    .await
    .unwrap()
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls = api.get("/api/v1/api-calls?user=olga", Some(&aud)).await;
    assert_eq!(calls.status, 200, "{}", calls.body);
    let items = calls.json()["items"].as_array().unwrap().clone();
    let login_row = items.iter().find(|r| r["path"] == "/api/v1/auth/login").expect("the login is logged");
    assert!(login_row["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{login_row}");
    assert!(api.metric("vigil_api_tls_handshakes_total").await >= 5);
    assert_eq!(api.metric("vigil_api_tls_handshake_failures_total{reason=\"error\"}").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_https_port_gets_no_api_answer() {
    let api = start(10_000, 64).await;
    api.user("olga", Role::Operator).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    let body = serde_json::json!({ "user": "olga", "password": PASSWORD }).to_string();
    let req = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("closed");
    let a = parse(&buf);
    assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&buf));
    assert!(a.body.contains("HTTPS only") && a.body.contains("https://"), "{}", a.body);
    assert_eq!(a.header("content-type"), Some("text/plain"), "not a problem document: not the API answering");
    assert!(!a.body.contains("token"), "{}", a.body);
    api.wait_metric("vigil_api_tls_handshake_failures_total{reason=\"plain_http\"}", 1).await;
    // Nothing logged in: the request never reached the API (no call-log row either).
    api.state.calls.flush().await;
    let logged = api.state.calls.query(&Default::default(), None, 100).await.unwrap();
    assert!(
        logged.iter().all(|r| r.path != "/api/v1/auth/login"),
        "{:?}",
        logged.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_fails_the_handshake_and_the_server_keeps_serving() {
    let api = start(10_000, 64).await;
    let other = api.dir.path().join("other-pki");
    vigil_central::broker::pki::init(&other, "vigil-central", &[]).unwrap();
    let wrong = client_config(&other.join("ca.pem"));
    for _ in 0..3 {
        let e = https(api.port, wrong.clone(), "localhost", "GET", "/api/v1/health", None, None).await.err();
        let e = e.expect("a certificate of another CA is refused").to_string();
        assert!(e.contains("UnknownIssuer") || e.to_ascii_lowercase().contains("certificate"), "{e}");
    }
    // A name the certificate does not carry fails too, with the right CA.
    let right = client_config(&api.ca);
    let e = https(api.port, right, "elsewhere.park.example", "GET", "/api/v1/health", None, None).await.err();
    let e = e.expect("wrong name refused").to_string();
    assert!(e.contains("not valid for name") || e.contains("NotValidForName"), "{e}");
    // The loop goes on: the next good client is served.
    let h = api.get("/api/v1/health", None).await;
    assert_eq!(h.status, 200, "{}", h.body);
    api.wait_metric("vigil_api_tls_handshake_failures_total{reason=\"error\"}", 4).await;
    assert!(api.metric("vigil_api_tls_handshakes_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_at_the_timeout() {
    let api = start(500, 64).await;
    // One client sends nothing, one the first byte of a ClientHello and then nothing.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    partial.write_all(&[0x16]).await.unwrap();
    let t0 = Instant::now();
    for s in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("cut within 5 s");
        assert!(matches!(n, Ok(0) | Err(_)), "closed without an answer: {n:?}");
    }
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(400), "cut too early: {took:?}");
    assert!(took < Duration::from_secs(3), "cut too late: {took:?}");
    api.wait_metric("vigil_api_tls_handshake_failures_total{reason=\"timeout\"}", 2).await;
    assert_eq!(api.get("/api/v1/health", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_accept_and_counted() {
    let api = start(3_000, 2).await;
    let _a = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    let _b = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
    let mut buf = [0u8; 16];
    let t0 = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf)).await.expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(t0.elapsed() < Duration::from_secs(1));
    drop((_a, _b));
    // The two stalled slots are freed at the handshake timeout; then /metrics answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match https(api.port, client_config(&api.ca), "localhost", "GET", "/metrics", None, None).await {
            Ok(m) if m.status == 200 => break m.body,
            _ => {
                assert!(Instant::now() < deadline, "the slots were never freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(refused.contains("vigil_api_tls_connections_refused_total "), "{refused}");
    let n: u64 = refused
        .lines()
        .find_map(|l| l.strip_prefix("vigil_api_tls_connections_refused_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(n >= 1, "{refused}");
    assert!(refused.contains("vigil_api_tls_connections_open "), "{refused}");
}
