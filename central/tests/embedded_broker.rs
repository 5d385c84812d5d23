//! The embedded broker over real TLS sockets with real certificates (`broker::pki`) and real MQTT
//! clients (rumqttc, as gateways and central use it): identities, ACLs, wills, retained state across
//! a restart, takeover, limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use vigil_central::broker::{Broker, Disconnect, Refusal, pki};
use vigil_central::config::BrokerConfig;
use vigil_central::store::Registry;
use vigil_common::{EnterpriseId, GatewayId, SigningKey};

struct Park {
    dir: tempfile::TempDir,
    registry: Registry,
}

impl Park {
    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    fn config(&self) -> BrokerConfig {
        let p = self.pki();
        BrokerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ca_file: p.join(pki::CA_CERT),
            cert_file: p.join(pki::BROKER_CERT),
            key_file: p.join(pki::BROKER_KEY),
            central_cert_file: p.join(pki::CENTRAL_CERT),
            central_key_file: p.join(pki::CENTRAL_KEY),
            handshake_timeout_ms: 2000,
            ..BrokerConfig::default()
        }
    }

    async fn broker(&self, cfg: &BrokerConfig) -> Broker {
        Broker::start(cfg, &self.dir.path().join("data"), self.registry.clone(), Duration::from_millis(300))
            .await
            .unwrap()
    }
}

/// Waits up to 10 s for a broker counter to read `want`: the broker counts a disconnect or a refusal
/// after it has closed the socket, so the client can see the close before the count moves.
async fn settles(what: &str, want: u64, read: impl Fn() -> u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while read() != want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read(), want, "{what}");
}

async fn park() -> Park {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    pki::init(&dir.path().join("pki"), "vigil-central", &[]).unwrap();
    let registry = Registry::open(&dir.path().join("data")).await.unwrap();
    let ent = EnterpriseId::new("ent-a").unwrap();
    for (i, id) in ["gw-1", "gw-2", "gw-revoked"].into_iter().enumerate() {
        pki::issue_gateway(&dir.path().join("pki"), id).unwrap();
        let key = SigningKey::from_seed(&[i as u8 + 1; 32]).public_key();
        registry.add(&GatewayId::new(id).unwrap(), &ent, &key, 0).await.unwrap();
    }
    registry.revoke(&GatewayId::new("gw-revoked").unwrap(), None, 1).await.unwrap();
    Park { dir, registry }
}

fn tls(ca: &Path, cert: &Path, key: &Path) -> Transport {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(cfg)))
}

/// A connected client: its handle and the packets it receives (or `None` when the connection ends).
struct Client {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Option<Packet>>,
    task: tokio::task::JoinHandle<()>,
}

fn connect(port: u16, id: &str, transport: Transport, will: Option<LastWill>) -> Client {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_transport(transport);
    if let Some(w) = will {
        o.set_last_will(w);
    }
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(Some(p)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
            }
        }
    });
    Client { client, events, task }
}

fn gateway(park: &Park, port: u16, id: &str, will: Option<LastWill>) -> Client {
    let d = park.pki().join("gateways").join(id);
    connect(port, id, tls(&d.join("ca.pem"), &d.join(format!("{id}.pem")), &d.join(format!("{id}.key"))), will)
}

fn central(park: &Park, port: u16) -> Client {
    let p = park.pki();
    connect(
        port,
        "vigil-central",
        tls(&p.join(pki::CA_CERT), &p.join(pki::CENTRAL_CERT), &p.join(pki::CENTRAL_KEY)),
        None,
    )
}

impl Client {
    /// The next packet that `pick` accepts, skipping others; `None` if the connection ended first.
    async fn next<T>(&mut self, mut pick: impl FnMut(&Packet) -> Option<T>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match self.events.recv().await.flatten() {
                    Some(p) => {
                        if let Some(t) = pick(&p) {
                            return Some(t);
                        }
                    }
                    None => return None,
                }
            }
        })
        .await
        .expect("no event within 20 s")
    }

    async fn connack(&mut self) -> bool {
        self.next(
            |p| if let Packet::ConnAck(c) = p { Some(c.code == rumqttc::ConnectReturnCode::Success) } else { None },
        )
        .await
        .unwrap_or(false)
    }

    async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
        self.next(|p| if let Packet::SubAck(s) = p { Some(s.return_codes.clone()) } else { None }).await.unwrap()
    }

    async fn publish(&mut self) -> Option<rumqttc::Publish> {
        self.next(|p| if let Packet::Publish(p) = p { Some(p.clone()) } else { None }).await
    }
}

