//! The API-call log: one row for every request (who, role, method, path, query without secrets,
//! status, latency, client address), 401s, 404s and 5xx included, in an append-only table that
//! refuses UPDATE and DELETE. Requests hand their record to a bounded queue and never wait for the
//! database; a writer task inserts in batches. A full queue drops the record, counts it, and the
//! writer leaves a marker row saying how many went missing. Also the auditors' read endpoints:
//! `GET /api-calls` and `GET /audit` (JSON, or CSV with `?format=csv`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::auth::{READ_LOGS, Role};
use super::{ApiError, ApiState, Principal, bad, limit, page};
use crate::ingest::now_ms;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS api_calls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ms INTEGER NOT NULL,
        user TEXT,
        role TEXT,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        query TEXT NOT NULL,
        status INTEGER NOT NULL,
        latency_us INTEGER NOT NULL,
        client TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS api_calls_ts ON api_calls(ts_ms)",
    "CREATE TRIGGER IF NOT EXISTS api_calls_no_update BEFORE UPDATE ON api_calls
        BEGIN SELECT RAISE(ABORT, 'api_calls is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS api_calls_no_delete BEFORE DELETE ON api_calls
        BEGIN SELECT RAISE(ABORT, 'api_calls is append-only'); END",
];

/// Most records one write transaction inserts.
const BATCH: usize = 512;
/// Longest a record waits in the writer before its batch is written.
const LINGER: Duration = Duration::from_millis(200);
/// Longest kept of a path or query string, characters.
const MAX_TEXT: usize = 2048;
/// Query parameters whose values never reach the log.
const SECRET_PARAMS: &[&str] = &["password", "token", "secret", "key", "access_token", "old", "new"];
/// Upper bounds (ms) of the latency histogram buckets.
const BUCKETS_MS: [u64; 10] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Who made a call, as the handlers and the authentication layer put it in response extensions.
#[derive(Debug, Clone)]
pub struct CallActor {
    /// The user (for a failed login: the name tried).
    pub user: String,
    /// The role, when authenticated.
    pub role: Option<Role>,
}

/// The client's address (`ip:port`), or `unknown` when the server runs without connect info.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or_else(|| "unknown".to_owned(), |c| c.0.to_string()),
        ))
    }
}

/// One logged call.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    /// Row id (ascending with time).
    pub id: i64,
    /// When the request arrived, UTC ms.
    pub ts_ms: i64,
    /// Who (None: unauthenticated).
    pub user: Option<String>,
    /// Their role.
    pub role: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string with secret values replaced by `***`.
    pub query: String,
    /// Response status.
    pub status: u16,
    /// Time to the response head, microseconds.
    pub latency_us: i64,
    /// Client address.
    pub client: String,
}

enum Msg {
    Record(Box<CallRecord>),
    Flush(oneshot::Sender<()>),
}

/// API-call log counters (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct CallMetrics {
    /// Calls seen.
    pub calls: AtomicU64,
    /// Records dropped because the writer's queue was full.
    pub dropped: AtomicU64,
    /// Records written.
    pub written: AtomicU64,
    /// Batches that failed to write (their records are counted as dropped).
    pub write_errors: AtomicU64,
    /// Responses by class: 2xx, 3xx, 4xx, 5xx.
    pub by_class: [AtomicU64; 4],
    /// Latency histogram: counts per bucket of [`BUCKETS_MS`], then the overflow.
    pub latency: [AtomicU64; 11],
    /// Sum of latencies, microseconds.
    pub latency_us_sum: AtomicU64,
}

