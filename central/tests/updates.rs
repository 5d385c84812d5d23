#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gateway updates through the API over a real bound listener: bundle uploads (checked header and
//! length, the larger size limit on that route only, stored by SHA-256), the list, orders with the
//! role matrix and enterprise scoping, download tokens (only for their order, expiring, bounded),
//! and order status driven by the update history in the gateway's signed state.

mod support;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::Digest as _;
use support::{Answer, login, request};
use vigil_central::api::{ApiState, Role};
use vigil_central::config::ApiConfig;
use vigil_central::historian::{FileChunkStore, Historian};
use vigil_central::identity::{AuthConfig, NewUser};
use vigil_central::updates::Updates;
use vigil_common::{CommandAction, EnterpriseId, GatewayId, GatewayState, SigningKey, UpdateRecord, UpdateReport};

const PASSWORD: &str = "Correct-Horse-7";
const TARGET: &str = "x86_64-unknown-linux-gnu";

struct Api {
    port: u16,
    state: ApiState,
    dir: tempfile::TempDir,
}

/// Central's API with updates (orders stored, not sent: no broker here) over a fresh data
/// directory; gateways gw-a (ent-a) and gw-b (ent-b); a user per role (technicians and enterprise
/// users confined to ent-a, plus `tech-b` confined to ent-b).
async fn start() -> (Api, Vec<(Role, String)>, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileChunkStore::open(&dir.path().join("chunks")).unwrap();
    let h = Historian::open(Box::new(store), 0, 1_000_000).unwrap();
    let settings = ApiConfig { max_body_bytes: 4096, ..ApiConfig::default() };
    let mut state =
        ApiState::open(dir.path(), settings, AuthConfig::default(), Arc::new(RwLock::new(h)), Arc::default(), None)
            .await
            .unwrap();
    let updates =
        Updates::open(dir.path(), &state.registry, SigningKey::from_seed(&[9; 32]), None, Arc::new(AtomicU64::new(1)))
            .await
            .unwrap();
    state.updates = Some(updates);
    for (gw, ent, seed) in [("gw-a", "ent-a", 1u8), ("gw-b", "ent-b", 2)] {
        let key = SigningKey::from_seed(&[seed; 32]).public_key();
        state.registry.add(&GatewayId::new(gw).unwrap(), &EnterpriseId::new(ent).unwrap(), &key, 1).await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(vigil_central::api::serve(listener, state.clone()));
    let api = Api { port, state, dir };
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let name = role.as_str().replace('_', "-");
        let scope: Option<&[&str]> = match role {
            Role::EnterpriseUser | Role::FieldTechnician => Some(&["ent-a"]),
            _ => None,
        };
        api.user(&name, role, scope).await;
        tokens.push((role, login(api.port, &name, PASSWORD).await));
    }
    api.user("tech-b", Role::FieldTechnician, Some(&["ent-b"])).await;
    let tech_b = login(api.port, "tech-b", PASSWORD).await;
    (api, tokens, tech_b)
}

impl Api {
    async fn user(&self, name: &str, role: Role, enterprises: Option<&[&str]>) {
        let new = NewUser {
            name: name.into(),
            role,
            enterprises: enterprises.map(|l| l.iter().map(|e| e.to_string()).collect()),
            password: PASSWORD.into(),
            must_change: false,
        };
        self.state.identity.add_user(new, "test", "test", vigil_central::ingest::now_ms()).await.unwrap();
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        request(self.port, "GET", path, Some(token), &[], None).await
    }

    async fn post(&self, path: &str, token: &str, body: serde_json::Value) -> Answer {
        request(self.port, "POST", path, Some(token), &[], Some(&body.to_string())).await
    }

