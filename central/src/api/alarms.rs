//! The alarm endpoints (API-CONTRACT.md, "Alarms"): list, one alarm, its timeline, the operator
//! actions, the live Server-Sent Events stream, maintenance windows, threshold requests and KPIs.
//!
//! Roles: operator and park_admin act on alarms; enterprise_user reads its own enterprises' alarms,
//! gives feedback and requests windows for them; auditor reads; security_admin and
//! field_technician get 403. An alarm of an enterprise the caller may not see answers 404.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::{ApiError, ApiState, Principal, Role, bad};
use crate::alarms::feed::FeedMetrics;
use crate::alarms::live::{Hub, LiveItem, OpenView, ViewEntry, item_json};
use crate::alarms::{
    Alarm, AlarmEngine, AlarmError, AlarmFilter, AlarmStore, Condition, Grade, Limits, SqliteStore, Stage,
};

/// Keep-alive comment interval of the stream.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Default and largest page of a listing.
pub const PAGE: (usize, usize) = (100, 1000);
/// Longest KPI range, ms (a little over a year).
pub const MAX_KPI_RANGE_MS: i64 = 400 * 86_400_000;

/// What the alarm endpoints need besides the engine: the live hub and the counters `/metrics` shows.
pub struct AlarmServices {
    /// Sequenced changes for the stream.
    pub hub: Arc<Hub>,
    /// The feed's counters.
    pub feed: Arc<FeedMetrics>,
    /// The notifier's counters, when notifications run.
    pub notify: Option<Arc<crate::notify::NotifyMetrics>>,
}

impl AlarmServices {
    /// Prometheus text of the alarm-side counters.
    pub fn prometheus(&self) -> String {
        let mut s = self.feed.prometheus();
        s.push_str(&self.hub.prometheus());
        if let Some(n) = &self.notify {
            s.push_str(&n.prometheus());
        }
        s
    }
}

type Engine = Arc<tokio::sync::Mutex<AlarmEngine>>;

/// Who reads alarms, windows, thresholds and KPIs.
pub const READ: &[Role] = &[Role::Operator, Role::ParkAdmin, Role::Auditor, Role::EnterpriseUser];
/// Who works alarms and decides maintenance windows.
pub const ACT: &[Role] = &[Role::Operator, Role::ParkAdmin];
/// Who records an enterprise's feedback on a dispatched alarm.
pub const FEEDBACK: &[Role] = &[Role::Operator, Role::ParkAdmin, Role::EnterpriseUser];
/// Who requests maintenance windows.
pub const REQUEST_WINDOW: &[Role] = &[Role::Operator, Role::ParkAdmin, Role::EnterpriseUser];
/// Who approves or rejects threshold changes.
pub const APPROVE_THRESHOLD: &[Role] = &[Role::ParkAdmin];

fn engine(st: &ApiState) -> Result<Engine, ApiError> {
    st.alarms.clone().ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "central runs no alarm engine"))
}

fn need(p: &Principal, roles: &[Role], what: &str) -> Result<(), ApiError> {
    if roles.contains(&p.role) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, format!("role {} may not {what}", p.role.as_str())))
    }
}

/// Whether the caller may see an object of `enterprise` (a scoped caller never sees unowned ones).
fn visible(p: &Principal, enterprise: Option<&str>) -> bool {
    match (&p.enterprises, enterprise) {
        (None, _) => true,
        (Some(list), Some(e)) => list.iter().any(|x| x.as_str() == e),
        (Some(_), None) => false,
    }
}

