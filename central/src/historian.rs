//! The historian: an in-memory head per point, compressed into chunks with the shared series codec
//! (`vigil_common::codec`), chunks appended durably to day files in the data directory, and queries
//! (latest, raw range, bucketed aggregates) over heads and chunks together.
//!
//! Chunk records reuse the WAL framing (`len | crc32c | body`). A chunk carries the checkpoint
//! generation it was written in: chunks newer than the last committed checkpoint are cut on open,
//! because the WAL replay rebuilds their samples (this keeps history free of duplicates across crashes).

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use vigil_common::codec::{self, BitReader, BitWriter, CodecError};
use vigil_common::{GatewayId, PointId, Sample, Severity};

use crate::swinging_door::{self, DoorPolicy};
use crate::wal::{encode_record, scan_records};

/// Samples in a head before it is compressed into a chunk.
pub const CHUNK_SAMPLES: usize = 2048;
/// One day in milliseconds (chunk files hold the chunks whose last sample falls in one UTC day).
pub const DAY_MS: i64 = 86_400_000;
/// Chunks as written: header with the chunk's summary, then the codec bits.
const CHUNK_MAGIC: [u8; 3] = *b"VC1";
/// Chunks with roll-ups stored after the summary: written by one development build only (the
/// roll-ups cost 0.3 B/sample on disk, over the storage goal), still read so their data stays.
const CHUNK_MAGIC_ROLLUPS: [u8; 3] = *b"VC2";
/// Width of a roll-up: 5-minute windows aligned to the UTC epoch. A long aggregate whose buckets
/// are whole windows merges a few summaries per chunk instead of decoding its samples.
pub const ROLLUP_MS: i64 = 300_000;
/// Roll-ups are kept only when their windows hold this many samples on average: a slow point's
/// chunk decodes cheaply, and its roll-ups would take more memory than they save.
const ROLLUP_MIN_SAMPLES: usize = 32;
/// Bytes of one roll-up in a [`CHUNK_MAGIC_ROLLUPS`] chunk: window start, six floats, count, two timestamps.
const ROLLUP_BYTES: usize = 8 + 6 * 8 + 4 + 2 * 8;
/// Chunks whose roll-ups the cache holds per generation (two generations: at most twice this;
/// about 0.6 KB each for a 1 s point).
const ROLLUP_CACHE_CHUNKS: usize = 32_768;

/// Why the historian failed.
#[derive(Debug, thiserror::Error)]
pub enum HistorianError {
    /// File I/O failed.
    #[error("historian {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A chunk failed to encode or decode.
    #[error("chunk codec: {0}")]
    Codec(#[from] CodecError),
    /// A chunk body is malformed.
    #[error("chunk {0}")]
    Chunk(String),
    /// A query asked for something unreasonable.
    #[error("bad query: {0}")]
    Query(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HistorianError + '_ {
    move |source| HistorianError::Io { path: path.to_owned(), source }
}

/// A point's full identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    /// The gateway.
    pub gateway: GatewayId,
    /// The point within it.
    pub point: PointId,
}

/// Running statistics of the samples aggregates count: numeric values whose quality is not bad.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Stats {
    /// Samples counted.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean (`avg` in JSON).
    #[serde(rename = "avg")]
    pub mean: f64,
    /// Sum of squared deviations from the mean (for the variance).
    #[serde(skip)]
    pub m2: f64,
    /// Timestamp of the first sample.
    pub first_ts: i64,
    /// Value of the first sample.
    pub first: f64,
    /// Timestamp of the last sample.
    pub last_ts: i64,
    /// Value of the last sample.
    pub last: f64,
}

/// True when a sample counts in aggregates, with its value.
pub fn aggregable(s: &Sample) -> Option<f64> {
    if s.quality.severity() == Severity::Bad {
        return None;
    }
    s.value.as_f64().filter(|v| v.is_finite())
}

impl Stats {
    /// Adds one value.
    pub fn add(&mut self, ts: i64, v: f64) {
        self.merge(&Stats { count: 1, min: v, max: v, mean: v, m2: 0.0, first_ts: ts, first: v, last_ts: ts, last: v });
    }

    /// Merges another set (Chan et al.'s parallel variance).
    pub fn merge(&mut self, o: &Stats) {
        if o.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *o;
            return;
        }
        let n = (self.count + o.count) as f64;
        let delta = o.mean - self.mean;
        self.m2 += o.m2 + delta * delta * self.count as f64 * o.count as f64 / n;
        self.mean += delta * o.count as f64 / n;
        self.count += o.count;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.first_ts < self.first_ts {
            self.first_ts = o.first_ts;
            self.first = o.first;
        }
        if o.last_ts >= self.last_ts {
            self.last_ts = o.last_ts;
            self.last = o.last;
        }
    }

    /// Population standard deviation.
    pub fn stddev(&self) -> f64 {
        if self.count == 0 { 0.0 } else { (self.m2 / self.count as f64).max(0.0).sqrt() }
    }
}

/// Where a chunk lives and what it summarises (kept in memory for every chunk).
#[derive(Debug, Clone)]
pub struct ChunkMeta {
    /// Day file.
    pub day: i64,
    /// Byte offset of the framed record.
    pub offset: u64,
    /// Framed record length.
    pub len: u32,
    /// Checkpoint generation it was written in.
    pub generation: u64,
    /// First timestamp.
    pub min_ts: i64,
    /// Last timestamp.
    pub max_ts: i64,
    /// Samples.
    pub count: u32,
    /// Aggregate summary.
    pub stats: Stats,
}

/// A decoded chunk body.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Its series.
    pub key: SeriesKey,
    /// Checkpoint generation.
    pub generation: u64,
    /// Samples in time order.
    pub samples: Vec<Sample>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a chunk body (samples non-empty, sorted by time). Returns it with its summary.
pub fn encode_chunk(key: &SeriesKey, generation: u64, samples: &[Sample]) -> Result<(Vec<u8>, Stats), HistorianError> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Err(HistorianError::Chunk("empty".into()));
    };
    let mut stats = Stats::default();
    for s in samples {
        if let Some(v) = aggregable(s) {
            stats.add(s.ts_ms, v);
        }
    }
    let mut out = Vec::with_capacity(64 + samples.len() * 2);
    out.extend_from_slice(&CHUNK_MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    put_str(&mut out, key.gateway.as_str());
    put_str(&mut out, key.point.as_str());
    out.extend_from_slice(&first.ts_ms.to_le_bytes());
    out.extend_from_slice(&last.ts_ms.to_le_bytes());
    out.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    put_stats(&mut out, &stats);
    let plain = encode_body(samples, first.ts_ms, None)?;
    let body = match grid(samples) {
        Some(g) => {
            let gridded = encode_body(samples, first.ts_ms, Some(&g))?;
            if gridded.len() < plain.len() { gridded } else { plain }
        }
        None => plain,
    };
    out.extend_from_slice(&body);
    Ok((out, stats))
}

