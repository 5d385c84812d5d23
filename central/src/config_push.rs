//! Gateway configuration pushes: central keeps every pushed file with its version, signs it into an
//! `ApplyConfig` command on the gateway's `down/cmd`, and records what the gateway reports back in
//! its signed state (on trial, applied, rejected with the exact validation error, rolled back).
//!
//! Commands are not retained and a gateway's MQTT session is clean, so a push made while the gateway
//! is offline goes out when its next birth state shows it has not handled it yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rumqttc::{AsyncClient, QoS};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;
use tokio::sync::broadcast;
use vigil_common::{Channel, Command, CommandAction, EnterpriseId, GatewayId, GatewayState, SigningKey, Topic};

use crate::ingest::now_ms;
use crate::store::{Registry, StoreError};

/// The table, created with the registry's.
pub const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS config_pushes (
        gateway TEXT NOT NULL,
        version INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        toml TEXT NOT NULL,
        pushed_by TEXT NOT NULL,
        pushed_ms INTEGER NOT NULL,
        sent_ms INTEGER,
        status TEXT NOT NULL,
        detail TEXT,
        result_ms INTEGER,
        PRIMARY KEY (gateway, version)
    )"];

/// Largest configuration file central pushes (the command envelope holds at most 256 KiB).
pub const MAX_TOML_BYTES: usize = 192 * 1024;

/// How long a push command stays valid after it was sent.
const COMMAND_TTL_MS: i64 = 10 * 60 * 1000;

/// One push as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PushEntry {
    /// The gateway.
    pub gateway: String,
    /// Its version (per gateway, from 1).
    pub version: i64,
    /// SHA-256 of the file (hex).
    pub sha256: String,
    /// Who pushed it.
    pub pushed_by: String,
    /// When, UTC ms.
    pub pushed_ms: i64,
    /// When the command last went out, UTC ms.
    pub sent_ms: Option<i64>,
    /// `sent`, `on_trial`, `applied`, `rejected`, `rolled_back` or `superseded`.
    pub status: String,
    /// The gateway's validation error or rollback reason.
    pub detail: Option<String>,
    /// When the gateway reported the status, UTC ms.
    pub result_ms: Option<i64>,
}

/// Why a push was refused by central.
#[derive(Debug, thiserror::Error)]
pub enum PushRefused {
    /// The file is not a configuration for this gateway.
    #[error("{0}")]
    Invalid(String),
    /// The registry failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for PushRefused {
    fn from(e: sqlx::Error) -> Self {
        PushRefused::Store(StoreError::from(e))
    }
}

/// Counters of configuration pushes.
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// Push commands published (first sends and re-sends).
    pub sent: AtomicU64,
    /// Push commands the MQTT client would not queue.
    pub send_failed: AtomicU64,
    /// Outcomes recorded from gateway states.
    pub outcomes: AtomicU64,
}

impl PushMetrics {
    /// Prometheus text lines.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "vigil_config_push_sent_total {}\nvigil_config_push_send_failed_total {}\nvigil_config_push_outcomes_total {}\n",
            g(&self.sent),
            g(&self.send_failed),
            g(&self.outcomes)
        )
    }
}

/// The push service.
#[derive(Clone)]
pub struct ConfigPushes {
    pool: SqlitePool,
    key: Arc<SigningKey>,
    client: Option<AsyncClient>,
    next_command: Arc<AtomicU64>,
    /// Counters.
    pub metrics: Arc<PushMetrics>,
}

impl ConfigPushes {
    /// Pushes kept in the registry's database, signed with central's key and published with `client`
    /// (none: pushes are stored and go out from a process that has one).
    pub fn new(registry: &Registry, key: SigningKey, client: Option<AsyncClient>) -> Self {
        // Command ids must rise across central restarts too; time-based ids do while the clock does.
        let first = u64::try_from(now_ms()).unwrap_or(0).saturating_mul(1000);
        ConfigPushes {
            pool: registry.pool().clone(),
            key: Arc::new(key),
            client,
            next_command: Arc::new(AtomicU64::new(first)),
            metrics: Arc::default(),
        }
    }

