//! Ingest against the real Mosquitto at 127.0.0.1:1883: accepted batches are acknowledged with signed
//! range acks, duplicates re-acknowledged and stored once, gaps asked for after the timeout, and
//! tampered, foreign-key, wrong-topic, unknown-gateway, oversized and garbage batches rejected and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::{SimGateway, mqtt_client, unique};
use vigil_central::config::Config;
use vigil_central::historian::SeriesKey;
use vigil_central::ingest::{self, Core, Reject};
use vigil_central::store::Registry;
use vigil_common::{EnterpriseId, SeqRange, SigningKey};

fn config(dir: &std::path::Path, client_id: &str) -> Config {
    let text = format!(
        "data_dir = \"{}\"\nkey_file = \"central.key\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\nclient_id = \"{client_id}\"\n\
         [ingest]\nresend_after_ms = 400\nregistry_reload_s = 1\n",
        dir.join("data").display()
    );
    let path = dir.join("central.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

async fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_verified_deduplicated_acknowledged_and_bad_ones_counted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let ent = unique("ent");
    let cfg = config(dir.path(), &unique("central"));
    let central_key = SigningKey::from_seed(&[9; 32]);
    let central_pub = central_key.public_key();
    let mut gw = SimGateway::new(&unique("gw"), &ent, 1);
    let mut other = SimGateway::new(&unique("gw2"), &ent, 2);
    let reg = Registry::open(&cfg.data_dir).await.unwrap();
    let e = EnterpriseId::new(ent.clone()).unwrap();
    reg.add(&gw.gateway, &e, &gw.key.public_key(), 0).await.unwrap();
    reg.add(&other.gateway, &e, &other.key.public_key(), 0).await.unwrap();

    let core = Core::open(cfg.clone(), central_key).await.unwrap();
    let metrics = core.metrics.clone();
    let historian = core.historian.clone();
    let (client, eventloop) = rumqttc::AsyncClient::new(ingest::mqtt_options(&cfg.mqtt).unwrap(), 1000);
    let (tx, rx) = ingest::lanes(1000);
    tokio::spawn(ingest::mqtt_loop(client.clone(), eventloop, tx, metrics.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ingest_task = tokio::spawn(ingest::run(core, client, rx, async {
        let _ = stop_rx.await;
    }));
    wait_for(|| metrics.mqtt_connects.load(Ordering::Relaxed) > 0, "central to connect").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // subscriptions settle

    let (pubc, mut acks) = mqtt_client(&unique("gwclient"), 1883, &[gw.topic("down/ack")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = 1_795_000_000_000;
    let send = |topic: String, bytes: Vec<u8>| {
        let c = pubc.clone();
        async move { c.publish(topic, rumqttc::QoS::AtLeastOnce, false, bytes).await.unwrap() }
    };
    let mut batches = Vec::new();
    for _ in 0..6 {
        batches.push(gw.next_batch(10, t0));
    }
    // seq 0, 1, 2, 5 arrive; 3 and 4 are "lost"; 1 arrives twice.
    for i in [0usize, 1, 2, 1, 5] {
        send(gw.topic("up/batch"), batches[i].1.clone()).await;
    }
    // Bad ones.
    let mut tampered = batches[3].1.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x10;
    send(gw.topic("up/batch"), tampered).await;
    let (_, foreign) = {
        let mut impostor = SimGateway::new(gw.gateway.as_str(), &ent, 77);
        impostor.next_seq = 40;
        impostor.next_batch(5, t0)
    };
    send(gw.topic("up/batch"), foreign).await;
    send(other.topic("up/batch"), batches[4].1.clone()).await; // gw's batch on gw2's topic: not gw2's key
    // gw2 signs a batch naming gw inside and publishes it under its own topic.
    let mut b = vigil_common::BatchBuilder::new();
    b.push(&gw.point, vigil_common::Sample::good(t0, 1.0));
    let forged = b
        .build(gw.gateway.clone(), 1, 99, vigil_common::Priority::Live, t0, Default::default())
        .seal(&other.key)
        .unwrap();
    send(other.topic("up/batch"), forged).await;
    send(format!("vigil/v1/{ent}/{}/up/batch", unique("nobody")), batches[4].1.clone()).await;
    send(format!("vigil/v1/{}/{}/up/batch", unique("otherent"), gw.gateway), batches[4].1.clone()).await;
    send(gw.topic("up/batch"), vec![0x56; 2 * 1024 * 1024 + 1]).await;
    send(gw.topic("up/batch"), b"not a batch at all".to_vec()).await;
    send(gw.topic("up/state"), b"birth".to_vec()).await;

    wait_for(
        || metrics.rejected(Reject::Oversized) + metrics.rejected(Reject::Envelope) >= 2,
        "the garbage to be counted",
    )
    .await;
    // The acks: each verifies with the central key; the last lists 0..=2 and 5.
    let mut last = None;
    let mut got_resend = None;
    let start = std::time::Instant::now();
    while got_resend.is_none() && start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some((_, bytes))) = tokio::time::timeout(Duration::from_millis(200), acks.recv()).await {
            let ack = gw.on_ack(&bytes, &central_pub).expect("ack verifies with the central key");
            if !ack.resend.is_empty() {
                got_resend = Some(ack.resend.clone());
            }
            last = Some(ack);
        }
    }
    let last = last.expect("acks arrived");
    assert_eq!(last.acked, vec![SeqRange { first: 0, last: 2 }, SeqRange { first: 5, last: 5 }]);
    assert_eq!(got_resend, Some(vec![SeqRange { first: 3, last: 4 }]), "gap asked for after the timeout");
    assert_eq!(gw.unacked.keys().copied().collect::<Vec<_>>(), vec![3, 4]);

    // The gateway re-sends the gap; everything is acknowledged.
    for s in [3usize, 4] {
        send(gw.topic("up/batch"), batches[s].1.clone()).await;
    }
    let start = std::time::Instant::now();
    while !gw.unacked.is_empty() && start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some((_, bytes))) = tokio::time::timeout(Duration::from_millis(200), acks.recv()).await {
            gw.on_ack(&bytes, &central_pub);
        }
    }
    assert!(gw.unacked.is_empty(), "all acknowledged");

    assert_eq!(metrics.batches_accepted.load(Ordering::Relaxed), 6);
    assert_eq!(metrics.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.rejected(Reject::BadSignature), 1, "tampered");
    assert_eq!(metrics.rejected(Reject::UnknownKey), 2, "signed by a key not registered for the gateway");
    assert_eq!(metrics.rejected(Reject::GatewayMismatch), 1, "batch on another gateway's topic");
    assert_eq!(metrics.rejected(Reject::UnknownGateway), 1);
    assert_eq!(metrics.rejected(Reject::Enterprise), 1);
    assert_eq!(metrics.rejected(Reject::Oversized), 1);
    assert_eq!(metrics.rejected(Reject::Envelope), 1, "garbage");
    assert_eq!(metrics.states_received.load(Ordering::Relaxed), 1);

    // Stored exactly once, in order.
    let key = SeriesKey { gateway: gw.gateway.clone(), point: gw.point.clone() };
    let raw = historian.read().unwrap().raw(&key, 0, i64::MAX, usize::MAX).unwrap();
    let mut want = gw.produced.clone();
    want.sort_unstable();
    assert_eq!(raw.iter().map(|s| s.ts_ms).collect::<Vec<_>>(), want);

    // Revocation takes effect within the reload period.
    reg.revoke(&other.gateway, None, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, b) = other.next_batch(3, t0);
    let before = metrics.rejected(Reject::UnknownKey);
    send(other.topic("up/batch"), b).await;
    wait_for(|| metrics.rejected(Reject::UnknownKey) == before + 1, "revoked key to be refused").await;

    let _ = stop_tx.send(());
    ingest_task.await.unwrap().unwrap();
    let listed = reg.list().await.unwrap();
    let mine = listed.iter().find(|g| g.id == gw.gateway.as_str()).unwrap();
    assert!(mine.last_seen_ms.is_some() && mine.state_ms.is_some());
}
