//! The Modbus TCP/RTU driver.
//!
//! A *channel* owns one link and polls the devices behind it: a TCP endpoint (one device, or several
//! units behind a TCP-to-RTU gateway) or an RS485 bus is one channel shared by all the units on it, so requests on a bus are strictly one
//! at a time with the configured inter-frame gap. Every connect and every request runs under the
//! device's timeout; after a timeout or a transport error the TCP connection is dropped or the serial
//! port closed and reopened, because a late or garbled reply would otherwise be taken as the answer
//! to the next request.

pub mod codec;
pub mod direction;
pub mod plan;
pub mod scan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::{ExceptionCode, Slave, SlaveContext};
use tracing::{debug, info, warn};
use vigil_common::{ClockQuality, Event, EventKind, Quality};

use crate::config::{BusConfig, Parity, Plant, RegisterKind, Transport};
use crate::pipeline::{Reading, SourceMsg};
use crate::sources::{Metrics, now_ms};
use codec::{Raw, decode_registers};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No (complete) answer within the timeout.
    Timeout,
    /// Connection refused or lost, I/O error, malformed frame.
    Comm(String),
    /// The device answered with a Modbus exception.
    Exception(u8, String),
    /// The answer had the wrong length.
    Short(String),
}

impl Failure {
    /// The quality of the points of a request that failed this way.
    pub fn quality(&self) -> Quality {
        match self {
            Failure::Timeout => Quality::BAD_TIMEOUT,
            Failure::Comm(_) => Quality::BAD_COMMUNICATION_ERROR,
            Failure::Short(_) => Quality::BAD_DECODING_ERROR,
            Failure::Exception(code, _) => match code {
                1..=3 => Quality::BAD_CONFIGURATION_ERROR,
                0x0A | 0x0B => Quality::BAD_COMMUNICATION_ERROR,
                _ => Quality::BAD_DEVICE_FAILURE,
            },
        }
    }

    /// Whether the device is to be considered unreachable (as opposed to answering with an error).
    pub fn is_link_failure(&self) -> bool {
        matches!(self, Failure::Timeout | Failure::Comm(_) | Failure::Exception(0x0A | 0x0B, _))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer within the timeout"),
            Failure::Comm(m) => write!(f, "communication error: {m}"),
            Failure::Exception(c, n) => write!(f, "exception 0x{c:02X} ({n})"),
            Failure::Short(m) => write!(f, "bad answer: {m}"),
        }
    }
}

/// Data returned by a read.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Coils or discrete inputs.
    Bits(Vec<bool>),
    /// Registers.
    Registers(Vec<u16>),
}

/// Where a link goes.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Modbus TCP.
    Tcp(String, u16),
    /// Modbus RTU on a serial port.
    Rtu(BusConfig),
}

