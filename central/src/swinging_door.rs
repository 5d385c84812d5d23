//! Swinging-door compression (optional, lossy within a deviation): keeps the samples needed so that
//! linear interpolation between kept samples is within `deviation` of every dropped one. A sample is
//! always kept when it is the first or last of the input, non-numeric, changes quality (the sample
//! before the change too), or crosses one of the given alarm limits (the sample before it too).
//!
//! Lossless is the default. [`DoorPolicy`] says which points are compressed (`[[historian.swinging_door]]`
//! rules in central's configuration) and with which alarm limits; the historian applies it when it
//! writes a head as chunks, so the alarm engine (fed before the historian) always sees every sample.

use std::collections::HashMap;
use std::sync::RwLock;

use serde::Deserialize;
use vigil_common::Sample;

use crate::historian::SeriesKey;

/// One `[[historian.swinging_door]]` rule: points matching any pattern are compressed within `deviation`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoorRule {
    /// `gateway/point` keys; a trailing `*` matches any rest (`gw-01/TK1*`, `*`).
    pub points: Vec<String>,
    /// Largest difference, in the point's unit, between a dropped sample and the line through the
    /// kept ones (typically the sensor's accuracy).
    pub deviation: f64,
}

impl DoorRule {
    /// Why the rule is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if !(self.deviation.is_finite() && self.deviation > 0.0) {
            return Some(format!("deviation {} must be a positive number", self.deviation));
        }
        if self.points.is_empty() {
            return Some("points must name at least one pattern".into());
        }
        self.points
            .iter()
            .find(|p| p.is_empty() || p.trim_end_matches('*').contains('*'))
            .map(|p| format!("pattern {p:?}: only one trailing `*` is allowed"))
    }

    fn matches(&self, key: &str) -> bool {
        self.points.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == p,
        })
    }
}

/// What the historian does to one point's samples before writing them.
#[derive(Debug, Clone, PartialEq)]
pub struct DoorSetting {
    /// The deviation.
    pub deviation: f64,
    /// Alarm limits whose crossings are always kept.
    pub limits: Vec<f64>,
}

/// The per-point compression policy: configured rules, and the current alarm limits of each point
/// (kept fresh by whoever owns them, so an approved threshold change is honoured).
#[derive(Debug, Default)]
pub struct DoorPolicy {
    rules: Vec<DoorRule>,
    limits: RwLock<HashMap<String, Vec<f64>>>,
}

impl DoorPolicy {
    /// A policy of `rules` (first matching rule wins); no rules means lossless for every point.
    pub fn new(rules: Vec<DoorRule>) -> DoorPolicy {
        DoorPolicy { rules, limits: RwLock::default() }
    }

    /// Whether any point can be compressed at all.
    pub fn is_lossless(&self) -> bool {
        self.rules.is_empty()
    }

    /// Records the alarm limits of point `key` (`gateway/point`).
    pub fn set_limits(&self, key: &str, limits: Vec<f64>) {
        if let Ok(mut map) = self.limits.write() {
            map.insert(key.to_owned(), limits);
        }
    }

    /// The setting of one point; `None` keeps it lossless.
    pub fn setting(&self, key: &SeriesKey) -> Option<DoorSetting> {
        if self.rules.is_empty() {
            return None;
        }
        let text = format!("{}/{}", key.gateway, key.point);
        let rule = self.rules.iter().find(|r| r.matches(&text))?;
        let limits = self.limits.read().ok().and_then(|m| m.get(&text).cloned()).unwrap_or_default();
        Some(DoorSetting { deviation: rule.deviation, limits })
    }
}

fn crosses(a: f64, b: f64, limits: &[f64]) -> bool {
    limits.iter().any(|&l| (a < l) != (b < l))
}

