//! The `[[opcua]]` sections of the gateway configuration: one OPC UA server (an endpoint) per entry,
//! with its security, identity, acquisition mode and points. Validated with the rest of the file;
//! every problem names its key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vigil_common::PointId;

use super::nodeid::NodeRef;
use crate::config::{AcquisitionSection, DeviceSpec, PointSpec, RegisterKind, Transport};
use crate::sources::modbus::codec::{ByteOrder, DataType};

/// One `[[opcua]]` entry: an OPC UA server and the points read from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaDeviceConfig {
    /// Device name (unique among all devices; used in events).
    pub name: String,
    /// Discovery endpoint, `opc.tcp://HOST:PORT[/PATH]`.
    pub endpoint: String,
    /// `None` (default) or `Basic256Sha256`.
    #[serde(default)]
    pub security_policy: PolicyName,
    /// `None` (default), `Sign` or `SignAndEncrypt`.
    #[serde(default)]
    pub security_mode: ModeName,
    /// User name for username/password authentication (anonymous when absent).
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// File holding the password for `user` (first line), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// X.509 user certificate (DER or PEM) for certificate authentication, with `user_key`.
    pub user_cert: Option<PathBuf>,
    /// Private key (PEM) of `user_cert`.
    pub user_key: Option<PathBuf>,
    /// PKI directory: the gateway's application instance certificate (`own/cert.der`,
    /// `private/private.pem`, created on first run), trusted server certificates (`trusted/`, managed
    /// by the technician) and rejected ones (`rejected/`, where an unknown server's certificate is
    /// written for inspection). Relative to the configuration file; default `opcua-pki`.
    pub pki_dir: Option<PathBuf>,
    /// Trust any server certificate not yet in `trusted/` (default false; commissioning only).
    #[serde(default)]
    pub trust_unknown_server: bool,
    /// Application URI of the gateway's certificate (default `urn:vigil:gateway:<gateway id>`).
    pub application_uri: Option<String>,
    /// `subscribe` (default): monitored items; `poll`: periodic Read for servers whose subscriptions
    /// misbehave.
    #[serde(default)]
    pub mode: AcqModeName,
    /// Which timestamp a sample carries: `source` (default), `server`, or `gateway` (receive time).
    #[serde(default)]
    pub timestamp: TimestampName,
    /// Publishing interval of the subscriptions in ms (default 1000).
    #[serde(default = "default_publish_ms")]
    pub publish_interval_ms: u64,
    /// Default sampling interval (subscribe) or poll interval (poll) of the points in ms (default 1000).
    #[serde(default = "default_publish_ms")]
    pub sampling_ms: u64,
    /// Default monitored item queue size (default 1).
    #[serde(default = "default_queue_size")]
    pub queue_size: u32,
    /// Default discard policy of a full queue: `oldest` (default) or `newest`.
    #[serde(default)]
    pub discard: DiscardName,
    /// Most monitored items per subscription (default 1000; servers limit this).
    #[serde(default = "default_max_items")]
    pub max_items_per_subscription: usize,
    /// Timeout of each request (discovery, session, read, create) in ms (default 5000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Session keep-alive interval in ms (default 5000); a server silent for three intervals is
    /// treated as lost.
    #[serde(default = "default_timeout_ms")]
    pub keep_alive_ms: u64,
    /// Ceiling of the reconnect backoff in ms (default 30000).
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Prefix of the point ids (default `<name>.`).
    pub point_prefix: Option<String>,
    /// The points.
    #[serde(default)]
    pub points: Vec<OpcuaPointConfig>,
}

fn default_publish_ms() -> u64 {
    1000
}
fn default_queue_size() -> u32 {
    1
}
fn default_max_items() -> usize {
    1000
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

/// One `[[opcua.points]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaPointConfig {
    /// Point id suffix (the full id is the device prefix followed by this).
    pub id: String,
    /// Node id: `ns=2;s=Tank101.Level`, `ns=3;i=1001`, `nsu=URI;s=...`.
    pub node: String,
    /// Vigil type of the value: `f64` (default), `bool`, `i64`, ... (integers stay integers when not
    /// scaled).
    #[serde(rename = "type")]
    pub dtype: Option<DataType>,
    /// Scale factor (default 1).
    #[serde(default = "one")]
    pub scale: f64,
    /// Offset (default 0).
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit (informational).
    #[serde(default)]
    pub unit: String,
    /// Valid range `[low, high]` in engineering units.
    pub range: Option<[f64; 2]>,
    /// Sampling (subscribe) or poll (poll) interval in ms (default: the device's `sampling_ms`).
    pub sampling_ms: Option<u64>,
    /// Monitored item queue size (default: the device's).
    pub queue_size: Option<u32>,
    /// Discard policy (default: the device's).
    pub discard: Option<DiscardName>,
    /// Server-side absolute deadband (DataChangeFilter), in the server's units.
    pub deadband_absolute: Option<f64>,
    /// Server-side percent deadband (of the node's EURange), 0..=100.
    pub deadband_percent: Option<f64>,
    /// Gateway-side deadband in engineering units (report-by-exception, as for every point).
    #[serde(default)]
    pub deadband: f64,
    /// Maximum silent interval in seconds (default: `[acquisition] max_silent_s`).
    pub max_silent_s: Option<f64>,
    /// Simulator waveform (used by `vigil-sim opcua` only), e.g. `"sine 20 5 60"`.
    pub sim: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// Security policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum PolicyName {
    /// No security.
    #[default]
    None,
    /// Basic256Sha256.
    Basic256Sha256,
}

