#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Alarm engine against real SQLite files: bursts, restarts, backfill, windows, the closed loop and
//! the audit chain.

use std::path::Path;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::sync::broadcast::Receiver;
use vigil_central::alarms::*;
use vigil_common::event::{ConcentrationUnit, DetectionPhase, GasDetection, LeakLocation};
use vigil_common::{ClockQuality, Event, EventKind, GatewayId, PointId, Quality, Sample, Value};

const T0: i64 = 1_790_000_000_000;

async fn pool(path: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            SqliteConnectOptions::new().filename(path).create_if_missing(true).journal_mode(SqliteJournalMode::Wal),
        )
        .await
        .unwrap()
}

fn config() -> AlarmConfig {
    AlarmConfig::from_toml(
        "test.toml",
        r#"
[engine]
late_after_s = 60
gateway_silence_s = 90

[[point]]
id = "TK101.LT"
gateway = "gw-01"
device = "plc-1"
enterprise = "ent-a"
grade = "A"
hh = 90.0
h = 80.0
l = 10.0
ll = 5.0
deadband = 1.0
expected_interval_s = 1.0

[[point]]
id = "TK102.PT"
gateway = "gw-01"
enterprise = "ent-a"
grade = "C"
h = 1.5

[[point]]
id = "gw-01/di/DI1"
gateway = "gw-01"
kind = "digital"
alarm_when = true
grade = "B"
"#,
    )
    .unwrap()
}

async fn open(path: &Path) -> (AlarmEngine, Receiver<AlarmChange>) {
    let e = AlarmEngine::open_sqlite(pool(path).await, config()).await.unwrap();
    let rx = e.subscribe();
    (e, rx)
}

fn gw() -> GatewayId {
    GatewayId::new("gw-01").unwrap()
}
fn pt(s: &str) -> PointId {
    PointId::new(s).unwrap()
}
fn drain(rx: &mut Receiver<AlarmChange>) -> Vec<AlarmChange> {
    let mut v = Vec::new();
    while let Ok(c) = rx.try_recv() {
        v.push(c);
    }
    v
}
fn key(p: &str, c: Condition) -> AlarmKey {
    AlarmKey { source: AlarmSource::Point(p.into()), condition: c }
}
async fn count_instances(e: &AlarmEngine) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM alarm_instances").fetch_one(e.store().pool()).await.unwrap()
}

#[tokio::test]
async fn a_burst_of_identical_triggering_samples_raises_one_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, mut rx) = open(&dir.path().join("a.db")).await;
    let s = Sample::good(T0, 95.0);
    for _ in 0..500 {
        e.on_sample(&gw(), &pt("TK101.LT"), &s, T0 + 5).await.unwrap();
    }
    let r = e.resolve(&pt("TK101.LT")).unwrap();
    assert!(e.resolve(&pt("NOPE")).is_none());
    for i in 1..500 {
        e.on_sample_at(&gw(), r, &Sample::good(T0 + i, 95.0), T0 + i + 5).await.unwrap();
    }
    let ch = drain(&mut rx);
    // HH and H are separate conditions of the same point: one alarm each.
    assert_eq!(ch.len(), 2, "{ch:#?}");
    assert!(ch.iter().all(|c| c.kind == ChangeKind::Raised && c.annunciate));
    assert_eq!(count_instances(&e).await, 2);
    let hh = e.current(&key("TK101.LT", Condition::HiHi)).unwrap();
    assert_eq!((hh.raised_ms, hh.activations, hh.state()), (T0, 1, AlarmState::ActiveUnacked));
    assert_eq!(hh.pickup_deadline_ms, Some(T0 + 5 + 180_000), "grade A: 3 minutes");
}

#[tokio::test]
async fn restart_mid_alarm_neither_duplicates_nor_loses_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    {
        let (mut e, _rx) = open(&path).await;
        e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0, 2.0), T0).await.unwrap();
        assert!(e.current(&key("TK102.PT", Condition::Hi)).is_some());
        // Dropped without any shutdown step: as after kill -9, only the database remains.
    }
    let (mut e, mut rx) = open(&path).await;
    let id = e.current(&key("TK102.PT", Condition::Hi)).unwrap().id;
    // The gateway re-sends the same sample and a later one still in alarm: no second alarm.
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0, 2.0), T0 + 1000).await.unwrap();
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0 + 1000, 2.5), T0 + 1000).await.unwrap();
    assert!(drain(&mut rx).is_empty());
    assert_eq!(count_instances(&e).await, 1);
    drop(e);
    // Restart again, then the value returns to normal: the clear is applied to the same alarm.
    let (mut e, mut rx) = open(&path).await;
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0 + 2000, 1.0), T0 + 2000).await.unwrap();
    let ch = drain(&mut rx);
    assert_eq!(ch.len(), 1);
    assert_eq!(
        (ch[0].kind.clone(), ch[0].alarm.id, ch[0].alarm.cleared_ms),
        (ChangeKind::Cleared, id, Some(T0 + 2000))
    );
    e.acknowledge(id, "op1", "seen", T0 + 3000).await.unwrap();
    drop(e);
    let (e, _rx) = open(&path).await;
    assert!(e.current(&key("TK102.PT", Condition::Hi)).is_none(), "normal after ack: not in the alarm list");
    let a = e.alarm(id).await.unwrap().unwrap();
    assert_eq!((a.state(), a.stage), (AlarmState::Normal, Stage::Acknowledged));
    assert_eq!(count_instances(&e).await, 1);
    assert_eq!(e.verify_audit().await.unwrap(), 1);
}

