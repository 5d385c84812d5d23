//! Configurations pushed by central (`ApplyConfig` on `down/cmd`): validated whole before anything
//! changes, installed atomically beside the previous pushed one, and kept only once the agent
//! reaches central with them; otherwise the previous configuration comes back by itself.
//!
//! Pushed files never overwrite the installed file (on a packaged gateway `/etc/vigil/gateway.toml`
//! is read-only to the agent under `ProtectSystem=strict`). They live in the *push directory*, the
//! directory `config` beside the spool directory of the installed file (`[spool] path =
//! "/var/lib/vigil/spool"` gives `/var/lib/vigil/config/`), which the agent can always write:
//! - `gateway.toml`: the pushed configuration, kept or on trial;
//! - `gateway.toml.previous`: the pushed file a trial replaced, until the trial ends (absent when
//!   the trial replaced the installed file);
//! - `gateway.toml.push.json`: the running version, the trial in progress, the last outcome and the
//!   SHA-256 of the installed file when the pushed one was installed;
//! - `gateway.toml.replaced`: a pushed file set aside because the installed file was edited.
//!
//! Which file runs ([`select`], printed by `vigil-edge check`, logged at every start, shown on the
//! status page): the pushed file when there is one and the installed file is byte-for-byte what it
//! was when that push was installed; otherwise the installed file. So the newest change wins: a
//! technician who edits the installed file (or a package upgrade that replaces it) overrides an
//! earlier push at the next start (the pushed file is set aside, and central is told the push was
//! rolled back by a local edit), and a later push overrides the edit again. A pushed file on trial
//! that does not load is rolled back; a kept one that no longer loads (a profile it names was
//! removed) is skipped for the installed file, with an error in the log and on the page.
//!
//! Every step is a rename of a file already fsynced, so a power cut at any point leaves either the
//! old or the new file in place. The status records the new file's SHA-256 before the rename: a
//! trial whose file is not the one in place was interrupted before it was installed, and is dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use vigil_common::{ConfigReport, PushOutcome, PushResult};

use crate::config::{ConfigErrors, Plant};
use crate::spool::now_ms;

/// Why a push store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A file of the push directory (or the installed file) could not be read or written.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
}

/// Why no configuration could be loaded for a run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The push directory could not be read or set in order.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The configuration chosen does not load.
    #[error("{0}")]
    Config(ConfigErrors),
}

/// The persisted part: `gateway.toml.push.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PushStatus {
    /// Version of the pushed file kept (0: none, the installed file runs).
    running: u64,
    /// A pushed file on trial.
    trial: Option<Trial>,
    /// The last push's outcome.
    last: Option<PushOutcome>,
    /// SHA-256 (hex) of the installed file when the pushed file in place was installed: a
    /// different installed file means it was edited since, and the edit wins.
    #[serde(default)]
    installed_sha256: Option<String>,
    /// Outcomes so far, written with the outcome itself (absent in files of earlier versions).
    #[serde(default)]
    counts: PushCounts,
}

/// A pushed file installed but not yet kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trial {
    version: u64,
    /// SHA-256 (hex) of the pushed file, to tell whether it was installed.
    sha256: String,
    /// When it was installed, UTC ms.
    since_ms: i64,
    /// Whether it replaced a pushed file (kept as `.previous`) rather than the installed file.
    #[serde(default)]
    replaced_pushed: bool,
}

/// The files of one installed configuration and its push directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The installed file (`--config`), e.g. `/etc/vigil/gateway.toml`; never written by pushes.
    pub installed: PathBuf,
    /// The push directory, e.g. `/var/lib/vigil/config`.
    pub dir: PathBuf,
    /// The pushed configuration in it.
    pub pushed: PathBuf,
}