/// Message security mode names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ModeName {
    /// No signing or encryption.
    #[default]
    None,
    /// Messages signed.
    Sign,
    /// Messages signed and encrypted.
    SignAndEncrypt,
}

/// Acquisition mode names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcqModeName {
    /// Subscriptions with monitored items.
    #[default]
    Subscribe,
    /// Periodic Read service calls.
    Poll,
}

/// Timestamp choice names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampName {
    /// The source timestamp (the device's), falling back to the server's, then the gateway's.
    #[default]
    Source,
    /// The server timestamp, falling back to the gateway's.
    Server,
    /// The gateway's receive time.
    Gateway,
}

/// Discard policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscardName {
    /// Drop the oldest value of a full queue.
    #[default]
    Oldest,
    /// Drop the newest value.
    Newest,
}

/// How the gateway authenticates as a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Anonymous.
    Anonymous,
    /// User name and password.
    UserName {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// X.509 user certificate and its key.
    Certificate {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
}

/// Server-side data change filter of a monitored item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServerDeadband {
    /// Absolute deadband in server units.
    Absolute(f64),
    /// Percent of the EURange.
    Percent(f64),
}

/// One resolved monitored item / polled node.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Index of the point in the plant.
    pub point: usize,
    /// Node to read.
    pub node: NodeRef,
    /// Sampling interval (subscribe) or poll interval (poll).
    pub sampling: Duration,
    /// Queue size.
    pub queue_size: u32,
    /// Whether the oldest value is dropped from a full queue.
    pub discard_oldest: bool,
    /// Server-side deadband, if any.
    pub deadband: Option<ServerDeadband>,
}

/// A resolved OPC UA server connection.
#[derive(Debug, Clone, PartialEq)]
pub struct OpcuaDevice {
    /// Device name.
    pub name: String,
    /// Discovery endpoint URL.
    pub endpoint: String,
    /// Security policy.
    pub policy: PolicyName,
    /// Security mode.
    pub mode: ModeName,
    /// User identity.
    pub identity: Identity,
    /// PKI directory (absolute or relative to the working directory).
    pub pki_dir: PathBuf,
    /// Whether unknown server certificates are trusted.
    pub trust_unknown_server: bool,
    /// Application URI of the gateway.
    pub application_uri: String,
    /// Subscribe or poll.
    pub acquisition: AcqModeName,
    /// Which timestamp samples carry.
    pub timestamp: TimestampName,
    /// Publishing interval.
    pub publish_interval: Duration,
    /// Most items per subscription.
    pub max_items_per_subscription: usize,
    /// Request timeout.
    pub timeout: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// Items, one per point.
    pub items: Vec<Item>,
}

/// Everything one `[[opcua]]` entry resolves to.
pub struct Resolved {
    /// Its device entry.
    pub device: DeviceSpec,
    /// Its connection settings.
    pub opcua: OpcuaDevice,
    /// Its points, to be appended to the plant's in order (first at index `first_point`).
    pub points: Vec<PointSpec>,
}

