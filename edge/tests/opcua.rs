//! The OPC UA driver against the real simulator over real sockets: values and qualities, security
//! and trust, browse, poll mode, and the faults a plant produces (server restart, hung server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opcua::types::StatusCode;
use tokio::sync::{mpsc, watch};
use vigil_common::{EventKind, Quality, Value};
use vigil_edge::Record;
use vigil_edge::config::{self, Plant};
use vigil_edge::sources::opcua::{browse, nodeid::NodeRef, trust_certificate};
use vigil_edge::sources::{self, Metrics};
use vigil_tools::sim::opcua::{NAMESPACE_URI, OpcuaSim, SimConfig, USER};

/// Generous: the machine running the tests may be busy; every wait ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(90);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(std::env::var("RUST_LOG").unwrap_or_else(|_| {
            "warn,async_opcua=error,opcua_client=error,opcua_server=error,opcua_crypto=error,opcua_core=error".into()
        })))
        .with_test_writer()
        .try_init();
}

fn plant(dir: &Path, device: &str) -> Plant {
    let text = format!(
        "[gateway]\nid = \"gw-1\"\nenterprise = \"ent\"\nkey_file = \"gw.key\"\n[spool]\npath = \"spool\"\n\
         [acquisition]\nmax_silent_s = 600\n\n[[opcua]]\nname = \"dcs\"\npki_dir = \"pki\"\n{device}\n"
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn point(id: &str, var: &str, extra: &str) -> String {
    format!("[[opcua.points]]\nid = \"{id}\"\nnode = \"nsu={NAMESPACE_URI};s={var}\"\n{extra}\n")
}

/// Runs acquisition until `done` holds for everything received so far (or the wait runs out).
struct Run {
    records: Vec<Record>,
    rx: mpsc::Receiver<Record>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), sources::AcquisitionError>>,
    metrics: Arc<Metrics>,
}

impl Run {
    fn start(plant: Plant) -> Run {
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(10_000);
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(sources::run_acquisition(Arc::new(plant), tx, shutdown, metrics.clone()));
        Run { records: Vec::new(), rx, stop, task, metrics }
    }

    async fn until(&mut self, what: &str, done: impl Fn(&[Record]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.records) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(r)) => self.records.push(r),
                Ok(None) => panic!("acquisition ended while waiting for {what}; got {:#?}", self.records),
                Err(_) => panic!(
                    "timed out waiting for {what}; metrics {}; last records {:#?}",
                    self.metrics,
                    &self.records[self.records.len().saturating_sub(20)..]
                ),
            }
        }
    }

    async fn stop(self) -> Vec<Record> {
        let _ = self.stop.send(true);
        let mut rx = self.rx;
        let mut records = self.records;
        let drain = async {
            while let Some(r) = rx.recv().await {
                records.push(r);
            }
        };
        tokio::time::timeout(WAIT, drain).await.expect("acquisition did not stop");
        tokio::time::timeout(WAIT, self.task).await.expect("task did not end").unwrap().unwrap();
        records
    }
}

fn samples<'a>(records: &'a [Record], id: &'a str) -> impl Iterator<Item = &'a vigil_common::Sample> + 'a {
    records.iter().filter_map(move |r| match r {
        Record::Sample { point, sample } if point.as_str() == id => Some(sample),
        _ => None,
    })
}

fn has_sample(records: &[Record], id: &str, f: impl Fn(&vigil_common::Sample) -> bool) -> bool {
    samples(records, id).any(f)
}

fn count_events(records: &[Record], f: impl Fn(&EventKind) -> bool) -> usize {
    records.iter().filter(|r| matches!(r, Record::Event(e) if f(&e.kind))).count()
}

fn online(k: &EventKind) -> bool {
    matches!(k, EventKind::DeviceOnline { device } if device == "dcs")
}

