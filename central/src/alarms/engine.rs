//! The engine: detection on source timestamps, the ISA-18.2 state machine with durable state, operator
//! actions with the audit chain, maintenance windows, threshold workflow and supervision.
//!
//! Every method that changes state writes it to the store in one transaction first and only then
//! updates memory and publishes [`AlarmChange`]s. If the store fails, memory stays as it was (the
//! detector is rolled back too), so the next sample or tick tries again: nothing is lost, nothing is
//! announced that is not durable. Methods take `&mut self`: the caller serialises all inputs through
//! one owner (e.g. a task or a `tokio::sync::Mutex`), which is what makes near-simultaneous messages
//! unable to create two alarms.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use serde_json::json;
use tokio::sync::broadcast;
use vigil_common::{Event, EventKind, GatewayId, PointId, Sample, Severity};

use super::audit::{AuditRecord, verify_chain};
use super::config::{AlarmConfig, EngineSettings, PointDef, PointKind, check_limits, secs_to_ms};
use super::detect::{Compiled, Detector, To, Transition};
use super::error::AlarmError;
use super::model::{
    Alarm, AlarmChange, AlarmKey, AlarmSource, AlarmState, ChangeKind, Condition, GasLevel, Grade, Limits,
    MaintenanceWindow, OutOfService, RequestStatus, Shelve, Stage, ThresholdRequest, TimelineEntry, WindowStatus,
};
use super::store::{AlarmStore, SqliteStore, StoreOp};

/// Capacity of the change channel; a subscriber that falls further behind gets `Lagged` and should
/// reload the open alarms.
pub const CHANGE_CHANNEL_CAPACITY: usize = 4096;

const NONE: i64 = i64::MIN;
const SYSTEM: &str = "system";

