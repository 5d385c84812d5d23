//! The gateway's local status page for the technician on site, without central: every source and
//! device with its state and last error, every point's latest value and quality, spool depth per
//! class and the oldest unacknowledged age, uplink state, clock state, agent version and recent
//! events; as HTML (`/`), JSON (`/status.json`) and Prometheus text (`/metrics`), behind HTTP Basic
//! authentication against an Argon2 hash.
//!
//! The [`Board`] learns from the records on their way to the batcher (a pass-through tap, so data
//! still moves one way) and reads the spool and counters when a page is asked for.

pub mod clock;
mod page;
mod server;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use vigil_common::{Event, EventKind, Priority, Value};

use crate::Record;
use crate::config::{ClockSource, Plant};
use crate::spool::{BatcherMetrics, SpoolStats, now_ms};
use crate::uplink::UplinkMetrics;

pub use page::{metrics_text, render_html, summary_text};
pub use server::{CONNECTION_LIFETIME, ListenerMetrics, fetch, hash_password, serve};

/// The `[status]` section of the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Address to listen on: loopback or one local interface's address, e.g. `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// User name for HTTP Basic authentication (default `technician`).
    #[serde(default = "default_user")]
    pub user: String,
    /// Argon2 PHC string of the password (`vigil-edge status --hash-password`); never the password.
    pub password_hash: String,
    /// Recent events kept for the page (default 200).
    #[serde(default = "default_events")]
    pub events: usize,
    /// A connection must deliver each request head within this (default 10000 ms; also bounds an
    /// idle keep-alive connection), else it is closed: slow-header clients cannot pile up.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// Connections open at once (default 16); one more gets a 503 and is closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head in bytes (default 16384, at least 8192); the page takes no body.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
}

fn default_user() -> String {
    "technician".into()
}
fn default_events() -> usize {
    200
}
fn default_header_timeout_ms() -> u64 {
    10_000
}
fn default_max_connections() -> usize {
    16
}
fn default_max_request_bytes() -> usize {
    16 * 1024
}

impl StatusConfig {
    /// Problems with these settings, as (key, problem).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.listen.ip().is_unspecified() {
            out.push((
                "listen".into(),
                format!("{} listens on every interface; give loopback or one local interface's address", self.listen),
            ));
        }
        if self.user.is_empty() || self.user.contains(':') {
            out.push(("user".into(), "must be non-empty and without ':'".into()));
        }
        if let Err(e) = argon2::PasswordHash::new(&self.password_hash) {
            out.push((
                "password_hash".into(),
                format!("not an Argon2 PHC string ({e}); make one with `vigil-edge status --hash-password`"),
            ));
        }
        if !(1..=10_000).contains(&self.events) {
            out.push(("events".into(), format!("{} is outside 1..=10000", self.events)));
        }
        if !(100..=300_000).contains(&self.header_timeout_ms) {
            out.push(("header_timeout_ms".into(), format!("{} is outside 100..=300000", self.header_timeout_ms)));
        }
        if !(1..=1024).contains(&self.max_connections) {
            out.push(("max_connections".into(), format!("{} is outside 1..=1024", self.max_connections)));
        }
        if !(8192..=1_048_576).contains(&self.max_request_bytes) {
            out.push(("max_request_bytes".into(), format!("{} is outside 8192..=1048576", self.max_request_bytes)));
        }
        out
    }
}

/// A device or source as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// Name in the configuration.
    pub name: String,
    /// `modbus`, `opcua`, `camera`, `source`.
    pub kind: String,
    /// `online`, `offline` or `unknown` (nothing heard yet).
    pub state: String,
    /// The last error, if any was seen.
    pub last_error: Option<String>,
    /// When the state or error last changed, UTC ms.
    pub since_ms: Option<i64>,
}

/// A point's latest reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointView {
    /// Point id.
    pub id: String,
    /// Latest value (`null` before the first reading).
    pub value: serde_json::Value,
    /// Engineering unit.
    pub unit: String,
    /// Quality name.
    pub quality: String,
    /// Whether the quality is good.
    pub good: bool,
    /// Source timestamp, UTC ms.
    pub ts_ms: Option<i64>,
}

