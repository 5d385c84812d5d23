//! The pipeline between the drivers and the batcher: scaling, range check, report-by-exception with a
//! deadband and a maximum silent interval, and derived static-levelling values (settlement and its
//! rate).
//!
//! Rules, per point:
//! - value = raw * scale + offset; integers stay integers when scale is 1 and offset 0;
//! - a good value outside the configured range gets quality `UncertainEngineeringUnitsExceeded`;
//! - a reading is reported when its quality differs from the last reported one, when it moved by
//!   more than the deadband (any change if the deadband is 0), or when the last report is at least
//!   the maximum silent interval old; otherwise it is suppressed (and counted);
//! - a bad reading carries the last good value (or zero of its type if there never was one): the
//!   value of a bad sample means nothing, the quality says why.

use std::collections::VecDeque;

use vigil_common::{ClockQuality, Event, PointId, Quality, Sample, Severity, Value};

use crate::Record;
use crate::config::{Plant, PointSpec};
use crate::sources::Metrics;
use crate::sources::modbus::codec::{DataType, Raw};

/// One raw reading of a point, as a driver delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Index of the point in the plant.
    pub point: usize,
    /// Read time (ms since the epoch), one per request.
    pub ts_ms: i64,
    /// The raw value, or why there is none.
    pub outcome: Result<Raw, Quality>,
}

/// A reading from a source that qualifies its own values (OPC UA): a value may come with an
/// uncertain status, and a bad one may or may not carry a value.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReading {
    /// Index of the point in the plant.
    pub point: usize,
    /// Timestamp (ms since the epoch) the source chose for it.
    pub ts_ms: i64,
    /// The raw value, if the source sent a usable one.
    pub raw: Option<Raw>,
    /// The source's quality.
    pub quality: Quality,
}

/// What drivers send to the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceMsg {
    /// The readings of one request.
    Readings(Vec<Reading>),
    /// Readings that carry their source's quality.
    Statused(Vec<StatusReading>),
    /// An event (device offline/online, fault).
    Event(Event),
}

/// Report-by-exception state of one output series.
#[derive(Debug, Clone)]
struct Filter {
    deadband: f64,
    max_silent_ms: i64,
    last: Option<(Value, Quality, i64)>,
}

impl Filter {
    fn new(deadband: f64, max_silent_ms: i64) -> Filter {
        Filter { deadband, max_silent_ms, last: None }
    }

    /// Whether `(value, quality)` at `ts` is to be reported; records it if so.
    fn pass(&mut self, value: &Value, quality: Quality, ts: i64) -> bool {
        let report = match &self.last {
            None => true,
            Some((lv, lq, lts)) => {
                *lq != quality
                    || ts - *lts >= self.max_silent_ms
                    || match (lv.as_f64(), value.as_f64()) {
                        (Some(a), Some(b)) => {
                            if self.deadband > 0.0 {
                                (b - a).abs() > self.deadband
                            } else {
                                a != b
                            }
                        }
                        _ => lv != value,
                    }
            }
        };
        if report {
            self.last = Some((value.clone(), quality, ts));
        }
        report
    }
}

#[derive(Debug, Clone)]
struct PointState {
    filter: Filter,
    last_good: Option<Value>,
    /// Latest reading (engineering value, quality, ts), reported or not: levelling uses it.
    latest: Option<(f64, Quality, i64)>,
}

/// Rate estimator: settlement history over a window, thinned to at most about 512 entries.
#[derive(Debug, Clone)]
struct RateWindow {
    window_ms: i64,
    hist: VecDeque<(i64, f64)>,
}

impl RateWindow {
    fn push(&mut self, ts: i64, s: f64) {
        let step = (self.window_ms / 512).max(1);
        if self.hist.back().is_none_or(|&(t, _)| ts - t >= step) {
            self.hist.push_back((ts, s));
        }
        // Keep exactly one entry at or before the window start as the reference.
        while self.hist.len() >= 2 && self.hist[1].0 <= ts - self.window_ms {
            self.hist.pop_front();
        }
    }

    /// (rate in mm/day, whether the history spans the whole window).
    fn rate(&self, ts: i64, s: f64) -> Option<(f64, bool)> {
        let &(t0, s0) = self.hist.front()?;
        if ts <= t0 {
            return None;
        }
        let days = (ts - t0) as f64 / 86_400_000.0;
        Some(((s - s0) / days, ts - t0 >= self.window_ms))
    }
}

