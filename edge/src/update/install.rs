//! The agent root and the steps that change it. Every step is made durable (file and directory
//! fsync) before the next begins, so a power cut or kill between any two steps leaves one of a few
//! states, each of which [`recover`] and the launcher turn into a running agent:
//!
//! ```text
//! <root>/versions/<version>-<sha8>/vigil-edge   installed binaries (+ gateway.toml, bundle.json)
//! <root>/versions/.staging-*                    half-written versions (removed on the next start)
//! <root>/current -> versions/<name>             the version the launcher starts; absent: the packaged binary
//! <root>/trial.json                             an update on trial: from, to, attempts
//! <root>/history.jsonl                          append-only JSON lines: installed, committed, rolled back ...
//! <root>/health.json                            written by the running agent for the launcher
//! ```
//!
//! Apply: stage the new version beside the current one -> write the trial marker -> swap `current`
//! (a new symlink renamed over the old one: rename(2) is atomic) -> record `installed`. Commit: record
//! `committed` -> remove the marker. Rollback: mark the marker `rolling_back` -> swap `current` back
//! -> record `rolled_back` -> remove the marker.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Bundle, UpdateError, crash_point};
use crate::spool::now_ms;

/// Environment variable with which the launcher tells the agent its installed version.
pub const ENV_VERSION: &str = "VIGIL_AGENT_VERSION";
/// Environment variable naming the health file the agent must keep fresh.
pub const ENV_HEALTH: &str = "VIGIL_HEALTH_FILE";
/// Environment variable naming the agent root (for the update report to central).
pub const ENV_ROOT: &str = "VIGIL_AGENT_ROOT";
/// The binary's name inside a version directory.
pub const BINARY: &str = "vigil-edge";
/// A bundled configuration's name inside a version directory.
pub const CONFIG: &str = "gateway.toml";
/// The bundle header (plus its hash) inside a version directory.
const META: &str = "bundle.json";
/// Most history bytes read back (the tail of the file).
const HISTORY_TAIL: u64 = 256 * 1024;

/// An update on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The version directory before the switch; `None`: the packaged binary.
    pub from: Option<String>,
    /// The version directory on trial.
    pub to: String,
    /// Its version.
    pub version: String,
    /// SHA-256 of its bundle.
    pub bundle_sha256: String,
    /// When the update was applied, UTC ms.
    pub applied_ms: i64,
    /// Starts of the new version so far.
    pub attempts: u32,
    /// Set (with the reason) once a rollback began.
    pub rolling_back: Option<String>,
    /// Central's order id when central ordered this update (named in its history records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u64>,
}

/// One line of the update history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// When, UTC ms.
    pub ts_ms: i64,
    /// `installed`, `committed`, `rolled_back`, `abandoned`, `refused`.
    pub event: String,
    /// The version concerned.
    pub version: String,
    /// Version directory before.
    pub from: Option<String>,
    /// Version directory after.
    pub to: Option<String>,
    /// Why, in words.
    pub detail: String,
}

/// Paths under the agent root.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The root directory.
    pub root: PathBuf,
}

impl Layout {
    /// A layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    /// The versions directory.
    pub fn versions(&self) -> PathBuf {
        self.root.join("versions")
    }
    /// The `current` symlink.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }
    /// The trial marker.
    pub fn trial_file(&self) -> PathBuf {
        self.root.join("trial.json")
    }
    /// The history file.
    pub fn history_file(&self) -> PathBuf {
        self.root.join("history.jsonl")
    }
    /// The health file the agent writes.
    pub fn health_file(&self) -> PathBuf {
        self.root.join("health.json")
    }
    /// A version's directory.
    pub fn version_dir(&self, name: &str) -> PathBuf {
        self.versions().join(name)
    }
    /// A version's binary.
    pub fn binary(&self, name: &str) -> PathBuf {
        self.version_dir(name).join(BINARY)
    }