/// Resolves `d` (at `key` in `file`) as device number `device` of the plant, its points starting at
/// index `first_point` and its connection at index `index` of the OPC UA list. Returns the problems
/// as (key, problem).
#[allow(clippy::too_many_arguments)]
pub fn resolve(
    file: &Path,
    key: &str,
    d: &OpcuaDeviceConfig,
    device: usize,
    first_point: usize,
    index: usize,
    acq: &AcquisitionSection,
    gateway_id: &str,
) -> (Option<Resolved>, Vec<(String, String)>) {
    let mut p: Vec<(String, String)> = Vec::new();
    let mut bad = |k: &str, m: String| p.push((format!("{key}.{k}"), m));
    if d.name.is_empty() || d.name.len() > 64 || d.name.chars().any(|c| c.is_control()) {
        bad("name", "must be 1..=64 printable characters".into());
    }
    match d.endpoint.strip_prefix("opc.tcp://") {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => {}
        _ => bad("endpoint", format!("{:?} is not an opc.tcp://HOST:PORT[/PATH] URL", d.endpoint)),
    }
    match (d.security_policy, d.security_mode) {
        (PolicyName::None, ModeName::None)
        | (PolicyName::Basic256Sha256, ModeName::Sign | ModeName::SignAndEncrypt) => {}
        (PolicyName::None, m) => {
            bad("security_mode", format!("{m:?} needs security_policy = \"Basic256Sha256\""));
        }
        (PolicyName::Basic256Sha256, ModeName::None) => {
            bad("security_mode", "Basic256Sha256 needs security_mode = \"Sign\" or \"SignAndEncrypt\"".into());
        }
    }
    let base_dir = file.parent().unwrap_or(Path::new("."));
    let identity = match (&d.user, &d.password, &d.password_file, &d.user_cert, &d.user_key) {
        (None, None, None, None, None) => Identity::Anonymous,
        (Some(u), Some(pw), None, None, None) => Identity::UserName { user: u.clone(), password: pw.clone() },
        (Some(u), None, Some(f), None, None) => {
            let f = base_dir.join(f);
            match std::fs::read_to_string(&f) {
                Ok(t) => Identity::UserName { user: u.clone(), password: t.lines().next().unwrap_or("").to_string() },
                Err(e) => {
                    bad("password_file", format!("cannot read {}: {e}", f.display()));
                    Identity::Anonymous
                }
            }
        }
        (None, None, None, Some(c), Some(k)) => {
            let (c, k) = (base_dir.join(c), base_dir.join(k));
            for (name, f) in [("user_cert", &c), ("user_key", &k)] {
                if !f.is_file() {
                    bad(name, format!("{} does not exist", f.display()));
                }
            }
            Identity::Certificate { cert: c, key: k }
        }
        (Some(_), None, None, _, _) => {
            bad("password", "user needs password or password_file".into());
            Identity::Anonymous
        }
        _ => {
            bad(
                "user",
                "give either user with password (or password_file), or user_cert with user_key, or none (anonymous)"
                    .into(),
            );
            Identity::Anonymous
        }
    };
    let ms_in = |bad: &mut dyn FnMut(&str, String), k: &str, v: u64, lo: u64, hi: u64| {
        if !(lo..=hi).contains(&v) {
            bad(k, format!("{v} must be {lo}..={hi}"));
        }
    };
    ms_in(&mut bad, "publish_interval_ms", d.publish_interval_ms, 50, 3_600_000);
    ms_in(&mut bad, "sampling_ms", d.sampling_ms, 0, 86_400_000);
    ms_in(&mut bad, "timeout_ms", d.timeout_ms, 100, 120_000);
    ms_in(&mut bad, "keep_alive_ms", d.keep_alive_ms, 100, 600_000);
    ms_in(&mut bad, "backoff_max_ms", d.backoff_max_ms, 100, 3_600_000);
    if d.queue_size == 0 || d.queue_size > 10_000 {
        bad("queue_size", "must be 1..=10000".into());
    }
    if d.max_items_per_subscription == 0 || d.max_items_per_subscription > 100_000 {
        bad("max_items_per_subscription", "must be 1..=100000".into());
    }
    if d.points.is_empty() {
        bad("points", "has no points (add [[opcua.points]])".into());
    }
    if d.mode == AcqModeName::Poll && d.sampling_ms < 10 {
        bad("sampling_ms", "a poll interval must be at least 10 ms".into());
    }
    let prefix = d.point_prefix.clone().unwrap_or_else(|| format!("{}.", d.name));
    let mut points = Vec::new();
    let mut items = Vec::new();
    let mut nodes = std::collections::HashMap::new();
    for (pi, pc) in d.points.iter().enumerate() {
        let pk = format!("points[{pi}]");
        let mut bad = |k: &str, m: String| p.push((format!("{key}.{pk}.{k}"), m));
        let full = format!("{prefix}{}", pc.id);
        let id = match PointId::new(full.clone()) {
            Ok(id) => id,
            Err(e) => {
                bad("id", format!("point id {full:?}: {e}"));
                continue;
            }
        };
        let node: NodeRef = match pc.node.parse() {
            Ok(n) => n,
            Err(e) => {
                bad("node", e.to_string());
                continue;
            }
        };
        if let Some(prev) = nodes.insert(node.clone(), pi) {
            bad("node", format!("{node} is already read by points[{prev}]"));
        }
        let dtype = pc.dtype.unwrap_or(DataType::F64);
        if !pc.scale.is_finite() || pc.scale == 0.0 {
            bad("scale", "must be a finite non-zero number".into());
        }
        if !pc.offset.is_finite() {
            bad("offset", "must be a finite number".into());
        }
        if dtype == DataType::Bool && (pc.scale != 1.0 || pc.offset != 0.0) {
            bad("scale", "scale/offset do not apply to bool".into());
        }
        if let Some([lo, hi]) = pc.range
            && !(lo.is_finite() && hi.is_finite() && lo < hi)
        {
            bad("range", "must be [low, high] with low < high".into());
        }
        if !(pc.deadband.is_finite() && pc.deadband >= 0.0) {
            bad("deadband", "must be a non-negative number".into());
        }
        let deadband = match (pc.deadband_absolute, pc.deadband_percent) {
            (None, None) => None,
            (Some(a), None) if a.is_finite() && a >= 0.0 => Some(ServerDeadband::Absolute(a)),
            (None, Some(x)) if x.is_finite() && (0.0..=100.0).contains(&x) => Some(ServerDeadband::Percent(x)),
            (Some(_), Some(_)) => {
                bad("deadband_absolute", "give deadband_absolute or deadband_percent, not both".into());
                None
            }
            (Some(_), None) => {
                bad("deadband_absolute", "must be a non-negative number".into());
                None
            }
            (None, Some(_)) => {
                bad("deadband_percent", "must be 0..=100".into());
                None
            }
        };
        let sampling_ms = pc.sampling_ms.unwrap_or(d.sampling_ms);
        let min_ms = if d.mode == AcqModeName::Poll { 10 } else { 0 };
        if !(min_ms..=86_400_000).contains(&sampling_ms) {
            bad("sampling_ms", format!("must be {min_ms}..=86400000"));
        }
        let queue_size = pc.queue_size.unwrap_or(d.queue_size);
        if queue_size == 0 || queue_size > 10_000 {
            bad("queue_size", "must be 1..=10000".into());
        }
        let max_silent_s = pc.max_silent_s.unwrap_or(acq.max_silent_s);
        if !(max_silent_s.is_finite() && max_silent_s > 0.0 && max_silent_s <= 86_400.0) {
            bad("max_silent_s", "must be in (0, 86400] seconds".into());
        }
        let poll = Duration::from_millis(sampling_ms.max(d.publish_interval_ms));
        items.push(Item {
            point: first_point + points.len(),
            node,
            sampling: Duration::from_millis(sampling_ms),
            queue_size,
            discard_oldest: pc.discard.unwrap_or(d.discard) == DiscardName::Oldest,
            deadband,
        });
        points.push(PointSpec {
            id,
            device,
            kind: RegisterKind::Holding,
            address: 0,
            dtype,
            order: ByteOrder::default_for(dtype),
            bit: None,
            scale: pc.scale,
            offset: pc.offset,
            unit: pc.unit.clone(),
            range: pc.range,
            poll,
            deadband: pc.deadband,
            max_silent: Duration::from_secs_f64(max_silent_s.clamp(0.001, 86_400.0)),
            sim: pc.sim.clone(),
        });
    }
    if !p.is_empty() {
        return (None, p);
    }
    let opcua = OpcuaDevice {
        name: d.name.clone(),
        endpoint: d.endpoint.clone(),
        policy: d.security_policy,
        mode: d.security_mode,
        identity,
        pki_dir: base_dir.join(d.pki_dir.clone().unwrap_or_else(|| PathBuf::from("opcua-pki"))),
        trust_unknown_server: d.trust_unknown_server,
        application_uri: d.application_uri.clone().unwrap_or_else(|| format!("urn:vigil:gateway:{gateway_id}")),
        acquisition: d.mode,
        timestamp: d.timestamp,
        publish_interval: Duration::from_millis(d.publish_interval_ms),
        max_items_per_subscription: d.max_items_per_subscription,
        timeout: Duration::from_millis(d.timeout_ms),
        keep_alive: Duration::from_millis(d.keep_alive_ms),
        backoff_max: Duration::from_millis(d.backoff_max_ms),
        items,
    };
    let device = DeviceSpec {
        name: d.name.clone(),
        transport: Transport::Opcua { index },
        unit: 0,
        profile: None,
        timeout: opcua.timeout,
        retries: 0,
        backoff_max: opcua.backoff_max,
        points: (first_point..first_point + points.len()).collect(),
        requests: Vec::new(),
    };
    (Some(Resolved { device, opcua, points }), p)
}
