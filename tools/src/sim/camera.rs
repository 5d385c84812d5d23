//! A simulated gas-leak camera: posts detections (JSON, the `vigil-sim` camera model) to a gateway's
//! push endpoint, serves the JPEG snapshot of each detection, a liveness URL, and an ONVIF device
//! and event service with PullPoint subscriptions carrying the same detections (UsernameToken
//! PasswordDigest checked). It can reboot (forget every subscription and refuse everything for a
//! while) and send malformed messages.
//!
//! Routes: `GET /snapshots/{n}.jpg`, `GET /health`, `POST /onvif/device_service`,
//! `POST /onvif/event_service`, `POST /onvif/subscription/{id}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use tokio::sync::Notify;
use vigil_edge::sources::camera::client;
use vigil_edge::sources::camera::model::format_rfc3339_ms;
use vigil_edge::sources::camera::onvif::UsernameToken;
use vigil_edge::sources::camera::xml;

/// The ONVIF topic the simulated camera reports leaks on.
pub const TOPIC: &str = "tns1:RuleEngine/GasDetection/Leak";

/// How the camera authenticates its pushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushCreds {
    /// A secret in a header.
    Secret {
        /// Header name.
        header: String,
        /// The secret.
        secret: String,
    },
    /// Basic auth.
    Basic {
        /// User.
        user: String,
        /// Password.
        password: String,
    },
    /// None.
    None,
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct CameraSimConfig {
    /// The camera's name at the gateway.
    pub name: String,
    /// Where to listen (snapshots, health, ONVIF).
    pub listen: SocketAddr,
    /// The gateway's push endpoint base, e.g. `http://127.0.0.1:8088`; no pushes when absent.
    pub push_to: Option<String>,
    /// Push credentials.
    pub creds: PushCreds,
    /// ONVIF user.
    pub onvif_user: String,
    /// ONVIF password.
    pub onvif_password: String,
    /// Size of each snapshot, bytes (a valid JPEG padded with comment segments).
    pub snapshot_bytes: usize,
    /// Gas reported.
    pub gas: String,
}

impl Default for CameraSimConfig {
    fn default() -> Self {
        CameraSimConfig {
            name: "cam-1".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            push_to: None,
            creds: PushCreds::None,
            onvif_user: "admin".into(),
            onvif_password: "onvif-pass".into(),
            snapshot_bytes: 20_000,
            gas: "methane".into(),
        }
    }
}

/// One simulated detection.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Sequence number (also the snapshot number).
    pub n: u64,
    /// Start (true) or stop.
    pub start: bool,
    /// Gas.
    pub gas: String,
    /// Concentration-path-length, ppm*m.
    pub cpl: f64,
    /// Confidence, percent.
    pub confidence: u8,
    /// PTZ preset.
    pub preset: u16,
    /// Pan.
    pub pan: f32,
    /// Tilt.
    pub tilt: f32,
    /// Region.
    pub region: [u32; 4],
    /// Camera time, Unix ms.
    pub time_ms: i64,
}

struct Sub {
    next: usize,
    expires: Instant,
}

/// Counters of what the simulated camera saw.
#[derive(Debug, Default)]
pub struct SimCounters {
    /// Subscriptions created.
    pub subscribes: AtomicU64,
    /// PullMessages served.
    pub pulls: AtomicU64,
    /// Renewals.
    pub renewals: AtomicU64,
    /// Unsubscribes.
    pub unsubscribes: AtomicU64,
    /// Requests refused for a missing or wrong UsernameToken.
    pub auth_failures: AtomicU64,
    /// Snapshot body bytes actually written to clients.
    pub snapshot_bytes_sent: AtomicU64,
    /// Requests refused while rebooting.
    pub refused: AtomicU64,
}

struct Shared {
    cfg: CameraSimConfig,
    addr: SocketAddr,
    detections: Mutex<Vec<Detection>>,
    subs: Mutex<BTreeMap<u64, Sub>>,
    next_sub: AtomicU64,
    down_until: Mutex<Option<Instant>>,
    malformed_pulls: AtomicUsize,
    snapshot_bytes: AtomicUsize,
    healthy: AtomicBool,
    news: Notify,
    counters: SimCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn down(&self) -> bool {
        let mut d = lock(&self.down_until);
        match *d {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *d = None;
                false
            }
            None => false,
        }
    }
}

