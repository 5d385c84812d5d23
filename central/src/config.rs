//! `vigil-central run --config FILE`: the TOML configuration, parsed and validated as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown/missing keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml reported (with the key path).
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {key}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key path.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory: WAL, chunks, metadata database, checkpoint.
    pub data_dir: PathBuf,
    /// Central's signing key (acks and commands), mode 0600.
    pub key_file: PathBuf,
    /// The broker ingest connects to: the external one of `[mqtt]`, or else the embedded broker over
    /// loopback TLS with central's client certificate.
    pub mqtt: MqttConfig,
    /// The embedded broker central runs (the default); `None` when `[mqtt]` names an external one.
    pub broker: Option<BrokerConfig>,
    /// Ingest tuning.
    pub ingest: IngestConfig,
    /// Historian settings.
    pub historian: HistorianConfig,
    /// HTTP query API.
    pub api: ApiConfig,
    /// Users and sessions: password policy, lockout, token lifetime.
    pub auth: crate::identity::AuthConfig,
    /// Alarm definitions file (see `configs/examples/alarms.toml`); without it the alarm engine
    /// still raises gateway and device offline, source-fault and data-loss alarms.
    pub alarms: Option<PathBuf>,
    /// Gateways file (`[[gateway]] id, enterprise, keys, revoked`) applied to the registry at start
    /// and by `vigil-central gateway sync`, beside the CLI (see `configs/examples/gateways.toml`).
    pub gateways: Option<PathBuf>,
}

/// The file as written: `[mqtt]` and `[broker]` are both optional (at most one may be given).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: PathBuf,
    key_file: PathBuf,
    mqtt: Option<MqttConfig>,
    broker: Option<BrokerConfig>,
    #[serde(default)]
    ingest: IngestConfig,
    #[serde(default)]
    historian: HistorianConfig,
    #[serde(default)]
    api: ApiConfig,
    #[serde(default)]
    auth: crate::identity::AuthConfig,
    alarms: Option<PathBuf>,
    gateways: Option<PathBuf>,
}

/// The embedded MQTT broker (`[broker]`; used when `[mqtt]` is absent). Files are PEM, relative to
/// the configuration file; `vigil-central pki init --dir pki` creates them under the default names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Listen address for gateways (MQTT over TLS).
    pub listen: SocketAddr,
    /// The park CA: client certificates must be signed by it.
    pub ca_file: PathBuf,
    /// The broker's server certificate (its names must include how gateways reach central).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// Common name (= MQTT client id) of central's own client certificate.
    pub central_cn: String,
    /// Central's client certificate, for ingest's loopback connection.
    pub central_cert_file: PathBuf,
    /// Its private key.
    pub central_key_file: PathBuf,
    /// Most connections at once (more are refused and counted).
    pub max_connections: usize,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_bytes: usize,
    /// Messages queued per connection; a subscriber whose queue is full is disconnected.
    pub queue_len: usize,
    /// Unacknowledged QoS 1 deliveries per connection.
    pub max_inflight: usize,
    /// TLS handshake and CONNECT must complete within this, ms.
    pub handshake_timeout_ms: u64,
    /// Keep-alive cap, s (also used for clients asking for none).
    pub max_keep_alive_s: u16,
    /// A write to a client must complete within this, ms.
    pub write_timeout_ms: u64,
    /// Most retained messages kept.
    pub max_retained: usize,
    /// The CA's private key, with which gateway enrolment (`POST /api/v1/enrol`) signs gateways'
    /// certificate requests; enrolment answers 503 while it is absent.
    pub ca_key_file: PathBuf,
    /// The host name or address enrolment tells gateways to reach this broker at (it must be
    /// among the broker certificate's names); by default the host the enrolment request came to.
    pub advertise_host: Option<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
            ca_file: PathBuf::from("pki/ca.pem"),
            cert_file: PathBuf::from("pki/broker.pem"),
            key_file: PathBuf::from("pki/broker.key"),
            central_cn: default_client_id(),
            central_cert_file: PathBuf::from("pki/central-tls.pem"),
            central_key_file: PathBuf::from("pki/central-tls.key"),
            max_connections: 10_000,
            max_packet_bytes: vigil_common::envelope::Kind::Batch.max_envelope_len() + 1024,
            queue_len: 10_000,
            max_inflight: 1000,
            handshake_timeout_ms: 10_000,
            max_keep_alive_s: 600,
            write_timeout_ms: 30_000,
            max_retained: 100_000,
            ca_key_file: PathBuf::from("pki/ca.key"),
            advertise_host: None,
        }
    }
}

