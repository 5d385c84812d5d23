//! `vigil-edge`: the gateway agent (`run`) and the technician's tools.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Vigil gateway agent.
#[derive(Parser)]
#[command(version, about = "Vigil gateway agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: sources, spool and uplink, until SIGINT or SIGTERM.
    Run {
        /// The gateway configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Generate this gateway's signing key (mode 0600) and print the public key to register at central.
    Keygen {
        /// Where to write the key; an existing file is never replaced.
        #[arg(long, default_value = "gateway.key")]
        out: PathBuf,
    },
    /// Print the public key of an existing key file.
    Pubkey {
        /// The key file.
        #[arg(long, default_value = "gateway.key")]
        key: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run { config } => run(&config)?,
        Command::Keygen { out } => {
            let key = vigil_common::keyfile::create(&out).context("creating the gateway key")?;
            println!("{}", key.public_key().to_text());
            eprintln!("wrote {} (owner-only); register the public key above at central", out.display());
        }
        Command::Pubkey { key } => {
            let key = vigil_common::keyfile::load(&key).context("reading the gateway key")?;
            println!("{}", key.public_key().to_text());
        }
    }
    Ok(())
}

fn run(path: &std::path::Path) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = vigil_edge::config::Config::load(path)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    runtime.block_on(async {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
        let mut agent = tokio::spawn(vigil_edge::agent::run(config, shutdown));
        tokio::select! {
            finished = &mut agent => return finished.context("agent task")?,
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        let _ = stop.send(true);
        agent.await.context("agent task")?
    })
}
