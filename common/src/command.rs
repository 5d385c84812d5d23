//! Commands from central to a gateway on `down/cmd`, signed by the central key. A gateway executes a
//! command only if the signature verifies, it is addressed to this gateway, it has not expired, and
//! its id is above every id the gateway has executed since it started (no replays).

use serde::{Deserialize, Serialize};

use crate::ack::SeqRange;
use crate::envelope::{self, EnvelopeError, KeyId, Kind, PublicKey, SigningKey};
use crate::point::GatewayId;

/// What central asks a gateway to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandAction {
    /// Publish a fresh state message now.
    Ping,
    /// Send these sequence numbers of the current epoch again.
    Resend {
        /// The epoch the ranges belong to.
        epoch: u64,
        /// The ranges.
        ranges: Vec<SeqRange>,
    },
    /// Validate this gateway configuration (the whole TOML file) and, if it is valid, install it in
    /// place of the running one, keeping the old one to roll back to.
    ApplyConfig {
        /// Central's version of this gateway's configuration; only a newer one than running applies.
        version: u64,
        /// The configuration file's text.
        toml: String,
    },
    /// Download an update bundle from central and install it (A/B, on trial) if it is exactly the
    /// bundle named here and its release signature and target check out. The bundle itself is too
    /// large for a command, so the command carries what the gateway needs to fetch and check it.
    Update {
        /// Central's order id: the gateway names it in the history records this order leads to.
        order: u64,
        /// The agent version the bundle installs (from its header).
        version: String,
        /// The target triple the bundle is built for (from its header).
        target: String,
        /// SHA-256 of the whole bundle file.
        sha256: [u8; 32],
        /// Exact size of the bundle file, bytes.
        size: u64,
        /// Path of the download on central's API (joined to the gateway's `[update] central_url`).
        path: String,
        /// The download token (sent in `x-vigil-download-token`), valid for this order only and
        /// only until it expires.
        token: String,
    },
}

/// A signed command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The gateway it is for.
    pub gateway: GatewayId,
    /// Increasing id, for replay protection and the audit trail.
    pub id: u64,
    /// When central issued it, UTC ms.
    pub issued_ms: i64,
    /// After this it must not be executed, UTC ms.
    pub expires_ms: i64,
    /// What to do.
    pub action: CommandAction,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The envelope failed a check (including a signature not made by central).
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The payload is malformed.
    #[error("payload: {0}")]
    Payload(String),
    /// Addressed to another gateway.
    #[error("command {id} is for gateway {gateway}")]
    NotForUs {
        /// Its id.
        id: u64,
        /// Its gateway.
        gateway: String,
    },
    /// Expired.
    #[error("command {id} expired at {expires_ms}")]
    Expired {
        /// Its id.
        id: u64,
        /// Its expiry.
        expires_ms: i64,
    },
    /// An id at or below one already executed.
    #[error("command {id} replayed (last executed {last})")]
    Replayed {
        /// Its id.
        id: u64,
        /// The highest id executed.
        last: u64,
    },
}

impl Command {
    /// Encodes and signs with the central key.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, CommandError> {
        envelope::seal_message(Kind::Command, self, key).map_err(CommandError::Payload)
    }

    /// Verifies with central's key(s), decodes, and checks addressee, expiry at `now_ms` and that the
    /// id is above `last_executed`.
    pub fn open(
        bytes: &[u8],
        gateway: &GatewayId,
        now_ms: i64,
        last_executed: Option<u64>,
        key_for: impl FnOnce(KeyId) -> Option<PublicKey>,
    ) -> Result<Command, CommandError> {
        let verified = envelope::open(bytes, Kind::Command, key_for)?;
        let cmd: Command = envelope::decode_exact(verified.payload).map_err(CommandError::Payload)?;
        if &cmd.gateway != gateway {
            return Err(CommandError::NotForUs { id: cmd.id, gateway: cmd.gateway.to_string() });
        }
        if now_ms > cmd.expires_ms {
            return Err(CommandError::Expired { id: cmd.id, expires_ms: cmd.expires_ms });
        }
        if let Some(last) = last_executed.filter(|&last| cmd.id <= last) {
            return Err(CommandError::Replayed { id: cmd.id, last });
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_checked_for_signer_addressee_expiry_and_replay() {
        let central = SigningKey::from_seed(&[5; 32]);
        let gw = GatewayId::new("gw1").unwrap();
        let cmd = Command { gateway: gw.clone(), id: 7, issued_ms: 100, expires_ms: 200, action: CommandAction::Ping };
        let sealed = cmd.seal(&central).unwrap();
        let pk = || Some(central.public_key());
        assert_eq!(Command::open(&sealed, &gw, 150, Some(6), |_| pk()).unwrap(), cmd);
        assert!(matches!(Command::open(&sealed, &gw, 201, None, |_| pk()), Err(CommandError::Expired { .. })));
        assert!(matches!(Command::open(&sealed, &gw, 150, Some(7), |_| pk()), Err(CommandError::Replayed { .. })));
        let other = GatewayId::new("gw2").unwrap();
        assert!(matches!(Command::open(&sealed, &other, 150, None, |_| pk()), Err(CommandError::NotForUs { .. })));
        let forged = cmd.seal(&SigningKey::from_seed(&[6; 32])).unwrap();
        assert!(matches!(Command::open(&forged, &gw, 150, None, |_| pk()), Err(CommandError::Envelope(_))));
    }
}