impl BrokerConfig {
    /// How ingest reaches this broker: loopback TLS with central's client certificate.
    pub fn loopback(&self, port: u16) -> MqttConfig {
        let ip = self.listen.ip();
        let host = match ip {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => "::1".to_owned(),
            ip => ip.to_string(),
        };
        MqttConfig {
            host,
            port,
            client_id: self.central_cn.clone(),
            tls: Some(TlsConfig {
                ca_file: self.ca_file.clone(),
                cert_file: self.central_cert_file.clone(),
                key_file: self.central_key_file.clone(),
            }),
            keep_alive_s: default_keep_alive(),
        }
    }
}

/// External broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Host name or address.
    pub host: String,
    /// Port (1883 plain, 8883 TLS by convention).
    pub port: u16,
    /// MQTT client id.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// TLS with a client certificate; absent means plain TCP (for a broker on the same host only).
    pub tls: Option<TlsConfig>,
    /// Keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
}

/// TLS files (PEM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// Central's client certificate.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// Ingest tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most messages per group commit.
    pub group_max: usize,
    /// Ask for a re-send of a gap after it has been open this long, ms.
    pub resend_after_ms: i64,
    /// Checkpoint (flush heads, fsync chunks, drop WAL) at least this often, s.
    pub checkpoint_interval_s: u64,
    /// Checkpoint also when the WAL has grown by this many bytes.
    pub checkpoint_wal_bytes: u64,
    /// Re-read the gateway registry this often, s (CLI changes take effect within this time).
    pub registry_reload_s: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            group_max: 1024,
            resend_after_ms: 10_000,
            checkpoint_interval_s: 300,
            checkpoint_wal_bytes: 256 * 1024 * 1024,
            registry_reload_s: 5,
        }
    }
}

/// Historian settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorianConfig {
    /// Keep history this many days (whole day files are dropped after).
    pub retention_days: u32,
    /// Most samples held uncompressed in heads before all heads are flushed.
    pub max_head_samples: usize,
    /// Lossy swinging-door compression rules (`[[historian.swinging_door]]`); none: lossless.
    pub swinging_door: Vec<crate::swinging_door::DoorRule>,
}

impl Default for HistorianConfig {
    fn default() -> Self {
        HistorianConfig { retention_days: 400, max_head_samples: 8_000_000, swinging_door: Vec::new() }
    }
}

/// HTTP query API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Longest time to a response head, seconds (streams run longer).
    pub request_timeout_s: u64,
    /// API-call log records queued for the writer; beyond this, records are counted as dropped
    /// rather than slowing requests down.
    pub call_log_queue: usize,
    /// Mark the session cookie `Secure` (set when central is reached over HTTPS, e.g. behind a
    /// TLS-terminating proxy); always on when `tls_cert_file` is set.
    pub secure_cookie: bool,
    /// The API's server certificate chain (PEM, leaf first; `vigil-central pki issue-server`):
    /// with `tls_key_file`, `listen` serves HTTPS only (the UI too). Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// With TLS: a client must finish the TLS handshake within this, ms.
    pub tls_handshake_timeout_ms: u64,
    /// With TLS: most connections open at once (handshakes included); more are closed at accept and
    /// counted.
    pub tls_max_connections: usize,
    /// The park layout the overview draws (JSON, the shape of `central/ui/park-layout.json`);
    /// read on every request, so an edited file shows on the next page load. Without it the
    /// embedded example layout is served.
    pub park_layout: Option<PathBuf>,
    /// What gateway enrolment signs with and advertises; not read from `[api]` but filled in from
    /// `[broker]` and `key_file` when the configuration is loaded.
    #[serde(skip)]
    pub enrolment: EnrolSettings,
}