impl Files {
    /// The push directory of `installed`: `config` beside its `[spool] path`, the one directory the
    /// agent must be able to write anyway. Only the installed file decides it (a pushed file
    /// cannot move it).
    pub fn of(installed: &Path) -> Result<Files, PushError> {
        let text = std::fs::read_to_string(installed).map_err(|e| file_err(installed, e))?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| PushError::File { path: installed.to_owned(), why: e.message().trim().to_owned() })?;
        let spool = table
            .get("spool")
            .and_then(|s| s.get("path"))
            .and_then(|p| p.as_str())
            .ok_or_else(|| PushError::File { path: installed.to_owned(), why: "[spool] path is missing".into() })?;
        let dir = match Path::new(spool).parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join("config"),
            _ => PathBuf::from("config"),
        };
        let name = installed.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("gateway.toml"));
        Ok(Files { installed: installed.to_owned(), pushed: dir.join(name), dir })
    }

    fn status(&self) -> PathBuf {
        beside(&self.pushed, ".push.json")
    }

    fn previous(&self) -> PathBuf {
        beside(&self.pushed, ".previous")
    }

    fn replaced(&self) -> PathBuf {
        beside(&self.pushed, ".replaced")
    }
}

/// Which configuration file a start runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The files.
    pub files: Files,
    /// The file to run.
    pub file: PathBuf,
    /// Whether `file` is the pushed file.
    pub pushed: bool,
    /// Version of the pushed file (kept or on trial); 0 for the installed file.
    pub version: u64,
    /// A pushed file that the edited installed file overrides (it is set aside when the agent starts).
    pub overridden: Option<u64>,
    /// The choice in words, for the technician.
    pub reason: String,
}

/// Decides which file the agent runs for the installed file `installed`, changing nothing (so
/// `vigil-edge check` can say it). See the module documentation for the rule.
pub fn select(installed: &Path) -> Result<Selection, PushError> {
    let files = Files::of(installed)?;
    let status = read_status(&files.status())?;
    let at = files.installed.display();
    if !files.pushed.is_file() {
        let reason = format!(
            "{at} (installed file; no pushed configuration in {}, where pushes from central go)",
            files.dir.display()
        );
        return Ok(Selection {
            file: files.installed.clone(),
            pushed: false,
            version: 0,
            overridden: None,
            reason,
            files,
        });
    }
    let pushed_sha = hex::encode(file_sha(&files.pushed)?);
    let (version, state) = match &status.trial {
        // A trial whose file is not in place never started (see `ConfigPush::open`).
        Some(t) if t.sha256 == pushed_sha => (t.version, "on trial"),
        _ => (status.running, "kept"),
    };
    let installed_sha = hex::encode(file_sha(&files.installed)?);
    if status.installed_sha256.as_ref().is_some_and(|s| *s != installed_sha) {
        let reason = format!(
            "{at} (installed file, edited after pushed version {version} was installed: the edit wins; \
             the pushed file {} is set aside at the next start)",
            files.pushed.display()
        );
        return Ok(Selection {
            file: files.installed.clone(),
            pushed: false,
            version: 0,
            overridden: Some(version),
            reason,
            files,
        });
    }
    let reason = format!(
        "{} (pushed version {version}, {state}; overrides {at}, unchanged since; editing {at} makes it win)",
        files.pushed.display()
    );
    Ok(Selection { file: files.pushed.clone(), pushed: true, version, overridden: None, reason, files })
}

/// Loads the configuration a start of the agent runs (see [`select`]): sets aside a pushed file the
/// edited installed file overrides, and skips a kept pushed file that no longer loads. A pushed
/// file on trial that does not load is an error, for the caller to roll back
/// ([`roll_back_unloadable`]). Blocking (file I/O).
pub fn load(installed: &Path) -> Result<Plant, LoadError> {
    if Files::of(installed).is_err() {
        // The installed file does not even parse: its own full list of problems is the answer.
        return crate::config::load(installed).map_err(LoadError::Config);
    }
    let mut selection = select(installed)?;
    if let Some(version) = selection.overridden {
        set_aside(&selection.files, version)?;
        selection = select(installed)?;
    }
    tracing::info!(file = %selection.file.display(), "configuration: {}", selection.reason);
    if !selection.pushed {
        return crate::config::load(installed).map_err(LoadError::Config);
    }
    match load_pushed(&selection.files) {
        Ok(plant) => Ok(plant),
        Err(e) if read_status(&selection.files.status())?.trial.is_some() => Err(LoadError::Config(e)),
        Err(e) => {
            tracing::error!(
                problem = %e,
                "configuration: the kept pushed file {} does not load; running the installed file {} instead",
                selection.files.pushed.display(),
                installed.display()
            );
            crate::config::load(installed).map_err(LoadError::Config)
        }
    }
}

