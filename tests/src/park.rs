//! The demo park on one machine: `configs/demo/park.toml` turned into simulated field devices,
//! alarm definitions, a central configuration and each gateway's sources in a run directory
//! ([`generate`]), then real processes started from them ([`Park::start`]): one `vigil-central`;
//! every gateway enrolled through central's API and `vigil-edge enroll` as a technician does it
//! ([`Park::enrol_gateways`]); and per gateway one `vigil-sim modbus` (its devices, over Modbus TCP
//! and RTU on pseudo-terminals), a `vigil-sim opcua` for a gateway with a DCS (its server
//! certificate trusted with `vigil-edge opcua trust`), its cameras and one `vigil-edge`. A scripted
//! scenario runs on a loop; `vigil-demo --check` verifies it end to end through the `missing_*`
//! checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::{http_get_auth, http_request, login, run_to_end, spawn, terminate};

/// The park description (`configs/demo/park.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkSpec {
    /// The enterprises.
    pub enterprise: Vec<EnterpriseSpec>,
    /// The gateways.
    pub gateway: Vec<GatewaySpec>,
}

/// One enterprise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnterpriseSpec {
    /// Id (a topic level).
    pub id: String,
    /// Display name.
    pub name: String,
}

/// One gateway and the simulated devices it reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySpec {
    /// Gateway id.
    pub id: String,
    /// Its enterprise.
    pub enterprise: String,
    /// Radar tank gauges over Modbus TCP (`TK101`, `TK102`, ...).
    pub tanks: u32,
    /// Tanks whose level ramps through H and HH in a loop.
    pub creeping: Vec<String>,
    /// 8-channel gas-detection controllers over Modbus RTU (`GDS1`, `GDS2`, ...).
    pub gas_controllers: u32,
    /// Channels (`GDS1.ch1`) that climb through both gas alarm levels in a loop.
    pub rising: Vec<String>,
    /// Static-levelling sensors on an RS485 line (`LV01`, ...; the first is the base point).
    pub levelling_sensors: u32,
    /// The levelling sensor (1-based) that never answers.
    pub silent_sensor: Option<u32>,
    /// A scheduled uplink outage.
    pub uplink_outage: Option<Outage>,
    /// A gas controller (`GDS2`) under an approved maintenance window from the start: its
    /// alarms are still recorded, but suppressed (they do not ring).
    pub maintenance: Option<String>,
    /// Gas-leak cameras at the site (`vigil-sim camera`), each detecting a leak (with a snapshot)
    /// and losing it again in a loop.
    pub cameras: Vec<CameraSpec>,
    /// A DCS the gateway reads over OPC UA (`vigil-sim opcua`).
    pub dcs: Option<DcsSpec>,
}

/// A distributed control system the gateway reads over OPC UA, simulated by `vigil-sim opcua`:
/// vessels (`Tank101`, ...: `Level` m, `Temperature` degC, `Pressure` bar) and gas detectors
/// (`GD001`, ...: `Concentration` %LEL, `Alarm`), read as points `DCS.Tank101.Level`, ...
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcsSpec {
    /// Vessels (three tags each).
    pub tanks: u32,
    /// Gas detectors (two tags each).
    pub detectors: u32,
    /// Message security of the session.
    #[serde(default)]
    pub security: DcsSecurity,
    /// Vessels (`Tank101`) with the lower high-level limit ([`DCS_SHORT_VESSEL_H`]), which the
    /// simulated level swing crosses every minute.
    #[serde(default)]
    pub short_vessels: Vec<String>,
}

/// Message security of the gateway's OPC UA session with the DCS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DcsSecurity {
    /// Basic256Sha256, signed and encrypted, as operator/operator-pass; the server's certificate
    /// is trusted with `vigil-edge opcua trust` before the agent starts.
    #[default]
    SignAndEncrypt,
    /// No security, anonymous (a DCS that offers nothing else).
    None,
}

/// A gas-leak camera of a gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSpec {
    /// Its name at the gateway (the alarm point is `{gateway}/cam/{name}`).
    pub name: String,
    /// How its detections reach the gateway.
    pub via: CameraLink,
}

/// How a camera's detections reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraLink {
    /// The camera posts them to the gateway's HTTP push endpoint.
    Push,
    /// The gateway pulls them through an ONVIF PullPoint subscription.
    Onvif,
}

/// Seconds between a simulated camera's detections (they alternate leak seen, leak gone).
const CAMERA_INTERVAL_S: u64 = 20;

/// An uplink outage: first `after_s` after start, lasting `for_s`, repeated every `every_s`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Seconds after start of the first outage.
    pub after_s: u64,
    /// Duration.
    pub for_s: u64,
    /// Period.
    pub every_s: u64,
}

/// Tank level limits (m) and gas limits (%LEL) of the generated alarm definitions.
const TANK_H: f64 = 17.0;
const TANK_HH: f64 = 18.5;
const GAS_H: f64 = 25.0;
const GAS_HH: f64 = 50.0;
/// DCS vessel level limits (m): the simulated levels swing between 3 and 7 m, so only a short
/// vessel's H is reached (its HH is not).
const DCS_VESSEL_H: f64 = 7.5;
const DCS_VESSEL_HH: f64 = 8.5;
/// The H limit of a short vessel (m).
pub const DCS_SHORT_VESSEL_H: f64 = 6.5;
const DCS_SHORT_VESSEL_HH: f64 = 7.5;
/// Scenario loop period: a creeping level or rising gas channel crosses both limits within it.
pub const SCENARIO_PERIOD_S: u64 = 120;

impl ParkSpec {
    /// Reads and checks the description.
    pub fn load(path: &Path) -> Result<ParkSpec> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let spec: ParkSpec = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        for g in &spec.gateway {
            if !spec.enterprise.iter().any(|e| e.id == g.enterprise) {
                bail!("{}: gateway {} names unknown enterprise {:?}", path.display(), g.id, g.enterprise);
            }
            for t in &g.creeping {
                if !(1..=g.tanks).any(|i| tank_name(i) == *t) {
                    bail!("{}: gateway {}: creeping tank {t:?} is not one of its tanks", path.display(), g.id);
                }
            }
            for r in &g.rising {
                let ok = r.split_once('.').is_some_and(|(c, ch)| {
                    (1..=g.gas_controllers).any(|i| format!("GDS{i}") == c)
                        && ch
                            .strip_prefix("ch")
                            .and_then(|n| n.parse::<u32>().ok())
                            .is_some_and(|n| (1..=8).contains(&n))
                });
                if !ok {
                    bail!(
                        "{}: gateway {}: rising channel {r:?} must be GDS<n>.ch<1-8> of its controllers",
                        path.display(),
                        g.id
                    );
                }
            }
            if let Some(m) = &g.maintenance
                && !(1..=g.gas_controllers).any(|i| format!("GDS{i}") == *m)
            {
                bail!("{}: gateway {}: maintenance {m:?} is not one of its gas controllers", path.display(), g.id);
            }
            if let Some(s) = g.silent_sensor
                && !(1..=g.levelling_sensors).contains(&s)
            {
                bail!("{}: gateway {}: silent_sensor {s} is not one of its sensors", path.display(), g.id);
            }
            if let Some(d) = &g.dcs {
                if d.tanks + d.detectors == 0 {
                    bail!("{}: gateway {}: its dcs has neither tanks nor detectors", path.display(), g.id);
                }
                for v in &d.short_vessels {
                    if !(0..d.tanks).any(|i| dcs_vessel(i) == *v) {
                        bail!("{}: gateway {}: short vessel {v:?} is not one of its DCS tanks", path.display(), g.id);
                    }
                }
            }
        }
        Ok(spec)
    }

    /// Points all gateways read (excluding the gateways' own health points).
    pub fn point_count(&self) -> u32 {
        self.gateway
            .iter()
            .map(|g| {
                g.tanks * TANK_POINTS
                    + g.gas_controllers * GAS_POINTS
                    + g.levelling_sensors * 3
                    + g.dcs.as_ref().map_or(0, |d| d.tanks * 3 + d.detectors * 2)
            })
            .sum()
    }
}

