//! Central's embedded MQTT 3.1.1 broker, so a small park runs one binary and no other service.
//!
//! Mutual TLS against the park CA; a client's identity is its certificate's common name, which must
//! equal its MQTT client id. A gateway (registered, not revoked) publishes only its own `up/batch`
//! and `up/state` and subscribes only to its own `down/ack` and `down/cmd`; central's client (the
//! configured CN) subscribes to every gateway's `up/...` and publishes on `down/...`. QoS 0 and 1,
//! retained messages (persisted in the data directory), wills, keep-alive, session takeover, bounded
//! queues (a subscriber that cannot keep up is disconnected and counted), connection and packet
//! limits, handshake timeout. Packets are encoded and decoded by `rumqttc::mqttbytes::v4`.

mod acl;
mod conn;
mod metrics;
pub mod pki;
mod router;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

pub use acl::Identity;
pub use metrics::{BrokerMetrics, Disconnect, Refusal};

use crate::config::BrokerConfig;
use crate::store::Registry;
use conn::{Limits, Shared};
use router::{Retained, Router};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Certificate or key files unreadable or invalid.
    #[error("embedded broker TLS: {0}")]
    Tls(String),
    /// Files the embedded broker needs are missing.
    #[error(
        "embedded broker: missing {}; create them with `vigil-central pki init --dir {}` (or point the [broker] *_file keys at existing files, or configure [mqtt] for an external broker)",
        .missing.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        .dir.display()
    )]
    Missing {
        /// The missing files.
        missing: Vec<PathBuf>,
        /// The directory `pki init` should write to.
        dir: PathBuf,
    },
    /// The listen address could not be bound.
    #[error("embedded broker: binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// The name of the retained-message file in the data directory.
pub const RETAINED_FILE: &str = "broker-retained.json";

/// A running broker; [`Broker::stop`] ends it.
pub struct Broker {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Checks the files (the CA, the broker's and central's certificates and keys), binds `cfg.listen` and starts serving. Retained messages are loaded from and
    /// persisted to `data_dir`; gateway identities come from `registry`, re-read every
    /// `registry_reload` to disconnect gateways revoked meanwhile.
    pub async fn start(
        cfg: &BrokerConfig,
        data_dir: &Path,
        registry: Registry,
        registry_reload: Duration,
    ) -> Result<Broker, BrokerError> {
        let files = [&cfg.ca_file, &cfg.cert_file, &cfg.key_file, &cfg.central_cert_file, &cfg.central_key_file];
        let missing: Vec<PathBuf> = files.into_iter().filter(|p| !p.exists()).cloned().collect();
        if !missing.is_empty() {
            let dir = cfg.cert_file.parent().unwrap_or(Path::new(".")).to_owned();
            return Err(BrokerError::Missing { missing, dir });
        }
        let server = tls::server_config(&cfg.ca_file, &cfg.cert_file, &cfg.key_file)?;
        let metrics = Arc::new(BrokerMetrics::default());
        std::fs::create_dir_all(data_dir).map_err(|e| BrokerError::Tls(format!("{}: {e}", data_dir.display())))?;
        let retained = Retained::load(&data_dir.join(RETAINED_FILE), cfg.max_retained, metrics.clone());
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| BrokerError::Bind { addr: cfg.listen, source })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Bind { addr: cfg.listen, source })?;
        let shared = Arc::new(Shared {
            acceptor: tokio_rustls::TlsAcceptor::from(server),
            router: Router::new(retained, metrics.clone()),
            metrics,
            limits: Limits {
                max_packet: cfg.max_packet_bytes,
                queue_len: cfg.queue_len,
                max_inflight: cfg.max_inflight,
                handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
                max_keep_alive_s: cfg.max_keep_alive_s,
                write_timeout: Duration::from_millis(cfg.write_timeout_ms),
            },
            registry,
            central_cn: cfg.central_cn.clone(),
            next_conn: AtomicU64::new(1),
        });
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(accept_loop(listener, shared.clone(), cfg.max_connections, stopped.clone())),
            tokio::spawn(persist_loop(shared.clone(), stopped.clone())),
            tokio::spawn(recheck_loop(shared.clone(), registry_reload, stopped)),
        ];
        tracing::info!(%addr, central_cn = %cfg.central_cn, "embedded broker listening (mutual TLS)");
        Ok(Broker { addr, shared, stop, tasks })
    }

    /// The bound address (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's counters.
    pub fn metrics(&self) -> Arc<BrokerMetrics> {
        self.shared.metrics.clone()
    }

    /// Stops accepting, ends every connection (without publishing wills) and writes the retained
    /// messages a last time.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.shared.router.kill_all();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    sh: Arc<Shared>,
    max_connections: usize,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    sh.metrics.refuse(Refusal::Limit);
                    tracing::warn!(%peer, max_connections, "broker: connection limit reached; refused");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(conn::serve(tcp, peer, sh.clone(), permit));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::error!(error = %e, "broker: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Rewrites the retained-message file after changes (at most every 100 ms), and once at stop.
async fn persist_loop(sh: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        let stop = tokio::select! {
            _ = stopped.changed() => true,
            () = sh.router.retained.changed.notified() => false,
        };
        let s = sh.clone();
        let written = tokio::task::spawn_blocking(move || s.router.retained.persist()).await;
        if !matches!(written, Ok(Ok(()))) {
            sh.metrics.retained_write_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(result = ?written, "broker: cannot write the retained messages");
        }
        if stop {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Disconnects gateways that were revoked or removed while connected.
async fn recheck_loop(sh: Arc<Shared>, every: Duration, mut stopped: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tick.tick() => {}
        }
        match sh.registry.load_keys().await {
            Ok(keys) => {
                let now = crate::ingest::now_ms();
                sh.router.recheck(|id| match id {
                    Identity::Central => true,
                    Identity::Gateway { id, enterprise } => {
                        keys.get(id).is_some_and(|g| &g.enterprise == enterprise)
                            && conn::gateway_allowed(keys.get(id), now).is_ok()
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "broker: cannot re-read the gateway registry"),
        }
    }
}
