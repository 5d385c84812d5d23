//! Ingest: MQTT subscriber -> topic and registry checks -> `Batch::open` (size, envelope, key,
//! signature, decode) -> deduplicate by (gateway, epoch, seq) -> WAL group commit with fsync ->
//! acknowledge on `down/ack` -> historian and the internal stream. Also replay at start and checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use vigil_common::envelope::{EnvelopeError, HEADER_LEN};
use vigil_common::{
    Ack, Batch, BatchError, Channel, EnterpriseId, GatewayId, GatewayState, Priority, SigningKey, Topic,
};

use crate::config::{Config, MqttConfig};
use crate::historian::{FileChunkStore, Historian, HistorianError};
use crate::seen::Seen;
use crate::store::{GatewayKeys, Registry, StoreError};
use crate::swinging_door::DoorPolicy;
use crate::wal::{self, Wal, WalError};

/// Why ingest failed (fatal errors only: bad input is counted, never an error).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The WAL failed: nothing can be acknowledged any more.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The historian failed.
    #[error(transparent)]
    Historian(#[from] HistorianError),
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Checkpoint file I/O.
    #[error("checkpoint {path}: {why}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// TLS setup.
    #[error("MQTT TLS: {0}")]
    Tls(String),
    /// The evidence store could not be opened.
    #[error(transparent)]
    Evidence(#[from] crate::evidence::EvidenceError),
}

/// Why a batch was rejected (each has a counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// The topic is not a Vigil topic.
    Topic,
    /// No gateway of that id is registered.
    UnknownGateway,
    /// The topic's enterprise is not the gateway's.
    Enterprise,
    /// Larger than a batch may be.
    Oversized,
    /// Not a well-formed envelope.
    Envelope,
    /// Signed with a key that is unknown, revoked or outside its validity.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// Verified, but the payload does not decode.
    Payload,
    /// The batch names another gateway than its topic.
    GatewayMismatch,
    /// An epoch older than every epoch central remembers for this gateway (a replay).
    StaleEpoch,
    /// The epoch's sequence numbers are already split into the most ranges central keeps.
    Fragmented,
}

impl Reject {
    /// All reasons, in counter order.
    pub const ALL: [Reject; 11] = [
        Reject::Topic,
        Reject::UnknownGateway,
        Reject::Enterprise,
        Reject::Oversized,
        Reject::Envelope,
        Reject::UnknownKey,
        Reject::BadSignature,
        Reject::Payload,
        Reject::GatewayMismatch,
        Reject::StaleEpoch,
        Reject::Fragmented,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Topic => "topic",
            Reject::UnknownGateway => "unknown_gateway",
            Reject::Enterprise => "enterprise",
            Reject::Oversized => "oversized",
            Reject::Envelope => "envelope",
            Reject::UnknownKey => "unknown_key",
            Reject::BadSignature => "bad_signature",
            Reject::Payload => "payload",
            Reject::GatewayMismatch => "gateway_mismatch",
            Reject::StaleEpoch => "stale_epoch",
            Reject::Fragmented => "fragmented",
        }
    }

    fn of(e: &BatchError) -> Reject {
        match e {
            BatchError::Envelope(EnvelopeError::TooLarge { .. }) => Reject::Oversized,
            BatchError::Envelope(EnvelopeError::UnknownKey(_)) => Reject::UnknownKey,
            BatchError::Envelope(EnvelopeError::BadSignature(_)) => Reject::BadSignature,
            BatchError::Envelope(_) => Reject::Envelope,
            BatchError::GatewayMismatch { .. } => Reject::GatewayMismatch,
            _ => Reject::Payload,
        }
    }
}

/// Ingest counters (lock-free; the metrics endpoint exports them).
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Messages received on `up/batch`.
    pub batches_received: AtomicU64,
    /// Batches accepted and stored.
    pub batches_accepted: AtomicU64,
    /// Samples in accepted batches.
    pub samples_accepted: AtomicU64,
    /// Events in accepted batches.
    pub events_accepted: AtomicU64,
    /// Duplicate batches (acknowledged again, not stored).
    pub duplicates: AtomicU64,
    /// Rejections, indexed like [`Reject::ALL`].
    pub rejected: [AtomicU64; 11],
    /// State messages received.
    pub states_received: AtomicU64,
    /// State messages refused (unknown gateway, bad signature, malformed).
    pub states_rejected: AtomicU64,
    /// State and catalogue messages held because the key cache did not know their gateway yet.
    pub held_for_registry: AtomicU64,
    /// Acks published.
    pub acks_sent: AtomicU64,
    /// Acks that could not be queued (the gateway re-sends and gets acknowledged again).
    pub acks_dropped: AtomicU64,
    /// Re-send ranges requested.
    pub resend_ranges: AtomicU64,
    /// Group commits.
    pub groups: AtomicU64,
    /// WAL bytes appended.
    pub wal_bytes: AtomicU64,
    /// Checkpoints completed.
    pub checkpoints: AtomicU64,
    /// Records replayed from the WAL at start.
    pub replayed: AtomicU64,
    /// MQTT connection errors.
    pub mqtt_errors: AtomicU64,
    /// MQTT connections established.
    pub mqtt_connects: AtomicU64,
    /// Registry reloads.
    pub registry_reloads: AtomicU64,
    /// Registry reads or writes that failed (ingest goes on with the keys it has).
    pub registry_errors: AtomicU64,
}

