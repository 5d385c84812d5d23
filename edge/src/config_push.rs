//! Configurations pushed by central (`ApplyConfig` on `down/cmd`): validated whole before anything
//! changes, installed atomically in place of the running file with the old one kept beside it, and
//! kept only once the agent reaches central with them; otherwise the old file comes back by itself.
//!
//! Files beside the configuration `gateway.toml`:
//! - `gateway.toml.previous`: the file a trial replaced, until the trial ends;
//! - `gateway.toml.push.json`: the running version, the trial in progress and the last outcome.
//!
//! Every step is a rename of a file already fsynced, so a power cut at any point leaves either the
//! old or the new file in place. The status records the new file's SHA-256 before the rename: a
//! trial whose file is not the one in place was interrupted before it was installed, and is dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use vigil_common::{ConfigReport, PushOutcome, PushResult};

use crate::config::Plant;
use crate::spool::now_ms;

/// Why a push store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A file beside the configuration could not be read or written.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
}

/// The persisted part: `gateway.toml.push.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PushStatus {
    /// Version of the running file (0: installed on the gateway, never pushed).
    running: u64,
    /// A pushed file on trial.
    trial: Option<Trial>,
    /// The last push's outcome.
    last: Option<PushOutcome>,
}

/// A pushed file installed but not yet kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trial {
    version: u64,
    /// SHA-256 (hex) of the pushed file, to tell whether it was installed.
    sha256: String,
    /// When it was installed, UTC ms.
    since_ms: i64,
}

/// What became of a pushed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Installed: the agent must restart on it.
    Installed,
    /// Refused; nothing changed. The text is sent to central.
    Rejected(String),
    /// The running version or one on trial already: a repeated delivery, ignored.
    Duplicate,
}

/// Counters of configuration pushes.
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// Pushes installed.
    pub installed: AtomicU64,
    /// Pushes refused.
    pub rejected: AtomicU64,
    /// Trials kept.
    pub applied: AtomicU64,
    /// Trials rolled back.
    pub rolled_back: AtomicU64,
}

/// The push store of one configuration file, shared by the uplink (which receives pushes and
/// reports) and the agent (which runs trials and restarts).
pub struct ConfigPush {
    path: PathBuf,
    status: Mutex<(PushStatus, [u8; 32])>,
    /// Notified when the report changed, so the uplink publishes a fresh state.
    pub changed: Notify,
    restart: watch::Sender<bool>,
    restart_requested: AtomicBool,
    /// Counters.
    pub metrics: PushMetrics,
}

impl ConfigPush {
    /// The store of the configuration file at `path`; drops a trial that was never installed.
    pub fn open(path: &Path) -> Result<ConfigPush, PushError> {
        let mut status = read_status(&status_path(path))?;
        let sha = file_sha(path)?;
        if let Some(trial) = &status.trial
            && trial.sha256 != hex::encode(sha)
        {
            tracing::warn!(version = trial.version, "config push: the trial was interrupted before it was installed");
            status.last =
                Some(outcome(trial.version, PushResult::RolledBack("interrupted before it was installed".into())));
            status.trial = None;
            write_status(path, &status)?;
        }
        Ok(ConfigPush {
            path: path.to_owned(),
            status: Mutex::new((status, sha)),
            changed: Notify::new(),
            restart: watch::channel(false).0,
            restart_requested: AtomicBool::new(false),
            metrics: PushMetrics::default(),
        })
    }

    /// What the gateway tells central about its configuration.
    pub fn report(&self) -> ConfigReport {
        let (status, sha) = &*self.lock();
        ConfigReport { running: status.running, sha256: *sha, last_push: status.last.clone() }
    }

    /// The version on trial and when it was installed (UTC ms), if one is.
    pub fn trial(&self) -> Option<(u64, i64)> {
        self.lock().0.trial.as_ref().map(|t| (t.version, t.since_ms))
    }

    /// Turns true once the agent must restart on another configuration file.
    pub fn restart_requested(&self) -> watch::Receiver<bool> {
        self.restart.subscribe()
    }

