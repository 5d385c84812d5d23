//! `vigil-sim`: simulated field devices for Vigil.
//!
//! - `vigil-sim modbus --config GATEWAY.toml [--fault DEVICE=FAULT]...`: serves every device of a
//!   gateway configuration, driven by the same profile files: TCP devices on their host:port, each
//!   RS485 bus on a pseudo-terminal linked at the bus's configured path.
//! - `vigil-sim levelling --link PATH --sensors N [--failing UNIT] [--speed X]`: N static-levelling
//!   sensors (units 1..=N, unit 1 the base) on one RTU bus, with slow settlement trends and one
//!   sensor that does not answer.
//! - `vigil-sim camera --push http://GATEWAY:PORT --secret S [--listen ADDR] [--interval-ms MS]
//!   [--count N] [--snapshot-bytes N] [--reboot-every-s S --reboot-down-s S] [--malformed-every N]`:
//!   a gas-leak camera that pushes detections (alternating start/stop) with JPEG snapshots and
//!   serves the same detections over ONVIF PullPoint (see `vigil_tools::sim::camera`).
//! - `vigil-sim opcua [--listen ADDR] [--pki-dir DIR] [--tanks N] [--detectors N] [--update-ms MS]
//!   [--restart-every-s S | --stall-every-s S] [--fault-s S]`: an OPC UA server with tanks and gas
//!   detectors, security None and Basic256Sha256 (Sign, SignAndEncrypt), anonymous or
//!   operator/operator-pass, and optional periodic restarts or stalls (see `vigil_tools::sim::opcua`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::sync::watch;
use vigil_edge::config::{self, Transport};
use vigil_tools::sim::{Fault, Sim, Unit, levelling_unit, points_of, rtu::RtuBus, tcp};

#[derive(Parser)]
#[command(version, about = "Simulated Modbus devices and levelling buses for Vigil")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate every Modbus device of a gateway configuration.
    Modbus {
        /// The gateway configuration (the same file `vigil-edge` reads).
        #[arg(long)]
        config: PathBuf,
        /// Inject a fault: DEVICE=none|noanswer|slow:MS|exception:CODE|garbage|drop (repeatable).
        #[arg(long)]
        fault: Vec<String>,
        /// Listen on this address instead of each device's configured host.
        #[arg(long)]
        bind: Option<String>,
    },
    /// Simulate a static-levelling bus.
    Levelling {
        /// Where to link the bus's pseudo-terminal (what the gateway config names as the bus path).
        #[arg(long)]
        link: PathBuf,
        /// Number of sensors (units 1..=N; unit 1 is the base point).
        #[arg(long, default_value_t = 8)]
        sensors: u8,
        /// The unit that fails (never answers); 0 for none.
        #[arg(long, default_value_t = 0)]
        failing: u8,
        /// Simulated days per real day (e.g. 86400 = one day per second).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
    /// Simulate a gas-leak camera (HTTP push, snapshots, ONVIF PullPoint).
    Camera(CameraArgs),
    /// Simulate an OPC UA server with a plant address space.
    Opcua(OpcuaArgs),
}

#[derive(clap::Args)]
struct OpcuaArgs {
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:4840")]
    listen: std::net::SocketAddr,
    /// The server's PKI directory (its certificate is created in own/ on first start).
    #[arg(long, default_value = "opcua-sim-pki")]
    pki_dir: PathBuf,
    /// Tanks (Level, Temperature, Pressure each).
    #[arg(long, default_value_t = 10)]
    tanks: usize,
    /// Gas detectors (Concentration, Alarm each).
    #[arg(long, default_value_t = 5)]
    detectors: usize,
    /// How often values change, ms.
    #[arg(long, default_value_t = 1000)]
    update_ms: u64,
    /// Restart the server every this many seconds (sessions and subscriptions are lost).
    #[arg(long, conflicts_with = "stall_every_s")]
    restart_every_s: Option<u64>,
    /// Stall (connections open, no bytes) every this many seconds.
    #[arg(long)]
    stall_every_s: Option<u64>,
    /// How long a restart or stall lasts, s.
    #[arg(long, default_value_t = 5)]
    fault_s: u64,
}

