//! Durable alarm state behind the [`AlarmStore`] trait; [`SqliteStore`] keeps it in `alarm_*` tables
//! of a caller-provided SQLite pool. Every change is a batch of [`StoreOp`]s applied in one
//! transaction, before anything is announced.

use std::future::Future;

use sqlx::{Row, SqlitePool};

use super::audit::{AuditRecord, genesis_hex};
use super::error::AlarmError;
use super::model::{
    Alarm, AlarmKey, Condition, Grade, Limits, MaintenanceWindow, OutOfService, RequestStatus, Shelve, Stage,
    ThresholdRequest, TimelineEntry, WindowStatus,
};

/// One durable change.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// Insert or replace an alarm instance.
    PutAlarm(Alarm),
    /// Append a timeline entry.
    Timeline(TimelineEntry),
    /// Append an audit record (never updated or deleted).
    Audit(AuditRecord),
    /// Set or remove the shelving of a key.
    Shelve(AlarmKey, Option<Shelve>),
    /// Set or remove the out-of-service mark of a key.
    OutOfService(AlarmKey, Option<OutOfService>),
    /// Insert or replace a maintenance window.
    PutWindow(MaintenanceWindow),
    /// Insert or replace a threshold request.
    PutRequest(ThresholdRequest),
    /// Set the approved limits of a point (overrides the definitions file).
    PutLimits(String, Limits),
}

/// Which alarms a listing returns (every field narrows; `None` does not).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlarmFilter {
    /// Case not closed (`true`) or closed (`false`).
    pub open: Option<bool>,
    /// Condition active.
    pub active: Option<bool>,
    /// Acknowledged since the last activation.
    pub acked: Option<bool>,
    /// Case stage.
    pub stage: Option<Stage>,
    /// Grade.
    pub grade: Option<Grade>,
    /// Exactly this enterprise.
    pub enterprise: Option<String>,
    /// Only alarms of one of these enterprises (a scoped caller); alarms without one are excluded.
    pub enterprises_in: Option<Vec<String>>,
    /// Alarms of this point id.
    pub point: Option<String>,
    /// Condition.
    pub condition: Option<Condition>,
    /// Raised (source time) at or after.
    pub from_ms: Option<i64>,
    /// Raised (source time) before.
    pub to_ms: Option<i64>,
    /// Only ids below this (the cursor of the previous page).
    pub before_id: Option<i64>,
}

/// Everything the engine needs to resume after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Alarm instances whose case is not closed.
    pub open_alarms: Vec<Alarm>,
    /// Shelved keys.
    pub shelves: Vec<(AlarmKey, Shelve)>,
    /// Out-of-service keys.
    pub out_of_service: Vec<(AlarmKey, OutOfService)>,
    /// Maintenance windows still requested or approved.
    pub windows: Vec<MaintenanceWindow>,
    /// Threshold requests still waiting.
    pub requests: Vec<ThresholdRequest>,
    /// Approved limits per point.
    pub limits: Vec<(String, Limits)>,
    /// Highest alarm, window and request ids used.
    pub max_ids: (i64, i64, i64),
    /// Last audit record (seq, hash); (0, genesis) when empty.
    pub audit_head: (i64, String),
}

