//! A field-grade Modbus device simulator: register banks driven by waveforms, a Modbus TCP server, an
//! RTU slave on a serial pseudo-terminal, and fault injection (no answer, slow answer, exception
//! codes, garbage bytes, dropped connections). Used by `vigil-sim`, the benchmarks and the tests.

pub mod camera;
pub mod opcua;
pub mod rtu;
pub mod tcp;
pub mod wave;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vigil_edge::config::{PointSpec, RegisterKind};
use vigil_edge::sources::modbus::codec::{ByteOrder, DataType, encode_registers};

pub use wave::Wave;

/// A fault to inject into a unit's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Never answer.
    NoAnswer,
    /// Answer after this delay.
    Slow(Duration),
    /// Answer every request with this exception code.
    Exception(u8),
    /// Answer with bytes that are not a valid frame.
    Garbage,
    /// TCP: close the connection on the next request; RTU: send half a frame.
    Drop,
}

impl std::str::FromStr for Fault {
    type Err = String;
    /// `none`, `noanswer`, `slow:MS`, `exception:CODE`, `garbage`, `drop`.
    fn from_str(s: &str) -> Result<Fault, String> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        Ok(match kind {
            "none" => Fault::None,
            "noanswer" => Fault::NoAnswer,
            "slow" => Fault::Slow(Duration::from_millis(
                arg.parse().map_err(|_| format!("slow:MS needs a number, got {arg:?}"))?,
            )),
            "exception" => {
                Fault::Exception(arg.parse().map_err(|_| format!("exception:CODE needs a number, got {arg:?}"))?)
            }
            "garbage" => Fault::Garbage,
            "drop" => Fault::Drop,
            _ => return Err(format!("unknown fault {s:?} (none, noanswer, slow:MS, exception:CODE, garbage, drop)")),
        })
    }
}

/// One simulated point: where it lives and how it moves.
#[derive(Debug, Clone)]
pub struct SimPoint {
    /// Register area.
    pub kind: RegisterKind,
    /// 0-based address.
    pub address: u16,
    /// Layout.
    pub spec: PointSpec,
    /// Waveform in engineering units.
    pub wave: Wave,
}

/// A simulated unit: its register banks and points.
#[derive(Debug)]
pub struct Unit {
    coils: Vec<bool>,
    discrete: Vec<bool>,
    holding: Vec<u16>,
    input: Vec<u16>,
    points: Vec<SimPoint>,
    /// Injected fault.
    pub fault: Fault,
    /// Requests answered.
    pub served: u64,
}

impl Unit {
    /// A unit with these points; registers not covered by a point read 0, reads beyond the highest
    /// point address + 16 get exception 2 (illegal data address), as a real device's map ends.
    pub fn new(points: Vec<SimPoint>) -> Unit {
        let end = |k: RegisterKind| {
            points
                .iter()
                .filter(|p| p.kind == k)
                .map(|p| usize::from(p.address) + usize::from(p.spec.width()) + 16)
                .max()
                .unwrap_or(0)
                .min(65_536)
        };
        Unit {
            coils: vec![false; end(RegisterKind::Coil)],
            discrete: vec![false; end(RegisterKind::DiscreteInput)],
            holding: vec![0; end(RegisterKind::Holding)],
            input: vec![0; end(RegisterKind::Input)],
            points,
            fault: Fault::None,
            served: 0,
        }
    }

    /// Recomputes every point's value at `t` seconds since the simulator started.
    pub fn update(&mut self, t: f64) {
        for p in &mut self.points {
            let v = p.wave.value(t);
            let a = usize::from(p.address);
            match p.kind {
                RegisterKind::Coil => {
                    if let Some(c) = self.coils.get_mut(a) {
                        *c = v != 0.0;
                    }
                }
                RegisterKind::DiscreteInput => {
                    if let Some(c) = self.discrete.get_mut(a) {
                        *c = v != 0.0;
                    }
                }
                RegisterKind::Holding | RegisterKind::Input => {
                    let raw = if p.spec.dtype == vigil_edge::sources::modbus::codec::DataType::Bool {
                        v
                    } else {
                        (v - p.spec.offset) / p.spec.scale
                    };
                    let bank = if p.kind == RegisterKind::Holding { &mut self.holding } else { &mut self.input };
                    let w = usize::from(p.spec.dtype.registers());
                    if let Some(slot) = bank.get_mut(a..a + w) {
                        encode_registers(raw, p.spec.dtype, p.spec.order, p.spec.bit, slot);
                    }
                }
            }
        }
    }

    /// Sets a register directly (tests).
    pub fn set_register(&mut self, kind: RegisterKind, address: u16, value: u16) {
        let bank = if kind == RegisterKind::Holding { &mut self.holding } else { &mut self.input };
        if let Some(r) = bank.get_mut(usize::from(address)) {
            *r = value;
        }
    }

