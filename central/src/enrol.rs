//! Gateway enrolment tokens: one-time, expiring secrets an administrator creates for one gateway id
//! and enterprise, and the gateway redeems once (`POST /api/v1/enrol`, see `api/enrolments.rs`).
//! Only the SHA-256 of a token is stored, in the `enrolments` table of `meta.db` beside the
//! registry. A token is claimed with one conditional UPDATE, so of two concurrent redemptions one
//! wins and the other is refused.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sha2::{Digest as _, Sha256};
use sqlx::Row as _;
use sqlx::sqlite::SqlitePool;
use vigil_common::{EnterpriseId, GatewayId};

use crate::store::{Registry, StoreError};

/// The table (created by [`Registry::open`] with the registry's).
pub const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS enrolments (
        token_hash TEXT PRIMARY KEY,
        gateway TEXT NOT NULL,
        enterprise TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        used_ms INTEGER,
        used_key TEXT
    )"];

/// Shortest token lifetime accepted, seconds.
pub const MIN_TTL_S: u64 = 60;
/// Longest token lifetime accepted, seconds (a week).
pub const MAX_TTL_S: u64 = 7 * 86_400;
/// The prefix of every token (lets a leaked token be recognised in a scan).
pub const TOKEN_PREFIX: &str = "vigil-enrol-";

/// Why a token cannot be redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such token.
    Unknown,
    /// It was redeemed already.
    Used,
    /// Its lifetime is over.
    Expired,
}

impl Refusal {
    /// The label used on `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Used => "used",
            Refusal::Expired => "expired",
        }
    }
}

/// A token's row, found by the token.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// SHA-256 of the token (hex): the row's key.
    pub hash: String,
    /// The gateway it enrols.
    pub gateway: GatewayId,
    /// Its enterprise.
    pub enterprise: EnterpriseId,
    /// When it expires, UTC ms.
    pub expires_ms: i64,
}

/// A pending (unused, unexpired) enrolment as listed; never the token.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    /// The first 12 hex digits of the token's hash (names the enrolment, reveals nothing).
    pub id: String,
    /// The gateway it enrols.
    pub gateway: String,
    /// Its enterprise.
    pub enterprise: String,
    /// Who created it.
    pub created_by: String,
    /// When, UTC ms.
    pub created_ms: i64,
    /// When it expires, UTC ms.
    pub expires_ms: i64,
}

/// Enrolment counters (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct EnrolMetrics {
    /// Tokens created.
    pub created: AtomicU64,
    /// Tokens redeemed (gateways enrolled).
    pub redeemed: AtomicU64,
    /// Redemptions refused: unknown, used, expired token; a request that does not fit the token.
    pub refused: [AtomicU64; 4],
}

