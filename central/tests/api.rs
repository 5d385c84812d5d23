#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The management API over a real bound listener: sessions, lockout and password policy, the role
//! matrix over every documented operation, enterprise isolation, the API-call log for every call
//! (failures included) and the append-only audit tables.

mod support;

use std::sync::{Arc, RwLock};

use support::{Answer, login, request};
use vigil_central::api::openapi::{Access, OPERATIONS};
use vigil_central::api::{ApiState, Role};
use vigil_central::config::ApiConfig;
use vigil_central::config_push::ConfigPushes;
use vigil_central::historian::{FileChunkStore, Historian};
use vigil_central::identity::{AuthConfig, NewUser, SecurityEvent};
use vigil_common::catalogue::CatalogueDocument;
use vigil_common::{EnterpriseId, GatewayId, PointId, Sample, SigningKey};

const PASSWORD: &str = "Correct-Horse-7";

struct Api {
    port: u16,
    state: ApiState,
    dir: tempfile::TempDir,
}

/// Central's API on an ephemeral port over a fresh data directory: gateways gw-a (ent-a), gw-b
/// (ent-b) and the unregistered gw-x, each with samples of point p1; an alarm engine.
async fn start(auth: AuthConfig) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let store = FileChunkStore::open(&dir.path().join("chunks")).unwrap();
    let mut h = Historian::open(Box::new(store), 0, 1_000_000).unwrap();
    for gw in ["gw-a", "gw-b", "gw-x"] {
        let samples: Vec<Sample> = (0..10).map(|i| Sample::good(1_000_000 + i * 1000, i as f64)).collect();
        h.insert(&GatewayId::new(gw).unwrap(), &PointId::new("p1").unwrap(), &samples).unwrap();
    }
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(dir.path().join("alarms.db")).create_if_missing(true),
        )
        .await
        .unwrap();
    let defs = vigil_central::alarms::AlarmConfig::from_toml(
        "t.toml",
        "[[point]]\nid = \"gw-a/p1\"\ngateway = \"gw-a\"\nenterprise = \"ent-a\"\nhh = 90.0\nh = 80.0\n",
    )
    .unwrap();
    let engine = vigil_central::alarms::AlarmEngine::open_sqlite(pool, defs).await.unwrap();
    let settings = ApiConfig { max_body_bytes: 4096, ..ApiConfig::default() };
    let mut state = ApiState::open(
        dir.path(),
        settings,
        auth,
        Arc::new(RwLock::new(h)),
        Arc::default(),
        Some(Arc::new(tokio::sync::Mutex::new(engine))),
    )
    .await
    .unwrap();
    // Pushes are stored, not sent: this harness has no broker (tests/tests/e2e_config_push.rs has).
    state.pushes = Some(ConfigPushes::new(&state.registry, SigningKey::from_seed(&[9; 32]), None));
    for (gw, ent, seed) in [("gw-a", "ent-a", 1u8), ("gw-b", "ent-b", 2)] {
        let key = SigningKey::from_seed(&[seed; 32]).public_key();
        state.registry.add(&GatewayId::new(gw).unwrap(), &EnterpriseId::new(ent).unwrap(), &key, 1).await.unwrap();
        let doc: CatalogueDocument = serde_json::from_str(&catalogue_doc(gw, "m")).unwrap();
        state.catalogues.import(doc.try_into().unwrap(), "setup", 1).await.unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(vigil_central::api::serve(listener, state.clone()));
    Api { port, state, dir }
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

    async fn post(&self, path: &str, token: Option<&str>, body: serde_json::Value) -> Answer {
        request(self.port, "POST", path, token, &[], Some(&body.to_string())).await
    }
}

