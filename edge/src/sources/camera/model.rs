//! Camera models: how one make of gas camera words a detection, and the mapping from its words to
//! Vigil's [`GasDetection`]. A model file (`<model_dir>/<model>.toml`) names, per field, where the
//! value is: a JSON pointer into the HTTP push body, or the `SimpleItem` name of an ONVIF event.
//! The same [`FieldMap`] serves both, through the [`Fields`] view of a message.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use vigil_common::event::{ConcentrationUnit, DetectionPhase, GasDetection, LeakLocation};

/// A camera model file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraModel {
    /// Free text (make, model, firmware, manual reference).
    #[serde(default)]
    pub description: String,
    /// Mapping of the HTTP push body (fields are JSON pointers such as `/alarm/gas`).
    pub push: Option<FieldMap>,
    /// ONVIF event mapping.
    pub onvif: Option<OnvifMap>,
}

/// How ONVIF notifications of this model become detections.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OnvifMap {
    /// Topics (e.g. `tns1:RuleEngine/GasDetector/Leak`) that carry gas detections; others are ignored.
    pub topics: Vec<String>,
    /// Fields, each the `Name` of a `SimpleItem` in the message's `Source` or `Data`.
    pub fields: FieldMap,
}

/// Where each field of a detection is found in a camera's message.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    /// Event time (RFC 3339 text, or Unix time as a number: milliseconds if above 1e11, else seconds).
    pub time: Option<String>,
    /// Start/stop of the detection; its value is looked up in `phases`.
    pub phase: String,
    /// Gas type.
    pub gas: Option<String>,
    /// Gas type when the message names none (a single-gas camera).
    pub default_gas: Option<String>,
    /// Concentration times path length (a number, or a number as text).
    pub concentration: String,
    /// Unit of the concentration; its value is looked up in `units`.
    pub unit: Option<String>,
    /// Unit when the message names none.
    pub default_unit: Option<UnitName>,
    /// Confidence.
    pub confidence: Option<String>,
    /// Factor that brings the confidence to 0..1 (0.01 for a camera reporting percent; default 1).
    #[serde(default = "one")]
    pub confidence_scale: f64,
    /// PTZ preset number.
    pub preset: Option<String>,
    /// Pan angle, degrees.
    pub pan: Option<String>,
    /// Tilt angle, degrees.
    pub tilt: Option<String>,
    /// Image region: an array of 4 numbers, or text `x,y,w,h`.
    pub region: Option<String>,
    /// URL of the snapshot that belongs to the detection.
    pub snapshot_url: Option<String>,
    /// Phase values (as text; booleans as `true`/`false`) and what they mean. Default: `start`,
    /// `true`, `1`, `on`, `alarm` start; `stop`, `false`, `0`, `off`, `clear`, `normal` stop.
    #[serde(default)]
    pub phases: BTreeMap<String, PhaseName>,
    /// Unit values and what they mean. Default: `LEL*m`, `LEL.m`, `LELm`, `%LEL*m` and `ppm*m`,
    /// `ppm.m`, `ppmm` (case-insensitive; `·` accepted for `*`).
    #[serde(default)]
    pub units: BTreeMap<String, UnitName>,
}

fn one() -> f64 {
    1.0
}

/// A detection phase in a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseName {
    /// The leak started being seen.
    Start,
    /// It stopped.
    Stop,
}

/// A concentration unit in a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitName {
    /// LEL times metres.
    LelM,
    /// ppm times metres.
    PpmM,
}

impl From<UnitName> for ConcentrationUnit {
    fn from(u: UnitName) -> Self {
        match u {
            UnitName::LelM => ConcentrationUnit::LelM,
            UnitName::PpmM => ConcentrationUnit::PpmM,
        }
    }
}

