//! Value waveforms for simulated points, in engineering units.

use vigil_edge::config::PointSpec;
use vigil_edge::sources::modbus::codec::DataType;

/// How a simulated value moves over time `t` (seconds since start).
#[derive(Debug, Clone, PartialEq)]
pub enum Wave {
    /// A constant.
    Const(f64),
    /// Sawtooth from `lo` to `hi` over `period` seconds.
    Ramp {
        /// Low end.
        lo: f64,
        /// High end.
        hi: f64,
        /// Period in seconds.
        period: f64,
    },
    /// `mid + amp * sin(2 pi t / period)`.
    Sine {
        /// Centre.
        mid: f64,
        /// Amplitude.
        amp: f64,
        /// Period in seconds.
        period: f64,
    },
    /// Random walk from `start` with steps of at most `step` per evaluation, kept within `[lo, hi]`.
    Walk {
        /// Current value.
        value: f64,
        /// Largest step.
        step: f64,
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
        /// Generator state.
        rng: u64,
    },
    /// `before` until `at` seconds, then `after`.
    Step {
        /// Value before.
        before: f64,
        /// Value after.
        after: f64,
        /// Switch time in seconds.
        at: f64,
    },
    /// `start + per_day * t / 86400 * speed` (slow trends, e.g. settlement; `speed` accelerates time).
    Trend {
        /// Value at t = 0.
        start: f64,
        /// Change per simulated day.
        per_day: f64,
        /// Simulated seconds per real second.
        speed: f64,
    },
}

impl Wave {
    /// Parses `const V`, `ramp LO HI PERIOD`, `sine MID AMP PERIOD`, `walk START STEP LO HI`,
    /// `step BEFORE AFTER AT`, `trend START PER_DAY SPEED`.
    pub fn parse(s: &str) -> Result<Wave, String> {
        let mut it = s.split_whitespace();
        let kind = it.next().ok_or("empty waveform")?;
        let nums: Vec<f64> =
            it.map(|x| x.parse::<f64>().map_err(|_| format!("{x:?} is not a number"))).collect::<Result<_, _>>()?;
        if nums.iter().any(|x| !x.is_finite()) {
            return Err("numbers must be finite".into());
        }
        let need = |n: usize| {
            if nums.len() == n { Ok(()) } else { Err(format!("{kind} takes {n} numbers, got {}", nums.len())) }
        };
        Ok(match kind {
            "const" => {
                need(1)?;
                Wave::Const(nums[0])
            }
            "ramp" => {
                need(3)?;
                Wave::Ramp { lo: nums[0], hi: nums[1], period: nums[2].max(1e-3) }
            }
            "sine" => {
                need(3)?;
                Wave::Sine { mid: nums[0], amp: nums[1], period: nums[2].max(1e-3) }
            }
            "walk" => {
                need(4)?;
                Wave::Walk { value: nums[0], step: nums[1], lo: nums[2], hi: nums[3], rng: 0x9E37_79B9_7F4A_7C15 }
            }
            "step" => {
                need(3)?;
                Wave::Step { before: nums[0], after: nums[1], at: nums[2] }
            }
            "trend" => {
                need(3)?;
                Wave::Trend { start: nums[0], per_day: nums[1], speed: nums[2] }
            }
            _ => return Err(format!("unknown waveform {kind:?} (const, ramp, sine, walk, step, trend)")),
        })
    }

    /// A plausible default for a point without a `sim` key: a slow sine over its range (or a toggle
    /// for booleans), phase-shifted by `seed`.
    pub fn default_for(spec: &PointSpec, seed: u64) -> Wave {
        if spec.dtype == DataType::Bool {
            return Wave::Sine { mid: 0.0, amp: 1.0, period: 60.0 + (seed % 17) as f64 };
        }
        let (lo, hi) = match spec.range {
            Some([lo, hi]) => (lo, hi),
            None => (0.0, 100.0 * spec.scale.abs()),
        };
        Wave::Sine { mid: (lo + hi) / 2.0, amp: (hi - lo) / 4.0, period: 30.0 + (seed % 61) as f64 }
    }

    /// The value at `t` seconds.
    pub fn value(&mut self, t: f64) -> f64 {
        match self {
            Wave::Const(v) => *v,
            Wave::Ramp { lo, hi, period } => *lo + (*hi - *lo) * ((t % *period) / *period),
            Wave::Sine { mid, amp, period } => *mid + *amp * (std::f64::consts::TAU * t / *period).sin(),
            Wave::Walk { value, step, lo, hi, rng } => {
                // xorshift64
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                let u = (*rng >> 11) as f64 / (1u64 << 53) as f64;
                *value = (*value + (u * 2.0 - 1.0) * *step).clamp(*lo, *hi);
                *value
            }
            Wave::Step { before, after, at } => {
                if t < *at {
                    *before
                } else {
                    *after
                }
            }
            Wave::Trend { start, per_day, speed } => *start + *per_day * t * *speed / 86_400.0,
        }
    }
}
