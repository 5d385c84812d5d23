//! Gateway updates ordered by central. A park administrator uploads a signed update bundle (made by
//! `vigil-edge update pack`); central checks its header and length, keeps it under
//! `data_dir/updates/<sha256>` and lists it. An order for a gateway becomes a signed
//! `CommandAction::Update` on its `down/cmd`, carrying the bundle's version, target, SHA-256 and size,
//! the download path and a download token; the gateway fetches the bundle over the API with that
//! token (which works only for that order, a bounded number of times and until it expires), checks
//! it against the command and the release signature, and installs it on trial. What becomes of the
//! order is read back from the update history in the gateway's signed state: every record the order
//! leads to starts with `order N: `.
//!
//! Central does not verify the release signature: the gateways hold the release keys and refuse a
//! badly signed bundle themselves (the order then fails with their reason).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt as _;
use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::broadcast;
use vigil_common::bundle::{self, BundleHeader, HEAD_LEN, HeaderError};
use vigil_common::{Channel, Command, CommandAction, EnterpriseId, GatewayId, GatewayState, SigningKey, Topic};

use crate::ingest::now_ms;
use crate::store::{Registry, StoreError};

/// The tables, in `meta.db` beside the registry.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS update_bundles (
        sha256 TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        target TEXT NOT NULL,
        size INTEGER NOT NULL,
        binary_len INTEGER NOT NULL,
        config_len INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        uploaded_by TEXT NOT NULL,
        uploaded_ms INTEGER NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS update_orders (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        gateway TEXT NOT NULL,
        bundle TEXT NOT NULL,
        version TEXT NOT NULL,
        target TEXT NOT NULL,
        token_ttl_s INTEGER NOT NULL,
        ordered_by TEXT NOT NULL,
        ordered_ms INTEGER NOT NULL,
        sent_ms INTEGER,
        downloads INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        detail TEXT,
        result_ms INTEGER
    )",
    "CREATE INDEX IF NOT EXISTS update_orders_gateway ON update_orders (gateway, id)",
    "CREATE TABLE IF NOT EXISTS update_tokens (
        token_sha256 TEXT PRIMARY KEY,
        order_id INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        uses INTEGER NOT NULL DEFAULT 0
    )",
];

/// Largest bundle accepted (the gateway's own limit).
pub const MAX_BUNDLE: u64 = bundle::MAX_BUNDLE;
/// The upload route (its body limit is [`MAX_BUNDLE`], not `api.max_body_bytes`).
pub const UPLOAD_PATH: &str = "/api/v1/updates";
/// The download route; the token in [`TOKEN_HEADER`] names the order and so the bundle.
pub const DOWNLOAD_PATH: &str = "/api/v1/updates/download";
/// The header carrying a download token.
pub const TOKEN_HEADER: &str = "x-vigil-download-token";
/// Default lifetime of a download token, seconds.
pub const DEFAULT_TOKEN_TTL_S: u64 = 900;
/// Longest lifetime of a download token, seconds.
pub const MAX_TOKEN_TTL_S: u64 = 86_400;
/// Downloads one token allows (the gateway retries a failed download a few times).
pub const MAX_TOKEN_USES: i64 = 8;
/// How long an update command stays valid after it was sent.
const COMMAND_TTL_MS: i64 = 10 * 60 * 1000;
/// An unanswered order is sent again on a gateway state at most this often.
const RESEND_AFTER_MS: i64 = 10_000;

/// One stored bundle as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BundleEntry {
    /// SHA-256 of the bundle file (hex): its identity.
    pub sha256: String,
    /// The agent version it installs.
    pub version: String,
    /// The target triple it is built for.
    pub target: String,
    /// Size of the file, bytes.
    pub size: i64,
    /// Length of the agent binary in it, bytes.
    pub binary_len: i64,
    /// Length of the configuration in it, bytes (0: none).
    pub config_len: i64,
    /// When it was packed, UTC ms (its header's claim).
    pub created_ms: i64,
    /// Key id of the release key it says it is signed with.
    pub key_id: String,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// When, UTC ms.
    pub uploaded_ms: i64,
}

