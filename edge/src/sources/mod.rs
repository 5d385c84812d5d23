//! Protocol drivers, one module per protocol. Each turns a device's replies into [`crate::Record`]s
//! with honest quality.
//!
//! [`run_acquisition`] is the entry point of the agent: it starts one task per Modbus channel (a TCP
//! device, or an RS485 bus with all its units) and the pipeline task, and returns when shutdown is
//! requested or the record channel closes.

pub mod camera;
pub mod digital;
pub mod modbus;
pub mod opcua;
pub mod system;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use vigil_common::{ClockQuality, Sample, TimeSource};

use crate::Record;
use crate::config::{ClockSource, Plant};
use crate::pipeline::{Pipeline, SourceMsg};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Acquisition counters, shared by all drivers and the pipeline.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connection attempts (TCP connects, serial port opens).
    pub connects: Counter,
    /// Connections dropped / ports closed after a failure.
    pub resets: Counter,
    /// Requests sent.
    pub requests: Counter,
    /// Good responses.
    pub responses: Counter,
    /// Requests that timed out.
    pub timeouts: Counter,
    /// Transport or framing errors.
    pub comm_errors: Counter,
    /// Modbus exception responses.
    pub exceptions: Counter,
    /// Responses or values that could not be decoded.
    pub decode_errors: Counter,
    /// Retries after a timeout or transport error.
    pub retries: Counter,
    /// Requests not sent because their device was in backoff (its points reported bad).
    pub skipped_backoff: Counter,
    /// Poll cycles that could not be run on time (skipped, not queued).
    pub overruns: Counter,
    /// Device-online events.
    pub online_events: Counter,
    /// Device-offline events.
    pub offline_events: Counter,
    /// Readings that entered the pipeline.
    pub readings: Counter,
    /// Samples sent to the record channel.
    pub samples_out: Counter,
    /// Readings suppressed by deadband / report-by-exception.
    pub suppressed: Counter,
    /// Events sent to the record channel.
    pub events_out: Counter,
    /// Times the record channel was full and acquisition waited (backpressure).
    pub backpressure_waits: Counter,
    /// OPC UA sessions established (first connect and every reconnect).
    pub opcua_sessions: Counter,
    /// OPC UA data change values received from subscriptions or reads.
    pub opcua_values: Counter,
    /// OPC UA values dropped because their timestamp was not newer than the last one of the point.
    pub opcua_stale_dropped: Counter,
    /// OPC UA values re-sent after a reconnect with an old timestamp, reported at the reconnect time.
    pub opcua_restamped: Counter,
    /// OPC UA notification batches dropped because the driver's queue was full.
    pub opcua_overflow: Counter,
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = [
            ("connects", &self.connects),
            ("resets", &self.resets),
            ("requests", &self.requests),
            ("responses", &self.responses),
            ("timeouts", &self.timeouts),
            ("comm_errors", &self.comm_errors),
            ("exceptions", &self.exceptions),
            ("decode_errors", &self.decode_errors),
            ("retries", &self.retries),
            ("skipped_backoff", &self.skipped_backoff),
            ("overruns", &self.overruns),
            ("online_events", &self.online_events),
            ("offline_events", &self.offline_events),
            ("readings", &self.readings),
            ("samples_out", &self.samples_out),
            ("suppressed", &self.suppressed),
            ("events_out", &self.events_out),
            ("backpressure_waits", &self.backpressure_waits),
            ("opcua_sessions", &self.opcua_sessions),
            ("opcua_values", &self.opcua_values),
            ("opcua_stale_dropped", &self.opcua_stale_dropped),
            ("opcua_restamped", &self.opcua_restamped),
            ("opcua_overflow", &self.opcua_overflow),
        ];
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={}", v.get())?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, from the gateway clock.
pub fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// The clock quality stamped on samples and events of this plant.
pub fn clock_of(plant: &Plant) -> ClockQuality {
    match plant.config.acquisition.clock {
        ClockSource::Ntp => ClockQuality { synchronised: true, source: TimeSource::Ntp },
        ClockSource::Gateway => ClockQuality { synchronised: false, source: TimeSource::Gateway },
    }
}

