//! The gateway's own hardware at the site: its digital lines and watchdog, and local annunciation:
//! rules that switch a relay (siren, beacon) the moment a condition is seen here, whether or not the
//! uplink is up, and release it by rule. Every switch is an event for central.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use vigil_common::{ClockQuality, Event, EventKind, TimeSource};
use vigil_hw::{DigitalIo, LineConfig};

use crate::Record;
use crate::spool::now_ms;

/// The `[hardware]` section: digital lines and the watchdog.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareConfig {
    /// Digital inputs (camera alarm contacts, switches); each change becomes an event.
    #[serde(default)]
    pub inputs: Vec<LineConfig>,
    /// Digital outputs (relays) that local alarm rules drive.
    #[serde(default)]
    pub outputs: Vec<LineConfig>,
    /// Input debounce, milliseconds (default 50).
    #[serde(default = "default_debounce")]
    pub debounce_ms: u64,
    /// Input poll period, milliseconds (default 20).
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
    /// Hardware watchdog device, e.g. `/dev/watchdog`; kicked only while the agent's loops progress.
    pub watchdog: Option<std::path::PathBuf>,
}

fn default_debounce() -> u64 {
    50
}
fn default_poll() -> u64 {
    20
}

/// What makes a local alarm rule active.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "trigger", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// A digital input is on.
    Input {
        /// The input's name.
        input: String,
    },
    /// A gas camera sees a leak (`camera = "*"` for any camera).
    GasDetection {
        /// The camera's name, or `*`.
        camera: String,
    },
    /// A point's good value is above `limit`.
    Above {
        /// The point id.
        point: String,
        /// The limit.
        limit: f64,
    },
    /// A point's good value is below `limit`.
    Below {
        /// The point id.
        point: String,
        /// The limit.
        limit: f64,
    },
}

/// One `[[local_alarm]]` rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LocalAlarmRule {
    /// Its name, used in events.
    pub name: String,
    /// The output it switches on.
    pub output: String,
    /// The condition.
    #[serde(flatten)]
    pub trigger: Trigger,
    /// Keep the output on at least this long once triggered, seconds (default 30).
    #[serde(default = "default_hold")]
    pub hold_s: u64,
}

fn default_hold() -> u64 {
    30
}

/// Problems with the hardware section and local alarm rules, as (key, problem).
pub fn problems(hw: &HardwareConfig, rules: &[LocalAlarmRule]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut names = BTreeMap::new();
    for (kind, lines) in [("inputs", &hw.inputs), ("outputs", &hw.outputs)] {
        for (i, l) in lines.iter().enumerate() {
            if names.insert(l.name.clone(), kind).is_some() {
                out.push((format!("hardware.{kind}[{i}].name"), format!("duplicate line name {:?}", l.name)));
            }
        }
    }
    for (i, r) in rules.iter().enumerate() {
        if names.get(&r.output) != Some(&"outputs") {
            out.push((format!("local_alarm[{i}].output"), format!("{:?} is not a configured output", r.output)));
        }
        if let Trigger::Input { input } = &r.trigger
            && names.get(input) != Some(&"inputs")
        {
            out.push((format!("local_alarm[{i}].input"), format!("{input:?} is not a configured input")));
        }
        if let Trigger::Above { limit, .. } | Trigger::Below { limit, .. } = r.trigger
            && !limit.is_finite()
        {
            out.push((format!("local_alarm[{i}].limit"), "must be a finite number".into()));
        }
    }
    out
}

/// Digital lines shared by the input source and the annunciator.
pub type SharedIo = Arc<Mutex<Box<dyn DigitalIo>>>;

struct RuleState {
    rule: LocalAlarmRule,
    condition: bool,
    on_since: Option<Instant>,
}

/// Evaluates local alarm rules on the record stream and drives their outputs.
pub struct Annunciator {
    rules: Vec<RuleState>,
    io: SharedIo,
    outputs: BTreeMap<String, bool>,
}

fn site_clock() -> ClockQuality {
    ClockQuality { synchronised: false, source: TimeSource::Gateway }
}

impl Annunciator {
    /// An annunciator for `rules` driving outputs on `io`; all outputs start off.
    pub fn new(rules: Vec<LocalAlarmRule>, io: SharedIo) -> Annunciator {
        let outputs = rules.iter().map(|r| (r.output.clone(), false)).collect();
        Annunciator {
            rules: rules.into_iter().map(|rule| RuleState { rule, condition: false, on_since: None }).collect(),
            io,
            outputs,
        }
    }

    fn observe(&mut self, record: &Record) -> Vec<String> {
        let mut causes = Vec::new();
        for st in &mut self.rules {
            let seen = match (&st.rule.trigger, record) {
                (
                    Trigger::Input { input },
                    Record::Event(Event { kind: EventKind::DigitalInput { input: i, state }, .. }),
                ) if i == input => Some((*state, format!("input {i} {}", if *state { "on" } else { "off" }))),
                (Trigger::GasDetection { camera }, Record::Event(Event { kind: EventKind::GasDetection(d), .. }))
                    if camera == "*" || *camera == d.camera =>
                {
                    let on = d.phase == vigil_common::event::DetectionPhase::Start;
                    Some((on, format!("camera {} {} {} {:?}", d.camera, d.gas, d.concentration, d.phase)))
                }
                (
                    Trigger::Above { point, limit } | Trigger::Below { point, limit },
                    Record::Sample { point: p, sample },
                ) if p.as_str() == point && sample.quality.is_good() => sample.value.as_f64().map(|v| {
                    let on = if matches!(st.rule.trigger, Trigger::Above { .. }) { v > *limit } else { v < *limit };
                    (on, format!("{point} = {v} (limit {limit})"))
                }),
                _ => None,
            };
            if let Some((on, cause)) = seen {
                if on && !st.condition {
                    st.on_since = Some(Instant::now());
                }
                if on != st.condition {
                    causes.push(cause);
                }
                st.condition = on;
            }
        }
        causes
    }

