//! The running agent: opens the key and the spool, starts the batcher, the sources and the uplink,
//! and stops them in order (sources first, then the batcher seals what is left, then the uplink).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{Notify, mpsc, watch};
use vigil_common::{ClockQuality, Event, EventKind, TimeSource};

use crate::config::Plant;
use crate::spool::{Batcher, BatcherConfig, OpenOutcome, SledSpool, now_ms};
use crate::uplink::Uplink;

/// Capacity of the channel from the sources to the batcher.
const RECORD_CHANNEL: usize = 50_000;

/// Runs the agent on a validated configuration until `shutdown` turns true.
pub async fn run(plant: Arc<Plant>, shutdown: watch::Receiver<bool>) -> Result<()> {
    let config = &plant.config;
    let key = vigil_common::keyfile::load(&config.gateway.key_file).context("gateway signing key")?;
    let (spool, outcome) =
        SledSpool::open(&config.spool.path, config.spool.budget_bytes).context("opening the spool")?;
    let spool = Arc::new(Mutex::new(spool));
    let online = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(Notify::new());

    let batcher_config = BatcherConfig {
        gateway: config.gateway.id.clone(),
        max_age: Duration::from_millis(config.spool.batch_max_age_ms.max(10)),
        max_samples: config.spool.batch_max_samples.max(1),
    };
    let mut batcher = Batcher::new(batcher_config, key.clone(), spool.clone(), online.clone(), stored.clone());
    let clock = ClockQuality { synchronised: false, source: TimeSource::Gateway };
    batcher.push_event(Event {
        ts_ms: now_ms(),
        clock,
        kind: EventKind::GatewayStarted { version: env!("CARGO_PKG_VERSION").to_owned(), reason: "start".to_owned() },
    });
    if let OpenOutcome::Recovered { old_epoch, reason, quarantined_to } = outcome {
        batcher.push_event(Event {
            ts_ms: now_ms(),
            clock,
            kind: EventKind::SpoolLost { old_epoch, reason, quarantined_to: quarantined_to.display().to_string() },
        });
    }

    let uplink = match config.uplink.clone() {
        Some(up) => Some(
            Uplink::new(
                up,
                &config.gateway.enterprise,
                &config.gateway.id,
                key,
                spool.clone(),
                online.clone(),
                stored.clone(),
            )
            .context("uplink configuration")?,
        ),
        None => None,
    };

    let (tx, rx) = mpsc::channel(RECORD_CHANNEL);
    let batcher_task = tokio::spawn(batcher.run(rx));
    let system_task =
        tokio::spawn(crate::sources::system::run(config.system.clone(), spool.clone(), tx.clone(), shutdown.clone()));
    let metrics = Arc::new(crate::sources::Metrics::default());
    let acquisition_task = (!plant.devices.is_empty())
        .then(|| tokio::spawn(crate::sources::run_acquisition(plant.clone(), tx.clone(), shutdown.clone(), metrics)));
    drop(tx);
    let uplink_task = uplink.map(|u| tokio::spawn(u.run(shutdown.clone())));
    tracing::info!(gateway = %config.gateway.id, "agent running");

    let mut shutdown_wait = shutdown.clone();
    while !*shutdown_wait.borrow() {
        if shutdown_wait.changed().await.is_err() {
            break;
        }
    }
    let _ = system_task.await;
    if let Some(t) = acquisition_task {
        match t.await {
            Ok(Err(e)) => tracing::error!(error = %e, "acquisition ended with an error"),
            Err(e) => tracing::error!(error = %e, "acquisition task failed"),
            Ok(Ok(())) => {}
        }
    }
    let _ = batcher_task.await;
    if let Some(t) = uplink_task {
        let _ = t.await;
    }
    tracing::info!("agent stopped");
    Ok(())
}
