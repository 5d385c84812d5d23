//! Gas cameras against the simulated camera (`vigil_tools::sim::camera`) over real sockets: a pushed
//! detection goes through the agent's spool and a TLS broker to a real central (ingest, WAL,
//! evidence store) whose API serves the snapshot; hostile pushes get 4xx and counters; a snapshot
//! over the bound is refused without reading it all; the ONVIF subscription survives a camera
//! reboot and malformed answers; liveness checks report offline/online.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::{ENTERPRISE, GATEWAY, Park, gateway_id, wait_for};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use vigil_central::api::ApiState;
use vigil_central::identity::NewUser;
use vigil_common::event::DetectionPhase;
use vigil_common::{ClockQuality, EnterpriseId, Event, EventKind, TimeSource};
use vigil_edge::Record;
use vigil_edge::agent::{Hardware, run_with};
use vigil_edge::sources::camera::{self, CameraMetrics, CamerasConfig, Hub, client};
use vigil_tools::broker::free_port;
use vigil_tools::sim::camera::{CameraSim, CameraSimConfig, PushCreds, jpeg};

const SECRET: &str = "0123456789abcdef-cam";

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/camera-models")
}

fn secret() -> PushCreds {
    PushCreds::Secret { header: "X-Camera-Secret".into(), secret: SECRET.into() }
}

/// A hub for the `[cameras]` TOML `section` (models from the repository), sending into a channel.
fn hub(section: &str) -> (Arc<Hub>, mpsc::Receiver<Record>) {
    let mut cfg: CamerasConfig = toml::from_str(section).unwrap();
    cfg.model_dir = models_dir();
    let (cameras, problems) = camera::resolve(&cfg, Path::new("/nonexistent/gateway.toml"));
    assert!(problems.is_empty(), "{problems:?}");
    let (tx, rx) = mpsc::channel(64);
    let clock = ClockQuality { synchronised: false, source: TimeSource::Gateway };
    (Arc::new(Hub::new(cfg, cameras, Arc::new(CameraMetrics::default()), clock, tx)), rx)
}

async fn next_event(rx: &mut mpsc::Receiver<Record>) -> Event {
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(Record::Event(e))) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn get(port: u16, token: Option<&str>, path: &str) -> client::Response {
    let auth: Vec<(&str, String)> = token.map(|t| ("authorization", format!("Bearer {t}"))).into_iter().collect();
    client::send(
        axum::http::Method::GET,
        &format!("http://127.0.0.1:{port}{path}"),
        &auth,
        Vec::new(),
        Duration::from_secs(10),
        4 << 20,
    )
    .await
    .unwrap()
}

