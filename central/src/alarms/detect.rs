//! Per-point detection: pure, in-memory evaluation of samples on source timestamps. A sample that
//! changes nothing touches only this state (no allocation, no I/O).

use super::config::{PointDef, PointKind, secs_to_ms};
use super::model::{Condition, Limits};

const NONE: i64 = i64::MIN;

/// Detector state of one condition of one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CondRt {
    /// The alarm condition is active (mirrors the durable alarm).
    pub active: bool,
    /// Active only from late data so far: a live sample still in alarm promotes it.
    pub historical: bool,
    /// Source time since which the raw condition differs from `active` (on/off delay running).
    pub pending_since: i64,
}

impl Default for CondRt {
    fn default() -> Self {
        CondRt { active: false, historical: false, pending_since: NONE }
    }
}

/// A condition change found by the detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Transition {
    /// Detector slot.
    pub slot: usize,
    /// New state: active, or cleared; `Promote` when a historical active alarm is seen live.
    pub to: To,
    /// Source time.
    pub ts_ms: i64,
    /// Value that caused it.
    pub value: Option<f64>,
    /// Limit crossed.
    pub limit: Option<f64>,
}

/// What a transition does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum To {
    /// Becomes active.
    Active,
    /// Clears.
    Clear,
    /// Historical active alarm seen in live data.
    Promote,
}

/// Compiled (ms) settings of a point.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Compiled {
    pub kind: PointKind,
    pub limits: Limits,
    pub on_delay_ms: i64,
    pub off_delay_ms: i64,
    pub rate_per_s: Option<f64>,
    pub bad_quality: bool,
    pub stale_after_ms: Option<i64>,
    pub frozen_after_ms: Option<i64>,
    pub alarm_when: bool,
}

impl Compiled {
    pub fn new(d: &PointDef) -> Compiled {
        Compiled {
            kind: d.kind,
            limits: d.limits(),
            on_delay_ms: secs_to_ms(d.on_delay_s),
            off_delay_ms: secs_to_ms(d.off_delay_s),
            rate_per_s: d.rate_per_s,
            bad_quality: d.bad_quality,
            stale_after_ms: d.expected_interval_s.map(|i| secs_to_ms(i * d.stale_factor)).filter(|&ms| ms > 0),
            frozen_after_ms: d.frozen_after_s.map(secs_to_ms).filter(|&ms| ms > 0),
            alarm_when: d.alarm_when,
        }
    }
}

/// Runtime detector of one point (one timeline: live or replay).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Detector {
    pub conds: [CondRt; Condition::POINT_SLOTS],
    /// Source time of the latest sample evaluated.
    pub last_ts: i64,
    last_value: f64,
    last_change_ts: i64,
    /// Reference for staleness: the latest sample's source time, or the first tick after start.
    stale_ref: i64,
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            conds: [CondRt::default(); Condition::POINT_SLOTS],
            last_ts: NONE,
            last_value: f64::NAN,
            last_change_ts: NONE,
            stale_ref: NONE,
        }
    }
}

