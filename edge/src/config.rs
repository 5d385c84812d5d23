//! The gateway configuration file (TOML), parsed into typed structs and validated as a whole before
//! anything starts.
//!
//! [`load`] reads the file and the device profiles it references, checks everything (ids, addresses,
//! types, overlaps, buses, levelling lines) and returns a [`Plant`]: the resolved devices, points and
//! planned Modbus requests. Every problem is reported as a [`ConfigError`] naming the file, the key
//! path and the problem; all problems are collected, not only the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vigil_common::{EnterpriseId, GatewayId, PointId};

use crate::sources::modbus::codec::{ByteOrder, DataType};
use crate::sources::modbus::plan::{self, Request};

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this gateway is.
    pub gateway: GatewaySection,
    /// Store-and-forward settings.
    pub spool: crate::spool::SpoolConfig,
    /// Broker connection; absent for a gateway used only for on-site checks.
    pub uplink: Option<crate::uplink::UplinkConfig>,
    /// The gateway's own health points.
    #[serde(default)]
    pub system: crate::sources::system::SystemConfig,
    /// Digital lines and watchdog of the gateway.
    #[serde(default)]
    pub hardware: crate::site::HardwareConfig,
    /// Local annunciation rules (relay outputs driven at the site).
    #[serde(default)]
    pub local_alarm: Vec<crate::site::LocalAlarmRule>,
    /// Gas-leak cameras (HTTP push endpoint, ONVIF subscriptions, liveness checks).
    #[serde(default)]
    pub cameras: crate::sources::camera::CamerasConfig,
    /// Acquisition-wide settings.
    #[serde(default)]
    pub acquisition: AcquisitionSection,
    /// RS485 buses (serial ports) shared by Modbus RTU devices.
    #[serde(default)]
    pub buses: Vec<BusConfig>,
    /// Field devices.
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
    /// OPC UA servers and the points read from them.
    #[serde(default)]
    pub opcua: Vec<crate::sources::opcua::config::OpcuaDeviceConfig>,
    /// Static-levelling lines (settlement derived from levelling sensor readings).
    #[serde(default)]
    pub levelling: Vec<LevellingConfig>,
    /// Signed updates: agent root, trusted release keys, trial window.
    #[serde(default)]
    pub update: crate::update::UpdateConfig,
    /// The local status page; absent: no page.
    pub status: Option<crate::status::StatusConfig>,
}

/// The `[gateway]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The gateway id (the common name of its certificate).
    pub id: GatewayId,
    /// The enterprise it belongs to.
    pub enterprise: EnterpriseId,
    /// Its signing key file (`vigil-edge keygen`), readable by its owner only.
    pub key_file: std::path::PathBuf,
}

/// The `[acquisition]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquisitionSection {
    /// Directory of device profiles, relative to the configuration file (default `profiles`).
    #[serde(default = "default_profile_dir")]
    pub profile_dir: PathBuf,
    /// Whether the gateway clock is kept synchronised by NTP (`"ntp"`) or free-running (`"gateway"`,
    /// the default); stamped on every sample as its clock quality.
    #[serde(default)]
    pub clock: ClockSource,
    /// Default maximum silent interval of a point in seconds: a steady value is reported at least
    /// this often (default 300).
    #[serde(default = "default_max_silent")]
    pub max_silent_s: f64,
    /// Capacity of the queue between the drivers and the pipeline, in request batches (default 1024).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl Default for AcquisitionSection {
    fn default() -> Self {
        AcquisitionSection {
            profile_dir: default_profile_dir(),
            clock: ClockSource::Gateway,
            max_silent_s: default_max_silent(),
            queue: default_queue(),
        }
    }
}

fn default_profile_dir() -> PathBuf {
    PathBuf::from("profiles")
}
fn default_max_silent() -> f64 {
    300.0
}
fn default_queue() -> usize {
    1024
}

/// What keeps the gateway clock right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockSource {
    /// Free-running gateway clock (not known to be synchronised).
    #[default]
    Gateway,
    /// Clock disciplined by NTP.
    Ntp,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// One `[[buses]]` entry: an RS485 serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Bus name, referenced by RTU devices.
    pub name: String,
    /// Serial device path, e.g. `/dev/ttyS1`.
    pub path: PathBuf,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Parity.
    #[serde(default)]
    pub parity: Parity,
    /// Data bits (7 or 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Stop bits (1 or 2).
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Silent time between frames in ms; default and minimum 3.5 character times (1.75 ms above
    /// 19200 baud, as the Modbus serial-line specification says).
    pub frame_gap_ms: Option<f64>,
    /// The transceiver's driver-enable line, for adapters that do not switch RS485 direction
    /// themselves: `direction = { name = "rs485-de", chip = "/dev/gpiochip0", line = 17 }`.
    #[serde(default)]
    pub direction: Option<vigil_hw::LineConfig>,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

impl BusConfig {
    /// Bits on the wire per character (start + data + parity + stop).
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits) + u32::from(self.parity != Parity::None) + u32::from(self.stop_bits)
    }

    /// The minimum inter-frame gap: 3.5 character times, fixed at 1.75 ms above 19200 baud.
    pub fn min_frame_gap(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            Duration::from_secs_f64(3.5 * f64::from(self.bits_per_char()) / f64::from(self.baud.max(1)))
        }
    }

    /// The inter-frame gap in force.
    pub fn frame_gap(&self) -> Duration {
        let min = self.min_frame_gap();
        match self.frame_gap_ms {
            Some(ms) if ms.is_finite() && ms > 0.0 => Duration::from_secs_f64(ms / 1000.0).max(min),
            _ => min,
        }
    }
}

