//! Test peers for the uplink: a TLS Mosquitto with per-gateway ACLs and a minimal stand-in for
//! central that verifies every batch with the gateway's key and acknowledges what it received.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use vigil_common::{Ack, Batch, Channel, GatewayId, PublicKey, SeqRange, SigningKey, Topic};
use vigil_edge::config::Plant;
use vigil_tools::broker::Mosquitto;
use vigil_tools::pki::{Issued, Pki};

pub const ENTERPRISE: &str = "ent-a";
pub const GATEWAY: &str = "gw-1";

/// Everything one test needs: CA, broker, keys, a gateway configuration.
pub struct Park {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub broker: Mosquitto,
    pub central_tls: Issued,
    pub gateway_tls: Issued,
    pub gateway_key: SigningKey,
    pub central_key: SigningKey,
    /// The spool's disk budget in the gateway configuration.
    pub budget_bytes: u64,
    /// Extra TOML appended to the gateway configuration.
    pub extra_config: String,
}

impl Park {
    pub fn new() -> Park {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create(&dir.path().join("pki")).unwrap();
        let server = pki.issue("broker", "broker", &["127.0.0.1", "localhost"]).unwrap();
        let central_tls = pki.issue("central", "central", &[]).unwrap();
        let gateway_tls = pki.issue(GATEWAY, GATEWAY, &[]).unwrap();
        let broker = Mosquitto::start_tls(&dir.path().join("broker"), &pki, &server, "central").unwrap();
        let gateway_key = vigil_common::keyfile::create(&dir.path().join("gw.key")).unwrap();
        let central_key = SigningKey::generate().unwrap();
        Park {
            dir,
            pki,
            broker,
            central_tls,
            gateway_tls,
            gateway_key,
            central_key,
            budget_bytes: 1 << 30,
            extra_config: String::new(),
        }
    }

    pub fn spool_path(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// A gateway configuration reaching the broker at `port` (the broker's, or a proxy's).
    pub fn gateway_config(&self, port: u16) -> Plant {
        let text = format!(
            r#"
[gateway]
id = "{GATEWAY}"
enterprise = "{ENTERPRISE}"
key_file = "{key}"

[spool]
path = "{spool}"
batch_max_age_ms = 100
budget_bytes = {budget}

[system]
interval_ms = 20

[uplink]
host = "127.0.0.1"
port = {port}
central_keys = ["{central}"]
keepalive_s = 5
resend_after_s = 3

[uplink.tls]
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{tlskey}"
"#,
            key = self.dir.path().join("gw.key").display(),
            spool = self.spool_path().display(),
            budget = self.budget_bytes,
            central = self.central_key.public_key().to_text(),
            ca = self.pki.ca_file().display(),
            cert = self.gateway_tls.cert.display(),
            tlskey = self.gateway_tls.key.display(),
        );
        let path = self.dir.path().join("gateway.toml");
        std::fs::write(&path, text + &self.extra_config).unwrap();
        vigil_edge::config::load(&path).unwrap()
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }
}

pub fn tls(ca: &Path, cert: &Path, key: &Path) -> TlsConfiguration {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    TlsConfiguration::Rustls(Arc::new(config))
}

/// What the stand-in central received.
#[derive(Default, Debug)]
pub struct Received {
    /// First copy of every batch, by (epoch, seq).
    pub batches: BTreeMap<(u64, u64), Batch>,
    pub duplicates: u64,
    pub rejected: u64,
    pub states: Vec<vigil_common::GatewayState>,
    /// Batches deliberately ignored once, and when.
    pub lost_once: Vec<(u64, std::time::Instant)>,
    /// When each (epoch, seq) first arrived.
    pub arrived: BTreeMap<(u64, u64), std::time::Instant>,
}

impl Received {
    /// Sequence numbers received in `epoch`.
    pub fn seqs(&self, epoch: u64) -> BTreeSet<u64> {
        self.batches.keys().filter(|(e, _)| *e == epoch).map(|(_, s)| *s).collect()
    }

