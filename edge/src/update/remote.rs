//! Updates ordered by central (`CommandAction::Update` on `down/cmd`). The signed command names the
//! bundle (version, target, SHA-256, size) and a download path and token; the bundle is fetched from
//! central's API at `[update] central_url` (the address the gateway enrolled with; over HTTPS
//! checked against the park CA of `[uplink.tls] ca_file`), bounded in size and time and retried
//! with backoff, checked against the command (size, SHA-256), and only then
//! handed to the same path as a local `update apply` ([`bundle::open`] checks the release signature
//! and target, [`install::apply_ordered`] installs it on trial). Whatever the outcome, it is a
//! history record naming the order (`order N: ...`), which reaches central in the next state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::http;
use sha2::Digest as _;
use tokio::sync::Notify;

use super::install::{self, HistoryRecord, Layout};
use super::{RUNNING_TARGET, UpdateConfig, bundle};
use crate::sources::camera::client::{self, FetchError};
use crate::spool::now_ms;

/// Download attempts per order (the first and the retries).
pub const MAX_ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubles after each.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The header carrying the download token.
pub const TOKEN_HEADER: &str = "x-vigil-download-token";
/// Test hook: wait this many milliseconds before downloading (the expired-token test).
const ENV_DELAY: &str = "VIGIL_UPDATE_DOWNLOAD_DELAY_MS";

/// One update order from central, as the command carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Central's order id.
    pub order: u64,
    /// Version the bundle installs.
    pub version: String,
    /// Target triple of the bundle.
    pub target: String,
    /// SHA-256 of the bundle file.
    pub sha256: [u8; 32],
    /// Size of the bundle file, bytes.
    pub size: u64,
    /// Download path on central's API.
    pub path: String,
    /// Download token.
    pub token: String,
}

/// Counters of central-ordered updates.
#[derive(Debug, Default)]
pub struct RemoteMetrics {
    /// Orders received.
    pub orders: AtomicU64,
    /// Repeated deliveries of an order in progress or already handled, ignored.
    pub duplicates: AtomicU64,
    /// Download attempts (first tries and retries).
    pub download_attempts: AtomicU64,
    /// Attempts that failed.
    pub download_failures: AtomicU64,
    /// Orders installed (on trial).
    pub installed: AtomicU64,
    /// Orders refused (nothing installed).
    pub refused: AtomicU64,
}

/// How often the update report is compared with the one last published.
const REPORT_CHECK: Duration = Duration::from_secs(2);

/// Handles central's update orders, one at a time, in the background.
#[derive(Debug, Default)]
pub struct Remote {
    busy: Mutex<Option<u64>>,
    /// The update report last published, and when it was last compared with the files.
    published: Mutex<(Option<vigil_common::UpdateReport>, Option<std::time::Instant>)>,
    /// Notified when an order ended (installed or refused), so the uplink sends a fresh state.
    pub changed: Notify,
    /// Counters.
    pub metrics: RemoteMetrics,
}

