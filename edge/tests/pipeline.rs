//! The pipeline: scaling, range, report-by-exception with deadband and maximum silent interval, and
//! levelling settlement against a hand calculation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use vigil_common::{ClockQuality, Quality, Value};
use vigil_edge::Record;
use vigil_edge::config::{self, Config};
use vigil_edge::pipeline::{Pipeline, Reading, SourceMsg};
use vigil_edge::sources::Metrics;
use vigil_edge::sources::modbus::codec::Raw;

const CFG: &str = r#"
[gateway]
id = "gw"
enterprise = "ent"
key_file = "/tmp/k"
[spool]
path = "/tmp/s"

[[devices]]
name = "d"
protocol = "tcp"
host = "127.0.0.1"
timeout_ms = 1000
retries = 1
poll_ms = 1000

[[devices.points]]
id = "x"
kind = "holding"
address = 0
type = "f32"
range = [0.0, 100.0]
deadband = 0.5
max_silent_s = 10

[[devices.points]]
id = "base"
kind = "input"
address = 0
type = "i32"
scale = 0.01
unit = "mm"
deadband = 0.01

[[devices.points]]
id = "m"
kind = "input"
address = 2
type = "i32"
scale = 0.01
unit = "mm"
range = [0.0, 600.0]
deadband = 0.01

[[devices.points]]
id = "n"
kind = "input"
address = 4
type = "u16"

[[levelling]]
name = "L1"
base = "d.base"
base_initial_mm = 100.00
rate_window_days = 1.0

[[levelling.points]]
point = "d.m"
initial_mm = 200.00
"#;

struct P {
    p: Pipeline,
    plant: config::Plant,
    m: Metrics,
}

impl P {
    fn new() -> P {
        let c: Config = toml::from_str(CFG).unwrap();
        let plant = config::resolve(c, Path::new("/virtual/gw.toml")).unwrap_or_else(|e| panic!("{e}"));
        P { p: Pipeline::new(&plant, ClockQuality::NTP_SYNCED, false), plant, m: Metrics::default() }
    }
    fn feed(&mut self, id: &str, ts_ms: i64, outcome: Result<Raw, Quality>) -> Vec<(String, Value, Quality)> {
        let point = self.plant.point_index(id).unwrap();
        let mut out = Vec::new();
        self.p.process(SourceMsg::Readings(vec![Reading { point, ts_ms, outcome }]), &mut out, &self.m);
        out.into_iter()
            .map(|r| match r {
                Record::Sample { point, sample } => {
                    assert_eq!(sample.ts_ms, ts_ms);
                    (point.to_string(), sample.value, sample.quality)
                }
                Record::Event(e) => panic!("unexpected event {e:?}"),
            })
            .collect()
    }
}

const S: i64 = 1000;

#[test]
fn deadband_max_silent_interval_and_quality_changes() {
    let mut p = P::new();
    let x = |v: f64| Ok(Raw::Float(v));
    assert_eq!(p.feed("d.x", 0, x(10.0)), vec![("d.x".into(), Value::F64(10.0), Quality::GOOD)]);
    assert!(p.feed("d.x", S, x(10.3)).is_empty(), "within the deadband");
    assert_eq!(p.feed("d.x", 2 * S, x(10.6)).len(), 1, "moved more than 0.5 from the last report");
    assert!(p.feed("d.x", 3 * S, x(10.6)).is_empty());
    assert!(p.feed("d.x", 11 * S, x(10.6)).is_empty(), "9 s silent < 10 s");
    assert_eq!(
        p.feed("d.x", 12 * S, x(10.6)),
        vec![("d.x".into(), Value::F64(10.6), Quality::GOOD)],
        "10 s silent: reported"
    );
    // bad: reported once, with the last good value; repeated bad is suppressed; recovery reported
    assert_eq!(
        p.feed("d.x", 13 * S, Err(Quality::BAD_TIMEOUT)),
        vec![("d.x".into(), Value::F64(10.6), Quality::BAD_TIMEOUT)]
    );
    assert!(p.feed("d.x", 14 * S, Err(Quality::BAD_TIMEOUT)).is_empty());
    assert_eq!(p.feed("d.x", 15 * S, x(10.6)), vec![("d.x".into(), Value::F64(10.6), Quality::GOOD)]);
    // out of range: uncertain, value kept
    assert_eq!(
        p.feed("d.x", 16 * S, x(150.0)),
        vec![("d.x".into(), Value::F64(150.0), Quality::UNCERTAIN_EU_EXCEEDED)]
    );
    assert!(p.m.suppressed.get() >= 4);
    // zero deadband: every change is reported, repeats are not; unscaled integers stay integers
    assert_eq!(p.feed("d.n", 0, Ok(Raw::Int(5))), vec![("d.n".into(), Value::I64(5), Quality::GOOD)]);
    assert!(p.feed("d.n", S, Ok(Raw::Int(5))).is_empty());
    assert_eq!(p.feed("d.n", 2 * S, Ok(Raw::Int(6))).len(), 1);
    // a bad point that never had a value reports zero of its type
    let mut q = P::new();
    assert_eq!(
        q.feed("d.n", 0, Err(Quality::BAD_COMMUNICATION_ERROR)),
        vec![("d.n".into(), Value::I64(0), Quality::BAD_COMMUNICATION_ERROR)]
    );
}

