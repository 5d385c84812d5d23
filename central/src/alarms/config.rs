//! Alarm definitions and engine settings, read from TOML and validated as a whole.

use std::collections::HashSet;

use serde::Deserialize;

use super::error::AlarmError;
use super::model::{GasLevel, Grade, Limits};

/// What kind of point a definition describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PointKind {
    /// A measured value with limits.
    #[default]
    Analog,
    /// A digital input (virtual point `{gateway}/di/{input}` for gateway DI events).
    Digital,
    /// A gas camera (virtual point `{gateway}/cam/{camera}` for detection events).
    GasCamera,
}

/// One point's alarm definition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointDef {
    /// Point id (for DI and cameras the virtual id `{gateway}/di/{input}` or `{gateway}/cam/{camera}`).
    pub id: String,
    /// Gateway that delivers the point (used by maintenance windows and offline root cause).
    #[serde(default)]
    pub gateway: Option<String>,
    /// Device behind the gateway (for device-offline root cause).
    #[serde(default)]
    pub device: Option<String>,
    /// Enterprise.
    #[serde(default)]
    pub enterprise: Option<String>,
    /// Grade of this point's alarms.
    #[serde(default)]
    pub grade: Grade,
    /// Kind.
    #[serde(default)]
    pub kind: PointKind,
    /// High-high limit.
    #[serde(default)]
    pub hh: Option<f64>,
    /// High limit (for gas cameras: minimum concentration that counts as a leak).
    #[serde(default)]
    pub h: Option<f64>,
    /// Low limit.
    #[serde(default)]
    pub l: Option<f64>,
    /// Low-low limit.
    #[serde(default)]
    pub ll: Option<f64>,
    /// Deadband (hysteresis) for limit alarms, in engineering units.
    #[serde(default)]
    pub deadband: f64,
    /// On-delay, seconds: the condition must hold this long (source time) before the alarm is raised.
    #[serde(default)]
    pub on_delay_s: f64,
    /// Off-delay, seconds: the condition must be gone this long before the alarm clears.
    #[serde(default)]
    pub off_delay_s: f64,
    /// Rate-of-change limit, units per second (absolute).
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Raise an alarm on Bad quality.
    #[serde(default = "yes")]
    pub bad_quality: bool,
    /// Expected update interval, seconds (enables stale detection).
    #[serde(default)]
    pub expected_interval_s: Option<f64>,
    /// Stale after this many expected intervals without a sample.
    #[serde(default = "three")]
    pub stale_factor: f64,
    /// Frozen when the value is unchanged for this many seconds.
    #[serde(default)]
    pub frozen_after_s: Option<f64>,
    /// Digital: the state (true/false) that is the alarm.
    #[serde(default = "yes")]
    pub alarm_when: bool,
}

fn yes() -> bool {
    true
}
fn three() -> f64 {
    3.0
}

impl PointDef {
    /// A definition with no conditions beyond bad quality (builder start for code and tests).
    pub fn new(id: impl Into<String>) -> PointDef {
        PointDef {
            id: id.into(),
            gateway: None,
            device: None,
            enterprise: None,
            grade: Grade::C,
            kind: PointKind::Analog,
            hh: None,
            h: None,
            l: None,
            ll: None,
            deadband: 0.0,
            on_delay_s: 0.0,
            off_delay_s: 0.0,
            rate_per_s: None,
            bad_quality: true,
            expected_interval_s: None,
            stale_factor: 3.0,
            frozen_after_s: None,
            alarm_when: true,
        }
    }

    /// The limit part.
    pub fn limits(&self) -> Limits {
        Limits { hh: self.hh, h: self.h, l: self.l, ll: self.ll, deadband: self.deadband }
    }

    /// Replace the limit part.
    pub fn set_limits(&mut self, l: Limits) {
        self.hh = l.hh;
        self.h = l.h;
        self.l = l.l;
        self.ll = l.ll;
        self.deadband = l.deadband;
    }

    fn check(&self, at: &str) -> Result<(), AlarmError> {
        let bad = |message: String| Err(AlarmError::Config { path: at.to_owned(), message });
        if vigil_common::PointId::new(self.id.as_str()).is_err() {
            return bad(format!("id {:?} is not a valid point id", self.id));
        }
        for (name, v) in
            [("hh", self.hh), ("h", self.h), ("l", self.l), ("ll", self.ll), ("rate_per_s", self.rate_per_s)]
        {
            if v.is_some_and(|v| !v.is_finite()) {
                return bad(format!("{name} must be a finite number"));
            }
        }
        check_limits(&self.limits()).map_err(|message| AlarmError::Config { path: at.to_owned(), message })?;
        for (name, v) in [
            ("on_delay_s", Some(self.on_delay_s)),
            ("off_delay_s", Some(self.off_delay_s)),
            ("expected_interval_s", self.expected_interval_s),
            ("frozen_after_s", self.frozen_after_s),
            ("stale_factor", Some(self.stale_factor)),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return bad(format!("{name} must be a number >= 0"));
            }
        }
        if self.rate_per_s.is_some_and(|r| r <= 0.0) {
            return bad("rate_per_s must be > 0".into());
        }
        Ok(())
    }
}

