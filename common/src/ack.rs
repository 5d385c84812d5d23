//! Central's answer to a gateway on `down/ack`: which sequence numbers are durable and which to re-send.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, EnvelopeError, KeyId, Kind, PublicKey, SigningKey};
use crate::point::GatewayId;

/// Most ranges one ack may list.
pub const MAX_RANGES: usize = 4096;

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    /// First sequence number in the range.
    pub first: u64,
    /// Last sequence number in the range (inclusive).
    pub last: u64,
}

impl SeqRange {
    /// True when `seq` lies in the range.
    pub fn contains(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.last
    }
}

/// An acknowledgement from central, signed by the central key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The gateway it is for.
    pub gateway: GatewayId,
    /// The spool epoch the ranges belong to.
    pub epoch: u64,
    /// Ranges now durable in central's write-ahead log: the gateway may delete these batches.
    pub acked: Vec<SeqRange>,
    /// Gaps central has waited for in vain: the gateway should send these again.
    pub resend: Vec<SeqRange>,
    /// Central's clock when it sent this, UTC ms (lets the gateway see clock skew).
    pub central_ms: i64,
}

/// Why an ack was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The envelope failed a check.
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The payload is not a well-formed ack.
    #[error("payload: {0}")]
    Payload(String),
    /// Ranges that are empty, overlapping, unordered or too many.
    #[error("{list} ranges invalid: {why}")]
    Ranges {
        /// `acked` or `resend`.
        list: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The ack is addressed to another gateway or epoch.
    #[error("ack for {gateway} epoch {epoch} is not for this spool")]
    NotForUs {
        /// Its gateway.
        gateway: String,
        /// Its epoch.
        epoch: u64,
    },
}

fn check_ranges(list: &'static str, ranges: &[SeqRange]) -> Result<(), AckError> {
    if ranges.len() > MAX_RANGES {
        return Err(AckError::Ranges { list, why: format!("{} ranges, at most {MAX_RANGES}", ranges.len()) });
    }
    let mut prev_last: Option<u64> = None;
    for r in ranges {
        if r.first > r.last {
            return Err(AckError::Ranges { list, why: format!("{}..={} is backwards", r.first, r.last) });
        }
        if prev_last.is_some_and(|p| r.first <= p.saturating_add(1)) {
            return Err(AckError::Ranges {
                list,
                why: format!("{}..={} overlaps or touches its predecessor", r.first, r.last),
            });
        }
        prev_last = Some(r.last);
    }
    Ok(())
}

impl Ack {
    /// Checks the ranges are ascending, disjoint, non-adjacent and within bounds.
    pub fn validate(&self) -> Result<(), AckError> {
        check_ranges("acked", &self.acked)?;
        check_ranges("resend", &self.resend)
    }

    /// Encodes and signs with the central key.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, AckError> {
        self.validate()?;
        envelope::seal_message(Kind::Ack, self, key).map_err(AckError::Payload)
    }

    /// Verifies with the central key(s), decodes, validates, and checks it is for `gateway` and `epoch`.
    pub fn open(
        bytes: &[u8],
        gateway: &GatewayId,
        epoch: u64,
        key_for: impl FnOnce(KeyId) -> Option<PublicKey>,
    ) -> Result<Ack, AckError> {
        let verified = envelope::open(bytes, Kind::Ack, key_for)?;
        let ack: Ack = envelope::decode_exact(verified.payload).map_err(AckError::Payload)?;
        ack.validate()?;
        if &ack.gateway != gateway || ack.epoch != epoch {
            return Err(AckError::NotForUs { gateway: ack.gateway.to_string(), epoch: ack.epoch });
        }
        Ok(ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(acked: Vec<SeqRange>) -> Ack {
        Ack { gateway: GatewayId::new("gw1").unwrap(), epoch: 3, acked, resend: vec![], central_ms: 1 }
    }

    #[test]
    fn acks_round_trip_and_are_bound_to_gateway_and_epoch() {
        let key = SigningKey::from_seed(&[1; 32]);
        let a = ack(vec![SeqRange { first: 0, last: 9 }, SeqRange { first: 12, last: 12 }]);
        let sealed = a.seal(&key).unwrap();
        let gw = GatewayId::new("gw1").unwrap();
        assert_eq!(Ack::open(&sealed, &gw, 3, |_| Some(key.public_key())).unwrap(), a);
        assert!(matches!(Ack::open(&sealed, &gw, 4, |_| Some(key.public_key())), Err(AckError::NotForUs { .. })));
        let other = GatewayId::new("gw2").unwrap();
        assert!(matches!(Ack::open(&sealed, &other, 3, |_| Some(key.public_key())), Err(AckError::NotForUs { .. })));
    }

    #[test]
    fn malformed_ranges_are_refused() {
        assert!(ack(vec![SeqRange { first: 5, last: 4 }]).validate().is_err());
        assert!(ack(vec![SeqRange { first: 0, last: 4 }, SeqRange { first: 5, last: 6 }]).validate().is_err());
        assert!(ack(vec![SeqRange { first: 10, last: 14 }, SeqRange { first: 0, last: 1 }]).validate().is_err());
        assert!(ack(vec![SeqRange { first: 0, last: u64::MAX }]).validate().is_ok());
    }
}
