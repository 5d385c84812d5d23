//! Identity: users with roles and enterprise scope, Argon2id passwords under a configurable policy
//! (length, classes, expiry, history), lockout after repeated failures, session tokens (stored as
//! SHA-256 only), an append-only security audit log, and a broadcast of alarm-worthy security
//! events (lockouts, password spraying from one client address).
//!
//! Everything lives in `access.db` (SQLite) in the data directory; the API-call log shares it.

pub mod policy;
mod secret;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::broadcast;
use vigil_common::EnterpriseId;

pub use policy::{AuthConfig, PolicyViolation};

/// A role; duties are separated (a security administrator manages users, not alarms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the park's configuration: enterprises, gateways, points, alarm definitions.
    ParkAdmin,
    /// Manages users and roles only.
    SecurityAdmin,
    /// Reads the API-call and audit logs; changes nothing.
    Auditor,
    /// Works alarms in the monitoring room.
    Operator,
    /// Sees and acts on its own enterprise only.
    EnterpriseUser,
    /// Enrols gateways and configures devices of assigned enterprises.
    FieldTechnician,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 6] = [
        Role::ParkAdmin,
        Role::SecurityAdmin,
        Role::Auditor,
        Role::Operator,
        Role::EnterpriseUser,
        Role::FieldTechnician,
    ];

    /// The snake_case name used in JSON, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ParkAdmin => "park_admin",
            Role::SecurityAdmin => "security_admin",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
            Role::EnterpriseUser => "enterprise_user",
            Role::FieldTechnician => "field_technician",
        }
    }

    /// Whether users of this role must be confined to enterprises (`Some`), must not be (`None`
    /// only), or may be either.
    fn scope_rule(self) -> ScopeRule {
        match self {
            Role::EnterpriseUser | Role::FieldTechnician => ScopeRule::Required,
            Role::ParkAdmin | Role::SecurityAdmin | Role::Auditor => ScopeRule::Forbidden,
            Role::Operator => ScopeRule::Optional,
        }
    }
}

enum ScopeRule {
    Required,
    Forbidden,
    Optional,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Role, IdentityError> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            IdentityError::Invalid(format!("unknown role {s:?}; one of {}", names.join(", ")))
        })
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The user name (what the audit log records as the actor).
    pub user: String,
    /// The user's role.
    pub role: Role,
    /// The enterprises the user is confined to; `None` means the whole park.
    pub enterprises: Option<Vec<EnterpriseId>>,
}

impl Principal {
    /// Whether data of `enterprise` is visible to this caller.
    pub fn sees(&self, enterprise: &EnterpriseId) -> bool {
        self.enterprises.as_ref().is_none_or(|list| list.contains(enterprise))
    }

    /// Whether data of the enterprise named `enterprise` is visible (false for a malformed name
    /// when the caller is confined).
    pub fn sees_name(&self, enterprise: &str) -> bool {
        match &self.enterprises {
            None => true,
            Some(list) => list.iter().any(|e| e.as_str() == enterprise),
        }
    }
}

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The database failed.
    #[error("identity database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored value is malformed.
    #[error("identity database holds a bad value: {0}")]
    Bad(String),
    /// The request is invalid (names the field and why).
    #[error("{0}")]
    Invalid(String),
    /// A password breaks the policy.
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    /// The user does not exist.
    #[error("no user {0:?}")]
    NoSuchUser(String),
    /// The user exists already.
    #[error("user {0:?} exists already")]
    Exists(String),
    /// The OS random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Hash(String),
    /// A blocking task failed.
    #[error("background task: {0}")]
    Task(String),
}

/// Why a login (or a password change, which re-authenticates) was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Unknown user or wrong password (indistinguishable on purpose).
    #[error("wrong user name or password; {remaining} attempt(s) left before the account is locked")]
    BadCredentials {
        /// Failures left before lockout.
        remaining: u32,
    },
    /// The account is locked.
    #[error("the account is locked after repeated failed logins until {until_ms} (UTC ms)")]
    Locked {
        /// When it unlocks, UTC ms.
        until_ms: i64,
    },
    /// The password is right but expired (or was set by an administrator): change it first.
    #[error("the password has expired and must be changed (POST /api/v1/auth/password)")]
    PasswordExpired,
    /// The account is disabled.
    #[error("the account is disabled")]
    Disabled,
    /// Something else failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// A security event worth an alarm (the alarm engine subscribes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SecurityEvent {
    /// A user name reached the failure limit and is locked.
    LockedOut {
        /// The user name tried (existing or not).
        user: String,
        /// Client address of the last failure.
        client: String,
        /// Failures within the window.
        failures: u32,
        /// Locked until, UTC ms.
        until_ms: i64,
        /// When, UTC ms.
        ts_ms: i64,
    },
    /// One client address failed this often within the window, across any user names.
    RepeatedFailures {
        /// The client's IP address.
        client: String,
        /// Failures within the window.
        failures: u32,
        /// When, UTC ms.
        ts_ms: i64,
    },
}

