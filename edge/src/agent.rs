//! The running agent: opens the key and the spool, starts the batcher, the sources, local
//! annunciation, the watchdog supervisor and the uplink, and stops them in order (sources first, then
//! the batcher seals what is left, then the uplink says goodbye, then the watchdog is disabled).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::{Notify, mpsc, watch};
use vigil_common::{ClockQuality, Event, EventKind, TimeSource};
use vigil_hw::{CdevIo, DigitalIo, LinuxWatchdog, Supervisor, Watchdog};

use crate::config::Plant;
use crate::config_push::ConfigPush;
use crate::site::{Annunciator, SharedIo};
use crate::spool::{Batcher, BatcherConfig, OpenOutcome, SledSpool, UrgentPoints, now_ms};
use crate::uplink::Uplink;

/// Capacity of the channels between the sources, the annunciator and the batcher.
const RECORD_CHANNEL: usize = 50_000;
/// A supervised loop silent for longer than this stops the watchdog kicks.
const MAX_LOOP_SILENCE: Duration = Duration::from_secs(30);

/// The gateway hardware handed to the agent: opened from the configuration in the field, memory
/// lines and a memory watchdog in tests.
#[derive(Default)]
pub struct Hardware {
    /// Digital lines, if any are configured.
    pub io: Option<Box<dyn DigitalIo>>,
    /// The watchdog, if one is configured.
    pub watchdog: Option<Box<dyn Watchdog>>,
}

impl Hardware {
    /// Opens the lines and watchdog the `[hardware]` section names.
    pub fn open(config: &crate::site::HardwareConfig) -> Result<Hardware> {
        let io: Option<Box<dyn DigitalIo>> = if config.inputs.is_empty() && config.outputs.is_empty() {
            None
        } else {
            Some(Box::new(CdevIo::open(&config.inputs, &config.outputs).context("opening GPIO lines")?))
        };
        let watchdog: Option<Box<dyn Watchdog>> = match &config.watchdog {
            Some(path) => Some(Box::new(LinuxWatchdog::open(path).context("opening the watchdog")?)),
            None => None,
        };
        Ok(Hardware { io, watchdog })
    }
}

/// How a run of the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `stop` turned true.
    Stopped,
    /// A pushed configuration was installed or rolled back: load the file again and run on it.
    Restart,
}

/// Runs the agent on a validated configuration until `stop` turns true or a pushed configuration
/// asks for a restart.
pub async fn run(plant: Arc<Plant>, stop: watch::Receiver<bool>) -> Result<Exit> {
    let hardware = Hardware::open(&plant.config.hardware)?;
    run_with(plant, stop, hardware).await
}