/// One connection (TCP socket or serial port), opened lazily and dropped after failures.
pub struct Link {
    endpoint: Endpoint,
    ctx: Option<Context>,
    last_io: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Link {
    /// A link, not yet connected.
    pub fn new(endpoint: Endpoint, metrics: Arc<Metrics>) -> Link {
        Link { endpoint, ctx: None, last_io: None, metrics }
    }

    fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(h, p) => format!("{h}:{p}"),
            Endpoint::Rtu(b) => b.path.display().to_string(),
        }
    }

    async fn connect(&mut self, timeout: Duration) -> Result<(), Failure> {
        if self.ctx.is_some() {
            return Ok(());
        }
        self.metrics.connects.inc();
        let ctx = match &self.endpoint {
            Endpoint::Tcp(host, port) => {
                let fut = async {
                    let addr = tokio::net::lookup_host((host.as_str(), *port))
                        .await
                        .map_err(|e| Failure::Comm(format!("resolving {host}: {e}")))?
                        .next()
                        .ok_or_else(|| Failure::Comm(format!("{host} has no address")))?;
                    tokio_modbus::client::tcp::connect(addr)
                        .await
                        .map_err(|e| Failure::Comm(format!("connecting to {addr}: {e}")))
                };
                tokio::time::timeout(timeout, fut).await.map_err(|_| Failure::Timeout)??
            }
            Endpoint::Rtu(bus) => {
                use tokio_serial::SerialPortBuilderExt;
                let path = bus.path.to_string_lossy().into_owned();
                let builder = tokio_serial::new(path.clone(), bus.baud)
                    .parity(match bus.parity {
                        Parity::None => tokio_serial::Parity::None,
                        Parity::Even => tokio_serial::Parity::Even,
                        Parity::Odd => tokio_serial::Parity::Odd,
                    })
                    .data_bits(if bus.data_bits == 7 {
                        tokio_serial::DataBits::Seven
                    } else {
                        tokio_serial::DataBits::Eight
                    })
                    .stop_bits(if bus.stop_bits == 2 {
                        tokio_serial::StopBits::Two
                    } else {
                        tokio_serial::StopBits::One
                    });
                let port = builder.open_native_async().map_err(|e| Failure::Comm(format!("opening {path}: {e}")))?;
                match &bus.direction {
                    None => tokio_modbus::client::rtu::attach(port),
                    Some(line) => {
                        let io = vigil_hw::CdevIo::open(&[], std::slice::from_ref(line))
                            .map_err(|e| Failure::Comm(format!("{path}: RS485 direction line {}: {e}", line.name)))?;
                        let timing = vigil_hw::rs485::LineTiming { baud: bus.baud, bits_per_char: bus.bits_per_char() };
                        let port = direction::DirectedPort::new(port, Box::new(io), line.name.clone(), timing)
                            .map_err(|e| Failure::Comm(format!("{path}: {e}")))?;
                        tokio_modbus::client::rtu::attach(port)
                    }
                }
            }
        };
        debug!(link = %self.describe(), "connected");
        self.ctx = Some(ctx);
        Ok(())
    }

    /// Drops the connection (closes the socket or the serial port); the next request reopens it.
    pub fn reset(&mut self) {
        if self.ctx.take().is_some() {
            self.metrics.resets.inc();
        }
    }

    /// Reads `count` registers/bits of `kind` at `start` from `unit`, under `timeout` (the connect, if
    /// needed, has its own `timeout`). Enforces the inter-frame gap on serial links.
    pub async fn read(
        &mut self,
        unit: u8,
        kind: RegisterKind,
        start: u16,
        count: u16,
        timeout: Duration,
    ) -> Result<Data, Failure> {
        self.connect(timeout).await?;
        if let Endpoint::Rtu(bus) = &self.endpoint
            && let Some(last) = self.last_io
        {
            tokio::time::sleep_until((last + bus.frame_gap()).into()).await;
        }
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(Failure::Comm("not connected".into()));
        };
        ctx.set_slave(Slave(unit));
        self.metrics.requests.inc();
        let result = tokio::time::timeout(timeout, async {
            match kind {
                RegisterKind::Coil => ctx.read_coils(start, count).await.map(|r| r.map(Data::Bits)),
                RegisterKind::DiscreteInput => ctx.read_discrete_inputs(start, count).await.map(|r| r.map(Data::Bits)),
                RegisterKind::Holding => ctx.read_holding_registers(start, count).await.map(|r| r.map(Data::Registers)),
                RegisterKind::Input => ctx.read_input_registers(start, count).await.map(|r| r.map(Data::Registers)),
            }
        })
        .await;
        self.last_io = Some(Instant::now());
        let outcome = match result {
            Err(_) => {
                self.metrics.timeouts.inc();
                Err(Failure::Timeout)
            }
            Ok(Err(e)) => {
                self.metrics.comm_errors.inc();
                Err(Failure::Comm(e.to_string()))
            }
            Ok(Ok(Err(code))) => {
                self.metrics.exceptions.inc();
                return Err(Failure::Exception(u8::from(code), exception_name(code)));
            }
            Ok(Ok(Ok(data))) => {
                let got = match &data {
                    Data::Bits(b) => b.len(),
                    Data::Registers(r) => r.len(),
                };
                if got < usize::from(count) {
                    self.metrics.decode_errors.inc();
                    Err(Failure::Short(format!("asked for {count}, got {got}")))
                } else {
                    self.metrics.responses.inc();
                    return Ok(data);
                }
            }
        };
        // Timeouts, transport errors and malformed answers leave the stream in an unknown state.
        self.reset();
        outcome
    }
}

fn exception_name(code: ExceptionCode) -> String {
    format!("{code:?}")
}

/// A slot of the schedule: one request of one device.
struct Slot {
    dev: usize,
    req: usize,
    due: tokio::time::Instant,
    /// The exception last seen for this request (for fault events on change only).
    last_exception: Option<u8>,
}

/// Per-device state in a channel.
struct DevState {
    idx: usize,
    online: Option<bool>,
    streak: u32,
    backoff_until: Option<Instant>,
    last_failure: Quality,
    min_poll: Duration,
}

/// How a channel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Poll forever (until shutdown).
    Continuous,
    /// Poll every request once, then return.
    Once,
}