/// What gateway enrolment needs besides the database (see [`ApiConfig::enrolment`]); enrolment
/// answers 503 while the files are not set (an external broker, or no park CA).
#[derive(Debug, Clone, Default)]
pub struct EnrolSettings {
    /// The park CA's certificate.
    pub ca_cert_file: Option<PathBuf>,
    /// The park CA's private key.
    pub ca_key_file: Option<PathBuf>,
    /// Central's signing key (its public key goes to the gateway).
    pub central_key_file: Option<PathBuf>,
    /// The broker host to advertise (`None`: the host the enrolment request came to).
    pub broker_host: Option<String>,
    /// The embedded broker's port (set to the bound port once the broker runs).
    pub broker_port: u16,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            request_timeout_s: 30,
            call_log_queue: 65_536,
            secure_cookie: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_handshake_timeout_ms: 10_000,
            tls_max_connections: 1024,
            park_layout: None,
            enrolment: EnrolSettings::default(),
        }
    }
}

fn default_client_id() -> String {
    "vigil-central".into()
}
fn default_keep_alive() -> u64 {
    15
}

fn check_broker(b: &BrokerConfig) -> Result<(), (&'static str, &'static str)> {
    if b.central_cn.is_empty() {
        return Err(("broker.central_cn", "must not be empty"));
    }
    if b.max_connections == 0 {
        return Err(("broker.max_connections", "must be at least 1"));
    }
    if b.max_packet_bytes < 1024 {
        return Err(("broker.max_packet_bytes", "must be at least 1024"));
    }
    if b.queue_len == 0 {
        return Err(("broker.queue_len", "must be at least 1"));
    }
    if !(1..=65_000).contains(&b.max_inflight) {
        return Err(("broker.max_inflight", "must be 1..=65000"));
    }
    if b.handshake_timeout_ms < 100 {
        return Err(("broker.handshake_timeout_ms", "must be at least 100"));
    }
    if b.write_timeout_ms < 100 {
        return Err(("broker.write_timeout_ms", "must be at least 100"));
    }
    if b.max_keep_alive_s < 5 {
        return Err(("broker.max_keep_alive_s", "must be at least 5"));
    }
    if b.max_retained == 0 {
        return Err(("broker.max_retained", "must be at least 1"));
    }
    Ok(())
}

