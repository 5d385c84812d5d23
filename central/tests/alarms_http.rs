#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The alarm API over a real socket: every endpoint, status codes, refused transitions (409),
//! role checks (403), enterprise scoping (404), filters, cursor pagination, KPIs as JSON and CSV,
//! and the Server-Sent Events stream (changes, Last-Event-ID replay, resync, keep-alive).
//!
//! Every caller is a real user of the identity store, logged in through `POST /api/v1/auth/login`;
//! requests carry its bearer token through the real authentication layer.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::sync::{Mutex as StdMutex, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use vigil_central::alarms::live::Hub;
use vigil_central::alarms::{AlarmConfig, AlarmEngine};
use vigil_central::api::ApiState;
use vigil_central::api::alarms::AlarmServices;
use vigil_central::config::ApiConfig;
use vigil_central::identity::{AuthConfig, NewUser};
use vigil_common::{GatewayId, PointId, Sample};

mod support;

const DEFS: &str = r#"
[engine]
late_after_s = 1000000000

[[point]]
id = "TK101.LT"
gateway = "gw-a"
enterprise = "ent-a"
grade = "A"
hh = 90.0
h = 80.0

[[point]]
id = "TK201.PT"
gateway = "gw-b"
enterprise = "ent-b"
grade = "C"
h = 5.0

[[point]]
id = "TK301.TT"
gateway = "gw-c"
grade = "B"
h = 50.0
"#;

struct Env {
    _dir: tempfile::TempDir,
    engine: Arc<Mutex<AlarmEngine>>,
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// Bearer tokens of the test users, by (API address, user name): filled by [`env`], read by requests.
static TOKENS: OnceLock<StdMutex<HashMap<(SocketAddr, String), String>>> = OnceLock::new();

fn token(addr: SocketAddr, user: &str) -> String {
    let map = TOKENS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    map.get(&(addr, user.to_owned())).cloned().unwrap_or_else(|| panic!("no test user {user}"))
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.path().join("alarms.db"))
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal),
        )
        .await
        .unwrap();
    let mut engine = AlarmEngine::open_sqlite(pool, AlarmConfig::from_toml("defs", DEFS).unwrap()).await.unwrap();
    // gw-c's enterprise comes from the registry, as `vigil-central run` sets it.
    engine.set_gateway_enterprise("gw-c", "ent-c");
    let hub = Hub::new(vigil_central::ingest::now_ms());
    tokio::spawn(hub.clone().run(engine.subscribe()));
    let engine = Arc::new(Mutex::new(engine));
    let chunks = vigil_central::historian::FileChunkStore::open(&dir.path().join("chunks")).unwrap();
    let historian = vigil_central::historian::Historian::open(Box::new(chunks), 0, 10_000).unwrap();
    let mut state = ApiState::open(
        dir.path(),
        ApiConfig::default(),
        AuthConfig::default(),
        Arc::new(RwLock::new(historian)),
        Arc::default(),
        Some(engine.clone()),
    )
    .await
    .unwrap();
    state.alarm_services = Some(Arc::new(AlarmServices { hub, feed: Arc::default(), notify: None }));
    let identity = state.identity.clone();
    let app = vigil_central::api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Client::builder(TokioExecutor::new()).build_http();
    for (user, role, enterprises) in [OP, OP2, ADMIN, ADMIN2, AUDITOR, ENT_A, ENT_B, SECADM, TECH] {
        let password = identity.generate_password(user).unwrap();
        let new = NewUser {
            name: user.to_owned(),
            role: serde_json::from_value(json!(role)).unwrap(),
            enterprises: enterprises.map(|e| vec![e.to_owned()]),
            password: password.clone(),
            must_change: false,
        };
        identity.add_user(new, "test", "127.0.0.1", vigil_central::ingest::now_ms()).await.unwrap();
        let t = support::login(addr.port(), user, &password).await;
        TOKENS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((addr, user.to_owned()), t);
    }
    Env { _dir: dir, engine, addr, client }
}