/// Polls the devices `devs` (indices into `plant.devices`, all behind one link) and sends readings and
/// events to `out`. Returns when `shutdown` turns true, when `out` closes, or (in [`Mode::Once`])
/// after one pass.
pub async fn run_channel(
    plant: Arc<Plant>,
    devs: Vec<usize>,
    mut link: Link,
    out: mpsc::Sender<SourceMsg>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    mode: Mode,
) {
    let start = tokio::time::Instant::now();
    let clock = crate::sources::clock_of(&plant);
    let mut states: Vec<DevState> = devs
        .iter()
        .map(|&idx| DevState {
            idx,
            online: None,
            streak: 0,
            backoff_until: None,
            last_failure: Quality::BAD_NOT_CONNECTED,
            min_poll: plant.devices[idx].requests.iter().map(|r| r.poll).min().unwrap_or(Duration::from_secs(1)),
        })
        .collect();
    let mut slots: Vec<Slot> = Vec::new();
    for (di, st) in states.iter().enumerate() {
        for (ri, _) in plant.devices[st.idx].requests.iter().enumerate() {
            slots.push(Slot { dev: di, req: ri, due: start, last_exception: None });
        }
    }
    let mut done = vec![false; slots.len()];
    loop {
        if *shutdown.borrow() {
            return;
        }
        let Some(si) = (0..slots.len()).filter(|&i| mode == Mode::Continuous || !done[i]).min_by_key(|&i| slots[i].due)
        else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(slots[si].due) => {}
            changed = shutdown.changed() => {
                // A dropped sender means nobody can ask us to stop any more: stop now.
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let slot = &mut slots[si];
        let st = &mut states[slot.dev];
        let dev = &plant.devices[st.idx];
        let req = &dev.requests[slot.req];
        let now = Instant::now();
        let mut msgs = Vec::new();
        let in_backoff = st.backoff_until.is_some_and(|t| now < t);
        let outcome = if in_backoff {
            metrics.skipped_backoff.inc();
            Err(None)
        } else {
            // Retries only while the device answers; a device already known to be down gets one probe,
            // so a dead slave costs the bus at most one timeout per backoff period.
            let attempts = if st.online == Some(false) { 1 } else { 1 + dev.retries };
            let mut last = Failure::Timeout;
            let mut ok = None;
            for attempt in 0..attempts {
                if attempt > 0 {
                    metrics.retries.inc();
                }
                match link.read(dev.unit, req.kind, req.start, req.count, dev.timeout).await {
                    Ok(d) => {
                        ok = Some(Ok(d));
                        break;
                    }
                    Err(f) if f.is_link_failure() => last = f,
                    Err(f) => {
                        ok = Some(Err(f));
                        break;
                    }
                }
            }
            match ok {
                Some(Ok(d)) => Ok(d),
                Some(Err(f)) => Err(Some(f)),
                None => Err(Some(last)),
            }
        };
        let ts = now_ms();
        match outcome {
            Ok(data) => {
                if slot.last_exception.take().is_some() {
                    info!(device = %dev.name, start = req.start, "request answers normally again");
                }
                st.streak = 0;
                st.backoff_until = None;
                if st.online != Some(true) {
                    st.online = Some(true);
                    metrics.online_events.inc();
                    info!(device = %dev.name, "device online");
                    msgs.push(SourceMsg::Event(event(ts, clock, EventKind::DeviceOnline { device: dev.name.clone() })));
                }
                let readings = req
                    .points
                    .iter()
                    .map(|&p| Reading {
                        point: p,
                        ts_ms: ts,
                        outcome: decode_point(&plant, p, req.start, &data, &metrics),
                    })
                    .collect();
                msgs.push(SourceMsg::Readings(readings));
            }
            Err(failure) => {
                let quality = match &failure {
                    None => st.last_failure,
                    Some(f) => f.quality(),
                };
                match &failure {
                    Some(f) if f.is_link_failure() => {
                        st.streak = st.streak.saturating_add(1);
                        st.last_failure = quality;
                        let shift = (st.streak - 1).min(16);
                        let backoff = st.min_poll.saturating_mul(1 << shift).min(dev.backoff_max.max(st.min_poll));
                        // Never sit out more than the backoff ceiling, and at least until the rest of
                        // this cycle has passed so the device's other requests do not each time out.
                        st.backoff_until = Some(now + backoff.saturating_sub(Duration::from_millis(1)));
                        if st.online != Some(false) {
                            st.online = Some(false);
                            metrics.offline_events.inc();
                            warn!(device = %dev.name, reason = %f, "device offline");
                            msgs.push(SourceMsg::Event(event(
                                ts,
                                clock,
                                EventKind::DeviceOffline { device: dev.name.clone(), reason: f.to_string() },
                            )));
                        }
                    }
                    Some(f) => {
                        // The device answered, with an error: it is online; the points are bad.
                        st.streak = 0;
                        st.backoff_until = None;
                        if st.online != Some(true) {
                            st.online = Some(true);
                            metrics.online_events.inc();
                            msgs.push(SourceMsg::Event(event(
                                ts,
                                clock,
                                EventKind::DeviceOnline { device: dev.name.clone() },
                            )));
                        }
                        let code = match f {
                            Failure::Exception(c, _) => *c,
                            _ => 0,
                        };
                        if slot.last_exception != Some(code) {
                            slot.last_exception = Some(code);
                            let message =
                                format!("unit {} {} {}+{}: {f}", dev.unit, req.kind.name(), req.start, req.count);
                            warn!(device = %dev.name, %message, "request failed");
                            msgs.push(SourceMsg::Event(event(
                                ts,
                                clock,
                                EventKind::SourceFault { source: dev.name.clone(), message },
                            )));
                        }
                    }
                    None => {}
                }
                let readings =
                    req.points.iter().map(|&p| Reading { point: p, ts_ms: ts, outcome: Err(quality) }).collect();
                msgs.push(SourceMsg::Readings(readings));
            }
        }
        for m in msgs {
            if out.send(m).await.is_err() {
                return;
            }
        }
        done[si] = true;
        // Next due time; cycles that could not be run in time are counted, never queued up.
        let after = tokio::time::Instant::now();
        slot.due += req.poll;
        if slot.due <= after {
            let behind = after - slot.due;
            let missed = (behind.as_nanos() / req.poll.as_nanos().max(1)) as u64 + 1;
            metrics.overruns.add(missed);
            slot.due += req.poll * u32::try_from(missed).unwrap_or(u32::MAX);
        }
    }
}

fn event(ts_ms: i64, clock: ClockQuality, kind: EventKind) -> Event {
    Event { ts_ms, clock, kind }
}

fn decode_point(plant: &Plant, p: usize, start: u16, data: &Data, metrics: &Metrics) -> Result<Raw, Quality> {
    let spec = &plant.points[p];
    let off = usize::from(spec.address - start);
    let r = match data {
        Data::Bits(bits) => bits.get(off).map(|&b| Raw::Bool(b)).ok_or(Quality::BAD_DECODING_ERROR),
        Data::Registers(regs) => match regs.get(off..) {
            Some(slice) => decode_registers(slice, spec.dtype, spec.order, spec.bit).map_err(|e| {
                debug!(point = %spec.id, error = %e, "decode failed");
                Quality::BAD_DECODING_ERROR
            }),
            None => Err(Quality::BAD_DECODING_ERROR),
        },
    };
    if r.is_err() {
        metrics.decode_errors.inc();
    }
    r
}

/// Groups the plant's devices into channels: one per TCP endpoint (host, port), one per RTU bus.
pub fn channels(plant: &Plant, only: Option<&str>) -> Vec<(Endpoint, Vec<usize>)> {
    let mut out: Vec<(Endpoint, Vec<usize>)> = Vec::new();
    let mut bus_channel = std::collections::HashMap::new();
    let mut tcp_channel = std::collections::HashMap::new();
    for (i, d) in plant.devices.iter().enumerate() {
        if only.is_some_and(|n| n != d.name) {
            continue;
        }
        match &d.transport {
            // Devices behind one TCP endpoint (units of a TCP-to-RTU gateway) share one connection and
            // are polled one request at a time, like units on a bus.
            Transport::Tcp { host, port } => match tcp_channel.get(&(host.clone(), *port)) {
                Some(&ci) => {
                    let ch: &mut (Endpoint, Vec<usize>) = &mut out[ci];
                    ch.1.push(i);
                }
                None => {
                    tcp_channel.insert((host.clone(), *port), out.len());
                    out.push((Endpoint::Tcp(host.clone(), *port), vec![i]));
                }
            },
            Transport::Rtu { bus } => match bus_channel.get(bus) {
                Some(&ci) => {
                    let ch: &mut (Endpoint, Vec<usize>) = &mut out[ci];
                    ch.1.push(i);
                }
                None => {
                    bus_channel.insert(*bus, out.len());
                    out.push((Endpoint::Rtu(plant.buses[*bus].clone()), vec![i]));
                }
            },
            // OPC UA servers have their own driver.
            Transport::Opcua { .. } => {}
        }
    }
    out
}