    /// The command id counter, for other senders of commands (ids must rise per gateway).
    pub fn command_ids(&self) -> Arc<AtomicU64> {
        self.next_command.clone()
    }

    /// Stores `toml` as the next version for `gateway` (of `enterprise`) and sends it. The file
    /// must be TOML naming this gateway and enterprise; the gateway validates the rest.
    pub async fn push(
        &self,
        gateway: &GatewayId,
        enterprise: &EnterpriseId,
        toml_text: &str,
        by: &str,
    ) -> Result<PushEntry, PushRefused> {
        check_document(gateway, enterprise, toml_text)?;
        let sha = hex::encode(Sha256::digest(toml_text.as_bytes()));
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM config_pushes WHERE gateway = ?")
                .bind(gateway.as_str())
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "UPDATE config_pushes SET status = 'superseded', result_ms = ? WHERE gateway = ? AND status = 'sent'",
        )
        .bind(now)
        .bind(gateway.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO config_pushes (gateway, version, sha256, toml, pushed_by, pushed_ms, status)
             VALUES (?, ?, ?, ?, ?, ?, 'sent')",
        )
        .bind(gateway.as_str())
        .bind(version)
        .bind(&sha)
        .bind(toml_text)
        .bind(by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.send(gateway, enterprise, version, toml_text).await?;
        tracing::info!(%gateway, version, by, "config push: sent");
        self.get(gateway, version).await?.ok_or_else(|| PushRefused::Invalid("push vanished".into()))
    }

    /// The pushes of `gateway`, newest first.
    pub async fn list(&self, gateway: &GatewayId, limit: u32) -> Result<Vec<PushEntry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT gateway, version, sha256, pushed_by, pushed_ms, sent_ms, status, detail, result_ms
             FROM config_pushes WHERE gateway = ? ORDER BY version DESC LIMIT ?",
        )
        .bind(gateway.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// One push.
    pub async fn get(&self, gateway: &GatewayId, version: i64) -> Result<Option<PushEntry>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT gateway, version, sha256, pushed_by, pushed_ms, sent_ms, status, detail, result_ms
             FROM config_pushes WHERE gateway = ? AND version = ?",
        )
        .bind(gateway.as_str())
        .bind(version)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The file of one push.
    pub async fn document(&self, gateway: &GatewayId, version: i64) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT toml FROM config_pushes WHERE gateway = ? AND version = ?")
            .bind(gateway.as_str())
            .bind(version)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn send(
        &self,
        gateway: &GatewayId,
        enterprise: &EnterpriseId,
        version: i64,
        toml_text: &str,
    ) -> Result<(), StoreError> {
        let Some(client) = &self.client else { return Ok(()) };
        let now = now_ms();
        let command = Command {
            gateway: gateway.clone(),
            id: self.next_command.fetch_add(1, Ordering::Relaxed),
            issued_ms: now,
            expires_ms: now + COMMAND_TTL_MS,
            action: CommandAction::ApplyConfig { version: version as u64, toml: toml_text.to_owned() },
        };
        let sealed = command.seal(&self.key).map_err(|e| StoreError::Bad(format!("sealing the push: {e}")))?;
        let topic = Topic::new(enterprise.clone(), gateway.clone(), Channel::DownCmd).to_string();
        match client.try_publish(topic, QoS::AtLeastOnce, false, sealed) {
            Ok(()) => {
                self.metrics.sent.fetch_add(1, Ordering::Relaxed);
                sqlx::query("UPDATE config_pushes SET sent_ms = ? WHERE gateway = ? AND version = ?")
                    .bind(now)
                    .bind(gateway.as_str())
                    .bind(version)
                    .execute(&self.pool)
                    .await?;
            }
            Err(e) => {
                self.metrics.send_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%gateway, version, error = %e, "config push: not queued; it goes out at the gateway's next birth");
            }
        }
        Ok(())
    }

    /// Records what a verified gateway state says about pushes, and re-sends a push the gateway has
    /// not handled when it comes online.
    pub async fn on_state(&self, state: &GatewayState, enterprise: &EnterpriseId) -> Result<(), StoreError> {
        let gw = &state.gateway;
        if let Some(last) = &state.config.last_push {
            let (status, detail) = crate::api::resources::push_status(&last.result);
            let changed = sqlx::query(
                "UPDATE config_pushes SET status = ?, detail = ?, result_ms = ?
                 WHERE gateway = ? AND version = ? AND (status <> ? OR result_ms IS NULL OR result_ms < ?)",
            )
            .bind(status)
            .bind(detail)
            .bind(last.ts_ms)
            .bind(gw.as_str())
            .bind(last.version as i64)
            .bind(status)
            .bind(last.ts_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if changed > 0 {
                self.metrics.outcomes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(gateway = %gw, version = last.version, status, detail, "config push: gateway reported");
            }
        }
        if !state.online {
            return Ok(());
        }
        let handled = state.config.last_push.as_ref().map_or(0, |l| l.version).max(state.config.running);
        let pending: Option<(i64, String)> = sqlx::query_as(
            "SELECT version, toml FROM config_pushes WHERE gateway = ? AND status = 'sent' AND version > ?
             ORDER BY version DESC LIMIT 1",
        )
        .bind(gw.as_str())
        .bind(handled as i64)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((version, toml_text)) = pending {
            tracing::info!(gateway = %gw, version, "config push: gateway is online without it; sending again");
            self.send(gw, enterprise, version, &toml_text).await?;
        }
        Ok(())
    }

    /// Follows ingest's verified states until the sender goes away.
    pub async fn follow(self, registry: Registry, rx: broadcast::Receiver<Arc<(GatewayState, i64)>>) {
        crate::ingest::follow_states(registry, rx, "config push", |state, enterprise| {
            let me = self.clone();
            async move { me.on_state(&state.0, &enterprise).await }
        })
        .await;
    }
}