impl Config {
    /// Reads and validates a configuration file; relative paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut raw: RawConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let invalid = |key, why: &str| ConfigError::Invalid { path: path.to_owned(), key, why: why.to_owned() };
        let base = path.parent().unwrap_or(Path::new("."));
        let absolute = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        absolute(&mut raw.data_dir);
        absolute(&mut raw.key_file);
        if let Some(p) = &mut raw.alarms {
            absolute(p);
        }
        if let Some(p) = &mut raw.gateways {
            absolute(p);
            crate::store::GatewaysFile::load(p).map_err(|e| invalid("gateways", &e.to_string()))?;
        }
        if let Some(p) = &mut raw.api.park_layout {
            absolute(p);
            crate::ui::check_layout(p).map_err(|why| invalid("api.park_layout", &why))?;
        }
        match (&mut raw.api.tls_cert_file, &mut raw.api.tls_key_file) {
            (Some(cert), Some(key)) => {
                absolute(cert);
                absolute(key);
                // An HTTPS-only listener: the session cookie must never be sent over plain HTTP.
                raw.api.secure_cookie = true;
            }
            (Some(_), None) => {
                return Err(invalid("api.tls_key_file", "missing: tls_cert_file is set; give both or neither"));
            }
            (None, Some(_)) => {
                return Err(invalid("api.tls_cert_file", "missing: tls_key_file is set; give both or neither"));
            }
            (None, None) => {}
        }
        if let Some(t) = raw.mqtt.as_mut().and_then(|m| m.tls.as_mut()) {
            for p in [&mut t.ca_file, &mut t.cert_file, &mut t.key_file] {
                absolute(p);
            }
        }
        let (mqtt, broker) = match (raw.mqtt, raw.broker) {
            (Some(_), Some(_)) => {
                return Err(invalid("broker", "give [broker] (embedded broker) or [mqtt] (external broker), not both"));
            }
            (Some(m), None) => (m, None),
            (None, b) => {
                let mut b = b.unwrap_or_default();
                for p in [
                    &mut b.ca_file,
                    &mut b.cert_file,
                    &mut b.key_file,
                    &mut b.central_cert_file,
                    &mut b.central_key_file,
                    &mut b.ca_key_file,
                ] {
                    absolute(p);
                }
                check_broker(&b).map_err(|(key, why)| invalid(key, why))?;
                (b.loopback(b.listen.port()), Some(b))
            }
        };
        if let Some(b) = &broker {
            raw.api.enrolment = EnrolSettings {
                ca_cert_file: Some(b.ca_file.clone()),
                ca_key_file: Some(b.ca_key_file.clone()),
                central_key_file: Some(raw.key_file.clone()),
                broker_host: b.advertise_host.clone(),
                broker_port: b.listen.port(),
            };
        }
        let c = Config {
            data_dir: raw.data_dir,
            key_file: raw.key_file,
            mqtt,
            broker,
            ingest: raw.ingest,
            historian: raw.historian,
            api: raw.api,
            auth: raw.auth,
            alarms: raw.alarms,
            gateways: raw.gateways,
        };
        if c.ingest.group_max == 0 || c.ingest.group_max > 100_000 {
            return Err(invalid("ingest.group_max", "must be 1..=100000"));
        }
        if c.ingest.resend_after_ms < 100 {
            return Err(invalid("ingest.resend_after_ms", "must be at least 100"));
        }
        if c.ingest.checkpoint_interval_s == 0 {
            return Err(invalid("ingest.checkpoint_interval_s", "must be at least 1"));
        }
        if c.historian.retention_days == 0 {
            return Err(invalid("historian.retention_days", "must be at least 1"));
        }
        if let Some(why) = c.historian.swinging_door.iter().find_map(|r| r.problem()) {
            return Err(invalid("historian.swinging_door", &why));
        }
        if c.mqtt.keep_alive_s < 5 {
            return Err(invalid("mqtt.keep_alive_s", "must be at least 5"));
        }
        if c.api.max_body_bytes < 1024 {
            return Err(invalid("api.max_body_bytes", "must be at least 1024"));
        }
        if c.api.request_timeout_s == 0 {
            return Err(invalid("api.request_timeout_s", "must be at least 1"));
        }
        if c.api.call_log_queue == 0 {
            return Err(invalid("api.call_log_queue", "must be at least 1"));
        }
        if c.api.tls_handshake_timeout_ms < 100 {
            return Err(invalid("api.tls_handshake_timeout_ms", "must be at least 100"));
        }
        if c.api.tls_max_connections == 0 {
            return Err(invalid("api.tls_max_connections", "must be at least 1"));
        }
        if let Err((key, why)) = c.auth.validate() {
            return Err(invalid(key, &why));
        }
        Ok(c)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_and_errors_name_file_and_key() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/examples/central.toml");
        let c = Config::load(&example).unwrap();
        assert_eq!(c.historian.retention_days, 400);
        assert!(c.mqtt.tls.is_some());
        assert_eq!(c.broker.as_ref().unwrap().cert_file, example.parent().unwrap().join("pki/broker.pem"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "data_dir = \"d\"\nkey_file = \"k\"\n[mqtt]\nhost = \"h\"\nport = 1\n[ingest]\ngroup_max = 0\n",
        )
        .unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("ingest.group_max"), "{e}");
        std::fs::write(&p, "data_dir = \"d\"\nkey_file = \"k\"\n[mqtt]\nhost = \"h\"\nport = 1\nbogus = 2\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        std::fs::write(&p, "data_dir = \"d\"\nkey_file = \"k\"\n[mqtt]\nhost = \"h\"\nport = 1\n").unwrap();
        assert_eq!(Config::load(&p).unwrap().data_dir, dir.path().join("d"));
        // The park layout is checked when the file is loaded, relative to it.
        let with_layout = "data_dir = \"d\"\nkey_file = \"k\"\n[api]\npark_layout = \"map.json\"\n";
        std::fs::write(&p, with_layout).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("api.park_layout") && e.contains("map.json"), "{e}");
        std::fs::write(dir.path().join("map.json"), r#"{"objects":[]}"#).unwrap();
        assert_eq!(Config::load(&p).unwrap().api.park_layout, Some(dir.path().join("map.json")));
    }

    #[test]
    fn api_tls_needs_both_files_and_forces_the_secure_cookie() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let base = "data_dir = \"d\"\nkey_file = \"k\"\n[api]\n";
        std::fs::write(&p, base).unwrap();
        let c = Config::load(&p).unwrap();
        assert!(c.api.tls_cert_file.is_none() && !c.api.secure_cookie);
        std::fs::write(&p, format!("{base}tls_cert_file = \"pki/api.pem\"\n")).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("api.tls_key_file") && e.contains("both"), "{e}");
        std::fs::write(&p, format!("{base}tls_key_file = \"pki/api.key\"\n")).unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("api.tls_cert_file"), "{e}");
        let both =
            format!("{base}tls_cert_file = \"pki/api.pem\"\ntls_key_file = \"pki/api.key\"\nsecure_cookie = false\n");
        std::fs::write(&p, both).unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.api.tls_cert_file, Some(dir.path().join("pki/api.pem")));
        assert_eq!(c.api.tls_key_file, Some(dir.path().join("pki/api.key")));
        assert!(c.api.secure_cookie, "HTTPS only: the cookie is Secure whatever the file says");
        std::fs::write(&p, format!("{base}tls_max_connections = 0\n")).unwrap();
        assert!(Config::load(&p).unwrap_err().to_string().contains("api.tls_max_connections"));
    }

    #[test]
    fn without_mqtt_central_runs_the_embedded_broker_and_ingest_reaches_it_over_loopback_tls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "data_dir = \"d\"\nkey_file = \"k\"\n").unwrap();
        let c = Config::load(&p).unwrap();
        let b = c.broker.as_ref().unwrap();
        assert_eq!(b.ca_file, dir.path().join("pki/ca.pem"));
        assert_eq!(
            (c.mqtt.host.as_str(), c.mqtt.port, c.mqtt.client_id.as_str()),
            ("127.0.0.1", 8883, "vigil-central")
        );
        assert_eq!(c.mqtt.tls.as_ref().unwrap().cert_file, dir.path().join("pki/central-tls.pem"));
        std::fs::write(
            &p,
            "data_dir = \"d\"\nkey_file = \"k\"\n[broker]\nlisten = \"10.0.0.5:1884\"\ncentral_cn = \"c1\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!((c.mqtt.host.as_str(), c.mqtt.port, c.mqtt.client_id.as_str()), ("10.0.0.5", 1884, "c1"));
        std::fs::write(&p, "data_dir = \"d\"\nkey_file = \"k\"\n[broker]\nmax_inflight = 0\n").unwrap();
        assert!(Config::load(&p).unwrap_err().to_string().contains("broker.max_inflight"));
        std::fs::write(&p, "data_dir = \"d\"\nkey_file = \"k\"\n[broker]\n[mqtt]\nhost = \"h\"\nport = 1\n").unwrap();
        assert!(Config::load(&p).unwrap_err().to_string().contains("not both"));
    }
}
