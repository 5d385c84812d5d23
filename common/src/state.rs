//! A gateway's retained state on `up/state`: the birth message after every connect and the death
//! message left with the broker as the MQTT will. Signed like everything else.

use serde::{Deserialize, Serialize};

use crate::batch::DropCounters;
use crate::envelope::{self, EnvelopeError, KeyId, Kind, PublicKey, SigningKey};
use crate::point::GatewayId;

/// Spool figures a gateway reports with its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SpoolReport {
    /// Unacknowledged batches per class (alarm/event, live, backfill).
    pub batches: [u64; 3],
    /// Bytes they take.
    pub bytes: u64,
    /// Stored time of the oldest unacknowledged batch, UTC ms.
    pub oldest_unacked_ms: Option<i64>,
    /// Cumulative drops this epoch.
    pub dropped: DropCounters,
}

/// Birth (`online`) or death (`!online`) of a gateway's uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayState {
    /// The gateway.
    pub gateway: GatewayId,
    /// True for birth, false for the will published by the broker when the gateway vanishes.
    pub online: bool,
    /// When the message was made (for the will: when the connection it guards was opened), UTC ms.
    pub ts_ms: i64,
    /// The spool epoch.
    pub epoch: u64,
    /// The next sequence number the gateway will use.
    pub next_seq: u64,
    /// Agent version.
    pub version: String,
    /// Spool figures.
    pub spool: SpoolReport,
}

/// Why a state message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The envelope failed a check.
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The payload is malformed.
    #[error("payload: {0}")]
    Payload(String),
    /// It names another gateway than the topic.
    #[error("state names gateway {inside}, but arrived as {outside}")]
    GatewayMismatch {
        /// The gateway in the payload.
        inside: String,
        /// The gateway of the topic.
        outside: String,
    },
}

impl GatewayState {
    /// Encodes and signs with the gateway's key.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, StateError> {
        envelope::seal_message(Kind::State, self, key).map_err(StateError::Payload)
    }

    /// Verifies with the gateway's key(s), decodes, and checks it names `gateway`.
    pub fn open(
        bytes: &[u8],
        gateway: &GatewayId,
        key_for: impl FnOnce(KeyId) -> Option<PublicKey>,
    ) -> Result<GatewayState, StateError> {
        let verified = envelope::open(bytes, Kind::State, key_for)?;
        let state: GatewayState = envelope::decode_exact(verified.payload).map_err(StateError::Payload)?;
        if &state.gateway != gateway {
            return Err(StateError::GatewayMismatch {
                inside: state.gateway.to_string(),
                outside: gateway.to_string(),
            });
        }
        Ok(state)
    }
}
