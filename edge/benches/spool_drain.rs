//! Store-and-forward benchmark: one hour of 10,000 points at 1 s (36 million samples) spooled while
//! disconnected, then drained through a real TLS Mosquitto to a central stand-in that verifies every
//! batch and acknowledges it; alarms raised during the drain are timed end to end.
//!
//! `cargo bench -p vigil-edge --bench spool_drain` (add `-- --minutes N` for a shorter run).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use tokio::sync::{Notify, mpsc, watch};
use vigil_common::{Ack, Batch, Channel, ClockQuality, EventKind, GatewayId, Priority, Topic};
use vigil_edge::Record;
use vigil_edge::spool::{Batcher, BatcherConfig, SledSpool, Spool, StoredBatch, now_ms};
use vigil_edge::uplink::{TlsFiles, Uplink, UplinkConfig};
use vigil_tools::workload::{Rng, live_batch, plant};

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() { dir_bytes(&e.path()) } else { m.len() }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let minutes: u64 =
        std::env::args().skip_while(|a| a != "--minutes").nth(1).and_then(|m| m.parse().ok()).unwrap_or(60);
    let park = support::Park::new();
    let gateway = GatewayId::new(support::GATEWAY).unwrap();
    let key = park.gateway_key.clone();

    // 1. Spool the outage: 20 groups of 500 points, a batch per group per 10 s window.
    let (spool, _) = SledSpool::open(&park.spool_path(), 64 << 30).unwrap();
    let mut spool = spool;
    let mut rng = Rng::new(11);
    let groups: Vec<_> = (0..20).map(|_| plant(500, &mut rng)).collect();
    let start_ms = now_ms() - (minutes as i64) * 60_000;
    let windows = minutes * 6;
    let mut samples = 0u64;
    let mut append_secs = 0.0;
    let mut seal_secs = 0.0;
    for w in 0..windows {
        for points in &groups {
            let t = Instant::now();
            let mut batch = live_batch(points, 10, 1000, start_ms + w as i64 * 10_000, &mut rng, true);
            batch.gateway = gateway.clone();
            batch.epoch = spool.epoch();
            batch.seq = spool.next_seq();
            batch.class = Priority::Backfill;
            let sealed = batch.seal(&key).unwrap();
            seal_secs += t.elapsed().as_secs_f64();
            let n = batch.sample_count() as u32;
            let t = Instant::now();
            spool
                .append(&StoredBatch {
                    seq: batch.seq,
                    class: Priority::Backfill,
                    samples: n,
                    events: 0,
                    stored_ms: now_ms(),
                    sealed,
                })
                .unwrap();
            append_secs += t.elapsed().as_secs_f64();
            samples += u64::from(n);
        }
    }
    let stats = spool.stats();
    let logical: u64 = stats.classes.iter().map(|c| c.bytes).sum();
    let on_disk = dir_bytes(&park.spool_path());
    println!("# spool fill: {minutes} min of 10,000 points at 1 s");
    println!("samples spooled                  {samples}");
    println!("batches                          {}", stats.next_seq);
    println!(
        "append+flush                     {:.0} samples/s ({:.0} batches/s, mean flush {:.2} ms, max {:.2} ms)",
        samples as f64 / append_secs,
        stats.next_seq as f64 / append_secs,
        stats.flush_micros as f64 / stats.flushes.max(1) as f64 / 1000.0,
        stats.max_flush_micros as f64 / 1000.0
    );
    println!("generate+encode+sign             {:.0} samples/s", samples as f64 / seal_secs);
    println!(
        "stored bytes per sample          {:.3} (sealed batches + 16 B header each)",
        logical as f64 / samples as f64
    );
    println!("spool directory bytes per sample {:.3}", on_disk as f64 / samples as f64);

    // 2. A central stand-in that verifies and acks, recording when alarm batches arrive.
    let mut opts = MqttOptions::new("central", "127.0.0.1", park.broker.port());
    opts.set_max_packet_size(4 << 20, 4 << 20);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_transport(Transport::tls_with_config(support::tls(
        &park.pki.ca_file(),
        &park.central_tls.cert,
        &park.central_tls.key,
    )));
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    let received = Arc::new(AtomicU64::new(0));
    let alarm_arrivals: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let ready = Arc::new(AtomicBool::new(false));
    {
        let (received, alarm_arrivals, ready, c) =
            (received.clone(), alarm_arrivals.clone(), ready.clone(), client.clone());
        let gw_key = park.gateway_key.public_key();
        let central_key = park.central_key.clone();
        tokio::spawn(async move {
            let mut seen: BTreeSet<u64> = BTreeSet::new();
            let mut last_ack = Instant::now();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.subscribe(Channel::UpBatch.filter_all(), QoS::AtLeastOnce).await.unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => ready.store(true, Ordering::SeqCst),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = Topic::parse(&p.topic).unwrap();
                        let batch = Batch::open(&p.payload, &topic.gateway, |_| Some(gw_key.clone())).unwrap();
                        if seen.insert(batch.seq) {
                            received.fetch_add(batch.sample_count() as u64, Ordering::Relaxed);
                        }
                        if batch.class == Priority::AlarmEvent {
                            let now = now_ms();
                            for e in &batch.events {
                                if matches!(e.kind, EventKind::DigitalInput { .. }) {
                                    alarm_arrivals.lock().unwrap().push((e.ts_ms, now));
                                }
                            }
                        }
                        // Ack at most every 20 ms (central acks in groups after its WAL group commit).
                        if last_ack.elapsed() > Duration::from_millis(20) || batch.class == Priority::AlarmEvent {
                            last_ack = Instant::now();
                            let ack = Ack {
                                gateway: topic.gateway.clone(),
                                epoch: batch.epoch,
                                acked: support::ranges(&seen),
                                resend: vec![],
                                central_ms: now_ms(),
                            };
                            let t = Topic::new(topic.enterprise, topic.gateway, Channel::DownAck).to_string();
                            let _ = c.try_publish(t, QoS::AtLeastOnce, false, ack.seal(&central_key).unwrap());
                        }
                    }
                    Ok(_) => {}
                    // The broker goes away when the benchmark ends.
                    Err(_) => return,
                }
            }
        });
    }
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 3. Reconnect: uplink and batcher on the filled spool; alarms raised every 250 ms while draining.
    let spool = Arc::new(Mutex::new(spool));
    let online = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(Notify::new());
    let config = UplinkConfig {
        host: "127.0.0.1".into(),
        port: park.broker.port(),
        tls: Some(TlsFiles {
            ca_file: park.pki.ca_file(),
            cert_file: park.gateway_tls.cert.clone(),
            key_file: park.gateway_tls.key.clone(),
        }),
        plaintext: false,
        central_keys: vec![park.central_key.public_key().to_text()],
        keepalive_s: 15,
        window: 64,
        backfill_batches_per_s: 1000,
        resend_after_s: 20,
        config_trial_s: 120,
    };
    let enterprise = vigil_common::EnterpriseId::new(support::ENTERPRISE).unwrap();
    let uplink =
        Uplink::new(config, &enterprise, &gateway, key.clone(), spool.clone(), online.clone(), stored.clone()).unwrap();
    let batcher = Batcher::new(
        BatcherConfig {
            gateway: gateway.clone(),
            max_age: Duration::from_millis(1000),
            max_samples: 5000,
            urgent: Default::default(),
        },
        key,
        spool.clone(),
        online.clone(),
        stored.clone(),
    );
    let (tx, rx) = mpsc::channel::<Record>(1000);
    let (stop, shutdown) = watch::channel(false);
    let batcher_task = tokio::spawn(batcher.run(rx));
    let t0 = Instant::now();
    let uplink_task = tokio::spawn(uplink.run(shutdown));
    let mut alarms_sent = 0;
    let mut last_alarm = Instant::now();
    while received.load(Ordering::Relaxed) < samples {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if last_alarm.elapsed() < Duration::from_millis(250) {
            continue;
        }
        last_alarm = Instant::now();
        let event = vigil_common::Event {
            ts_ms: now_ms(),
            clock: ClockQuality::NTP_SYNCED,
            kind: EventKind::DigitalInput { input: format!("di{alarms_sent}"), state: true },
        };
        tx.send(Record::Event(event)).await.unwrap();
        alarms_sent += 1;
        assert!(t0.elapsed() < Duration::from_secs(1800), "drain stalled");
    }
    let drain = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let latencies: Vec<f64> =
        alarm_arrivals.lock().unwrap().iter().map(|(raised, got)| (got - raised) as f64).collect();
    println!();
    println!(
        "# drain after reconnect (window 64, backfill cap 1000 batches/s, TLS Mosquitto, central stand-in verifying every batch)"
    );
    println!("drain time                       {drain:.1} s");
    println!("drain rate                       {:.0} samples/s", samples as f64 / drain);
    println!("alarms raised during drain       {alarms_sent}, delivered {}", latencies.len());
    if !latencies.is_empty() {
        println!(
            "alarm delivery latency           median {:.0} ms, max {:.0} ms",
            median(latencies.clone()),
            latencies.iter().cloned().fold(0.0, f64::max)
        );
    }
    stop.send(true).unwrap();
    drop(tx);
    let _ = batcher_task.await;
    let _ = uplink_task.await;
}
