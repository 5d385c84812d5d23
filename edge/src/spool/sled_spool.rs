//! The spool on sled: one tree per priority class keyed by big-endian sequence number, and a meta
//! tree with the epoch, the next sequence number and the drop counters, all changed together in one
//! transaction and flushed before an append returns.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional as _};
use vigil_common::{DropCounters, Priority, SeqRange};

use super::{
    ClassStats, Evicted, OpenOutcome, Spool, SpoolError, SpoolStats, StoredBatch, class_index, eviction_order,
};

const HEADER: usize = 16;
const KEY_EPOCH: &[u8] = b"epoch";
const KEY_NEXT_SEQ: &[u8] = b"next_seq";
const KEY_DROPS: &[u8] = b"drops";
const TREE_NAMES: [&str; 3] = ["class-alarm-event", "class-live", "class-backfill"];
/// How long an open waits for an instance closed just before to let go of the spool's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How often the lock is looked at meanwhile.
const LOCK_POLL: Duration = Duration::from_millis(5);

/// Why one attempt to open the spool failed.
enum OpenFailure {
    /// Another instance holds the lock: nothing is known about the spool, it must not be touched.
    Locked,
    /// The spool is unusable (and why, and its epoch if readable): it is moved aside.
    Unusable(String, Option<u64>),
}

/// Whether another open instance holds sled's lock on the spool at `path` (an exclusive `flock`
/// on its `db` file; no file: nobody). The probe's own lock goes with its file handle at once.
fn lock_held(path: &Path) -> Result<bool, SpoolError> {
    let db = path.join("db");
    let probe_err =
        |e: std::io::Error| SpoolError::Db { path: path.to_owned(), message: format!("{}: {e}", db.display()) };
    let file = match std::fs::File::open(&db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(probe_err(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(probe_err(e)),
    }
}

/// A stored batch chosen to be dropped for the budget.
struct Victim {
    class: Priority,
    key: Vec<u8>,
    bytes: u64,
    samples: u32,
    events: u32,
}

/// The sled-backed spool.
pub struct SledSpool {
    path: PathBuf,
    db: sled::Db,
    trees: [sled::Tree; 3],
    meta: sled::Tree,
    epoch: u64,
    next_seq: u64,
    drops: DropCounters,
    classes: [ClassStats; 3],
    budget: u64,
    flushes: u64,
    flush_micros: u64,
    max_flush_micros: u64,
}

impl std::fmt::Debug for SledSpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledSpool").field("path", &self.path).field("epoch", &self.epoch).finish()
    }
}

fn encode_value(b: &StoredBatch) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + b.sealed.len());
    v.extend_from_slice(&b.samples.to_le_bytes());
    v.extend_from_slice(&b.events.to_le_bytes());
    v.extend_from_slice(&b.stored_ms.to_le_bytes());
    v.extend_from_slice(&b.sealed);
    v
}

fn decode_value(class: Priority, key: &[u8], value: &[u8]) -> Option<StoredBatch> {
    let seq = u64::from_be_bytes(key.try_into().ok()?);
    if value.len() < HEADER {
        return None;
    }
    Some(StoredBatch {
        seq,
        class,
        samples: u32::from_le_bytes(value[0..4].try_into().ok()?),
        events: u32::from_le_bytes(value[4..8].try_into().ok()?),
        stored_ms: i64::from_le_bytes(value[8..16].try_into().ok()?),
        sealed: value[HEADER..].to_vec(),
    })
}

fn read_u64(meta: &sled::Tree, key: &[u8]) -> Result<Option<u64>, String> {
    match meta.get(key).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(v) => {
            v.as_ref().try_into().map(|b| Some(u64::from_be_bytes(b))).map_err(|_| format!("meta {key:?} malformed"))
        }
    }
}