/// Maps engine refusals: a refused transition is 409, an unknown object 404.
fn refused(e: AlarmError) -> ApiError {
    match e {
        AlarmError::NotAllowed { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        AlarmError::NoSuchAlarm(_)
        | AlarmError::NoSuchWindow(_)
        | AlarmError::NoSuchRequest(_)
        | AlarmError::NoSuchPoint(_) => ApiError::not_found(e.to_string()),
        AlarmError::Config { .. } => bad(e.to_string()),
        AlarmError::Store(_) | AlarmError::Document(_) | AlarmError::Chain { .. } => {
            tracing::error!(error = %e, "alarm api");
            ApiError::internal(e.to_string())
        }
    }
}

fn now_ms() -> i64 {
    crate::ingest::now_ms()
}

fn body<T: DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| bad(format!("request body: {e}")))
}

fn required(name: &str, v: &str) -> Result<(), ApiError> {
    if v.trim().is_empty() { Err(bad(format!("{name} is required"))) } else { Ok(()) }
}

/// An alarm as JSON: the stored alarm plus its ISA-18.2 `state` and `shelved_until_ms`.
fn alarm_json(e: &AlarmEngine, a: &Alarm) -> Value {
    item_json(a, e.shelved(&a.key).map(|s| s.until_ms))
}

fn enum_from<T: DeserializeOwned>(name: &str, v: &str) -> Result<T, ApiError> {
    serde_json::from_value(Value::String(v.to_owned())).map_err(|_| bad(format!("{name}={v:?} is not a known value")))
}

fn num(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    q.get(name).map(|v| v.parse::<i64>().map_err(|_| bad(format!("{name}={v:?} is not an integer")))).transpose()
}

/// Applies `state=`: an ISA-18.2 state (`active_unacked`, `active_acked`, `returned_unacked`,
/// `normal`) or a case stage (`raised` ... `closed`), case and underscores ignored.
fn state_filter(f: &mut AlarmFilter, v: &str) -> Result<(), ApiError> {
    let n: String = v.chars().filter(|c| *c != '_').flat_map(char::to_lowercase).collect();
    let (active, acked) = match n.as_str() {
        "activeunacked" => (true, false),
        "activeacked" => (true, true),
        "returnedunacked" => (false, false),
        "normal" => (false, true),
        _ => {
            let stages = [
                Stage::Raised,
                Stage::Acknowledged,
                Stage::Verified,
                Stage::FalseAlarm,
                Stage::Dispatched,
                Stage::Feedback,
                Stage::Reviewed,
                Stage::Closed,
            ];
            let s = stages
                .into_iter()
                .find(|s| format!("{s:?}").to_lowercase() == n)
                .ok_or_else(|| bad(format!("state={v:?}: not an alarm state or stage")))?;
            f.stage = Some(s);
            return Ok(());
        }
    };
    f.active = Some(active);
    f.acked = Some(acked);
    Ok(())
}

fn page_limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(PAGE.0),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=PAGE.1).contains(&n) => Ok(n),
            _ => Err(bad(format!("limit={v:?}: must be 1..={}", PAGE.1))),
        },
    }
}

/// What listing alarms reads instead of the engine: the engine's open-alarm view and a handle on
/// its store (taken once when the API opens, so a listing never waits for the engine's lock).
#[derive(Clone)]
pub struct AlarmReads {
    /// The open alarms, kept current by the engine.
    pub view: Arc<OpenView>,
    /// The store, for closed cases.
    pub store: SqliteStore,
}

impl AlarmReads {
    /// Takes the view and store handle of `engine` (briefly locking it).
    pub async fn of(engine: &Engine) -> AlarmReads {
        let e = engine.lock().await;
        AlarmReads { view: e.open_view(), store: e.store().clone() }
    }
}

