//! An OPC UA simulation server (async-opcua server) with a plant-like address space: tanks with
//! level, temperature and pressure, and gas detectors with a concentration and an alarm flag, all
//! moving with the same waveforms as the Modbus simulator. Endpoints: None, and Basic256Sha256 with
//! Sign and SignAndEncrypt; anonymous and username/password users. The server's own certificate is
//! generated in its PKI directory on first start.
//!
//! Clients reach the server through a small forwarding front so faults can be injected the way a
//! plant network or a server host produces them: [`OpcuaSim::stall`] keeps connections open but
//! stops passing bytes (a hung server), [`OpcuaSim::restart`] stops the server, cuts every
//! connection and starts a fresh server instance (sessions and subscriptions gone) on the same
//! address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::Variable;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken};
use opcua::types::{DataValue, DateTime, MessageSecurityMode, NodeId, ObjectId, StatusCode, Variant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Wave;

/// The namespace URI of the simulated plant (for `nsu=` node ids).
pub const NAMESPACE_URI: &str = "urn:vigil:sim:plant";

/// The user name and password the simulator accepts (besides anonymous).
pub const USER: (&str, &str) = ("operator", "operator-pass");

/// One simulated variable.
#[derive(Debug, Clone)]
pub struct SimVar {
    /// String identifier in the plant namespace, e.g. `Tank101.Level` (also its browse path).
    pub name: String,
    /// How it moves.
    pub wave: Wave,
    /// A boolean variable (true when the wave is positive).
    pub boolean: bool,
    /// The status it is reported with.
    pub status: StatusCode,
}

/// The address space: folders (objects) with variables.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// (object name, its variables).
    pub objects: Vec<(String, Vec<SimVar>)>,
}

impl Layout {
    /// `tanks` tanks (`Tank101`, `Tank102`, ...: Level m, Temperature °C, Pressure bar) and
    /// `detectors` gas detectors (`GD001`, ...: Concentration %LEL, Alarm). 3 per tank and 2 per
    /// detector: `Layout::plant(2000, 2000)` has 10,000 variables.
    pub fn plant(tanks: usize, detectors: usize) -> Layout {
        let mut objects = Vec::new();
        for i in 0..tanks {
            let name = format!("Tank{}", 101 + i);
            let k = i as f64;
            let var = |v: &str, wave: Wave| SimVar {
                name: format!("{name}.{v}"),
                wave,
                boolean: false,
                status: StatusCode::Good,
            };
            objects.push((
                name.clone(),
                vec![
                    var("Level", Wave::Sine { mid: 5.0, amp: 2.0, period: 60.0 + k % 23.0 }),
                    var("Temperature", Wave::Sine { mid: 25.0, amp: 3.0, period: 90.0 + k % 31.0 }),
                    var("Pressure", Wave::Sine { mid: 1.5, amp: 0.2, period: 45.0 + k % 17.0 }),
                ],
            ));
        }
        for i in 0..detectors {
            let name = format!("GD{:03}", 1 + i);
            let k = i as f64;
            objects.push((
                name.clone(),
                vec![
                    SimVar {
                        name: format!("{name}.Concentration"),
                        wave: Wave::Sine { mid: 3.0, amp: 2.0, period: 40.0 + k % 13.0 },
                        boolean: false,
                        status: StatusCode::Good,
                    },
                    SimVar {
                        name: format!("{name}.Alarm"),
                        wave: Wave::Const(-1.0),
                        boolean: true,
                        status: StatusCode::Good,
                    },
                ],
            ));
        }
        Layout { objects }
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.objects.iter().map(|(_, v)| v.len()).sum()
    }

    /// Whether there are no variables.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address clients connect to (port 0: a free one).
    pub listen: SocketAddr,
    /// The server's PKI directory (its certificate in `own/`, created if missing).
    pub pki_dir: PathBuf,
    /// The address space.
    pub layout: Layout,
    /// How often values change.
    pub update: Duration,
}

impl SimConfig {
    /// A small plant (3 tanks, 2 detectors) on a free loopback port, updating every 200 ms.
    pub fn small(pki_dir: &Path) -> SimConfig {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pki_dir: pki_dir.to_path_buf(),
            layout: Layout::plant(3, 2),
            update: Duration::from_millis(200),
        }
    }
}

struct Running {
    handle: ServerHandle,
    updater: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    config: SimConfig,
    public: SocketAddr,
    /// Variable overrides set by tests: (value, status) instead of the wave.
    overrides: Mutex<std::collections::HashMap<String, (f64, StatusCode)>>,
    stalled: watch::Sender<bool>,
    /// Bumped to cut every forwarded connection.
    generation: watch::Sender<u64>,
    upstream: watch::Sender<Option<SocketAddr>>,
    updates: AtomicU64,
    started: Instant,
}