impl IngestMetrics {
    /// Rejections for `r`.
    pub fn rejected(&self, r: Reject) -> u64 {
        Reject::ALL.iter().position(|x| *x == r).map_or(0, |i| self.rejected[i].load(Ordering::Relaxed))
    }

    fn reject(&self, r: Reject) {
        if let Some(i) = Reject::ALL.iter().position(|x| *x == r) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prometheus text exposition of these counters.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        for (name, v) in [
            ("vigil_ingest_batches_received_total", g(&self.batches_received)),
            ("vigil_ingest_batches_accepted_total", g(&self.batches_accepted)),
            ("vigil_ingest_samples_accepted_total", g(&self.samples_accepted)),
            ("vigil_ingest_events_accepted_total", g(&self.events_accepted)),
            ("vigil_ingest_duplicates_total", g(&self.duplicates)),
            ("vigil_ingest_states_received_total", g(&self.states_received)),
            ("vigil_ingest_states_rejected_total", g(&self.states_rejected)),
            ("vigil_ingest_held_for_registry_total", g(&self.held_for_registry)),
            ("vigil_ingest_acks_sent_total", g(&self.acks_sent)),
            ("vigil_ingest_acks_dropped_total", g(&self.acks_dropped)),
            ("vigil_ingest_resend_ranges_total", g(&self.resend_ranges)),
            ("vigil_wal_group_commits_total", g(&self.groups)),
            ("vigil_wal_bytes_total", g(&self.wal_bytes)),
            ("vigil_wal_checkpoints_total", g(&self.checkpoints)),
            ("vigil_wal_replayed_records", g(&self.replayed)),
            ("vigil_mqtt_errors_total", g(&self.mqtt_errors)),
            ("vigil_mqtt_connects_total", g(&self.mqtt_connects)),
            ("vigil_registry_reloads_total", g(&self.registry_reloads)),
            ("vigil_registry_errors_total", g(&self.registry_errors)),
        ] {
            s.push_str(&format!("{name} {v}\n"));
        }
        for r in Reject::ALL {
            s.push_str(&format!("vigil_ingest_rejected_total{{reason=\"{}\"}} {}\n", r.label(), self.rejected(r)));
        }
        s
    }
}

/// A stored batch as the alarm engine and models see it.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// Topic enterprise.
    pub enterprise: EnterpriseId,
    /// The decoded, verified batch.
    pub batch: Batch,
}

/// The consumers' side: alarm/event-class batches and all events on one lane, telemetry on another.
#[derive(Clone)]
pub struct Streams {
    /// Alarm/event-class batches (sent before telemetry of the same group).
    pub alarms: broadcast::Sender<Arc<Ingested>>,
    /// Live and backfill batches.
    pub telemetry: broadcast::Sender<Arc<Ingested>>,
    /// Verified gateway birth/death states, with central's receive time (UTC ms).
    pub states: broadcast::Sender<Arc<(GatewayState, i64)>>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            alarms: broadcast::channel(4096).0,
            telemetry: broadcast::channel(1024).0,
            states: broadcast::channel(1024).0,
        }
    }
}

/// The checkpoint file: everything before `wal_from` is in chunks of generation <= `generation`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    generation: u64,
    wal_from: u64,
    seen: Seen,
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint, IngestError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| IngestError::Checkpoint { path: path.to_owned(), why: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(e) => Err(IngestError::Checkpoint { path: path.to_owned(), why: e.to_string() }),
    }
}