    /// The version directory `current` points to, if any.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(self.current_link()).ok()?;
        let name = target.file_name()?.to_str()?.to_owned();
        (target.parent().and_then(Path::file_name).and_then(|p| p.to_str()) == Some("versions")
            && !name.starts_with('.'))
        .then_some(name)
    }

    /// The version a version directory holds (from its bundle header).
    pub fn version_of(&self, name: &str) -> Option<String> {
        let text = fs::read_to_string(self.version_dir(name).join(META)).ok()?;
        let meta: serde_json::Value = serde_json::from_str(&text).ok()?;
        meta.get("version")?.as_str().map(str::to_owned)
    }

    /// The update on trial, if any. An unreadable marker is reported as an error.
    pub fn trial(&self) -> Result<Option<Trial>, UpdateError> {
        let path = self.trial_file();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| UpdateError::State(format!("{}: unreadable trial marker: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UpdateError::io(&path, e)),
        }
    }

    /// Writes the trial marker atomically and durably.
    pub fn write_trial(&self, trial: &Trial) -> Result<(), UpdateError> {
        let bytes = serde_json::to_vec_pretty(trial).map_err(|e| UpdateError::State(e.to_string()))?;
        atomic_write(&self.trial_file(), &bytes)
    }

    /// Removes the trial marker durably.
    pub fn remove_trial(&self) -> Result<(), UpdateError> {
        match fs::remove_file(self.trial_file()) {
            Ok(()) => fsync_dir(&self.root),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(UpdateError::io(&self.trial_file(), e)),
        }
    }

    /// Appends a history record and syncs it.
    pub fn record(&self, rec: &HistoryRecord) -> Result<(), UpdateError> {
        let path = self.history_file();
        let mut line = serde_json::to_vec(rec).map_err(|e| UpdateError::State(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| UpdateError::io(&path, e))?;
        f.write_all(&line).and_then(|()| f.sync_data()).map_err(|e| UpdateError::io(&path, e))
    }

    /// The last `limit` history records (malformed lines, e.g. one cut by a power failure, skipped).
    pub fn history(&self, limit: usize) -> Vec<HistoryRecord> {
        let Ok(mut f) = File::open(self.history_file()) else { return Vec::new() };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(HISTORY_TAIL);
        let mut text = String::new();
        if f.seek(SeekFrom::Start(start)).is_err() || f.take(HISTORY_TAIL).read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        let mut out: Vec<HistoryRecord> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
        out
    }

    /// Points `current` at `name` (or removes it: the packaged binary) with an atomic rename, durably.
    pub fn set_current(&self, name: Option<&str>) -> Result<(), UpdateError> {
        let link = self.current_link();
        match name {
            Some(name) => {
                let tmp = self.root.join(".current.tmp");
                let _ = fs::remove_file(&tmp);
                symlink(Path::new("versions").join(name), &tmp).map_err(|e| UpdateError::io(&tmp, e))?;
                fs::rename(&tmp, &link).map_err(|e| UpdateError::io(&link, e))?;
            }
            None => match fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(UpdateError::io(&link, e)),
            },
        }
        fsync_dir(&self.root)
    }

    fn history_line(&self, event: &str, trial: &Trial, detail: impl Into<String>) -> HistoryRecord {
        HistoryRecord {
            ts_ms: now_ms(),
            event: event.to_owned(),
            version: trial.version.clone(),
            from: trial.from.clone(),
            to: Some(trial.to.clone()),
            detail: ordered_detail(trial.order, detail.into()),
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new version directory (now `current`, on trial).
    pub name: String,
    /// The version directory it replaced (`None`: the packaged binary).
    pub from: Option<String>,
}

/// The detail of a history record, prefixed `order N: ` when central ordered the update, so central
/// can tell which of its orders a record answers.
pub fn ordered_detail(order: Option<u64>, detail: String) -> String {
    match order {
        Some(id) => format!("order {id}: {detail}"),
        None => detail,
    }
}

/// Installs a verified bundle beside the running version and switches to it, on trial. Refused while
/// another update is on trial.
pub fn apply(layout: &Layout, bundle: &Bundle) -> Result<Applied, UpdateError> {
    apply_ordered(layout, bundle, None)
}

/// [`apply`] for central's order `order` (named in the history records of this update).
pub fn apply_ordered(layout: &Layout, bundle: &Bundle, order: Option<u64>) -> Result<Applied, UpdateError> {
    let versions = layout.versions();
    fs::create_dir_all(&versions).map_err(|e| UpdateError::io(&versions, e))?;
    recover(layout)?;
    if let Some(t) = layout.trial()? {
        return Err(UpdateError::State(format!(
            "version {} is on trial (applied at {} ms, {} start(s)); wait until it is committed or rolled back",
            t.version, t.applied_ms, t.attempts
        )));
    }
    let sha8 = bundle.sha256.get(..8).unwrap_or("00000000");
    let name = format!("{}-{sha8}", bundle.header.version);
    let from = layout.current();
    if from.as_deref() == Some(name.as_str()) {
        return Err(UpdateError::State(format!(
            "version {} (bundle {sha8}) is already the current version",
            bundle.header.version
        )));
    }

    // 1. Stage beside the current version; only a complete directory gets its final name.
    let staging = versions.join(format!(".staging-{name}"));
    remove_dir(&staging)?;
    fs::create_dir_all(&staging).map_err(|e| UpdateError::io(&staging, e))?;
    write_file(&staging.join(BINARY), &bundle.binary, 0o755)?;
    if let Some(c) = &bundle.config {
        write_file(&staging.join(CONFIG), c, 0o640)?;
    }
    let meta = serde_json::json!({
        "version": bundle.header.version,
        "target": bundle.header.target,
        "created_ms": bundle.header.created_ms,
        "key_id": bundle.header.key_id,
        "bundle_sha256": bundle.sha256,
    });
    write_file(&staging.join(META), meta.to_string().as_bytes(), 0o644)?;
    fsync_dir(&staging)?;
    let dir = layout.version_dir(&name);
    remove_dir(&dir)?;
    fs::rename(&staging, &dir).map_err(|e| UpdateError::io(&dir, e))?;
    fsync_dir(&versions)?;
    crash_point("staged");

    // 2. The marker first: from here on a restart either finds current == from (nothing happened,
    // the marker is dropped) or current == to (the trial continues).
    let trial = Trial {
        from: from.clone(),
        to: name.clone(),
        version: bundle.header.version.clone(),
        bundle_sha256: bundle.sha256.clone(),
        applied_ms: now_ms(),
        attempts: 0,
        rolling_back: None,
        order,
    };
    layout.write_trial(&trial)?;
    crash_point("marked");

    // 3. The switch.
    layout.set_current(Some(&name))?;
    crash_point("switched");

    layout.record(&layout.history_line("installed", &trial, "switched; on trial until healthy"))?;
    crash_point("recorded");
    Ok(Applied { name, from })
}

/// Makes the trial's version permanent, and removes versions other than it and the one before.
pub fn commit(layout: &Layout, trial: &Trial, detail: &str) -> Result<(), UpdateError> {
    layout.record(&layout.history_line("committed", trial, detail))?;
    crash_point("commit-recorded");
    layout.remove_trial()?;
    crash_point("committed");
    let keep = [Some(trial.to.as_str()), trial.from.as_deref()];
    if let Ok(entries) = fs::read_dir(layout.versions()) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&Some(n.as_str())) {
                let _ = remove_dir(&e.path());
            }
        }
    }
    Ok(())
}