/// One recent event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// When, UTC ms.
    pub ts_ms: i64,
    /// What, in words.
    pub text: String,
}

/// Spool depth of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolClassView {
    /// `alarm_event`, `live`, `backfill`.
    pub class: String,
    /// Batches waiting for central's ack.
    pub batches: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Age of the oldest, seconds.
    pub oldest_unacked_s: Option<f64>,
    /// Batches dropped this epoch to stay within the budget.
    pub dropped_batches: u64,
}

/// The whole status, as `/status.json` serves it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Gateway id.
    pub gateway: String,
    /// Agent version (installed bundle version when started by the launcher).
    pub version: String,
    /// Target triple of the binary.
    pub target: String,
    /// When made, UTC ms.
    pub now_ms: i64,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// `connected`, `disconnected` or `disabled` (no `[uplink]`).
    pub uplink: String,
    /// Clock synchronisation in words: the kernel's NTP state and what `[acquisition] clock` says.
    pub clock: String,
    /// The kernel's clock synchronisation state.
    #[serde(default)]
    pub clock_sync: clock::ClockSync,
    /// Spool epoch.
    pub spool_epoch: u64,
    /// Spool per class.
    pub spool: Vec<SpoolClassView>,
    /// Devices and sources.
    pub devices: Vec<DeviceView>,
    /// Points.
    pub points: Vec<PointView>,
    /// Recent events, newest last.
    pub events: Vec<EventView>,
    /// Update on trial, if any.
    pub update_trial: Option<String>,
    /// The configuration file running (the installed one or a pushed one, and why).
    #[serde(default)]
    pub config: String,
}

/// Counters the board reads when asked (handed over by the agent).
pub struct Handles {
    /// The spool's figures.
    pub spool: Box<dyn Fn() -> SpoolStats + Send + Sync>,
    /// Whether the uplink is connected.
    pub online: Arc<AtomicBool>,
    /// Uplink counters (`None`: no uplink configured).
    pub uplink: Option<Arc<UplinkMetrics>>,
    /// Batcher counters.
    pub batcher: Arc<BatcherMetrics>,
    /// Acquisition counters.
    pub acquisition: Arc<crate::sources::Metrics>,
    /// Which configuration file runs and why (installed or pushed), in words.
    pub config: Box<dyn Fn() -> String + Send + Sync>,
    /// Configuration push versions and outcome counts.
    pub config_pushes: Box<dyn Fn() -> crate::config_push::PushMetrics + Send + Sync>,
}

/// What the status page knows: filled by the tap, read by the server.
pub struct Board {
    gateway: String,
    clock: ClockSource,
    started_ms: i64,
    point_device: HashMap<String, String>,
    devices: Mutex<BTreeMap<String, DeviceView>>,
    points: Mutex<BTreeMap<String, PointView>>,
    events: Mutex<VecDeque<EventView>>,
    max_events: usize,
    handles: Handles,
    /// Records seen by the tap.
    pub records: AtomicU64,
    /// Requests refused for a missing or wrong password.
    pub auth_failures: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// The listener's connection counters.
    pub listener: Arc<ListenerMetrics>,
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::F64(f) => serde_json::json!(f),
        Value::I64(i) => serde_json::json!(i),
        Value::Bool(b) => serde_json::json!(b),
        Value::Text(t) => serde_json::json!(t),
    }
}

fn class_name(c: Priority) -> &'static str {
    match c {
        Priority::AlarmEvent => "alarm_event",
        Priority::Live => "live",
        Priority::Backfill => "backfill",
    }
}

