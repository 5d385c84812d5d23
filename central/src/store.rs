//! Metadata store: the gateway registry (gateways, enterprises, keys with validity and revocation,
//! last seen, reported spool drops). SQLite through sqlx in the data directory by default; the
//! [`Registry`] methods are plain SQL that a PostgreSQL pool can run unchanged (see docs/ARCHITECTURE.md).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr as _;

use serde::Serialize;
use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use vigil_common::{EnterpriseId, GatewayId, KeyId, PublicKey};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("metadata database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored value is malformed.
    #[error("metadata database holds a bad value: {0}")]
    Bad(String),
    /// The request names something that does not exist or conflicts.
    #[error("{0}")]
    Invalid(String),
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS gateways (
        id TEXT PRIMARY KEY,
        enterprise TEXT NOT NULL,
        added_ms INTEGER NOT NULL,
        last_seen_ms INTEGER,
        state_ms INTEGER,
        state_bytes INTEGER,
        drops_json TEXT
    )",
    "CREATE TABLE IF NOT EXISTS gateway_keys (
        key_id TEXT PRIMARY KEY,
        gateway TEXT NOT NULL REFERENCES gateways(id),
        public_key TEXT NOT NULL,
        valid_from_ms INTEGER NOT NULL,
        valid_until_ms INTEGER,
        revoked_ms INTEGER
    )",
];

/// One registered key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyEntry {
    /// Its id (hex).
    pub key_id: String,
    /// Text form of the key.
    pub public_key: String,
    /// Valid from, UTC ms.
    pub valid_from_ms: i64,
    /// Valid until, UTC ms (None: no end).
    pub valid_until_ms: Option<i64>,
    /// Revoked at, UTC ms.
    pub revoked_ms: Option<i64>,
}

/// One gateway as listed.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayEntry {
    /// Gateway id.
    pub id: String,
    /// Its enterprise.
    pub enterprise: String,
    /// When it was registered.
    pub added_ms: i64,
    /// When a batch from it was last accepted.
    pub last_seen_ms: Option<i64>,
    /// When it last published its state.
    pub state_ms: Option<i64>,
    /// Drop counters it last reported (JSON).
    pub drops_json: Option<String>,
    /// Its keys.
    pub keys: Vec<KeyEntry>,
}

/// A key with its validity: (key id, key, valid from, valid until, revoked at), UTC ms.
pub type KeyValidity = (KeyId, PublicKey, i64, Option<i64>, Option<i64>);

/// A gateway's verification material, as ingest holds it in memory.
#[derive(Debug, Clone)]
pub struct GatewayKeys {
    /// The enterprise the gateway belongs to (must match the topic).
    pub enterprise: EnterpriseId,
    /// Its keys.
    pub keys: Vec<KeyValidity>,
}

impl GatewayKeys {
    /// The key with `id` if it is usable at `now_ms` (registered, within validity, not revoked).
    pub fn usable(&self, id: KeyId, now_ms: i64) -> Option<PublicKey> {
        self.keys
            .iter()
            .find(|(k, _, from, until, revoked)| {
                *k == id && *from <= now_ms && until.is_none_or(|u| now_ms < u) && revoked.is_none_or(|r| now_ms < r)
            })
            .map(|(_, p, ..)| p.clone())
    }
}

/// The registry.
#[derive(Clone)]
pub struct Registry {
    pool: SqlitePool,
}