#[tokio::test]
async fn backfill_after_an_outage_is_recorded_with_real_times_and_not_announced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, mut rx) = open(&dir.path().join("a.db")).await;
    let p = pt("TK102.PT");
    e.on_sample(&gw(), &p, &Sample::good(T0, 1.0), T0).await.unwrap();
    // One hour outage; the backlog arrives in order, all late.
    let now = T0 + 3_600_000;
    for (dt, v) in [(600_000, 1.2), (900_000, 1.8), (1_200_000, 1.0)] {
        e.on_sample(&gw(), &p, &Sample::good(T0 + dt, v), now).await.unwrap();
    }
    let ch = drain(&mut rx);
    assert_eq!(ch.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(), vec![ChangeKind::Raised, ChangeKind::Cleared]);
    assert!(ch.iter().all(|c| !c.annunciate), "late data never rings");
    let id = ch[0].alarm.id;
    let a = e.alarm(id).await.unwrap().unwrap();
    assert_eq!(
        (a.raised_ms, a.cleared_ms, a.historical, a.pickup_deadline_ms),
        (T0 + 900_000, Some(T0 + 1_200_000), true, None)
    );
    let tl = e.timeline(id).await.unwrap();
    assert_eq!(
        tl.iter().map(|t| (t.what.as_str(), t.ts_ms, t.historical)).collect::<Vec<_>>(),
        vec![("raised", T0 + 900_000, true), ("cleared", T0 + 1_200_000, true)]
    );

    // Late data leaves the point in alarm; the first live sample still in alarm announces it.
    e.on_sample(&gw(), &p, &Sample::good(T0 + 1_300_000, 2.0), now).await.unwrap();
    let ch = drain(&mut rx);
    assert!(matches!(ch.as_slice(), [c] if c.kind == ChangeKind::Reactivated && !c.annunciate), "{ch:#?}");
    e.on_sample(&gw(), &p, &Sample::good(now + 1000, 2.0), now + 1000).await.unwrap();
    let ch = drain(&mut rx);
    assert!(
        matches!(ch.as_slice(), [c] if c.kind == ChangeKind::Promoted && c.annunciate && !c.alarm.historical),
        "{ch:#?}"
    );

    // Out-of-order backfill (older than live data already seen) is a separate replay record and
    // never touches the live alarm.
    e.on_sample(&gw(), &p, &Sample::good(T0 + 1_400_000, 1.0), now + 2000).await.unwrap();
    e.on_sample(&gw(), &p, &Sample::good(T0 + 1_500_000, 3.0), now + 2000).await.unwrap();
    e.on_sample(&gw(), &p, &Sample::good(T0 + 1_600_000, 1.0), now + 2000).await.unwrap();
    let ch = drain(&mut rx);
    assert_eq!(
        ch.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
        vec![ChangeKind::Raised, ChangeKind::Cleared, ChangeKind::Action("auto_close".into())]
    );
    assert!(ch.iter().all(|c| c.alarm.replay && !c.annunciate && c.alarm.id != id));
    assert_eq!(ch[1].alarm.raised_ms, T0 + 1_500_000);
    let live = e.current(&key("TK102.PT", Condition::Hi)).unwrap();
    assert!(live.active && live.id == id);
    // It returned to normal within the replayed data: closed at once, the timeline says why, and
    // the audit chain records the system's action.
    let rid = ch[0].alarm.id;
    let r = e.alarm(rid).await.unwrap().unwrap();
    assert!(r.is_closed() && r.acked && !r.active);
    assert!(e.open_alarms().iter().all(|a| a.id != rid));
    let tl = e.timeline(rid).await.unwrap();
    assert_eq!(tl.iter().map(|t| t.what.as_str()).collect::<Vec<_>>(), ["raised", "cleared", "auto_closed"]);
    assert!(tl[2].detail.contains("replayed backlog"), "{}", tl[2].detail);
    let audit = e.audit_records().await.unwrap();
    assert!(audit.iter().any(|r| r.action == "auto_close" && r.target == format!("alarm:{rid}")));
    e.verify_audit().await.unwrap();

    // A replayed crossing still active at the end of the replayed data stays open for the room.
    e.on_sample(&gw(), &p, &Sample::good(T0 + 1_650_000, 3.0), now + 3000).await.unwrap();
    let ch = drain(&mut rx);
    assert!(matches!(ch.as_slice(), [c] if c.kind == ChangeKind::Raised && c.alarm.replay), "{ch:#?}");
    let open = e.open_alarms().into_iter().find(|a| a.id == ch[0].alarm.id).unwrap();
    assert!(open.active && !open.is_closed());
}

