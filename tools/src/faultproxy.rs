//! A fault-injecting TCP proxy: forwards connections to an upstream address and can cut every
//! connection and refuse new ones for a while, as a failing plant network or uplink would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; dropping it stops accepting.
pub struct FaultProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        FaultProxy::start_on(0, upstream).await
    }

    /// Listens on loopback `port` (0: a free one) and forwards to `upstream`.
    pub async fn start_on(port: u16, upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (generation, gen_rx) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(listener, upstream, cut.clone(), gen_rx, accepted.clone()));
        Ok(FaultProxy { addr, cut, generation, accepted, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Cuts every open connection and refuses new ones until [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Whether connections are cut now.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Receiver<u64>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        if cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        accepted.fetch_add(1, Ordering::Relaxed);
        let mut gen_rx = generation.clone();
        // Only cuts after this connection was accepted concern it.
        gen_rx.borrow_and_update();
        tokio::spawn(async move {
            let connect = tokio::time::timeout(std::time::Duration::from_secs(5), TcpStream::connect(upstream)).await;
            let Ok(Ok(mut server)) = connect else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = gen_rx.changed() => {}
            }
        });
    }
}
