//! RS485 line timing: how long a frame takes on the wire and the Modbus RTU inter-frame gap. The
//! agent's direction control (`vigil_edge::sources::modbus::direction`) holds the transceiver's
//! driver-enable line for exactly a frame's time.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_and_gap_times_follow_the_line_settings() {
        let timing = LineTiming { baud: 9600, bits_per_char: 10 };
        assert_eq!(timing.frame_time(8), Duration::from_micros(8333), "8 characters at 9600 8N1");
        assert_eq!(timing.inter_frame_gap(), Duration::from_micros(3645));
        assert_eq!(LineTiming { baud: 115_200, bits_per_char: 10 }.inter_frame_gap(), Duration::from_micros(1750));
    }
}