fn tank_name(i: u32) -> String {
    format!("TK{}", 100 + i)
}

/// The simulator's name of DCS vessel `i` (0-based), as `vigil_tools::sim::opcua::Layout::plant`.
fn dcs_vessel(i: u32) -> String {
    format!("Tank{}", 101 + i)
}

/// The simulator's name of DCS gas detector `i` (0-based).
fn dcs_detector(i: u32) -> String {
    format!("GD{:03}", 1 + i)
}

const TANK_POINTS: u32 = 8;
const GAS_POINTS: u32 = 16;

/// A tank-gauge profile; a creeping tank's level ramps from 14 m to 19.5 m each period.
fn tank_profile(creeping: bool) -> String {
    let level = if creeping { format!("ramp 14 19.5 {SCENARIO_PERIOD_S}") } else { "sine 8.5 2.0 600".into() };
    format!(
        r#"description = "Radar tank gauge (demo{creep})"
address_base = 0

[[points]]
id = "level"
kind = "input"
address = 0
type = "f32"
order = "CDAB"
unit = "m"
range = [0.0, 20.0]
deadband = 0.002
sim = "{level}"

[[points]]
id = "temperature"
kind = "input"
address = 2
type = "f32"
order = "CDAB"
unit = "degC"
range = [-40.0, 150.0]
deadband = 0.1
sim = "walk 25 0.05 15 35"

[[points]]
id = "volume"
kind = "input"
address = 4
type = "f32"
order = "CDAB"
unit = "m3"
range = [0.0, 5000.0]
deadband = 0.5
sim = "sine 2100 490 600"

[[points]]
id = "pressure"
kind = "input"
address = 6
type = "i32"
order = "ABCD"
scale = 0.001
unit = "kPa"
range = [-10.0, 300.0]
deadband = 0.05
sim = "sine 101.3 0.5 120"

[[points]]
id = "alarm.hh"
kind = "input"
address = 10
type = "bool"
bit = 0
sim = "const 0"

[[points]]
id = "alarm.h"
kind = "input"
address = 10
type = "bool"
bit = 1
sim = "const 0"

[[points]]
id = "alarm.l"
kind = "input"
address = 10
type = "bool"
bit = 2
sim = "const 0"

[[points]]
id = "pump.running"
kind = "coil"
address = 0
sim = "sine 0 1 90"
"#,
        creep = if creeping { ", creeping level" } else { "" }
    )
}

/// An 8-channel gas controller profile; channel `rising` (1-based) climbs 0..60 %LEL each period.
fn gas_profile(rising: Option<u32>) -> String {
    let mut s = format!(
        "description = \"8-channel gas-detection controller (demo{})\"\naddress_base = 1\n",
        rising.map(|c| format!(", ch{c} rising")).unwrap_or_default()
    );
    for ch in 1..=8u32 {
        let sim = if rising == Some(ch) { format!("ramp 0 60 {SCENARIO_PERIOD_S}") } else { "walk 2 0.2 0 8".into() };
        let _ = write!(
            s,
            "\n[[points]]\nid = \"ch{ch}.conc\"\nkind = \"holding\"\naddress = {ch}\ntype = \"u16\"\nscale = 0.1\nunit = \"%LEL\"\nrange = [0.0, 100.0]\ndeadband = 0.5\nsim = \"{sim}\"\n\n[[points]]\nid = \"ch{ch}.fault\"\nkind = \"holding\"\naddress = {}\ntype = \"bool\"\nbit = 0\nsim = \"const 0\"\n",
            16 + ch
        );
    }
    s
}

/// Where everything of a generated park lives, and the addresses it uses.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The run directory.
    pub dir: PathBuf,
    /// The central configuration.
    pub central_config: PathBuf,
    /// Per gateway: its configuration and the `vigil-sim` fault arguments.
    pub gateways: Vec<GatewayRun>,
    /// The HTTP API / UI address.
    pub api: std::net::SocketAddr,
    /// The broker port central listens on (the embedded broker).
    pub broker_port: u16,
    /// Alarm definitions the scenario must raise: (point or gateway, condition).
    pub expected_alarms: Vec<(String, String)>,
    /// Maintenance windows requested and approved when the park starts.
    pub windows: Vec<Window>,
    /// Points whose alarms the scenario raises inside a maintenance window (they must be suppressed).
    pub expected_suppressed: Vec<String>,
    /// The password of the park administrator `admin` (generated by `vigil-central user add`).
    pub admin_password: String,
}

/// A maintenance window of the scenario: an enterprise's points, suppressed for an hour.
#[derive(Debug, Clone)]
pub struct Window {
    /// The enterprise the points belong to.
    pub enterprise: String,
    /// The points.
    pub points: Vec<String>,
    /// Why (shown on the window and the alarms).
    pub reason: String,
    /// The enterprise user who requests it (the park's admin approves: the requester cannot).
    pub requester: String,
    /// That user's password.
    pub requester_password: String,
}

/// One gateway of a generated park.
#[derive(Debug, Clone)]
pub struct GatewayRun {
    /// Gateway id.
    pub id: String,
    /// Its enterprise.
    pub enterprise: String,
    /// Its directory (configuration, `keys/` written by `vigil-edge enroll`, spool, OPC UA PKI).
    pub dir: PathBuf,
    /// Its configuration file, written once the gateway is enrolled ([`Park::enrol_gateways`]).
    pub config: PathBuf,
    /// The configuration's sections after `[gateway]` and `[uplink]` (spool, acquisition, sources).
    pub local_config: String,
    /// Extra `vigil-sim modbus` arguments (faults).
    pub sim_args: Vec<String>,
    /// Its scheduled uplink outage, if any (the gateway then connects through a fault proxy).
    pub outage: Option<Outage>,
    /// The port its uplink connects to (the broker, or its fault proxy).
    pub uplink_port: u16,
    /// `vigil-sim` arguments of each of its cameras.
    pub cameras: Vec<Vec<String>>,
    /// Its DCS over OPC UA, if it has one.
    pub dcs: Option<DcsRun>,
}