#[tokio::test]
async fn maintenance_window_suppresses_records_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, mut rx) = open(&dir.path().join("a.db")).await;
    let w = e
        .request_window(
            "ent-a",
            vec!["TK102.PT".into()],
            vec![],
            T0,
            T0 + 600_000,
            "pump overhaul",
            "ent-user",
            T0 - 1000,
        )
        .await
        .unwrap();
    assert!(matches!(e.approve_window(w.id, "ent-user", T0).await, Err(AlarmError::NotAllowed { .. })));
    e.approve_window(w.id, "park-duty", T0).await.unwrap();
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0 + 1000, 2.0), T0 + 1000).await.unwrap();
    // A point not in the window still rings.
    e.on_sample(&gw(), &pt("TK101.LT"), &Sample::good(T0 + 1000, 85.0), T0 + 1000).await.unwrap();
    let ch = drain(&mut rx);
    assert_eq!(ch.len(), 2);
    let sup = ch.iter().find(|c| c.alarm.key == key("TK102.PT", Condition::Hi)).unwrap();
    assert!(!sup.annunciate && sup.alarm.suppressed_by == Some(w.id));
    assert!(ch.iter().find(|c| c.alarm.key == key("TK101.LT", Condition::Hi)).unwrap().annunciate);
    e.tick(T0 + 599_000).await.unwrap();
    assert!(drain(&mut rx).iter().all(|c| c.kind != ChangeKind::Reannunciated));
    e.tick(T0 + 600_000).await.unwrap();
    let ch = drain(&mut rx);
    let re: Vec<_> = ch.iter().filter(|c| c.kind == ChangeKind::Reannunciated).collect();
    assert_eq!(re.len(), 1);
    assert!(re[0].annunciate && re[0].alarm.key == key("TK102.PT", Condition::Hi));
    assert!(e.windows().is_empty(), "expired windows leave the live list");
    // After expiry, new activations ring.
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0 + 601_000, 1.0), T0 + 601_000).await.unwrap();
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0 + 602_000, 2.0), T0 + 602_000).await.unwrap();
    assert!(drain(&mut rx).iter().any(|c| c.kind == ChangeKind::Reactivated && c.annunciate));
}

#[tokio::test]
async fn the_hash_chain_catches_an_edited_or_deleted_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _rx) = open(&dir.path().join("a.db")).await;
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0, 2.0), T0).await.unwrap();
    let id = e.current(&key("TK102.PT", Condition::Hi)).unwrap().id;
    e.acknowledge(id, "op1", "", T0 + 1).await.unwrap();
    e.verify(id, "op1", "video", T0 + 2).await.unwrap();
    e.dispatch(id, "op1", "ent-a", "check the pump", T0 + 3).await.unwrap();
    assert_eq!(e.verify_audit().await.unwrap(), 3);
    let pool = e.store().pool().clone();
    // The database refuses updates and deletes of audit records.
    assert!(sqlx::query("UPDATE alarm_audit SET actor = 'x' WHERE seq = 2").execute(&pool).await.is_err());
    assert!(sqlx::query("DELETE FROM alarm_audit WHERE seq = 3").execute(&pool).await.is_err());
    // Someone with file access removes the guard and edits a record: verification catches it.
    sqlx::query("DROP TRIGGER alarm_audit_no_update").execute(&pool).await.unwrap();
    sqlx::query("UPDATE alarm_audit SET actor = 'op2' WHERE seq = 2").execute(&pool).await.unwrap();
    let err = e.verify_audit().await.unwrap_err();
    assert!(matches!(err, AlarmError::Chain { seq: 2, .. }), "{err}");
    sqlx::query("UPDATE alarm_audit SET actor = 'op1' WHERE seq = 2").execute(&pool).await.unwrap();
    assert!(e.verify_audit().await.is_ok());
    sqlx::query("DROP TRIGGER alarm_audit_no_delete").execute(&pool).await.unwrap();
    sqlx::query("DELETE FROM alarm_audit WHERE seq = 3").execute(&pool).await.unwrap();
    assert!(
        matches!(e.verify_audit().await, Err(AlarmError::Chain { .. })),
        "deleting the newest record is caught by the head"
    );
    assert!(verify_chain(&e.audit_records().await.unwrap(), None).is_ok(), "(without a known head it cannot be)");
}

