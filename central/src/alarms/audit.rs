//! The audit hash chain: every operator action and configuration change is a record carrying the
//! hash of the previous one. Records are only ever appended; `verify_chain` finds an edited, inserted
//! or deleted record.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::AlarmError;

/// Hash of the (virtual) record before the first one.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Sequence number, 1, 2, 3... without gaps.
    pub seq: i64,
    /// When (ms).
    pub ts_ms: i64,
    /// Who.
    pub actor: String,
    /// Action name (e.g. "acknowledge", "threshold_approve").
    pub action: String,
    /// What it applies to (e.g. "alarm:17", "window:3", "point:TK101.LT").
    pub target: String,
    /// Details (JSON: reasons, before/after values).
    pub detail: String,
    /// Hash of the previous record (hex).
    pub prev_hash: String,
    /// Hash of this record (hex).
    pub hash: String,
}

fn field(h: &mut Sha256, b: &[u8]) {
    h.update((b.len() as u64).to_be_bytes());
    h.update(b);
}

/// The hash of a record's content chained to `prev_hash` (length-prefixed fields, SHA-256).
pub fn record_hash(
    seq: i64,
    ts_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(b"vigil-audit-v1");
    h.update(seq.to_be_bytes());
    h.update(ts_ms.to_be_bytes());
    field(&mut h, actor.as_bytes());
    field(&mut h, action.as_bytes());
    field(&mut h, target.as_bytes());
    field(&mut h, detail.as_bytes());
    field(&mut h, prev_hash.as_bytes());
    hex::encode(h.finalize())
}

impl AuditRecord {
    /// Builds the record following `(prev_seq, prev_hash)`.
    pub fn next(prev: (i64, &str), ts_ms: i64, actor: &str, action: &str, target: &str, detail: &str) -> AuditRecord {
        let seq = prev.0 + 1;
        let hash = record_hash(seq, ts_ms, actor, action, target, detail, prev.1);
        AuditRecord {
            seq,
            ts_ms,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_owned(),
            prev_hash: prev.1.to_owned(),
            hash,
        }
    }
}

/// Hex of the genesis hash.
pub fn genesis_hex() -> String {
    hex::encode(GENESIS)
}

/// Verifies a whole chain in sequence order. `head`, when known from elsewhere (a copy kept off the
/// database, a printed receipt), also catches deletion of the newest records. Returns the number of
/// records checked.
pub fn verify_chain(records: &[AuditRecord], head: Option<(i64, &str)>) -> Result<usize, AlarmError> {
    let mut prev_seq = 0i64;
    let mut prev_hash = genesis_hex();
    for r in records {
        if r.seq != prev_seq + 1 {
            return Err(AlarmError::Chain {
                seq: r.seq,
                reason: format!("expected record {} (a record was deleted or inserted)", prev_seq + 1),
            });
        }
        if r.prev_hash != prev_hash {
            return Err(AlarmError::Chain { seq: r.seq, reason: "does not follow the previous record".into() });
        }
        let h = record_hash(r.seq, r.ts_ms, &r.actor, &r.action, &r.target, &r.detail, &r.prev_hash);
        if h != r.hash {
            return Err(AlarmError::Chain { seq: r.seq, reason: "content does not match its hash (edited)".into() });
        }
        prev_seq = r.seq;
        prev_hash = r.hash.clone();
    }
    if let Some((seq, hash)) = head
        && (seq != prev_seq || hash != prev_hash)
    {
        return Err(AlarmError::Chain {
            seq: prev_seq + 1,
            reason: format!("chain ends at {prev_seq}, the known head is {seq} (records at the end deleted)"),
        });
    }
    Ok(records.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut v: Vec<AuditRecord> = Vec::new();
        let mut prev = (0, genesis_hex());
        for i in 0..n {
            let r = AuditRecord::next((prev.0, &prev.1), i * 10, "op", "acknowledge", &format!("alarm:{i}"), "{}");
            prev = (r.seq, r.hash.clone());
            v.push(r);
        }
        v
    }

    #[test]
    fn an_intact_chain_verifies_and_any_tampering_fails() {
        let c = chain(5);
        assert_eq!(verify_chain(&c, None).unwrap(), 5);
        assert!(verify_chain(&c, Some((5, &c[4].hash))).is_ok());
        let mut edited = c.clone();
        edited[2].detail = "{\"reason\":\"changed\"}".into();
        assert!(matches!(verify_chain(&edited, None), Err(AlarmError::Chain { seq: 3, .. })));
        let mut deleted = c.clone();
        deleted.remove(1);
        assert!(matches!(verify_chain(&deleted, None), Err(AlarmError::Chain { seq: 3, .. })));
        let truncated = &c[..4];
        assert!(verify_chain(truncated, None).is_ok());
        assert!(verify_chain(truncated, Some((5, &c[4].hash))).is_err());
        // Re-hashing an edited record breaks the link to the next one.
        let mut rehashed = c.clone();
        rehashed[1].actor = "intruder".into();
        rehashed[1].hash =
            record_hash(2, rehashed[1].ts_ms, "intruder", "acknowledge", "alarm:1", "{}", &rehashed[1].prev_hash);
        assert!(matches!(verify_chain(&rehashed, None), Err(AlarmError::Chain { seq: 3, .. })));
    }
}
