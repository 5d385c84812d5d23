//! Faults from the simulator, over real TCP sockets and a real pseudo-terminal: exception codes, no
//! answer, slow answers, garbage, dropped connections, refused connections; device offline/online
//! events; a dead slave on a shared bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vigil_common::{EventKind, Quality};
use vigil_edge::Record;
use vigil_edge::sources::{Metrics, read_once};
use vigil_tools::sim::rtu::RtuBus;
use vigil_tools::sim::{Fault, Sim};

const W: Duration = Duration::from_secs(5);

fn tcp_device(port: u16, timeout_ms: u64) -> String {
    format!(
        r#"[[devices]]
name = "plc"
protocol = "tcp"
host = "127.0.0.1"
port = {port}
unit = 1
timeout_ms = {timeout_ms}
retries = 1
poll_ms = 100
backoff_max_ms = 400

[[devices.points]]
id = "pt"
kind = "holding"
address = 10
type = "f32"
sim = "const 42.5"

[[devices.points]]
id = "count"
kind = "holding"
address = 12
type = "u16"
sim = "ramp 0 1000 100"
"#
    )
}

#[tokio::test]
async fn tcp_faults_give_bad_quality_and_offline_online_events() {
    let dir = tempfile::tempdir().unwrap();
    let (l, port) = common::listener().await;
    let plant = common::plant(dir.path(), &tcp_device(port, 150));
    let sim = Sim::new();
    common::fill(&sim, &plant, &[0]);
    let _srv = common::serve_tcp(l, sim.clone());
    let mut run = common::start(plant);

    assert_eq!(
        run.event(W, "online", |k| matches!(k, EventKind::DeviceOnline { .. })).await,
        EventKind::DeviceOnline { device: "plc".into() }
    );
    let s = run.sample(W, "plc.pt", |s| s.quality == Quality::GOOD).await;
    assert_eq!(s.value, vigil_common::Value::F64(42.5));

    // Exception: the device answers, so it stays online; points are bad with a configuration reason.
    sim.set_fault(1, Fault::Exception(2));
    let e = run.event(W, "source fault", |k| matches!(k, EventKind::SourceFault { .. })).await;
    assert!(matches!(&e, EventKind::SourceFault { message, .. } if message.contains("0x02")), "{e:?}");
    run.sample(W, "plc.pt", |s| s.quality == Quality::BAD_CONFIGURATION_ERROR).await;
    sim.set_fault(1, Fault::Exception(4));
    run.sample(W, "plc.pt", |s| s.quality == Quality::BAD_DEVICE_FAILURE).await;
    sim.set_fault(1, Fault::None);
    run.sample(W, "plc.pt", |s| s.quality == Quality::GOOD).await;

    // No answer: timeout, offline event, bad-timeout samples; recovery gives an online event.
    sim.set_fault(1, Fault::NoAnswer);
    let e = run.event(W, "offline", |k| matches!(k, EventKind::DeviceOffline { .. })).await;
    assert!(
        matches!(&e, EventKind::DeviceOffline { device, reason } if device == "plc" && reason.contains("timeout")),
        "{e:?}"
    );
    run.sample(W, "plc.pt", |s| s.quality == Quality::BAD_TIMEOUT).await;
    sim.set_fault(1, Fault::None);
    run.event(W, "online again", |k| matches!(k, EventKind::DeviceOnline { .. })).await;
    run.sample(W, "plc.pt", |s| s.quality == Quality::GOOD).await;

    // Slow answers beyond the timeout are timeouts; within it they are fine.
    sim.set_fault(1, Fault::Slow(Duration::from_millis(400)));
    run.event(W, "offline (slow)", |k| matches!(k, EventKind::DeviceOffline { .. })).await;
    sim.set_fault(1, Fault::Slow(Duration::from_millis(30)));
    run.event(W, "online (slow within timeout)", |k| matches!(k, EventKind::DeviceOnline { .. })).await;
    run.sample(W, "plc.pt", |s| s.quality == Quality::GOOD).await;

    // Garbage bytes and dropped connections: communication errors, reconnect, recovery.
    for fault in [Fault::Garbage, Fault::Drop] {
        sim.set_fault(1, fault);
        let e = run.event(W, "offline (garbage/drop)", |k| matches!(k, EventKind::DeviceOffline { .. })).await;
        assert!(
            matches!(&e, EventKind::DeviceOffline { reason, .. } if reason.contains("communication error") || reason.contains("timeout")),
            "{e:?}"
        );
        run.sample(W, "plc.pt", |s| common::is_bad(s.quality)).await;
        sim.set_fault(1, Fault::None);
        run.event(W, "online", |k| matches!(k, EventKind::DeviceOnline { .. })).await;
        run.sample(W, "plc.pt", |s| s.quality == Quality::GOOD).await;
    }
    assert!(run.metrics.resets.get() >= 3, "connections were dropped after failures: {}", run.metrics);
    assert!(run.metrics.connects.get() >= 4, "and reopened: {}", run.metrics);
    run.shutdown().await;
}

