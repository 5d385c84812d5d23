//! Sustained ingest through a real broker: gateways publish pre-sealed realistic batches to the
//! Mosquitto at 127.0.0.1:1883 (or `--port`); central verifies every signature, deduplicates, appends
//! to the WAL with group commit and fsync, acknowledges, stores in the historian, and a consumer
//! checks every sample against a threshold. Reports samples/s from first publish to last stored.
//! Run with `cargo run --release -p vigil-tools --bin bench-ingest [-- --batches 400 --publishers 2]`.
//! `--embedded`: through central's own embedded broker instead (mutual TLS on loopback, certificates
//! from `vigil-central pki`; each publisher connects with its gateway certificate, ingest with
//! central's), in the same process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use vigil_central::broker::{Broker, pki};
use vigil_central::config::Config;
use vigil_central::ingest::{self, Core};
use vigil_central::store::Registry;
use vigil_common::{EnterpriseId, GatewayId, SigningKey};
use vigil_tools::workload::{Rng, live_batch, plant};

fn arg(name: &str, default: usize) -> Result<usize> {
    Ok(std::env::args().skip_while(|a| a != name).nth(1).map(|v| v.parse()).transpose()?.unwrap_or(default))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let batches_per_gw = arg("--batches", 400)?;
    let publishers = arg("--publishers", 2)?;
    let embedded = std::env::args().any(|a| a == "--embedded");
    let mut port = arg("--port", 1883)? as u16;
    let dir = tempfile::tempdir()?;
    let run_id = std::process::id();
    let cfg_path = dir.path().join("central.toml");
    let broker_section = if embedded {
        pki::init(&dir.path().join("pki"), "vigil-central", &[])?;
        "[broker]\nlisten = \"127.0.0.1:0\"\n".to_owned()
    } else {
        format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"bench-central-{run_id}\"\n")
    };
    std::fs::write(
        &cfg_path,
        format!("data_dir = \"data\"\nkey_file = \"k\"\n{broker_section}[ingest]\ncheckpoint_interval_s = 30\n"),
    )?;
    let mut cfg = Config::load(&cfg_path)?;
    let reg = Registry::open(&cfg.data_dir).await?;
    let ent = EnterpriseId::new("bench")?;

    // Each publisher is a gateway with 1,000 points polled at 1 s; a batch holds 5 s (5,000 samples).
    let mut rng = Rng::new(3);
    let points = plant(1000, &mut rng);
    let mut gateways = Vec::new();
    let mut total_samples = 0u64;
    for g in 0..publishers {
        let key = SigningKey::from_seed(&[g as u8 + 1; 32]);
        let id = GatewayId::new(format!("bench{run_id}-{g}"))?;
        reg.add(&id, &ent, &key.public_key(), 0).await?;
        let mut sealed = Vec::with_capacity(batches_per_gw);
        for seq in 0..batches_per_gw {
            let mut b = live_batch(&points, 5, 1000, 1_795_000_000_000 + seq as i64 * 5000, &mut rng, true);
            b.gateway = id.clone();
            b.seq = seq as u64;
            total_samples += b.sample_count() as u64;
            sealed.push(b.seal(&key)?);
        }
        gateways.push((id, sealed));
    }
    let mb: usize = gateways.iter().flat_map(|g| g.1.iter()).map(Vec::len).sum();
    println!(
        "workload: {publishers} gateways x {batches_per_gw} batches x 5,000 samples = {total_samples} samples, {:.1} MB sealed",
        mb as f64 / 1e6
    );

    let broker = match &cfg.broker {
        Some(b) => {
            for (id, _) in &gateways {
                pki::issue_gateway(&dir.path().join("pki"), id.as_str())?;
            }
            let broker = Broker::start(b, &cfg.data_dir, reg.clone(), Duration::from_secs(5)).await?;
            port = broker.local_addr().port();
            cfg.mqtt.port = port;
            Some(broker)
        }
        None => None,
    };
    println!("broker: {}", if embedded { "embedded (mutual TLS, loopback)" } else { "external (plain MQTT)" });
    let core = Core::open(cfg.clone(), SigningKey::from_seed(&[99; 32])).await?;
    let metrics = core.metrics.clone();
    let mut telemetry = core.streams.telemetry.subscribe();
    let checked = Arc::new(AtomicU64::new(0));
    let over = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicU64::new(0));
    {
        let (checked, over, lagged) = (checked.clone(), over.clone(), lagged.clone());
        tokio::spawn(async move {
            loop {
                match telemetry.recv().await {
                    Ok(item) => {
                        let mut n = 0;
                        let mut o = 0;
                        for s in &item.batch.series {
                            for x in &s.samples {
                                n += 1;
                                if x.value.as_f64().is_some_and(|v| v > 40.0) {
                                    o += 1;
                                }
                            }
                        }
                        checked.fetch_add(n, Ordering::Relaxed);
                        over.fetch_add(o, Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                        lagged.fetch_add(k, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        });
    }
    let (client, eventloop) = AsyncClient::new(ingest::mqtt_options(&cfg.mqtt)?, 8192);
    let (tx, rx) = ingest::lanes(4096);
    tokio::spawn(ingest::mqtt_loop(client.clone(), eventloop, tx, metrics.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ingest::run(core, client, rx, async {
        let _ = stop_rx.await;
    }));
    let start = Instant::now();
    while metrics.mqtt_connects.load(Ordering::Relaxed) == 0 {
        ensure!(start.elapsed() < Duration::from_secs(10), "central did not connect to 127.0.0.1:{port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Publishers connect first, then all start together. Like a real gateway, each keeps a window of
    // at most `--window` batches that central has not acknowledged (so the broker never has to queue
    // an unbounded backlog), and re-sends a batch not acknowledged within 5 s.
    let window = arg("--window", 200)?;
    let central_pub = SigningKey::from_seed(&[99; 32]).public_key();
    let acks = Arc::new(AtomicU64::new(0));
    let go = Arc::new(tokio::sync::Notify::new());
    for (id, sealed) in gateways {
        let mut o = if embedded {
            let mut o = MqttOptions::new(id.as_str(), "127.0.0.1", port);
            let files = dir.path().join("pki/gateways").join(id.as_str());
            let tls = vigil_central::config::TlsConfig {
                ca_file: files.join("ca.pem"),
                cert_file: files.join(format!("{id}.pem")),
                key_file: files.join(format!("{id}.key")),
            };
            let via =
                vigil_central::config::MqttConfig { client_id: id.to_string(), tls: Some(tls), ..cfg.mqtt.clone() };
            o.set_transport(ingest::mqtt_options(&via)?.transport());
            o
        } else {
            MqttOptions::new(format!("{id}-pub"), "127.0.0.1", port)
        };
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_inflight(window.min(u16::MAX as usize) as u16);
        let (c, mut el) = AsyncClient::new(o, 1000);
        c.subscribe(format!("vigil/v1/bench/{id}/down/ack"), QoS::AtLeastOnce).await?;
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if ack_tx.send(p.payload.to_vec()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let (acks, go, central_pub) = (acks.clone(), go.clone(), central_pub.clone());
        tokio::spawn(async move {
            go.notified().await;
            let topic = format!("vigil/v1/bench/{id}/up/batch");
            let mut unacked: std::collections::BTreeMap<u64, Instant> = std::collections::BTreeMap::new();
            let mut next = 0usize;
            while next < sealed.len() || !unacked.is_empty() {
                while next < sealed.len() && unacked.len() < window {
                    if c.publish(topic.clone(), QoS::AtLeastOnce, false, sealed[next].clone()).await.is_err() {
                        return;
                    }
                    unacked.insert(next as u64, Instant::now());
                    next += 1;
                }
                if let Ok(Some(bytes)) = tokio::time::timeout(Duration::from_millis(100), ack_rx.recv()).await
                    && let Ok(ack) = vigil_common::Ack::open(&bytes, &id, 1, |_| Some(central_pub.clone()))
                {
                    acks.fetch_add(1, Ordering::Relaxed);
                    for r in &ack.acked {
                        let done: Vec<u64> = unacked.range(r.first..=r.last).map(|(k, _)| *k).collect();
                        for k in done {
                            unacked.remove(&k);
                        }
                    }
                }
                let stale: Vec<u64> =
                    unacked.iter().filter(|(_, t)| t.elapsed() > Duration::from_secs(5)).map(|(k, _)| *k).collect();
                for k in stale {
                    unacked.insert(k, Instant::now());
                    let _ = c.publish(topic.clone(), QoS::AtLeastOnce, false, sealed[k as usize].clone()).await;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    go.notify_waiters();
    while metrics.samples_accepted.load(Ordering::Relaxed) < total_samples {
        ensure!(
            start.elapsed() < Duration::from_secs(300),
            "stalled at {} samples",
            metrics.samples_accepted.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let groups = metrics.groups.load(Ordering::Relaxed);
    println!(
        "stored {total_samples} samples in {secs:.2} s: {:.0} samples/s ({:.0} batches/s)",
        total_samples as f64 / secs,
        (publishers * batches_per_gw) as f64 / secs
    );
    println!(
        "group commits (fsyncs): {groups}, {:.1} batches per fsync; acks received: {}; threshold-checked samples: {} ({} over limit, {} lagged)",
        (publishers * batches_per_gw) as f64 / groups.max(1) as f64,
        acks.load(Ordering::Relaxed),
        checked.load(Ordering::Relaxed),
        over.load(Ordering::Relaxed),
        lagged.load(Ordering::Relaxed)
    );
    if let Some(b) = &broker {
        let m = b.metrics();
        println!(
            "embedded broker: {} messages in, {} out, {:.1} MB in, {:.1} MB out",
            m.messages_in.load(Ordering::Relaxed),
            m.messages_out.load(Ordering::Relaxed),
            m.bytes_in.load(Ordering::Relaxed) as f64 / 1e6,
            m.bytes_out.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
    let _ = stop_tx.send(());
    task.await.context("ingest task")??;
    if let Some(b) = broker {
        b.stop().await;
    }
    Ok(())
}
