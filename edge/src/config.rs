//! The gateway configuration file (TOML), parsed into typed structs and validated as a whole before
//! anything starts.

use serde::Deserialize;
use vigil_common::{EnterpriseId, GatewayId};

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this gateway is.
    pub gateway: GatewaySection,
    /// Store-and-forward settings.
    pub spool: crate::spool::SpoolConfig,
    /// Broker connection; absent for a gateway used only for on-site checks.
    pub uplink: Option<crate::uplink::UplinkConfig>,
    /// The gateway's own health points.
    #[serde(default)]
    pub system: crate::sources::system::SystemConfig,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or does not fit the schema; the message names the key and line.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
    }
}

/// The `[gateway]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The gateway id (the common name of its certificate).
    pub id: GatewayId,
    /// The enterprise it belongs to.
    pub enterprise: EnterpriseId,
    /// Its signing key file (`vigil-edge keygen`), readable by its owner only.
    pub key_file: std::path::PathBuf,
}
