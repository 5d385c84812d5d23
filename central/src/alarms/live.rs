//! The live change feed for the API's Server-Sent Events: every [`AlarmChange`] the engine publishes
//! gets a sequence number and is kept in a bounded ring, so a client reconnecting with
//! `Last-Event-ID` gets what it missed, or is told to resynchronise when it missed too much.
//!
//! Sequence numbers start at the process start time in ms times 1,000, so a number from before a
//! restart is always below the ring and never taken for a newer event (and stays exact in a
//! JavaScript number).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::model::AlarmChange;

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
}
