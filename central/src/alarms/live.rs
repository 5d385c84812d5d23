//! The live change feed for the API's Server-Sent Events: every [`AlarmChange`] the engine publishes
//! gets a sequence number and is kept in a bounded ring, so a client reconnecting with
//! `Last-Event-ID` gets what it missed, or is told to resynchronise when it missed too much.
//!
//! Sequence numbers start at the process start time in ms times 1,000, so a number from before a
//! restart is always below the ring and never taken for a newer event (and stays exact in a
//! JavaScript number).
//!
//! [`OpenView`] is the list side of the same live picture: a copy of the engine's open alarms with
//! their list items pre-rendered, which the engine updates on every durable change, so listing open
//! alarms takes neither the engine's lock nor the store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio::sync::broadcast;

use super::model::{Alarm, AlarmChange, AlarmKey, AlarmSource, AlarmState, Stage};
use super::store::AlarmFilter;

/// Events kept for `Last-Event-ID` replay.
pub const RING: usize = 2048;

/// What the hub hands a subscriber.
#[derive(Debug, Clone)]
pub enum LiveItem {
    /// A change with its sequence number.
    Change(u64, Arc<AlarmChange>),
    /// The hub lost changes (it fell behind the engine): clients must refetch the list.
    Resync,
}

/// Counters of the live feed.
#[derive(Debug, Default)]
pub struct LiveMetrics {
    /// Changes published.
    pub published: AtomicU64,
    /// Times the hub fell behind the engine.
    pub hub_lagged: AtomicU64,
    /// Times a client fell behind the hub (it was told to resynchronise).
    pub client_lagged: AtomicU64,
    /// Streams currently open.
    pub clients: AtomicU64,
}

struct Inner {
    next: u64,
    ring: VecDeque<(u64, Arc<AlarmChange>)>,
}

/// The change hub (one per central; see the module documentation).
pub struct Hub {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<LiveItem>,
    /// Counters.
    pub metrics: LiveMetrics,
}

/// A new subscription: what was missed (or that the client must resynchronise), then live items.
pub struct Subscription {
    /// True when the client's `Last-Event-ID` could not be honoured.
    pub resync: bool,
    /// Changes after the client's `Last-Event-ID`.
    pub backlog: Vec<(u64, Arc<AlarmChange>)>,
    /// Live items from now on.
    pub rx: broadcast::Receiver<LiveItem>,
}