/// How a gateway's DCS is simulated and trusted.
#[derive(Debug, Clone)]
pub struct DcsRun {
    /// `vigil-sim opcua` arguments.
    pub sim_args: Vec<String>,
    /// Where the simulated server listens.
    pub endpoint: std::net::SocketAddr,
    /// The server's application instance certificate (made by the simulator when it starts).
    pub server_certificate: PathBuf,
    /// The gateway's OPC UA PKI directory (`[[opcua]] pki_dir`), whose `trusted/` gets that certificate.
    pub pki_dir: PathBuf,
    /// Every DCS point as central names it (`gateway/DCS.Tank101.Level`).
    pub points: Vec<String>,
    /// The points whose H limit the scenario crosses.
    pub alarmed: Vec<String>,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes the park's files into `dir` (created; must not hold an earlier park): central's PKI, key,
/// configuration and users, alarm definitions, profiles, and each gateway's sources. Gateways get
/// their keys, certificates and configuration files only when enrolled ([`Park::enrol_gateways`]).
pub fn generate(spec: &ParkSpec, dir: &Path, api: std::net::SocketAddr) -> Result<Layout> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles)?;
    write(&profiles.join("demo-tank.toml"), &tank_profile(false))?;
    write(&profiles.join("demo-tank-creeping.toml"), &tank_profile(true))?;
    write(&profiles.join("demo-gas.toml"), &gas_profile(None))?;
    for ch in 1..=8 {
        write(&profiles.join(format!("demo-gas-rising-ch{ch}.toml")), &gas_profile(Some(ch)))?;
    }
    let levelling = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/profiles/levelling-magnetostrictive.toml");
    std::fs::copy(&levelling, profiles.join("levelling-magnetostrictive.toml"))
        .with_context(|| format!("copying {}", levelling.display()))?;
    let camera_models = dir.join("camera-models");
    std::fs::create_dir_all(&camera_models)?;
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/camera-models/vigil-sim.toml");
    std::fs::copy(&model, camera_models.join("vigil-sim.toml"))
        .with_context(|| format!("copying {}", model.display()))?;

    let central_dir = dir.join("central");
    std::fs::create_dir_all(&central_dir)?;
    write(&central_dir.join("park-layout.json"), &serde_json::to_string_pretty(&park_layout(spec))?)?;
    let central_key = central_dir.join("central.key");
    run_to_end("vigil-central", &["keygen", "--out", path_str(&central_key)?])?;
    let pki_dir = central_dir.join("pki");
    run_to_end("vigil-central", &["pki", "init", "--dir", path_str(&pki_dir)?])?;
    let broker_port = free_port()?;

    let mut alarms =
        String::from("# Generated by vigil-demo from configs/demo/park.toml.\n[engine]\ngateway_silence_s = 30\n");
    let mut expected = Vec::new();
    let (mut windows, mut window_points, mut suppressed) = (Vec::new(), Vec::new(), Vec::new());
    let mut gateways = Vec::new();
    for g in &spec.gateway {
        let gdir = dir.join(&g.id);
        std::fs::create_dir_all(&gdir)?;
        let uplink_port = if g.uplink_outage.is_some() { free_port()? } else { broker_port };
        // [gateway] and [uplink] come from the gateway's enrolment (`Park::enrol_gateways`).
        let mut conf = format!(
            r#"
[spool]
path = "{spool}"
batch_max_age_ms = 500
# Tank levels and gas concentrations carry alarm limits: they go out as soon as they are read.
urgent_points = ["*.level", "GDS*.conc", "DCS.*.Level", "DCS.*.Concentration"]

[system]
interval_ms = 1000

[acquisition]
profile_dir = "{profiles}"
clock = "gateway"
max_silent_s = 300
"#,
            spool = gdir.join("spool").display(),
            profiles = profiles.display(),
        );
        let mut sim_args = Vec::new();
        if g.tanks > 0 {
            let port = free_port()?;
            for i in 1..=g.tanks {
                let name = tank_name(i);
                let profile = if g.creeping.contains(&name) { "demo-tank-creeping" } else { "demo-tank" };
                let _ = write!(
                    conf,
                    "\n[[devices]]\nname = \"{lower}\"\nprotocol = \"tcp\"\nhost = \"127.0.0.1\"\nport = {port}\nunit = {unit}\nprofile = \"{profile}\"\npoint_prefix = \"{name}.\"\npoll_ms = 1000\ntimeout_ms = 1000\n",
                    lower = name.to_lowercase(),
                    unit = (i - 1) % 247 + 1,
                );
                let point = format!("{}/{name}.level", g.id);
                let _ = write!(
                    alarms,
                    "\n[[point]]\nid = \"{point}\"\ngateway = \"{gw}\"\ndevice = \"{lower}\"\nenterprise = \"{ent}\"\ngrade = \"A\"\nhh = {TANK_HH}\nh = {TANK_H}\nl = 1.0\nll = 0.5\ndeadband = 0.2\non_delay_s = 2\n",
                    gw = g.id,
                    lower = name.to_lowercase(),
                    ent = g.enterprise,
                );
                if g.creeping.contains(&name) {
                    expected.push((point.clone(), "Hi".to_owned()));
                    expected.push((point, "HiHi".to_owned()));
                }
            }
            if g.tanks > 247 {
                bail!("gateway {}: at most 247 tanks on one Modbus TCP port", g.id);
            }
        }
        if g.gas_controllers > 0 || g.levelling_sensors > 0 {
            let _ = write!(
                conf,
                "\n[[buses]]\nname = \"rs485-1\"\npath = \"{}\"\nbaud = 9600\nparity = \"none\"\n",
                gdir.join("rs485-1").display()
            );
        }
        for c in 1..=g.gas_controllers {
            let rising =
                g.rising.iter().find_map(|r| r.strip_prefix(&format!("GDS{c}.ch")).and_then(|n| n.parse::<u32>().ok()));
            let profile = rising.map_or("demo-gas".to_owned(), |ch| format!("demo-gas-rising-ch{ch}"));
            let _ = write!(
                conf,
                "\n[[devices]]\nname = \"gds{c}\"\nprotocol = \"rtu\"\nbus = \"rs485-1\"\nunit = {c}\nprofile = \"{profile}\"\npoint_prefix = \"GDS{c}.\"\npoll_ms = 1000\ntimeout_ms = 300\nretries = 0\n",
            );
            for ch in 1..=8 {
                let point = format!("{}/GDS{c}.ch{ch}.conc", g.id);
                let _ = write!(
                    alarms,
                    "\n[[point]]\nid = \"{point}\"\ngateway = \"{gw}\"\ndevice = \"gds{c}\"\nenterprise = \"{ent}\"\ngrade = \"S\"\nhh = {GAS_HH}\nh = {GAS_H}\ndeadband = 2.0\n",
                    gw = g.id,
                    ent = g.enterprise,
                );
                let in_window = g.maintenance.as_deref() == Some(format!("GDS{c}").as_str());
                if in_window {
                    window_points.push(point.clone());
                }
                if rising == Some(ch) {
                    if in_window {
                        suppressed.push(point.clone());
                    }
                    expected.push((point.clone(), "Hi".to_owned()));
                    expected.push((point, "HiHi".to_owned()));
                }
            }
        }
        if let Some(m) = &g.maintenance {
            windows.push(Window {
                enterprise: g.enterprise.clone(),
                points: std::mem::take(&mut window_points),
                reason: format!("{m} sensor replacement (demo)"),
                requester: String::new(),
                requester_password: String::new(),
            });
        }
        for s in 1..=g.levelling_sensors {
            let unit = g.gas_controllers + s;
            let name = format!("lv{s:02}");
            let _ = write!(
                conf,
                "\n[[devices]]\nname = \"{name}\"\nprotocol = \"rtu\"\nbus = \"rs485-1\"\nunit = {unit}\nprofile = \"levelling-magnetostrictive\"\npoint_prefix = \"LV{s:02}.\"\npoll_ms = 5000\ntimeout_ms = 300\nretries = 0\n",
            );
            if g.silent_sensor == Some(s) {
                sim_args.push("--fault".to_owned());
                sim_args.push(format!("{name}=noanswer"));
                expected.push((format!("{}/{name}", g.id), "DeviceOffline".to_owned()));
            }
        }
        let cameras = cameras_of(g, &camera_models, &mut conf, &mut alarms, &mut expected)?;
        let dcs = dcs_of(g, &gdir, &mut conf, &mut alarms, &mut expected)?;
        if g.uplink_outage.is_some() {
            expected.push((g.id.clone(), "GatewayOffline".to_owned()));
        }
        gateways.push(GatewayRun {
            id: g.id.clone(),
            enterprise: g.enterprise.clone(),
            config: gdir.join("gateway.toml"),
            dir: gdir,
            local_config: conf,
            sim_args,
            outage: g.uplink_outage,
            uplink_port,
            cameras,
            dcs,
        });
    }
    write(&central_dir.join("alarms.toml"), &alarms)?;
    let central_config = central_dir.join("central.toml");
    write(&central_config, &central_toml(broker_port, api))?;
    for w in &mut windows {
        w.requester = format!("safety-{}", w.enterprise);
        let args = ["user", "--config", path_str(&central_config)?, "add", &w.requester, "--role", "enterprise_user"];
        w.requester_password =
            run_to_end("vigil-central", &[&args[..], &["--enterprise", &w.enterprise, "--generate"]].concat())?
                .trim()
                .to_owned();
    }
    let admin_password = run_to_end(
        "vigil-central",
        &["user", "--config", path_str(&central_config)?, "add", "admin", "--role", "park_admin", "--generate"],
    )?
    .trim()
    .to_owned();
    Ok(Layout {
        dir: dir.to_owned(),
        central_config: central_dir.join("central.toml"),
        gateways,
        api,
        broker_port,
        expected_alarms: expected,
        windows,
        expected_suppressed: suppressed,
        admin_password,
    })
}

