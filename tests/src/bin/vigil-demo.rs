//! `vigil-demo`: the demo park on one machine. Generates the park from `configs/demo/park.toml`
//! into a fresh run directory, starts central (embedded broker and storage), enrols every gateway
//! through central's API and `vigil-edge enroll`, starts the simulated plants (Modbus, a DCS over
//! OPC UA, cameras) and their gateways, drives the scenario, and serves the UI until Ctrl-C. With
//! `--check` it runs the scenario once headless and exits 0 only if every expected alarm was raised
//! (the DCS's among them), every camera alarm carries a snapshot central serves, the maintenance
//! window suppressed its device's alarm, every DCS point has a good sample at central, every
//! gateway's signed point catalogue describes what it runs (the DCS's points with their units), and
//! every gateway's heartbeat arrived without a gap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use vigil_tests::park::{self, Park, ParkSpec};

/// The demo park.
#[derive(Parser)]
#[command(about = "Vigil's demo park: central, simulated plants and their gateways on one machine")]
struct Cli {
    /// The park description.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo/park.toml"))]
    park: PathBuf,
    /// Run directory (generated configurations, keys, data, logs); replaced on every start.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/vigil-demo"))]
    dir: PathBuf,
    /// Address of the web UI and API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Run the scenario once without a UI and exit 0 only if everything expected happened.
    #[arg(long)]
    check: bool,
    /// How long `--check` waits for the scenario, in seconds.
    #[arg(long, default_value_t = 300)]
    check_timeout_s: u64,
    /// Only generate the park into --dir and enrol its gateways (central runs just for that; no
    /// simulator or agent starts), print each gateway configuration's path and exit
    /// (`tools/cross-build.sh` checks these configurations with the ARM builds).
    #[arg(long, conflicts_with = "check")]
    generate_only: bool,
}

/// Marks a directory this program created, so a rerun may replace it.
const MARKER: &str = ".vigil-demo";

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!("{} exists and was not made by vigil-demo; choose another --dir", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the previous run in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by vigil-demo; replaced on its next start\n")?;
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let spec = ParkSpec::load(&cli.park)?;
    // Headless runs take a free port, so they never collide with a demo serving the UI.
    let listen = if cli.check || cli.generate_only {
        SocketAddr::from(([127, 0, 0, 1], std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()))
    } else {
        cli.listen
    };
    if cli.generate_only {
        // vigil-central and vigil-edge are built only if absent.
        fresh_dir(&cli.dir)?;
        let layout = park::generate(&spec, &cli.dir, listen)?;
        let mut park = Park::start_central(layout).await?;
        let enrolled = park.enrol_gateways().await;
        park.stop();
        enrolled?;
        for g in &park.layout.gateways {
            println!("{}", g.config.display());
        }
        return Ok(());
    }
    vigil_tests::build_binaries()?;
    fresh_dir(&cli.dir)?;
    eprintln!(
        "generating the park ({} enterprises, {} gateways, {} field points) in {}",
        spec.enterprise.len(),
        spec.gateway.len(),
        spec.point_count(),
        cli.dir.display()
    );
    let layout = park::generate(&spec, &cli.dir, listen)?;
    let mut park = Park::start(layout).await?;
    eprintln!("park running; logs in {}", cli.dir.join("logs").display());
    eprintln!("web UI: http://{listen}/  (user admin, password {})", park.layout.admin_password);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = Duration::from_secs(cli.check_timeout_s);
    let outcome = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = tick.tick() => {}
        }
        park.drive();
        if let Some(exit) = park.exited() {
            break Err(anyhow::anyhow!("{exit}; see {}", cli.dir.join("logs").display()));
        }
        if cli.check && park.elapsed().as_secs() % 5 == 0 {
            match check_once(&park) {
                Ok(None) => {
                    eprintln!("check passed after {} s", park.elapsed().as_secs());
                    break Ok(());
                }
                Ok(Some(waiting)) if park.elapsed() > deadline => {
                    break Err(anyhow::anyhow!("check failed after {} s: {waiting}", park.elapsed().as_secs()));
                }
                Ok(Some(waiting)) => eprintln!("check: waiting for {waiting}"),
                Err(e) if park.elapsed() > deadline => break Err(e),
                Err(e) => eprintln!("check: {e:#}"),
            }
        }
    };
    eprintln!("stopping the park");
    park.stop();
    outcome
}

/// `None` when the scenario is complete, else what is still missing.
fn check_once(park: &Park) -> Result<Option<String>> {
    let missing = park.missing_alarms()?;
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|(s, c)| format!("{c} on {s}")).collect();
        return Ok(Some(format!("alarms {}", list.join(", "))));
    }
    let mut waiting = park.missing_evidence()?;
    waiting.extend(park.missing_suppressed()?);
    waiting.extend(park.missing_dcs_samples()?);
    waiting.extend(park.missing_catalogues()?);
    if !waiting.is_empty() {
        return Ok(Some(waiting.join(", ")));
    }
    if !park.outages_over() {
        return Ok(Some("the scheduled uplink outages to end and back-fill".into()));
    }
    let gaps = park.heartbeat_gaps()?;
    if !gaps.is_empty() {
        return Ok(Some(gaps.join("; ")));
    }
    Ok(None)
}