impl EnrolMetrics {
    const fn new() -> EnrolMetrics {
        EnrolMetrics {
            created: AtomicU64::new(0),
            redeemed: AtomicU64::new(0),
            refused: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Counts a refused redemption (`None`: the request did not fit the token).
    pub fn refuse(&self, why: Option<Refusal>) {
        let ix = match why {
            Some(Refusal::Unknown) => 0,
            Some(Refusal::Used) => 1,
            Some(Refusal::Expired) => 2,
            None => 3,
        };
        self.refused[ix].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text lines.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = format!(
            "vigil_enrol_tokens_created_total {}\nvigil_enrol_redeemed_total {}\n",
            g(&self.created),
            g(&self.redeemed)
        );
        for (i, reason) in ["unknown", "used", "expired", "bad_request"].iter().enumerate() {
            s.push_str(&format!("vigil_enrol_refused_total{{reason=\"{reason}\"}} {}\n", g(&self.refused[i])));
        }
        s
    }
}

/// The process's enrolment counters.
pub static METRICS: EnrolMetrics = EnrolMetrics::new();

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The enrolment tokens in the registry's database.
#[derive(Clone)]
pub struct Enrolments {
    pool: SqlitePool,
}

impl Enrolments {
    /// The tokens kept beside `registry`.
    pub fn new(registry: &Registry) -> Enrolments {
        Enrolments { pool: registry.pool().clone() }
    }

    /// Creates a token for `gateway` of `enterprise` valid for `ttl_s` seconds; returns the token
    /// (shown once, never stored) and its expiry (UTC ms).
    pub async fn create(
        &self,
        gateway: &GatewayId,
        enterprise: &EnterpriseId,
        ttl_s: u64,
        created_by: &str,
        now_ms: i64,
    ) -> Result<(String, i64), StoreError> {
        if !(MIN_TTL_S..=MAX_TTL_S).contains(&ttl_s) {
            return Err(StoreError::Invalid(format!("ttl_s must be {MIN_TTL_S}..={MAX_TTL_S}, not {ttl_s}")));
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| StoreError::Invalid(format!("no randomness for a token: {e}")))?;
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let expires_ms = now_ms.saturating_add(ttl_s as i64 * 1000);
        sqlx::query(
            "INSERT INTO enrolments (token_hash, gateway, enterprise, created_by, created_ms, expires_ms)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(token_hash(&token))
        .bind(gateway.as_str())
        .bind(enterprise.as_str())
        .bind(created_by)
        .bind(now_ms)
        .bind(expires_ms)
        .execute(&self.pool)
        .await?;
        METRICS.created.fetch_add(1, Ordering::Relaxed);
        Ok((token, expires_ms))
    }

    /// Unused, unexpired enrolments, soonest expiry first.
    pub async fn pending(&self, now_ms: i64) -> Result<Vec<Pending>, StoreError> {
        let rows = sqlx::query(
            "SELECT token_hash, gateway, enterprise, created_by, created_ms, expires_ms FROM enrolments
             WHERE used_ms IS NULL AND expires_ms > ? ORDER BY expires_ms, token_hash",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let hash: String = r.try_get("token_hash")?;
                Ok(Pending {
                    id: hash.chars().take(12).collect(),
                    gateway: r.try_get("gateway")?,
                    enterprise: r.try_get("enterprise")?,
                    created_by: r.try_get("created_by")?,
                    created_ms: r.try_get("created_ms")?,
                    expires_ms: r.try_get("expires_ms")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The token's row if it can be redeemed at `now_ms`, else why not.
    pub async fn check(&self, token: &str, now_ms: i64) -> Result<Result<Ticket, Refusal>, StoreError> {
        let hash = token_hash(token);
        let row = sqlx::query("SELECT gateway, enterprise, expires_ms, used_ms FROM enrolments WHERE token_hash = ?")
            .bind(&hash)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(Err(Refusal::Unknown)) };
        let used: Option<i64> = r.try_get("used_ms")?;
        let expires_ms: i64 = r.try_get("expires_ms")?;
        if used.is_some() {
            return Ok(Err(Refusal::Used));
        }
        if expires_ms <= now_ms {
            return Ok(Err(Refusal::Expired));
        }
        let gw: String = r.try_get("gateway")?;
        let ent: String = r.try_get("enterprise")?;
        Ok(Ok(Ticket {
            gateway: GatewayId::new(gw).map_err(|e| StoreError::Bad(e.to_string()))?,
            enterprise: EnterpriseId::new(ent).map_err(|e| StoreError::Bad(e.to_string()))?,
            expires_ms,
            hash,
        }))
    }

    /// Marks the token used by `key` (its text form) at `now_ms`, if it still can be: exactly one of
    /// concurrent claims succeeds.
    pub async fn claim(&self, ticket: &Ticket, key: &str, now_ms: i64) -> Result<Result<(), Refusal>, StoreError> {
        let r = sqlx::query(
            "UPDATE enrolments SET used_ms = ?, used_key = ?
             WHERE token_hash = ? AND used_ms IS NULL AND expires_ms > ?",
        )
        .bind(now_ms)
        .bind(key)
        .bind(&ticket.hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        let used: Option<Option<i64>> = sqlx::query_scalar("SELECT used_ms FROM enrolments WHERE token_hash = ?")
            .bind(&ticket.hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Err(match used {
            None => Refusal::Unknown,
            Some(Some(_)) => Refusal::Used,
            Some(None) => Refusal::Expired,
        }))
    }

    /// Undoes a claim made at `claimed_ms` (the registration after it failed), so the token can be
    /// redeemed again.
    pub async fn release(&self, ticket: &Ticket, claimed_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE enrolments SET used_ms = NULL, used_key = NULL WHERE token_hash = ? AND used_ms = ?")
            .bind(&ticket.hash)
            .bind(claimed_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_is_stored_hashed_and_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let e = Enrolments::new(&reg);
        let (gw, ent) = (GatewayId::new("gw-9").unwrap(), EnterpriseId::new("acme").unwrap());
        let (token, expires) = e.create(&gw, &ent, 60, "admin", 1000).await.unwrap();
        assert_eq!(expires, 61_000);
        let stored: String = sqlx::query_scalar("SELECT token_hash FROM enrolments").fetch_one(&e.pool).await.unwrap();
        assert_ne!(stored, token);
        assert_eq!(e.pending(2000).await.unwrap().len(), 1);
        assert_eq!(e.check("nope", 2000).await.unwrap().unwrap_err(), Refusal::Unknown);
        assert_eq!(e.check(&token, 61_000).await.unwrap().unwrap_err(), Refusal::Expired);
        let t = e.check(&token, 2000).await.unwrap().unwrap();
        assert_eq!(t.gateway, gw);
        e.claim(&t, "k", 3000).await.unwrap().unwrap();
        assert_eq!(e.claim(&t, "k", 3001).await.unwrap().unwrap_err(), Refusal::Used);
        e.release(&t, 3000).await.unwrap();
        e.claim(&t, "k", 3002).await.unwrap().unwrap();
        assert_eq!(e.check(&token, 4000).await.unwrap().unwrap_err(), Refusal::Used);
        assert!(e.pending(4000).await.unwrap().is_empty());
        assert!(e.create(&gw, &ent, 1, "admin", 0).await.is_err(), "too short a lifetime");
    }
}
