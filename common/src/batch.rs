//! The batch: what a gateway seals, signs once, spools and sends, and what central verifies and stores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, BitReader, BitWriter, CodecError};
use crate::envelope::{self, EnvelopeError, KeyId, Kind, PublicKey, SigningKey};
use crate::event::Event;
use crate::point::{GatewayId, IdError, PointId, Sample};

/// Most samples one batch may hold (bounds central's memory per message).
pub const MAX_SAMPLES_PER_BATCH: usize = 200_000;
/// Most events one batch may hold.
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;
/// Most series one batch may hold.
pub const MAX_SERIES_PER_BATCH: usize = 100_000;

/// Delivery class of a batch: alarm/event batches go first, backfill last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    /// Alarm-relevant events (camera detections, digital inputs, device offline) and their samples.
    AlarmEvent,
    /// Current telemetry.
    Live,
    /// Telemetry recorded while the uplink was down, sent after it recovered.
    Backfill,
}

impl Priority {
    /// All classes, highest priority first.
    pub const ALL: [Priority; 3] = [Priority::AlarmEvent, Priority::Live, Priority::Backfill];
}

/// What one priority class has lost to the disk budget since the epoch began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClassDrops {
    /// Batches dropped.
    pub batches: u64,
    /// Samples in them.
    pub samples: u64,
    /// Events in them.
    pub events: u64,
}

/// Cumulative drop counters since the epoch began; cumulative so a lost batch loses no count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DropCounters {
    /// Alarm/event class.
    pub alarm_event: ClassDrops,
    /// Live class.
    pub live: ClassDrops,
    /// Backfill class.
    pub backfill: ClassDrops,
}

impl DropCounters {
    /// The counters of one class.
    pub fn class_mut(&mut self, class: Priority) -> &mut ClassDrops {
        match class {
            Priority::AlarmEvent => &mut self.alarm_event,
            Priority::Live => &mut self.live,
            Priority::Backfill => &mut self.backfill,
        }
    }
}

/// All samples of one point in a batch, in the order they were taken.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The point.
    pub point: PointId,
    /// Its samples.
    pub samples: Vec<Sample>,
}

/// A sealed unit of delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The gateway that produced it.
    pub gateway: GatewayId,
    /// The spool epoch; changes only when the spool had to be recreated.
    pub epoch: u64,
    /// Sequence number, never repeated within an epoch.
    pub seq: u64,
    /// Delivery class.
    pub class: Priority,
    /// When the gateway sealed it, UTC ms.
    pub created_ms: i64,
    /// Samples per point, ordered by point id, each point at most once.
    pub series: Vec<Series>,
    /// Events, in the order they happened.
    pub events: Vec<Event>,
    /// Cumulative drops since the epoch began.
    pub dropped: DropCounters,
}

/// Why a batch could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// The envelope failed a check.
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The payload is not a well-formed batch.
    #[error("payload: {0}")]
    Payload(String),
    /// A series' compressed data is malformed.
    #[error("series {index} ({point}): {source}")]
    Series {
        /// Its position in the batch.
        index: usize,
        /// Its point id, as far as known.
        point: String,
        /// What was wrong.
        source: CodecError,
    },
    /// A point key that is not a valid id.
    #[error("series {index}: {source}")]
    PointId {
        /// Its position in the batch.
        index: usize,
        /// What was wrong.
        source: IdError,
    },
    /// Series not in ascending point order or a point listed twice.
    #[error("series {index} ({point}) is out of order or repeats a point")]
    SeriesOrder {
        /// Its position.
        index: usize,
        /// Its point id.
        point: String,
    },
    /// A series without samples.
    #[error("series {index} ({point}) has no samples")]
    EmptySeries {
        /// Its position.
        index: usize,
        /// Its point id.
        point: String,
    },
    /// More samples, series or events than a batch may hold.
    #[error("batch holds too many {what}: {count}, at most {max}")]
    TooMany {
        /// Samples, series or events.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The batch names another gateway than the one whose key or topic it came with.
    #[error("batch names gateway {inside}, but arrived as {outside}")]
    GatewayMismatch {
        /// The gateway in the payload.
        inside: String,
        /// The gateway of the topic/key.
        outside: String,
    },
}

