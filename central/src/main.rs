//! `vigil-central`: the park aggregator binary: `run` (ingest, WAL, historian, query API),
//! `gateway add|revoke|list|sync` (the registry), `user add|list|disable|enable` (API users), `keygen` and
//! `pubkey` (central's signing identity), `pki init|issue-gateway|issue-server` (certificates for the
//! embedded broker, gateways and the API's HTTPS), `audit verify` (the alarm audit chain).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vigil_central::alarms::{AlarmConfig, AlarmEngine, Limits};
use vigil_central::config::Config;
use vigil_central::ingest::{self, Core, now_ms};
use vigil_central::store::Registry;
use vigil_central::swinging_door::DoorPolicy;
use vigil_common::{EnterpriseId, GatewayId, PublicKey};

/// Vigil central aggregator.
#[derive(Parser)]
#[command(version, about = "Vigil central aggregator: ingest, write-ahead log, historian and its query API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the aggregator.
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the gateway registry.
    Gateway {
        /// Configuration file (TOML); its data directory holds the registry.
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        action: GatewayCmd,
    },
    /// Manage API users.
    User {
        /// Configuration file (TOML); its data directory holds the users.
        #[arg(long)]
        config: PathBuf,
        #[command(subcommand)]
        action: UserCmd,
    },
    /// Generate central's signing key (mode 0600) and print the public key gateways must trust.
    Keygen {
        /// Where to write the key; an existing file is never replaced.
        #[arg(long, default_value = "central.key")]
        out: PathBuf,
    },
    /// Print the public key of an existing key file.
    Pubkey {
        /// The key file.
        #[arg(long, default_value = "central.key")]
        key: PathBuf,
    },
    /// The alarm audit log.
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// Certificates: the park CA, the embedded broker's and central's, gateways', the API's HTTPS.
    Pki {
        #[command(subcommand)]
        action: PkiCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the hash chain of the alarm audit log; exit 1 naming the first bad record.
    Verify {
        /// Configuration file (TOML); its data directory holds `alarms.db`.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create the park CA, the embedded broker's server certificate and central's client
    /// certificate in DIR (existing files are never replaced).
    Init {
        /// Directory for the files (the `[broker]` defaults expect `pki` next to the configuration).
        #[arg(long)]
        dir: PathBuf,
        /// Common name of central's client certificate (`[broker] central_cn`).
        #[arg(long, default_value = "vigil-central")]
        central_cn: String,
        /// Extra DNS name or IP address gateways use to reach central (repeatable); `localhost`,
        /// `127.0.0.1` and `::1` are always included.
        #[arg(long)]
        san: Vec<String>,
    },
    /// Issue a gateway's client certificate (CN = gateway id) into DIR/gateways/ID/ with the CA.
    IssueGateway {
        /// Gateway id.
        id: String,
        /// The directory `pki init` wrote.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a server certificate signed by the park CA into DIR/NAME.pem and DIR/NAME.key, by
    /// default the API's for HTTPS (`[api] tls_cert_file`/`tls_key_file`).
    IssueServer {
        /// The directory `pki init` wrote.
        #[arg(long)]
        dir: PathBuf,
        /// Name of the files (and CN vigil-NAME).
        #[arg(long, default_value = vigil_central::broker::pki::API_NAME)]
        name: String,
        /// DNS name or IP address clients (browsers, gateways) use to reach central (repeatable);
        /// `localhost`, `127.0.0.1` and `::1` are always included.
        #[arg(long)]
        san: Vec<String>,
    },
}

#[derive(Subcommand)]
enum GatewayCmd {
    /// Register a gateway and its public key (run again with another key to add a second key).
    Add {
        /// Gateway id (equals its certificate CN and its topic level).
        id: String,
        /// Enterprise the gateway belongs to.
        #[arg(long)]
        enterprise: String,
        /// The gateway's public key, as `vigil-edge pubkey` prints it (`ed25519:<hex>`).
        #[arg(long)]
        key: String,
    },
    /// Revoke all keys of a gateway, or one key.
    Revoke {
        /// Gateway id.
        id: String,
        /// Key id (hex) to revoke; all keys when absent.
        #[arg(long)]
        key_id: Option<String>,
    },
    /// List gateways, keys, last seen and reported drops (JSON lines).
    List,
    /// Apply the configuration's gateways file now (central also applies it when it starts).
    Sync,
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; the password is read from standard input (one line) unless --generate.
    Add {
        /// User name.
        name: String,
        /// Role: park_admin, security_admin, auditor, operator, enterprise_user, field_technician.
        #[arg(long)]
        role: String,
        /// Enterprise the user is confined to (repeat for several; required for enterprise users
        /// and field technicians).
        #[arg(long)]
        enterprise: Vec<String>,
        /// Generate a compliant password and print it on standard output.
        #[arg(long)]
        generate: bool,
        /// The user must change the password at the first login.
        #[arg(long)]
        must_change: bool,
    },
    /// List users (JSON lines).
    List,
    /// Disable a user (their sessions end at once).
    Disable {
        /// User name.
        name: String,
    },
    /// Enable a disabled user.
    Enable {
        /// User name.
        name: String,
    },
}

async fn identity(config: &Path) -> Result<vigil_central::identity::Identity> {
    let cfg = Config::load(config)?;
    let pool = vigil_central::identity::open_access_db(&cfg.data_dir)
        .await
        .with_context(|| format!("opening access.db in {}", cfg.data_dir.display()))?;
    Ok(vigil_central::identity::Identity::open(pool, cfg.auth.clone()).await?)
}

async fn user_cmd(config: &Path, action: UserCmd) -> Result<()> {
    use vigil_central::identity::{NewUser, Role, UserPatch};
    let id = identity(config).await?;
    let actor = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
    match action {
        UserCmd::Add { name, role, enterprise, generate, must_change } => {
            let role: Role = role.parse()?;
            let password = if generate {
                id.generate_password(&name)?
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            };
            let enterprises = (!enterprise.is_empty()).then_some(enterprise);
            let new = NewUser { name: name.clone(), role, enterprises, password: password.clone(), must_change };
            let user = id.add_user(new, &actor, "local", now_ms()).await?;
            if generate {
                println!("{password}");
            }
            eprintln!("added user {} ({})", user.name, user.role);
        }
        UserCmd::List => {
            for u in id.users().await? {
                println!("{}", serde_json::to_string(&u)?);
            }
        }
        UserCmd::Disable { name } => {
            let patch = UserPatch { disabled: Some(true), ..UserPatch::default() };
            id.update_user(&name, patch, &actor, "local", now_ms()).await?;
            eprintln!("disabled user {name}; their sessions ended");
        }
        UserCmd::Enable { name } => {
            let patch = UserPatch { disabled: Some(false), ..UserPatch::default() };
            id.update_user(&name, patch, &actor, "local", now_ms()).await?;
            eprintln!("enabled user {name}");
        }
    }
    Ok(())
}

/// Creates the first administrator when no user exists: its password goes once to stderr and to
/// `data_dir/initial-admin-password` (owner-only), and must be changed at the first login.
async fn bootstrap_admin(id: &vigil_central::identity::Identity, data_dir: &Path) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Some(password) = id.bootstrap_admin(now_ms()).await? else { return Ok(()) };
    let path = data_dir.join("initial-admin-password");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(f, "{password}")?;
    eprintln!(
        "created user admin (park_admin) with password {password} (also in {}); it must be changed at the first login",
        path.display()
    );
    Ok(())
}

/// Applies the gateways file at `path` to the registry.
async fn sync_gateways(reg: &Registry, path: &Path) -> Result<vigil_central::store::SyncReport> {
    let file = vigil_central::store::GatewaysFile::load(path)?;
    reg.sync(&file, now_ms()).await.with_context(|| format!("applying {}", path.display()))
}

async fn registry(config: &Path) -> Result<Registry> {
    let cfg = Config::load(config)?;
    Registry::open(&cfg.data_dir).await.with_context(|| format!("opening the registry in {}", cfg.data_dir.display()))
}

/// The configured alarm definitions (built-in defaults without a file).
fn alarm_definitions(cfg: &Config) -> Result<AlarmConfig> {
    Ok(match &cfg.alarms {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            AlarmConfig::from_toml(&path.display().to_string(), &text)?
        }
        None => AlarmConfig::from_toml("(built-in defaults)", "")?,
    })
}