/// Checks that limits are ordered ll <= l <= h <= hh and the deadband is sane.
pub fn check_limits(l: &Limits) -> Result<(), String> {
    if !l.deadband.is_finite() || l.deadband < 0.0 {
        return Err("deadband must be a number >= 0".into());
    }
    let seq: Vec<(&str, f64)> = [("ll", l.ll), ("l", l.l), ("h", l.h), ("hh", l.hh)]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect();
    for w in seq.windows(2) {
        if w[0].1 > w[1].1 {
            return Err(format!("{} ({}) must not be above {} ({})", w[0].0, w[0].1, w[1].0, w[1].1));
        }
        if !w[0].1.is_finite() || !w[1].1.is_finite() {
            return Err("limits must be finite".into());
        }
    }
    Ok(())
}

/// A gas-leak level rule: the level applies when either threshold is reached.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GasRule {
    /// Activations (repeats) of the same alert.
    pub repeats: u32,
    /// Longest single activation, seconds.
    pub duration_s: f64,
}

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Data older than this at reception (seconds) is late: recorded as history, not announced.
    pub late_after_s: f64,
    /// Source times more than this far (seconds) ahead of the receive time are replaced by the receive time.
    pub max_future_s: f64,
    /// A gateway silent for this long (seconds, receive time) is offline.
    pub gateway_silence_s: f64,
    /// Pick-up deadline for grade S and A, seconds.
    pub pickup_sa_s: f64,
    /// Pick-up deadline for grades B, C and D, seconds.
    pub pickup_bcd_s: f64,
    /// Grade of alarms raised by gateway offline, device offline, source faults and data loss.
    pub infrastructure_grade: Grade,
    /// At most this many definitions are created for cameras missing from the file (beyond that,
    /// detections alarm under `{gateway}/cam/unlisted`).
    pub max_auto_cameras: usize,
    /// Grade of gas-camera detections without a definition.
    pub gas_default_grade: Grade,
    /// Rule for red.
    pub gas_red: GasRule,
    /// Rule for orange.
    pub gas_orange: GasRule,
    /// Rule for yellow (anything else is blue).
    pub gas_yellow: GasRule,
    /// Close at once (timeline and audit say why) alarm records found in a gateway's re-sent backlog
    /// that also returned to normal within it; orange/red gas alerts stay open for their report.
    pub replay_auto_close: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            late_after_s: 60.0,
            max_future_s: 300.0,
            gateway_silence_s: 90.0,
            pickup_sa_s: 180.0,
            pickup_bcd_s: 600.0,
            infrastructure_grade: Grade::B,
            gas_default_grade: Grade::A,
            max_auto_cameras: 4096,
            replay_auto_close: true,
            gas_red: GasRule { repeats: 5, duration_s: 1800.0 },
            gas_orange: GasRule { repeats: 3, duration_s: 600.0 },
            gas_yellow: GasRule { repeats: 2, duration_s: 180.0 },
        }
    }
}

impl EngineSettings {
    /// Pick-up deadline of a grade, ms.
    pub fn pickup_ms(&self, g: Grade) -> i64 {
        let s = match g {
            Grade::S | Grade::A => self.pickup_sa_s,
            _ => self.pickup_bcd_s,
        };
        secs_to_ms(s)
    }

    /// Gas level for a repeat count and longest duration.
    pub fn gas_level(&self, activations: u32, longest_ms: i64) -> GasLevel {
        let hit = |r: &GasRule| activations >= r.repeats || longest_ms >= secs_to_ms(r.duration_s);
        if hit(&self.gas_red) {
            GasLevel::Red
        } else if hit(&self.gas_orange) {
            GasLevel::Orange
        } else if hit(&self.gas_yellow) {
            GasLevel::Yellow
        } else {
            GasLevel::Blue
        }
    }
}

/// Seconds (f64) to ms, saturating.
pub fn secs_to_ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

/// The definitions file: `[engine]` settings and `[[point]]` definitions.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Engine settings.
    #[serde(default)]
    pub engine: EngineSettings,
    /// Point definitions.
    #[serde(default)]
    pub point: Vec<PointDef>,
    /// Notification channels and rules (see `crate::notify`).
    #[serde(default)]
    pub notify: crate::notify::NotifyConfig,
}

impl AlarmConfig {
    /// Parses and validates a TOML definitions file's text; `file` names it in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<AlarmConfig, AlarmError> {
        let cfg: AlarmConfig =
            toml::from_str(text).map_err(|e| AlarmError::Config { path: file.to_owned(), message: e.to_string() })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Validates the whole configuration.
    pub fn validate(&self, file: &str) -> Result<(), AlarmError> {
        let e = &self.engine;
        for (n, v) in [
            ("late_after_s", e.late_after_s),
            ("max_future_s", e.max_future_s),
            ("gateway_silence_s", e.gateway_silence_s),
            ("pickup_sa_s", e.pickup_sa_s),
            ("pickup_bcd_s", e.pickup_bcd_s),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(AlarmError::Config { path: format!("{file}: engine.{n}"), message: "must be > 0".into() });
            }
        }
        let mut seen = HashSet::new();
        for (i, p) in self.point.iter().enumerate() {
            let at = format!("{file}: point[{i}] ({})", p.id);
            p.check(&at)?;
            if !seen.insert(p.id.as_str()) {
                return Err(AlarmError::Config { path: at, message: "duplicate point id".into() });
            }
        }
        self.notify
            .validate()
            .map_err(|(key, message)| AlarmError::Config { path: format!("{file}: notify.{key}"), message })
    }
}