/// Identity counters (exported on `/metrics`).
#[derive(Debug, Default)]
pub struct IdentityMetrics {
    /// Successful logins.
    pub logins_ok: AtomicU64,
    /// Failed logins (wrong name or password).
    pub logins_failed: AtomicU64,
    /// Logins refused because the account was locked.
    pub logins_locked: AtomicU64,
    /// Accounts locked.
    pub lockouts: AtomicU64,
    /// Security events broadcast.
    pub security_events: AtomicU64,
    /// Requests with a token that was unknown, expired or revoked.
    pub tokens_rejected: AtomicU64,
}

impl IdentityMetrics {
    /// Prometheus text lines.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("vigil_auth_logins_ok_total", g(&self.logins_ok)),
            ("vigil_auth_logins_failed_total", g(&self.logins_failed)),
            ("vigil_auth_logins_locked_total", g(&self.logins_locked)),
            ("vigil_auth_lockouts_total", g(&self.lockouts)),
            ("vigil_auth_security_events_total", g(&self.security_events)),
            ("vigil_auth_tokens_rejected_total", g(&self.tokens_rejected)),
        ]
        .iter()
        .map(|(n, v)| format!("{n} {v}\n"))
        .collect()
    }
}

/// A user as listed (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// User name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Enterprises the user is confined to; `None` means the whole park.
    pub enterprises: Option<Vec<String>>,
    /// Disabled accounts cannot log in.
    pub disabled: bool,
    /// Created, UTC ms.
    pub created_ms: i64,
    /// Password last set, UTC ms.
    pub password_changed_ms: i64,
    /// The password expires then (UTC ms); `None`: never.
    pub password_expires_at_ms: Option<i64>,
    /// The password was set by someone else and must be changed at the next login.
    pub must_change: bool,
    /// Locked until, UTC ms.
    pub locked_until_ms: Option<i64>,
    /// Last successful login, UTC ms.
    pub last_login_ms: Option<i64>,
}

/// A new user.
#[derive(Debug, Clone, Deserialize)]
pub struct NewUser {
    /// User name: 1 to 64 of `A-Z a-z 0-9 . _ @ -`.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Enterprises (required for enterprise users and field technicians, refused for
    /// administrators and auditors).
    #[serde(default)]
    pub enterprises: Option<Vec<String>>,
    /// Initial password.
    pub password: String,
    /// Whether the user must change it at the first login.
    #[serde(default)]
    pub must_change: bool,
}

/// Changes to a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// New role.
    #[serde(default)]
    pub role: Option<Role>,
    /// New enterprise scope: `null` for the whole park, a list to confine.
    #[serde(default, deserialize_with = "double_option")]
    pub enterprises: Option<Option<Vec<String>>>,
    /// Disable (true) or enable (false).
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Reset the password (the user must change it at the next login).
    #[serde(default)]
    pub password: Option<String>,
    /// Lift a lockout.
    #[serde(default)]
    pub unlock: Option<bool>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Vec<String>>>, D::Error> {
    Option::<Vec<String>>::deserialize(d).map(Some)
}

/// A logged-in session as the API answers it.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// The bearer token (only in the login answer; never stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Token expiry, UTC ms.
    pub expires_at_ms: i64,
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
    /// Enterprise scope (`null`: the whole park).
    pub enterprises: Option<Vec<EnterpriseId>>,
    /// When the password expires, UTC ms (`null`: never).
    pub password_expires_at_ms: Option<i64>,
    /// SHA-256 of the token (what logout revokes).
    #[serde(skip)]
    pub token_hash: String,
}

impl Session {
    /// The principal of this session.
    pub fn principal(&self) -> Principal {
        Principal { user: self.user.clone(), role: self.role, enterprises: self.enterprises.clone() }
    }
}

