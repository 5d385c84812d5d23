//! Point catalogues through ingest's core: a gateway's signed catalogue on `up/catalogue` is stored
//! and survives a restart; forged, misaddressed and invalid ones are refused and counted; a repeat
//! writes nothing; the state and catalogue of a gateway registered after ingest loaded its keys
//! are held until the next reload, not lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::unique;
use vigil_central::config::Config;
use vigil_central::ingest::{Core, Incoming};
use vigil_central::store::Registry;
use vigil_common::catalogue::{DeviceEntry, DeviceProtocol, PointEntry};
use vigil_common::envelope::{self, Kind};
use vigil_common::{EnterpriseId, GatewayId, GatewayState, PointCatalogue, PointId, SigningKey};

fn catalogue(gw: &GatewayId, unit: &str, ts_ms: i64) -> PointCatalogue {
    PointCatalogue {
        gateway: gw.clone(),
        ts_ms,
        config_sha256: [5; 32],
        devices: vec![DeviceEntry {
            name: "gds-1".into(),
            protocol: DeviceProtocol::ModbusRtu,
            address: "rs485-1 unit 3".into(),
            profile: Some("gas-controller-8ch".into()),
        }],
        points: vec![PointEntry {
            id: PointId::new("GDS1.CH1").unwrap(),
            device: 0,
            unit: unit.into(),
            range: Some([0.0, 100.0]),
            poll_ms: 1000,
            deadband: 0.5,
            address: "input 0 u16".into(),
        }],
    }
}

fn msg(enterprise: &str, gw: &GatewayId, payload: Vec<u8>) -> Incoming {
    Incoming { topic: format!("vigil/v1/{enterprise}/{gw}/up/catalogue"), payload }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_catalogues_are_stored_and_forged_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "data_dir = \"data\"\nkey_file = \"k\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1\n").unwrap();
    let cfg = Config::load(&path).unwrap();
    let key = SigningKey::from_seed(&[8; 32]);
    let intruder = SigningKey::from_seed(&[66; 32]);
    let gw = GatewayId::new(unique("gw")).unwrap();
    let other = GatewayId::new(unique("gw")).unwrap();
    let registry = Registry::open(&cfg.data_dir).await.unwrap();
    let acme = EnterpriseId::new("acme").unwrap();
    registry.add(&gw, &acme, &key.public_key(), 0).await.unwrap();
    registry.add(&other, &acme, &SigningKey::from_seed(&[7; 32]).public_key(), 0).await.unwrap();

    let mut core = Core::open(cfg.clone(), SigningKey::from_seed(&[9; 32])).await.unwrap();
    let m = core.catalogues.metrics.clone();
    let good = catalogue(&gw, "%LEL", 1).seal(&key).unwrap();
    let mut invalid = catalogue(&gw, "%LEL", 1);
    invalid.points[0].device = 4;
    let refused = [
        // Signed by a key that is not the gateway's.
        msg("acme", &gw, catalogue(&gw, "ppm", 1).seal(&intruder).unwrap()),
        // The gateway's key, but published under another enterprise.
        msg("other-co", &gw, catalogue(&gw, "ppm", 1).seal(&key).unwrap()),
        // Another registered gateway's topic carrying this gateway's signed catalogue.
        msg("acme", &other, good.clone()),
        // Signed, but names a device that does not exist.
        msg("acme", &gw, envelope::seal_message(Kind::Catalogue, &invalid, &key).unwrap()),
        // A state envelope is no catalogue.
        msg("acme", &gw, envelope::seal_message(Kind::State, &catalogue(&gw, "ppm", 1), &key).unwrap()),
    ];
    let n = refused.len() as u64;
    core.process_group(refused.into()).await.unwrap();
    assert_eq!(m.rejected.load(Ordering::Relaxed), n);
    assert!(core.catalogues.get(gw.as_str()).is_none() && core.catalogues.get(other.as_str()).is_none());

    // A cleared retained topic is no error.
    core.process_group(vec![msg("acme", &gw, Vec::new())]).await.unwrap();
    assert_eq!(m.rejected.load(Ordering::Relaxed), n);

    core.process_group(vec![msg("acme", &gw, good)]).await.unwrap();
    let stored = core.catalogues.get(gw.as_str()).unwrap();
    assert_eq!(stored.catalogue.points[0].unit, "%LEL");
    assert_eq!((m.received.load(Ordering::Relaxed), m.changed.load(Ordering::Relaxed)), (1, 1));
    // The same content made at a later start writes nothing; a changed unit does.
    core.process_group(vec![msg("acme", &gw, catalogue(&gw, "%LEL", 2).seal(&key).unwrap())]).await.unwrap();
    assert_eq!((m.received.load(Ordering::Relaxed), m.changed.load(Ordering::Relaxed)), (2, 1));
    core.process_group(vec![msg("acme", &gw, catalogue(&gw, "ppm", 3).seal(&key).unwrap())]).await.unwrap();
    assert_eq!(m.changed.load(Ordering::Relaxed), 2);

    // A gateway enrolled just after ingest read the registry connects at once: its state and
    // catalogue (sent once per connect) are held, and taken after the next reload.
    let late = GatewayId::new(unique("gw")).unwrap();
    let late_key = SigningKey::from_seed(&[11; 32]);
    let mut states = core.streams.states.subscribe();
    core.process_group(vec![]).await.unwrap();
    registry.add(&late, &acme, &late_key.public_key(), 0).await.unwrap();
    let state = GatewayState {
        gateway: late.clone(),
        online: true,
        ts_ms: 1,
        epoch: 1,
        next_seq: 0,
        version: "test".into(),
        spool: Default::default(),
        config: Default::default(),
        update: Default::default(),
        clock: Default::default(),
    };
    let late_msgs = vec![
        msg("acme", &late, catalogue(&late, "m", 1).seal(&late_key).unwrap()),
        Incoming { topic: format!("vigil/v1/acme/{late}/up/state"), payload: state.seal(&late_key).unwrap() },
    ];
    core.process_group(late_msgs).await.unwrap();
    let held = core.metrics.held_for_registry.load(Ordering::Relaxed);
    assert_eq!((held, m.rejected.load(Ordering::Relaxed)), (2, n), "held, not refused");
    assert!(core.catalogues.get(late.as_str()).is_none());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Any later message (here an empty retained clear) makes ingest reload and take what it held.
    core.process_group(vec![msg("acme", &late, Vec::new())]).await.unwrap();
    core.process_group(vec![msg("acme", &late, Vec::new())]).await.unwrap();
    assert!(core.catalogues.get(late.as_str()).is_some(), "the late gateway's catalogue was not taken");
    let (got, _) = &*states.try_recv().unwrap();
    assert_eq!(got.gateway, late);
    drop(core);

    // After a restart central still knows every unit.
    let core = Core::open(cfg, SigningKey::from_seed(&[9; 32])).await.unwrap();
    assert_eq!(core.catalogues.get(gw.as_str()).unwrap().catalogue.points[0].unit, "ppm");
    assert_eq!(core.catalogues.all().len(), 2);
}
