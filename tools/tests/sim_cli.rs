//! The `vigil-sim` binary: serves a gateway file's devices (TCP and a pty bus linked at the bus
//! path) with faults from the command line, and the levelling bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_common::Quality;
use vigil_edge::Record;
use vigil_edge::sources::{Metrics, read_once};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn quality(records: &[Record], id: &str) -> Quality {
    records
        .iter()
        .find_map(|r| match r {
            Record::Sample { point, sample } if point.as_str() == id => Some(sample.quality),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no sample of {id}"))
}

#[tokio::test]
async fn vigil_sim_modbus_serves_a_gateway_file_with_faults() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let bus = dir.path().join("rs485");
    let body = format!(
        "[[buses]]\nname = \"b\"\npath = {:?}\n\
         [[devices]]\nname = \"tank\"\nprotocol = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\nprofile = \"tank-gauge\"\ntimeout_ms = 300\n\
         [[devices]]\nname = \"gds\"\nprotocol = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\nunit = 2\nprofile = \"gas-controller-8ch\"\ntimeout_ms = 300\n\
         [[devices]]\nname = \"lv\"\nprotocol = \"rtu\"\nbus = \"b\"\nunit = 5\nprofile = \"levelling-magnetostrictive\"\ntimeout_ms = 300\n",
        bus.display().to_string()
    );
    let plant = common::plant(dir.path(), &body);
    let cfg = dir.path().join("gateway.toml");
    let _sim = Kill(
        Command::new(env!("CARGO_BIN_EXE_vigil-sim"))
            .args(["modbus", "--config"])
            .arg(&cfg)
            .args(["--fault", "gds=exception:2"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the bus link", || bus.exists());
    wait_for("the tcp port", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let records = read_once(Arc::new(plant), None, Arc::new(Metrics::default())).await.unwrap();
    assert_eq!(quality(&records, "tank.level"), Quality::GOOD);
    assert_eq!(quality(&records, "tank.pump.running"), Quality::GOOD);
    assert_eq!(quality(&records, "lv.reading"), Quality::GOOD);
    assert_eq!(quality(&records, "gds.ch1.conc"), Quality::BAD_CONFIGURATION_ERROR);
    // values follow the profile's `sim` waveform: the tank level is `sine 8.5 2.0 600` (m)
    let level = records
        .iter()
        .find_map(|r| match r {
            Record::Sample { point, sample } if point.as_str() == "tank.level" => sample.value.as_f64(),
            _ => None,
        })
        .unwrap();
    assert!((6.5..=10.5).contains(&level), "{level}");
}

#[tokio::test]
async fn vigil_sim_levelling_has_one_failing_sensor() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("lv-bus");
    let _sim = Kill(
        Command::new(env!("CARGO_BIN_EXE_vigil-sim"))
            .args(["levelling", "--link"])
            .arg(&link)
            .args(["--sensors", "3", "--failing", "3", "--speed", "86400"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the bus link", || link.exists());
    let mut body = format!("[[buses]]\nname = \"b\"\npath = {:?}\n", link.display().to_string());
    for u in 1..=3 {
        body += &format!(
            "[[devices]]\nname = \"s{u}\"\nprotocol = \"rtu\"\nbus = \"b\"\nunit = {u}\nprofile = \"levelling-magnetostrictive\"\ntimeout_ms = 200\nretries = 0\n"
        );
    }
    body += "[[levelling]]\nname = \"L\"\nbase = \"s1.reading\"\nbase_initial_mm = 151.0\n[[levelling.points]]\npoint = \"s2.reading\"\ninitial_mm = 152.0\n[[levelling.points]]\npoint = \"s3.reading\"\ninitial_mm = 153.0\n";
    let plant = common::plant(dir.path(), &body);
    let records = read_once(Arc::new(plant), None, Arc::new(Metrics::default())).await.unwrap();
    assert_eq!(quality(&records, "s1.reading"), Quality::GOOD);
    assert_eq!(quality(&records, "s2.reading:settlement"), Quality::GOOD);
    assert_eq!(quality(&records, "s3.reading"), Quality::BAD_TIMEOUT);
    assert_eq!(quality(&records, "s3.reading:settlement"), Quality::BAD_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_sim_camera_pushes_with_snapshots_and_serves_onvif() {
    use vigil_edge::sources::camera::{self, CameraConfig, CameraMetrics, CamerasConfig, Hub, OnvifCamera, PushAuth};
    let secret = "cli-camera-secret-0001";
    let sim_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let push_addr = listener.local_addr().unwrap();
    let section = CamerasConfig {
        listen: Some(push_addr),
        model_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/camera-models"),
        camera: vec![CameraConfig {
            name: "cam-cli".into(),
            model: "vigil-sim".into(),
            host: Some("127.0.0.1".into()),
            auth: Some(PushAuth::Secret { header: "X-Camera-Secret".into(), secret: secret.into() }),
            snapshot_uri: None,
            snapshot_credentials: None,
            onvif: Some(OnvifCamera {
                events_url: format!("http://127.0.0.1:{sim_port}/onvif/event_service"),
                device_url: None,
                user: "admin".into(),
                password: "cli-onvif".into(),
                subscription_s: 20,
                pull_timeout_s: 1,
                backoff_max_s: 1,
            }),
            health: None,
        }],
        ..CamerasConfig::default()
    };
    let (cameras, problems) = camera::resolve(&section, std::path::Path::new("/nonexistent/gateway.toml"));
    assert!(problems.is_empty(), "{problems:?}");
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let clock = vigil_common::ClockQuality { synchronised: false, source: vigil_common::TimeSource::Gateway };
    let hub = Arc::new(Hub::new(section, cameras, Arc::new(CameraMetrics::default()), clock, tx));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(camera::http_push::serve(listener, hub.clone(), shutdown.clone()));
    let _sim = Kill(
        Command::new(env!("CARGO_BIN_EXE_vigil-sim"))
            .args(["camera", "--name", "cam-cli", "--listen", &format!("127.0.0.1:{sim_port}")])
            .args(["--push", &format!("http://{push_addr}"), "--secret", secret])
            .args(["--onvif-password", "cli-onvif", "--interval-ms", "300", "--snapshot-bytes", "4096"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    tokio::spawn(camera::onvif::run(hub.clone(), hub.cameras["cam-cli"].clone(), shutdown));
    let mut images = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (hub.metrics.onvif_messages.get() == 0 || hub.metrics.posts.get() == 0 || images < 2)
        && Instant::now() < deadline
    {
        if let Ok(Some(Record::Event(e))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
            && let vigil_common::EventKind::GasDetection(g) = e.kind
        {
            assert_eq!(g.camera, "cam-cli");
            assert_eq!(g.snapshot.expect("snapshot fetched from the simulator").bytes.len(), 4096);
            images += 1;
        }
    }
    assert!(hub.metrics.posts.get() >= 1, "the simulator pushed");
    assert!(hub.metrics.onvif_messages.get() >= 1, "the simulator served ONVIF events");
    assert!(images >= 2, "{images} detections with snapshots");
    // (ONVIF errors are possible: the subscription may be tried before the simulator listens.)
    assert_eq!(hub.metrics.auth_failures.get(), 0);
}