/// Errors that stop acquisition.
#[derive(Debug, thiserror::Error)]
pub enum AcquisitionError {
    /// The record channel was closed by its receiver while acquisition was running.
    #[error("the record channel closed; acquisition stopped")]
    ChannelClosed,
    /// A driver or pipeline task panicked (a bug).
    #[error("acquisition task failed: {0}")]
    Task(String),
}

/// Runs acquisition for `plant` until `shutdown` turns true: polls every device, shapes the readings in
/// the pipeline and sends [`Record`]s into `tx`. When `tx` is full, acquisition waits (backpressure):
/// nothing is dropped; polls that cannot run on time are skipped and counted in
/// [`Metrics::overruns`], so the next reading is fresh rather than stale. Counters are in `metrics`.
pub async fn run_acquisition(
    plant: Arc<Plant>,
    tx: mpsc::Sender<Record>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> Result<(), AcquisitionError> {
    run(plant, tx, shutdown, metrics, modbus::Mode::Continuous, None, false).await
}

/// Polls every request of every device (or of device `only`) once and returns the records, each
/// point reported whatever its deadband (the `read` technician command).
pub async fn read_once(
    plant: Arc<Plant>,
    only: Option<&str>,
    metrics: Arc<Metrics>,
) -> Result<Vec<Record>, AcquisitionError> {
    let (tx, mut rx) = mpsc::channel(1024);
    let (_stop, shutdown) = watch::channel(false);
    let collector = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(r) = rx.recv().await {
            all.push(r);
        }
        all
    });
    run(plant, tx, shutdown, metrics, modbus::Mode::Once, only, true).await?;
    collector.await.map_err(|e| AcquisitionError::Task(e.to_string()))
}

async fn run(
    plant: Arc<Plant>,
    tx: mpsc::Sender<Record>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    mode: modbus::Mode,
    only: Option<&str>,
    report_all: bool,
) -> Result<(), AcquisitionError> {
    let (stx, mut srx) = mpsc::channel::<SourceMsg>(plant.config.acquisition.queue.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for (endpoint, devs) in modbus::channels(&plant, only) {
        let link = modbus::Link::new(endpoint, metrics.clone());
        tasks.spawn(modbus::run_channel(
            plant.clone(),
            devs,
            link,
            stx.clone(),
            metrics.clone(),
            shutdown.clone(),
            mode,
        ));
    }
    for index in opcua::devices(&plant, only) {
        tasks.spawn(opcua::run_device(plant.clone(), index, stx.clone(), metrics.clone(), shutdown.clone(), mode));
    }
    drop(stx);
    let mut pipeline = Pipeline::new(&plant, clock_of(&plant), report_all);
    let pm = metrics.clone();
    let pipe = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(msg) = srx.recv().await {
            pipeline.process(msg, &mut out, &pm);
            for rec in out.drain(..) {
                let permit = match tx.try_reserve() {
                    Ok(p) => p,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        pm.backpressure_waits.inc();
                        tx.reserve().await.map_err(|_| AcquisitionError::ChannelClosed)?
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return Err(AcquisitionError::ChannelClosed),
                };
                match &rec {
                    Record::Sample { .. } => pm.samples_out.inc(),
                    Record::Event(_) => pm.events_out.inc(),
                }
                permit.send(rec);
            }
        }
        Ok(())
    });
    // The pipeline ends when every driver has ended (they hold the only senders) or when the record
    // channel closes; in the latter case the drivers stop at their next send.
    let piped = pipe.await.map_err(|e| AcquisitionError::Task(e.to_string()))?;
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| AcquisitionError::Task(e.to_string()))?;
    }
    piped
}

/// A sample helper for bad readings that never had a good value.
pub(crate) fn placeholder(
    dtype: modbus::codec::DataType,
    ts_ms: i64,
    quality: vigil_common::Quality,
    clock: ClockQuality,
) -> Sample {
    use modbus::codec::DataType;
    let value = match dtype {
        DataType::Bool => vigil_common::Value::Bool(false),
        DataType::F32 | DataType::F64 => vigil_common::Value::F64(0.0),
        _ => vigil_common::Value::I64(0),
    };
    Sample { ts_ms, value, quality, clock }
}