/// A value found in a camera message.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// Text.
    Text(Cow<'a, str>),
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A list (a JSON array).
    List(Vec<Value<'a>>),
}

/// A view of one camera message: the value at a key (JSON pointer or ONVIF item name).
pub trait Fields {
    /// The value at `key`, if the message has one there.
    fn get(&self, key: &str) -> Option<Value<'_>>;
}

impl Fields for serde_json::Value {
    fn get(&self, key: &str) -> Option<Value<'_>> {
        fn conv(v: &serde_json::Value, depth: u8) -> Option<Value<'_>> {
            match v {
                serde_json::Value::String(s) => Some(Value::Text(Cow::Borrowed(s))),
                serde_json::Value::Number(n) => n.as_f64().map(Value::Number),
                serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
                serde_json::Value::Array(a) if depth == 0 => {
                    Some(Value::List(a.iter().take(8).filter_map(|x| conv(x, 1)).collect()))
                }
                _ => None,
            }
        }
        self.pointer(key).and_then(|v| conv(v, 0))
    }
}

/// ONVIF `SimpleItem`s of a message, as (name, value).
pub struct Items<'a>(pub &'a [(String, String)]);

impl Fields for Items<'_> {
    fn get(&self, key: &str) -> Option<Value<'_>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| Value::Text(Cow::Borrowed(v.as_str())))
    }
}

/// A message mapped to a detection (without its snapshot yet).
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The camera's time of the event, if it sent one.
    pub ts_ms: Option<i64>,
    /// The detection.
    pub detection: GasDetection,
    /// Where its snapshot is, if the message says.
    pub snapshot_url: Option<String>,
}

/// Why a message could not be mapped: the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct MapError {
    /// The detection field (`phase`, `gas`, ...).
    pub field: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

fn fail(field: &'static str, problem: impl Into<String>) -> MapError {
    MapError { field, problem: problem.into() }
}

/// Longest text accepted in a string field (gas names, URLs).
const MAX_TEXT: usize = 2048;