fn write_checkpoint(path: &Path, cp: &Checkpoint) -> Result<(), IngestError> {
    let err = |why: String| IngestError::Checkpoint { path: path.to_owned(), why };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(cp).map_err(|e| err(e.to_string()))?;
    let f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
    std::io::Write::write_all(&mut &f, &bytes).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// WAL record payload: `1 | ent len | ent | gw len | gw | received_ms i64 LE | signed batch bytes`.
fn wal_record(enterprise: &EnterpriseId, gateway: &GatewayId, received_ms: i64, raw: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(raw.len() + 80);
    r.push(1);
    r.push(enterprise.as_str().len() as u8);
    r.extend_from_slice(enterprise.as_str().as_bytes());
    r.push(gateway.as_str().len() as u8);
    r.extend_from_slice(gateway.as_str().as_bytes());
    r.extend_from_slice(&received_ms.to_le_bytes());
    r.extend_from_slice(raw);
    r
}

/// Decodes a WAL record back to (enterprise, batch). The envelope was verified before it was logged
/// and the record is CRC-protected, so the payload is decoded without a second signature check
/// (the signing key may have been revoked since).
pub fn parse_wal_record(rec: &[u8]) -> Option<(EnterpriseId, Batch)> {
    let (&ver, rest) = rec.split_first()?;
    if ver != 1 {
        return None;
    }
    let (&n, rest) = rest.split_first()?;
    let (ent, rest) = rest.split_at_checked(usize::from(n))?;
    let (&n, rest) = rest.split_first()?;
    let (gw, rest) = rest.split_at_checked(usize::from(n))?;
    let (_received, raw) = rest.split_at_checked(8)?;
    let enterprise = EnterpriseId::new(std::str::from_utf8(ent).ok()?).ok()?;
    let gateway = GatewayId::new(std::str::from_utf8(gw).ok()?).ok()?;
    let len = u32::from_le_bytes(raw.get(HEADER_LEN - 4..HEADER_LEN)?.try_into().ok()?) as usize;
    let payload = raw.get(HEADER_LEN..HEADER_LEN.checked_add(len)?)?;
    let batch = Batch::decode(payload).ok()?;
    (batch.gateway == gateway).then_some((enterprise, batch))
}

/// Wall clock, UTC ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The durable core of ingest, independent of MQTT: verify, deduplicate, log, store, acknowledge.
pub struct Core {
    data_dir: PathBuf,
    wal: Wal,
    seen: Seen,
    /// The historian (shared with the query API).
    pub historian: Arc<RwLock<Historian>>,
    registry: Registry,
    keys: HashMap<GatewayId, GatewayKeys>,
    keys_loaded: Instant,
    central_key: SigningKey,
    /// Counters.
    pub metrics: Arc<IngestMetrics>,
    /// Consumer streams.
    pub streams: Streams,
    /// Camera snapshots that came with gas detections (shared with the query API).
    pub evidence: Arc<crate::evidence::EvidenceStore>,
    /// The gateways' point catalogues (shared with the API).
    pub catalogues: crate::catalogue::Catalogues,
    wal_bytes_at_checkpoint: u64,
    last_checkpoint: Instant,
    last_touch: HashMap<GatewayId, Instant>,
    /// The latest state and catalogue of each gateway the key cache does not know yet (enrolled
    /// since the last registry reload): both are sent once per connect, so they wait for the
    /// next reload instead of being lost.
    held: HashMap<(GatewayId, Channel), Incoming>,
    cfg: Config,
}

/// Most messages, and bytes, [`Core`] holds for gateways its key cache does not know yet (retained
/// messages of a gateway removed from the registry would otherwise be held for ever).
const MAX_HELD: usize = 1024;
const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

/// Registry "last seen" updates per gateway are written at most this often (each is a SQLite commit).
const TOUCH_EVERY: Duration = Duration::from_secs(5);

/// One message from the broker.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// An ack to publish: topic and sealed bytes.
pub type Outgoing = (String, Vec<u8>);

impl Core {
    /// Opens the data directory: registry, checkpoint, chunks, WAL replay; the historian compresses
    /// by the configured swinging-door rules, without alarm limits.
    pub async fn open(cfg: Config, central_key: SigningKey) -> Result<Core, IngestError> {
        let policy = Arc::new(DoorPolicy::new(cfg.historian.swinging_door.clone()));
        Core::open_with_compression(cfg, central_key, policy).await
    }

    /// [`Core::open`] with a compression policy that already knows the points' alarm limits (the WAL
    /// replay may write chunks, and limit crossings must survive compression).
    pub async fn open_with_compression(
        cfg: Config,
        central_key: SigningKey,
        compression: Arc<DoorPolicy>,
    ) -> Result<Core, IngestError> {
        let data_dir = cfg.data_dir.clone();
        let registry = Registry::open(&data_dir).await?;
        let cp = read_checkpoint(&data_dir.join("checkpoint.json"))?;
        let store = FileChunkStore::open(&data_dir.join("chunks"))?;
        let mut historian = Historian::open(Box::new(store), cp.generation, cfg.historian.max_head_samples)?;
        historian.set_compression(compression);
        let mut seen = cp.seen;
        let mut records = Vec::new();
        let wal =
            Wal::open(&data_dir.join("wal"), cp.wal_from, wal::DEFAULT_SEGMENT_BYTES, |_, r| records.push(r.to_vec()))?;
        let metrics = Arc::new(IngestMetrics::default());
        let evidence = crate::evidence::EvidenceStore::open(&data_dir.join("evidence"))?;
        let mut bad = 0u64;
        for r in &records {
            match parse_wal_record(r) {
                Some((enterprise, batch)) => {
                    // Idempotent: stores what a crash after the WAL commit may have lost.
                    evidence.keep_batch(&enterprise, &batch);
                    if seen.insert(&batch.gateway, batch.epoch, batch.seq) {
                        for s in &batch.series {
                            historian.insert(&batch.gateway, &s.point, &s.samples)?;
                        }
                    }
                }
                None => bad += 1,
            }
        }
        if bad > 0 {
            tracing::error!(bad, "WAL records that do not parse were skipped");
        }
        metrics.replayed.store(records.len() as u64, Ordering::Relaxed);
        tracing::info!(
            replayed = records.len(),
            generation = cp.generation,
            wal_from = cp.wal_from,
            "ingest: recovered"
        );
        let keys = registry.load_keys().await?;
        let catalogues = crate::catalogue::Catalogues::open(&registry).await?;
        Ok(Core {
            data_dir,
            wal,
            seen,
            historian: Arc::new(RwLock::new(historian)),
            registry,
            keys,
            keys_loaded: Instant::now(),
            central_key,
            metrics,
            streams: Streams::default(),
            evidence: Arc::new(evidence),
            catalogues,
            wal_bytes_at_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_touch: HashMap::new(),
            held: HashMap::new(),
            cfg,
        })
    }

    /// Re-reads the registry; on failure keeps the keys it had (logged and counted), so a metadata
    /// database problem never stops ingest of registered gateways.
    async fn reload_keys(&mut self) -> Result<(), IngestError> {
        self.keys_loaded = Instant::now();
        match self.registry.load_keys().await {
            Ok(k) => {
                self.keys = k;
                self.metrics.registry_reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.registry_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "ingest: registry reload failed; keeping the keys loaded before");
            }
        }
        Ok(())
    }

    async fn touch(&self, gw: &GatewayId, seen: Option<i64>, state: Option<(i64, i64)>, drops: Option<&str>) {
        if let Err(e) = self.registry.touch(gw, seen, state, drops).await {
            self.metrics.registry_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(gateway = %gw, error = %e, "ingest: could not record gateway activity");
        }
    }

    /// True when `msg` (a state or catalogue) was held because its gateway is not in the key cache
    /// even after a reload; the same rule as for batches bounds reloads to one a second.
    async fn hold_if_unknown(&mut self, topic: &Topic, msg: &Incoming) -> Result<bool, IngestError> {
        if self.keys.contains_key(&topic.gateway) {
            return Ok(false);
        }
        if self.keys_loaded.elapsed() >= Duration::from_secs(1) {
            self.reload_keys().await?;
            if self.keys.contains_key(&topic.gateway) {
                return Ok(false);
            }
        }
        let key = (topic.gateway.clone(), topic.channel);
        let bytes: usize = self.held.iter().filter(|(k, _)| **k != key).map(|(_, m)| m.payload.len()).sum();
        if (self.held.len() >= MAX_HELD && !self.held.contains_key(&key)) || bytes + msg.payload.len() > MAX_HELD_BYTES
        {
            // Full: refused below as from an unregistered gateway, and counted there.
            return Ok(false);
        }
        self.metrics.held_for_registry.fetch_add(1, Ordering::Relaxed);
        tracing::info!(gateway = %topic.gateway, channel = topic.channel.suffix(), "ingest: gateway not in the key cache yet; held until the next registry reload");
        self.held.insert(key, msg.clone());
        Ok(true)
    }

    /// Verifies a gateway's point catalogue and stores it. An empty payload is the retained message
    /// being cleared, not an error.
    async fn take_catalogue(&self, topic: &Topic, payload: &[u8], now: i64) -> Result<(), IngestError> {
        if payload.is_empty() {
            return Ok(());
        }
        let c = &self.catalogues;
        let verified = match self.keys.get(&topic.gateway) {
            Some(gk) if gk.enterprise == topic.enterprise => {
                vigil_common::PointCatalogue::open(payload, &topic.gateway, |kid| gk.usable(kid, now))
                    .map_err(|e| e.to_string())
            }
            Some(_) => Err(format!("published under enterprise {}, not its own", topic.enterprise)),
            None => Err("the gateway is not registered".to_owned()),
        };
        match verified {
            Ok(catalogue) => {
                let (devices, points) = (catalogue.devices.len(), catalogue.points.len());
                match c.record_signed(catalogue, payload, now).await {
                    Ok(true) => {
                        tracing::info!(gateway = %topic.gateway, devices, points, "ingest: point catalogue stored")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(gateway = %topic.gateway, error = %e, "ingest: point catalogue not stored")
                    }
                }
            }
            Err(e) => {
                c.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(gateway = %topic.gateway, error = %e, "ingest: point catalogue rejected");
            }
        }
        Ok(())
    }

    /// Processes one group of messages: verify all, commit the accepted ones to the WAL with one
    /// fsync, then store them and return the acks to publish (also for duplicates).
    pub async fn process_group(&mut self, msgs: Vec<Incoming>) -> Result<Vec<Outgoing>, IngestError> {
        let now = now_ms();
        let reload = Duration::from_secs(self.cfg.ingest.registry_reload_s);
        if self.keys_loaded.elapsed() >= reload {
            self.reload_keys().await?;
        }
        // Held messages whose gateway the cache now knows go first, in the order they came.
        let msgs = if self.held.is_empty() {
            msgs
        } else {
            let ready: Vec<(GatewayId, Channel)> =
                self.held.keys().filter(|(g, _)| self.keys.contains_key(g)).cloned().collect();
            let mut all: Vec<Incoming> = ready.into_iter().filter_map(|k| self.held.remove(&k)).collect();
            all.extend(msgs);
            all
        };
        let m = Arc::clone(&self.metrics);
        let mut accepted: Vec<(EnterpriseId, Batch, Vec<u8>)> = Vec::new();
        let mut to_ack: BTreeMap<(GatewayId, u64), EnterpriseId> = BTreeMap::new();
        let mut states: Vec<(GatewayId, usize)> = Vec::new();
        for msg in msgs {
            let topic = match Topic::parse(&msg.topic) {
                Ok(t) if matches!(t.channel, Channel::UpBatch | Channel::UpState | Channel::UpCatalogue) => t,
                _ => {
                    m.reject(Reject::Topic);
                    tracing::warn!(topic = %msg.topic, "ingest: message on an unexpected topic");
                    continue;
                }
            };
            if matches!(topic.channel, Channel::UpState | Channel::UpCatalogue)
                && self.hold_if_unknown(&topic, &msg).await?
            {
                continue;
            }
            if topic.channel == Channel::UpState {
                m.states_received.fetch_add(1, Ordering::Relaxed);
                let verified = self
                    .keys
                    .get(&topic.gateway)
                    .map(|gk| GatewayState::open(&msg.payload, &topic.gateway, |kid| gk.usable(kid, now)));
                match verified {
                    Some(Ok(state)) => {
                        tracing::info!(gateway = %topic.gateway, online = state.online, "ingest: gateway state");
                        let _ = self.streams.states.send(Arc::new((state, now)));
                    }
                    Some(Err(e)) => {
                        m.states_rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(gateway = %topic.gateway, error = %e, "ingest: gateway state rejected");
                    }
                    None => {
                        m.states_rejected.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(gateway = %topic.gateway, "ingest: state from an unregistered gateway rejected");
                    }
                }
                states.push((topic.gateway, msg.payload.len()));
                continue;
            }
            if topic.channel == Channel::UpCatalogue {
                self.take_catalogue(&topic, &msg.payload, now).await?;
                continue;
            }
            m.batches_received.fetch_add(1, Ordering::Relaxed);
            if !self.keys.contains_key(&topic.gateway) && self.keys_loaded.elapsed() >= Duration::from_secs(1) {
                self.reload_keys().await?;
            }
            let Some(gk) = self.keys.get(&topic.gateway) else {
                m.reject(Reject::UnknownGateway);
                tracing::warn!(gateway = %topic.gateway, "ingest: batch from an unregistered gateway rejected");
                continue;
            };
            if gk.enterprise != topic.enterprise {
                m.reject(Reject::Enterprise);
                tracing::warn!(gateway = %topic.gateway, topic_enterprise = %topic.enterprise, "ingest: batch under another enterprise rejected");
                continue;
            }
            let batch = match Batch::open(&msg.payload, &topic.gateway, |kid| gk.usable(kid, now)) {
                Ok(b) => b,
                Err(e) => {
                    let r = Reject::of(&e);
                    m.reject(r);
                    tracing::warn!(gateway = %topic.gateway, reason = r.label(), error = %e, "ingest: batch rejected");
                    continue;
                }
            };
            let key = (batch.gateway.clone(), batch.epoch);
            if self.seen.contains(&batch.gateway, batch.epoch, batch.seq)
                || accepted
                    .iter()
                    .any(|(_, b, _)| b.gateway == batch.gateway && b.epoch == batch.epoch && b.seq == batch.seq)
            {
                m.duplicates.fetch_add(1, Ordering::Relaxed);
                to_ack.insert(key, topic.enterprise);
                continue;
            }
            if self.seen.is_stale_epoch(&batch.gateway, batch.epoch) {
                m.reject(Reject::StaleEpoch);
                tracing::warn!(gateway = %batch.gateway, epoch = batch.epoch, "ingest: batch of a forgotten epoch rejected (replay)");
                continue;
            }
            if self.seen.too_fragmented(&batch.gateway, batch.epoch) {
                m.reject(Reject::Fragmented);
                tracing::warn!(gateway = %batch.gateway, epoch = batch.epoch, seq = batch.seq, "ingest: sequence numbers too fragmented; batch refused until the gaps are filled");
                continue;
            }
            to_ack.insert(key, topic.enterprise.clone());
            accepted.push((topic.enterprise, batch, msg.payload));
        }
        // Alarm/event class first: logged, stored and streamed ahead of telemetry.
        accepted.sort_by_key(|(_, b, _)| b.class != Priority::AlarmEvent);
        if !accepted.is_empty() {
            let records: Vec<Vec<u8>> =
                accepted.iter().map(|(e, b, raw)| wal_record(e, &b.gateway, now, raw)).collect();
            let before = self.wal.stats().bytes;
            tokio::task::block_in_place(|| self.wal.append_group(records.iter().map(Vec::as_slice)))?;
            m.groups.fetch_add(1, Ordering::Relaxed);
            m.wal_bytes.fetch_add(self.wal.stats().bytes - before, Ordering::Relaxed);
        }
        // Durable: record, store, stream.
        {
            let mut h = self.historian.write().map_err(|_| HistorianError::Chunk("historian lock poisoned".into()))?;
            for (_, b, _) in &accepted {
                self.seen.insert(&b.gateway, b.epoch, b.seq);
                for s in &b.series {
                    h.insert(&b.gateway, &s.point, &s.samples)?;
                }
            }
        }
        // Evidence images are on disk before the batch is acknowledged.
        for (enterprise, b, _) in accepted.iter().filter(|(_, b, _)| !b.events.is_empty()) {
            tokio::task::block_in_place(|| self.evidence.keep_batch(enterprise, b));
        }
        let mut seen_gw: BTreeMap<GatewayId, String> = BTreeMap::new();
        for (enterprise, batch, _) in accepted {
            m.batches_accepted.fetch_add(1, Ordering::Relaxed);
            m.samples_accepted.fetch_add(batch.sample_count() as u64, Ordering::Relaxed);
            m.events_accepted.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
            if let Ok(d) = serde_json::to_string(&batch.dropped) {
                seen_gw.insert(batch.gateway.clone(), d);
            }
            let alarm = batch.class == Priority::AlarmEvent || !batch.events.is_empty();
            let item = Arc::new(Ingested { enterprise, batch });
            // No receiver is not an error: consumers come and go.
            let _ = if alarm { self.streams.alarms.send(item) } else { self.streams.telemetry.send(item) };
        }
        let mut out = Vec::new();
        for ((gw, epoch), enterprise) in to_ack {
            out.extend(self.ack_for(&enterprise, &gw, epoch, now));
        }
        for (gw, drops) in seen_gw {
            if self.last_touch.get(&gw).is_none_or(|t| t.elapsed() >= TOUCH_EVERY) {
                self.touch(&gw, Some(now), None, Some(&drops)).await;
                self.last_touch.insert(gw, Instant::now());
            }
        }
        for (gw, len) in states {
            // Rare (connects and disconnects): always recorded.
            if self.keys.contains_key(&gw) {
                self.touch(&gw, None, Some((now, len as i64)), None).await;
            }
        }
        Ok(out)
    }

    fn ack_for(&mut self, enterprise: &EnterpriseId, gw: &GatewayId, epoch: u64, now: i64) -> Option<Outgoing> {
        let (acked, resend) = self.seen.ack_ranges(gw, epoch, now, self.cfg.ingest.resend_after_ms);
        self.metrics.resend_ranges.fetch_add(resend.len() as u64, Ordering::Relaxed);
        let ack = Ack { gateway: gw.clone(), epoch, acked, resend, central_ms: now };
        match ack.seal(&self.central_key) {
            Ok(bytes) => Some((Topic::new(enterprise.clone(), gw.clone(), Channel::DownAck).to_string(), bytes)),
            Err(e) => {
                tracing::error!(gateway = %gw, error = %e, "ingest: could not seal an ack");
                None
            }
        }
    }

    /// Acks carrying re-send requests for gateways whose gaps have been open long enough.
    pub fn resend_requests(&mut self) -> Vec<Outgoing> {
        let now = now_ms();
        let mut out = Vec::new();
        for (gw, epoch) in self.seen.with_gaps() {
            let Some(ent) = self.keys.get(&gw).map(|k| k.enterprise.clone()) else { continue };
            if self.seen.resend_due(&gw, epoch, now, self.cfg.ingest.resend_after_ms) {
                out.extend(self.ack_for(&ent, &gw, epoch, now));
            }
        }
        out
    }

    /// True when a checkpoint is due (time or WAL growth).
    pub fn checkpoint_due(&self) -> bool {
        self.last_checkpoint.elapsed() >= Duration::from_secs(self.cfg.ingest.checkpoint_interval_s)
            || self.wal.stats().bytes - self.wal_bytes_at_checkpoint >= self.cfg.ingest.checkpoint_wal_bytes
    }

    /// Checkpoint: rotate the WAL, make every head a durable chunk, commit the checkpoint file, drop
    /// the old WAL segments, enforce retention.
    pub fn checkpoint(&mut self) -> Result<(), IngestError> {
        let started = Instant::now();
        let cut = tokio::task::block_in_place(|| self.wal.rotate())?;
        let mut h = self.historian.write().map_err(|_| HistorianError::Chunk("historian lock poisoned".into()))?;
        tokio::task::block_in_place(|| h.make_durable())?;
        let cp = Checkpoint { generation: h.generation(), wal_from: cut, seen: self.seen.clone() };
        write_checkpoint(&self.data_dir.join("checkpoint.json"), &cp)?;
        h.committed();
        let retention = i64::from(self.cfg.historian.retention_days) * 86_400_000;
        h.enforce_retention(now_ms(), retention)?;
        drop(h);
        self.wal.truncate_before(cut)?;
        self.wal_bytes_at_checkpoint = self.wal.stats().bytes;
        self.last_checkpoint = Instant::now();
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            generation = cp.generation,
            wal_from = cut,
            ms = started.elapsed().as_millis() as u64,
            "checkpoint"
        );
        Ok(())
    }

    /// WAL counters.
    pub fn wal_stats(&self) -> wal::WalStats {
        self.wal.stats()
    }
}