fn gas(ts: i64, phase: DetectionPhase, conc: f64) -> Event {
    Event {
        ts_ms: ts,
        clock: ClockQuality::NTP_SYNCED,
        kind: EventKind::GasDetection(GasDetection {
            camera: "cam1".into(),
            phase,
            gas: "CH4".into(),
            concentration: conc,
            unit: ConcentrationUnit::LelM,
            confidence: None,
            location: LeakLocation::default(),
            snapshot: None,
        }),
    }
}

#[tokio::test]
async fn gas_leak_closed_loop_needs_a_report_when_orange() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, mut rx) = open(&dir.path().join("a.db")).await;
    // Three detections before anybody acknowledges: one alarm, three activations: orange.
    for i in 0..3 {
        e.on_event(&gw(), &gas(T0 + i * 10_000, DetectionPhase::Start, 30.0), T0 + i * 10_000).await.unwrap();
        e.on_event(&gw(), &gas(T0 + i * 10_000 + 5000, DetectionPhase::Stop, 0.0), T0 + i * 10_000 + 5000)
            .await
            .unwrap();
    }
    let k = key("gw-01/cam/cam1", Condition::GasLeak);
    let a = e.current(&k).unwrap().clone();
    assert_eq!((a.activations, a.gas_level, a.grade, a.active), (3, Some(GasLevel::Orange), Grade::A, false));
    assert_eq!(drain(&mut rx).iter().filter(|c| c.kind == ChangeKind::Raised).count(), 1);
    let id = a.id;
    assert!(matches!(e.verify(id, "op1", "video", T0 + 40_000).await, Err(AlarmError::NotAllowed { .. })), "ack first");
    e.acknowledge(id, "op1", "", T0 + 40_000).await.unwrap();
    e.verify(id, "op1", "video shows vapour", T0 + 41_000).await.unwrap();
    e.dispatch(id, "op1", "ent-a", "isolate valve V12", T0 + 42_000).await.unwrap();
    e.record_feedback(id, "ent-a-safety", "flange gasket replaced", T0 + 43_000).await.unwrap();
    e.review(id, "park-chief", "ok", T0 + 44_000).await.unwrap();
    let err = e.close(id, "park-chief", "", T0 + 45_000).await.unwrap_err();
    assert!(err.to_string().contains("report"), "{err}");
    e.attach_report(id, "ent-a-safety", "reports/2026-11-23-cam1.pdf", "valve V12 gasket replaced", T0 + 46_000)
        .await
        .unwrap();
    let closed = e.close(id, "park-chief", "done", T0 + 47_000).await.unwrap();
    assert_eq!(closed.stage, Stage::Closed);
    assert!(e.open_alarms().iter().all(|a| a.id != id));
    let tl: Vec<String> = e.timeline(id).await.unwrap().into_iter().map(|t| t.what).collect();
    assert!(tl.starts_with(&["raised".into(), "detection".into(), "cleared".into(), "reactivated".into()]), "{tl:?}");
    assert!(tl.ends_with(&["feedback".into(), "review".into(), "attach_report".into(), "close".into()]), "{tl:?}");
    assert_eq!(e.verify_audit().await.unwrap(), 7);

    // A false alarm goes acknowledged -> false alarm (reason required) -> reviewed -> closed.
    e.on_event(&gw(), &gas(T0 + 100_000, DetectionPhase::Start, 5.0), T0 + 100_000).await.unwrap();
    e.on_event(&gw(), &gas(T0 + 101_000, DetectionPhase::Stop, 0.0), T0 + 101_000).await.unwrap();
    let id2 = e.open_alarms().iter().find(|a| a.key == k).unwrap().id;
    assert_ne!(id2, id);
    e.acknowledge(id2, "op1", "", T0 + 102_000).await.unwrap();
    assert!(e.mark_false_alarm(id2, "op1", "  ", T0 + 103_000).await.is_err());
    e.mark_false_alarm(id2, "op1", "steam from the cooling tower", T0 + 103_000).await.unwrap();
    e.review(id2, "park-chief", "agreed", T0 + 104_000).await.unwrap();
    assert_eq!(e.close(id2, "park-chief", "", T0 + 105_000).await.unwrap().stage, Stage::Closed);
}

