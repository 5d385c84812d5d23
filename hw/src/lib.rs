//! Gateway hardware behind `embedded-hal` 1.0 traits: digital inputs and outputs (camera alarm
//! contact, local siren relay, status LED), RS485 transceiver direction, and the hardware watchdog.
//! Each has a Linux implementation (GPIO character device, `/dev/watchdog`) and an in-memory one that
//! tests and simulators drive.

pub mod gpio;
pub mod rs485;
pub mod watchdog;

pub use gpio::{CdevIo, DigitalIo, HwError, InputBank, LineConfig, MemoryIo, MemoryPin, PinIo};
pub use watchdog::{Heartbeat, LinuxWatchdog, MemoryWatchdog, Supervisor, Watchdog};