fn tls_config(t: &crate::config::TlsConfig) -> Result<rustls::ClientConfig, IngestError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| std::fs::read(p).map_err(|e| IngestError::Tls(format!("{}: {e}", p.display())));
    let tls = |e: String| IngestError::Tls(e);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(&t.ca_file)?) {
        roots.add(c.map_err(|e| tls(format!("{}: {e}", t.ca_file.display())))?).map_err(|e| tls(e.to_string()))?;
    }
    let certs = CertificateDer::pem_slice_iter(&read(&t.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(format!("{}: {e}", t.cert_file.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&t.key_file)?)
        .map_err(|e| tls(format!("{}: {e}", t.key_file.display())))?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| tls(e.to_string()))
}

/// The MQTT client options for `cfg`.
pub fn mqtt_options(cfg: &MqttConfig) -> Result<MqttOptions, IngestError> {
    let mut o = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s));
    o.set_clean_session(true);
    let max = vigil_common::envelope::Kind::Batch.max_envelope_len() + 1024;
    o.set_max_packet_size(max, 512 * 1024);
    o.set_request_channel_capacity(8192);
    o.set_inflight(1000);
    if let Some(t) = &cfg.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls_config(t)?))));
    }
    Ok(o)
}

/// The delivery class a batch claims, read from its payload header without verifying it: used only to
/// pick the lane (alarm/event batches are never queued behind telemetry); acceptance still requires
/// the full `Batch::open`. `None` for anything that does not parse.
pub fn peek_class(bytes: &[u8]) -> Option<Priority> {
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *b.get(*at)?;
            *at += 1;
            v |= u64::from(byte & 0x7F).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let payload = bytes.get(HEADER_LEN..)?;
    let mut at = 0;
    let name_len = usize::try_from(varint(payload, &mut at)?).ok()?;
    at = at.checked_add(name_len)?;
    varint(payload, &mut at)?; // epoch
    varint(payload, &mut at)?; // seq
    match varint(payload, &mut at)? {
        0 => Some(Priority::AlarmEvent),
        1 => Some(Priority::Live),
        2 => Some(Priority::Backfill),
        _ => None,
    }
}