#[tokio::test]
async fn gateway_offline_device_offline_and_stale_are_separate_and_rooted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, mut rx) = open(&dir.path().join("a.db")).await;
    e.on_sample(&gw(), &pt("TK101.LT"), &Sample::good(T0, 50.0), T0).await.unwrap();
    // Device offline reported: the point's staleness is not raised on top of it.
    let ev = Event {
        ts_ms: T0 + 500,
        clock: ClockQuality::NTP_SYNCED,
        kind: EventKind::DeviceOffline { device: "plc-1".into(), reason: "timeout".into() },
    };
    e.on_event(&gw(), &ev, T0 + 500).await.unwrap();
    e.tick(T0 + 10_000).await.unwrap();
    let ch = drain(&mut rx);
    assert_eq!(ch.iter().map(|c| c.alarm.key.condition).collect::<Vec<_>>(), vec![Condition::DeviceOffline]);
    let ev = Event {
        ts_ms: T0 + 11_000,
        clock: ClockQuality::NTP_SYNCED,
        kind: EventKind::DeviceOnline { device: "plc-1".into() },
    };
    e.on_event(&gw(), &ev, T0 + 11_000).await.unwrap();
    e.tick(T0 + 12_000).await.unwrap();
    let ch = drain(&mut rx);
    assert_eq!(
        ch.iter().map(|c| (c.alarm.key.condition, c.kind.clone())).collect::<Vec<_>>(),
        vec![(Condition::DeviceOffline, ChangeKind::Cleared), (Condition::Stale, ChangeKind::Raised)]
    );
    assert_eq!(ch[1].alarm.raised_ms, T0 + 3000, "stale from the last source time plus 3 intervals");
    // A fresh sample clears stale; bad quality raises its own alarm and holds limit states.
    let bad = Sample {
        ts_ms: T0 + 13_000,
        value: Value::F64(99.0),
        quality: Quality::BAD_SENSOR_FAILURE,
        clock: ClockQuality::NTP_SYNCED,
    };
    e.on_sample(&gw(), &pt("TK101.LT"), &bad, T0 + 13_000).await.unwrap();
    let ch = drain(&mut rx);
    assert_eq!(
        ch.iter().map(|c| (c.alarm.key.condition, c.kind.clone())).collect::<Vec<_>>(),
        vec![(Condition::BadQuality, ChangeKind::Raised), (Condition::Stale, ChangeKind::Cleared)]
    );
    // Gateway death: one gateway alarm, no point stale alarms while it is down; silence also counts.
    e.on_gateway_state(&gw(), false, T0 + 14_000).await.unwrap();
    e.tick(T0 + 60_000).await.unwrap();
    let ch = drain(&mut rx);
    assert_eq!(ch.iter().map(|c| c.alarm.key.condition).collect::<Vec<_>>(), vec![Condition::GatewayOffline]);
    e.on_gateway_state(&gw(), true, T0 + 61_000).await.unwrap();
    assert!(
        drain(&mut rx)
            .iter()
            .any(|c| c.alarm.key.condition == Condition::GatewayOffline && c.kind == ChangeKind::Cleared)
    );
    e.on_gateway_state(&gw(), true, T0 + 61_000).await.unwrap();
    e.tick(T0 + 61_000 + 89_000).await.unwrap();
    assert!(drain(&mut rx).iter().all(|c| c.alarm.key.condition != Condition::GatewayOffline));
    e.tick(T0 + 61_000 + 90_000).await.unwrap();
    let ch = drain(&mut rx);
    let off: Vec<_> = ch.iter().filter(|c| c.alarm.key.condition == Condition::GatewayOffline).collect();
    assert_eq!(off.len(), 1, "silence raises gateway offline again (reactivation of the unacked alarm)");
    e.on_gateway_seen(&gw(), T0 + 152_000).await.unwrap();
    assert!(
        drain(&mut rx)
            .iter()
            .any(|c| c.alarm.key.condition == Condition::GatewayOffline && c.kind == ChangeKind::Cleared)
    );
    // Digital input through its definition.
    let di = Event {
        ts_ms: T0 + 200_000,
        clock: ClockQuality::NTP_SYNCED,
        kind: EventKind::DigitalInput { input: "DI1".into(), state: true },
    };
    e.on_event(&gw(), &di, T0 + 200_000).await.unwrap();
    assert!(e.current(&key("gw-01/di/DI1", Condition::Digital)).is_some_and(|a| a.active && a.grade == Grade::B));
}

#[tokio::test]
async fn threshold_changes_need_approval_and_are_audited_with_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let (mut e, _rx) = open(&path).await;
    let after = Limits { hh: None, h: Some(3.0), l: None, ll: None, deadband: 0.1 };
    assert!(
        e.request_threshold("TK102.PT", Limits { h: Some(3.0), l: Some(4.0), ..after }, "eng1", "new pump", T0)
            .await
            .is_err()
    );
    let r = e.request_threshold("TK102.PT", after, "eng1", "new pump", T0).await.unwrap();
    assert_eq!(e.limits("TK102.PT").unwrap().h, Some(1.5), "not applied before approval");
    assert!(e.approve_threshold(r.id, "eng1", T0 + 1).await.is_err(), "no self-approval");
    e.approve_threshold(r.id, "park-chief", T0 + 2).await.unwrap();
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0 + 3, 2.0), T0 + 3).await.unwrap();
    assert!(e.current(&key("TK102.PT", Condition::Hi)).is_none(), "new limit in force");
    let recs = e.audit_records().await.unwrap();
    let last = recs.last().unwrap();
    assert_eq!((last.action.as_str(), last.actor.as_str()), ("threshold_approve", "park-chief"));
    let d: serde_json::Value = serde_json::from_str(&last.detail).unwrap();
    assert_eq!((d["before"]["h"].as_f64(), d["after"]["h"].as_f64()), (Some(1.5), Some(3.0)));
    drop(e);
    let (e, _rx) = open(&path).await;
    assert_eq!(e.limits("TK102.PT").unwrap().h, Some(3.0), "approved limits survive a restart");
}

