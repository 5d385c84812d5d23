//! Alarm/event batches have their own lane: with a telemetry backlog larger than a group already
//! queued, an alarm batch that arrives after it is committed to the WAL (and acknowledged) first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::unique;
use vigil_central::config::Config;
use vigil_central::ingest::{self, Core, Incoming, parse_wal_record, peek_class};
use vigil_central::store::Registry;
use vigil_central::wal::scan_records;
use vigil_common::{BatchBuilder, DropCounters, EnterpriseId, GatewayId, PointId, Priority, Sample, SigningKey};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_batch_overtakes_a_telemetry_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "data_dir = \"data\"\nkey_file = \"k\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1\n[ingest]\ngroup_max = 4\n",
    )
    .unwrap();
    let cfg = Config::load(&path).unwrap();
    let key = SigningKey::from_seed(&[8; 32]);
    let gw = GatewayId::new(unique("gw")).unwrap();
    Registry::open(&cfg.data_dir)
        .await
        .unwrap()
        .add(&gw, &EnterpriseId::new("acme").unwrap(), &key.public_key(), 0)
        .await
        .unwrap();
    let point = PointId::new("GDS01.CH01").unwrap();
    let seal = |seq: u64, class: Priority| {
        let mut b = BatchBuilder::new();
        b.push(&point, Sample::good(1_795_000_000_000 + seq as i64, seq as f64));
        b.build(gw.clone(), 1, seq, class, 0, DropCounters::default()).seal(&key).unwrap()
    };
    let topic = format!("vigil/v1/acme/{gw}/up/batch");
    let (tx, rx) = ingest::lanes(100);
    for seq in 0..10 {
        let bytes = seal(seq, Priority::Live);
        assert_eq!(peek_class(&bytes), Some(Priority::Live));
        tx.send(Incoming { topic: topic.clone(), payload: bytes }).await.unwrap();
    }
    let alarm = seal(10, Priority::AlarmEvent);
    assert_eq!(peek_class(&alarm), Some(Priority::AlarmEvent));
    assert_eq!(peek_class(b"garbage"), None);
    tx.send(Incoming { topic: topic.clone(), payload: alarm }).await.unwrap();

    let core = Core::open(cfg.clone(), SigningKey::from_seed(&[9; 32])).await.unwrap();
    let metrics = core.metrics.clone();
    let (client, _eventloop) = rumqttc::AsyncClient::new(ingest::mqtt_options(&cfg.mqtt).unwrap(), 100);
    let m2 = metrics.clone();
    let (wal_dir, snapshot) = (cfg.data_dir.join("wal"), dir.path().join("wal-copy"));
    let snap = snapshot.clone();
    let task = tokio::spawn(ingest::run(core, client, rx, async move {
        while m2.batches_accepted.load(Ordering::Relaxed) < 11 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Copy the WAL before the shutdown checkpoint empties it.
        std::fs::create_dir_all(&snap).unwrap();
        for e in std::fs::read_dir(&wal_dir).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), snap.join(e.file_name())).unwrap();
        }
    }));
    tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
    assert_eq!(metrics.groups.load(Ordering::Relaxed), 4, "1 alarm group + 3 telemetry groups of at most 4");

    // WAL order: the alarm first, then the telemetry in sequence.
    let mut seqs = Vec::new();
    let mut segs: Vec<_> = std::fs::read_dir(&snapshot).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    for seg in segs {
        let data = std::fs::read(seg).unwrap();
        for r in scan_records(&data).0 {
            seqs.push(parse_wal_record(r).unwrap().1.seq);
        }
    }
    assert_eq!(seqs, vec![10, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
}