impl CallMetrics {
    /// Prometheus text lines.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        for (n, v) in [
            ("vigil_api_calls_total", g(&self.calls)),
            ("vigil_api_call_log_written_total", g(&self.written)),
            ("vigil_api_call_log_dropped_total", g(&self.dropped)),
            ("vigil_api_call_log_write_errors_total", g(&self.write_errors)),
        ] {
            s.push_str(&format!("{n} {v}\n"));
        }
        for (i, class) in ["2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            s.push_str(&format!("vigil_api_responses_total{{class=\"{class}\"}} {}\n", g(&self.by_class[i])));
        }
        let mut cumulative = 0;
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            cumulative += g(&self.latency[i]);
            s.push_str(&format!("vigil_api_latency_seconds_bucket{{le=\"{}\"}} {cumulative}\n", *le as f64 / 1000.0));
        }
        cumulative += g(&self.latency[10]);
        s.push_str(&format!("vigil_api_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n"));
        s.push_str(&format!("vigil_api_latency_seconds_sum {}\n", g(&self.latency_us_sum) as f64 / 1e6));
        s.push_str(&format!("vigil_api_latency_seconds_count {cumulative}\n"));
        s
    }

    fn observe(&self, status: u16, latency_us: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = (usize::from(status / 100)).checked_sub(2).and_then(|i| self.by_class.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let ms = latency_us / 1000;
        let ix = BUCKETS_MS.iter().position(|b| ms < *b).unwrap_or(10);
        self.latency[ix].fetch_add(1, Ordering::Relaxed);
        self.latency_us_sum.fetch_add(latency_us, Ordering::Relaxed);
    }
}

/// The handle requests log through.
#[derive(Clone)]
pub struct CallLog {
    tx: mpsc::Sender<Msg>,
    pool: SqlitePool,
    metrics: Arc<CallMetrics>,
}

impl CallLog {
    /// Creates the table in `pool` (`access.db`) and starts the writer with a queue of `queue` records.
    pub async fn start(pool: SqlitePool, queue: usize) -> Result<CallLog, sqlx::Error> {
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await?;
        }
        let (tx, rx) = mpsc::channel(queue.max(1));
        let metrics = Arc::new(CallMetrics::default());
        tokio::spawn(writer(pool.clone(), rx, metrics.clone()));
        Ok(CallLog { tx, pool, metrics })
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<CallMetrics> {
        &self.metrics
    }

    /// Queues a record; never waits (a full queue counts a drop).
    fn push(&self, rec: CallRecord) {
        if self.tx.try_send(Msg::Record(Box::new(rec))).is_err() {
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every record queued before this call is written (or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Logged calls, newest first, with `id < before`, filtered; at most `limit`.
    pub async fn query(&self, q: &CallQuery, before: Option<i64>, limit: u32) -> Result<Vec<CallRecord>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM api_calls WHERE id < ? AND ts_ms >= ? AND ts_ms < ?
               AND (? IS NULL OR user = ?) AND (? IS NULL OR status = ?) AND (? IS NULL OR path = ?)
             ORDER BY id DESC LIMIT ?",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(q.from_ms.unwrap_or(i64::MIN))
        .bind(q.to_ms.unwrap_or(i64::MAX))
        .bind(&q.user)
        .bind(&q.user)
        .bind(q.status)
        .bind(q.status)
        .bind(&q.path)
        .bind(&q.path)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CallRecord {
                    id: r.try_get("id")?,
                    ts_ms: r.try_get("ts_ms")?,
                    user: r.try_get("user")?,
                    role: r.try_get("role")?,
                    method: r.try_get("method")?,
                    path: r.try_get("path")?,
                    query: r.try_get("query")?,
                    status: u16::try_from(r.try_get::<i64, _>("status")?).unwrap_or(0),
                    latency_us: r.try_get("latency_us")?,
                    client: r.try_get("client")?,
                })
            })
            .collect()
    }
}

