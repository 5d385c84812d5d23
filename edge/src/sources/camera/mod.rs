//! Gas-leak cameras: detections pushed over HTTP ([`http_push`]) or pulled from an ONVIF PullPoint
//! subscription ([`onvif`]) become `GasDetection` events with their snapshot ([`snapshot`]); a
//! periodic liveness check per camera ([`health`]) reports offline/online. Each camera's model file
//! ([`model`]) says how its messages map to a detection.
//!
//! Everything a camera sends is untrusted: bodies are bounded, every failure is a 4xx and a counter,
//! snapshot URLs must point at the camera itself, and nothing a camera does can stop the others.

pub mod client;
pub mod health;
pub mod http_push;
pub mod model;
pub mod onvif;
pub mod snapshot;
pub mod xml;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use vigil_common::event::{GasDetection, MAX_SNAPSHOT_BYTES};
use vigil_common::{ClockQuality, Event, EventKind, TimeSource};

use self::model::CameraModel;
use crate::Record;
use crate::sources::Counter;
use crate::spool::now_ms;

/// The `[cameras]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CamerasConfig {
    /// Address of the HTTP push endpoint (`POST /cameras/{name}/events`); no endpoint when absent.
    pub listen: Option<SocketAddr>,
    /// Directory of camera model files, relative to the configuration file (default `camera-models`).
    #[serde(default = "default_model_dir")]
    pub model_dir: PathBuf,
    /// Largest push body accepted, bytes (default 65536); larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest snapshot fetched, bytes (default and maximum 1 MiB, what an event may carry).
    #[serde(default = "default_snapshot_max")]
    pub snapshot_max_bytes: usize,
    /// Snapshot fetch timeout, ms (default 3000); on timeout the detection goes without it.
    #[serde(default = "default_snapshot_timeout")]
    pub snapshot_timeout_ms: u64,
    /// Identical posts of a camera within this many seconds are taken once (default 60).
    #[serde(default = "default_dedup")]
    pub dedup_window_s: u64,
    /// Most pushes handled at once; more get 503 so the camera retries (default 16).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// The cameras.
    #[serde(default)]
    pub camera: Vec<CameraConfig>,
}

impl Default for CamerasConfig {
    fn default() -> Self {
        CamerasConfig {
            listen: None,
            model_dir: default_model_dir(),
            max_body_bytes: default_max_body(),
            snapshot_max_bytes: default_snapshot_max(),
            snapshot_timeout_ms: default_snapshot_timeout(),
            dedup_window_s: default_dedup(),
            max_in_flight: default_in_flight(),
            camera: Vec::new(),
        }
    }
}

fn default_model_dir() -> PathBuf {
    PathBuf::from("camera-models")
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_snapshot_max() -> usize {
    MAX_SNAPSHOT_BYTES
}
fn default_snapshot_timeout() -> u64 {
    3000
}
fn default_dedup() -> u64 {
    60
}
fn default_in_flight() -> usize {
    16
}

/// One `[[cameras.camera]]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera name (unique; used in events and in the push URL).
    pub name: String,
    /// Model file name (without `.toml`) in the model directory.
    pub model: String,
    /// The camera's host (name or address): snapshot URLs its messages name must point at it.
    pub host: Option<String>,
    /// How the camera authenticates its pushes; required for a camera that pushes.
    pub auth: Option<PushAuth>,
    /// Snapshot URL used when a detection names none (e.g. the ONVIF snapshot URI).
    pub snapshot_uri: Option<String>,
    /// Basic-auth credentials for snapshot fetches, `user:password`.
    pub snapshot_credentials: Option<String>,
    /// ONVIF event subscription.
    pub onvif: Option<OnvifCamera>,
    /// Liveness check.
    pub health: Option<HealthConfig>,
}

/// How a camera proves who it is when it pushes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PushAuth {
    /// A shared secret in a header.
    Secret {
        /// Header name (default `X-Camera-Secret`).
        #[serde(default = "default_secret_header")]
        header: String,
        /// The secret (at least 16 characters).
        secret: String,
    },
    /// HTTP basic authentication.
    Basic {
        /// User name.
        user: String,
        /// Password (at least 8 characters).
        password: String,
    },
}

fn default_secret_header() -> String {
    "X-Camera-Secret".to_owned()
}

