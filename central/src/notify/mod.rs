//! Notifications of alarms: rules by grade, enterprise and role (immediately, after N seconds
//! unacknowledged, repeated up to K times), escalation when a pick-up deadline passes (recorded on
//! the alarm's timeline), senders behind one trait (webhook; logging SMS and e-mail senders), retries
//! with exponential backoff and a delivery log (`notify_deliveries` in the alarm database).
//!
//! Reminder timers live in memory: after a restart, alarms still unacknowledged are escalated by the
//! engine's supervision (its deadlines are durable), not by reminders of rules.

pub mod config;
pub mod sender;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::{Row, SqlitePool};
use tokio::sync::{Mutex, Semaphore, broadcast, watch};

pub use config::{ChannelDef, ChannelKind, NotifyConfig, RuleDef, When};
pub use sender::{LogSender, SendError, Sender, WebhookSender};

use crate::alarms::{Alarm, AlarmChange, AlarmEngine, ChangeKind};
use crate::api::Role;

/// One notification as senders receive it (the webhook's JSON body).
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    /// The rule that sent it.
    pub rule: String,
    /// The role of the intended recipients.
    pub role: Option<Role>,
    /// `raised`, `reminder` or `escalation`.
    pub reason: &'static str,
    /// Escalation level (supervision count) or reminder number.
    pub count: u32,
    /// The alarm.
    pub alarm: Alarm,
    /// When central made the message (UTC ms).
    pub ts_ms: i64,
    /// A one-line text (SMS body, mail subject).
    pub text: String,
}

/// Counters of the notifier.
#[derive(Debug, Default)]
pub struct NotifyMetrics {
    /// Messages made (one per rule firing and channel).
    pub messages: AtomicU64,
    /// Attempts made.
    pub attempts: AtomicU64,
    /// Messages delivered.
    pub delivered: AtomicU64,
    /// Attempts that failed.
    pub failed_attempts: AtomicU64,
    /// Messages given up after the last attempt.
    pub gave_up: AtomicU64,
    /// Changes the notifier missed (it fell behind the engine).
    pub lagged: AtomicU64,
    /// Delivery-log writes that failed.
    pub log_errors: AtomicU64,
}

impl NotifyMetrics {
    /// Prometheus text of the counters.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        for (n, v) in [
            ("vigil_notify_messages_total", g(&self.messages)),
            ("vigil_notify_attempts_total", g(&self.attempts)),
            ("vigil_notify_delivered_total", g(&self.delivered)),
            ("vigil_notify_failed_attempts_total", g(&self.failed_attempts)),
            ("vigil_notify_gave_up_total", g(&self.gave_up)),
            ("vigil_notify_lagged_total", g(&self.lagged)),
            ("vigil_notify_log_errors_total", g(&self.log_errors)),
        ] {
            s.push_str(&format!("{n} {v}\n"));
        }
        s
    }
}

/// One row of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Rule name.
    pub rule: String,
    /// Channel name.
    pub channel: String,
    /// Alarm id.
    pub alarm_id: i64,
    /// `raised`, `reminder` or `escalation`.
    pub reason: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// `delivered`, `failed` (retried) or `gave_up` (last attempt failed).
    pub status: String,
    /// The error of a failed attempt.
    pub error: Option<String>,
    /// When (UTC ms).
    pub ts_ms: i64,
}

/// The delivery log: a row per attempt in `notify_deliveries`.
#[derive(Debug, Clone)]
pub struct DeliveryLog {
    pool: SqlitePool,
}

impl DeliveryLog {
    /// Opens the log on a pool, creating the table if needed.
    pub async fn open(pool: SqlitePool) -> Result<DeliveryLog, sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS notify_deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, rule TEXT NOT NULL, channel TEXT NOT NULL, alarm_id INTEGER NOT NULL, reason TEXT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL, error TEXT, ts_ms INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS notify_deliveries_alarm ON notify_deliveries(alarm_id)")
            .execute(&pool)
            .await?;
        Ok(DeliveryLog { pool })
    }

    async fn record(&self, d: &Delivery) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO notify_deliveries (rule, channel, alarm_id, reason, attempt, status, error, ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&d.rule)
            .bind(&d.channel)
            .bind(d.alarm_id)
            .bind(&d.reason)
            .bind(i64::from(d.attempt))
            .bind(&d.status)
            .bind(&d.error)
            .bind(d.ts_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The rows (of one alarm, or all), in the order written.
    pub async fn list(&self, alarm_id: Option<i64>) -> Result<Vec<Delivery>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT rule, channel, alarm_id, reason, attempt, status, error, ts_ms FROM notify_deliveries WHERE ? IS NULL OR alarm_id = ? ORDER BY id",
        )
        .bind(alarm_id)
        .bind(alarm_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Delivery {
                    rule: r.try_get(0)?,
                    channel: r.try_get(1)?,
                    alarm_id: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    attempt: u32::try_from(r.try_get::<i64, _>(4)?).unwrap_or(0),
                    status: r.try_get(5)?,
                    error: r.try_get(6)?,
                    ts_ms: r.try_get(7)?,
                })
            })
            .collect()
    }
}

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A channel could not be built.
    #[error("notify channel {channel}: {source}")]
    Channel {
        /// The channel.
        channel: String,
        /// Why.
        source: SendError,
    },
    /// The delivery log could not be opened.
    #[error("notify delivery log: {0}")]
    Log(#[from] sqlx::Error),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    due_ms: i64,
    sent: u32,
}

