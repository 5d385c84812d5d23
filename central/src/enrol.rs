//! Gateway enrolment tokens: one-time, expiring secrets an administrator creates for one gateway id
//! and enterprise, and the gateway redeems once (`POST /api/v1/enrol`, see `api/enrolments.rs`).
//! Only the SHA-256 of a token is stored, in the `enrolments` table of `meta.db` beside the
//! registry. A token is claimed with one conditional UPDATE, so of two concurrent redemptions one
//! wins and the other is refused.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use sqlx::Row as _;
use sqlx::sqlite::SqlitePool;
use vigil_common::{EnterpriseId, GatewayId};

use vigil_common::enrolment::TOKEN_ID_LEN;

use crate::store::{Registry, StoreError};

/// The table (created by [`Registry::open`] with the registry's).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS enrolments (
        token_hash TEXT PRIMARY KEY,
        gateway TEXT NOT NULL,
        enterprise TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        used_ms INTEGER,
        used_key TEXT
    )",
    // Revoked before use (a separate table: databases made before revocation gain it unchanged).
    "CREATE TABLE IF NOT EXISTS enrolment_revocations (
        token_hash TEXT PRIMARY KEY,
        revoked_by TEXT NOT NULL,
        revoked_ms INTEGER NOT NULL
    )",
];

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
    /// An administrator revoked it before it was used.
    Revoked,
    /// The request's MAC does not verify with the token it names: altered on the way, or made
    /// without the token.
    BadProof,
}

impl Refusal {
    /// The label used on `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::Used => "used",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::BadProof => "bad_proof",
        }
    }
}

/// A token's row, found by the token.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// SHA-256 of the token (hex): the row's key, and the token's MAC key.
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
    /// Redemptions refused: unknown, used, expired, revoked token, a MAC that does not verify; a
    /// request that does not fit the token.
    pub refused: [AtomicU64; 6],
    /// Pending tokens revoked.
    pub revoked: AtomicU64,
}

impl EnrolMetrics {
    const fn new() -> EnrolMetrics {
        EnrolMetrics {
            created: AtomicU64::new(0),
            redeemed: AtomicU64::new(0),
            refused: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
            revoked: AtomicU64::new(0),
        }
    }

    /// Counts a refused redemption (`None`: the request did not fit the token).
    pub fn refuse(&self, why: Option<Refusal>) {
        let ix = match why {
            Some(Refusal::Unknown) => 0,
            Some(Refusal::Used) => 1,
            Some(Refusal::Expired) => 2,
            Some(Refusal::Revoked) => 3,
            Some(Refusal::BadProof) => 4,
            None => 5,
        };
        self.refused[ix].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text lines.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = format!(
            "vigil_enrol_tokens_created_total {}\nvigil_enrol_redeemed_total {}\nvigil_enrol_tokens_revoked_total {}\n",
            g(&self.created),
            g(&self.redeemed),
            g(&self.revoked)
        );
        for (i, reason) in ["unknown", "used", "expired", "revoked", "bad_proof", "bad_request"].iter().enumerate() {
            s.push_str(&format!("vigil_enrol_refused_total{{reason=\"{reason}\"}} {}\n", g(&self.refused[i])));
        }
        s
    }
}

/// The process's enrolment counters.
pub static METRICS: EnrolMetrics = EnrolMetrics::new();