fn login_body(user: &str, password: &str) -> serde_json::Value {
    serde_json::json!({ "user": user, "password": password })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_by_bearer_and_cookie_end_at_logout() {
    let api = start(AuthConfig::default()).await;
    api.user("olga", Role::Operator, None).await;
    let a = api.post("/api/v1/auth/login", None, login_body("olga", PASSWORD)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    let token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["role"], "operator");
    assert_eq!(v["enterprises"], serde_json::Value::Null);
    assert!(v["expires_at_ms"].as_i64().unwrap() > vigil_central::ingest::now_ms());
    assert!(v["password_expires_at_ms"].as_i64().is_some(), "default policy: 90-day expiry");
    let cookie = a.header("set-cookie").unwrap();
    assert!(cookie.starts_with(&format!("vigil_session={token};")), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");

    let me = api.get("/api/v1/auth/me", &token).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["user"], "olga");
    assert!(me.json().get("token").is_none(), "the token is shown once only");
    let by_cookie =
        request(api.port, "GET", "/api/v1/auth/me", None, &[("Cookie", &format!("x=1; vigil_session={token}"))], None)
            .await;
    assert_eq!(by_cookie.status, 200, "{}", by_cookie.body);

    let no = request(api.port, "GET", "/api/v1/auth/me", None, &[], None).await;
    assert_eq!(no.status, 401);
    assert_eq!(no.header("content-type"), Some("application/problem+json"));
    assert!(no.header("www-authenticate").is_some());
    let forged = api.get("/api/v1/auth/me", &"0".repeat(64)).await;
    assert_eq!(forged.status, 401);
    assert!(forged.json()["detail"].as_str().unwrap().contains("unknown, expired or revoked"));

    let out = api.post("/api/v1/auth/logout", Some(&token), serde_json::json!({})).await;
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(api.get("/api/v1/auth/me", &token).await.status, 401, "a logged-out token is dead");
    // Stored tokens are hashes: the plaintext is nowhere in the database.
    let db = std::fs::read(api.dir.path().join("access.db")).unwrap();
    let wal = std::fs::read(api.dir.path().join("access.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "plaintext token stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_the_account_raise_an_event_and_an_admin_unlocks() {
    let auth = AuthConfig { max_failures: 3, client_alert_failures: 5, ..AuthConfig::default() };
    let api = start(auth).await;
    api.user("olga", Role::Operator, None).await;
    api.user("sam", Role::SecurityAdmin, None).await;
    let mut events = api.state.identity.subscribe();
    for remaining in [2, 1] {
        let a = api.post("/api/v1/auth/login", None, login_body("olga", "Wrong-Horse-7")).await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(a.json()["attempts_remaining"], remaining);
        assert!(a.json()["detail"].as_str().unwrap().contains(&format!("{remaining} attempt(s) left")));
    }
    let a = api.post("/api/v1/auth/login", None, login_body("olga", "Wrong-Horse-7")).await;
    assert_eq!(a.status, 423, "{}", a.body);
    let until = a.json()["locked_until_ms"].as_i64().unwrap();
    assert!(until > vigil_central::ingest::now_ms());
    let a = api.post("/api/v1/auth/login", None, login_body("olga", PASSWORD)).await;
    assert_eq!(a.status, 423, "the right password does not open a locked account");
    match events.try_recv().unwrap() {
        SecurityEvent::LockedOut { user, failures, until_ms, .. } => {
            assert_eq!((user.as_str(), failures, until_ms), ("olga", 3, until));
        }
        other => panic!("{other:?}"),
    }
    // An unknown name answers exactly like a real one (no user enumeration), and locks too.
    for remaining in [2, 1] {
        let a = api.post("/api/v1/auth/login", None, login_body("nobody", "Wrong-Horse-7")).await;
        assert_eq!((a.status, a.json()["attempts_remaining"].as_i64()), (401, Some(remaining)));
    }
    // The fifth failure from this client address across names is a spraying alert.
    let a = api.post("/api/v1/auth/login", None, login_body("nobody", "Wrong-Horse-7")).await;
    assert_eq!(a.status, 423);
    let mut kinds = Vec::new();
    while let Ok(e) = events.try_recv() {
        kinds.push(e);
    }
    assert!(
        kinds
            .iter()
            .any(|e| matches!(e, SecurityEvent::RepeatedFailures { failures: 5, client, .. } if client == "127.0.0.1")),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|e| matches!(e, SecurityEvent::LockedOut { user, .. } if user == "nobody")), "{kinds:?}");
    let metrics = request(api.port, "GET", "/metrics", None, &[], None).await.body;
    assert!(metrics.contains("vigil_auth_lockouts_total 2"), "{metrics}");
    assert!(metrics.contains("vigil_auth_logins_failed_total 6"), "{metrics}");

    let admin = login(api.port, "sam", PASSWORD).await;
    let a = request(api.port, "PATCH", "/api/v1/users/olga", Some(&admin), &[], Some(r#"{"unlock":true}"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["locked_until_ms"], serde_json::Value::Null);
    login(api.port, "olga", PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_policy_expiry_history_and_admin_set_passwords() {
    let api = start(AuthConfig { history: 2, ..AuthConfig::default() }).await;
    api.user("sam", Role::SecurityAdmin, None).await;
    let admin = login(api.port, "sam", PASSWORD).await;
    // A user created through the API gets a generated password that must be changed first.
    let a = api
        .post(
            "/api/v1/users",
            Some(&admin),
            serde_json::json!({ "name": "eve", "role": "enterprise_user", "enterprises": ["ent-a"] }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let generated = a.json()["password"].as_str().unwrap().to_owned();
    assert!(a.json()["user"]["must_change"].as_bool().unwrap());
    let a = api.post("/api/v1/auth/login", None, login_body("eve", &generated)).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(a.json()["password_expired"], true);
    // Each rule is named.
    for (new, rule, words) in [
        ("Short-1", "min_length", "at least 12 characters"),
        ("alllowercaseletters", "min_classes", "classes"),
        ("My-eve-Password-1", "user_name", "user name"),
    ] {
        let body = serde_json::json!({ "user": "eve", "old": generated, "new": new });
        let a = api.post("/api/v1/auth/password", None, body).await;
        assert_eq!(a.status, 400, "{new}: {}", a.body);
        assert_eq!(a.json()["rule"], rule);
        assert!(a.json()["detail"].as_str().unwrap().contains(words), "{}", a.body);
    }
    let wrong = api
        .post(
            "/api/v1/auth/password",
            None,
            serde_json::json!({ "user": "eve", "old": "Nope-Nope-123", "new": PASSWORD }),
        )
        .await;
    assert_eq!(wrong.status, 401, "the old password is checked: {}", wrong.body);
    let a = api
        .post("/api/v1/auth/password", None, serde_json::json!({ "user": "eve", "old": generated, "new": PASSWORD }))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let token = a.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(api.get("/api/v1/auth/me", &token).await.status, 200);
    // History: neither the current nor the previous password may come back.
    for (old, new) in [(PASSWORD, PASSWORD), (PASSWORD, generated.as_str())] {
        let a = api.post("/api/v1/auth/password", Some(&token), serde_json::json!({ "old": old, "new": new })).await;
        assert_eq!((a.status, a.json()["rule"].as_str()), (400, Some("history")), "{}", a.body);
    }
    // A session may change only its own password.
    let a = api
        .post(
            "/api/v1/auth/password",
            Some(&token),
            serde_json::json!({ "user": "sam", "old": PASSWORD, "new": "Other-Horse-88" }),
        )
        .await;
    assert_eq!(a.status, 403);
    // Expiry: 90 days later the same password no longer logs in.
    let later = vigil_central::ingest::now_ms() + 91 * 86_400_000;
    match api.state.identity.login("eve", PASSWORD, "test", later).await {
        Err(vigil_central::identity::LoginError::PasswordExpired) => {}
        other => panic!("{other:?}"),
    }
    // Scope rules for roles.
    for (body, words) in [
        (serde_json::json!({ "name": "x1", "role": "enterprise_user" }), "needs at least one enterprise"),
        (serde_json::json!({ "name": "x2", "role": "auditor", "enterprises": ["ent-a"] }), "takes no enterprises"),
        (serde_json::json!({ "name": "bad name!", "role": "operator" }), "user name"),
    ] {
        let a = api.post("/api/v1/users", Some(&admin), body).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert!(a.json()["detail"].as_str().unwrap().contains(words), "{}", a.body);
    }
    let dup = api.post("/api/v1/users", Some(&admin), serde_json::json!({ "name": "eve", "role": "operator" })).await;
    assert_eq!(dup.status, 409);
    // Security administrators cannot change their own role or lock themselves out.
    let a = request(api.port, "PATCH", "/api/v1/users/sam", Some(&admin), &[], Some(r#"{"role":"park_admin"}"#)).await;
    assert_eq!(a.status, 400, "{}", a.body);
    // Disabling a user ends their sessions at once.
    let a = request(api.port, "PATCH", "/api/v1/users/eve", Some(&admin), &[], Some(r#"{"disabled":true}"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(api.get("/api/v1/auth/me", &token).await.status, 401);
    let a = api.post("/api/v1/auth/login", None, login_body("eve", PASSWORD)).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let users = api.get("/api/v1/users", &admin).await.json();
    let names: Vec<&str> = users["items"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["eve", "sam"]);
    assert!(!users.to_string().contains("argon2"), "hashes never leave the store");
}

/// A `vigil-edge catalogue` document of `gw`: device `dev-{gw}` with point p1 in `unit`.
fn catalogue_doc(gw: &str, unit: &str) -> String {
    serde_json::json!({
        "gateway": gw, "ts_ms": 1, "config_sha256": "ab".repeat(32),
        "devices": [{ "name": format!("dev-{gw}"), "protocol": "modbus_tcp", "address": "10.0.0.9:502 unit 1" }],
        "points": [{ "id": "p1", "device": format!("dev-{gw}"), "unit": unit, "range": [0.0, 100.0], "poll_ms": 1000 }],
    })
    .to_string()
}

/// A request that exercises `o` with valid parameters and body.
fn exercise(o: &vigil_central::api::openapi::Operation) -> (String, Option<String>) {
    let id = if o.path.starts_with("/api/v1/gateways") { "gw-a" } else { "1" };
    let path = o
        .path
        .replace("{name}", "target")
        .replace("{id}", id)
        .replace("{action}", "feedback")
        .replace("{verb}", "approve")
        .replace("{sha256}", &"0".repeat(64))
        .replace("{version}", "1");
    let q: Vec<String> = o
        .query
        .iter()
        .filter(|(_, _, required)| *required)
        .map(|(n, _, _)| match *n {
            "points" | "point" => format!("{n}=gw-a/p1"),
            "from" => "from=0".into(),
            "to" => "to=2000000".into(),
            other => format!("{other}=1"),
        })
        .collect();
    let bucket = if o.path.ends_with("/aggregate") { "&bucket_ms=60000" } else { "" };
    let path = if q.is_empty() { path } else { format!("{path}?{}{bucket}", q.join("&")) };
    let body = match (o.method, o.path) {
        ("post", "/api/v1/users") => Some(r#"{"name":"created","role":"operator"}"#.to_owned()),
        ("patch", "/api/v1/users/{name}") => Some(r#"{"unlock":true}"#.to_owned()),
        ("post", "/api/v1/enrolments") => Some(r#"{"gateway":"gw-new","enterprise":"ent-a"}"#.to_owned()),
        ("post", "/api/v1/gateways/{id}/config") => {
            Some(serde_json::json!({ "toml": "[gateway]\nid = \"gw-a\"\nenterprise = \"ent-a\"\n" }).to_string())
        }
        ("put", "/api/v1/gateways/{id}/catalogue") => Some(catalogue_doc("gw-a", "m")),
        ("post", _) | ("patch", _) | ("put", _) => Some("{}".to_owned()),
        _ => None,
    };
    (path, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix_over_every_documented_operation() {
    let api = start(AuthConfig::default()).await;
    api.user("target", Role::Operator, None).await;
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
    // Session endpoints change state (logout, password) and have tests of their own.
    // Redeeming an enrolment token needs a token; central/tests/enrol.rs covers it.
    // Uploads, orders and downloads need a real bundle and token; central/tests/updates.rs has their matrix.
    let skip = [
        "/api/v1/auth/login",
        "/api/v1/auth/logout",
        "/api/v1/auth/password",
        "/api/v1/enrol",
        "/api/v1/updates",
        "/api/v1/updates/download",
        "/api/v1/gateways/{id}/update",
    ];
    let mut checked = 0;
    for o in OPERATIONS.iter().filter(|o| !skip.contains(&o.path)) {
        let (path, body) = exercise(o);
        let method = o.method.to_uppercase();
        let anonymous = request(api.port, &method, &path, None, &[], body.as_deref()).await;
        match o.access {
            Access::Public => assert!(anonymous.status < 300, "{method} {path} is public: {}", anonymous.status),
            _ => assert_eq!(anonymous.status, 401, "{method} {path} without a token"),
        }
        for (i, (role, token)) in tokens.iter().enumerate() {
            // A key registers once: each role that may add one brings its own.
            let body = if o.path == "/api/v1/gateways/{id}/keys" {
                let key = SigningKey::from_seed(&[100 + i as u8; 32]).public_key().to_text();
                Some(serde_json::json!({ "public_key": key }).to_string())
            } else {
                body.clone()
            };
            let a = request(api.port, &method, &path, Some(token), &[], body.as_deref()).await;
            let allowed = match o.access {
                Access::Public | Access::Authenticated => true,
                Access::Roles(roles) => roles.contains(role),
            };
            let names_nothing_real = o.tag == "alarms" || o.tag == "evidence" || o.method == "delete";
            if allowed && names_nothing_real {
                // This harness runs no alarm engine and names no real alarm or pending enrolment:
                // those routes' answers to allowed roles are checked in alarms_http.rs and
                // enrol.rs; here only that the role got past authorisation.
                assert!(![401, 403].contains(&a.status), "{role} {method} {path}: {} {}", a.status, a.body);
            } else if allowed {
                assert!((200..300).contains(&a.status), "{role} {method} {path}: {} {}", a.status, a.body);
            } else {
                assert_eq!(a.status, 403, "{role} {method} {path}: {}", a.body);
                assert!(a.json()["detail"].as_str().unwrap().contains(role.as_str()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 6 * 15, "{checked} checks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enterprise_user_sees_nothing_of_other_enterprises_whatever_the_url() {
    let api = start(AuthConfig::default()).await;
    api.user("eve", Role::EnterpriseUser, Some(&["ent-a"])).await;
    api.user("tom", Role::FieldTechnician, Some(&["ent-b"])).await;
    api.user("olga", Role::Operator, None).await;
    let eve = login(api.port, "eve", PASSWORD).await;
    let olga = login(api.port, "olga", PASSWORD).await;
    let tom = login(api.port, "tom", PASSWORD).await;

    let points = api.get("/api/v1/points", &eve).await.json();
    let keys: Vec<&str> = points["items"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["gw-a/p1"]);
    assert_eq!(points["items"][0]["enterprise"], "ent-a");
    assert_eq!(points["items"][0]["limits"]["hh"], 90.0, "limits from the alarm definitions");
    assert_eq!(
        (points["items"][0]["unit"].as_str(), points["items"][0]["device"].as_str()),
        (Some("m"), Some("dev-gw-a"))
    );
    let all = api.get("/api/v1/points", &olga).await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "the park-wide operator sees all: {all}");
    let toms = api.get("/api/v1/points", &tom).await.json();
    assert_eq!(toms["items"][0]["key"], "gw-b/p1");

    let to = 9_000_000_000_000i64;
    for hidden in [
        "/api/v1/latest?points=gw-b/p1".to_owned(),
        "/api/v1/latest?points=gw-a/p1,gw-b/p1".to_owned(),
        "/api/v1/latest?points=gw-x/p1".to_owned(),
        format!("/api/v1/raw?point=gw-b/p1&from=0&to={to}"),
        format!("/api/v1/raw?point=GW-B/p1&from=0&to={to}"),
        format!("/api/v1/raw?point=gw-x/p1&from=0&to={to}"),
        format!("/api/v1/raw?point=gw-b%2Fp1&from=0&to={to}"),
        format!("/api/v1/aggregate?point=gw-b/p1&from=0&to={to}&bucket_ms=1000"),
        "/api/v1/gateways/gw-b".to_owned(),
        "/api/v1/gateways/gw-b/catalogue".to_owned(),
        "/api/v1/gateways/gw-x".to_owned(),
        "/api/v1/gateways/gw-b/".to_owned(),
    ] {
        let a = api.get(&hidden, &eve).await;
        assert_eq!(a.status, 404, "{hidden}: {}", a.body);
        assert!(!a.body.contains("ent-b"), "{hidden} leaks: {}", a.body);
    }
    let a = api.get(&format!("/api/v1/raw?point=gw-a/p1&from=0&to={to}"), &eve).await;
    assert_eq!(a.json()["samples"].as_array().unwrap().len(), 10);
    let a = api.get(&format!("/api/v1/raw?point=gw-b/p1&from=0&to={to}"), &olga).await;
    assert_eq!(a.json()["samples"].as_array().unwrap().len(), 10);
    let gws = api.get("/api/v1/gateways", &eve).await.json();
    let ids: Vec<&str> = gws["items"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["gw-a"]);
    let gws = api.get("/api/v1/gateways?enterprise=ent-b", &eve).await.json();
    assert_eq!(gws["items"].as_array().unwrap().len(), 0, "a filter cannot widen the scope");
    let ents = api.get("/api/v1/enterprises", &eve).await.json();
    assert_eq!(ents["items"].as_array().unwrap().len(), 1);
    assert_eq!(ents["items"][0]["id"], "ent-a");
    let ents = api.get("/api/v1/enterprises", &olga).await.json();
    assert_eq!(ents["items"].as_array().unwrap().len(), 2);
    for devices in ["/api/v1/devices", "/api/v1/devices?enterprise=ent-b", "/api/v1/devices?gateway=gw-b"] {
        let keys: Vec<String> = api.get(devices, &eve).await.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["key"].as_str().unwrap().to_owned())
            .collect();
        let expected: &[&str] = if devices == "/api/v1/devices" { &["gw-a/dev-gw-a"] } else { &[] };
        assert_eq!(keys, expected, "{devices}");
    }
    let searched = api.get("/api/v1/points?q=ENT-B", &eve).await.json();
    assert_eq!(searched["items"].as_array().unwrap().len(), 0, "a search cannot widen the scope");
    // A field technician of ent-b cannot import for ent-a's gateway.
    let a =
        request(api.port, "PUT", "/api/v1/gateways/gw-a/catalogue", Some(&tom), &[], Some(&catalogue_doc("gw-a", "m")))
            .await;
    assert_eq!(a.status, 404, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_keys_rotate_and_revoke_through_the_api_and_are_audited() {
    let api = start(AuthConfig::default()).await;
    api.user("tess", Role::FieldTechnician, Some(&["ent-a"])).await;
    api.user("tom", Role::FieldTechnician, Some(&["ent-b"])).await;
    api.user("ada", Role::ParkAdmin, None).await;
    api.user("aud", Role::Auditor, None).await;
    let (tess, tom) = (login(api.port, "tess", PASSWORD).await, login(api.port, "tom", PASSWORD).await);
    let (ada, aud) = (login(api.port, "ada", PASSWORD).await, login(api.port, "aud", PASSWORD).await);
    let old = SigningKey::from_seed(&[1; 32]).public_key();
    let new = SigningKey::from_seed(&[42; 32]).public_key();
    let body = serde_json::json!({ "public_key": new.to_text() }).to_string();
    let post = |path: &'static str, token: String, body: Option<String>| async move {
        request(api.port, "POST", path, Some(&token), &[], body.as_deref()).await
    };

    // Another enterprise's technician does not even see the gateway; garbage keys are named.
    let a = post("/api/v1/gateways/gw-a/keys", tom.clone(), Some(body.clone())).await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = post("/api/v1/gateways/gw-a/keys", tess.clone(), Some(r#"{"public_key":"ed25519:abc"}"#.into())).await;
    assert!(a.status == 400 && a.body.contains("public_key"), "{} {}", a.status, a.body);
    // Rotation: the new key is registered beside the old one, both usable.
    let a = post("/api/v1/gateways/gw-a/keys", tess.clone(), Some(body.clone())).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["keys"].as_array().unwrap().len(), 2);
    let a = post("/api/v1/gateways/gw-a/keys", tess.clone(), Some(body)).await;
    assert_eq!(a.status, 409, "a key registers once: {}", a.body);
    let keys = api.state.registry.load_keys().await.unwrap();
    let gw_a = &keys[&GatewayId::new("gw-a").unwrap()];
    let now = vigil_central::ingest::now_ms();
    assert!(gw_a.usable(old.key_id(), now).is_some() && gw_a.usable(new.key_id(), now).is_some());

    // Once the spool drained, the old key is revoked: ingest refuses what it signs from then on.
    let path = format!("/api/v1/gateways/gw-a/keys/{}", old.key_id());
    let a = request(api.port, "DELETE", &path, Some(&tess), &[], None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = request(api.port, "DELETE", &path, Some(&tess), &[], None).await;
    assert_eq!(a.status, 409, "revoked already: {}", a.body);
    let keys = api.state.registry.load_keys().await.unwrap();
    let gw_a = &keys[&GatewayId::new("gw-a").unwrap()];
    let later = vigil_central::ingest::now_ms() + 1;
    assert!(gw_a.usable(old.key_id(), later).is_none() && gw_a.usable(new.key_id(), later).is_some());

    // Revoking the whole gateway is the park administrator's alone.
    let a = post("/api/v1/gateways/gw-a/revoke", tess, None).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = post("/api/v1/gateways/gw-a/revoke", ada, None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.json()["keys"].as_array().unwrap().iter().all(|k| k["revoked_ms"].is_i64()), "{}", a.body);

    let audit = api.get("/api/v1/audit?source=security&limit=1000", &aud).await.json();
    let entries: Vec<(String, String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"].as_str().unwrap().starts_with("gateway_"))
        .map(|r| {
            (
                r["actor"].as_str().unwrap().into(),
                r["action"].as_str().unwrap().into(),
                r["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expect = |a: &str, b: &str| (a.to_owned(), b.to_owned(), "gw-a".to_owned());
    assert_eq!(
        entries,
        [expect("ada", "gateway_revoked"), expect("tess", "gateway_key_revoked"), expect("tess", "gateway_key_added")],
        "newest first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalogue_imports_are_checked_and_give_way_to_the_gateways_own() {
    let api = start(AuthConfig::default()).await;
    api.user("tess", Role::FieldTechnician, Some(&["ent-a"])).await;
    let tess = login(api.port, "tess", PASSWORD).await;
    let put = |body: String| {
        let tess = tess.clone();
        async move { request(api.port, "PUT", "/api/v1/gateways/gw-a/catalogue", Some(&tess), &[], Some(&body)).await }
    };
    // Errors name the entry.
    let mut doc: serde_json::Value = serde_json::from_str(&catalogue_doc("gw-a", "m")).unwrap();
    doc["points"][0]["device"] = "nowhere".into();
    let a = put(doc.to_string()).await;
    assert!(a.status == 400 && a.body.contains("points[0]") && a.body.contains("nowhere"), "{} {}", a.status, a.body);
    let a = put(catalogue_doc("gw-b", "m")).await;
    assert!(a.status == 400 && a.body.contains("gw-b"), "{} {}", a.status, a.body);
    let a = put("{\"gateway\": \"gw-a\"}".into()).await;
    assert_eq!(a.status, 400, "{}", a.body);

    // A gateway with 300 points: larger than the general body limit of this harness (4096 bytes).
    let mut big: serde_json::Value = serde_json::from_str(&catalogue_doc("gw-a", "m")).unwrap();
    big["points"] = (0..300)
        .map(|i| serde_json::json!({ "id": format!("TK{i}.LT"), "device": "dev-gw-a", "unit": "m", "poll_ms": 500 }))
        .collect();
    let body = big.to_string();
    assert!(body.len() > 4096);
    let a = put(body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!((a.json()["source"].as_str(), a.json()["imported_by"].as_str()), (Some("import"), Some("tess")));
    let listed = api.get("/api/v1/points?gateway=gw-a&q=tk29", &tess).await.json();
    let keys: Vec<&str> = listed["items"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 11, "TK29 and TK290..TK299: {keys:?}");
    assert_eq!(
        (listed["items"][0]["configured"].clone(), listed["items"][0]["stored"].clone()),
        (true.into(), false.into())
    );
    // p1 was in the old import only; its stored history keeps it listed, without metadata now.
    let p1 = api.get("/api/v1/points?gateway=gw-a&q=p1", &tess).await.json();
    assert_eq!(p1["items"][0]["key"], "gw-a/p1");
    assert_eq!(
        (p1["items"][0]["configured"].clone(), p1["items"][0]["unit"].clone()),
        (false.into(), serde_json::Value::Null)
    );
    let page: serde_json::Value = api.get("/api/v1/points?gateway=gw-a&limit=100", &tess).await.json();
    let next = page["next_cursor"].as_str().unwrap().to_owned();
    let page2 = api.get(&format!("/api/v1/points?gateway=gw-a&limit=1000&cursor={next}"), &tess).await.json();
    assert_eq!(page["items"].as_array().unwrap().len() + page2["items"].as_array().unwrap().len(), 301);

    // The gateway's own signed catalogue replaces the import; imports then get 409.
    let own: CatalogueDocument = serde_json::from_str(&catalogue_doc("gw-a", "mm")).unwrap();
    api.state.catalogues.record_signed(own.try_into().unwrap(), b"sealed", 5).await.unwrap();
    let a = put(catalogue_doc("gw-a", "m")).await;
    assert_eq!(a.status, 409, "{}", a.body);
    let c = api.get("/api/v1/gateways/gw-a/catalogue", &tess).await.json();
    assert_eq!((c["source"].as_str(), c["document"]["points"][0]["unit"].as_str()), (Some("gateway"), Some("mm")));
    assert!(c["current"].is_null(), "no state reported: {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_logged_failures_included_and_auditors_export_it() {
    let api = start(AuthConfig::default()).await;
    api.user("olga", Role::Operator, None).await;
    api.user("aud", Role::Auditor, None).await;
    let olga = login(api.port, "olga", PASSWORD).await;
    let p = api.port;
    let big = format!("{{\"user\":\"{}\",\"password\":\"x\"}}", "u".repeat(5000));
    // (method, path, token, body, expected status)
    type Call<'a> = (&'a str, String, Option<&'a str>, Option<String>, u16);
    let calls: Vec<Call> = vec![
        ("GET", "/api/v1/points?limit=5".into(), Some(&olga), None, 200),
        ("GET", "/api/v1/points".into(), None, None, 401),
        ("GET", "/api/v1/nothing-here".into(), Some(&olga), None, 404),
        ("GET", "/nothing-at-all".into(), None, None, 404),
        ("GET", "/api/v1/raw?point=no-slash&from=0&to=1&token=s3cret".into(), Some(&olga), None, 400),
        ("GET", "/api/v1/users".into(), Some(&olga), None, 403),
        ("POST", "/api/v1/auth/login".into(), None, Some(login_body("olga", "Wrong-Horse-7").to_string()), 401),
        ("POST", "/api/v1/auth/login".into(), None, Some(big), 413),
        ("POST", "/api/v1/auth/login".into(), None, Some("{not json".into()), 400),
    ];
    for (method, path, token, body, want) in &calls {
        let a = request(p, method, path, *token, &[], body.as_deref()).await;
        assert_eq!(a.status, *want, "{method} {path}: {}", a.body);
        assert!(
            a.status < 300 || a.header("content-type") == Some("application/problem+json"),
            "{path}: {:?}",
            a.headers
        );
    }
    // A 5xx: the historian's lock poisoned by a panicking writer.
    let h = api.state.historian.clone();
    let _ = std::thread::spawn(move || {
        let _g = h.write().unwrap();
        panic!("poison the historian lock for the test");
    })
    .join();
    let a = request(p, "GET", "/api/v1/latest?points=gw-a/p1", Some(&olga), &[], None).await;
    assert_eq!(a.status, 500, "{}", a.body);

    let aud = login(p, "aud", PASSWORD).await;
    api.state.calls.flush().await;
    let log = api.get("/api/v1/api-calls?limit=1000", &aud).await;
    assert_eq!(log.status, 200, "{}", log.body);
    let rows = log.json()["items"].as_array().unwrap().clone();
    for (method, path, token, _, want) in &calls {
        let bare = path.split('?').next().unwrap();
        let row = rows
            .iter()
            .find(|r| r["path"] == bare && r["status"] == *want && r["method"] == *method)
            .unwrap_or_else(|| panic!("no log row for {method} {path} {want}: {rows:?}"));
        assert!(row["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{row}");
        assert!(row["latency_us"].as_i64().unwrap() >= 0);
        if token.is_some() {
            assert_eq!(row["user"], "olga", "{row}");
            assert_eq!(row["role"], "operator", "{row}");
        }
    }
    let failed_login = rows.iter().find(|r| r["path"] == "/api/v1/auth/login" && r["status"] == 401).unwrap();
    assert_eq!(failed_login["user"], "olga", "a failed login records the name tried");
    assert_eq!(failed_login["role"], serde_json::Value::Null);
    assert!(rows.iter().any(|r| r["path"] == "/api/v1/latest" && r["status"] == 500));
    let raw = rows.iter().find(|r| r["path"] == "/api/v1/raw").unwrap();
    assert_eq!(raw["query"], "point=no-slash&from=0&to=1&token=***", "secrets are not logged");
    assert!(!log.body.contains("s3cret") && !log.body.contains("Wrong-Horse-7"));
    // Pagination: newest first, cursor continues where the page ended.
    let first = api.get("/api/v1/api-calls?limit=3", &aud).await.json();
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = api.get(&format!("/api/v1/api-calls?limit=3&cursor={cursor}"), &aud).await.json();
    let ids = |v: &serde_json::Value| {
        v["items"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>()
    };
    let (a, b) = (ids(&first), ids(&second));
    assert!(a.windows(2).all(|w| w[0] > w[1]) && a.last() > b.first(), "{a:?} {b:?}");
    // CSV export.
    let csv = api.get("/api/v1/api-calls?format=csv&user=olga&limit=1000", &aud).await;
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let mut lines = csv.body.lines();
    assert_eq!(lines.next(), Some("id,ts_ms,user,role,method,path,query,status,latency_us,client"));
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= 5 && rows.iter().all(|l| l.contains(",olga,")), "{}", csv.body);
    // The security audit log has the logins, failures included.
    let audit = api.get("/api/v1/audit?limit=1000", &aud).await.json();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(
        actions.contains(&"login_failed") && actions.contains(&"login_ok") && actions.contains(&"user_added"),
        "{actions:?}"
    );
    let csv = api.get("/api/v1/audit?format=csv", &aud).await;
    assert!(csv.body.starts_with("id,ts_ms,actor,action,target,detail,client\r\n"), "{}", csv.body);
    let chain = api.get("/api/v1/audit?source=alarms", &aud).await;
    assert_eq!(chain.status, 200, "{}", chain.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tables_refuse_update_and_delete() {
    let api = start(AuthConfig::default()).await;
    api.user("olga", Role::Operator, None).await;
    login(api.port, "olga", PASSWORD).await;
    api.state.calls.flush().await;
    let pool = vigil_central::identity::open_access_db(api.dir.path()).await.unwrap();
    for table in ["api_calls", "security_audit"] {
        let count = |pool: sqlx::SqlitePool| async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        let before = count(pool.clone()).await;
        assert!(before > 0, "{table} has rows");
        for stmt in [format!("UPDATE {table} SET ts_ms = 0"), format!("DELETE FROM {table}")] {
            let e = sqlx::query(sqlx::AssertSqlSafe(stmt.clone())).execute(&pool).await.unwrap_err().to_string();
            assert!(e.contains("append-only"), "{stmt}: {e}");
        }
        assert_eq!(count(pool.clone()).await, before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_a_problem_document_rejections_of_the_framework_included() {
    let api = start(AuthConfig::default()).await;
    api.user("root", Role::ParkAdmin, None).await;
    let admin = login(api.port, "root", PASSWORD).await;
    let content_type = |a: &Answer| a.headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone());
    // A path parameter that is not a number, a query that does not parse, a method a path lacks,
    // a body over the limit, a path no route has.
    let cases = [
        ("GET", "/api/v1/gateways/gw-a/config/not-a-number", None, 400),
        ("GET", "/api/v1/aggregate?point=gw-a/p1&from=x&to=1&bucket_ms=1", None, 400),
        ("PUT", "/api/v1/gateways", None, 405),
        ("POST", "/api/v1/enrolments", Some("x".repeat(5000)), 413),
        ("GET", "/api/v1/nothing-here", None, 404),
    ];
    for (method, path, body, status) in cases {
        let a = request(api.port, method, path, Some(&admin), &[], body.as_deref()).await;
        assert_eq!(a.status, status, "{method} {path}: {}", a.body);
        assert_eq!(content_type(&a).as_deref(), Some("application/problem+json"), "{method} {path}: {:?}", a.headers);
        let v = a.json();
        assert_eq!(v["status"], status, "{method} {path}: {v}");
        assert!(!v["detail"].as_str().unwrap().is_empty(), "{method} {path}: {v}");
    }
    let a = request(api.port, "PUT", "/api/v1/gateways", Some(&admin), &[], None).await;
    assert!(a.headers.iter().any(|(k, v)| k == "allow" && v.contains("GET")), "405 keeps Allow: {:?}", a.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_every_documented_route_answers() {
    let api = start(AuthConfig::default()).await;
    let doc = request(api.port, "GET", "/api/v1/openapi.json", None, &[], None).await;
    assert_eq!(doc.status, 200);
    let v = doc.json();
    assert_eq!(v["openapi"], "3.1.0");
    assert_eq!(v["paths"]["/api/v1/users"]["get"]["x-roles"], serde_json::json!(["security_admin"]));
    assert_eq!(v["paths"]["/api/v1/auth/login"]["post"]["security"], serde_json::json!([]));
    let health = request(api.port, "GET", "/api/v1/health", None, &[], None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_pushes_are_confined_to_the_callers_enterprises_and_checked() {
    let api = start(AuthConfig::default()).await;
    api.user("tech", Role::FieldTechnician, Some(&["ent-a"])).await;
    api.user("boss", Role::ParkAdmin, None).await;
    let tech = login(api.port, "tech", PASSWORD).await;
    let boss = login(api.port, "boss", PASSWORD).await;
    let doc = |gw: &str, ent: &str| serde_json::json!({ "toml": format!("[gateway]\nid = \"{gw}\"\nenterprise = \"{ent}\"\nkey_file = \"k\"\n") });
    let a = api.post("/api/v1/gateways/gw-b/config", Some(&tech), doc("gw-b", "ent-b")).await;
    assert_eq!(a.status, 404, "another enterprise's gateway does not exist for the technician: {}", a.body);
    let a = api.get("/api/v1/gateways/gw-b/config", &tech).await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = api.post("/api/v1/gateways/gw-a/config", Some(&tech), doc("gw-b", "ent-a")).await;
    assert_eq!(a.status, 400, "a file naming another gateway is refused: {}", a.body);
    assert!(a.body.contains("gw-b"), "{}", a.body);
    let a = api.post("/api/v1/gateways/gw-a/config", Some(&tech), doc("gw-a", "ent-a")).await;
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.json()["version"], 1);
    let a = api.post("/api/v1/gateways/gw-a/config", Some(&boss), doc("gw-a", "ent-a")).await;
    assert_eq!(a.json()["version"], 2, "versions count up per gateway");
    let list = api.get("/api/v1/gateways/gw-a/config", &boss).await.json();
    let statuses: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["sent", "superseded"], "newest first; an unanswered older push is superseded");
    let one = api.get("/api/v1/gateways/gw-a/config/1", &tech).await.json();
    assert_eq!(one["pushed_by"], "tech");
    assert!(one["toml"].as_str().unwrap().contains("id = \"gw-a\""));
    assert_eq!(api.get("/api/v1/gateways/gw-a/config/9", &tech).await.status, 404);
    // No broker in this harness: both pushes are stored, none was sent; /metrics says so.
    let (_, metrics) = support::http_get(api.port, "/metrics").unwrap();
    assert!(metrics.lines().any(|l| l == "vigil_config_push_sent_total 0"), "{metrics}");
}
