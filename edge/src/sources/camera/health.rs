//! Camera liveness: a periodic check per camera (`GET` of its health URL answered 2xx, or ONVIF
//! `GetSystemDateAndTime`). After `failures` failed checks in a row the camera is reported
//! `DeviceOffline` (once); the first good check after that reports `DeviceOnline`.

use std::sync::Arc;
use std::time::Duration;

use hyper::http::Method;
use tokio::sync::watch;
use vigil_common::{Event, EventKind};

use super::{Camera, Hub, client, onvif};
use crate::spool::now_ms;

/// Largest health answer read.
const MAX_HEALTH_BYTES: usize = 64 * 1024;

/// One check of `camera`; `Err` says why it failed.
pub async fn check(camera: &Camera, timeout: Duration) -> Result<(), String> {
    let h = camera.config.health.as_ref().ok_or("no health check configured")?;
    if let Some(url) = &h.url {
        let resp = client::send(Method::GET, url, &[], Vec::new(), timeout, MAX_HEALTH_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        return if (200..300).contains(&resp.status) { Ok(()) } else { Err(format!("HTTP status {}", resp.status)) };
    }
    let o = camera.config.onvif.as_ref().ok_or("no health URL and no ONVIF device service")?;
    let url = o.device_url.as_deref().ok_or("no ONVIF device service URL")?;
    onvif::system_time(url, &o.user, &o.password, timeout).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Checks `camera` every interval until shutdown, reporting offline/online transitions.
pub async fn run(hub: Arc<Hub>, camera: Camera, mut shutdown: watch::Receiver<bool>) {
    let Some(h) = camera.config.health.clone() else { return };
    let name = camera.config.name.clone();
    let m = hub.metrics.clone();
    let timeout = Duration::from_millis(h.timeout_ms);
    let mut tick = tokio::time::interval(Duration::from_secs(h.interval_s.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = 0u32;
    let mut offline = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return } else { continue },
        }
        m.health_checks.inc();
        let kind = match check(&camera, timeout).await {
            Ok(()) => {
                failed = 0;
                if !offline {
                    continue;
                }
                offline = false;
                m.online_events.inc();
                tracing::info!(camera = %name, "camera online again");
                EventKind::DeviceOnline { device: name.clone() }
            }
            Err(reason) => {
                m.health_failures.inc();
                failed = failed.saturating_add(1);
                if offline || failed < h.failures {
                    continue;
                }
                offline = true;
                m.offline_events.inc();
                tracing::warn!(camera = %name, %reason, "camera offline");
                EventKind::DeviceOffline { device: name.clone(), reason }
            }
        };
        let event = Event { ts_ms: now_ms(), clock: hub.gateway_clock, kind };
        if hub.send(event).await.is_err() {
            // Not reported: the next check tries the transition again.
            offline = !offline;
            tracing::error!(camera = %name, "camera health event could not be queued");
        }
    }
}
