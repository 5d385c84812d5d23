//! `vigil-central`: the park aggregator binary: `run` (ingest, WAL, historian, query API),
//! `gateway add|revoke|list` (the registry), `keygen` and `pubkey` (central's signing identity).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vigil_central::config::Config;
use vigil_central::ingest::{self, Core, now_ms};
use vigil_central::store::Registry;
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
}

async fn registry(config: &Path) -> Result<Registry> {
    let cfg = Config::load(config)?;
    Registry::open(&cfg.data_dir).await.with_context(|| format!("opening the registry in {}", cfg.data_dir.display()))
}

/// The alarm engine on `alarms.db` in the data directory, with the configured definitions.
async fn open_alarm_engine(cfg: &Config) -> Result<vigil_central::alarms::AlarmEngine> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let definitions = match &cfg.alarms {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            vigil_central::alarms::AlarmConfig::from_toml(&path.display().to_string(), &text)?
        }
        None => vigil_central::alarms::AlarmConfig::from_toml("(built-in defaults)", "")?,
    };
    let options = SqliteConnectOptions::new()
        .filename(cfg.data_dir.join("alarms.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await.context("opening alarms.db")?;
    Ok(vigil_central::alarms::AlarmEngine::open_sqlite(pool, definitions).await?)
}

async fn run(config: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    let (stop_feed_tx, stop_feed) = tokio::sync::watch::channel(false);
    let key = vigil_common::keyfile::load(&cfg.key_file).context("reading the central key")?;
    let core = Core::open(cfg.clone(), key).await.context("opening the data directory")?;
    let engine = Arc::new(tokio::sync::Mutex::new(open_alarm_engine(&cfg).await?));
    let feed = tokio::spawn(vigil_central::alarms::feed::run(
        engine.clone(),
        core.streams.alarms.subscribe(),
        core.streams.telemetry.subscribe(),
        core.streams.states.subscribe(),
        Arc::default(),
        stop_feed.clone(),
    ));
    let state = vigil_central::api::ApiState {
        historian: core.historian.clone(),
        metrics: core.metrics.clone(),
        alarms: Some(engine.clone()),
    };
    let listen = cfg.api.listen;
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding the API to {listen}"))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, vigil_central::api::router(state)).await {
            tracing::error!(error = %e, "api server stopped");
        }
    });
    let opts = ingest::mqtt_options(&cfg.mqtt).context("MQTT options")?;
    let (client, eventloop) = rumqttc::AsyncClient::new(opts, 8192);
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
    let _ = feed.await;
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
                GatewayCmd::List => {
                    for g in reg.list().await? {
                        println!("{}", serde_json::to_string(&g)?);
                    }
                }
            }
            anyhow::Ok(())
        })?,
        Command::Keygen { out } => {
            let key = vigil_common::keyfile::create(&out).context("creating the central key")?;
            println!("{}", key.public_key().to_text());
            eprintln!("wrote {} (owner-only); configure gateways to trust the public key above", out.display());
        }
        Command::Pubkey { key } => {
            let key = vigil_common::keyfile::load(&key).context("reading the central key")?;
            println!("{}", key.public_key().to_text());
        }
    }
    Ok(())
}
