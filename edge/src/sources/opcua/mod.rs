//! The OPC UA client driver.
//!
//! One task per server (`[[opcua]]` entry). Each connection attempt discovers the server's endpoints,
//! picks the one with the configured security policy and mode, opens a session with the configured
//! identity and either creates subscriptions (monitored items per point, split over as many
//! subscriptions as the server allows) or polls with the Read service. The library's own reconnect
//! is disabled: this task owns the reconnect loop so that every loss is seen, reported as the device
//! going offline (with bad-quality samples for its points), retried with a bounded exponential
//! backoff, and followed by a fresh session with namespace URIs resolved again and subscriptions
//! re-created. Values reach the pipeline like every other source's, with the server's status as
//! quality; per point, a value whose timestamp is not newer than the last one sent is dropped and
//! counted, so a re-sent value never becomes a duplicate or an out-of-order sample.
//!
//! Certificates: the gateway's application instance certificate is created in the PKI directory on
//! first use; a server certificate is trusted only if it is in `<pki_dir>/trusted/` (or
//! `trust_unknown_server` is set). An unknown server certificate is written to `<pki_dir>/rejected/`
//! and the connection is refused with an error that says so.

pub mod browse;
pub mod config;
pub mod convert;
pub mod nodeid;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use opcua::client::{Client, ClientBuilder, IdentityToken, Session, SessionPollResult};
use opcua::client::{MonitoredItemMap, OnSubscriptionNotificationCore, SessionActivity};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeNotification, DataChangeTrigger, DataValue, DeadbandType,
    EndpointDescription, ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NamespaceMap, NodeId, NotificationMessage, QualifiedName, ReadValueId, StatusCode,
    TimestampsToReturn,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use vigil_common::{ClockQuality, Event, EventKind, Quality};

use crate::config::{Plant, Transport};
use crate::pipeline::{SourceMsg, StatusReading};
use crate::sources::modbus::Mode;
use crate::sources::{Metrics, now_ms};
use config::{AcqModeName, Identity, ModeName, OpcuaDevice, PolicyName, ServerDeadband};

/// Why a connection could not be made or was lost.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpcuaError {
    /// The gateway's client could not be set up (PKI directory, certificate).
    #[error("client setup: {0}")]
    Setup(String),
    /// No answer within the timeout.
    #[error("{0}: no answer within {1} ms")]
    Timeout(&'static str, u128),
    /// Endpoint discovery failed.
    #[error("discovering endpoints of {url}: {reason}")]
    Discovery {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server offers no endpoint with the configured security.
    #[error("{url} offers no endpoint with security {policy}/{mode}; it offers: {offered}")]
    NoEndpoint {
        /// The URL.
        url: String,
        /// Wanted policy.
        policy: String,
        /// Wanted mode.
        mode: String,
        /// What the server offers.
        offered: String,
    },
    /// The server's certificate is not in the trust list.
    #[error(
        "server certificate of {url} is not trusted ({status}); it was written to {rejected}: check its thumbprint with the server's administrator and move it to {trusted} to trust it"
    )]
    Untrusted {
        /// The URL.
        url: String,
        /// The status the client reported.
        status: String,
        /// Where rejected certificates go.
        rejected: String,
        /// The trust directory.
        trusted: String,
    },
    /// Session creation or activation failed (including user authentication).
    #[error("session with {url}: {reason}")]
    Session {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection was lost.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The server stopped answering while the connection stayed open.
    #[error("server silent for {0} s (keep-alives and data stopped)")]
    Stalled(u64),
    /// A service call failed.
    #[error("{0}")]
    Service(String),
}

impl OpcuaError {
    /// The quality of the device's points while this error lasts.
    pub fn quality(&self) -> Quality {
        match self {
            OpcuaError::Timeout(..) | OpcuaError::Stalled(_) => Quality::BAD_TIMEOUT,
            OpcuaError::Setup(_) | OpcuaError::NoEndpoint { .. } | OpcuaError::Untrusted { .. } => {
                Quality::BAD_CONFIGURATION_ERROR
            }
            _ => Quality::BAD_NOT_CONNECTED,
        }
    }
}

/// Indices (in [`Plant::devices`]) of the OPC UA devices, or of device `only` if it is one.
pub fn devices(plant: &Plant, only: Option<&str>) -> Vec<usize> {
    plant
        .devices
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d.transport, Transport::Opcua { .. }) && only.is_none_or(|n| n == d.name))
        .map(|(i, _)| i)
        .collect()
}

