//! Store-and-forward: the batcher seals records into signed batches, the spool keeps them on disk
//! until central acknowledges them.
//!
//! Every batch is stored as the exact signed bytes that will be published, under its sequence
//! number, in the tree of its priority class. A batch counts as stored only once the spool has
//! flushed it; it is deleted only when central's signed ack names it. Within the disk budget nothing
//! is ever dropped; past it, the oldest backfill goes first, then the oldest live telemetry, and
//! alarm/event batches only when nothing else is left. Every drop is counted, persisted, and
//! reported to central.

mod batcher;
mod sled_spool;

use std::path::PathBuf;

use serde::Deserialize;
use vigil_common::{DropCounters, Priority, SeqRange};

pub use batcher::{Batcher, BatcherConfig, BatcherMetrics, UrgentPoints, now_ms};
pub use sled_spool::SledSpool;

/// The `[spool]` section of the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool database.
    pub path: PathBuf,
    /// Most bytes of sealed batches kept on disk (default 1 GiB).
    #[serde(default = "default_budget")]
    pub budget_bytes: u64,
    /// Seal a telemetry batch at the latest after this many milliseconds (default 1000).
    #[serde(default = "default_max_age_ms")]
    pub batch_max_age_ms: u64,
    /// Seal a telemetry batch once it holds this many samples (default 5000).
    #[serde(default = "default_max_samples")]
    pub batch_max_samples: usize,
    /// Points whose samples must not wait for `batch_max_age_ms` (gas detectors, levels with alarm
    /// limits): a batch holding one is sealed and sent as soon as the poll that read it is taken.
    /// Patterns of point ids; `*` stands for any run of characters (`"GD1.*"`, `"*.LT"`).
    #[serde(default)]
    pub urgent_points: Vec<String>,
}

impl SpoolConfig {
    /// Problems with these settings, as (key, problem).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.budget_bytes < 4096 {
            out.push((
                "budget_bytes",
                format!("{} is below 4096 bytes; the spool could not hold one batch", self.budget_bytes),
            ));
        }
        if !(10..=3_600_000).contains(&self.batch_max_age_ms) {
            out.push(("batch_max_age_ms", format!("{} is outside 10..=3600000", self.batch_max_age_ms)));
        }
        let max = vigil_common::batch::MAX_SAMPLES_PER_BATCH;
        if !(1..=max).contains(&self.batch_max_samples) {
            out.push((
                "batch_max_samples",
                format!("{} is outside 1..={max} (central refuses larger batches)", self.batch_max_samples),
            ));
        }
        if self.urgent_points.iter().any(|p| p.trim().is_empty()) {
            out.push(("urgent_points", "holds an empty pattern; write a point id or a pattern with *".to_owned()));
        }
        out
    }
}

fn default_budget() -> u64 {
    1 << 30
}
fn default_max_age_ms() -> u64 {
    1000
}
fn default_max_samples() -> usize {
    5000
}

/// A batch as kept in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Its sequence number.
    pub seq: u64,
    /// Its class.
    pub class: Priority,
    /// Samples it holds.
    pub samples: u32,
    /// Events it holds.
    pub events: u32,
    /// When it was stored, gateway clock, UTC ms.
    pub stored_ms: i64,
    /// The sealed, signed bytes, exactly as published.
    pub sealed: Vec<u8>,
}

/// What an append had to drop to stay within the disk budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Per class: (batches, samples, events) dropped.
    pub per_class: Vec<(Priority, u64, u64, u64)>,
}

impl Evicted {
    /// True when nothing was dropped.
    pub fn is_empty(&self) -> bool {
        self.per_class.is_empty()
    }
}

/// Depth and size of one class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Batches waiting for central's ack.
    pub batches: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Samples in them.
    pub samples: u64,
    /// Stored time of the oldest, UTC ms.
    pub oldest_stored_ms: Option<i64>,
}

/// A snapshot of the spool's state, for metrics and the gateway's state message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// The epoch.
    pub epoch: u64,
    /// The next sequence number.
    pub next_seq: u64,
    /// Per class, in [`Priority::ALL`] order.
    pub classes: [ClassStats; 3],
    /// Cumulative drops this epoch.
    pub dropped: DropCounters,
    /// Flushes done and their total time in microseconds (for the mean flush latency).
    pub flushes: u64,
    /// Total flush time, microseconds.
    pub flush_micros: u64,
    /// Largest single flush, microseconds.
    pub max_flush_micros: u64,
}

/// Why the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The database failed.
    #[error("spool database at {path}: {message}")]
    Db {
        /// The spool directory.
        path: PathBuf,
        /// The database error.
        message: String,
    },
    /// Moving a corrupt spool aside failed; the gateway must not start on it.
    #[error("spool at {path} is unusable and could not be moved aside: {source}")]
    Quarantine {
        /// The spool directory.
        path: PathBuf,
        /// Why the move failed.
        source: std::io::Error,
    },
    /// Another open instance holds the spool's lock, and did not let go in time.
    #[error(
        "spool at {path} is in use: another instance holds its lock (waited {waited_ms} ms); it was left untouched"
    )]
    Locked {
        /// The spool directory.
        path: PathBuf,
        /// How long the open waited for the lock.
        waited_ms: u64,
    },
    /// A single batch larger than the whole budget.
    #[error("batch of {size} bytes exceeds the spool budget of {budget} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The budget.
        budget: u64,
    },
}

/// How the spool was found when opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// An existing spool, continued.
    Resumed,
    /// No spool existed; a new epoch began.
    Created,
    /// The spool was unusable; it was moved aside and a new epoch began.
    Recovered {
        /// The old epoch, if readable.
        old_epoch: Option<u64>,
        /// What was wrong.
        reason: String,
        /// Where the old spool now lies.
        quarantined_to: PathBuf,
    },
}

/// A durable queue of sealed batches per priority class.
pub trait Spool: Send {
    /// The epoch; constant for the life of this spool.
    fn epoch(&self) -> u64;
    /// The sequence number the next appended batch must carry.
    fn next_seq(&self) -> u64;
    /// Cumulative drops this epoch (to put into the next sealed batch).
    fn drops(&self) -> DropCounters;
    /// Stores a sealed batch durably (flushed before returning) under `batch.seq`, which must be
    /// [`Spool::next_seq`]; drops the oldest lower-priority data first if the budget requires it.
    fn append(&mut self, batch: &StoredBatch) -> Result<Evicted, SpoolError>;
    /// Deletes acknowledged batches; returns how many were present.
    fn remove(&mut self, range: SeqRange) -> Result<u64, SpoolError>;
    /// Up to `limit` batches of `class` with a sequence number above `after`, in sequence order.
    fn pending(&self, class: Priority, after: Option<u64>, limit: usize) -> Result<Vec<StoredBatch>, SpoolError>;
    /// The batch with this sequence number, if still stored.
    fn get(&self, seq: u64) -> Result<Option<StoredBatch>, SpoolError>;
    /// Current depth, sizes, drops and flush figures.
    fn stats(&self) -> SpoolStats;
}

/// The class to evict from when over budget: oldest backfill first, then live, alarm/event last.
fn eviction_order() -> [Priority; 3] {
    [Priority::Backfill, Priority::Live, Priority::AlarmEvent]
}

fn class_index(class: Priority) -> usize {
    match class {
        Priority::AlarmEvent => 0,
        Priority::Live => 1,
        Priority::Backfill => 2,
    }
}