/// One security audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// Sequence (ascending with time).
    pub id: i64,
    /// When, UTC ms.
    pub ts_ms: i64,
    /// Who acted (the user name tried, for failed logins).
    pub actor: String,
    /// What: login_ok, login_failed, login_locked, locked_out, logout, password_changed,
    /// user_added, user_updated, bootstrap_admin.
    pub action: String,
    /// What it applies to (a user name).
    pub target: String,
    /// Details (JSON).
    pub detail: String,
    /// Client address.
    pub client: String,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        enterprises TEXT,
        password_hash TEXT NOT NULL,
        password_changed_ms INTEGER NOT NULL,
        must_change INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        failed_count INTEGER NOT NULL DEFAULT 0,
        first_failure_ms INTEGER,
        locked_until_ms INTEGER,
        last_login_ms INTEGER
    )",
    "CREATE TABLE IF NOT EXISTS password_history (
        user TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        replaced_ms INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS password_history_user ON password_history(user, replaced_ms)",
    "CREATE TABLE IF NOT EXISTS tokens (
        hash TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        revoked_ms INTEGER,
        client TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS tokens_user ON tokens(user)",
    "CREATE TABLE IF NOT EXISTS security_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        client TEXT NOT NULL
    )",
    "CREATE TRIGGER IF NOT EXISTS security_audit_no_update BEFORE UPDATE ON security_audit
        BEGIN SELECT RAISE(ABORT, 'security_audit is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS security_audit_no_delete BEFORE DELETE ON security_audit
        BEGIN SELECT RAISE(ABORT, 'security_audit is append-only'); END",
];

/// Opens (creating) `access.db` in the data directory: users, tokens, security audit, API-call log.
pub async fn open_access_db(data_dir: &Path) -> Result<SqlitePool, IdentityError> {
    std::fs::create_dir_all(data_dir).map_err(|e| IdentityError::Invalid(format!("{}: {e}", data_dir.display())))?;
    let opts = SqliteConnectOptions::new()
        .filename(data_dir.join("access.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    Ok(SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?)
}

/// When, by whom and from where an audited action happened.
struct At<'a> {
    now_ms: i64,
    actor: &'a str,
    client: &'a str,
}

/// Most failure records (per unknown user name, per client address) held in memory.
const MAX_TRACKED: usize = 10_000;
/// How long a validated token is trusted from memory before the database is asked again.
const SESSION_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most cached sessions.
const MAX_CACHED: usize = 100_000;

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    first_ms: i64,
    locked_until_ms: Option<i64>,
}

#[derive(Default)]
struct Memory {
    /// Failures of user names that do not exist (answered exactly like real ones).
    unknown: HashMap<String, Failures>,
    /// Failures per client address.
    clients: HashMap<String, Failures>,
    /// token hash -> (session, cached at).
    sessions: HashMap<String, (Session, Instant)>,
}

/// The identity store.
#[derive(Clone)]
pub struct Identity {
    pool: SqlitePool,
    cfg: Arc<AuthConfig>,
    memory: Arc<Mutex<Memory>>,
    events: broadcast::Sender<SecurityEvent>,
    metrics: Arc<IdentityMetrics>,
    /// A hash of a random password, verified against for unknown users so that a login costs the
    /// same whether the user exists or not.
    dummy_hash: Arc<String>,
}

fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

fn parse_enterprises(list: Option<Vec<String>>) -> Result<Option<Vec<EnterpriseId>>, IdentityError> {
    list.map(|l| {
        l.into_iter()
            .map(|e| {
                EnterpriseId::new(e.clone()).map_err(|err| IdentityError::Invalid(format!("enterprise {e:?}: {err}")))
            })
            .collect()
    })
    .transpose()
}

fn check_scope(role: Role, enterprises: &Option<Vec<EnterpriseId>>) -> Result<(), IdentityError> {
    match (role.scope_rule(), enterprises) {
        (ScopeRule::Required, None) => {
            Err(IdentityError::Invalid(format!("role {role} needs at least one enterprise")))
        }
        (ScopeRule::Required, Some(l)) if l.is_empty() => {
            Err(IdentityError::Invalid(format!("role {role} needs at least one enterprise")))
        }
        (ScopeRule::Forbidden, Some(_)) => {
            Err(IdentityError::Invalid(format!("role {role} covers the whole park; it takes no enterprises")))
        }
        (ScopeRule::Optional, Some(l)) if l.is_empty() => {
            Err(IdentityError::Invalid("an empty enterprise list; use null for the whole park".into()))
        }
        _ => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, IdentityError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| IdentityError::Task(e.to_string()))
}