/// Adds gateway `g`'s DCS to its configuration (one `[[opcua]]` server, a point per simulated tag)
/// and alarm limits on its vessel levels and gas concentrations to the alarm file; returns how to
/// simulate and trust it.
fn dcs_of(
    g: &GatewaySpec,
    gdir: &Path,
    conf: &mut String,
    alarms: &mut String,
    expected: &mut Vec<(String, String)>,
) -> Result<Option<DcsRun>> {
    use vigil_tools::sim::opcua::{NAMESPACE_URI, USER};
    let Some(d) = &g.dcs else { return Ok(None) };
    let endpoint = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    // The DCS's own files; on a real site they live on the DCS host, and only its certificate
    // reaches the gateway (through `vigil-edge opcua trust`).
    let server_pki = gdir.join("dcs-server");
    let pki_dir = gdir.join("opcua-pki");
    let security = match d.security {
        DcsSecurity::SignAndEncrypt => format!(
            "security_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\nuser = \"{}\"\npassword = \"{}\"\n",
            USER.0, USER.1
        ),
        DcsSecurity::None => String::new(),
    };
    let _ = write!(
        conf,
        "\n[[opcua]]\nname = \"dcs\"\nendpoint = \"opc.tcp://{endpoint}\"\n{security}pki_dir = \"{}\"\npoint_prefix = \"DCS.\"\npublish_interval_ms = 1000\nsampling_ms = 1000\n",
        pki_dir.display()
    );
    let mut points = Vec::new();
    let mut alarmed = Vec::new();
    let mut point = |conf: &mut String, tag: String, extra: &str| {
        let _ = write!(conf, "\n[[opcua.points]]\nid = \"{tag}\"\nnode = \"nsu={NAMESPACE_URI};s={tag}\"\n{extra}");
        points.push(format!("{}/DCS.{tag}", g.id));
    };
    for i in 0..d.tanks {
        let vessel = dcs_vessel(i);
        point(conf, format!("{vessel}.Level"), "unit = \"m\"\nrange = [0.0, 10.0]\ndeadband = 0.005\n");
        point(conf, format!("{vessel}.Temperature"), "unit = \"degC\"\nrange = [-40.0, 150.0]\ndeadband = 0.05\n");
        point(conf, format!("{vessel}.Pressure"), "unit = \"bar\"\nrange = [0.0, 10.0]\ndeadband = 0.002\n");
        let short = d.short_vessels.contains(&vessel);
        let (h, hh) = if short { (DCS_SHORT_VESSEL_H, DCS_SHORT_VESSEL_HH) } else { (DCS_VESSEL_H, DCS_VESSEL_HH) };
        let id = format!("{}/DCS.{vessel}.Level", g.id);
        let _ = write!(
            alarms,
            "\n[[point]]\nid = \"{id}\"\ngateway = \"{gw}\"\ndevice = \"dcs\"\nenterprise = \"{ent}\"\ngrade = \"A\"\nhh = {hh}\nh = {h}\nl = 1.0\nll = 0.5\ndeadband = 0.2\non_delay_s = 2\n",
            gw = g.id,
            ent = g.enterprise,
        );
        if short {
            expected.push((id.clone(), "Hi".to_owned()));
            alarmed.push(id);
        }
    }
    for i in 0..d.detectors {
        let detector = dcs_detector(i);
        point(conf, format!("{detector}.Concentration"), "unit = \"%LEL\"\nrange = [0.0, 100.0]\ndeadband = 0.1\n");
        point(conf, format!("{detector}.Alarm"), "type = \"bool\"\n");
        let _ = write!(
            alarms,
            "\n[[point]]\nid = \"{}/DCS.{detector}.Concentration\"\ngateway = \"{gw}\"\ndevice = \"dcs\"\nenterprise = \"{ent}\"\ngrade = \"S\"\nhh = {GAS_HH}\nh = {GAS_H}\ndeadband = 2.0\n",
            g.id,
            gw = g.id,
            ent = g.enterprise,
        );
    }
    let sim_args = [
        "opcua",
        "--listen",
        &endpoint.to_string(),
        "--pki-dir",
        path_str(&server_pki)?,
        "--tanks",
        &d.tanks.to_string(),
        "--detectors",
        &d.detectors.to_string(),
        "--update-ms",
        "1000",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    Ok(Some(DcsRun {
        sim_args,
        endpoint,
        server_certificate: server_pki.join("own/cert.der"),
        pki_dir,
        points,
        alarmed,
    }))
}

/// Adds gateway `g`'s cameras to its configuration (push endpoint, ONVIF subscriptions, liveness
/// checks) and their definitions to the alarm file; returns each camera simulator's arguments.
fn cameras_of(
    g: &GatewaySpec,
    models: &Path,
    conf: &mut String,
    alarms: &mut String,
    expected: &mut Vec<(String, String)>,
) -> Result<Vec<Vec<String>>> {
    if g.cameras.is_empty() {
        return Ok(Vec::new());
    }
    let push_port = free_port()?;
    let _ = write!(
        conf,
        "\n[cameras]\nlisten = \"127.0.0.1:{push_port}\"\nmodel_dir = \"{}\"\nsnapshot_timeout_ms = 3000\n",
        models.display()
    );
    let mut runs = Vec::new();
    for c in &g.cameras {
        let sim = free_port()?;
        let secret = format!("vigil-demo-camera-secret-{}", c.name);
        let base = format!("http://127.0.0.1:{sim}");
        let _ = write!(
            conf,
            "\n[[cameras.camera]]\nname = \"{name}\"\nmodel = \"vigil-sim\"\nhost = \"127.0.0.1\"\nauth = {{ kind = \"secret\", secret = \"{secret}\" }}\nhealth = {{ url = \"{base}/health\", interval_s = 10, failures = 2 }}\n",
            name = c.name,
        );
        if c.via == CameraLink::Onvif {
            let _ = writeln!(
                conf,
                "onvif = {{ events_url = \"{base}/onvif/event_service\", device_url = \"{base}/onvif/device_service\", user = \"admin\", password = \"onvif-pass\" }}"
            );
        }
        let point = format!("{}/cam/{}", g.id, c.name);
        let _ = write!(
            alarms,
            "\n[[point]]\nid = \"{point}\"\ngateway = \"{gw}\"\ndevice = \"{name}\"\nenterprise = \"{ent}\"\nkind = \"gas_camera\"\ngrade = \"S\"\n",
            gw = g.id,
            name = c.name,
            ent = g.enterprise,
        );
        expected.push((point, "GasLeak".to_owned()));
        let mut args: Vec<String> = ["camera", "--name", &c.name, "--listen", &format!("127.0.0.1:{sim}")]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.extend(["--interval-ms".to_owned(), (CAMERA_INTERVAL_S * 1000).to_string()]);
        args.extend(["--snapshot-bytes".to_owned(), "60000".to_owned()]);
        if c.via == CameraLink::Push {
            args.extend(["--push".to_owned(), format!("http://127.0.0.1:{push_port}"), "--secret".to_owned(), secret]);
        }
        runs.push(args);
    }
    Ok(runs)
}

/// The overview's park map of `spec` (the shape of `central/ui/park-layout.json`): a column per
/// enterprise with its tank farms, gas-detection units and cameras, the pipe galleries below.
/// Objects are coloured by the alarms of the gateways and points they name.
fn park_layout(spec: &ParkSpec) -> serde_json::Value {
    use serde_json::json;
    const ROW: i64 = 75;
    let width = 1000 / spec.enterprise.len().max(1) as i64;
    let mut objects = Vec::new();
    let mut bottom = 0;
    for (i, e) in spec.enterprise.iter().enumerate() {
        let x = 20 + i as i64 * width;
        let mut y = 80;
        let mut inner = Vec::new();
        for g in spec.gateway.iter().filter(|g| g.enterprise == e.id) {
            if g.tanks > 0 {
                let creeping: Vec<String> = g.creeping.iter().map(|t| format!("{}/{t}.level", g.id)).collect();
                inner.push(json!({
                    "id": format!("{}-tanks", g.id), "kind": "tank_farm", "major_hazard": true,
                    "label": [format!("罐区 {} 座 · {}", g.tanks, g.id), format!("Tank farm, {} tanks · {}", g.tanks, g.id)],
                    "shape": { "rect": [x + 20, y, width - 60, 60] }, "gateways": [g.id], "points": creeping,
                }));
                y += ROW;
            }
            if g.gas_controllers > 0 {
                inner.push(json!({
                    "id": format!("{}-gas", g.id), "kind": "process_unit", "major_hazard": true,
                    "label": [format!("可燃气体检测 {} 台 · {}", g.gas_controllers, g.id), format!("Gas detection, {} controllers · {}", g.gas_controllers, g.id)],
                    "shape": { "rect": [x + 20, y, width - 60, 60] }, "gateways": [g.id],
                }));
                y += ROW;
            }
            if let Some(d) = &g.dcs {
                let alarmed: Vec<String> = d.short_vessels.iter().map(|v| format!("{}/DCS.{v}.Level", g.id)).collect();
                inner.push(json!({
                    "id": format!("{}-dcs", g.id), "kind": "process_unit", "major_hazard": true,
                    "label": [format!("DCS（OPC UA）{} 釜罐 · {}", d.tanks, g.id), format!("DCS over OPC UA, {} vessels · {}", d.tanks, g.id)],
                    "shape": { "rect": [x + 20, y, width - 60, 60] }, "gateways": [g.id], "points": alarmed,
                }));
                y += ROW;
            }
            for c in &g.cameras {
                inner.push(json!({
                    "id": format!("{}-{}", g.id, c.name), "kind": "camera",
                    "label": [format!("红外气体摄像机 {}", c.name), format!("IR gas camera {}", c.name)],
                    "shape": { "circle": [x + 40, y + 14, 12] },
                    "label_at": [x + 60, y + 19], "points": [format!("{}/cam/{}", g.id, c.name)],
                }));
                y += 36;
            }
            if !g.cameras.is_empty() {
                y += 10;
            }
        }
        let height = (y - 30).max(150);
        bottom = bottom.max(30 + height);
        objects.push(json!({
            "id": e.id, "kind": "enterprise", "enterprise": e.id, "label": [format!("{}（{}）", e.name, e.id), e.id],
            "shape": { "rect": [x, 30, width - 20, height] }, "label_at": [x + 14, 56],
        }));
        objects.extend(inner);
    }
    for g in spec.gateway.iter().filter(|g| g.levelling_sensors > 0) {
        let y = bottom + 50;
        objects.push(json!({
            "id": format!("{}-gallery", g.id), "kind": "pipe_gallery",
            "label": [format!("公共管廊静力水准 {} 点 · {}", g.levelling_sensors, g.id), format!("Pipe gallery levelling, {} sensors · {}", g.levelling_sensors, g.id)],
            "shape": { "line": [[40, y], [420, y], [420, y + 40], [960, y + 40]] }, "label_at": [50, y - 12], "gateways": [g.id],
        }));
        bottom = y + 40;
    }
    json!({
        "_comment": "Generated by vigil-demo from configs/demo/park.toml (central's [api] park_layout).",
        "viewBox": [0, 0, 1000, bottom + 30],
        "objects": objects,
    })
}

fn central_toml(broker_port: u16, api: std::net::SocketAddr) -> String {
    format!(
        r#"# Generated by vigil-demo from configs/demo/park.toml.
data_dir = "data"
key_file = "central.key"
alarms = "alarms.toml"

# The embedded broker, with the certificates `vigil-central pki init --dir pki` made.
[broker]
listen = "127.0.0.1:{broker_port}"

[ingest]
resend_after_ms = 3000
checkpoint_interval_s = 60
# Gateways enrol while central runs: the broker and ingest accept each within a second.
registry_reload_s = 1

[api]
listen = "{api}"
park_layout = "park-layout.json"
"#
    )
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("path {} is not UTF-8", p.display()))
}

