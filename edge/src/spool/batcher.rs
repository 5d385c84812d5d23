//! The batcher: collects records from the pipeline, seals them into signed batches (encoded once,
//! signed once) and appends them to the spool. Events are sealed at once into alarm/event batches;
//! telemetry is sealed by size or age, as live while the uplink is up and as backfill while it is
//! down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use vigil_common::{BatchBuilder, ClockQuality, Event, EventKind, GatewayId, Priority, SigningKey};

use super::{Spool, SpoolError, StoredBatch};
use crate::Record;

/// The current time, UTC milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// How the batcher seals.
#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// The gateway id written into every batch.
    pub gateway: GatewayId,
    /// Seal telemetry at the latest after this long.
    pub max_age: Duration,
    /// Seal telemetry once it holds this many samples.
    pub max_samples: usize,
}

/// Counters of the batcher.
#[derive(Debug, Default)]
pub struct BatcherMetrics {
    /// Batches sealed and stored.
    pub batches: AtomicU64,
    /// Samples stored.
    pub samples: AtomicU64,
    /// Events stored.
    pub events: AtomicU64,
    /// Batches the spool refused (each is logged; the batcher goes on).
    pub store_errors: AtomicU64,
    /// Batches dropped by the spool to stay within its budget.
    pub evicted_batches: AtomicU64,
}

/// Seals records into batches and stores them.
pub struct Batcher<S: Spool> {
    config: BatcherConfig,
    key: SigningKey,
    spool: Arc<Mutex<S>>,
    online: Arc<AtomicBool>,
    stored: Arc<Notify>,
    metrics: Arc<BatcherMetrics>,
    telemetry: BatchBuilder,
    telemetry_since: Option<Instant>,
    events: BatchBuilder,
    /// Snapshot bytes in `events`, so two large images never share (and overflow) one batch.
    event_image_bytes: usize,
    heartbeat: Option<vigil_hw::Heartbeat>,
}

/// Snapshot bytes one alarm/event batch may hold (a batch envelope is at most 2 MiB; one image is at
/// most 1 MiB): an event whose image would pass this goes into the next batch.
const EVENT_IMAGE_BYTES: usize = vigil_common::event::MAX_SNAPSHOT_BYTES + 512 * 1024;

fn image_bytes(event: &Event) -> usize {
    match &event.kind {
        EventKind::GasDetection(d) => d.snapshot.as_ref().map_or(0, |s| s.bytes.len()),
        _ => 0,
    }
}

/// Longest the batcher waits for a record before it reports progress anyway.
const IDLE_BEAT: Duration = Duration::from_secs(1);

impl<S: Spool> Batcher<S> {
    /// A batcher storing into `spool`; `online` tells whether the uplink is connected (telemetry
    /// sealed while it is not is backfill); `stored` is notified after every stored batch.
    pub fn new(
        config: BatcherConfig,
        key: SigningKey,
        spool: Arc<Mutex<S>>,
        online: Arc<AtomicBool>,
        stored: Arc<Notify>,
    ) -> Self {
        Batcher {
            config,
            key,
            spool,
            online,
            stored,
            metrics: Arc::default(),
            telemetry: BatchBuilder::new(),
            telemetry_since: None,
            events: BatchBuilder::new(),
            event_image_bytes: 0,
            heartbeat: None,
        }
    }

    /// Reports each loop iteration to the watchdog supervisor.
    pub fn set_heartbeat(&mut self, heartbeat: vigil_hw::Heartbeat) {
        self.heartbeat = Some(heartbeat);
    }

    /// The batcher's counters.
    pub fn metrics(&self) -> Arc<BatcherMetrics> {
        self.metrics.clone()
    }

    /// Adds an event to go out in the next alarm/event batch (start-up and spool-lost events).
    pub fn push_event(&mut self, event: Event) {
        self.events.push_event(event);
    }

