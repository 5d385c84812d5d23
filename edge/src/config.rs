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