/// Durable alarm store (SQLite today; PostgreSQL can implement the same trait).
pub trait AlarmStore: Send + Sync + 'static {
    /// Creates the tables if absent (idempotent).
    fn init(&self) -> impl Future<Output = Result<(), AlarmError>> + Send;
    /// Applies the ops atomically (all or nothing).
    fn apply(&self, ops: &[StoreOp]) -> impl Future<Output = Result<(), AlarmError>> + Send;
    /// Loads the state to resume from.
    fn load(&self) -> impl Future<Output = Result<Snapshot, AlarmError>> + Send;
    /// All audit records in sequence order.
    fn audit_records(&self) -> impl Future<Output = Result<Vec<AuditRecord>, AlarmError>> + Send;
    /// The timeline of an alarm, oldest first.
    fn timeline(&self, alarm_id: i64) -> impl Future<Output = Result<Vec<TimelineEntry>, AlarmError>> + Send;
    /// One alarm by id (open or closed).
    fn alarm(&self, id: i64) -> impl Future<Output = Result<Option<Alarm>, AlarmError>> + Send;
    /// Alarms matching `filter`, newest (highest id) first, at most `limit`.
    fn list(&self, filter: &AlarmFilter, limit: usize) -> impl Future<Output = Result<Vec<Alarm>, AlarmError>> + Send;
    /// Alarms raised (source time) in `[from_ms, to_ms)`, oldest first.
    fn alarms_raised_between(
        &self,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<Vec<Alarm>, AlarmError>> + Send;
    /// Timeline entries named `what` in `[from_ms, to_ms)` (e.g. every activation), oldest first.
    fn timeline_between(
        &self,
        what: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> impl Future<Output = Result<Vec<TimelineEntry>, AlarmError>> + Send;
}

/// SQLite implementation on a shared pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS alarm_instances (id INTEGER PRIMARY KEY, key TEXT NOT NULL, raised_ms INTEGER NOT NULL, open INTEGER NOT NULL, doc TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS alarm_instances_open ON alarm_instances(open)",
    "CREATE INDEX IF NOT EXISTS alarm_instances_raised ON alarm_instances(raised_ms)",
    "CREATE TABLE IF NOT EXISTS alarm_timeline (id INTEGER PRIMARY KEY AUTOINCREMENT, alarm_id INTEGER NOT NULL, ts_ms INTEGER NOT NULL, what TEXT NOT NULL, actor TEXT NOT NULL, detail TEXT NOT NULL, historical INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS alarm_timeline_alarm ON alarm_timeline(alarm_id)",
    "CREATE INDEX IF NOT EXISTS alarm_timeline_what_ts ON alarm_timeline(what, ts_ms)",
    "CREATE TABLE IF NOT EXISTS alarm_audit (seq INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS alarm_audit_no_update BEFORE UPDATE ON alarm_audit BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS alarm_audit_no_delete BEFORE DELETE ON alarm_audit BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
    "CREATE TABLE IF NOT EXISTS alarm_shelves (key TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS alarm_out_of_service (key TEXT PRIMARY KEY, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS alarm_windows (id INTEGER PRIMARY KEY, live INTEGER NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS alarm_threshold_requests (id INTEGER PRIMARY KEY, pending INTEGER NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS alarm_limits (point TEXT PRIMARY KEY, doc TEXT NOT NULL)",
];