impl Registry {
    /// Opens (creating) `meta.db` in the data directory.
    pub async fn open(data_dir: &Path) -> Result<Registry, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Invalid(format!("{}: {e}", data_dir.display())))?;
        let url = format!("sqlite://{}", data_dir.join("meta.db").display());
        let opts = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        for stmt in
            SCHEMA.iter().chain(crate::enrol::SCHEMA).chain(crate::config_push::SCHEMA).chain(crate::catalogue::SCHEMA)
        {
            sqlx::query(*stmt).execute(&pool).await?;
        }
        Ok(Registry { pool })
    }

    /// The database (`meta.db`), for the enrolment tokens kept beside the registry.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The enterprise gateway `id` is registered under, if it is.
    pub async fn enterprise_of(&self, id: &GatewayId) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT enterprise FROM gateways WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Registers a gateway (or adds a key to an existing one of the same enterprise).
    pub async fn add(
        &self,
        id: &GatewayId,
        enterprise: &EnterpriseId,
        key: &PublicKey,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let existing: Option<String> = sqlx::query_scalar("SELECT enterprise FROM gateways WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        match existing {
            Some(e) if e != enterprise.as_str() => {
                return Err(StoreError::Invalid(format!(
                    "gateway {id} is registered under enterprise {e}, not {enterprise}"
                )));
            }
            Some(_) => {}
            None => {
                sqlx::query("INSERT INTO gateways (id, enterprise, added_ms) VALUES (?, ?, ?)")
                    .bind(id.as_str())
                    .bind(enterprise.as_str())
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let key_id = key.key_id().to_string();
        let owner: Option<String> = sqlx::query_scalar("SELECT gateway FROM gateway_keys WHERE key_id = ?")
            .bind(&key_id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(o) = owner {
            return Err(StoreError::Invalid(format!("key {key_id} is already registered (gateway {o})")));
        }
        sqlx::query("INSERT INTO gateway_keys (key_id, gateway, public_key, valid_from_ms) VALUES (?, ?, ?, ?)")
            .bind(&key_id)
            .bind(id.as_str())
            .bind(key.to_text())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revokes one key of a gateway, or all of them when `key_id` is None; returns how many.
    pub async fn revoke(&self, id: &GatewayId, key_id: Option<&str>, now_ms: i64) -> Result<u64, StoreError> {
        let n = self.revoke_unrevoked(id, key_id, now_ms).await?;
        if n == 0 {
            return Err(StoreError::Invalid(format!("no unrevoked key matched for gateway {id}")));
        }
        Ok(n)
    }

    /// Marks the gateway's matching keys that are not revoked yet as revoked at `now_ms`; how many.
    async fn revoke_unrevoked(&self, id: &GatewayId, key_id: Option<&str>, now_ms: i64) -> Result<u64, StoreError> {
        let r =
            match key_id {
                Some(k) => sqlx::query(
                    "UPDATE gateway_keys SET revoked_ms = ? WHERE gateway = ? AND key_id = ? AND revoked_ms IS NULL",
                )
                .bind(now_ms)
                .bind(id.as_str())
                .bind(k)
                .execute(&self.pool)
                .await?,
                None => {
                    sqlx::query("UPDATE gateway_keys SET revoked_ms = ? WHERE gateway = ? AND revoked_ms IS NULL")
                        .bind(now_ms)
                        .bind(id.as_str())
                        .execute(&self.pool)
                        .await?
                }
            };
        Ok(r.rows_affected())
    }

    /// Every gateway with its keys.
    pub async fn list(&self) -> Result<Vec<GatewayEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, enterprise, added_ms, last_seen_ms, state_ms, drops_json FROM gateways ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.try_get("id")?;
            let keys = sqlx::query("SELECT key_id, public_key, valid_from_ms, valid_until_ms, revoked_ms FROM gateway_keys WHERE gateway = ? ORDER BY valid_from_ms")
                .bind(&id)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|k| {
                    Ok(KeyEntry {
                        key_id: k.try_get("key_id")?,
                        public_key: k.try_get("public_key")?,
                        valid_from_ms: k.try_get("valid_from_ms")?,
                        valid_until_ms: k.try_get("valid_until_ms")?,
                        revoked_ms: k.try_get("revoked_ms")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            out.push(GatewayEntry {
                enterprise: r.try_get("enterprise")?,
                added_ms: r.try_get("added_ms")?,
                last_seen_ms: r.try_get("last_seen_ms")?,
                state_ms: r.try_get("state_ms")?,
                drops_json: r.try_get("drops_json")?,
                keys,
                id,
            });
        }
        Ok(out)
    }

    /// The verification material of every gateway (for ingest's in-memory cache).
    pub async fn load_keys(&self) -> Result<HashMap<GatewayId, GatewayKeys>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.id, g.enterprise, k.public_key, k.valid_from_ms, k.valid_until_ms, k.revoked_ms
             FROM gateways g JOIN gateway_keys k ON k.gateway = g.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: HashMap<GatewayId, GatewayKeys> = HashMap::new();
        for r in rows {
            let id: String = r.try_get(0)?;
            let ent: String = r.try_get(1)?;
            let key: String = r.try_get(2)?;
            let gw = GatewayId::new(id).map_err(|e| StoreError::Bad(e.to_string()))?;
            let enterprise = EnterpriseId::new(ent).map_err(|e| StoreError::Bad(e.to_string()))?;
            let key = PublicKey::from_text(&key).map_err(|e| StoreError::Bad(e.to_string()))?;
            let entry = out.entry(gw).or_insert_with(|| GatewayKeys { enterprise, keys: Vec::new() });
            entry.keys.push((key.key_id(), key, r.try_get(3)?, r.try_get(4)?, r.try_get(5)?));
        }
        Ok(out)
    }

    /// Records gateway activity: last accepted batch, last state message, last reported drops.
    pub async fn touch(
        &self,
        id: &GatewayId,
        seen_ms: Option<i64>,
        state: Option<(i64, i64)>,
        drops_json: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE gateways SET last_seen_ms = COALESCE(?, last_seen_ms), state_ms = COALESCE(?, state_ms),
             state_bytes = COALESCE(?, state_bytes), drops_json = COALESCE(?, drops_json) WHERE id = ?",
        )
        .bind(seen_ms)
        .bind(state.map(|s| s.0))
        .bind(state.map(|s| s.1))
        .bind(drops_json)
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The gateways a park keeps in a file (`gateways = "gateways.toml"` in central's configuration),
/// applied to the registry when central starts and by `vigil-central gateway sync`: missing gateways
/// and keys are added, keys listed under `revoked` are revoked. The file only adds and revokes;
/// it never deletes what the CLI registered.
#[derive(Debug, Clone)]
pub struct GatewaysFile {
    /// The gateways, as the file lists them.
    pub gateways: Vec<FileGateway>,
}

/// One gateway of a [`GatewaysFile`].
#[derive(Debug, Clone)]
pub struct FileGateway {
    /// Gateway id.
    pub id: GatewayId,
    /// Its enterprise.
    pub enterprise: EnterpriseId,
    /// Keys it signs with.
    pub keys: Vec<PublicKey>,
    /// Keys (`ed25519:<hex>` or key ids) that must no longer be accepted.
    pub revoked: Vec<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGatewaysFile {
    #[serde(default)]
    gateway: Vec<RawFileGateway>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileGateway {
    id: String,
    enterprise: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    revoked: Vec<String>,
}

/// What applying a [`GatewaysFile`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Keys registered (a new gateway counts its keys).
    pub keys_added: usize,
    /// Keys revoked.
    pub keys_revoked: usize,
}

impl GatewaysFile {
    /// Reads and checks the whole file; an error names the file and the entry (`gateway[2].keys[0]`).
    pub fn load(path: &Path) -> Result<GatewaysFile, StoreError> {
        let at = |what: String| StoreError::Invalid(format!("{}: {what}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read: {e}")))?;
        let raw: RawGatewaysFile = toml::from_str(&text).map_err(|e| at(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        let mut gateways = Vec::new();
        for (i, g) in raw.gateway.into_iter().enumerate() {
            let id = GatewayId::new(g.id).map_err(|e| at(format!("gateway[{i}].id: {e}")))?;
            if !seen.insert(id.clone()) {
                return Err(at(format!("gateway[{i}].id: {id} is listed twice")));
            }
            let enterprise =
                EnterpriseId::new(g.enterprise).map_err(|e| at(format!("gateway[{i}].enterprise: {e}")))?;
            let keys = g
                .keys
                .iter()
                .enumerate()
                .map(|(j, k)| PublicKey::from_text(k).map_err(|e| at(format!("gateway[{i}].keys[{j}]: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let revoked = g
                .revoked
                .iter()
                .enumerate()
                .map(|(j, r)| match PublicKey::from_text(r) {
                    Ok(k) => Ok(k.key_id().to_string()),
                    Err(_) if r.len() >= 8 && r.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(r.to_ascii_lowercase()),
                    Err(e) => Err(at(format!("gateway[{i}].revoked[{j}]: neither a key nor a key id: {e}"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(k) = keys.iter().find(|k| revoked.contains(&k.key_id().to_string())) {
                return Err(at(format!("gateway[{i}]: key {} is listed under keys and revoked", k.key_id())));
            }
            gateways.push(FileGateway { id, enterprise, keys, revoked });
        }
        Ok(GatewaysFile { gateways })
    }
}

impl Registry {
    /// Brings the registry in line with `file` (idempotent: a second run changes nothing).
    pub async fn sync(&self, file: &GatewaysFile, now_ms: i64) -> Result<SyncReport, StoreError> {
        let mut report = SyncReport::default();
        for g in &file.gateways {
            for key in &g.keys {
                let owner: Option<String> = sqlx::query_scalar("SELECT gateway FROM gateway_keys WHERE key_id = ?")
                    .bind(key.key_id().to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                match owner {
                    Some(o) if o == g.id.as_str() => {}
                    // `add` refuses a key of another gateway and a gateway of another enterprise.
                    _ => {
                        self.add(&g.id, &g.enterprise, key, now_ms).await?;
                        report.keys_added += 1;
                    }
                }
            }
            for key_id in &g.revoked {
                report.keys_revoked += self.revoke_unrevoked(&g.id, Some(key_id), now_ms).await? as usize;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use vigil_common::SigningKey;

    #[tokio::test]
    async fn keys_are_registered_revoked_and_bound_to_one_enterprise() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let gw = GatewayId::new("gw1").unwrap();
        let ent = EnterpriseId::new("acme").unwrap();
        let k1 = SigningKey::from_seed(&[1; 32]).public_key();
        let k2 = SigningKey::from_seed(&[2; 32]).public_key();
        reg.add(&gw, &ent, &k1, 100).await.unwrap();
        reg.add(&gw, &ent, &k2, 200).await.unwrap();
        assert!(
            reg.add(&gw, &EnterpriseId::new("other").unwrap(), &SigningKey::from_seed(&[3; 32]).public_key(), 1)
                .await
                .is_err()
        );
        assert!(reg.add(&GatewayId::new("gw2").unwrap(), &ent, &k1, 1).await.is_err(), "a key belongs to one gateway");
        let keys = reg.load_keys().await.unwrap();
        let g = &keys[&gw];
        assert!(g.usable(k1.key_id(), 150).is_some());
        assert!(g.usable(k2.key_id(), 150).is_none(), "not yet valid");
        reg.revoke(&gw, Some(&k1.key_id().to_string()), 300).await.unwrap();
        let g = &reg.load_keys().await.unwrap()[&gw];
        assert!(g.usable(k1.key_id(), 301).is_none(), "revoked");
        assert!(g.usable(k2.key_id(), 301).is_some());
        assert!(reg.revoke(&gw, Some(&k1.key_id().to_string()), 400).await.is_err(), "already revoked");
        reg.touch(&gw, Some(500), None, Some("{}")).await.unwrap();
        let list = reg.list().await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_seen_ms, Some(500));
        assert_eq!(list[0].keys.len(), 2);
    }

    #[tokio::test]
    async fn a_gateways_file_adds_and_revokes_idempotently_and_names_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let (k1, k2) = (SigningKey::from_seed(&[1; 32]).public_key(), SigningKey::from_seed(&[2; 32]).public_key());
        let file = dir.path().join("gateways.toml");
        let write = |text: String| std::fs::write(&file, text).unwrap();
        write(format!(
            "[[gateway]]\nid = \"gw1\"\nenterprise = \"acme\"\nkeys = [\"{}\", \"{}\"]\n\n[[gateway]]\nid = \"gw2\"\nenterprise = \"acme\"\n",
            k1.to_text(),
            k2.to_text()
        ));
        let f = GatewaysFile::load(&file).unwrap();
        assert_eq!(reg.sync(&f, 100).await.unwrap(), SyncReport { keys_added: 2, keys_revoked: 0 });
        assert_eq!(reg.sync(&f, 200).await.unwrap(), SyncReport::default(), "a second run changes nothing");
        let gw1 = GatewayId::new("gw1").unwrap();
        assert!(reg.load_keys().await.unwrap()[&gw1].usable(k1.key_id(), 150).is_some());
        // k1 revoked by key id, k2 by key: neither is accepted afterwards; revoking again is a no-op.
        write(format!(
            "[[gateway]]\nid = \"gw1\"\nenterprise = \"acme\"\nrevoked = [\"{}\", \"{}\"]\n",
            k1.key_id(),
            k2.to_text()
        ));
        let f = GatewaysFile::load(&file).unwrap();
        assert_eq!(reg.sync(&f, 300).await.unwrap(), SyncReport { keys_added: 0, keys_revoked: 2 });
        assert_eq!(reg.sync(&f, 400).await.unwrap(), SyncReport::default());
        let keys = &reg.load_keys().await.unwrap()[&gw1];
        assert!(keys.usable(k1.key_id(), 301).is_none() && keys.usable(k2.key_id(), 301).is_none());
        // The same key for another gateway is refused by the registry, not silently moved.
        write(format!("[[gateway]]\nid = \"gw3\"\nenterprise = \"acme\"\nkeys = [\"{}\"]\n", k1.to_text()));
        assert!(reg.sync(&GatewaysFile::load(&file).unwrap(), 500).await.is_err());
        for (text, names) in [
            ("[[gateway]]\nid = \"gw1\"\nenterprise = \"acme\"\nkeys = [\"ed25519:zz\"]\n", "gateway[0].keys[0]"),
            ("[[gateway]]\nid = \"a/b\"\nenterprise = \"acme\"\n", "gateway[0].id"),
            (
                "[[gateway]]\nid = \"g\"\nenterprise = \"e\"\n[[gateway]]\nid = \"g\"\nenterprise = \"e\"\n",
                "gateway[1].id",
            ),
            ("[[gateway]]\nid = \"g\"\nenterprise = \"e\"\nbogus = 1\n", "bogus"),
        ] {
            write(text.to_owned());
            let e = GatewaysFile::load(&file).unwrap_err().to_string();
            assert!(e.contains("gateways.toml") && e.contains(names), "{text}: {e}");
        }
    }
}
