//! The hardware watchdog, kicked only while every registered loop of the agent reports progress, so
//! a hung agent gets the box rebooted; disabled cleanly (magic close) on an orderly shutdown.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::gpio::HwError;

/// A watchdog that must be kicked regularly.
pub trait Watchdog: Send {
    /// Resets the countdown.
    fn kick(&mut self) -> Result<(), HwError>;
    /// Stops the watchdog (orderly shutdown).
    fn disable(&mut self) -> Result<(), HwError>;
}

/// `/dev/watchdog` (or another watchdog device).
pub struct LinuxWatchdog {
    path: PathBuf,
    file: Option<File>,
}

impl LinuxWatchdog {
    /// Opens the device; from this moment it must be kicked.
    pub fn open(path: &Path) -> Result<LinuxWatchdog, HwError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| HwError::Watchdog { path: path.display().to_string(), source })?;
        Ok(LinuxWatchdog { path: path.to_owned(), file: Some(file) })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), HwError> {
        let path = self.path.display().to_string();
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes).and_then(|_| f.flush()).map_err(|source| HwError::Watchdog { path, source }),
            None => Ok(()),
        }
    }
}

impl Watchdog for LinuxWatchdog {
    fn kick(&mut self) -> Result<(), HwError> {
        self.write(b"\0")
    }

    fn disable(&mut self) -> Result<(), HwError> {
        // The magic close: writing 'V' before closing stops drivers that allow it.
        self.write(b"V")?;
        self.file = None;
        Ok(())
    }
}

/// A watchdog in memory: counts kicks, remembers whether it was disabled.
#[derive(Debug, Clone, Default)]
pub struct MemoryWatchdog {
    kicks: Arc<AtomicU64>,
    disabled: Arc<Mutex<bool>>,
}

impl MemoryWatchdog {
    /// Kicks so far.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::SeqCst)
    }

    /// True once disabled.
    pub fn disabled(&self) -> bool {
        self.disabled.lock().map(|d| *d).unwrap_or(false)
    }
}

impl Watchdog for MemoryWatchdog {
    fn kick(&mut self) -> Result<(), HwError> {
        self.kicks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn disable(&mut self) -> Result<(), HwError> {
        if let Ok(mut d) = self.disabled.lock() {
            *d = true;
        }
        Ok(())
    }
}

/// A loop's proof of life, given to the loop by [`Supervisor::register`].
#[derive(Debug, Clone)]
pub struct Heartbeat {
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl Heartbeat {
    /// Reports progress.
    pub fn beat(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

struct Watched {
    name: String,
    max_silence: Duration,
    last: Arc<AtomicU64>,
}

/// Kicks the watchdog only while every registered loop beat within its allowed silence.
pub struct Supervisor {
    epoch: Instant,
    watched: Vec<Watched>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor { epoch: Instant::now(), watched: Vec::new() }
    }
}

impl Supervisor {
    /// A supervisor with nothing registered.
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Registers a loop that must beat at least every `max_silence`.
    pub fn register(&mut self, name: &str, max_silence: Duration) -> Heartbeat {
        let last = Arc::new(AtomicU64::new(self.epoch.elapsed().as_millis() as u64));
        self.watched.push(Watched { name: name.to_owned(), max_silence, last: last.clone() });
        Heartbeat { last, epoch: self.epoch }
    }

    /// The loops that have been silent too long.
    pub fn hung(&self) -> Vec<String> {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.watched
            .iter()
            .filter(|w| now.saturating_sub(w.last.load(Ordering::Relaxed)) > w.max_silence.as_millis() as u64)
            .map(|w| w.name.clone())
            .collect()
    }

    /// One supervision step: kicks when nothing is hung; returns the hung loops otherwise.
    pub fn check(&self, watchdog: &mut dyn Watchdog) -> Result<Vec<String>, HwError> {
        let hung = self.hung();
        if hung.is_empty() {
            watchdog.kick()?;
        } else {
            tracing::error!(?hung, "agent loops hung: no longer kicking the watchdog; the box will reboot");
        }
        Ok(hung)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_loop_stops_the_kicks() {
        let mut dog = MemoryWatchdog::default();
        let mut sup = Supervisor::new();
        let acquisition = sup.register("acquisition", Duration::from_millis(100));
        let uplink = sup.register("uplink", Duration::from_millis(100));
        for _ in 0..3 {
            acquisition.beat();
            uplink.beat();
            assert!(sup.check(&mut dog).unwrap().is_empty());
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(dog.kicks(), 3);
        // The uplink hangs; acquisition goes on.
        for _ in 0..6 {
            acquisition.beat();
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(sup.check(&mut dog).unwrap(), vec!["uplink".to_owned()]);
        assert_eq!(dog.kicks(), 3, "no kick while a loop is hung");
        uplink.beat();
        assert!(sup.check(&mut dog).unwrap().is_empty());
        assert_eq!(dog.kicks(), 4);
        dog.disable().unwrap();
        assert!(dog.disabled());
    }

    #[test]
    fn the_linux_watchdog_writes_kicks_and_the_magic_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").unwrap();
        let mut dog = LinuxWatchdog::open(&path).unwrap();
        dog.kick().unwrap();
        dog.kick().unwrap();
        dog.disable().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
        assert!(LinuxWatchdog::open(&dir.path().join("missing")).is_err());
    }
}
