//! The signed envelope around every message that crosses the broker, and the keys that sign it.
//!
//! Layout (all integers little-endian), specified in `docs/PROTOCOL.md`:
//! `"VG" | version u8 | kind u8 | algorithm u8 | key id [8] | payload length u32 | payload | signature`.
//! The signature covers a domain-separation prefix naming the kind, then every byte before it, so a
//! signature made for one kind of message can never be passed off as another. Receivers check sizes
//! and the signature before they decode a single payload byte.

use std::fmt;

use ed25519_dalek::Signer as _;
use sha2::Digest as _;

/// Magic bytes at the start of every envelope.
pub const MAGIC: [u8; 2] = *b"VG";
/// The envelope format this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 17;
/// Ed25519 signature length.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// What an envelope carries; part of what is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A gateway's batch of samples and events (`up/batch`).
    Batch = 1,
    /// Central's acknowledgement and re-send request (`down/ack`).
    Ack = 2,
    /// A command from central to a gateway (`down/cmd`).
    Command = 3,
    /// A gateway's birth or death state (`up/state`).
    State = 4,
    /// A gateway's devices and points (`up/catalogue`).
    Catalogue = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Batch,
            2 => Kind::Ack,
            3 => Kind::Command,
            4 => Kind::State,
            5 => Kind::Catalogue,
            _ => return None,
        })
    }

    /// The domain-separation prefix signed before the envelope bytes.
    fn domain(self) -> &'static [u8] {
        match self {
            Kind::Batch => b"vigil/v1 signed batch\0",
            Kind::Ack => b"vigil/v1 signed ack\0",
            Kind::Command => b"vigil/v1 signed command\0",
            Kind::State => b"vigil/v1 signed state\0",
            Kind::Catalogue => b"vigil/v1 signed catalogue\0",
        }
    }

    /// The largest envelope of this kind a receiver accepts, in bytes.
    pub fn max_envelope_len(self) -> usize {
        match self {
            // A batch may carry a gas-camera snapshot (up to 1 MiB) besides its samples; a catalogue
            // of 20,000 points takes about 1.3 MiB.
            Kind::Batch | Kind::Catalogue => 2 * 1024 * 1024,
            Kind::Ack | Kind::Command | Kind::State => 256 * 1024,
        }
    }
}

/// Signature algorithms. The id travels in every envelope so keys can rotate and algorithms change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (RFC 8032), the default.
    Ed25519 = 1,
    /// SM2 signature with SM3 hash (GB/T 32918, GB/T 32905): reserved for the national-algorithm
    /// option; not implemented yet, so envelopes using it are refused as unsupported.
    Sm2Sm3 = 2,
}

impl Algorithm {
    fn from_byte(b: u8) -> Option<Algorithm> {
        match b {
            1 => Some(Algorithm::Ed25519),
            2 => Some(Algorithm::Sm2Sm3),
            _ => None,
        }
    }
}

/// A short identifier of a public key: the first 8 bytes of SHA-256(algorithm id || public key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", hex::encode(self.0))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text form lacks the `algorithm:` prefix or names an unknown algorithm.
    #[error("key must look like \"{expected}:<64 hex digits>\", got {got:?}")]
    BadFormat {
        /// The expected prefix.
        expected: &'static str,
        /// The start of what was given.
        got: String,
    },
    /// The hex is malformed or the wrong length.
    #[error("key hex is not 32 bytes: {0}")]
    BadHex(String),
    /// The bytes are not a valid public key.
    #[error("not a valid Ed25519 public key")]
    Invalid,
    /// The operating system's random source failed.
    #[error("random source failed: {0}")]
    Random(String),
}

/// A public key that verifies envelopes.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ed25519_dalek::VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

const PUBLIC_PREFIX: &str = "ed25519";
const SECRET_PREFIX: &str = "ed25519-secret";

