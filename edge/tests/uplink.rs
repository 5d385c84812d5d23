//! The uplink against a real Mosquitto with mutual TLS and per-gateway ACLs, and a stand-in central
//! that verifies and acknowledges: delivery, deletion only on central's ack, outages, broker
//! restarts, forged acks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Park, StandInCentral, values_of, wait_for};
use tokio::sync::watch;
use vigil_common::{EventKind, Priority};
use vigil_edge::spool::{SledSpool, Spool};
use vigil_tools::faultproxy::FaultProxy;

fn start_agent(
    plant: vigil_edge::config::Plant,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<anyhow::Result<vigil_edge::agent::Exit>>) {
    let (stop, shutdown) = watch::channel(false);
    (stop, tokio::spawn(vigil_edge::agent::run(std::sync::Arc::new(plant), shutdown)))
}

async fn stop_agent(
    stop: watch::Sender<bool>,
    agent: tokio::task::JoinHandle<anyhow::Result<vigil_edge::agent::Exit>>,
) {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), agent).await.expect("agent stops").unwrap().unwrap();
}

fn assert_contiguous_from_zero(values: &[i64], what: &str) {
    let expected: Vec<i64> = (0..values.len() as i64).collect();
    assert_eq!(values, expected.as_slice(), "{what}: every value exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_leave_the_spool_only_when_central_acknowledges_them() {
    let park = Park::new();
    let central = StandInCentral::start(&park).await;
    central.acking.store(false, std::sync::atomic::Ordering::SeqCst);
    let (stop, agent) = start_agent(park.gateway_config(park.broker.port()));
    assert!(wait_for(20, || central.received.lock().unwrap().batches.len() >= 10).await, "batches arrive");
    stop_agent(stop, agent).await;

    // The broker acknowledged every publish, but central did not: everything is still spooled.
    let (spool, _) = SledSpool::open(&park.spool_path(), 1 << 30).unwrap();
    let stats = spool.stats();
    let spooled: u64 = stats.classes.iter().map(|c| c.batches).sum();
    assert_eq!(spooled, stats.next_seq, "no batch deleted without central's ack");
    let epoch = spool.epoch();
    drop(spool);

    // With central acking, a restarted agent re-sends the backlog and the spool drains.
    central.acking.store(true, std::sync::atomic::Ordering::SeqCst);
    let (stop, agent) = start_agent(park.gateway_config(park.broker.port()));
    let drained = wait_for(20, || {
        let r = central.received.lock().unwrap();
        values_of(&r, epoch, "gateway.spool_batches").last().is_some_and(|&v| v <= 3)
            && r.seqs(epoch).len() as u64 > stats.next_seq
    })
    .await;
    assert!(drained, "spool drains once central acknowledges");
    stop_agent(stop, agent).await;
    let r = central.received.lock().unwrap();
    assert!(r.duplicates > 0, "the unacknowledged batches were sent again");
    let seqs = r.seqs(epoch);
    assert_eq!(seqs.len() as u64, seqs.last().unwrap() + 1, "no sequence gaps");
    assert!(r.states.iter().any(|s| s.online), "birth state published");
    let started = r
        .batches
        .values()
        .filter(|b| b.events.iter().any(|e| matches!(e.kind, EventKind::GatewayStarted { .. })))
        .count();
    assert_eq!(started, 2, "one start event per run");
    assert!(r.batches.values().filter(|b| !b.events.is_empty()).all(|b| b.class == Priority::AlarmEvent));
}

async fn outage_is_backfilled_with_nothing_lost(outage: Duration) {
    let park = Park::new();
    let central = StandInCentral::start(&park).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], park.broker.port()).into()).await.unwrap();
    let (stop, agent) = start_agent(park.gateway_config(proxy.addr().port()));
    assert!(wait_for(20, || central.received.lock().unwrap().batches.len() >= 5).await);
    proxy.cut();
    let before = central.received.lock().unwrap().batches.len();
    tokio::time::sleep(outage).await;
    let during = central.received.lock().unwrap().batches.len();
    assert!(during <= before + 2, "nothing gets through a cut link ({before} -> {during})");
    proxy.restore();
    // Reconnect backoff is capped at 30 s (plus jitter).
    assert!(
        wait_for(60, || central
            .received
            .lock()
            .unwrap()
            .batches
            .values()
            .any(|b| b.class == Priority::Backfill && b.seq > 0))
        .await
    );
    // The backlog drains at the backfill rate while live data goes first: wait until it is complete.
    let complete = || {
        let r = central.received.lock().unwrap();
        let epoch = *r.epochs().first().unwrap();
        let beats = values_of(&r, epoch, "gateway.heartbeat");
        // Heartbeats come every 20 ms: the outage alone produced about outage/20 of them.
        beats.len() as u128 > outage.as_millis() / 25 && beats.iter().enumerate().all(|(i, v)| *v == i as i64)
    };
    let drained = wait_for(60, complete).await;
    stop_agent(stop, agent).await;

    let r = central.received.lock().unwrap();
    let epoch = *r.epochs().first().unwrap();
    let beats = values_of(&r, epoch, "gateway.heartbeat");
    let first_gap = beats.iter().enumerate().find(|(i, v)| **v != *i as i64);
    let classes: Vec<_> = Priority::ALL.iter().map(|c| r.batches.values().filter(|b| b.class == *c).count()).collect();
    assert!(
        drained,
        "backlog drained within 60 s of reconnecting ({} heartbeats, first gap {first_gap:?}, batches per class {classes:?}, duplicates {})",
        beats.len(),
        r.duplicates
    );
    assert_contiguous_from_zero(&beats, "heartbeat across the outage");
    let seqs = r.seqs(epoch);
    assert_eq!(seqs.len() as u64, seqs.last().unwrap() + 1, "no sequence gaps");
    assert!(proxy.accepted() >= 2, "the gateway reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_backfilled_with_nothing_lost() {
    outage_is_backfilled_with_nothing_lost(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_minute_outage_is_backfilled_with_nothing_lost() {
    outage_is_backfilled_with_nothing_lost(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    let mut park = Park::new();
    let central = StandInCentral::start(&park).await;
    let (stop, agent) = start_agent(park.gateway_config(park.broker.port()));
    assert!(wait_for(20, || central.received.lock().unwrap().batches.len() >= 5).await);
    park.broker.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    park.broker.start().unwrap();
    let target = central.received.lock().unwrap().batches.len() + 20;
    assert!(wait_for(40, || central.received.lock().unwrap().batches.len() >= target).await, "delivery resumes");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_agent(stop, agent).await;
    let r = central.received.lock().unwrap();
    let epoch = *r.epochs().first().unwrap();
    assert_contiguous_from_zero(&values_of(&r, epoch, "gateway.heartbeat"), "heartbeat across the broker restart");
    let seqs = r.seqs(epoch);
    assert_eq!(seqs.len() as u64, seqs.last().unwrap() + 1, "no sequence gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_not_signed_by_central_delete_nothing() {
    let mut park = Park::new();
    // The stand-in signs with a key the gateway does not trust.
    park.central_key = vigil_common::SigningKey::generate().unwrap();
    let config = park.gateway_config(park.broker.port());
    park.central_key = vigil_common::SigningKey::generate().unwrap();
    let central = StandInCentral::start(&park).await;
    let (stop, agent) = start_agent(config);
    assert!(wait_for(20, || central.received.lock().unwrap().batches.len() >= 10).await);
    stop_agent(stop, agent).await;
    let (spool, _) = SledSpool::open(&park.spool_path(), 1 << 30).unwrap();
    let stats = spool.stats();
    assert_eq!(stats.classes.iter().map(|c| c.batches).sum::<u64>(), stats.next_seq, "forged acks deleted nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_budget_drops_oldest_backfill_keeps_alarms_and_reports_drops() {
    let mut park = Park::new();
    park.budget_bytes = 12_000;
    let central = StandInCentral::start(&park).await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], park.broker.port()).into()).await.unwrap();
    let (stop, agent) = start_agent(park.gateway_config(proxy.addr().port()));
    assert!(wait_for(20, || central.received.lock().unwrap().batches.len() >= 3).await);
    proxy.cut();
    // About 10 batches of ~300 bytes a second: the budget overflows within a few seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.restore();
    let reported = wait_for(30, || {
        central
            .received
            .lock()
            .unwrap()
            .batches
            .values()
            .any(|b| b.dropped.backfill.batches > 0 && b.class == Priority::Live)
    })
    .await;
    assert!(reported, "drop counters reach central");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_agent(stop, agent).await;

    let (spool, _) = SledSpool::open(&park.spool_path(), 1 << 30).unwrap();
    let next_seq = spool.next_seq();
    let spooled: Vec<u64> =
        Priority::ALL.iter().flat_map(|c| spool.pending(*c, None, usize::MAX).unwrap()).map(|b| b.seq).collect();
    let drops = spool.drops();
    drop(spool);
    let r = central.received.lock().unwrap();
    let epoch = *r.epochs().first().unwrap();
    assert!(drops.backfill.batches > 0, "backfill was dropped");
    assert_eq!((drops.alarm_event.batches, drops.live.batches), (0, 0), "alarms and live kept while backfill remained");
    let dropped_events: u64 = r
        .batches
        .values()
        .flat_map(|b| b.events.iter())
        .filter_map(|e| {
            if let EventKind::SpoolDropped { class: Priority::Backfill, batches, .. } = e.kind {
                Some(batches)
            } else {
                None
            }
        })
        .sum();
    assert_eq!(dropped_events, drops.backfill.batches, "every drop was reported as an event");
    // Every batch not dropped arrived or is still spooled; the missing ones are exactly the drops.
    let seqs = r.seqs(epoch);
    let missing: Vec<u64> = (0..next_seq).filter(|s| !seqs.contains(s) && !spooled.contains(s)).collect();
    // A batch can be evicted after it was sent but before central's ack came back: it arrives yet
    // counts as dropped, so the count bounds the loss from above.
    let missing = missing.len() as u64;
    assert!(missing > 0 && missing <= drops.backfill.batches, "{missing} missing, {} dropped", drops.backfill.batches);
    // All alarm/event batches arrived.
    let alarm_batches = r.batches.values().filter(|b| b.class == Priority::AlarmEvent).count();
    assert!(alarm_batches >= 2, "start and drop events arrived ({alarm_batches})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_lets_a_gateway_publish_only_under_its_own_id() {
    use rumqttc::{AsyncClient, MqttOptions, QoS, Transport};
    use vigil_common::{Batch, BatchBuilder, DropCounters, GatewayId, PointId, Sample};
    let park = Park::new();
    let central = StandInCentral::start(&park).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut opts = MqttOptions::new(support::GATEWAY, "127.0.0.1", park.broker.port());
    opts.set_transport(Transport::tls_with_config(support::tls(
        &park.pki.ca_file(),
        &park.gateway_tls.cert,
        &park.gateway_tls.key,
    )));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let sealed = |gateway: &str, seq| -> Vec<u8> {
        let mut b = BatchBuilder::new();
        b.push(&PointId::new("p").unwrap(), Sample::good(1, 1.0));
        let batch: Batch =
            b.build(GatewayId::new(gateway).unwrap(), 1, seq, Priority::Live, 1, DropCounters::default());
        batch.seal(&park.gateway_key).unwrap()
    };
    // Under another gateway's id: the ACL drops it.
    client.publish("vigil/v1/ent-a/gw-2/up/batch", QoS::AtLeastOnce, false, sealed("gw-2", 0)).await.unwrap();
    // Under its own id: delivered (the control that shows the path works).
    client.publish("vigil/v1/ent-a/gw-1/up/batch", QoS::AtLeastOnce, false, sealed("gw-1", 0)).await.unwrap();
    assert!(wait_for(10, || !central.received.lock().unwrap().batches.is_empty()).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = central.received.lock().unwrap();
    assert_eq!(r.batches.len(), 1);
    assert!(r.batches.values().all(|b| b.gateway.as_str() == "gw-1"));
    assert_eq!(r.rejected, 0, "the foreign publish never reached central");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_central_asks_for_are_sent_again_at_once() {
    let park = Park::new();
    let central = StandInCentral::start(&park).await;
    *central.lose_once.lock().unwrap() = Some(5);
    let (stop, agent) = start_agent(park.gateway_config(park.broker.port()));
    assert!(
        wait_for(20, || central.received.lock().unwrap().batches.keys().any(|(_, s)| *s == 5)).await,
        "batch 5 arrives again"
    );
    stop_agent(stop, agent).await;
    let r = central.received.lock().unwrap();
    let (_, lost_at) = r.lost_once[0];
    let epoch = *r.epochs().first().unwrap();
    let again = r.arrived[&(epoch, 5)].duration_since(lost_at);
    // The configured timeout is 3 s; the resend request brings it back once the copy in flight is
    // 1 s old (younger copies may still be on their way), well before the timeout.
    assert!(again < Duration::from_millis(2200), "re-sent after {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_executed_only_when_signed_by_central() {
    use rumqttc::QoS;
    use vigil_common::{Command, CommandAction};
    let park = Park::new();
    let central = StandInCentral::start(&park).await;
    let (stop, agent) = start_agent(park.gateway_config(park.broker.port()));
    assert!(wait_for(20, || !central.received.lock().unwrap().states.is_empty()).await, "birth");
    let topic = "vigil/v1/ent-a/gw-1/down/cmd";
    let cmd = |id| Command {
        gateway: support::gateway_id(),
        id,
        issued_ms: vigil_edge::spool::now_ms(),
        expires_ms: vigil_edge::spool::now_ms() + 60_000,
        action: CommandAction::Ping,
    };
    let forged = cmd(1).seal(&vigil_common::SigningKey::generate().unwrap()).unwrap();
    central.client.publish(topic, QoS::AtLeastOnce, false, forged).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(central.received.lock().unwrap().states.len(), 1, "a forged ping is ignored");
    central.client.publish(topic, QoS::AtLeastOnce, false, cmd(2).seal(&park.central_key).unwrap()).await.unwrap();
    assert!(wait_for(5, || central.received.lock().unwrap().states.len() == 2).await, "a signed ping is answered");
    // Replaying the same signed command does nothing.
    central.client.publish(topic, QoS::AtLeastOnce, false, cmd(2).seal(&park.central_key).unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(central.received.lock().unwrap().states.len(), 2, "a replayed command is refused");
    stop_agent(stop, agent).await;
}
