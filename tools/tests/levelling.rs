//! A static-levelling line on a simulated RS485 bus (pty): the profile matches the simulator's
//! register layout, settlement is derived from the raw readings, and the failing sensor goes offline
//! without holding up the others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use vigil_common::{EventKind, Quality};
use vigil_edge::Record;
use vigil_edge::sources::{Metrics, read_once};
use vigil_tools::sim::rtu::RtuBus;
use vigil_tools::sim::{Fault, Sim, levelling_unit};

#[tokio::test]
async fn settlement_from_a_simulated_levelling_bus() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::new();
    for u in 1..=4 {
        // a year of settlement per second: readings move visibly between reads
        sim.add_unit(u, levelling_unit(u, 365.0 * 86_400.0).unwrap());
    }
    sim.set_fault(4, Fault::NoAnswer);
    let bus = RtuBus::spawn(sim.clone()).unwrap();
    let mut body = format!("[[buses]]\nname = \"rs485\"\npath = {:?}\nbaud = 9600\n", bus.path.display().to_string());
    for u in 1..=4 {
        body += &format!(
            "[[devices]]\nname = \"lv{u}\"\nprotocol = \"rtu\"\nbus = \"rs485\"\nunit = {u}\nprofile = \"levelling-magnetostrictive\"\ntimeout_ms = 200\nretries = 0\npoll_ms = 1000\n"
        );
    }
    body += "[[levelling]]\nname = \"G\"\nbase = \"lv1.reading\"\nbase_initial_mm = 151.0\n";
    for u in 2..=4 {
        body += &format!("[[levelling.points]]\npoint = \"lv{u}.reading\"\ninitial_mm = {}.0\n", 150 + u);
    }
    let plant = common::plant(dir.path(), &body);
    let records = read_once(Arc::new(plant), None, Arc::new(Metrics::default())).await.unwrap();
    let get = |id: &str| {
        records.iter().find_map(|r| match r {
            Record::Sample { point, sample } if point.as_str() == id => {
                Some((sample.value.as_f64().unwrap(), sample.quality))
            }
            _ => None,
        })
    };
    let (b, bq) = get("lv1.reading").unwrap();
    assert_eq!(bq, Quality::GOOD);
    for u in 2..=3 {
        let (m, mq) = get(&format!("lv{u}.reading")).unwrap();
        assert_eq!(mq, Quality::GOOD);
        let (s, sq) = get(&format!("lv{u}.reading:settlement")).unwrap();
        assert_eq!(sq, Quality::GOOD);
        let hand = (((m - (150.0 + f64::from(u))) - (b - 151.0)) * 100.0).round() / 100.0;
        assert_eq!(s, hand, "unit {u}: reading {m}, base {b}");
        assert!(s < 0.0, "the simulated point settles (reading falls): {s}");
    }
    let (_, q4) = get("lv4.reading").unwrap();
    assert_eq!(q4, Quality::BAD_TIMEOUT);
    assert_eq!(get("lv4.reading:settlement").unwrap().1, Quality::BAD_TIMEOUT);
    assert!(records.iter().any(|r| matches!(r, Record::Event(e) if e.kind == EventKind::DeviceOffline { device: "lv4".into(), reason: "no answer within the timeout".into() })));
}
