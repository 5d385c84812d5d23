//! The uplink: publishes spooled batches to the broker over TLS MQTT and applies central's acks.
//!
//! The spool is the truth, not the MQTT session: rumqttc keeps QoS 1 in-flight state in memory
//! only, so after every ConnAck every unacknowledged batch is sent again, alarm/event batches first,
//! then live, then backfill at a bounded rate. A batch leaves the spool only when central's signed
//! ack names it. Central's acks and commands are verified with central's public key(s).

mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use vigil_common::{
    Ack, Channel, Command, CommandAction, EnterpriseId, GatewayId, GatewayState, Priority, PublicKey, SeqRange,
    SigningKey, SpoolReport, Topic,
};

use crate::config::Plant;
use crate::config_push::ConfigPush;
use crate::spool::{Spool, StoredBatch, now_ms};

/// Resolves when the push store reports a change; never without one.
async fn config_changed(pushes: &Option<(Arc<ConfigPush>, Arc<Plant>)>) {
    match pushes {
        Some((store, _)) => store.changed.notified().await,
        None => std::future::pending().await,
    }
}

/// The `[uplink]` section of the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Broker host name or address (must match the broker certificate).
    pub host: String,
    /// Broker port (8883 for TLS).
    pub port: u16,
    /// TLS settings; required unless `plaintext` is set.
    pub tls: Option<TlsFiles>,
    /// Connect without TLS. Only for a lab broker on loopback; never in a plant.
    #[serde(default)]
    pub plaintext: bool,
    /// Central's public key(s) (`ed25519:<hex>`) that acks and commands must be signed with.
    pub central_keys: Vec<String>,
    /// MQTT keep-alive, seconds (default 15).
    #[serde(default = "default_keepalive")]
    pub keepalive_s: u64,
    /// Most telemetry batches sent but not yet acknowledged by central (default 64).
    /// Alarm/event batches are never held back by this window.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Most backfill batches sent per second after an outage (default 100).
    #[serde(default = "default_backfill_rate")]
    pub backfill_batches_per_s: u32,
    /// Send a batch again when central has not acknowledged it after this many seconds (default 20).
    #[serde(default = "default_resend_after")]
    pub resend_after_s: u64,
    /// A configuration pushed by central is kept only if the agent reaches central with it within
    /// this many seconds; otherwise the previous one comes back (default 120).
    #[serde(default = "default_config_trial")]
    pub config_trial_s: u64,
}

/// Certificate files for mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signed the broker's certificate (pinned: no system roots are trusted).
    pub ca_file: PathBuf,
    /// This gateway's client certificate (PEM; common name = gateway id).
    pub cert_file: PathBuf,
    /// Its private key (PEM), readable by its owner only.
    pub key_file: PathBuf,
}

impl UplinkConfig {
    /// Problems with these settings, as (key, problem); files are checked for existence and, for
    /// the private key, owner-only permissions.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.central_keys.is_empty() {
            out.push(("central_keys".into(), "is empty: acks and commands could not be verified".into()));
        }
        for (i, k) in self.central_keys.iter().enumerate() {
            if let Err(e) = PublicKey::from_text(k) {
                out.push((format!("central_keys[{i}]"), e.to_string()));
            }
        }
        match (&self.tls, self.plaintext) {
            (None, false) => out.push(("tls".into(), "missing (set plaintext = true only for a lab broker)".into())),
            (Some(_), true) => out.push(("plaintext".into(), "true while [uplink.tls] is given; choose one".into())),
            _ => {}
        }
        if let Some(tls) = &self.tls {
            for (key, path) in
                [("tls.ca_file", &tls.ca_file), ("tls.cert_file", &tls.cert_file), ("tls.key_file", &tls.key_file)]
            {
                if !path.exists() {
                    out.push((key.into(), format!("{} does not exist", path.display())));
                }
            }
            if tls.key_file.exists()
                && let Err(e) = vigil_common::keyfile::check_owner_only(&tls.key_file)
            {
                out.push(("tls.key_file".into(), e.to_string()));
            }
        }
        if self.window == 0 || self.window > 1000 {
            out.push(("window".into(), format!("{} is outside 1..=1000", self.window)));
        }
        if self.backfill_batches_per_s == 0 {
            out.push(("backfill_batches_per_s".into(), "must be at least 1".into()));
        }
        if !(5..=3600).contains(&self.config_trial_s) {
            out.push(("config_trial_s".into(), format!("{} is outside 5..=3600", self.config_trial_s)));
        }
        if !(5..=600).contains(&self.keepalive_s) {
            out.push(("keepalive_s".into(), format!("{} is outside 5..=600", self.keepalive_s)));
        }
        out
    }
}

