//! The gateway clock's synchronisation as the kernel keeps it: `adjtimex(2)` with `modes = 0` only
//! reads the NTP state (no privilege, nothing changes), whichever daemon (chrony, ntpd,
//! systemd-timesyncd) disciplines the clock. This is the only `unsafe` in the agent; everything
//! else about the answer is the pure [`classify`].

pub use vigil_common::state::ClockSync;

/// `adjtimex` returns this state when the clock is not synchronised.
const TIME_ERROR: i32 = 5;
/// Status bit: the clock is not synchronised (set by the kernel when no daemon updated it for a
/// while, and by daemons before they have a source).
const STA_UNSYNC: i32 = 0x0040;
/// The kernel's largest `maxerror` (16 s, `NTP_PHASE_LIMIT`): at it the clock is unsynchronised.
const MAX_ERROR_LIMIT_US: i64 = 16_000_000;

/// The state from `adjtimex`'s return value and the `status`, `maxerror` and `esterror` fields
/// (microseconds). A negative return is a failed call: unknown.
pub fn classify(ret: i32, status: i32, max_error_us: i64, est_error_us: i64) -> ClockSync {
    let us = |v: i64| u64::try_from(v.max(0)).unwrap_or(0);
    if ret < 0 {
        ClockSync::Unknown
    } else if ret == TIME_ERROR || status & STA_UNSYNC != 0 || max_error_us >= MAX_ERROR_LIMIT_US {
        ClockSync::Unsynced { max_error_us: us(max_error_us) }
    } else {
        ClockSync::Synced { est_error_us: us(est_error_us), max_error_us: us(max_error_us) }
    }
}

/// The clock's state now (`Unknown` where the call fails, e.g. refused by a seccomp filter, or off
/// Linux).
pub fn read() -> ClockSync {
    match read_kernel() {
        Ok((ret, status, max_error_us, est_error_us)) => classify(ret, status, max_error_us, est_error_us),
        Err(e) => {
            tracing::debug!(error = %e, "adjtimex failed; clock state unknown");
            ClockSync::Unknown
        }
    }
}

/// The state in words, for the page and the terminal.
pub fn describe(sync: ClockSync) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    match sync {
        ClockSync::Synced { est_error_us, max_error_us } => format!(
            "synchronised (kernel NTP state): estimated error {:.3} ms, maximum error {:.3} ms",
            ms(est_error_us),
            ms(max_error_us)
        ),
        ClockSync::Unsynced { .. } => "NOT synchronised (kernel NTP state: no time daemon has set it)".into(),
        ClockSync::Unknown => "unknown (the kernel NTP state could not be read)".into(),
    }
}

/// Widens a `timex` field (`c_long`: 32 bits on armv7, 64 on aarch64 and x86_64).
fn wide<T: Into<i64>>(v: T) -> i64 {
    v.into()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn read_kernel() -> std::io::Result<(i32, i32, i64, i64)> {
    // SAFETY: `timex` is plain old data for which all-zero bytes are valid (modes = 0: read only);
    // the kernel writes into the one struct we own for the duration of the call.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::adjtimex(&mut t) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((ret, t.status, wide(t.maxerror), wide(t.esterror)))
}

#[cfg(not(target_os = "linux"))]
fn read_kernel() -> std::io::Result<(i32, i32, i64, i64)> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "adjtimex is Linux only"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_fields_map_to_the_state() {
        // TIME_OK with an estimated error: synchronised.
        assert_eq!(classify(0, 0x2001, 120_000, 350), ClockSync::Synced { est_error_us: 350, max_error_us: 120_000 });
        // Leap second pending (TIME_INS) is still synchronised.
        assert!(matches!(classify(1, 0x0011, 1_000, 10), ClockSync::Synced { .. }));
        // TIME_ERROR, the STA_UNSYNC bit, or maxerror at the kernel limit: unsynchronised.
        assert_eq!(classify(5, 0x0040, 16_000_000, 16_000_000), ClockSync::Unsynced { max_error_us: 16_000_000 });
        assert_eq!(classify(0, 0x0040, 1_000, 10), ClockSync::Unsynced { max_error_us: 1_000 });
        assert_eq!(classify(5, 0, 1_000, 10), ClockSync::Unsynced { max_error_us: 1_000 });
        assert_eq!(classify(0, 0, 16_000_000, 10), ClockSync::Unsynced { max_error_us: 16_000_000 });
        // A failed call: unknown. Negative errors never wrap around.
        assert_eq!(classify(-1, 0, 0, 0), ClockSync::Unknown);
        assert_eq!(classify(0, 0, -5, -5), ClockSync::Synced { est_error_us: 0, max_error_us: 0 });
        assert!(describe(ClockSync::Unsynced { max_error_us: 1 }).contains("NOT synchronised"));
        assert!(describe(ClockSync::Synced { est_error_us: 1500, max_error_us: 2000 }).contains("1.500 ms"));
    }

    #[test]
    fn the_real_call_answers() {
        // Whatever this machine's clock does, the call itself works on Linux (modes 0 needs no
        // privilege); only the mapping above is checked for values.
        #[cfg(target_os = "linux")]
        assert!(read_kernel().is_ok(), "{:?}", read_kernel());
        let _ = read();
    }
}
