//! The batcher: collects records from the pipeline, seals them into signed batches (encoded once,
//! signed once) and appends them to the spool. Events are sealed at once into alarm/event batches;
//! telemetry is sealed by size or age, as live while the uplink is up and as backfill while it is
//! down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use vigil_common::{BatchBuilder, ClockQuality, Event, EventKind, GatewayId, PointId, Priority, SigningKey};

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
    /// Points whose samples seal the telemetry batch at once.
    pub urgent: UrgentPoints,
}

/// The point-id patterns of `spool.urgent_points`, with each point's answer remembered (a gateway
/// has a fixed set of points, so the cache is bounded by the configuration).
#[derive(Debug, Clone, Default)]
pub struct UrgentPoints {
    patterns: Vec<String>,
    known: HashMap<PointId, bool>,
}

impl UrgentPoints {
    /// Points matching any of these patterns (`*` = any run of characters) are urgent.
    pub fn new(patterns: &[String]) -> Self {
        UrgentPoints { patterns: patterns.iter().map(|p| p.trim().to_owned()).collect(), known: HashMap::new() }
    }

    /// Whether samples of `point` must go out at once.
    pub fn contains(&mut self, point: &PointId) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        if let Some(&known) = self.known.get(point) {
            return known;
        }
        let urgent = self.patterns.iter().any(|p| wildcard_match(p, point.as_str()));
        self.known.insert(point.clone(), urgent);
        urgent
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (also none).
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else { return rest.is_empty() };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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
    /// The telemetry batch holds a sample of an urgent point.
    telemetry_urgent: bool,
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
            telemetry_urgent: false,
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
                self.telemetry_urgent |= self.config.urgent.contains(&point);
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
        let full = self.telemetry.sample_count() >= self.config.max_samples;
        let online = self.online.load(Ordering::Relaxed);
        // Offline, nobody is waiting: urgent samples then wait like the rest, in fuller batches.
        let urgent = self.telemetry_urgent && online;
        if !self.telemetry.is_empty() && (all || aged || full || urgent) {
            let class = if online { Priority::Live } else { Priority::Backfill };
            self.seal(class);
            self.telemetry_since = None;
            self.telemetry_urgent = false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SledSpool;
    use proptest::prelude::*;
    use vigil_common::Sample;

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(wildcard_match("TK1.LT", "TK1.LT"));
        assert!(!wildcard_match("TK1.LT", "TK1.LT2"));
        assert!(wildcard_match("GD1.*", "GD1.CH03"));
        assert!(!wildcard_match("GD1.*", "GD2.CH03"));
        assert!(wildcard_match("*.LT", "TK7.LT"));
        assert!(!wildcard_match("*.LT", "TK7.LT.raw"));
        assert!(wildcard_match("TK*.L*", "TK12.LT"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("a*a", "a"), "the two ends may not overlap");
        assert!(wildcard_match("a*a", "aa"));
    }

    proptest! {
        #[test]
        fn a_pattern_with_stars_replaced_by_text_matches(parts in prop::collection::vec("[a-c.]{0,3}", 1..5), fill in "[a-c.]{0,3}") {
            let pattern = parts.join("*");
            let text = parts.join(&fill);
            prop_assert!(wildcard_match(&pattern, &text));
            // Without stars a pattern matches only itself.
            prop_assert_eq!(wildcard_match(&text, &pattern), text == pattern);
        }
    }

    /// A batcher over a fresh spool with a long batch age; returns its sender, spool and stored-notify.
    fn batcher(online: bool, urgent: &[&str]) -> (mpsc::Sender<Record>, Arc<Mutex<SledSpool>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = SledSpool::open(&dir.path().join("spool"), 1 << 30).unwrap();
        let spool = Arc::new(Mutex::new(spool));
        let patterns: Vec<String> = urgent.iter().map(|p| (*p).to_owned()).collect();
        let config = BatcherConfig {
            gateway: "gw-1".parse().unwrap(),
            max_age: Duration::from_secs(3600),
            max_samples: 5000,
            urgent: UrgentPoints::new(&patterns),
        };
        let key = SigningKey::generate().unwrap();
        let b = Batcher::new(config, key, spool.clone(), Arc::new(AtomicBool::new(online)), Arc::default());
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(b.run(rx));
        (tx, spool, dir)
    }

    fn stored(spool: &Arc<Mutex<SledSpool>>) -> u64 {
        use crate::spool::Spool as _;
        spool.lock().unwrap().next_seq()
    }

    async fn sample(tx: &mpsc::Sender<Record>, point: &str) {
        tx.send(Record::Sample { point: point.parse().unwrap(), sample: Sample::good(now_ms(), 1.0) }).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_urgent_sample_is_sealed_at_once_and_takes_the_waiting_samples_along() {
        let (tx, spool, _dir) = batcher(true, &["GD1.*"]);
        let first = stored(&spool);
        sample(&tx, "TK1.LT").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stored(&spool), first, "an ordinary sample waits for the batch age");
        sample(&tx, "GD1.CH01").await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored(&spool) == first && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stored(&spool), first + 1, "one batch, holding both samples, sealed without waiting an hour");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn urgent_samples_wait_like_the_rest_while_the_uplink_is_down() {
        let (tx, spool, _dir) = batcher(false, &["GD1.*"]);
        let first = stored(&spool);
        sample(&tx, "GD1.CH01").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stored(&spool), first, "no one-sample backfill batches during an outage");
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored(&spool) == first && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(stored(&spool), first + 1, "sealed at shutdown");
    }
}