    /// Runs until `rx` closes, then seals what is left.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Record>) {
        loop {
            if let Some(h) = &self.heartbeat {
                h.beat();
            }
            let deadline = self.telemetry_since.map_or(Instant::now() + IDLE_BEAT, |t| t + self.config.max_age);
            let record = match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(r) => r.map(Some),
                Err(_) => Some(None),
            };
            match record {
                None => break,
                Some(Some(r)) => {
                    self.take(r);
                    // Take what is already waiting so a burst becomes one batch.
                    for _ in 0..self.config.max_samples {
                        match rx.try_recv() {
                            Ok(r) => self.take(r),
                            Err(_) => break,
                        }
                    }
                }
                Some(None) => {}
            }
            self.seal_due(false);
        }
        self.seal_due(true);
    }

    fn take(&mut self, record: Record) {
        match record {
            Record::Sample { point, sample } => {
                self.telemetry.push(&point, sample);
                self.telemetry_since.get_or_insert_with(Instant::now);
            }
            Record::Event(e) => {
                let image = image_bytes(&e);
                if image > 0 && self.event_image_bytes + image > EVENT_IMAGE_BYTES && !self.events.is_empty() {
                    self.seal(Priority::AlarmEvent);
                }
                self.event_image_bytes += image;
                self.events.push_event(e);
            }
        }
    }

    fn seal_due(&mut self, all: bool) {
        if !self.events.is_empty() {
            self.seal(Priority::AlarmEvent);
        }
        let aged = self.telemetry_since.is_some_and(|t| t.elapsed() >= self.config.max_age);
        if !self.telemetry.is_empty() && (all || aged || self.telemetry.sample_count() >= self.config.max_samples) {
            let class = if self.online.load(Ordering::Relaxed) { Priority::Live } else { Priority::Backfill };
            self.seal(class);
            self.telemetry_since = None;
        }
        // Drops reported by the spool go out as events in their own alarm/event batch.
        if !self.events.is_empty() {
            self.seal(Priority::AlarmEvent);
        }
    }

    fn seal(&mut self, class: Priority) {
        if class == Priority::AlarmEvent {
            self.event_image_bytes = 0;
        }
        let builder = if class == Priority::AlarmEvent { &mut self.events } else { &mut self.telemetry };
        let result = tokio::task::block_in_place(|| -> Result<_, SpoolError> {
            let mut spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
            let (epoch, seq, drops) = (spool.epoch(), spool.next_seq(), spool.drops());
            let batch = builder.build(self.config.gateway.clone(), epoch, seq, class, now_ms(), drops);
            let sealed = match batch.seal(&self.key) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(seq, error = %e, "cannot seal batch; its records are lost");
                    return Ok(None);
                }
            };
            let stored = StoredBatch {
                seq,
                class,
                samples: batch.sample_count() as u32,
                events: batch.events.len() as u32,
                stored_ms: now_ms(),
                sealed,
            };
            let evicted = spool.append(&stored)?;
            Ok(Some((stored.samples, stored.events, evicted)))
        });
        match result {
            Ok(Some((samples, events, evicted))) => {
                self.metrics.batches.fetch_add(1, Ordering::Relaxed);
                self.metrics.samples.fetch_add(u64::from(samples), Ordering::Relaxed);
                self.metrics.events.fetch_add(u64::from(events), Ordering::Relaxed);
                for (class, batches, samples, events) in evicted.per_class {
                    self.metrics.evicted_batches.fetch_add(batches, Ordering::Relaxed);
                    tracing::warn!(?class, batches, samples, events, "spool over budget: oldest data dropped");
                    self.events.push_event(Event {
                        ts_ms: now_ms(),
                        clock: ClockQuality { synchronised: false, source: vigil_common::TimeSource::Gateway },
                        kind: EventKind::SpoolDropped { class, batches, samples, events },
                    });
                }
                self.stored.notify_one();
            }
            Ok(None) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "spool refused a batch; its records are lost");
            }
        }
    }
}