/// `https://HOST:PORT` or `http://HOST:PORT` (a trailing `/` allowed) as the base the download path
/// is joined to.
pub fn base_url(url: &str) -> Result<String, String> {
    let parsed = if url.starts_with("https://") { client::Url::parse_https(url) } else { client::Url::parse(url) }
        .map_err(|_| format!("{url:?} is not https://HOST:PORT or http://HOST:PORT"))?;
    if parsed.path != "/" {
        return Err(format!("{url:?}: give https://HOST:PORT (or http://) without a path"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// The TLS configuration for downloads from `base`: `None` for plain HTTP; for HTTPS, trusting
/// only `ca_file` (the park CA of `[uplink.tls]`), refused without one.
fn tls_for(base: &str, ca_file: Option<&std::path::Path>) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !base.starts_with("https://") {
        return Ok(None);
    }
    let Some(ca) = ca_file else {
        return Err(format!(
            "central_url {base} is HTTPS, but there is no [uplink.tls] ca_file to check central's certificate by"
        ));
    };
    client::trusting(ca).map(Some)
}

impl Remote {
    /// A handler with nothing in progress.
    pub fn new() -> Arc<Remote> {
        Arc::default()
    }

    /// The update report for a state message about to be published (remembered, so a change made
    /// by the launcher, a commit or a rollback, is noticed by [`Remote::report_changed`]).
    pub fn report(&self) -> vigil_common::UpdateReport {
        let report = super::report();
        self.published.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(report.clone());
        report
    }

    /// Whether the update report differs from the one last published (the launcher commits and
    /// rolls back in its own process); looks at the files at most every 2 s.
    pub fn report_changed(&self) -> bool {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.1.is_some_and(|t| t.elapsed() < REPORT_CHECK) {
            return false;
        }
        published.1 = Some(std::time::Instant::now());
        published.0.as_ref().is_some_and(|last| *last != super::report())
    }

    /// Takes `order` and handles it in the background with `config` (the running `[update]`
    /// section) and `ca_file` (the park CA an https:// `central_url` must chain to); returns at
    /// once. A repeated delivery of the order in progress is ignored.
    pub fn start(self: &Arc<Self>, order: Order, config: UpdateConfig, ca_file: Option<std::path::PathBuf>) {
        self.metrics.orders.fetch_add(1, Ordering::Relaxed);
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            match *busy {
                Some(id) if id == order.order => {
                    self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(order = order.order, "update order already in progress; repeated delivery ignored");
                    return;
                }
                Some(id) => {
                    let why = format!("another update ordered by central (order {id}) is in progress");
                    drop(busy);
                    self.refuse(&order, &why);
                    return;
                }
                None => *busy = Some(order.order),
            }
        }
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = this.handle(&order, &config, ca_file.as_deref()).await;
            match outcome {
                Ok(Some(name)) => {
                    this.metrics.installed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(order = order.order, version = %order.version, %name, "ordered update installed; on trial");
                }
                Ok(None) => {
                    this.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => this.refuse(&order, &why),
            }
            *this.busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
            this.changed.notify_one();
        });
    }

    /// Records a refusal in the history (for central) and logs it; nothing else is touched.
    fn refuse(&self, order: &Order, why: &str) {
        self.metrics.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(order = order.order, version = %order.version, reason = why, "update order refused");
        match layout() {
            Some(layout) => {
                let rec = HistoryRecord {
                    ts_ms: now_ms(),
                    event: "refused".into(),
                    version: order.version.clone(),
                    from: layout.current(),
                    to: None,
                    detail: install::ordered_detail(Some(order.order), why.to_owned()),
                };
                if let Err(e) = layout.record(&rec) {
                    tracing::error!(error = %e, "cannot record the refusal in the update history");
                }
            }
            None => tracing::warn!("not started by `vigil-edge launch`: the refusal cannot be reported"),
        }
        self.changed.notify_one();
    }

    /// Checks, downloads, verifies and installs; `Ok(None)`: the order was handled before.
    async fn handle(
        &self,
        order: &Order,
        config: &UpdateConfig,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Option<String>, String> {
        let Some(layout) = layout() else {
            return Err("this agent was not started by `vigil-edge launch`: nothing would start or judge the \
                        new version"
                .into());
        };
        let tag = format!("order {}: ", order.order);
        if layout.history(usize::MAX).iter().any(|r| r.detail.starts_with(&tag)) {
            tracing::info!(order = order.order, "update order handled before; repeated delivery ignored");
            return Ok(None);
        }
        if order.target != RUNNING_TARGET {
            return Err(bundle::BundleError::WrongTarget {
                bundle: order.target.clone(),
                running: RUNNING_TARGET.into(),
            }
            .to_string());
        }
        if order.size > bundle::MAX_BUNDLE {
            return Err(bundle::HeaderError::TooLarge { len: order.size, max: bundle::MAX_BUNDLE }.to_string());
        }
        if let Ok(Some(t)) = layout.trial() {
            return Err(format!("version {} is on trial; wait until it is committed or rolled back", t.version));
        }
        let trusted = config.trusted_keys().map_err(|e| e.to_string())?;
        let base = match &config.central_url {
            Some(u) => base_url(u)?,
            None => return Err("no [update] central_url configured: the bundle cannot be downloaded".into()),
        };
        if !order.path.starts_with("/api/") {
            return Err(format!("download path {:?} is not on central's API", order.path));
        }
        let tls = tls_for(&base, ca_file)?;
        if let Some(ms) = std::env::var(ENV_DELAY).ok().and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        }
        let timeout = Duration::from_secs(config.download_timeout_s.max(5));
        let bytes = self.download(&format!("{base}{}", order.path), tls, order, timeout).await?;
        let sha: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        if sha != order.sha256 {
            return Err(format!(
                "downloaded bundle has SHA-256 {}, but central's order names {}: not installed",
                hex::encode(sha),
                hex::encode(order.sha256)
            ));
        }
        let verified =
            bundle::open(&bytes, &trusted, RUNNING_TARGET).map_err(|e| super::UpdateError::Bundle(e).to_string())?;
        if verified.header.version != order.version {
            return Err(format!(
                "bundle is version {}, but central's order names {}",
                verified.header.version, order.version
            ));
        }
        let id = order.order;
        let applied = tokio::task::spawn_blocking(move || install::apply_ordered(&layout, &verified, Some(id)))
            .await
            .map_err(|e| format!("install task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(Some(applied.name))
    }

    /// GETs the bundle: at most [`MAX_ATTEMPTS`] attempts with doubling backoff, each within
    /// `timeout` and reading at most the ordered size. Refusals by central are not retried.
    async fn download(
        &self,
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        order: &Order,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let max = usize::try_from(order.size).map_err(|_| "bundle too large for this gateway".to_owned())?;
        let headers = [(TOKEN_HEADER, order.token.clone())];
        let mut backoff = FIRST_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            self.metrics.download_attempts.fetch_add(1, Ordering::Relaxed);
            let result = match &tls {
                Some(tls) => {
                    client::send_tls(http::Method::GET, url, tls.clone(), &headers, Vec::new(), timeout, max).await
                }
                None => client::send(http::Method::GET, url, &headers, Vec::new(), timeout, max).await,
            };
            let failure = match result {
                Ok(r) if r.status == 200 && r.body.len() as u64 == order.size => return Ok(r.body),
                Ok(r) if r.status == 200 => {
                    format!("central sent {} bytes; the order says {}", r.body.len(), order.size)
                }
                Ok(r) if matches!(r.status, 400..=499) => {
                    self.metrics.download_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("central refused the download ({}): {}", r.status, problem_detail(&r.body)));
                }
                Ok(r) => format!("central answered {}: {}", r.status, problem_detail(&r.body)),
                Err(FetchError::TooLarge { limit }) => {
                    self.metrics.download_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("central sent more than the {limit} bytes ordered"));
                }
                Err(e) => e.to_string(),
            };
            self.metrics.download_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(order = order.order, attempt, error = %failure, "bundle download failed");
            last = failure;
        }
        Err(format!("download failed after {MAX_ATTEMPTS} attempts: {last}"))
    }
}

