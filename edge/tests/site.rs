//! The gateway's own hardware inside the running agent (memory lines and watchdog): a digital input
//! becomes an event at central, a local alarm rule drives the siren relay while the uplink is cut,
//! and the watchdog is kicked while the loops run and disabled on an orderly stop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Park, StandInCentral, wait_for};
use tokio::sync::watch;
use vigil_common::EventKind;
use vigil_edge::agent::{Hardware, run_with};
use vigil_hw::{MemoryIo, MemoryWatchdog};
use vigil_tools::faultproxy::FaultProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_rings_the_local_siren_without_the_uplink_and_reaches_central_later() {
    let mut park = Park::new();
    park.extra_config = r#"
[hardware]
debounce_ms = 20
poll_ms = 10

[[hardware.inputs]]
name = "cam1-alarm"
chip = "memory"
line = 0

[[hardware.outputs]]
name = "siren"
chip = "memory"
line = 1

[[local_alarm]]
name = "camera-relay"
output = "siren"
trigger = "input"
input = "cam1-alarm"
hold_s = 0
"#
    .to_owned();
    let central = StandInCentral::start(&park).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], park.broker.port()).into()).await.unwrap();
    let plant = Arc::new(park.gateway_config(proxy.addr().port()));
    let (io, pins) = MemoryIo::memory(&["cam1-alarm"], &["siren"]);
    let dog = MemoryWatchdog::default();
    let hardware = Hardware { io: Some(Box::new(io)), watchdog: Some(Box::new(dog.clone())) };
    let (stop, shutdown) = watch::channel(false);
    let agent = tokio::spawn(run_with(plant, shutdown, hardware));
    assert!(wait_for(20, || !central.received.lock().unwrap().batches.is_empty()).await, "connected");

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    pins["cam1-alarm"].set(true);
    assert!(wait_for(2, || pins["siren"].get()).await, "siren on while the uplink is cut");
    pins["cam1-alarm"].set(false);
    assert!(wait_for(2, || !pins["siren"].get()).await, "siren released when the contact opens (hold 0 s)");
    proxy.restore();

    let events = || -> Vec<EventKind> {
        central
            .received
            .lock()
            .unwrap()
            .batches
            .values()
            .flat_map(|b| b.events.iter().map(|e| e.kind.clone()))
            .collect()
    };
    assert!(
        wait_for(30, || events().iter().filter(|k| matches!(k, EventKind::LocalAlarm { .. })).count() >= 2).await,
        "local alarm switches reach central after the outage"
    );
    let kinds = events();
    assert!(kinds.contains(&EventKind::DigitalInput { input: "cam1-alarm".into(), state: true }));
    assert!(kinds.contains(&EventKind::DigitalInput { input: "cam1-alarm".into(), state: false }));
    assert!(kinds.iter().any(|k| matches!(k, EventKind::LocalAlarm { on: true, output, .. } if output == "siren")));
    assert!(
        wait_for(5, || dog.kicks() >= 3).await,
        "watchdog kicked every second while the loops run ({})",
        dog.kicks()
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent).await.unwrap().unwrap().unwrap();
    assert!(dog.disabled(), "watchdog disabled on an orderly stop");
    assert_eq!(pins["siren"].writes(), vec![true, false]);
}
