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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory: WAL, chunks, metadata database, checkpoint.
    pub data_dir: PathBuf,
    /// Central's signing key (acks and commands), mode 0600.
    pub key_file: PathBuf,
    /// The broker to connect to.
    pub mqtt: MqttConfig,
    /// Ingest tuning.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Historian settings.
    #[serde(default)]
    pub historian: HistorianConfig,
    /// HTTP query API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Alarm definitions file (see `configs/examples/alarms.toml`); without it the alarm engine
    /// still raises gateway and device offline, source-fault and data-loss alarms.
    pub alarms: Option<PathBuf>,
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
}

impl Default for HistorianConfig {
    fn default() -> Self {
        HistorianConfig { retention_days: 400, max_head_samples: 8_000_000 }
    }
}

/// HTTP query API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address.
    pub listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8080)) }
    }
}

fn default_client_id() -> String {
    "vigil-central".into()
}
fn default_keep_alive() -> u64 {
    15
}

impl Config {
    /// Reads and validates a configuration file; relative paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut c: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.data_dir, &mut c.key_file] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &mut c.alarms
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if let Some(t) = &mut c.mqtt.tls {
            for p in [&mut t.ca_file, &mut t.cert_file, &mut t.key_file] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        let invalid = |key, why: &str| ConfigError::Invalid { path: path.to_owned(), key, why: why.to_owned() };
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
        if c.mqtt.keep_alive_s < 5 {
            return Err(invalid("mqtt.keep_alive_s", "must be at least 5"));
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
    }
}
