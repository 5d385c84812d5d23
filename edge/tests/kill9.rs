//! Power-cut behaviour: the real `vigil-edge` binary killed with SIGKILL at random moments, 20
//! times, during a steady stream. Afterwards every batch the gateway ever sealed is at central or
//! still in the spool, the epoch never changed, and central holds every sample exactly once, in
//! order per point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Park, StandInCentral, wait_for};
use vigil_edge::spool::{SledSpool, Spool};

fn spawn_agent(park: &Park) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vigil-edge"))
        .args(["run", "--config"])
        .arg(park.config_file())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twenty_times_loses_and_duplicates_nothing() {
    let park = Park::new();
    let central = StandInCentral::start(&park).await;
    park.gateway_config(park.broker.port());
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut rng = seed | 1;
    for round in 0..20 {
        let mut child = spawn_agent(&park);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let lifetime = 150 + rng % 1200;
        tokio::time::sleep(Duration::from_millis(lifetime)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!("round {round}: killed after {lifetime} ms");
    }
    // A last run, left alone until central has everything it sealed before, then stopped cleanly.
    let mut child = spawn_agent(&park);
    let settled = wait_for(30, || {
        let r = central.received.lock().unwrap();
        r.epochs().len() == 1 && {
            let seqs = r.seqs(*r.epochs().first().unwrap());
            seqs.len() > 50 && seqs.len() as u64 == seqs.last().unwrap() + 1
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sigterm(&child);
    child.wait().unwrap();
    assert!(settled, "central caught up with the gateway");

    let (spool, _) = SledSpool::open(&park.spool_path(), 1 << 30).unwrap();
    let epoch = spool.epoch();
    let still_spooled: BTreeSet<u64> = vigil_common::Priority::ALL
        .iter()
        .flat_map(|c| spool.pending(*c, None, usize::MAX).unwrap())
        .map(|b| b.seq)
        .collect();
    let next_seq = spool.next_seq();
    drop(spool);

    let r = central.received.lock().unwrap();
    assert_eq!(r.epochs(), BTreeSet::from([epoch]), "the epoch survived every kill");
    let at_central = r.seqs(epoch);
    for seq in 0..next_seq {
        assert!(at_central.contains(&seq) || still_spooled.contains(&seq), "batch {seq} was sealed but is lost");
    }
    // Exactly once and in order: per point, timestamps strictly increase in sequence order.
    let mut points = BTreeSet::new();
    for b in r.batches.values() {
        points.extend(b.series.iter().map(|s| s.point.clone()));
    }
    for point in points {
        let ts: Vec<(i64, u64, vigil_common::Priority, String)> = r
            .batches
            .values()
            .flat_map(|b| {
                b.series
                    .iter()
                    .filter(|s| s.point == point)
                    .flat_map(|s| s.samples.iter().map(|x| (x.ts_ms, b.seq, b.class, format!("{:?}", x.value))))
            })
            .collect();
        let bad: Vec<_> = ts.windows(2).filter(|w| w[0].0 >= w[1].0).collect();
        assert!(bad.is_empty(), "{point}: samples duplicated or out of order (ts, seq, class, value): {bad:?}");
        assert!(ts.len() > 100, "{point}: only {} samples", ts.len());
    }
    let starts = r
        .batches
        .values()
        .filter(|b| b.events.iter().any(|e| matches!(e.kind, vigil_common::EventKind::GatewayStarted { .. })))
        .count();
    assert!(starts >= 15, "start events of most runs arrived ({starts})");
    // The broker announced the killed runs through the gateway's will.
    assert!(r.states.iter().any(|s| !s.online), "death message (MQTT will) published after SIGKILL");
    assert!(r.states.iter().any(|s| s.online), "birth message published");
}

fn sigterm(child: &Child) {
    // Graceful stop through the agent's signal handler.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}