/// Brings the version before the trial back.
pub fn rollback(layout: &Layout, trial: &Trial, reason: &str) -> Result<(), UpdateError> {
    let mut marked = trial.clone();
    marked.rolling_back = Some(reason.to_owned());
    layout.write_trial(&marked)?;
    crash_point("rollback-marked");
    // A previous version whose directory has gone (disk damage) falls back to the packaged binary.
    let back = trial.from.as_deref().filter(|n| layout.binary(n).is_file());
    layout.set_current(back)?;
    crash_point("rollback-switched");
    layout.record(&layout.history_line("rolled_back", trial, reason))?;
    crash_point("rollback-recorded");
    layout.remove_trial()
}

/// Settles what an interrupted step left: drops half-staged versions, finishes an interrupted
/// rollback, drops a marker whose switch never happened. Leaves a trial whose switch happened alone.
pub fn recover(layout: &Layout) -> Result<(), UpdateError> {
    if let Ok(entries) = fs::read_dir(layout.versions()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".staging-") {
                let _ = remove_dir(&e.path());
            }
        }
    }
    let trial = match layout.trial() {
        Ok(t) => t,
        Err(e) => {
            // Only a damaged disk makes this: the atomic rename never leaves half a marker. Without
            // knowing the version before, keep `current` if its binary is there, else the packaged one.
            tracing::error!(error = %e, "trial marker unreadable; ending the trial where it stands");
            if layout.current().is_some_and(|n| !layout.binary(&n).is_file()) {
                layout.set_current(None)?;
            }
            let _ = layout.record(&HistoryRecord {
                ts_ms: now_ms(),
                event: "abandoned".into(),
                version: String::new(),
                from: None,
                to: layout.current(),
                detail: e.to_string(),
            });
            return layout.remove_trial();
        }
    };
    let Some(trial) = trial else { return Ok(()) };
    let current = layout.current();
    if let Some(reason) = &trial.rolling_back {
        if current.as_deref() == Some(trial.to.as_str()) {
            return rollback(layout, &trial, reason);
        }
        layout.record(&layout.history_line("rolled_back", &trial, reason.clone()))?;
        return layout.remove_trial();
    }
    if current.as_deref() != Some(trial.to.as_str()) {
        layout.record(&layout.history_line(
            "abandoned",
            &trial,
            "interrupted before the switch; still on the previous version",
        ))?;
        layout.remove_trial()?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), UpdateError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| UpdateError::io(path, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| UpdateError::io(path, e))
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    write_file(&tmp, bytes, 0o644)?;
    fs::rename(&tmp, path).map_err(|e| UpdateError::io(path, e))?;
    fsync_dir(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), UpdateError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| UpdateError::io(dir, e))
}

fn remove_dir(dir: &Path) -> Result<(), UpdateError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UpdateError::io(dir, e)),
    }
}
