#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gateway enrolment over a real bound listener: who may create tokens, a token redeemed once (the
//! key registered, a certificate chaining to the park CA with CN = gateway id), and every refusal:
//! used, concurrently used, expired, unknown, wrong common name.

mod support;

use std::sync::{Arc, RwLock};

use support::{Answer, login, request};
use vigil_central::api::{ApiState, Role};
use vigil_central::config::{ApiConfig, EnrolSettings};
use vigil_central::historian::{FileChunkStore, Historian};
use vigil_central::identity::{AuthConfig, NewUser};
use vigil_common::{GatewayId, SigningKey, enrolment};

const PASSWORD: &str = "Correct-Horse-7";

struct Api {
    port: u16,
    state: ApiState,
    dir: tempfile::TempDir,
    central_key: String,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    vigil_central::broker::pki::init(&pki, "vigil-central", &[]).unwrap();
    let central_key = vigil_common::keyfile::create(&dir.path().join("central.key")).unwrap();
    let store = FileChunkStore::open(&dir.path().join("chunks")).unwrap();
    let h = Historian::open(Box::new(store), 0, 1_000_000).unwrap();
    let settings = ApiConfig {
        enrolment: EnrolSettings {
            ca_cert_file: Some(pki.join("ca.pem")),
            ca_key_file: Some(pki.join("ca.key")),
            central_key_file: Some(dir.path().join("central.key")),
            broker_host: None,
            broker_port: 18883,
        },
        ..ApiConfig::default()
    };
    let state =
        ApiState::open(dir.path(), settings, AuthConfig::default(), Arc::new(RwLock::new(h)), Arc::default(), None)
            .await
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(vigil_central::api::serve(listener, state.clone()));
    Api { port, state, dir, central_key: central_key.public_key().to_text() }
}

impl Api {
    async fn user(&self, name: &str, role: Role, enterprises: Option<&[&str]>) -> String {
        let new = NewUser {
            name: name.into(),
            role,
            enterprises: enterprises.map(|l| l.iter().map(|e| e.to_string()).collect()),
            password: PASSWORD.into(),
            must_change: false,
        };
        self.state.identity.add_user(new, "test", "test", vigil_central::ingest::now_ms()).await.unwrap();
        login(self.port, name, PASSWORD).await
    }

    async fn create(&self, token: &str, gateway: &str, enterprise: &str, ttl_s: u64) -> Answer {
        let body = serde_json::json!({ "gateway": gateway, "enterprise": enterprise, "ttl_s": ttl_s }).to_string();
        request(self.port, "POST", "/api/v1/enrolments", Some(token), &[], Some(&body)).await
    }

    async fn redeem(&self, token: &str, key: &SigningKey, cn: &str) -> Answer {
        let body = redeem_body(token, key, cn);
        request(self.port, "POST", "/api/v1/enrol", None, &[], Some(&body)).await
    }
}