/// A running park: the processes, and the fault proxies of gateways with scheduled outages.
pub struct Park {
    /// Its layout.
    pub layout: Layout,
    central: Option<Child>,
    processes: Vec<(String, Child)>,
    proxies: BTreeMap<String, (vigil_tools::faultproxy::FaultProxy, Outage)>,
    started: Instant,
    token: String,
}

impl Park {
    /// Starts central, enrols every gateway, opens the maintenance windows, then starts per gateway
    /// its simulators and agent; must run inside a tokio runtime (the fault proxies are tasks).
    pub async fn start(layout: Layout) -> Result<Park> {
        let mut park = Park::start_central(layout).await?;
        park.enrol_gateways().await?;
        for w in &park.layout.windows {
            park.open_window(w).await?;
        }
        park.start_gateways().await?;
        Ok(park)
    }

    /// Starts only central and logs in to its API as the park's admin.
    pub async fn start_central(layout: Layout) -> Result<Park> {
        let logs = layout.dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let central =
            spawn("vigil-central", &["run", "--config", path_str(&layout.central_config)?], &logs.join("central.log"))?;
        let broker = std::net::SocketAddr::from(([127, 0, 0, 1], layout.broker_port));
        wait_for_port(broker, Duration::from_secs(30))
            .await
            .context("central's broker did not start (logs/central.log)")?;
        let (port, password) = (layout.api.port(), layout.admin_password.clone());
        let token = tokio::task::spawn_blocking(move || login(port, "admin", &password)).await??;
        Ok(Park {
            layout,
            central: Some(central),
            processes: Vec::new(),
            proxies: BTreeMap::new(),
            started: Instant::now(),
            token,
        })
    }