fn now_ms() -> i64 {
    crate::ingest::now_ms()
}

fn secs_ms(s: f64) -> i64 {
    (s * 1000.0).round() as i64
}

/// The notifier: applies the rules to the engine's changes and delivers through the channels.
pub struct Notifier {
    cfg: NotifyConfig,
    channels: HashMap<String, Arc<dyn Sender>>,
    log: DeliveryLog,
    metrics: Arc<NotifyMetrics>,
    pending: HashMap<(usize, i64), Pending>,
    latest: HashMap<i64, Alarm>,
    slots: Arc<Semaphore>,
    top_level: u32,
}

/// The text of a message.
fn text(a: &Alarm, reason: &str) -> String {
    let mut s = format!("[{:?}] {} {:?}", a.grade, a.key.source, a.key.condition);
    if let Some(v) = a.value {
        s.push_str(&format!(" value {v}"));
    }
    if let Some(l) = a.limit {
        s.push_str(&format!(" (limit {l})"));
    }
    if let Some(e) = &a.enterprise {
        s.push_str(&format!(", {e}"));
    }
    s.push_str(&format!(", alarm {}: {reason}", a.id));
    s
}

impl Notifier {
    /// Builds the channels and opens the delivery log on `pool` (the alarm database).
    pub async fn new(cfg: NotifyConfig, pool: SqlitePool) -> Result<Notifier, NotifyError> {
        let mut channels = HashMap::new();
        for c in &cfg.channel {
            let s = sender::build(c).map_err(|source| NotifyError::Channel { channel: c.name.clone(), source })?;
            if matches!(c.kind, ChannelKind::SmsLog | ChannelKind::EmailLog) {
                tracing::warn!(channel = %c.name, kind = ?c.kind, "notify channel is a LOGGING sender (demo): messages are only written to the log");
            }
            channels.insert(c.name.clone(), s);
        }
        let top_level = cfg.rule.iter().filter(|r| r.when == When::Supervision).map(|r| r.level).max().unwrap_or(1);
        Ok(Notifier {
            slots: Arc::new(Semaphore::new(cfg.max_in_flight)),
            channels,
            log: DeliveryLog::open(pool).await?,
            metrics: Arc::default(),
            pending: HashMap::new(),
            latest: HashMap::new(),
            top_level,
            cfg,
        })
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<NotifyMetrics> {
        self.metrics.clone()
    }

    /// The delivery log.
    pub fn log(&self) -> DeliveryLog {
        self.log.clone()
    }

    fn matches(r: &RuleDef, a: &Alarm) -> bool {
        (r.grades.is_empty() || r.grades.contains(&a.grade))
            && (r.enterprises.is_empty() || a.enterprise.as_ref().is_some_and(|e| r.enterprises.contains(e)))
    }

    /// Sends `reason` for rule `ix` through each of its channels (each delivery on its own task).
    fn fire(&self, ix: usize, a: &Alarm, reason: &'static str, count: u32, now: i64) {
        let r = &self.cfg.rule[ix];
        let msg = Arc::new(Message {
            rule: r.name.clone(),
            role: r.role,
            reason,
            count,
            alarm: a.clone(),
            ts_ms: now,
            text: text(a, reason),
        });
        for ch in &r.channels {
            let Some(sender) = self.channels.get(ch).cloned() else { continue };
            self.metrics.messages.fetch_add(1, Ordering::Relaxed);
            let job = Delivering {
                msg: msg.clone(),
                channel: ch.clone(),
                sender,
                log: self.log.clone(),
                metrics: self.metrics.clone(),
                cfg: (self.cfg.max_attempts, self.cfg.backoff_initial_ms, self.cfg.backoff_max_ms, self.cfg.timeout_ms),
            };
            let slots = self.slots.clone();
            tokio::spawn(async move {
                // Bounded concurrency: a slow receiver cannot pile up unbounded connections.
                let Ok(_permit) = slots.acquire_owned().await else { return };
                job.run().await;
            });
        }
    }

    /// Applies one change at wall-clock `now`; returns escalations to record on timelines.
    fn on_change(&mut self, c: &AlarmChange, now: i64) -> Vec<(i64, String)> {
        let a = &c.alarm;
        let mut notes = Vec::new();
        if a.acked || a.is_closed() {
            self.pending.retain(|(_, id), _| *id != a.id);
            self.latest.remove(&a.id);
            return notes;
        }
        self.latest.insert(a.id, a.clone());
        match c.kind {
            ChangeKind::Raised | ChangeKind::Reactivated | ChangeKind::Promoted | ChangeKind::Reannunciated
                if c.annunciate && a.active =>
            {
                for (ix, r) in self.cfg.rule.iter().enumerate() {
                    if !Self::matches(r, a) {
                        continue;
                    }
                    match r.when {
                        When::Immediately => {
                            self.fire(ix, a, "raised", 1, now);
                            if r.times > 1 {
                                self.pending.insert((ix, a.id), Pending { due_ms: now + secs_ms(r.every_s), sent: 1 });
                            }
                        }
                        When::Unacknowledged => {
                            self.pending
                                .entry((ix, a.id))
                                .or_insert(Pending { due_ms: now + secs_ms(r.after_s), sent: 0 });
                        }
                        When::Supervision => {}
                    }
                }
            }
            ChangeKind::Supervision if c.annunciate => {
                let level = a.supervisions.min(self.top_level);
                for (ix, r) in self.cfg.rule.iter().enumerate() {
                    if r.when == When::Supervision && r.level == level && Self::matches(r, a) {
                        self.fire(ix, a, "escalation", a.supervisions, now);
                        let detail = serde_json::json!({
                            "rule": r.name, "role": r.role, "channels": r.channels,
                            "supervision": a.supervisions, "level": level,
                        });
                        notes.push((a.id, detail.to_string()));
                    }
                }
            }
            _ => {}
        }
        notes
    }

    /// Sends the reminders that are due at `now`.
    fn on_tick(&mut self, now: i64) {
        let due: Vec<(usize, i64)> = self.pending.iter().filter(|(_, p)| p.due_ms <= now).map(|(k, _)| *k).collect();
        for (ix, id) in due {
            let Some(a) = self.latest.get(&id).cloned() else {
                self.pending.remove(&(ix, id));
                continue;
            };
            let Some(p) = self.pending.get(&(ix, id)).copied() else { continue };
            let r = &self.cfg.rule[ix];
            let reason = if p.sent == 0 && r.when == When::Unacknowledged { "unacknowledged" } else { "reminder" };
            self.fire(ix, &a, reason, p.sent + 1, now);
            let sent = p.sent + 1;
            if sent >= r.times {
                self.pending.remove(&(ix, id));
            } else {
                self.pending.insert((ix, id), Pending { due_ms: now + secs_ms(r.every_s), sent });
            }
        }
    }

    /// Runs until `shutdown` turns true or the engine's channel closes. Escalations are written to
    /// the alarm's timeline through `engine`.
    pub async fn run(
        mut self,
        mut changes: broadcast::Receiver<AlarmChange>,
        engine: Arc<Mutex<AlarmEngine>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => if *shutdown.borrow() { return },
                c = changes.recv() => match c {
                    Ok(c) => {
                        let now = now_ms();
                        for (id, detail) in self.on_change(&c, now) {
                            if let Err(e) = engine.lock().await.note(id, "escalation", "system", &detail, now).await {
                                tracing::error!(alarm = id, error = %e, "escalation not recorded on the timeline");
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.metrics.lagged.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(changes = n, "notifier fell behind the alarm engine; those changes notified nobody");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => self.on_tick(now_ms()),
            }
        }
    }
}

/// One message through one channel, with retries.
struct Delivering {
    msg: Arc<Message>,
    channel: String,
    sender: Arc<dyn Sender>,
    log: DeliveryLog,
    metrics: Arc<NotifyMetrics>,
    /// max attempts, first backoff ms, max backoff ms, timeout ms.
    cfg: (u32, u64, u64, u64),
}

impl Delivering {
    async fn run(self) {
        let (max, first, cap, timeout) = self.cfg;
        let mut backoff = first;
        for attempt in 1..=max {
            self.metrics.attempts.fetch_add(1, Ordering::Relaxed);
            let r = match tokio::time::timeout(Duration::from_millis(timeout), self.sender.send(&self.msg)).await {
                Ok(r) => r,
                Err(_) => Err(SendError::Timeout(timeout)),
            };
            let (status, error) = match &r {
                Ok(()) => ("delivered", None),
                Err(e) if attempt == max => ("gave_up", Some(e.to_string())),
                Err(e) => ("failed", Some(e.to_string())),
            };
            let row = Delivery {
                rule: self.msg.rule.clone(),
                channel: self.channel.clone(),
                alarm_id: self.msg.alarm.id,
                reason: self.msg.reason.to_owned(),
                attempt,
                status: status.to_owned(),
                error,
                ts_ms: now_ms(),
            };
            if let Err(e) = self.log.record(&row).await {
                self.metrics.log_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "delivery log write failed");
            }
            match r {
                Ok(()) => {
                    self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    self.metrics.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if attempt == max {
                        self.metrics.gave_up.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(channel = %self.channel, rule = %self.msg.rule, alarm = self.msg.alarm.id, error = %e, "notification given up");
                        return;
                    }
                    tracing::warn!(channel = %self.channel, attempt, error = %e, "notification attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                    backoff = backoff.saturating_mul(2).min(cap);
                }
            }
        }
    }
}