fn offline(k: &EventKind) -> bool {
    matches!(k, EventKind::DeviceOffline { device, .. } if device == "dcs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_delivers_values_with_their_quality() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimConfig::small(&dir.path().join("sim-pki"))).await.unwrap();
    sim.set("Tank101.Level", 4.25, StatusCode::Good);
    sim.set("GD001.Concentration", 7.5, StatusCode::UncertainLastUsableValue);
    sim.set("Tank102.Pressure", 1.0, StatusCode::BadSensorFailure);
    sim.set("GD002.Alarm", 1.0, StatusCode::Good);
    let points = [
        point("level", "Tank101.Level", "unit = \"m\"\nsampling_ms = 100"),
        point("gas", "GD001.Concentration", ""),
        point("pressure", "Tank102.Pressure", ""),
        point("alarm", "GD002.Alarm", "type = \"bool\""),
        point("missing", "NoSuch.Tag", ""),
        point("temp_scaled", "Tank103.Temperature", "scale = 10.0\noffset = 1.0\nrange = [-1000.0, 1000.0]"),
    ]
    .concat();
    let plant = plant(dir.path(), &format!("endpoint = \"{}\"\npublish_interval_ms = 200\n{points}", sim.endpoint()));
    let mut run = Run::start(plant);
    run.until("values of every point", |r| {
        has_sample(r, "dcs.level", |s| s.value == Value::F64(4.25) && s.quality == Quality::GOOD)
            && has_sample(r, "dcs.gas", |s| s.value == Value::F64(7.5) && s.quality == Quality::UNCERTAIN_LAST_USABLE)
            && has_sample(r, "dcs.pressure", |s| s.quality == Quality::BAD_SENSOR_FAILURE)
            && has_sample(r, "dcs.alarm", |s| s.value == Value::Bool(true) && s.quality.is_good())
            && has_sample(r, "dcs.missing", |s| s.quality == Quality(0x8034_0000))
            && samples(r, "dcs.temp_scaled").filter(|s| s.quality.is_good()).count() >= 3
    })
    .await;
    let records = run.stop().await;
    assert_eq!(count_events(&records, online), 1, "{records:#?}");
    assert_eq!(count_events(&records, offline), 0, "{records:#?}");
    // A server may refuse an unknown node when the item is created (one SourceFault) or accept the
    // item and report the status in its value (async-opcua's server does); the quality is the same.
    let faults = count_events(
        &records,
        |k| matches!(k, EventKind::SourceFault { message, .. } if message.contains("NoSuch.Tag")),
    );
    assert!(faults <= 1, "{records:#?}");
    // Scaled values: raw (a sine around 25 with three decimals) * 10 + 1.
    for s in samples(&records, "dcs.temp_scaled").filter(|s| s.quality.is_good()) {
        let Value::F64(v) = s.value else { panic!("{s:?}") };
        assert!((200.0..=300.0).contains(&v), "{v}");
    }
    // Source timestamps are the simulator's (now-ish), in milliseconds.
    let now = sources::now_ms();
    for s in samples(&records, "dcs.level") {
        assert!((now - 120_000..=now + 5_000).contains(&s.ts_ms), "{s:?}");
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_encrypt_with_a_trusted_server_certificate() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimConfig::small(&dir.path().join("sim-pki"))).await.unwrap();
    let path = trust_certificate(&dir.path().join("pki"), &sim.certificate()).unwrap();
    assert!(path.starts_with(dir.path().join("pki/trusted")));
    let device = format!(
        "endpoint = \"{}\"\nsecurity_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n\
         user = \"{}\"\npassword = \"{}\"\npublish_interval_ms = 200\n{}",
        sim.endpoint(),
        USER.0,
        USER.1,
        point("level", "Tank101.Level", "")
    );
    let plant = plant(dir.path(), &device);
    let mut run = Run::start(plant);
    run.until("encrypted values", |r| samples(r, "dcs.level").filter(|s| s.quality.is_good()).count() >= 3).await;
    let records = run.stop().await;
    assert_eq!(count_events(&records, offline), 0, "{records:#?}");
    // The gateway's own certificate was created on first use and is kept.
    assert!(dir.path().join("pki/own/cert.der").is_file());
    assert!(dir.path().join("pki/private/private.pem").is_file());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_is_refused_with_a_clear_error() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimConfig::small(&dir.path().join("sim-pki"))).await.unwrap();
    let device = format!(
        "endpoint = \"{}\"\nsecurity_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\n{}",
        sim.endpoint(),
        point("level", "Tank101.Level", "")
    );
    let plant = Arc::new(plant(dir.path(), &device));
    let records = sources::read_once(plant.clone(), None, Arc::new(Metrics::default())).await.unwrap();
    let reason = records
        .iter()
        .find_map(|r| match r {
            Record::Event(e) => match &e.kind {
                EventKind::DeviceOffline { reason, .. } => Some(reason.clone()),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_else(|| panic!("no offline event: {records:#?}"));
    assert!(reason.contains("not trusted") && reason.contains("rejected"), "{reason}");
    assert!(samples(&records, "dcs.level").all(|s| s.quality == Quality::BAD_CONFIGURATION_ERROR), "{records:#?}");
    assert!(samples(&records, "dcs.level").count() >= 1);
    // The refused certificate is where the message says, ready for the technician to inspect.
    let rejected: Vec<_> = std::fs::read_dir(dir.path().join("pki/rejected")).unwrap().collect();
    assert_eq!(rejected.len(), 1);
    // Moving it to trusted/ (what `vigil-edge opcua trust` does) makes the same device work.
    let cert = rejected.into_iter().next().unwrap().unwrap().path();
    trust_certificate(&dir.path().join("pki"), &cert).unwrap();
    let records = sources::read_once(plant, None, Arc::new(Metrics::default())).await.unwrap();
    assert!(has_sample(&records, "dcs.level", |s| s.quality.is_good()), "{records:#?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_resumes_without_duplicates_and_reports_the_gap() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimConfig::small(&dir.path().join("sim-pki"))).await.unwrap();
    let points = [
        point("level", "Tank101.Level", "sampling_ms = 100"),
        point("temp", "Tank102.Temperature", "sampling_ms = 100"),
        point("steady", "GD001.Alarm", "type = \"bool\""),
    ]
    .concat();
    let device = format!(
        "endpoint = \"{}\"\npublish_interval_ms = 200\nkeep_alive_ms = 1000\ntimeout_ms = 2000\n{points}",
        sim.endpoint()
    );
    let mut run = Run::start(plant(dir.path(), &device));
    run.until("values before the restart", |r| samples(r, "dcs.level").count() >= 5).await;
    sim.restart(Duration::from_secs(2)).await.unwrap();
    run.until("offline, online again and new values", |r| {
        let Some(back) = r.iter().rposition(|x| matches!(x, Record::Event(e) if online(&e.kind))) else {
            return false;
        };
        count_events(r, offline) >= 1
            && count_events(r, online) >= 2
            && samples(&r[back..], "dcs.level").filter(|s| s.quality.is_good()).count() >= 5
            && samples(&r[back..], "dcs.steady").any(|s| s.quality.is_good())
    })
    .await;
    let metrics = run.metrics.clone();
    let records = run.stop().await;
    assert_eq!(count_events(&records, offline), 1, "{records:#?}");
    assert_eq!(count_events(&records, online), 2, "{records:#?}");
    for id in ["dcs.level", "dcs.temp", "dcs.steady"] {
        let ts: Vec<i64> = samples(&records, id).map(|s| s.ts_ms).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]), "{id}: timestamps not strictly increasing: {ts:?}");
        // The gap is in the series: a bad sample between good ones.
        let q: Vec<bool> = samples(&records, id).map(|s| s.quality.is_good()).collect();
        let first_bad = q.iter().position(|g| !g).unwrap_or_else(|| panic!("{id}: no bad sample in {q:?}"));
        assert!(q[..first_bad].iter().any(|g| *g) && q[first_bad..].iter().any(|g| *g), "{id}: {q:?}");
        assert_eq!(
            samples(&records, id).find(|s| !s.quality.is_good()).unwrap().quality,
            Quality::BAD_NOT_CONNECTED,
            "{id}"
        );
    }
    // The steady point's value did not change across the restart: it comes back good once.
    let steady: Vec<_> = samples(&records, "dcs.steady").collect();
    assert_eq!(steady.len(), 3, "{steady:?}");
    assert!(metrics.opcua_sessions.get() >= 2, "{metrics}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_detected_and_recovered() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimConfig::small(&dir.path().join("sim-pki"))).await.unwrap();
    let device = format!(
        "endpoint = \"{}\"\npublish_interval_ms = 200\nkeep_alive_ms = 500\ntimeout_ms = 1000\n{}",
        sim.endpoint(),
        point("level", "Tank101.Level", "sampling_ms = 100")
    );
    let mut run = Run::start(plant(dir.path(), &device));
    run.until("values", |r| samples(r, "dcs.level").count() >= 3).await;
    sim.stall();
    run.until("offline", |r| count_events(r, offline) >= 1).await;
    sim.resume();
    run.until("online again with values", |r| {
        let Some(back) = r.iter().rposition(|x| matches!(x, Record::Event(e) if online(&e.kind))) else {
            return false;
        };
        count_events(r, online) >= 2 && samples(&r[back..], "dcs.level").filter(|s| s.quality.is_good()).count() >= 3
    })
    .await;
    let records = run.stop().await;
    let bad: Vec<Quality> =
        samples(&records, "dcs.level").filter(|s| !s.quality.is_good()).map(|s| s.quality).collect();
    assert!(bad.contains(&Quality::BAD_TIMEOUT), "{bad:?}");
    let ts: Vec<i64> = samples(&records, "dcs.level").map(|s| s.ts_ms).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_reads_periodically() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimConfig::small(&dir.path().join("sim-pki"))).await.unwrap();
    sim.set("Tank101.Level", 3.5, StatusCode::Good);
    let device = format!(
        "endpoint = \"{}\"\nmode = \"poll\"\nsampling_ms = 200\ntimestamp = \"gateway\"\n{}{}",
        sim.endpoint(),
        point("level", "Tank101.Level", ""),
        point("temp", "Tank102.Temperature", "")
    );
    let mut run = Run::start(plant(dir.path(), &device));
    run.until("polled values", |r| {
        has_sample(r, "dcs.level", |s| s.value == Value::F64(3.5)) && samples(r, "dcs.temp").count() >= 3
    })
    .await;
    let metrics = run.metrics.clone();
    run.stop().await;
    assert!(metrics.requests.get() >= 3, "{metrics}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_lists_the_plant_with_node_ids_and_values() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcuaSim::start(SimConfig::small(&dir.path().join("sim-pki"))).await.unwrap();
    sim.set("Tank101.Level", 4.25, StatusCode::Good);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plant = plant(dir.path(), &format!("endpoint = \"{}\"\n{}", sim.endpoint(), point("x", "Tank101.Level", "")));
    let start: NodeRef = "i=85".parse().unwrap();
    let report = browse::browse(&plant.opcua[0], &start, 3).await.unwrap();
    let ns = report.namespaces.iter().find(|(_, u)| u == NAMESPACE_URI).map(|(i, _)| *i).unwrap();
    let level = report
        .lines
        .iter()
        .find(|l| l.node == format!("ns={ns};s=Tank101.Level"))
        .unwrap_or_else(|| panic!("{:#?}", report.lines));
    assert_eq!(level.depth, 3);
    assert_eq!(level.class, "Variable");
    assert_eq!(level.value.as_deref(), Some("4.25"));
    // Pre-order: the tank's folder comes right before its variables.
    let at = report.lines.iter().position(|l| l == level).unwrap();
    assert!(report.lines[..at].iter().rev().take(3).any(|l| l.browse_name.ends_with("Tank101")), "{:#?}", report.lines);
    assert!(report.endpoints.iter().any(|e| e == "Basic256Sha256/SignAndEncrypt"), "{:?}", report.endpoints);
    sim.stop().await;
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[gateway]\nid = \"gw-1\"\nenterprise = \"ent\"\nkey_file = \"gw.key\"\n[spool]\npath = \"spool\"\n\
        [[opcua]]\nname = \"dcs\"\nendpoint = \"http://x\"\nsecurity_policy = \"None\"\nsecurity_mode = \"SignAndEncrypt\"\n\
        user = \"u\"\n\
        [[opcua.points]]\nid = \"a\"\nnode = \"ns=2;q=1\"\n\
        [[opcua.points]]\nid = \"b\"\nnode = \"ns=2;s=B\"\ndeadband_absolute = 1.0\ndeadband_percent = 2.0\n\
        [[opcua.points]]\nid = \"c\"\nnode = \"ns=2;s=B\"\n";
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let e = config::load(&path).unwrap_err().to_string();
    for want in [
        "opcua[0].endpoint: \"http://x\" is not an opc.tcp://",
        "opcua[0].security_mode: SignAndEncrypt needs security_policy = \"Basic256Sha256\"",
        "opcua[0].password: user needs password or password_file",
        "opcua[0].points[0].node: node id \"ns=2;q=1\": identifier must start with",
        "opcua[0].points[1].deadband_absolute: give deadband_absolute or deadband_percent, not both",
        "opcua[0].points[2].node: ns=2;s=B is already read by points[1]",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // A device name shared with a Modbus device is refused too.
    let text = "[gateway]\nid = \"gw-1\"\nenterprise = \"ent\"\nkey_file = \"gw.key\"\n[spool]\npath = \"spool\"\n\
        [[devices]]\nname = \"dcs\"\nprotocol = \"tcp\"\nhost = \"h\"\n[[devices.points]]\nid = \"x\"\nkind = \"holding\"\naddress = 0\n\
        [[opcua]]\nname = \"dcs\"\nendpoint = \"opc.tcp://h:4840\"\n[[opcua.points]]\nid = \"y\"\nnode = \"i=2258\"\n";
    std::fs::write(&path, text).unwrap();
    let e = config::load(&path).unwrap_err().to_string();
    assert!(e.contains("opcua[0].name: duplicate device name \"dcs\""), "{e}");
}
