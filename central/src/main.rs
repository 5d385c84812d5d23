//! `vigil-central`: the park aggregator. Ingest, storage, alarms and the API arrive with their issues; today
//! the binary provisions central's signing identity (it signs acks and commands to gateways).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Vigil central aggregator.
#[derive(Parser)]
#[command(version, about = "Vigil central aggregator (ingest, storage and UI are not built yet; see README)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate central's signing key (mode 0600) and print the public key gateways must trust.
    Keygen {
        /// Where to write the key; an existing file is never replaced.
        #[arg(long, default_value = "central.key")]
        out: PathBuf,
    },
    /// Print the public key of an existing key file.
    Pubkey {
        /// The key file.
        #[arg(long, default_value = "central.key")]
        key: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Keygen { out } => {
            let key = vigil_common::keyfile::create(&out).context("creating the central key")?;
            println!("{}", key.public_key().to_text());
            eprintln!("wrote {} (owner-only); configure gateways to trust the public key above", out.display());
        }
        Command::Pubkey { key } => {
            let key = vigil_common::keyfile::load(&key).context("reading the central key")?;
            println!("{}", key.public_key().to_text());
        }
    }
    Ok(())
}
