#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Notifications against a real local HTTP receiver (an axum listener in the test): immediate
//! delivery with retries while the receiver fails then recovers, giving up with every attempt in
//! the delivery log, escalation when a pick-up deadline passes (on the alarm's timeline), reminders
//! of an unacknowledged alarm, and the logging SMS sender.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tokio::sync::Mutex;
use vigil_central::alarms::{AlarmConfig, AlarmEngine, AlarmKey, AlarmSource, Condition};
use vigil_central::notify::{Delivery, DeliveryLog, Notifier};
use vigil_common::{GatewayId, PointId, Sample};

#[derive(Default)]
struct Receiver {
    /// Answer 503 to this many requests first.
    fail_first: AtomicUsize,
    hits: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
}

async fn hook(State(r): State<Arc<Receiver>>, body: String) -> StatusCode {
    r.hits.fetch_add(1, Ordering::SeqCst);
    if r.fail_first.load(Ordering::SeqCst) > 0 {
        r.fail_first.fetch_sub(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.bodies.lock().await.push(serde_json::from_str(&body).unwrap());
    StatusCode::NO_CONTENT
}

async fn receiver(fail_first: usize) -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver { fail_first: AtomicUsize::new(fail_first), ..Receiver::default() });
    let app = axum::Router::new().route("/hook", post(hook)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

struct Env {
    _dir: tempfile::TempDir,
    engine: Arc<Mutex<AlarmEngine>>,
    log: DeliveryLog,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start(defs: &str) -> Env {
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
    let cfg = AlarmConfig::from_toml("defs", defs).unwrap();
    let notifier = Notifier::new(cfg.notify.clone(), pool.clone()).await.unwrap();
    let log = notifier.log();
    let engine = AlarmEngine::open_sqlite(pool, cfg).await.unwrap();
    let changes = engine.subscribe();
    let engine = Arc::new(Mutex::new(engine));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(notifier.run(changes, engine.clone(), stopped));
    Env { _dir: dir, engine, log, _stop: stop }
}

fn now() -> i64 {
    vigil_central::ingest::now_ms()
}

impl Env {
    async fn raise(&self, point: &str, v: f64) -> i64 {
        let t = now();
        let mut e = self.engine.lock().await;
        e.on_sample(&GatewayId::new("gw-a").unwrap(), &PointId::new(point).unwrap(), &Sample::good(t, v), t)
            .await
            .unwrap();
        e.current(&AlarmKey { source: AlarmSource::Point(point.into()), condition: Condition::Hi }).unwrap().id
    }

    /// Polls the delivery log until `done` holds (bounded; the test fails after a minute).
    async fn deliveries_until(&self, alarm: i64, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        for _ in 0..600 {
            let rows = self.log.list(Some(alarm)).await.unwrap();
            if done(&rows) {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("delivery log never got there: {:?}", self.log.list(Some(alarm)).await.unwrap());
    }
}

fn defs(url: &str, extra: &str) -> String {
    format!(
        r#"
[engine]
pickup_sa_s = 180

[[point]]
id = "P1"
enterprise = "ent-a"
grade = "A"
h = 5.0

[[point]]
id = "P2"
enterprise = "ent-b"
grade = "C"
h = 5.0

[notify]
max_attempts = 4
backoff_initial_ms = 50
backoff_max_ms = 200
timeout_ms = 5000

[[notify.channel]]
name = "room"
kind = "webhook"
url = "{url}"

[[notify.channel]]
name = "duty-sms"
kind = "sms_log"
to = ["+86 10 5555 0100"]

[[notify.rule]]
name = "grade A at once"
when = "immediately"
grades = ["S", "A"]
role = "operator"
channels = ["room", "duty-sms"]
{extra}
"#
    )
}

#[tokio::test]
async fn webhook_retries_a_failing_receiver_until_it_recovers() {
    let (recv, url) = receiver(2).await;
    let env = start(&defs(&url, "")).await;
    let id = env.raise("P1", 9.0).await;
    let rows = env.deliveries_until(id, |r| r.iter().any(|d| d.channel == "room" && d.status == "delivered")).await;
    let room: Vec<(u32, &str)> =
        rows.iter().filter(|d| d.channel == "room").map(|d| (d.attempt, d.status.as_str())).collect();
    assert_eq!(room, [(1, "failed"), (2, "failed"), (3, "delivered")]);
    assert!(rows.iter().filter(|d| d.channel == "room").take(2).all(|d| d.error.as_deref().unwrap().contains("503")));
    assert!(rows.iter().all(|d| d.rule == "grade A at once" && d.reason == "raised"));
    // The logging SMS sender "delivers" at once (it only writes the log).
    assert!(rows.iter().any(|d| (d.channel.as_str(), d.attempt, d.status.as_str()) == ("duty-sms", 1, "delivered")));
    assert_eq!(recv.hits.load(Ordering::SeqCst), 3);
    let bodies = recv.bodies.lock().await;
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["alarm"]["id"].as_i64(), Some(id));
    assert_eq!(bodies[0]["role"], "operator");
    assert_eq!(bodies[0]["reason"], "raised");
    assert!(bodies[0]["text"].as_str().unwrap().contains("point:P1"), "{}", bodies[0]);
    // Grade C of another enterprise matches no rule: nothing is sent.
    let other = env.raise("P2", 9.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.log.list(Some(other)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_receiver_that_never_recovers_is_given_up_with_every_attempt_logged() {
    let (recv, url) = receiver(usize::MAX / 2).await;
    let env = start(&defs(&url, "")).await;
    let id = env.raise("P1", 9.0).await;
    let rows = env.deliveries_until(id, |r| r.iter().any(|d| d.status == "gave_up")).await;
    let room: Vec<(u32, &str)> =
        rows.iter().filter(|d| d.channel == "room").map(|d| (d.attempt, d.status.as_str())).collect();
    assert_eq!(room, [(1, "failed"), (2, "failed"), (3, "failed"), (4, "gave_up")]);
    assert_eq!(recv.hits.load(Ordering::SeqCst), 4);
    // An unreachable receiver (nothing listens) fails with a transport error, logged the same way.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env2 = start(&defs(&format!("http://127.0.0.1:{port}/hook"), "")).await;
    let id = env2.raise("P1", 9.0).await;
    let rows = env2.deliveries_until(id, |r| r.iter().any(|d| d.status == "gave_up")).await;
    let last = rows.iter().rfind(|d| d.channel == "room").unwrap();
    assert!(last.error.as_deref().unwrap().contains("transport"), "{last:?}");
}

#[tokio::test]
async fn escalation_goes_up_the_chain_and_is_on_the_timeline() {
    let (recv, url) = receiver(0).await;
    let extra = r#"
[[notify.rule]]
name = "shift leader"
when = "supervision"
level = 1
role = "operator"
channels = ["room"]

[[notify.rule]]
name = "park manager"
when = "supervision"
level = 2
role = "park_admin"
channels = ["room"]
"#;
    let env = start(&defs(&url, extra)).await;
    let id = env.raise("P1", 9.0).await;
    // The deadline (3 minutes for grade A) passes twice without acknowledgement.
    let t = now();
    let timeline_with = |n: usize| {
        let engine = env.engine.clone();
        async move {
            for _ in 0..600 {
                let tl = engine.lock().await.timeline(id).await.unwrap();
                if tl.iter().filter(|t| t.what == "escalation").count() == n {
                    return tl;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("escalation {n} never reached the timeline");
        }
    };
    env.engine.lock().await.tick(t + 181_000).await.unwrap();
    timeline_with(1).await;
    env.engine.lock().await.tick(t + 400_000).await.unwrap();
    let tl = timeline_with(2).await;
    let rows = env.deliveries_until(id, |r| r.iter().filter(|d| d.reason == "escalation").count() == 2).await;
    let rules: Vec<&str> = rows.iter().filter(|d| d.reason == "escalation").map(|d| d.rule.as_str()).collect();
    assert_eq!(rules, ["shift leader", "park manager"]);
    let bodies = recv.bodies.lock().await.clone();
    let esc: Vec<(&str, i64)> = bodies
        .iter()
        .filter(|b| b["reason"] == "escalation")
        .map(|b| (b["role"].as_str().unwrap(), b["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(esc, [("operator", 1), ("park_admin", 2)]);
    // The timeline records each escalation, after the supervision that caused it.
    let what: Vec<&str> = tl.iter().map(|t| t.what.as_str()).collect();
    assert_eq!(what, ["raised", "supervision", "escalation", "supervision", "escalation"]);
    assert!(tl[2].detail.contains("shift leader") && tl[4].detail.contains("park manager"));
}

#[tokio::test]
async fn reminders_while_unacknowledged_stop_at_the_limit() {
    let (recv, url) = receiver(0).await;
    let extra = r#"
[[notify.rule]]
name = "reminder"
when = "unacknowledged"
after_s = 1
every_s = 1
times = 3
channels = ["room"]
"#;
    let env = start(&defs(&url, extra)).await;
    let id = env.raise("P1", 9.0).await;
    let rows = env
        .deliveries_until(id, |r| r.iter().filter(|d| d.rule == "reminder" && d.status == "delivered").count() == 3)
        .await;
    let reasons: Vec<&str> = rows.iter().filter(|d| d.rule == "reminder").map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons, ["unacknowledged", "reminder", "reminder"]);
    let bodies = recv.bodies.lock().await;
    let counts: Vec<i64> =
        bodies.iter().filter(|b| b["rule"] == "reminder").map(|b| b["count"].as_i64().unwrap()).collect();
    assert_eq!(counts, [1, 2, 3]);
}

#[test]
fn bad_notify_configuration_is_refused_naming_the_key() {
    let bad = [
        ("[[notify.channel]]\nname = \"w\"\nkind = \"webhook\"\n", "channel[0] (w).url"),
        ("[[notify.channel]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n", "url"),
        ("[[notify.rule]]\nname = \"r\"\nwhen = \"immediately\"\nchannels = [\"nope\"]\n", "rule[0] (r).channels"),
        (
            "[[notify.channel]]\nname = \"s\"\nkind = \"sms_log\"\n[[notify.rule]]\nname = \"r\"\nwhen = \"immediately\"\nchannels = [\"s\"]\ntimes = 0\n",
            "times",
        ),
        ("[notify]\nmax_attempts = 0\n", "max_attempts"),
    ];
    for (text, key) in bad {
        let err = AlarmConfig::from_toml("alarms.toml", text).unwrap_err().to_string();
        assert!(err.contains("alarms.toml: notify.") && err.contains(key), "{text}: {err}");
    }
}

/// An https listener for the test receiver (TLS handshakes that fail are dropped).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((s, a)) = self.tcp.accept().await else { continue };
            if let Ok(t) = self.acceptor.accept(s).await {
                return (t, a);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An https receiver with a certificate for 127.0.0.1 signed by a fresh CA; returns the CA (PEM).
async fn https_receiver(fail_first: usize) -> (Arc<Receiver>, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let r = Arc::new(Receiver { fail_first: AtomicUsize::new(fail_first), ..Receiver::default() });
    let app = axum::Router::new().route("/hook", post(hook)).with_state(r.clone());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", tcp.local_addr().unwrap());
    let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) };
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url, ca.pem())
}

#[tokio::test]
async fn https_webhook_verifies_the_receiver_and_retries() {
    let (recv, url, ca_pem) = https_receiver(1).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let with_ca = defs(&url, "")
        .replace(&format!("url = \"{url}\""), &format!("url = \"{url}\"\nca_file = \"{}\"", ca_file.display()));
    let env = start(&with_ca).await;
    let id = env.raise("P1", 9.0).await;
    let rows = env.deliveries_until(id, |r| r.iter().any(|d| d.channel == "room" && d.status == "delivered")).await;
    let room: Vec<(u32, &str)> =
        rows.iter().filter(|d| d.channel == "room").map(|d| (d.attempt, d.status.as_str())).collect();
    assert_eq!(room, [(1, "failed"), (2, "delivered")]);
    assert_eq!(recv.bodies.lock().await[0]["alarm"]["id"].as_i64(), Some(id));

    // Without the receiver's CA (system roots only) the TLS handshake is refused: nothing is
    // delivered and the delivery log says why.
    let (recv2, url2, _) = https_receiver(0).await;
    let env2 = start(&defs(&url2, "")).await;
    let id = env2.raise("P1", 9.0).await;
    let rows = env2.deliveries_until(id, |r| r.iter().any(|d| d.channel == "room" && d.status == "gave_up")).await;
    let err = rows.iter().rfind(|d| d.channel == "room").unwrap().error.clone().unwrap();
    assert!(err.contains("certificate") || err.contains("Certificate"), "{err}");
    assert_eq!(recv2.hits.load(Ordering::SeqCst), 0);
}