async fn serve_api(state: ApiState) -> u16 {
    let app = vigil_central::api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Creates a user in central's identity store and logs it in through the API; its bearer token.
async fn user(state: &ApiState, port: u16, name: &str, role: &str, enterprise: Option<&str>) -> String {
    let password = state.identity.generate_password(name).unwrap();
    let new = NewUser {
        name: name.into(),
        role: serde_json::from_value(serde_json::json!(role)).unwrap(),
        enterprises: enterprise.map(|e| vec![e.to_owned()]),
        password: password.clone(),
        must_change: false,
    };
    state.identity.add_user(new, "test", "127.0.0.1", vigil_edge::spool::now_ms()).await.unwrap();
    let body = serde_json::json!({ "user": name, "password": password }).to_string().into_bytes();
    let answer = client::send(
        axum::http::Method::POST,
        &format!("http://127.0.0.1:{port}/api/v1/auth/login"),
        &[("content-type", "application/json".to_owned())],
        body,
        Duration::from_secs(10),
        1 << 20,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "login of {name}");
    let v: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_detection_reaches_central_and_its_snapshot_is_served() {
    let mut park = Park::new();
    park.central_key = vigil_common::keyfile::create(&park.dir.path().join("central.key")).unwrap();
    let push_port = free_port().unwrap();
    park.extra_config = format!(
        r#"
[cameras]
listen = "127.0.0.1:{push_port}"
model_dir = "{models}"

[[cameras.camera]]
name = "cam-1"
model = "vigil-sim"
host = "127.0.0.1"
auth = {{ kind = "secret", secret = "{SECRET}" }}
"#,
        models = models_dir().display()
    );
    let plant = Arc::new(park.gateway_config(park.broker.port()));

    // A real central: registry, ingest over the TLS broker, WAL, evidence store, API.
    let d = park.dir.path();
    std::fs::create_dir_all(d.join("central-data")).unwrap();
    std::fs::write(
        d.join("central.toml"),
        format!(
            r#"
data_dir = "{data}"
key_file = "{key}"

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "central"

[mqtt.tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{tlskey}"
"#,
            data = d.join("central-data").display(),
            key = d.join("central.key").display(),
            port = park.broker.port(),
            ca = park.pki.ca_file().display(),
            cert = park.central_tls.cert.display(),
            tlskey = park.central_tls.key.display(),
        ),
    )
    .unwrap();
    let cfg = vigil_central::config::Config::load(&d.join("central.toml")).unwrap();
    let registry = vigil_central::store::Registry::open(&cfg.data_dir).await.unwrap();
    let ent = EnterpriseId::new(ENTERPRISE).unwrap();
    registry.add(&gateway_id(), &ent, &park.gateway_key.public_key(), vigil_edge::spool::now_ms()).await.unwrap();
    drop(registry);
    let core = vigil_central::ingest::Core::open(cfg.clone(), park.central_key.clone()).await.unwrap();
    let evidence = core.evidence.clone();
    let mut state = ApiState::open(
        &cfg.data_dir,
        cfg.api.clone(),
        cfg.auth.clone(),
        core.historian.clone(),
        core.metrics.clone(),
        None,
    )
    .await
    .unwrap();
    state.evidence = Some(evidence.clone());
    let (client, eventloop) = rumqttc::AsyncClient::new(vigil_central::ingest::mqtt_options(&cfg.mqtt).unwrap(), 1024);
    let (lane_tx, lane_rx) = vigil_central::ingest::lanes(1024);
    tokio::spawn(vigil_central::ingest::mqtt_loop(client.clone(), eventloop, lane_tx, core.metrics.clone()));
    let (central_stop, central_stopped) = tokio::sync::oneshot::channel::<()>();
    let central = tokio::spawn(vigil_central::ingest::run(core, client, lane_rx, async move {
        let _ = central_stopped.await;
    }));

    let (stop, shutdown) = watch::channel(false);
    let agent = tokio::spawn(run_with(plant, shutdown, Hardware::default()));
    let snapshot_bytes = 300_000;
    let sim = CameraSim::start(CameraSimConfig {
        name: "cam-1".into(),
        push_to: Some(format!("http://127.0.0.1:{push_port}")),
        creds: secret(),
        snapshot_bytes,
        ..CameraSimConfig::default()
    })
    .await
    .unwrap();
    // The endpoint comes up with the agent; the camera retries like a real one.
    let mut pushed = None;
    for _ in 0..200 {
        match sim.push(true).await {
            Ok((d, 202)) => {
                pushed = Some(d);
                break;
            }
            Ok((_, status)) => panic!("push answered {status}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let det = pushed.expect("the push endpoint accepted a detection");

    assert!(wait_for(30, || !evidence.of_camera(GATEWAY, "cam-1", 10).is_empty()).await, "central stored the snapshot");
    let stored = evidence.of_camera(GATEWAY, "cam-1", 10).remove(0);
    assert_eq!(stored.bytes, snapshot_bytes as u64);
    assert_eq!(stored.content_type, "image/jpeg");
    assert_eq!(stored.enterprise, ENTERPRISE);
    assert_eq!(stored.ts_ms, det.time_ms, "the camera's own time travels with the detection");

    let port = serve_api(state.clone()).await;
    let op = user(&state, port, "op", "operator", None).await;
    let op = Some(op.as_str());
    let image = get(port, op, &format!("/api/v1/evidence/{}", stored.sha256)).await;
    assert_eq!(image.status, 200);
    assert_eq!(image.content_type.as_deref(), Some("image/jpeg"));
    assert_eq!(image.body, jpeg(det.n, snapshot_bytes), "the very image the camera served");
    let listing = get(port, op, &format!("/api/v1/evidence?gateway={GATEWAY}&camera=cam-1")).await;
    assert_eq!(listing.status, 200);
    assert!(String::from_utf8_lossy(&listing.body).contains(&stored.sha256));
    assert_eq!(get(port, op, "/api/v1/evidence/not-a-hash").await.status, 400);
    assert_eq!(get(port, op, &format!("/api/v1/evidence/{}", "0".repeat(64))).await.status, 404);

    let outsider = user(&state, port, "other", "enterprise_user", Some("ent-b")).await;
    let path = format!("/api/v1/evidence/{}", stored.sha256);
    assert_eq!(get(port, Some(&outsider), &path).await.status, 404, "other enterprise");
    assert_eq!(get(port, None, &path).await.status, 401, "no caller");

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), agent).await.unwrap().unwrap().unwrap();
    let _ = central_stop.send(());
    tokio::time::timeout(Duration::from_secs(15), central).await.unwrap().unwrap().unwrap();
    assert_eq!(sim.counters().snapshot_bytes_sent.load(std::sync::atomic::Ordering::Relaxed), snapshot_bytes as u64);
}

// The tests serve the endpoint on a listener of their own; `listen` only enables push auth.
const PUSH_SECTION: &str = r#"
listen = "127.0.0.1:0"
max_body_bytes = 4096
snapshot_max_bytes = 65536
dedup_window_s = 60

[[camera]]
name = "cam-1"
model = "vigil-sim"
host = "127.0.0.1"
auth = { kind = "secret", secret = "0123456789abcdef-cam" }

[[camera]]
name = "cam-basic"
model = "ogi-lel-example"
auth = { kind = "basic", user = "cam", password = "cam-password" }
"#;

async fn push_endpoint(section: &str) -> (Arc<Hub>, mpsc::Receiver<Record>, String, watch::Sender<bool>) {
    let (hub, rx) = hub(section);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(camera::http_push::serve(listener, hub.clone(), shutdown));
    (hub, rx, base, stop)
}

async fn post(url: &str, headers: &[(&str, String)], body: Vec<u8>) -> u16 {
    client::send(axum::http::Method::POST, url, headers, body, Duration::from_secs(10), 65536).await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pushes_get_4xx_and_are_counted_and_identical_posts_count_once() {
    let (hub, mut rx, base, _stop) = push_endpoint(PUSH_SECTION).await;
    let sim = CameraSim::start(CameraSimConfig {
        push_to: Some(base.clone()),
        creds: secret(),
        snapshot_bytes: 2000,
        ..CameraSimConfig::default()
    })
    .await
    .unwrap();
    let m = &hub.metrics;
    let d = sim.detect(true);
    let body = sim.push_body(&d);
    assert_eq!(sim.push_raw(body.clone(), &PushCreds::None).await.unwrap(), 401);
    let wrong = PushCreds::Secret { header: "X-Camera-Secret".into(), secret: "0123456789abcdef-caX".into() };
    assert_eq!(sim.push_raw(body.clone(), &wrong).await.unwrap(), 401);
    let basic_instead = PushCreds::Basic { user: "cam".into(), password: "cam-password".into() };
    assert_eq!(sim.push_raw(body.clone(), &basic_instead).await.unwrap(), 401);
    assert_eq!(m.auth_failures.get(), 3);
    let h = [("x-camera-secret", SECRET.to_owned())];
    assert_eq!(post(&format!("{base}/cameras/nobody/events"), &h, body.clone()).await, 404);
    assert_eq!(m.unknown_camera.get(), 1);
    assert_eq!(post(&format!("{base}/cameras/cam-1/events"), &h, vec![b' '; 5000]).await, 413);
    assert_eq!(sim.push_raw(b"{\"event\": [1, 2".to_vec(), &secret()).await.unwrap(), 400);
    assert_eq!(sim.push_raw(vec![0xff, 0x00, 0x13], &secret()).await.unwrap(), 400);
    assert_eq!(m.malformed.get(), 2);
    let unmappable = serde_json::json!({"event": {"state": "start", "gas": "methane", "cpl": "a lot"}});
    assert_eq!(sim.push_raw(unmappable.to_string().into_bytes(), &secret()).await.unwrap(), 422);
    assert_eq!(m.unmapped.get(), 1);
    assert!(rx.try_recv().is_err(), "nothing refused reached the spool queue");

    // Chunked, no Content-Length, and longer than the limit: refused once the limit is passed.
    let addr = base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("POST /cameras/cam-1/events HTTP/1.1\r\nHost: {addr}\r\nX-Camera-Secret: {SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes()).await.unwrap();
    for _ in 0..5 {
        if s.write_all(b"400\r\n").await.is_err() || s.write_all(&[b' '; 1024]).await.is_err() {
            break;
        }
        let _ = s.write_all(b"\r\n").await;
    }
    let mut answer = vec![0u8; 12];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    assert_eq!(m.too_large.get(), 2);

    // The good one, twice (a camera retrying): taken once.
    assert_eq!(sim.push_raw(body.clone(), &secret()).await.unwrap(), 202);
    assert_eq!(sim.push_raw(body.clone(), &secret()).await.unwrap(), 200);
    assert_eq!(m.duplicates.get(), 1);
    let e = next_event(&mut rx).await;
    let EventKind::GasDetection(g) = e.kind else { panic!("{e:?}") };
    assert_eq!((g.camera.as_str(), g.phase, g.gas.as_str()), ("cam-1", DetectionPhase::Start, "methane"));
    assert_eq!(g.snapshot.unwrap().bytes, jpeg(d.n, 2000));
    assert_eq!(g.location.region, Some(d.region));
    assert!(rx.try_recv().is_err(), "the duplicate was not queued");

    // The other model: basic auth, numeric phase, unit not named (LEL*m by the model).
    let ogi = serde_json::json!({"alarmType": "GasLeak", "alarmState": 0, "timestamp": 1_700_000_000u64,
        "gasName": "propane", "concentrationLength": 0.6, "score": 0.91, "boundingBox": "120,80,40,32"});
    let basic = [("authorization", "Basic Y2FtOmNhbS1wYXNzd29yZA==".to_owned())];
    assert_eq!(post(&format!("{base}/cameras/cam-basic/events"), &basic, ogi.to_string().into_bytes()).await, 202);
    let e = next_event(&mut rx).await;
    let EventKind::GasDetection(g) = e.kind else { panic!("{e:?}") };
    assert_eq!((g.phase, g.unit), (DetectionPhase::Stop, vigil_common::event::ConcentrationUnit::LelM));
    assert_eq!(m.clock_skew.get(), 1, "a camera clock a year off is not trusted");
    assert_eq!(m.detections.get(), 2);
    assert_eq!(m.posts.get(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_bound_is_refused_without_reading_it_and_the_detection_still_goes() {
    let (hub, mut rx, base, _stop) = push_endpoint(PUSH_SECTION).await;
    let big = 32 << 20;
    let sim = CameraSim::start(CameraSimConfig {
        push_to: Some(base),
        creds: secret(),
        snapshot_bytes: big,
        ..CameraSimConfig::default()
    })
    .await
    .unwrap();
    let (_, status) = sim.push(true).await.unwrap();
    assert_eq!(status, 202);
    let e = next_event(&mut rx).await;
    let EventKind::GasDetection(g) = e.kind else { panic!("{e:?}") };
    assert!(g.snapshot.is_none());
    assert_eq!(hub.metrics.snapshot_too_large.get(), 1);
    assert_eq!(hub.metrics.snapshot_failures.get(), 1);
    let sent = sim.counters().snapshot_bytes_sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < (big / 2) as u64, "the gateway stopped the transfer ({sent} of {big} bytes sent)");

    // Without a Content-Length (chunked, endless): reading stops just past the bound.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/snap.jpg", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = [0u8; 1024];
        let _ = s.read(&mut req).await.unwrap();
        let mut written = 0usize;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        let chunk = [0xFFu8; 8192];
        while written < 256 << 20 {
            if s.write_all(b"2000\r\n").await.is_err() || s.write_all(&chunk).await.is_err() {
                break;
            }
            let _ = s.write_all(b"\r\n").await;
            written += chunk.len();
        }
        written
    });
    let r = client::send(axum::http::Method::GET, &url, &[], Vec::new(), Duration::from_secs(30), 65536).await;
    assert_eq!(r, Err(client::FetchError::TooLarge { limit: 65536 }));
    let written = server.await.unwrap();
    assert!(written < 128 << 20, "the client hung up ({written} bytes written)");
}

fn onvif_section(events_url: &str, device_url: &str, password: &str, health: bool) -> String {
    let health = if health { "health = { interval_s = 1, failures = 2, timeout_ms = 2000 }" } else { "" };
    format!(
        r#"
[[camera]]
name = "cam-onvif"
model = "vigil-sim"
host = "127.0.0.1"
onvif = {{ events_url = "{events_url}", device_url = "{device_url}", user = "admin", password = "{password}", subscription_s = 20, pull_timeout_s = 1, backoff_max_s = 1 }}
{health}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_onvif_subscription_survives_a_reboot_and_malformed_answers_and_is_cancelled_on_stop() {
    let sim = CameraSim::start(CameraSimConfig { snapshot_bytes: 3000, ..CameraSimConfig::default() }).await.unwrap();
    let base = sim.base_url();
    let section = onvif_section(
        &format!("{base}/onvif/event_service"),
        &format!("{base}/onvif/device_service"),
        "onvif-pass",
        false,
    );
    let (hub, mut rx) = hub(&section);
    let (stop, shutdown) = watch::channel(false);
    let cam = hub.cameras["cam-onvif"].clone();
    let task = tokio::spawn(camera::onvif::run(hub.clone(), cam, shutdown));
    assert!(wait_for(20, || sim.subscriptions() == 1).await, "subscribed");

    let d1 = sim.detect(true);
    let e = next_event(&mut rx).await;
    let EventKind::GasDetection(g) = e.kind else { panic!("{e:?}") };
    assert_eq!((g.phase, g.concentration, g.location.preset), (DetectionPhase::Start, d1.cpl, Some(d1.preset)));
    assert_eq!(g.snapshot.unwrap().bytes, jpeg(d1.n, 3000));
    assert_eq!(e.clock.source, TimeSource::Device);

    sim.reboot(Duration::from_secs(2));
    assert!(wait_for(30, || hub.metrics.onvif_resubscribes.get() >= 1 && sim.subscriptions() == 1).await);
    let d2 = sim.detect(false);
    let EventKind::GasDetection(g) = next_event(&mut rx).await.kind else { panic!() };
    assert_eq!((g.phase, g.concentration), (DetectionPhase::Stop, d2.cpl));
    assert!(hub.metrics.onvif_errors.get() >= 1, "the lost subscription was noticed");

    let before = hub.metrics.onvif_resubscribes.get();
    sim.malformed_pulls(1);
    assert!(wait_for(30, || hub.metrics.onvif_resubscribes.get() > before).await, "bad XML drops the subscription");
    sim.detect(true);
    let EventKind::GasDetection(g) = next_event(&mut rx).await.kind else { panic!() };
    assert_eq!(g.phase, DetectionPhase::Start);

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.unwrap().unwrap();
    // The subscription dropped for bad XML and the one live at shutdown were both cancelled.
    assert!(sim.counters().unsubscribes.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(sim.subscriptions(), 0, "unsubscribed on shutdown");
    assert_eq!(sim.counters().auth_failures.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_onvif_password_is_refused_by_the_camera_and_never_subscribes() {
    let sim = CameraSim::start(CameraSimConfig::default()).await.unwrap();
    let base = sim.base_url();
    let section = onvif_section(
        &format!("{base}/onvif/event_service"),
        &format!("{base}/onvif/device_service"),
        "not-the-password",
        false,
    );
    let (hub, _rx) = hub(&section);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(camera::onvif::run(hub.clone(), hub.cameras["cam-onvif"].clone(), shutdown));
    assert!(wait_for(20, || hub.metrics.onvif_errors.get() >= 2).await);
    assert_eq!(sim.subscriptions(), 0);
    assert!(sim.counters().auth_failures.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(hub.metrics.onvif_subscribes.get(), 0);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_checks_report_a_camera_offline_once_and_online_again() {
    let sim = CameraSim::start(CameraSimConfig::default()).await.unwrap();
    let base = sim.base_url();
    // ONVIF GetSystemDateAndTime as the check (no health URL), with the ONVIF events subscribed too.
    let section = onvif_section(
        &format!("{base}/onvif/event_service"),
        &format!("{base}/onvif/device_service"),
        "onvif-pass",
        true,
    );
    let (hub, mut rx) = hub(&section);
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(camera::health::run(hub.clone(), hub.cameras["cam-onvif"].clone(), shutdown));
    assert!(wait_for(20, || hub.metrics.health_checks.get() >= 2).await);
    assert_eq!(hub.metrics.health_failures.get(), 0);
    sim.reboot(Duration::from_secs(4));
    let e = next_event(&mut rx).await;
    assert!(matches!(&e.kind, EventKind::DeviceOffline { device, .. } if device == "cam-onvif"), "{e:?}");
    let e = next_event(&mut rx).await;
    assert_eq!(e.kind, EventKind::DeviceOnline { device: "cam-onvif".into() });
    assert_eq!((hub.metrics.offline_events.get(), hub.metrics.online_events.get()), (1, 1));
    assert!(hub.metrics.health_failures.get() >= 2);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detections_with_large_snapshots_are_spooled_in_batches_that_fit_the_envelope() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use vigil_common::Priority;
    use vigil_common::event::{GasDetection, LeakLocation, MAX_SNAPSHOT_BYTES, Snapshot};
    use vigil_edge::spool::{Batcher, BatcherConfig, SledSpool, Spool as _};

    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = SledSpool::open(&dir.path().join("spool"), 1 << 30).unwrap();
    let spool = Arc::new(std::sync::Mutex::new(spool));
    let key = vigil_common::SigningKey::generate().unwrap();
    let batcher = Batcher::new(
        BatcherConfig {
            gateway: gateway_id(),
            max_age: Duration::from_millis(100),
            max_samples: 5000,
            urgent: Default::default(),
        },
        key.clone(),
        spool.clone(),
        Arc::new(AtomicBool::new(true)),
        Arc::new(tokio::sync::Notify::new()),
    );
    let metrics = batcher.metrics();
    let (tx, rx) = mpsc::channel(16);
    // Three maximal images queued before the batcher runs: one batch would be 3 MiB, over the 2 MiB
    // a batch envelope may be.
    for n in 0..3u64 {
        let detection = GasDetection {
            camera: "cam-1".into(),
            phase: DetectionPhase::Start,
            gas: "methane".into(),
            concentration: 100.0,
            unit: vigil_common::event::ConcentrationUnit::PpmM,
            confidence: None,
            location: LeakLocation::default(),
            snapshot: Some(Snapshot { content_type: "image/jpeg".into(), bytes: jpeg(n, MAX_SNAPSHOT_BYTES) }),
        };
        let event = Event {
            ts_ms: 1,
            clock: ClockQuality { synchronised: false, source: TimeSource::Gateway },
            kind: EventKind::GasDetection(detection),
        };
        tx.send(Record::Event(event)).await.unwrap();
    }
    drop(tx);
    batcher.run(rx).await;
    assert_eq!(metrics.store_errors.load(Ordering::Relaxed), 0);
    let stored = spool.lock().unwrap().pending(Priority::AlarmEvent, None, 100).unwrap();
    let mut images = Vec::new();
    for b in &stored {
        let batch = vigil_common::Batch::open(&b.sealed, &gateway_id(), |_| Some(key.public_key())).unwrap();
        for e in batch.events {
            if let EventKind::GasDetection(g) = e.kind {
                images.push(g.snapshot.unwrap().bytes);
            }
        }
    }
    assert_eq!(images, (0..3).map(|n| jpeg(n, MAX_SNAPSHOT_BYTES)).collect::<Vec<_>>(), "every image, in order");
    assert!(stored.len() >= 2, "split over batches: {}", stored.len());
}

#[test]
fn camera_configuration_problems_name_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(models_dir().join("vigil-sim.toml"), models.join("vigil-sim.toml")).unwrap();
    std::fs::write(models.join("broken.toml"), "[push]\nphase = \"state\"\nconcentration = \"/c\"\n").unwrap();
    let text = format!(
        r#"
[gateway]
id = "gw-1"
enterprise = "ent-a"
key_file = "gw.key"

[spool]
path = "spool"

[cameras]
listen = "127.0.0.1:8088"
model_dir = "{models}"
snapshot_max_bytes = 5000000

[[cameras.camera]]
name = "bad name!"
model = "nope"
auth = {{ kind = "secret", secret = "short" }}

[[cameras.camera]]
name = "cam-2"
model = "broken"

[[cameras.camera]]
name = "cam-3"
model = "vigil-sim"
onvif = {{ events_url = "https://cam/onvif", user = "u", password = "p", subscription_s = 20, pull_timeout_s = 15 }}
health = {{ interval_s = 0 }}
"#,
        models = models.display()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let errors = vigil_edge::config::load(&path).unwrap_err().0;
    let found: Vec<(String, String)> = errors
        .iter()
        .map(|e| (Path::new(&e.file).file_name().unwrap().to_string_lossy().into_owned(), e.key.clone()))
        .collect();
    for (file, key) in [
        ("gateway.toml", "cameras.snapshot_max_bytes"),
        ("gateway.toml", "cameras.camera[0].name"),
        ("gateway.toml", "cameras.camera[0].auth.secret"),
        ("gateway.toml", "cameras.camera[0].model"),
        ("broken.toml", "push.phase"),
        ("broken.toml", "push.gas"),
        ("broken.toml", "push.unit"),
        ("gateway.toml", "cameras.camera[2].onvif.events_url"),
        ("gateway.toml", "cameras.camera[2].onvif.pull_timeout_s"),
        ("gateway.toml", "cameras.camera[2].health.url"),
        ("gateway.toml", "cameras.camera[2].health.interval_s"),
    ] {
        assert!(found.contains(&(file.to_owned(), key.to_owned())), "{file}: {key} missing from {errors:#?}");
    }
    assert_eq!(found.len(), 11, "{errors:#?}");
}