/// Merges two newest-first lists into one newest-first list of at most `limit` items; an id in
/// both (a case closed while the listing ran) is taken from `closed`, the newer of the two.
fn merge_newest_first(open: Vec<ViewEntry>, closed: Vec<Alarm>, limit: usize) -> Vec<Item> {
    let mut out = Vec::with_capacity(limit.min(open.len() + closed.len()));
    let (mut o, mut c) = (open.into_iter().peekable(), closed.into_iter().peekable());
    while out.len() < limit {
        let item = match (o.peek(), c.peek()) {
            (Some(x), Some(y)) if x.alarm.id > y.id => o.next().map(Item::Open),
            (Some(x), Some(y)) if x.alarm.id == y.id => {
                o.next();
                c.next().map(|a| Item::Closed(Box::new(a)))
            }
            (Some(_), Some(_)) | (None, Some(_)) => c.next().map(|a| Item::Closed(Box::new(a))),
            (Some(_), None) => o.next().map(Item::Open),
            (None, None) => None,
        };
        match item {
            Some(i) => out.push(i),
            None => break,
        }
    }
    out
}

/// One alarm of a listing page.
enum Item {
    Open(ViewEntry),
    Closed(Box<Alarm>),
}

impl Item {
    fn id(&self) -> i64 {
        match self {
            Item::Open(e) => e.alarm.id,
            Item::Closed(a) => a.id,
        }
    }
}

async fn list(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    need(&p, READ, "read alarms")?;
    let reads = match &st.alarm_reads {
        Some(r) => r.clone(),
        None => AlarmReads::of(&engine(&st)?).await,
    };
    let mut f = AlarmFilter::default();
    if let Some(v) = q.get("open") {
        f.open = Some(match v.as_str() {
            "true" => true,
            "false" => false,
            _ => return Err(bad(format!("open={v:?}: must be true or false"))),
        });
    }
    if let Some(v) = q.get("state") {
        state_filter(&mut f, v)?;
    }
    if let Some(v) = q.get("grade") {
        f.grade = Some(enum_from::<Grade>("grade", v)?);
    }
    if let Some(v) = q.get("condition") {
        f.condition = Some(enum_from::<Condition>("condition", v)?);
    }
    f.enterprise = q.get("enterprise").cloned();
    f.point = q.get("point").cloned();
    f.from_ms = num(&q, "from_ms")?;
    f.to_ms = num(&q, "to_ms")?;
    if let Some(c) = q.get("cursor") {
        f.before_id = Some(c.parse::<i64>().map_err(|_| bad(format!("cursor={c:?} is not a cursor of this API")))?);
    }
    f.enterprises_in = p.enterprises.as_ref().map(|l| l.iter().map(|e| e.as_str().to_owned()).collect());
    let limit = page_limit(&q)?;
    // Open cases come from the engine's view; closed ones (immutable once closed) from the store,
    // and only when one can be on the page. The view is read first: a case closed meanwhile is
    // then in the store's answer (the engine updates the view only after the store), never lost.
    let page = reads.view.page(&f, limit + 1);
    let closed = if page.closed_possible {
        let closed_only = AlarmFilter { open: Some(false), ..f.clone() };
        reads.store.list(&closed_only, limit + 1).await.map_err(refused)?
    } else {
        Vec::new()
    };
    let mut found = merge_newest_first(page.open, closed, limit + 1);
    let next = if found.len() > limit {
        found.truncate(limit);
        found.last().map(|i| i.id().to_string())
    } else {
        None
    };
    // The same bytes as serialising `{"items": [...], "next_cursor": ...}` as a JSON value, but
    // open items are copied from the view instead of being serialised per request.
    let mut out = String::with_capacity(
        found.iter().map(|i| if let Item::Open(e) = i { e.json.len() + 1 } else { 1024 }).sum::<usize>() + 64,
    );
    out.push_str("{\"items\":[");
    for (n, i) in found.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        match i {
            Item::Open(e) => out.push_str(&e.json),
            Item::Closed(a) => out.push_str(&item_json(a, None).to_string()),
        }
    }
    out.push_str("],\"next_cursor\":");
    out.push_str(&json!(next).to_string());
    out.push('}');
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// The alarm if it exists and the caller may see it (else 404, never 403: no leak).
async fn visible_alarm(e: &AlarmEngine, p: &Principal, id: i64) -> Result<Alarm, ApiError> {
    e.alarm(id)
        .await
        .map_err(refused)?
        .filter(|a| visible(p, a.enterprise.as_deref()))
        .ok_or_else(|| ApiError::not_found(format!("no alarm {id}")))
}