/// The sending side of the two ingest lanes.
#[derive(Clone)]
pub struct LaneTx {
    alarm: mpsc::Sender<Incoming>,
    telemetry: mpsc::Sender<Incoming>,
}

/// The receiving side of the two ingest lanes.
pub struct LaneRx {
    alarm: mpsc::Receiver<Incoming>,
    telemetry: mpsc::Receiver<Incoming>,
}

/// Two bounded lanes: alarm/event-class batches, and everything else. Ingest always serves the alarm
/// lane first and commits alarm batches in groups of their own.
pub fn lanes(capacity: usize) -> (LaneTx, LaneRx) {
    let (at, ar) = mpsc::channel(capacity.max(1));
    let (tt, tr) = mpsc::channel(capacity.max(1));
    (LaneTx { alarm: at, telemetry: tt }, LaneRx { alarm: ar, telemetry: tr })
}

impl LaneTx {
    /// Queues a message on its lane (waits while that lane is full); `Err` when ingest has stopped.
    pub async fn send(&self, m: Incoming) -> Result<(), Incoming> {
        let alarm = m.topic.ends_with("/up/batch") && peek_class(&m.payload) == Some(Priority::AlarmEvent);
        let lane = if alarm { &self.alarm } else { &self.telemetry };
        lane.send(m).await.map_err(|e| e.0)
    }