    /// Enrols every gateway the way a technician does: the admin creates a one-time token for it
    /// (`POST /api/v1/enrolments`), `vigil-edge enroll` redeems it (the keys are made in the
    /// gateway's `keys/`, central registers the signing key and signs the TLS certificate), and the
    /// enrolled `[gateway]` and `[uplink]` are merged into the gateway's configuration.
    pub async fn enrol_gateways(&self) -> Result<()> {
        let (port, admin, gateways) = (self.layout.api.port(), self.token.clone(), self.layout.gateways.clone());
        tokio::task::spawn_blocking(move || -> Result<()> {
            for g in &gateways {
                let body = serde_json::json!({ "gateway": g.id, "enterprise": g.enterprise, "ttl_s": 600 }).to_string();
                let (status, answer) = http_request(port, "POST", "/api/v1/enrolments", Some(&admin), Some(&body))?;
                if status != 201 {
                    bail!("creating the enrolment token of {} answered {status}: {answer}", g.id);
                }
                let answer: serde_json::Value = serde_json::from_str(&answer)?;
                let token = answer["token"].as_str().context("enrolment answer without a token")?;
                let keys = g.dir.join("keys");
                let central = format!("http://127.0.0.1:{port}");
                let args =
                    ["enroll", "--central", &central, "--token", token, "--id", &g.id, "--dir", path_str(&keys)?];
                let snippet = run_to_end("vigil-edge", &args)?;
                write_gateway_config(g, Path::new(snippet.trim()))?;
                eprintln!("enrolled {} ({}) with a one-time token; keys in {}", g.id, g.enterprise, keys.display());
            }
            Ok(())
        })
        .await?
    }