impl Board {
    /// A board for this plant, seeded with every configured device, camera and point.
    pub fn new(plant: &Plant, max_events: usize, handles: Handles) -> Board {
        let mut devices = BTreeMap::new();
        let mut point_device = HashMap::new();
        for d in &plant.devices {
            let kind = match d.transport {
                crate::config::Transport::Tcp { .. } | crate::config::Transport::Rtu { .. } => "modbus",
                #[allow(unreachable_patterns)]
                _ => "opcua",
            };
            devices.insert(
                d.name.clone(),
                DeviceView {
                    name: d.name.clone(),
                    kind: kind.into(),
                    state: "unknown".into(),
                    last_error: None,
                    since_ms: None,
                },
            );
            for &p in &d.points {
                if let Some(spec) = plant.points.get(p) {
                    point_device.insert(spec.id.as_str().to_owned(), d.name.clone());
                }
            }
        }
        for c in &plant.cameras {
            devices.insert(
                c.config.name.clone(),
                DeviceView {
                    name: c.config.name.clone(),
                    kind: "camera".into(),
                    state: "unknown".into(),
                    last_error: None,
                    since_ms: None,
                },
            );
        }
        let points = plant
            .points
            .iter()
            .map(|p| {
                let id = p.id.as_str().to_owned();
                (
                    id.clone(),
                    PointView {
                        id,
                        value: serde_json::Value::Null,
                        unit: p.unit.clone(),
                        quality: "no reading yet".into(),
                        good: false,
                        ts_ms: None,
                    },
                )
            })
            .collect();
        Board {
            gateway: plant.config.gateway.id.to_string(),
            clock: plant.config.acquisition.clock,
            started_ms: now_ms(),
            point_device,
            devices: Mutex::new(devices),
            points: Mutex::new(points),
            events: Mutex::new(VecDeque::new()),
            max_events: max_events.clamp(1, 10_000),
            handles,
            records: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            listener: Arc::default(),
        }
    }

    /// Learns from one record on its way to the batcher.
    pub fn observe(&self, record: &Record) {
        self.records.fetch_add(1, Ordering::Relaxed);
        match record {
            Record::Sample { point, sample } => {
                let id = point.as_str();
                {
                    let mut points = self.points.lock().unwrap_or_else(|p| p.into_inner());
                    // Points not in the configuration (system, derived) are added, within a bound.
                    if points.len() < 100_000 || points.contains_key(id) {
                        let e = points.entry(id.to_owned()).or_insert_with(|| PointView {
                            id: id.to_owned(),
                            value: serde_json::Value::Null,
                            unit: String::new(),
                            quality: String::new(),
                            good: false,
                            ts_ms: None,
                        });
                        e.value = value_json(&sample.value);
                        e.quality = sample.quality.to_string();
                        e.good = sample.quality.is_good();
                        e.ts_ms = Some(sample.ts_ms);
                    }
                }
                if sample.quality.is_good()
                    && let Some(dev) = self.point_device.get(id)
                {
                    self.set_device(dev, "", Some("online"), None, sample.ts_ms);
                }
            }
            Record::Event(e) => self.event(e),
        }
    }

