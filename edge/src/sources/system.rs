//! The gateway's own health as points: a heartbeat counter, uptime, and the spool's depth, bytes and
//! drops, so central sees a gateway's condition through the same path as any other data.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use vigil_common::{ClockQuality, PointId, Quality, Sample, TimeSource, Value};

use crate::Record;
use crate::spool::{Spool, now_ms};

/// The `[system]` section: how often the gateway reports its own health.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// Interval between reports, milliseconds (default 10,000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig { interval_ms: default_interval() }
    }
}

fn default_interval() -> u64 {
    10_000
}

/// The point ids this source reports.
pub const POINTS: [&str; 5] = [
    "gateway.heartbeat",
    "gateway.uptime_s",
    "gateway.spool_batches",
    "gateway.spool_bytes",
    "gateway.spool_dropped_batches",
];

/// The engineering unit of each of [`POINTS`], in order.
pub const UNITS: [&str; 5] = ["", "s", "", "B", ""];

/// Reports health every interval until `shutdown` or until the channel closes.
pub async fn run<S: Spool>(
    config: SystemConfig,
    spool: Arc<Mutex<S>>,
    tx: mpsc::Sender<Record>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ids: Vec<PointId> = POINTS.iter().filter_map(|p| PointId::new(*p).ok()).collect();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms.max(1)));
    // After a stall, report once and then a full period later, never two reports in one millisecond.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat: i64 = 0;
    let mut last_ts = i64::MIN;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        let stats = spool.lock().unwrap_or_else(|p| p.into_inner()).stats();
        let dropped = stats.dropped;
        let values = [
            Value::I64(beat),
            Value::I64(started.elapsed().as_secs() as i64),
            Value::I64(stats.classes.iter().map(|c| c.batches).sum::<u64>() as i64),
            Value::I64(stats.classes.iter().map(|c| c.bytes).sum::<u64>() as i64),
            Value::I64((dropped.alarm_event.batches + dropped.live.batches + dropped.backfill.batches) as i64),
        ];
        // Strictly increasing even when two ticks land in one millisecond or the wall clock steps
        // back: a health series never holds two samples at one instant.
        let ts_ms = now_ms().max(last_ts + 1);
        last_ts = ts_ms;
        let clock = ClockQuality { synchronised: false, source: TimeSource::Gateway };
        for (point, value) in ids.iter().zip(values) {
            let record =
                Record::Sample { point: point.clone(), sample: Sample { ts_ms, value, quality: Quality::GOOD, clock } };
            // Backpressure: wait for the batcher rather than lose a reading; bounded by shutdown.
            tokio::select! {
                sent = tx.send(record) => if sent.is_err() { return },
                _ = shutdown.changed() => if *shutdown.borrow() { return },
            }
        }
        beat += 1;
    }
}