/// Transport of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Modbus TCP.
    Tcp,
    /// Modbus RTU on an RS485 bus.
    Rtu,
}

/// One `[[devices]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device name (unique; used in events).
    pub name: String,
    /// `tcp` or `rtu`.
    pub protocol: Protocol,
    /// TCP: host name or address.
    pub host: Option<String>,
    /// TCP: port (default 502).
    pub port: Option<u16>,
    /// RTU: name of the bus in `[[buses]]`.
    pub bus: Option<String>,
    /// Modbus unit (slave) id: 1..=247 on RTU, 0..=255 on TCP (default 1).
    #[serde(default = "default_unit")]
    pub unit: u8,
    /// Profile name (a file `<name>.toml` in the profile directory).
    pub profile: Option<String>,
    /// Prefix of the point ids of this device (default `<name>.`).
    pub point_prefix: Option<String>,
    /// Address base of the inline points: 0 (protocol addresses, the default) or 1 (register numbers
    /// counted from 1, as many device manuals print them).
    pub address_base: Option<u8>,
    /// Per-request timeout in ms (default 1000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries after a timeout or transport error (default 1).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Default poll interval of the points in ms (default 1000).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Largest gap (registers or bits) bridged when merging points into one request (default 8).
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Largest register count per request (default and maximum 125).
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// Largest bit count per request (default and maximum 2000).
    #[serde(default = "default_max_bits")]
    pub max_bits: u16,
    /// Ceiling of the reconnect/backoff delay after failures in ms (default 30000).
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Points defined inline (in addition to the profile's).
    #[serde(default)]
    pub points: Vec<PointConfig>,
}

fn default_unit() -> u8 {
    1
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_retries() -> u32 {
    1
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_max_gap() -> u16 {
    8
}
fn default_max_registers() -> u16 {
    plan::MAX_REGISTERS
}
fn default_max_bits() -> u16 {
    plan::MAX_BITS
}
fn default_backoff_max_ms() -> u64 {
    30_000
}

/// Register area of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// Coils (function 1).
    Coil,
    /// Discrete inputs (function 2).
    DiscreteInput,
    /// Holding registers (function 3).
    Holding,
    /// Input registers (function 4).
    Input,
}

impl RegisterKind {
    /// Whether the area holds bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, RegisterKind::Coil | RegisterKind::DiscreteInput)
    }

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            RegisterKind::Coil => "coil",
            RegisterKind::DiscreteInput => "discrete_input",
            RegisterKind::Holding => "holding",
            RegisterKind::Input => "input",
        }
    }
}

/// One point, inline in a device or in a profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Point id suffix; the full id is the device's prefix followed by this.
    pub id: String,
    /// Register area.
    pub kind: RegisterKind,
    /// Address, in the address base of the device or profile (or `address_base` here).
    pub address: u32,
    /// Address base of this point if it differs from its device/profile's (0 or 1).
    pub address_base: Option<u8>,
    /// Data type (default `bool` for coils/discrete inputs, `u16` for registers).
    #[serde(rename = "type")]
    pub dtype: Option<DataType>,
    /// Byte/word order (default AB for 16-bit, ABCD for wider types).
    pub order: Option<ByteOrder>,
    /// Bit (0 = least significant) for a `bool` in a register.
    pub bit: Option<u8>,
    /// Scale factor: value = raw * scale + offset (default 1).
    #[serde(default = "one")]
    pub scale: f64,
    /// Offset (default 0).
    #[serde(default)]
    pub offset: f64,
    /// Engineering unit (informational).
    #[serde(default)]
    pub unit: String,
    /// Valid range `[low, high]` in engineering units; values outside it are reported with quality
    /// `UncertainEngineeringUnitsExceeded`.
    pub range: Option<[f64; 2]>,
    /// Poll interval in ms (default: the device's); points with the same interval form a poll group.
    pub poll_ms: Option<u64>,
    /// Deadband in engineering units: a change smaller than or equal to it is not reported (default 0:
    /// every change is reported).
    #[serde(default)]
    pub deadband: f64,
    /// Maximum silent interval in seconds (default: `[acquisition] max_silent_s`).
    pub max_silent_s: Option<f64>,
    /// Simulator waveform (used by `vigil-sim` only), e.g. `"sine 20 5 60"`.
    pub sim: Option<String>,
}

