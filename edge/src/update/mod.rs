//! Updates that cannot brick a box: signed bundles, A/B install beside the running version, an
//! atomic switch, a trial that the new version must pass (healthy within a window) or the previous
//! version comes back by itself, and an append-only history reported to central.
//!
//! - [`bundle`]: the signed file format (`vigil-edge update pack` makes one).
//! - [`install`]: the on-disk layout under the agent root (default `/var/lib/vigil/agent`), the
//!   apply steps, commit and rollback, each step durable before the next.
//! - [`launcher`]: `vigil-edge launch`, which the service runs: it execs the `current` version,
//!   judges a trial by the health file the agent writes, commits or rolls back.
//! - [`health`]: the health file the running agent keeps fresh for the launcher.

pub mod bundle;
pub mod cli;
pub mod health;
pub mod install;
pub mod launcher;
pub mod remote;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vigil_common::PublicKey;

pub use bundle::{Bundle, BundleError, BundleHeader, RUNNING_TARGET};
pub use install::{HistoryRecord, Layout, Trial};

/// Default agent root (versions, `current`, trial marker, history, health file).
pub const DEFAULT_ROOT: &str = "/var/lib/vigil/agent";
/// Default file of trusted release keys, one `ed25519:<hex>` per line (`#` comments).
pub const DEFAULT_KEYS_FILE: &str = "/etc/vigil/release-keys";

/// The `[update]` section of the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Agent root holding the installed versions (default `/var/lib/vigil/agent`).
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// Trusted release public keys (`ed25519:<hex>`), in addition to those in `release_keys_file`.
    #[serde(default)]
    pub release_keys: Vec<String>,
    /// File of trusted release keys (default `/etc/vigil/release-keys`; a missing file adds none).
    #[serde(default = "default_keys_file")]
    pub release_keys_file: PathBuf,
    /// A new version must become healthy within this many seconds of its start (default 180).
    #[serde(default = "default_window")]
    pub trial_window_s: u64,
    /// ... and stay healthy this long before the update is committed (default 30).
    #[serde(default = "default_healthy_for")]
    pub healthy_for_s: u64,
    /// Starts of a new version (crashes, power cuts) before it is rolled back (default 3).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Central's API (`https://HOST:PORT`, checked against `[uplink.tls] ca_file`, or
    /// `http://HOST:PORT`: the address the gateway enrolled with), where bundles ordered by central
    /// are downloaded from; absent: central-ordered updates are refused.
    #[serde(default)]
    pub central_url: Option<String>,
    /// Longest time one download attempt of an ordered bundle may take, seconds (default 300).
    #[serde(default = "default_download_timeout")]
    pub download_timeout_s: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            root: default_root(),
            release_keys: Vec::new(),
            release_keys_file: default_keys_file(),
            trial_window_s: default_window(),
            healthy_for_s: default_healthy_for(),
            max_attempts: default_attempts(),
            central_url: None,
            download_timeout_s: default_download_timeout(),
        }
    }
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}
fn default_keys_file() -> PathBuf {
    PathBuf::from(DEFAULT_KEYS_FILE)
}
fn default_window() -> u64 {
    180
}
fn default_healthy_for() -> u64 {
    30
}
fn default_attempts() -> u32 {
    3
}
fn default_download_timeout() -> u64 {
    300
}

