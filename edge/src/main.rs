//! `vigil-edge`: the gateway agent. Acquisition, spool and uplink arrive with their issues; today the
//! binary provisions the gateway's identity.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Vigil gateway agent.
#[derive(Parser)]
#[command(version, about = "Vigil gateway agent (acquisition and uplink are not built yet; see README)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
