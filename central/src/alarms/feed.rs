//! Feeds what ingest stored to the alarm engine: the alarm/event lane first, telemetry after, a
//! tick every second. Points are defined as `{gateway}/{point}`; each series is resolved once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, watch};

use super::AlarmEngine;
use crate::ingest::Ingested;

/// Counters of the feed.
#[derive(Debug, Default)]
pub struct FeedMetrics {
    /// Batches evaluated.
    pub batches: std::sync::atomic::AtomicU64,
    /// Batches the feed fell behind on and never saw (broadcast lag). Their data is stored in the
    /// WAL and historian; their alarms were not evaluated.
    pub lagged: std::sync::atomic::AtomicU64,
    /// Engine errors (each logged; evaluation goes on with the next batch).
    pub errors: std::sync::atomic::AtomicU64,
    /// Defined points their gateway has never sent in [`UNMATCHED_AFTER_MS`] of sending (see
    /// `AlarmEngine::unmatched_points`); each is logged once.
    pub unmatched: std::sync::atomic::AtomicU64,
}

/// How long a gateway must have been sending before a defined point it never sent counts as
/// unmatched: longer than a report-by-exception point's usual maximum silence (5 minutes).
pub const UNMATCHED_AFTER_MS: i64 = 10 * 60 * 1000;

impl FeedMetrics {
    /// Prometheus text of the counters.
    pub fn prometheus(&self) -> String {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        format!(
            "vigil_alarm_feed_batches_total {}\nvigil_alarm_feed_lagged_batches_total {}\nvigil_alarm_feed_errors_total {}\nvigil_alarm_unmatched_points {}\n",
            g(&self.batches),
            g(&self.lagged),
            g(&self.errors),
            g(&self.unmatched)
        )
    }
}

/// Counts the unmatched points and logs each the first time (at most 20 names per report).
fn report_unmatched(
    engine: &AlarmEngine,
    now: i64,
    warned: &mut std::collections::HashSet<String>,
    metrics: &FeedMetrics,
) {
    let unmatched = engine.unmatched_points(now, UNMATCHED_AFTER_MS);
    metrics.unmatched.store(unmatched.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let new: Vec<&str> = unmatched.into_iter().filter(|p| !warned.contains(*p)).take(20).collect();
    if !new.is_empty() {
        tracing::warn!(
            points = ?new,
            "alarm definitions whose gateway has been sending for 10 minutes without ever sending them: \
             check that each id is {{gateway}}/{{point}} as the gateway names the point"
        );
        warned.extend(new.into_iter().map(str::to_owned));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

async fn evaluate(engine: &Mutex<AlarmEngine>, item: &Ingested, metrics: &FeedMetrics) {
    let received = now_ms();
    let batch = &item.batch;
    let mut engine = engine.lock().await;
    engine.set_gateway_enterprise(batch.gateway.as_str(), item.enterprise.as_str());
    let mut result = engine.on_gateway_seen(&batch.gateway, received).await;
    for event in &batch.events {
        if result.is_ok() {
            result = engine.on_event(&batch.gateway, event, received).await;
        }
    }
    for series in &batch.series {
        let key = format!("{}/{}", batch.gateway, series.point);
        let Some(point) = engine.resolve_key(&key) else { continue };
        for sample in &series.samples {
            if result.is_ok() {
                result = engine.on_sample_at(&batch.gateway, point, sample, received).await;
            }
        }
    }
    metrics.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = result {
        metrics.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::error!(gateway = %batch.gateway, seq = batch.seq, error = %e, "alarm evaluation failed");
    }
}

/// Runs until `shutdown` turns true or both streams close.
pub async fn run(
    engine: Arc<Mutex<AlarmEngine>>,
    mut alarms: broadcast::Receiver<Arc<Ingested>>,
    mut telemetry: broadcast::Receiver<Arc<Ingested>>,
    mut states: broadcast::Receiver<Arc<(vigil_common::GatewayState, i64)>>,
    metrics: Arc<FeedMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut ticks, mut warned) = (0u64, std::collections::HashSet::new());
    let mut states_open = true;
    loop {
        let item = tokio::select! {
            biased;
            _ = shutdown.changed() => if *shutdown.borrow() { return } else { continue },
            r = alarms.recv() => r,
            s = states.recv(), if states_open => {
                match s {
                    Ok(s) => {
                        let (state, received) = &*s;
                        // Central's receive time: a will carries the time its connection was opened.
                        if let Err(e) = engine.lock().await.on_gateway_state(&state.gateway, state.online, *received).await {
                            metrics.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::error!(gateway = %state.gateway, error = %e, "gateway state evaluation failed");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        metrics.lagged.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => states_open = false,
                }
                continue;
            }
            r = telemetry.recv() => r,
            _ = tick.tick() => {
                let now = now_ms();
                let mut e = engine.lock().await;
                if let Err(err) = e.tick(now).await {
                    metrics.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(error = %err, "alarm tick failed");
                }
                ticks += 1;
                if ticks % 60 == 0 {
                    report_unmatched(&e, now, &mut warned, &metrics);
                }
                continue;
            }
        };
        match item {
            Ok(item) => evaluate(&engine, &item, &metrics).await,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics.lagged.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(batches = n, "alarm feed fell behind ingest; those batches were not evaluated");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