#[derive(clap::Args)]
struct CameraArgs {
    /// The camera's name at the gateway (`[[cameras.camera]] name`).
    #[arg(long, default_value = "cam-1")]
    name: String,
    /// Where to serve snapshots, `/health` and ONVIF (`/onvif/device_service`, `/onvif/event_service`).
    #[arg(long, default_value = "127.0.0.1:8554")]
    listen: std::net::SocketAddr,
    /// The gateway's push endpoint base URL, e.g. `http://127.0.0.1:8088`; ONVIF only when absent.
    #[arg(long)]
    push: Option<String>,
    /// Shared secret sent in `--secret-header`.
    #[arg(long)]
    secret: Option<String>,
    /// Header carrying the secret.
    #[arg(long, default_value = "X-Camera-Secret")]
    secret_header: String,
    /// Basic-auth credentials `user:password` instead of a secret.
    #[arg(long)]
    basic: Option<String>,
    /// ONVIF user the UsernameToken must name.
    #[arg(long, default_value = "admin")]
    onvif_user: String,
    /// ONVIF password.
    #[arg(long, default_value = "onvif-pass")]
    onvif_password: String,
    /// Time between detections (they alternate start, stop), ms.
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// Detections to make; 0 for no end.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Size of each JPEG snapshot, bytes.
    #[arg(long, default_value_t = 50_000)]
    snapshot_bytes: usize,
    /// Reboot every this many seconds (drop subscriptions, refuse everything for --reboot-down-s).
    #[arg(long)]
    reboot_every_s: Option<u64>,
    /// How long a reboot refuses requests, s.
    #[arg(long, default_value_t = 10)]
    reboot_down_s: u64,
    /// Every Nth push is malformed JSON and every Nth detection also makes one PullMessages answer malformed XML; 0 for never.
    #[arg(long, default_value_t = 0)]
    malformed_every: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let (stop_tx, stop) = watch::channel(false);
    let _guards = match Cli::parse().command {
        Command::Modbus { config, fault, bind } => modbus(&config, &fault, bind.as_deref(), stop).await?,
        Command::Levelling { link, sensors, failing, speed } => levelling(&link, sensors, failing, speed)?,
        Command::Camera(args) => camera(args).await?,
        Command::Opcua(args) => opcua(args).await?,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    let _ = stop_tx.send(true);
    Ok(())
}

async fn opcua(a: OpcuaArgs) -> Result<Guards> {
    use std::time::Duration;
    use vigil_tools::sim::opcua::{Layout, NAMESPACE_URI, OpcuaSim, SimConfig, USER};
    if a.tanks + a.detectors == 0 || a.tanks.saturating_mul(3).saturating_add(a.detectors.saturating_mul(2)) > 200_000 {
        bail!("--tanks/--detectors: between 1 and 200000 variables in all");
    }
    let config = SimConfig {
        listen: a.listen,
        pki_dir: a.pki_dir.clone(),
        layout: Layout::plant(a.tanks, a.detectors),
        update: Duration::from_millis(a.update_ms.clamp(10, 3_600_000)),
    };
    let vars = config.layout.len();
    let fault = Duration::from_secs(a.fault_s.max(1));
    let (every, restart) = match (a.restart_every_s, a.stall_every_s) {
        (Some(s), _) => (Some(s), true),
        (None, Some(s)) => (Some(s), false),
        (None, None) => (None, false),
    };
    // The OPC UA server's futures are not Send, so the simulator gets a thread and runtime of its own.
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(String, PathBuf)>>();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(anyhow::anyhow!("starting the simulator runtime: {e}")));
                return;
            }
        };
        rt.block_on(async move {
            let sim = match OpcuaSim::start(config).await {
                Ok(sim) => sim,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok((sim.endpoint(), sim.certificate())));
            let Some(every) = every else {
                // Nothing to inject: keep the simulator alive until the process ends.
                std::future::pending::<()>().await;
                return;
            };
            loop {
                tokio::time::sleep(Duration::from_secs(every.max(1))).await;
                if restart {
                    eprintln!("opcua: restarting for {} s", fault.as_secs());
                    if let Err(e) = sim.restart(fault).await {
                        eprintln!("opcua: restart failed: {e:#}");
                    }
                } else {
                    eprintln!("opcua: stalling for {} s", fault.as_secs());
                    sim.stall();
                    tokio::time::sleep(fault).await;
                    sim.resume();
                }
            }
        });
    });
    let (endpoint, certificate) = rx.await.context("the simulator thread ended")??;
    eprintln!(
        "opcua {endpoint}: {vars} variables in {NAMESPACE_URI} (e.g. nsu={NAMESPACE_URI};s=Tank101.Level), \
         certificate {}, user {}/{}",
        certificate.display(),
        USER.0,
        USER.1
    );
    Ok(Guards { _buses: Vec::new(), links: Vec::new() })
}

