//! Committed test vectors: a canonical batch and ack, their payload bytes, a fixed key and the
//! signatures, in hex. Any change to the wire format fails here first. After a deliberate format
//! change (with a new format version), regenerate with `VIGIL_WRITE_VECTORS=1 cargo test -p
//! vigil-common --test vectors` and explain the change in docs/PROTOCOL.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use vigil_common::event::{ConcentrationUnit, DetectionPhase, LeakLocation, Snapshot};
use vigil_common::{
    Ack, Batch, ClassDrops, ClockQuality, DropCounters, Event, EventKind, GasDetection, GatewayId, PointId, Priority,
    Quality, Sample, SeqRange, Series, SigningKey, TimeSource, Value,
};

const T0: i64 = 1_795_000_000_000;

fn key() -> SigningKey {
    SigningKey::from_seed(&core::array::from_fn(|i| i as u8))
}

fn central_key() -> SigningKey {
    SigningKey::from_seed(&core::array::from_fn(|i| 0xA0 ^ i as u8))
}

fn sample(ts_ms: i64, value: Value) -> Sample {
    Sample { ts_ms, value, quality: Quality::GOOD, clock: ClockQuality::NTP_SYNCED }
}

fn canonical_batch() -> Batch {
    let level: Vec<Sample> = [2.345, 2.346, 2.346, 2.344]
        .iter()
        .enumerate()
        .map(|(i, &v)| sample(T0 + i as i64 * 1000 + 3, Value::F64(v)))
        .collect();
    let mut gas: Vec<Sample> =
        [0.0, 0.1, 12.5].iter().enumerate().map(|(i, &v)| sample(T0 + i as i64 * 1000, Value::F64(v))).collect();
    gas[2].quality = Quality::UNCERTAIN_EU_EXCEEDED;
    let temp = vec![
        sample(T0, Value::F64(21.7)),
        Sample {
            quality: Quality::BAD_TIMEOUT,
            clock: ClockQuality { synchronised: false, source: TimeSource::Gateway },
            ..sample(T0 + 1000, Value::F64(21.7))
        },
        sample(T0 + 2000, Value::F64(0.1 + 0.2)),
    ];
    let mixed = vec![
        sample(T0, Value::I64(-5)),
        sample(T0 + 500, Value::I64(70_000)),
        sample(T0 + 900, Value::Text("RUN".into())),
        sample(T0 + 950, Value::Bool(true)),
    ];
    let series = [("GDS03.CH07", gas), ("PU101.STATE", mixed), ("TK101.LT", level), ("TK101.TT", temp)]
        .into_iter()
        .map(|(p, samples)| Series { point: PointId::new(p).unwrap(), samples })
        .collect();
    let at = |ts_ms| (ts_ms, ClockQuality { synchronised: true, source: TimeSource::Device });
    let events = vec![
        {
            let (ts_ms, clock) = at(T0 + 1500);
            Event {
                ts_ms,
                clock,
                kind: EventKind::GasDetection(GasDetection {
                    camera: "cam-tankfarm-1".into(),
                    phase: DetectionPhase::Start,
                    gas: "methane".into(),
                    concentration: 0.3,
                    unit: ConcentrationUnit::LelM,
                    confidence: Some(0.92),
                    location: LeakLocation {
                        preset: Some(3),
                        pan: Some(120.5),
                        tilt: Some(-4.25),
                        region: Some([640, 360, 80, 60]),
                    },
                    snapshot: Some(Snapshot { content_type: "image/jpeg".into(), bytes: vec![0xFF, 0xD8, 0xFF, 0xD9] }),
                }),
            }
        },
        Event {
            ts_ms: T0 + 1600,
            clock: ClockQuality::NTP_SYNCED,
            kind: EventKind::DigitalInput { input: "di1".into(), state: true },
        },
        Event {
            ts_ms: T0 + 1700,
            clock: ClockQuality::NTP_SYNCED,
            kind: EventKind::DeviceOffline { device: "gds03".into(), reason: "timeout after 3 retries".into() },
        },
        Event {
            ts_ms: T0 + 1800,
            clock: ClockQuality::NTP_SYNCED,
            kind: EventKind::DeviceOnline { device: "gds03".into() },
        },
        Event {
            ts_ms: T0 + 1900,
            clock: ClockQuality::NTP_SYNCED,
            kind: EventKind::SourceFault { source: "tk-gauge".into(), message: "exception 02".into() },
        },
        Event {
            ts_ms: T0 + 2000,
            clock: ClockQuality::NTP_SYNCED,
            kind: EventKind::SpoolDropped { class: Priority::Backfill, batches: 2, samples: 10_000, events: 0 },
        },
        Event {
            ts_ms: T0 + 2100,
            clock: ClockQuality::NTP_SYNCED,
            kind: EventKind::SpoolLost {
                old_epoch: Some(6),
                reason: "corrupt".into(),
                quarantined_to: "spool.corrupt-1".into(),
            },
        },
        Event {
            ts_ms: T0,
            clock: ClockQuality { synchronised: false, source: TimeSource::Gateway },
            kind: EventKind::GatewayStarted { version: "0.1.0".into(), reason: "power-on".into() },
        },
    ];
    Batch {
        gateway: GatewayId::new("gw-tankfarm-01").unwrap(),
        epoch: 7,
        seq: 1_000_001,
        class: Priority::AlarmEvent,
        created_ms: T0 + 3000,
        series,
        events,
        dropped: DropCounters {
            backfill: ClassDrops { batches: 2, samples: 10_000, events: 0 },
            ..DropCounters::default()
        },
    }
}

