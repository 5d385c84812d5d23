//! Digital inputs and outputs by name: configured as (chip, line, active-low), opened through the
//! Linux GPIO character device, or simulated in memory. Inputs are debounced into change events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use serde::Deserialize;

/// Why a hardware operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HwError {
    /// A GPIO line could not be opened or driven.
    #[error("GPIO {name} ({chip} line {line}): {message}")]
    Gpio {
        /// The configured name.
        name: String,
        /// The chip device.
        chip: String,
        /// The line offset.
        line: u32,
        /// What failed.
        message: String,
    },
    /// No input or output of that name is configured.
    #[error("no digital line named {0:?} is configured")]
    Unknown(String),
    /// The watchdog device failed.
    #[error("watchdog {path}: {source}")]
    Watchdog {
        /// The device.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One GPIO line in the gateway configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LineConfig {
    /// Name used in rules and events (e.g. `cam1-alarm`, `siren`).
    pub name: String,
    /// GPIO chip device, e.g. `/dev/gpiochip0`.
    pub chip: String,
    /// Line offset on the chip.
    pub line: u32,
    /// True when the electrical low level means "active".
    #[serde(default)]
    pub active_low: bool,
}

/// Reading and driving named lines; implemented for real hardware and in memory.
pub trait DigitalIo: Send {
    /// The logical state of an input (after `active_low`).
    fn read(&mut self, name: &str) -> Result<bool, HwError>;
    /// Sets an output's logical state.
    fn write(&mut self, name: &str, on: bool) -> Result<(), HwError>;
}

/// Named lines over any `embedded-hal` 1.0 pins: the Linux character device in the field, memory
/// pins in tests and simulators.
pub struct PinIo<I, O> {
    inputs: BTreeMap<String, Line<I>>,
    outputs: BTreeMap<String, Line<O>>,
}

/// A pin of any `embedded-hal` 1.0 implementation, with its configuration.
struct Line<P> {
    config: LineConfig,
    pin: P,
}

fn gpio_err(c: &LineConfig, e: impl std::fmt::Display) -> HwError {
    HwError::Gpio { name: c.name.clone(), chip: c.chip.clone(), line: c.line, message: e.to_string() }
}

impl<I: InputPin + Send, O: OutputPin + Send> DigitalIo for PinIo<I, O>
where
    <I as ErrorType>::Error: std::fmt::Debug,
    <O as ErrorType>::Error: std::fmt::Debug,
{
    fn read(&mut self, name: &str) -> Result<bool, HwError> {
        let line = self.inputs.get_mut(name).ok_or_else(|| HwError::Unknown(name.to_owned()))?;
        // Polarity is applied by the pin: the character device with ACTIVE_LOW, memory pins are logical.
        line.pin.is_high().map_err(|e| gpio_err(&line.config, format!("{e:?}")))
    }

    fn write(&mut self, name: &str, on: bool) -> Result<(), HwError> {
        let line = self.outputs.get_mut(name).ok_or_else(|| HwError::Unknown(name.to_owned()))?;
        let r = if on { line.pin.set_high() } else { line.pin.set_low() };
        r.map_err(|e| gpio_err(&line.config, format!("{e:?}")))
    }
}

/// Lines on the Linux GPIO character device.
pub type CdevIo = PinIo<linux_embedded_hal::CdevPin, linux_embedded_hal::CdevPin>;

impl CdevIo {
    /// Requests the configured input and output lines; outputs start inactive.
    pub fn open(inputs: &[LineConfig], outputs: &[LineConfig]) -> Result<CdevIo, HwError> {
        use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
        let request = |c: &LineConfig, flags: LineRequestFlags| -> Result<linux_embedded_hal::CdevPin, HwError> {
            let mut chip = Chip::new(&c.chip).map_err(|e| gpio_err(c, e))?;
            let line = chip.get_line(c.line).map_err(|e| gpio_err(c, e))?;
            let flags = if c.active_low { flags | LineRequestFlags::ACTIVE_LOW } else { flags };
            let handle = line.request(flags, 0, "vigil-edge").map_err(|e| gpio_err(c, e))?;
            linux_embedded_hal::CdevPin::new(handle).map_err(|e| gpio_err(c, e))
        };
        let mut io = PinIo { inputs: BTreeMap::new(), outputs: BTreeMap::new() };
        for c in inputs {
            io.inputs.insert(c.name.clone(), Line { config: c.clone(), pin: request(c, LineRequestFlags::INPUT)? });
        }
        for c in outputs {
            io.outputs.insert(c.name.clone(), Line { config: c.clone(), pin: request(c, LineRequestFlags::OUTPUT)? });
        }
        Ok(io)
    }
}

/// An in-memory pin implementing the `embedded-hal` 1.0 input and output traits; clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryPin {
    level: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<bool>>>,
}

impl MemoryPin {
    /// Sets the level as the outside world would (a contact closing).
    pub fn set(&self, on: bool) {
        self.level.store(on, Ordering::SeqCst);
    }

    /// The current level.
    pub fn get(&self) -> bool {
        self.level.load(Ordering::SeqCst)
    }

