//! Sessions (one per client id), subscriptions, routing into bounded per-connection queues, and the
//! retained messages (in memory, persisted to one file in the data directory).

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use rumqttc::{Packet, Publish, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};

use super::acl::{Identity, is_wildcard, matches};
use super::metrics::{BrokerMetrics, Disconnect};

/// What a connection's writer sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// A control packet (CONNACK, PUBACK, SUBACK, UNSUBACK, PINGRESP), written as is.
    Control(Packet),
    /// A message for a subscriber; the writer assigns the packet id of a QoS 1 delivery.
    Deliver(Publish),
}

/// Ends a connection, once, with the first reason given.
#[derive(Clone, Debug)]
pub(crate) struct Kill(Arc<watch::Sender<Option<Disconnect>>>);

impl Kill {
    /// A new switch and the receiver its connection watches.
    pub(crate) fn new() -> (Kill, watch::Receiver<Option<Disconnect>>) {
        let (tx, rx) = watch::channel(None);
        (Kill(Arc::new(tx)), rx)
    }

    /// A receiver of the reason, for a task of the same connection.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Disconnect>> {
        self.0.subscribe()
    }

    /// Asks the connection to end with `why` (ignored if it is already ending).
    pub(crate) fn kill(&self, why: Disconnect) {
        self.0.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                true
            } else {
                false
            }
        });
    }
}

#[derive(Clone)]
struct Sub {
    conn: u64,
    qos: QoS,
    tx: mpsc::Sender<Out>,
    kill: Kill,
}

#[derive(Default)]
struct Subs {
    exact: HashMap<String, Vec<Sub>>,
    wild: Vec<(String, Sub)>,
}

struct Session {
    conn: u64,
    identity: Identity,
    kill: Kill,
}

/// The routing table and retained store shared by all connections.
pub(crate) struct Router {
    subs: RwLock<Subs>,
    sessions: Mutex<HashMap<String, Session>>,
    /// The retained messages.
    pub(crate) retained: Retained,
    metrics: Arc<BrokerMetrics>,
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

impl Router {
    /// An empty routing table over `retained`.
    pub(crate) fn new(retained: Retained, metrics: Arc<BrokerMetrics>) -> Router {
        Router { subs: RwLock::default(), sessions: Mutex::default(), retained, metrics }
    }

    /// Registers the session of `client_id`; an existing one is taken over (ended without its will).
    pub(crate) fn register(&self, client_id: &str, conn: u64, identity: Identity, kill: Kill) {
        let old = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.to_owned(), Session { conn, identity, kill });
        if let Some(old) = old {
            tracing::info!(client = client_id, "broker: session taken over by a new connection");
            old.kill.kill(Disconnect::Takeover);
        }
    }