#[tokio::test]
async fn shelving_records_without_announcing_and_supervision_escalates() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, mut rx) = open(&dir.path().join("a.db")).await;
    let p = pt("TK102.PT");
    e.on_sample(&gw(), &p, &Sample::good(T0, 2.0), T0).await.unwrap();
    let id = e.current(&key("TK102.PT", Condition::Hi)).unwrap().id;
    drain(&mut rx);
    // Grade C: 10 minutes to pick up; then supervision, and again 10 minutes later.
    let mine = |rx: &mut Receiver<AlarmChange>| drain(rx).into_iter().filter(|c| c.alarm.id == id).collect::<Vec<_>>();
    e.tick(T0 + 599_999).await.unwrap();
    assert!(mine(&mut rx).is_empty());
    e.tick(T0 + 600_000).await.unwrap();
    let ch = mine(&mut rx);
    assert!(
        matches!(ch.as_slice(), [c] if c.kind == ChangeKind::Supervision && c.annunciate && c.alarm.supervisions == 1)
    );
    e.shelve(id, "op1", T0 + 900_000, "known, crew on site", T0 + 600_001).await.unwrap();
    e.on_sample(&gw(), &p, &Sample::good(T0 + 700_000, 1.0), T0 + 700_000).await.unwrap();
    e.on_sample(&gw(), &p, &Sample::good(T0 + 701_000, 2.0), T0 + 701_000).await.unwrap();
    let ch = mine(&mut rx);
    assert!(ch.iter().filter(|c| c.kind != ChangeKind::Action("shelve".into())).all(|c| !c.annunciate), "{ch:#?}");
    assert_eq!(e.timeline(id).await.unwrap().iter().filter(|t| t.what == "reactivated").count(), 1, "still recorded");
    e.tick(T0 + 900_000).await.unwrap();
    let ch = mine(&mut rx);
    assert!(ch.iter().any(|c| c.kind == ChangeKind::Reannunciated && c.annunciate), "{ch:#?}");
    assert!(!e.is_shelved(&key("TK102.PT", Condition::Hi)));
    assert!(e.verify_audit().await.unwrap() >= 2);
}

#[tokio::test]
async fn kpis_count_floods_chatter_and_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _rx) = open(&dir.path().join("a.db")).await;
    let p = pt("TK102.PT");
    for i in 0..12 {
        e.on_sample(&gw(), &p, &Sample::good(T0 + i * 20_000, 2.0), T0 + i * 20_000).await.unwrap();
        e.on_sample(&gw(), &p, &Sample::good(T0 + i * 20_000 + 10_000, 1.0), T0 + i * 20_000 + 10_000).await.unwrap();
    }
    e.on_gateway_state(&gw(), false, T0 + 300_000).await.unwrap();
    let r = e.kpis(T0, T0 + 3_600_000).await.unwrap();
    let ent = r.iter().find(|r| r.enterprise == "ent-a").unwrap();
    assert_eq!((ent.alarms, ent.floods), (12, 1));
    assert_eq!(ent.chattering, vec!["point:TK102.PT".to_owned()]);
    let unknown = r.iter().find(|r| r.enterprise.is_empty()).unwrap();
    assert_eq!((unknown.offline, unknown.standing), (1, 1));
}

#[tokio::test]
async fn an_example_definitions_file_parses_and_bad_ones_are_named() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/examples/alarms.toml")).unwrap();
    let cfg = AlarmConfig::from_toml("configs/examples/alarms.toml", &text).unwrap();
    assert!(cfg.point.len() >= 4);
    let err = AlarmConfig::from_toml("x.toml", "[[point]]\nid = \"a\"\nh = 5.0\nhh = 4.0\n").unwrap_err();
    assert!(err.to_string().contains("point[0]") && err.to_string().contains("hh"), "{err}");
    assert!(AlarmConfig::from_toml("x.toml", "[[point]]\nid = \"a b\"\n").is_err());
}