/// A running simulated camera.
pub struct CameraSim {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for CameraSim {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl CameraSim {
    /// Starts serving on `cfg.listen`.
    pub async fn start(cfg: CameraSimConfig) -> Result<CameraSim> {
        let listener =
            tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            snapshot_bytes: AtomicUsize::new(cfg.snapshot_bytes),
            cfg,
            addr,
            detections: Mutex::new(Vec::new()),
            subs: Mutex::new(BTreeMap::new()),
            next_sub: AtomicU64::new(1),
            down_until: Mutex::new(None),
            malformed_pulls: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            news: Notify::new(),
            counters: SimCounters::default(),
        });
        let app = Router::new()
            .route("/snapshots/{file}", get(snapshot))
            .route("/health", get(health))
            .route("/onvif/device_service", post(device_service))
            .route("/onvif/event_service", post(event_service))
            .route("/onvif/subscription/{id}", post(subscription))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "camera sim: server stopped");
            }
        });
        Ok(CameraSim { shared, server })
    }

    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Base URL (`http://addr`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Counters.
    pub fn counters(&self) -> &SimCounters {
        &self.shared.counters
    }

    /// Live subscriptions.
    pub fn subscriptions(&self) -> usize {
        lock(&self.shared.subs).len()
    }

    /// Changes the snapshot size from now on.
    pub fn set_snapshot_bytes(&self, n: usize) {
        self.shared.snapshot_bytes.store(n, Ordering::Relaxed);
    }

    /// Makes `/health` fail (false) or answer (true).
    pub fn set_healthy(&self, ok: bool) {
        self.shared.healthy.store(ok, Ordering::Relaxed);
    }

    /// The next `n` PullMessages are answered with malformed XML.
    pub fn malformed_pulls(&self, n: usize) {
        self.shared.malformed_pulls.store(n, Ordering::Relaxed);
    }

    /// Reboots: every subscription is forgotten and every request refused (503) for `down`.
    pub fn reboot(&self, down: Duration) {
        lock(&self.shared.subs).clear();
        *lock(&self.shared.down_until) = Some(Instant::now() + down);
        self.shared.news.notify_waiters();
    }

    /// Records a new detection (start or stop), visible to ONVIF subscribers; returns it.
    pub fn detect(&self, start: bool) -> Detection {
        let mut all = lock(&self.shared.detections);
        let n = all.len() as u64 + 1;
        let d = Detection {
            n,
            start,
            gas: self.shared.cfg.gas.clone(),
            cpl: if start { 500.0 + (n % 7) as f64 * 125.5 } else { 0.0 },
            confidence: 80 + (n % 20) as u8,
            preset: (n % 4) as u16 + 1,
            pan: 90.0 + n as f32,
            tilt: -5.0,
            region: [10 * n as u32 % 600, 40, 64, 48],
            time_ms: crate_now_ms(),
        };
        all.push(d.clone());
        drop(all);
        self.shared.news.notify_waiters();
        d
    }

    /// The snapshot URL of detection `n`.
    pub fn snapshot_url(&self, n: u64) -> String {
        format!("http://{}/snapshots/{n}.jpg", self.shared.addr)
    }

    /// The JSON body the camera pushes for `d`.
    pub fn push_body(&self, d: &Detection) -> Vec<u8> {
        serde_json::json!({
            "camera": self.shared.cfg.name,
            "event": {
                "id": d.n,
                "state": if d.start { "start" } else { "stop" },
                "gas": d.gas,
                "cpl": d.cpl,
                "unit": "ppm*m",
                "confidence": d.confidence,
                "time": format_rfc3339_ms(d.time_ms),
            },
            "ptz": { "preset": d.preset, "pan": d.pan, "tilt": d.tilt },
            "region": d.region,
            "snapshot": self.snapshot_url(d.n),
        })
        .to_string()
        .into_bytes()
    }

    /// Posts `body` to the gateway with the configured credentials; returns the HTTP status.
    pub async fn push_raw(&self, body: Vec<u8>, creds: &PushCreds) -> Result<u16> {
        let base = self.shared.cfg.push_to.as_deref().context("no push target configured")?;
        let url = format!("{base}/cameras/{}/events", self.shared.cfg.name);
        let mut headers = vec![("content-type", "application/json".to_owned())];
        match creds {
            PushCreds::Secret { header, secret } => headers.push((header.as_str(), secret.clone())),
            PushCreds::Basic { user, password } => headers.push((
                "authorization",
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))),
            )),
            PushCreds::None => {}
        }
        let resp = client::send(axum::http::Method::POST, &url, &headers, body, Duration::from_secs(30), 64 * 1024)
            .await
            .with_context(|| format!("posting to {url}"))?;
        Ok(resp.status)
    }

    /// Records a detection and pushes it with the configured credentials; returns it and the status.
    pub async fn push(&self, start: bool) -> Result<(Detection, u16)> {
        let d = self.detect(start);
        let status = self.push_raw(self.push_body(&d), &self.shared.cfg.creds).await?;
        Ok((d, status))
    }
}