/// A one-line description of a connection for `vigil-edge check`.
pub fn describe(d: &OpcuaDevice) -> String {
    let auth = match &d.identity {
        Identity::Anonymous => "anonymous".to_string(),
        Identity::UserName { user, .. } => format!("user {user}"),
        Identity::Certificate { cert, .. } => format!("certificate {}", cert.display()),
    };
    let how = match d.acquisition {
        AcqModeName::Subscribe => format!("subscribe every {} ms", d.publish_interval.as_millis()),
        AcqModeName::Poll => "poll".to_string(),
    };
    format!(
        "opcua {} {:?}/{:?} {auth}, {how}, {} item(s), pki {}{}",
        d.endpoint,
        d.policy,
        d.mode,
        d.items.len(),
        d.pki_dir.display(),
        if d.trust_unknown_server { " (trusts unknown servers!)" } else { "" }
    )
}

fn policy_of(p: PolicyName) -> SecurityPolicy {
    match p {
        PolicyName::None => SecurityPolicy::None,
        PolicyName::Basic256Sha256 => SecurityPolicy::Basic256Sha256,
    }
}

fn mode_of(m: ModeName) -> MessageSecurityMode {
    match m {
        ModeName::None => MessageSecurityMode::None,
        ModeName::Sign => MessageSecurityMode::Sign,
        ModeName::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// The gateway's OPC UA client for `d`: creates its PKI directory and application instance
/// certificate on first use.
pub fn client_for(d: &OpcuaDevice) -> Result<Client, OpcuaError> {
    for sub in ["own", "private", "trusted", "rejected"] {
        let dir = d.pki_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| OpcuaError::Setup(format!("creating {}: {e}", dir.display())))?;
    }
    let client = ClientBuilder::new()
        .application_name("Vigil gateway")
        .application_uri(d.application_uri.clone())
        .product_uri("urn:vigil:edge")
        .pki_dir(d.pki_dir.clone())
        .create_sample_keypair(true)
        .trust_server_certs(d.trust_unknown_server)
        .verify_server_certs(true)
        // This task reconnects itself (see the module documentation).
        .session_retry_limit(0)
        .session_timeout(u32::try_from((d.keep_alive * 12).as_millis()).unwrap_or(u32::MAX).max(60_000))
        .keep_alive_interval(d.keep_alive)
        // 0: the library never closes a session over failed keep-alives; this task's watchdog does,
        // so a hung server is always reported the same way (see `Stalled`).
        .max_failed_keep_alive_count(0)
        .request_timeout(d.timeout)
        .publish_timeout(d.timeout.max(d.publish_interval * 3))
        .session_name(format!("vigil {}", d.name))
        .client()
        .map_err(|e| OpcuaError::Setup(e.join("; ")))?;
    if !d.pki_dir.join("own/cert.der").is_file() {
        return Err(OpcuaError::Setup(format!(
            "no application instance certificate in {} (could not create one)",
            d.pki_dir.join("own").display()
        )));
    }
    Ok(client)
}

fn identity_of(d: &OpcuaDevice) -> Result<IdentityToken, OpcuaError> {
    Ok(match &d.identity {
        Identity::Anonymous => IdentityToken::Anonymous,
        Identity::UserName { user, password } => IdentityToken::new_user_name(user.clone(), password.clone()),
        Identity::Certificate { cert, key } => IdentityToken::new_x509_path(cert, key)
            .map_err(|e| OpcuaError::Setup(format!("user certificate {}: {e}", cert.display())))?,
    })
}

/// Adds the server certificate in `cert` (DER or PEM) to the trust list of `pki_dir`, under the file
/// name the certificate store looks for, and removes it from the rejected list. Returns the path.
pub fn trust_certificate(pki_dir: &std::path::Path, cert: &std::path::Path) -> Result<std::path::PathBuf, OpcuaError> {
    use opcua::crypto::CertificateStore;
    let x509 = CertificateStore::read_cert(cert).map_err(|e| OpcuaError::Setup(format!("{}: {e}", cert.display())))?;
    let der = x509.to_der().map_err(|e| OpcuaError::Setup(format!("{}: {e}", cert.display())))?;
    let name = CertificateStore::cert_file_name(&x509);
    let trusted = pki_dir.join("trusted");
    std::fs::create_dir_all(&trusted).map_err(|e| OpcuaError::Setup(format!("creating {}: {e}", trusted.display())))?;
    let path = trusted.join(&name);
    std::fs::write(&path, der).map_err(|e| OpcuaError::Setup(format!("writing {}: {e}", path.display())))?;
    // A certificate left in rejected/ stays refused even when trusted.
    let rejected = pki_dir.join("rejected").join(&name);
    if rejected.exists() {
        std::fs::remove_file(&rejected)
            .map_err(|e| OpcuaError::Setup(format!("removing {}: {e}", rejected.display())))?;
    }
    Ok(path)
}

/// Lists the endpoints of the server at `url` (GetEndpoints on an unsecured channel).
pub async fn discover(client: &Client, url: &str, timeout: Duration) -> Result<Vec<EndpointDescription>, OpcuaError> {
    match tokio::time::timeout(timeout, client.get_server_endpoints_from_url(url)).await {
        Err(_) => Err(OpcuaError::Timeout("endpoint discovery", timeout.as_millis())),
        Ok(Err(e)) => Err(OpcuaError::Discovery { url: url.to_string(), reason: e.to_string() }),
        Ok(Ok(v)) => Ok(v),
    }
}

/// A short description of an endpoint: `Basic256Sha256/SignAndEncrypt`.
pub fn endpoint_label(e: &EndpointDescription) -> String {
    let policy = SecurityPolicy::from_uri(e.security_policy_uri.as_ref());
    format!("{}/{}", policy.to_str(), e.security_mode)
}

/// What the session pump reports.
#[derive(Debug)]
enum LinkEvent {
    /// The session is up.
    Up,
    /// The connection failed or was lost.
    Down(String, Option<StatusCode>),
}

/// An open session and the task driving it; dropping it tears the connection down.
pub struct Connection {
    /// The session.
    pub session: Arc<Session>,
    events: mpsc::Receiver<LinkEvent>,
    alive: watch::Receiver<Instant>,
    /// Last data or successful read seen by the driver.
    seen: Instant,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Connection {
    /// Closes the session politely (bounded by `timeout`), then drops the connection.
    pub async fn close(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.session.disconnect()).await;
    }
}

fn untrusted_status(code: StatusCode) -> bool {
    matches!(
        code,
        StatusCode::BadCertificateUntrusted
            | StatusCode::BadSecurityChecksFailed
            | StatusCode::BadCertificateInvalid
            | StatusCode::BadCertificateChainIncomplete
            | StatusCode::BadCertificateIssuerUseNotAllowed
    )
}

/// Discovers the endpoint with `d`'s security and opens a session on it.
pub async fn connect(client: &mut Client, d: &OpcuaDevice) -> Result<Connection, OpcuaError> {
    let endpoints = discover(client, &d.endpoint, d.timeout).await?;
    let policy = policy_of(d.policy);
    let mode = mode_of(d.mode);
    let Some(mut endpoint) = Client::find_matching_endpoint(&endpoints, &d.endpoint, policy, mode) else {
        let offered: Vec<String> = endpoints.iter().map(endpoint_label).collect();
        return Err(OpcuaError::NoEndpoint {
            url: d.endpoint.clone(),
            policy: policy.to_str().to_string(),
            mode: format!("{mode}"),
            offered: if offered.is_empty() { "nothing".into() } else { offered.join(", ") },
        });
    };
    // Servers behind NAT or port forwarding advertise addresses the gateway cannot reach: the
    // configured URL is the one that works from here.
    endpoint.endpoint_url = d.endpoint.as_str().into();
    let identity = identity_of(d)?;
    let (session, event_loop) = client
        .connect_to_endpoint_directly(endpoint, identity)
        .map_err(|e| OpcuaError::Session { url: d.endpoint.clone(), reason: e.to_string() })?;
    session.disable_reconnects();
    let (etx, mut events) = mpsc::channel(16);
    let (atx, alive) = watch::channel(Instant::now());
    let pump = tokio::spawn(async move {
        let stream = event_loop.enter();
        let mut stream = std::pin::pin!(stream);
        let mut up = false;
        loop {
            let Some(item) = stream.next().await else {
                let _ = etx.send(LinkEvent::Down("session closed".into(), None)).await;
                return;
            };
            match item {
                Ok(SessionPollResult::Reconnected(_)) => {
                    up = true;
                    atx.send_replace(Instant::now());
                    let _ = etx.send(LinkEvent::Up).await;
                }
                Ok(SessionPollResult::ConnectionLost(code)) => {
                    let _ = etx.send(LinkEvent::Down(format!("{code}"), Some(code))).await;
                    return;
                }
                Ok(SessionPollResult::ReconnectFailed(code)) if !up => {
                    let _ = etx.send(LinkEvent::Down(format!("{code}"), Some(code))).await;
                    return;
                }
                Ok(SessionPollResult::SessionActivity(SessionActivity::KeepAliveSucceeded)) => {
                    atx.send_replace(Instant::now());
                }
                Ok(other) => debug!(event = ?other, "opcua session"),
                Err(code) => {
                    let _ = etx.send(LinkEvent::Down(format!("{code}"), Some(code))).await;
                    return;
                }
            }
        }
    });
    let first = tokio::time::timeout(d.timeout * 3, events.recv()).await;
    match first {
        Ok(Some(LinkEvent::Up)) => Ok(Connection { session, events, alive, seen: Instant::now(), pump }),
        Ok(Some(LinkEvent::Down(reason, code))) => {
            pump.abort();
            if d.policy != PolicyName::None && code.is_some_and(untrusted_status) {
                Err(OpcuaError::Untrusted {
                    url: d.endpoint.clone(),
                    status: reason,
                    rejected: d.pki_dir.join("rejected").display().to_string(),
                    trusted: d.pki_dir.join("trusted").display().to_string(),
                })
            } else {
                Err(OpcuaError::Session { url: d.endpoint.clone(), reason })
            }
        }
        Ok(None) => {
            pump.abort();
            Err(OpcuaError::Session { url: d.endpoint.clone(), reason: "session task ended".into() })
        }
        Err(_) => {
            pump.abort();
            Err(OpcuaError::Timeout("session creation", (d.timeout * 3).as_millis()))
        }
    }
}

/// Binds every item's node id on this session (namespace URIs resolved against the server's
/// namespace array); an item that cannot be bound gets its reason.
async fn bind_nodes(session: &Session, d: &OpcuaDevice) -> Result<Vec<Result<NodeId, String>>, OpcuaError> {
    let namespaces = if d.items.iter().any(|i| i.node.uri().is_some()) {
        match tokio::time::timeout(d.timeout, session.read_namespace_array()).await {
            Err(_) => return Err(OpcuaError::Timeout("reading the namespace array", d.timeout.as_millis())),
            Ok(Err(e)) => return Err(OpcuaError::Service(format!("reading the namespace array: {e}"))),
            Ok(Ok(m)) => m,
        }
    } else {
        NamespaceMap::new()
    };
    Ok(d.items.iter().map(|i| i.node.bind(&namespaces).map_err(|e| e.to_string())).collect())
}

/// Reads the current value of `nodes` (chunks of at most 1000 per request), in order.
pub async fn read_values(session: &Session, nodes: &[NodeId], timeout: Duration) -> Result<Vec<DataValue>, OpcuaError> {
    let mut out = Vec::with_capacity(nodes.len());
    for chunk in nodes.chunks(1000) {
        let req: Vec<ReadValueId> = chunk
            .iter()
            .map(|n| ReadValueId {
                node_id: n.clone(),
                attribute_id: AttributeId::Value as u32,
                index_range: Default::default(),
                data_encoding: QualifiedName::null(),
            })
            .collect();
        let values = match tokio::time::timeout(timeout, session.read(&req, TimestampsToReturn::Both, 0.0)).await {
            Err(_) => return Err(OpcuaError::Timeout("read", timeout.as_millis())),
            Ok(Err(e)) => return Err(OpcuaError::Service(format!("read: {e}"))),
            Ok(Ok(v)) => v,
        };
        if values.len() != chunk.len() {
            return Err(OpcuaError::Service(format!("read: asked for {} values, got {}", chunk.len(), values.len())));
        }
        out.extend(values);
    }
    Ok(out)
}

/// Hands each notification message's data changes to the driver task as one batch.
struct Notifier {
    tx: mpsc::Sender<Vec<(u32, DataValue)>>,
    metrics: Arc<Metrics>,
}

impl OnSubscriptionNotificationCore for Notifier {
    fn on_subscription_notification(&mut self, notification: NotificationMessage, _items: MonitoredItemMap<'_>) {
        let Some(data) = notification.notification_data else {
            return;
        };
        let mut batch = Vec::new();
        for obj in data {
            // Events and status changes are not subscribed to; only data changes are taken.
            if let Some(v) = obj.into_inner_as::<DataChangeNotification>() {
                for n in v.monitored_items.into_iter().flatten() {
                    batch.push((n.client_handle, n.value));
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        // The callback runs inside the session's event loop and must not block it (keep-alives and
        // publishing would stop); a full queue means the pipeline is far behind, and the batch is
        // dropped and counted rather than stalling the session.
        if self.tx.try_send(batch).is_err() {
            self.metrics.opcua_overflow.inc();
        }
    }
}

/// Per-point ordering state of one device.
struct Order {
    /// Last timestamp sent, per item.
    last: Vec<Option<i64>>,
    /// Whether the item's last sample was a connection-loss marker.
    gap: Vec<bool>,
}

impl Order {
    /// The timestamp to send a value of item `i` with, or `None` to drop it as stale.
    fn admit(&mut self, i: usize, ts: i64, now: i64, metrics: &Metrics) -> Option<i64> {
        let out = match self.last[i] {
            None => Some(ts),
            Some(l) if ts > l => Some(ts),
            // After a loss the server re-sends each point's current value with the timestamp of its
            // last change, older than the loss marker: that value is the point's state at reconnect.
            Some(l) if self.gap[i] => {
                metrics.opcua_restamped.inc();
                Some(now.max(l + 1))
            }
            Some(_) => {
                metrics.opcua_stale_dropped.inc();
                None
            }
        };
        if let Some(t) = out {
            self.last[i] = Some(t);
            self.gap[i] = false;
        }
        out
    }

    /// The timestamp of a loss marker of item `i` at `now` (after anything sent before).
    fn marker(&mut self, i: usize, now: i64) -> i64 {
        let t = self.last[i].map_or(now, |l| now.max(l + 1));
        self.last[i] = Some(t);
        self.gap[i] = true;
        t
    }
}

struct Device<'a> {
    plant: &'a Plant,
    d: &'a OpcuaDevice,
    name: &'a str,
    out: mpsc::Sender<SourceMsg>,
    metrics: Arc<Metrics>,
    clock: ClockQuality,
    online: Option<bool>,
    order: Order,
    /// Items whose node was refused on this session (reported once per session).
    refused: Vec<bool>,
}

/// Items read together in poll mode: (interval, (item, node) pairs, next due time).
type PollGroup = (Duration, Vec<(usize, NodeId)>, tokio::time::Instant);

/// How a session ended without an error.
enum Ended {
    /// Shutdown, channel closed, or a one-shot read done.
    Stop,
}

impl Device<'_> {
    fn event(&self, kind: EventKind) -> SourceMsg {
        SourceMsg::Event(Event { ts_ms: now_ms(), clock: self.clock, kind })
    }

    async fn send(&self, msg: SourceMsg) -> Result<(), Ended> {
        self.out.send(msg).await.map_err(|_| Ended::Stop)
    }

    async fn went_online(&mut self) -> Result<(), Ended> {
        if self.online != Some(true) {
            self.online = Some(true);
            self.metrics.online_events.inc();
            info!(device = %self.name, "device online");
            self.send(self.event(EventKind::DeviceOnline { device: self.name.to_string() })).await?;
        }
        Ok(())
    }

    async fn went_offline(&mut self, e: &OpcuaError) -> Result<(), Ended> {
        if self.online == Some(false) {
            return Ok(());
        }
        self.online = Some(false);
        self.metrics.offline_events.inc();
        warn!(device = %self.name, reason = %e, "device offline");
        self.send(self.event(EventKind::DeviceOffline { device: self.name.to_string(), reason: e.to_string() }))
            .await?;
        let now = now_ms();
        let q = e.quality();
        let readings = (0..self.d.items.len())
            .map(|i| StatusReading {
                point: self.d.items[i].point,
                ts_ms: self.order.marker(i, now),
                raw: None,
                quality: q,
            })
            .collect();
        self.send(SourceMsg::Statused(readings)).await
    }

    /// Turns values of items (by index) into readings for the pipeline.
    async fn values(&mut self, values: impl IntoIterator<Item = (usize, DataValue)>) -> Result<(), Ended> {
        let now = now_ms();
        let mut readings = Vec::new();
        for (i, dv) in values {
            let Some(item) = self.d.items.get(i) else {
                continue;
            };
            self.metrics.opcua_values.inc();
            let spec = &self.plant.points[item.point];
            let (raw, quality) = convert::value_of(&dv, spec.dtype);
            if quality == convert::BAD_TYPE_MISMATCH {
                self.metrics.decode_errors.inc();
            }
            let ts = convert::timestamp_of(&dv, self.d.timestamp, now);
            if let Some(ts) = self.order.admit(i, ts, now, &self.metrics) {
                readings.push(StatusReading { point: item.point, ts_ms: ts, raw, quality });
            }
        }
        if readings.is_empty() {
            return Ok(());
        }
        self.send(SourceMsg::Statused(readings)).await
    }

    /// Reports items this session could not bind or monitor: bad quality, and one fault event.
    async fn refuse(&mut self, refused: Vec<(usize, Quality, String)>) -> Result<(), Ended> {
        if refused.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut fresh = Vec::new();
        let mut readings = Vec::new();
        for (i, q, why) in refused {
            if !self.refused[i] {
                self.refused[i] = true;
                fresh.push(format!("{}: {why}", self.d.items[i].node));
            }
            if let Some(ts) = self.order.admit(i, now, now, &self.metrics) {
                readings.push(StatusReading { point: self.d.items[i].point, ts_ms: ts, raw: None, quality: q });
            }
        }
        if !fresh.is_empty() {
            let message = format!(
                "{} node(s) refused: {}{}",
                fresh.len(),
                fresh.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
                if fresh.len() > 5 { "; ..." } else { "" }
            );
            warn!(device = %self.name, %message, "opcua items refused");
            self.send(self.event(EventKind::SourceFault { source: self.name.to_string(), message })).await?;
        }
        self.send(SourceMsg::Statused(readings)).await
    }

    /// One session: connect, set up acquisition, run until loss, shutdown or (once) one read.
    async fn session(
        &mut self,
        client: &mut Client,
        shutdown: &mut watch::Receiver<bool>,
        mode: Mode,
    ) -> Result<Ended, OpcuaError> {
        let d = self.d;
        let mut conn = connect(client, d).await?;
        self.metrics.opcua_sessions.inc();
        let bound = bind_nodes(&conn.session, d).await?;
        self.refused = vec![false; d.items.len()];
        let mut refused = Vec::new();
        let mut usable: Vec<(usize, NodeId)> = Vec::new();
        for (i, b) in bound.into_iter().enumerate() {
            match b {
                Ok(n) => usable.push((i, n)),
                Err(why) => refused.push((i, Quality::BAD_CONFIGURATION_ERROR, why)),
            }
        }
        if self.went_online().await.is_err() || self.refuse(std::mem::take(&mut refused)).await.is_err() {
            return Ok(Ended::Stop);
        }
        let subscribe = d.acquisition == AcqModeName::Subscribe && mode == Mode::Continuous;
        // The sender stays here for the session's life so the queue only ends with the session.
        let (dtx, mut drx) = mpsc::channel::<Vec<(u32, DataValue)>>(1024);
        if subscribe {
            let refused = self.subscribe(&conn.session, &usable, dtx.clone()).await?;
            if self.refuse(refused).await.is_err() {
                return Ok(Ended::Stop);
            }
        }
        // Poll groups: items with the same interval are read together.
        let mut groups: Vec<PollGroup> = Vec::new();
        if !subscribe {
            for (i, n) in &usable {
                let every = d.items[*i].sampling.max(Duration::from_millis(10));
                match groups.iter_mut().find(|g| g.0 == every) {
                    Some(g) => g.1.push((*i, n.clone())),
                    None => groups.push((every, vec![(*i, n.clone())], tokio::time::Instant::now())),
                }
            }
        }
        let silent_limit = d.keep_alive * 3 + d.timeout;
        let mut watchdog = tokio::time::interval(d.keep_alive.min(Duration::from_secs(1)));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if mode == Mode::Once && groups.is_empty() {
                conn.close(d.timeout).await;
                return Ok(Ended::Stop);
            }
            let next_poll = groups.iter().map(|g| g.2).min();
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        conn.close(d.timeout).await;
                        return Ok(Ended::Stop);
                    }
                }
                batch = drx.recv(), if subscribe => {
                    let Some(batch) = batch else {
                        return Err(OpcuaError::Lost("subscription callbacks ended".into()));
                    };
                    let items = batch.into_iter().filter_map(|(h, dv)| (h as usize).checked_sub(1).map(|i| (i, dv)));
                    if self.values(items.collect::<Vec<_>>()).await.is_err() {
                        return Ok(Ended::Stop);
                    }
                    // Data is a sign of life as good as a keep-alive.
                    conn.seen = Instant::now();
                }
                ev = conn.events.recv() => {
                    match ev {
                        Some(LinkEvent::Up) => {}
                        Some(LinkEvent::Down(reason, _)) => return Err(OpcuaError::Lost(reason)),
                        None => return Err(OpcuaError::Lost("session task ended".into())),
                    }
                }
                _ = watchdog.tick() => {
                    let quiet = conn.alive.borrow().elapsed().min(conn.seen.elapsed());
                    if quiet > silent_limit {
                        return Err(OpcuaError::Stalled(quiet.as_secs()));
                    }
                }
                _ = sleep_until_opt(next_poll) => {
                    let now = tokio::time::Instant::now();
                    for g in groups.iter_mut().filter(|g| g.2 <= now) {
                        let nodes: Vec<NodeId> = g.1.iter().map(|(_, n)| n.clone()).collect();
                        self.metrics.requests.inc();
                        let values = match read_values(&conn.session, &nodes, d.timeout).await {
                            Ok(v) => v,
                            Err(e) => {
                                if matches!(e, OpcuaError::Timeout(..)) {
                                    self.metrics.timeouts.inc();
                                }
                                return Err(e);
                            }
                        };
                        self.metrics.responses.inc();
                        let idx: Vec<usize> = g.1.iter().map(|(i, _)| *i).collect();
                        if self.values(idx.into_iter().zip(values)).await.is_err() {
                            return Ok(Ended::Stop);
                        }
                        // Skip, never queue, cycles that could not run on time.
                        g.2 += g.0;
                        let after = tokio::time::Instant::now();
                        if g.2 <= after {
                            let missed = ((after - g.2).as_nanos() / g.0.as_nanos().max(1)) as u64 + 1;
                            self.metrics.overruns.add(missed);
                            g.2 += g.0 * u32::try_from(missed).unwrap_or(u32::MAX);
                        }
                    }
                    conn.seen = Instant::now();
                    if mode == Mode::Once {
                        groups.clear();
                    }
                }
            }
        }
    }

    /// Creates the subscriptions and monitored items of `usable`; returns the items the server refused.
    async fn subscribe(
        &self,
        session: &Session,
        usable: &[(usize, NodeId)],
        tx: mpsc::Sender<Vec<(u32, DataValue)>>,
    ) -> Result<Vec<(usize, Quality, String)>, OpcuaError> {
        let d = self.d;
        let mut refused = Vec::new();
        let publish_ms = d.publish_interval.as_millis().max(1);
        let keep_alive_count = u32::try_from((d.keep_alive.as_millis() / publish_ms).clamp(1, 1000)).unwrap_or(10);
        for group in usable.chunks(d.max_items_per_subscription.max(1)) {
            let notifier = Notifier { tx: tx.clone(), metrics: self.metrics.clone() };
            let sub = tokio::time::timeout(
                d.timeout,
                session.create_subscription(
                    d.publish_interval,
                    keep_alive_count * 6,
                    keep_alive_count,
                    0,
                    0,
                    true,
                    notifier,
                ),
            )
            .await
            .map_err(|_| OpcuaError::Timeout("creating a subscription", d.timeout.as_millis()))?
            .map_err(|e| OpcuaError::Service(format!("creating a subscription: {e}")))?;
            for chunk in group.chunks(500) {
                let reqs: Vec<MonitoredItemCreateRequest> = chunk
                    .iter()
                    .map(|(i, node)| {
                        let item = &d.items[*i];
                        let filter = match item.deadband {
                            None => ExtensionObject::null(),
                            Some(db) => {
                                let (t, v) = match db {
                                    ServerDeadband::Absolute(v) => (DeadbandType::Absolute, v),
                                    ServerDeadband::Percent(v) => (DeadbandType::Percent, v),
                                };
                                ExtensionObject::from_message(DataChangeFilter {
                                    trigger: DataChangeTrigger::StatusValue,
                                    deadband_type: t as u32,
                                    deadband_value: v,
                                })
                            }
                        };
                        MonitoredItemCreateRequest {
                            item_to_monitor: ReadValueId {
                                node_id: node.clone(),
                                attribute_id: AttributeId::Value as u32,
                                index_range: Default::default(),
                                data_encoding: QualifiedName::null(),
                            },
                            monitoring_mode: MonitoringMode::Reporting,
                            requested_parameters: MonitoringParameters {
                                // Handle = item index + 1 (0 would make the library pick one).
                                client_handle: u32::try_from(*i + 1).unwrap_or(u32::MAX),
                                sampling_interval: item.sampling.as_secs_f64() * 1000.0,
                                filter,
                                queue_size: item.queue_size,
                                discard_oldest: item.discard_oldest,
                            },
                        }
                    })
                    .collect();
                let results = tokio::time::timeout(
                    d.timeout,
                    session.create_monitored_items(sub, TimestampsToReturn::Both, reqs),
                )
                .await
                .map_err(|_| OpcuaError::Timeout("creating monitored items", d.timeout.as_millis()))?
                .map_err(|e| OpcuaError::Service(format!("creating monitored items: {e}")))?;
                for ((i, _), r) in chunk.iter().zip(results.iter()) {
                    if !r.result.status_code.is_good() {
                        refused.push((
                            *i,
                            convert::quality_of(r.result.status_code),
                            format!("{}", r.result.status_code),
                        ));
                    }
                }
                if results.len() < chunk.len() {
                    for (i, _) in &chunk[results.len()..] {
                        refused.push((*i, Quality::BAD, "no result from the server".into()));
                    }
                }
            }
        }
        Ok(refused)
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Runs the OPC UA device `index` (in [`Plant::devices`]) until `shutdown`, or (in [`Mode::Once`])
/// for one read of every point.
pub async fn run_device(
    plant: Arc<Plant>,
    index: usize,
    out: mpsc::Sender<SourceMsg>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    mode: Mode,
) {
    let Some(dev) = plant.devices.get(index) else {
        return;
    };
    let Transport::Opcua { index: oi } = dev.transport else {
        return;
    };
    let Some(d) = plant.opcua.get(oi) else {
        return;
    };
    let n = d.items.len();
    let mut device = Device {
        plant: &plant,
        d,
        name: &dev.name,
        out,
        metrics: metrics.clone(),
        clock: crate::sources::clock_of(&plant),
        online: None,
        order: Order { last: vec![None; n], gap: vec![false; n] },
        refused: vec![false; n],
    };
    let initial = Duration::from_millis(500);
    let mut backoff = initial;
    let mut client = match client_for(d) {
        Ok(c) => Some(c),
        Err(e) => {
            let _ = device.went_offline(&e).await;
            None
        }
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(c) = client.as_mut() else {
            // A client that cannot be set up is a configuration problem: report it and wait for
            // shutdown rather than retrying in a loop.
            if mode == Mode::Once {
                return;
            }
            let _ = shutdown.changed().await;
            return;
        };
        metrics.connects.inc();
        let started = Instant::now();
        match device.session(c, &mut shutdown, mode).await {
            Ok(Ended::Stop) => return,
            Err(e) => {
                metrics.resets.inc();
                match &e {
                    OpcuaError::Timeout(..) | OpcuaError::Stalled(_) => metrics.timeouts.inc(),
                    _ => metrics.comm_errors.inc(),
                }
                if device.went_offline(&e).await.is_err() {
                    return;
                }
                // A session that lived a while earns a quick first retry.
                if started.elapsed() > backoff_reset(d) {
                    backoff = initial;
                }
            }
        }
        if mode == Mode::Once {
            return;
        }
        metrics.retries.inc();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        backoff = (backoff * 2).min(d.backoff_max.max(initial));
    }
}

fn backoff_reset(d: &OpcuaDevice) -> Duration {
    (d.keep_alive * 3).max(Duration::from_secs(10))
}