/// A running OPC UA simulator.
pub struct OpcuaSim {
    shared: Arc<Shared>,
    running: tokio::sync::Mutex<Option<Running>>,
    front: tokio::task::JoinHandle<()>,
    restarts: AtomicU64,
}

impl OpcuaSim {
    /// Starts the simulator: generates its certificate if needed, starts the server and the front.
    pub async fn start(config: SimConfig) -> Result<OpcuaSim> {
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("listening on {}", config.listen))?;
        let public = listener.local_addr().context("front address")?;
        let shared = Arc::new(Shared {
            config,
            public,
            overrides: Mutex::new(Default::default()),
            stalled: watch::channel(false).0,
            generation: watch::channel(0).0,
            upstream: watch::channel(None).0,
            updates: AtomicU64::new(0),
            started: Instant::now(),
        });
        let front = tokio::spawn(front(listener, shared.clone()));
        let sim = OpcuaSim { shared, running: tokio::sync::Mutex::new(None), front, restarts: AtomicU64::new(0) };
        let r = sim.launch().await?;
        *sim.running.lock().await = Some(r);
        Ok(sim)
    }

    /// The endpoint URL clients use, `opc.tcp://127.0.0.1:PORT/`.
    pub fn endpoint(&self) -> String {
        format!("opc.tcp://{}/", self.shared.public)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.public
    }

    /// The server's application instance certificate (DER), for a client's trust list.
    pub fn certificate(&self) -> PathBuf {
        self.shared.config.pki_dir.join("own/cert.der")
    }

    /// Value updates made so far (all variables once per update).
    pub fn updates(&self) -> u64 {
        self.shared.updates.load(Ordering::Relaxed)
    }

    /// Times the server was restarted.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Reports variable `name` with `value` and `status` from now on instead of its wave.
    pub fn set(&self, name: &str, value: f64, status: StatusCode) {
        self.shared.overrides.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), (value, status));
    }

    /// Lets variable `name` follow its wave again.
    pub fn clear(&self, name: &str) {
        self.shared.overrides.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }

    /// Keeps every connection open but stops passing bytes either way (a hung server).
    pub fn stall(&self) {
        self.shared.stalled.send_replace(true);
    }

    /// Passes bytes again after [`OpcuaSim::stall`].
    pub fn resume(&self) {
        self.shared.stalled.send_replace(false);
    }

    /// Stops the server (every connection cut, sessions and subscriptions gone) and starts a fresh
    /// instance on the same address after `down`.
    pub async fn restart(&self, down: Duration) -> Result<()> {
        let mut running = self.running.lock().await;
        if let Some(r) = running.take() {
            self.shared.upstream.send_replace(None);
            r.handle.cancel();
            r.updater.abort();
            let _ = tokio::time::timeout(Duration::from_secs(10), r.server).await;
        }
        self.shared.generation.send_modify(|g| *g += 1);
        tokio::time::sleep(down).await;
        *running = Some(self.launch().await?);
        self.restarts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Stops the server and the front.
    pub async fn stop(self) {
        if let Some(r) = self.running.lock().await.take() {
            r.handle.cancel();
            r.updater.abort();
            let _ = tokio::time::timeout(Duration::from_secs(10), r.server).await;
        }
        self.shared.generation.send_modify(|g| *g += 1);
        self.front.abort();
    }

    async fn launch(&self) -> Result<Running> {
        let s = &self.shared;
        let users = vec![ANONYMOUS_USER_TOKEN_ID.to_string(), "operator".to_string()];
        let mut builder = ServerBuilder::new()
            .application_name("Vigil OPC UA simulator")
            .application_uri("urn:vigil:sim:opcua")
            .product_uri("urn:vigil:sim")
            .create_sample_keypair(true)
            .pki_dir(s.config.pki_dir.clone())
            // The simulator trusts any client certificate; the client side is what is under test.
            .trust_client_certs(true)
            .host(s.public.ip().to_string())
            .port(s.public.port())
            .discovery_urls(vec!["/".to_string()])
            .add_user_token("operator", ServerUserToken::user_pass(USER.0, USER.1))
            .add_endpoint("none", ServerEndpoint::new_none("/", &users))
            .add_endpoint(
                "basic256sha256_sign",
                ServerEndpoint::new("/", SecurityPolicy::Basic256Sha256, MessageSecurityMode::Sign, &users),
            )
            .add_endpoint("basic256sha256_sign_encrypt", ServerEndpoint::new_basic256sha256_sign_encrypt("/", &users))
            .with_node_manager(simple_node_manager(
                NamespaceMetadata { namespace_uri: NAMESPACE_URI.to_string(), ..Default::default() },
                "vigil-sim",
            ));
        {
            let limits = builder.limits_mut();
            limits.subscriptions.max_monitored_items_per_sub = 100_000;
            limits.subscriptions.max_subscriptions_per_session = 1000;
            limits.subscriptions.max_monitored_item_queue_size = 1000;
            limits.operational.max_monitored_items_per_call = 10_000;
            limits.operational.max_nodes_per_read = 10_000;
            limits.operational.max_nodes_per_browse = 10_000;
            limits.max_message_size = 64 * 1024 * 1024;
            limits.max_chunk_count = 4096;
        }
        let (server, handle) = builder.build().map_err(|e| anyhow!("building the OPC UA server: {e}"))?;
        let manager = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .ok_or_else(|| anyhow!("the simple node manager is missing"))?;
        let ns = handle.get_namespace_index(NAMESPACE_URI).ok_or_else(|| anyhow!("namespace not registered"))?;
        let mut nodes: Vec<(NodeId, SimVar)> = Vec::new();
        {
            let mut space = manager.address_space().write();
            let plant = NodeId::new(ns, "Plant");
            space.add_folder(&plant, "Plant", "Plant", &ObjectId::ObjectsFolder.into());
            for (object, vars) in &s.config.layout.objects {
                let folder = NodeId::new(ns, object.as_str());
                space.add_folder(&folder, object.as_str(), object.as_str(), &plant);
                let mut variables = Vec::new();
                for v in vars {
                    let id = NodeId::new(ns, v.name.as_str());
                    let short = v.name.rsplit('.').next().unwrap_or(&v.name);
                    let initial = if v.boolean { Variant::Boolean(false) } else { Variant::Double(0.0) };
                    variables.push(Variable::new(&id, short, short, initial));
                    nodes.push((id, v.clone()));
                }
                space.add_variables(variables, &folder);
            }
        }
        let listener = TcpListener::bind(SocketAddr::new(s.public.ip(), 0)).await.context("server listener")?;
        let upstream = listener.local_addr().context("server address")?;
        let server = tokio::spawn(async move {
            if let Err(e) = server.run_with(listener).await {
                tracing::warn!(error = %e, "OPC UA simulator server ended");
            }
        });
        let subs = handle.subscriptions().clone();
        let shared = s.clone();
        let mut waves: Vec<Wave> = nodes.iter().map(|(_, v)| v.wave.clone()).collect();
        let updater = tokio::spawn(async move {
            let mut tick = tokio::time::interval(shared.config.update.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let t = shared.started.elapsed().as_secs_f64();
                let now = DateTime::now();
                let overrides = shared.overrides.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let values: Vec<(&NodeId, DataValue)> = nodes
                    .iter()
                    .zip(waves.iter_mut())
                    .map(|((id, v), w)| {
                        let (x, status) = overrides.get(&v.name).copied().unwrap_or((w.value(t), v.status));
                        // Three decimals, as a transmitter would report, so values compare exactly.
                        let x = (x * 1000.0).round() / 1000.0;
                        let value = if v.boolean { Variant::Boolean(x > 0.0) } else { Variant::Double(x) };
                        let dv = DataValue {
                            value: Some(value),
                            status: Some(status),
                            source_timestamp: Some(now),
                            server_timestamp: Some(now),
                            ..Default::default()
                        };
                        (id, dv)
                    })
                    .collect();
                if let Err(e) = manager.set_values(&subs, values.into_iter().map(|(id, dv)| (id, None, dv))) {
                    tracing::warn!(error = %e, "OPC UA simulator: setting values");
                }
                shared.updates.fetch_add(1, Ordering::Relaxed);
            }
        });
        s.upstream.send_replace(Some(upstream));
        Ok(Running { handle, updater, server })
    }
}

async fn front(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            // A connection while the server is down is refused (closed at once), as a restarting
            // host would.
            let Some(up) = *shared.upstream.borrow() else {
                return;
            };
            let Ok(Ok(server)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(up)).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let generation = shared.generation.subscribe();
            let a = pipe(cr, sw, shared.stalled.subscribe(), generation.clone());
            let b = pipe(sr, cw, shared.stalled.subscribe(), generation);
            tokio::join!(a, b);
        });
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
    mut generation: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    generation.borrow_and_update();
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = generation.changed() => return,
        };
        // While stalled, bytes are held back (the connection stays open and silent).
        while *stalled.borrow_and_update() {
            tokio::select! {
                r = stalled.changed() => if r.is_err() { return },
                _ = generation.changed() => return,
            }
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            _ = generation.changed() => return,
        }
    }
}