/// One order as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OrderEntry {
    /// Order id (named by the gateway in its history records: `order N: ...`).
    pub id: i64,
    /// The gateway.
    pub gateway: String,
    /// SHA-256 of the bundle.
    pub bundle: String,
    /// Its version.
    pub version: String,
    /// Its target.
    pub target: String,
    /// Who ordered it.
    pub ordered_by: String,
    /// When, UTC ms.
    pub ordered_ms: i64,
    /// When the command last went out, UTC ms.
    pub sent_ms: Option<i64>,
    /// Downloads served for it.
    pub downloads: i64,
    /// `pending`, `downloading`, `installed`, `on_trial`, `committed`, `rolled_back`, `failed` or
    /// `superseded`.
    pub status: String,
    /// The gateway's reason (refusal, rollback) or what happened.
    pub detail: Option<String>,
    /// When the gateway reported the status, UTC ms (gateway clock).
    pub result_ms: Option<i64>,
}

/// The columns of [`OrderEntry`].
macro_rules! order_columns {
    () => {
        "id, gateway, bundle, version, target, ordered_by, ordered_ms, sent_ms, downloads, status, detail, result_ms"
    };
}

/// Why central refused a request about updates.
#[derive(Debug, thiserror::Error)]
pub enum UpdateRefused {
    /// The request is malformed (the text names what is wrong).
    #[error("{0}")]
    Invalid(String),
    /// The bundle is larger than accepted.
    #[error("the bundle is larger than the {MAX_BUNDLE} bytes accepted")]
    TooLarge,
    /// Nothing by that name.
    #[error("{0}")]
    NotFound(String),
    /// No such token, or no token.
    #[error("{0}")]
    Unauthorized(String),
    /// The token expired, was used up, or its order is over.
    #[error("{0}")]
    Gone(String),
    /// Central failed (disk, database).
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for UpdateRefused {
    fn from(e: sqlx::Error) -> Self {
        UpdateRefused::Internal(StoreError::from(e).to_string())
    }
}

impl From<StoreError> for UpdateRefused {
    fn from(e: StoreError) -> Self {
        UpdateRefused::Internal(e.to_string())
    }
}

/// Counters of updates, on `/metrics`.
#[derive(Debug, Default)]
pub struct UpdateMetrics {
    /// Bundles stored.
    pub uploads: AtomicU64,
    /// Uploads refused.
    pub uploads_refused: AtomicU64,
    /// Orders made.
    pub orders: AtomicU64,
    /// Update commands published (first sends and re-sends).
    pub sent: AtomicU64,
    /// Update commands the MQTT client would not queue.
    pub send_failed: AtomicU64,
    /// Downloads served.
    pub downloads: AtomicU64,
    /// Downloads refused (no, unknown, expired or used-up token).
    pub downloads_refused: AtomicU64,
    /// Order outcomes recorded from gateway states.
    pub outcomes: AtomicU64,
}

impl UpdateMetrics {
    /// Prometheus text.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        for (name, v) in [
            ("vigil_update_uploads_total", &self.uploads),
            ("vigil_update_uploads_refused_total", &self.uploads_refused),
            ("vigil_update_orders_total", &self.orders),
            ("vigil_update_commands_sent_total", &self.sent),
            ("vigil_update_commands_send_failed_total", &self.send_failed),
            ("vigil_update_downloads_total", &self.downloads),
            ("vigil_update_downloads_refused_total", &self.downloads_refused),
            ("vigil_update_outcomes_total", &self.outcomes),
        ] {
            s.push_str(&format!("{name} {}\n", v.load(Ordering::Relaxed)));
        }
        s
    }
}