fn redeem_body(token: &str, key: &SigningKey, cn: &str) -> String {
    let tls = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let csr = params.serialize_request(&tls).unwrap().pem().unwrap();
    let public_key = key.public_key().to_text();
    let k = enrolment::token_key(token);
    let mac = enrolment::request_mac(&k, &public_key, &csr);
    serde_json::json!({ "token_id": enrolment::token_id(&k), "public_key": public_key, "csr": csr, "mac": mac })
        .to_string()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_enrols_its_gateway_once_and_everything_else_is_refused() {
    let api = start().await;
    let admin = api.user("root", Role::ParkAdmin, None).await;
    let (status, metrics_before) = support::http_get(api.port, "/metrics").unwrap();
    assert_eq!(status, 200);

    let created = api.create(&admin, "gw-new", "ent-a", 3600).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let token = created.json()["token"].as_str().unwrap().to_owned();
    assert!(created.json()["expires_ms"].as_i64().unwrap() > vigil_central::ingest::now_ms() + 3_500_000);
    let pending = request(api.port, "GET", "/api/v1/enrolments", Some(&admin), &[], None).await.json();
    assert_eq!(pending["items"].as_array().unwrap().len(), 1);
    assert_eq!(pending["items"][0]["gateway"], "gw-new");
    assert!(!pending.to_string().contains(&token), "a listing never shows the token");

    // The wrong common name is refused and does not use the token up.
    let key = SigningKey::generate().unwrap();
    let wrong = api.redeem(&token, &key, "gw-other").await;
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert_eq!(wrong.header("content-type"), Some("application/problem+json"));
    assert!(wrong.json()["detail"].as_str().unwrap().contains("gw-new"), "{}", wrong.body);

    // A request altered on the way (another key put in after the MAC was made) is refused and
    // does not use the token up.
    let mut forged: serde_json::Value = serde_json::from_str(&redeem_body(&token, &key, "gw-new")).unwrap();
    forged["public_key"] = serde_json::Value::String(SigningKey::generate().unwrap().public_key().to_text());
    let a = request(api.port, "POST", "/api/v1/enrol", None, &[], Some(&forged.to_string())).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.json()["reason"], "bad_proof");

    // Redeemed once: the key is registered, the certificate chains to the CA with CN = gateway id.
    let ok = api.redeem(&token, &key, "gw-new").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // The answer is authenticated by the token: its MAC verifies, and not for another body.
    let mac = ok.header(enrolment::ANSWER_MAC_HEADER).expect("answer MAC header").to_owned();
    let k = enrolment::token_key(&token);
    assert!(enrolment::answer_mac_ok(&k, ok.body.as_bytes(), &mac));
    assert!(!enrolment::answer_mac_ok(&k, ok.body.replace("gw-new", "gw-evil").as_bytes(), &mac));
    let e = ok.json();
    assert_eq!((e["gateway"].as_str(), e["enterprise"].as_str()), (Some("gw-new"), Some("ent-a")));
    assert_eq!(e["central_public_key"].as_str(), Some(api.central_key.as_str()));
    assert_eq!((e["broker"]["host"].as_str(), e["broker"]["port"].as_u64()), (Some("localhost"), Some(18883)));
    let ca_pem = std::fs::read_to_string(api.dir.path().join("pki/ca.pem")).unwrap();
    assert_eq!(e["ca_pem"].as_str(), Some(ca_pem.as_str()));
    let cert_pem = e["cert_pem"].as_str().unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    let cn: Vec<&str> = cert.subject().iter_common_name().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cn, ["gw-new"]);
    {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider).build().unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        verifier.verify_client_cert(&der, &[], rustls_pki_types::UnixTime::now()).unwrap();
    }
    let keys = api.state.registry.load_keys().await.unwrap();
    let g = &keys[&GatewayId::new("gw-new").unwrap()];
    assert_eq!(g.enterprise.as_str(), "ent-a");
    assert!(g.usable(key.public_key().key_id(), vigil_central::ingest::now_ms()).is_some());
    let pending = request(api.port, "GET", "/api/v1/enrolments", Some(&admin), &[], None).await.json();
    assert!(pending["items"].as_array().unwrap().is_empty(), "{pending}");

    // Twice: refused (410), whatever key is offered.
    let again = api.redeem(&token, &SigningKey::generate().unwrap(), "gw-new").await;
    assert_eq!(again.status, 410, "{}", again.body);
    assert_eq!(again.json()["reason"], "used");
    // Unknown: 401.
    let unknown = api.redeem("vigil-enrol-00", &SigningKey::generate().unwrap(), "gw-new").await;
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    // Expired: 410 (made to expire by moving its expiry into the past).
    let t = api.create(&admin, "gw-late", "ent-a", 60).await.json()["token"].as_str().unwrap().to_owned();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(api.dir.path().join("meta.db")))
        .await
        .unwrap();
    sqlx::query("UPDATE enrolments SET expires_ms = 1 WHERE gateway = 'gw-late'").execute(&pool).await.unwrap();
    let late = api.redeem(&t, &SigningKey::generate().unwrap(), "gw-late").await;
    assert_eq!(late.status, 410, "{}", late.body);
    assert_eq!(late.json()["reason"], "expired");
    assert!(api.state.registry.enterprise_of(&GatewayId::new("gw-late").unwrap()).await.unwrap().is_none());

    // Two concurrent redemptions of one token: exactly one enrols.
    let t = api.create(&admin, "gw-race", "ent-a", 600).await.json()["token"].as_str().unwrap().to_owned();
    let (b1, b2) = (
        redeem_body(&t, &SigningKey::generate().unwrap(), "gw-race"),
        redeem_body(&t, &SigningKey::generate().unwrap(), "gw-race"),
    );
    let (a1, a2) = tokio::join!(
        request(api.port, "POST", "/api/v1/enrol", None, &[], Some(&b1)),
        request(api.port, "POST", "/api/v1/enrol", None, &[], Some(&b2)),
    );
    let mut statuses = [a1.status, a2.status];
    statuses.sort();
    assert_eq!(statuses, [200, 410], "{} / {}", a1.body, a2.body);
    let keys = api.state.registry.load_keys().await.unwrap();
    assert_eq!(keys[&GatewayId::new("gw-race").unwrap()].keys.len(), 1);

    // Refusals are counted; every call is in the API-call log, the token nowhere in it.
    let (_, metrics) = support::http_get(api.port, "/metrics").unwrap();
    let refused = |t: &str, r: &str| metric(t, &format!("vigil_enrol_refused_total{{reason=\"{r}\"}}"));
    assert!(refused(&metrics, "used") >= refused(&metrics_before, "used") + 2, "{metrics}");
    assert!(refused(&metrics, "expired") > refused(&metrics_before, "expired"));
    assert!(refused(&metrics, "unknown") > refused(&metrics_before, "unknown"));
    assert!(refused(&metrics, "bad_request") > refused(&metrics_before, "bad_request"));
    assert!(refused(&metrics, "bad_proof") > refused(&metrics_before, "bad_proof"));
    assert!(metric(&metrics, "vigil_enrol_redeemed_total") >= 2);
    api.state.calls.flush().await;
    let auditor = api.user("audrey", Role::Auditor, None).await;
    let calls = request(api.port, "GET", "/api/v1/api-calls?limit=1000", Some(&auditor), &[], None).await;
    assert_eq!(calls.status, 200, "{}", calls.body);
    let enrols = calls.json()["items"].as_array().unwrap().iter().filter(|c| c["path"] == "/api/v1/enrol").count();
    assert!(enrols >= 7, "{}", calls.body);
    assert!(!calls.body.contains(&token), "the token reached the API-call log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_and_assigned_field_technicians_create_tokens() {
    let api = start().await;
    let eve = api.user("eve", Role::EnterpriseUser, Some(&["ent-a"])).await;
    let tom = api.user("tom", Role::FieldTechnician, Some(&["ent-a"])).await;
    let olga = api.user("olga", Role::Operator, None).await;
    let admin = api.user("root", Role::ParkAdmin, None).await;

    let a = api.create(&eve, "gw-1", "ent-a", 600).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(api.create(&olga, "gw-1", "ent-a", 600).await.status, 403);
    assert_eq!(request(api.port, "GET", "/api/v1/enrolments", Some(&eve), &[], None).await.status, 403);
    let a = api.create(&tom, "gw-2", "ent-b", 600).await;
    assert_eq!(a.status, 403, "a technician enrols only for assigned enterprises: {}", a.body);
    assert!(a.json()["detail"].as_str().unwrap().contains("ent-b"));
    assert_eq!(api.create(&tom, "gw-1", "ent-a", 600).await.status, 201);
    assert_eq!(api.create(&admin, "gw-3", "ent-b", 600).await.status, 201);
    // A technician lists only the enrolments of assigned enterprises; the admin all.
    let mine = request(api.port, "GET", "/api/v1/enrolments", Some(&tom), &[], None).await.json();
    let gws: Vec<&str> = mine["items"].as_array().unwrap().iter().map(|e| e["gateway"].as_str().unwrap()).collect();
    assert_eq!(gws, ["gw-1"]);
    let all = request(api.port, "GET", "/api/v1/enrolments", Some(&admin), &[], None).await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    // Bad input is a 400 naming the field; a gateway of another enterprise a 409.
    assert_eq!(api.create(&admin, "gw-4", "ent-a", 5).await.status, 400);
    assert_eq!(api.create(&admin, "bad/id", "ent-a", 600).await.status, 400);
    let key = SigningKey::generate().unwrap().public_key();
    let (gw, ent) = (GatewayId::new("gw-b").unwrap(), vigil_common::EnterpriseId::new("ent-b").unwrap());
    api.state.registry.add(&gw, &ent, &key, 1).await.unwrap();
    let a = api.create(&tom, "gw-b", "ent-a", 600).await;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(!a.body.contains("ent-b"), "a technician is not told other enterprises: {}", a.body);
    // Without a session the create and list endpoints answer 401.
    assert_eq!(request(api.port, "GET", "/api/v1/enrolments", None, &[], None).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_token_can_be_revoked_and_is_then_refused() {
    let api = start().await;
    let admin = api.user("root", Role::ParkAdmin, None).await;
    let tom = api.user("tom", Role::FieldTechnician, Some(&["ent-a"])).await;
    let eve = api.user("eve", Role::EnterpriseUser, Some(&["ent-b"])).await;
    let token_b = api.create(&admin, "gw-b1", "ent-b", 600).await.json()["token"].as_str().unwrap().to_owned();
    let token_a = api.create(&tom, "gw-a1", "ent-a", 600).await.json()["token"].as_str().unwrap().to_owned();
    let all = request(api.port, "GET", "/api/v1/enrolments", Some(&admin), &[], None).await.json();
    let id_of = |gw: &str| {
        all["items"].as_array().unwrap().iter().find(|e| e["gateway"] == gw).unwrap()["id"].as_str().unwrap().to_owned()
    };
    let (id_a, id_b) = (id_of("gw-a1"), id_of("gw-b1"));
    let delete = |who: String, id: String| async move {
        request(api.port, "DELETE", &format!("/api/v1/enrolments/{id}"), Some(&who), &[], None).await
    };
    // Another enterprise's token is not found for a technician; an enterprise user may not revoke.
    let r = delete(tom.clone(), id_b.clone()).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.headers.iter().find(|(k, _)| k == "content-type").unwrap().1, "application/problem+json");
    assert_eq!(delete(eve.clone(), id_b.clone()).await.status, 403);
    assert_eq!(delete(tom.clone(), "not-an-id".into()).await.status, 404);
    // The technician revokes the token of an assigned enterprise: it is no longer pending or usable.
    let r = delete(tom.clone(), id_a.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["gateway"], "gw-a1");
    assert_eq!(delete(tom.clone(), id_a.clone()).await.status, 404, "revoked once");
    let left = request(api.port, "GET", "/api/v1/enrolments", Some(&admin), &[], None).await.json();
    assert_eq!(left["items"].as_array().unwrap().len(), 1);
    let key = SigningKey::generate().unwrap();
    let refused = api.redeem(&token_a, &key, "gw-a1").await;
    assert_eq!(refused.status, 410, "{}", refused.body);
    assert_eq!(refused.json()["reason"], "revoked");
    assert!(api.state.registry.enterprise_of(&GatewayId::new("gw-a1").unwrap()).await.unwrap().is_none());
    // The other token still enrols; a used token cannot be revoked.
    assert_eq!(api.redeem(&token_b, &key, "gw-b1").await.status, 200);
    assert_eq!(delete(admin.clone(), id_b).await.status, 404);
    let (_, metrics) = support::http_get(api.port, "/metrics").unwrap();
    assert_eq!(metric(&metrics, "vigil_enrol_tokens_revoked_total"), 1);
    assert_eq!(metric(&metrics, "vigil_enrol_refused_total{reason=\"revoked\"}"), 1);
}