    /// Whether a restart was requested (the agent then exits to be started again).
    pub fn restarting(&self) -> bool {
        self.restart_requested.load(Ordering::Relaxed)
    }

    /// Handles a push of `toml` as `version`, checked against `running` (the plant the agent runs):
    /// the whole file is validated; the gateway id and enterprise must stay, and so must the uplink.
    /// Blocking (file I/O with fsync).
    pub fn receive(&self, version: u64, toml: &str, running: &Plant) -> Received {
        let result = self.try_receive(version, toml, running);
        let received = match result {
            Ok(r) => r,
            Err(e) => Received::Rejected(format!("cannot install: {e}")),
        };
        match &received {
            Received::Installed => {
                self.metrics.installed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(version, "config push: installed on trial; restarting on it");
                self.request_restart();
            }
            Received::Rejected(why) => {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(version, problem = %why, "config push refused");
                let mut guard = self.lock();
                guard.0.last = Some(outcome(version, PushResult::Rejected(why.clone())));
                if let Err(e) = write_status(&self.path, &guard.0) {
                    tracing::error!(error = %e, "config push: cannot record the refusal");
                }
            }
            Received::Duplicate => tracing::debug!(version, "config push: repeated delivery ignored"),
        }
        self.changed.notify_one();
        received
    }

    fn try_receive(&self, version: u64, toml: &str, running: &Plant) -> Result<Received, PushError> {
        let mut guard = self.lock();
        let status = &mut guard.0;
        if version == status.running || status.trial.as_ref().is_some_and(|t| t.version == version) {
            return Ok(Received::Duplicate);
        }
        if version < status.running {
            return Ok(Received::Rejected(format!(
                "version {version} is older than the running version {}",
                status.running
            )));
        }
        if status.trial.is_some() {
            return Ok(Received::Rejected("another pushed configuration is on trial; push again when it ended".into()));
        }
        let plant = match crate::config::load_text(toml, &self.path) {
            Ok(p) => p,
            Err(e) => return Ok(Received::Rejected(e.to_string())),
        };
        let (new, old) = (&plant.config, &running.config);
        if new.gateway.id != old.gateway.id || new.gateway.enterprise != old.gateway.enterprise {
            return Ok(Received::Rejected(format!(
                "gateway.id/enterprise are {}/{}; a push may not change them from {}/{}",
                new.gateway.id, new.gateway.enterprise, old.gateway.id, old.gateway.enterprise
            )));
        }
        if new.uplink.is_none() {
            return Ok(Received::Rejected("[uplink] is missing: the gateway could no longer reach central".into()));
        }
        let sha: [u8; 32] = Sha256::digest(toml.as_bytes()).into();
        // The old file beside it first, then the trial on record, then the switch (see module doc).
        let previous = previous_path(&self.path);
        let old_text = std::fs::read(&self.path).map_err(|e| file_err(&self.path, e))?;
        write_atomic(&previous, &old_text)?;
        status.trial = Some(Trial { version, sha256: hex::encode(sha), since_ms: now_ms() });
        status.last = Some(outcome(version, PushResult::OnTrial));
        write_status(&self.path, status)?;
        write_atomic(&self.path, toml.as_bytes())?;
        guard.1 = sha;
        Ok(Received::Installed)
    }