/// Central's update counters.
pub static METRICS: UpdateMetrics = UpdateMetrics {
    uploads: AtomicU64::new(0),
    uploads_refused: AtomicU64::new(0),
    orders: AtomicU64::new(0),
    sent: AtomicU64::new(0),
    send_failed: AtomicU64::new(0),
    downloads: AtomicU64::new(0),
    downloads_refused: AtomicU64::new(0),
    outcomes: AtomicU64::new(0),
};

/// A download central agreed to serve.
#[derive(Debug, Clone)]
pub struct Download {
    /// The bundle file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
}

/// The update service.
#[derive(Clone)]
pub struct Updates {
    pool: SqlitePool,
    dir: PathBuf,
    key: Arc<SigningKey>,
    client: Option<AsyncClient>,
    next_command: Arc<AtomicU64>,
}

impl Updates {
    /// Bundles under `data_dir/updates`, orders in the registry's database; commands signed with
    /// central's key and published with `client` (none: orders are stored, not sent), with ids from
    /// `command_ids` (shared with configuration pushes: a gateway executes only rising ids).
    pub async fn open(
        data_dir: &Path,
        registry: &Registry,
        key: SigningKey,
        client: Option<AsyncClient>,
        command_ids: Arc<AtomicU64>,
    ) -> Result<Updates, UpdateRefused> {
        let dir = data_dir.join("updates");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| UpdateRefused::Internal(format!("{}: {e}", dir.display())))?;
        let pool = registry.pool().clone();
        for s in SCHEMA {
            sqlx::query(*s).execute(&pool).await?;
        }
        Ok(Updates { pool, dir, key: Arc::new(key), client, next_command: command_ids })
    }

    /// Receives a bundle upload: streamed to a temporary file (at most [`MAX_BUNDLE`] bytes) while
    /// hashed, its header and length checked, then kept under its SHA-256. Returns the bundle and
    /// whether it is new (an identical upload answers the stored one).
    pub async fn upload(&self, body: axum::body::Body, by: &str) -> Result<(BundleEntry, bool), UpdateRefused> {
        let result = self.receive(body, by).await;
        match &result {
            Ok((b, true)) => {
                METRICS.uploads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(sha256 = %b.sha256, version = %b.version, target = %b.target, by, "update bundle stored");
            }
            Ok(_) => {}
            Err(e) => {
                METRICS.uploads_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(error = %e, by, "update bundle refused");
            }
        }
        result
    }

    async fn receive(&self, body: axum::body::Body, by: &str) -> Result<(BundleEntry, bool), UpdateRefused> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| UpdateRefused::Internal(format!("random: {e}")))?;
        let tmp = self.dir.join(format!(".upload-{}", hex::encode(random)));
        let io = |e: std::io::Error| UpdateRefused::Internal(format!("{}: {e}", tmp.display()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let streamed = async {
            let mut hasher = Sha256::new();
            let mut head = Vec::new();
            let mut total = 0u64;
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| body_error(&e))?;
                total += chunk.len() as u64;
                if total > MAX_BUNDLE {
                    return Err(UpdateRefused::TooLarge);
                }
                let room = HEAD_LEN.saturating_sub(head.len());
                head.extend_from_slice(&chunk[..room.min(chunk.len())]);
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            Ok((hex::encode(hasher.finalize()), head, total))
        }
        .await;
        drop(file);
        let checked = streamed.and_then(|(sha, head, total)| Ok((sha, parse_header(&head, total)?, total)));
        let (sha, header, total) = match checked {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        if let Some(existing) = self.bundle(&sha).await? {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Ok((existing, false));
        }
        let path = self.dir.join(&sha);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| UpdateRefused::Internal(format!("{}: {e}", path.display())))?;
        if let Ok(d) = tokio::fs::File::open(&self.dir).await {
            let _ = d.sync_all().await;
        }
        sqlx::query(
            "INSERT OR IGNORE INTO update_bundles (sha256, version, target, size, binary_len, config_len, created_ms,
             key_id, uploaded_by, uploaded_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&sha)
        .bind(&header.version)
        .bind(&header.target)
        .bind(total as i64)
        .bind(header.binary_len as i64)
        .bind(header.config_len as i64)
        .bind(header.created_ms)
        .bind(&header.key_id)
        .bind(by)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let entry = self.bundle(&sha).await?.ok_or_else(|| UpdateRefused::Internal("bundle vanished".into()))?;
        Ok((entry, true))
    }

    /// One stored bundle.
    pub async fn bundle(&self, sha256: &str) -> Result<Option<BundleEntry>, UpdateRefused> {
        Ok(sqlx::query_as(
            "SELECT sha256, version, target, size, binary_len, config_len, created_ms, key_id, uploaded_by,
             uploaded_ms FROM update_bundles WHERE sha256 = ?",
        )
        .bind(sha256)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The stored bundles, newest upload first.
    pub async fn bundles(&self, limit: u32) -> Result<Vec<BundleEntry>, UpdateRefused> {
        Ok(sqlx::query_as(
            "SELECT sha256, version, target, size, binary_len, config_len, created_ms, key_id, uploaded_by,
             uploaded_ms FROM update_bundles ORDER BY uploaded_ms DESC, sha256 LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Orders `gateway` (of `enterprise`) to install bundle `sha256`, with download tokens living
    /// `token_ttl_s`; earlier unanswered orders of the gateway are superseded.
    pub async fn order(
        &self,
        gateway: &GatewayId,
        enterprise: &EnterpriseId,
        sha256: &str,
        token_ttl_s: u64,
        by: &str,
    ) -> Result<OrderEntry, UpdateRefused> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(UpdateRefused::Invalid(format!(
                "bundle {:?} is not a SHA-256 in lower-case hex (64 characters)",
                sha256.chars().take(80).collect::<String>()
            )));
        }
        if !(1..=MAX_TOKEN_TTL_S).contains(&token_ttl_s) {
            return Err(UpdateRefused::Invalid(format!("token_ttl_s {token_ttl_s} is outside 1..={MAX_TOKEN_TTL_S}")));
        }
        let Some(bundle) = self.bundle(sha256).await? else {
            return Err(UpdateRefused::NotFound(format!("no bundle {sha256} was uploaded")));
        };
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE update_orders SET status = 'superseded', result_ms = ?
             WHERE gateway = ? AND status IN ('pending', 'downloading')",
        )
        .bind(now)
        .bind(gateway.as_str())
        .execute(&mut *tx)
        .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO update_orders (gateway, bundle, version, target, token_ttl_s, ordered_by, ordered_ms, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, 'pending') RETURNING id",
        )
        .bind(gateway.as_str())
        .bind(&bundle.sha256)
        .bind(&bundle.version)
        .bind(&bundle.target)
        .bind(token_ttl_s as i64)
        .bind(by)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        METRICS.orders.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%gateway, order = id, version = %bundle.version, by, "update ordered");
        self.send(gateway, enterprise, id).await?;
        self.get(gateway, id).await?.ok_or_else(|| UpdateRefused::Internal("order vanished".into()))
    }

    /// The orders of `gateway`, newest first.
    pub async fn orders(&self, gateway: &GatewayId, limit: u32) -> Result<Vec<OrderEntry>, UpdateRefused> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            order_columns!(),
            " FROM update_orders WHERE gateway = ? ORDER BY id DESC LIMIT ?"
        ))
        .bind(gateway.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// One order of `gateway`.
    pub async fn get(&self, gateway: &GatewayId, id: i64) -> Result<Option<OrderEntry>, UpdateRefused> {
        Ok(sqlx::query_as(concat!("SELECT ", order_columns!(), " FROM update_orders WHERE gateway = ? AND id = ?"))
            .bind(gateway.as_str())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Signs and publishes order `id` with a fresh download token.
    async fn send(&self, gateway: &GatewayId, enterprise: &EnterpriseId, id: i64) -> Result<(), UpdateRefused> {
        let Some(client) = &self.client else { return Ok(()) };
        let Some(command) = self.command(gateway, id).await? else { return Ok(()) };
        let now = command.issued_ms;
        let sealed = command.seal(&self.key).map_err(|e| UpdateRefused::Internal(format!("sealing the order: {e}")))?;
        let topic = Topic::new(enterprise.clone(), gateway.clone(), Channel::DownCmd).to_string();
        match client.try_publish(topic, QoS::AtLeastOnce, false, sealed) {
            Ok(()) => {
                METRICS.sent.fetch_add(1, Ordering::Relaxed);
                sqlx::query("UPDATE update_orders SET sent_ms = ? WHERE id = ?")
                    .bind(now)
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
            }
            Err(e) => {
                METRICS.send_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%gateway, order = id, error = %e, "update order not queued; it goes out at the gateway's next state");
            }
        }
        Ok(())
    }

    /// The command for order `id` of `gateway` with a fresh download token (what is published on
    /// `down/cmd`, unsigned); `None` if there is no such order.
    pub async fn command(&self, gateway: &GatewayId, id: i64) -> Result<Option<Command>, UpdateRefused> {
        let row: Option<(String, String, String, i64, i64)> = sqlx::query_as(
            "SELECT o.version, o.target, o.bundle, b.size, o.token_ttl_s FROM update_orders o
             JOIN update_bundles b ON b.sha256 = o.bundle WHERE o.id = ? AND o.gateway = ?",
        )
        .bind(id)
        .bind(gateway.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some((version, target, bundle, size, ttl_s)) = row else { return Ok(None) };
        let mut sha = [0u8; 32];
        hex::decode_to_slice(&bundle, &mut sha).map_err(|e| UpdateRefused::Internal(format!("stored sha: {e}")))?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| UpdateRefused::Internal(format!("random: {e}")))?;
        let token = hex::encode(secret);
        let now = now_ms();
        sqlx::query("INSERT INTO update_tokens (token_sha256, order_id, expires_ms) VALUES (?, ?, ?)")
            .bind(hex::encode(Sha256::digest(token.as_bytes())))
            .bind(id)
            .bind(now.saturating_add(ttl_s.saturating_mul(1000)))
            .execute(&self.pool)
            .await?;
        let command = Command {
            gateway: gateway.clone(),
            id: self.next_command.fetch_add(1, Ordering::Relaxed),
            issued_ms: now,
            expires_ms: now + COMMAND_TTL_MS,
            action: CommandAction::Update {
                order: id as u64,
                version,
                target,
                sha256: sha,
                size: size as u64,
                path: DOWNLOAD_PATH.to_owned(),
                token,
            },
        };
        Ok(Some(command))
    }

    /// Checks a download token: it must name an order still waiting for its bundle, be unexpired
    /// and not used up. Counts the use and marks the order `downloading`.
    pub async fn authorize_download(&self, token: Option<&str>) -> Result<Download, UpdateRefused> {
        let result = self.check_token(token).await;
        match &result {
            Ok(_) => METRICS.downloads.fetch_add(1, Ordering::Relaxed),
            Err(_) => METRICS.downloads_refused.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    async fn check_token(&self, token: Option<&str>) -> Result<Download, UpdateRefused> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(UpdateRefused::Unauthorized(format!("a download needs the order's token in {TOKEN_HEADER}")));
        };
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        let row: Option<(i64, i64, i64, String, String, i64)> = sqlx::query_as(
            "SELECT t.order_id, t.expires_ms, t.uses, o.status, o.bundle, b.size FROM update_tokens t
             JOIN update_orders o ON o.id = t.order_id JOIN update_bundles b ON b.sha256 = o.bundle
             WHERE t.token_sha256 = ?",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some((order, expires_ms, uses, status, bundle, size)) = row else {
            return Err(UpdateRefused::Unauthorized("unknown download token".into()));
        };
        let now = now_ms();
        if now > expires_ms {
            return Err(UpdateRefused::Gone(format!(
                "download token of order {order} expired at {expires_ms} ms ({} s ago); order the update again",
                (now - expires_ms) / 1000
            )));
        }
        if !["pending", "downloading"].contains(&status.as_str()) {
            return Err(UpdateRefused::Gone(format!("order {order} is {status}; its bundle is no longer served")));
        }
        let claimed = sqlx::query("UPDATE update_tokens SET uses = uses + 1 WHERE token_sha256 = ? AND uses < ?")
            .bind(&hash)
            .bind(MAX_TOKEN_USES)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if claimed == 0 {
            return Err(UpdateRefused::Gone(format!(
                "download token of order {order} is used up ({uses} downloads); order the update again"
            )));
        }
        sqlx::query(
            "UPDATE update_orders SET downloads = downloads + 1,
             status = CASE WHEN status = 'pending' THEN 'downloading' ELSE status END WHERE id = ?",
        )
        .bind(order)
        .execute(&self.pool)
        .await?;
        Ok(Download { path: self.dir.join(&bundle), size: size as u64, sha256: bundle })
    }

    /// Records what a verified gateway state says about its orders, and sends an order the
    /// gateway has not answered again when it is online.
    pub async fn on_state(&self, state: &GatewayState, enterprise: &EnterpriseId) -> Result<(), UpdateRefused> {
        let gw = &state.gateway;
        // Orders that can still change: pending, downloading, installed, on trial.
        let open: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, version, status FROM update_orders WHERE gateway = ?
             AND status IN ('pending', 'downloading', 'installed', 'on_trial') ORDER BY id",
        )
        .bind(gw.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut unanswered = Vec::new();
        for (id, version, status) in open {
            match outcome(id, &version, &state.update) {
                Some((new, detail, ts)) if new != status => {
                    let changed = sqlx::query(
                        "UPDATE update_orders SET status = ?, detail = ?, result_ms = ? WHERE id = ? AND status <> ?",
                    )
                    .bind(new)
                    .bind(&detail)
                    .bind(ts)
                    .bind(id)
                    .bind(new)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                    if changed > 0 {
                        METRICS.outcomes.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(gateway = %gw, order = id, status = new, detail, "update: gateway reported");
                    }
                }
                Some(_) => {}
                None if ["pending", "downloading"].contains(&status.as_str()) => unanswered.push(id),
                None => {}
            }
        }
        if !state.online {
            return Ok(());
        }
        // Only the newest unanswered order is worth sending (older ones were superseded anyway).
        if let Some(&id) = unanswered.last() {
            let sent: Option<i64> = sqlx::query_scalar("SELECT sent_ms FROM update_orders WHERE id = ?")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
            if sent.is_none_or(|t| now_ms() - t >= RESEND_AFTER_MS) {
                tracing::info!(gateway = %gw, order = id, "update: gateway is online without an answer; sending again");
                self.send(gw, enterprise, id).await?;
            }
        }
        Ok(())
    }

    /// Follows ingest's verified states until the sender goes away.
    pub async fn follow(self, registry: Registry, rx: broadcast::Receiver<Arc<(GatewayState, i64)>>) {
        crate::ingest::follow_states(registry, rx, "updates", |state, enterprise| {
            let me = self.clone();
            async move { me.on_state(&state.0, &enterprise).await }
        })
        .await;
    }
}

/// The status of order `id` (of `version`) as the gateway's update report shows it: the newest
/// history record naming the order decides; `None`: the gateway has not answered it yet.
fn outcome(id: i64, version: &str, report: &vigil_common::UpdateReport) -> Option<(&'static str, Option<String>, i64)> {
    let tag = format!("order {id}: ");
    let rec = report.history.iter().rev().find(|r| r.detail.starts_with(&tag))?;
    let why = rec.detail[tag.len()..].to_owned();
    let status = match rec.event.as_str() {
        "refused" => return Some(("failed", Some(why), rec.ts_ms)),
        "abandoned" => return Some(("failed", Some(format!("abandoned: {why}")), rec.ts_ms)),
        "rolled_back" => return Some(("rolled_back", Some(why), rec.ts_ms)),
        "committed" => "committed",
        "installed" if report.on_trial.as_deref() == Some(version) => "on_trial",
        "installed" => "installed",
        _ => return None,
    };
    Some((status, None, rec.ts_ms))
}

/// A body read failure as the client's fault (it broke off, or sent more than allowed).
fn body_error(e: &axum::Error) -> UpdateRefused {
    use std::error::Error as _;
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return UpdateRefused::TooLarge;
        }
        source = s.source();
    }
    UpdateRefused::Invalid(format!("the upload broke off: {e}"))
}

