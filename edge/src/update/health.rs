//! The health file: the running agent rewrites it every second with whether it is healthy
//! (running, configuration valid, connected or spooling); the launcher reads it to judge a trial.
//! It is the one contract between a launcher and the agent versions it starts, so it is small,
//! JSON, and read leniently.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::spool::{BatcherMetrics, now_ms};

/// How often the agent rewrites the health file.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A health file older than this does not count.
pub const STALE_MS: i64 = 10_000;

/// What the agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The agent's process id.
    pub pid: u32,
    /// Its version.
    pub version: String,
    /// When written, UTC ms.
    pub ts_ms: i64,
    /// `connected`, `spooling` or `failing`.
    pub uplink: String,
    /// Healthy: the configuration loaded, and data is reaching central or the spool.
    pub healthy: bool,
}

impl Health {
    /// Reads a health file; `None` if missing, unreadable or stale at `now_ms`.
    pub fn read(path: &Path, now_ms: i64) -> Option<Health> {
        let text = std::fs::read(path).ok()?;
        let h: Health = serde_json::from_slice(&text).ok()?;
        (now_ms - h.ts_ms <= STALE_MS).then_some(h)
    }
}

/// Writes the health file named by `VIGIL_HEALTH_FILE` (set by the launcher) every second until
/// shutdown; does nothing when the agent was started without a launcher.
pub async fn report(online: Arc<AtomicBool>, batcher: Arc<BatcherMetrics>, mut shutdown: watch::Receiver<bool>) {
    let Some(path) = std::env::var_os(super::install::ENV_HEALTH).map(PathBuf::from) else { return };
    let mut tick = tokio::time::interval(INTERVAL);
    let mut errors_before = batcher.store_errors.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { break },
        }
        let errors = batcher.store_errors.load(Ordering::Relaxed);
        let stored = batcher.batches.load(Ordering::Relaxed) > 0;
        let connected = online.load(Ordering::Relaxed);
        let spooling = stored && errors == errors_before;
        errors_before = errors;
        let h = Health {
            pid: std::process::id(),
            version: super::running_version(),
            ts_ms: now_ms(),
            uplink: if connected {
                "connected"
            } else if spooling {
                "spooling"
            } else {
                "failing"
            }
            .to_owned(),
            healthy: connected || spooling,
        };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&h)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the health file");
        }
    }
}