/// FxHash-style hasher for the point index (keys come from the definitions file).
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Fx {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

#[derive(Debug, Clone)]
struct GatewayRt {
    id: String,
    /// No gateway-offline alarm is active.
    online: bool,
    /// Latest receive time of anything from it (NONE: not yet).
    last_seen: i64,
    /// Receive time of the first batch since start (NONE: none yet).
    first_batch: i64,
}

/// A point resolved by [`AlarmEngine::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PointRef(u32);

/// The hot per-point state, kept together so a sample touches one contiguous record.
#[derive(Debug, Clone)]
struct Hot {
    /// Gateway slot (from the definition, or learned from the first sample).
    gw: u32,
    c: Compiled,
    det: Detector,
}

#[derive(Default)]
struct Plan {
    ops: Vec<StoreOp>,
    alarm: Option<Alarm>,
    current: Option<(bool, AlarmKey, Option<i64>)>,
    changes: Vec<AlarmChange>,
}

struct Ctx {
    ts: i64,
    received: i64,
    value: Option<f64>,
    limit: Option<f64>,
    grade: Grade,
    enterprise: Option<String>,
    gateway: Option<String>,
    historical: bool,
    replay: bool,
}

/// The alarm engine (see the module documentation).
pub struct AlarmEngine<S: AlarmStore = SqliteStore> {
    store: S,
    settings: EngineSettings,
    late_ms: i64,
    future_ms: i64,
    auto_points: usize,
    defs: Vec<PointDef>,
    hot: Vec<Hot>,
    replay: HashMap<u32, Detector>,
    index: FxMap<String, u32>,
    gateways: Vec<GatewayRt>,
    gw_index: FxMap<String, u32>,
    offline_devices: HashSet<(String, String)>,
    /// Enterprise of each gateway (from the registry and the topics of accepted batches).
    gateway_enterprise: HashMap<String, String>,
    alarms: HashMap<i64, Alarm>,
    current: HashMap<AlarmKey, i64>,
    replay_current: HashMap<AlarmKey, i64>,
    shelves: HashMap<AlarmKey, Shelve>,
    oos: HashMap<AlarmKey, OutOfService>,
    windows: BTreeMap<i64, MaintenanceWindow>,
    requests: BTreeMap<i64, ThresholdRequest>,
    next_ids: (i64, i64, i64),
    audit_head: (i64, String),
    tx: broadcast::Sender<AlarmChange>,
    scratch: Vec<Transition>,
    /// The open alarms as the API lists them, kept current here (see `live::OpenView`).
    view: std::sync::Arc<super::live::OpenView>,
}

impl AlarmEngine<SqliteStore> {
    /// Opens the engine on a SQLite pool (creating the `alarm_*` tables if needed).
    pub async fn open_sqlite(pool: sqlx::SqlitePool, config: AlarmConfig) -> Result<Self, AlarmError> {
        Self::open(SqliteStore::new(pool), config).await
    }
}

impl<S: AlarmStore> AlarmEngine<S> {
    /// Opens the engine: creates the tables, loads durable state (open alarms, shelving, windows,
    /// approved limits, audit head) and seeds the detectors so nothing is raised twice or left uncleared.
    pub async fn open(store: S, config: AlarmConfig) -> Result<Self, AlarmError> {
        config.validate("alarm definitions")?;
        store.init().await?;
        let snap = store.load().await?;
        let (tx, _) = broadcast::channel(CHANGE_CHANNEL_CAPACITY);
        let mut e = AlarmEngine {
            store,
            late_ms: secs_to_ms(config.engine.late_after_s),
            future_ms: secs_to_ms(config.engine.max_future_s),
            auto_points: 0,
            settings: config.engine,
            defs: Vec::new(),
            hot: Vec::new(),
            replay: HashMap::new(),
            index: FxMap::default(),
            gateways: Vec::new(),
            gw_index: FxMap::default(),
            offline_devices: HashSet::new(),
            gateway_enterprise: HashMap::new(),
            alarms: HashMap::new(),
            current: HashMap::new(),
            replay_current: HashMap::new(),
            shelves: snap.shelves.into_iter().collect(),
            oos: snap.out_of_service.into_iter().collect(),
            windows: snap.windows.into_iter().map(|w| (w.id, w)).collect(),
            requests: snap.requests.into_iter().map(|r| (r.id, r)).collect(),
            next_ids: snap.max_ids,
            audit_head: snap.audit_head,
            tx,
            scratch: Vec::new(),
            view: super::live::OpenView::new(),
        };
        for d in config.point {
            e.add_point(d);
        }
        for (p, l) in snap.limits {
            if let Some(&ix) = e.index.get(&p) {
                e.defs[ix as usize].set_limits(l);
                e.hot[ix as usize].c.limits = l;
            }
        }
        let n = snap.open_alarms.len();
        for a in snap.open_alarms {
            e.seed(a);
        }
        e.view.reset(e.alarms.values(), e.shelves.iter().map(|(k, s)| (k.clone(), s.until_ms)), e.next_ids.0);
        tracing::info!(points = e.defs.len(), open_alarms = n, audit_records = e.audit_head.0, "alarm engine opened");
        Ok(e)
    }

    fn gateway_slot(&mut self, g: &str) -> u32 {
        if let Some(&s) = self.gw_index.get(g) {
            return s;
        }
        let s = self.gateways.len() as u32;
        self.gateways.push(GatewayRt { id: g.to_owned(), online: true, last_seen: NONE, first_batch: NONE });
        self.gw_index.insert(g.to_owned(), s);
        s
    }

    fn add_point(&mut self, d: PointDef) -> u32 {
        let ix = self.defs.len() as u32;
        let gw = match &d.gateway {
            Some(g) => self.gateway_slot(&g.clone()),
            None => u32::MAX,
        };
        self.index.insert(d.id.clone(), ix);
        self.hot.push(Hot { gw, c: Compiled::new(&d), det: Detector::default() });
        self.defs.push(d);
        ix
    }

    fn seed(&mut self, a: Alarm) {
        if a.state() != AlarmState::Normal {
            if a.replay {
                self.replay_current.insert(a.key.clone(), a.id);
            } else {
                self.current.insert(a.key.clone(), a.id);
                match &a.key.source {
                    AlarmSource::Point(p) => {
                        if let (Some(slot), Some(&ix)) = (a.key.condition.slot(), self.index.get(p)) {
                            let det = &mut self.hot[ix as usize].det;
                            // Older samples arriving after the restart are backfill for the replay lane.
                            det.last_ts = det.last_ts.max(a.last_active_ms).max(a.cleared_ms.unwrap_or(NONE));
                            let c = &mut det.conds[slot];
                            c.active = a.active;
                            c.historical = a.active && a.historical;
                        }
                    }
                    AlarmSource::Gateway(g) => {
                        if a.key.condition == Condition::GatewayOffline && a.active {
                            let s = self.gateway_slot(&g.clone());
                            self.gateways[s as usize].online = false;
                        }
                    }
                    AlarmSource::Device(g, d) => {
                        if a.key.condition == Condition::DeviceOffline && a.active {
                            self.offline_devices.insert((g.clone(), d.clone()));
                        }
                    }
                }
            }
        }
        self.alarms.insert(a.id, a);
    }

    // ----- inputs -------------------------------------------------------------------------------

    /// Resolves a definition key (`{gateway}/{point}`) to a [`PointRef`]; see [`AlarmEngine::resolve`].
    pub fn resolve_key(&self, key: &str) -> Option<PointRef> {
        self.index.get(key).map(|&ix| PointRef(ix))
    }

    /// Resolves a point id to a [`PointRef`] (valid for the life of this engine), so a caller that
    /// keeps it per series can skip the id lookup with [`AlarmEngine::on_sample_at`].
    pub fn resolve(&self, point: &PointId) -> Option<PointRef> {
        self.index.get(point.as_str()).map(|&ix| PointRef(ix))
    }

    /// Evaluates one sample of a point (source time `sample.ts_ms`, received at `received_ms`).
    /// Undefined points are ignored. A sample that changes nothing costs a hash lookup and a few
    /// comparisons; one that changes an alarm is durable before this returns.
    pub async fn on_sample(
        &mut self,
        gateway: &GatewayId,
        point: &PointId,
        sample: &Sample,
        received_ms: i64,
    ) -> Result<(), AlarmError> {
        match self.index.get(point.as_str()) {
            Some(&ix) => self.on_sample_at(gateway, PointRef(ix), sample, received_ms).await,
            None => Ok(()),
        }
    }

    /// [`AlarmEngine::on_sample`] for a point already resolved with [`AlarmEngine::resolve`].
    pub async fn on_sample_at(
        &mut self,
        gateway: &GatewayId,
        point: PointRef,
        sample: &Sample,
        received_ms: i64,
    ) -> Result<(), AlarmError> {
        let ix = point.0;
        if ix as usize >= self.hot.len() {
            return Ok(());
        }
        if self.hot[ix as usize].gw == u32::MAX {
            let g = self.gateway_slot(gateway.as_str());
            self.hot[ix as usize].gw = g;
        }
        let g = &mut self.gateways[self.hot[ix as usize].gw as usize];
        if received_ms > g.last_seen {
            g.last_seen = received_ms;
        }
        let gw_offline = !g.online;
        let bad = sample.quality.severity() == Severity::Bad;
        let pending = self.detect(ix, sample.ts_ms, sample.value.as_f64(), bad, received_ms);
        if pending.is_none() && !gw_offline {
            return Ok(());
        }
        // The slow path is boxed so the future of a sample that changes nothing stays small.
        Box::pin(self.slow(ix, pending, gw_offline.then_some(gateway.as_str()), received_ms)).await
    }

    async fn eval(
        &mut self,
        ix: u32,
        ts: i64,
        value: Option<f64>,
        bad: bool,
        received_ms: i64,
    ) -> Result<(), AlarmError> {
        match self.detect(ix, ts, value, bad, received_ms) {
            None => Ok(()),
            Some(p) => Box::pin(self.slow(ix, Some(p), None, received_ms)).await,
        }
    }

    /// Runs the detector (memory only). Returns `Some((replay, historical))` when transitions are
    /// waiting in `self.scratch`.
    #[inline]
    fn detect(&mut self, ix: u32, ts: i64, value: Option<f64>, bad: bool, received_ms: i64) -> Option<(bool, bool)> {
        let ts = if ts > received_ms.saturating_add(self.future_ms) {
            // A source clock far ahead would push the point's timeline into the future and make every
            // later sample look like backfill: evaluate at the receive time instead.
            tracing::warn!(point = %self.defs[ix as usize].id, ts, received_ms, "source time in the future; using receive time");
            received_ms
        } else {
            ts
        };
        let live = received_ms.saturating_sub(ts) <= self.late_ms;
        let h = &mut self.hot[ix as usize];
        let (c, det) = (&h.c, &mut h.det);
        let replay = ts < det.last_ts;
        if !replay {
            det.sample(c, ts, value, !bad, live, &mut self.scratch);
        } else {
            let r = self.replay.entry(ix).or_default();
            if ts < r.last_ts {
                tracing::debug!(point = %self.defs[ix as usize].id, ts, "sample older than the replayed history, ignored");
            } else {
                r.sample(c, ts, value, !bad, false, &mut self.scratch);
            }
        }
        if self.scratch.is_empty() { None } else { Some((replay, !live)) }
    }

    async fn slow(
        &mut self,
        ix: u32,
        pending: Option<(bool, bool)>,
        gateway_back: Option<&str>,
        received_ms: i64,
    ) -> Result<(), AlarmError> {
        if let Some((replay, historical)) = pending {
            let mut out = std::mem::take(&mut self.scratch);
            let r = self.apply_transitions(ix, &out, replay, historical, received_ms).await;
            out.clear();
            self.scratch = out;
            r?;
        }
        if let Some(g) = gateway_back {
            self.gateway_back(g, received_ms).await?;
        }
        Ok(())
    }

    async fn apply_transitions(
        &mut self,
        ix: u32,
        ts: &[Transition],
        replay: bool,
        historical: bool,
        received_ms: i64,
    ) -> Result<(), AlarmError> {
        for (i, t) in ts.iter().enumerate() {
            let d = &self.defs[ix as usize];
            let key = AlarmKey { source: AlarmSource::Point(d.id.clone()), condition: Condition::from_slot(t.slot) };
            let ctx = Ctx {
                ts: t.ts_ms,
                received: received_ms,
                value: t.value,
                limit: t.limit,
                grade: d.grade,
                enterprise: self.point_enterprise_ix(ix),
                gateway: self.point_gateway(ix),
                historical: historical || replay,
                replay,
            };
            let plan = match t.to {
                To::Active => self.plan_activate(key, ctx),
                To::Clear => self.plan_clear(&key, ctx),
                To::Promote => self.plan_promote(&key, ctx),
            };
            if let Err(e) = self.commit(plan).await {
                // Roll the detector back so the next sample or tick retries these transitions.
                let det =
                    if replay { self.replay.get_mut(&ix) } else { self.hot.get_mut(ix as usize).map(|h| &mut h.det) };
                if let Some(det) = det {
                    for t in &ts[i..] {
                        let c = &mut det.conds[t.slot];
                        match t.to {
                            To::Active => c.active = false,
                            To::Clear => c.active = true,
                            To::Promote => c.historical = true,
                        }
                        c.pending_since = NONE;
                    }
                }
                tracing::error!(error = %e, "alarm store failed; transition will be retried");
                return Err(e);
            }
        }
        Ok(())
    }

    fn point_gateway(&self, ix: u32) -> Option<String> {
        let g = self.hot[ix as usize].gw;
        self.gateways.get(g as usize).map(|g| g.id.clone())
    }

    /// A point's enterprise: its definition's, else its gateway's.
    fn point_enterprise_ix(&self, ix: u32) -> Option<String> {
        self.defs[ix as usize].enterprise.clone().or_else(|| {
            let g = self.gateways.get(self.hot[ix as usize].gw as usize)?;
            self.gateway_enterprise.get(&g.id).cloned()
        })
    }

    /// Records the enterprise a gateway belongs to (from the registry, or the topic of an accepted
    /// batch); alarms of its gateway, devices and points without an enterprise of their own take it.
    pub fn set_gateway_enterprise(&mut self, gateway: &str, enterprise: &str) {
        if self.gateway_enterprise.get(gateway).is_none_or(|e| e != enterprise) {
            self.gateway_enterprise.insert(gateway.to_owned(), enterprise.to_owned());
        }
    }

    /// The enterprise an alarm source belongs to, as far as the engine knows it.
    pub fn source_enterprise(&self, source: &AlarmSource) -> Option<String> {
        match source {
            AlarmSource::Point(p) => match self.index.get(p) {
                Some(&ix) => self.point_enterprise_ix(ix),
                None => None,
            },
            AlarmSource::Gateway(g) | AlarmSource::Device(g, _) => self.gateway_enterprise.get(g).cloned(),
        }
    }

    /// Evaluates one gateway event: gas-camera detections (virtual point `{gateway}/cam/{camera}`,
    /// always alarmed, with a default definition if none is configured), digital inputs (virtual point
    /// `{gateway}/di/{input}`, alarmed if defined), device offline/online, source faults and data loss.
    pub async fn on_event(&mut self, gateway: &GatewayId, event: &Event, received_ms: i64) -> Result<(), AlarmError> {
        let g = gateway.as_str();
        let slot = self.gateway_slot(g);
        let gw = &mut self.gateways[slot as usize];
        gw.last_seen = gw.last_seen.max(received_ms);
        if !gw.online {
            self.gateway_back(g, received_ms).await?;
        }
        let ts = event.ts_ms;
        match &event.kind {
            EventKind::GasDetection(d) => {
                let mut id = format!("{g}/cam/{}", d.camera);
                if !self.index.contains_key(&id) && self.auto_points >= self.settings.max_auto_cameras {
                    // Bound what gateway-supplied names can add; the detection still alarms.
                    tracing::error!(point = %id, "too many undefined cameras; alarming under {g}/cam/unlisted");
                    id = format!("{g}/cam/unlisted");
                }
                let ix = match self.index.get(&id) {
                    Some(&ix) => ix,
                    None => {
                        self.auto_points += 1;
                        let mut def = PointDef::new(id);
                        def.kind = PointKind::GasCamera;
                        def.gateway = Some(g.to_owned());
                        def.grade = self.settings.gas_default_grade;
                        def.bad_quality = false;
                        tracing::warn!(point = %def.id, "gas detection from a camera without a definition; using defaults");
                        self.add_point(def)
                    }
                };
                let start = d.phase == vigil_common::event::DetectionPhase::Start;
                let v = if start { d.concentration.max(f64::MIN_POSITIVE) } else { 0.0 };
                let replay = ts < self.hot[ix as usize].det.last_ts;
                self.eval(ix, ts, Some(v), false, received_ms).await?;
                if start { self.record_detection(ix, d, ts, replay, received_ms).await } else { Ok(()) }
            }
            EventKind::DigitalInput { input, state } => {
                let id = format!("{g}/di/{input}");
                match self.index.get(&id) {
                    Some(&ix) => self.eval(ix, ts, Some(f64::from(u8::from(*state))), false, received_ms).await,
                    None => {
                        tracing::debug!(point = %id, "digital input without a definition, ignored");
                        Ok(())
                    }
                }
            }
            EventKind::DeviceOffline { device, reason } => {
                self.offline_devices.insert((g.to_owned(), device.clone()));
                let key = AlarmKey {
                    source: AlarmSource::Device(g.to_owned(), device.clone()),
                    condition: Condition::DeviceOffline,
                };
                let mut ctx = self.infra_ctx(g, ts, received_ms);
                ctx.value = None;
                let mut plan = self.plan_activate(key, ctx);
                if let Some(a) = &plan.alarm {
                    plan.ops.push(StoreOp::Timeline(entry(a.id, ts, "device_offline_reason", SYSTEM, reason, false)));
                }
                self.commit(plan).await
            }
            EventKind::DeviceOnline { device } => {
                self.offline_devices.remove(&(g.to_owned(), device.clone()));
                let key = AlarmKey {
                    source: AlarmSource::Device(g.to_owned(), device.clone()),
                    condition: Condition::DeviceOffline,
                };
                let ctx = self.infra_ctx(g, ts, received_ms);
                let plan = self.plan_clear(&key, ctx);
                self.commit(plan).await
            }
            EventKind::SourceFault { source, message } => {
                let key = AlarmKey {
                    source: AlarmSource::Device(g.to_owned(), source.clone()),
                    condition: Condition::SourceFault,
                };
                self.one_shot(key, g, ts, received_ms, message.clone()).await
            }
            EventKind::SpoolDropped { class, batches, samples, events } => {
                let key = AlarmKey { source: AlarmSource::Gateway(g.to_owned()), condition: Condition::DataLoss };
                let what = format!("dropped {class:?}: {batches} batches, {samples} samples, {events} events");
                self.one_shot(key, g, ts, received_ms, what).await
            }
            EventKind::SpoolLost { reason, quarantined_to, .. } => {
                let key = AlarmKey { source: AlarmSource::Gateway(g.to_owned()), condition: Condition::DataLoss };
                self.one_shot(key, g, ts, received_ms, format!("spool lost: {reason} (kept as {quarantined_to})")).await
            }
            EventKind::GatewayStarted { .. } => Ok(()),
            // A site relay switched by a local rule: alarms through a definition of `{g}/do/{output}`
            // when the park defines one (for example to see sirens sounding), otherwise recorded only
            // in the history of the batch.
            EventKind::LocalAlarm { output, on, .. } => {
                let id = format!("{g}/do/{output}");
                match self.index.get(&id) {
                    Some(&ix) => self.eval(ix, ts, Some(f64::from(u8::from(*on))), false, received_ms).await,
                    None => Ok(()),
                }
            }
        }
    }

    fn infra_ctx(&self, g: &str, ts: i64, received: i64) -> Ctx {
        Ctx {
            ts,
            received,
            value: None,
            limit: None,
            grade: self.settings.infrastructure_grade,
            enterprise: self.gateway_enterprise.get(g).cloned(),
            gateway: Some(g.to_owned()),
            historical: received.saturating_sub(ts) > self.late_ms,
            replay: false,
        }
    }

    /// A momentary condition: raised and returned to normal at once; it stays until acknowledged.
    async fn one_shot(
        &mut self,
        key: AlarmKey,
        g: &str,
        ts: i64,
        received: i64,
        what: String,
    ) -> Result<(), AlarmError> {
        let mut plan = self.plan_activate(key.clone(), self.infra_ctx(g, ts, received));
        let Some(a) = plan.alarm.take() else { return Ok(()) };
        let mut a2 = a.clone();
        a2.active = false;
        a2.cleared_ms = Some(ts);
        plan.ops.retain(|o| !matches!(o, StoreOp::PutAlarm(_)));
        plan.ops.push(StoreOp::PutAlarm(a2.clone()));
        plan.ops.push(StoreOp::Timeline(entry(a.id, ts, "message", SYSTEM, &what, a.historical)));
        for c in &mut plan.changes {
            c.alarm = a2.clone();
        }
        plan.alarm = Some(a2);
        self.commit(plan).await
    }

    /// Anything accepted from a gateway (call once per batch): keeps its silence timer fresh and
    /// clears its offline alarm.
    pub async fn on_gateway_seen(&mut self, gateway: &GatewayId, received_ms: i64) -> Result<(), AlarmError> {
        let g = gateway.as_str();
        let slot = self.gateway_slot(g) as usize;
        let gw = &mut self.gateways[slot];
        gw.last_seen = gw.last_seen.max(received_ms);
        if gw.first_batch == NONE {
            gw.first_batch = received_ms;
        }
        if !gw.online {
            self.gateway_back(g, received_ms).await?;
        }
        Ok(())
    }

    /// Measured points whose gateway has been sending for at least `after_ms` since start without
    /// ever sending the point: most likely a definition id that is not `{gateway}/{point}` as the
    /// gateway names it, which would otherwise never alarm and never say so.
    pub fn unmatched_points(&self, now_ms: i64, after_ms: i64) -> Vec<&str> {
        self.defs
            .iter()
            .zip(&self.hot)
            .filter(|(d, h)| {
                d.kind == PointKind::Analog
                    && h.det.last_ts == NONE
                    && self
                        .gateways
                        .get(h.gw as usize)
                        .is_some_and(|g| g.first_batch != NONE && now_ms.saturating_sub(g.first_batch) >= after_ms)
            })
            .map(|(d, _)| d.id.as_str())
            .collect()
    }

    /// A gateway's birth (online) or death (offline) state, at `ts_ms`.
    pub async fn on_gateway_state(&mut self, gateway: &GatewayId, online: bool, ts_ms: i64) -> Result<(), AlarmError> {
        let g = gateway.as_str();
        let slot = self.gateway_slot(g) as usize;
        if online {
            self.gateways[slot].last_seen = self.gateways[slot].last_seen.max(ts_ms);
            if !self.gateways[slot].online {
                self.gateway_back(g, ts_ms).await?;
            }
            Ok(())
        } else {
            self.gateway_down(slot, ts_ms, ts_ms, "death message").await
        }
    }

    async fn gateway_down(&mut self, slot: usize, ts: i64, received: i64, why: &str) -> Result<(), AlarmError> {
        let g = self.gateways[slot].id.clone();
        let key = AlarmKey { source: AlarmSource::Gateway(g.clone()), condition: Condition::GatewayOffline };
        let mut plan = self.plan_activate(key, self.infra_ctx(&g, ts, received));
        if let Some(a) = &plan.alarm {
            plan.ops.push(StoreOp::Timeline(entry(a.id, ts, "offline_cause", SYSTEM, why, false)));
        }
        self.commit(plan).await?;
        self.gateways[slot].online = false;
        Ok(())
    }

    async fn gateway_back(&mut self, g: &str, ts: i64) -> Result<(), AlarmError> {
        let key = AlarmKey { source: AlarmSource::Gateway(g.to_owned()), condition: Condition::GatewayOffline };
        let plan = self.plan_clear(&key, self.infra_ctx(g, ts, ts));
        self.commit(plan).await?;
        let slot = self.gateway_slot(g) as usize;
        self.gateways[slot].online = true;
        Ok(())
    }

    /// Time-driven work at wall-clock `now_ms` (call about once a second): gateway silence, stale
    /// points, on/off delays completing without a new sample, shelve and maintenance-window expiry,
    /// pick-up deadlines (supervision) and gas-level escalation by duration.
    pub async fn tick(&mut self, now_ms: i64) -> Result<(), AlarmError> {
        let silence = secs_to_ms(self.settings.gateway_silence_s);
        for slot in 0..self.gateways.len() {
            let g = &mut self.gateways[slot];
            if g.last_seen == NONE {
                g.last_seen = now_ms; // grace from start: a gateway that never reports goes offline too
            }
            if g.online && now_ms.saturating_sub(g.last_seen) >= silence {
                let ts = g.last_seen.saturating_add(silence);
                self.gateway_down(slot, ts, now_ms, "silence").await?;
            }
        }
        let mut out = std::mem::take(&mut self.scratch);
        for ix in 0..self.defs.len() {
            let gw = self.hot[ix].gw;
            let gw_ok = self.gateways.get(gw as usize).is_none_or(|g| g.online);
            let dev_ok = self.offline_devices.is_empty()
                || match (&self.defs[ix].device, self.gateways.get(gw as usize)) {
                    (Some(d), Some(g)) => !self.offline_devices.contains(&(g.id.clone(), d.clone())),
                    _ => true,
                };
            let h = &mut self.hot[ix];
            h.det.tick(&h.c, now_ms, gw_ok && dev_ok, &mut out);
            if !out.is_empty() {
                let r = self.apply_transitions(ix as u32, &out, false, false, now_ms).await;
                out.clear();
                if let Err(e) = r {
                    self.scratch = out;
                    return Err(e);
                }
            }
        }
        self.scratch = out;
        // Shelve expiry.
        let expired: Vec<AlarmKey> =
            self.shelves.iter().filter(|(_, s)| s.until_ms <= now_ms).map(|(k, _)| k.clone()).collect();
        for k in expired {
            self.end_shelve(&k, SYSTEM, now_ms, "shelve_expired").await?;
        }
        // Maintenance windows.
        let ended: Vec<i64> = self
            .windows
            .values()
            .filter(|w| w.status == WindowStatus::Approved && w.to_ms <= now_ms)
            .map(|w| w.id)
            .collect();
        for id in ended {
            self.expire_window(id, now_ms).await?;
        }
        // Pick-up deadlines and gas levels.
        let ids: Vec<i64> = self.alarms.keys().copied().collect();
        for id in ids {
            let Some(a) = self.alarms.get(&id) else { continue };
            let mut plan = Plan::default();
            let mut a2 = a.clone();
            if let Some(d) = a.pickup_deadline_ms
                && d <= now_ms
                && !a.acked
            {
                a2.supervisions += 1;
                a2.pickup_deadline_ms = Some(now_ms.saturating_add(self.settings.pickup_ms(a.grade)));
                let detail = json!({"supervision": a2.supervisions, "deadline_ms": d}).to_string();
                plan.ops.push(StoreOp::Timeline(entry(id, now_ms, "supervision", SYSTEM, &detail, false)));
                plan.changes.push(change(ChangeKind::Supervision, &a2, now_ms, self.annunciates(&a2, now_ms)));
            }
            if a.key.condition == Condition::GasLeak && a.active {
                let longest = a.longest_active_ms.max(now_ms.saturating_sub(a.last_active_ms));
                let lvl = self.settings.gas_level(a.activations, longest);
                if a.gas_level.is_none_or(|l| lvl > l) {
                    a2.gas_level = Some(lvl);
                    plan.ops.push(StoreOp::Timeline(entry(
                        id,
                        now_ms,
                        "gas_level",
                        SYSTEM,
                        &format!("{lvl:?}"),
                        false,
                    )));
                    plan.changes.push(change(ChangeKind::GasLevelRaised, &a2, now_ms, self.annunciates(&a2, now_ms)));
                }
            }
            if !plan.ops.is_empty() {
                for c in &mut plan.changes {
                    c.alarm = a2.clone();
                }
                plan.ops.insert(0, StoreOp::PutAlarm(a2.clone()));
                plan.alarm = Some(a2);
                self.commit(plan).await?;
            }
        }
        Ok(())
    }

    /// Puts what a camera saw (gas, concentration, where it looked, and the name of its snapshot in
    /// the evidence store) on the timeline of the gas-leak alarm the detection keeps active, so the
    /// operator verifying the alarm finds the image on it. Every start detection gets its own entry.
    async fn record_detection(
        &mut self,
        ix: u32,
        d: &vigil_common::event::GasDetection,
        ts: i64,
        replay: bool,
        received_ms: i64,
    ) -> Result<(), AlarmError> {
        let key =
            AlarmKey { source: AlarmSource::Point(self.defs[ix as usize].id.clone()), condition: Condition::GasLeak };
        let map = if replay { &self.replay_current } else { &self.current };
        let Some(&id) = map.get(&key) else { return Ok(()) };
        if !self.alarms.get(&id).is_some_and(|a| a.active) {
            return Ok(());
        }
        let detail = json!({
            "camera": d.camera, "gas": d.gas, "concentration": d.concentration, "unit": d.unit,
            "confidence": d.confidence, "location": d.location,
            "evidence": d.snapshot.as_ref().map(|s| crate::evidence::digest(&s.bytes)),
            "evidence_type": d.snapshot.as_ref().map(|s| s.content_type.as_str()),
        })
        .to_string();
        let historical = replay || received_ms.saturating_sub(ts) > self.late_ms;
        let plan = Plan {
            ops: vec![StoreOp::Timeline(entry(id, ts, "detection", SYSTEM, &detail, historical))],
            ..Plan::default()
        };
        self.commit(plan).await
    }

    // ----- state machine ------------------------------------------------------------------------

    fn window_for(&self, source: &AlarmSource, gateway: Option<&str>, ts: i64) -> Option<i64> {
        self.windows.values().find(|w| w.covers(source, gateway, ts)).map(|w| w.id)
    }

    fn key_gateway(&self, key: &AlarmKey) -> Option<String> {
        match &key.source {
            AlarmSource::Point(p) => self.index.get(p).and_then(|&ix| self.point_gateway(ix)),
            AlarmSource::Gateway(g) | AlarmSource::Device(g, _) => Some(g.clone()),
        }
    }

    /// Whether changes of this alarm ring now: not late data, not shelved, not out of service, not in
    /// an approved maintenance window.
    fn annunciates(&self, a: &Alarm, now_ms: i64) -> bool {
        if a.historical || a.replay || self.shelves.contains_key(&a.key) || self.oos.contains_key(&a.key) {
            return false;
        }
        let g = self.key_gateway(&a.key);
        self.window_for(&a.key.source, g.as_deref(), now_ms).is_none()
    }

    fn plan_activate(&mut self, key: AlarmKey, ctx: Ctx) -> Plan {
        let map = if ctx.replay { &self.replay_current } else { &self.current };
        let existing = map.get(&key).and_then(|id| self.alarms.get(id));
        let (mut a, kind) = match existing {
            Some(a) if a.active => return Plan::default(),
            Some(a) => {
                let mut a = a.clone();
                a.activations += 1;
                a.suppressed_by = self.window_for(&key.source, ctx.gateway.as_deref(), ctx.ts);
                a.historical = a.historical && ctx.historical;
                (a, ChangeKind::Reactivated)
            }
            None => {
                self.next_ids.0 += 1;
                let a = Alarm {
                    id: self.next_ids.0,
                    key: key.clone(),
                    enterprise: ctx.enterprise.clone(),
                    grade: ctx.grade,
                    active: true,
                    acked: false,
                    raised_ms: ctx.ts,
                    last_active_ms: ctx.ts,
                    cleared_ms: None,
                    received_ms: ctx.received,
                    value: ctx.value,
                    limit: ctx.limit,
                    activations: 1,
                    longest_active_ms: 0,
                    historical: ctx.historical,
                    replay: ctx.replay,
                    suppressed_by: self.window_for(&key.source, ctx.gateway.as_deref(), ctx.ts),
                    stage: Stage::Raised,
                    gas_level: None,
                    false_alarm_reason: None,
                    report: None,
                    pickup_deadline_ms: None,
                    supervisions: 0,
                };
                (a, ChangeKind::Raised)
            }
        };
        a.active = true;
        a.acked = false;
        a.last_active_ms = ctx.ts;
        a.cleared_ms = None;
        a.value = ctx.value;
        a.limit = ctx.limit.or(a.limit);
        if a.stage == Stage::Acknowledged {
            a.stage = Stage::Raised;
        }
        if key.condition == Condition::GasLeak {
            let lvl = self.settings.gas_level(a.activations, a.longest_active_ms);
            a.gas_level = Some(a.gas_level.map_or(lvl, |l| l.max(lvl)));
        }
        let annunciate = self.annunciates(&a, ctx.ts);
        if !a.historical && !a.replay {
            a.pickup_deadline_ms = Some(ctx.received.saturating_add(self.settings.pickup_ms(a.grade)));
        }
        let what = if kind == ChangeKind::Raised { "raised" } else { "reactivated" };
        let detail = json!({
            "value": ctx.value, "limit": ctx.limit, "received_ms": ctx.received,
            "suppressed_by": a.suppressed_by, "shelved": self.shelves.contains_key(&key),
            "out_of_service": self.oos.contains_key(&key), "annunciated": annunciate,
        })
        .to_string();
        let mut plan = Plan::default();
        plan.ops.push(StoreOp::PutAlarm(a.clone()));
        plan.ops.push(StoreOp::Timeline(entry(a.id, ctx.ts, what, SYSTEM, &detail, ctx.historical)));
        plan.changes.push(change(kind, &a, ctx.ts, annunciate));
        plan.current = Some((ctx.replay, key, Some(a.id)));
        plan.alarm = Some(a);
        plan
    }

    fn plan_clear(&mut self, key: &AlarmKey, ctx: Ctx) -> Plan {
        let map = if ctx.replay { &self.replay_current } else { &self.current };
        let Some(a) = map.get(key).and_then(|id| self.alarms.get(id)) else { return Plan::default() };
        if !a.active {
            return Plan::default();
        }
        let mut a = a.clone();
        a.active = false;
        a.cleared_ms = Some(ctx.ts);
        a.longest_active_ms = a.longest_active_ms.max(ctx.ts.saturating_sub(a.last_active_ms));
        if key.condition == Condition::GasLeak {
            let lvl = self.settings.gas_level(a.activations, a.longest_active_ms);
            a.gas_level = Some(a.gas_level.map_or(lvl, |l| l.max(lvl)));
        }
        let annunciate = !ctx.historical && self.annunciates(&a, ctx.ts);
        let mut plan = Plan::default();
        plan.ops.push(StoreOp::PutAlarm(a.clone()));
        let detail = json!({"value": ctx.value, "received_ms": ctx.received}).to_string();
        plan.ops.push(StoreOp::Timeline(entry(a.id, ctx.ts, "cleared", SYSTEM, &detail, ctx.historical)));
        plan.changes.push(change(ChangeKind::Cleared, &a, ctx.ts, annunciate));
        if ctx.replay && self.settings.replay_auto_close && a.gas_level.is_none_or(|l| l < GasLevel::Orange) {
            // A crossing found in a re-sent backlog that also returned to normal within it is a past
            // episode nobody can act on any more: closed at once so it does not flood the room. The
            // timeline and audit chain say why; orange/red gas alerts still need their report.
            a.acked = true;
            a.stage = Stage::Closed;
            a.pickup_deadline_ms = None;
            let why = json!({
                "reason": "replayed backlog: raised and returned to normal within the re-sent data",
                "raised_ms": a.raised_ms, "cleared_ms": ctx.ts,
            })
            .to_string();
            plan.ops.push(StoreOp::PutAlarm(a.clone()));
            plan.ops.push(StoreOp::Timeline(entry(a.id, ctx.received, "auto_closed", SYSTEM, &why, true)));
            plan.ops.push(StoreOp::Audit(self.audit(
                ctx.received,
                SYSTEM,
                "auto_close",
                &format!("alarm:{}", a.id),
                &why,
            )));
            plan.changes.push(change(ChangeKind::Action("auto_close".into()), &a, ctx.received, false));
        }
        if a.state() == AlarmState::Normal {
            plan.current = Some((ctx.replay, key.clone(), None));
        }
        plan.alarm = Some(a);
        plan
    }

    fn plan_promote(&mut self, key: &AlarmKey, ctx: Ctx) -> Plan {
        let Some(a) = self.current.get(key).and_then(|id| self.alarms.get(id)) else { return Plan::default() };
        if !a.historical {
            return Plan::default();
        }
        let mut a = a.clone();
        a.historical = false;
        a.pickup_deadline_ms = Some(ctx.received.saturating_add(self.settings.pickup_ms(a.grade)));
        let annunciate = self.annunciates(&a, ctx.ts);
        let mut plan = Plan::default();
        plan.ops.push(StoreOp::PutAlarm(a.clone()));
        plan.ops.push(StoreOp::Timeline(entry(a.id, ctx.ts, "promoted", SYSTEM, "still active in live data", false)));
        plan.changes.push(change(ChangeKind::Promoted, &a, ctx.ts, annunciate));
        plan.alarm = Some(a);
        plan
    }

    async fn commit(&mut self, plan: Plan) -> Result<(), AlarmError> {
        if plan.ops.is_empty() {
            return Ok(());
        }
        self.store.apply(&plan.ops).await?;
        for op in &plan.ops {
            if let StoreOp::Audit(r) = op {
                self.audit_head = (r.seq, r.hash.clone());
            }
        }
        if let Some(a) = plan.alarm {
            self.view.put(&a);
            if a.is_closed() {
                self.alarms.remove(&a.id);
            } else {
                self.alarms.insert(a.id, a);
            }
        }
        if let Some((replay, key, id)) = plan.current {
            let map = if replay { &mut self.replay_current } else { &mut self.current };
            match id {
                Some(id) => {
                    map.insert(key, id);
                }
                None => {
                    map.remove(&key);
                }
            }
        }
        for c in plan.changes {
            // No subscriber is fine: the change is durable and visible through queries.
            let _ = self.tx.send(c);
        }
        Ok(())
    }

    fn audit(&self, now_ms: i64, actor: &str, action: &str, target: &str, detail: &str) -> AuditRecord {
        AuditRecord::next((self.audit_head.0, &self.audit_head.1), now_ms, actor, action, target, detail)
    }

    // ----- operator actions on alarms -----------------------------------------------------------

    fn open_alarm(&self, id: i64) -> Result<&Alarm, AlarmError> {
        self.alarms.get(&id).ok_or(AlarmError::NoSuchAlarm(id))
    }

    async fn alarm_action(
        &mut self,
        id: i64,
        actor: &str,
        now_ms: i64,
        action: &'static str,
        detail: String,
        f: impl FnOnce(&mut Alarm) -> Result<(), String>,
    ) -> Result<Alarm, AlarmError> {
        let mut a = self.open_alarm(id)?.clone();
        if actor.trim().is_empty() {
            return Err(AlarmError::NotAllowed { action, reason: "an actor is required".into() });
        }
        f(&mut a).map_err(|reason| AlarmError::NotAllowed { action, reason })?;
        let rec = self.audit(now_ms, actor, action, &format!("alarm:{id}"), &detail);
        let mut plan = Plan::default();
        plan.ops.push(StoreOp::PutAlarm(a.clone()));
        plan.ops.push(StoreOp::Timeline(entry(id, now_ms, action, actor, &detail, false)));
        plan.ops.push(StoreOp::Audit(rec));
        if a.state() == AlarmState::Normal {
            plan.current = Some((a.replay, a.key.clone(), None));
        }
        plan.changes.push(change(ChangeKind::Action(action.to_owned()), &a, now_ms, false));
        plan.alarm = Some(a.clone());
        self.commit(plan).await?;
        Ok(a)
    }

    /// Acknowledges (picks up) an alarm: ends its pick-up deadline; if it has returned to normal it
    /// leaves the alarm list (the case stays open until closed).
    pub async fn acknowledge(&mut self, id: i64, actor: &str, comment: &str, now_ms: i64) -> Result<Alarm, AlarmError> {
        let detail = json!({"comment": comment}).to_string();
        self.alarm_action(id, actor, now_ms, "acknowledge", detail, |a| {
            if a.acked {
                return Err("already acknowledged".into());
            }
            a.acked = true;
            a.pickup_deadline_ms = None;
            if a.stage == Stage::Raised {
                a.stage = Stage::Acknowledged;
            }
            Ok(())
        })
        .await
    }

    /// Marks an acknowledged alarm as verified real (video, trend).
    pub async fn verify(&mut self, id: i64, actor: &str, how: &str, now_ms: i64) -> Result<Alarm, AlarmError> {
        let detail = json!({"how": how}).to_string();
        self.alarm_action(id, actor, now_ms, "verify", detail, |a| step(a, &[Stage::Acknowledged], Stage::Verified))
            .await
    }

    /// Marks an acknowledged (or verified) alarm as a false alarm; a reason is required.
    pub async fn mark_false_alarm(
        &mut self,
        id: i64,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Alarm, AlarmError> {
        let detail = json!({"reason": reason}).to_string();
        let reason = reason.trim().to_owned();
        self.alarm_action(id, actor, now_ms, "false_alarm", detail, move |a| {
            if reason.is_empty() {
                return Err("a reason is required".into());
            }
            step(a, &[Stage::Acknowledged, Stage::Verified], Stage::FalseAlarm)?;
            a.false_alarm_reason = Some(reason);
            Ok(())
        })
        .await
    }

    /// Dispatches a verified alarm to the enterprise (`to`: who takes it, `note`: instructions).
    pub async fn dispatch(
        &mut self,
        id: i64,
        actor: &str,
        to: &str,
        note: &str,
        now_ms: i64,
    ) -> Result<Alarm, AlarmError> {
        let detail = json!({"to": to, "instructions": note}).to_string();
        self.alarm_action(id, actor, now_ms, "dispatch", detail, |a| step(a, &[Stage::Verified], Stage::Dispatched))
            .await
    }

    /// Records the enterprise's feedback on a dispatched alarm.
    pub async fn record_feedback(
        &mut self,
        id: i64,
        actor: &str,
        feedback: &str,
        now_ms: i64,
    ) -> Result<Alarm, AlarmError> {
        let detail = json!({"feedback": feedback}).to_string();
        let empty = feedback.trim().is_empty();
        self.alarm_action(id, actor, now_ms, "feedback", detail, move |a| {
            if empty {
                return Err("feedback text is required".into());
            }
            step(a, &[Stage::Dispatched], Stage::Feedback)
        })
        .await
    }

    /// Reviews an alarm after feedback (or after it was marked false).
    pub async fn review(&mut self, id: i64, actor: &str, note: &str, now_ms: i64) -> Result<Alarm, AlarmError> {
        let detail = json!({"note": note}).to_string();
        self.alarm_action(id, actor, now_ms, "review", detail, |a| {
            step(a, &[Stage::Feedback, Stage::FalseAlarm], Stage::Reviewed)
        })
        .await
    }

    /// Attaches an investigation report: its name (a reference to the stored document) on the
    /// alarm, its text in the timeline and the audit chain.
    pub async fn attach_report(
        &mut self,
        id: i64,
        actor: &str,
        report: &str,
        text: &str,
        now_ms: i64,
    ) -> Result<Alarm, AlarmError> {
        let detail = json!({"report": report, "text": text}).to_string();
        let report = report.trim().to_owned();
        self.alarm_action(id, actor, now_ms, "attach_report", detail, move |a| {
            if report.is_empty() {
                return Err("a report reference is required".into());
            }
            a.report = Some(report);
            Ok(())
        })
        .await
    }

    /// Closes a reviewed case. The alarm must be cleared and acknowledged; orange and red gas-leak
    /// alerts need an attached report.
    pub async fn close(&mut self, id: i64, actor: &str, note: &str, now_ms: i64) -> Result<Alarm, AlarmError> {
        let detail = json!({"note": note}).to_string();
        self.alarm_action(id, actor, now_ms, "close", detail, |a| {
            if a.active {
                return Err("the condition is still active".into());
            }
            if !a.acked {
                return Err("not acknowledged".into());
            }
            if a.gas_level.is_some_and(|l| l >= GasLevel::Orange) && a.report.is_none() {
                return Err(format!("a {:?} gas-leak alert needs an investigation report before closing", a.gas_level));
            }
            step(a, &[Stage::Reviewed], Stage::Closed)
        })
        .await
    }

    /// Shelves an alarm's key until `until_ms` (changes recorded, not announced); it re-annunciates at
    /// expiry if still active.
    pub async fn shelve(
        &mut self,
        id: i64,
        actor: &str,
        until_ms: i64,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), AlarmError> {
        let a = self.open_alarm(id)?.clone();
        if until_ms <= now_ms {
            return Err(AlarmError::NotAllowed { action: "shelve", reason: "expiry must be in the future".into() });
        }
        if reason.trim().is_empty() || actor.trim().is_empty() {
            return Err(AlarmError::NotAllowed { action: "shelve", reason: "actor and reason are required".into() });
        }
        let s = Shelve { until_ms, by: actor.to_owned(), reason: reason.to_owned() };
        let detail = json!({"key": a.key.to_string(), "until_ms": until_ms, "reason": reason}).to_string();
        let mut plan = Plan::default();
        plan.ops.push(StoreOp::Shelve(a.key.clone(), Some(s.clone())));
        plan.ops.push(StoreOp::Timeline(entry(id, now_ms, "shelve", actor, &detail, false)));
        plan.ops.push(StoreOp::Audit(self.audit(now_ms, actor, "shelve", &format!("alarm:{id}"), &detail)));
        plan.changes.push(change(ChangeKind::Action("shelve".into()), &a, now_ms, false));
        self.commit(plan).await?;
        self.view.set_shelved(&a.key, Some(s.until_ms));
        self.shelves.insert(a.key, s);
        Ok(())
    }

    /// Ends shelving of an alarm's key now.
    pub async fn unshelve(&mut self, id: i64, actor: &str, now_ms: i64) -> Result<(), AlarmError> {
        let key = self.open_alarm(id)?.key.clone();
        if !self.shelves.contains_key(&key) {
            return Err(AlarmError::NotAllowed { action: "unshelve", reason: "not shelved".into() });
        }
        self.end_shelve(&key, actor, now_ms, "unshelve").await
    }

    async fn end_shelve(&mut self, key: &AlarmKey, actor: &str, now_ms: i64, action: &str) -> Result<(), AlarmError> {
        let detail = json!({"key": key.to_string()}).to_string();
        let mut plan = Plan::default();
        plan.ops.push(StoreOp::Shelve(key.clone(), None));
        plan.ops.push(StoreOp::Audit(self.audit(now_ms, actor, action, &format!("key:{key}"), &detail)));
        let cur = self.current.get(key).and_then(|id| self.alarms.get(id)).cloned();
        self.commit(plan).await?;
        self.shelves.remove(key);
        self.view.set_shelved(key, None);
        if let Some(a) = cur {
            self.reannunciate(a, now_ms, action).await?;
        }
        Ok(())
    }

    async fn reannunciate(&mut self, a: Alarm, now_ms: i64, why: &str) -> Result<(), AlarmError> {
        let ring = a.active && !a.acked && self.annunciates(&a, now_ms);
        let mut plan = Plan::default();
        plan.ops.push(StoreOp::Timeline(entry(a.id, now_ms, "reannunciated", SYSTEM, why, false)));
        plan.changes.push(change(ChangeKind::Reannunciated, &a, now_ms, ring));
        if a.active {
            self.commit(plan).await?;
        }
        Ok(())
    }

    /// Takes an alarm key out of service (change control): still recorded, never announced.
    pub async fn set_out_of_service(
        &mut self,
        key: AlarmKey,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), AlarmError> {
        if reason.trim().is_empty() || actor.trim().is_empty() {
            return Err(AlarmError::NotAllowed {
                action: "out_of_service",
                reason: "actor and reason are required".into(),
            });
        }
        let o = OutOfService { by: actor.to_owned(), reason: reason.to_owned(), since_ms: now_ms };
        let detail = json!({"reason": reason}).to_string();
        let plan = Plan {
            ops: vec![
                StoreOp::OutOfService(key.clone(), Some(o.clone())),
                StoreOp::Audit(self.audit(now_ms, actor, "out_of_service", &format!("key:{key}"), &detail)),
            ],
            ..Plan::default()
        };
        self.commit(plan).await?;
        self.oos.insert(key, o);
        Ok(())
    }

    /// Returns an alarm key to service; an active alarm re-annunciates.
    pub async fn return_to_service(&mut self, key: &AlarmKey, actor: &str, now_ms: i64) -> Result<(), AlarmError> {
        if !self.oos.contains_key(key) {
            return Err(AlarmError::NotAllowed { action: "return_to_service", reason: "not out of service".into() });
        }
        let plan = Plan {
            ops: vec![
                StoreOp::OutOfService(key.clone(), None),
                StoreOp::Audit(self.audit(now_ms, actor, "return_to_service", &format!("key:{key}"), "{}")),
            ],
            ..Plan::default()
        };
        self.commit(plan).await?;
        self.oos.remove(key);
        if let Some(a) = self.current.get(key).and_then(|id| self.alarms.get(id)).cloned() {
            self.reannunciate(a, now_ms, "return_to_service").await?;
        }
        Ok(())
    }

    // ----- maintenance windows ------------------------------------------------------------------

    /// An enterprise requests suppression of points and/or whole gateways for `[from_ms, to_ms)`.
    #[allow(clippy::too_many_arguments)]
    pub async fn request_window(
        &mut self,
        enterprise: &str,
        points: Vec<String>,
        gateways: Vec<String>,
        from_ms: i64,
        to_ms: i64,
        reason: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<MaintenanceWindow, AlarmError> {
        let bad = |r: &str| Err(AlarmError::NotAllowed { action: "request_window", reason: r.into() });
        if to_ms <= from_ms || to_ms <= now_ms {
            return bad("the window must end after it starts and in the future");
        }
        if points.is_empty() && gateways.is_empty() {
            return bad("list at least one point or gateway");
        }
        if reason.trim().is_empty() || actor.trim().is_empty() || enterprise.trim().is_empty() {
            return bad("enterprise, actor and reason are required");
        }
        let w = MaintenanceWindow {
            id: self.next_ids.1 + 1,
            enterprise: enterprise.to_owned(),
            points,
            gateways,
            from_ms,
            to_ms,
            reason: reason.to_owned(),
            requested_by: actor.to_owned(),
            decided_by: None,
            status: WindowStatus::Requested,
        };
        self.put_window(w.clone(), actor, "window_request", now_ms).await?;
        self.next_ids.1 = w.id;
        Ok(w)
    }

    async fn put_window(
        &mut self,
        w: MaintenanceWindow,
        actor: &str,
        action: &str,
        now_ms: i64,
    ) -> Result<(), AlarmError> {
        let detail = serde_json::to_string(&w)?;
        let plan = Plan {
            ops: vec![
                StoreOp::PutWindow(w.clone()),
                StoreOp::Audit(self.audit(now_ms, actor, action, &format!("window:{}", w.id), &detail)),
            ],
            ..Plan::default()
        };
        self.commit(plan).await?;
        if matches!(w.status, WindowStatus::Requested | WindowStatus::Approved) {
            self.windows.insert(w.id, w);
        } else {
            self.windows.remove(&w.id);
        }
        Ok(())
    }

    /// The park approves a requested window (not by its requester).
    pub async fn approve_window(&mut self, id: i64, actor: &str, now_ms: i64) -> Result<MaintenanceWindow, AlarmError> {
        let mut w = self.windows.get(&id).cloned().ok_or(AlarmError::NoSuchWindow(id))?;
        if w.status != WindowStatus::Requested {
            return Err(AlarmError::NotAllowed {
                action: "approve_window",
                reason: format!("window is {:?}", w.status),
            });
        }
        if actor == w.requested_by {
            return Err(AlarmError::NotAllowed {
                action: "approve_window",
                reason: "the requester cannot approve".into(),
            });
        }
        w.status = if w.to_ms <= now_ms { WindowStatus::Expired } else { WindowStatus::Approved };
        w.decided_by = Some(actor.to_owned());
        self.put_window(w.clone(), actor, "window_approve", now_ms).await?;
        Ok(w)
    }

    /// The park rejects a requested window.
    pub async fn reject_window(
        &mut self,
        id: i64,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<MaintenanceWindow, AlarmError> {
        let mut w = self.windows.get(&id).cloned().ok_or(AlarmError::NoSuchWindow(id))?;
        if w.status != WindowStatus::Requested {
            return Err(AlarmError::NotAllowed {
                action: "reject_window",
                reason: format!("window is {:?}", w.status),
            });
        }
        w.status = WindowStatus::Rejected;
        w.decided_by = Some(actor.to_owned());
        w.reason = format!("{} (rejected: {reason})", w.reason);
        self.put_window(w.clone(), actor, "window_reject", now_ms).await?;
        Ok(w)
    }

    async fn expire_window(&mut self, id: i64, now_ms: i64) -> Result<(), AlarmError> {
        let Some(mut w) = self.windows.get(&id).cloned() else { return Ok(()) };
        w.status = WindowStatus::Expired;
        self.put_window(w, SYSTEM, "window_expired", now_ms).await?;
        let covered: Vec<Alarm> = self
            .current
            .values()
            .filter_map(|i| self.alarms.get(i))
            .filter(|a| a.suppressed_by == Some(id))
            .cloned()
            .collect();
        for a in covered {
            self.reannunciate(a, now_ms, "maintenance window ended").await?;
        }
        Ok(())
    }

    // ----- threshold workflow -------------------------------------------------------------------

    /// Requests new limits for a point; takes effect only when approved.
    pub async fn request_threshold(
        &mut self,
        point: &str,
        after: Limits,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<ThresholdRequest, AlarmError> {
        let &ix = self.index.get(point).ok_or_else(|| AlarmError::NoSuchPoint(point.to_owned()))?;
        check_limits(&after).map_err(|reason| AlarmError::NotAllowed { action: "request_threshold", reason })?;
        if reason.trim().is_empty() || actor.trim().is_empty() {
            return Err(AlarmError::NotAllowed {
                action: "request_threshold",
                reason: "actor and reason are required".into(),
            });
        }
        let r = ThresholdRequest {
            id: self.next_ids.2 + 1,
            point: point.to_owned(),
            before: self.defs[ix as usize].limits(),
            after,
            requested_by: actor.to_owned(),
            reason: reason.to_owned(),
            requested_ms: now_ms,
            decided_by: None,
            status: RequestStatus::Requested,
        };
        self.put_request(r.clone(), actor, "threshold_request", now_ms, None).await?;
        self.next_ids.2 = r.id;
        Ok(r)
    }

    async fn put_request(
        &mut self,
        r: ThresholdRequest,
        actor: &str,
        action: &str,
        now_ms: i64,
        apply: Option<u32>,
    ) -> Result<(), AlarmError> {
        let detail =
            json!({"point": r.point, "before": r.before, "after": r.after, "reason": r.reason, "status": r.status})
                .to_string();
        let mut ops = vec![StoreOp::PutRequest(r.clone())];
        if apply.is_some() {
            ops.push(StoreOp::PutLimits(r.point.clone(), r.after));
        }
        ops.push(StoreOp::Audit(self.audit(now_ms, actor, action, &format!("point:{}", r.point), &detail)));
        self.commit(Plan { ops, ..Plan::default() }).await?;
        if let Some(ix) = apply {
            self.defs[ix as usize].set_limits(r.after);
            self.hot[ix as usize].c.limits = r.after;
        }
        if r.status == RequestStatus::Requested {
            self.requests.insert(r.id, r);
        } else {
            self.requests.remove(&r.id);
        }
        Ok(())
    }

    /// Approves a threshold request (not by its requester) and applies the new limits.
    pub async fn approve_threshold(
        &mut self,
        id: i64,
        actor: &str,
        now_ms: i64,
    ) -> Result<ThresholdRequest, AlarmError> {
        let mut r = self.requests.get(&id).cloned().ok_or(AlarmError::NoSuchRequest(id))?;
        if actor == r.requested_by {
            return Err(AlarmError::NotAllowed {
                action: "approve_threshold",
                reason: "the requester cannot approve".into(),
            });
        }
        let &ix = self.index.get(&r.point).ok_or_else(|| AlarmError::NoSuchPoint(r.point.clone()))?;
        r.before = self.defs[ix as usize].limits();
        r.status = RequestStatus::Approved;
        r.decided_by = Some(actor.to_owned());
        self.put_request(r.clone(), actor, "threshold_approve", now_ms, Some(ix)).await?;
        Ok(r)
    }

    /// Rejects a threshold request.
    pub async fn reject_threshold(
        &mut self,
        id: i64,
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<ThresholdRequest, AlarmError> {
        let mut r = self.requests.get(&id).cloned().ok_or(AlarmError::NoSuchRequest(id))?;
        r.status = RequestStatus::Rejected;
        r.decided_by = Some(actor.to_owned());
        r.reason = format!("{} (rejected: {reason})", r.reason);
        self.put_request(r.clone(), actor, "threshold_reject", now_ms, None).await?;
        Ok(r)
    }

    // ----- queries ------------------------------------------------------------------------------

    /// Subscribes to alarm changes (published after they are durable).
    pub fn subscribe(&self) -> broadcast::Receiver<AlarmChange> {
        self.tx.subscribe()
    }

    /// Alarms whose case is not closed (active, unacknowledged or still being handled), by id.
    pub fn open_alarms(&self) -> Vec<&Alarm> {
        let mut v: Vec<&Alarm> = self.alarms.values().collect();
        v.sort_by_key(|a| a.id);
        v
    }

    /// The live alarm of a key that is not normal (active or unacknowledged), if any.
    pub fn current(&self, key: &AlarmKey) -> Option<&Alarm> {
        self.current.get(key).and_then(|id| self.alarms.get(id))
    }

    /// One alarm by id, open or closed.
    pub async fn alarm(&self, id: i64) -> Result<Option<Alarm>, AlarmError> {
        match self.alarms.get(&id) {
            Some(a) => Ok(Some(a.clone())),
            None => self.store.alarm(id).await,
        }
    }

    /// The timeline of an alarm.
    pub async fn timeline(&self, id: i64) -> Result<Vec<TimelineEntry>, AlarmError> {
        self.store.timeline(id).await
    }

    /// Maintenance windows requested or approved.
    pub fn windows(&self) -> Vec<&MaintenanceWindow> {
        self.windows.values().collect()
    }

    /// Threshold requests waiting for a decision.
    pub fn threshold_requests(&self) -> Vec<&ThresholdRequest> {
        self.requests.values().collect()
    }

    /// Current limits of a point.
    pub fn limits(&self, point: &str) -> Option<Limits> {
        self.index.get(point).map(|&ix| self.defs[ix as usize].limits())
    }

    /// Whether a key is shelved.
    pub fn is_shelved(&self, key: &AlarmKey) -> bool {
        self.shelves.contains_key(key)
    }

    /// The shelving of a key, if shelved.
    pub fn shelved(&self, key: &AlarmKey) -> Option<&Shelve> {
        self.shelves.get(key)
    }

    /// Appends a system note (e.g. a notification sent up the chain) to an alarm's timeline.
    pub async fn note(
        &mut self,
        id: i64,
        what: &str,
        actor: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<(), AlarmError> {
        let plan =
            Plan { ops: vec![StoreOp::Timeline(entry(id, now_ms, what, actor, detail, false))], ..Plan::default() };
        self.commit(plan).await
    }

    /// All audit records.
    pub async fn audit_records(&self) -> Result<Vec<AuditRecord>, AlarmError> {
        self.store.audit_records().await
    }

    /// Verifies the stored audit chain against the head this engine wrote last; returns the count.
    pub async fn verify_audit(&self) -> Result<usize, AlarmError> {
        let recs = self.store.audit_records().await?;
        verify_chain(&recs, Some((self.audit_head.0, &self.audit_head.1)))
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The open alarms as the API lists them, updated on every change (readers never lock the engine).
    pub fn open_view(&self) -> std::sync::Arc<super::live::OpenView> {
        self.view.clone()
    }

    /// Number of defined points.
    pub fn point_count(&self) -> usize {
        self.defs.len()
    }
}

fn step(a: &mut Alarm, from: &[Stage], to: Stage) -> Result<(), String> {
    if !from.contains(&a.stage) {
        return Err(format!("the alarm is {:?}; allowed from {from:?}", a.stage));
    }
    a.stage = to;
    Ok(())
}

fn entry(alarm_id: i64, ts_ms: i64, what: &str, actor: &str, detail: &str, historical: bool) -> TimelineEntry {
    TimelineEntry {
        alarm_id,
        ts_ms,
        what: what.to_owned(),
        actor: actor.to_owned(),
        detail: detail.to_owned(),
        historical,
    }
}

fn change(kind: ChangeKind, a: &Alarm, ts_ms: i64, annunciate: bool) -> AlarmChange {
    AlarmChange { kind, alarm: a.clone(), ts_ms, annunciate }
}

impl<S: AlarmStore> AlarmEngine<S> {
    /// Alarm-load KPIs per enterprise over `[from_ms, to_ms)` (source time of activations).
    pub async fn kpis(&self, from_ms: i64, to_ms: i64) -> Result<Vec<super::kpi::KpiReport>, AlarmError> {
        let mut acts = Vec::new();
        let mut docs: HashMap<i64, Option<Alarm>> = HashMap::new();
        for what in ["raised", "reactivated"] {
            for t in self.store.timeline_between(what, from_ms, to_ms).await? {
                if let std::collections::hash_map::Entry::Vacant(v) = docs.entry(t.alarm_id) {
                    v.insert(self.alarm(t.alarm_id).await?);
                }
                if let Some(Some(a)) = docs.get(&t.alarm_id) {
                    acts.push(super::kpi::Activation {
                        ts_ms: t.ts_ms,
                        alarm_id: a.id,
                        enterprise: a.enterprise.clone().unwrap_or_default(),
                        source: a.key.source.to_string(),
                        condition: a.key.condition,
                    });
                }
            }
        }
        Ok(super::kpi::compute(&acts, &self.open_alarms(), from_ms, to_ms))
    }
}
