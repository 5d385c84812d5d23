//! The technician and release commands: `vigil-edge update keygen|pack|verify|apply|status|target`
//! and `vigil-edge launch`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::install::{self, Layout};
use super::launcher::{self, LaunchOptions};
use super::{RUNNING_TARGET, UpdateConfig, UpdateError, bundle};
use crate::spool::now_ms;

/// `vigil-edge update ...`
#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Generate a release signing key (mode 0600) and print its public key for gateways to trust.
    Keygen {
        /// Where to write the key; an existing file is never replaced.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a signed update bundle.
    Pack {
        /// The new agent binary.
        #[arg(long)]
        binary: PathBuf,
        /// Its version (also the name of its directory on the gateway).
        #[arg(long)]
        version: String,
        /// The target triple it was built for (default: this binary's).
        #[arg(long, default_value = RUNNING_TARGET)]
        target: String,
        /// A gateway configuration to install with it (optional).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The release signing key (`update keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle (length, signature, target) without installing it, and describe it.
    Verify {
        /// The bundle file.
        bundle: PathBuf,
        /// Where keys, root and trial settings come from.
        #[command(flatten)]
        settings: Settings,
    },
    /// Verify a bundle and install it beside the current version, on trial; the launcher restarts
    /// the agent on it and commits it once healthy, or brings the previous version back.
    Apply {
        /// The bundle file.
        bundle: PathBuf,
        /// Where keys, root and trial settings come from.
        #[command(flatten)]
        settings: Settings,
    },
    /// Show the current version, any update on trial, and the recent history.
    Status {
        /// Where keys, root and trial settings come from.
        #[command(flatten)]
        settings: Settings,
    },
    /// Print the target triple this agent was built for.
    Target,
}

/// Where the update settings come from.
#[derive(Debug, Args)]
pub struct Settings {
    /// The gateway configuration (its `[update]` section is read, leniently).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The agent root (overrides `[update] root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// A file of trusted release keys (overrides `[update] release_keys_file`).
    #[arg(long)]
    keys: Option<PathBuf>,
}

impl Settings {
    fn resolve(&self) -> Result<UpdateConfig, UpdateError> {
        let mut u = match &self.config {
            Some(c) => UpdateConfig::from_config_file(c)?,
            None => UpdateConfig::default(),
        };
        if let Some(r) = &self.root {
            u.root = r.clone();
        }
        if let Some(k) = &self.keys {
            u.release_keys_file = k.clone();
        }
        Ok(u)
    }
}

/// `vigil-edge launch` arguments.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The gateway configuration handed to the agent.
    #[arg(long)]
    config: PathBuf,
    /// The agent root (overrides `[update] root`).
    #[arg(long)]
    root: Option<PathBuf>,
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, UpdateError> {
    let len = std::fs::metadata(path).map_err(|e| UpdateError::io(path, e))?.len();
    if len > bundle::MAX_BUNDLE {
        return Err(bundle::BundleError::from(bundle::HeaderError::TooLarge { len, max: bundle::MAX_BUNDLE }).into());
    }
    std::fs::read(path).map_err(|e| UpdateError::io(path, e))
}

/// Runs one `update` subcommand, printing its result.
pub fn run(cmd: UpdateCommand) -> Result<(), UpdateError> {
    match cmd {
        UpdateCommand::Keygen { out } => {
            let key = vigil_common::keyfile::create(&out).map_err(|e| UpdateError::Config(e.to_string()))?;
            println!("{}", key.public_key().to_text());
            eprintln!(
                "wrote {} (owner-only); list the public key above in [update] release_keys or {} on every gateway",
                out.display(),
                super::DEFAULT_KEYS_FILE
            );
        }
        UpdateCommand::Pack { binary, version, target, config, key, out } => {
            let key = vigil_common::keyfile::load(&key).map_err(|e| UpdateError::Config(e.to_string()))?;
            let bin = std::fs::read(&binary).map_err(|e| UpdateError::io(&binary, e))?;
            let cfg = config.as_ref().map(|c| std::fs::read(c).map_err(|e| UpdateError::io(c, e))).transpose()?;
            let bytes = bundle::pack(&bin, cfg.as_deref(), &version, &target, &key, now_ms())?;
            if out.exists() {
                return Err(UpdateError::State(format!("{} exists; not replacing it", out.display())));
            }
            std::fs::write(&out, &bytes).map_err(|e| UpdateError::io(&out, e))?;
            println!("{}", out.display());
            eprintln!("bundle {version} for {target}, {} bytes, signed by {}", bytes.len(), key.public_key().key_id());
        }
        UpdateCommand::Verify { bundle: path, settings } => {
            let u = settings.resolve()?;
            let b = bundle::open(&read_bundle(&path)?, &u.trusted_keys()?, RUNNING_TARGET)?;
            println!(
                "OK: version {} for {}, binary {} bytes, config {}, signed by {}, sha256 {}",
                b.header.version,
                b.header.target,
                b.binary.len(),
                b.config.as_ref().map_or("none".to_owned(), |c| format!("{} bytes", c.len())),
                b.header.key_id,
                b.sha256
            );
        }
        UpdateCommand::Apply { bundle: path, settings } => {
            let u = settings.resolve()?;
            // Everything is checked before the agent root is touched.
            let b = bundle::open(&read_bundle(&path)?, &u.trusted_keys()?, RUNNING_TARGET)?;
            let layout = Layout::new(&u.root);
            let applied = install::apply(&layout, &b)?;
            println!(
                "installed {} as {} (was {}); on trial: the launcher restarts the agent on it and commits it once \
                 healthy for {} s, or rolls back after {} s",
                b.header.version,
                applied.name,
                applied.from.as_deref().unwrap_or("the packaged agent"),
                u.healthy_for_s,
                u.trial_window_s
            );
        }
        UpdateCommand::Status { settings } => {
            let u = settings.resolve()?;
            let layout = Layout::new(&u.root);
            let current = layout.current();
            println!(
                "current: {}",
                match &current {
                    Some(n) => format!("{} ({n})", layout.version_of(n).unwrap_or_else(|| "?".into())),
                    None => format!("packaged agent {}", env!("CARGO_PKG_VERSION")),
                }
            );
            match layout.trial()? {
                Some(t) => println!("on trial: {} since {} ms, {} start(s)", t.version, t.applied_ms, t.attempts),
                None => println!("on trial: nothing"),
            }
            for r in layout.history(10) {
                println!("{} {} {} {}", r.ts_ms, r.event, r.version, r.detail);
            }
        }
        UpdateCommand::Target => println!("{RUNNING_TARGET}"),
    }
    Ok(())
}

/// Runs the launcher until SIGTERM or an agent's exit; returns the exit status for the process.
pub fn launch(args: LaunchArgs) -> Result<i32, UpdateError> {
    let mut update = UpdateConfig::from_config_file(&args.config)?;
    if let Some(r) = args.root {
        update.root = r;
    }
    let packaged = std::env::current_exe().map_err(|e| UpdateError::State(format!("own binary: {e}")))?;
    let opts = LaunchOptions { layout: Layout::new(&update.root), config: args.config, update, packaged };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UpdateError::State(format!("async runtime: {e}")))?;
    runtime.block_on(launcher::launch(opts))
}
