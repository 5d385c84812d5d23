//! Swinging-door compression (optional, lossy within a deviation): keeps the samples needed so that
//! linear interpolation between kept samples is within `deviation` of every dropped one. A sample is
//! always kept when it is the first or last of the input, non-numeric, changes quality (the sample
//! before the change too), or crosses one of the given alarm limits (the sample before it too).
//!
//! Not yet applied by ingest: central has no per-point configuration (deviation from the point's
//! accuracy, alarm limits) until the alarm/point-configuration issue; the function and its guarantee
//! are tested here and its storage effect is measured by `bench-historian`.

use vigil_common::Sample;

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
    fn a_straight_line_keeps_only_its_ends() {
        let samples: Vec<Sample> = (0..100).map(|i| Sample::good(i * 1000, 2.0 + i as f64 * 0.5)).collect();
        assert_eq!(keep(&samples, 0.01, &[]), vec![0, 99]);
    }
}