/// The agent root the launcher started this agent with.
fn layout() -> Option<Layout> {
    std::env::var_os(install::ENV_ROOT).map(Layout::new)
}

/// The `detail` of a problem document, else the start of the body as text.
fn problem_detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_is_https_or_http_without_a_path() {
        assert_eq!(base_url("http://10.0.0.5:8080/").unwrap(), "http://10.0.0.5:8080");
        assert_eq!(base_url("https://central:8443/").unwrap(), "https://central:8443");
        assert!(base_url("http://central:80/api").unwrap_err().contains("without a path"));
        assert!(base_url("https://central/api").unwrap_err().contains("without a path"));
        assert!(base_url("central:80").is_err());
    }

    #[test]
    fn https_downloads_need_the_park_ca() {
        assert!(tls_for("http://central:8080", None).unwrap().is_none());
        assert!(tls_for("https://central:8443", None).unwrap_err().contains("[uplink.tls] ca_file"));
        let missing = std::path::Path::new("/nonexistent/ca.pem");
        assert!(tls_for("https://central:8443", Some(missing)).unwrap_err().contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn a_problem_detail_is_extracted() {
        assert_eq!(problem_detail(br#"{"detail":"download token expired"}"#), "download token expired");
        assert_eq!(problem_detail(b"plain"), "plain");
    }
}