    /// Every level written through the output trait, in order.
    pub fn writes(&self) -> Vec<bool> {
        self.writes.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

impl ErrorType for MemoryPin {
    type Error = std::convert::Infallible;
}

impl InputPin for MemoryPin {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        Ok(self.get())
    }
    fn is_low(&mut self) -> Result<bool, Self::Error> {
        Ok(!self.get())
    }
}

impl OutputPin for MemoryPin {
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.set(true);
        if let Ok(mut w) = self.writes.lock() {
            w.push(true);
        }
        Ok(())
    }
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.set(false);
        if let Ok(mut w) = self.writes.lock() {
            w.push(false);
        }
        Ok(())
    }
}

/// Named memory lines; the returned pins (clones sharing state) let a test drive inputs and watch outputs.
pub type MemoryIo = PinIo<MemoryPin, MemoryPin>;

impl MemoryIo {
    /// Memory lines with these input and output names, all off.
    pub fn memory(inputs: &[&str], outputs: &[&str]) -> (MemoryIo, BTreeMap<String, MemoryPin>) {
        let mut pins = BTreeMap::new();
        let mut io = PinIo { inputs: BTreeMap::new(), outputs: BTreeMap::new() };
        let config =
            |name: &str| LineConfig { name: name.to_owned(), chip: "memory".into(), line: 0, active_low: false };
        for name in inputs {
            let pin = MemoryPin::default();
            pins.insert((*name).to_owned(), pin.clone());
            io.inputs.insert((*name).to_owned(), Line { config: config(name), pin });
        }
        for name in outputs {
            let pin = MemoryPin::default();
            pins.insert((*name).to_owned(), pin.clone());
            io.outputs.insert((*name).to_owned(), Line { config: config(name), pin });
        }
        (io, pins)
    }
}

/// Debounces named inputs: a new level counts only after it held for `debounce`.
pub struct InputBank {
    names: Vec<String>,
    debounce: Duration,
    stable: BTreeMap<String, bool>,
    candidate: BTreeMap<String, (bool, Instant)>,
}

impl InputBank {
    /// A bank over these input names.
    pub fn new(names: Vec<String>, debounce: Duration) -> InputBank {
        InputBank { names, debounce, stable: BTreeMap::new(), candidate: BTreeMap::new() }
    }

    /// Reads every input once; returns the inputs whose debounced state changed (the first read of
    /// each input reports its initial state). Read errors are returned per input.
    pub fn poll(&mut self, io: &mut dyn DigitalIo, now: Instant) -> Vec<(String, Result<bool, HwError>)> {
        let mut changes = Vec::new();
        for name in &self.names {
            let level = match io.read(name) {
                Ok(l) => l,
                Err(e) => {
                    changes.push((name.clone(), Err(e)));
                    continue;
                }
            };
            match self.stable.get(name) {
                None => {
                    self.stable.insert(name.clone(), level);
                    changes.push((name.clone(), Ok(level)));
                }
                Some(&s) if s == level => {
                    self.candidate.remove(name);
                }
                Some(_) => {
                    let since = match self.candidate.get(name) {
                        Some(&(l, t)) if l == level => t,
                        _ => {
                            self.candidate.insert(name.clone(), (level, now));
                            now
                        }
                    };
                    if now.duration_since(since) >= self.debounce {
                        self.stable.insert(name.clone(), level);
                        self.candidate.remove(name);
                        changes.push((name.clone(), Ok(level)));
                    }
                }
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounce_ignores_chatter_and_reports_held_changes() {
        let (mut io, pins) = MemoryIo::memory(&["cam1"], &[]);
        let contact = &pins["cam1"];
        let mut bank = InputBank::new(vec!["cam1".into()], Duration::from_millis(50));
        let t0 = Instant::now();
        let first = bank.poll(&mut io, t0);
        assert_eq!(first.len(), 1);
        assert!(first[0].1.as_ref().is_ok_and(|&on| !on), "initial state reported");
        contact.set(true);
        assert!(bank.poll(&mut io, t0 + Duration::from_millis(10)).is_empty());
        contact.set(false); // chatter
        assert!(bank.poll(&mut io, t0 + Duration::from_millis(20)).is_empty());
        contact.set(true);
        assert!(bank.poll(&mut io, t0 + Duration::from_millis(30)).is_empty());
        let changes = bank.poll(&mut io, t0 + Duration::from_millis(85));
        assert_eq!(changes.len(), 1);
        assert!(changes[0].1.as_ref().is_ok_and(|&on| on));
    }

    #[test]
    fn outputs_drive_the_pins_and_unknown_lines_are_errors() {
        let (mut io, pins) = MemoryIo::memory(&["di"], &["siren"]);
        io.write("siren", true).unwrap();
        io.write("siren", false).unwrap();
        assert_eq!(pins["siren"].writes(), vec![true, false]);
        assert!(matches!(io.write("di", true), Err(HwError::Unknown(_))), "inputs are not outputs");
        assert!(matches!(io.read("nope"), Err(HwError::Unknown(_))));
        let missing = LineConfig { name: "x".into(), chip: "/dev/no-such-gpiochip".into(), line: 0, active_low: false };
        assert!(matches!(CdevIo::open(&[missing], &[]), Err(HwError::Gpio { .. })));
    }
}