async fn insert(pool: &SqlitePool, batch: &[CallRecord]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for r in batch {
        sqlx::query(
            "INSERT INTO api_calls (ts_ms, user, role, method, path, query, status, latency_us, client)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(r.ts_ms)
        .bind(&r.user)
        .bind(&r.role)
        .bind(&r.method)
        .bind(&r.path)
        .bind(&r.query)
        .bind(i64::from(r.status))
        .bind(r.latency_us)
        .bind(&r.client)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// The writer: batches records (up to [`BATCH`], or what arrived within [`LINGER`]) into one
/// transaction each; a failed batch is counted and logged, and its records become a drop.
async fn writer(pool: SqlitePool, mut rx: mpsc::Receiver<Msg>, metrics: Arc<CallMetrics>) {
    let mut reported_drops = 0;
    let mut batch: Vec<CallRecord> = Vec::with_capacity(BATCH);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let first = match rx.recv().await {
            Some(m) => m,
            None => return,
        };
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(w) => waiters.push(w),
            }
            if batch.len() >= BATCH || !waiters.is_empty() {
                break;
            }
            next = tokio::time::timeout_at(deadline, rx.recv()).await.ok().flatten();
        }
        // Drops since the last marker leave a row of their own, so the gap shows in the log itself.
        let dropped = metrics.dropped.load(Ordering::Relaxed);
        if dropped > reported_drops {
            batch.push(CallRecord {
                id: 0,
                ts_ms: now_ms(),
                user: None,
                role: None,
                method: "-".into(),
                path: "(call log)".into(),
                query: format!("dropped={}", dropped - reported_drops),
                status: 0,
                latency_us: 0,
                client: "central".into(),
            });
            reported_drops = dropped;
        }
        if !batch.is_empty() {
            match insert(&pool, &batch).await {
                Ok(()) => {
                    metrics.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                    metrics.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing::error!(error = %e, records = batch.len(), "api-call log: a batch could not be written");
                }
            }
            batch.clear();
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut cut = MAX_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The query string with the values of secret-looking parameters replaced by `***`.
pub fn redact(query: &str) -> String {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, _) = kv.split_once('=').unwrap_or((kv, ""));
            let lower = k.to_ascii_lowercase();
            if SECRET_PARAMS.iter().any(|s| lower.contains(s)) { format!("{k}=***") } else { kv.to_owned() }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The logging layer (outermost: it sees every answer, the router's 404s and the limits' 413s too).
pub async fn record(State(log): State<CallLog>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let ts_ms = now_ms();
    let method = req.method().to_string();
    let path = truncate(req.uri().path().to_owned());
    let query = truncate(redact(req.uri().query().unwrap_or("")));
    let client =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(|| "unknown".to_owned(), |c| c.0.to_string());
    let resp = next.run(req).await;
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let status = resp.status().as_u16();
    log.metrics.observe(status, latency_us);
    let actor = resp.extensions().get::<CallActor>();
    log.push(CallRecord {
        id: 0,
        ts_ms,
        user: actor.map(|a| a.user.clone()),
        role: actor.and_then(|a| a.role).map(|r| r.as_str().to_owned()),
        method,
        path,
        query,
        status,
        latency_us: i64::try_from(latency_us).unwrap_or(i64::MAX),
        client,
    });
    resp
}

/// Filters of `GET /api-calls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    /// Only this user.
    pub user: Option<String>,
    /// Only this status.
    pub status: Option<i64>,
    /// Only this path.
    pub path: Option<String>,
    /// From (inclusive), UTC ms.
    pub from_ms: Option<i64>,
    /// To (exclusive), UTC ms.
    pub to_ms: Option<i64>,
    /// Page size.
    pub limit: Option<u32>,
    /// Cursor from the previous page.
    pub cursor: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// `security` (default: logins, users, passwords) or `alarms` (the alarm engine's hash chain).
    source: Option<String>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    limit: Option<u32>,
    cursor: Option<String>,
    format: Option<String>,
}

fn cursor(c: &Option<String>) -> Result<Option<i64>, ApiError> {
    c.as_deref()
        .map(|c| c.parse::<i64>().map_err(|_| bad(format!("cursor {c:?} is not one this API issued"))))
        .transpose()
}

fn wants_csv(format: &Option<String>) -> Result<bool, ApiError> {
    match format.as_deref() {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(bad(format!("format {other:?}: json or csv"))),
    }
}

/// A CSV field, quoted when needed (RFC 4180); a leading formula character is neutralised so a
/// spreadsheet never executes a logged value.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) && s.len() > 1 { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

fn csv_response(name: &str, header_row: &[&str], rows: Vec<Vec<String>>) -> Response {
    let mut out = header_row.join(",");
    out.push_str("\r\n");
    for r in rows {
        out.push_str(&r.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.csv\"")),
        ],
        out,
    )
        .into_response()
}