    /// Keeps the file on trial: the agent reached central with it.
    pub fn commit(&self) {
        let mut guard = self.lock();
        let Some(trial) = guard.0.trial.take() else { return };
        guard.0.running = trial.version;
        guard.0.last = Some(outcome(trial.version, PushResult::Applied));
        if let Err(e) = write_status(&self.path, &guard.0) {
            tracing::error!(error = %e, "config push: cannot record the kept trial");
        }
        if let Err(e) = std::fs::remove_file(previous_path(&self.path))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "config push: cannot remove the previous file");
        }
        drop(guard);
        self.metrics.applied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version = trial.version, "config push: applied and kept");
        self.changed.notify_one();
    }

    /// Puts the previous file back because `why`, and asks for a restart on it.
    pub fn roll_back(&self, why: &str) -> Result<(), PushError> {
        let mut guard = self.lock();
        let Some(trial) = guard.0.trial.clone() else { return Ok(()) };
        let previous = previous_path(&self.path);
        std::fs::rename(&previous, &self.path).map_err(|e| file_err(&previous, e))?;
        sync_dir(&self.path)?;
        guard.0.trial = None;
        guard.0.last = Some(outcome(trial.version, PushResult::RolledBack(why.to_owned())));
        write_status(&self.path, &guard.0)?;
        guard.1 = file_sha(&self.path)?;
        drop(guard);
        self.metrics.rolled_back.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            version = trial.version,
            reason = why,
            "config push: rolled back to the previous configuration"
        );
        self.request_restart();
        self.changed.notify_one();
        Ok(())
    }

    /// Runs the trial, if one is on: keeps it once `online` turns true, rolls it back when `window`
    /// passed since it was installed (also across restarts and crashes of the agent).
    pub async fn watch_trial(
        self: Arc<Self>,
        online: Arc<AtomicBool>,
        window: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let Some((version, since_ms)) = self.trial() else { return };
        let deadline_ms = since_ms.saturating_add(window.as_millis() as i64);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => if *shutdown.borrow() { return },
            }
            if online.load(Ordering::Relaxed) {
                self.commit();
                return;
            }
            if now_ms() >= deadline_ms {
                let why = format!("version {version} did not reach central within {} s", window.as_secs());
                if let Err(e) = tokio::task::block_in_place(|| self.roll_back(&why)) {
                    tracing::error!(error = %e, "config push: rollback failed; the trial configuration stays");
                }
                return;
            }
        }
    }

    fn request_restart(&self) {
        self.restart_requested.store(true, Ordering::Relaxed);
        let _ = self.restart.send(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (PushStatus, [u8; 32])> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Before the agent gives up on a configuration file that does not load: if a pushed file is on
/// trial there, the previous one is put back (returns true: load again).
pub fn roll_back_unloadable(path: &Path, problem: &str) -> Result<bool, PushError> {
    let store = ConfigPush::open(path)?;
    if store.trial().is_none() {
        return Ok(false);
    }
    store.roll_back(&format!("the agent could not start on it: {problem}"))?;
    Ok(true)
}

fn outcome(version: u64, result: PushResult) -> PushOutcome {
    PushOutcome { version, ts_ms: now_ms(), result }
}

fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn status_path(path: &Path) -> PathBuf {
    beside(path, ".push.json")
}

fn previous_path(path: &Path) -> PathBuf {
    beside(path, ".previous")
}

fn file_err(path: &Path, e: std::io::Error) -> PushError {
    PushError::File { path: path.to_owned(), why: e.to_string() }
}

fn file_sha(path: &Path) -> Result<[u8; 32], PushError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    Ok(Sha256::digest(&bytes).into())
}

fn read_status(path: &Path) -> Result<PushStatus, PushError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| PushError::File { path: path.to_owned(), why: format!("unreadable push status: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PushStatus::default()),
        Err(e) => Err(file_err(path, e)),
    }
}

fn write_status(config: &Path, status: &PushStatus) -> Result<(), PushError> {
    let path = status_path(config);
    let bytes =
        serde_json::to_vec_pretty(status).map_err(|e| PushError::File { path: path.clone(), why: e.to_string() })?;
    write_atomic(&path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs
/// the directory: `path` holds the old or the new bytes, never a mix.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PushError> {
    use std::io::Write as _;
    let tmp = beside(path, ".tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
    // The replacement keeps the replaced file's mode (a configuration may be readable by its owner only).
    if let Ok(meta) = std::fs::metadata(path) {
        f.set_permissions(meta.permissions()).map_err(|e| file_err(&tmp, e))?;
    }
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> Result<(), PushError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| file_err(dir, e))
}