/// Writes a summary: six floats, the count, the first and last timestamps.
fn put_stats(out: &mut Vec<u8>, stats: &Stats) {
    for f in [stats.min, stats.max, stats.mean, stats.m2, stats.first, stats.last] {
        out.extend_from_slice(&f.to_le_bytes());
    }
    out.extend_from_slice(&(stats.count as u32).to_le_bytes());
    out.extend_from_slice(&stats.first_ts.to_le_bytes());
    out.extend_from_slice(&stats.last_ts.to_le_bytes());
}

/// The start of the roll-up window holding `ts`.
fn rollup_start(ts: i64) -> i64 {
    ts - ts.rem_euclid(ROLLUP_MS)
}

/// Per-window summaries of a chunk's aggregable samples (sorted by time), or none when the
/// windows would hold too few samples to be worth keeping. Windows without one are left out.
fn rollups_of(samples: &[Sample]) -> Vec<(i64, Stats)> {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return Vec::new() };
    let windows = (rollup_start(last.ts_ms) - rollup_start(first.ts_ms)) / ROLLUP_MS + 1;
    if windows < 2 || (samples.len() as i64) < windows.saturating_mul(ROLLUP_MIN_SAMPLES as i64) {
        return Vec::new();
    }
    let mut out: Vec<(i64, Stats)> = Vec::new();
    for s in samples {
        let Some(v) = aggregable(s) else { continue };
        let start = rollup_start(s.ts_ms);
        match out.last_mut() {
            Some((w, stats)) if *w == start => stats.add(s.ts_ms, v),
            _ => {
                let mut stats = Stats::default();
                stats.add(s.ts_ms, v);
                out.push((start, stats));
            }
        }
    }
    out
}

/// A regular poll grid for a chunk's timestamps: `ts[i] = base + i * period + residual[i]`, with
/// residuals in `0..2^width`. Polls that are a few milliseconds late every time cost 9 bits each as
/// delta-of-deltas in the shared codec; on the grid they cost 1 bit there plus `width` bits here.
struct Grid {
    period: i64,
    base: i64,
    width: u32,
    residuals: Vec<u64>,
}

const MAX_GRID_WIDTH: u32 = 16;

fn grid(samples: &[Sample]) -> Option<Grid> {
    if samples.len() < 3 {
        return None;
    }
    let mut deltas: Vec<i64> = samples.windows(2).map(|w| w[1].ts_ms.saturating_sub(w[0].ts_ms)).collect();
    let mid = deltas.len() / 2;
    let period = *deltas.select_nth_unstable(mid).1;
    if period <= 0 {
        return None;
    }
    let offsets: Vec<i64> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (i as i64).checked_mul(period).and_then(|x| s.ts_ms.checked_sub(x)))
        .collect::<Option<Vec<i64>>>()?;
    let base = *offsets.iter().min()?;
    let residuals: Vec<u64> =
        offsets.iter().map(|o| o.checked_sub(base).map(|r| r as u64)).collect::<Option<Vec<u64>>>()?;
    let max = *residuals.iter().max()?;
    let width = 64 - max.leading_zeros();
    (width <= MAX_GRID_WIDTH).then_some(Grid { period, base, width, residuals })
}

/// The codec bits of a chunk: `mode` bit (1 = grid), for a grid its period, base and width, then the
/// series segments (timestamps on the grid when gridded), then the residuals.
fn encode_body(samples: &[Sample], base_ts: i64, grid: Option<&Grid>) -> Result<Vec<u8>, HistorianError> {
    let mut w = BitWriter::new();
    let on_grid: Vec<Sample>;
    let (samples, base_ts) = match grid {
        Some(g) => {
            w.write_bit(true);
            w.write_varint(g.period as u64);
            w.write_varint(g.base as u64);
            w.write_bits(u64::from(g.width), 5);
            on_grid = samples
                .iter()
                .enumerate()
                .map(|(i, s)| Sample { ts_ms: g.base + i as i64 * g.period, ..s.clone() })
                .collect();
            (on_grid.as_slice(), g.base)
        }
        None => {
            w.write_bit(false);
            (samples, base_ts)
        }
    };
    let segments: Vec<&[Sample]> = samples.chunk_by(|a, b| codec::same_value_kind(&a.value, &b.value)).collect();
    w.write_varint(segments.len() as u64);
    for seg in segments {
        codec::encode_series(seg, base_ts, &mut w)?;
    }
    if let Some(g) = grid {
        for &r in &g.residuals {
            w.write_bits(r, g.width);
        }
    }
    Ok(w.finish())
}

struct Cursor<'a>(&'a [u8]);
impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HistorianError> {
        if self.0.len() < n {
            return Err(HistorianError::Chunk("truncated header".into()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, HistorianError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, HistorianError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<&'a str, HistorianError> {
        let n = usize::from(self.take(1)?[0]);
        std::str::from_utf8(self.take(n)?).map_err(|_| HistorianError::Chunk("key not UTF-8".into()))
    }
}

/// A decoded chunk header: key, generation, min ts, max ts, count, summary, the encoded roll-ups
/// (see [`read_rollups`]), and the codec bits.
type Header<'a> = (SeriesKey, u64, i64, i64, u32, Stats, &'a [u8], &'a [u8]);

impl Cursor<'_> {
    fn stats(&mut self) -> Result<Stats, HistorianError> {
        let mut f = [0f64; 6];
        for x in &mut f {
            *x = f64::from_bits(self.u64()?);
        }
        let n = self.u32()?;
        let first_ts = self.u64()? as i64;
        let last_ts = self.u64()? as i64;
        Ok(Stats {
            count: u64::from(n),
            min: f[0],
            max: f[1],
            mean: f[2],
            m2: f[3],
            first: f[4],
            last: f[5],
            first_ts,
            last_ts,
        })
    }
}

fn decode_header(body: &[u8]) -> Result<Header<'_>, HistorianError> {
    let mut c = Cursor(body);
    let magic = c.take(3)?;
    let with_rollups = match magic {
        m if m == CHUNK_MAGIC => false,
        m if m == CHUNK_MAGIC_ROLLUPS => true,
        _ => return Err(HistorianError::Chunk("bad magic".into())),
    };
    let generation = c.u64()?;
    let gateway = GatewayId::new(c.str()?).map_err(|e| HistorianError::Chunk(e.to_string()))?;
    let point = PointId::new(c.str()?).map_err(|e| HistorianError::Chunk(e.to_string()))?;
    let min_ts = c.u64()? as i64;
    let max_ts = c.u64()? as i64;
    let count = c.u32()?;
    let stats = c.stats()?;
    let rollups = if with_rollups {
        let b = c.take(2)?;
        let n = usize::from(u16::from_le_bytes([b[0], b[1]]));
        c.take(n * ROLLUP_BYTES)?
    } else {
        &[]
    };
    Ok((SeriesKey { gateway, point }, generation, min_ts, max_ts, count, stats, rollups, c.0))
}