fn parse_text(text: &str, expected: &'static str) -> Result<[u8; 32], KeyError> {
    let bad = || KeyError::BadFormat { expected, got: text.chars().take(24).collect() };
    let (alg, hex_part) = text.trim().split_once(':').ok_or_else(bad)?;
    if alg != expected {
        return Err(bad());
    }
    let bytes = hex::decode(hex_part).map_err(|e| KeyError::BadHex(e.to_string()))?;
    bytes.try_into().map_err(|b: Vec<u8>| KeyError::BadHex(format!("{} bytes", b.len())))
}

impl PublicKey {
    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes).map(|key| PublicKey { key }).map_err(|_| KeyError::Invalid)
    }

    /// A key from its text form `ed25519:<64 hex digits>`.
    pub fn from_text(text: &str) -> Result<PublicKey, KeyError> {
        PublicKey::from_bytes(&parse_text(text, PUBLIC_PREFIX)?)
    }

    /// The text form `ed25519:<64 hex digits>`, as written in registries and configuration.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}:{}", hex::encode(self.key.as_bytes()))
    }

    /// The algorithm this key belongs to.
    pub fn algorithm(&self) -> Algorithm {
        Algorithm::Ed25519
    }

    /// Whether `signature` is this key's [`SigningKey::sign_detached`] of `domain || message`.
    pub fn verify_detached(&self, domain: &[u8], message: &[u8], signature: &[u8; ED25519_SIGNATURE_LEN]) -> bool {
        let mut msg = Vec::with_capacity(domain.len() + message.len());
        msg.extend_from_slice(domain);
        msg.extend_from_slice(message);
        self.key.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(signature)).is_ok()
    }

    /// Its short identifier.
    pub fn key_id(&self) -> KeyId {
        let mut h = sha2::Sha256::new();
        h.update([self.algorithm() as u8]);
        h.update(self.key.as_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

/// A private key that signs envelopes. Its debug form never shows the secret.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public_key().to_text())
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SigningKey::from_seed(&seed))
    }

    /// A key from its 32-byte seed (deterministic; for test vectors and key files).
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey { key: ed25519_dalek::SigningKey::from_bytes(seed) }
    }

    /// A key from its text form `ed25519-secret:<64 hex digits>`.
    pub fn from_text(text: &str) -> Result<SigningKey, KeyError> {
        Ok(SigningKey::from_seed(&parse_text(text, SECRET_PREFIX)?))
    }

    /// The text form `ed25519-secret:<64 hex digits>`, for key files readable only by their owner.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}:{}", hex::encode(self.key.to_bytes()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey { key: self.key.verifying_key() }
    }

    /// Signs `domain || message` outside any envelope (detached), for artefacts such as update
    /// bundles; the domain keeps such a signature from ever passing as an envelope's.
    pub fn sign_detached(&self, domain: &[u8], message: &[u8]) -> [u8; ED25519_SIGNATURE_LEN] {
        let mut msg = Vec::with_capacity(domain.len() + message.len());
        msg.extend_from_slice(domain);
        msg.extend_from_slice(message);
        self.key.sign(&msg).to_bytes()
    }
}

/// Why an envelope was refused; each variant names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than a header and a signature.
    #[error("envelope too short: {len} bytes, at least {min} needed")]
    TooShort {
        /// Its length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// Longer than the receiver accepts for this kind.
    #[error("envelope too large: {len} bytes, at most {max} accepted")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Does not start with the magic bytes.
    #[error("not a Vigil envelope (bad magic)")]
    BadMagic,
    /// An envelope format this code does not know.
    #[error("unsupported envelope format version {0}")]
    UnsupportedVersion(u8),
    /// An unknown kind byte, or a different kind than expected.
    #[error("expected a {expected:?} envelope, got kind byte {got}")]
    WrongKind {
        /// What the receiver expected.
        expected: Kind,
        /// The kind byte found.
        got: u8,
    },
    /// A signature algorithm this code does not implement.
    #[error("unsupported signature algorithm {0}")]
    UnsupportedAlgorithm(u8),
    /// The declared payload length does not match the envelope's length.
    #[error("declared payload of {declared} bytes does not fit an envelope of {len} bytes")]
    LengthMismatch {
        /// Declared payload length.
        declared: u64,
        /// Envelope length.
        len: usize,
    },
    /// The key id is not among the sender's registered, unrevoked keys.
    #[error("key {0} is unknown or revoked for this sender")]
    UnknownKey(KeyId),
    /// The signature does not verify.
    #[error("signature does not verify with key {0}")]
    BadSignature(KeyId),
}