/// The limits of a point whose crossings swinging-door compression must keep.
fn limit_values(l: &Limits) -> Vec<f64> {
    [l.hh, l.h, l.l, l.ll].into_iter().flatten().collect()
}

/// Keeps the compression policy's alarm limits equal to the engine's (threshold changes are approved
/// at run time); a no-op when every point is stored lossless.
async fn refresh_door_limits(
    engine: Arc<tokio::sync::Mutex<AlarmEngine>>,
    points: Vec<String>,
    policy: Arc<DoorPolicy>,
) {
    if policy.is_lossless() {
        return;
    }
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    loop {
        every.tick().await;
        let engine = engine.lock().await;
        for p in &points {
            if let Some(l) = engine.limits(p) {
                policy.set_limits(p, limit_values(&l));
            }
        }
    }
}

/// `alarms.db` in the data directory.
async fn alarm_pool(cfg: &Config) -> Result<sqlx::SqlitePool> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let options = SqliteConnectOptions::new()
        .filename(cfg.data_dir.join("alarms.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    SqlitePoolOptions::new().max_connections(2).connect_with(options).await.context("opening alarms.db")
}

/// The alarm engine on `alarms.db` in the data directory with `definitions`, the notification
/// settings of the same file, and the pool.
async fn open_alarm_engine(
    cfg: &Config,
    definitions: AlarmConfig,
) -> Result<(AlarmEngine, vigil_central::notify::NotifyConfig, sqlx::SqlitePool)> {
    let notify = definitions.notify.clone();
    let pool = alarm_pool(cfg).await?;
    let mut engine = AlarmEngine::open_sqlite(pool.clone(), definitions).await?;
    // Gateway, device and undefined-enterprise point alarms take their gateway's enterprise.
    let reg = Registry::open(&cfg.data_dir).await.context("opening the registry")?;
    for g in reg.list().await? {
        engine.set_gateway_enterprise(&g.id, &g.enterprise);
    }
    Ok((engine, notify, pool))
}

/// `audit verify`: walks the alarm audit chain.
async fn audit_verify(config: &Path) -> Result<bool> {
    use vigil_central::alarms::AlarmStore;
    let cfg = Config::load(config)?;
    let store = vigil_central::alarms::SqliteStore::new(alarm_pool(&cfg).await?);
    store.init().await?;
    let records = store.audit_records().await?;
    match vigil_central::alarms::verify_chain(&records, None) {
        Ok(n) => {
            println!("audit chain intact: {n} records");
            Ok(true)
        }
        Err(e) => {
            println!("audit chain BROKEN: {e}");
            Ok(false)
        }
    }
}

/// The API's TLS acceptor when `[api]` names a certificate and key; without, a warning when the
/// plain-HTTP listener is reachable from other hosts.
fn api_tls(api: &vigil_central::config::ApiConfig) -> Result<Option<tokio_rustls::TlsAcceptor>> {
    match (&api.tls_cert_file, &api.tls_key_file) {
        (Some(cert), Some(key)) => {
            let acceptor = vigil_central::api::tls::acceptor(cert, key).with_context(|| {
                format!(
                    "api.tls_cert_file/api.tls_key_file: loading the API's certificate (make one with `vigil-central \
                     pki issue-server --dir {}`)",
                    cert.parent().unwrap_or(Path::new(".")).display()
                )
            })?;
            Ok(Some(acceptor))
        }
        _ => {
            if !api.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %api.listen,
                    "api: plain HTTP on a non-loopback address: passwords and session tokens travel in clear; \
                     set [api] tls_cert_file and tls_key_file (`vigil-central pki issue-server`)"
                );
            }
            Ok(None)
        }
    }
}