    /// True when ingest has stopped.
    pub fn is_closed(&self) -> bool {
        self.alarm.is_closed() && self.telemetry.is_closed()
    }
}

/// Runs the MQTT event loop: subscribes after every connect, forwards publishes to their lane (bounded:
/// back-pressure reaches the broker), backs off on errors. Ends when the lanes close.
pub async fn mqtt_loop(client: AsyncClient, mut eventloop: EventLoop, tx: LaneTx, metrics: Arc<IngestMetrics>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                metrics.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                tracing::info!("mqtt: connected; subscribing");
                for ch in [Channel::UpBatch, Channel::UpState, Channel::UpCatalogue] {
                    if let Err(e) = client.try_subscribe(ch.filter_all(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "mqtt: subscribe request failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(Incoming { topic: p.topic, payload: p.payload.to_vec() }).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, retry_ms = backoff.as_millis() as u64, "mqtt: connection error");
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn drain(first: Incoming, rx: &mut mpsc::Receiver<Incoming>, group_max: usize) -> Vec<Incoming> {
    let mut bytes = first.payload.len();
    let mut group = vec![first];
    while group.len() < group_max && bytes < 32 * 1024 * 1024 {
        match rx.try_recv() {
            Ok(m) => {
                bytes += m.payload.len();
                group.push(m);
            }
            Err(_) => break,
        }
    }
    group
}

/// Runs ingest until `shutdown` resolves or the lanes close: serves the alarm lane first, commits each
/// lane's messages in groups, acknowledges, sends re-send requests on a timer and checkpoints when due.
pub async fn run(
    mut core: Core,
    client: AsyncClient,
    mut rx: LaneRx,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), IngestError> {
    tokio::pin!(shutdown);
    let group_max = core.cfg.ingest.group_max;
    let mut tick = tokio::time::interval(Duration::from_millis((core.cfg.ingest.resend_after_ms / 4).max(100) as u64));
    let publish = |core: &Core, out: Vec<Outgoing>| {
        for (topic, bytes) in out {
            match client.try_publish(topic, QoS::AtLeastOnce, false, bytes) {
                Ok(()) => core.metrics.acks_sent.fetch_add(1, Ordering::Relaxed),
                Err(_) => core.metrics.acks_dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    };
    loop {
        let group = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(first) = rx.alarm.recv() => drain(first, &mut rx.alarm, group_max),
            Some(first) = rx.telemetry.recv() => drain(first, &mut rx.telemetry, group_max),
            _ = tick.tick() => {
                if rx.alarm.is_closed() && rx.telemetry.is_closed() && rx.alarm.is_empty() && rx.telemetry.is_empty() {
                    break;
                }
                Vec::new()
            }
        };
        if group.is_empty() {
            let out = core.resend_requests();
            publish(&core, out);
        } else {
            let out = core.process_group(group).await?;
            publish(&core, out);
        }
        if core.checkpoint_due() {
            core.checkpoint()?;
        }
    }
    core.checkpoint()?;
    Ok(())
}

/// Feeds every verified gateway state from `rx` to `on_state` with the gateway's enterprise from
/// `registry`, until the sender goes away. States of unregistered gateways are skipped; a lag, an
/// unreadable registry and a failed `on_state` are logged under `what` and the loop goes on.
pub async fn follow_states<F, Fut, E>(
    registry: Registry,
    mut rx: broadcast::Receiver<Arc<(GatewayState, i64)>>,
    what: &'static str,
    mut on_state: F,
) where
    F: FnMut(Arc<(GatewayState, i64)>, EnterpriseId) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        let state = match rx.recv().await {
            Ok(s) => s,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "{what}: gateway states lagged");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let gw = state.0.gateway.clone();
        let enterprise = match registry.enterprise_of(&gw).await {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(gateway = %gw, error = %e, "{what}: registry unreadable");
                continue;
            }
        };
        let Ok(enterprise) = EnterpriseId::new(enterprise) else { continue };
        if let Err(e) = on_state(state, enterprise).await {
            tracing::error!(gateway = %gw, error = %e, "{what}: cannot record the gateway's report");
        }
    }
}
