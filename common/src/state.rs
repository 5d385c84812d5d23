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

/// The configuration a gateway runs, and what became of the last configuration central pushed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigReport {
    /// Version of the running configuration: 0 for the file installed on the gateway, else the
    /// version central gave the push it came from.
    pub running: u64,
    /// SHA-256 of the running configuration file.
    pub sha256: [u8; 32],
    /// The last push the gateway handled, if any.
    pub last_push: Option<PushOutcome>,
}

/// What a gateway did with one pushed configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushOutcome {
    /// The push's version.
    pub version: u64,
    /// When this outcome was reached, UTC ms.
    pub ts_ms: i64,
    /// The outcome.
    pub result: PushResult,
}

/// The outcome of a configuration push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PushResult {
    /// Installed; the agent runs it and waits to reach central before keeping it.
    OnTrial,
    /// Running, and kept: the agent reached central with it.
    Applied,
    /// Refused before anything changed; the text is the exact validation error.
    Rejected(String),
    /// Installed, then replaced by the previous configuration; the text says why.
    RolledBack(String),
}

/// The agent version a gateway runs as installed by signed updates, and its recent update history.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpdateReport {
    /// Version of the installed bundle running (`None`: the agent the package installed).
    pub installed: Option<String>,
    /// Version on trial (installed, not yet committed), if any.
    pub on_trial: Option<String>,
    /// The last update history records (at most [`UpdateReport::MAX_HISTORY`]), oldest first.
    pub history: Vec<UpdateRecord>,
}

impl UpdateReport {
    /// Most history records a state message carries.
    pub const MAX_HISTORY: usize = 8;
}

/// One line of a gateway's update history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// When, UTC ms (gateway clock).
    pub ts_ms: i64,
    /// `installed`, `committed`, `rolled_back`, `abandoned`.
    pub event: String,
    /// The version concerned.
    pub version: String,
    /// Why, in words.
    pub detail: String,
}

/// The gateway clock's synchronisation, as the gateway's kernel reports it (Linux `adjtimex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClockSync {
    /// The state could not be read.
    #[default]
    Unknown,
    /// A time daemon keeps the clock synchronised.
    Synced {
        /// Estimated error, microseconds.
        est_error_us: u64,
        /// Maximum error, microseconds.
        max_error_us: u64,
    },
    /// The clock is free-running: its timestamps may be off by any amount.
    Unsynced {
        /// Maximum error the kernel assumes, microseconds.
        max_error_us: u64,
    },
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
    /// Running configuration and the last push's outcome.
    pub config: ConfigReport,
    /// Installed agent version and update history.
    pub update: UpdateReport,
    /// The gateway clock's synchronisation when the message was made.
    pub clock: ClockSync,
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