/// Who calls: (user, role, enterprises).
type Who<'a> = (&'a str, &'a str, Option<&'a str>);
const OP: Who = ("olga", "operator", None);
const OP2: Who = ("oskar", "operator", None);
const ADMIN: Who = ("pat", "park_admin", None);
const AUDITOR: Who = ("aude", "auditor", None);
const ENT_A: Who = ("anna", "enterprise_user", Some("ent-a"));
const ENT_B: Who = ("bert", "enterprise_user", Some("ent-b"));
const ADMIN2: Who = ("pia", "park_admin", None);
const SECADM: Who = ("sam", "security_admin", None);
const TECH: Who = ("tina", "field_technician", Some("ent-a"));

impl Env {
    async fn call(&self, method: &str, path: &str, who: Option<Who<'_>>, body: Option<Value>) -> (u16, String, String) {
        let mut b = hyper::Request::builder().method(method).uri(format!("http://{}{path}", self.addr));
        if let Some((user, _, _)) = who {
            b = b.header("authorization", format!("Bearer {}", token(self.addr, user)));
        }
        let body = body.map(|v| v.to_string()).unwrap_or_default();
        let resp = self.client.request(b.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (status, ctype, text)
    }

    async fn get(&self, path: &str, who: Who<'_>) -> (u16, Value) {
        let (s, _, t) = self.call("GET", path, Some(who), None).await;
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    async fn post(&self, path: &str, who: Who<'_>, body: Value) -> (u16, Value) {
        let (s, _, t) = self.call("POST", path, Some(who), Some(body)).await;
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    async fn sample(&self, point: &str, gateway: &str, ts: i64, v: f64) {
        let s = Sample::good(ts, v);
        let mut e = self.engine.lock().await;
        e.on_sample(&GatewayId::new(gateway).unwrap(), &PointId::new(point).unwrap(), &s, ts).await.unwrap();
    }
}

fn now() -> i64 {
    vigil_central::ingest::now_ms()
}

fn ids(v: &Value) -> Vec<i64> {
    v["items"].as_array().unwrap().iter().map(|a| a["id"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn the_closed_loop_over_http_with_refused_transitions() {
    let env = env().await;
    let t = now();
    env.sample("TK101.LT", "gw-a", t, 95.0).await;
    let (s, list) = env.get("/api/v1/alarms?condition=HiHi", OP).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&env.get("/api/v1/alarms", OP).await.1).len(), 2, "HH and H");
    let id = ids(&list)[0];
    assert_eq!(list["items"][0]["state"], "active_unacked");
    assert_eq!(list["items"][0]["enterprise"], "ent-a");
    assert_eq!(list["next_cursor"], Value::Null);

    let (s, a) = env.get(&format!("/api/v1/alarms/{id}"), AUDITOR).await;
    assert_eq!((s, a["key"]["condition"].as_str()), (200, Some("HiHi")));

    // Verify before acknowledge: the state machine refuses, naming the stage.
    let (s, p) = env.post(&format!("/api/v1/alarms/{id}/verify"), OP, json!({"how": "camera 3"})).await;
    assert_eq!(s, 409, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("Raised"), "{p}");
    assert_eq!(p["status"], 409);

    let (s, a) = env.post(&format!("/api/v1/alarms/{id}/acknowledge"), OP, json!({"comment": "seen"})).await;
    assert_eq!((s, a["stage"].as_str(), a["state"].as_str()), (200, Some("Acknowledged"), Some("active_acked")));
    let (s, p) = env.post(&format!("/api/v1/alarms/{id}/acknowledge"), OP, json!({})).await;
    assert_eq!(s, 409, "{p}");
    assert_eq!(env.post(&format!("/api/v1/alarms/{id}/verify"), OP, json!({"how": "trend"})).await.0, 200);
    // Bad input is 400, naming the field.
    let (s, p) = env.post(&format!("/api/v1/alarms/{id}/dispatch"), OP, json!({"note": "x"})).await;
    assert_eq!(s, 400);
    assert!(p["detail"].as_str().unwrap().contains("to"), "{p}");
    let (s, _) = env.post(&format!("/api/v1/alarms/{id}/dispatch"), OP, json!({"to": 5})).await;
    assert_eq!(s, 400);
    let (s, a) =
        env.post(&format!("/api/v1/alarms/{id}/dispatch"), OP, json!({"to": "ent-a shift", "note": "check"})).await;
    assert_eq!((s, a["stage"].as_str()), (200, Some("Dispatched")));
    // The enterprise answers; another enterprise does not even see the alarm.
    assert_eq!(env.post(&format!("/api/v1/alarms/{id}/feedback"), ENT_B, json!({"text": "?"})).await.0, 404);
    let (s, a) = env.post(&format!("/api/v1/alarms/{id}/feedback"), ENT_A, json!({"text": "valve closed"})).await;
    assert_eq!((s, a["stage"].as_str()), (200, Some("Feedback")));
    let (s, a) =
        env.post(&format!("/api/v1/alarms/{id}/report"), OP, json!({"name": "r-17.pdf", "text": "gasket"})).await;
    assert_eq!((s, a["report"].as_str()), (200, Some("r-17.pdf")));
    assert_eq!(env.post(&format!("/api/v1/alarms/{id}/review"), OP2, json!({"note": "ok"})).await.0, 200);
    let (s, p) = env.post(&format!("/api/v1/alarms/{id}/close"), OP, json!({})).await;
    assert_eq!(s, 409);
    assert!(p["detail"].as_str().unwrap().contains("still active"), "{p}");
    env.sample("TK101.LT", "gw-a", t + 1000, 10.0).await;
    let (s, a) = env.post(&format!("/api/v1/alarms/{id}/close"), OP, json!({"note": "done"})).await;
    assert_eq!((s, a["stage"].as_str(), a["state"].as_str()), (200, Some("Closed"), Some("normal")));
    let (s, p) = env.post(&format!("/api/v1/alarms/{id}/acknowledge"), OP, json!({})).await;
    assert_eq!(s, 409);
    assert!(p["detail"].as_str().unwrap().contains("Closed"), "{p}");

    let (s, tl) = env.get(&format!("/api/v1/alarms/{id}/timeline"), AUDITOR).await;
    assert_eq!(s, 200);
    let what: Vec<&str> = tl["items"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert_eq!(
        what,
        ["raised", "acknowledge", "verify", "dispatch", "feedback", "attach_report", "review", "cleared", "close"]
    );
    assert_eq!(tl["items"][1]["actor"], "olga");
    assert_eq!(tl["items"][4]["actor"], "anna");

    // Unknown ids and actions.
    assert_eq!(env.get("/api/v1/alarms/999999", OP).await.0, 404);
    assert_eq!(env.get("/api/v1/alarms/999999/timeline", OP).await.0, 404);
    assert_eq!(env.post("/api/v1/alarms/999999/acknowledge", OP, json!({})).await.0, 404);
    assert_eq!(env.post(&format!("/api/v1/alarms/{id}/explode"), OP, json!({})).await.0, 404);
}

#[tokio::test]
async fn shelve_and_unshelve_and_false_alarm() {
    let env = env().await;
    let t = now();
    env.sample("TK201.PT", "gw-b", t, 9.0).await;
    let id = ids(&env.get("/api/v1/alarms", OP).await.1)[0];
    let (s, _) = env.post(&format!("/api/v1/alarms/{id}/shelve"), OP, json!({"until_ms": t - 1, "reason": "x"})).await;
    assert_eq!(s, 409, "expiry in the past is refused");
    assert_eq!(env.post(&format!("/api/v1/alarms/{id}/shelve"), OP, json!({"reason": "x"})).await.0, 400);
    let until = t + 3_600_000;
    let (s, a) =
        env.post(&format!("/api/v1/alarms/{id}/shelve"), OP, json!({"until_ms": until, "reason": "sensor swap"})).await;
    assert_eq!((s, a["shelved_until_ms"].as_i64()), (200, Some(until)));
    let (s, a) = env.post(&format!("/api/v1/alarms/{id}/unshelve"), OP, json!({})).await;
    assert_eq!((s, a["shelved_until_ms"].clone()), (200, Value::Null));
    assert_eq!(env.post(&format!("/api/v1/alarms/{id}/unshelve"), OP, json!({})).await.0, 409);
    assert_eq!(env.post(&format!("/api/v1/alarms/{id}/false-alarm"), OP, json!({"reason": "r"})).await.0, 409);
    env.post(&format!("/api/v1/alarms/{id}/acknowledge"), OP, json!({})).await;
    assert_eq!(env.post(&format!("/api/v1/alarms/{id}/false-alarm"), OP, json!({})).await.0, 400);
    let (s, a) = env.post(&format!("/api/v1/alarms/{id}/false-alarm"), OP, json!({"reason": "drift"})).await;
    assert_eq!((s, a["stage"].as_str(), a["false_alarm_reason"].as_str()), (200, Some("FalseAlarm"), Some("drift")));
}

#[tokio::test]
async fn roles_and_enterprise_scoping() {
    let env = env().await;
    let t = now();
    env.sample("TK101.LT", "gw-a", t, 85.0).await;
    env.sample("TK201.PT", "gw-b", t, 9.0).await;
    env.sample("TK301.TT", "gw-c", t, 60.0).await;
    let all = env.get("/api/v1/alarms", AUDITOR).await.1;
    assert_eq!(ids(&all).len(), 3);
    // The point without an enterprise of its own takes its gateway's (from the registry).
    let c = all["items"].as_array().unwrap().iter().find(|a| a["key"]["source"]["Point"] == "TK301.TT").unwrap();
    assert_eq!(c["enterprise"], "ent-c");
    let a_id =
        all["items"].as_array().unwrap().iter().find(|a| a["enterprise"] == "ent-a").unwrap()["id"].as_i64().unwrap();

    let (s, b) = env.get("/api/v1/alarms", ENT_B).await;
    assert_eq!(s, 200);
    assert!(b["items"].as_array().unwrap().iter().all(|a| a["enterprise"] == "ent-b"));
    assert_eq!(ids(&b).len(), 1);
    // Another enterprise's alarm is 404 everywhere, even when asked for by filter.
    assert_eq!(env.get(&format!("/api/v1/alarms/{a_id}"), ENT_B).await.0, 404);
    assert_eq!(env.get(&format!("/api/v1/alarms/{a_id}/timeline"), ENT_B).await.0, 404);
    assert_eq!(ids(&env.get("/api/v1/alarms?enterprise=ent-a", ENT_B).await.1).len(), 0);
    assert_eq!(env.get(&format!("/api/v1/alarms/{a_id}"), ENT_A).await.0, 200);

    for who in [SECADM, TECH] {
        let role = who.1;
        assert_eq!(env.get("/api/v1/alarms", who).await.0, 403, "{role}");
        assert_eq!(env.get(&format!("/api/v1/alarms/{a_id}"), who).await.0, 403, "{role}");
        assert_eq!(env.get("/api/v1/windows", who).await.0, 403, "{role}");
        assert_eq!(env.get("/api/v1/kpis", who).await.0, 403, "{role}");
        assert_eq!(env.call("GET", "/api/v1/alarms/stream", Some(who), None).await.0, 403, "{role}");
    }
    // Readers cannot act; enterprise users only give feedback.
    assert_eq!(env.post(&format!("/api/v1/alarms/{a_id}/acknowledge"), AUDITOR, json!({})).await.0, 403);
    assert_eq!(env.post(&format!("/api/v1/alarms/{a_id}/acknowledge"), ENT_A, json!({})).await.0, 403);
    let (s, ctype, body) = env.call("GET", "/api/v1/alarms", None, None).await;
    assert_eq!(s, 401);
    assert_eq!(ctype, "application/problem+json");
    assert!(body.contains("authentication required"));
    assert_eq!(env.post(&format!("/api/v1/alarms/{a_id}/acknowledge"), ADMIN, json!({})).await.0, 200);
}

#[tokio::test]
async fn list_filters_and_cursor_pagination() {
    let env = env().await;
    let t0 = now() - 100_000;
    // Seven separate H episodes on TK101.LT (each acknowledged and cleared), three on TK201.PT.
    for i in 0..7 {
        let t = t0 + i * 1000;
        env.sample("TK101.LT", "gw-a", t, 85.0).await;
        let id = ids(&env.get("/api/v1/alarms?point=TK101.LT&open=true&state=active_unacked", OP).await.1)[0];
        env.post(&format!("/api/v1/alarms/{id}/acknowledge"), OP, json!({})).await;
        env.sample("TK101.LT", "gw-a", t + 500, 10.0).await;
    }
    for i in 0..3 {
        let t = t0 + 50_000 + i * 1000;
        env.sample("TK201.PT", "gw-b", t, 9.0).await;
        env.sample("TK201.PT", "gw-b", t + 500, 1.0).await;
    }
    let all = ids(&env.get("/api/v1/alarms?limit=1000", OP).await.1);
    // TK201.PT's episodes were never acknowledged: one instance, re-activated twice.
    assert_eq!(all.len(), 8, "7 on TK101.LT, 1 on TK201.PT");
    assert_eq!(env.get(&format!("/api/v1/alarms/{}", all[0]), OP).await.1["activations"], 3);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");

    let count = |v: Value| ids(&v).len();
    assert_eq!(count(env.get("/api/v1/alarms?grade=A", OP).await.1), 7);
    assert_eq!(count(env.get("/api/v1/alarms?grade=C", OP).await.1), 1);
    assert_eq!(count(env.get("/api/v1/alarms?enterprise=ent-b", OP).await.1), 1);
    assert_eq!(count(env.get("/api/v1/alarms?point=TK101.LT&condition=Hi", OP).await.1), 7);
    assert_eq!(count(env.get("/api/v1/alarms?point=TK201.PT", OP).await.1), 1);
    assert_eq!(count(env.get("/api/v1/alarms?condition=HiHi", OP).await.1), 0);
    assert_eq!(count(env.get("/api/v1/alarms?condition=Hi", OP).await.1), 8);
    // TK201.PT's is returned to normal but unacknowledged; TK101.LT's are normal (not closed).
    assert_eq!(count(env.get("/api/v1/alarms?state=returned_unacked", OP).await.1), 1);
    assert_eq!(count(env.get("/api/v1/alarms?state=normal", OP).await.1), 7);
    assert_eq!(count(env.get("/api/v1/alarms?state=Acknowledged", OP).await.1), 7);
    assert_eq!(count(env.get("/api/v1/alarms?state=active_unacked", OP).await.1), 0);
    assert_eq!(count(env.get("/api/v1/alarms?open=true", OP).await.1), 8);
    assert_eq!(count(env.get("/api/v1/alarms?open=false", OP).await.1), 0);
    let (from, to) = (t0 + 1000, t0 + 3000);
    assert_eq!(count(env.get(&format!("/api/v1/alarms?from_ms={from}&to_ms={to}"), OP).await.1), 2);

    // Walk all pages of 3: every alarm once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/alarms?limit=3&cursor={c}"),
            None => "/api/v1/alarms?limit=3".to_owned(),
        };
        let (s, page) = env.get(&path, OP).await;
        assert_eq!(s, 200);
        seen.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, all);
    assert_eq!(pages, 3);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 8);

    for bad in [
        "limit=0",
        "limit=1001",
        "grade=Z",
        "condition=Hot",
        "state=burning",
        "open=yes",
        "cursor=abc",
        "from_ms=yesterday",
    ] {
        let (s, p) = env.get(&format!("/api/v1/alarms?{bad}"), OP).await;
        assert_eq!(s, 400, "{bad}: {p}");
        assert!(p["detail"].as_str().unwrap().contains(bad.split('=').next().unwrap()), "{bad}: {p}");
    }
}

#[tokio::test]
async fn maintenance_windows_and_threshold_requests() {
    let env = env().await;
    let t = now();
    let w = json!({"enterprise": "ent-a", "points": ["TK101.LT"], "from_ms": t, "to_ms": t + 3_600_000, "reason": "pump overhaul"});
    let (s, win) = env.post("/api/v1/windows", ENT_A, w.clone()).await;
    assert_eq!(s, 201, "{win}");
    assert_eq!(win["status"], "Requested");
    let wid = win["id"].as_i64().unwrap();
    // Not for another enterprise, not listing another enterprise's points, not by readers.
    assert_eq!(env.post("/api/v1/windows", ENT_B, w.clone()).await.0, 403);
    let mut other = w.clone();
    other["points"] = json!(["TK201.PT"]);
    let (s, p) = env.post("/api/v1/windows", ENT_A, other).await;
    assert_eq!(s, 400);
    assert!(p["detail"].as_str().unwrap().contains("TK201.PT"), "{p}");
    assert_eq!(env.post("/api/v1/windows", AUDITOR, w.clone()).await.0, 403);
    let mut past = w.clone();
    past["to_ms"] = json!(t - 10);
    assert_eq!(env.post("/api/v1/windows", ENT_A, past).await.0, 400);

    assert_eq!(env.get("/api/v1/windows", ENT_B).await.1["items"].as_array().unwrap().len(), 0);
    assert_eq!(env.get("/api/v1/windows", ENT_A).await.1["items"][0]["id"].as_i64(), Some(wid));
    assert_eq!(env.post(&format!("/api/v1/windows/{wid}/approve"), ENT_A, json!({})).await.0, 403);
    let (s, a) = env.post(&format!("/api/v1/windows/{wid}/approve"), OP, json!({})).await;
    assert_eq!((s, a["status"].as_str(), a["decided_by"].as_str()), (200, Some("Approved"), Some("olga")));
    assert_eq!(env.post(&format!("/api/v1/windows/{wid}/reject"), OP, json!({"reason": "late"})).await.0, 409);
    assert_eq!(env.post("/api/v1/windows/4242/approve", OP, json!({})).await.0, 404);
    // The window suppresses: the alarm is recorded with the window id.
    env.sample("TK101.LT", "gw-a", t + 10, 95.0).await;
    let (_, l) = env.get("/api/v1/alarms", OP).await;
    assert_eq!(l["items"][0]["suppressed_by"].as_i64(), Some(wid));

    let req = json!({"point": "TK201.PT", "h": 6.5, "reason": "new sensor range"});
    assert_eq!(env.post("/api/v1/thresholds", ENT_B, req.clone()).await.0, 403);
    let (s, r) = env.post("/api/v1/thresholds", OP, req.clone()).await;
    assert_eq!(s, 201, "{r}");
    assert_eq!((r["before"]["h"].as_f64(), r["after"]["h"].as_f64()), (Some(5.0), Some(6.5)));
    let rid = r["id"].as_i64().unwrap();
    assert_eq!(env.get("/api/v1/thresholds", ENT_B).await.1["items"].as_array().unwrap().len(), 1);
    assert_eq!(env.get("/api/v1/thresholds", ENT_A).await.1["items"].as_array().unwrap().len(), 0);
    assert_eq!(env.post(&format!("/api/v1/thresholds/{rid}/approve"), OP2, json!({})).await.0, 403);
    let (s, r) = env.post(&format!("/api/v1/thresholds/{rid}/approve"), ADMIN, json!({})).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("Approved")));
    assert_eq!(env.engine.lock().await.limits("TK201.PT").unwrap().h, Some(6.5));
    assert_eq!(env.post(&format!("/api/v1/thresholds/{rid}/approve"), ADMIN, json!({})).await.0, 404);
    let (s, p) =
        env.post("/api/v1/thresholds", OP, json!({"point": "TK201.PT", "h": 9.0, "hh": 1.0, "reason": "x"})).await;
    assert_eq!(s, 400, "{p}");
    assert_eq!(env.post("/api/v1/thresholds", OP, json!({"point": "NOPE", "h": 1.0, "reason": "x"})).await.0, 404);
    // The requester cannot approve their own change.
    let (_, r) = env.post("/api/v1/thresholds", ADMIN, json!({"point": "TK201.PT", "h": 7.0, "reason": "y"})).await;
    let rid = r["id"].as_i64().unwrap();
    assert_eq!(env.post(&format!("/api/v1/thresholds/{rid}/approve"), ADMIN, json!({})).await.0, 409);
    let (s, r) = env.post(&format!("/api/v1/thresholds/{rid}/reject"), ADMIN2, json!({"reason": "no"})).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("Rejected")));
}