const T1: &str = "vigil/v1/ent-a/gw-1/up/batch";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_publishes_only_under_its_own_id_and_central_only_gets_what_is_allowed() {
    let park = park().await;
    let broker = park.broker(&park.config()).await;
    let port = broker.local_addr().port();
    let mut c = central(&park, port);
    assert!(c.connack().await);
    c.client.subscribe("vigil/v1/+/+/up/#", QoS::AtLeastOnce).await.unwrap();
    c.client.subscribe("vigil/v1/+/+/down/#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(c.suback().await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    assert_eq!(c.suback().await, vec![SubscribeReasonCode::Failure], "central may not read downlinks");

    let mut g1 = gateway(&park, port, "gw-1", None);
    assert!(g1.connack().await);
    g1.client.subscribe("vigil/v1/ent-a/gw-1/down/ack", QoS::AtLeastOnce).await.unwrap();
    g1.client.subscribe("vigil/v1/ent-a/gw-2/down/ack", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(g1.suback().await, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    assert_eq!(g1.suback().await, vec![SubscribeReasonCode::Failure], "another gateway's acks");
    // Its own batch reaches central, twice (a duplicate is forwarded as is; central deduplicates).
    for _ in 0..2 {
        g1.client.publish(T1, QoS::AtLeastOnce, false, b"batch-1".to_vec()).await.unwrap();
        let p = c.publish().await.unwrap();
        assert_eq!((p.topic.as_str(), &p.payload[..]), (T1, &b"batch-1"[..]));
    }
    // Central's ack reaches the gateway.
    c.client.publish("vigil/v1/ent-a/gw-1/down/ack", QoS::AtLeastOnce, false, b"ack".to_vec()).await.unwrap();
    assert_eq!(&g1.publish().await.unwrap().payload[..], b"ack");
    // Publishing under gw-2's id: disconnected, never forwarded.
    g1.client.publish("vigil/v1/ent-a/gw-2/up/batch", QoS::AtLeastOnce, false, b"forged".to_vec()).await.unwrap();
    assert!(g1.publish().await.is_none(), "the forging gateway is disconnected");
    let m = broker.metrics();
    assert_eq!(m.publish_forbidden.load(std::sync::atomic::Ordering::Relaxed), 1);
    settles("m.disconnects(Disconnect::Forbidden)", 1, || m.disconnects(Disconnect::Forbidden)).await;
    assert_eq!(m.subscribe_forbidden.load(std::sync::atomic::Ordering::Relaxed), 2);
    // A later allowed message is the next thing central sees: the forged one never arrived.
    let mut g2 = gateway(&park, port, "gw-2", None);
    assert!(g2.connack().await);
    g2.client.publish("vigil/v1/ent-a/gw-2/up/batch", QoS::AtLeastOnce, false, b"batch-2".to_vec()).await.unwrap();
    assert_eq!(&c.publish().await.unwrap().payload[..], b"batch-2");
    assert!(m.prometheus().contains("vigil_broker_disconnects_total{reason=\"forbidden_publish\"} 1"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_at_the_handshake_or_at_connect() {
    let park = park().await;
    let broker = park.broker(&park.config()).await;
    let port = broker.local_addr().port();
    let m = broker.metrics();
    // A certificate from another CA (trusting ours) fails the TLS handshake.
    let other = tempfile::tempdir().unwrap();
    pki::init(other.path(), "vigil-central", &[]).unwrap();
    pki::issue_gateway(other.path(), "gw-1").unwrap();
    let d = other.path().join("gateways/gw-1");
    let mut rogue =
        connect(port, "gw-1", tls(&park.pki().join("ca.pem"), &d.join("gw-1.pem"), &d.join("gw-1.key")), None);
    assert!(!rogue.connack().await);
    // The client id must be the certificate's CN.
    let d = park.pki().join("gateways/gw-1");
    let mut liar = connect(port, "gw-2", tls(&d.join("ca.pem"), &d.join("gw-1.pem"), &d.join("gw-1.key")), None);
    assert!(!liar.connack().await);
    // A revoked gateway, and a will outside the gateway's own topics.
    let mut revoked = gateway(&park, port, "gw-revoked", None);
    assert!(!revoked.connack().await);
    let will = LastWill::new("vigil/v1/ent-a/gw-2/up/state", b"x".to_vec(), QoS::AtLeastOnce, true);
    let mut bad_will = gateway(&park, port, "gw-1", Some(will));
    assert!(!bad_will.connack().await);
    // Silence after TCP connect: dropped at the handshake timeout.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while m.refused(Refusal::HandshakeTimeout) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    settles("m.refused(Refusal::Tls)", 1, || m.refused(Refusal::Tls)).await;
    settles("m.refused(Refusal::ClientId)", 1, || m.refused(Refusal::ClientId)).await;
    settles("m.refused(Refusal::Revoked)", 1, || m.refused(Refusal::Revoked)).await;
    settles("m.refused(Refusal::Will)", 1, || m.refused(Refusal::Will)).await;
    assert_eq!(m.connections.load(std::sync::atomic::Ordering::Relaxed), 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_goes_out_on_a_lost_connection_and_retained_state_survives_a_restart() {
    let park = park().await;
    let cfg = park.config();
    let broker = park.broker(&cfg).await;
    let port = broker.local_addr().port();
    let state = "vigil/v1/ent-a/gw-1/up/state";
    let will = LastWill::new(state, b"offline".to_vec(), QoS::AtLeastOnce, true);
    let mut g = gateway(&park, port, "gw-1", Some(will));
    assert!(g.connack().await);
    g.client.publish(state, QoS::AtLeastOnce, true, b"online".to_vec()).await.unwrap();
    g.next(|p| matches!(p, Packet::PubAck(_)).then_some(())).await.unwrap();
    let mut c = central(&park, port);
    assert!(c.connack().await);
    c.client.subscribe("vigil/v1/+/+/up/state", QoS::AtLeastOnce).await.unwrap();
    let p = c.publish().await.unwrap();
    assert_eq!((&p.payload[..], p.retain), (&b"online"[..], true), "retained birth on subscribe");
    // The gateway's connection dies without DISCONNECT (its task is gone, the socket closes).
    g.task.abort();
    drop(g);
    let p = c.publish().await.unwrap();
    assert_eq!((&p.payload[..], p.retain), (&b"offline"[..], false), "the will, live");
    assert_eq!(broker.metrics().wills.load(std::sync::atomic::Ordering::Relaxed), 1);
    // Restart the broker: the retained will is still there.
    broker.stop().await;
    let broker = park.broker(&cfg).await;
    let mut c = central(&park, broker.local_addr().port());
    assert!(c.connack().await);
    c.client.subscribe("vigil/v1/+/+/up/state", QoS::AtLeastOnce).await.unwrap();
    let p = c.publish().await.unwrap();
    assert_eq!((p.topic.as_str(), &p.payload[..], p.retain), (state, &b"offline"[..], true));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_takes_over_and_a_revoked_gateway_is_disconnected() {
    let park = park().await;
    let broker = park.broker(&park.config()).await;
    let port = broker.local_addr().port();
    let will = LastWill::new("vigil/v1/ent-a/gw-1/up/state", b"offline".to_vec(), QoS::AtLeastOnce, true);
    let mut first = gateway(&park, port, "gw-1", Some(will.clone()));
    assert!(first.connack().await);
    let mut second = gateway(&park, port, "gw-1", Some(will));
    assert!(second.connack().await);
    assert!(first.publish().await.is_none(), "the first connection is ended");
    first.task.abort();
    let m = broker.metrics();
    settles("m.disconnects(Disconnect::Takeover)", 1, || m.disconnects(Disconnect::Takeover)).await;
    assert_eq!(m.wills.load(std::sync::atomic::Ordering::Relaxed), 0, "no will on takeover");
    park.registry.revoke(&GatewayId::new("gw-1").unwrap(), None, vigil_central::ingest::now_ms()).await.unwrap();
    assert!(second.publish().await.is_none(), "revoked while connected: disconnected");
    settles("m.disconnects(Disconnect::Revoked)", 1, || m.disconnects(Disconnect::Revoked)).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_extra_connections_and_oversized_packets() {
    let park = park().await;
    let cfg = BrokerConfig { max_connections: 1, max_packet_bytes: 2048, ..park.config() };
    let broker = park.broker(&cfg).await;
    let port = broker.local_addr().port();
    let mut g1 = gateway(&park, port, "gw-1", None);
    assert!(g1.connack().await);
    let mut g2 = gateway(&park, port, "gw-2", None);
    assert!(!g2.connack().await, "over the connection limit");
    settles("broker.metrics().refused(Refusal::Limit)", 1, || broker.metrics().refused(Refusal::Limit)).await;
    g1.client.publish(T1, QoS::AtLeastOnce, false, vec![0u8; 4096]).await.unwrap();
    assert!(g1.publish().await.is_none(), "oversized packet: disconnected");
    settles("broker.metrics().disconnects(Disconnect::Oversize)", 1, || {
        broker.metrics().disconnects(Disconnect::Oversize)
    })
    .await;
    broker.stop().await;
}