/// The pushed file, validated as if it were the installed file (relative paths such as
/// `profile_dir` anchor at the installed file's directory); errors name the pushed file.
fn load_pushed(files: &Files) -> Result<Plant, ConfigErrors> {
    let text = std::fs::read_to_string(&files.pushed).map_err(|e| {
        ConfigErrors(vec![crate::config::ConfigError {
            file: files.pushed.display().to_string(),
            key: "(file)".into(),
            problem: format!("cannot read: {e}"),
        }])
    })?;
    let mut plant = crate::config::load_text(&text, &files.installed).map_err(|mut e| {
        let installed = files.installed.display().to_string();
        for err in &mut e.0 {
            if err.file == installed {
                err.file = files.pushed.display().to_string();
            }
        }
        e
    })?;
    plant.file = files.pushed.clone();
    Ok(plant)
}

/// Sets the pushed file aside because the installed file was edited after it was installed, and
/// records that as the push's rollback (central shows why).
fn set_aside(files: &Files, version: u64) -> Result<(), PushError> {
    let mut status = read_status(&files.status())?;
    std::fs::rename(&files.pushed, files.replaced()).map_err(|e| file_err(&files.pushed, e))?;
    sync_dir(&files.pushed)?;
    remove_if_present(&files.previous());
    let why = format!(
        "{} was edited on the gateway after this version was installed; the edit runs",
        files.installed.display()
    );
    tracing::warn!(
        version,
        set_aside_as = %files.replaced().display(),
        "configuration: {why}"
    );
    status.running = 0;
    status.trial = None;
    status.installed_sha256 = None;
    status.last = Some(outcome(version, PushResult::RolledBack(why)));
    status.counts.rolled_back += 1;
    write_status(files, &status)
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

/// How many pushes ended how, over the life of the push directory.
///
/// Persisted in `gateway.toml.push.json` rather than held in memory: every install and every
/// rollback ends the agent's turn (`Exit::Restart`), so counters in memory would lose exactly the
/// outcomes worth counting. Each count is written in the same atomic file write as the outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PushCounts {
    /// Pushes installed on trial.
    pub on_trial: u64,
    /// Trials kept (the agent reached central with them).
    pub applied: u64,
    /// Pushes refused; nothing changed.
    pub rejected: u64,
    /// Trials rolled back, and pushed files set aside for an edited installed file.
    pub rolled_back: u64,
}

/// The push figures the status page exports on `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushMetrics {
    /// Kept pushed version running (0: the installed file), as reported to central.
    pub running: u64,
    /// Version on trial, if one is.
    pub trial: Option<u64>,
    /// Outcomes so far.
    pub counts: PushCounts,
}

/// What the store knows about the running file.
struct State {
    status: PushStatus,
    /// SHA-256 of the running file.
    sha: [u8; 32],
    /// Whether the running file is the pushed file (else the installed one runs: version 0).
    pushed: bool,
}

/// The push store of one installed configuration file, shared by the uplink (which receives
/// pushes and reports) and the agent (which runs trials and restarts).
pub struct ConfigPush {
    files: Files,
    state: Mutex<State>,
    /// Notified when the report changed, so the uplink publishes a fresh state.
    pub changed: Notify,
    restart: watch::Sender<bool>,
    restart_requested: AtomicBool,
}

impl ConfigPush {
    /// The store of the installed file `installed` while `running` runs (the installed file or the
    /// pushed one); drops a trial that was never installed.
    pub fn open(installed: &Path, running: &Path) -> Result<ConfigPush, PushError> {
        let files = Files::of(installed)?;
        let mut status = read_status(&files.status())?;
        let pushed = running == files.pushed;
        let pushed_sha = if files.pushed.is_file() { Some(hex::encode(file_sha(&files.pushed)?)) } else { None };
        if let Some(trial) = &status.trial
            && pushed_sha.as_deref() != Some(trial.sha256.as_str())
        {
            tracing::warn!(version = trial.version, "config push: the trial was interrupted before it was installed");
            status.last =
                Some(outcome(trial.version, PushResult::RolledBack("interrupted before it was installed".into())));
            status.trial = None;
            status.counts.rolled_back += 1;
            write_status(&files, &status)?;
        }
        let sha = file_sha(running)?;
        Ok(ConfigPush {
            files,
            state: Mutex::new(State { status, sha, pushed }),
            changed: Notify::new(),
            restart: watch::channel(false).0,
            restart_requested: AtomicBool::new(false),
        })
    }