/// A verified envelope: the payload may now be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified<'a> {
    /// The key that signed it.
    pub key_id: KeyId,
    /// The exact signed payload bytes.
    pub payload: &'a [u8],
}

/// Encodes a small control message (ack, command, state) with postcard and seals it.
pub fn seal_message<T: serde::Serialize>(kind: Kind, message: &T, key: &SigningKey) -> Result<Vec<u8>, String> {
    let payload = postcard::to_allocvec(message).map_err(|e| e.to_string())?;
    Ok(seal(kind, &payload, key))
}

/// Decodes a verified postcard payload that must be consumed exactly (no trailing bytes).
pub fn decode_exact<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let (value, rest): (T, &[u8]) = postcard::take_from_bytes(payload).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(value)
}

/// Wraps `payload` in a signed envelope of `kind`.
pub fn seal(kind: Kind, payload: &[u8], key: &SigningKey) -> Vec<u8> {
    let public = key.public_key();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + ED25519_SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind as u8);
    out.push(public.algorithm() as u8);
    out.extend_from_slice(&public.key_id().0);
    // Payloads are bounded far below 4 GiB by every kind's maximum; saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(payload);
    let signature = key.key.sign(&signed_message(kind, &out));
    out.extend_from_slice(&signature.to_bytes());
    out
}

fn signed_message(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(kind.domain().len() + body.len());
    msg.extend_from_slice(kind.domain());
    msg.extend_from_slice(body);
    msg
}

/// Reads the key id of an envelope of `kind` after the structural checks, without verifying it.
/// Receivers use it to pick the sender's key; [`open`] does the whole job.
pub fn peek_key_id(bytes: &[u8], kind: Kind) -> Result<KeyId, EnvelopeError> {
    check_structure(bytes, kind).map(|(key_id, _)| key_id)
}

fn check_structure(bytes: &[u8], kind: Kind) -> Result<(KeyId, usize), EnvelopeError> {
    let min = HEADER_LEN + ED25519_SIGNATURE_LEN;
    if bytes.len() < min {
        return Err(EnvelopeError::TooShort { len: bytes.len(), min });
    }
    let max = kind.max_envelope_len();
    if bytes.len() > max {
        return Err(EnvelopeError::TooLarge { len: bytes.len(), max });
    }
    if bytes[0..2] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(bytes[2]));
    }
    if Kind::from_byte(bytes[3]) != Some(kind) {
        return Err(EnvelopeError::WrongKind { expected: kind, got: bytes[3] });
    }
    match Algorithm::from_byte(bytes[4]) {
        Some(Algorithm::Ed25519) => {}
        _ => return Err(EnvelopeError::UnsupportedAlgorithm(bytes[4])),
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&bytes[5..13]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[13..17]);
    let declared = u64::from(u32::from_le_bytes(len));
    if declared + (HEADER_LEN + ED25519_SIGNATURE_LEN) as u64 != bytes.len() as u64 {
        return Err(EnvelopeError::LengthMismatch { declared, len: bytes.len() });
    }
    Ok((KeyId(key_id), HEADER_LEN + declared as usize))
}