/// The roll-ups stored in a chunk body: (window start, summary) in time order; empty for chunks
/// written without them (all chunks but those of one development build).
pub fn read_rollups(body: &[u8]) -> Result<Vec<(i64, Stats)>, HistorianError> {
    let (.., rollups, _) = decode_header(body)?;
    let mut c = Cursor(rollups);
    let mut out = Vec::with_capacity(rollups.len() / ROLLUP_BYTES);
    while !c.0.is_empty() {
        let start = c.u64()? as i64;
        out.push((start, c.stats()?));
    }
    Ok(out)
}

/// Decodes a chunk body produced by [`encode_chunk`].
pub fn decode_chunk(body: &[u8]) -> Result<Chunk, HistorianError> {
    let (key, generation, min_ts, _max, count, _stats, _rollups, bits) = decode_header(body)?;
    let mut r = BitReader::new(bits);
    let gridded = r.read_bit()?;
    let mut base_ts = min_ts;
    let mut grid_width = 0;
    if gridded {
        let _period = r.read_varint()?;
        base_ts = r.read_varint()? as i64;
        grid_width = r.read_bits(5)? as u32;
        if grid_width > MAX_GRID_WIDTH {
            return Err(HistorianError::Chunk(format!("grid width {grid_width}")));
        }
    }
    let nseg = r.read_varint()?;
    let mut samples = Vec::with_capacity((count as usize).min(1 << 20));
    for _ in 0..nseg {
        let left = (count as usize).saturating_sub(samples.len());
        codec::decode_series(&mut r, base_ts, left, &mut samples)?;
    }
    if samples.len() != count as usize {
        return Err(HistorianError::Chunk(format!("declares {count} samples, holds {}", samples.len())));
    }
    if gridded {
        for s in &mut samples {
            s.ts_ms = s.ts_ms.wrapping_add(r.read_bits(grid_width)? as i64);
        }
    }
    Ok(Chunk { key, generation, samples })
}

/// The callback of [`ChunkStore::load`]: (day, offset, framed length, chunk body).
pub type LoadFn<'a> = dyn FnMut(i64, u64, u32, &[u8]) + 'a;

/// Where chunks are kept. The file implementation is [`FileChunkStore`]; a PostgreSQL table of
/// (series, min_ts, max_ts, generation, body) fits the same four operations.
pub trait ChunkStore: Send + Sync {
    /// Appends a framed chunk body to the partition of `day`; returns its (offset, framed length).
    fn append(&mut self, day: i64, body: &[u8]) -> Result<(u64, u32), HistorianError>;
    /// Makes every append so far durable.
    fn sync(&mut self) -> Result<(), HistorianError>;
    /// Reads one chunk body back.
    fn read(&self, day: i64, offset: u64, len: u32) -> Result<Vec<u8>, HistorianError>;
    /// Drops whole partitions of days before `day`; returns how many bytes were freed.
    fn drop_days_before(&mut self, day: i64) -> Result<u64, HistorianError>;
    /// Loads every chunk of generation <= `committed`, cutting newer ones; calls `f(day, offset, len, body)`.
    fn load(&mut self, committed: u64, f: &mut LoadFn<'_>) -> Result<(), HistorianError>;
    /// Bytes held.
    fn disk_bytes(&self) -> u64;
}

/// Chunks in day files `chunks/{day}.chk` under the data directory.
pub struct FileChunkStore {
    dir: PathBuf,
    open: HashMap<i64, (File, u64)>,
    dirty: BTreeSet<i64>,
}

impl FileChunkStore {
    /// Opens (creating) the store in `dir`.
    pub fn open(dir: &Path) -> Result<FileChunkStore, HistorianError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(FileChunkStore { dir: dir.to_owned(), open: HashMap::new(), dirty: BTreeSet::new() })
    }

    fn path(&self, day: i64) -> PathBuf {
        self.dir.join(format!("{day}.chk"))
    }