    /// The installed file and the push directory.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// What the gateway tells central about its configuration.
    pub fn report(&self) -> ConfigReport {
        let s = &*self.lock();
        let running = if s.pushed { s.status.running } else { 0 };
        ConfigReport { running, sha256: s.sha, last_push: s.status.last.clone() }
    }

    /// The running configuration in words, for the status page.
    pub fn describe(&self) -> String {
        let s = &*self.lock();
        let mut text = if s.pushed {
            let (version, state) = match &s.status.trial {
                Some(t) => (t.version, "on trial"),
                None => (s.status.running, "kept"),
            };
            format!(
                "{} (pushed version {version}, {state}; overrides {} until that file is edited)",
                self.files.pushed.display(),
                self.files.installed.display()
            )
        } else {
            format!(
                "{} (installed file; pushes from central go to {})",
                self.files.installed.display(),
                self.files.dir.display()
            )
        };
        if !s.pushed && self.files.pushed.is_file() {
            text.push_str("; the pushed file there does not load, see the log");
        }
        if let Some(last) = &s.status.last {
            let what = match &last.result {
                PushResult::OnTrial => "on trial".to_owned(),
                PushResult::Applied => "applied".to_owned(),
                PushResult::Rejected(why) => format!("rejected: {why}"),
                PushResult::RolledBack(why) => format!("rolled back: {why}"),
            };
            text.push_str(&format!("; last push: version {} {what}", last.version));
        }
        text
    }

    /// The running and trial versions and the outcome counts, for `/metrics`.
    pub fn metrics(&self) -> PushMetrics {
        let s = &*self.lock();
        PushMetrics {
            running: if s.pushed { s.status.running } else { 0 },
            trial: s.status.trial.as_ref().map(|t| t.version),
            counts: s.status.counts,
        }
    }

