//! `vigil-sim`: simulated field devices for Vigil.
//!
//! - `vigil-sim modbus --config GATEWAY.toml [--fault DEVICE=FAULT]...`: serves every device of a
//!   gateway configuration, driven by the same profile files: TCP devices on their host:port, each
//!   RS485 bus on a pseudo-terminal linked at the bus's configured path.
//! - `vigil-sim levelling --link PATH --sensors N [--failing UNIT] [--speed X]`: N static-levelling
//!   sensors (units 1..=N, unit 1 the base) on one RTU bus, with slow settlement trends and one
//!   sensor that does not answer.

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
        let mut unit =
            Unit::new(points_of(&plant, i, i as u64 * 7919).map_err(|e| anyhow::anyhow!("device {}: {e}", d.name))?);
        unit.fault = fault_of.get(&d.name).copied().unwrap_or_default();
        let sim = match &d.transport {
            Transport::Tcp { host, port } => tcp_sims.entry((bind.unwrap_or(host).to_string(), *port)).or_default(),
            Transport::Rtu { bus } => bus_sims.entry(*bus).or_default(),
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
