//! The enrolment token as a shared key. The token itself never crosses the wire: the gateway names
//! it by [`token_id`] and proves it holds it with an HMAC over its request, and central proves the
//! same over its answer. Someone between the gateway and central (enrolment may be plain HTTP, or
//! HTTPS checked only by a CA file the technician brings) can neither redeem the token for another
//! key nor hand the gateway another central key, CA or broker: either MAC would fail.
//! `docs/PROTOCOL.md` ("Enrolment") specifies the messages.

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::{Digest as _, Sha256};

/// The HTTP header that carries central's MAC over its answer body.
pub const ANSWER_MAC_HEADER: &str = "vigil-enrolment-mac";

/// Hex digits of the token id.
pub const TOKEN_ID_LEN: usize = 12;

/// The key a token stands for: SHA-256 of its text. Central stores only this (as hex), never the token.
pub fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// The public name of a token: the first [`TOKEN_ID_LEN`] hex digits of its key's hex form (the
/// enrolment id central lists). It names the token without letting anyone redeem it.
pub fn token_id(key: &[u8; 32]) -> String {
    hex::encode(key)[..TOKEN_ID_LEN].to_owned()
}

fn mac(key: &[u8; 32], label: &str, parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(label.as_bytes());
    for p in parts {
        // Length-prefixed, so no two different part lists feed the MAC the same bytes.
        m.update(&(p.len() as u64).to_le_bytes());
        m.update(p);
    }
    m
}

const REQUEST_LABEL: &str = "vigil enrolment request v1";
const ANSWER_LABEL: &str = "vigil enrolment answer v1";

/// The gateway's MAC (hex) over what it asks central to register: its signing public key (text
/// form) and its certificate request (PEM).
pub fn request_mac(key: &[u8; 32], public_key: &str, csr_pem: &str) -> String {
    hex::encode(mac(key, REQUEST_LABEL, &[public_key.as_bytes(), csr_pem.as_bytes()]).finalize().into_bytes())
}

/// Central's MAC (hex) over its answer body, sent in [`ANSWER_MAC_HEADER`].
pub fn answer_mac(key: &[u8; 32], body: &[u8]) -> String {
    hex::encode(mac(key, ANSWER_LABEL, &[body]).finalize().into_bytes())
}

/// True when `claimed` (hex) is the request MAC for these fields (compared in constant time).
pub fn request_mac_ok(key: &[u8; 32], public_key: &str, csr_pem: &str, claimed: &str) -> bool {
    let Ok(bytes) = hex::decode(claimed.trim()) else { return false };
    mac(key, REQUEST_LABEL, &[public_key.as_bytes(), csr_pem.as_bytes()]).verify_slice(&bytes).is_ok()
}

/// True when `claimed` (hex) is the answer MAC for `body` (compared in constant time).
pub fn answer_mac_ok(key: &[u8; 32], body: &[u8], claimed: &str) -> bool {
    let Ok(bytes) = hex::decode(claimed.trim()) else { return false };
    mac(key, ANSWER_LABEL, &[body]).verify_slice(&bytes).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn macs_bind_the_token_and_every_byte() {
        let k = token_key("vigil-enrol-00ff");
        assert_eq!(token_key(" vigil-enrol-00ff\n"), k, "pasted with whitespace");
        assert_eq!(token_id(&k).len(), TOKEN_ID_LEN);
        let m = request_mac(&k, "ed25519:ab", "CSR");
        assert!(request_mac_ok(&k, "ed25519:ab", "CSR", &m));
        assert!(!request_mac_ok(&k, "ed25519:ac", "CSR", &m), "another key");
        assert!(!request_mac_ok(&k, "ed25519:ab", "CSR2", &m), "another request");
        assert!(!request_mac_ok(&token_key("vigil-enrol-00fe"), "ed25519:ab", "CSR", &m), "another token");
        assert!(!request_mac_ok(&k, "ed25519:abC", "SR", &request_mac(&k, "ed25519:ab", "CCSR")), "moved boundary");
        assert!(!request_mac_ok(&k, "ed25519:ab", "CSR", "zz"), "not hex");
        let a = answer_mac(&k, b"{\"gateway\":\"gw\"}");
        assert!(answer_mac_ok(&k, b"{\"gateway\":\"gw\"}", &a));
        assert!(!answer_mac_ok(&k, b"{\"gateway\":\"gx\"}", &a));
        assert_ne!(a, request_mac(&k, "{\"gateway\":\"gw\"}", ""), "answers and requests are told apart");
    }
}