    /// Forgets connection `conn`: its session (unless taken over already) and its subscriptions.
    pub(crate) fn unregister(&self, client_id: &str, conn: u64) {
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if sessions.get(client_id).is_some_and(|s| s.conn == conn) {
                sessions.remove(client_id);
            }
        }
        let mut subs = self.subs.write().unwrap_or_else(|p| p.into_inner());
        subs.exact.retain(|_, v| {
            v.retain(|s| s.conn != conn);
            !v.is_empty()
        });
        subs.wild.retain(|(_, s)| s.conn != conn);
    }

    /// Ends every session whose identity `still_allowed` refuses now (a revoked gateway).
    pub(crate) fn recheck(&self, still_allowed: impl Fn(&Identity) -> bool) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for (client, s) in sessions.iter() {
            if !still_allowed(&s.identity) {
                tracing::warn!(client = %client, "broker: gateway revoked or removed; disconnecting it");
                s.kill.kill(Disconnect::Revoked);
            }
        }
    }

    /// Ends every session (the broker is stopping).
    pub(crate) fn kill_all(&self) {
        for s in self.sessions.lock().unwrap_or_else(|p| p.into_inner()).values() {
            s.kill.kill(Disconnect::Shutdown);
        }
    }

    /// Adds (or replaces) connection `conn`'s subscription to a valid `filter`.
    pub(crate) fn subscribe(&self, conn: u64, filter: &str, qos: QoS, tx: mpsc::Sender<Out>, kill: Kill) {
        let sub = Sub { conn, qos, tx, kill };
        let mut subs = self.subs.write().unwrap_or_else(|p| p.into_inner());
        if is_wildcard(filter) {
            subs.wild.retain(|(f, s)| !(s.conn == conn && f == filter));
            subs.wild.push((filter.to_owned(), sub));
        } else {
            let v = subs.exact.entry(filter.to_owned()).or_default();
            v.retain(|s| s.conn != conn);
            v.push(sub);
        }
    }

    /// Removes connection `conn`'s subscription to `filter`.
    pub(crate) fn unsubscribe(&self, conn: u64, filter: &str) {
        let mut subs = self.subs.write().unwrap_or_else(|p| p.into_inner());
        subs.wild.retain(|(f, s)| !(s.conn == conn && f == filter));
        if let Some(v) = subs.exact.get_mut(filter) {
            v.retain(|s| s.conn != conn);
            if v.is_empty() {
                subs.exact.remove(filter);
            }
        }
    }

    /// Stores a retained message (if flagged) and hands the message to every matching subscriber's
    /// queue, once per connection at the highest granted QoS. A subscriber whose queue is full is
    /// disconnected as a slow consumer: nothing is silently dropped into a queue that cannot take it.
    /// Returns how many queues took it.
    pub(crate) fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: Bytes) -> usize {
        if retain {
            self.retained.set(topic, qos, payload.clone());
        }
        let mut targets: Vec<Sub> = Vec::new();
        {
            let subs = self.subs.read().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = subs.exact.get(topic) {
                targets.extend(v.iter().cloned());
            }
            targets.extend(subs.wild.iter().filter(|(f, _)| matches(f, topic)).map(|(_, s)| s.clone()));
        }
        if targets.len() > 1 {
            targets.sort_by_key(|s| (s.conn, std::cmp::Reverse(s.qos as u8)));
            targets.dedup_by_key(|s| s.conn);
        }
        let mut delivered = 0;
        for s in targets {
            let mut p = Publish::new(topic, min_qos(qos, s.qos), Vec::new());
            p.payload = payload.clone();
            match s.tx.try_send(Out::Deliver(p)) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => s.kill.kill(Disconnect::SlowConsumer),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        delivered
    }
}

#[derive(Serialize, Deserialize)]
struct RetainedFile {
    version: u32,
    messages: Vec<RetainedEntry>,
}

#[derive(Serialize, Deserialize)]
struct RetainedEntry {
    topic: String,
    qos: u8,
    payload_hex: String,
}

/// Retained messages: the last retained publish per topic, in memory and in one file that a
/// background task rewrites (temp file, fsync, rename) whenever they change.
pub(crate) struct Retained {
    map: Mutex<BTreeMap<String, (QoS, Bytes)>>,
    max: usize,
    path: PathBuf,
    /// Signalled on every change.
    pub(crate) changed: Notify,
    metrics: Arc<BrokerMetrics>,
}

impl Retained {
    /// Loads the retained messages from `path` (absent: none). A file that does not parse is moved
    /// aside to `*.corrupt` and the broker starts without retained messages (gateways re-publish
    /// their state on every connect).
    pub(crate) fn load(path: &Path, max: usize, metrics: Arc<BrokerMetrics>) -> Retained {
        let mut map = BTreeMap::new();
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<RetainedFile>(&bytes) {
                Ok(f) => {
                    for e in f.messages.into_iter().take(max) {
                        let qos = if e.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                        match hex::decode(&e.payload_hex) {
                            Ok(p) if !p.is_empty() => {
                                map.insert(e.topic, (qos, Bytes::from(p)));
                            }
                            _ => {
                                tracing::warn!(topic = %e.topic, file = %path.display(), "broker: bad retained payload skipped")
                            }
                        }
                    }
                }
                Err(e) => {
                    let aside = path.with_extension("corrupt");
                    tracing::error!(file = %path.display(), error = %e, aside = %aside.display(), "broker: retained-message file does not parse; moved aside");
                    let _ = std::fs::rename(path, &aside);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(file = %path.display(), error = %e, "broker: cannot read retained messages"),
        }
        metrics.retained.store(map.len() as u64, Ordering::Relaxed);
        Retained { map: Mutex::new(map), max, path: path.to_owned(), changed: Notify::new(), metrics }
    }

    /// Sets (or, with an empty payload, clears) the retained message of `topic`.
    fn set(&self, topic: &str, qos: QoS, payload: Bytes) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if payload.is_empty() {
            map.remove(topic);
        } else if map.len() < self.max || map.contains_key(topic) {
            map.insert(topic.to_owned(), (qos, payload));
        } else {
            self.metrics.retained_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(topic, max = self.max, "broker: retained store full; message forwarded but not retained");
            return;
        }
        self.metrics.retained.store(map.len() as u64, Ordering::Relaxed);
        drop(map);
        self.changed.notify_one();
    }