    /// Applies rule states to outputs; returns the events for every output that changed.
    fn drive(&mut self, cause: &str) -> Vec<Event> {
        let mut wanted: BTreeMap<String, Option<String>> = self.outputs.keys().map(|o| (o.clone(), None)).collect();
        for st in &mut self.rules {
            let held = st.on_since.is_some_and(|t| t.elapsed() < Duration::from_secs(st.rule.hold_s));
            if !st.condition && !held {
                st.on_since = None;
            }
            if st.condition || held {
                wanted.insert(st.rule.output.clone(), Some(st.rule.name.clone()));
            }
        }
        let mut events = Vec::new();
        for (output, by) in wanted {
            let on = by.is_some();
            if self.outputs.get(&output) == Some(&on) {
                continue;
            }
            let result = self
                .io
                .lock()
                .map_err(|_| "hardware lock poisoned".to_owned())
                .and_then(|mut io| io.write(&output, on).map_err(|e| e.to_string()));
            match result {
                Ok(()) => {
                    self.outputs.insert(output.clone(), on);
                    let rule = by.unwrap_or_else(|| {
                        self.rules
                            .iter()
                            .find(|r| r.rule.output == output)
                            .map(|r| r.rule.name.clone())
                            .unwrap_or_default()
                    });
                    tracing::warn!(%output, on, %rule, %cause, "local alarm output switched");
                    events.push(Event {
                        ts_ms: now_ms(),
                        clock: site_clock(),
                        kind: EventKind::LocalAlarm { rule, output, on, cause: cause.to_owned() },
                    });
                }
                Err(e) => tracing::error!(%output, on, error = %e, "cannot drive local alarm output"),
            }
        }
        events
    }

    /// Passes every record from `rx` on to `tx`, switching outputs as rules demand and adding a
    /// `LocalAlarm` event for each switch. Outputs react before the record is passed on, so a full
    /// spool or a dead uplink never delays the siren.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Record>,
        tx: mpsc::Sender<Record>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let (record, cause) = tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => {
                        let causes = self.observe(&r);
                        (Some(r), causes.join("; "))
                    }
                    None => break,
                },
                _ = tick.tick() => (None, "hold time elapsed or condition cleared".to_owned()),
                _ = shutdown.changed() => if *shutdown.borrow() { break } else { continue },
            };
            // Records that change no rule (nearly all) cost one match per rule, nothing more.
            let events = if record.is_none() || !cause.is_empty() { self.drive(&cause) } else { Vec::new() };
            for event in events {
                if tx.send(Record::Event(event)).await.is_err() {
                    return;
                }
            }
            if let Some(r) = record
                && tx.send(r).await.is_err()
            {
                return;
            }
        }
        // Orderly stop: release the outputs this rule set drives.
        for st in &mut self.rules {
            st.condition = false;
            st.on_since = None;
        }
        for event in self.drive("agent stopping") {
            let _ = tx.try_send(Record::Event(event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_common::{PointId, Sample};
    use vigil_hw::MemoryIo;

    fn rule(trigger: Trigger, hold_s: u64) -> LocalAlarmRule {
        LocalAlarmRule { name: "r1".into(), output: "siren".into(), trigger, hold_s }
    }

    #[tokio::test]
    async fn a_threshold_rule_drives_the_relay_and_reports_each_switch() {
        let (io, pins) = MemoryIo::memory(&[], &["siren"]);
        let io: SharedIo = Arc::new(Mutex::new(Box::new(io)));
        let ann = Annunciator::new(vec![rule(Trigger::Above { point: "GDS.CH1".into(), limit: 50.0 }, 0)], io);
        let (in_tx, in_rx) = mpsc::channel(10);
        let (out_tx, mut out_rx) = mpsc::channel(10);
        let (_stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(ann.run(in_rx, out_tx, shutdown));
        let point = PointId::new("GDS.CH1").unwrap();
        in_tx.send(Record::Sample { point: point.clone(), sample: Sample::good(1, 60.0) }).await.unwrap();
        let first = out_rx.recv().await.unwrap();
        assert!(
            matches!(first, Record::Event(Event { kind: EventKind::LocalAlarm { on: true, .. }, .. })),
            "{first:?}"
        );
        assert!(pins["siren"].get(), "relay on at once");
        assert!(matches!(out_rx.recv().await.unwrap(), Record::Sample { .. }), "the sample is passed on");
        in_tx.send(Record::Sample { point, sample: Sample::good(2, 40.0) }).await.unwrap();
        let off = out_rx.recv().await.unwrap();
        assert!(matches!(off, Record::Event(Event { kind: EventKind::LocalAlarm { on: false, .. }, .. })), "{off:?}");
        assert!(!pins["siren"].get());
        drop(in_tx);
        task.await.unwrap();
        assert_eq!(pins["siren"].writes(), vec![true, false]);
    }

    #[test]
    fn rules_must_name_configured_lines() {
        let hw = HardwareConfig {
            inputs: vec![LineConfig { name: "di1".into(), chip: "c".into(), line: 1, active_low: false }],
            outputs: vec![LineConfig { name: "siren".into(), chip: "c".into(), line: 2, active_low: false }],
            ..HardwareConfig::default()
        };
        assert!(problems(&hw, &[rule(Trigger::Input { input: "di1".into() }, 5)]).is_empty());
        let bad = problems(
            &hw,
            &[LocalAlarmRule { output: "di1".into(), ..rule(Trigger::Input { input: "nope".into() }, 5) }],
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
    }
}