#[tokio::test]
async fn refused_connection_is_a_failed_device_in_a_one_shot_read() {
    let dir = tempfile::tempdir().unwrap();
    let (l, port) = common::listener().await;
    drop(l); // nothing listens there any more
    let plant = common::plant(dir.path(), &tcp_device(port, 200));
    let records = read_once(Arc::new(plant), None, Arc::new(Metrics::default())).await.unwrap();
    assert!(records.iter().any(|r| matches!(r, Record::Event(e) if matches!(&e.kind, EventKind::DeviceOffline { reason, .. } if reason.contains("communication error")))));
    let bad: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Sample { sample, .. } => Some(sample.quality),
            _ => None,
        })
        .collect();
    assert_eq!(bad, vec![Quality::BAD_COMMUNICATION_ERROR; 2]);
}

fn bus_body(path: &str, units: &[u8], timeout_ms: u64, poll_ms: u64) -> String {
    let mut s = format!("[[buses]]\nname = \"b1\"\npath = {path:?}\nbaud = 38400\n");
    for u in units {
        s += &format!(
            "[[devices]]\nname = \"s{u}\"\nprotocol = \"rtu\"\nbus = \"b1\"\nunit = {u}\ntimeout_ms = {timeout_ms}\nretries = 1\npoll_ms = {poll_ms}\nbackoff_max_ms = 2000\n\
             [[devices.points]]\nid = \"v\"\nkind = \"input\"\naddress = 0\ntype = \"i32\"\nsim = \"ramp 0 1000000 1000\"\n\
             [[devices.points]]\nid = \"w\"\nkind = \"holding\"\naddress = 0\ntype = \"u16\"\nsim = \"const 7\"\n"
        );
    }
    s
}

#[tokio::test]
async fn dead_slave_on_a_shared_bus_does_not_starve_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new();
    let bus = RtuBus::spawn(sim.clone()).unwrap();
    let (timeout_ms, poll_ms) = (150, 200);
    let plant = common::plant(dir.path(), &bus_body(&bus.path.display().to_string(), &[1, 2, 3], timeout_ms, poll_ms));
    common::fill(&sim, &plant, &[0, 1, 2]);
    sim.set_fault(2, Fault::NoAnswer);
    let mut run = common::start(plant);
    let e =
        run.event(W, "offline of s2", |k| matches!(k, EventKind::DeviceOffline { device, .. } if device == "s2")).await;
    assert!(matches!(e, EventKind::DeviceOffline { ref reason, .. } if reason.contains("timeout")));
    // Watch unit 3 (polled after the dead unit 2) for 3 s: the gap between its good readings never
    // exceeds the poll interval plus the dead slave's timeout (plus scheduling slack).
    let start = Instant::now();
    let mut last: Option<i64> = None;
    let mut max_gap = 0i64;
    let mut n3 = 0;
    let mut bad2 = 0;
    while start.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(W, run.rx.recv()).await.unwrap().unwrap() {
            Record::Sample { point, sample } if point.as_str() == "s3.v" => {
                assert_eq!(sample.quality, Quality::GOOD);
                if let Some(l) = last {
                    max_gap = max_gap.max(sample.ts_ms - l);
                }
                last = Some(sample.ts_ms);
                n3 += 1;
            }
            Record::Sample { point, sample } if point.as_str().starts_with("s2.") => {
                assert_eq!(sample.quality, Quality::BAD_TIMEOUT);
                bad2 += 1;
            }
            _ => {}
        }
    }
    // A dead unit with retries would cost 2 x 150 ms per cycle and push the cycle past 200 ms; the
    // per-slave backoff (one probe, no retries, while offline) keeps it within one timeout.
    eprintln!("unit 3: {n3} readings, max gap {max_gap} ms, {bad2} bad readings of unit 2");
    let bound = (poll_ms + timeout_ms + 150) as i64;
    assert!(
        max_gap <= bound,
        "unit 3 waited {max_gap} ms between readings (bound {bound} ms); metrics: {}",
        run.metrics
    );
    assert!(n3 >= 3000 / (poll_ms + timeout_ms) as usize, "only {n3} readings of unit 3 in 3 s");
    assert!(bad2 > 0, "the dead unit's points are reported bad");
    assert!(run.metrics.skipped_backoff.get() > 0, "the dead unit was in backoff: {}", run.metrics);
    run.shutdown().await;
}