fn fresh_epoch() -> u64 {
    let mut b = [0u8; 8];
    // The epoch only has to differ from earlier ones; the clock is a fallback if the OS has no entropy.
    if getrandom::fill(&mut b).is_err() {
        return crate::spool::now_ms().unsigned_abs();
    }
    u64::from_le_bytes(b) >> 1
}

impl SledSpool {
    /// Opens the spool at `path`, creating it if absent. An unusable spool is moved aside to
    /// `<path>.corrupt-<ms>` and a fresh one with a new epoch is started; the outcome says so, and the
    /// caller must report it (spool-lost event). A spool whose lock another instance holds is waited
    /// for (up to 10 s), then refused ([`SpoolError::Locked`]), never moved aside.
    pub fn open(path: &Path, budget: u64) -> Result<(SledSpool, OpenOutcome), SpoolError> {
        Self::open_waiting(path, budget, LOCK_WAIT)
    }

    fn open_waiting(path: &Path, budget: u64, wait: Duration) -> Result<(SledSpool, OpenOutcome), SpoolError> {
        // Dropping the last handle of a sled 0.34 `Db` does not close its file at once: an IO
        // thread of sled's pool that wrote the last flush holds the file (and with it the lock)
        // until its job returns, a moment after the flush did. The agent reopens its spool in the
        // same process after every pushed configuration, so the lock is waited for here rather
        // than found taken, which sled reports like any other failure to open.
        let started = Instant::now();
        while lock_held(path)? {
            if started.elapsed() >= wait {
                return Err(SpoolError::Locked { path: path.to_owned(), waited_ms: wait.as_millis() as u64 });
            }
            std::thread::sleep(LOCK_POLL);
        }
        if started.elapsed() >= LOCK_POLL {
            tracing::info!(
                spool = %path.display(),
                waited_ms = started.elapsed().as_millis() as u64,
                "spool: waited for the previous instance to let go of its lock"
            );
        }
        let existed = path.exists();
        match Self::try_open(path, budget, existed) {
            Ok(spool) => Ok((spool, if existed { OpenOutcome::Resumed } else { OpenOutcome::Created })),
            // Taken by another process since the wait: its spool, not a broken one.
            Err(OpenFailure::Locked) => {
                Err(SpoolError::Locked { path: path.to_owned(), waited_ms: wait.as_millis() as u64 })
            }
            Err(OpenFailure::Unusable(reason, old_epoch)) => {
                let quarantined_to = PathBuf::from(format!("{}.corrupt-{}", path.display(), crate::spool::now_ms()));
                std::fs::rename(path, &quarantined_to)
                    .map_err(|source| SpoolError::Quarantine { path: path.to_owned(), source })?;
                tracing::error!(spool = %path.display(), %reason, to = %quarantined_to.display(), "spool unusable, moved aside; starting a new epoch");
                let spool = Self::try_open(path, budget, false).map_err(|e| match e {
                    OpenFailure::Locked => SpoolError::Locked { path: path.to_owned(), waited_ms: 0 },
                    OpenFailure::Unusable(message, _) => SpoolError::Db { path: path.to_owned(), message },
                })?;
                Ok((spool, OpenOutcome::Recovered { old_epoch, reason, quarantined_to }))
            }
        }
    }

    fn try_open(path: &Path, budget: u64, existed: bool) -> Result<SledSpool, OpenFailure> {
        let db = sled::Config::new().path(path).cache_capacity(8 * 1024 * 1024).flush_every_ms(Some(1000)).open();
        let db = match db {
            Ok(db) => db,
            // sled names a lock it could not take only in its message; the lock itself is the test.
            Err(_) if lock_held(path).unwrap_or(false) => return Err(OpenFailure::Locked),
            Err(e) => return Err(OpenFailure::Unusable(format!("cannot open: {e}"), None)),
        };
        Self::read(path, db, budget, existed).map_err(|(reason, epoch)| OpenFailure::Unusable(reason, epoch))
    }