impl Detector {
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        c: &Compiled,
        slot: usize,
        raw: bool,
        ts: i64,
        v: Option<f64>,
        lim: Option<f64>,
        live: bool,
        out: &mut Vec<Transition>,
    ) {
        let st = &mut self.conds[slot];
        if raw == st.active {
            st.pending_since = NONE;
            if raw && live && st.historical {
                st.historical = false;
                out.push(Transition { slot, to: To::Promote, ts_ms: ts, value: v, limit: lim });
            }
            return;
        }
        if st.pending_since == NONE {
            st.pending_since = ts;
        }
        let delay = if raw { c.on_delay_ms } else { c.off_delay_ms };
        if ts.saturating_sub(st.pending_since) >= delay {
            st.active = raw;
            st.historical = raw && !live;
            st.pending_since = NONE;
            out.push(Transition {
                slot,
                to: if raw { To::Active } else { To::Clear },
                ts_ms: ts,
                value: v,
                limit: lim,
            });
        }
    }

    /// Evaluates one sample (`value` None: not numeric). `live` false marks late data.
    #[inline]
    pub fn sample(
        &mut self,
        c: &Compiled,
        ts: i64,
        value: Option<f64>,
        good: bool,
        live: bool,
        out: &mut Vec<Transition>,
    ) {
        if c.bad_quality {
            self.step(c, 5, !good, ts, value, None, live, out);
        }
        if c.stale_after_ms.is_some() && self.conds[6].active {
            // Any sample ends staleness, without delay.
            self.conds[6] = CondRt::default();
            out.push(Transition { slot: 6, to: To::Clear, ts_ms: ts, value, limit: None });
        }
        let (Some(v), true) = (value, good) else {
            // Bad quality or non-numeric: limit conditions keep their state.
            self.last_ts = ts;
            self.stale_ref = self.stale_ref.max(ts);
            return;
        };
        if !v.is_finite() {
            self.last_ts = ts;
            self.stale_ref = self.stale_ref.max(ts);
            return;
        }
        match c.kind {
            PointKind::Analog => {
                let l = &c.limits;
                let db = l.deadband;
                if let Some(hh) = l.hh {
                    let raw = if self.conds[0].active { v >= hh - db } else { v >= hh };
                    self.step(c, 0, raw, ts, Some(v), Some(hh), live, out);
                }
                if let Some(h) = l.h {
                    let raw = if self.conds[1].active { v >= h - db } else { v >= h };
                    self.step(c, 1, raw, ts, Some(v), Some(h), live, out);
                }
                if let Some(lo) = l.l {
                    let raw = if self.conds[2].active { v <= lo + db } else { v <= lo };
                    self.step(c, 2, raw, ts, Some(v), Some(lo), live, out);
                }
                if let Some(ll) = l.ll {
                    let raw = if self.conds[3].active { v <= ll + db } else { v <= ll };
                    self.step(c, 3, raw, ts, Some(v), Some(ll), live, out);
                }
                if let Some(r) = c.rate_per_s
                    && self.last_ts != NONE
                    && ts > self.last_ts
                    && self.last_value.is_finite()
                {
                    let rate = (v - self.last_value).abs() * 1000.0 / ts.saturating_sub(self.last_ts) as f64;
                    self.step(c, 4, rate > r, ts, Some(rate), Some(r), live, out);
                }
            }
            PointKind::Digital => {
                self.step(c, 8, (v != 0.0) == c.alarm_when, ts, Some(v), None, live, out);
            }
            PointKind::GasCamera => {
                let min = c.limits.h.unwrap_or(0.0);
                self.step(c, 9, v > 0.0 && v >= min, ts, Some(v), c.limits.h, live, out);
            }
        }
        if let Some(f) = c.frozen_after_ms {
            if v != self.last_value || self.last_change_ts == NONE {
                self.last_change_ts = ts;
            }
            let raw = ts.saturating_sub(self.last_change_ts) >= f;
            self.step(c, 7, raw, ts, Some(v), None, live, out);
        }
        self.last_value = v;
        self.last_ts = ts;
        self.stale_ref = self.stale_ref.max(ts);
    }

    /// Time-driven checks at `now_ms`: stale, and on/off delays that completed without a new sample.
    /// `stale_allowed` false when the gateway or device is known offline (root cause raised there).
    pub fn tick(&mut self, c: &Compiled, now_ms: i64, stale_allowed: bool, out: &mut Vec<Transition>) {
        if let Some(s) = c.stale_after_ms {
            if self.stale_ref == NONE {
                // Nothing seen since start: count from now, so a point that never reports goes stale too.
                self.stale_ref = now_ms;
            }
            if stale_allowed && !self.conds[6].active && now_ms.saturating_sub(self.stale_ref) >= s {
                self.conds[6].active = true;
                self.conds[6].historical = false;
                out.push(Transition {
                    slot: 6,
                    to: To::Active,
                    ts_ms: self.stale_ref.saturating_add(s),
                    value: None,
                    limit: None,
                });
            }
        }
        for slot in 0..Condition::POINT_SLOTS {
            if slot == 6 {
                continue;
            }
            let st = &mut self.conds[slot];
            if st.pending_since == NONE {
                continue;
            }
            let delay = if st.active { c.off_delay_ms } else { c.on_delay_ms };
            if delay > 0 && now_ms.saturating_sub(st.pending_since) >= delay {
                let ts = st.pending_since.saturating_add(delay);
                st.active = !st.active;
                st.historical = false;
                st.pending_since = NONE;
                out.push(Transition {
                    slot,
                    to: if st.active { To::Active } else { To::Clear },
                    ts_ms: ts,
                    value: None,
                    limit: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(c: &Compiled, d: &mut Detector, samples: &[(i64, f64)]) -> Vec<(usize, To, i64)> {
        let mut out = Vec::new();
        for &(ts, v) in samples {
            d.sample(c, ts, Some(v), true, true, &mut out);
        }
        out.into_iter().map(|t| (t.slot, t.to, t.ts_ms)).collect()
    }

    #[test]
    fn deadband_holds_the_alarm_until_back_inside() {
        let mut def = PointDef::new("p");
        def.h = Some(10.0);
        def.deadband = 1.0;
        let c = Compiled::new(&def);
        let mut d = Detector::default();
        let t = run(&c, &mut d, &[(0, 9.0), (1, 10.0), (2, 9.5), (3, 10.2), (4, 9.0), (5, 8.9)]);
        assert_eq!(t, vec![(1, To::Active, 1), (1, To::Clear, 5)]);
    }

    #[test]
    fn on_delay_needs_the_condition_to_hold() {
        let mut def = PointDef::new("p");
        def.hh = Some(100.0);
        def.on_delay_s = 5.0;
        def.off_delay_s = 2.0;
        let c = Compiled::new(&def);
        let mut d = Detector::default();
        let t = run(
            &c,
            &mut d,
            &[(0, 101.0), (4_000, 101.0), (4_500, 50.0), (5_000, 101.0), (9_999, 102.0), (10_000, 103.0)],
        );
        assert_eq!(t, vec![(0, To::Active, 10_000)]);
        let t = run(&c, &mut d, &[(11_000, 1.0), (12_000, 101.0), (13_000, 1.0), (15_000, 1.0)]);
        assert_eq!(t, vec![(0, To::Clear, 15_000)]);
    }

    #[test]
    fn low_limits_rate_and_frozen() {
        let mut def = PointDef::new("p");
        def.l = Some(2.0);
        def.ll = Some(1.0);
        def.rate_per_s = Some(5.0);
        def.frozen_after_s = Some(10.0);
        let c = Compiled::new(&def);
        let mut d = Detector::default();
        let t = run(&c, &mut d, &[(0, 3.0), (1000, 1.5), (2000, 0.5), (3000, 10.0)]);
        assert_eq!(
            t,
            vec![
                (2, To::Active, 1000),
                (3, To::Active, 2000),
                (2, To::Clear, 3000),
                (3, To::Clear, 3000),
                (4, To::Active, 3000)
            ]
        );
        let t = run(&c, &mut d, &[(4000, 10.0), (13_000, 10.0), (14_000, 10.5)]);
        assert_eq!(t, vec![(4, To::Clear, 4000), (7, To::Active, 13_000), (7, To::Clear, 14_000)]);
    }

    #[test]
    fn stale_in_tick_clears_on_next_sample() {
        let mut def = PointDef::new("p");
        def.expected_interval_s = Some(1.0);
        let c = Compiled::new(&def);
        let mut d = Detector::default();
        let mut out = Vec::new();
        d.sample(&c, 1000, Some(1.0), true, true, &mut out);
        d.tick(&c, 3999, true, &mut out);
        assert!(out.is_empty());
        d.tick(&c, 4000, false, &mut out);
        assert!(out.is_empty(), "no stale alarm while the gateway is offline");
        d.tick(&c, 4000, true, &mut out);
        d.tick(&c, 5000, true, &mut out);
        d.sample(&c, 6000, Some(1.0), true, true, &mut out);
        let t: Vec<_> = out.into_iter().map(|t| (t.slot, t.to, t.ts_ms)).collect();
        assert_eq!(t, vec![(6, To::Active, 4000), (6, To::Clear, 6000)]);
    }
}
