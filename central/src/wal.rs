//! Write-ahead log: accepted signed batches are appended here, fsynced in groups, and only then
//! acknowledged. Replayed on start from the last checkpoint; segments before it are deleted.
//!
//! A log is a directory of segment files `wal-{index:016x}.log`. Each record is
//! `len: u32 LE | crc32c: u32 LE | payload (len bytes)`, the CRC over the payload. A record that is
//! cut short or fails its CRC ends the segment (a torn tail from a crash): the last segment is
//! truncated there on open; in an older segment the remainder is counted as corrupt and skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Largest record payload accepted (a batch envelope is at most 2 MiB, plus its small header).
pub const MAX_RECORD: usize = 4 * 1024 * 1024;
/// Record header length.
pub const RECORD_HEADER: usize = 8;
/// A segment is closed and a new one started once it grows past this size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Why the log failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O operation failed.
    #[error("WAL {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A record larger than [`MAX_RECORD`].
    #[error("WAL record of {0} bytes exceeds the maximum of {MAX_RECORD}")]
    TooLarge(usize),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_owned(), source }
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}
static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32C (Castagnoli) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// Appends one framed record to `out`.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) -> Result<(), WalError> {
    if payload.len() > MAX_RECORD {
        return Err(WalError::TooLarge(payload.len()));
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// How a scan of framed records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belonged to a valid record.
    Clean,
    /// The data ends inside a record header or payload.
    Truncated,
    /// A record's CRC does not match, or its length is impossible.
    Corrupt,
}

/// Splits `data` into record payloads; returns them, the byte length of the valid prefix and how the
/// scan ended. Never panics on any input.
pub fn scan_records(data: &[u8]) -> (Vec<&[u8]>, usize, ScanEnd) {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let rest = &data[at..];
        if rest.is_empty() {
            return (out, at, ScanEnd::Clean);
        }
        if rest.len() < RECORD_HEADER {
            return (out, at, ScanEnd::Truncated);
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_RECORD {
            return (out, at, ScanEnd::Corrupt);
        }
        if rest.len() < RECORD_HEADER + len {
            return (out, at, ScanEnd::Truncated);
        }
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
        if crc32c(payload) != crc {
            return (out, at, ScanEnd::Corrupt);
        }
        out.push(payload);
        at += RECORD_HEADER + len;
    }
}

/// Counters the metrics endpoint exports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended since start.
    pub records: u64,
    /// Bytes appended since start (framing included).
    pub bytes: u64,
    /// fsyncs (one per group commit).
    pub syncs: u64,
    /// Records recovered by replay at open.
    pub replayed: u64,
    /// Bytes cut from a torn tail at open.
    pub torn_bytes: u64,
    /// Segments with a corrupt record in their middle (rest of the segment skipped).
    pub corrupt_segments: u64,
}

/// The write-ahead log. Not shared: the ingest loop owns it, which makes group commit explicit
/// ([`Wal::append_group`] writes many records with one fsync).
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    index: u64,
    file: BufWriter<File>,
    len: u64,
    stats: WalStats,
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("wal-{index:016x}.log"))
}