fn one() -> f64 {
    1.0
}

/// A device profile file (`configs/profiles/<name>.toml`): a reusable register map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// Free text description (make, model, manual reference).
    #[serde(default)]
    pub description: String,
    /// Address base of the profile's points (0 or 1).
    #[serde(default)]
    pub address_base: u8,
    /// The register map.
    pub points: Vec<PointConfig>,
}

/// One `[[levelling]]` line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevellingConfig {
    /// Line name.
    pub name: String,
    /// Point id of the base (reference) sensor reading, in mm.
    pub base: String,
    /// Initial (survey) reading of the base sensor, in mm.
    pub base_initial_mm: f64,
    /// Window of the settlement rate in days (default 1).
    #[serde(default = "one")]
    pub rate_window_days: f64,
    /// Measuring points of the line.
    pub points: Vec<LevellingPointConfig>,
}

/// One measuring point of a levelling line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevellingPointConfig {
    /// Point id of the sensor reading, in mm.
    pub point: String,
    /// Initial (survey) reading, in mm.
    pub initial_mm: f64,
}

/// A configuration problem: which file, where in it, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The key path, e.g. `devices[2].points[0].address`.
    pub key: String,
    /// The problem.
    pub problem: String,
}

/// All problems found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration problem(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A resolved point.
#[derive(Debug, Clone)]
pub struct PointSpec {
    /// Gateway-unique id.
    pub id: PointId,
    /// Index of its device in [`Plant::devices`].
    pub device: usize,
    /// Register area.
    pub kind: RegisterKind,
    /// Protocol (0-based) address.
    pub address: u16,
    /// Data type.
    pub dtype: DataType,
    /// Byte order.
    pub order: ByteOrder,
    /// Bit for bool-in-register.
    pub bit: Option<u8>,
    /// Scale.
    pub scale: f64,
    /// Offset.
    pub offset: f64,
    /// Engineering unit.
    pub unit: String,
    /// Valid range.
    pub range: Option<[f64; 2]>,
    /// Poll interval.
    pub poll: Duration,
    /// Deadband.
    pub deadband: f64,
    /// Maximum silent interval.
    pub max_silent: Duration,
    /// Simulator waveform.
    pub sim: Option<String>,
}

impl PointSpec {
    /// Registers (or bits) the point occupies.
    pub fn width(&self) -> u16 {
        if self.kind.is_bits() { 1 } else { self.dtype.registers() }
    }
}

/// Where a resolved device is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Modbus TCP at `host:port`.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// Modbus RTU on bus `bus` (index into [`Plant::buses`]).
    Rtu {
        /// Bus index.
        bus: usize,
    },
    /// OPC UA server `index` in [`Plant::opcua`].
    Opcua {
        /// Index into [`Plant::opcua`].
        index: usize,
    },
}

/// A resolved device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Name.
    pub name: String,
    /// Transport.
    pub transport: Transport,
    /// Unit id.
    pub unit: u8,
    /// Profile name, if any.
    pub profile: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries.
    pub retries: u32,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// Indices of its points in [`Plant::points`].
    pub points: Vec<usize>,
    /// Planned read requests.
    pub requests: Vec<Request>,
}

/// A resolved levelling line.
#[derive(Debug, Clone)]
pub struct LevellingLine {
    /// Name.
    pub name: String,
    /// Index of the base reading point.
    pub base: usize,
    /// Base initial reading (mm).
    pub base_initial_mm: f64,
    /// Rate window.
    pub rate_window: Duration,
    /// Measuring points: (reading point index, initial reading mm, settlement id, rate id).
    pub points: Vec<LevellingPoint>,
}

/// A resolved measuring point of a levelling line.
#[derive(Debug, Clone)]
pub struct LevellingPoint {
    /// Index of the reading point.
    pub point: usize,
    /// Initial reading (mm).
    pub initial_mm: f64,
    /// Id of the derived settlement (`<point>:settlement`).
    pub settlement_id: PointId,
    /// Id of the derived settlement rate (`<point>:rate`, mm/day).
    pub rate_id: PointId,
}

/// A validated configuration: everything acquisition needs.
#[derive(Debug, Clone)]
pub struct Plant {
    /// The parsed file.
    pub config: Config,
    /// The file it came from.
    pub file: PathBuf,
    /// The installed file it stands in for: `file` itself, or the one a pushed file overrides
    /// (which anchors relative paths; see `config_push`).
    pub installed: PathBuf,
    /// Buses.
    pub buses: Vec<BusConfig>,
    /// Devices.
    pub devices: Vec<DeviceSpec>,
    /// Points.
    pub points: Vec<PointSpec>,
    /// Levelling lines.
    pub levelling: Vec<LevellingLine>,
    /// Gas cameras with their models.
    pub cameras: Vec<crate::sources::camera::Camera>,
    /// OPC UA server connections (devices with [`Transport::Opcua`]).
    pub opcua: Vec<crate::sources::opcua::config::OpcuaDevice>,
}