fn crate_now_ms() -> i64 {
    vigil_edge::spool::now_ms()
}

/// A valid baseline JPEG (8x8 grey) of exactly `size` bytes (at least 145; 141 is the bare image), padded with comment
/// segments; the first comment names the snapshot `n`, so every snapshot differs.
pub fn jpeg(n: u64, size: usize) -> Vec<u8> {
    let mut head = vec![0xFF, 0xD8];
    let mut tail = Vec::new();
    // DQT: table 0, all ones.
    tail.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    tail.extend_from_slice(&[1u8; 64]);
    // SOF0: 8 bit, 8x8, one component (id 1, 1x1 sampling, table 0).
    tail.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08, 0x00, 0x08, 0x00, 0x08, 0x01, 0x01, 0x11, 0x00]);
    // DHT: DC table 0 and AC table 0, one 1-bit code each (DC category 0, AC end of block).
    for class in [0x00, 0x10] {
        tail.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x14, class, 1]);
        tail.extend_from_slice(&[0u8; 15]);
        tail.push(0);
    }
    // SOS, then one block: DC diff 0 ("0"), EOB ("0"), padded with ones; EOI.
    tail.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x3F, 0xFF, 0xD9]);
    let label = format!("vigil-sim snapshot {n}");
    let mut room = size.saturating_sub(head.len() + tail.len());
    let mut first = true;
    while room >= 4 {
        let mut data_len = (room - 4).min(65_533);
        if (1..4).contains(&(room - 4 - data_len)) {
            // Leave a whole (empty) segment's worth for the next round, so the size comes out exact.
            data_len -= 4;
        }
        head.extend_from_slice(&[0xFF, 0xFE]);
        head.extend_from_slice(&((data_len + 2) as u16).to_be_bytes());
        let mut data = if first { label.clone().into_bytes() } else { Vec::new() };
        data.resize(data_len, b' ');
        head.extend_from_slice(&data);
        room -= data_len + 4;
        first = false;
    }
    head.extend_from_slice(&tail);
    head
}