/// ONVIF settings of a camera.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OnvifCamera {
    /// The event service URL (`http://cam/onvif/event_service`).
    pub events_url: String,
    /// The device service URL, for the liveness check (`GetSystemDateAndTime`).
    pub device_url: Option<String>,
    /// User for the WS-UsernameToken.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Requested subscription lifetime, s (default 60); renewed at half of it.
    #[serde(default = "default_subscription_s")]
    pub subscription_s: u64,
    /// Longest wait of one PullMessages, s (default 5).
    #[serde(default = "default_pull_timeout_s")]
    pub pull_timeout_s: u64,
    /// Ceiling of the re-subscribe backoff, s (default 30).
    #[serde(default = "default_backoff_max_s")]
    pub backoff_max_s: u64,
}

fn default_subscription_s() -> u64 {
    60
}
fn default_pull_timeout_s() -> u64 {
    5
}
fn default_backoff_max_s() -> u64 {
    30
}

/// A camera's liveness check: `GET url` answered 2xx, else ONVIF `GetSystemDateAndTime`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// URL to GET; when absent the ONVIF device service is asked.
    pub url: Option<String>,
    /// Check period, s (default 10).
    #[serde(default = "default_health_interval")]
    pub interval_s: u64,
    /// Consecutive failures before the camera is reported offline (default 2).
    #[serde(default = "default_health_failures")]
    pub failures: u32,
    /// Timeout of one check, ms (default 3000).
    #[serde(default = "default_snapshot_timeout")]
    pub timeout_ms: u64,
}

fn default_health_interval() -> u64 {
    10
}
fn default_health_failures() -> u32 {
    2
}

/// A camera with its model resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Camera {
    /// Its configuration.
    pub config: CameraConfig,
    /// Its model.
    pub model: Arc<CameraModel>,
}