/// Checks an envelope of `kind` and its signature against the key that `key_for` returns for its key
/// id (`None`: unknown or revoked). Nothing of the payload is interpreted before this succeeds.
pub fn open<'a>(
    bytes: &'a [u8],
    kind: Kind,
    key_for: impl FnOnce(KeyId) -> Option<PublicKey>,
) -> Result<Verified<'a>, EnvelopeError> {
    let (key_id, body_end) = check_structure(bytes, kind)?;
    let key = key_for(key_id).ok_or(EnvelopeError::UnknownKey(key_id))?;
    if key.key_id() != key_id {
        return Err(EnvelopeError::UnknownKey(key_id));
    }
    let mut sig = [0u8; ED25519_SIGNATURE_LEN];
    sig.copy_from_slice(&bytes[body_end..]);
    let signature = ed25519_dalek::Signature::from_bytes(&sig);
    key.key
        .verify_strict(&signed_message(kind, &bytes[..body_end]), &signature)
        .map_err(|_| EnvelopeError::BadSignature(key_id))?;
    Ok(Verified { key_id, payload: &bytes[HEADER_LEN..body_end] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[7u8; 32])
    }

    #[test]
    fn sealed_envelopes_open_with_the_right_key_only() {
        let k = key();
        let sealed = seal(Kind::Batch, b"payload", &k);
        let opened = open(&sealed, Kind::Batch, |_| Some(k.public_key())).unwrap();
        assert_eq!(opened.payload, b"payload");
        assert_eq!(opened.key_id, k.public_key().key_id());

        let other = SigningKey::from_seed(&[8u8; 32]).public_key();
        assert_eq!(
            open(&sealed, Kind::Batch, |_| Some(other)).unwrap_err(),
            EnvelopeError::UnknownKey(k.public_key().key_id())
        );
        assert_eq!(open(&sealed, Kind::Batch, |_| None).unwrap_err(), EnvelopeError::UnknownKey(opened.key_id));
    }

    #[test]
    fn a_signature_for_one_kind_does_not_pass_as_another() {
        let k = key();
        let mut sealed = seal(Kind::Ack, b"x", &k);
        assert!(matches!(open(&sealed, Kind::Batch, |_| Some(k.public_key())), Err(EnvelopeError::WrongKind { .. })));
        sealed[3] = Kind::Batch as u8;
        assert!(matches!(open(&sealed, Kind::Batch, |_| Some(k.public_key())), Err(EnvelopeError::BadSignature(_))));
    }

    #[test]
    fn structural_checks_name_what_failed() {
        let k = key();
        let sealed = seal(Kind::Batch, b"abc", &k);
        let pk = || Some(k.public_key());
        assert!(matches!(open(&sealed[..10], Kind::Batch, |_| pk()), Err(EnvelopeError::TooShort { .. })));
        let mut b = sealed.clone();
        b[0] = b'X';
        assert_eq!(open(&b, Kind::Batch, |_| pk()), Err(EnvelopeError::BadMagic));
        let mut b = sealed.clone();
        b[2] = 9;
        assert_eq!(open(&b, Kind::Batch, |_| pk()), Err(EnvelopeError::UnsupportedVersion(9)));
        let mut b = sealed.clone();
        b[4] = Algorithm::Sm2Sm3 as u8;
        assert_eq!(open(&b, Kind::Batch, |_| pk()), Err(EnvelopeError::UnsupportedAlgorithm(2)));
        let mut b = sealed.clone();
        b.push(0);
        assert!(matches!(open(&b, Kind::Batch, |_| pk()), Err(EnvelopeError::LengthMismatch { .. })));
        let big = vec![0u8; Kind::Ack.max_envelope_len() + 1];
        assert!(matches!(open(&big, Kind::Ack, |_| pk()), Err(EnvelopeError::TooLarge { .. })));
    }

    #[test]
    fn key_text_forms_round_trip() {
        let k = key();
        assert_eq!(SigningKey::from_text(&k.to_text()).unwrap().public_key(), k.public_key());
        assert_eq!(PublicKey::from_text(&k.public_key().to_text()).unwrap(), k.public_key());
        assert!(matches!(PublicKey::from_text(&k.to_text()), Err(KeyError::BadFormat { .. })));
        assert!(matches!(PublicKey::from_text("ed25519:abcd"), Err(KeyError::BadHex(_))));
        assert!(!format!("{k:?}").contains(&hex::encode([7u8; 32])));
    }
}