/// `GET /api-calls`: newest first; `?format=csv` exports the page (use a large `limit`).
async fn api_calls(State(st): State<ApiState>, p: Principal, Query(q): Query<CallQuery>) -> Result<Response, ApiError> {
    p.require(READ_LOGS)?;
    let csv = wants_csv(&q.format)?;
    let n = limit(q.limit);
    let rows = st.calls.query(&q, cursor(&q.cursor)?, n).await.map_err(|e| ApiError::internal(e.to_string()))?;
    let next = (rows.len() == n as usize).then(|| rows.last().map(|r| r.id.to_string())).flatten();
    if csv {
        let body = rows
            .iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.ts_ms.to_string(),
                    r.user.clone().unwrap_or_default(),
                    r.role.clone().unwrap_or_default(),
                    r.method.clone(),
                    r.path.clone(),
                    r.query.clone(),
                    r.status.to_string(),
                    r.latency_us.to_string(),
                    r.client.clone(),
                ]
            })
            .collect();
        let head = ["id", "ts_ms", "user", "role", "method", "path", "query", "status", "latency_us", "client"];
        return Ok(csv_response("api-calls", &head, body));
    }
    Ok(page(rows, next).into_response())
}

/// `GET /audit`: the security audit log (default) or the alarm engine's audit chain.
async fn audit(State(st): State<ApiState>, p: Principal, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    p.require(READ_LOGS)?;
    let csv = wants_csv(&q.format)?;
    let n = limit(q.limit);
    let before = cursor(&q.cursor)?;
    let (from, to) = (q.from_ms.unwrap_or(i64::MIN), q.to_ms.unwrap_or(i64::MAX));
    // Both sources as (id, ts, actor, action, target, detail, client).
    let rows: Vec<(i64, i64, String, String, String, String, String)> = match q.source.as_deref() {
        None | Some("security") => st
            .identity
            .audit_log(before, q.from_ms, q.to_ms, n)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .into_iter()
            .map(|e| (e.id, e.ts_ms, e.actor, e.action, e.target, e.detail, e.client))
            .collect(),
        Some("alarms") => {
            let engine = st.alarms.as_ref().ok_or_else(|| ApiError::not_found("central runs no alarm engine"))?;
            let recs = engine.lock().await.audit_records().await.map_err(|e| ApiError::internal(e.to_string()))?;
            recs.into_iter()
                .rev()
                .filter(|r| before.is_none_or(|b| r.seq < b) && r.ts_ms >= from && r.ts_ms < to)
                .take(n as usize)
                .map(|r| (r.seq, r.ts_ms, r.actor, r.action, r.target, r.detail, r.hash))
                .collect()
        }
        Some(other) => return Err(bad(format!("source {other:?}: security or alarms"))),
    };
    let next = (rows.len() == n as usize).then(|| rows.last().map(|r| r.0.to_string())).flatten();
    let last_col = if q.source.as_deref() == Some("alarms") { "hash" } else { "client" };
    if csv {
        let body = rows.into_iter().map(|r| vec![r.0.to_string(), r.1.to_string(), r.2, r.3, r.4, r.5, r.6]).collect();
        return Ok(csv_response("audit", &["id", "ts_ms", "actor", "action", "target", "detail", last_col], body));
    }
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "id": r.0, "ts_ms": r.1, "actor": r.2, "action": r.3, "target": r.4, "detail": r.5, last_col: r.6,
            })
        })
        .collect();
    Ok(page(items, next).into_response())
}

/// The log routes.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/api-calls", get(api_calls)).route("/api/v1/audit", get(audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_reach_the_log() {
        assert_eq!(redact("point=a/b&token=abc&Password=x&limit=3"), "point=a/b&token=***&Password=***&limit=3");
        assert_eq!(redact(""), "");
        assert_eq!(redact("flag"), "flag");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("-"), "-");
    }
}