/// Validates the `[cameras]` section and loads the models it names. Problems come back as
/// (file, key, problem); `config_file` names the gateway configuration and anchors `model_dir`.
pub fn resolve(section: &CamerasConfig, config_file: &Path) -> (Vec<Camera>, Vec<(PathBuf, String, String)>) {
    let mut problems = Vec::new();
    macro_rules! here {
        ($key:expr, $problem:expr) => {
            problems.push((config_file.to_path_buf(), $key, $problem))
        };
    }
    if !(256..=16 * 1024 * 1024).contains(&section.max_body_bytes) {
        here!("cameras.max_body_bytes".into(), "must be between 256 and 16777216".into());
    }
    if !(1024..=MAX_SNAPSHOT_BYTES).contains(&section.snapshot_max_bytes) {
        here!("cameras.snapshot_max_bytes".into(), format!("must be between 1024 and {MAX_SNAPSHOT_BYTES}"));
    }
    if !(100..=60_000).contains(&section.snapshot_timeout_ms) {
        here!("cameras.snapshot_timeout_ms".into(), "must be between 100 and 60000".into());
    }
    if !(1..=1024).contains(&section.max_in_flight) {
        here!("cameras.max_in_flight".into(), "must be between 1 and 1024".into());
    }
    if section.dedup_window_s > 86_400 {
        here!("cameras.dedup_window_s".into(), "must be at most 86400".into());
    }
    let dir = config_file.parent().unwrap_or(Path::new(".")).join(&section.model_dir);
    let mut models: BTreeMap<String, Option<Arc<CameraModel>>> = BTreeMap::new();
    let mut names = BTreeMap::new();
    let mut cameras = Vec::new();
    for (i, c) in section.camera.iter().enumerate() {
        let key = format!("cameras.camera[{i}]");
        if c.name.is_empty()
            || c.name.len() > 64
            || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        {
            here!(format!("{key}.name"), format!("{:?} must be 1..=64 of A-Z a-z 0-9 - _ .", c.name));
        }
        if names.insert(c.name.clone(), i).is_some() {
            here!(format!("{key}.name"), format!("duplicate camera name {:?}", c.name));
        }
        match &c.auth {
            Some(PushAuth::Secret { header, secret }) => {
                if secret.len() < 16 {
                    here!(format!("{key}.auth.secret"), "must be at least 16 characters".into());
                }
                if hyper::http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    here!(format!("{key}.auth.header"), format!("{header:?} is not a header name"));
                }
            }
            Some(PushAuth::Basic { user, password }) => {
                if user.is_empty() || user.contains(':') {
                    here!(format!("{key}.auth.user"), "must be non-empty and without ':'".into());
                }
                if password.len() < 8 {
                    here!(format!("{key}.auth.password"), "must be at least 8 characters".into());
                }
            }
            None => {}
        }
        if c.auth.is_some() && section.listen.is_none() {
            here!(format!("{key}.auth"), "is set but cameras.listen is not: no push endpoint runs".into());
        }
        for (field, url) in [("snapshot_uri", &c.snapshot_uri)] {
            if let Some(u) = url
                && let Err(e) = client::Url::parse(u)
            {
                here!(format!("{key}.{field}"), e.to_string());
            }
        }
        if let Some(cred) = &c.snapshot_credentials
            && !cred.contains(':')
        {
            here!(format!("{key}.snapshot_credentials"), "must be user:password".into());
        }
        if let Some(o) = &c.onvif {
            for (field, url) in [("events_url", Some(&o.events_url)), ("device_url", o.device_url.as_ref())] {
                if let Some(u) = url
                    && let Err(e) = client::Url::parse(u)
                {
                    here!(format!("{key}.onvif.{field}"), e.to_string());
                }
            }
            if !(10..=86_400).contains(&o.subscription_s) {
                here!(format!("{key}.onvif.subscription_s"), "must be between 10 and 86400".into());
            }
            if !(1..=60).contains(&o.pull_timeout_s) || o.pull_timeout_s * 2 >= o.subscription_s {
                here!(format!("{key}.onvif.pull_timeout_s"), "must be 1..=60 and below half of subscription_s".into());
            }
            if !(1..=3600).contains(&o.backoff_max_s) {
                here!(format!("{key}.onvif.backoff_max_s"), "must be between 1 and 3600".into());
            }
        }
        if let Some(h) = &c.health {
            match (&h.url, c.onvif.as_ref().and_then(|o| o.device_url.as_ref())) {
                (Some(u), _) => {
                    if let Err(e) = client::Url::parse(u) {
                        here!(format!("{key}.health.url"), e.to_string());
                    }
                }
                (None, Some(_)) => {}
                (None, None) => here!(format!("{key}.health.url"), "set a URL or an onvif.device_url".into()),
            }
            if !(1..=3600).contains(&h.interval_s) {
                here!(format!("{key}.health.interval_s"), "must be between 1 and 3600".into());
            }
            if !(1..=100).contains(&h.failures) {
                here!(format!("{key}.health.failures"), "must be between 1 and 100".into());
            }
            if !(100..=60_000).contains(&h.timeout_ms) {
                here!(format!("{key}.health.timeout_ms"), "must be between 100 and 60000".into());
            }
        }
        let model = models.entry(c.model.clone()).or_insert_with(|| match load_model(&dir, &c.model) {
            Ok((file, m)) => {
                let mut bad = Vec::new();
                if let Some(p) = &m.push {
                    bad.extend(p.problems(true).into_iter().map(|(k, v)| (format!("push.{k}"), v)));
                }
                if let Some(o) = &m.onvif {
                    bad.extend(o.fields.problems(false).into_iter().map(|(k, v)| (format!("onvif.fields.{k}"), v)));
                    if o.topics.is_empty() {
                        bad.push(("onvif.topics".into(), "names no topic".into()));
                    }
                }
                if bad.is_empty() {
                    Some(Arc::new(m))
                } else {
                    problems.extend(bad.into_iter().map(|(k, v)| (file.clone(), k, v)));
                    None
                }
            }
            Err(why) => {
                problems.push((config_file.to_path_buf(), format!("{key}.model"), why));
                None
            }
        });
        let Some(model) = model.clone() else { continue };
        if c.auth.is_some() && model.push.is_none() {
            problems.push((
                config_file.to_path_buf(),
                format!("{key}.auth"),
                format!("model {:?} has no [push] mapping", c.model),
            ));
        }
        if c.onvif.is_some() && model.onvif.is_none() {
            problems.push((
                config_file.to_path_buf(),
                format!("{key}.onvif"),
                format!("model {:?} has no [onvif] mapping", c.model),
            ));
        }
        cameras.push(Camera { config: c.clone(), model });
    }
    (cameras, problems)
}

fn load_model(dir: &Path, name: &str) -> Result<(PathBuf, CameraModel), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("model name {name:?} may only contain ASCII letters, digits, '-' and '_'"));
    }
    let file = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("unknown camera model {name:?}: cannot read {}: {e}", file.display()))?;
    let model = toml::from_str(&text).map_err(|e| format!("{}: {}", file.display(), e.message().trim()))?;
    Ok((file, model))
}