    pub fn epochs(&self) -> BTreeSet<u64> {
        self.batches.keys().map(|(e, _)| *e).collect()
    }
}

/// Merges a set of sequence numbers into ranges.
pub fn ranges(seqs: &BTreeSet<u64>) -> Vec<SeqRange> {
    let mut out: Vec<SeqRange> = Vec::new();
    for &s in seqs {
        match out.last_mut() {
            Some(r) if r.last + 1 == s => r.last = s,
            _ => out.push(SeqRange { first: s, last: s }),
        }
    }
    out
}

/// A stand-in for central: verifies batches with the gateway's key and acks all received per epoch.
pub struct StandInCentral {
    pub received: Arc<Mutex<Received>>,
    pub acking: Arc<std::sync::atomic::AtomicBool>,
    /// A sequence number to ignore the first time it arrives and ask for again in the ack's resend list.
    pub lose_once: Arc<Mutex<Option<u64>>>,
    pub client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandInCentral {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandInCentral {
    pub async fn start(park: &Park) -> StandInCentral {
        let mut opts = MqttOptions::new("central", "127.0.0.1", park.broker.port());
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(4 << 20, 4 << 20);
        opts.set_transport(Transport::tls_with_config(tls(
            &park.pki.ca_file(),
            &park.central_tls.cert,
            &park.central_tls.key,
        )));
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let received = Arc::new(Mutex::new(Received::default()));
        let acking = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let lose_once: Arc<Mutex<Option<u64>>> = Arc::default();
        let gateway_key: PublicKey = park.gateway_key.public_key();
        let central_key = park.central_key.clone();
        let (rec, ack_on, c, lose) = (received.clone(), acking.clone(), client.clone(), lose_once.clone());
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.subscribe(Channel::UpBatch.filter_all(), QoS::AtLeastOnce).await.unwrap();
                        c.subscribe(Channel::UpState.filter_all(), QoS::AtLeastOnce).await.unwrap();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = Topic::parse(&p.topic).unwrap();
                        if topic.channel == Channel::UpState {
                            if let Ok(s) = vigil_common::GatewayState::open(&p.payload, &topic.gateway, |_| {
                                Some(gateway_key.clone())
                            }) {
                                rec.lock().unwrap().states.push(s);
                            }
                            continue;
                        }
                        let Ok(batch) = Batch::open(&p.payload, &topic.gateway, |_| Some(gateway_key.clone())) else {
                            rec.lock().unwrap().rejected += 1;
                            continue;
                        };
                        let (epoch, seq) = (batch.epoch, batch.seq);
                        let lost = {
                            let mut l = lose.lock().unwrap();
                            if *l == Some(batch.seq) {
                                *l = None;
                                true
                            } else {
                                false
                            }
                        };
                        if lost {
                            rec.lock().unwrap().lost_once.push((batch.seq, std::time::Instant::now()));
                            continue;
                        }
                        let seqs = {
                            let mut r = rec.lock().unwrap();
                            match r.batches.entry((epoch, batch.seq)) {
                                std::collections::btree_map::Entry::Occupied(_) => r.duplicates += 1,
                                std::collections::btree_map::Entry::Vacant(v) => {
                                    v.insert(batch);
                                }
                            }
                            if let std::collections::btree_map::Entry::Vacant(v) = r.arrived.entry((epoch, seq)) {
                                v.insert(std::time::Instant::now());
                            }
                            r.seqs(epoch)
                        };
                        if ack_on.load(std::sync::atomic::Ordering::SeqCst) {
                            // Gaps below the highest sequence received are asked for again.
                            let max = seqs.last().copied().unwrap_or(0);
                            let gaps: BTreeSet<u64> = (0..max).filter(|s| !seqs.contains(s)).collect();
                            let ack = Ack {
                                gateway: topic.gateway.clone(),
                                epoch,
                                acked: ranges(&seqs),
                                resend: ranges(&gaps),
                                central_ms: 0,
                            };
                            let t = Topic::new(topic.enterprise, topic.gateway, Channel::DownAck).to_string();
                            let _ = c.try_publish(t, QoS::AtLeastOnce, false, ack.seal(&central_key).unwrap());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        StandInCentral { received, acking, lose_once, client, task }
    }
}

/// Values of `point` over all batches of `epoch`, in sequence order.
pub fn values_of(r: &Received, epoch: u64, point: &str) -> Vec<i64> {
    r.batches
        .iter()
        .filter(|((e, _), _)| *e == epoch)
        .flat_map(|(_, b)| b.series.iter().filter(|s| s.point.as_str() == point).flat_map(|s| s.samples.iter()))
        .filter_map(|s| if let vigil_common::Value::I64(v) = s.value { Some(v) } else { None })
        .collect()
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn gateway_id() -> GatewayId {
    GatewayId::new(GATEWAY).unwrap()
}

/// Waits up to `secs` for `cond`.
pub async fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}