    /// Reads the counters and the per-class figures of a freshly opened `db`.
    fn read(path: &Path, db: sled::Db, budget: u64, existed: bool) -> Result<SledSpool, (String, Option<u64>)> {
        let tree = |name: &str| db.open_tree(name).map_err(|e| (format!("cannot open tree {name}: {e}"), None));
        let trees = [tree(TREE_NAMES[0])?, tree(TREE_NAMES[1])?, tree(TREE_NAMES[2])?];
        let meta = tree("meta")?;
        let epoch = read_u64(&meta, KEY_EPOCH).map_err(|e| (e, None))?;
        let (epoch, next_seq, drops) = match epoch {
            Some(epoch) => {
                let next_seq = read_u64(&meta, KEY_NEXT_SEQ)
                    .map_err(|e| (e, Some(epoch)))?
                    .ok_or_else(|| ("meta next_seq missing".to_owned(), Some(epoch)))?;
                let drops = match meta.get(KEY_DROPS).map_err(|e| (e.to_string(), Some(epoch)))? {
                    Some(v) => postcard::from_bytes(&v).map_err(|e| (format!("meta drops: {e}"), Some(epoch)))?,
                    None => DropCounters::default(),
                };
                (epoch, next_seq, drops)
            }
            None => {
                if existed && trees.iter().any(|t| !t.is_empty()) {
                    return Err(("batches present but no epoch recorded".to_owned(), None));
                }
                let epoch = fresh_epoch();
                meta.insert(KEY_EPOCH, &epoch.to_be_bytes()).map_err(|e| (e.to_string(), None))?;
                meta.insert(KEY_NEXT_SEQ, &0u64.to_be_bytes()).map_err(|e| (e.to_string(), None))?;
                db.flush().map_err(|e| (e.to_string(), None))?;
                (epoch, 0, DropCounters::default())
            }
        };
        let mut classes = [ClassStats::default(); 3];
        for class in Priority::ALL {
            let i = class_index(class);
            for item in trees[i].iter() {
                let (k, v) = item.map_err(|e| (e.to_string(), Some(epoch)))?;
                let b = decode_value(class, &k, &v)
                    .ok_or_else(|| (format!("malformed entry in {}", TREE_NAMES[i]), Some(epoch)))?;
                if b.seq >= next_seq {
                    return Err((format!("batch {} at or above next_seq {next_seq}", b.seq), Some(epoch)));
                }
                classes[i].batches += 1;
                classes[i].bytes += v.len() as u64;
                classes[i].samples += u64::from(b.samples);
            }
        }
        Ok(SledSpool {
            path: path.to_owned(),
            db,
            trees,
            meta,
            epoch,
            next_seq,
            drops,
            classes,
            budget,
            flushes: 0,
            flush_micros: 0,
            max_flush_micros: 0,
        })
    }

    fn db_err(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Db { path: self.path.clone(), message: e.to_string() }
    }

    fn total_bytes(&self) -> u64 {
        self.classes.iter().map(|c| c.bytes).sum()
    }