    /// The version on trial and when it was installed (UTC ms), if one is.
    pub fn trial(&self) -> Option<(u64, i64)> {
        self.lock().status.trial.as_ref().map(|t| (t.version, t.since_ms))
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
                tracing::info!(version, file = %self.files.pushed.display(), "config push: installed on trial; restarting on it");
                self.request_restart();
            }
            Received::Rejected(why) => {
                tracing::warn!(version, problem = %why, "config push refused");
                let mut guard = self.lock();
                guard.status.last = Some(outcome(version, PushResult::Rejected(why.clone())));
                guard.status.counts.rejected += 1;
                if let Err(e) = write_status(&self.files, &guard.status) {
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
        let state = &mut *guard;
        let status = &mut state.status;
        let running_version = if state.pushed { status.running } else { 0 };
        if version == running_version || status.trial.as_ref().is_some_and(|t| t.version == version) {
            return Ok(Received::Duplicate);
        }
        if version < running_version {
            return Ok(Received::Rejected(format!(
                "version {version} is older than the running version {running_version}"
            )));
        }
        if status.trial.is_some() {
            return Ok(Received::Rejected("another pushed configuration is on trial; push again when it ended".into()));
        }
        let named = format!("pushed version {version}");
        let plant = match crate::config::load_text(toml, &self.files.installed) {
            Ok(p) => p,
            Err(mut e) => {
                let installed = self.files.installed.display().to_string();
                for err in &mut e.0 {
                    if err.file == installed {
                        err.file.clone_from(&named);
                    }
                }
                return Ok(Received::Rejected(e.to_string()));
            }
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
        let files = &self.files;
        ensure_dir(&files.dir)?;
        // The pushed file it replaces beside it first (none when the installed file runs), then the
        // trial on record, then the switch (see the module doc).
        let replaced_pushed = state.pushed && files.pushed.is_file();
        if replaced_pushed {
            let old_text = std::fs::read(&files.pushed).map_err(|e| file_err(&files.pushed, e))?;
            write_atomic(&files.previous(), &old_text, &files.pushed)?;
        } else {
            remove_if_present(&files.previous());
        }
        status.running = running_version;
        status.trial = Some(Trial { version, sha256: hex::encode(sha), since_ms: now_ms(), replaced_pushed });
        status.last = Some(outcome(version, PushResult::OnTrial));
        status.counts.on_trial += 1;
        status.installed_sha256 = Some(hex::encode(file_sha(&files.installed)?));
        write_status(files, status)?;
        // A new pushed file takes the installed file's mode (it may be readable by its owner only).
        let mode_of = if replaced_pushed { &files.pushed } else { &files.installed };
        write_atomic(&files.pushed, toml.as_bytes(), mode_of)?;
        state.sha = sha;
        state.pushed = true;
        Ok(Received::Installed)
    }

    /// Keeps the file on trial: the agent reached central with it.
    pub fn commit(&self) {
        let mut guard = self.lock();
        let Some(trial) = guard.status.trial.take() else { return };
        guard.status.running = trial.version;
        guard.status.last = Some(outcome(trial.version, PushResult::Applied));
        guard.status.counts.applied += 1;
        if let Err(e) = write_status(&self.files, &guard.status) {
            tracing::error!(error = %e, "config push: cannot record the kept trial");
        }
        remove_if_present(&self.files.previous());
        drop(guard);
        tracing::info!(version = trial.version, "config push: applied and kept");
        self.changed.notify_one();
    }

    /// Puts the previous configuration back because `why` (the previous pushed file, or none so
    /// that the installed file runs), and asks for a restart on it.
    pub fn roll_back(&self, why: &str) -> Result<(), PushError> {
        let mut guard = self.lock();
        let Some(trial) = guard.status.trial.clone() else { return Ok(()) };
        let files = &self.files;
        if trial.replaced_pushed {
            let previous = files.previous();
            std::fs::rename(&previous, &files.pushed).map_err(|e| file_err(&previous, e))?;
        } else {
            std::fs::remove_file(&files.pushed).map_err(|e| file_err(&files.pushed, e))?;
            guard.status.running = 0;
            guard.status.installed_sha256 = None;
        }
        sync_dir(&files.pushed)?;
        guard.status.trial = None;
        guard.status.last = Some(outcome(trial.version, PushResult::RolledBack(why.to_owned())));
        guard.status.counts.rolled_back += 1;
        write_status(files, &guard.status)?;
        guard.pushed = trial.replaced_pushed;
        guard.sha = file_sha(if trial.replaced_pushed { &files.pushed } else { &files.installed })?;
        drop(guard);
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Before the agent gives up on a configuration that does not load or start (for the installed
/// file `installed`): if a pushed file is on trial, the previous configuration is put back
/// (returns true: load again).
pub fn roll_back_unloadable(installed: &Path, problem: &str) -> Result<bool, PushError> {
    // An installed file that does not parse has no push directory, so nothing on trial.
    let Ok(files) = Files::of(installed) else { return Ok(false) };
    let store = ConfigPush::open(installed, &files.pushed)?;
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

fn file_err(path: &Path, e: std::io::Error) -> PushError {
    PushError::File { path: path.to_owned(), why: e.to_string() }
}

fn file_sha(path: &Path) -> Result<[u8; 32], PushError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    Ok(Sha256::digest(&bytes).into())
}

fn remove_if_present(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %path.display(), error = %e, "config push: cannot remove");
    }
}

/// Creates the push directory (owner and group only: it holds whole configurations).
fn ensure_dir(dir: &Path) -> Result<(), PushError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o750).create(dir).map_err(|e| file_err(dir, e))?;
    sync_dir(dir)
}

fn read_status(path: &Path) -> Result<PushStatus, PushError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| PushError::File { path: path.to_owned(), why: format!("unreadable push status: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PushStatus::default()),
        Err(e) => Err(file_err(path, e)),
    }
}

fn write_status(files: &Files, status: &PushStatus) -> Result<(), PushError> {
    let path = files.status();
    let bytes =
        serde_json::to_vec_pretty(status).map_err(|e| PushError::File { path: path.clone(), why: e.to_string() })?;
    ensure_dir(&files.dir)?;
    write_atomic(&path, &bytes, &path)
}

/// Writes `bytes` to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs
/// the directory: `path` holds the old or the new bytes, never a mix. The new file takes the mode
/// of `mode_of` when that exists.
fn write_atomic(path: &Path, bytes: &[u8], mode_of: &Path) -> Result<(), PushError> {
    use std::io::Write as _;
    let tmp = beside(path, ".tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
    if let Ok(meta) = std::fs::metadata(mode_of) {
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
