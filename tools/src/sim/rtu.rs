//! Modbus RTU slave(s) for a [`Sim`] on a serial pseudo-terminal: the agent opens the pty's slave
//! path as if it were an RS485 adapter.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serialport::{SerialPort, TTYPort};

use super::{Fault, Sim, crc16};

/// A running RTU bus on a pseudo-terminal.
pub struct RtuBus {
    /// Path of the pty the agent opens (e.g. `/dev/pts/7`).
    pub path: PathBuf,
    /// Frames with a bad CRC or too short, ignored as a real slave would.
    pub bad_frames: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RtuBus {
    /// Opens a pty pair and serves `sim`'s units on it from a thread.
    pub fn spawn(sim: Sim) -> std::io::Result<RtuBus> {
        let (mut master, slave) = TTYPort::pair().map_err(std::io::Error::other)?;
        let path = PathBuf::from(slave.name().ok_or_else(|| std::io::Error::other("pty has no name"))?);
        master.set_timeout(Duration::from_millis(50)).map_err(std::io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let bad_frames = Arc::new(AtomicU64::new(0));
        let (s2, b2) = (stop.clone(), bad_frames.clone());
        let thread = std::thread::Builder::new().name("vigil-sim-rtu".into()).spawn(move || {
            // Keeping our handle on the slave side open means the master never sees EIO while the
            // agent closes and reopens the port.
            let _slave = slave;
            serve(master, sim, &s2, &b2);
        })?;
        Ok(RtuBus { path, bad_frames, stop, thread: Some(thread) })
    }
}

impl Drop for RtuBus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut port: TTYPort, sim: Sim, stop: &AtomicBool, bad: &AtomicU64) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let mut frame = Vec::new();
        let _ = port.set_timeout(Duration::from_millis(50));
        match port.read(&mut buf) {
            Ok(n) if n > 0 => frame.extend_from_slice(&buf[..n]),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut || e.kind() == std::io::ErrorKind::Interrupted => {
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        // The frame ends at a silent gap (3.5 character times; 3 ms is plenty on a pty).
        let _ = port.set_timeout(Duration::from_millis(3));
        while frame.len() < 512 {
            match port.read(&mut buf) {
                Ok(n) if n > 0 => frame.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        if frame.len() < 4 {
            bad.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (body, crc) = frame.split_at(frame.len() - 2);
        if crc16(body) != u16::from_le_bytes([crc[0], crc[1]]) {
            bad.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let unit = body[0];
        if unit == 0 {
            continue; // broadcast: no answer
        }
        let Some((fault, pdu)) = sim.handle(unit, &body[1..]) else {
            continue; // another slave's address: silence
        };
        let mut out = Vec::with_capacity(pdu.len() + 3);
        out.push(unit);
        out.extend_from_slice(&pdu);
        out.extend_from_slice(&crc16(&out).to_le_bytes());
        match fault {
            Fault::NoAnswer => continue,
            Fault::Slow(d) => std::thread::sleep(d),
            Fault::Garbage => out = vec![unit, pdu.first().copied().unwrap_or(3), 0xFF, 0x13, 0x37, 0x00, 0x42],
            Fault::Drop => out.truncate(out.len() / 2),
            Fault::None | Fault::Exception(_) => {}
        }
        let _ = port.write_all(&out);
        let _ = port.flush();
    }
}