#[tokio::test]
async fn kpis_as_json_and_csv() {
    let env = env().await;
    let t = now() - 60_000;
    for i in 0..4 {
        env.sample("TK101.LT", "gw-a", t + i * 2000, 85.0).await;
        env.sample("TK101.LT", "gw-a", t + i * 2000 + 1000, 10.0).await;
    }
    env.sample("TK201.PT", "gw-b", t, 9.0).await;
    let q = format!("/api/v1/kpis?from_ms={}&to_ms={}", t - 1000, t + 3_600_000);
    let (s, k) = env.get(&q, OP).await;
    assert_eq!(s, 200);
    let items = k["items"].as_array().unwrap();
    let a = items.iter().find(|r| r["enterprise"] == "ent-a").unwrap();
    assert_eq!(a["alarms"], 4, "{a}");
    assert_eq!(a["chattering"], json!(["point:TK101.LT"]));
    assert_eq!(a["targets"]["per_hour"], 6.0);
    let b = env.get(&q, ENT_B).await.1;
    assert_eq!(b["items"].as_array().unwrap().len(), 1);
    assert_eq!(b["items"][0]["enterprise"], "ent-b");

    let (s, ctype, csv) = env.call("GET", &format!("{q}&format=csv"), Some(OP), None).await;
    assert_eq!(s, 200);
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("enterprise,from_ms,to_ms,alarms,per_hour,target_per_hour"));
    let row = lines.iter().find(|l| l.starts_with("ent-a,")).unwrap();
    let cols: Vec<&str> = row.split(',').collect();
    assert_eq!(cols[3], "4");
    assert_eq!(cols[5], "6");
    assert_eq!(env.get("/api/v1/kpis?from_ms=10&to_ms=5", OP).await.0, 400);
    assert_eq!(env.get("/api/v1/kpis?format=xml", OP).await.0, 400);
}