/// Camera counters.
#[derive(Debug, Default)]
pub struct CameraMetrics {
    /// Pushes received.
    pub posts: Counter,
    /// Detections sent towards the spool.
    pub detections: Counter,
    /// Identical pushes or messages taken once.
    pub duplicates: Counter,
    /// Pushes refused for missing or wrong credentials (401).
    pub auth_failures: Counter,
    /// Pushes for a camera that is not configured or does not push (404).
    pub unknown_camera: Counter,
    /// Pushes over the body limit (413).
    pub too_large: Counter,
    /// Bodies that are not JSON (400).
    pub malformed: Counter,
    /// JSON bodies that do not map to a detection (422).
    pub unmapped: Counter,
    /// Pushes refused because too many were in flight or the spool queue was full (503).
    pub busy: Counter,
    /// Snapshots fetched and attached.
    pub snapshots: Counter,
    /// Snapshot fetches that failed (the detection went without).
    pub snapshot_failures: Counter,
    /// Snapshots refused for being larger than the bound.
    pub snapshot_too_large: Counter,
    /// Camera times more than an hour off the gateway's (gateway time used instead).
    pub clock_skew: Counter,
    /// ONVIF subscriptions created.
    pub onvif_subscribes: Counter,
    /// ONVIF subscriptions re-created after being lost (camera reboot, expiry, errors).
    pub onvif_resubscribes: Counter,
    /// ONVIF renewals.
    pub onvif_renewals: Counter,
    /// ONVIF notification messages received.
    pub onvif_messages: Counter,
    /// ONVIF messages ignored (other topics) or not mapped.
    pub onvif_ignored: Counter,
    /// ONVIF exchanges that failed (transport, SOAP fault, bad XML).
    pub onvif_errors: Counter,
    /// Liveness checks run.
    pub health_checks: Counter,
    /// Liveness checks that failed.
    pub health_failures: Counter,
    /// Camera-offline events.
    pub offline_events: Counter,
    /// Camera-online events.
    pub online_events: Counter,
}

impl fmt::Display for CameraMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = [
            ("posts", &self.posts),
            ("detections", &self.detections),
            ("duplicates", &self.duplicates),
            ("auth_failures", &self.auth_failures),
            ("unknown_camera", &self.unknown_camera),
            ("too_large", &self.too_large),
            ("malformed", &self.malformed),
            ("unmapped", &self.unmapped),
            ("busy", &self.busy),
            ("snapshots", &self.snapshots),
            ("snapshot_failures", &self.snapshot_failures),
            ("snapshot_too_large", &self.snapshot_too_large),
            ("clock_skew", &self.clock_skew),
            ("onvif_subscribes", &self.onvif_subscribes),
            ("onvif_resubscribes", &self.onvif_resubscribes),
            ("onvif_renewals", &self.onvif_renewals),
            ("onvif_messages", &self.onvif_messages),
            ("onvif_ignored", &self.onvif_ignored),
            ("onvif_errors", &self.onvif_errors),
            ("health_checks", &self.health_checks),
            ("health_failures", &self.health_failures),
            ("offline_events", &self.offline_events),
            ("online_events", &self.online_events),
        ];
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={}", v.get())?;
        }
        Ok(())
    }
}

/// What the camera tasks share: settings, cameras, counters, the way to the spool.
pub struct Hub {
    /// The `[cameras]` settings.
    pub settings: CamerasConfig,
    /// The cameras by name.
    pub cameras: BTreeMap<String, Camera>,
    /// Counters.
    pub metrics: Arc<CameraMetrics>,
    /// Clock quality of the gateway's own time stamps.
    pub gateway_clock: ClockQuality,
    /// Bounds the pushes handled at once.
    pub in_flight: tokio::sync::Semaphore,
    tx: mpsc::Sender<Record>,
    dedup: Mutex<BTreeMap<String, VecDeque<(u64, Instant)>>>,
}

/// Remembered message fingerprints per camera.
const DEDUP_DEPTH: usize = 64;
/// A camera time further than this from the gateway's is not trusted.
const MAX_SKEW_MS: i64 = 3_600_000;
/// How long a detection waits for room in the record channel before the push is refused (503).
const SEND_WAIT: Duration = Duration::from_secs(5);

/// Why a detection did not reach the record channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The channel stayed full (the batcher is behind).
    Full,
    /// The agent is stopping.
    Closed,
}