impl Plant {
    /// Index of a point by id.
    pub fn point_index(&self, id: &str) -> Option<usize> {
        self.points.iter().position(|p| p.id.as_str() == id)
    }
}

fn err(file: &Path, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { file: file.display().to_string(), key: key.into(), problem: problem.into() }
}

/// Reads and validates a gateway configuration file and the profiles it references.
pub fn load(path: &Path) -> Result<Plant, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![err(path, "(file)", format!("cannot read: {e}"))]))?;
    load_text(&text, path)
}

/// Parses and validates `text` as if it were the file at `path` (which anchors the profile
/// directory and names the file in errors), without reading or writing that file.
pub fn load_text(text: &str, path: &Path) -> Result<Plant, ConfigErrors> {
    let config: Config = toml::from_str(text).map_err(|e| ConfigErrors(vec![toml_error(path, text, &e)]))?;
    resolve(config, path)
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let key = match e.span() {
        // toml reports a byte span; name the line so the technician finds it.
        Some(span) => format!("line {}", text[..span.start.min(text.len())].matches('\n').count() + 1),
        None => "(document)".into(),
    };
    err(path, key, e.message().trim().to_string())
}

/// Validates a parsed configuration (`path` names it in errors and anchors the profile directory).
pub fn resolve(config: Config, path: &Path) -> Result<Plant, ConfigErrors> {
    let mut errors = Vec::new();
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let profile_dir = base_dir.join(&config.acquisition.profile_dir);
    let acq = &config.acquisition;
    if !(acq.max_silent_s.is_finite() && acq.max_silent_s > 0.0) {
        errors.push(err(path, "acquisition.max_silent_s", "must be a positive number of seconds"));
    }
    if acq.queue == 0 || acq.queue > 1_000_000 {
        errors.push(err(path, "acquisition.queue", "must be between 1 and 1000000"));
    }

    // Buses.
    let mut bus_index = HashMap::new();
    for (i, b) in config.buses.iter().enumerate() {
        let key = format!("buses[{i}]");
        if b.name.is_empty() {
            errors.push(err(path, format!("{key}.name"), "is empty"));
        }
        if bus_index.insert(b.name.clone(), i).is_some() {
            errors.push(err(path, format!("{key}.name"), format!("duplicate bus name {:?}", b.name)));
        }
        if !(1200..=1_000_000).contains(&b.baud) {
            errors.push(err(
                path,
                format!("{key}.baud"),
                format!("{} is not a plausible baud rate (1200..=1000000)", b.baud),
            ));
        }
        if !(7..=8).contains(&b.data_bits) {
            errors.push(err(path, format!("{key}.data_bits"), "must be 7 or 8"));
        }
        if !(1..=2).contains(&b.stop_bits) {
            errors.push(err(path, format!("{key}.stop_bits"), "must be 1 or 2"));
        }
        if let Some(g) = b.frame_gap_ms {
            let min_ms = b.min_frame_gap().as_secs_f64() * 1000.0;
            if !g.is_finite() || g < min_ms - 1e-9 || g > 1000.0 {
                errors.push(err(
                    path,
                    format!("{key}.frame_gap_ms"),
                    format!("{g} ms is below 3.5 character times ({min_ms:.3} ms at {} baud) or above 1000 ms", b.baud),
                ));
            }
        }
    }
    let bus_paths: HashSet<_> = config.buses.iter().map(|b| &b.path).collect();
    if bus_paths.len() != config.buses.len() {
        errors.push(err(path, "buses", "two buses use the same serial path"));
    }

    let mut devices = Vec::new();
    let mut points: Vec<PointSpec> = Vec::new();
    let mut ids: HashMap<String, String> = HashMap::new(); // id -> where defined
    let mut names = HashSet::new();
    let mut profiles: BTreeMap<String, Result<ProfileFile, ()>> = BTreeMap::new();
    let mut rtu_units: HashSet<(usize, u8)> = HashSet::new();
    let mut tcp_units: HashSet<(String, u16, u8)> = HashSet::new();

    for (di, d) in config.devices.iter().enumerate() {
        let dkey = format!("devices[{di}]");
        let before = errors.len();
        if d.name.is_empty() || d.name.len() > 64 || d.name.chars().any(|c| c.is_control()) {
            errors.push(err(path, format!("{dkey}.name"), "must be 1..=64 printable characters"));
        }
        if !names.insert(d.name.clone()) {
            errors.push(err(path, format!("{dkey}.name"), format!("duplicate device name {:?}", d.name)));
        }
        let transport = match d.protocol {
            Protocol::Tcp => {
                if d.bus.is_some() {
                    errors.push(err(
                        path,
                        format!("{dkey}.bus"),
                        "a tcp device has no bus (did you mean protocol = \"rtu\"?)",
                    ));
                }
                match &d.host {
                    Some(h) if !h.is_empty() => {
                        let port = d.port.unwrap_or(502);
                        if !tcp_units.insert((h.clone(), port, d.unit)) {
                            errors.push(err(
                                path,
                                format!("{dkey}.unit"),
                                format!("unit {} at {h}:{port} is already another device", d.unit),
                            ));
                        }
                        Transport::Tcp { host: h.clone(), port }
                    }
                    _ => {
                        errors.push(err(
                            path,
                            format!("{dkey}.host"),
                            "missing: a tcp device needs host (and optionally port)",
                        ));
                        Transport::Tcp { host: String::new(), port: 0 }
                    }
                }
            }
            Protocol::Rtu => {
                if d.host.is_some() || d.port.is_some() {
                    errors.push(err(path, format!("{dkey}.host"), "an rtu device has no host/port (it sits on a bus)"));
                }
                if !(1..=247).contains(&d.unit) {
                    errors.push(err(
                        path,
                        format!("{dkey}.unit"),
                        format!("{} is not a valid RTU slave address (1..=247)", d.unit),
                    ));
                }
                match d.bus.as_ref().map(|b| bus_index.get(b)) {
                    Some(Some(&bus)) => {
                        if !rtu_units.insert((bus, d.unit)) {
                            errors.push(err(
                                path,
                                format!("{dkey}.unit"),
                                format!("unit {} is already used on bus {:?}", d.unit, d.bus.as_deref().unwrap_or("")),
                            ));
                        }
                        Transport::Rtu { bus }
                    }
                    Some(None) => {
                        errors.push(err(
                            path,
                            format!("{dkey}.bus"),
                            format!("unknown bus {:?} (define it in [[buses]])", d.bus.as_deref().unwrap_or("")),
                        ));
                        Transport::Rtu { bus: 0 }
                    }
                    None => {
                        errors.push(err(path, format!("{dkey}.bus"), "missing: an rtu device needs bus"));
                        Transport::Rtu { bus: 0 }
                    }
                }
            }
        };
        if d.timeout_ms == 0 || d.timeout_ms > 60_000 {
            errors.push(err(path, format!("{dkey}.timeout_ms"), "must be 1..=60000"));
        }
        if d.retries > 10 {
            errors.push(err(path, format!("{dkey}.retries"), "must be 0..=10"));
        }
        if d.poll_ms < 10 || d.poll_ms > 86_400_000 {
            errors.push(err(path, format!("{dkey}.poll_ms"), "must be 10..=86400000"));
        }
        if d.max_registers == 0 || d.max_registers > plan::MAX_REGISTERS {
            errors.push(err(path, format!("{dkey}.max_registers"), format!("must be 1..={}", plan::MAX_REGISTERS)));
        }
        if d.max_bits == 0 || d.max_bits > plan::MAX_BITS {
            errors.push(err(path, format!("{dkey}.max_bits"), format!("must be 1..={}", plan::MAX_BITS)));
        }
        if d.backoff_max_ms < d.timeout_ms.min(1000) || d.backoff_max_ms > 3_600_000 {
            errors.push(err(
                path,
                format!("{dkey}.backoff_max_ms"),
                "must be at least min(timeout_ms, 1000) and at most 3600000",
            ));
        }
        let prefix = d.point_prefix.clone().unwrap_or_else(|| format!("{}.", d.name));

        // Gather (source file, key, point, base).
        let mut raw: Vec<(PathBuf, String, &PointConfig, u8)> = Vec::new();
        let mut profile_holder = None;
        if let Some(pname) = &d.profile {
            let entry = profiles.entry(pname.clone()).or_insert_with(|| {
                load_profile(&profile_dir, pname).map_err(|e| {
                    errors.push(err(path, format!("{dkey}.profile"), e));
                })
            });
            if let Ok(p) = entry {
                profile_holder = Some((profile_dir.join(format!("{pname}.toml")), p.clone()));
            } else if !errors.iter().any(|e| e.key == format!("{dkey}.profile")) {
                errors.push(err(
                    path,
                    format!("{dkey}.profile"),
                    format!("profile {pname:?} is unusable (see the error above)"),
                ));
            }
        }
        if let Some((pfile, p)) = &profile_holder {
            if p.address_base > 1 {
                errors.push(err(pfile, "address_base", "must be 0 or 1"));
            }
            for (pi, pc) in p.points.iter().enumerate() {
                raw.push((pfile.clone(), format!("points[{pi}]"), pc, p.address_base));
            }
        }
        let dbase = d.address_base.unwrap_or(0);
        if dbase > 1 {
            errors.push(err(path, format!("{dkey}.address_base"), "must be 0 or 1"));
        }
        for (pi, pc) in d.points.iter().enumerate() {
            raw.push((path.to_path_buf(), format!("{dkey}.points[{pi}]"), pc, dbase));
        }
        if raw.is_empty() {
            errors.push(err(path, dkey.clone(), "has no points (give a profile or [[devices.points]])"));
        }

        let first_point = points.len();
        for (file, key, pc, base) in raw {
            match resolve_point(&file, &key, pc, base, &prefix, d, devices.len(), acq) {
                Ok(spec) => {
                    let where_ = format!("{} {key}", file.display());
                    if let Some(prev) = ids.insert(spec.id.to_string(), where_) {
                        errors.push(err(
                            &file,
                            format!("{key}.id"),
                            format!("duplicate point id {:?} (also defined at {prev})", spec.id.as_str()),
                        ));
                    }
                    points.push(spec);
                }
                Err(e) => errors.push(e),
            }
        }
        let my_points: Vec<usize> = (first_point..points.len()).collect();
        // Overlaps: two points of the same area whose registers intersect (bits in one register are
        // allowed to share it).
        let mut sorted: Vec<usize> = my_points.clone();
        sorted.sort_by_key(|&i| (points[i].kind, points[i].address));
        for w in sorted.windows(2) {
            let (a, b) = (&points[w[0]], &points[w[1]]);
            let a_end = u32::from(a.address) + u32::from(a.width());
            let both_bits_in_reg =
                a.dtype == DataType::Bool && b.dtype == DataType::Bool && !a.kind.is_bits() && a.address == b.address;
            if a.kind == b.kind && u32::from(b.address) < a_end && !both_bits_in_reg {
                errors.push(err(
                    path,
                    dkey.clone(),
                    format!(
                        "points {:?} and {:?} overlap ({} {}..{} and {}..{})",
                        a.id.as_str(),
                        b.id.as_str(),
                        a.kind.name(),
                        a.address,
                        a_end,
                        b.address,
                        u32::from(b.address) + u32::from(b.width())
                    ),
                ));
            } else if both_bits_in_reg && a.bit == b.bit {
                errors.push(err(
                    path,
                    dkey.clone(),
                    format!("points {:?} and {:?} read the same bit", a.id.as_str(), b.id.as_str()),
                ));
            }
        }
        let requests = if errors.len() == before {
            plan::plan(&points, &my_points, d.max_gap, d.max_registers, d.max_bits)
        } else {
            Vec::new()
        };
        devices.push(DeviceSpec {
            name: d.name.clone(),
            transport,
            unit: d.unit,
            profile: d.profile.clone(),
            timeout: Duration::from_millis(d.timeout_ms),
            retries: d.retries,
            backoff_max: Duration::from_millis(d.backoff_max_ms),
            points: my_points,
            requests,
        });
    }

    // OPC UA servers: devices and points like any other, so levelling and alarms can use them.
    let mut opcua = Vec::new();
    for (oi, d) in config.opcua.iter().enumerate() {
        let okey = format!("opcua[{oi}]");
        if !names.insert(d.name.clone()) {
            errors.push(err(path, format!("{okey}.name"), format!("duplicate device name {:?}", d.name)));
        }
        let (resolved, problems) = crate::sources::opcua::config::resolve(
            path,
            &okey,
            d,
            devices.len(),
            points.len(),
            opcua.len(),
            acq,
            config.gateway.id.as_str(),
        );
        for (key, problem) in problems {
            errors.push(err(path, key, problem));
        }
        if let Some(r) = resolved {
            for (pi, spec) in r.points.into_iter().enumerate() {
                let where_ = format!("{} {okey}.points[{pi}]", path.display());
                if let Some(prev) = ids.insert(spec.id.to_string(), where_) {
                    errors.push(err(
                        path,
                        format!("{okey}.points[{pi}].id"),
                        format!("duplicate point id {:?} (also defined at {prev})", spec.id.as_str()),
                    ));
                }
                points.push(spec);
            }
            devices.push(r.device);
            opcua.push(r.opcua);
        }
    }

    // Levelling lines.
    let mut levelling = Vec::new();
    let mut line_names = HashSet::new();
    for (li, l) in config.levelling.iter().enumerate() {
        let lkey = format!("levelling[{li}]");
        if !line_names.insert(l.name.clone()) {
            errors.push(err(path, format!("{lkey}.name"), format!("duplicate levelling line {:?}", l.name)));
        }
        let find = |id: &str| points.iter().position(|p| p.id.as_str() == id);
        let base = find(&l.base);
        if base.is_none() {
            errors.push(err(path, format!("{lkey}.base"), format!("unknown point {:?}", l.base)));
        }
        if !l.base_initial_mm.is_finite() {
            errors.push(err(path, format!("{lkey}.base_initial_mm"), "must be a finite number"));
        }
        if !(l.rate_window_days.is_finite() && l.rate_window_days > 0.0 && l.rate_window_days <= 365.0) {
            errors.push(err(path, format!("{lkey}.rate_window_days"), "must be in (0, 365]"));
        }
        if l.points.is_empty() {
            errors.push(err(path, format!("{lkey}.points"), "a line needs at least one measuring point"));
        }
        let mut lpoints = Vec::new();
        for (pi, lp) in l.points.iter().enumerate() {
            let pkey = format!("{lkey}.points[{pi}]");
            let Some(idx) = find(&lp.point) else {
                errors.push(err(path, format!("{pkey}.point"), format!("unknown point {:?}", lp.point)));
                continue;
            };
            if Some(idx) == base {
                errors.push(err(path, format!("{pkey}.point"), "the base point cannot also be a measuring point"));
            }
            if !lp.initial_mm.is_finite() {
                errors.push(err(path, format!("{pkey}.initial_mm"), "must be a finite number"));
            }
            let mk = |suffix: &str| {
                let id = format!("{}:{suffix}", lp.point);
                PointId::new(id.clone())
                    .map_err(|e| err(path, format!("{pkey}.point"), format!("derived id {id:?} is invalid: {e}")))
            };
            match (mk("settlement"), mk("rate")) {
                (Ok(s), Ok(r)) => {
                    for id in [&s, &r] {
                        if let Some(prev) = ids.insert(id.to_string(), format!("{} {pkey}", path.display())) {
                            errors.push(err(
                                path,
                                format!("{pkey}.point"),
                                format!("derived id {:?} clashes with {prev}", id.as_str()),
                            ));
                        }
                    }
                    lpoints.push(LevellingPoint {
                        point: idx,
                        initial_mm: lp.initial_mm,
                        settlement_id: s,
                        rate_id: r,
                    });
                }
                (a, b) => errors.extend(a.err().into_iter().chain(b.err())),
            }
        }
        if let Some(base) = base {
            levelling.push(LevellingLine {
                name: l.name.clone(),
                base,
                base_initial_mm: l.base_initial_mm,
                rate_window: Duration::from_secs_f64(l.rate_window_days.clamp(1e-6, 365.0) * 86_400.0),
                points: lpoints,
            });
        }
    }

    for (key, problem) in crate::site::problems(&config.hardware, &config.local_alarm) {
        errors.push(err(path, key, problem));
    }
    let (cameras, camera_problems) = crate::sources::camera::resolve(&config.cameras, path);
    for (file, key, problem) in camera_problems {
        errors.push(err(&file, key, problem));
    }
    for (key, problem) in config.spool.problems() {
        errors.push(err(path, format!("spool.{key}"), problem));
    }
    for (key, problem) in config.update.problems() {
        errors.push(err(path, format!("update.{key}"), problem));
    }
    for (key, problem) in config.status.iter().flat_map(|s| s.problems()) {
        errors.push(err(path, format!("status.{key}"), problem));
    }
    if let Some(uplink) = &config.uplink {
        for (key, problem) in uplink.problems() {
            errors.push(err(path, format!("uplink.{key}"), problem));
        }
    }
    // Downloads over HTTPS check central by the park CA of [uplink.tls]; without it they would fail.
    if config.update.central_url.as_deref().is_some_and(|u| u.starts_with("https://"))
        && config.uplink.as_ref().and_then(|u| u.tls.as_ref()).is_none()
    {
        let why = "https:// needs [uplink.tls] ca_file, the park CA central's certificate is checked against";
        errors.push(err(path, "update.central_url", why));
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Plant {
        buses: config.buses.clone(),
        config,
        file: path.to_path_buf(),
        installed: path.to_path_buf(),
        devices,
        points,
        levelling,
        cameras,
        opcua,
    })
}