async fn snapshot(State(s): State<Arc<Shared>>, Path(file): Path<String>) -> Response {
    if s.down() {
        s.counters.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Some(n) = file.strip_suffix(".jpg").and_then(|n| n.parse::<u64>().ok()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let image = jpeg(n, s.snapshot_bytes.load(Ordering::Relaxed));
    let len = image.len();
    // Streamed in 16 KiB pieces, counting what was actually taken by the client.
    let chunks: Vec<Bytes> = image.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    let shared = s.clone();
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
        shared.counters.snapshot_bytes_sent.fetch_add(c.len() as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(c)
    }));
    Response::builder()
        .header(header::CONTENT_TYPE, "image/jpeg")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn health(State(s): State<Arc<Shared>>) -> StatusCode {
    if s.down() || !s.healthy.load(Ordering::Relaxed) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

fn soap(status: StatusCode, body: &str) -> Response {
    let doc = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:tev="http://www.onvif.org/ver10/events/wsdl" xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" xmlns:wsa="http://www.w3.org/2005/08/addressing" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tns1="http://www.onvif.org/ver10/topics" xmlns:ter="http://www.onvif.org/ver10/error"><s:Body>{body}</s:Body></s:Envelope>"#
    );
    (status, [(header::CONTENT_TYPE, "application/soap+xml; charset=utf-8")], doc).into_response()
}

fn fault(subcode: &str, reason: &str) -> Response {
    soap(
        StatusCode::BAD_REQUEST,
        &format!(
            r#"<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>{subcode}</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en">{reason}</s:Text></s:Reason></s:Fault>"#
        ),
    )
}

/// Checks availability and the UsernameToken; returns the parsed request or the refusal.
fn admit(s: &Shared, body: &[u8]) -> Result<xml::Element, Box<Response>> {
    if s.down() {
        s.counters.refused.fetch_add(1, Ordering::Relaxed);
        return Err(Box::new(StatusCode::SERVICE_UNAVAILABLE.into_response()));
    }
    let Ok(root) = xml::parse(body) else { return Err(Box::new(fault("ter:InvalidArgVal", "request is not XML"))) };
    let ok = UsernameToken::read(&root).is_some_and(|t| t.verifies(&s.cfg.onvif_user, &s.cfg.onvif_password));
    if !ok {
        s.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        return Err(Box::new(fault("ter:NotAuthorized", "Sender not authorized")));
    }
    Ok(root)
}

fn seconds(duration: &str) -> Option<u64> {
    duration.trim().strip_prefix("PT")?.strip_suffix('S')?.parse().ok()
}

async fn device_service(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let root = match admit(&s, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    if root.find("GetSystemDateAndTime").is_none() {
        return fault("ter:ActionNotSupported", "only GetSystemDateAndTime is simulated");
    }
    let t = format_rfc3339_ms(crate_now_ms());
    let (y, mo, d, h, mi, sec) = (&t[0..4], &t[5..7], &t[8..10], &t[11..13], &t[14..16], &t[17..19]);
    soap(
        StatusCode::OK,
        &format!(
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>NTP</tt:DateTimeType><tt:UTCDateTime><tt:Time><tt:Hour>{h}</tt:Hour><tt:Minute>{mi}</tt:Minute><tt:Second>{sec}</tt:Second></tt:Time><tt:Date><tt:Year>{y}</tt:Year><tt:Month>{mo}</tt:Month><tt:Day>{d}</tt:Day></tt:Date></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        ),
    )
}

async fn event_service(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let root = match admit(&s, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let Some(req) = root.find("CreatePullPointSubscription") else {
        return fault("ter:ActionNotSupported", "only CreatePullPointSubscription is simulated");
    };
    let life = req.find("InitialTerminationTime").and_then(|t| seconds(&t.text)).unwrap_or(60).clamp(10, 3600);
    let id = s.next_sub.fetch_add(1, Ordering::Relaxed);
    let next = lock(&s.detections).len();
    lock(&s.subs).insert(id, Sub { next, expires: Instant::now() + Duration::from_secs(life) });
    s.counters.subscribes.fetch_add(1, Ordering::Relaxed);
    let now = crate_now_ms();
    soap(
        StatusCode::OK,
        &format!(
            "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference><wsa:Address>http://{}/onvif/subscription/{id}</wsa:Address></tev:SubscriptionReference><wsnt:CurrentTime>{}</wsnt:CurrentTime><wsnt:TerminationTime>{}</wsnt:TerminationTime></tev:CreatePullPointSubscriptionResponse>",
            s.addr,
            format_rfc3339_ms(now),
            format_rfc3339_ms(now + life as i64 * 1000)
        ),
    )
}

fn notification(s: &Shared, d: &Detection) -> String {
    let item = |k: &str, v: String| format!(r#"<tt:SimpleItem Name="{k}" Value="{}"/>"#, xml::escape(&v));
    let data = [
        item("State", d.start.to_string()),
        item("GasType", d.gas.clone()),
        item("Concentration", d.cpl.to_string()),
        item("Unit", "ppm*m".into()),
        item("Confidence", d.confidence.to_string()),
        item("Preset", d.preset.to_string()),
        item("Pan", d.pan.to_string()),
        item("Tilt", d.tilt.to_string()),
        item("Region", d.region.map(|x| x.to_string()).join(",")),
        item("SnapshotUri", format!("http://{}/snapshots/{}.jpg", s.addr, d.n)),
    ]
    .concat();
    format!(
        r#"<wsnt:NotificationMessage><wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">{TOPIC}</wsnt:Topic><wsnt:Message><tt:Message UtcTime="{}" PropertyOperation="Changed"><tt:Source><tt:SimpleItem Name="VideoSourceConfigurationToken" Value="vsc1"/></tt:Source><tt:Data>{data}</tt:Data></tt:Message></wsnt:Message></wsnt:NotificationMessage>"#,
        format_rfc3339_ms(d.time_ms)
    )
}

async fn subscription(State(s): State<Arc<Shared>>, Path(id): Path<u64>, body: Bytes) -> Response {
    let root = match admit(&s, &body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    {
        let mut subs = lock(&s.subs);
        subs.retain(|_, sub| sub.expires > Instant::now());
        if !subs.contains_key(&id) {
            return fault("wsrf-rw:ResourceUnknownFault", "no such subscription");
        }
    }
    if root.find("Unsubscribe").is_some() {
        lock(&s.subs).remove(&id);
        s.counters.unsubscribes.fetch_add(1, Ordering::Relaxed);
        return soap(StatusCode::OK, "<wsnt:UnsubscribeResponse/>");
    }
    if let Some(r) = root.find("Renew") {
        let life = r.find("TerminationTime").and_then(|t| seconds(&t.text)).unwrap_or(60).clamp(10, 3600);
        if let Some(sub) = lock(&s.subs).get_mut(&id) {
            sub.expires = Instant::now() + Duration::from_secs(life);
        }
        s.counters.renewals.fetch_add(1, Ordering::Relaxed);
        return soap(
            StatusCode::OK,
            "<wsnt:RenewResponse><wsnt:TerminationTime>PT60S</wsnt:TerminationTime></wsnt:RenewResponse>",
        );
    }
    let Some(p) = root.find("PullMessages") else {
        return fault("ter:ActionNotSupported", "unknown subscription request");
    };
    s.counters.pulls.fetch_add(1, Ordering::Relaxed);
    if s.malformed_pulls.load(Ordering::Relaxed) > 0 {
        s.malformed_pulls.fetch_sub(1, Ordering::Relaxed);
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/soap+xml")], "<s:Envelope><s:Body><oops")
            .into_response();
    }
    let wait = p.find("Timeout").and_then(|t| seconds(&t.text)).unwrap_or(5).min(30);
    let limit = p.find("MessageLimit").and_then(|l| l.text.parse::<usize>().ok()).unwrap_or(16).clamp(1, 1000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let news = s.news.notified();
        let taken: Option<Vec<Detection>> = {
            let mut subs = lock(&s.subs);
            let Some(sub) = subs.get_mut(&id) else {
                // Forgotten while waiting (a reboot): the camera drops the connection.
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            };
            let all = lock(&s.detections);
            if sub.next < all.len() {
                let end = all.len().min(sub.next + limit);
                let out = all[sub.next..end].to_vec();
                sub.next = end;
                Some(out)
            } else {
                None
            }
        };
        if let Some(list) = taken {
            let msgs: String = list.iter().map(|d| notification(&s, d)).collect();
            return soap(
                StatusCode::OK,
                &format!(
                    "<tev:PullMessagesResponse><tev:CurrentTime>{}</tev:CurrentTime><tev:TerminationTime>{}</tev:TerminationTime>{msgs}</tev:PullMessagesResponse>",
                    format_rfc3339_ms(crate_now_ms()),
                    format_rfc3339_ms(crate_now_ms() + 60_000)
                ),
            );
        }
        if tokio::time::timeout_at(deadline, news).await.is_err() {
            return soap(
                StatusCode::OK,
                &format!(
                    "<tev:PullMessagesResponse><tev:CurrentTime>{0}</tev:CurrentTime><tev:TerminationTime>{0}</tev:TerminationTime></tev:PullMessagesResponse>",
                    format_rfc3339_ms(crate_now_ms())
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpegs_have_the_size_asked_and_the_jpeg_markers() {
        assert_eq!(jpeg(1, 0).len(), 141, "the smallest: markers and tables only");
        for size in [145, 200, 20_000, 65_539, 65_541, 65_544, 70_000, 1_048_576] {
            let j = jpeg(7, size);
            assert_eq!(j.len(), size);
            assert!(j.starts_with(&[0xFF, 0xD8, 0xFF]));
            assert!(j.ends_with(&[0xFF, 0xD9]));
        }
        assert_ne!(jpeg(1, 1000), jpeg(2, 1000));
    }
}