impl SqliteStore {
    /// Wraps a pool (call [`AlarmStore::init`] before use; the engine does).
    pub fn new(pool: SqlitePool) -> SqliteStore {
        SqliteStore { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn alarm_from_doc(doc: &str) -> Result<Alarm, AlarmError> {
    Ok(serde_json::from_str(doc)?)
}

fn timeline_row(r: &sqlx::sqlite::SqliteRow) -> Result<TimelineEntry, AlarmError> {
    Ok(TimelineEntry {
        alarm_id: r.try_get("alarm_id")?,
        ts_ms: r.try_get("ts_ms")?,
        what: r.try_get("what")?,
        actor: r.try_get("actor")?,
        detail: r.try_get("detail")?,
        historical: r.try_get::<i64, _>("historical")? != 0,
    })
}

impl AlarmStore for SqliteStore {
    async fn init(&self) -> Result<(), AlarmError> {
        let mut tx = self.pool.begin().await?;
        for s in SCHEMA {
            sqlx::query(*s).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn apply(&self, ops: &[StoreOp]) -> Result<(), AlarmError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for op in ops {
            match op {
                StoreOp::PutAlarm(a) => {
                    sqlx::query(
                        "INSERT OR REPLACE INTO alarm_instances (id, key, raised_ms, open, doc) VALUES (?, ?, ?, ?, ?)",
                    )
                    .bind(a.id)
                    .bind(a.key.to_string())
                    .bind(a.raised_ms)
                    .bind(i64::from(!a.is_closed()))
                    .bind(serde_json::to_string(a)?)
                    .execute(&mut *tx)
                    .await?;
                }
                StoreOp::Timeline(t) => {
                    sqlx::query("INSERT INTO alarm_timeline (alarm_id, ts_ms, what, actor, detail, historical) VALUES (?, ?, ?, ?, ?, ?)")
                        .bind(t.alarm_id)
                        .bind(t.ts_ms)
                        .bind(&t.what)
                        .bind(&t.actor)
                        .bind(&t.detail)
                        .bind(i64::from(t.historical))
                        .execute(&mut *tx)
                        .await?;
                }
                StoreOp::Audit(r) => {
                    sqlx::query("INSERT INTO alarm_audit (seq, ts_ms, actor, action, target, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                        .bind(r.seq)
                        .bind(r.ts_ms)
                        .bind(&r.actor)
                        .bind(&r.action)
                        .bind(&r.target)
                        .bind(&r.detail)
                        .bind(&r.prev_hash)
                        .bind(&r.hash)
                        .execute(&mut *tx)
                        .await?;
                }
                StoreOp::Shelve(k, s) => match s {
                    Some(s) => {
                        sqlx::query("INSERT OR REPLACE INTO alarm_shelves (key, doc) VALUES (?, ?)")
                            .bind(k.to_string())
                            .bind(serde_json::to_string(&(k, s))?)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM alarm_shelves WHERE key = ?")
                            .bind(k.to_string())
                            .execute(&mut *tx)
                            .await?;
                    }
                },
                StoreOp::OutOfService(k, s) => match s {
                    Some(s) => {
                        sqlx::query("INSERT OR REPLACE INTO alarm_out_of_service (key, doc) VALUES (?, ?)")
                            .bind(k.to_string())
                            .bind(serde_json::to_string(&(k, s))?)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM alarm_out_of_service WHERE key = ?")
                            .bind(k.to_string())
                            .execute(&mut *tx)
                            .await?;
                    }
                },
                StoreOp::PutWindow(w) => {
                    let live = matches!(w.status, WindowStatus::Requested | WindowStatus::Approved);
                    sqlx::query("INSERT OR REPLACE INTO alarm_windows (id, live, doc) VALUES (?, ?, ?)")
                        .bind(w.id)
                        .bind(i64::from(live))
                        .bind(serde_json::to_string(w)?)
                        .execute(&mut *tx)
                        .await?;
                }
                StoreOp::PutRequest(r) => {
                    sqlx::query("INSERT OR REPLACE INTO alarm_threshold_requests (id, pending, doc) VALUES (?, ?, ?)")
                        .bind(r.id)
                        .bind(i64::from(r.status == RequestStatus::Requested))
                        .bind(serde_json::to_string(r)?)
                        .execute(&mut *tx)
                        .await?;
                }
                StoreOp::PutLimits(p, l) => {
                    sqlx::query("INSERT OR REPLACE INTO alarm_limits (point, doc) VALUES (?, ?)")
                        .bind(p)
                        .bind(serde_json::to_string(l)?)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load(&self) -> Result<Snapshot, AlarmError> {
        let mut s = Snapshot { audit_head: (0, genesis_hex()), ..Snapshot::default() };
        for r in sqlx::query("SELECT doc FROM alarm_instances WHERE open = 1 ORDER BY id").fetch_all(&self.pool).await?
        {
            s.open_alarms.push(alarm_from_doc(&r.try_get::<String, _>(0)?)?);
        }
        for r in sqlx::query("SELECT doc FROM alarm_shelves").fetch_all(&self.pool).await? {
            s.shelves.push(serde_json::from_str(&r.try_get::<String, _>(0)?)?);
        }
        for r in sqlx::query("SELECT doc FROM alarm_out_of_service").fetch_all(&self.pool).await? {
            s.out_of_service.push(serde_json::from_str(&r.try_get::<String, _>(0)?)?);
        }
        for r in sqlx::query("SELECT doc FROM alarm_windows WHERE live = 1 ORDER BY id").fetch_all(&self.pool).await? {
            s.windows.push(serde_json::from_str(&r.try_get::<String, _>(0)?)?);
        }
        for r in sqlx::query("SELECT doc FROM alarm_threshold_requests WHERE pending = 1 ORDER BY id")
            .fetch_all(&self.pool)
            .await?
        {
            s.requests.push(serde_json::from_str(&r.try_get::<String, _>(0)?)?);
        }
        for r in sqlx::query("SELECT point, doc FROM alarm_limits").fetch_all(&self.pool).await? {
            s.limits.push((r.try_get(0)?, serde_json::from_str(&r.try_get::<String, _>(1)?)?));
        }
        let r = sqlx::query(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM alarm_instances), (SELECT COALESCE(MAX(id), 0) FROM alarm_windows), (SELECT COALESCE(MAX(id), 0) FROM alarm_threshold_requests)",
        )
        .fetch_one(&self.pool)
        .await?;
        s.max_ids = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if let Some(r) = sqlx::query("SELECT seq, hash FROM alarm_audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
        {
            s.audit_head = (r.try_get(0)?, r.try_get(1)?);
        }
        Ok(s)
    }

    async fn audit_records(&self) -> Result<Vec<AuditRecord>, AlarmError> {
        let rows = sqlx::query(
            "SELECT seq, ts_ms, actor, action, target, detail, prev_hash, hash FROM alarm_audit ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    seq: r.try_get(0)?,
                    ts_ms: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    target: r.try_get(4)?,
                    detail: r.try_get(5)?,
                    prev_hash: r.try_get(6)?,
                    hash: r.try_get(7)?,
                })
            })
            .collect()
    }

    async fn timeline(&self, alarm_id: i64) -> Result<Vec<TimelineEntry>, AlarmError> {
        let rows = sqlx::query("SELECT alarm_id, ts_ms, what, actor, detail, historical FROM alarm_timeline WHERE alarm_id = ? ORDER BY id")
            .bind(alarm_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(timeline_row).collect()
    }

    async fn alarm(&self, id: i64) -> Result<Option<Alarm>, AlarmError> {
        match sqlx::query("SELECT doc FROM alarm_instances WHERE id = ?").bind(id).fetch_optional(&self.pool).await? {
            Some(r) => Ok(Some(alarm_from_doc(&r.try_get::<String, _>(0)?)?)),
            None => Ok(None),
        }
    }

    async fn list(&self, f: &AlarmFilter, limit: usize) -> Result<Vec<Alarm>, AlarmError> {
        // Filters read the stored document (JSON1); enum values are compared as serde writes them.
        let mut q: sqlx::QueryBuilder<sqlx::Sqlite> =
            sqlx::QueryBuilder::new("SELECT doc FROM alarm_instances WHERE 1=1");
        if let Some(open) = f.open {
            q.push(" AND open = ").push_bind(i64::from(open));
        }
        if let Some(v) = f.active {
            q.push(" AND json_extract(doc, '$.active') = ").push_bind(i64::from(v));
        }
        if let Some(v) = f.acked {
            q.push(" AND json_extract(doc, '$.acked') = ").push_bind(i64::from(v));
        }
        if let Some(v) = &f.stage {
            q.push(" AND json_extract(doc, '$.stage') = ").push_bind(json_name(v));
        }
        if let Some(v) = &f.grade {
            q.push(" AND json_extract(doc, '$.grade') = ").push_bind(json_name(v));
        }
        if let Some(v) = &f.condition {
            q.push(" AND json_extract(doc, '$.key.condition') = ").push_bind(json_name(v));
        }
        if let Some(v) = &f.enterprise {
            q.push(" AND json_extract(doc, '$.enterprise') = ").push_bind(v.clone());
        }
        if let Some(list) = &f.enterprises_in {
            if list.is_empty() {
                return Ok(Vec::new());
            }
            q.push(" AND json_extract(doc, '$.enterprise') IN (");
            let mut sep = q.separated(", ");
            for e in list {
                sep.push_bind(e.clone());
            }
            q.push(")");
        }
        if let Some(p) = &f.point {
            q.push(" AND json_extract(doc, '$.key.source.Point') = ").push_bind(p.clone());
        }
        if let Some(v) = f.from_ms {
            q.push(" AND raised_ms >= ").push_bind(v);
        }
        if let Some(v) = f.to_ms {
            q.push(" AND raised_ms < ").push_bind(v);
        }
        if let Some(v) = f.before_id {
            q.push(" AND id < ").push_bind(v);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(|r| alarm_from_doc(&r.try_get::<String, _>(0)?)).collect()
    }

    async fn alarms_raised_between(&self, from_ms: i64, to_ms: i64) -> Result<Vec<Alarm>, AlarmError> {
        let rows = sqlx::query(
            "SELECT doc FROM alarm_instances WHERE raised_ms >= ? AND raised_ms < ? ORDER BY raised_ms, id",
        )
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| alarm_from_doc(&r.try_get::<String, _>(0)?)).collect()
    }

    async fn timeline_between(&self, what: &str, from_ms: i64, to_ms: i64) -> Result<Vec<TimelineEntry>, AlarmError> {
        let rows = sqlx::query(
            "SELECT alarm_id, ts_ms, what, actor, detail, historical FROM alarm_timeline WHERE what = ? AND ts_ms >= ? AND ts_ms < ? ORDER BY ts_ms, id",
        )
        .bind(what)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(timeline_row).collect()
    }
}

/// A unit enum's name as serde writes it (`"HiHi"`, `"S"`), for comparing with stored JSON.
fn json_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}
