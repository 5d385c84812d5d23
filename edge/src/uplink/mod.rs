//! The uplink: publishes spooled batches to the broker over TLS MQTT and applies central's acks.

use serde::Deserialize;

/// The `[uplink]` section of the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
}