#[tokio::test]
async fn rtu_garbage_reopens_the_port_and_exceptions_are_bad_quality() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new();
    let bus = RtuBus::spawn(sim.clone()).unwrap();
    let plant = common::plant(dir.path(), &bus_body(&bus.path.display().to_string(), &[1, 2], 150, 100));
    common::fill(&sim, &plant, &[0, 1]);
    let mut run = common::start(plant);
    run.sample(W, "s1.v", |s| s.quality == Quality::GOOD).await;
    let opened = run.metrics.connects.get();
    sim.set_fault(1, Fault::Garbage);
    run.event(W, "offline on garbage", |k| matches!(k, EventKind::DeviceOffline { device, .. } if device == "s1"))
        .await;
    run.sample(W, "s1.v", |s| common::is_bad(s.quality)).await;
    // unit 2 keeps answering on the same bus meanwhile
    run.sample(W, "s2.v", |s| s.quality == Quality::GOOD).await;
    assert!(run.metrics.connects.get() > opened, "the serial port was reopened: {}", run.metrics);
    sim.set_fault(1, Fault::Drop);
    run.sample(W, "s2.v", |s| s.quality == Quality::GOOD).await;
    sim.set_fault(1, Fault::Exception(2));
    run.event(
        W,
        "online (exception means alive)",
        |k| matches!(k, EventKind::DeviceOnline { device } if device == "s1"),
    )
    .await;
    run.sample(W, "s1.v", |s| s.quality == Quality::BAD_CONFIGURATION_ERROR).await;
    sim.set_fault(1, Fault::None);
    run.sample(W, "s1.v", |s| s.quality == Quality::GOOD).await;
    assert!(bus.bad_frames.load(Ordering::Relaxed) == 0, "the agent never sent a bad frame");
    run.shutdown().await;
}

#[tokio::test]
async fn acquisition_stops_when_asked_or_when_the_stop_handle_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (l, port) = common::listener().await;
    let plant = common::plant(dir.path(), &tcp_device(port, 150));
    let sim = Sim::new();
    common::fill(&sim, &plant, &[0]);
    let _srv = common::serve_tcp(l, sim);
    let mut run = common::start(plant.clone());
    run.sample(W, "plc.pt", |s| s.quality == Quality::GOOD).await;
    let common::Running { rx, stop, task, .. } = run;
    drop(stop);
    tokio::time::timeout(Duration::from_secs(2), task).await.expect("stops without a stop handle").unwrap().unwrap();
    drop(rx);
    // and a closed record channel is an error, not a silent stop
    let run = common::start(plant);
    let common::Running { rx, stop, task, .. } = run;
    drop(rx);
    let r = tokio::time::timeout(Duration::from_secs(2), task).await.expect("stops when the receiver is gone").unwrap();
    assert!(matches!(r, Err(vigil_edge::sources::AcquisitionError::ChannelClosed)), "{r:?}");
    drop(stop);
}

