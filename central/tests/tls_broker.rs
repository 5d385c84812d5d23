//! Central connects to its own Mosquitto over TLS with a client certificate (CA, broker and client
//! certificates generated per test with rcgen): a batch published by a gateway is acknowledged; a
//! central presenting a certificate from another CA is refused by the broker and keeps counting errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::{SimGateway, free_port, mqtt_client, unique};
use vigil_central::config::Config;
use vigil_central::ingest::{self, Core};
use vigil_central::store::Registry;
use vigil_common::{EnterpriseId, SigningKey};

struct Broker(Child);
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(p, key))
}

fn leaf(cn: &str, issuer: &Issuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    (p.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

async fn start_central(dir: &std::path::Path, tls_port: u16, cert: &(String, String), name: &str) -> (Core, Config) {
    std::fs::write(dir.join(format!("{name}.pem")), &cert.0).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), &cert.1).unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"data-{name}\"\nkey_file = \"k\"\n[mqtt]\nhost = \"localhost\"\nport = {tls_port}\nclient_id = \"{}\"\n\
             [mqtt.tls]\nca_file = \"ca.pem\"\ncert_file = \"{name}.pem\"\nkey_file = \"{name}-key.pem\"\n",
            unique(name)
        ),
    )
    .unwrap();
    let cfg = Config::load(&cfg).unwrap();
    (Core::open(cfg.clone(), SigningKey::from_seed(&[4; 32])).await.unwrap(), cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_uses_tls_with_a_client_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, issuer) = ca("vigil test ca");
    let (srv_pem, srv_key) = leaf("localhost", &issuer);
    std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(dir.path().join("server.pem"), &srv_pem).unwrap();
    std::fs::write(dir.path().join("server.key"), &srv_key).unwrap();
    let (tls_port, plain_port) = (free_port(), free_port());
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous true\npersistence false\n\
             listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n\
             listener {plain_port} 127.0.0.1\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let _broker = Broker(
        Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", plain_port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A central whose certificate another CA signed is refused.
    let (_, rogue_issuer) = ca("rogue ca");
    let (rogue, rogue_cfg) = start_central(dir.path(), tls_port, &leaf("central", &rogue_issuer), "rogue").await;
    let rogue_metrics = rogue.metrics.clone();
    let (client, el) = rumqttc::AsyncClient::new(ingest::mqtt_options(&rogue_cfg.mqtt).unwrap(), 10);
    let (tx, _rx) = ingest::lanes(10);
    let rogue_task = tokio::spawn(ingest::mqtt_loop(client, el, tx, rogue_metrics.clone()));
    drop(rogue);

    // The real central.
    let ent = unique("ent");
    let mut gw = SimGateway::new(&unique("gw"), &ent, 3);
    let (core, cfg) = start_central(dir.path(), tls_port, &leaf("central", &issuer), "central").await;
    // Registered after central opened: the registry is re-read when an unknown gateway shows up.
    Registry::open(&cfg.data_dir)
        .await
        .unwrap()
        .add(&gw.gateway, &EnterpriseId::new(ent.clone()).unwrap(), &gw.key.public_key(), 0)
        .await
        .unwrap();
    let central_pub = SigningKey::from_seed(&[4; 32]).public_key();
    let metrics = core.metrics.clone();
    let (client, el) = rumqttc::AsyncClient::new(ingest::mqtt_options(&cfg.mqtt).unwrap(), 100);
    let (tx, rx) = ingest::lanes(100);
    tokio::spawn(ingest::mqtt_loop(client.clone(), el, tx, metrics.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ingest::run(core, client, rx, async {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    while metrics.mqtt_connects.load(Ordering::Relaxed) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "central did not connect over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (pubc, mut acks) = mqtt_client(&unique("gwc"), plain_port, &[gw.topic("down/ack")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, bytes) = gw.next_batch(5, 1_795_000_000_000);
    pubc.publish(gw.topic("up/batch"), rumqttc::QoS::AtLeastOnce, false, bytes).await.unwrap();
    let (_, ack) = tokio::time::timeout(Duration::from_secs(10), acks.recv()).await.expect("ack in time").unwrap();
    assert!(gw.on_ack(&ack, &central_pub).is_some());
    assert!(gw.unacked.is_empty());

    assert_eq!(rogue_metrics.mqtt_connects.load(Ordering::Relaxed), 0, "broker refused the rogue certificate");
    assert!(rogue_metrics.mqtt_errors.load(Ordering::Relaxed) > 0);
    rogue_task.abort();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