/// A store that fails on demand, to show that a failed write announces nothing and is retried.
struct Flaky {
    inner: SqliteStore,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AlarmStore for Flaky {
    async fn init(&self) -> Result<(), AlarmError> {
        self.inner.init().await
    }
    async fn apply(&self, ops: &[StoreOp]) -> Result<(), AlarmError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AlarmError::Store(sqlx::Error::PoolTimedOut));
        }
        self.inner.apply(ops).await
    }
    async fn load(&self) -> Result<store::Snapshot, AlarmError> {
        self.inner.load().await
    }
    async fn audit_records(&self) -> Result<Vec<AuditRecord>, AlarmError> {
        self.inner.audit_records().await
    }
    async fn timeline(&self, alarm_id: i64) -> Result<Vec<TimelineEntry>, AlarmError> {
        self.inner.timeline(alarm_id).await
    }
    async fn alarm(&self, id: i64) -> Result<Option<Alarm>, AlarmError> {
        self.inner.alarm(id).await
    }
    async fn alarms_raised_between(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Alarm>, AlarmError> {
        self.inner.alarms_raised_between(from_ms, to_ms).await
    }
    async fn list(&self, filter: &AlarmFilter, limit: usize) -> Result<Vec<Alarm>, AlarmError> {
        self.inner.list(filter, limit).await
    }
    async fn timeline_between(&self, what: &str, from_ms: i64, to_ms: i64) -> Result<Vec<TimelineEntry>, AlarmError> {
        self.inner.timeline_between(what, from_ms, to_ms).await
    }
}

#[tokio::test]
async fn a_failed_store_write_announces_nothing_and_the_next_sample_retries() {
    let dir = tempfile::tempdir().unwrap();
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Flaky { inner: SqliteStore::new(pool(&dir.path().join("a.db")).await), fail: fail.clone() };
    let mut e = AlarmEngine::open(store, config()).await.unwrap();
    let mut rx = e.subscribe();
    let p = pt("TK102.PT");
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(e.on_sample(&gw(), &p, &Sample::good(T0, 2.0), T0).await.is_err());
    assert!(drain(&mut rx).is_empty() && e.open_alarms().is_empty());
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    e.on_sample(&gw(), &p, &Sample::good(T0 + 1000, 2.0), T0 + 1000).await.unwrap();
    let ch = drain(&mut rx);
    assert!(matches!(ch.as_slice(), [c] if c.kind == ChangeKind::Raised && c.alarm.raised_ms == T0 + 1000));
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(e.on_sample(&gw(), &p, &Sample::good(T0 + 2000, 1.0), T0 + 2000).await.is_err());
    assert!(e.current(&key("TK102.PT", Condition::Hi)).unwrap().active, "memory unchanged after a failed write");
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    e.on_sample(&gw(), &p, &Sample::good(T0 + 3000, 1.0), T0 + 3000).await.unwrap();
    let ch = drain(&mut rx);
    assert!(
        matches!(ch.as_slice(), [c] if c.kind == ChangeKind::Cleared && c.alarm.cleared_ms == Some(T0 + 3000)),
        "{ch:#?}"
    );
}

#[tokio::test]
async fn a_source_clock_far_ahead_does_not_hide_later_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, mut rx) = open(&dir.path().join("a.db")).await;
    let p = pt("TK102.PT");
    // Ten days ahead: evaluated at the receive time instead.
    e.on_sample(&gw(), &p, &Sample::good(T0 + 864_000_000, 2.0), T0).await.unwrap();
    e.on_sample(&gw(), &p, &Sample::good(T0 + 1000, 1.0), T0 + 1000).await.unwrap();
    let ch = drain(&mut rx);
    assert_eq!(
        ch.iter().map(|c| (c.kind.clone(), c.ts_ms, c.alarm.replay)).collect::<Vec<_>>(),
        vec![(ChangeKind::Raised, T0, false), (ChangeKind::Cleared, T0 + 1000, false)]
    );
}

/// The engine and its futures can live in a spawned task (ingest will own it there).
#[tokio::test]
async fn the_engine_runs_in_a_spawned_task() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, mut rx) = open(&dir.path().join("a.db")).await;
    let h = tokio::spawn(async move {
        e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0, 2.0), T0).await.unwrap();
        e.tick(T0 + 1000).await.unwrap();
        e
    });
    let e = h.await.unwrap();
    assert_eq!(rx.recv().await.unwrap().kind, ChangeKind::Raised);
    assert_eq!(e.open_alarms().len(), 1);
}

#[tokio::test]
async fn extreme_times_from_callers_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _rx) = open(&dir.path().join("a.db")).await;
    for (ts, rx) in [(i64::MIN, i64::MIN), (i64::MAX, i64::MAX), (i64::MIN, i64::MAX), (0, i64::MAX)] {
        e.on_sample(&gw(), &pt("TK101.LT"), &Sample::good(ts, 99.0), rx).await.unwrap();
        e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(ts, 1.0), rx).await.unwrap();
    }
    e.tick(i64::MAX).await.unwrap();
    e.kpis(i64::MIN, i64::MAX).await.unwrap();
    e.kpis(i64::MAX, i64::MIN).await.unwrap();
}