    /// The retained messages matching `filter`, flagged retained, at most `qos`.
    pub(crate) fn matching(&self, filter: &str, qos: QoS) -> Vec<Publish> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(t, _)| matches(filter, t))
            .map(|(t, (q, payload))| {
                let mut p = Publish::new(t.as_str(), min_qos(*q, qos), Vec::new());
                p.payload = payload.clone();
                p.retain = true;
                p
            })
            .collect()
    }

    /// Writes the current retained messages durably (blocking I/O).
    pub(crate) fn persist(&self) -> std::io::Result<()> {
        let file = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            RetainedFile {
                version: 1,
                messages: map
                    .iter()
                    .map(|(t, (q, p))| RetainedEntry { topic: t.clone(), qos: *q as u8, payload_hex: hex::encode(p) })
                    .collect(),
            }
        };
        let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn router(dir: &Path, max: usize) -> Router {
        let m = Arc::new(BrokerMetrics::default());
        Router::new(Retained::load(&dir.join("retained.json"), max, m.clone()), m)
    }

    #[test]
    fn a_full_queue_disconnects_its_subscriber_and_others_still_get_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path(), 10);
        let (slow_tx, _slow_rx) = mpsc::channel(1);
        let (slow_kill, slow_dead) = Kill::new();
        let (fast_tx, mut fast_rx) = mpsc::channel(10);
        let (fast_kill, fast_dead) = Kill::new();
        r.subscribe(1, "a/+", QoS::AtLeastOnce, slow_tx, slow_kill);
        r.subscribe(2, "a/b", QoS::AtMostOnce, fast_tx.clone(), fast_kill.clone());
        r.subscribe(2, "a/#", QoS::AtLeastOnce, fast_tx, fast_kill);
        assert_eq!(r.publish("a/b", QoS::AtLeastOnce, false, Bytes::from_static(b"1")), 2);
        assert_eq!(r.publish("a/b", QoS::AtLeastOnce, false, Bytes::from_static(b"2")), 1);
        assert_eq!(*slow_dead.borrow(), Some(Disconnect::SlowConsumer));
        assert_eq!(*fast_dead.borrow(), None);
        // One copy per connection, at the highest QoS it was granted.
        for want in [&b"1"[..], b"2"] {
            let Some(Out::Deliver(p)) = fast_rx.try_recv().ok() else { panic!("no delivery") };
            assert_eq!((&p.payload[..], p.qos, p.retain), (want, QoS::AtLeastOnce, false));
        }
        assert!(fast_rx.try_recv().is_err());
    }

    #[test]
    fn retained_messages_survive_a_reload_and_an_empty_payload_clears_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path(), 2);
        r.publish("s/1", QoS::AtLeastOnce, true, Bytes::from_static(b"one"));
        r.publish("s/2", QoS::AtMostOnce, true, Bytes::from_static(b"two"));
        r.publish("s/3", QoS::AtLeastOnce, true, Bytes::from_static(b"refused: full"));
        r.retained.persist().unwrap();
        let r2 = router(dir.path(), 2);
        let got: Vec<(String, Vec<u8>, bool)> = r2
            .retained
            .matching("s/#", QoS::AtLeastOnce)
            .into_iter()
            .map(|p| (p.topic, p.payload.to_vec(), p.retain))
            .collect();
        assert_eq!(got, vec![("s/1".into(), b"one".to_vec(), true), ("s/2".into(), b"two".to_vec(), true)]);
        r2.publish("s/1", QoS::AtLeastOnce, true, Bytes::new());
        assert_eq!(r2.retained.matching("s/#", QoS::AtLeastOnce).len(), 1);
        std::fs::write(dir.path().join("retained.json"), b"{garbage").unwrap();
        assert!(router(dir.path(), 2).retained.matching("#", QoS::AtLeastOnce).is_empty());
        assert!(dir.path().join("retained.corrupt").exists());
    }

    #[test]
    fn a_second_session_with_the_same_id_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let r = router(dir.path(), 2);
        let (k1, dead1) = Kill::new();
        let (k2, dead2) = Kill::new();
        r.register("gw", 1, Identity::Central, k1);
        r.register("gw", 2, Identity::Central, k2);
        assert_eq!(*dead1.borrow(), Some(Disconnect::Takeover));
        r.unregister("gw", 1); // the old connection's cleanup leaves the new session alone
        r.recheck(|_| false);
        assert_eq!(*dead2.borrow(), Some(Disconnect::Revoked));
    }
}