impl Identity {
    /// Opens the identity tables in `pool` (see [`open_access_db`]).
    pub async fn open(pool: SqlitePool, cfg: AuthConfig) -> Result<Identity, IdentityError> {
        for stmt in SCHEMA {
            sqlx::query(*stmt).execute(&pool).await?;
        }
        let random = secret::new_token()?;
        let dummy_hash = blocking(move || secret::hash_password(&random)).await??;
        Ok(Identity {
            pool,
            cfg: Arc::new(cfg),
            memory: Arc::default(),
            events: broadcast::channel(256).0,
            metrics: Arc::default(),
            dummy_hash: Arc::new(dummy_hash),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<IdentityMetrics> {
        &self.metrics
    }

    /// Alarm-worthy security events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SecurityEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: SecurityEvent) {
        self.metrics.security_events.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(?event, "security event");
        // No subscriber is not an error: the counter and the log keep the event.
        let _ = self.events.send(event);
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        // A panic while holding this lock cannot leave the maps inconsistent (single inserts and
        // removals), so a poisoned lock is taken over.
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expires_at(&self, changed_ms: i64, must_change: bool) -> Option<i64> {
        if must_change {
            return Some(changed_ms);
        }
        (self.cfg.expiry_days > 0).then(|| changed_ms.saturating_add(i64::from(self.cfg.expiry_days) * 86_400_000))
    }

    async fn audit(
        &self,
        exec: impl sqlx::SqliteExecutor<'_>,
        at: &At<'_>,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), IdentityError> {
        sqlx::query(
            "INSERT INTO security_audit (ts_ms, actor, action, target, detail, client) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(at.now_ms)
        .bind(at.actor)
        .bind(action)
        .bind(target)
        .bind(detail.to_string())
        .bind(at.client)
        .execute(exec)
        .await?;
        Ok(())
    }

    /// Writes a security audit entry for an action taken outside identity (gateway keys revoked or
    /// added through the API), so auditors find every security-relevant change in one log.
    pub async fn record_security(
        &self,
        actor: &str,
        client: &str,
        action: &str,
        target: &str,
        detail: serde_json::Value,
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        self.audit(&self.pool, &At { now_ms, actor, client }, action, target, detail).await
    }

    /// How many users exist.
    pub async fn user_count(&self) -> Result<i64, IdentityError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?)
    }

    /// Adds a user; `actor` is recorded in the audit log.
    pub async fn add_user(&self, new: NewUser, actor: &str, client: &str, now_ms: i64) -> Result<User, IdentityError> {
        if !is_valid_name(&new.name) {
            return Err(IdentityError::Invalid(format!("user name {:?}: 1 to 64 of A-Z a-z 0-9 . _ @ -", new.name)));
        }
        let enterprises = parse_enterprises(new.enterprises)?;
        check_scope(new.role, &enterprises)?;
        self.cfg.check(&new.name, &new.password)?;
        let password = new.password;
        let hash = blocking(move || secret::hash_password(&password)).await??;
        let ents_json = enterprises.as_ref().map(|l| serde_json::json!(l).to_string());
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "INSERT INTO users (name, role, enterprises, password_hash, password_changed_ms, must_change, created_ms, created_by)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING",
        )
        .bind(&new.name)
        .bind(new.role.as_str())
        .bind(&ents_json)
        .bind(&hash)
        .bind(now_ms)
        .bind(new.must_change)
        .bind(now_ms)
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(IdentityError::Exists(new.name));
        }
        let detail =
            serde_json::json!({ "role": new.role, "enterprises": enterprises, "must_change": new.must_change });
        self.audit(&mut *tx, &At { now_ms, actor, client }, "user_added", &new.name, detail).await?;
        tx.commit().await?;
        self.user(&new.name).await?.ok_or(IdentityError::NoSuchUser(new.name))
    }

    /// Creates `admin` (park administrator) with a random password that must be changed at the
    /// first login, when no user exists; returns the password (to be shown once).
    pub async fn bootstrap_admin(&self, now_ms: i64) -> Result<Option<String>, IdentityError> {
        if self.user_count().await? > 0 {
            return Ok(None);
        }
        let password = self.generate_password("admin")?;
        let new = NewUser {
            name: "admin".into(),
            role: Role::ParkAdmin,
            enterprises: None,
            password: password.clone(),
            must_change: true,
        };
        self.add_user(new, "bootstrap", "local", now_ms).await?;
        Ok(Some(password))
    }

