//! Modbus TCP server for a [`Sim`].

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{Fault, Sim};

/// Idle connections are closed after this long without a request.
pub const IDLE: Duration = Duration::from_secs(120);

/// Serves Modbus TCP on `listener` until `shutdown` turns true. Requests for unknown units get
/// exception 0x0B (gateway target failed to respond).
pub async fn serve(listener: TcpListener, sim: Sim, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, sim.clone(), shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
        }
    }
}

async fn connection(mut s: TcpStream, sim: Sim, mut shutdown: watch::Receiver<bool>) {
    let mut header = [0u8; 7];
    let mut pdu = [0u8; 256];
    loop {
        let read = async {
            s.read_exact(&mut header).await?;
            let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
            if !(2..=254).contains(&len) {
                return Err(std::io::Error::other("bad MBAP length"));
            }
            s.read_exact(&mut pdu[..len - 1]).await?;
            Ok::<usize, std::io::Error>(len - 1)
        };
        let n = tokio::select! {
            r = tokio::time::timeout(IDLE, read) => match r { Ok(Ok(n)) => n, _ => return },
            _ = shutdown.changed() => return,
        };
        let unit = header[6];
        let (fault, resp) = match sim.handle(unit, &pdu[..n]) {
            Some(x) => x,
            None => (Fault::None, vec![pdu[0] | 0x80, 0x0B]),
        };
        let mut frame = Vec::with_capacity(7 + resp.len());
        frame.extend_from_slice(&header[..4]);
        frame.extend_from_slice(&((resp.len() + 1) as u16).to_be_bytes());
        frame.push(unit);
        frame.extend_from_slice(&resp);
        match fault {
            Fault::NoAnswer => continue,
            Fault::Drop => return,
            Fault::Garbage => frame = vec![0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x03, unit, 0x13, 0x37],
            Fault::Slow(d) => tokio::time::sleep(d).await,
            Fault::None | Fault::Exception(_) => {}
        }
        if s.write_all(&frame).await.is_err() {
            return;
        }
    }
}
