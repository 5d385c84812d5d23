//! RS485 direction for adapters that do not switch the transceiver themselves: the serial port is
//! wrapped so the driver-enable line goes on before a request's first byte and off once its last
//! byte has left the wire, in time for the slave's answer. The line comes from `vigil-hw` (a GPIO
//! character-device line in the field, a memory pin in tests).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use vigil_hw::DigitalIo;
use vigil_hw::rs485::LineTiming;

/// A serial port whose writes are framed by the driver-enable line `line` of `io`.
pub struct DirectedPort<S> {
    inner: S,
    io: Box<dyn DigitalIo>,
    line: String,
    timing: LineTiming,
    /// When the current transmission's first byte was queued, and how many bytes it holds.
    sending: Option<(Instant, usize)>,
    hold: Option<Pin<Box<Sleep>>>,
}

impl<S> DirectedPort<S> {
    /// Wraps `inner`; the line is switched to receive first, so a failing line fails here.
    pub fn new(inner: S, mut io: Box<dyn DigitalIo>, line: String, timing: LineTiming) -> std::io::Result<Self> {
        io.write(&line, false).map_err(|e| std::io::Error::other(format!("RS485 direction line {line}: {e}")))?;
        Ok(DirectedPort { inner, io, line, timing, sending: None, hold: None })
    }

    fn drive(&mut self, on: bool) -> std::io::Result<()> {
        self.io
            .write(&self.line, on)
            .map_err(|e| std::io::Error::other(format!("RS485 direction line {}: {e}", self.line)))
    }

    /// Back to receive (also after a failed write: a line left driving would block the whole bus).
    fn release(&mut self) -> std::io::Result<()> {
        self.sending = None;
        self.hold = None;
        self.drive(false)
    }
}

impl<S> std::fmt::Debug for DirectedPort<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectedPort").field("line", &self.line).field("sending", &self.sending).finish()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DirectedPort<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DirectedPort<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.sending.is_none() {
            self.drive(true)?;
            self.sending = Some((Instant::now(), 0));
        }
        match ready!(Pin::new(&mut self.inner).poll_write(cx, data)) {
            Ok(n) => {
                if let Some((_, bytes)) = &mut self.sending {
                    *bytes += n;
                }
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                let _ = self.release();
                Poll::Ready(Err(e))
            }
        }
    }

    /// Flushes, then keeps driving until the queued bytes are on the wire (the UART shifts them out
    /// after the write returned): from the first byte, one frame time of all of them.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Err(e) = ready!(Pin::new(&mut self.inner).poll_flush(cx)) {
            let _ = self.release();
            return Poll::Ready(Err(e));
        }
        let Some((started, bytes)) = self.sending else { return Poll::Ready(Ok(())) };
        let until = started + self.timing.frame_time(bytes);
        let hold = self.hold.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        ready!(hold.as_mut().poll(cx));
        Poll::Ready(self.release())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use vigil_hw::MemoryIo;

    use super::*;

    #[tokio::test]
    async fn the_line_drives_only_while_a_request_is_on_the_wire() {
        let (io, pins) = MemoryIo::memory(&[], &["de"]);
        let de = pins["de"].clone();
        let (a, mut b) = tokio::io::duplex(1024);
        let t = LineTiming { baud: 9600, bits_per_char: 10 };
        let mut port = DirectedPort::new(a, Box::new(io), "de".into(), t).unwrap();
        assert!(!de.get(), "receiving at start");
        let started = std::time::Instant::now();
        port.write_all(&[1, 3, 0, 0, 0, 8, 0x44, 0x0c]).await.unwrap();
        assert!(de.get(), "driving while the frame is queued");
        port.flush().await.unwrap();
        assert!(!de.get(), "released after the frame");
        assert!(started.elapsed() >= t.frame_time(8), "held for 8 characters at 9600 8N1 ({:?})", started.elapsed());
        let mut got = [0u8; 8];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got[0], 1, "the bytes went through");
        // The answer is read with the line off; a second request switches it on and off again.
        b.write_all(&[1, 3, 2, 0, 7]).await.unwrap();
        let mut answer = [0u8; 5];
        port.read_exact(&mut answer).await.unwrap();
        assert!(!de.get());
        port.write_all(&[1]).await.unwrap();
        port.flush().await.unwrap();
        assert_eq!(de.writes(), vec![false, true, false, true, false], "one on/off pair per request");
    }

    #[tokio::test]
    async fn a_failed_write_releases_the_line() {
        let (io, pins) = MemoryIo::memory(&[], &["de"]);
        let (a, b) = tokio::io::duplex(16);
        drop(b);
        let mut port =
            DirectedPort::new(a, Box::new(io), "de".into(), LineTiming { baud: 9600, bits_per_char: 10 }).unwrap();
        assert!(port.write_all(&[1, 2, 3]).await.is_err());
        assert!(!pins["de"].get(), "not left driving the bus");
    }

    #[test]
    fn an_unknown_line_fails_at_once() {
        let (io, _) = MemoryIo::memory(&[], &["de"]);
        let err = DirectedPort::new(
            tokio::io::empty(),
            Box::new(io),
            "nope".into(),
            LineTiming { baud: 9600, bits_per_char: 10 },
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