#[tokio::test]
async fn each_detection_puts_its_gas_location_and_snapshot_name_on_the_alarm_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _rx) = open(&dir.path().join("a.db")).await;
    let image = b"\xFF\xD8\xFF\xE0 not really a jpeg".to_vec();
    let mut first = gas(T0, DetectionPhase::Start, 30.0);
    if let EventKind::GasDetection(d) = &mut first.kind {
        d.confidence = Some(0.9);
        d.location =
            LeakLocation { preset: Some(3), pan: Some(12.5), tilt: Some(-4.0), region: Some([10, 20, 64, 48]) };
        d.snapshot = Some(vigil_common::event::Snapshot { content_type: "image/jpeg".into(), bytes: image.clone() });
    }
    e.on_event(&gw(), &first, T0).await.unwrap();
    // Still leaking, seen again without an image; then it stops (no detection entry for a stop).
    e.on_event(&gw(), &gas(T0 + 2000, DetectionPhase::Start, 45.0), T0 + 2000).await.unwrap();
    e.on_event(&gw(), &gas(T0 + 5000, DetectionPhase::Stop, 0.0), T0 + 5000).await.unwrap();
    let a = e.current(&key("gw-01/cam/cam1", Condition::GasLeak)).unwrap().clone();
    let tl = e.timeline(a.id).await.unwrap();
    let what: Vec<&str> = tl.iter().map(|t| t.what.as_str()).collect();
    assert_eq!(what, ["raised", "detection", "detection", "cleared"]);
    let d: serde_json::Value = serde_json::from_str(&tl[1].detail).unwrap();
    assert_eq!(d["evidence"], vigil_central::evidence::digest(&image), "the name the evidence store serves it under");
    assert_eq!(d["evidence_type"], "image/jpeg");
    assert_eq!((d["gas"].as_str(), d["concentration"].as_f64()), (Some("CH4"), Some(30.0)));
    assert_eq!(d["location"]["preset"], 3);
    assert_eq!(d["location"]["region"], serde_json::json!([10, 20, 64, 48]));
    assert_eq!(tl[1].ts_ms, T0, "the camera's time");
    let d: serde_json::Value = serde_json::from_str(&tl[2].detail).unwrap();
    assert!(d["evidence"].is_null(), "no image, no name");
    assert_eq!(d["concentration"].as_f64(), Some(45.0));
}

#[tokio::test]
async fn undefined_cameras_are_bounded_but_still_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.engine.max_auto_cameras = 2;
    let mut e = AlarmEngine::open_sqlite(pool(&dir.path().join("a.db")).await, cfg).await.unwrap();
    let n = e.point_count();
    for (i, cam) in ["c1", "c2", "c3", "c4"].into_iter().enumerate() {
        let mut ev = gas(T0 + i as i64, DetectionPhase::Start, 10.0);
        if let EventKind::GasDetection(d) = &mut ev.kind {
            d.camera = cam.into();
        }
        e.on_event(&gw(), &ev, T0 + i as i64).await.unwrap();
    }
    assert_eq!(e.point_count(), n + 3, "two cameras plus the shared 'unlisted' point");
    assert!(e.current(&key("gw-01/cam/c2", Condition::GasLeak)).is_some());
    assert!(e.current(&key("gw-01/cam/unlisted", Condition::GasLeak)).is_some_and(|a| a.active));
}

#[tokio::test]
async fn a_defined_point_its_gateway_never_sends_is_reported_as_unmatched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut e, _rx) = open(&dir.path().join("a.db")).await;
    let ten_min = vigil_central::alarms::feed::UNMATCHED_AFTER_MS;
    assert!(e.unmatched_points(T0 + ten_min, ten_min).is_empty(), "nothing before the gateway sends");
    e.on_gateway_seen(&gw(), T0).await.unwrap();
    e.on_sample(&gw(), &pt("TK101.LT"), &Sample::good(T0 + 1000, 50.0), T0 + 1000).await.unwrap();
    assert!(e.unmatched_points(T0 + ten_min - 1, ten_min).is_empty(), "a grace of ten minutes");
    // TK102.PT never came (the digital input is not a measured point and is not reported).
    assert_eq!(e.unmatched_points(T0 + ten_min, ten_min), ["TK102.PT"]);
    e.on_sample(&gw(), &pt("TK102.PT"), &Sample::good(T0 + ten_min + 5, 1.0), T0 + ten_min + 5).await.unwrap();
    assert!(e.unmatched_points(T0 + ten_min + 10, ten_min).is_empty());
}
