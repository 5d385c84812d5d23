//! `vigil-spool`: what a gateway's spool holds, checked. Opens the spool directory (a copy, or one no
//! agent is running on), verifies every stored batch's signature against the gateway's public key,
//! decodes it, and prints per class the batches, samples and events, and the points seen, as JSON.
//! Exits non-zero if a batch fails to verify or decode, if fewer than `--min-batches` batches or
//! `--min-samples` samples are stored, or if an `--expect-point` is missing.
//!
//! `tools/cross-build.sh` uses it to prove that an ARM build of `vigil-edge`, run under qemu against
//! `vigil-sim`, read the simulator and spooled signed data that this (x86_64) side can open.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use vigil_common::{Batch, EventKind, GatewayId, Priority, PublicKey};
use vigil_edge::spool::{SledSpool, Spool};

/// Check and summarise a gateway spool.
#[derive(Parser)]
#[command(about = "Verify and summarise a vigil-edge spool")]
struct Cli {
    /// The spool directory (`[spool] path`).
    #[arg(long)]
    spool: PathBuf,
    /// The gateway id the batches must name.
    #[arg(long)]
    gateway: String,
    /// The gateway's public key (`vigil-edge pubkey`), `ed25519:<hex>`.
    #[arg(long)]
    pubkey: String,
    /// Fail with fewer stored batches than this.
    #[arg(long, default_value_t = 1)]
    min_batches: u64,
    /// Fail with fewer stored samples than this.
    #[arg(long, default_value_t = 0)]
    min_samples: u64,
    /// A point id that must have at least one sample (repeatable).
    #[arg(long)]
    expect_point: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let gateway = GatewayId::new(cli.gateway.clone()).context("--gateway")?;
    let key = PublicKey::from_text(&cli.pubkey).context("--pubkey")?;
    if !cli.spool.is_dir() {
        bail!("{}: no spool directory", cli.spool.display());
    }
    // The budget only matters for appends, which this never does.
    let (spool, _) = SledSpool::open(&cli.spool, u64::MAX / 2).context("opening the spool")?;
    let stats = spool.stats();
    let mut points = BTreeSet::new();
    let mut classes = Vec::new();
    let (mut batches, mut samples, mut events) = (0u64, 0u64, 0u64);
    let mut started = false;
    for class in Priority::ALL {
        let (mut b, mut s, mut e) = (0u64, 0u64, 0u64);
        let mut after = None;
        loop {
            let page = spool.pending(class, after, 256).context("reading the spool")?;
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            for stored in &page {
                let batch = Batch::open(&stored.sealed, &gateway, |_| Some(key.clone()))
                    .with_context(|| format!("batch seq {} ({class:?}) does not verify or decode", stored.seq))?;
                if batch.seq != stored.seq || batch.class != class || batch.epoch != stats.epoch {
                    bail!(
                        "batch seq {} ({class:?}): stored under seq {}, class {:?}, epoch {} (spool epoch {})",
                        batch.seq,
                        stored.seq,
                        batch.class,
                        batch.epoch,
                        stats.epoch
                    );
                }
                b += 1;
                e += batch.events.len() as u64;
                started |= batch.events.iter().any(|ev| matches!(ev.kind, EventKind::GatewayStarted { .. }));
                for series in &batch.series {
                    s += series.samples.len() as u64;
                    if !series.samples.is_empty() {
                        points.insert(series.point.to_string());
                    }
                }
            }
        }
        classes.push(serde_json::json!({ "class": format!("{class:?}"), "batches": b, "samples": s, "events": e }));
        batches += b;
        samples += s;
        events += e;
    }
    let missing: Vec<&String> = cli.expect_point.iter().filter(|p| !points.contains(p.as_str())).collect();
    let report = serde_json::json!({
        "spool": cli.spool.display().to_string(),
        "epoch": stats.epoch,
        "next_seq": stats.next_seq,
        "batches": batches,
        "samples": samples,
        "events": events,
        "gateway_started_event": started,
        "points": points.len(),
        "classes": classes,
        "all_signatures_verified": true,
    });
    println!("{}", serde_json::to_string_pretty(&report).context("encoding the report")?);
    if batches < cli.min_batches {
        bail!("{batches} batch(es) stored, expected at least {}", cli.min_batches);
    }
    if samples < cli.min_samples {
        bail!("{samples} sample(s) stored, expected at least {}", cli.min_samples);
    }
    if !missing.is_empty() {
        bail!("no samples of {missing:?} in the spool");
    }
    Ok(())
}