    fn days(&self) -> Result<Vec<i64>, HistorianError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            if let Some(d) = e.file_name().to_str().and_then(|n| n.strip_suffix(".chk")).and_then(|d| d.parse().ok()) {
                out.push(d);
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl ChunkStore for FileChunkStore {
    fn append(&mut self, day: i64, body: &[u8]) -> Result<(u64, u32), HistorianError> {
        let path = self.path(day);
        if !self.open.contains_key(&day) {
            if self.open.len() >= 16 {
                // Bound open files: sync everything and start over.
                self.sync()?;
                self.open.clear();
            }
            let f = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
            let len = f.metadata().map_err(io_err(&path))?.len();
            self.open.insert(day, (f, len));
        }
        let Some((file, len)) = self.open.get_mut(&day) else {
            return Err(HistorianError::Chunk("open file vanished".into()));
        };
        let mut framed = Vec::with_capacity(body.len() + 8);
        encode_record(body, &mut framed).map_err(|e| HistorianError::Chunk(e.to_string()))?;
        file.write_all(&framed).map_err(io_err(&path))?;
        let offset = *len;
        *len += framed.len() as u64;
        self.dirty.insert(day);
        Ok((offset, framed.len() as u32))
    }

    fn sync(&mut self) -> Result<(), HistorianError> {
        for day in std::mem::take(&mut self.dirty) {
            if let Some((f, _)) = self.open.get(&day) {
                f.sync_data().map_err(io_err(&self.path(day)))?;
            }
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))
    }

    fn read(&self, day: i64, offset: u64, len: u32) -> Result<Vec<u8>, HistorianError> {
        let path = self.path(day);
        let f = File::open(&path).map_err(io_err(&path))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(io_err(&path))?;
        let (recs, _, _) = scan_records(&buf);
        recs.first()
            .map(|r| r.to_vec())
            .ok_or_else(|| HistorianError::Chunk(format!("{}@{offset}: bad CRC", path.display())))
    }

    fn drop_days_before(&mut self, day: i64) -> Result<u64, HistorianError> {
        let mut freed = 0;
        for d in self.days()? {
            if d < day {
                let path = self.path(d);
                self.open.remove(&d);
                self.dirty.remove(&d);
                freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(freed)
    }

    fn load(&mut self, committed: u64, f: &mut LoadFn<'_>) -> Result<(), HistorianError> {
        for day in self.days()? {
            let path = self.path(day);
            let data = fs::read(&path).map_err(io_err(&path))?;
            let (recs, valid, end) = scan_records(&data);
            let mut offset = 0u64;
            let mut keep = valid;
            for r in recs {
                let framed = (r.len() + 8) as u64;
                let generation = decode_header(r).map(|h| h.1).unwrap_or(u64::MAX);
                if generation > committed {
                    // Written after the last checkpoint: the WAL replay rebuilds it.
                    keep = offset as usize;
                    break;
                }
                f(day, offset, framed as u32, r);
                offset += framed;
            }
            if keep < data.len() {
                tracing::info!(file = %path.display(), cut = data.len() - keep, ?end, "historian: cutting chunks past the last checkpoint");
                let file = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                file.set_len(keep as u64).map_err(io_err(&path))?;
                file.sync_all().map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.days()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| fs::metadata(self.path(d)).ok())
            .map(|m| m.len())
            .sum()
    }
}

#[derive(Default)]
struct SeriesState {
    head: Vec<Sample>,
    late: Vec<Sample>,
    chunks: Vec<ChunkMeta>,
    latest: Option<Sample>,
}

/// The roll-ups of one chunk.
type Rollups = Arc<[(i64, Stats)]>;

/// Roll-ups of recently written or read chunks, by (day, offset). Filled when a chunk is written
/// (recent data is what trend screens show) and when an aggregate decodes one; bounded by two
/// generations: when the newer is full it replaces the older, so a chunk used in the last
/// generation stays.
#[derive(Default)]
struct RollupCache {
    generations: std::sync::Mutex<[HashMap<(i64, u64), Rollups>; 2]>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl RollupCache {
    fn get(&self, at: (i64, u64)) -> Option<Rollups> {
        let mut g = self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = match g[0].get(&at) {
            Some(r) => Some(r.clone()),
            None => g[1].remove(&at).inspect(|r| Self::insert(&mut g, at, r.clone())),
        };
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        found
    }

    fn put(&self, at: (i64, u64), rollups: Rollups) {
        let mut g = self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::insert(&mut g, at, rollups);
    }

    fn insert(g: &mut [HashMap<(i64, u64), Rollups>; 2], at: (i64, u64), rollups: Rollups) {
        if g[0].len() >= ROLLUP_CACHE_CHUNKS {
            g[1] = std::mem::take(&mut g[0]);
        }
        g[0].insert(at, rollups);
    }

    fn forget_days_before(&self, day: i64) {
        let mut g = self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for m in g.iter_mut() {
            m.retain(|(d, _), _| *d >= day);
        }
    }

    fn len(&self) -> usize {
        let g = self.generations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g[0].len() + g[1].len()
    }
}

/// Counters the metrics endpoint exports.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct HistorianStats {
    /// Samples accepted.
    pub samples: u64,
    /// Samples older than their point's head (late or backfill).
    pub late_samples: u64,
    /// Chunks written.
    pub chunks_written: u64,
    /// Bytes of chunk bodies written.
    pub chunk_bytes: u64,
    /// Samples in those chunks.
    pub chunk_samples: u64,
    /// Chunks dropped by retention.
    pub chunks_dropped: u64,
    /// Samples left out of chunks by swinging-door compression (within the point's deviation).
    pub samples_compressed_away: u64,
    /// Aggregates that found a chunk's roll-ups in the cache.
    pub rollup_hits: u64,
    /// Aggregates that decoded a chunk for its roll-ups.
    pub rollup_misses: u64,
    /// Chunks whose roll-ups the cache holds.
    pub rollup_cached_chunks: u64,
}

/// The historian.
pub struct Historian {
    store: Box<dyn ChunkStore>,
    series: HashMap<SeriesKey, SeriesState>,
    generation: u64,
    head_samples: usize,
    max_head_samples: usize,
    stats: HistorianStats,
    compression: Arc<DoorPolicy>,
    rollups: RollupCache,
}

/// One bucket of an aggregate query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// Bucket start, UTC ms.
    pub start_ms: i64,
    /// Its statistics (count 0 when empty).
    #[serde(flatten)]
    pub stats: Stats,
    /// Population standard deviation.
    pub stddev: f64,
}

impl Historian {
    /// Opens over `store`, loading chunks of checkpoint generations up to `committed`; new chunks get
    /// generation `committed + 1`. `max_head_samples` bounds memory: past it every head is flushed.
    pub fn open(
        mut store: Box<dyn ChunkStore>,
        committed: u64,
        max_head_samples: usize,
    ) -> Result<Historian, HistorianError> {
        let mut series: HashMap<SeriesKey, SeriesState> = HashMap::new();
        let mut bad = 0u64;
        store.load(committed, &mut |day, offset, len, body| match decode_header(body) {
            Ok((key, generation, min_ts, max_ts, count, stats, ..)) => {
                series.entry(key).or_default().chunks.push(ChunkMeta {
                    day,
                    offset,
                    len,
                    generation,
                    min_ts,
                    max_ts,
                    count,
                    stats,
                });
            }
            Err(e) => {
                bad += 1;
                tracing::error!(day, offset, error = %e, "historian: unreadable chunk skipped");
            }
        })?;
        let mut h = Historian {
            store,
            series,
            generation: committed + 1,
            head_samples: 0,
            max_head_samples: max_head_samples.max(CHUNK_SAMPLES),
            stats: HistorianStats::default(),
            compression: Arc::default(),
            rollups: RollupCache::default(),
        };
        let keys: Vec<SeriesKey> = h.series.keys().cloned().collect();
        for k in keys {
            if let Some(st) = h.series.get_mut(&k) {
                st.chunks.sort_by_key(|c| (c.min_ts, c.max_ts));
                if let Some(last) = st.chunks.iter().max_by_key(|c| c.max_ts).cloned() {
                    let body = h.store.read(last.day, last.offset, last.len)?;
                    let chunk = decode_chunk(&body)?;
                    if let Some(st) = h.series.get_mut(&k) {
                        st.latest = chunk.samples.into_iter().next_back();
                    }
                }
            }
        }
        Ok(h)
    }

    /// Applies `policy` to samples written from now on (lossless until called).
    pub fn set_compression(&mut self, policy: Arc<DoorPolicy>) {
        self.compression = policy;
    }

    /// The generation new chunks are written in (the next checkpoint's).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds samples of one point (any order; late ones land in their place).
    pub fn insert(&mut self, gateway: &GatewayId, point: &PointId, samples: &[Sample]) -> Result<(), HistorianError> {
        let key = SeriesKey { gateway: gateway.clone(), point: point.clone() };
        let st = self.series.entry(key.clone()).or_default();
        for s in samples {
            if st.latest.as_ref().is_none_or(|l| s.ts_ms >= l.ts_ms) {
                st.latest = Some(s.clone());
            }
            match st.head.first() {
                Some(f) if s.ts_ms < f.ts_ms => {
                    let at = st.late.partition_point(|x| x.ts_ms <= s.ts_ms);
                    st.late.insert(at, s.clone());
                    self.stats.late_samples += 1;
                }
                _ => {
                    if st.head.last().is_some_and(|l| s.ts_ms < l.ts_ms) {
                        let at = st.head.partition_point(|x| x.ts_ms <= s.ts_ms);
                        st.head.insert(at, s.clone());
                    } else {
                        st.head.push(s.clone());
                    }
                }
            }
        }
        self.stats.samples += samples.len() as u64;
        self.head_samples += samples.len();
        let (h, l) = (st.head.len(), st.late.len());
        if h >= CHUNK_SAMPLES {
            self.flush_one(&key, false)?;
        }
        if l >= CHUNK_SAMPLES {
            self.flush_one(&key, true)?;
        }
        if self.head_samples > self.max_head_samples {
            self.flush_all()?;
        }
        Ok(())
    }

    fn flush_one(&mut self, key: &SeriesKey, late: bool) -> Result<(), HistorianError> {
        let Some(st) = self.series.get_mut(key) else { return Ok(()) };
        let mut samples = std::mem::take(if late { &mut st.late } else { &mut st.head });
        if samples.is_empty() {
            return Ok(());
        }
        self.head_samples = self.head_samples.saturating_sub(samples.len());
        if let Some(door) = self.compression.setting(key) {
            let kept = swinging_door::keep(&samples, door.deviation, &door.limits);
            self.stats.samples_compressed_away += (samples.len() - kept.len()) as u64;
            let kept: Vec<Sample> = kept.into_iter().map(|i| samples[i].clone()).collect();
            samples = kept;
        }
        for part in samples.chunks(CHUNK_SAMPLES) {
            let (body, stats) = encode_chunk(key, self.generation, part)?;
            let (min_ts, max_ts) = (part[0].ts_ms, part[part.len() - 1].ts_ms);
            let day = max_ts.div_euclid(DAY_MS);
            let (offset, len) = self.store.append(day, &body)?;
            let rollups = rollups_of(part);
            if !rollups.is_empty() {
                self.rollups.put((day, offset), rollups.into());
            }
            self.stats.chunks_written += 1;
            self.stats.chunk_bytes += len as u64;
            self.stats.chunk_samples += part.len() as u64;
            let meta = ChunkMeta {
                day,
                offset,
                len,
                generation: self.generation,
                min_ts,
                max_ts,
                count: part.len() as u32,
                stats,
            };
            let at = st.chunks.partition_point(|c| (c.min_ts, c.max_ts) <= (min_ts, max_ts));
            st.chunks.insert(at, meta);
        }
        Ok(())
    }

    /// Compresses every head into chunks (not yet synced).
    pub fn flush_all(&mut self) -> Result<(), HistorianError> {
        let keys: Vec<SeriesKey> = self
            .series
            .iter()
            .filter(|(_, s)| !s.head.is_empty() || !s.late.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.flush_one(&k, false)?;
            self.flush_one(&k, true)?;
        }
        self.head_samples = 0;
        Ok(())
    }

    /// Checkpoint, step 1: flushes every head and makes all chunks durable. Afterwards, everything
    /// inserted so far is on disk; the caller then commits the checkpoint and calls [`Historian::committed`].
    pub fn make_durable(&mut self) -> Result<(), HistorianError> {
        self.flush_all()?;
        self.store.sync()
    }

    /// Checkpoint, step 2: the checkpoint of the current generation is committed; start the next.
    pub fn committed(&mut self) {
        self.generation += 1;
    }

    /// Drops whole day files older than `retention_ms` before `now_ms`; returns chunks dropped.
    pub fn enforce_retention(&mut self, now_ms: i64, retention_ms: i64) -> Result<u64, HistorianError> {
        let cutoff_day = (now_ms - retention_ms).div_euclid(DAY_MS);
        self.store.drop_days_before(cutoff_day)?;
        self.rollups.forget_days_before(cutoff_day);
        let mut dropped = 0u64;
        for st in self.series.values_mut() {
            let before = st.chunks.len();
            st.chunks.retain(|c| c.day >= cutoff_day);
            dropped += (before - st.chunks.len()) as u64;
        }
        self.stats.chunks_dropped += dropped;
        Ok(dropped)
    }

    /// Latest sample of each requested point (None for unknown points).
    pub fn latest(&self, keys: &[SeriesKey]) -> Vec<Option<Sample>> {
        keys.iter().map(|k| self.series.get(k).and_then(|s| s.latest.clone())).collect()
    }

    /// Every known series.
    pub fn series_keys(&self) -> Vec<SeriesKey> {
        let mut v: Vec<SeriesKey> = self.series.keys().cloned().collect();
        v.sort();
        v
    }

    fn chunk_samples(&self, c: &ChunkMeta) -> Result<Vec<Sample>, HistorianError> {
        Ok(decode_chunk(&self.store.read(c.day, c.offset, c.len)?)?.samples)
    }

    /// Samples of `key` with `from_ms <= ts < to_ms`, in time order, at most `limit`.
    pub fn raw(&self, key: &SeriesKey, from_ms: i64, to_ms: i64, limit: usize) -> Result<Vec<Sample>, HistorianError> {
        let Some(st) = self.series.get(key) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut runs = 0;
        for c in &st.chunks {
            if c.max_ts < from_ms || c.min_ts >= to_ms {
                continue;
            }
            out.extend(self.chunk_samples(c)?.into_iter().filter(|s| s.ts_ms >= from_ms && s.ts_ms < to_ms));
            runs += 1;
            if out.len() > limit.saturating_mul(4).max(1 << 20) && runs > 1 {
                return Err(HistorianError::Query(format!(
                    "range holds over {} samples; narrow it or use aggregates",
                    out.len()
                )));
            }
        }
        out.extend(st.late.iter().chain(&st.head).filter(|s| s.ts_ms >= from_ms && s.ts_ms < to_ms).cloned());
        out.sort_by_key(|s| s.ts_ms);
        out.truncate(limit);
        Ok(out)
    }

    /// Aggregates of `key` over `[from_ms, to_ms)` in buckets of `bucket_ms` (at most 100,000 buckets).
    pub fn aggregate(
        &self,
        key: &SeriesKey,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<Vec<Bucket>, HistorianError> {
        if bucket_ms <= 0 || to_ms <= from_ms {
            return Err(HistorianError::Query("need bucket_ms > 0 and to > from".into()));
        }
        let n = (to_ms - from_ms - 1) / bucket_ms + 1;
        if n > 100_000 {
            return Err(HistorianError::Query(format!("{n} buckets; at most 100000")));
        }
        let mut buckets = vec![Stats::default(); n as usize];
        let idx = |ts: i64| ((ts - from_ms) / bucket_ms) as usize;
        let add = |s: &Sample, buckets: &mut Vec<Stats>| {
            if s.ts_ms >= from_ms
                && s.ts_ms < to_ms
                && let Some(v) = aggregable(s)
            {
                buckets[idx(s.ts_ms)].add(s.ts_ms, v);
            }
        };
        if let Some(st) = self.series.get(key) {
            for c in &st.chunks {
                if c.max_ts < from_ms || c.min_ts >= to_ms {
                    continue;
                }
                let fits = |first: i64, last: i64| first >= from_ms && last < to_ms && idx(first) == idx(last);
                if fits(c.min_ts, c.max_ts) {
                    buckets[idx(c.min_ts)].merge(&c.stats);
                    continue;
                }
                // Roll-ups that fall in one bucket are merged whole; the samples of the others
                // (range edges, buckets not a multiple of the window) are decoded.
                let (rollups, mut samples) = match self.rollups.get((c.day, c.offset)) {
                    Some(r) => (r, None),
                    None => {
                        let body = self.store.read(c.day, c.offset, c.len)?;
                        let stored = read_rollups(&body)?;
                        let samples = decode_chunk(&body)?.samples;
                        let r: Rollups = if stored.is_empty() { rollups_of(&samples).into() } else { stored.into() };
                        if !r.is_empty() {
                            self.rollups.put((c.day, c.offset), r.clone());
                        }
                        (r, Some(samples))
                    }
                };
                let mut merged = Vec::new();
                for (start, r) in rollups.iter() {
                    if fits(r.first_ts, r.last_ts) {
                        buckets[idx(r.first_ts)].merge(r);
                        merged.push(*start);
                    }
                }
                let all_merged = !rollups.is_empty() && merged.len() == rollups.len();
                if c.stats.count > 0 && !all_merged {
                    let samples = match samples.take() {
                        Some(s) => s,
                        None => self.chunk_samples(c)?,
                    };
                    for s in samples {
                        if merged.binary_search(&rollup_start(s.ts_ms)).is_err() {
                            add(&s, &mut buckets);
                        }
                    }
                }
            }
            for s in st.late.iter().chain(&st.head) {
                add(s, &mut buckets);
            }
        }
        Ok(buckets
            .into_iter()
            .enumerate()
            .map(|(i, stats)| Bucket { start_ms: from_ms + i as i64 * bucket_ms, stddev: stats.stddev(), stats })
            .collect())
    }

    /// Counters.
    pub fn stats(&self) -> HistorianStats {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        HistorianStats {
            rollup_hits: self.rollups.hits.load(relaxed),
            rollup_misses: self.rollups.misses.load(relaxed),
            rollup_cached_chunks: self.rollups.len() as u64,
            ..self.stats
        }
    }

    /// Samples held in heads (not yet in chunks).
    pub fn head_samples(&self) -> usize {
        self.head_samples
    }

    /// Bytes of chunk files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.store.disk_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vigil_common::{ClockQuality, Quality, Value};

    fn key(p: &str) -> SeriesKey {
        SeriesKey { gateway: GatewayId::new("gw1").unwrap(), point: PointId::new(p).unwrap() }
    }

    fn sample(ts: i64, v: f64, q: Quality) -> Sample {
        Sample { ts_ms: ts, value: Value::F64(v), quality: q, clock: ClockQuality::NTP_SYNCED }
    }

    fn value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>().prop_map(Value::F64),
            (-100_000i64..100_000).prop_map(|k| Value::F64(k as f64 / 100.0)),
            any::<i64>().prop_map(Value::I64),
            any::<bool>().prop_map(Value::Bool),
            "[a-z]{0,12}".prop_map(Value::Text),
        ]
    }

    proptest! {
        #[test]
        fn chunks_round_trip_bit_exactly(
            start in -1_000_000_000_000i64..2_000_000_000_000,
            steps in proptest::collection::vec((prop_oneof![0i64..100_000, 990i64..1010, Just(1000i64)], value_strategy(), prop_oneof![Just(Quality::GOOD), Just(Quality::BAD_TIMEOUT), Just(Quality::UNCERTAIN)]), 1..300),
            generation in any::<u64>(),
        ) {
            let mut ts = start;
            let samples: Vec<Sample> = steps.into_iter().map(|(d, v, q)| { ts += d; Sample { ts_ms: ts, value: v, quality: q, clock: ClockQuality::NTP_SYNCED } }).collect();
            let k = key("TK1.LT");
            let (body, stats) = encode_chunk(&k, generation, &samples).unwrap();
            let chunk = decode_chunk(&body).unwrap();
            prop_assert_eq!(&chunk.key, &k);
            prop_assert_eq!(chunk.generation, generation);
            prop_assert_eq!(chunk.samples.len(), samples.len());
            for (a, b) in chunk.samples.iter().zip(&samples) {
                prop_assert_eq!(a.ts_ms, b.ts_ms);
                prop_assert_eq!(a.quality, b.quality);
                match (&a.value, &b.value) {
                    (Value::F64(x), Value::F64(y)) => prop_assert_eq!(x.to_bits(), y.to_bits()),
                    (x, y) => prop_assert_eq!(x, y),
                }
            }
            let (_, _, _, _, _, hstats, ..) = decode_header(&body).unwrap();
            prop_assert_eq!(hstats.count, stats.count);
            // Every truncation fails cleanly, never panics.
            for cut in [0, body.len() / 3, body.len() / 2, body.len().saturating_sub(1)] {
                let _ = decode_chunk(&body[..cut]);
            }
        }

        #[test]
        fn garbage_chunks_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_chunk(&bytes);
        }
    }

    #[test]
    fn late_polls_are_stored_on_a_grid_when_that_is_smaller() {
        let mut rng = 7u64;
        let samples: Vec<Sample> = (0..2048)
            .map(|i| {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                sample(1_795_000_000_000 + i * 1000 + (rng >> 59) as i64, (i % 7) as f64 / 10.0, Quality::GOOD)
            })
            .collect();
        let k = key("TK1.LT");
        let (body, _) = encode_chunk(&k, 1, &samples).unwrap();
        let plain = encode_body(&samples, samples[0].ts_ms, None).unwrap();
        assert!(grid(&samples).is_some());
        // At least 2 bits per sample saved (9-bit delta-of-deltas become 1 bit + 5-bit residuals).
        let (.., bits) = decode_header(&body).unwrap();
        assert!(bits.len() + 2048 * 2 / 8 < plain.len(), "grid {} vs plain {}", bits.len(), plain.len());
        assert_eq!(decode_chunk(&body).unwrap().samples, samples);
        // A gap of a day in the middle: residuals too wide, the plain codec is used and still exact.
        let mut gappy = samples.clone();
        for s in &mut gappy[1000..] {
            s.ts_ms += 86_400_000;
        }
        assert!(grid(&gappy).is_none());
        assert_eq!(decode_chunk(&encode_chunk(&k, 1, &gappy).unwrap().0).unwrap().samples, gappy);
    }

    /// Brute-force aggregates over a plain list.
    fn brute(samples: &[Sample], from: i64, to: i64, bucket: i64) -> Vec<(u64, f64, f64, f64, f64, f64, f64)> {
        let n = ((to - from - 1) / bucket + 1) as usize;
        let mut per: Vec<Vec<(i64, f64)>> = vec![Vec::new(); n];
        for s in samples {
            if s.ts_ms >= from
                && s.ts_ms < to
                && s.quality.severity() != Severity::Bad
                && let Some(v) = s.value.as_f64()
            {
                per[((s.ts_ms - from) / bucket) as usize].push((s.ts_ms, v));
            }
        }
        per.into_iter()
            .map(|mut vs| {
                if vs.is_empty() {
                    return (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
                }
                vs.sort_by_key(|x| x.0);
                let c = vs.len() as f64;
                let mean = vs.iter().map(|x| x.1).sum::<f64>() / c;
                let var = vs.iter().map(|x| (x.1 - mean).powi(2)).sum::<f64>() / c;
                let min = vs.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
                let max = vs.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                // first: earliest ts (first arrival among equal ts); last: latest ts (last arrival).
                let first = vs[0].1;
                let last = vs[vs.len() - 1].1;
                (vs.len() as u64, min, max, mean, var.sqrt(), first, last)
            })
            .collect()
    }

    #[test]
    fn queries_match_brute_force_with_late_data_and_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("TK101.TT1");
        let mut all = Vec::new();
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let t0 = 1_795_000_000_000i64;
        {
            let store = FileChunkStore::open(dir.path()).unwrap();
            let mut h = Historian::open(Box::new(store), 0, 1_000_000).unwrap();
            // Live data at 1 s with unique timestamps, in batches; every 7th batch arrives late
            // (backfill after an outage), some samples bad.
            let mut batches: Vec<Vec<Sample>> = Vec::new();
            for b in 0..40 {
                let batch: Vec<Sample> = (0..250)
                    .map(|i| {
                        let ts = t0 + (b * 250 + i) * 1000 + (next() % 500) as i64;
                        let q = if next() % 50 == 0 { Quality::BAD_TIMEOUT } else { Quality::GOOD };
                        sample(ts, ((next() % 10_000) as f64) / 10.0, q)
                    })
                    .collect();
                batches.push(batch);
            }
            let (late, live): (Vec<_>, Vec<_>) = batches.into_iter().enumerate().partition(|(i, _)| i % 7 == 3);
            for (_, b) in live.iter().chain(late.iter()) {
                h.insert(&k.gateway, &k.point, b).unwrap();
                all.extend(b.iter().cloned());
            }
            assert!(h.stats().late_samples > 0);
            // Half the data becomes durable chunks, the rest stays in heads for the first checks.
            h.make_durable().unwrap();
            h.committed();
            let extra: Vec<Sample> =
                (0..300).map(|i| sample(t0 + 10_000_000 + i * 1000, i as f64, Quality::GOOD)).collect();
            h.insert(&k.gateway, &k.point, &extra).unwrap();
            all.extend(extra);
            check(&h, &k, &all, t0);
            h.make_durable().unwrap();
            h.committed();
            check(&h, &k, &all, t0);
        }
        // Reopen with generation 2 committed: everything is back.
        let store = FileChunkStore::open(dir.path()).unwrap();
        let h = Historian::open(Box::new(store), 2, 1_000_000).unwrap();
        check(&h, &k, &all, t0);
        assert_eq!(h.latest(std::slice::from_ref(&k))[0].as_ref().map(|s| s.ts_ms), all.iter().map(|s| s.ts_ms).max());
    }

    fn check(h: &Historian, k: &SeriesKey, all: &[Sample], t0: i64) {
        let mut sorted = all.to_vec();
        sorted.sort_by_key(|s| s.ts_ms);
        // Windows aligned to the roll-ups (merged from them) and not aligned (decoded), mixed.
        let t0r = rollup_start(t0);
        for (from, to, bucket) in [
            (t0r, t0r + 11_100_000, ROLLUP_MS),
            (t0r + 2 * ROLLUP_MS, t0r + 7_200_000, 3 * ROLLUP_MS),
            (t0r - ROLLUP_MS, t0r + 3_600_000 + 12_345, 2 * ROLLUP_MS),
            (t0, t0 + 11_000_000, 60_000),
            (t0 - 5000, t0 + 3_333_333, 777_777),
            (t0 + 1_234_567, t0 + 1_300_000, 1000),
        ] {
            let got = h.aggregate(k, from, to, bucket).unwrap();
            let want = brute(all, from, to, bucket);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.stats.count, w.0, "count in bucket {}", g.start_ms);
                if w.0 == 0 {
                    continue;
                }
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
                assert!(close(g.stats.min, w.1) && close(g.stats.max, w.2), "min/max {g:?} {w:?}");
                assert!(close(g.stats.mean, w.3) && (g.stddev - w.4).abs() < 1e-6, "avg/stddev {g:?} {w:?}");
                assert!(close(g.stats.first, w.5) && close(g.stats.last, w.6), "first/last {g:?} {w:?}");
            }
            let raw = h.raw(k, from, to, usize::MAX).unwrap();
            let want_raw: Vec<&Sample> = sorted.iter().filter(|s| s.ts_ms >= from && s.ts_ms < to).collect();
            assert_eq!(raw.len(), want_raw.len());
            for (a, b) in raw.iter().zip(want_raw) {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn dense_chunks_get_rollups_that_sum_to_the_chunk_and_slow_ones_none() {
        let k = key("TK101.LT1");
        let t0 = 1_795_000_000_000i64;
        let dense: Vec<Sample> = (0..2048).map(|i| sample(t0 + i * 1000, (i % 97) as f64, Quality::GOOD)).collect();
        let (_, stats) = encode_chunk(&k, 1, &dense).unwrap();
        let rollups = rollups_of(&dense);
        assert_eq!(rollups.len() as i64, (rollup_start(t0 + 2047 * 1000) - rollup_start(t0)) / ROLLUP_MS + 1);
        let mut sum = Stats::default();
        for (start, r) in &rollups {
            assert_eq!(*start, rollup_start(r.first_ts));
            assert_eq!(rollup_start(r.last_ts), *start);
            sum.merge(r);
        }
        assert_eq!(sum.count, stats.count);
        assert!((sum.mean - stats.mean).abs() < 1e-9 && (sum.m2 - stats.m2).abs() < 1e-6);
        let slow: Vec<Sample> = (0..2048).map(|i| sample(t0 + i * 60_000, 1.0, Quality::GOOD)).collect();
        assert!(rollups_of(&slow).is_empty());
    }

    #[test]
    fn chunks_with_stored_rollups_still_decode_and_aggregate() {
        let k = key("TK101.LT1");
        let t0 = 1_795_000_000_000i64;
        let samples: Vec<Sample> = (0..2048).map(|i| sample(t0 + i * 1000, i as f64, Quality::GOOD)).collect();
        let (v1, _) = encode_chunk(&k, 1, &samples).unwrap();
        // The development build's layout: the same header, then the roll-up count and roll-ups.
        let (.., bits) = decode_header(&v1).unwrap();
        let header_len = v1.len() - bits.len();
        let rollups = rollups_of(&samples);
        let mut v2 = b"VC2".to_vec();
        v2.extend_from_slice(&v1[3..header_len]);
        v2.extend_from_slice(&(rollups.len() as u16).to_le_bytes());
        for (start, r) in &rollups {
            v2.extend_from_slice(&start.to_le_bytes());
            put_stats(&mut v2, r);
        }
        v2.extend_from_slice(bits);
        assert_eq!(decode_chunk(&v2).unwrap().samples, samples);
        assert_eq!(read_rollups(&v2).unwrap(), rollups);
        assert!(read_rollups(&v1).unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = FileChunkStore::open(dir.path()).unwrap();
            store.append(t0.div_euclid(DAY_MS), &v2).unwrap();
            store.sync().unwrap();
        }
        let h = Historian::open(Box::new(FileChunkStore::open(dir.path()).unwrap()), 1, 1_000_000).unwrap();
        let from = rollup_start(t0);
        let got = h.aggregate(&k, from, from + 3 * 3_600_000, ROLLUP_MS).unwrap();
        let want = brute(&samples, from, from + 3 * 3_600_000, ROLLUP_MS);
        assert_eq!(got.iter().map(|b| b.stats.count).collect::<Vec<_>>(), want.iter().map(|w| w.0).collect::<Vec<_>>());
    }

    #[test]
    fn aligned_aggregates_use_cached_rollups_from_write_or_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("TK101.LT1");
        let t0 = rollup_start(1_795_000_000_000i64);
        let samples: Vec<Sample> = (0..20_000).map(|i| sample(t0 + i * 1000, (i % 13) as f64, Quality::GOOD)).collect();
        let day = |h: &Historian| h.aggregate(&k, t0, t0 + DAY_MS, ROLLUP_MS).unwrap();
        let first = {
            let mut h = Historian::open(Box::new(FileChunkStore::open(dir.path()).unwrap()), 0, 1_000_000).unwrap();
            h.insert(&k.gateway, &k.point, &samples).unwrap();
            h.make_durable().unwrap();
            h.committed();
            let chunks = h.stats().chunks_written;
            assert_eq!(h.stats().rollup_cached_chunks, chunks, "written chunks' roll-ups are cached");
            let got = day(&h);
            assert_eq!((h.stats().rollup_misses, h.stats().rollup_hits), (0, chunks));
            got
        };
        // Reopened: the first aggregate decodes and caches, the second only merges.
        let h = Historian::open(Box::new(FileChunkStore::open(dir.path()).unwrap()), 1, 1_000_000).unwrap();
        assert_eq!(day(&h), first);
        let misses = h.stats().rollup_misses;
        assert!(misses > 0 && h.stats().rollup_hits == 0);
        assert_eq!(day(&h), first);
        assert_eq!((h.stats().rollup_misses, h.stats().rollup_hits), (misses, misses));
        let want = brute(&samples, t0, t0 + DAY_MS, ROLLUP_MS);
        for (g, w) in first.iter().zip(&want) {
            assert_eq!(g.stats.count, w.0);
            if w.0 > 0 {
                assert!((g.stats.mean - w.3).abs() < 1e-9 && g.stats.first == w.5 && g.stats.last == w.6);
            }
        }
    }

    #[test]
    fn chunks_past_the_committed_checkpoint_are_cut_and_retention_drops_old_days() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("P1");
        let t0 = 100 * DAY_MS;
        {
            let mut h = Historian::open(Box::new(FileChunkStore::open(dir.path()).unwrap()), 0, 1_000_000).unwrap();
            h.insert(&k.gateway, &k.point, &[sample(t0, 1.0, Quality::GOOD)]).unwrap();
            h.make_durable().unwrap();
            h.committed(); // generation 1 committed
            h.insert(&k.gateway, &k.point, &[sample(t0 + 1, 2.0, Quality::GOOD)]).unwrap();
            h.make_durable().unwrap(); // generation 2 written but never committed (crash)
        }
        let mut h = Historian::open(Box::new(FileChunkStore::open(dir.path()).unwrap()), 1, 1_000_000).unwrap();
        assert_eq!(h.raw(&k, 0, i64::MAX, 10).unwrap().len(), 1, "uncommitted chunk cut");
        h.insert(&k.gateway, &k.point, &[sample(t0 + 3 * DAY_MS, 3.0, Quality::GOOD)]).unwrap();
        h.make_durable().unwrap();
        let dropped = h.enforce_retention(t0 + 3 * DAY_MS, 2 * DAY_MS).unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(
            h.raw(&k, 0, i64::MAX, 10).unwrap().iter().map(|s| s.ts_ms).collect::<Vec<_>>(),
            vec![t0 + 3 * DAY_MS]
        );
    }