    /// Picks the oldest batches to drop so `incoming` more bytes fit the budget.
    fn victims(&self, incoming: u64) -> Result<Vec<Victim>, SpoolError> {
        let mut excess = (self.total_bytes() + incoming).saturating_sub(self.budget);
        let mut out = Vec::new();
        for class in eviction_order() {
            if excess == 0 {
                break;
            }
            for item in self.trees[class_index(class)].iter() {
                let (k, v) = item.map_err(|e| self.db_err(e))?;
                let b = decode_value(class, &k, &v).ok_or_else(|| self.db_err("malformed entry"))?;
                out.push(Victim {
                    class,
                    key: k.to_vec(),
                    bytes: v.len() as u64,
                    samples: b.samples,
                    events: b.events,
                });
                excess = excess.saturating_sub(v.len() as u64);
                if excess == 0 {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn flush(&mut self) -> Result<(), SpoolError> {
        let start = Instant::now();
        self.db.flush().map_err(|e| self.db_err(e))?;
        let micros = start.elapsed().as_micros() as u64;
        self.flushes += 1;
        self.flush_micros += micros;
        self.max_flush_micros = self.max_flush_micros.max(micros);
        Ok(())
    }
}

impl Spool for SledSpool {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn drops(&self) -> DropCounters {
        self.drops
    }

    fn append(&mut self, batch: &StoredBatch) -> Result<Evicted, SpoolError> {
        if batch.seq != self.next_seq {
            return Err(self.db_err(format!("append of seq {} but next is {}", batch.seq, self.next_seq)));
        }
        let value = encode_value(batch);
        let size = value.len() as u64;
        if size > self.budget {
            return Err(SpoolError::TooLarge { size, budget: self.budget });
        }
        let victims = self.victims(size)?;
        let mut drops = self.drops;
        let mut evicted = Evicted::default();
        for class in Priority::ALL {
            let of_class: Vec<_> = victims.iter().filter(|v| v.class == class).collect();
            if of_class.is_empty() {
                continue;
            }
            let samples: u64 = of_class.iter().map(|v| u64::from(v.samples)).sum();
            let events: u64 = of_class.iter().map(|v| u64::from(v.events)).sum();
            let d = drops.class_mut(class);
            d.batches += of_class.len() as u64;
            d.samples += samples;
            d.events += events;
            evicted.per_class.push((class, of_class.len() as u64, samples, events));
        }
        let drops_bytes = postcard::to_allocvec(&drops).map_err(|e| self.db_err(e))?;
        let key = batch.seq.to_be_bytes();
        let next = (batch.seq + 1).to_be_bytes();
        let target = class_index(batch.class);
        let result: Result<(), TransactionError<()>> = (&self.trees[0], &self.trees[1], &self.trees[2], &self.meta)
            .transaction(|(t0, t1, t2, meta)| {
                let trees = [t0, t1, t2];
                for v in &victims {
                    trees[class_index(v.class)].remove(v.key.as_slice())?;
                }
                trees[target].insert(&key, value.as_slice())?;
                meta.insert(KEY_NEXT_SEQ, &next)?;
                meta.insert(KEY_DROPS, drops_bytes.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        result.map_err(|e| self.db_err(format!("{e:?}")))?;
        self.flush()?;
        for v in &victims {
            let c = &mut self.classes[class_index(v.class)];
            c.batches -= 1;
            c.bytes -= v.bytes;
            c.samples -= u64::from(v.samples);
        }
        let c = &mut self.classes[target];
        c.batches += 1;
        c.bytes += size;
        c.samples += u64::from(batch.samples);
        self.drops = drops;
        self.next_seq = batch.seq + 1;
        Ok(evicted)
    }

    fn remove(&mut self, range: SeqRange) -> Result<u64, SpoolError> {
        let (lo, hi) = (range.first.to_be_bytes(), range.last.to_be_bytes());
        let mut removed = 0;
        for class in Priority::ALL {
            let i = class_index(class);
            let mut batch = sled::Batch::default();
            let mut gone = ClassStats::default();
            for item in self.trees[i].range(lo..=hi) {
                let (k, v) = item.map_err(|e| self.db_err(e))?;
                if let Some(b) = decode_value(class, &k, &v) {
                    gone.batches += 1;
                    gone.bytes += v.len() as u64;
                    gone.samples += u64::from(b.samples);
                }
                batch.remove(k);
            }
            if gone.batches == 0 {
                continue;
            }
            // No flush: should a crash undo this delete, the batch is sent again and central
            // acknowledges the duplicate without storing it twice.
            self.trees[i].apply_batch(batch).map_err(|e| self.db_err(e))?;
            let c = &mut self.classes[i];
            c.batches -= gone.batches;
            c.bytes -= gone.bytes;
            c.samples -= gone.samples;
            removed += gone.batches;
        }
        Ok(removed)
    }

    fn pending(&self, class: Priority, after: Option<u64>, limit: usize) -> Result<Vec<StoredBatch>, SpoolError> {
        let tree = &self.trees[class_index(class)];
        let iter = match after {
            Some(seq) if seq == u64::MAX => return Ok(Vec::new()),
            Some(seq) => tree.range((seq + 1).to_be_bytes()..),
            None => tree.iter(),
        };
        iter.take(limit)
            .map(|item| {
                let (k, v) = item.map_err(|e| self.db_err(e))?;
                decode_value(class, &k, &v).ok_or_else(|| self.db_err("malformed entry"))
            })
            .collect()
    }

    fn get(&self, seq: u64) -> Result<Option<StoredBatch>, SpoolError> {
        for class in Priority::ALL {
            if let Some(v) = self.trees[class_index(class)].get(seq.to_be_bytes()).map_err(|e| self.db_err(e))? {
                return Ok(decode_value(class, &seq.to_be_bytes(), &v));
            }
        }
        Ok(None)
    }

    fn stats(&self) -> SpoolStats {
        let mut classes = self.classes;
        for class in Priority::ALL {
            let i = class_index(class);
            classes[i].oldest_stored_ms = self.trees[i]
                .first()
                .ok()
                .flatten()
                .and_then(|(k, v)| decode_value(class, &k, &v))
                .map(|b| b.stored_ms);
        }
        SpoolStats {
            epoch: self.epoch,
            next_seq: self.next_seq,
            classes,
            dropped: self.drops,
            flushes: self.flushes,
            flush_micros: self.flush_micros,
            max_flush_micros: self.max_flush_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64, class: Priority, size: usize) -> StoredBatch {
        StoredBatch {
            seq,
            class,
            samples: 10,
            events: u32::from(class == Priority::AlarmEvent),
            stored_ms: 1000 + seq as i64,
            sealed: vec![seq as u8; size],
        }
    }

    #[test]
    fn batches_survive_reopen_and_are_removed_only_by_ack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (mut s, outcome) = SledSpool::open(&path, 1 << 20).unwrap();
        assert_eq!(outcome, OpenOutcome::Created);
        let epoch = s.epoch();
        s.append(&stored(0, Priority::Live, 100)).unwrap();
        s.append(&stored(1, Priority::AlarmEvent, 100)).unwrap();
        s.append(&stored(2, Priority::Live, 100)).unwrap();
        drop(s);
        let (mut s, outcome) = SledSpool::open(&path, 1 << 20).unwrap();
        assert_eq!(outcome, OpenOutcome::Resumed);
        assert_eq!((s.epoch(), s.next_seq()), (epoch, 3));
        let live: Vec<u64> = s.pending(Priority::Live, None, 10).unwrap().iter().map(|b| b.seq).collect();
        assert_eq!(live, vec![0, 2]);
        assert_eq!(s.pending(Priority::Live, Some(0), 10).unwrap()[0].seq, 2);
        assert_eq!(s.get(1).unwrap().unwrap().class, Priority::AlarmEvent);
        assert_eq!(s.remove(SeqRange { first: 0, last: 1 }).unwrap(), 2);
        assert_eq!(s.stats().classes[1].batches, 1);
        assert!(s.append(&stored(2, Priority::Live, 1)).is_err(), "sequence numbers never repeat");
    }

    #[test]
    fn over_budget_drops_backfill_then_live_and_alarms_last() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = SledSpool::open(&dir.path().join("spool"), 4 * (HEADER as u64 + 100)).unwrap();
        s.append(&stored(0, Priority::AlarmEvent, 100)).unwrap();
        s.append(&stored(1, Priority::Live, 100)).unwrap();
        s.append(&stored(2, Priority::Backfill, 100)).unwrap();
        s.append(&stored(3, Priority::Backfill, 100)).unwrap();
        let ev = s.append(&stored(4, Priority::Live, 100)).unwrap();
        assert_eq!(ev.per_class, vec![(Priority::Backfill, 1, 10, 0)]);
        assert!(s.get(2).unwrap().is_none() && s.get(3).unwrap().is_some());
        s.append(&stored(5, Priority::Live, 100)).unwrap();
        let ev = s.append(&stored(6, Priority::AlarmEvent, 100)).unwrap();
        assert_eq!(ev.per_class, vec![(Priority::Live, 1, 10, 0)]);
        assert!(s.get(0).unwrap().is_some(), "alarm kept while telemetry remains");
        let d = s.drops();
        assert_eq!((d.backfill.batches, d.live.batches, d.alarm_event.batches), (2, 1, 0));
        // Fill with alarms only: now the oldest alarm must go.
        s.append(&stored(7, Priority::AlarmEvent, 100)).unwrap();
        s.append(&stored(8, Priority::AlarmEvent, 100)).unwrap();
        s.append(&stored(9, Priority::AlarmEvent, 100)).unwrap();
        assert_eq!(s.drops().alarm_event.batches, 1);
        assert!(s.get(0).unwrap().is_none());
        // Drop counts persist; a spool moved aside and started afresh would read back zero instead.
        drop(s);
        let (s, outcome) = SledSpool::open(&dir.path().join("spool"), 1 << 20).unwrap();
        assert_eq!(outcome, OpenOutcome::Resumed);
        assert_eq!(s.drops().alarm_event.batches, 1);
        assert!(matches!(
            SledSpool::open(&dir.path().join("other"), 10).unwrap().0.append(&stored(0, Priority::Live, 100)),
            Err(SpoolError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_spool_still_locked_is_waited_for_and_never_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (mut s, _) = SledSpool::open(&path, 1 << 20).unwrap();
        let epoch = s.epoch();
        s.append(&stored(0, Priority::AlarmEvent, 100)).unwrap();
        drop(s);
        // What a sled IO thread still finishing the last flush does: hold the lock after the drop.
        let holder = std::fs::File::open(path.join("db")).unwrap();
        holder.lock().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(holder);
        });
        let started = Instant::now();
        let (s, outcome) = SledSpool::open(&path, 1 << 20).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250), "opened while the lock was held");
        assert_eq!(outcome, OpenOutcome::Resumed);
        assert_eq!((s.epoch(), s.next_seq()), (epoch, 1));
        release.join().unwrap();
        drop(s);

        // Held for longer than the open waits (another process): refused, the spool untouched.
        let holder = std::fs::File::open(path.join("db")).unwrap();
        holder.lock().unwrap();
        let err = SledSpool::open_waiting(&path, 1 << 20, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
        // Taken between the wait and sled's own attempt: also a held lock, not damage.
        assert!(matches!(SledSpool::try_open(&path, 1 << 20, true), Err(OpenFailure::Locked)));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("spool")], "nothing was moved aside");
        drop(holder);
        let (s, outcome) = SledSpool::open(&path, 1 << 20).unwrap();
        assert_eq!((outcome, s.epoch(), s.next_seq()), (OpenOutcome::Resumed, epoch, 1));
    }

    #[test]
    fn a_corrupt_spool_is_moved_aside_and_a_new_epoch_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let (s, _) = SledSpool::open(&path, 1 << 20).unwrap();
        let old = s.epoch();
        drop(s);
        // Garbage over sled's files.
        for entry in std::fs::read_dir(&path).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::write(&p, b"\xde\xad\xbe\xef garbage that is not a sled file").unwrap();
            }
        }
        let (s, outcome) = SledSpool::open(&path, 1 << 20).unwrap();
        let OpenOutcome::Recovered { quarantined_to, .. } = outcome else {
            panic!("expected recovery, got {outcome:?}")
        };
        assert!(quarantined_to.exists());
        assert_ne!(s.epoch(), old);
        assert_eq!(s.next_seq(), 0);
    }
}