    /// A random password for `user` that satisfies the policy.
    pub fn generate_password(&self, user: &str) -> Result<String, IdentityError> {
        for _ in 0..16 {
            let p = self.cfg.generate().map_err(|e| IdentityError::Random(e.to_string()))?;
            if self.cfg.check(user, &p).is_ok() {
                return Ok(p);
            }
        }
        Err(IdentityError::Random("could not generate a compliant password".into()))
    }

    fn user_from_row(&self, r: &sqlx::sqlite::SqliteRow) -> Result<User, IdentityError> {
        let role: String = r.try_get("role")?;
        let ents: Option<String> = r.try_get("enterprises")?;
        let enterprises = ents
            .map(|e| {
                serde_json::from_str::<Vec<String>>(&e).map_err(|err| IdentityError::Bad(format!("enterprises: {err}")))
            })
            .transpose()?;
        let changed: i64 = r.try_get("password_changed_ms")?;
        let must_change: bool = r.try_get("must_change")?;
        Ok(User {
            name: r.try_get("name")?,
            role: Role::from_str(&role).map_err(|e| IdentityError::Bad(e.to_string()))?,
            enterprises,
            disabled: r.try_get("disabled")?,
            created_ms: r.try_get("created_ms")?,
            password_changed_ms: changed,
            password_expires_at_ms: self.expires_at(changed, must_change),
            must_change,
            locked_until_ms: r.try_get("locked_until_ms")?,
            last_login_ms: r.try_get("last_login_ms")?,
        })
    }

    /// One user.
    pub async fn user(&self, name: &str) -> Result<Option<User>, IdentityError> {
        let row = sqlx::query("SELECT * FROM users WHERE name = ?").bind(name).fetch_optional(&self.pool).await?;
        row.map(|r| self.user_from_row(&r)).transpose()
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>, IdentityError> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(|r| self.user_from_row(r)).collect()
    }