/// The indices of the samples to keep (ascending), for samples sorted by time.
pub fn keep(samples: &[Sample], deviation: f64, limits: &[f64]) -> Vec<usize> {
    let n = samples.len();
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    // `must[i]`: sample i is kept whatever the doors say.
    let mut must = vec![false; n];
    must[0] = true;
    must[n - 1] = true;
    for i in 1..n {
        let (a, b) = (&samples[i - 1], &samples[i]);
        let event = match (a.value.as_f64(), b.value.as_f64()) {
            (Some(x), Some(y)) => a.quality != b.quality || crosses(x, y, limits) || !x.is_finite() || !y.is_finite(),
            _ => true,
        };
        if event || b.ts_ms <= a.ts_ms {
            must[i - 1] = true;
            must[i] = true;
        }
    }
    let mut anchor = 0usize;
    out.push(0);
    let (mut lo, mut hi) = (f64::NEG_INFINITY, f64::INFINITY);
    let mut i = 1;
    while i < n {
        // Sample i may end a segment when the line anchor -> i passes every sample since the anchor
        // within the deviation: its slope lies inside the doors of those samples.
        let slope = match (samples[anchor].value.as_f64(), samples[i].value.as_f64()) {
            (Some(va), Some(v)) if samples[i].ts_ms > samples[anchor].ts_ms => {
                let dt = (samples[i].ts_ms - samples[anchor].ts_ms) as f64;
                Some((va, v, dt, (v - va) / dt))
            }
            _ => None,
        };
        match slope {
            Some((va, v, dt, s)) if lo <= s && s <= hi => {
                if must[i] {
                    out.push(i);
                    anchor = i;
                    (lo, hi) = (f64::NEG_INFINITY, f64::INFINITY);
                } else {
                    lo = lo.max((v - deviation - va) / dt);
                    hi = hi.min((v + deviation - va) / dt);
                }
                i += 1;
            }
            // The doors closed: archive the previous sample (a valid end) and consider i again from there.
            Some(_) if i - 1 != anchor => {
                out.push(i - 1);
                anchor = i - 1;
                (lo, hi) = (f64::NEG_INFINITY, f64::INFINITY);
            }
            _ => {
                out.push(i);
                anchor = i;
                (lo, hi) = (f64::NEG_INFINITY, f64::INFINITY);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vigil_common::{ClockQuality, Quality, Value};

    proptest! {
        #[test]
        fn every_dropped_sample_is_within_the_deviation_and_events_are_kept(
            steps in proptest::collection::vec((1i64..3000, -5.0f64..5.0, 0u8..20), 1..400),
            deviation in 0.01f64..3.0,
        ) {
            let mut ts = 1_000_000;
            let mut v = 50.0;
            let samples: Vec<Sample> = steps.iter().map(|&(dt, dv, q)| {
                ts += dt;
                v += dv;
                let quality = if q == 0 { Quality::UNCERTAIN } else { Quality::GOOD };
                Sample { ts_ms: ts, value: Value::F64(v), quality, clock: ClockQuality::NTP_SYNCED }
            }).collect();
            let limits = [60.0, 40.0];
            let kept = keep(&samples, deviation, &limits);
            prop_assert_eq!(kept[0], 0);
            prop_assert_eq!(*kept.last().unwrap(), samples.len() - 1);
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            let is_kept = |i: usize| kept.binary_search(&i).is_ok();
            for i in 1..samples.len() {
                let (a, b) = (&samples[i - 1], &samples[i]);
                let (x, y) = (a.value.as_f64().unwrap(), b.value.as_f64().unwrap());
                if a.quality != b.quality || crosses(x, y, &limits) {
                    prop_assert!(is_kept(i - 1) && is_kept(i), "event at {} not kept", i);
                }
            }
            for w in kept.windows(2) {
                let (a, b) = (&samples[w[0]], &samples[w[1]]);
                let (va, vb) = (a.value.as_f64().unwrap(), b.value.as_f64().unwrap());
                for s in &samples[w[0] + 1..w[1]] {
                    let t = (s.ts_ms - a.ts_ms) as f64 / (b.ts_ms - a.ts_ms) as f64;
                    let interp = va + (vb - va) * t;
                    prop_assert!((interp - s.value.as_f64().unwrap()).abs() <= deviation * (1.0 + 1e-9) + 1e-9,
                        "dropped sample off by {}", (interp - s.value.as_f64().unwrap()).abs());
                }
            }
        }
    }

    #[test]
    fn rules_match_by_prefix_first_rule_wins_and_carry_the_current_limits() {
        use vigil_common::{GatewayId, PointId};
        let policy = DoorPolicy::new(vec![
            DoorRule { points: vec!["gw-01/TK1*".into()], deviation: 0.1 },
            DoorRule { points: vec!["*".into()], deviation: 0.5 },
        ]);
        let key = |g: &str, p: &str| SeriesKey { gateway: GatewayId::new(g).unwrap(), point: PointId::new(p).unwrap() };
        assert_eq!(policy.setting(&key("gw-01", "TK101.LT")).unwrap().deviation, 0.1);
        assert_eq!(policy.setting(&key("gw-02", "TK101.LT")).unwrap().deviation, 0.5);
        policy.set_limits("gw-01/TK101.LT", vec![80.0, 90.0]);
        assert_eq!(policy.setting(&key("gw-01", "TK101.LT")).unwrap().limits, vec![80.0, 90.0]);
        assert!(DoorPolicy::new(vec![]).setting(&key("gw-01", "TK101.LT")).is_none());
        assert!(DoorRule { points: vec!["a*b*".into()], deviation: 1.0 }.problem().is_some());
        assert!(DoorRule { points: vec!["a".into()], deviation: 0.0 }.problem().is_some());
        assert!(DoorRule { points: vec![], deviation: 1.0 }.problem().is_some());
        assert!(DoorRule { points: vec!["gw-01/*".into()], deviation: 0.2 }.problem().is_none());
    }

    #[test]
    fn a_straight_line_keeps_only_its_ends() {
        let samples: Vec<Sample> = (0..100).map(|i| Sample::good(i * 1000, 2.0 + i as f64 * 0.5)).collect();
        assert_eq!(keep(&samples, 0.01, &[]), vec![0, 99]);
    }
}