    #[test]
    fn a_compressed_point_stores_fewer_samples_within_its_deviation_and_keeps_limit_crossings() {
        use crate::swinging_door::{DoorPolicy, DoorRule};
        let dir = tempfile::tempdir().unwrap();
        let (lossy, lossless) = (key("LT1"), key("TT1"));
        let policy = DoorPolicy::new(vec![DoorRule { points: vec!["gw1/LT*".into()], deviation: 0.05 }]);
        policy.set_limits("gw1/LT1", vec![80.0]);
        let mut h = Historian::open(Box::new(FileChunkStore::open(dir.path()).unwrap()), 0, 1_000_000).unwrap();
        h.set_compression(Arc::new(policy));
        // A slow ramp with +-0.02 of noise that crosses 80.0 once.
        let samples: Vec<Sample> = (0..5000)
            .map(|i| sample(1_000 * i, 70.0 + i as f64 * 0.004 + if i % 2 == 0 { 0.02 } else { -0.02 }, Quality::GOOD))
            .collect();
        for k in [&lossy, &lossless] {
            h.insert(&k.gateway, &k.point, &samples).unwrap();
        }
        h.make_durable().unwrap();
        let all = h.raw(&lossless, 0, i64::MAX, 10_000).unwrap();
        assert_eq!(all, samples, "a point without a rule stays lossless");
        let kept = h.raw(&lossy, 0, i64::MAX, 10_000).unwrap();
        assert!(kept.len() < samples.len() / 10, "kept {} of {}", kept.len(), samples.len());
        assert_eq!(h.stats().samples_compressed_away, (samples.len() - kept.len()) as u64);
        let crossing =
            samples.windows(2).position(|w| w[0].value.as_f64() < Some(80.0) && w[1].value.as_f64() >= Some(80.0));
        let crossing = crossing.unwrap();
        for s in &samples[crossing..=crossing + 1] {
            assert!(kept.contains(s), "limit crossing at {} dropped", s.ts_ms);
        }
        for s in &samples {
            let after = kept.partition_point(|k| k.ts_ms <= s.ts_ms);
            if after == 0 || after == kept.len() {
                continue;
            }
            let (a, b) = (&kept[after - 1], &kept[after]);
            let (va, vb) = (a.value.as_f64().unwrap(), b.value.as_f64().unwrap());
            let interp = va + (vb - va) * (s.ts_ms - a.ts_ms) as f64 / (b.ts_ms - a.ts_ms) as f64;
            assert!((interp - s.value.as_f64().unwrap()).abs() <= 0.05 + 1e-9, "sample at {} off", s.ts_ms);
        }
    }
}