    /// Applies `patch` to user `name`; `actor` may not change their own role, scope or state.
    pub async fn update_user(
        &self,
        name: &str,
        patch: UserPatch,
        actor: &str,
        client: &str,
        now_ms: i64,
    ) -> Result<User, IdentityError> {
        let current = self.user(name).await?.ok_or_else(|| IdentityError::NoSuchUser(name.to_owned()))?;
        if actor == name && (patch.role.is_some() || patch.enterprises.is_some() || patch.disabled.is_some()) {
            return Err(IdentityError::Invalid(
                "you cannot change your own role, enterprises or state; another security administrator must".into(),
            ));
        }
        let role = patch.role.unwrap_or(current.role);
        let enterprises = match patch.enterprises.clone() {
            Some(e) => parse_enterprises(e)?,
            None => parse_enterprises(current.enterprises.clone())?,
        };
        check_scope(role, &enterprises)?;
        let new_hash = match &patch.password {
            Some(p) => {
                self.cfg.check(name, p)?;
                let p = p.clone();
                Some(blocking(move || secret::hash_password(&p)).await??)
            }
            None => None,
        };
        let ents_json = enterprises.as_ref().map(|l| serde_json::json!(l).to_string());
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET role = ?, enterprises = ?, disabled = COALESCE(?, disabled) WHERE name = ?")
            .bind(role.as_str())
            .bind(&ents_json)
            .bind(patch.disabled)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if let Some(h) = &new_hash {
            sqlx::query(
                "INSERT INTO password_history (user, password_hash, replaced_ms) SELECT name, password_hash, ? FROM users WHERE name = ?",
            )
            .bind(now_ms)
            .bind(name)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE users SET password_hash = ?, password_changed_ms = ?, must_change = 1 WHERE name = ?")
                .bind(h)
                .bind(now_ms)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        if patch.unlock == Some(true) {
            sqlx::query(
                "UPDATE users SET locked_until_ms = NULL, failed_count = 0, first_failure_ms = NULL WHERE name = ?",
            )
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        // Anything but an unlock ends the user's sessions: they log in again under the new terms.
        let ends_sessions =
            patch.role.is_some() || patch.enterprises.is_some() || patch.disabled == Some(true) || new_hash.is_some();
        if ends_sessions {
            sqlx::query("UPDATE tokens SET revoked_ms = ? WHERE user = ? AND revoked_ms IS NULL")
                .bind(now_ms)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        let detail = serde_json::json!({
            "role": patch.role, "enterprises": patch.enterprises, "disabled": patch.disabled,
            "password_reset": new_hash.is_some(), "unlock": patch.unlock,
        });
        self.audit(&mut *tx, &At { now_ms, actor, client }, "user_updated", name, detail).await?;
        tx.commit().await?;
        self.forget_sessions_of(name);
        self.user(name).await?.ok_or_else(|| IdentityError::NoSuchUser(name.to_owned()))
    }

    fn forget_sessions_of(&self, user: &str) {
        self.memory().sessions.retain(|_, (s, _)| s.user != user);
    }

    /// Records a failure of `user` from `client`; returns the failures left before lockout, or
    /// the lockout it caused.
    async fn fail(&self, user: &str, exists: bool, client: &str, now_ms: i64) -> Result<LoginError, IdentityError> {
        self.metrics.logins_failed.fetch_add(1, Ordering::Relaxed);
        let window_ms = i64::try_from(self.cfg.failure_window_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let lockout_ms = i64::try_from(self.cfg.lockout_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let bump = |f: Option<Failures>| -> Failures {
            match f {
                Some(f) if f.first_ms > now_ms.saturating_sub(window_ms) => Failures { count: f.count + 1, ..f },
                _ => Failures { count: 1, first_ms: now_ms, locked_until_ms: None },
            }
        };
        // Per address, not per connection: the source port changes with every connection.
        let host = client.parse::<std::net::SocketAddr>().map_or_else(|_| client.to_owned(), |a| a.ip().to_string());
        let client_alert = {
            let mut m = self.memory();
            if m.clients.len() >= MAX_TRACKED && !m.clients.contains_key(&host) {
                m.clients.clear();
            }
            let f = bump(m.clients.get(&host).copied());
            let alert = f.count >= self.cfg.client_alert_failures;
            // After an alert the count starts again, so a continuing attack alerts again.
            m.clients.insert(host.clone(), if alert { Failures { count: 0, ..f } } else { f });
            alert.then_some(f.count)
        };
        if let Some(failures) = client_alert {
            self.emit(SecurityEvent::RepeatedFailures { client: host, failures, ts_ms: now_ms });
        }
        let failures = if exists {
            let count: i64 = sqlx::query_scalar(
                "UPDATE users SET
                    failed_count = CASE WHEN first_failure_ms IS NULL OR first_failure_ms <= ? THEN 1 ELSE failed_count + 1 END,
                    first_failure_ms = CASE WHEN first_failure_ms IS NULL OR first_failure_ms <= ? THEN ? ELSE first_failure_ms END
                 WHERE name = ? RETURNING failed_count",
            )
            .bind(now_ms.saturating_sub(window_ms))
            .bind(now_ms.saturating_sub(window_ms))
            .bind(now_ms)
            .bind(user)
            .fetch_one(&self.pool)
            .await?;
            u32::try_from(count).unwrap_or(u32::MAX)
        } else {
            let mut m = self.memory();
            if m.unknown.len() >= MAX_TRACKED && !m.unknown.contains_key(user) {
                m.unknown.clear();
            }
            let f = bump(m.unknown.get(user).copied());
            m.unknown.insert(user.to_owned(), f);
            f.count
        };
        self.audit(
            &self.pool,
            &At { now_ms, actor: user, client },
            "login_failed",
            user,
            serde_json::json!({ "failures": failures }),
        )
        .await?;
        if failures < self.cfg.max_failures {
            return Ok(LoginError::BadCredentials { remaining: self.cfg.max_failures - failures });
        }
        let until_ms = now_ms.saturating_add(lockout_ms);
        if exists {
            sqlx::query(
                "UPDATE users SET locked_until_ms = ?, failed_count = 0, first_failure_ms = NULL WHERE name = ?",
            )
            .bind(until_ms)
            .bind(user)
            .execute(&self.pool)
            .await?;
        } else {
            let mut m = self.memory();
            m.unknown.insert(user.to_owned(), Failures { count: 0, first_ms: now_ms, locked_until_ms: Some(until_ms) });
        }
        self.metrics.lockouts.fetch_add(1, Ordering::Relaxed);
        self.audit(
            &self.pool,
            &At { now_ms, actor: user, client },
            "locked_out",
            user,
            serde_json::json!({ "failures": failures, "until_ms": until_ms }),
        )
        .await?;
        self.emit(SecurityEvent::LockedOut {
            user: user.to_owned(),
            client: client.to_owned(),
            failures,
            until_ms,
            ts_ms: now_ms,
        });
        Ok(LoginError::Locked { until_ms })
    }

    /// Checks `user`'s password, honouring lockout; returns the user on success. Failures are
    /// counted and audited; an expired password is reported after the password was verified.
    async fn check_password(&self, user: &str, password: &str, client: &str, now_ms: i64) -> Result<User, LoginError> {
        let row = sqlx::query("SELECT * FROM users WHERE name = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await
            .map_err(IdentityError::from)?;
        let (found, hash) = match &row {
            Some(r) => {
                (Some(self.user_from_row(r)?), r.try_get::<String, _>("password_hash").map_err(IdentityError::from)?)
            }
            None => (None, self.dummy_hash.to_string()),
        };
        let locked = match &found {
            Some(u) => u.locked_until_ms.filter(|t| *t > now_ms),
            None => self.memory().unknown.get(user).and_then(|f| f.locked_until_ms).filter(|t| *t > now_ms),
        };
        if let Some(until_ms) = locked {
            self.metrics.logins_locked.fetch_add(1, Ordering::Relaxed);
            self.audit(
                &self.pool,
                &At { now_ms, actor: user, client },
                "login_locked",
                user,
                serde_json::json!({ "until_ms": until_ms }),
            )
            .await?;
            return Err(LoginError::Locked { until_ms });
        }
        let pw = password.to_owned();
        let ok = blocking(move || secret::verify_password(&pw, &hash)).await?;
        let Some(u) = found.filter(|_| ok) else {
            return Err(self.fail(user, row.is_some(), client, now_ms).await?);
        };
        if u.disabled {
            self.audit(&self.pool, &At { now_ms, actor: user, client }, "login_disabled", user, serde_json::json!({}))
                .await?;
            return Err(LoginError::Disabled);
        }
        sqlx::query(
            "UPDATE users SET failed_count = 0, first_failure_ms = NULL, locked_until_ms = NULL WHERE name = ?",
        )
        .bind(user)
        .execute(&self.pool)
        .await
        .map_err(IdentityError::from)?;
        Ok(u)
    }

    /// Logs `user` in from `client`: a new session token, or why not.
    pub async fn login(&self, user: &str, password: &str, client: &str, now_ms: i64) -> Result<Session, LoginError> {
        let u = self.check_password(user, password, client, now_ms).await?;
        if u.password_expires_at_ms.is_some_and(|t| t <= now_ms) {
            self.audit(
                &self.pool,
                &At { now_ms, actor: user, client },
                "login_password_expired",
                user,
                serde_json::json!({}),
            )
            .await?;
            return Err(LoginError::PasswordExpired);
        }
        Ok(self.issue(&u, client, now_ms).await?)
    }

    async fn issue(&self, u: &User, client: &str, now_ms: i64) -> Result<Session, IdentityError> {
        let token = secret::new_token()?;
        let hash = secret::token_hash(&token);
        let ttl_ms = i64::try_from(self.cfg.token_ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        let expires = now_ms.saturating_add(ttl_ms);
        let mut tx = self.pool.begin().await?;
        // Expired tokens are no use to anyone: they go when a new one comes.
        sqlx::query("DELETE FROM tokens WHERE expires_ms < ?")
            .bind(now_ms.saturating_sub(86_400_000))
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO tokens (hash, user, created_ms, expires_ms, client) VALUES (?, ?, ?, ?, ?)")
            .bind(&hash)
            .bind(&u.name)
            .bind(now_ms)
            .bind(expires)
            .bind(client)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE users SET last_login_ms = ? WHERE name = ?")
            .bind(now_ms)
            .bind(&u.name)
            .execute(&mut *tx)
            .await?;
        self.audit(
            &mut *tx,
            &At { now_ms, actor: &u.name, client },
            "login_ok",
            &u.name,
            serde_json::json!({ "expires_ms": expires }),
        )
        .await?;
        tx.commit().await?;
        self.metrics.logins_ok.fetch_add(1, Ordering::Relaxed);
        Ok(Session {
            token: Some(token),
            expires_at_ms: expires,
            user: u.name.clone(),
            role: u.role,
            enterprises: parse_enterprises(u.enterprises.clone())?,
            password_expires_at_ms: u.password_expires_at_ms,
            token_hash: hash,
        })
    }

    /// The session a token belongs to, if it is known, unexpired, unrevoked and its user enabled.
    pub async fn authenticate(&self, token: &str, now_ms: i64) -> Result<Option<Session>, IdentityError> {
        let hash = secret::token_hash(token);
        {
            let m = self.memory();
            if let Some((s, at)) = m.sessions.get(&hash)
                && at.elapsed() < SESSION_CACHE_TTL
                && s.expires_at_ms > now_ms
            {
                return Ok(Some(s.clone()));
            }
        }
        let row = sqlx::query(
            "SELECT u.*, t.expires_ms AS token_expires_ms FROM tokens t JOIN users u ON u.name = t.user
             WHERE t.hash = ? AND t.revoked_ms IS NULL AND t.expires_ms > ? AND u.disabled = 0",
        )
        .bind(&hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            self.metrics.tokens_rejected.fetch_add(1, Ordering::Relaxed);
            self.memory().sessions.remove(&hash);
            return Ok(None);
        };
        let u = self.user_from_row(&row)?;
        let session = Session {
            token: None,
            expires_at_ms: row.try_get("token_expires_ms")?,
            user: u.name,
            role: u.role,
            enterprises: parse_enterprises(u.enterprises)?,
            password_expires_at_ms: u.password_expires_at_ms,
            token_hash: hash.clone(),
        };
        let mut m = self.memory();
        if m.sessions.len() >= MAX_CACHED {
            m.sessions.clear();
        }
        m.sessions.insert(hash, (session.clone(), Instant::now()));
        Ok(Some(session))
    }

    /// Ends a session.
    pub async fn logout(&self, session: &Session, client: &str, now_ms: i64) -> Result<(), IdentityError> {
        self.memory().sessions.remove(&session.token_hash);
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE tokens SET revoked_ms = ? WHERE hash = ? AND revoked_ms IS NULL")
            .bind(now_ms)
            .bind(&session.token_hash)
            .execute(&mut *tx)
            .await?;
        self.audit(
            &mut *tx,
            &At { now_ms, actor: &session.user, client },
            "logout",
            &session.user,
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Changes `user`'s password after verifying the old one (failures count towards lockout;
    /// this is how an expired password is replaced); ends every session of the user and returns a
    /// new one.
    pub async fn change_password(
        &self,
        user: &str,
        old: &str,
        new: &str,
        client: &str,
        now_ms: i64,
    ) -> Result<Session, LoginError> {
        let u = self.check_password(user, old, client, now_ms).await?;
        self.cfg.check(user, new).map_err(IdentityError::from)?;
        if old == new {
            return Err(IdentityError::Policy(PolicyViolation::Reused { history: self.cfg.history.max(1) }).into());
        }
        if self.cfg.history > 0 {
            let previous: Vec<String> = sqlx::query_scalar(
                "SELECT password_hash FROM password_history WHERE user = ? ORDER BY replaced_ms DESC LIMIT ?",
            )
            .bind(user)
            .bind(i64::try_from(self.cfg.history).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(IdentityError::from)?;
            let candidate = new.to_owned();
            let reused = blocking(move || previous.iter().any(|h| secret::verify_password(&candidate, h))).await?;
            if reused {
                return Err(IdentityError::Policy(PolicyViolation::Reused { history: self.cfg.history }).into());
            }
        }
        let candidate = new.to_owned();
        let hash = blocking(move || secret::hash_password(&candidate)).await??;
        let mut tx = self.pool.begin().await.map_err(IdentityError::from)?;
        sqlx::query(
            "INSERT INTO password_history (user, password_hash, replaced_ms) SELECT name, password_hash, ? FROM users WHERE name = ?",
        )
        .bind(now_ms)
        .bind(user)
        .execute(&mut *tx)
        .await
        .map_err(IdentityError::from)?;
        sqlx::query("UPDATE users SET password_hash = ?, password_changed_ms = ?, must_change = 0 WHERE name = ?")
            .bind(&hash)
            .bind(now_ms)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        sqlx::query("UPDATE tokens SET revoked_ms = ? WHERE user = ? AND revoked_ms IS NULL")
            .bind(now_ms)
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        self.audit(&mut *tx, &At { now_ms, actor: user, client }, "password_changed", user, serde_json::json!({}))
            .await?;
        tx.commit().await.map_err(IdentityError::from)?;
        self.forget_sessions_of(user);
        let u = self.user(&u.name).await?.ok_or_else(|| IdentityError::NoSuchUser(user.to_owned()))?;
        Ok(self.issue(&u, client, now_ms).await?)
    }

    /// Security audit records, newest first: those with `id < before` (all when None), at most `limit`.
    pub async fn audit_log(
        &self,
        before: Option<i64>,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, IdentityError> {
        let rows = sqlx::query(
            "SELECT * FROM security_audit WHERE id < ? AND ts_ms >= ? AND ts_ms < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(from_ms.unwrap_or(i64::MIN))
        .bind(to_ms.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    ts_ms: r.try_get("ts_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: r.try_get("detail")?,
                    client: r.try_get("client")?,
                })
            })
            .collect()
    }
}