    /// Starts per gateway its simulators (Modbus, a DCS whose certificate is then trusted) and
    /// its agent, then the cameras.
    async fn start_gateways(&mut self) -> Result<()> {
        let layout = self.layout.clone();
        let park = self;
        let logs = layout.dir.join("logs");
        let broker = std::net::SocketAddr::from(([127, 0, 0, 1], layout.broker_port));
        for g in &layout.gateways {
            let config = path_str(&g.config)?;
            let mut sim = vec!["modbus", "--config", config];
            sim.extend(g.sim_args.iter().map(String::as_str));
            park.processes
                .push((format!("{} sim", g.id), spawn("vigil-sim", &sim, &logs.join(format!("{}-sim.log", g.id)))?));
            if let Some(outage) = g.outage {
                let proxy = vigil_tools::faultproxy::FaultProxy::start_on(g.uplink_port, broker).await?;
                park.proxies.insert(g.id.clone(), (proxy, outage));
            }
            if let Some(dcs) = &g.dcs {
                let args: Vec<&str> = dcs.sim_args.iter().map(String::as_str).collect();
                let log = logs.join(format!("{}-dcs.log", g.id));
                park.processes.push((format!("{} DCS", g.id), spawn("vigil-sim", &args, &log)?));
            }
        }
        for g in &layout.gateways {
            if let Some(dcs) = &g.dcs {
                trust_dcs(&g.id, dcs).await?;
            }
        }
        // Give the simulators a moment to open their ports and pseudo-terminals.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for g in &layout.gateways {
            park.processes.push((
                format!("{} agent", g.id),
                spawn(
                    "vigil-edge",
                    &["run", "--config", path_str(&g.config)?],
                    &logs.join(format!("{}-edge.log", g.id)),
                )?,
            ));
        }
        // Cameras last: a pushing camera's first detection needs the agent's endpoint up.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for g in &layout.gateways {
            for (i, args) in g.cameras.iter().enumerate() {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let log = logs.join(format!("{}-camera{}.log", g.id, i + 1));
                park.processes.push((format!("{} camera {}", g.id, i + 1), spawn("vigil-sim", &args, &log)?));
            }
        }
        park.started = Instant::now();
        Ok(())
    }

    /// Requests maintenance window `w` for the next hour as its enterprise's user, and approves it as
    /// the park's admin.
    async fn open_window(&self, w: &Window) -> Result<()> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        let body = serde_json::json!({
            "enterprise": w.enterprise, "points": w.points, "from_ms": now, "to_ms": now + 3_600_000,
            "reason": w.reason,
        })
        .to_string();
        let (port, token) = (self.layout.api.port(), self.token.clone());
        let (requester, password) = (w.requester.clone(), w.requester_password.clone());
        let id = tokio::task::spawn_blocking(move || -> Result<i64> {
            let asks = login(port, &requester, &password)?;
            let (status, answer) = http_request(port, "POST", "/api/v1/windows", Some(&asks), Some(&body))?;
            if status != 201 {
                bail!("requesting a maintenance window answered {status}: {answer}");
            }
            let id = serde_json::from_str::<serde_json::Value>(&answer)?["id"].as_i64().context("window without id")?;
            let (status, answer) =
                http_request(port, "POST", &format!("/api/v1/windows/{id}/approve"), Some(&token), Some("{}"))?;
            if status != 200 {
                bail!("approving maintenance window {id} answered {status}: {answer}");
            }
            Ok(id)
        })
        .await??;
        eprintln!(
            "scenario: maintenance window #{id} for {} requested by {}, approved by admin ({} points): {}",
            w.enterprise,
            w.requester,
            w.points.len(),
            w.reason
        );
        Ok(())
    }

    /// Drives the scheduled outages; call about once a second.
    pub fn drive(&mut self) {
        let t = self.started.elapsed().as_secs();
        for (id, (proxy, o)) in &self.proxies {
            let down = t >= o.after_s && (t - o.after_s) % o.every_s.max(1) < o.for_s;
            if down != proxy.is_cut() {
                if down {
                    eprintln!("scenario: uplink of {id} cut for {} s", o.for_s);
                    proxy.cut();
                } else {
                    eprintln!("scenario: uplink of {id} restored; it back-fills its spool");
                    proxy.restore();
                }
            }
        }
    }

    /// Whether every scheduled outage has happened and ended at least 15 s ago (time to back-fill).
    pub fn outages_over(&self) -> bool {
        let t = self.started.elapsed().as_secs();
        self.proxies.values().all(|(p, o)| !p.is_cut() && t >= o.after_s + o.for_s + 15)
    }

    /// Seconds since the gateways started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether a process of the park has exited (name and status), which ends the demo.
    pub fn exited(&mut self) -> Option<String> {
        if let Some(c) = &mut self.central
            && let Ok(Some(status)) = c.try_wait()
        {
            return Some(format!("vigil-central exited ({status})"));
        }
        self.processes
            .iter_mut()
            .find_map(|(name, c)| c.try_wait().ok().flatten().map(|s| format!("{name} exited ({s})")))
    }

    /// Stops every process in order: agents and simulators first, central last.
    pub fn stop(&mut self) {
        for (name, mut c) in std::mem::take(&mut self.processes).into_iter().rev() {
            if let Err(e) = terminate(&mut c) {
                eprintln!("stopping {name}: {e}");
            }
        }
        if let Some(mut c) = self.central.take()
            && let Err(e) = terminate(&mut c)
        {
            eprintln!("stopping vigil-central: {e}");
        }
    }

    /// One GET on the API as the demo's admin; (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get_auth(self.layout.api.port(), &self.token, path)
    }

    /// Central's alarm list (open and closed, newest first, at most 1,000) as the admin sees it.
    fn alarms(&self) -> Result<Vec<serde_json::Value>> {
        let (status, body) = self.get("/api/v1/alarms?limit=1000")?;
        if status != 200 {
            bail!("GET /api/v1/alarms answered {status}: {body}");
        }
        let mut list: serde_json::Value = serde_json::from_str(&body).context("the alarm list is not JSON")?;
        Ok(match list["items"].take() {
            serde_json::Value::Array(items) => items,
            _ => Vec::new(),
        })
    }

    /// The scenario's expected alarms not yet seen in central's alarm list (open or closed).
    pub fn missing_alarms(&self) -> Result<Vec<(String, String)>> {
        let items = self.alarms()?;
        Ok(self
            .layout
            .expected_alarms
            .iter()
            .filter(|(source, condition)| !alarm_present(&items, source, condition))
            .cloned()
            .collect())
    }

    /// Points of the scenario's maintenance windows that have no suppressed alarm yet.
    pub fn missing_suppressed(&self) -> Result<Vec<String>> {
        let items = self.alarms()?;
        Ok(self
            .layout
            .expected_suppressed
            .iter()
            .filter(|p| {
                !items
                    .iter()
                    .any(|a| a["key"]["source"]["Point"].as_str() == Some(p.as_str()) && a["suppressed_by"].is_i64())
            })
            .map(|p| format!("a suppressed alarm on {p} (maintenance window)"))
            .collect())
    }

    /// Camera alarms whose timeline does not yet show a detection with a snapshot that central's
    /// evidence store serves.
    pub fn missing_evidence(&self) -> Result<Vec<String>> {
        let items = self.alarms()?;
        let mut missing = Vec::new();
        for (source, _) in self.layout.expected_alarms.iter().filter(|(_, c)| c == "GasLeak") {
            let ids: Vec<i64> = items
                .iter()
                .filter(|a| a["key"]["source"]["Point"].as_str() == Some(source.as_str()))
                .filter_map(|a| a["id"].as_i64())
                .collect();
            let mut served = false;
            for id in ids {
                let (_, tl) = self.get(&format!("/api/v1/alarms/{id}/timeline"))?;
                let tl: serde_json::Value = serde_json::from_str(&tl)?;
                for e in tl["items"].as_array().into_iter().flatten().filter(|e| e["what"] == "detection") {
                    let detail: serde_json::Value = serde_json::from_str(e["detail"].as_str().unwrap_or("{}"))?;
                    if let Some(sha) = detail["evidence"].as_str() {
                        served |= self.get(&format!("/api/v1/evidence/{sha}"))?.0 == 200;
                    }
                }
            }
            if !served {
                missing.push(format!("a served snapshot on the gas-leak alarm of {source}"));
            }
        }
        Ok(missing)
    }

    /// What central still lacks of each DCS: a good sample of every DCS point (the latest one), and
    /// for a point whose H limit the scenario crosses, a sample at or above that limit.
    pub fn missing_dcs_samples(&self) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for (g, dcs) in self.layout.gateways.iter().filter_map(|g| g.dcs.as_ref().map(|d| (g, d))) {
            let mut without = 0;
            // Up to 100 points per query keeps the request line short.
            for chunk in dcs.points.chunks(100) {
                let (status, body) = self.get(&format!("/api/v1/latest?points={}", chunk.join(",")))?;
                if status != 200 {
                    bail!("GET /api/v1/latest answered {status}: {body}");
                }
                let v: serde_json::Value = serde_json::from_str(&body)?;
                let good = v["points"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    // OPC UA status codes: the top two bits are 00 for Good.
                    .filter(|p| p["sample"]["quality"].as_u64().is_some_and(|q| q & 0xC000_0000 == 0))
                    .count();
                without += chunk.len().saturating_sub(good);
            }
            if without > 0 {
                missing.push(format!("good samples of {without} of the {} DCS points of {}", dcs.points.len(), g.id));
            }
            for point in &dcs.alarmed {
                let (status, body) =
                    self.get(&format!("/api/v1/raw?point={point}&from=0&to={}&limit=100000", i64::MAX))?;
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let crossed = status == 200
                    && v["samples"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s["value"].as_f64().is_some_and(|x| x >= DCS_SHORT_VESSEL_H));
                if !crossed {
                    missing.push(format!("a sample of {point} at or above {DCS_SHORT_VESSEL_H} m"));
                }
            }
        }
        Ok(missing)
    }

    /// For every gateway: what is still missing of the point catalogue it signs (PROTOCOL 4d): one
    /// from the gateway itself that describes the configuration it runs, listing every DCS point
    /// with its engineering unit where the configuration gives one.
    pub fn missing_catalogues(&self) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for g in &self.layout.gateways {
            let (status, body) = self.get(&format!("/api/v1/gateways/{}/catalogue", g.id))?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if status != 200 || v["source"] != "gateway" || v["current"] != true {
                missing.push(format!("the point catalogue of {} (answer {status}: {})", g.id, v["source"]));
                continue;
            }
            let Some(dcs) = &g.dcs else { continue };
            let listed: std::collections::HashMap<String, String> = v["document"]["points"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let unit = p["unit"].as_str().unwrap_or_default().to_owned();
                    (format!("{}/{}", g.id, p["id"].as_str().unwrap_or_default()), unit)
                })
                .collect();
            let absent = dcs.points.iter().filter(|k| !listed.contains_key(*k)).count();
            let unitless =
                dcs.points.iter().filter(|k| k.ends_with(".Level") && listed.get(*k).is_some_and(|u| u != "m")).count();
            if absent + unitless > 0 {
                missing.push(format!(
                    "{absent} DCS points absent from, {unitless} levels without unit m in {}'s catalogue",
                    g.id
                ));
            }
        }
        Ok(missing)
    }

    /// For every gateway: whether central holds its heartbeat counter without a gap from the first
    /// value it has to the last (the heartbeat counts up by one per second per agent run).
    pub fn heartbeat_gaps(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for g in &self.layout.gateways {
            let (status, body) =
                self.get(&format!("/api/v1/raw?point={}/gateway.heartbeat&from=0&to={}&limit=100000", g.id, i64::MAX))?;
            if status != 200 {
                problems.push(format!("{}: heartbeat query answered {status}", g.id));
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let values: Vec<i64> = v["samples"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s["value"].as_i64()).collect())
                .unwrap_or_default();
            if values.len() < 10 {
                problems.push(format!("{}: only {} heartbeat samples", g.id, values.len()));
            } else if let Some(w) = values.windows(2).find(|w| w[1] != w[0] + 1) {
                problems.push(format!("{}: heartbeat jumps from {} to {}", g.id, w[0], w[1]));
            }
        }
        Ok(problems)
    }
}