#[derive(Debug, Clone)]
struct LevellingState {
    point: usize,
    initial: f64,
    settlement_id: PointId,
    rate_id: PointId,
    settlement: Filter,
    rate: Filter,
    window: RateWindow,
}

#[derive(Debug, Clone)]
struct LineState {
    base: usize,
    base_initial: f64,
    /// A base reading older than this (ms) is stale.
    base_stale_ms: i64,
    points: Vec<LevellingState>,
}

/// Deadband of the derived settlement rate (mm/day).
pub const RATE_DEADBAND: f64 = 0.01;

/// The pipeline state of a whole plant.
pub struct Pipeline {
    specs: Vec<PointSpec>,
    state: Vec<PointState>,
    lines: Vec<LineState>,
    /// For each point, the (line, measuring point) pairs it feeds.
    feeds: Vec<Vec<(usize, usize)>>,
    clock: ClockQuality,
    report_all: bool,
}

impl Pipeline {
    /// A pipeline for `plant`; `report_all` disables report-by-exception (for one-shot reads).
    pub fn new(plant: &Plant, clock: ClockQuality, report_all: bool) -> Pipeline {
        let state = plant
            .points
            .iter()
            .map(|p| PointState {
                filter: Filter::new(p.deadband, p.max_silent.as_millis().min(i64::MAX as u128) as i64),
                last_good: None,
                latest: None,
            })
            .collect();
        let mut feeds = vec![Vec::new(); plant.points.len()];
        let lines = plant
            .levelling
            .iter()
            .enumerate()
            .map(|(li, l)| {
                let bspec = &plant.points[l.base];
                let dev = &plant.devices[bspec.device];
                LineState {
                    base: l.base,
                    base_initial: l.base_initial_mm,
                    base_stale_ms: (3 * bspec.poll + dev.timeout * (1 + dev.retries)).as_millis() as i64,
                    points: l
                        .points
                        .iter()
                        .enumerate()
                        .map(|(mi, m)| {
                            feeds[m.point].push((li, mi));
                            let spec = &plant.points[m.point];
                            let silent = spec.max_silent.as_millis() as i64;
                            LevellingState {
                                point: m.point,
                                initial: m.initial_mm,
                                settlement_id: m.settlement_id.clone(),
                                rate_id: m.rate_id.clone(),
                                settlement: Filter::new(spec.deadband, silent),
                                rate: Filter::new(RATE_DEADBAND, silent),
                                window: RateWindow {
                                    window_ms: l.rate_window.as_millis() as i64,
                                    hist: VecDeque::new(),
                                },
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Pipeline { specs: plant.points.clone(), state, lines, feeds, clock, report_all }
    }

    /// Processes one message from a driver, appending the records to report to `out`.
    pub fn process(&mut self, msg: SourceMsg, out: &mut Vec<Record>, metrics: &Metrics) {
        match msg {
            SourceMsg::Event(e) => out.push(Record::Event(e)),
            SourceMsg::Readings(rs) => {
                for r in rs {
                    metrics.readings.inc();
                    let (raw, q) = match r.outcome {
                        Ok(raw) => (Some(raw), Quality::GOOD),
                        Err(q) => (None, q),
                    };
                    self.reading(r.point, r.ts_ms, raw, q, out, metrics);
                }
            }
            SourceMsg::Statused(rs) => {
                for r in rs {
                    metrics.readings.inc();
                    // A bad status makes any value meaningless (Part 4, 7.39).
                    let raw = if r.quality.severity() == Severity::Bad { None } else { r.raw };
                    self.reading(r.point, r.ts_ms, raw, r.quality, out, metrics);
                }
            }
        }
    }

    fn reading(
        &mut self,
        point: usize,
        ts_ms: i64,
        raw: Option<Raw>,
        source_quality: Quality,
        out: &mut Vec<Record>,
        metrics: &Metrics,
    ) {
        let Some(spec) = self.specs.get(point) else {
            return;
        };
        let st = &mut self.state[point];
        let (value, quality) = match raw {
            Some(raw) => {
                let v = scale(spec, raw);
                let q = match (spec.range, v.as_f64()) {
                    (Some([lo, hi]), Some(x)) if (x < lo || x > hi) && source_quality.is_good() => {
                        Quality::UNCERTAIN_EU_EXCEEDED
                    }
                    _ => source_quality,
                };
                st.last_good = Some(v.clone());
                (v, q)
            }
            None => {
                let q = source_quality;
                let v = st
                    .last_good
                    .clone()
                    .unwrap_or_else(|| crate::sources::placeholder(spec.dtype, 0, q, self.clock).value);
                (v, q)
            }
        };
        st.latest = Some((value.as_f64().unwrap_or(0.0), quality, ts_ms));
        if self.report_all || st.filter.pass(&value, quality, ts_ms) {
            out.push(Record::Sample {
                point: spec.id.clone(),
                sample: Sample { ts_ms, value, quality, clock: self.clock },
            });
        } else {
            metrics.suppressed.inc();
        }
        for fi in 0..self.feeds[point].len() {
            let (li, mi) = self.feeds[point][fi];
            self.levelling(li, mi, ts_ms, out, metrics);
        }
    }

    fn levelling(&mut self, li: usize, mi: usize, ts: i64, out: &mut Vec<Record>, metrics: &Metrics) {
        let line = &mut self.lines[li];
        let base = self.state[line.base].latest;
        let m = &mut line.points[mi];
        let Some((reading, rq, _)) = self.state[m.point].latest else {
            return;
        };
        // The derived quality is the worse of the two inputs; a missing or stale base is bad.
        let (base_v, bq) = match base {
            None => (0.0, Quality::BAD_NOT_CONNECTED),
            Some((_, _, bts)) if ts - bts > line.base_stale_ms => (0.0, Quality::BAD_TIMEOUT),
            Some((v, q, _)) => (v, q),
        };
        let quality = if !bq.is_good() && bq.severity() >= rq.severity() {
            bq
        } else if !rq.is_good() {
            rq
        } else {
            bq
        };
        let settlement = (reading - m.initial) - (base_v - line.base_initial);
        // Round to the sensors' resolution (0.01 mm) so float noise does not pass as change.
        let settlement = (settlement * 100.0).round() / 100.0;
        // Uncertain inputs (e.g. out of range) still give a value, marked uncertain; bad ones do not.
        let usable = quality.severity() != Severity::Bad;
        let emit = |id: &PointId, f: &mut Filter, v: f64, q: Quality, out: &mut Vec<Record>| {
            let value = Value::F64(v);
            if self.report_all || f.pass(&value, q, ts) {
                out.push(Record::Sample {
                    point: id.clone(),
                    sample: Sample { ts_ms: ts, value, quality: q, clock: self.clock },
                });
            } else {
                metrics.suppressed.inc();
            }
        };
        emit(&m.settlement_id, &mut m.settlement, if usable { settlement } else { 0.0 }, quality, out);
        if quality.is_good() {
            m.window.push(ts, settlement);
        }
        match (usable, m.window.rate(ts, settlement)) {
            (true, Some((rate, full))) => {
                let q = if !quality.is_good() {
                    quality
                } else if full {
                    Quality::GOOD
                } else {
                    Quality::UNCERTAIN
                };
                emit(&m.rate_id, &mut m.rate, (rate * 1000.0).round() / 1000.0, q, out);
            }
            (true, None) => {}
            (false, _) => emit(&m.rate_id, &mut m.rate, 0.0, quality, out),
        }
    }
}

/// Applies scale and offset to a raw value.
pub fn scale(spec: &PointSpec, raw: Raw) -> Value {
    let plain = spec.scale == 1.0 && spec.offset == 0.0;
    match raw {
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) if plain && spec.dtype != DataType::F32 && spec.dtype != DataType::F64 => match i64::try_from(i) {
            Ok(v) => Value::I64(v),
            Err(_) => Value::F64(i as f64),
        },
        other => {
            let mut raw = other.as_f64();
            if spec.dtype == DataType::F32 {
                // The shortest decimal that is this f32 (8.559866, not 8.55986595153809).
                let single = raw as f32;
                raw = single.to_string().parse::<f64>().unwrap_or(raw);
            }
            let v = raw * spec.scale + spec.offset;
            // Keep decimal values exact-looking (the wire codec compresses exact decimals best):
            // round to 12 significant digits, far below any instrument's resolution.
            Value::F64(round_sig(v, 12))
        }
    }
}

fn round_sig(v: f64, digits: i32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let mag = v.abs().log10().floor() as i32;
    let p = digits - 1 - mag;
    if !(-300..=300).contains(&p) {
        return v;
    }
    let f = 10f64.powi(p);
    (v * f).round() / f
}