    /// Answers a request PDU (function code + data) with a response PDU.
    pub fn answer(&mut self, pdu: &[u8]) -> Vec<u8> {
        self.served += 1;
        let Some(&fc) = pdu.first() else {
            return vec![0x80, 1];
        };
        if let Fault::Exception(code) = self.fault {
            return vec![fc | 0x80, code];
        }
        if pdu.len() < 5 || !(1..=4).contains(&fc) {
            return vec![fc | 0x80, 1];
        }
        let start = usize::from(u16::from_be_bytes([pdu[1], pdu[2]]));
        let count = usize::from(u16::from_be_bytes([pdu[3], pdu[4]]));
        match fc {
            1 | 2 => {
                let bank = if fc == 1 { &self.coils } else { &self.discrete };
                if count == 0 || count > 2000 || start + count > bank.len() {
                    return vec![fc | 0x80, if count == 0 || count > 2000 { 3 } else { 2 }];
                }
                let mut out = vec![fc, count.div_ceil(8) as u8];
                out.resize(2 + count.div_ceil(8), 0);
                for i in 0..count {
                    if bank[start + i] {
                        out[2 + i / 8] |= 1 << (i % 8);
                    }
                }
                out
            }
            _ => {
                let bank = if fc == 3 { &self.holding } else { &self.input };
                if count == 0 || count > 125 || start + count > bank.len() {
                    return vec![fc | 0x80, if count == 0 || count > 125 { 3 } else { 2 }];
                }
                let mut out = Vec::with_capacity(2 + 2 * count);
                out.push(fc);
                out.push((2 * count) as u8);
                for r in &bank[start..start + count] {
                    out.extend_from_slice(&r.to_be_bytes());
                }
                out
            }
        }
    }
}

/// A set of simulated units behind one server (a TCP device or an RTU bus), shareable with tests.
#[derive(Debug, Clone)]
pub struct Sim {
    units: Arc<Mutex<BTreeMap<u8, Unit>>>,
    started: Instant,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new()
    }
}

impl Sim {
    /// An empty simulator.
    pub fn new() -> Sim {
        Sim { units: Arc::new(Mutex::new(BTreeMap::new())), started: Instant::now() }
    }

    /// Locks the units (a poisoned lock is recovered: the banks stay usable).
    pub fn units(&self) -> MutexGuard<'_, BTreeMap<u8, Unit>> {
        self.units.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (or replaces) a unit.
    pub fn add_unit(&self, id: u8, unit: Unit) {
        self.units().insert(id, unit);
    }

    /// Injects a fault into a unit.
    pub fn set_fault(&self, id: u8, fault: Fault) {
        if let Some(u) = self.units().get_mut(&id) {
            u.fault = fault;
        }
    }

    /// Requests answered by a unit so far.
    pub fn served(&self, id: u8) -> u64 {
        self.units().get(&id).map_or(0, |u| u.served)
    }

    /// Handles a request for `unit`: `None` if the unit does not exist. Returns the fault in force and,
    /// unless the fault is NoAnswer, the response PDU (for Garbage/Drop the transport mangles it).
    pub fn handle(&self, unit: u8, pdu: &[u8]) -> Option<(Fault, Vec<u8>)> {
        let t = self.started.elapsed().as_secs_f64();
        let mut units = self.units();
        let u = units.get_mut(&unit)?;
        let fault = u.fault;
        if fault == Fault::NoAnswer {
            return Some((fault, Vec::new()));
        }
        u.update(t);
        Some((fault, u.answer(pdu)))
    }
}

/// Builds the simulated points of a device from the resolved plant (waveforms from each point's `sim`
/// key, or a default derived from its range).
pub fn points_of(plant: &vigil_edge::config::Plant, device: usize, seed: u64) -> Result<Vec<SimPoint>, String> {
    plant.devices[device]
        .points
        .iter()
        .enumerate()
        .map(|(k, &pi)| {
            let spec = plant.points[pi].clone();
            let wave = match &spec.sim {
                Some(s) => Wave::parse(s).map_err(|e| format!("point {}: sim = {s:?}: {e}", spec.id))?,
                None => Wave::default_for(&spec, seed.wrapping_add(k as u64)),
            };
            Ok(SimPoint { kind: spec.kind, address: spec.address, spec, wave })
        })
        .collect()
}

/// CRC-16/MODBUS of a frame.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xA001 } else { crc >> 1 };
        }
    }
    crc
}

/// The register layout of `configs/profiles/levelling-magnetostrictive.toml`.
pub fn levelling_unit(unit: u8, speed: f64) -> Result<Unit, String> {
    let spec = |address: u16, dtype: DataType, order: ByteOrder, scale: f64| -> Result<PointSpec, String> {
        Ok(PointSpec {
            id: vigil_common::PointId::new(format!("u{unit}.{address}")).map_err(|e| e.to_string())?,
            device: 0,
            kind: RegisterKind::Input,
            address,
            dtype,
            order,
            bit: None,
            scale,
            offset: 0.0,
            unit: String::new(),
            range: None,
            poll: std::time::Duration::from_secs(1),
            deadband: 0.0,
            max_silent: std::time::Duration::from_secs(300),
            sim: None,
        })
    };
    let k = f64::from(unit);
    // Unit 1 (base) is stable; measuring points settle at 0.05 mm/day per unit number.
    let per_day = if unit == 1 { 0.0 } else { -0.05 * (k - 1.0) };
    let points = vec![
        SimPoint {
            kind: RegisterKind::Input,
            address: 0,
            spec: spec(0, DataType::I32, ByteOrder::ABCD, 0.01)?,
            wave: Wave::Trend { start: 150.0 + k, per_day, speed },
        },
        SimPoint {
            kind: RegisterKind::Input,
            address: 2,
            spec: spec(2, DataType::I16, ByteOrder::AB, 0.1)?,
            wave: Wave::Walk { value: 18.0, step: 0.1, lo: 10.0, hi: 30.0, rng: 0x1234_5678 ^ u64::from(unit) },
        },
        SimPoint {
            kind: RegisterKind::Input,
            address: 3,
            spec: spec(3, DataType::U16, ByteOrder::AB, 1.0)?,
            wave: Wave::Const(0.0),
        },
    ];
    Ok(Unit::new(points))
}