/// Central's own checks: size, TOML syntax, and the `[gateway]` table naming this gateway.
fn check_document(gateway: &GatewayId, enterprise: &EnterpriseId, text: &str) -> Result<(), PushRefused> {
    if text.len() > MAX_TOML_BYTES {
        return Err(PushRefused::Invalid(format!(
            "the configuration is {} bytes; at most {MAX_TOML_BYTES} can be pushed",
            text.len()
        )));
    }
    let doc: toml::Table = toml::from_str(text).map_err(|e| PushRefused::Invalid(format!("not valid TOML: {e}")))?;
    let section = doc.get("gateway").and_then(|g| g.as_table());
    let field = |k: &str| section.and_then(|s| s.get(k)).and_then(|v| v.as_str());
    if field("id") != Some(gateway.as_str()) {
        return Err(PushRefused::Invalid(format!(
            "[gateway] id is {:?}; a push to {gateway} must name it",
            field("id").unwrap_or("(missing)")
        )));
    }
    if field("enterprise") != Some(enterprise.as_str()) {
        return Err(PushRefused::Invalid(format!(
            "[gateway] enterprise is {:?}; gateway {gateway} belongs to {enterprise}",
            field("enterprise").unwrap_or("(missing)")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn central_refuses_files_for_another_gateway_or_enterprise_and_broken_toml() {
        let gw = GatewayId::new("gw-1").unwrap();
        let ent = EnterpriseId::new("ent-a").unwrap();
        let good = "[gateway]\nid = \"gw-1\"\nenterprise = \"ent-a\"\nkey_file = \"k\"\n";
        assert!(check_document(&gw, &ent, good).is_ok());
        let other = good.replace("gw-1", "gw-2");
        assert!(check_document(&gw, &ent, &other).unwrap_err().to_string().contains("\"gw-2\""));
        let ent_b = good.replace("ent-a", "ent-b");
        assert!(check_document(&gw, &ent, &ent_b).unwrap_err().to_string().contains("belongs to ent-a"));
        assert!(check_document(&gw, &ent, "[gateway\n").unwrap_err().to_string().contains("not valid TOML"));
        let big = format!("{good}# {}\n", "x".repeat(MAX_TOML_BYTES));
        assert!(check_document(&gw, &ent, &big).unwrap_err().to_string().contains("at most"));
    }
}