/// Runs the agent with the given hardware until `stop` turns true or a restart is asked for.
pub async fn run_with(plant: Arc<Plant>, stop: watch::Receiver<bool>, hardware: Hardware) -> Result<Exit> {
    let config = &plant.config;
    let pushes = Arc::new(ConfigPush::open(&plant.installed, &plant.file).context("configuration push status")?);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let stopper = tokio::spawn({
        let restart = pushes.restart_requested();
        async move {
            until_stop_or_restart(stop, restart).await;
            let _ = shutdown_tx.send(true);
        }
    });
    let key = vigil_common::keyfile::load(&config.gateway.key_file).context("gateway signing key")?;
    let (spool, outcome) =
        SledSpool::open(&config.spool.path, config.spool.budget_bytes).context("opening the spool")?;
    let spool = Arc::new(Mutex::new(spool));
    let online = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(Notify::new());
    let mut supervisor = Supervisor::new();

    let batcher_config = BatcherConfig {
        gateway: config.gateway.id.clone(),
        max_age: Duration::from_millis(config.spool.batch_max_age_ms.max(10)),
        max_samples: config.spool.batch_max_samples.max(1),
        urgent: UrgentPoints::new(&config.spool.urgent_points),
    };
    let mut batcher = Batcher::new(batcher_config, key.clone(), spool.clone(), online.clone(), stored.clone());
    batcher.set_heartbeat(supervisor.register("batcher", MAX_LOOP_SILENCE));
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
        Some(up) => {
            let mut u = Uplink::new(
                up,
                &config.gateway.enterprise,
                &config.gateway.id,
                key,
                spool.clone(),
                online.clone(),
                stored.clone(),
            )
            .context("uplink configuration")?;
            u.set_heartbeat(supervisor.register("uplink", MAX_LOOP_SILENCE));
            u.set_config_push(pushes.clone(), plant.clone());
            u.set_catalogue(crate::catalogue::of(&plant, pushes.report().sha256, now_ms()));
            Some(u)
        }
        None => None,
    };

    // Sources -> (annunciator) -> batcher.
    let (batch_tx, batch_rx) = mpsc::channel(RECORD_CHANNEL);
    let acquisition_metrics = Arc::new(crate::sources::Metrics::default());
    // The status page sees every record on its way to the batcher through a pass-through tap.
    let (batch_tx, status_tasks) = match &config.status {
        Some(status) => {
            let stats_of = spool.clone();
            let handles = crate::status::Handles {
                spool: Box::new(move || {
                    crate::spool::Spool::stats(&*stats_of.lock().unwrap_or_else(|p| p.into_inner()))
                }),
                online: online.clone(),
                uplink: uplink.as_ref().map(|u| u.metrics()),
                batcher: batcher.metrics(),
                acquisition: acquisition_metrics.clone(),
                config: Box::new({
                    let pushes = pushes.clone();
                    move || pushes.describe()
                }),
                config_pushes: Box::new({
                    let pushes = pushes.clone();
                    move || pushes.metrics()
                }),
            };
            let board = Arc::new(crate::status::Board::new(&plant, status.events, handles));
            let (tap_tx, tap_rx) = mpsc::channel(RECORD_CHANNEL);
            let tasks = [
                tokio::spawn(crate::status::tap(board.clone(), tap_rx, batch_tx)),
                tokio::spawn(crate::status::serve(status.clone(), board, shutdown.clone())),
            ];
            (tap_tx, Some(tasks))
        }
        None => (batch_tx, None),
    };
    // The launcher judges an update on trial by this file (nothing is written without a launcher).
    let health_task = tokio::spawn(crate::update::health::report(online.clone(), batcher.metrics(), shutdown.clone()));
    let batcher_task = tokio::spawn(batcher.run(batch_rx));
    let io: Option<SharedIo> = hardware.io.map(|io| Arc::new(Mutex::new(io)));
    let (tx, annunciator_task) = match (&io, config.local_alarm.is_empty()) {
        (Some(io), false) => {
            let (tx, rx) = mpsc::channel(RECORD_CHANNEL);
            let annunciator = Annunciator::new(config.local_alarm.clone(), io.clone());
            (tx, Some(tokio::spawn(annunciator.run(rx, batch_tx, shutdown.clone()))))
        }
        _ => (batch_tx, None),
    };
    let mut source_tasks = vec![tokio::spawn(crate::sources::system::run(
        config.system.clone(),
        spool.clone(),
        tx.clone(),
        shutdown.clone(),
    ))];
    if let Some(io) = &io
        && !config.hardware.inputs.is_empty()
    {
        let names = config.hardware.inputs.iter().map(|l| l.name.clone()).collect();
        source_tasks.push(tokio::spawn(crate::sources::digital::run(
            io.clone(),
            names,
            Duration::from_millis(config.hardware.debounce_ms),
            Duration::from_millis(config.hardware.poll_ms),
            tx.clone(),
            shutdown.clone(),
        )));
    }
    let camera_task = (!plant.cameras.is_empty() || config.cameras.listen.is_some()).then(|| {
        let hub = crate::sources::camera::Hub::new(
            config.cameras.clone(),
            plant.cameras.clone(),
            Arc::default(),
            crate::sources::clock_of(&plant),
            tx.clone(),
        );
        tokio::spawn(crate::sources::camera::run(Arc::new(hub), shutdown.clone()))
    });
    let metrics = acquisition_metrics;
    let acquisition_task = (!plant.devices.is_empty())
        .then(|| tokio::spawn(crate::sources::run_acquisition(plant.clone(), tx.clone(), shutdown.clone(), metrics)));
    drop(tx);
    let uplink_task = uplink.map(|u| tokio::spawn(u.run(shutdown.clone())));
    let trial_task = config.uplink.as_ref().map(|up| {
        let window = Duration::from_secs(up.config_trial_s);
        tokio::spawn(pushes.clone().watch_trial(online.clone(), window, shutdown.clone()))
    });
    let watchdog_task = hardware.watchdog.map(|wd| tokio::spawn(supervise(supervisor, wd, shutdown.clone())));
    tracing::info!(gateway = %config.gateway.id, "agent running");

    let mut shutdown_wait = shutdown.clone();
    while !*shutdown_wait.borrow() {
        if shutdown_wait.changed().await.is_err() {
            break;
        }
    }
    for t in source_tasks {
        let _ = t.await;
    }
    if let Some(t) = camera_task {
        match t.await {
            Ok(Err(e)) => tracing::error!(error = %e, "cameras ended with an error"),
            Err(e) => tracing::error!(error = %e, "camera task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(t) = acquisition_task {
        match t.await {
            Ok(Err(e)) => tracing::error!(error = %e, "acquisition ended with an error"),
            Err(e) => tracing::error!(error = %e, "acquisition task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(t) = annunciator_task {
        let _ = t.await;
    }
    let _ = batcher_task.await;
    let _ = health_task.await;
    for t in status_tasks.into_iter().flatten() {
        let _ = t.await;
    }
    if let Some(t) = uplink_task {
        let _ = t.await;
    }
    if let Some(t) = watchdog_task {
        let _ = t.await;
    }
    if let Some(t) = trial_task {
        let _ = t.await;
    }
    stopper.abort();
    if pushes.restarting() {
        tracing::info!("agent stopped to restart on another configuration");
        return Ok(Exit::Restart);
    }
    tracing::info!("agent stopped");
    Ok(Exit::Stopped)
}

/// Resolves once `stop` turns true (or its sender is gone) or a restart is requested.
async fn until_stop_or_restart(mut stop: watch::Receiver<bool>, mut restart: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() || *restart.borrow() {
            return;
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() { return },
            r = restart.changed() => if r.is_err() { return },
        }
    }
}

/// Kicks the watchdog every second while every supervised loop beats; disables it on shutdown.
async fn supervise(supervisor: Supervisor, mut watchdog: Box<dyn Watchdog>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = supervisor.check(watchdog.as_mut()) {
                    tracing::error!(error = %e, "watchdog kick failed");
                }
            }
            _ = shutdown.changed() => if *shutdown.borrow() { break },
        }
    }
    if let Err(e) = watchdog.disable() {
        tracing::error!(error = %e, "could not disable the watchdog; the box may reboot");
    }
}