/// What must live while the simulator runs.
struct Guards {
    _buses: Vec<RtuBus>,
    links: Vec<PathBuf>,
}

impl Drop for Guards {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = std::fs::remove_file(l);
        }
    }
}

fn link_pty(pty: &Path, link: &Path) -> Result<()> {
    if let Ok(meta) = std::fs::symlink_metadata(link) {
        if !meta.file_type().is_symlink() {
            bail!("{} exists and is not a symlink; not replacing it", link.display());
        }
        std::fs::remove_file(link).with_context(|| format!("removing the old link {}", link.display()))?;
    }
    std::os::unix::fs::symlink(pty, link)
        .with_context(|| format!("linking {} -> {}", link.display(), pty.display()))?;
    eprintln!("bus {} -> {}", link.display(), pty.display());
    Ok(())
}

async fn modbus(path: &Path, faults: &[String], bind: Option<&str>, stop: watch::Receiver<bool>) -> Result<Guards> {
    let plant = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut fault_of = BTreeMap::new();
    for f in faults {
        let (dev, kind) = f.split_once('=').with_context(|| format!("--fault {f:?}: expected DEVICE=FAULT"))?;
        let fault: Fault = kind.parse().map_err(|e: String| anyhow::anyhow!("--fault {f:?}: {e}"))?;
        if !plant.devices.iter().any(|d| d.name == dev) {
            bail!("--fault {f:?}: no device {dev:?} in {}", path.display());
        }
        fault_of.insert(dev.to_string(), fault);
    }
    let mut tcp_sims: BTreeMap<(String, u16), Sim> = BTreeMap::new();
    let mut bus_sims: BTreeMap<usize, Sim> = BTreeMap::new();
    for (i, d) in plant.devices.iter().enumerate() {
        if matches!(d.transport, Transport::Opcua { .. }) {
            // OPC UA servers are simulated by `vigil-sim opcua`.
            continue;
        }
        let mut unit =
            Unit::new(points_of(&plant, i, i as u64 * 7919).map_err(|e| anyhow::anyhow!("device {}: {e}", d.name))?);
        unit.fault = fault_of.get(&d.name).copied().unwrap_or_default();
        let sim = match &d.transport {
            Transport::Tcp { host, port } => tcp_sims.entry((bind.unwrap_or(host).to_string(), *port)).or_default(),
            Transport::Rtu { bus } => bus_sims.entry(*bus).or_default(),
            Transport::Opcua { .. } => continue,
        };
        sim.add_unit(d.unit, unit);
    }
    for ((host, port), sim) in tcp_sims {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| format!("listening on {host}:{port}"))?;
        eprintln!("tcp {host}:{port}: units {:?}", sim.units().keys().collect::<Vec<_>>());
        tokio::spawn(tcp::serve(listener, sim, stop.clone()));
    }
    let mut guards = Guards { _buses: Vec::new(), links: Vec::new() };
    for (bus, sim) in bus_sims {
        let b = RtuBus::spawn(sim).context("opening a pseudo-terminal")?;
        link_pty(&b.path, &plant.buses[bus].path)?;
        guards.links.push(plant.buses[bus].path.clone());
        guards._buses.push(b);
    }
    Ok(guards)
}