impl Hub {
    /// A hub whose first sequence number is `start_ms * 1000 + 1`.
    pub fn new(start_ms: i64) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(1024);
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                next: u64::try_from(start_ms).unwrap_or(0).saturating_mul(1000).saturating_add(1),
                ring: VecDeque::with_capacity(RING),
            }),
            tx,
            metrics: LiveMetrics::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the ring inconsistent (push/pop only).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a change (called by [`Hub::run`]); returns its sequence number.
    pub fn publish(&self, change: AlarmChange) -> u64 {
        let mut g = self.lock();
        let seq = g.next;
        g.next += 1;
        let c = Arc::new(change);
        if g.ring.len() == RING {
            g.ring.pop_front();
        }
        g.ring.push_back((seq, c.clone()));
        // Sent under the lock so a subscriber sees each change exactly once (backlog or live).
        let _ = self.tx.send(LiveItem::Change(seq, c));
        self.metrics.published.fetch_add(1, Ordering::Relaxed);
        seq
    }

    fn lost(&self) {
        let mut g = self.lock();
        g.ring.clear();
        let _ = self.tx.send(LiveItem::Resync);
        self.metrics.hub_lagged.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribes; `last_event_id` is the client's `Last-Event-ID` header, if any.
    pub fn subscribe(&self, last_event_id: Option<&str>) -> Subscription {
        let g = self.lock();
        let rx = self.tx.subscribe();
        let Some(raw) = last_event_id else { return Subscription { resync: false, backlog: Vec::new(), rx } };
        let latest = g.next - 1;
        let honoured = raw.trim().parse::<u64>().ok().filter(|&last| {
            // Honoured when every change after `last` is still in the ring.
            let oldest_needed = last.saturating_add(1);
            last <= latest && g.ring.front().map_or(last == latest, |(first, _)| *first <= oldest_needed)
        });
        match honoured {
            Some(last) => {
                Subscription { resync: false, backlog: g.ring.iter().filter(|(s, _)| *s > last).cloned().collect(), rx }
            }
            None => Subscription { resync: true, backlog: Vec::new(), rx },
        }
    }

    /// Forwards the engine's changes into the hub until the engine's channel closes.
    pub async fn run(self: Arc<Hub>, mut changes: broadcast::Receiver<AlarmChange>) {
        loop {
            match changes.recv().await {
                Ok(c) => {
                    self.publish(c);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::error!(changes = n, "alarm live feed fell behind the engine; clients resynchronise");
                    self.lost();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Prometheus text of the counters.
    pub fn prometheus(&self) -> String {
        let m = &self.metrics;
        format!(
            "vigil_alarm_live_published_total {}\nvigil_alarm_live_hub_lagged_total {}\nvigil_alarm_live_client_lagged_total {}\nvigil_alarm_live_clients {}\n",
            m.published.load(Ordering::Relaxed),
            m.hub_lagged.load(Ordering::Relaxed),
            m.client_lagged.load(Ordering::Relaxed),
            m.clients.load(Ordering::Relaxed),
        )
    }
}

/// One open alarm as the alarm list answers it: the alarm (to filter on) and its list item's JSON,
/// serialised once per change instead of once per request.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    /// The alarm as the engine holds it.
    pub alarm: Arc<Alarm>,
    /// [`item_json`] of the alarm, compact.
    pub json: Arc<str>,
}

#[derive(Debug, Default)]
struct ViewInner {
    alarms: BTreeMap<i64, ViewEntry>,
    /// Shelved keys and their expiry, as the engine holds them.
    shelved: HashMap<AlarmKey, i64>,
    /// No closed case has a higher id (0: there is none), so a listing asks the store only when
    /// a closed case can be on its page.
    newest_closed: i64,
}

/// Open alarms of a listing page and what the store must still be asked for.
#[derive(Debug, Clone)]
pub struct ViewPage {
    /// Matching open alarms, newest first.
    pub open: Vec<ViewEntry>,
    /// Whether a closed case may belong on the page (the store holds those).
    pub closed_possible: bool,
}

/// A read-mostly copy of the engine's open alarms (case not closed), updated by the engine on every
/// durable change while it holds its own lock, so the alarm list never waits for the engine (or
/// ingest's evaluation behind it) and never re-serialises an unchanged alarm.
#[derive(Debug, Default)]
pub struct OpenView {
    inner: RwLock<ViewInner>,
}

/// The list item of an alarm: the stored alarm plus its ISA-18.2 `state` and `shelved_until_ms`
/// (`None` for a closed case, whose key may since have been shelved for a newer instance).
pub fn item_json(a: &Alarm, shelved_until_ms: Option<i64>) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        let state = match a.state() {
            AlarmState::ActiveUnacked => "active_unacked",
            AlarmState::ActiveAcked => "active_acked",
            AlarmState::ReturnedUnacked => "returned_unacked",
            AlarmState::Normal => "normal",
        };
        m.insert("state".into(), Value::from(state));
        let shelved = if a.is_closed() { None } else { shelved_until_ms };
        m.insert("shelved_until_ms".into(), serde_json::json!(shelved));
    }
    v
}

/// Whether `a` passes `f` exactly as [`AlarmStore::list`](super::AlarmStore::list) decides it on
/// the stored document (the cursor included).
pub fn matches(f: &AlarmFilter, a: &Alarm) -> bool {
    let source_point = match &a.key.source {
        AlarmSource::Point(p) => Some(p.as_str()),
        AlarmSource::Gateway(_) | AlarmSource::Device(..) => None,
    };
    f.open.is_none_or(|o| o != a.is_closed())
        && f.active.is_none_or(|v| v == a.active)
        && f.acked.is_none_or(|v| v == a.acked)
        && f.stage.is_none_or(|s| s == a.stage)
        && f.grade.is_none_or(|g| g == a.grade)
        && f.condition.is_none_or(|c| c == a.key.condition)
        && f.enterprise.as_ref().is_none_or(|e| a.enterprise.as_ref() == Some(e))
        && f.enterprises_in.as_ref().is_none_or(|l| a.enterprise.as_ref().is_some_and(|e| l.contains(e)))
        && f.point.as_deref().is_none_or(|p| source_point == Some(p))
        && f.from_ms.is_none_or(|v| a.raised_ms >= v)
        && f.to_ms.is_none_or(|v| a.raised_ms < v)
        && f.before_id.is_none_or(|v| a.id < v)
}

fn entry_of(a: Arc<Alarm>, shelved: &HashMap<AlarmKey, i64>) -> ViewEntry {
    let json = item_json(&a, shelved.get(&a.key).copied()).to_string().into();
    ViewEntry { alarm: a, json }
}

impl OpenView {
    /// An empty view.
    pub fn new() -> Arc<OpenView> {
        Arc::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewInner> {
        // Writers replace whole entries, so a panic while holding the lock leaves no torn state.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewInner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the content: the engine's open alarms, shelved keys (with their expiry) and the
    /// highest alarm id it has used (any id up to it that is not open may be a closed case).
    pub fn reset<'a>(
        &self,
        alarms: impl IntoIterator<Item = &'a Alarm>,
        shelved: impl IntoIterator<Item = (AlarmKey, i64)>,
        max_id: i64,
    ) {
        let shelved: HashMap<AlarmKey, i64> = shelved.into_iter().collect();
        let alarms: BTreeMap<i64, ViewEntry> =
            alarms.into_iter().map(|a| (a.id, entry_of(Arc::new(a.clone()), &shelved))).collect();
        let mut newest_closed = max_id.max(0);
        while newest_closed > 0 && alarms.contains_key(&newest_closed) {
            newest_closed -= 1;
        }
        *self.write() = ViewInner { alarms, shelved, newest_closed };
    }

    /// Takes an alarm after a durable change: kept while its case is open, dropped once closed.
    pub fn put(&self, a: &Alarm) {
        let mut g = self.write();
        if a.is_closed() {
            g.alarms.remove(&a.id);
            g.newest_closed = g.newest_closed.max(a.id);
        } else {
            let e = entry_of(Arc::new(a.clone()), &g.shelved);
            g.alarms.insert(a.id, e);
        }
    }

    /// Takes a key's new shelving (`None`: no longer shelved) and re-renders that key's alarms.
    pub fn set_shelved(&self, key: &AlarmKey, until_ms: Option<i64>) {
        let mut g = self.write();
        match until_ms {
            Some(t) => g.shelved.insert(key.clone(), t),
            None => g.shelved.remove(key),
        };
        let ViewInner { alarms, shelved, .. } = &mut *g;
        for e in alarms.values_mut().filter(|e| e.alarm.key == *key) {
            *e = entry_of(e.alarm.clone(), shelved);
        }
    }

    /// Open alarms passing `f`, newest (highest id) first, at most `limit`, and whether a closed
    /// case could rank among those `limit` (when `f` admits closed cases at all). The read lock is
    /// held only while the page's entries are picked (their JSON is shared, not copied).
    pub fn page(&self, f: &AlarmFilter, limit: usize) -> ViewPage {
        if f.enterprises_in.as_ref().is_some_and(Vec::is_empty) {
            return ViewPage { open: Vec::new(), closed_possible: false };
        }
        let admits_closed = f.open != Some(true) && f.stage.is_none_or(|s| s == Stage::Closed);
        let g = self.read();
        let open: Vec<ViewEntry> = if f.open == Some(false) {
            Vec::new()
        } else {
            let below = f.before_id.unwrap_or(i64::MAX);
            let matching = g.alarms.range(..below).rev().filter(|(_, e)| matches(f, &e.alarm));
            matching.take(limit).map(|(_, e)| e.clone()).collect()
        };
        // A closed case ranks on the page only if its id is above the page's last open alarm.
        let lowest = if open.len() >= limit { open.last().map_or(0, |e| e.alarm.id) } else { 0 };
        ViewPage { closed_possible: admits_closed && g.newest_closed > lowest, open }
    }

    /// Number of open alarms in the view.
    pub fn len(&self) -> usize {
        self.read().alarms.len()
    }

    /// Whether the view holds no open alarm.
    pub fn is_empty(&self) -> bool {
        self.read().alarms.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::alarms::model::*;

    fn change(id: i64) -> AlarmChange {
        let alarm = Alarm {
            id,
            key: AlarmKey { source: AlarmSource::Point("p".into()), condition: Condition::Hi },
            enterprise: None,
            grade: Grade::C,
            active: true,
            acked: false,
            raised_ms: 0,
            last_active_ms: 0,
            cleared_ms: None,
            received_ms: 0,
            value: None,
            limit: None,
            activations: 1,
            longest_active_ms: 0,
            historical: false,
            replay: false,
            suppressed_by: None,
            stage: Stage::Raised,
            gas_level: None,
            false_alarm_reason: None,
            report: None,
            pickup_deadline_ms: None,
            supervisions: 0,
        };
        AlarmChange { kind: ChangeKind::Raised, alarm, ts_ms: 0, annunciate: true }
    }

    #[test]
    fn last_event_id_is_honoured_within_the_ring_and_refused_outside() {
        let hub = Hub::new(1_000);
        let first = hub.publish(change(1));
        assert_eq!(first, 1_000_001);
        for i in 2..=5 {
            hub.publish(change(i));
        }
        let s = hub.subscribe(Some(&first.to_string()));
        assert!(!s.resync);
        assert_eq!(s.backlog.iter().map(|(_, c)| c.alarm.id).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        let s = hub.subscribe(Some(&(first + 4).to_string()));
        assert!(!s.resync && s.backlog.is_empty());
        // Before the ring (a previous process), after the newest, or garbage: resynchronise.
        for bad in ["17", "999999", "99999999999", "x"] {
            assert!(hub.subscribe(Some(bad)).resync, "{bad}");
        }
        for i in 6..(RING as i64 + 10) {
            hub.publish(change(i));
        }
        assert!(hub.subscribe(Some(&first.to_string())).resync, "events fell out of the ring");
        assert!(!hub.subscribe(None).resync);
    }

    #[test]
    fn open_view_pages_newest_first_drops_closed_cases_and_renders_shelving() {
        let view = OpenView::new();
        let mut alarms: Vec<Alarm> = (1..=5).map(|i| change(i).alarm).collect();
        alarms[1].enterprise = Some("ent-a".into());
        let shelved_key = alarms[2].key.clone();
        view.reset(alarms.iter().take(4), [(shelved_key.clone(), 99)], 4);
        view.put(&alarms[4]);
        let ids = |f: &AlarmFilter, n| view.page(f, n).open.iter().map(|e| e.alarm.id).collect::<Vec<_>>();
        assert_eq!(ids(&AlarmFilter::default(), 10), vec![5, 4, 3, 2, 1]);
        assert_eq!(ids(&AlarmFilter { before_id: Some(4), ..AlarmFilter::default() }, 2), vec![3, 2]);
        let scoped = AlarmFilter { enterprises_in: Some(vec!["ent-a".into()]), ..AlarmFilter::default() };
        assert_eq!(ids(&scoped, 10), vec![2]);
        assert!(ids(&AlarmFilter { open: Some(false), ..AlarmFilter::default() }, 10).is_empty());
        // Every alarm of the test shares one key, so all render the shelving until it ends.
        let rendered = |id: i64| -> Value {
            let page = view.page(&AlarmFilter::default(), 10).open;
            serde_json::from_str(&page.iter().find(|e| e.alarm.id == id).unwrap().json).unwrap()
        };
        assert_eq!(rendered(3)["shelved_until_ms"], 99);
        assert_eq!(rendered(3), item_json(&alarms[2], Some(99)));
        view.set_shelved(&shelved_key, None);
        assert_eq!(rendered(3)["shelved_until_ms"], Value::Null);
        assert_eq!(rendered(3)["state"], "active_unacked");
        let mut closed = alarms[3].clone();
        closed.stage = Stage::Closed;
        view.put(&closed);
        assert_eq!(ids(&AlarmFilter::default(), 10), vec![5, 3, 2, 1]);
        assert_eq!(view.len(), 4);
        // The store is asked only when a closed case can rank on the page.
        assert!(!view.page(&AlarmFilter::default(), 1).closed_possible, "5 is above the closed 4");
        assert!(view.page(&AlarmFilter::default(), 2).closed_possible, "the closed 4 ranks between 5 and 3");
        assert!(!view.page(&AlarmFilter { open: Some(true), ..AlarmFilter::default() }, 10).closed_possible);
        let fresh = OpenView::new();
        fresh.reset(alarms.iter().take(3), [], 5);
        assert!(fresh.page(&AlarmFilter::default(), 2).closed_possible, "ids 4 and 5 may be closed cases");
        fresh.reset(alarms.iter().take(3), [], 3);
        assert!(!fresh.page(&AlarmFilter::default(), 10).closed_possible);
    }
}