fn default_keepalive() -> u64 {
    15
}
fn default_window() -> usize {
    64
}
fn default_backfill_rate() -> u32 {
    100
}
fn default_resend_after() -> u64 {
    20
}
fn default_config_trial() -> u64 {
    120
}

/// Why the uplink could not start.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// A TLS file is missing, unreadable, exposed or malformed.
    #[error("uplink TLS: {0}")]
    Tls(String),
    /// A central key is malformed.
    #[error("uplink.central_keys[{index}]: {source}")]
    CentralKey {
        /// Its position.
        index: usize,
        /// What is wrong.
        source: vigil_common::envelope::KeyError,
    },
    /// Neither TLS nor plaintext configured, or both.
    #[error("uplink: {0}")]
    Config(String),
}

/// Counters of the uplink.
#[derive(Debug, Default)]
pub struct UplinkMetrics {
    /// Successful connections (ConnAcks).
    pub connects: AtomicU64,
    /// Connection errors.
    pub connection_errors: AtomicU64,
    /// Batches handed to the MQTT client (first sends and re-sends).
    pub published: AtomicU64,
    /// Of those, re-sends.
    pub resent: AtomicU64,
    /// Batches deleted after central's ack.
    pub acked: AtomicU64,
    /// Acks refused (bad signature, other gateway or epoch, malformed).
    pub acks_rejected: AtomicU64,
    /// Commands executed.
    pub commands: AtomicU64,
    /// Commands refused.
    pub commands_rejected: AtomicU64,
    /// Times the watchdog rebuilt a stuck MQTT client.
    pub watchdog_rebuilds: AtomicU64,
    /// Point catalogues handed to the MQTT client (one per connection).
    pub catalogues_published: AtomicU64,
    /// Point catalogues that could not be sealed (too large, invalid) and so were not sent.
    pub catalogue_errors: AtomicU64,
}

/// Everything the uplink needs.
pub struct Uplink<S: Spool> {
    config: UplinkConfig,
    options: MqttOptions,
    gateway: GatewayId,
    topics: Topics,
    key: SigningKey,
    central_keys: Vec<PublicKey>,
    spool: Arc<Mutex<S>>,
    online: Arc<AtomicBool>,
    stored: Arc<Notify>,
    metrics: Arc<UplinkMetrics>,
    heartbeat: Option<vigil_hw::Heartbeat>,
    pushes: Option<(Arc<ConfigPush>, Arc<Plant>)>,
    updates: Arc<crate::update::remote::Remote>,
    catalogue: Option<vigil_common::PointCatalogue>,
}

struct Topics {
    batch: String,
    state: String,
    catalogue: String,
    ack: String,
    cmd: String,
}

/// Per-connection sending state; reset on every ConnAck because the spool, not the session, is the truth.
#[derive(Default)]
struct SendState {
    connected: bool,
    cursors: [Option<u64>; 3],
    inflight: BTreeMap<u64, (Priority, Instant)>,
    resend: BTreeSet<u64>,
    backfill_tokens: f64,
    last_refill: Option<Instant>,
    last_command: Option<u64>,
}

const MAX_RESEND_QUEUE: usize = 100_000;