/// Whether the alarm list holds an alarm of `source` (point, gateway or `gateway/device`) with `condition`.
fn alarm_present(items: &[serde_json::Value], source: &str, condition: &str) -> bool {
    items.iter().any(|a| {
        let key = &a["key"];
        let src = &key["source"];
        let name =
            src["Point"].as_str().map(str::to_owned).or_else(|| src["Gateway"].as_str().map(str::to_owned)).or_else(
                || {
                    src["Device"]
                        .as_array()
                        .map(|d| format!("{}/{}", d[0].as_str().unwrap_or(""), d[1].as_str().unwrap_or("")))
                },
            );
        name.as_deref() == Some(source) && key["condition"] == condition
    })
}

impl Drop for Park {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The technician's trust step for a gateway's DCS: once the server has made its certificate, the
/// certificate (handed over by the DCS's administrator) goes into the gateway's OPC UA trust list
/// with `vigil-edge opcua trust`; without it the gateway refuses the secured session.
async fn trust_dcs(gateway: &str, dcs: &DcsRun) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    // The simulator listens first and writes its certificate as its server starts.
    while !dcs.server_certificate.is_file() {
        if Instant::now() > deadline {
            bail!(
                "the DCS of {gateway} made no certificate at {} within 30 s (logs/{gateway}-dcs.log)",
                dcs.server_certificate.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_port(dcs.endpoint, Duration::from_secs(30))
        .await
        .with_context(|| format!("the DCS of {gateway} does not listen (logs/{gateway}-dcs.log)"))?;
    let args = ["opcua", "trust", "--pki-dir", path_str(&dcs.pki_dir)?, "--cert", path_str(&dcs.server_certificate)?];
    // A certificate file caught while being written does not parse: try again shortly.
    let mut attempt = 0;
    let trusted = loop {
        match run_to_end("vigil-edge", &args) {
            Ok(out) => break out,
            Err(_) if attempt < 5 => attempt += 1,
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("trusted the DCS server certificate of {gateway}: {}", trusted.trim());
    Ok(())
}

/// Writes gateway `g`'s configuration as its technician does after `vigil-edge enroll`: the
/// enrolled `[gateway]` and `[uplink]` (identity, key and certificate files, broker, central's
/// key) with the demo's uplink tuning, followed by the gateway's own sections.
fn write_gateway_config(g: &GatewayRun, snippet: &Path) -> Result<()> {
    let text = std::fs::read_to_string(snippet).with_context(|| format!("reading {}", snippet.display()))?;
    let mut enrolled: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", snippet.display()))?;
    let uplink = enrolled
        .get_mut("uplink")
        .and_then(toml::Value::as_table_mut)
        .with_context(|| format!("{} has no [uplink]", snippet.display()))?;
    // A short keep-alive and resend, so the scheduled outage is noticed and back-filled quickly.
    uplink.insert("keepalive_s".into(), toml::Value::Integer(5));
    uplink.insert("resend_after_s".into(), toml::Value::Integer(5));
    if g.outage.is_some() {
        // This gateway reaches the broker through the fault proxy that cuts its link.
        uplink.insert("port".into(), toml::Value::Integer(i64::from(g.uplink_port)));
    }
    let enrolled = toml::to_string(&enrolled).context("writing the enrolled settings")?;
    write(
        &g.config,
        &format!(
            "# Generated by vigil-demo: [gateway] and [uplink] as `vigil-edge enroll` wrote them into\n\
             # {}, the rest from configs/demo/park.toml.\n{enrolled}{}",
            snippet.display(),
            g.local_config
        ),
    )
}

async fn wait_for_port(addr: std::net::SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("nothing listens on {addr} after {limit:?}")
}