impl Hub {
    /// A hub for `cameras`, sending into `tx`.
    pub fn new(
        settings: CamerasConfig,
        cameras: Vec<Camera>,
        metrics: Arc<CameraMetrics>,
        gateway_clock: ClockQuality,
        tx: mpsc::Sender<Record>,
    ) -> Hub {
        let cameras = cameras.into_iter().map(|c| (c.config.name.clone(), c)).collect();
        let in_flight = tokio::sync::Semaphore::new(settings.max_in_flight.max(1));
        Hub { settings, cameras, metrics, gateway_clock, in_flight, tx, dedup: Mutex::new(BTreeMap::new()) }
    }

    /// Forgets `fingerprint` of `camera` (its detection could not be queued; the retry must count).
    pub fn forget(&self, camera: &str, fingerprint: u64) {
        if let Ok(mut all) = self.dedup.lock()
            && let Some(q) = all.get_mut(camera)
        {
            q.retain(|(f, _)| *f != fingerprint);
        }
    }

    /// True when `fingerprint` of `camera` was seen within the dedup window (and records it if not).
    pub fn seen_before(&self, camera: &str, fingerprint: u64) -> bool {
        let window = Duration::from_secs(self.settings.dedup_window_s);
        let Ok(mut all) = self.dedup.lock() else { return false };
        let q = all.entry(camera.to_owned()).or_default();
        let now = Instant::now();
        while q.front().is_some_and(|(_, t)| now.duration_since(*t) > window) {
            q.pop_front();
        }
        if q.iter().any(|(f, _)| *f == fingerprint) {
            return true;
        }
        if q.len() >= DEDUP_DEPTH {
            q.pop_front();
        }
        q.push_back((fingerprint, now));
        false
    }

    /// Fetches the detection's snapshot (its URL, else the camera's snapshot URI) and sends the
    /// event towards the spool. A failed fetch still sends the detection, without a snapshot.
    pub async fn deliver(
        &self,
        camera: &Camera,
        ts_ms: Option<i64>,
        mut detection: GasDetection,
        snapshot_url: Option<String>,
    ) -> Result<(), SendError> {
        let url = snapshot_url.or_else(|| camera.config.snapshot_uri.clone());
        if let Some(url) = url {
            detection.snapshot = snapshot::fetch(self, camera, &url).await;
        }
        let now = now_ms();
        let (ts_ms, clock) = match ts_ms {
            Some(t) if (t - now).abs() <= MAX_SKEW_MS => {
                (t, ClockQuality { synchronised: false, source: TimeSource::Device })
            }
            Some(t) => {
                self.metrics.clock_skew.inc();
                tracing::warn!(camera = %camera.config.name, camera_ms = t, gateway_ms = now, "camera clock off by more than an hour; gateway time used");
                (now, self.gateway_clock)
            }
            None => (now, self.gateway_clock),
        };
        self.send(Event { ts_ms, clock, kind: EventKind::GasDetection(detection) }).await?;
        self.metrics.detections.inc();
        Ok(())
    }

    /// Sends an event, waiting a bounded time for room.
    pub async fn send(&self, event: Event) -> Result<(), SendError> {
        match tokio::time::timeout(SEND_WAIT, self.tx.send(Record::Event(event))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SendError::Closed),
            Err(_) => Err(SendError::Full),
        }
    }
}

/// Errors that stop the camera sources.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// The push endpoint could not listen.
    #[error("camera push endpoint {addr}: {why}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        why: String,
    },
}

/// Runs the push endpoint, the ONVIF subscriptions and the liveness checks until `shutdown`; ONVIF
/// subscriptions are cancelled on the way out.
pub async fn run(hub: Arc<Hub>, shutdown: watch::Receiver<bool>) -> Result<(), CameraError> {
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = hub.settings.listen {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                // Central must learn that this gateway hears no camera pushes.
                let message = format!("push endpoint {addr}: {e}");
                let kind = EventKind::SourceFault { source: "cameras".to_owned(), message };
                let _ = hub.send(Event { ts_ms: now_ms(), clock: hub.gateway_clock, kind }).await;
                return Err(CameraError::Listen { addr, why: e.to_string() });
            }
        };
        tracing::info!(%addr, "cameras: push endpoint listening");
        tasks.spawn(http_push::serve(listener, hub.clone(), shutdown.clone()));
    }
    for camera in hub.cameras.values() {
        if camera.config.onvif.is_some() {
            tasks.spawn(onvif::run(hub.clone(), camera.clone(), shutdown.clone()));
        }
        if camera.config.health.is_some() {
            tasks.spawn(health::run(hub.clone(), camera.clone(), shutdown.clone()));
        }
    }
    while tasks.join_next().await.is_some() {}
    tracing::info!(metrics = %hub.metrics, "cameras: stopped");
    Ok(())
}