/// Checks a bundle's framing (`head`: its first bytes, [`HEAD_LEN`] of them at most needed) against
/// its length `total`, and that its version and target are names central can list and order by.
/// The release signature is left to the gateways, which hold the release keys.
fn parse_header(head: &[u8], total: u64) -> Result<BundleHeader, UpdateRefused> {
    let bad = |e: HeaderError| UpdateRefused::Invalid(e.to_string());
    let header = bundle::parse_header(head, total).map_err(bad)?.header;
    bundle::check_version(&header.version).map_err(bad)?;
    bundle::check_target(&header.target).map_err(bad)?;
    Ok(header)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vigil_common::bundle::{FORMAT, MAGIC};

    fn bundle(header: &str, body: usize) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(FORMAT);
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(7u8, body + 64));
        b
    }

    #[test]
    fn headers_are_checked_and_every_defect_is_named() {
        let h = r#"{"version":"2.0.0","target":"x86_64-unknown-linux-gnu","binary_len":10,"config_len":0,"created_ms":1,"key_id":"ab"}"#;
        let good = bundle(h, 10);
        let parsed = parse_header(&good, good.len() as u64).unwrap();
        assert_eq!((parsed.version.as_str(), parsed.binary_len), ("2.0.0", 10));
        let err = |b: &[u8], total: u64| parse_header(b, total).unwrap_err().to_string();
        assert!(err(&good, good.len() as u64 - 1).contains("truncated"));
        assert!(err(&good, good.len() as u64 + 3).contains("3 unexpected bytes"));
        assert!(
            err(b"hello world, this is not a bundle at all but long enough to pass the size check..", 82)
                .contains("bad magic")
        );
        assert!(err(b"VIG", 3).contains("too short"));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert!(err(&v2, v2.len() as u64).contains("format 2"));
        let json = bundle("{not json", 10);
        assert!(err(&json, json.len() as u64).contains("bundle header"));
        let evil = bundle(&h.replace("2.0.0", "../x"), 10);
        assert!(err(&evil, evil.len() as u64).contains("version"));
    }

    #[test]
    fn the_newest_record_naming_the_order_decides_its_status() {
        let rec = |event: &str, detail: &str| vigil_common::UpdateRecord {
            ts_ms: 5,
            event: event.into(),
            version: "2.0.0".into(),
            detail: detail.into(),
        };
        let mut report = vigil_common::UpdateReport {
            installed: Some("2.0.0".into()),
            on_trial: Some("2.0.0".into()),
            history: vec![rec("refused", "order 3: bad signature"), rec("installed", "order 4: switched")],
        };
        assert_eq!(outcome(3, "2.0.0", &report).unwrap().0, "failed");
        assert_eq!(outcome(3, "2.0.0", &report).unwrap().1.as_deref(), Some("bad signature"));
        assert_eq!(outcome(4, "2.0.0", &report).unwrap().0, "on_trial");
        assert!(outcome(5, "2.0.0", &report).is_none());
        report.history.push(rec("committed", "order 4: healthy for 2 s"));
        report.on_trial = None;
        assert_eq!(outcome(4, "2.0.0", &report).unwrap().0, "committed");
        report.history.push(rec("rolled_back", "order 40: not healthy"));
        assert_eq!(outcome(4, "2.0.0", &report).unwrap().0, "committed", "order 40 is not order 4");
    }
}