fn canonical_ack() -> Ack {
    Ack {
        gateway: GatewayId::new("gw-tankfarm-01").unwrap(),
        epoch: 7,
        acked: vec![SeqRange { first: 0, last: 999_999 }, SeqRange { first: 1_000_001, last: 1_000_001 }],
        resend: vec![SeqRange { first: 1_000_000, last: 1_000_000 }],
        central_ms: T0 + 3100,
    }
}

fn vector_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v1.txt")
}

fn actual() -> BTreeMap<&'static str, String> {
    let batch = canonical_batch();
    let ack = canonical_ack();
    BTreeMap::from([
        ("gateway_seed", hex::encode(core::array::from_fn::<u8, 32, _>(|i| i as u8))),
        ("gateway_public", key().public_key().to_text()),
        ("gateway_key_id", key().public_key().key_id().to_string()),
        ("batch_payload", hex::encode(batch.encode().unwrap())),
        ("batch_sealed", hex::encode(batch.seal(&key()).unwrap())),
        ("central_public", central_key().public_key().to_text()),
        ("ack_sealed", hex::encode(ack.seal(&central_key()).unwrap())),
    ])
}

fn committed() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(vector_file()).expect("tests/vectors/v1.txt is committed");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(" = ").expect("key = value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

#[test]
fn wire_bytes_match_the_committed_vectors() {
    let actual = actual();
    if std::env::var_os("VIGIL_WRITE_VECTORS").is_some() {
        let mut text =
            String::from("# Vigil wire format v1 test vectors; see common/tests/vectors.rs and docs/PROTOCOL.md.\n");
        for (k, v) in &actual {
            text.push_str(&format!("{k} = {v}\n"));
        }
        std::fs::write(vector_file(), text).unwrap();
    }
    let committed = committed();
    assert_eq!(committed.len(), actual.len(), "vector file has other keys");
    for (k, v) in &actual {
        assert_eq!(committed.get(*k), Some(v), "{k} differs from the committed vector: the wire format changed");
    }
}

#[test]
fn committed_vectors_open_to_the_canonical_messages() {
    let committed = committed();
    let gateway_pk = vigil_common::PublicKey::from_text(&committed["gateway_public"]).unwrap();
    let sealed = hex::decode(&committed["batch_sealed"]).unwrap();
    let gw = GatewayId::new("gw-tankfarm-01").unwrap();
    assert_eq!(Batch::open(&sealed, &gw, |_| Some(gateway_pk.clone())).unwrap(), canonical_batch());

    let central_pk = vigil_common::PublicKey::from_text(&committed["central_public"]).unwrap();
    let ack = hex::decode(&committed["ack_sealed"]).unwrap();
    assert_eq!(Ack::open(&ack, &gw, 7, |_| Some(central_pk)).unwrap(), canonical_ack());
}