/// Reads SSE lines from a raw socket until `pred` matches an event; returns the events read.
fn read_events(r: &mut BufReader<std::net::TcpStream>, mut pred: impl FnMut(&str) -> bool) -> Vec<String> {
    let mut events = Vec::new();
    let mut cur = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).unwrap();
        assert!(n > 0, "stream ended; events so far: {events:?}");
        let l = line.trim_end_matches(['\r', '\n']);
        // Chunk-size lines of the chunked encoding are hex only; skip them.
        if cur.is_empty() && !l.is_empty() && l.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        if l.is_empty() {
            if !cur.is_empty() {
                let done = pred(&cur);
                events.push(std::mem::take(&mut cur));
                if done {
                    return events;
                }
            }
        } else {
            cur.push_str(l);
            cur.push('\n');
        }
    }
}

fn open_stream(addr: SocketAddr, who: Who<'_>, last: Option<&str>) -> BufReader<std::net::TcpStream> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "GET /api/v1/alarms/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n",
        token(addr, who.0)
    );
    if let Some(l) = last {
        req.push_str(&format!("Last-Event-ID: {l}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" {
            break;
        }
    }
    r
}

fn field<'a>(event: &'a str, name: &str) -> Option<&'a str> {
    event.lines().find_map(|l| l.strip_prefix(name).map(str::trim_start))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_delivers_changes_replays_and_resyncs() {
    let env = env().await;
    let addr = env.addr;
    let mut op = tokio::task::spawn_blocking(move || open_stream(addr, OP, None)).await.unwrap();
    let mut b = tokio::task::spawn_blocking(move || open_stream(addr, ENT_B, None)).await.unwrap();
    let t = now();
    env.sample("TK101.LT", "gw-a", t, 85.0).await;
    env.sample("TK201.PT", "gw-b", t, 9.0).await;

    let (mut op, evs) = tokio::task::spawn_blocking(move || {
        let evs = read_events(&mut op, |e| e.contains("TK201.PT"));
        (op, evs)
    })
    .await
    .unwrap();
    let alarm_events: Vec<&String> = evs.iter().filter(|e| field(e, "event:") == Some("alarm")).collect();
    assert_eq!(alarm_events.len(), 2, "{evs:?}");
    let first_id = field(alarm_events[0], "id:").unwrap().to_owned();
    let second_id: u64 = field(alarm_events[1], "id:").unwrap().parse().unwrap();
    assert_eq!(second_id, first_id.parse::<u64>().unwrap() + 1);
    let change: Value = serde_json::from_str(field(alarm_events[0], "data:").unwrap()).unwrap();
    assert_eq!(change["kind"], "Raised");
    assert_eq!(change["alarm"]["key"]["source"]["Point"], "TK101.LT");
    assert_eq!(change["annunciate"], true);

    // The enterprise-b stream saw only its own alarm.
    let (_, evs) = tokio::task::spawn_blocking(move || {
        let evs = read_events(&mut b, |e| e.contains("event: alarm") || e.contains("event:alarm"));
        (b, evs)
    })
    .await
    .unwrap();
    let only = evs.iter().find(|e| field(e, "event:") == Some("alarm")).unwrap();
    assert!(only.contains("TK201.PT") && !only.contains("TK101.LT"), "{only}");

    // An action while the client is away: on reconnect with Last-Event-ID it gets exactly that.
    let id = change["alarm"]["id"].as_i64().unwrap();
    drop(op.get_mut().shutdown(std::net::Shutdown::Both));
    env.post(&format!("/api/v1/alarms/{id}/acknowledge"), OP, json!({})).await;
    let last = second_id.to_string();
    let evs = tokio::task::spawn_blocking(move || {
        let mut r = open_stream(addr, OP, Some(&last));
        read_events(&mut r, |e| e.contains("acknowledge"))
    })
    .await
    .unwrap();
    let ev = evs.iter().find(|e| field(e, "event:") == Some("alarm")).unwrap();
    assert_eq!(field(ev, "id:").unwrap().parse::<u64>().unwrap(), second_id + 1);
    assert!(evs.iter().all(|e| !e.contains("\"Raised\"")), "no replay of what the client had: {evs:?}");

    // An id the hub no longer holds (or never issued): resync.
    let evs = tokio::task::spawn_blocking(move || {
        let mut r = open_stream(addr, OP, Some("17"));
        read_events(&mut r, |e| e.contains("resync"))
    })
    .await
    .unwrap();
    assert_eq!(field(&evs[0], "event:"), Some("resync"), "{evs:?}");

    // Idle streams carry a keep-alive comment (every 15 s).
    let evs = tokio::task::spawn_blocking(move || {
        let mut r = open_stream(addr, AUDITOR, None);
        read_events(&mut r, |e| e.starts_with(": keepalive") || e.starts_with(":keepalive"))
    })
    .await
    .unwrap();
    assert!(evs.last().unwrap().contains("keepalive"));
}