fn find(v: &[(String, Value, Quality)], id: &str) -> Option<(f64, Quality)> {
    v.iter().find(|(p, ..)| p == id).map(|(_, v, q)| (v.as_f64().unwrap(), *q))
}

#[test]
fn settlement_and_rate_match_a_hand_calculation() {
    let mut p = P::new();
    const DAY: i64 = 86_400_000;
    let t0 = 1_800_000_000_000;
    // base 100.30 (initial 100.00): the reference rose 0.30 mm.
    p.feed("d.base", t0, Ok(Raw::Int(10_030)));
    // m 198.75 (initial 200.00): (198.75 - 200.00) - (100.30 - 100.00) = -1.25 - 0.30 = -1.55 mm
    let out = p.feed("d.m", t0, Ok(Raw::Int(19_875)));
    assert_eq!(find(&out, "d.m"), Some((198.75, Quality::GOOD)));
    assert_eq!(find(&out, "d.m:settlement"), Some((-1.55, Quality::GOOD)));
    assert_eq!(find(&out, "d.m:rate"), None, "no rate from a single reading");

    // half a day later: m 198.65 -> settlement -1.65; rate -0.10 mm / 0.5 day = -0.2 mm/day, window
    // not yet full: uncertain
    p.feed("d.base", t0 + DAY / 2, Ok(Raw::Int(10_030)));
    let out = p.feed("d.m", t0 + DAY / 2, Ok(Raw::Int(19_865)));
    assert_eq!(find(&out, "d.m:settlement"), Some((-1.65, Quality::GOOD)));
    assert_eq!(find(&out, "d.m:rate"), Some((-0.2, Quality::UNCERTAIN)));

    // one day after the first: base fell 0.10 (100.20), m 198.45:
    // (198.45 - 200) - (100.20 - 100) = -1.55 - 0.20 = -1.75; rate (-1.75 - -1.55) / 1 day = -0.2
    p.feed("d.base", t0 + DAY, Ok(Raw::Int(10_020)));
    let out = p.feed("d.m", t0 + DAY, Ok(Raw::Int(19_845)));
    assert_eq!(find(&out, "d.m:settlement"), Some((-1.75, Quality::GOOD)));
    assert_eq!(find(&out, "d.m:rate"), Some((-0.2, Quality::GOOD)));

    // base bad: derived values bad too, with the base's reason
    p.feed("d.base", t0 + DAY + 1000, Err(Quality::BAD_TIMEOUT));
    let out = p.feed("d.m", t0 + DAY + 1000, Ok(Raw::Int(19_845)));
    assert_eq!(find(&out, "d.m:settlement").map(|x| x.1), Some(Quality::BAD_TIMEOUT));
    assert_eq!(find(&out, "d.m:rate").map(|x| x.1), Some(Quality::BAD_TIMEOUT));

    // base good again but then silent for longer than 3 polls + timeouts: stale, bad
    p.feed("d.base", t0 + DAY + 2000, Ok(Raw::Int(10_020)));
    let out = p.feed("d.m", t0 + DAY + 2000, Ok(Raw::Int(19_845)));
    assert_eq!(find(&out, "d.m:settlement"), Some((-1.75, Quality::GOOD)));
    let out = p.feed("d.m", t0 + DAY + 60_000, Ok(Raw::Int(19_845)));
    assert!(find(&out, "d.m:settlement").is_some_and(|(_, q)| q.severity() == vigil_common::Severity::Bad), "{out:?}");

    // measuring point uncertain (outside its range): derived values computed, marked uncertain
    // (range [0, 600] mm: 650.00 is outside): (650 - 200) - (100.20 - 100) = 449.80
    p.feed("d.base", t0 + DAY + 60_500, Ok(Raw::Int(10_020)));
    let out = p.feed("d.m", t0 + DAY + 60_500, Ok(Raw::Int(65_000)));
    assert_eq!(find(&out, "d.m"), Some((650.0, Quality::UNCERTAIN_EU_EXCEEDED)));
    assert_eq!(find(&out, "d.m:settlement"), Some((449.8, Quality::UNCERTAIN_EU_EXCEEDED)));

    // measuring point bad: derived bad with its reason
    p.feed("d.base", t0 + DAY + 61_000, Ok(Raw::Int(10_020)));
    let out = p.feed("d.m", t0 + DAY + 61_000, Err(Quality::BAD_COMMUNICATION_ERROR));
    assert_eq!(find(&out, "d.m:settlement").map(|x| x.1), Some(Quality::BAD_COMMUNICATION_ERROR));
}