    async fn upload(&self, token: &str, bundle: &[u8]) -> (u16, serde_json::Value) {
        let (status, _, body) = raw(self.port, "POST", "/api/v1/updates", &[("Authorization", token)], bundle).await;
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    async fn order(&self, token: &str, gateway: &str, body: serde_json::Value) -> Answer {
        self.post(&format!("/api/v1/gateways/{gateway}/update"), token, body).await
    }

    fn updates(&self) -> &Updates {
        self.state.updates.as_ref().unwrap()
    }

    /// The download token of order `id` (a fresh one, as a send would make).
    async fn token_of(&self, gateway: &str, id: i64) -> String {
        let cmd = self.updates().command(&GatewayId::new(gateway).unwrap(), id).await.unwrap().unwrap();
        match cmd.action {
            CommandAction::Update { token, order, path, .. } => {
                assert_eq!(order, id as u64);
                assert_eq!(path, "/api/v1/updates/download");
                token
            }
            other => panic!("not an update command: {other:?}"),
        }
    }

    async fn download(&self, token: Option<&str>) -> (u16, Vec<u8>) {
        let headers: Vec<(&str, &str)> = token.map(|t| vec![("x-vigil-download-token", t)]).unwrap_or_default();
        let (status, _, body) = raw(self.port, "GET", "/api/v1/updates/download", &headers, b"").await;
        (status, body)
    }
}

/// A raw HTTP/1.1 exchange with a byte body; `Authorization` values are sent as bearer tokens.
async fn raw(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        let v = if *k == "Authorization" { format!("Bearer {v}") } else { (*v).to_owned() };
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" {
        req.push_str(&format!("Content-Type: application/octet-stream\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (413) before the whole body is written; that is fine.
    let _ = s.write_all(&bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf)).await.expect("answer within 60 s");
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a header end");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, buf[end + 4..].to_vec())
}

/// A bundle in the format `vigil-edge update pack` writes, signed with a release key.
fn bundle(version: &str, target: &str, binary: &[u8]) -> Vec<u8> {
    let key = SigningKey::from_seed(&[42; 32]);
    let header = serde_json::json!({
        "version": version, "target": target, "binary_len": binary.len(), "config_len": 0,
        "created_ms": 1_700_000_000_000i64, "key_id": key.public_key().key_id().to_string(),
    })
    .to_string();
    let mut b = b"VIGILUPD".to_vec();
    b.push(1);
    b.extend_from_slice(&(header.len() as u32).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(binary);
    let digest: [u8; 32] = sha2::Sha256::digest(&b).into();
    let sig = key.sign_detached(b"vigil/v1 update bundle\0", &digest);
    b.extend_from_slice(&sig);
    b
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn token(tokens: &[(Role, String)], role: Role) -> &str {
    &tokens.iter().find(|(r, _)| *r == role).unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_checked_stored_by_hash_and_listed() {
    let (api, tokens, _) = start().await;
    let admin = token(&tokens, Role::ParkAdmin);
    // Larger than the API's body limit (4096 here): only this route takes bundles that size.
    let binary: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let b = bundle("2.0.0", TARGET, &binary);
    let (status, v) = api.upload(admin, &b).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["sha256"], sha(&b));
    assert_eq!((v["version"].as_str(), v["target"].as_str()), (Some("2.0.0"), Some(TARGET)));
    assert_eq!(v["size"], b.len() as u64);
    assert_eq!(v["binary_len"], 100_000);
    assert_eq!(v["uploaded_by"], "park-admin");
    let stored = api.dir.path().join("updates").join(sha(&b));
    assert_eq!(std::fs::read(&stored).unwrap(), b, "kept under its SHA-256");
    let (status, again) = api.upload(admin, &b).await;
    assert_eq!(status, 201);
    assert_eq!(again["uploaded_ms"], v["uploaded_ms"], "an identical upload answers the stored bundle");

    // Garbage is refused with a problem document naming what is wrong.
    let mut trailing = b.clone();
    trailing.extend_from_slice(b"xyz");
    let mut wrong_format = b.clone();
    wrong_format[8] = 7;
    for (bytes, expect) in [
        (b"this is not an update bundle, it is text that is long enough to be checked ...".to_vec(), "bad magic"),
        (b"VIGIL".to_vec(), "too short"),
        (Vec::new(), "too short"),
        (b[..b.len() - 100].to_vec(), "truncated"),
        (trailing, "3 unexpected bytes"),
        (wrong_format, "unsupported bundle format 7"),
        (bundle("../../etc", TARGET, b"x"), "version"),
    ] {
        let (status, v) = api.upload(admin, &bytes).await;
        assert_eq!(status, 400, "{expect}: {v}");
        assert!(v["detail"].as_str().unwrap().contains(expect), "{expect}: {v}");
    }
    // Larger than any bundle: refused from its Content-Length before the body is read.
    let big = format!(
        "POST /api/v1/updates HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {admin}\r\n\
         Content-Length: {}\r\n\r\n",
        300u64 * 1024 * 1024
    );
    let a = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.unwrap();
        s.write_all(big.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await.unwrap().unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    };
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    // Other routes keep the API's limit.
    let a = api.order(admin, "gw-a", serde_json::json!({ "bundle": "a".repeat(8000) })).await;
    assert_eq!(a.status, 413, "{}", a.body);
    // Refusals leave no temporary files.
    let names: Vec<String> = std::fs::read_dir(api.dir.path().join("updates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [sha(&b)]);

    let b2 = bundle("2.1.0", "aarch64-unknown-linux-gnu", b"arm");
    assert_eq!(api.upload(admin, &b2).await.0, 201);
    let list = api.get("/api/v1/updates", admin).await.json();
    let versions: Vec<&str> =
        list["items"].as_array().unwrap().iter().map(|i| i["version"].as_str().unwrap()).collect();
    assert_eq!(versions.len(), 2, "{list}");
    assert!(versions.contains(&"2.0.0") && versions.contains(&"2.1.0"));
    let metrics = request(api.port, "GET", "/metrics", None, &[], None).await.body;
    assert!(metrics.contains("vigil_update_uploads_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_enterprise_scope_decide_who_uploads_lists_orders_and_reads() {
    let (api, tokens, tech_b) = start().await;
    let b = bundle("2.0.0", TARGET, b"#!/bin/sh\n");
    let sha = sha(&b);
    for (role, t) in &tokens {
        let (status, v) = api.upload(t, &b).await;
        let expect = if *role == Role::ParkAdmin { 201 } else { 403 };
        assert_eq!(status, expect, "{role} uploads: {v}");
        if expect == 403 {
            assert!(v["detail"].as_str().unwrap().contains(role.as_str()), "{v}");
        }
        let list = api.get("/api/v1/updates", t).await;
        let expect = if matches!(role, Role::ParkAdmin | Role::FieldTechnician) { 200 } else { 403 };
        assert_eq!(list.status, expect, "{role} lists: {}", list.body);
        let order = api.order(t, "gw-a", serde_json::json!({ "bundle": sha })).await;
        let expect = if matches!(role, Role::ParkAdmin | Role::FieldTechnician) { 202 } else { 403 };
        assert_eq!(order.status, expect, "{role} orders: {}", order.body);
        let status = api.get("/api/v1/gateways/gw-a/update", t).await;
        let expect = if matches!(role, Role::SecurityAdmin | Role::Auditor) { 403 } else { 200 };
        assert_eq!(status.status, expect, "{role} reads: {}", status.body);
    }
    for anonymous in [
        request(api.port, "GET", "/api/v1/updates", None, &[], None).await,
        request(api.port, "GET", "/api/v1/gateways/gw-a/update", None, &[], None).await,
        request(api.port, "POST", "/api/v1/gateways/gw-a/update", None, &[], Some("{}")).await,
    ] {
        assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    }
    assert_eq!(raw(api.port, "POST", "/api/v1/updates", &[], &b).await.0, 401);

    // Another enterprise's gateway, or one that does not exist, is 404 for a confined technician.
    let admin = token(&tokens, Role::ParkAdmin);
    let tech_a = token(&tokens, Role::FieldTechnician);
    for (t, gw) in [(tech_a, "gw-b"), (tech_b.as_str(), "gw-a"), (admin, "gw-nope")] {
        let a = api.order(t, gw, serde_json::json!({ "bundle": sha })).await;
        assert_eq!(a.status, 404, "{gw}: {}", a.body);
        assert!(!a.body.contains("ent-"), "leaks: {}", a.body);
    }
    let eu = token(&tokens, Role::EnterpriseUser);
    assert_eq!(api.get("/api/v1/gateways/gw-b/update", eu).await.status, 404);
    assert_eq!(api.order(&tech_b, "gw-b", serde_json::json!({ "bundle": sha })).await.status, 202);

    // Bad orders name what is wrong.
    for (body, status, expect) in [
        (serde_json::json!({ "bundle": "0".repeat(64) }), 404, "no bundle"),
        (serde_json::json!({ "bundle": "XYZ" }), 400, "SHA-256"),
        (serde_json::json!({ "bundle": sha, "token_ttl_s": 0 }), 400, "token_ttl_s"),
        (serde_json::json!({ "bundle": sha, "token_ttl_s": 100_000 }), 400, "token_ttl_s"),
        (serde_json::json!({ "bundle": sha, "force": true }), 422, "force"),
        (serde_json::json!({}), 422, "bundle"),
    ] {
        let a = api.order(admin, "gw-a", body.clone()).await;
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        assert!(a.body.contains(expect), "{body}: {}", a.body);
    }

    // Each new order supersedes the unanswered ones; the list is newest first.
    let list = api.get("/api/v1/gateways/gw-a/update", admin).await.json();
    let statuses: Vec<&str> = list["items"].as_array().unwrap().iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.first(), Some(&"pending"), "{list}");
    assert!(statuses[1..].iter().all(|s| *s == "superseded"), "{list}");
    assert_eq!(list["items"][0]["bundle"], sha);
    assert_eq!(list["items"][0]["version"], "2.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_needs_its_orders_unexpired_token() {
    let (api, tokens, _) = start().await;
    let admin = token(&tokens, Role::ParkAdmin);
    let b = bundle("2.0.0", TARGET, &vec![5u8; 200_000]);
    assert_eq!(api.upload(admin, &b).await.0, 201);
    let a = api.order(admin, "gw-a", serde_json::json!({ "bundle": sha(&b) })).await;
    assert_eq!(a.status, 202, "{}", a.body);
    let id = a.json()["id"].as_i64().unwrap();
    let t = api.token_of("gw-a", id).await;

    assert_eq!(api.download(None).await.0, 401, "no token");
    assert_eq!(api.download(Some(&"f".repeat(64))).await.0, 401, "unknown token");
    let (status, body) = api.download(Some(&t)).await;
    assert_eq!(status, 200);
    assert_eq!(body, b, "the bundle, byte for byte");
    let order = &api.get("/api/v1/gateways/gw-a/update", admin).await.json()["items"][0];
    assert_eq!((order["status"].as_str(), order["downloads"].as_i64()), (Some("downloading"), Some(1)), "{order}");
    // Bounded: the retries of one gateway, not an open mirror.
    for _ in 1..8 {
        assert_eq!(api.download(Some(&t)).await.0, 200);
    }
    let (status, body) = api.download(Some(&t)).await;
    assert_eq!(status, 410);
    assert!(String::from_utf8_lossy(&body).contains("used up"));
    // A fresh token for the same order works (what a re-send makes).
    let t2 = api.token_of("gw-a", id).await;
    assert_eq!(api.download(Some(&t2)).await.0, 200);

    // Expired.
    let a = api.order(admin, "gw-b", serde_json::json!({ "bundle": sha(&b), "token_ttl_s": 1 })).await;
    let short = api.token_of("gw-b", a.json()["id"].as_i64().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = api.download(Some(&short)).await;
    assert_eq!(status, 410);
    assert!(String::from_utf8_lossy(&body).contains("expired"), "{}", String::from_utf8_lossy(&body));

    // A superseded order's token is dead.
    let a = api.order(admin, "gw-a", serde_json::json!({ "bundle": sha(&b) })).await;
    assert_eq!(a.status, 202);
    let (status, body) = api.download(Some(&t2)).await;
    assert_eq!(status, 410);
    assert!(String::from_utf8_lossy(&body).contains("superseded"));
    // The API-call log never holds a token.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let db = std::fs::read(api.dir.path().join("access.db-wal")).unwrap_or_default();
    assert!(!db.windows(t.len()).any(|w| w == t.as_bytes()), "a download token reached the call log");
}

fn state(report: UpdateReport) -> GatewayState {
    GatewayState {
        gateway: GatewayId::new("gw-a").unwrap(),
        online: true,
        ts_ms: vigil_central::ingest::now_ms(),
        epoch: 1,
        next_seq: 0,
        version: "1.0.0".into(),
        spool: Default::default(),
        config: Default::default(),
        update: report,
        clock: Default::default(),
    }
}

fn rec(event: &str, version: &str, detail: String) -> UpdateRecord {
    UpdateRecord { ts_ms: 1_000, event: event.into(), version: version.into(), detail }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_reported_history_decides_each_orders_status() {
    let (api, tokens, _) = start().await;
    let admin = token(&tokens, Role::ParkAdmin);
    let ent = EnterpriseId::new("ent-a").unwrap();
    let b = bundle("2.0.0", TARGET, b"new agent");
    assert_eq!(api.upload(admin, &b).await.0, 201);
    let sha = sha(&b);
    async fn order(api: &Api, admin: &str, sha: &str) -> i64 {
        api.order(admin, "gw-a", serde_json::json!({ "bundle": sha })).await.json()["id"].as_i64().unwrap()
    }
    async fn status(api: &Api, admin: &str, id: i64) -> (String, String, serde_json::Value) {
        let list = api.get("/api/v1/gateways/gw-a/update", admin).await.json();
        let o = list["items"].as_array().unwrap().iter().find(|o| o["id"] == id).unwrap().clone();
        (o["status"].as_str().unwrap().to_owned(), o["detail"].as_str().unwrap_or("").to_owned(), list)
    }

    let refused = order(&api, admin, &sha).await;
    let why = "bundle refused, nothing was changed: bad signature: the bundle was altered after signing";
    let mut report = UpdateReport {
        installed: None,
        on_trial: None,
        history: vec![rec("refused", "2.0.0", format!("order {refused}: {why}"))],
    };
    api.updates().on_state(&state(report.clone()), &ent).await.unwrap();
    let (s, detail, _) = status(&api, admin, refused).await;
    assert_eq!((s.as_str(), detail.as_str()), ("failed", why));

    let good = order(&api, admin, &sha).await;
    report.history.push(rec("installed", "2.0.0", format!("order {good}: switched; on trial until healthy")));
    report.on_trial = Some("2.0.0".into());
    report.installed = Some("2.0.0".into());
    let st = state(report.clone());
    api.updates().on_state(&st, &ent).await.unwrap();
    api.state.gateways.record(&st, vigil_central::ingest::now_ms());
    let (s, _, list) = status(&api, admin, good).await;
    assert_eq!(s, "on_trial");
    assert_eq!(list["on_trial"], "2.0.0");
    assert_eq!(list["history"].as_array().unwrap().len(), 2);
    report.history.push(rec("committed", "2.0.0", format!("order {good}: healthy for 2 s")));
    report.on_trial = None;
    api.updates().on_state(&state(report.clone()), &ent).await.unwrap();
    assert_eq!(status(&api, admin, good).await.0, "committed");
    assert_eq!(status(&api, admin, refused).await.0, "failed", "a final status stays");

    let back = order(&api, admin, &sha).await;
    report.history.push(rec("installed", "2.0.0", format!("order {back}: switched; on trial until healthy")));
    report.history.push(rec("rolled_back", "2.0.0", format!("order {back}: not healthy within 10 s")));
    api.updates().on_state(&state(report.clone()), &ent).await.unwrap();
    let (s, detail, _) = status(&api, admin, back).await;
    assert_eq!((s.as_str(), detail.as_str()), ("rolled_back", "not healthy within 10 s"));

    // An order the gateway has not answered stays pending (and its token keeps working).
    let open = order(&api, admin, &sha).await;
    api.updates().on_state(&state(report), &ent).await.unwrap();
    assert_eq!(status(&api, admin, open).await.0, "pending");
}
