//! RS485 transceiver direction for serial adapters that do not switch it themselves: drive the
//! driver-enable line before a frame, keep it until the last stop bit has left the wire, release it.

use std::time::Duration;

use embedded_hal::digital::{ErrorType, OutputPin};

/// Serial line settings that decide how long a frame takes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTiming {
    /// Baud rate.
    pub baud: u32,
    /// Bits per character including start, parity and stop bits (10 for 8N1, 11 for 8E1).
    pub bits_per_char: u32,
}

impl LineTiming {
    /// Time to send `bytes` characters.
    pub fn frame_time(&self, bytes: usize) -> Duration {
        let bits = bytes as u64 * u64::from(self.bits_per_char);
        Duration::from_micros(bits * 1_000_000 / u64::from(self.baud.max(1)))
    }

    /// The Modbus RTU inter-frame gap: 3.5 character times, at least 1.75 ms above 19,200 baud.
    pub fn inter_frame_gap(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            Duration::from_micros(u64::from(self.bits_per_char) * 3_500_000 / u64::from(self.baud.max(1)))
        }
    }
}

/// Drives a transceiver's driver-enable (DE, tied to /RE) line around each transmission.
pub struct Direction<P> {
    enable: P,
    timing: LineTiming,
}

impl<P: OutputPin> Direction<P>
where
    <P as ErrorType>::Error: std::fmt::Debug,
{
    /// Direction control on `enable`; starts in receive mode.
    pub fn new(mut enable: P, timing: LineTiming) -> Result<Self, String> {
        enable.set_low().map_err(|e| format!("{e:?}"))?;
        Ok(Direction { enable, timing })
    }

    /// Enables the driver, runs `write` (which sends `bytes` characters), waits until they have left
    /// the wire, and returns to receive mode even when `write` failed.
    pub fn transmit<T, E>(&mut self, bytes: usize, write: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let _ = self.enable.set_high();
        let result = write();
        // The UART still shifts out what the write call queued: hold the line for the frame time.
        std::thread::sleep(self.timing.frame_time(bytes));
        let _ = self.enable.set_low();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpio::MemoryPin;

    #[test]
    fn the_driver_is_enabled_only_around_a_frame() {
        let pin = MemoryPin::default();
        let timing = LineTiming { baud: 9600, bits_per_char: 10 };
        let mut dir = Direction::new(pin.clone(), timing).unwrap();
        let started = std::time::Instant::now();
        let seen = dir.transmit(8, || -> Result<bool, ()> { Ok(pin.get()) }).unwrap();
        assert!(seen, "driver enabled during the write");
        assert!(!pin.get(), "back to receive");
        assert!(started.elapsed() >= Duration::from_micros(8333), "held for 8 characters at 9600 8N1");
        let _ = dir.transmit(1, || -> Result<(), ()> { Err(()) });
        assert!(!pin.get(), "released after a failed write too");
        assert_eq!(timing.inter_frame_gap(), Duration::from_micros(3645));
        assert_eq!(LineTiming { baud: 115_200, bits_per_char: 10 }.inter_frame_gap(), Duration::from_micros(1750));
    }
}