/// SHA-256 of a token, hex: the hex form of the token's key ([`vigil_common::enrolment::token_key`]).
pub fn token_hash(token: &str) -> String {
    hex::encode(vigil_common::enrolment::token_key(token))
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
             WHERE used_ms IS NULL AND expires_ms > ?
               AND token_hash NOT IN (SELECT token_hash FROM enrolment_revocations)
             ORDER BY expires_ms, token_hash",
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

    /// The token named `token_id` (see [`vigil_common::enrolment::token_id`]) whose key `proves`
    /// (the request's MAC verifies with it), if it can be redeemed at `now_ms`; else why not.
    pub async fn check(
        &self,
        token_id: &str,
        proves: impl Fn(&[u8; 32]) -> bool,
        now_ms: i64,
    ) -> Result<Result<Ticket, Refusal>, StoreError> {
        if token_id.len() != TOKEN_ID_LEN || !token_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Ok(Err(Refusal::Unknown));
        }
        let rows = sqlx::query(
            "SELECT token_hash, gateway, enterprise, expires_ms, used_ms,
                    token_hash IN (SELECT token_hash FROM enrolment_revocations) AS revoked
             FROM enrolments WHERE substr(token_hash, 1, 12) = ?",
        )
        .bind(token_id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(Err(Refusal::Unknown));
        }
        // Two tokens sharing an id is a 2^-48 chance; the MAC tells which one the gateway holds.
        let Some(r) = rows.into_iter().find(|r| {
            r.try_get::<String, _>("token_hash")
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok())
                .is_some_and(|k| proves(&k))
        }) else {
            return Ok(Err(Refusal::BadProof));
        };
        let hash: String = r.try_get("token_hash")?;
        let used: Option<i64> = r.try_get("used_ms")?;
        let expires_ms: i64 = r.try_get("expires_ms")?;
        if r.try_get::<bool, _>("revoked")? {
            return Ok(Err(Refusal::Revoked));
        }
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
             WHERE token_hash = ? AND used_ms IS NULL AND expires_ms > ?
               AND token_hash NOT IN (SELECT token_hash FROM enrolment_revocations)",
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
        let revoked: Option<i64> =
            sqlx::query_scalar("SELECT revoked_ms FROM enrolment_revocations WHERE token_hash = ?")
                .bind(&ticket.hash)
                .fetch_optional(&self.pool)
                .await?;
        if revoked.is_some() {
            return Ok(Err(Refusal::Revoked));
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

    /// Revokes the pending enrolment listed as `id` (see [`Pending::id`]) if `may_see` allows its
    /// enterprise, so its token can no longer be redeemed. `Ok(None)`: no pending enrolment the
    /// caller may see has that id (unknown, used, expired or revoked already).
    pub async fn revoke(
        &self,
        id: &str,
        may_see: impl Fn(&str) -> bool,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<Pending>, StoreError> {
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Ok(None);
        }
        let pending = self.pending(now_ms).await?;
        // Twelve hex digits of a SHA-256 name one token among any realistic number of pending ones;
        // should two ever share them, neither is revoked by this id.
        let mut matching = pending.into_iter().filter(|p| p.id == id);
        let (Some(found), None) = (matching.next(), matching.next()) else { return Ok(None) };
        if !may_see(&found.enterprise) {
            return Ok(None);
        }
        let r = sqlx::query(
            "INSERT OR IGNORE INTO enrolment_revocations (token_hash, revoked_by, revoked_ms)
             SELECT token_hash, ?, ? FROM enrolments
             WHERE substr(token_hash, 1, 12) = ? AND used_ms IS NULL",
        )
        .bind(by)
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            // Redeemed between the listing and the insert.
            return Ok(None);
        }
        METRICS.revoked.fetch_add(1, Ordering::Relaxed);
        Ok(Some(found))
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
    use vigil_common::enrolment::{token_id, token_key};

    fn id_of(token: &str) -> String {
        token_id(&token_key(token))
    }

    /// A MAC check that passes for the key of `token` only.
    fn holds(token: &str) -> impl Fn(&[u8; 32]) -> bool {
        let want = token_key(token);
        move |k| *k == want
    }

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
        assert_eq!(e.check("nope", |_| true, 2000).await.unwrap().unwrap_err(), Refusal::Unknown);
        assert_eq!(e.check(&id_of(&token), holds(&token), 61_000).await.unwrap().unwrap_err(), Refusal::Expired);
        assert_eq!(e.check(&id_of(&token), holds("other"), 2000).await.unwrap().unwrap_err(), Refusal::BadProof);
        let t = e.check(&id_of(&token), holds(&token), 2000).await.unwrap().unwrap();
        assert_eq!(t.gateway, gw);
        e.claim(&t, "k", 3000).await.unwrap().unwrap();
        assert_eq!(e.claim(&t, "k", 3001).await.unwrap().unwrap_err(), Refusal::Used);
        e.release(&t, 3000).await.unwrap();
        e.claim(&t, "k", 3002).await.unwrap().unwrap();
        assert_eq!(e.check(&id_of(&token), holds(&token), 4000).await.unwrap().unwrap_err(), Refusal::Used);
        assert!(e.pending(4000).await.unwrap().is_empty());
        assert!(e.create(&gw, &ent, 1, "admin", 0).await.is_err(), "too short a lifetime");
    }

    #[tokio::test]
    async fn a_revoked_token_is_refused_and_no_longer_pending() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let e = Enrolments::new(&reg);
        let (gw, ent) = (GatewayId::new("gw-9").unwrap(), EnterpriseId::new("acme").unwrap());
        let (token, _) = e.create(&gw, &ent, 600, "admin", 1000).await.unwrap();
        let (other, _) = e.create(&gw, &ent, 600, "admin", 1000).await.unwrap();
        let id = e.pending(2000).await.unwrap().into_iter().find(|p| p.id == token_hash(&token)[..12]).unwrap().id;
        let ticket = e.check(&id_of(&token), holds(&token), 2000).await.unwrap().unwrap();
        assert!(e.revoke(&id, |x| x == "other", "tech", 2500).await.unwrap().is_none(), "not the caller's enterprise");
        assert!(e.revoke("zz", |_| true, "admin", 2500).await.unwrap().is_none());
        let revoked = e.revoke(&id, |x| x == "acme", "admin", 3000).await.unwrap().unwrap();
        assert_eq!(revoked.gateway, "gw-9");
        assert!(e.revoke(&id, |_| true, "admin", 3001).await.unwrap().is_none(), "revoked once");
        assert_eq!(e.check(&id_of(&token), holds(&token), 3500).await.unwrap().unwrap_err(), Refusal::Revoked);
        // A redemption that checked before the revocation still cannot claim after it.
        assert_eq!(e.claim(&ticket, "k", 3600).await.unwrap().unwrap_err(), Refusal::Revoked);
        let left: Vec<String> = e.pending(4000).await.unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(left, vec![token_hash(&other)[..12].to_owned()]);
        e.check(&id_of(&other), holds(&other), 4000).await.unwrap().unwrap();
    }
}