impl UpdateConfig {
    /// Problems with these settings, as (key, problem).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, k) in self.release_keys.iter().enumerate() {
            if let Err(e) = PublicKey::from_text(k) {
                out.push((format!("release_keys[{i}]"), e.to_string()));
            }
        }
        if !(10..=3600).contains(&self.trial_window_s) {
            out.push(("trial_window_s".into(), format!("{} is outside 10..=3600", self.trial_window_s)));
        }
        if self.healthy_for_s == 0 || self.healthy_for_s >= self.trial_window_s {
            out.push(("healthy_for_s".into(), "must be at least 1 and below trial_window_s".into()));
        }
        if !(1..=20).contains(&self.max_attempts) {
            out.push(("max_attempts".into(), format!("{} is outside 1..=20", self.max_attempts)));
        }
        if let Some(url) = &self.central_url
            && let Err(e) = remote::base_url(url)
        {
            out.push(("central_url".into(), e));
        }
        if !(5..=3600).contains(&self.download_timeout_s) {
            out.push(("download_timeout_s".into(), format!("{} is outside 5..=3600", self.download_timeout_s)));
        }
        out
    }

    /// The `[update]` section of a configuration file, read leniently: an update must still be
    /// possible on a box whose configuration no longer validates (that may be what it fixes).
    pub fn from_config_file(path: &Path) -> Result<UpdateConfig, UpdateError> {
        let text = std::fs::read_to_string(path).map_err(|e| UpdateError::io(path, e))?;
        let doc: toml::Table =
            toml::from_str(&text).map_err(|e| UpdateError::Config(format!("{}: {}", path.display(), e.message())))?;
        match doc.get("update") {
            None => Ok(UpdateConfig::default()),
            Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
                UpdateError::Config(format!("{}: [update]: {}", path.display(), e.message()))
            }),
        }
    }

    /// The trusted release keys: those listed here and those in the keys file.
    pub fn trusted_keys(&self) -> Result<Vec<PublicKey>, UpdateError> {
        let mut keys = Vec::new();
        for (i, k) in self.release_keys.iter().enumerate() {
            keys.push(
                PublicKey::from_text(k).map_err(|e| UpdateError::Config(format!("[update] release_keys[{i}]: {e}")))?,
            );
        }
        match std::fs::read_to_string(&self.release_keys_file) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.split('#').next().unwrap_or("").trim();
                    if line.is_empty() {
                        continue;
                    }
                    keys.push(PublicKey::from_text(line).map_err(|e| {
                        UpdateError::Config(format!("{} line {}: {e}", self.release_keys_file.display(), n + 1))
                    })?);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(UpdateError::io(&self.release_keys_file, e)),
        }
        Ok(keys)
    }
}

/// Why an update operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The bundle was refused; nothing was touched.
    #[error("bundle refused, nothing was changed: {0}")]
    Bundle(#[from] BundleError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Settings are malformed.
    #[error("{0}")]
    Config(String),
    /// The operation is not possible in the current state (e.g. a trial is in progress).
    #[error("{0}")]
    State(String),
}

impl UpdateError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> UpdateError {
        UpdateError::Io { path: path.to_owned(), source }
    }
}

/// The version this process is running as far as updates know: the installed bundle's version
/// when the launcher started it from the agent root, else the compiled-in package version.
pub fn running_version() -> String {
    std::env::var(install::ENV_VERSION)
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
}

/// The installed version and recent history for the state message to central; empty when the
/// agent was not started by the launcher (no agent root known).
pub fn report() -> vigil_common::UpdateReport {
    let Some(root) = std::env::var_os(install::ENV_ROOT) else { return vigil_common::UpdateReport::default() };
    let layout = Layout::new(PathBuf::from(root));
    let installed = layout.current().map(|n| layout.version_of(&n).unwrap_or(n));
    let on_trial = layout.trial().ok().flatten().map(|t| t.version);
    let history = layout
        .history(vigil_common::UpdateReport::MAX_HISTORY)
        .into_iter()
        .map(|r| vigil_common::UpdateRecord {
            ts_ms: r.ts_ms,
            event: r.event,
            version: r.version,
            detail: r.detail.chars().take(200).collect(),
        })
        .collect();
    vigil_common::UpdateReport { installed, on_trial, history }
}

/// Test hook for the crash-at-every-step tests: when `VIGIL_UPDATE_CRASH_AT` names `step`, the
/// process exits at once with status 9, as if killed there (no cleanup runs).
pub(crate) fn crash_point(step: &str) {
    if std::env::var("VIGIL_UPDATE_CRASH_AT").is_ok_and(|s| s == step) {
        eprintln!("VIGIL_UPDATE_CRASH_AT={step}: exiting as if killed");
        std::process::exit(9);
    }
}
