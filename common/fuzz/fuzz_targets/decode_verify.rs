//! Arbitrary bytes into every decoder of untrusted input: the envelope check with signature, the
//! batch payload decoder reached with a valid signature, the ack, and the point catalogue. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_common::envelope::{self, Kind};
use vigil_common::{Ack, Batch, GatewayId, PointCatalogue, SigningKey};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_seed(&[9; 32]);
    let Ok(gateway) = GatewayId::new("gw-fuzz") else { return };
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 5 {
        // Raw bytes as a sealed batch: structural and signature checks.
        0 => {
            let _ = Batch::open(rest, &gateway, |_| Some(key.public_key()));
        }
        // Raw bytes as a payload, signed with the right key, so the decoder behind verification is reached.
        1 => {
            let sealed = envelope::seal(Kind::Batch, rest, &key);
            let _ = Batch::open(&sealed, &gateway, |_| Some(key.public_key()));
        }
        // The payload decoder alone (fastest path into the series codec).
        2 => {
            if let Ok(batch) = Batch::decode(rest) {
                // Whatever decodes must re-encode and decode to the same batch.
                if let Ok(bytes) = batch.encode() {
                    let again = Batch::decode(&bytes);
                    assert!(again.is_ok(), "re-encoded batch failed to decode: {again:?}");
                }
            }
        }
        // A signed catalogue payload: decoder and validation behind a valid signature.
        3 => {
            let sealed = envelope::seal(Kind::Catalogue, rest, &key);
            let _ = PointCatalogue::open(&sealed, &gateway, |_| Some(key.public_key()));
        }
        _ => {
            let sealed = envelope::seal(Kind::Ack, rest, &key);
            let _ = Ack::open(&sealed, &gateway, 1, |_| Some(key.public_key()));
        }
    }
});
