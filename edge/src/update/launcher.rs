//! `vigil-edge launch`: what the service runs. It starts the `current` version (or the packaged
//! binary), and while an update is on trial judges it by the health file: healthy for
//! `healthy_for_s` commits it; not healthy within `trial_window_s`, or `max_attempts` starts (crashes,
//! power cuts), rolls it back and starts the previous version. The launcher is the packaged binary,
//! so a new version that cannot even start cannot take the rollback down with it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::health::Health;
use super::install::{self, CONFIG, ENV_HEALTH, ENV_ROOT, ENV_VERSION, Layout};
use super::{UpdateConfig, UpdateError, crash_point};
use crate::spool::now_ms;

/// How often the launcher looks at the health file and the `current` link.
const TICK: Duration = Duration::from_millis(250);
/// How long a stopping agent gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the launcher needs.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The agent root.
    pub layout: Layout,
    /// The gateway configuration handed to the agent (a version's bundled configuration wins).
    pub config: PathBuf,
    /// Trial window, healthy time and attempts.
    pub update: UpdateConfig,
    /// The packaged binary, started when no version is installed.
    pub packaged: PathBuf,
}

/// Runs agents until SIGTERM/SIGINT (returns 0) or until an agent not on trial exits (returns its
/// exit status, so the service manager restarts the launcher).
pub async fn launch(opts: LaunchOptions) -> Result<i32, UpdateError> {
    let layout = &opts.layout;
    let versions = layout.versions();
    std::fs::create_dir_all(&versions).map_err(|e| UpdateError::io(&versions, e))?;
    let window = Duration::from_secs(opts.update.trial_window_s.max(1));
    let healthy_for = Duration::from_secs(opts.update.healthy_for_s.max(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| UpdateError::State(format!("SIGTERM handler: {e}")))?;
    let mut tick = tokio::time::interval(TICK);
    // Each pass starts one agent; a pass ends with a rollback, a switch, or a crash on trial, and
    // trials end after at most max_attempts passes, so the loop cannot spin.
    'agent: loop {
        install::recover(layout)?;
        let mut trial = layout.trial()?;
        if let Some(t) = &mut trial {
            t.attempts += 1;
            if t.attempts > opts.update.max_attempts {
                let reason = format!("did not become healthy in {} start(s)", opts.update.max_attempts);
                tracing::error!(version = %t.version, %reason, "rolling back");
                install::rollback(layout, t, &reason)?;
                continue 'agent;
            }
            layout.write_trial(t)?;
            crash_point("attempt-counted");
        }
        let current = layout.current();
        let (binary, config, version) = match &current {
            Some(name) if layout.binary(name).is_file() => {
                let bundled = layout.version_dir(name).join(CONFIG);
                let config = if bundled.is_file() { bundled } else { opts.config.clone() };
                (layout.binary(name), config, layout.version_of(name).unwrap_or_else(|| name.clone()))
            }
            other => {
                if let (Some(name), Some(t)) = (other, &trial) {
                    install::rollback(layout, t, &format!("version {name} has no binary"))?;
                    continue 'agent;
                }
                if let Some(name) = other {
                    tracing::error!(%name, "current version has no binary; starting the packaged agent");
                }
                (opts.packaged.clone(), opts.config.clone(), env!("CARGO_PKG_VERSION").to_owned())
            }
        };
        let health_file = layout.health_file();
        let _ = std::fs::remove_file(&health_file);
        tracing::info!(%version, binary = %binary.display(), on_trial = trial.is_some(), "starting the agent");
        let mut child = match Command::new(&binary)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(ENV_HEALTH, &health_file)
            .env(ENV_ROOT, &layout.root)
            .env(ENV_VERSION, &version)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                if let Some(t) = &trial {
                    install::rollback(layout, t, &format!("cannot start {}: {e}", binary.display()))?;
                    continue 'agent;
                }
                return Err(UpdateError::io(&binary, e));
            }
        };
        let pid = child.id().unwrap_or(0);
        let started = Instant::now();
        let mut healthy_since: Option<Instant> = None;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let code = status.map(exit_code).unwrap_or(1);
                    if let Some(t) = &trial {
                        tracing::warn!(version = %t.version, code, "agent on trial exited");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue 'agent;
                    }
                    tracing::warn!(%version, code, "agent exited");
                    return Ok(code);
                }
                _ = term.recv() => {
                    stop(&mut child).await;
                    return Ok(0);
                }
                _ = tokio::signal::ctrl_c() => {
                    stop(&mut child).await;
                    return Ok(0);
                }
                _ = tick.tick() => {
                    if layout.current() != current {
                        tracing::info!(from = ?current, to = ?layout.current(), "current version switched; restarting the agent");
                        stop(&mut child).await;
                        continue 'agent;
                    }
                    let Some(t) = &trial else { continue };
                    let good = Health::read(&health_file, now_ms()).is_some_and(|h| h.pid == pid && h.healthy);
                    match (good, healthy_since) {
                        (true, None) => healthy_since = Some(Instant::now()),
                        (true, Some(since)) if since.elapsed() >= healthy_for => {
                            let detail = format!("healthy for {} s", healthy_for.as_secs());
                            install::commit(layout, t, &detail)?;
                            tracing::info!(version = %t.version, "update committed");
                            trial = None;
                        }
                        (true, Some(_)) => {}
                        (false, _) => healthy_since = None,
                    }
                    if let Some(t) = &trial && healthy_since.is_none() && started.elapsed() > window {
                        let reason = format!("not healthy within {} s", window.as_secs());
                        tracing::error!(version = %t.version, %reason, "rolling back");
                        stop(&mut child).await;
                        install::rollback(layout, t, &reason)?;
                        continue 'agent;
                    }
                }
            }
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// SIGTERM (so the agent seals its spool and says goodbye), SIGKILL after the grace period.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // std cannot send SIGTERM without unsafe code; kill(1) is on every box this runs on.
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(pid, "agent did not stop after SIGTERM; killing it");
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
}