fn text(v: &Value<'_>) -> Option<String> {
    match v {
        Value::Text(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::List(_) => None,
    }
}

fn number(v: &Value<'_>) -> Option<f64> {
    let n = match v {
        Value::Number(n) => *n,
        Value::Text(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

impl FieldMap {
    /// Problems with the map itself, as (key, problem); `pointers` when keys must be JSON pointers.
    pub fn problems(&self, pointers: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let keys = [
            ("time", self.time.as_deref()),
            ("phase", Some(self.phase.as_str())),
            ("gas", self.gas.as_deref()),
            ("concentration", Some(self.concentration.as_str())),
            ("unit", self.unit.as_deref()),
            ("confidence", self.confidence.as_deref()),
            ("preset", self.preset.as_deref()),
            ("pan", self.pan.as_deref()),
            ("tilt", self.tilt.as_deref()),
            ("region", self.region.as_deref()),
            ("snapshot_url", self.snapshot_url.as_deref()),
        ];
        for (name, key) in keys {
            match key {
                Some(k) if pointers && !k.starts_with('/') => {
                    out.push((name.to_owned(), format!("{k:?} is not a JSON pointer (must start with '/')")))
                }
                Some("") => out.push((name.to_owned(), "is empty".to_owned())),
                _ => {}
            }
        }
        if self.gas.is_none() && self.default_gas.is_none() {
            out.push(("gas".into(), "set `gas` or `default_gas`".into()));
        }
        if self.unit.is_none() && self.default_unit.is_none() {
            out.push(("unit".into(), "set `unit` or `default_unit`".into()));
        }
        if !(self.confidence_scale.is_finite() && self.confidence_scale > 0.0) {
            out.push(("confidence_scale".into(), "must be a positive number".into()));
        }
        out
    }

    /// Maps one message of `camera` to a detection.
    pub fn map(&self, fields: &dyn Fields, camera: &str) -> Result<Mapped, MapError> {
        let get = |k: &Option<String>| k.as_deref().and_then(|k| fields.get(k));
        let phase_value = fields.get(&self.phase).ok_or_else(|| fail("phase", "missing"))?;
        let phase_text = text(&phase_value).ok_or_else(|| fail("phase", "not a scalar"))?;
        let phase = self.phase_of(&phase_text).ok_or_else(|| fail("phase", format!("unknown value {phase_text:?}")))?;
        let gas = match get(&self.gas) {
            Some(v) => text(&v).ok_or_else(|| fail("gas", "not a scalar"))?,
            None => self.default_gas.clone().ok_or_else(|| fail("gas", "missing"))?,
        };
        if gas.is_empty() || gas.len() > 64 || gas.chars().any(char::is_control) {
            return Err(fail("gas", "must be 1..=64 printable characters"));
        }
        let cv = fields.get(&self.concentration).ok_or_else(|| fail("concentration", "missing"))?;
        let concentration = number(&cv).ok_or_else(|| fail("concentration", "not a finite number"))?;
        if !(0.0..=1e9).contains(&concentration) {
            return Err(fail("concentration", format!("{concentration} is outside 0..=1e9")));
        }
        let unit = match get(&self.unit) {
            Some(v) => {
                let t = text(&v).ok_or_else(|| fail("unit", "not a scalar"))?;
                self.unit_of(&t).ok_or_else(|| fail("unit", format!("unknown unit {t:?}")))?
            }
            None => self.default_unit.map(Into::into).ok_or_else(|| fail("unit", "missing"))?,
        };
        let confidence = match get(&self.confidence) {
            Some(v) => {
                let c = number(&v).ok_or_else(|| fail("confidence", "not a finite number"))? * self.confidence_scale;
                if !(0.0..=1.0).contains(&c) {
                    return Err(fail("confidence", format!("{c} is outside 0..=1 after scaling")));
                }
                Some(c as f32)
            }
            None => None,
        };
        let preset = match get(&self.preset) {
            Some(v) => {
                let p = number(&v).ok_or_else(|| fail("preset", "not a number"))?;
                if p.fract() != 0.0 || !(0.0..=65535.0).contains(&p) {
                    return Err(fail("preset", format!("{p} is not an integer in 0..=65535")));
                }
                Some(p as u16)
            }
            None => None,
        };
        let angle = |field: &'static str, key: &Option<String>| -> Result<Option<f32>, MapError> {
            match get(key) {
                Some(v) => {
                    let a = number(&v).ok_or_else(|| fail(field, "not a finite number"))?;
                    if !(-360.0..=360.0).contains(&a) {
                        return Err(fail(field, format!("{a} is outside -360..=360 degrees")));
                    }
                    Ok(Some(a as f32))
                }
                None => Ok(None),
            }
        };
        let pan = angle("pan", &self.pan)?;
        let tilt = angle("tilt", &self.tilt)?;
        let region = match get(&self.region) {
            Some(v) => Some(region_of(&v).ok_or_else(|| fail("region", "not 4 integers x,y,w,h in 0..2^31"))?),
            None => None,
        };
        let snapshot_url = match get(&self.snapshot_url) {
            Some(v) => {
                let u = text(&v).ok_or_else(|| fail("snapshot_url", "not text"))?;
                if u.len() > MAX_TEXT {
                    return Err(fail("snapshot_url", format!("longer than {MAX_TEXT} bytes")));
                }
                (!u.is_empty()).then_some(u)
            }
            None => None,
        };
        let ts_ms = match get(&self.time) {
            Some(v) => Some(time_of(&v).ok_or_else(|| fail("time", "not RFC 3339 or a Unix time"))?),
            None => None,
        };
        Ok(Mapped {
            ts_ms,
            detection: GasDetection {
                camera: camera.to_owned(),
                phase,
                gas,
                concentration,
                unit,
                confidence,
                location: LeakLocation { preset, pan, tilt, region },
                snapshot: None,
            },
            snapshot_url,
        })
    }

    fn phase_of(&self, value: &str) -> Option<DetectionPhase> {
        let p = if self.phases.is_empty() {
            match value.to_ascii_lowercase().as_str() {
                "start" | "true" | "1" | "on" | "alarm" => PhaseName::Start,
                "stop" | "false" | "0" | "off" | "clear" | "normal" => PhaseName::Stop,
                _ => return None,
            }
        } else {
            *self.phases.get(value)?
        };
        Some(match p {
            PhaseName::Start => DetectionPhase::Start,
            PhaseName::Stop => DetectionPhase::Stop,
        })
    }

    fn unit_of(&self, value: &str) -> Option<ConcentrationUnit> {
        if !self.units.is_empty() {
            return self.units.get(value).map(|u| (*u).into());
        }
        let v = value.to_ascii_lowercase().replace('·', "*");
        match v.as_str() {
            "lel*m" | "lel.m" | "lelm" | "%lel*m" => Some(ConcentrationUnit::LelM),
            "ppm*m" | "ppm.m" | "ppmm" => Some(ConcentrationUnit::PpmM),
            _ => None,
        }
    }
}

fn region_of(v: &Value<'_>) -> Option<[u32; 4]> {
    let nums: Vec<f64> = match v {
        Value::List(items) => items.iter().map(number).collect::<Option<_>>()?,
        Value::Text(s) => {
            s.split([',', ' ']).filter(|p| !p.is_empty()).map(|p| p.trim().parse().ok()).collect::<Option<_>>()?
        }
        _ => return None,
    };
    if nums.len() != 4 {
        return None;
    }
    let mut out = [0u32; 4];
    for (o, n) in out.iter_mut().zip(nums) {
        if !(n.is_finite() && n.fract() == 0.0 && (0.0..2_147_483_648.0).contains(&n)) {
            return None;
        }
        *o = n as u32;
    }
    Some(out)
}

fn time_of(v: &Value<'_>) -> Option<i64> {
    match v {
        Value::Number(n) if n.is_finite() && *n >= 0.0 && *n < 1e15 => {
            Some(if *n >= 1e11 { *n as i64 } else { (*n * 1000.0) as i64 })
        }
        Value::Text(s) => parse_rfc3339_ms(s.trim()),
        _ => None,
    }
}

/// Parses an RFC 3339 / `xs:dateTime` time (`2026-11-23T19:08:02.5Z`, `...+02:00`) to Unix ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || !s.is_ascii() || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok()).flatten()
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut ms = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let f = &frac[..digits];
        ms = f[..digits.min(3)].parse::<i64>().ok()? * 10i64.pow(3 - digits.min(3) as u32);
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) && &rest[3..4] == ":" => {
            let oh: i64 = rest[1..3].parse().ok()?;
            let om: i64 = rest[4..6].parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if rest.starts_with('-') { -m } else { m }
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + ms)
}

/// Formats Unix ms as RFC 3339 UTC with milliseconds (`2026-11-23T19:08:02.500Z`).
pub fn format_rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil date from days (inverse of the above).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim_map() -> FieldMap {
        toml::from_str(
            r#"
time = "/time"
phase = "/state"
gas = "/gas"
concentration = "/cpl"
unit = "/unit"
confidence = "/confidence"
confidence_scale = 0.01
preset = "/ptz/preset"
pan = "/ptz/pan"
tilt = "/ptz/tilt"
region = "/region"
snapshot_url = "/snapshot"
"#,
        )
        .unwrap()
    }

    #[test]
    fn maps_a_full_body() {
        let body = serde_json::json!({
            "time": "2026-11-23T19:08:02.250Z", "state": "alarm", "gas": "methane", "cpl": 1250.5,
            "unit": "ppm*m", "confidence": 87, "ptz": {"preset": 3, "pan": 121.5, "tilt": -4.0},
            "region": [10, 20, 64, 48], "snapshot": "http://cam/snap/1.jpg"
        });
        let m = sim_map().map(&body, "cam-1").unwrap();
        assert_eq!(m.ts_ms, Some(1_795_460_882_250));
        assert_eq!(m.detection.phase, DetectionPhase::Start);
        assert_eq!(m.detection.unit, ConcentrationUnit::PpmM);
        assert_eq!(m.detection.confidence, Some(0.87));
        assert_eq!(m.detection.location.region, Some([10, 20, 64, 48]));
        assert_eq!(m.detection.location.preset, Some(3));
        assert_eq!(m.snapshot_url.as_deref(), Some("http://cam/snap/1.jpg"));
    }

    #[test]
    fn names_the_bad_field() {
        let body = serde_json::json!({"state": "alarm", "gas": "methane", "cpl": "lots", "unit": "ppm*m"});
        assert_eq!(sim_map().map(&body, "c").unwrap_err().field, "concentration");
        let body = serde_json::json!({"state": "maybe", "gas": "methane", "cpl": 1, "unit": "ppm*m"});
        assert_eq!(sim_map().map(&body, "c").unwrap_err().field, "phase");
        let body = serde_json::json!({"state": "stop", "gas": "methane", "cpl": 1, "unit": "furlongs"});
        assert_eq!(sim_map().map(&body, "c").unwrap_err().field, "unit");
        let body = serde_json::json!({"state": "stop", "gas": "x", "cpl": 1, "unit": "lel*m", "region": [1, 2, 3]});
        assert_eq!(sim_map().map(&body, "c").unwrap_err().field, "region");
    }

    #[test]
    fn onvif_items_map_with_text_values() {
        let items = vec![
            ("State".to_owned(), "true".to_owned()),
            ("GasType".to_owned(), "SF6".to_owned()),
            ("Concentration".to_owned(), "0.8".to_owned()),
            ("Region".to_owned(), "1,2,3,4".to_owned()),
        ];
        let map = FieldMap {
            phase: "State".into(),
            gas: Some("GasType".into()),
            concentration: "Concentration".into(),
            default_unit: Some(UnitName::LelM),
            region: Some("Region".into()),
            ..sim_map()
        };
        let m = map.map(&Items(&items), "c").unwrap();
        assert_eq!(m.detection.gas, "SF6");
        assert_eq!(m.detection.unit, ConcentrationUnit::LelM);
        assert_eq!(m.detection.location.region, Some([1, 2, 3, 4]));
    }

    #[test]
    fn rfc3339_round_trips_and_rejects_nonsense() {
        for ms in [0i64, 1_795_460_882_250, 951_782_400_000, 4_102_444_800_999] {
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms), "{}", format_rfc3339_ms(ms));
        }
        assert_eq!(parse_rfc3339_ms("2026-11-23T21:08:02+02:00"), parse_rfc3339_ms("2026-11-23T19:08:02Z"));
        for bad in
            ["", "2026-13-01T00:00:00Z", "2026-11-23T19:08:02", "2026-11-23T19:08:02.Z", "２０２６-11-23T19:08:02Z"]
        {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_json_maps_or_errors_without_panicking(body in arb_json()) {
            let _ = sim_map().map(&body, "c");
        }

        #[test]
        fn any_text_time_parses_or_not_without_panicking(s in ".{0,40}") {
            let _ = parse_rfc3339_ms(&s);
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            "[a-z*0-9.:T -]{0,24}".prop_map(serde_json::Value::String),
        ];
        let keys = prop_oneof![
            Just("state"),
            Just("gas"),
            Just("cpl"),
            Just("unit"),
            Just("confidence"),
            Just("ptz"),
            Just("preset"),
            Just("pan"),
            Just("region"),
            Just("time"),
            Just("snapshot")
        ];
        leaf.prop_recursive(3, 32, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(keys.clone().prop_map(str::to_owned), inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