fn levelling(link: &Path, sensors: u8, failing: u8, speed: f64) -> Result<Guards> {
    if sensors == 0 || sensors > 247 {
        bail!("--sensors must be 1..=247");
    }
    if !(speed.is_finite() && speed > 0.0) {
        bail!("--speed must be a positive number");
    }
    let sim = Sim::new();
    for u in 1..=sensors {
        let mut unit = levelling_unit(u, speed).map_err(|e| anyhow::anyhow!(e))?;
        if u == failing {
            unit.fault = Fault::NoAnswer;
        }
        sim.add_unit(u, unit);
    }
    let bus = RtuBus::spawn(sim).context("opening a pseudo-terminal")?;
    link_pty(&bus.path, link)?;
    eprintln!("{sensors} levelling sensors (unit 1 = base), unit {failing} failing, speed x{speed}");
    Ok(Guards { _buses: vec![bus], links: vec![link.to_path_buf()] })
}

async fn camera(a: CameraArgs) -> Result<Guards> {
    use vigil_tools::sim::camera::{CameraSim, CameraSimConfig, PushCreds};
    let creds = match (&a.secret, &a.basic) {
        (Some(_), Some(_)) => bail!("--secret and --basic exclude each other"),
        (Some(s), None) => PushCreds::Secret { header: a.secret_header.clone(), secret: s.clone() },
        (None, Some(b)) => {
            let (user, password) = b.split_once(':').context("--basic must be user:password")?;
            PushCreds::Basic { user: user.to_owned(), password: password.to_owned() }
        }
        (None, None) => PushCreds::None,
    };
    let sim = CameraSim::start(CameraSimConfig {
        name: a.name.clone(),
        listen: a.listen,
        push_to: a.push.clone(),
        creds: creds.clone(),
        onvif_user: a.onvif_user.clone(),
        onvif_password: a.onvif_password.clone(),
        snapshot_bytes: a.snapshot_bytes,
        ..CameraSimConfig::default()
    })
    .await?;
    eprintln!(
        "camera {}: serving on http://{} (ONVIF /onvif/event_service, snapshots /snapshots/N.jpg){}",
        a.name,
        sim.addr(),
        a.push.as_deref().map(|p| format!(", pushing to {p}")).unwrap_or_default()
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(a.interval_ms.max(10)));
        let mut last_reboot = std::time::Instant::now();
        let mut n = 0u64;
        loop {
            tick.tick().await;
            if a.count > 0 && n >= a.count {
                continue;
            }
            n += 1;
            if let Some(every) = a.reboot_every_s
                && last_reboot.elapsed() >= std::time::Duration::from_secs(every)
            {
                eprintln!("camera: rebooting ({} s down)", a.reboot_down_s);
                sim.reboot(std::time::Duration::from_secs(a.reboot_down_s));
                last_reboot = std::time::Instant::now();
            }
            let malformed = a.malformed_every > 0 && n.is_multiple_of(a.malformed_every);
            if malformed {
                sim.malformed_pulls(1);
            }
            let d = sim.detect(!n.is_multiple_of(2));
            if a.push.is_none() {
                eprintln!("detection {} ({})", d.n, if d.start { "start" } else { "stop" });
                continue;
            }
            let body = if malformed { b"{\"event\": {\"state\": \"start\", ".to_vec() } else { sim.push_body(&d) };
            match sim.push_raw(body, &creds).await {
                Ok(status) => eprintln!(
                    "detection {} ({}{}): gateway answered {status}",
                    d.n,
                    if d.start { "start" } else { "stop" },
                    if malformed { ", malformed" } else { "" }
                ),
                Err(e) => eprintln!("detection {}: push failed: {e:#}", d.n),
            }
        }
    });
    Ok(Guards { _buses: Vec::new(), links: Vec::new() })
}