/// The indices of the segments in `dir`, ascending.
fn segments(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(hex) = name.strip_prefix("wal-").and_then(|n| n.strip_suffix(".log"))
            && let Ok(i) = u64::from_str_radix(hex, 16)
        {
            out.push(i);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl Wal {
    /// Opens (creating) the log in `dir`, replaying every record in segments numbered `from` or later
    /// through `replay` (segment index, payload), oldest first. Segments before `from` are deleted.
    /// A torn tail of the last segment is truncated. Appends then go to a fresh segment.
    pub fn open(
        dir: &Path,
        from: u64,
        segment_bytes: u64,
        mut replay: impl FnMut(u64, &[u8]),
    ) -> Result<Wal, WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut stats = WalStats::default();
        let all = segments(dir)?;
        let last = all.last().copied();
        for &i in &all {
            let path = segment_path(dir, i);
            if i < from {
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let mut data = Vec::new();
            File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(io_err(&path))?;
            let (records, valid, end) = scan_records(&data);
            for r in &records {
                replay(i, r);
            }
            stats.replayed += records.len() as u64;
            match end {
                ScanEnd::Clean => {}
                ScanEnd::Truncated | ScanEnd::Corrupt if Some(i) == last => {
                    tracing::warn!(segment = %path.display(), valid, cut = data.len() - valid, ?end, "WAL: truncating torn tail");
                    stats.torn_bytes += (data.len() - valid) as u64;
                    let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                    f.set_len(valid as u64).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                }
                ScanEnd::Truncated | ScanEnd::Corrupt => {
                    tracing::error!(segment = %path.display(), valid, lost = data.len() - valid, ?end, "WAL: corrupt record inside an older segment; rest of segment skipped");
                    stats.corrupt_segments += 1;
                }
            }
        }
        let index = last.map_or(from, |l| (l + 1).max(from));
        let (file, len) = Self::create_segment(dir, index)?;
        Ok(Wal { dir: dir.to_owned(), segment_bytes, index, file, len, stats })
    }

    fn create_segment(dir: &Path, index: u64) -> Result<(BufWriter<File>, u64), WalError> {
        let path = segment_path(dir, index);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        sync_dir(dir)?;
        Ok((BufWriter::with_capacity(1 << 20, file), len))
    }

    /// Appends `records` and makes them durable with one fsync (group commit). When this returns
    /// `Ok`, every record survives a crash or power cut.
    pub fn append_group<'a>(&mut self, records: impl IntoIterator<Item = &'a [u8]>) -> Result<(), WalError> {
        let path = segment_path(&self.dir, self.index);
        let mut buf = Vec::new();
        let mut n = 0u64;
        for r in records {
            buf.clear();
            encode_record(r, &mut buf)?;
            self.file.write_all(&buf).map_err(io_err(&path))?;
            self.len += buf.len() as u64;
            self.stats.bytes += buf.len() as u64;
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        self.file.flush().map_err(io_err(&path))?;
        self.file.get_ref().sync_data().map_err(io_err(&path))?;
        self.stats.records += n;
        self.stats.syncs += 1;
        if self.len >= self.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Closes the current segment and starts the next; returns the new segment's index. Everything
    /// appended before lies in segments below it.
    pub fn rotate(&mut self) -> Result<u64, WalError> {
        let path = segment_path(&self.dir, self.index);
        self.file.flush().map_err(io_err(&path))?;
        self.file.get_ref().sync_data().map_err(io_err(&path))?;
        self.index += 1;
        let (file, len) = Self::create_segment(&self.dir, self.index)?;
        self.file = file;
        self.len = len;
        Ok(self.index)
    }

    /// Deletes every segment below `index` (call after a checkpoint made their content durable elsewhere).
    pub fn truncate_before(&mut self, index: u64) -> Result<(), WalError> {
        for i in segments(&self.dir)? {
            if i < index {
                let path = segment_path(&self.dir, i);
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// The segment appends currently go to.
    pub fn current_segment(&self) -> u64 {
        self.index
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        self.stats
    }

    /// Bytes currently on disk in all segments.
    pub fn disk_bytes(&self) -> u64 {
        segments(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| fs::metadata(segment_path(&self.dir, i)).ok())
            .map(|m| m.len())
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    fn reopen(dir: &Path, from: u64) -> (Wal, Vec<Vec<u8>>) {
        let mut got = Vec::new();
        let wal = Wal::open(dir, from, 1 << 10, |_, r| got.push(r.to_vec())).unwrap();
        (wal, got)
    }

    #[test]
    fn records_survive_reopen_rotation_and_torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, got) = reopen(dir.path(), 0);
        assert!(got.is_empty());
        let recs: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) * 7]).collect();
        for chunk in recs.chunks(7) {
            wal.append_group(chunk.iter().map(Vec::as_slice)).unwrap();
        }
        assert!(wal.current_segment() > 1, "small segments rotate");
        drop(wal);
        let (wal, got) = reopen(dir.path(), 0);
        assert_eq!(got, recs);
        // Tear the last segment that has data: append half a record.
        let last = segments(dir.path()).unwrap().into_iter().last().unwrap();
        drop(wal);
        let path = segment_path(dir.path(), last);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut torn = Vec::new();
        encode_record(&[9; 100], &mut torn).unwrap();
        f.write_all(&torn[..50]).unwrap();
        drop(f);
        let mut got = Vec::new();
        let wal = Wal::open(dir.path(), 0, 1 << 10, |_, r| got.push(r.to_vec())).unwrap();
        assert_eq!(got, recs);
        assert_eq!(wal.stats().torn_bytes, 50);
        // Checkpoint: everything before the current segment is dropped.
        let mut wal = wal;
        let cut = wal.rotate().unwrap();
        wal.append_group([b"after".as_slice()]).unwrap();
        wal.truncate_before(cut).unwrap();
        drop(wal);
        let (_, got) = reopen(dir.path(), cut);
        assert_eq!(got, vec![b"after".to_vec()]);
    }

    proptest! {
        #[test]
        fn framing_round_trips(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut buf = Vec::new();
            for r in &records { encode_record(r, &mut buf).unwrap(); }
            let (got, valid, end) = scan_records(&buf);
            prop_assert_eq!(end, ScanEnd::Clean);
            prop_assert_eq!(valid, buf.len());
            prop_assert_eq!(got.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), records);
        }

        #[test]
        fn any_truncation_or_bit_flip_keeps_a_valid_prefix(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 1..10),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut buf = Vec::new();
            let mut ends = vec![0usize];
            for r in &records { encode_record(r, &mut buf).unwrap(); ends.push(buf.len()); }
            // Truncation: exactly the records wholly before the cut come back.
            let c = cut.index(buf.len());
            let (got, valid, end) = scan_records(&buf[..c]);
            let whole = ends.iter().filter(|&&e| e <= c).count() - 1;
            prop_assert_eq!(got.len(), whole);
            prop_assert_eq!(valid, ends[whole]);
            prop_assert_eq!(end == ScanEnd::Clean, c == ends[whole]);
            // Bit flip: the damaged record and everything after it are refused, nothing before is.
            let at = flip.index(buf.len());
            let mut bad = buf.clone();
            bad[at] ^= 1 << bit;
            let (got, _, end) = scan_records(&bad);
            let damaged = ends.iter().filter(|&&e| e <= at).count() - 1;
            prop_assert_eq!(got.len(), damaged, "the damaged record must be refused, the ones before kept");
            prop_assert!(end != ScanEnd::Clean);
            for (g, r) in got.iter().zip(&records) { prop_assert_eq!(*g, r.as_slice()); }
        }
    }
}