fn load_profile(dir: &Path, name: &str) -> Result<ProfileFile, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("profile name {name:?} may only contain ASCII letters, digits, '-' and '_'"));
    }
    let file = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("unknown profile {name:?}: cannot read {}: {e}", file.display()))?;
    toml::from_str(&text).map_err(|e| {
        let ce = toml_error(&file, &text, &e);
        format!("profile {name:?} is invalid: {ce}")
    })
}

#[allow(clippy::too_many_arguments)]
fn resolve_point(
    file: &Path,
    key: &str,
    pc: &PointConfig,
    base: u8,
    prefix: &str,
    d: &DeviceConfig,
    device: usize,
    acq: &AcquisitionSection,
) -> Result<PointSpec, ConfigError> {
    let full = format!("{prefix}{}", pc.id);
    let id =
        PointId::new(full.clone()).map_err(|e| err(file, format!("{key}.id"), format!("point id {full:?}: {e}")))?;
    let base = pc.address_base.unwrap_or(base);
    if base > 1 {
        return Err(err(file, format!("{key}.address_base"), "must be 0 or 1"));
    }
    if base == 1 && pc.address == 0 {
        return Err(err(
            file,
            format!("{key}.address"),
            "0 is not a valid address when address_base = 1 (addresses count from 1)",
        ));
    }
    let addr = pc.address - u32::from(base);
    let dtype = pc.dtype.unwrap_or(if pc.kind.is_bits() { DataType::Bool } else { DataType::U16 });
    if pc.kind.is_bits() && dtype != DataType::Bool {
        return Err(err(
            file,
            format!("{key}.type"),
            format!("{} points are single bits; type must be bool, not {}", pc.kind.name(), dtype.name()),
        ));
    }
    if pc.kind.is_bits() && pc.bit.is_some() {
        return Err(err(
            file,
            format!("{key}.bit"),
            format!("{} points are already single bits; remove bit", pc.kind.name()),
        ));
    }
    if !pc.kind.is_bits() && dtype == DataType::Bool && pc.bit.is_none() {
        return Err(err(file, format!("{key}.bit"), "a bool in a register needs bit (0..=15)"));
    }
    if dtype != DataType::Bool && pc.bit.is_some() {
        return Err(err(file, format!("{key}.bit"), format!("bit only applies to type bool, not {}", dtype.name())));
    }
    if let Some(b) = pc.bit
        && b > 15
    {
        return Err(err(file, format!("{key}.bit"), format!("{b} is outside a 16-bit register (0..=15)")));
    }
    let width = if pc.kind.is_bits() { 1 } else { u32::from(dtype.registers()) };
    if addr + width > 65_536 {
        return Err(err(
            file,
            format!("{key}.address"),
            format!(
                "{} {} at address {} (base {base}) runs past the last address 65535",
                dtype.name(),
                pc.kind.name(),
                pc.address
            ),
        ));
    }
    let order = pc.order.unwrap_or(ByteOrder::default_for(dtype));
    if dtype == DataType::Bool && pc.order.is_some() {
        return Err(err(file, format!("{key}.order"), "order does not apply to bool"));
    }
    if dtype != DataType::Bool && (dtype.registers() == 1) != order.is_16bit() {
        let allowed = if dtype.registers() == 1 { "AB or BA" } else { "ABCD, CDAB, BADC or DCBA" };
        return Err(err(
            file,
            format!("{key}.order"),
            format!("{order:?} does not fit {} (use {allowed})", dtype.name()),
        ));
    }
    if !pc.scale.is_finite() || pc.scale == 0.0 {
        return Err(err(file, format!("{key}.scale"), "must be a finite non-zero number"));
    }
    if !pc.offset.is_finite() {
        return Err(err(file, format!("{key}.offset"), "must be a finite number"));
    }
    if dtype == DataType::Bool && (pc.scale != 1.0 || pc.offset != 0.0) {
        return Err(err(file, format!("{key}.scale"), "scale/offset do not apply to bool"));
    }
    if let Some([lo, hi]) = pc.range
        && !(lo.is_finite() && hi.is_finite() && lo < hi)
    {
        return Err(err(file, format!("{key}.range"), "must be [low, high] with low < high"));
    }
    if !(pc.deadband.is_finite() && pc.deadband >= 0.0) {
        return Err(err(file, format!("{key}.deadband"), "must be a non-negative number"));
    }
    let poll_ms = pc.poll_ms.unwrap_or(d.poll_ms);
    if !(10..=86_400_000).contains(&poll_ms) {
        return Err(err(file, format!("{key}.poll_ms"), "must be 10..=86400000"));
    }
    let max_silent_s = pc.max_silent_s.unwrap_or(acq.max_silent_s);
    if !(max_silent_s.is_finite() && max_silent_s > 0.0 && max_silent_s <= 86_400.0) {
        return Err(err(file, format!("{key}.max_silent_s"), "must be in (0, 86400] seconds"));
    }
    if (max_silent_s * 1000.0) < poll_ms as f64 {
        return Err(err(
            file,
            format!("{key}.max_silent_s"),
            format!("{max_silent_s} s is shorter than the poll interval ({poll_ms} ms)"),
        ));
    }
    Ok(PointSpec {
        id,
        device,
        kind: pc.kind,
        address: addr as u16,
        dtype,
        order,
        bit: pc.bit,
        scale: pc.scale,
        offset: pc.offset,
        unit: pc.unit.clone(),
        range: pc.range,
        poll: Duration::from_millis(poll_ms),
        deadband: pc.deadband,
        max_silent: Duration::from_secs_f64(max_silent_s),
        sim: pc.sim.clone(),
    })
}