async fn get_one(State(st): State<ApiState>, p: Principal, Path(id): Path<i64>) -> Result<axum::Json<Value>, ApiError> {
    need(&p, READ, "read alarms")?;
    let engine = engine(&st)?;
    let e = engine.lock().await;
    let a = visible_alarm(&e, &p, id).await?;
    Ok(axum::Json(alarm_json(&e, &a)))
}

async fn timeline(
    State(st): State<ApiState>,
    p: Principal,
    Path(id): Path<i64>,
) -> Result<axum::Json<Value>, ApiError> {
    need(&p, READ, "read alarms")?;
    let engine = engine(&st)?;
    let store = {
        let e = engine.lock().await;
        visible_alarm(&e, &p, id).await?;
        e.store().clone()
    };
    let items = store.timeline(id).await.map_err(refused)?;
    Ok(axum::Json(json!({ "items": items })))
}

/// An operator action on one alarm.
enum Act {
    Acknowledge { comment: String },
    Verify { how: String },
    FalseAlarm { reason: String },
    Dispatch { to: String, note: String },
    Feedback { text: String },
    Report { name: String, text: String },
    Review { note: String },
    Close { note: String },
    Shelve { until_ms: i64, reason: String },
    Unshelve,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ActBody {
    comment: String,
    how: String,
    reason: String,
    to: String,
    note: String,
    text: String,
    name: String,
    until_ms: Option<i64>,
}

impl Act {
    fn parse(name: &str, b: &Bytes) -> Result<Act, ApiError> {
        let b: ActBody = body(b)?;
        Ok(match name {
            "acknowledge" => Act::Acknowledge { comment: b.comment },
            "verify" => Act::Verify { how: b.how },
            "false-alarm" => {
                required("reason", &b.reason)?;
                Act::FalseAlarm { reason: b.reason }
            }
            "dispatch" => {
                required("to", &b.to)?;
                Act::Dispatch { to: b.to, note: b.note }
            }
            "feedback" => {
                required("text", &b.text)?;
                Act::Feedback { text: b.text }
            }
            "report" => {
                required("name", &b.name)?;
                Act::Report { name: b.name, text: b.text }
            }
            "review" => Act::Review { note: b.note },
            "close" => Act::Close { note: b.note },
            "shelve" => {
                required("reason", &b.reason)?;
                let until_ms = b.until_ms.ok_or_else(|| bad("until_ms is required"))?;
                Act::Shelve { until_ms, reason: b.reason }
            }
            "unshelve" => Act::Unshelve,
            other => return Err(ApiError::not_found(format!("no alarm action {other:?}"))),
        })
    }

    /// Who may take the action named `name` (known before the body is read, so a role that may
    /// not act learns nothing about the alarm or its body's validity).
    fn roles(name: &str) -> &'static [Role] {
        if name == "feedback" { FEEDBACK } else { ACT }
    }
}

async fn action(
    State(st): State<ApiState>,
    p: Principal,
    Path((id, name)): Path<(i64, String)>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    need(&p, Act::roles(&name), &format!("{name} alarms"))?;
    let act = Act::parse(&name, &raw)?;
    let engine = engine(&st)?;
    let mut e = engine.lock().await;
    let a = visible_alarm(&e, &p, id).await?;
    if a.is_closed() {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("{name} not allowed: alarm {id} is Closed")));
    }
    let (who, now) = (p.user.as_str(), now_ms());
    let r = match act {
        Act::Acknowledge { comment } => e.acknowledge(id, who, &comment, now).await,
        Act::Verify { how } => e.verify(id, who, &how, now).await,
        Act::FalseAlarm { reason } => e.mark_false_alarm(id, who, &reason, now).await,
        Act::Dispatch { to, note } => e.dispatch(id, who, &to, &note, now).await,
        Act::Feedback { text } => e.record_feedback(id, who, &text, now).await,
        Act::Report { name, text } => e.attach_report(id, who, &name, &text, now).await,
        Act::Review { note } => e.review(id, who, &note, now).await,
        Act::Close { note } => e.close(id, who, &note, now).await,
        Act::Shelve { until_ms, reason } => e.shelve(id, who, until_ms, &reason, now).await.map(|()| a.clone()),
        Act::Unshelve => e.unshelve(id, who, now).await.map(|()| a.clone()),
    };
    let mut updated = r.map_err(refused)?;
    if let Ok(Some(fresh)) = e.alarm(id).await {
        updated = fresh;
    }
    Ok(axum::Json(alarm_json(&e, &updated)))
}

