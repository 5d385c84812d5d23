//! Realistic sample workloads shared by benchmarks and tests: a plant's points polled on a schedule,
//! with sensor noise, slow process drift, poll jitter and the resolution real instruments report at.

use vigil_common::{Batch, BatchBuilder, DropCounters, GatewayId, PointId, Priority, Quality, Sample, Value};

/// A small deterministic generator (xorshift64*), so workloads are reproducible without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value; zero is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal (sum of four uniforms, rescaled).
    pub fn normal(&mut self) -> f64 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) * 3f64.sqrt()
    }
}

/// The kind of process signal a point carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Tank level in metres, 1 mm resolution.
    Level,
    /// Temperature in degrees Celsius, 0.1 resolution.
    Temperature,
    /// Pressure in MPa, 0.001 resolution.
    Pressure,
    /// Combustible gas in %LEL, 0.1 resolution, mostly near zero.
    Gas,
    /// A digital state (pump running, valve open).
    Digital,
}

/// One simulated point.
#[derive(Debug, Clone)]
pub struct SimPoint {
    /// Its id.
    pub id: PointId,
    /// Its signal kind.
    pub signal: Signal,
    base: f64,
    drift: f64,
    noise: f64,
    decimals: i32,
}

impl SimPoint {
    /// The value at `t` seconds, quantised to the instrument's resolution when `quantised`.
    pub fn value(&self, t: f64, rng: &mut Rng, quantised: bool) -> Value {
        if self.signal == Signal::Digital {
            return Value::Bool(((t / 600.0 + self.base) as i64) % 2 == 0);
        }
        let mut v = self.base + self.drift * t + self.noise * rng.normal();
        if self.signal == Signal::Gas {
            v = v.max(0.0);
        }
        if quantised {
            // Instruments report integers scaled by a power of ten (a Modbus register times 0.1, 0.01 ...).
            let scale = 10f64.powi(self.decimals);
            v = (v * scale).round() / scale;
        }
        Value::F64(v)
    }
}

/// A plant of `n` points with a realistic mix: 30 % levels, 25 % temperatures, 20 % pressures,
/// 15 % gas channels, 10 % digital states.
pub fn plant(n: usize, rng: &mut Rng) -> Vec<SimPoint> {
    (0..n)
        .map(|i| {
            let unit = 100 + i / 8;
            let (signal, id, base, drift, noise, decimals) = match i % 20 {
                0..=5 => (Signal::Level, format!("TK{unit}.LT{}", i % 8), 2.0 + 10.0 * rng.unit(), 1e-4, 0.002, 3),
                6..=10 => {
                    (Signal::Temperature, format!("TK{unit}.TT{}", i % 8), 15.0 + 30.0 * rng.unit(), 1e-4, 0.15, 1)
                }
                11..=14 => (Signal::Pressure, format!("PU{unit}.PT{}", i % 8), 0.2 + 2.0 * rng.unit(), 0.0, 0.002, 3),
                15..=17 => {
                    (Signal::Gas, format!("GDS{:02}.CH{:02}", unit % 100, i % 8), 0.5 * rng.unit(), 0.0, 0.15, 1)
                }
                _ => (Signal::Digital, format!("PU{unit}.RUN{}", i % 8), rng.unit() * 10.0, 0.0, 0.0, 0),
            };
            let id = PointId::new(id).unwrap_or_else(|_| unreachable!("generated ids are valid"));
            SimPoint { id, signal, base, drift, noise, decimals }
        })
        .collect()
}

/// A live batch: `points` polled every `period_ms` for `samples_per_point` polls from `start_ms`,
/// read in requests of 16 points that share one timestamp, each poll up to 20 ms late.
pub fn live_batch(
    points: &[SimPoint],
    samples_per_point: usize,
    period_ms: i64,
    start_ms: i64,
    rng: &mut Rng,
    quantised: bool,
) -> Batch {
    let mut builder = BatchBuilder::new();
    for poll in 0..samples_per_point {
        for (request, group) in points.chunks(16).enumerate() {
            let jitter = (rng.next_u64() % 20) as i64;
            let ts = start_ms + poll as i64 * period_ms + request as i64 * 3 + jitter;
            let t = (ts - start_ms) as f64 / 1000.0;
            for p in group {
                let value = p.value(t, rng, quantised);
                builder.push(
                    &p.id,
                    Sample { ts_ms: ts, value, quality: Quality::GOOD, clock: vigil_common::ClockQuality::NTP_SYNCED },
                );
            }
        }
    }
    let gateway = GatewayId::new("gw-bench").unwrap_or_else(|_| unreachable!("constant id is valid"));
    builder.build(
        gateway,
        1,
        1,
        Priority::Live,
        start_ms + samples_per_point as i64 * period_ms,
        DropCounters::default(),
    )
}