impl<S: Spool + 'static> Uplink<S> {
    /// Checks the configuration and files (TLS key owner-only, central keys valid) and prepares the client.
    pub fn new(
        config: UplinkConfig,
        enterprise: &EnterpriseId,
        gateway: &GatewayId,
        key: SigningKey,
        spool: Arc<Mutex<S>>,
        online: Arc<AtomicBool>,
        stored: Arc<Notify>,
    ) -> Result<Self, UplinkError> {
        let central_keys = config
            .central_keys
            .iter()
            .enumerate()
            .map(|(index, k)| PublicKey::from_text(k).map_err(|source| UplinkError::CentralKey { index, source }))
            .collect::<Result<Vec<_>, _>>()?;
        if central_keys.is_empty() {
            return Err(UplinkError::Config("central_keys is empty: acks could not be verified".into()));
        }
        let mut options = MqttOptions::new(gateway.as_str(), config.host.clone(), config.port);
        options.set_keep_alive(Duration::from_secs(config.keepalive_s.max(5)));
        options.set_clean_session(true);
        let max = vigil_common::Kind::Batch.max_envelope_len() + 1024;
        options.set_max_packet_size(max, max);
        options.set_inflight(u16::try_from(config.window.clamp(8, 1000) + 16).unwrap_or(u16::MAX));
        options.set_request_channel_capacity(config.window.clamp(8, 1000) + 64);
        match (&config.tls, config.plaintext) {
            (Some(files), false) => {
                options.set_transport(rumqttc::Transport::tls_with_config(tls::client_config(files)?));
            }
            (None, true) => tracing::warn!("uplink without TLS: only acceptable for a lab broker"),
            (Some(_), true) => return Err(UplinkError::Config("both [uplink.tls] and plaintext = true given".into())),
            (None, false) => {
                return Err(UplinkError::Config("[uplink.tls] missing (or set plaintext = true for a lab)".into()));
            }
        }
        let topic = |channel| Topic::new(enterprise.clone(), gateway.clone(), channel).to_string();
        let topics = Topics {
            batch: topic(Channel::UpBatch),
            state: topic(Channel::UpState),
            catalogue: topic(Channel::UpCatalogue),
            ack: topic(Channel::DownAck),
            cmd: topic(Channel::DownCmd),
        };
        Ok(Uplink {
            config,
            options,
            gateway: gateway.clone(),
            topics,
            key,
            central_keys,
            spool,
            online,
            stored,
            metrics: Arc::default(),
            heartbeat: None,
            pushes: None,
            updates: crate::update::remote::Remote::new(),
            catalogue: None,
        })
    }

    /// Publishes `catalogue` (retained, on `up/catalogue`) after every connect, so central knows the
    /// devices and points of the configuration this agent runs.
    pub fn set_catalogue(&mut self, catalogue: vigil_common::PointCatalogue) {
        self.catalogue = Some(catalogue);
    }

    /// Accepts configuration pushes from central into `store`, validated against `running`.
    pub fn set_config_push(&mut self, store: Arc<ConfigPush>, running: Arc<Plant>) {
        self.pushes = Some((store, running));
    }

    /// Reports the send loop's progress to the watchdog supervisor.
    pub fn set_heartbeat(&mut self, heartbeat: vigil_hw::Heartbeat) {
        self.heartbeat = Some(heartbeat);
    }

    /// The uplink's counters.
    pub fn metrics(&self) -> Arc<UplinkMetrics> {
        self.metrics.clone()
    }

    fn state(&self, online: bool) -> Vec<u8> {
        let spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        let stats = spool.stats();
        let state = GatewayState {
            gateway: self.gateway.clone(),
            online,
            ts_ms: now_ms(),
            epoch: stats.epoch,
            next_seq: stats.next_seq,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            spool: SpoolReport {
                batches: stats.classes.map(|c| c.batches),
                bytes: stats.classes.iter().map(|c| c.bytes).sum(),
                oldest_unacked_ms: stats.classes.iter().filter_map(|c| c.oldest_stored_ms).min(),
                dropped: stats.dropped,
            },
            config: self.pushes.as_ref().map(|(store, _)| store.report()).unwrap_or_default(),
            update: self.updates.report(),
            clock: crate::status::clock::read(),
        };
        // Sealing only fails on a bug in the contract; the empty payload then clears the retained state.
        state.seal(&self.key).unwrap_or_default()
    }

    fn client(&self) -> (AsyncClient, EventLoop) {
        let mut options = self.options.clone();
        options.set_last_will(LastWill::new(&self.topics.state, self.state(false), QoS::AtLeastOnce, true));
        let cap = self.config.window.clamp(8, 1000) + 64;
        AsyncClient::new(options, cap)
    }

    /// Runs until `shutdown` turns true: connects, reconnects with backoff and jitter, rebuilds a
    /// stuck client, sends, and applies acks and commands.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let keepalive = Duration::from_secs(self.config.keepalive_s.max(5));
        let watchdog = keepalive * 3 + Duration::from_secs(5);
        'client: loop {
            let (client, eventloop) = self.client();
            // rumqttc's poll is not safe to cancel (a half-written packet corrupts the stream), so it
            // runs alone in its own task and hands events over a channel.
            let (events_tx, mut events) = tokio::sync::mpsc::channel(1024);
            let poller = tokio::spawn(poll_events(eventloop, events_tx));
            let mut st = SendState::default();
            let mut last_progress = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = shutdown.changed() => {
                        if *shutdown.borrow() {
                            // A clean disconnect makes the broker discard the will, so say goodbye ourselves.
                            let _ = client.try_publish(&self.topics.state, QoS::AtLeastOnce, true, self.state(false));
                            let _ = client.try_disconnect();
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Some(PollResult::Event(_)) = events.recv().await {}
                            }).await;
                            poller.abort();
                            self.online.store(false, Ordering::Relaxed);
                            return;
                        }
                    }
                    polled = events.recv() => {
                        last_progress = Instant::now();
                        match polled {
                            Some(PollResult::Event(event)) => self.on_event(event, &client, &mut st),
                            Some(PollResult::Lost(e)) => {
                                self.metrics.connection_errors.fetch_add(1, Ordering::Relaxed);
                                if st.connected {
                                    tracing::warn!(error = %e, "uplink lost");
                                } else {
                                    tracing::debug!(error = %e, "uplink connect failed");
                                }
                                st = SendState { last_command: st.last_command, ..SendState::default() };
                                self.online.store(false, Ordering::Relaxed);
                            }
                            Some(PollResult::Idle) => {}
                            None => continue 'client,
                        }
                    }
                    _ = self.stored.notified() => self.pump(&client, &mut st),
                    _ = self.updates.changed.notified() => {
                        if st.connected {
                            let _ = client.try_publish(&self.topics.state, QoS::AtLeastOnce, true, self.state(true));
                        }
                    }
                    _ = config_changed(&self.pushes) => {
                        if st.connected {
                            let _ = client.try_publish(&self.topics.state, QoS::AtLeastOnce, true, self.state(true));
                        }
                    }
                    _ = tick.tick() => {
                        if let Some(h) = &self.heartbeat {
                            h.beat();
                        }
                        if last_progress.elapsed() > watchdog {
                            self.metrics.watchdog_rebuilds.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(stalled_s = last_progress.elapsed().as_secs(), "MQTT event loop made no progress; rebuilding the client");
                            poller.abort();
                            self.online.store(false, Ordering::Relaxed);
                            continue 'client;
                        }
                        self.requeue_overdue(&mut st);
                        self.pump(&client, &mut st);
                        // A commit or rollback by the launcher goes to central at once.
                        if st.connected && self.updates.report_changed() {
                            let _ = client.try_publish(&self.topics.state, QoS::AtLeastOnce, true, self.state(true));
                        }
                    }
                }
            }
        }
    }

    fn on_event(&self, event: Event, client: &AsyncClient, st: &mut SendState) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.metrics.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(host = %self.config.host, port = self.config.port, "uplink connected");
                *st = SendState { connected: true, last_command: st.last_command, ..SendState::default() };
                let subscribed = client
                    .try_subscribe(&self.topics.ack, QoS::AtLeastOnce)
                    .and_then(|_| client.try_subscribe(&self.topics.cmd, QoS::AtLeastOnce))
                    .and_then(|_| client.try_publish(&self.topics.state, QoS::AtLeastOnce, true, self.state(true)));
                if let Err(e) = subscribed {
                    tracing::warn!(error = %e, "could not queue subscriptions; reconnecting");
                    st.connected = false;
                    return;
                }
                self.online.store(true, Ordering::Relaxed);
                self.publish_catalogue(client);
                self.pump(client, st);
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.topics.ack => {
                self.on_ack(&p.payload, st);
                self.pump(client, st);
            }
            Event::Incoming(Packet::Publish(p)) if p.topic == self.topics.cmd => {
                self.on_command(&p.payload, client, st)
            }
            _ => {}
        }
    }

    fn publish_catalogue(&self, client: &AsyncClient) {
        let Some(catalogue) = &self.catalogue else { return };
        match catalogue.seal(&self.key) {
            Ok(sealed) => match client.try_publish(&self.topics.catalogue, QoS::AtLeastOnce, true, sealed) {
                Ok(()) => {
                    self.metrics.catalogues_published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics.catalogue_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "could not queue the point catalogue; it goes with the next connect");
                }
            },
            Err(e) => {
                self.metrics.catalogue_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "the point catalogue cannot be sent; central will list no units or ranges for this gateway");
            }
        }
    }

    fn key_for(&self, id: vigil_common::KeyId) -> Option<PublicKey> {
        self.central_keys.iter().find(|k| k.key_id() == id).cloned()
    }

    fn on_ack(&self, bytes: &[u8], st: &mut SendState) {
        let mut spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        let ack = match Ack::open(bytes, &self.gateway, spool.epoch(), |id| self.key_for(id)) {
            Ok(a) => a,
            Err(e) => {
                self.metrics.acks_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "ack refused");
                return;
            }
        };
        for range in &ack.acked {
            match tokio::task::block_in_place(|| spool.remove(*range)) {
                Ok(n) => {
                    self.metrics.acked.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => tracing::error!(error = %e, "cannot delete acknowledged batches; they will be sent again"),
            }
            let done: Vec<u64> = st.inflight.range(range.first..=range.last).map(|(s, _)| *s).collect();
            for s in done {
                st.inflight.remove(&s);
            }
            st.resend.retain(|s| !range.contains(*s));
        }
        if !ack.resend.is_empty() {
            tracing::debug!(ranges = ?ack.resend, "central asks for re-sends");
        }
        queue_resend(st, &ack.resend, self.resend_min_age());
    }

    fn on_command(&self, bytes: &[u8], client: &AsyncClient, st: &mut SendState) {
        let cmd = match Command::open(bytes, &self.gateway, now_ms(), st.last_command, |id| self.key_for(id)) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.commands_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "command refused");
                return;
            }
        };
        st.last_command = Some(cmd.id);
        self.metrics.commands.fetch_add(1, Ordering::Relaxed);
        match &cmd.action {
            // The download token stays out of the log.
            CommandAction::Update { order, version, .. } => {
                tracing::info!(id = cmd.id, order, %version, "command from central: update")
            }
            other => tracing::info!(id = cmd.id, action = ?other, "command from central"),
        }
        match cmd.action {
            CommandAction::Ping => {
                let _ = client.try_publish(&self.topics.state, QoS::AtLeastOnce, true, self.state(true));
            }
            CommandAction::Resend { epoch, ranges } => {
                let ours = self.spool.lock().unwrap_or_else(|p| p.into_inner()).epoch();
                if epoch == ours {
                    queue_resend(st, &ranges, self.resend_min_age());
                }
            }
            CommandAction::ApplyConfig { version, toml } => match &self.pushes {
                // The store notifies `changed`, so the outcome goes out as fresh state.
                Some((store, running)) => {
                    tokio::task::block_in_place(|| store.receive(version, &toml, running));
                }
                None => tracing::warn!(version, "configuration push ignored: this agent does not take pushes"),
            },
            CommandAction::Update { order, version, target, sha256, size, path, token } => {
                let order = crate::update::remote::Order { order, version, target, sha256, size, path, token };
                // The running configuration's [update] section: keys, central's URL, timeouts.
                let config = self.pushes.as_ref().map(|(_, plant)| plant.config.update.clone()).unwrap_or_default();
                // An https:// central_url is checked against the park CA the uplink trusts.
                let ca_file = self.config.tls.as_ref().map(|t| t.ca_file.clone());
                self.updates.start(order, config, ca_file);
            }
        }
    }

    /// How long a sent batch is left alone before a re-send request may send it again.
    fn resend_min_age(&self) -> Duration {
        Duration::from_millis((self.config.resend_after_s.max(1) * 500).min(1000))
    }

    /// Batches central has not acknowledged in time go out again.
    fn requeue_overdue(&self, st: &mut SendState) {
        let limit = Duration::from_secs(self.config.resend_after_s.max(1));
        let overdue: Vec<u64> =
            st.inflight.iter().filter(|(_, (_, at))| at.elapsed() > limit).map(|(s, _)| *s).collect();
        for s in overdue {
            st.inflight.remove(&s);
            st.resend.insert(s);
        }
    }

    /// Sends what may be sent now: re-send requests, then alarm/event, then live within the window,
    /// then backfill within the window and the rate.
    fn pump(&self, client: &AsyncClient, st: &mut SendState) {
        if !st.connected {
            return;
        }
        let now = Instant::now();
        let rate = f64::from(self.config.backfill_batches_per_s.max(1));
        if let Some(last) = st.last_refill {
            st.backfill_tokens =
                (st.backfill_tokens + now.duration_since(last).as_secs_f64() * rate).min(rate.max(1.0));
        } else {
            st.backfill_tokens = 1.0;
        }
        st.last_refill = Some(now);
        let spool = self.spool.lock().unwrap_or_else(|p| p.into_inner());
        // Re-send requests first, but alarm/event batches are never held behind them.
        if !self.send_class(&*spool, client, st, Priority::AlarmEvent, usize::MAX) {
            return;
        }
        while let Some(seq) = st.resend.pop_first() {
            if st.inflight.len() >= self.config.window {
                st.resend.insert(seq);
                break;
            }
            match spool.get(seq) {
                Ok(Some(b)) => {
                    if !self.publish(client, st, &b) {
                        st.resend.insert(seq);
                        return;
                    }
                    self.metrics.resent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(seq, error = %e, "cannot read batch to re-send"),
            }
        }
        if !self.send_class(&*spool, client, st, Priority::Live, self.config.window) {
            return;
        }
        let budget = st.backfill_tokens.floor() as usize;
        if budget > 0 {
            let before = st.inflight.len();
            self.send_class(&*spool, client, st, Priority::Backfill, self.config.window.min(before + budget));
            st.backfill_tokens -= (st.inflight.len().saturating_sub(before)) as f64;
        }
    }

    /// Sends the next batches of `class` after its cursor while the in-flight count is below
    /// `window`; false when the MQTT client's queue is full.
    fn send_class(&self, spool: &S, client: &AsyncClient, st: &mut SendState, class: Priority, window: usize) -> bool {
        let i = Priority::ALL.iter().position(|c| *c == class).unwrap_or(0);
        loop {
            let room = window.saturating_sub(st.inflight.len()).min(32);
            if room == 0 {
                return true;
            }
            let batches = match spool.pending(class, st.cursors[i], room) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read spool");
                    return true;
                }
            };
            if batches.is_empty() {
                return true;
            }
            for b in &batches {
                if !self.publish(client, st, b) {
                    return false;
                }
                st.cursors[i] = Some(b.seq);
            }
        }
    }

    fn publish(&self, client: &AsyncClient, st: &mut SendState, b: &StoredBatch) -> bool {
        match client.try_publish(&self.topics.batch, QoS::AtLeastOnce, false, b.sealed.clone()) {
            Ok(()) => {
                st.inflight.insert(b.seq, (b.class, Instant::now()));
                self.metrics.published.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }
}

/// What the poller task reports.
enum PollResult {
    /// An MQTT event.
    Event(Event),
    /// The connection failed or was lost; the poller backs off before trying again.
    Lost(String),
    /// Still trying; proves the poller is alive during a long backoff.
    Idle,
}

/// Drives the event loop: forwards events, and after an error waits with exponential backoff and
/// jitter (250 ms doubling to 30 s) before the next poll reconnects.
async fn poll_events(mut eventloop: EventLoop, tx: tokio::sync::mpsc::Sender<PollResult>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    backoff = Duration::from_millis(250);
                }
                if tx.send(PollResult::Event(event)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                if tx.send(PollResult::Lost(e.to_string())).await.is_err() {
                    return;
                }
                let jitter = Duration::from_millis(u64::from(now_ms().unsigned_abs() as u32 % 250));
                let wake = tokio::time::Instant::now() + backoff + jitter;
                // Report liveness at least every second so the watchdog only fires on a real stall.
                while tokio::time::Instant::now() < wake {
                    tokio::time::sleep_until(wake.min(tokio::time::Instant::now() + Duration::from_secs(1))).await;
                    if tx.send(PollResult::Idle).await.is_err() {
                        return;
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Queues re-sends central asked for. A batch sent less than `min_age` ago is not sent again: central
/// may ask for a gap while the batch filling it is still on its way, and answering every such request
/// would flood the link with duplicates.
fn queue_resend(st: &mut SendState, ranges: &[SeqRange], min_age: Duration) {
    for r in ranges {
        let mut s = r.first;
        while s <= r.last && st.resend.len() < MAX_RESEND_QUEUE {
            let recent = st.inflight.get(&s).is_some_and(|(_, at)| at.elapsed() < min_age);
            if !recent {
                st.inflight.remove(&s);
                st.resend.insert(s);
            }
            if s == u64::MAX {
                break;
            }
            s += 1;
        }
    }
}