/// Removes the client from the gauge when its stream ends.
struct ClientGuard(Arc<Hub>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.metrics.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

struct StreamState {
    pending: VecDeque<Event>,
    rx: tokio::sync::broadcast::Receiver<LiveItem>,
    principal: Principal,
    hub: Arc<Hub>,
    _guard: ClientGuard,
}

fn resync_event(reason: &str) -> Event {
    Event::default().event("resync").data(json!({ "reason": reason }).to_string())
}

fn change_event(seq: u64, c: &crate::alarms::AlarmChange) -> Event {
    Event::default().event("alarm").id(seq.to_string()).data(serde_json::to_string(c).unwrap_or_default())
}

async fn stream(State(st): State<ApiState>, p: Principal, headers: HeaderMap) -> Result<Response, ApiError> {
    need(&p, READ, "read alarms")?;
    let services = st
        .alarm_services
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "central runs no alarm stream"))?;
    let hub = services.hub.clone();
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let sub = hub.subscribe(last);
    let mut pending = VecDeque::new();
    if sub.resync {
        pending.push_back(resync_event("Last-Event-ID is no longer available; refetch the alarm list"));
    }
    for (seq, c) in &sub.backlog {
        if visible(&p, c.alarm.enterprise.as_deref()) {
            pending.push_back(change_event(*seq, c));
        }
    }
    hub.metrics.clients.fetch_add(1, Ordering::Relaxed);
    let state = StreamState { pending, rx: sub.rx, principal: p, hub: hub.clone(), _guard: ClientGuard(hub) };
    let s = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), s));
            }
            match s.rx.recv().await {
                Ok(LiveItem::Change(seq, c)) => {
                    if visible(&s.principal, c.alarm.enterprise.as_deref()) {
                        s.pending.push_back(change_event(seq, &c));
                    }
                }
                Ok(LiveItem::Resync) => {
                    s.pending.push_back(resync_event("central lost changes; refetch the alarm list"))
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    s.hub.metrics.client_lagged.fetch_add(1, Ordering::Relaxed);
                    s.pending.push_back(resync_event("this stream fell behind; refetch the alarm list"));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive")).into_response())
}

// ----- maintenance windows ------------------------------------------------------------------------

async fn windows(State(st): State<ApiState>, p: Principal) -> Result<axum::Json<Value>, ApiError> {
    need(&p, READ, "read maintenance windows")?;
    let engine = engine(&st)?;
    let e = engine.lock().await;
    let items: Vec<_> = e.windows().into_iter().filter(|w| visible(&p, Some(&w.enterprise))).collect();
    Ok(axum::Json(json!({ "items": items })))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct WindowBody {
    enterprise: String,
    points: Vec<String>,
    gateways: Vec<String>,
    from_ms: i64,
    to_ms: i64,
    reason: String,
}

async fn request_window(State(st): State<ApiState>, p: Principal, raw: Bytes) -> Result<Response, ApiError> {
    need(&p, REQUEST_WINDOW, "request maintenance windows")?;
    let b: WindowBody = body(&raw)?;
    required("enterprise", &b.enterprise)?;
    required("reason", &b.reason)?;
    if !visible(&p, Some(&b.enterprise)) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "windows can be requested only for your own enterprises"));
    }
    let engine = engine(&st)?;
    let mut e = engine.lock().await;
    // Everything listed must belong to the requesting enterprise, as far as central knows it.
    let sources = b
        .points
        .iter()
        .map(|x| (format!("point {x}"), crate::alarms::AlarmSource::Point(x.clone())))
        .chain(b.gateways.iter().map(|g| (format!("gateway {g}"), crate::alarms::AlarmSource::Gateway(g.clone()))));
    for (what, source) in sources {
        match e.source_enterprise(&source) {
            Some(owner) if owner != b.enterprise => {
                return Err(bad(format!("{what} belongs to another enterprise, not {}", b.enterprise)));
            }
            None if p.enterprises.is_some() => {
                return Err(bad(format!("{what} is not known to belong to {}", b.enterprise)));
            }
            _ => {}
        }
    }
    let w = e
        .request_window(&b.enterprise, b.points, b.gateways, b.from_ms, b.to_ms, &b.reason, &p.user, now_ms())
        .await
        .map_err(|err| match err {
            AlarmError::NotAllowed { reason, .. } => bad(format!("window request: {reason}")),
            other => refused(other),
        })?;
    Ok((StatusCode::CREATED, axum::Json(w)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct DecideBody {
    reason: String,
}

async fn decide_window(
    State(st): State<ApiState>,
    p: Principal,
    Path((id, verb)): Path<(i64, String)>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    need(&p, ACT, "decide maintenance windows")?;
    let b: DecideBody = body(&raw)?;
    let engine = engine(&st)?;
    let mut e = engine.lock().await;
    if !e.windows().iter().any(|w| w.id == id && visible(&p, Some(&w.enterprise))) {
        return Err(ApiError::not_found(format!("no open maintenance window {id}")));
    }
    let w = match verb.as_str() {
        "approve" => e.approve_window(id, &p.user, now_ms()).await,
        "reject" => e.reject_window(id, &p.user, &b.reason, now_ms()).await,
        other => return Err(ApiError::not_found(format!("no window action {other:?}"))),
    }
    .map_err(refused)?;
    Ok(axum::Json(json!(w)))
}

// ----- thresholds ---------------------------------------------------------------------------------

async fn thresholds(State(st): State<ApiState>, p: Principal) -> Result<axum::Json<Value>, ApiError> {
    need(&p, READ, "read threshold requests")?;
    let engine = engine(&st)?;
    let e = engine.lock().await;
    let items: Vec<_> = e
        .threshold_requests()
        .into_iter()
        .filter(|r| {
            let ent = e.source_enterprise(&crate::alarms::AlarmSource::Point(r.point.clone()));
            visible(&p, ent.as_deref())
        })
        .collect();
    Ok(axum::Json(json!({ "items": items })))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ThresholdBody {
    point: String,
    hh: Option<f64>,
    h: Option<f64>,
    l: Option<f64>,
    ll: Option<f64>,
    deadband: Option<f64>,
    reason: String,
}

async fn request_threshold(State(st): State<ApiState>, p: Principal, raw: Bytes) -> Result<Response, ApiError> {
    need(&p, ACT, "request threshold changes")?;
    let b: ThresholdBody = body(&raw)?;
    required("point", &b.point)?;
    required("reason", &b.reason)?;
    let engine = engine(&st)?;
    let mut e = engine.lock().await;
    let current =
        e.limits(&b.point).ok_or_else(|| ApiError::not_found(format!("no alarm definition for point {}", b.point)))?;
    let after = Limits { hh: b.hh, h: b.h, l: b.l, ll: b.ll, deadband: b.deadband.unwrap_or(current.deadband) };
    let r = e.request_threshold(&b.point, after, &p.user, &b.reason, now_ms()).await.map_err(|err| match err {
        AlarmError::NotAllowed { reason, .. } => bad(format!("threshold request: {reason}")),
        other => refused(other),
    })?;
    Ok((StatusCode::CREATED, axum::Json(r)).into_response())
}

async fn decide_threshold(
    State(st): State<ApiState>,
    p: Principal,
    Path((id, verb)): Path<(i64, String)>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    need(&p, APPROVE_THRESHOLD, "decide threshold changes")?;
    let b: DecideBody = body(&raw)?;
    let engine = engine(&st)?;
    let mut e = engine.lock().await;
    let r = match verb.as_str() {
        "approve" => e.approve_threshold(id, &p.user, now_ms()).await,
        "reject" => e.reject_threshold(id, &p.user, &b.reason, now_ms()).await,
        other => return Err(ApiError::not_found(format!("no threshold action {other:?}"))),
    }
    .map_err(refused)?;
    Ok(axum::Json(json!(r)))
}

// ----- KPIs ---------------------------------------------------------------------------------------

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// The KPI reports as CSV, one line per enterprise, targets beside the figures.
pub fn kpi_csv(reports: &[crate::alarms::kpi::KpiReport]) -> String {
    let mut out = String::from(
        "enterprise,from_ms,to_ms,alarms,per_hour,target_per_hour,share_hours_over_3,floods,target_flood_per_10_min,standing,target_standing,stale,chattering,target_chattering,offline,top10\n",
    );
    for r in reports {
        let top: Vec<String> = r.top10.iter().map(|(s, n)| format!("{s}={n}")).collect();
        let line = [
            csv_field(&r.enterprise),
            r.from_ms.to_string(),
            r.to_ms.to_string(),
            r.alarms.to_string(),
            format!("{:.3}", r.per_hour),
            r.targets.per_hour.to_string(),
            format!("{:.3}", r.share_hours_over_3),
            r.floods.to_string(),
            r.targets.flood_per_10_min.to_string(),
            r.standing.to_string(),
            r.targets.standing.to_string(),
            r.stale.to_string(),
            csv_field(&r.chattering.join(" ")),
            r.targets.chattering.to_string(),
            r.offline.to_string(),
            csv_field(&top.join(" ")),
        ];
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

async fn kpis(
    State(st): State<ApiState>,
    p: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    need(&p, READ, "read alarm KPIs")?;
    let to = num(&q, "to_ms")?.unwrap_or_else(now_ms);
    let from = num(&q, "from_ms")?.unwrap_or(to.saturating_sub(86_400_000));
    if to <= from || to.saturating_sub(from) > MAX_KPI_RANGE_MS {
        return Err(bad(format!("from_ms..to_ms must be a non-empty range of at most {MAX_KPI_RANGE_MS} ms")));
    }
    let csv = match q.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(bad(format!("format={other:?}: csv or json"))),
    };
    let engine = engine(&st)?;
    let reports = engine.lock().await.kpis(from, to).await.map_err(refused)?;
    let reports: Vec<_> = reports
        .into_iter()
        .filter(|r| visible(&p, (!r.enterprise.is_empty()).then_some(r.enterprise.as_str())))
        .collect();
    if csv {
        Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], kpi_csv(&reports)).into_response())
    } else {
        Ok(axum::Json(json!({ "items": reports })).into_response())
    }
}

/// The alarm routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/alarms", get(list))
        .route("/api/v1/alarms/stream", get(stream))
        .route("/api/v1/alarms/{id}", get(get_one))
        .route("/api/v1/alarms/{id}/timeline", get(timeline))
        .route("/api/v1/alarms/{id}/{action}", post(action))
        .route("/api/v1/windows", get(windows).post(request_window))
        .route("/api/v1/windows/{id}/{verb}", post(decide_window))
        .route("/api/v1/thresholds", get(thresholds).post(request_threshold))
        .route("/api/v1/thresholds/{id}/{verb}", post(decide_threshold))
        .route("/api/v1/kpis", get(kpis))
}