#[tokio::test]
async fn a_full_record_channel_applies_backpressure_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (l, port) = common::listener().await;
    let plant = common::plant(
        dir.path(),
        &tcp_device(port, 300)
            .replace("poll_ms = 100", "poll_ms = 20")
            .replace("const 42.5", "sine 0 1000 0.3")
            .replace("ramp 0 1000 100", "ramp 0 60000 1"),
    );
    let sim = Sim::new();
    common::fill(&sim, &plant, &[0]);
    let _srv = common::serve_tcp(l, sim);
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let (stop, srx) = tokio::sync::watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    let task = tokio::spawn(vigil_edge::sources::run_acquisition(Arc::new(plant), tx, srx, metrics.clone()));
    // a slow consumer: 10 ms per record for 1 s, while the driver produces every 20 ms
    let mut received = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        rx.recv().await.unwrap();
        received += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    while let Some(_r) = rx.recv().await {
        received += 1;
    }
    task.await.unwrap().unwrap();
    assert!(metrics.backpressure_waits.get() > 0, "{metrics}");
    assert_eq!(
        received,
        metrics.samples_out.get() + metrics.events_out.get(),
        "every record sent was received: {metrics}"
    );
    assert_eq!(
        metrics.readings.get(),
        metrics.samples_out.get() + metrics.suppressed.get(),
        "every reading was reported or suppressed by deadband: {metrics}"
    );
    // Not a timing bound: values move every poll, so the deadband lets most readings through.
    assert!(metrics.readings.get() >= 20, "the driver kept polling under backpressure: {metrics}");
    assert!(
        metrics.samples_out.get() * 10 >= metrics.readings.get() * 9,
        "values move every poll, so most readings are reported: {metrics}"
    );
}

#[tokio::test]
async fn the_inter_frame_gap_is_kept_between_requests_on_a_bus() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new();
    let bus = RtuBus::spawn(sim.clone()).unwrap();
    // 2 units polled every 10 ms, 2 requests each (input and holding): without a gap the bus would
    // carry hundreds of requests per second; a 50 ms gap allows at most 20.
    let body = bus_body(&bus.path.display().to_string(), &[1, 2], 200, 10)
        .replace("baud = 38400\n", "baud = 38400\nframe_gap_ms = 50\n");
    let plant = common::plant(dir.path(), &body);
    common::fill(&sim, &plant, &[0, 1]);
    let run = common::start(plant);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let served = sim.served(1) + sim.served(2);
    run.shutdown().await;
    assert!((5..=21).contains(&served), "{served} requests in 1 s with a 50 ms gap");
}

#[tokio::test]
async fn units_behind_one_tcp_gateway_share_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (l, port) = common::listener().await;
    let mut body = String::new();
    for u in [1u8, 2] {
        body += &tcp_device(port, 200)
            .replace("name = \"plc\"", &format!("name = \"plc{u}\""))
            .replace("unit = 1", &format!("unit = {u}"));
    }
    let plant = common::plant(dir.path(), &body);
    let sim = Sim::new();
    common::fill(&sim, &plant, &[0, 1]);
    let _srv = common::serve_tcp(l, sim.clone());
    let metrics = Arc::new(Metrics::default());
    let records = read_once(Arc::new(plant), None, metrics.clone()).await.unwrap();
    assert_eq!(metrics.connects.get(), 1, "one connection for both units: {metrics}");
    for id in ["plc1.pt", "plc2.pt"] {
        assert!(records.iter().any(|r| matches!(r, Record::Sample { point, sample } if point.as_str() == id && sample.quality == Quality::GOOD)), "{id}");
    }
    assert!(sim.served(1) >= 1 && sim.served(2) >= 1);
}

#[tokio::test]
async fn a_nan_from_the_device_is_a_decoding_error_not_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let (l, port) = common::listener().await;
    let plant = common::plant(dir.path(), &tcp_device(port, 300));
    let sim = Sim::new();
    common::fill(&sim, &plant, &[0]);
    // A register the simulator's waveforms do not drive (inside the device's map), read as f32.
    let agent = common::plant(
        dir.path(),
        &format!(
            "{}[[devices.points]]\nid = \"raw\"\nkind = \"holding\"\naddress = 20\ntype = \"f32\"\n",
            tcp_device(port, 300)
        ),
    );
    sim.units().get_mut(&1).unwrap().set_register(vigil_edge::config::RegisterKind::Holding, 20, 0x7FC0);
    let _srv = common::serve_tcp(l, sim);
    let records = read_once(Arc::new(agent), None, Arc::new(Metrics::default())).await.unwrap();
    let q = |id: &str| {
        records
            .iter()
            .find_map(|r| match r {
                Record::Sample { point, sample } if point.as_str() == id => Some(sample.quality),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(q("plc.raw"), Quality::BAD_DECODING_ERROR);
    assert_eq!(q("plc.pt"), Quality::GOOD, "the other points of the same request are fine");
}