/// A point key stored as the length of the prefix it shares with the previous key and the rest.
#[derive(Serialize, Deserialize)]
struct KeyWire {
    shared: u8,
    suffix: String,
}

/// The postcard layout of a batch payload (see `docs/PROTOCOL.md`).
#[derive(Serialize, Deserialize)]
struct BatchWire {
    gateway: GatewayId,
    epoch: u64,
    seq: u64,
    class: Priority,
    created_ms: i64,
    base_ts: i64,
    keys: Vec<KeyWire>,
    body: Vec<u8>,
    events: Vec<Event>,
    dropped: DropCounters,
}

fn shared_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count().min(usize::from(u8::MAX))
}

impl Batch {
    /// Number of samples over all series.
    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }

    fn check_limits(&self) -> Result<(), BatchError> {
        let limits = [
            ("samples", self.sample_count(), MAX_SAMPLES_PER_BATCH),
            ("series", self.series.len(), MAX_SERIES_PER_BATCH),
            ("events", self.events.len(), MAX_EVENTS_PER_BATCH),
        ];
        for (what, count, max) in limits {
            if count > max {
                return Err(BatchError::TooMany { what, count, max });
            }
        }
        Ok(())
    }

    /// The payload bytes: postcard, with series compressed by [`crate::codec`].
    pub fn encode(&self) -> Result<Vec<u8>, BatchError> {
        self.check_limits()?;
        let base_ts = self.series.iter().filter_map(|s| s.samples.first()).map(|s| s.ts_ms).min().unwrap_or(0);
        let mut keys = Vec::new();
        let mut body = BitWriter::new();
        let mut prev: Option<&str> = None;
        for (index, series) in self.series.iter().enumerate() {
            let point = series.point.as_str();
            let series_err = |source| BatchError::Series { index, point: point.to_owned(), source };
            if prev.is_some_and(|p| p >= point) {
                return Err(BatchError::SeriesOrder { index, point: point.to_owned() });
            }
            if series.samples.is_empty() {
                return Err(BatchError::EmptySeries { index, point: point.to_owned() });
            }
            // One segment per run of equal value kinds; repeats of the key mark continuations.
            for segment in series.samples.chunk_by(|a, b| codec::same_value_kind(&a.value, &b.value)) {
                let shared = prev.map_or(0, |p| shared_prefix(p, point));
                keys.push(KeyWire { shared: shared as u8, suffix: point[shared..].to_owned() });
                codec::encode_series(segment, base_ts, &mut body).map_err(series_err)?;
                prev = Some(point);
            }
        }
        let wire = BatchWire {
            gateway: self.gateway.clone(),
            epoch: self.epoch,
            seq: self.seq,
            class: self.class,
            created_ms: self.created_ms,
            base_ts,
            keys,
            body: body.finish(),
            events: self.events.clone(),
            dropped: self.dropped,
        };
        postcard::to_allocvec(&wire).map_err(|e| BatchError::Payload(e.to_string()))
    }

    /// Decodes payload bytes produced by [`Batch::encode`]. Call only on verified payloads.
    pub fn decode(payload: &[u8]) -> Result<Batch, BatchError> {
        let (wire, rest): (BatchWire, &[u8]) =
            postcard::take_from_bytes(payload).map_err(|e| BatchError::Payload(e.to_string()))?;
        if !rest.is_empty() {
            return Err(BatchError::Payload(format!("{} trailing bytes", rest.len())));
        }
        if wire.keys.len() > MAX_SERIES_PER_BATCH {
            return Err(BatchError::TooMany { what: "series", count: wire.keys.len(), max: MAX_SERIES_PER_BATCH });
        }
        if wire.events.len() > MAX_EVENTS_PER_BATCH {
            return Err(BatchError::TooMany { what: "events", count: wire.events.len(), max: MAX_EVENTS_PER_BATCH });
        }
        let mut reader = BitReader::new(&wire.body);
        let mut series: Vec<Series> = Vec::new();
        let mut key = String::new();
        let mut total = 0usize;
        for (index, k) in wire.keys.iter().enumerate() {
            let shared = usize::from(k.shared);
            if shared > key.len() || !key.is_char_boundary(shared) {
                return Err(BatchError::Payload(format!(
                    "series {index}: shared prefix {shared} exceeds previous key"
                )));
            }
            let mut next = key[..shared].to_owned();
            next.push_str(&k.suffix);
            let continues = index > 0 && next == key;
            if index > 0 && !continues && next <= key {
                return Err(BatchError::SeriesOrder { index, point: next });
            }
            let mut samples = Vec::new();
            codec::decode_series(&mut reader, wire.base_ts, MAX_SAMPLES_PER_BATCH - total, &mut samples)
                .map_err(|source| BatchError::Series { index, point: next.clone(), source })?;
            total += samples.len();
            match series.last_mut() {
                Some(last) if continues => last.samples.append(&mut samples),
                _ => {
                    let point = PointId::new(next.as_str()).map_err(|source| BatchError::PointId { index, source })?;
                    series.push(Series { point, samples });
                }
            }
            key = next;
        }
        if reader.remaining_bits() >= 8 {
            return Err(BatchError::Payload(format!("{} unused bits after the last series", reader.remaining_bits())));
        }
        Ok(Batch {
            gateway: wire.gateway,
            epoch: wire.epoch,
            seq: wire.seq,
            class: wire.class,
            created_ms: wire.created_ms,
            series,
            events: wire.events,
            dropped: wire.dropped,
        })
    }

    /// Encodes and signs: the bytes to spool and publish, unchanged, until central acknowledges them.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, BatchError> {
        Ok(envelope::seal(Kind::Batch, &self.encode()?, key))
    }

    /// Verifies a sealed batch from `gateway` with one of its keys (`key_for` returns `None` for unknown
    /// or revoked key ids), then decodes it and checks it names that gateway.
    pub fn open(
        bytes: &[u8],
        gateway: &GatewayId,
        key_for: impl FnOnce(KeyId) -> Option<PublicKey>,
    ) -> Result<Batch, BatchError> {
        let verified = envelope::open(bytes, Kind::Batch, key_for)?;
        let batch = Batch::decode(verified.payload)?;
        if &batch.gateway != gateway {
            return Err(BatchError::GatewayMismatch {
                inside: batch.gateway.to_string(),
                outside: gateway.to_string(),
            });
        }
        Ok(batch)
    }
}

/// Collects samples per point and events until the batcher seals them.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    series: BTreeMap<PointId, Vec<Sample>>,
    events: Vec<Event>,
    samples: usize,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sample of `point`.
    pub fn push(&mut self, point: &PointId, sample: Sample) {
        match self.series.get_mut(point) {
            Some(v) => v.push(sample),
            None => {
                self.series.insert(point.clone(), vec![sample]);
            }
        }
        self.samples += 1;
    }

    /// Adds an event.
    pub fn push_event(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Samples collected so far.
    pub fn sample_count(&self) -> usize {
        self.samples
    }

    /// Events collected so far.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// True when nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.samples == 0 && self.events.is_empty()
    }

    /// Takes everything collected into a batch with the given header fields.
    pub fn build(
        &mut self,
        gateway: GatewayId,
        epoch: u64,
        seq: u64,
        class: Priority,
        created_ms: i64,
        dropped: DropCounters,
    ) -> Batch {
        self.samples = 0;
        Batch {
            gateway,
            epoch,
            seq,
            class,
            created_ms,
            series: std::mem::take(&mut self.series)
                .into_iter()
                .map(|(point, samples)| Series { point, samples })
                .collect(),
            events: std::mem::take(&mut self.events),
            dropped,
        }
    }
}
