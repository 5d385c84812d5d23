//! Alarm-load KPIs (EEMUA 191 / ISA-18.2 style) over a time range, per enterprise: alarms per hour,
//! share of hours with more than 3 alarms, floods (more than 10 in 10 minutes), standing and stale
//! alarms, chattering points, top 10 sources, offline counts, with the EEMUA 191 targets beside them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::model::{Alarm, Condition};

const HOUR_MS: i64 = 3_600_000;
const FLOOD_WINDOW_MS: i64 = 600_000;
const FLOOD_COUNT: usize = 10;
const CHATTER_WINDOW_MS: i64 = 60_000;
const CHATTER_COUNT: usize = 3;
const STALE_MS: i64 = 24 * HOUR_MS;

/// One activation (raise or re-activation) of an alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    /// Source time.
    pub ts_ms: i64,
    /// Alarm id.
    pub alarm_id: i64,
    /// Enterprise ("" when unknown).
    pub enterprise: String,
    /// Source (e.g. `point:TK101.LT`).
    pub source: String,
    /// Condition.
    pub condition: Condition,
}

/// EEMUA 191 targets shown beside the figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// Average alarms per hour considered manageable (1 per 10 minutes).
    pub per_hour: f64,
    /// Alarms in 10 minutes above which it is a flood.
    pub flood_per_10_min: usize,
    /// Standing alarms acceptable at any time.
    pub standing: usize,
    /// Chattering points acceptable.
    pub chattering: usize,
}

/// The EEMUA 191 targets.
pub const EEMUA_191: Targets = Targets { per_hour: 6.0, flood_per_10_min: FLOOD_COUNT, standing: 10, chattering: 0 };

/// KPIs of one enterprise over a range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KpiReport {
    /// Enterprise ("" when unknown).
    pub enterprise: String,
    /// Range start (ms).
    pub from_ms: i64,
    /// Range end (ms).
    pub to_ms: i64,
    /// Activations in the range.
    pub alarms: usize,
    /// Average activations per hour.
    pub per_hour: f64,
    /// Share (0..1) of hours with more than 3 activations.
    pub share_hours_over_3: f64,
    /// Flood episodes (more than 10 activations within 10 minutes).
    pub floods: usize,
    /// Alarms active at the end of the range.
    pub standing: usize,
    /// Of those, active for more than 24 hours.
    pub stale: usize,
    /// Sources with 3 or more activations within a minute.
    pub chattering: Vec<String>,
    /// The 10 sources with the most activations.
    pub top10: Vec<(String, usize)>,
    /// Gateway-offline and device-offline activations.
    pub offline: usize,
    /// Targets for comparison.
    pub targets: Targets,
}

/// Computes per-enterprise KPIs over `[from_ms, to_ms)` from activations and the open alarms.
pub fn compute(activations: &[Activation], open: &[&Alarm], from_ms: i64, to_ms: i64) -> Vec<KpiReport> {
    let mut by_ent: BTreeMap<&str, Vec<&Activation>> = BTreeMap::new();
    for a in activations.iter().filter(|a| a.ts_ms >= from_ms && a.ts_ms < to_ms) {
        by_ent.entry(a.enterprise.as_str()).or_default().push(a);
    }
    for a in open {
        by_ent.entry(a.enterprise.as_deref().unwrap_or("")).or_default();
    }
    let hours = (to_ms.saturating_sub(from_ms).max(1) as f64 / HOUR_MS as f64).max(1e-9);
    let n_hours = to_ms.saturating_sub(from_ms).max(0).saturating_add(HOUR_MS - 1) / HOUR_MS;
    by_ent
        .into_iter()
        .map(|(ent, mut acts)| {
            acts.sort_by_key(|a| a.ts_ms);
            let mut per_hour: HashMap<i64, usize> = HashMap::new();
            for a in &acts {
                *per_hour.entry(a.ts_ms.saturating_sub(from_ms) / HOUR_MS).or_default() += 1;
            }
            let over = per_hour.values().filter(|&&c| c > 3).count();
            let ts: Vec<i64> = acts.iter().map(|a| a.ts_ms).collect();
            let mut floods = 0;
            let mut in_flood = false;
            let mut j = 0;
            for i in 0..ts.len() {
                while ts[i].saturating_sub(ts[j]) >= FLOOD_WINDOW_MS {
                    j += 1;
                }
                let n = i - j + 1;
                if n > FLOOD_COUNT && !in_flood {
                    floods += 1;
                    in_flood = true;
                } else if n <= FLOOD_COUNT {
                    in_flood = false;
                }
            }
            let mut per_source: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
            for a in &acts {
                per_source.entry(a.source.as_str()).or_default().push(a.ts_ms);
            }
            let chattering = per_source
                .iter()
                .filter(|(_, t)| {
                    t.windows(CHATTER_COUNT).any(|w| w[CHATTER_COUNT - 1].saturating_sub(w[0]) < CHATTER_WINDOW_MS)
                })
                .map(|(s, _)| (*s).to_owned())
                .collect();
            let mut top: Vec<(String, usize)> = per_source.iter().map(|(s, t)| ((*s).to_owned(), t.len())).collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            top.truncate(10);
            let standing: Vec<&&Alarm> = open
                .iter()
                .filter(|a| {
                    a.enterprise.as_deref().unwrap_or("") == ent && a.active && !a.replay && a.last_active_ms < to_ms
                })
                .collect();
            let stale = standing.iter().filter(|a| to_ms.saturating_sub(a.last_active_ms) > STALE_MS).count();
            KpiReport {
                enterprise: ent.to_owned(),
                from_ms,
                to_ms,
                alarms: acts.len(),
                per_hour: acts.len() as f64 / hours,
                share_hours_over_3: if n_hours > 0 { over as f64 / n_hours as f64 } else { 0.0 },
                floods,
                standing: standing.len(),
                stale,
                chattering,
                top10: top,
                offline: acts
                    .iter()
                    .filter(|a| matches!(a.condition, Condition::GatewayOffline | Condition::DeviceOffline))
                    .count(),
                targets: EEMUA_191,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(ts: i64, src: &str) -> Activation {
        Activation { ts_ms: ts, alarm_id: 1, enterprise: "e1".into(), source: src.into(), condition: Condition::Hi }
    }

    #[test]
    fn floods_chatter_and_hour_shares_are_counted() {
        let mut v = Vec::new();
        // 12 alarms in 5 minutes in hour 0: one flood; hour 1: 2 alarms.
        for i in 0..12 {
            v.push(act(i * 25_000, &format!("point:p{}", i % 6)));
        }
        v.push(act(HOUR_MS + 1, "point:x"));
        v.push(act(HOUR_MS + 70_000, "point:x"));
        // A chattering point: 3 activations within a minute, in hour 2.
        for i in 0..3 {
            v.push(act(2 * HOUR_MS + i * 10_000, "point:chatter"));
        }
        let r = compute(&v, &[], 0, 4 * HOUR_MS);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        assert_eq!(r.alarms, 17);
        assert_eq!(r.floods, 1);
        assert_eq!(r.share_hours_over_3, 0.25);
        assert_eq!(r.chattering, vec!["point:chatter".to_owned()]);
        assert_eq!(r.top10[0], ("point:chatter".to_owned(), 3));
        assert!((r.per_hour - 17.0 / 4.0).abs() < 1e-9);
    }
}