async fn run(config: &Path) -> Result<()> {
    let mut cfg = Config::load(config)?;
    if let Some(path) = &cfg.gateways {
        let reg = Registry::open(&cfg.data_dir).await.context("opening the registry")?;
        let r = sync_gateways(&reg, path).await?;
        tracing::info!(file = %path.display(), added = r.keys_added, revoked = r.keys_revoked, "gateways file applied");
    }
    // The embedded broker first: ingest connects to it over loopback TLS like to any broker.
    let broker = match &cfg.broker {
        Some(b) => {
            let registry = Registry::open(&cfg.data_dir).await.context("opening the registry for the broker")?;
            let reload = std::time::Duration::from_secs(cfg.ingest.registry_reload_s.max(1));
            let broker = vigil_central::broker::Broker::start(b, &cfg.data_dir, registry, reload).await?;
            cfg.mqtt.port = broker.local_addr().port();
            // Enrolment advertises the port the broker is bound to (also when configured as 0).
            cfg.api.enrolment.broker_port = broker.local_addr().port();
            Some(broker)
        }
        None => None,
    };
    let (stop_feed_tx, stop_feed) = tokio::sync::watch::channel(false);
    let key = vigil_common::keyfile::load(&cfg.key_file).context("reading the central key")?;
    let definitions = alarm_definitions(&cfg)?;
    let door = Arc::new(DoorPolicy::new(cfg.historian.swinging_door.clone()));
    for d in &definitions.point {
        door.set_limits(&d.id, limit_values(&d.limits()));
    }
    let points: Vec<String> = definitions.point.iter().map(|d| d.id.clone()).collect();
    let core = Core::open_with_compression(cfg.clone(), key.clone(), door.clone())
        .await
        .context("opening the data directory")?;
    let (engine, notify, alarm_pool) = open_alarm_engine(&cfg, definitions).await?;
    let hub = vigil_central::alarms::live::Hub::new(now_ms());
    tokio::spawn(hub.clone().run(engine.subscribe()));
    let notifier = if notify.rule.is_empty() {
        None
    } else {
        let n = vigil_central::notify::Notifier::new(notify, alarm_pool).await.context("notifications")?;
        Some((n, engine.subscribe()))
    };
    let engine = Arc::new(tokio::sync::Mutex::new(engine));
    tokio::spawn(refresh_door_limits(engine.clone(), points, door));
    let feed_metrics = Arc::new(vigil_central::alarms::feed::FeedMetrics::default());
    let feed = tokio::spawn(vigil_central::alarms::feed::run(
        engine.clone(),
        core.streams.alarms.subscribe(),
        core.streams.telemetry.subscribe(),
        core.streams.states.subscribe(),
        feed_metrics.clone(),
        stop_feed.clone(),
    ));
    let notify_metrics = notifier.as_ref().map(|(n, _)| n.metrics());
    if let Some((n, changes)) = notifier {
        tokio::spawn(n.run(changes, engine.clone(), stop_feed.clone()));
    }
    let mut state = vigil_central::api::ApiState::open(
        &cfg.data_dir,
        cfg.api.clone(),
        cfg.auth.clone(),
        core.historian.clone(),
        core.metrics.clone(),
        Some(engine.clone()),
    )
    .await
    .context("opening the API's databases")?;
    state.alarm_services =
        Some(Arc::new(vigil_central::api::alarms::AlarmServices { hub, feed: feed_metrics, notify: notify_metrics }));
    state.broker = broker.as_ref().map(|b| b.metrics());
    state.evidence = Some(core.evidence.clone());
    state.catalogues = core.catalogues.clone();
    // The MQTT client first (it queues until its event loop runs): configuration pushes send with it.
    let opts = ingest::mqtt_options(&cfg.mqtt).context("MQTT options")?;
    let (client, eventloop) = rumqttc::AsyncClient::new(opts, 8192);
    let pushes = vigil_central::config_push::ConfigPushes::new(&state.registry, key.clone(), Some(client.clone()));
    tokio::spawn(pushes.clone().follow(state.registry.clone(), core.streams.states.subscribe()));
    let updates = vigil_central::updates::Updates::open(
        &cfg.data_dir,
        &state.registry,
        key.clone(),
        Some(client.clone()),
        pushes.command_ids(),
    )
    .await
    .context("opening the update store")?;
    tokio::spawn(updates.clone().follow(state.registry.clone(), core.streams.states.subscribe()));
    state.updates = Some(updates);
    state.pushes = Some(pushes);
    bootstrap_admin(&state.identity, &cfg.data_dir).await?;
    tokio::spawn(state.gateways.clone().follow(core.streams.states.subscribe()));
    let call_log = state.calls.clone();
    let listen = cfg.api.listen;
    let acceptor = api_tls(&cfg.api)?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the API to {listen}"))?;
    tokio::spawn(async move {
        let served = match acceptor {
            Some(acceptor) => vigil_central::api::tls::serve(listener, state, acceptor).await,
            None => vigil_central::api::serve(listener, state).await,
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "api server stopped");
        }
    });
    let (tx, rx) = ingest::lanes(4096);
    tokio::spawn(ingest::mqtt_loop(client.clone(), eventloop, tx, core.metrics.clone()));
    tracing::info!(api = %listen, broker = %format!("{}:{}", cfg.mqtt.host, cfg.mqtt.port), "vigil-central running");
    let shutdown = async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: final checkpoint");
    };
    ingest::run(core, client, rx, shutdown).await.context("ingest stopped")?;
    let _ = stop_feed_tx.send(true);
    // An orderly stop writes the API calls still queued (bounded: a stuck database cannot hold it).
    if tokio::time::timeout(std::time::Duration::from_secs(5), call_log.flush()).await.is_err() {
        tracing::error!("api-call log: queued records not written within 5 s of shutdown");
    }
    let _ = feed.await;
    if let Some(b) = broker {
        b.stop().await;
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // rumqttc is built without a crypto provider: install ring first thing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cli.command {
        Command::Run { config } => rt.block_on(run(&config))?,
        Command::Gateway { config, action } => rt.block_on(async {
            let reg = registry(&config).await?;
            match action {
                GatewayCmd::Add { id, enterprise, key } => {
                    let id = GatewayId::new(id)?;
                    let ent = EnterpriseId::new(enterprise)?;
                    let key = PublicKey::from_text(&key).context("--key")?;
                    reg.add(&id, &ent, &key, now_ms()).await?;
                    eprintln!("registered gateway {id} ({ent}) with key {}", key.key_id());
                }
                GatewayCmd::Revoke { id, key_id } => {
                    let id = GatewayId::new(id)?;
                    let n = reg.revoke(&id, key_id.as_deref(), now_ms()).await?;
                    eprintln!("revoked {n} key(s) of gateway {id}; a running central refuses them within its registry reload period");
                }
                GatewayCmd::Sync => {
                    let cfg = Config::load(&config)?;
                    let Some(path) = &cfg.gateways else {
                        anyhow::bail!("{} names no gateways file (`gateways = \"gateways.toml\"`)", config.display());
                    };
                    let r = sync_gateways(&reg, path).await?;
                    eprintln!("{}: {} key(s) added, {} revoked", path.display(), r.keys_added, r.keys_revoked);
                }
                GatewayCmd::List => {
                    for g in reg.list().await? {
                        println!("{}", serde_json::to_string(&g)?);
                    }
                }
            }
            anyhow::Ok(())
        })?,
        Command::User { config, action } => rt.block_on(user_cmd(&config, action))?,
        Command::Keygen { out } => {
            let key = vigil_common::keyfile::create(&out).context("creating the central key")?;
            println!("{}", key.public_key().to_text());
            eprintln!("wrote {} (owner-only); configure gateways to trust the public key above", out.display());
        }
        Command::Audit { action: AuditCmd::Verify { config } } => {
            if !rt.block_on(audit_verify(&config))? {
                std::process::exit(1);
            }
        }
        Command::Pki { action: PkiCmd::Init { dir, central_cn, san } } => {
            for f in vigil_central::broker::pki::init(&dir, &central_cn, &san)? {
                eprintln!("wrote {}", f.display());
            }
            eprintln!("keep ca.key offline if you can; issue gateway certificates with `vigil-central pki issue-gateway ID --dir {}`", dir.display());
        }
        Command::Pki { action: PkiCmd::IssueServer { dir, name, san } } => {
            let (cert, key) = vigil_central::broker::pki::issue_server(&dir, &name, &san)?;
            println!("{}", cert.display());
            eprintln!(
                "wrote {} and {} (owner-only); for HTTPS on the API set [api] tls_cert_file and tls_key_file to them; \
                 browsers and gateways (`vigil-edge enroll --ca`) trust {}",
                cert.display(),
                key.display(),
                dir.join(vigil_central::broker::pki::CA_CERT).display()
            );
        }
        Command::Pki { action: PkiCmd::IssueGateway { id, dir } } => {
            let out = vigil_central::broker::pki::issue_gateway(&dir, &id)?;
            println!("{}", out.display());
            eprintln!("gateway {id}: ca.pem, {id}.pem and {id}.key in {} (for [uplink.tls] of its vigil-edge)", out.display());
        }
        Command::Pubkey { key } => {
            let key = vigil_common::keyfile::load(&key).context("reading the central key")?;
            println!("{}", key.public_key().to_text());
        }
    }
    Ok(())
}