    /// Records an event (also those the agent queues itself, which do not pass the tap).
    pub fn event(&self, e: &Event) {
        match &e.kind {
            EventKind::DeviceOffline { device, reason } => {
                self.set_device(device, "", Some("offline"), Some(reason.clone()), e.ts_ms)
            }
            EventKind::DeviceOnline { device } => self.set_device(device, "", Some("online"), None, e.ts_ms),
            EventKind::SourceFault { source, message } => {
                self.set_device(source, "source", None, Some(message.clone()), e.ts_ms)
            }
            _ => {}
        }
        let mut text = format!("{:?}", e.kind);
        if text.len() > 300 {
            let cut = (0..=300).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() >= self.max_events {
            events.pop_front();
        }
        events.push_back(EventView { ts_ms: e.ts_ms, text });
    }

    fn set_device(&self, name: &str, kind: &str, state: Option<&str>, error: Option<String>, ts_ms: i64) {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if devices.len() >= 10_000 && !devices.contains_key(name) {
            return;
        }
        let d = devices.entry(name.to_owned()).or_insert_with(|| DeviceView {
            name: name.to_owned(),
            kind: if kind.is_empty() { "source".into() } else { kind.into() },
            state: "unknown".into(),
            last_error: None,
            since_ms: None,
        });
        if let Some(s) = state
            && d.state != s
        {
            d.state = s.to_owned();
            d.since_ms = Some(ts_ms);
        }
        if let Some(err) = error {
            d.last_error = Some(err);
            d.since_ms = Some(ts_ms);
        }
    }

    /// The status now.
    pub fn status(&self) -> Status {
        let now = now_ms();
        let stats = (self.handles.spool)();
        let drops = [stats.dropped.alarm_event, stats.dropped.live, stats.dropped.backfill];
        let spool = Priority::ALL
            .iter()
            .zip(stats.classes.iter())
            .zip(drops.iter())
            .map(|((c, s), d)| SpoolClassView {
                class: class_name(*c).into(),
                batches: s.batches,
                bytes: s.bytes,
                oldest_unacked_s: s.oldest_stored_ms.map(|t| (now - t).max(0) as f64 / 1000.0),
                dropped_batches: d.batches,
            })
            .collect();
        let uplink = match (&self.handles.uplink, self.handles.online.load(Ordering::Relaxed)) {
            (None, _) => "disabled",
            (Some(_), true) => "connected",
            (Some(_), false) => "disconnected",
        };
        let clock_sync = clock::read();
        let claimed = match self.clock {
            ClockSource::Ntp => "samples are stamped as NTP-synchronised ([acquisition] clock = \"ntp\")",
            ClockSource::Gateway => "samples are stamped as gateway clock ([acquisition] clock = \"gateway\")",
        };
        let clock = format!("{}; {claimed}", clock::describe(clock_sync));
        let update_trial = std::env::var_os(crate::update::install::ENV_ROOT)
            .and_then(|root| crate::update::Layout::new(std::path::PathBuf::from(root)).trial().ok().flatten())
            .map(|t| format!("{} ({} start(s))", t.version, t.attempts));
        Status {
            gateway: self.gateway.clone(),
            version: crate::update::running_version(),
            target: crate::update::RUNNING_TARGET.into(),
            now_ms: now,
            uptime_s: u64::try_from((now - self.started_ms).max(0) / 1000).unwrap_or(0),
            uplink: uplink.into(),
            clock,
            clock_sync,
            spool_epoch: stats.epoch,
            spool,
            devices: self.devices.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect(),
            points: self.points.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect(),
            events: self.events.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect(),
            update_trial,
            config: (self.handles.config)(),
        }
    }

    /// The counters for `/metrics`, as (name, help, value) with optional labels in the name.
    pub fn counters(&self) -> Vec<(String, &'static str, f64)> {
        let mut out = Vec::new();
        let h = &self.handles;
        out.push((
            "vigil_edge_uplink_connected".into(),
            "1 while the uplink is connected",
            f64::from(u8::from(h.online.load(Ordering::Relaxed))),
        ));
        if let Some(u) = &h.uplink {
            for (n, v) in [
                ("connects", &u.connects),
                ("connection_errors", &u.connection_errors),
                ("published", &u.published),
                ("resent", &u.resent),
                ("acked", &u.acked),
                ("acks_rejected", &u.acks_rejected),
                ("commands", &u.commands),
                ("commands_rejected", &u.commands_rejected),
                ("watchdog_rebuilds", &u.watchdog_rebuilds),
                ("catalogues_published", &u.catalogues_published),
                ("catalogue_errors", &u.catalogue_errors),
            ] {
                out.push((format!("vigil_edge_uplink_{n}_total"), "uplink counter", v.load(Ordering::Relaxed) as f64));
            }
        }
        let b = &h.batcher;
        for (n, v) in [
            ("batches", &b.batches),
            ("samples", &b.samples),
            ("events", &b.events),
            ("store_errors", &b.store_errors),
            ("evicted_batches", &b.evicted_batches),
        ] {
            out.push((format!("vigil_edge_batcher_{n}_total"), "batcher counter", v.load(Ordering::Relaxed) as f64));
        }
        // The acquisition counters' display form is `name=value ...`; reading it keeps this list
        // complete when a counter is added there.
        for pair in h.acquisition.to_string().split_whitespace() {
            if let Some((n, v)) = pair.split_once('=')
                && let Ok(v) = v.parse::<f64>()
            {
                out.push((format!("vigil_edge_acquisition_{n}_total"), "acquisition counter", v));
            }
        }
        let stats = (h.spool)();
        let now = now_ms();
        for (c, s) in Priority::ALL.iter().zip(stats.classes.iter()) {
            let l = class_name(*c);
            out.push((
                format!("vigil_edge_spool_batches{{class=\"{l}\"}}"),
                "unacknowledged batches",
                s.batches as f64,
            ));
            out.push((
                format!("vigil_edge_spool_bytes{{class=\"{l}\"}}"),
                "bytes of unacknowledged batches",
                s.bytes as f64,
            ));
            out.push((
                format!("vigil_edge_spool_oldest_unacked_seconds{{class=\"{l}\"}}"),
                "age of the oldest unacknowledged batch",
                s.oldest_stored_ms.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
            ));
        }
        let pushes = (h.config_pushes)();
        let c = pushes.counts;
        for (result, n) in
            [("on_trial", c.on_trial), ("applied", c.applied), ("rejected", c.rejected), ("rolled_back", c.rolled_back)]
        {
            out.push((
                format!("vigil_edge_config_pushes_total{{result=\"{result}\"}}"),
                "configuration pushes by outcome, kept across restarts in the push status",
                n as f64,
            ));
        }
        out.push((
            "vigil_edge_config_running_version".into(),
            "kept pushed configuration version running; 0 the installed file",
            pushes.running as f64,
        ));
        out.push((
            "vigil_edge_config_trial_version".into(),
            "pushed configuration version on trial; 0 none",
            pushes.trial.unwrap_or(0) as f64,
        ));
        out.push(("vigil_edge_spool_flushes_total".into(), "spool flushes", stats.flushes as f64));
        out.push((
            "vigil_edge_spool_max_flush_microseconds".into(),
            "largest spool flush",
            stats.max_flush_micros as f64,
        ));
        out.push((
            "vigil_edge_status_records_total".into(),
            "records seen by the status tap",
            self.records.load(Ordering::Relaxed) as f64,
        ));
        out.push((
            "vigil_edge_status_requests_total".into(),
            "status page requests",
            self.requests.load(Ordering::Relaxed) as f64,
        ));
        out.push((
            "vigil_edge_status_auth_failures_total".into(),
            "status page requests refused for a missing or wrong password",
            self.auth_failures.load(Ordering::Relaxed) as f64,
        ));
        let (synced, error_s) = match clock::read() {
            clock::ClockSync::Synced { est_error_us, .. } => (1.0, est_error_us as f64 / 1e6),
            clock::ClockSync::Unsynced { max_error_us } => (0.0, max_error_us as f64 / 1e6),
            clock::ClockSync::Unknown => (-1.0, -1.0),
        };
        out.push((
            "vigil_edge_clock_synchronised".into(),
            "1 synchronised, 0 not, -1 unknown (kernel NTP state)",
            synced,
        ));
        out.push((
            "vigil_edge_clock_error_seconds".into(),
            "estimated clock error when synchronised, maximum error when not; -1 unknown",
            error_s,
        ));
        let l = &self.listener;
        for (n, help, v) in [
            ("connections_accepted_total", "status page connections accepted", &l.accepted),
            ("connections_refused_total", "status page connections closed at once: max_connections open", &l.refused),
            ("connections_active", "status page connections open", &l.active),
            ("header_timeouts_total", "status page connections closed: request head not in time", &l.header_timeouts),
            ("requests_too_large_total", "status page requests refused: head too large or a body", &l.too_large),
            (
                "connections_lifetime_closed_total",
                "status page connections closed at the lifetime limit",
                &l.lifetime_closed,
            ),
            ("connection_errors_total", "status page connection errors and failed accepts", &l.errors),
        ] {
            out.push((format!("vigil_edge_status_{n}"), help, v.load(Ordering::Relaxed) as f64));
        }
        let offline =
            self.devices.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|d| d.state == "offline").count();
        out.push(("vigil_edge_devices_offline".into(), "devices currently offline", offline as f64));
        out.push((
            "vigil_edge_uptime_seconds".into(),
            "seconds since the agent started",
            ((now - self.started_ms).max(0) / 1000) as f64,
        ));
        out
    }
}

/// Passes records from the sources to the batcher, showing each to the board on the way; ends
/// when the sources are gone or the batcher is.
pub async fn tap(board: Arc<Board>, mut rx: mpsc::Receiver<Record>, tx: mpsc::Sender<Record>) {
    while let Some(r) = rx.recv().await {
        board.observe(&r);
        if tx.send(r).await.is_err() {
            break;
        }
    }
}
