//! The update bundle: one file carrying a new agent binary (and optionally a configuration), its
//! version and target, signed by a release key.
//!
//! Layout (integers little-endian):
//! `"VIGILUPD" | format u8 | header length u32 | header (JSON) | binary | config | signature [64]`.
//! The signature is Ed25519 over `"vigil/v1 update bundle\0" || SHA-256(every byte before it)`, so
//! a verifier hashes the file once and never needs a second copy of a large binary. The header says
//! how long the binary and config are, so a truncated or padded file is refused by its length
//! alone, before the signature is even checked.

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use vigil_common::envelope::ED25519_SIGNATURE_LEN;
use vigil_common::{PublicKey, SigningKey};

/// Magic bytes at the start of every bundle.
pub const MAGIC: [u8; 8] = *b"VIGILUPD";
/// The bundle format this code writes and reads.
pub const FORMAT: u8 = 1;
/// Domain-separation prefix of the signature: a bundle signature can never pass as an envelope's.
pub const DOMAIN: &[u8] = b"vigil/v1 update bundle\0";
/// Largest header accepted, bytes.
pub const MAX_HEADER: usize = 16 * 1024;
/// Largest bundle accepted, bytes (an agent binary is a few MiB; this leaves room and bounds memory).
pub const MAX_BUNDLE: u64 = 256 * 1024 * 1024;
/// Bytes before the header.
const PREFIX: usize = MAGIC.len() + 1 + 4;

/// What the header of a bundle says about its contents (all of it covered by the signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleHeader {
    /// The agent version the bundle installs.
    pub version: String,
    /// The Rust target triple the binary was built for (`aarch64-unknown-linux-gnu` ...).
    pub target: String,
    /// Length of the binary, bytes.
    pub binary_len: u64,
    /// Length of the configuration file, bytes (0: none).
    pub config_len: u64,
    /// When it was packed, UTC ms.
    pub created_ms: i64,
    /// Key id (hex) of the release key that signed it.
    pub key_id: String,
}

/// A verified bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Its header.
    pub header: BundleHeader,
    /// The agent binary.
    pub binary: Vec<u8>,
    /// The configuration file, if the bundle carries one.
    pub config: Option<Vec<u8>>,
    /// SHA-256 of the whole bundle file (hex): its identity in the history and in commands.
    pub sha256: String,
}

/// Why a bundle was refused. Each message names what is wrong, for the technician holding the stick.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Shorter than the fixed prefix and a signature.
    #[error("not an update bundle: {len} bytes is too short")]
    TooShort {
        /// Its length.
        len: u64,
    },
    /// Larger than any bundle this agent accepts.
    #[error("bundle of {len} bytes is larger than the {max} bytes accepted")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Does not start with the magic bytes.
    #[error("not an update bundle (bad magic; expected a file made by `vigil-edge update pack`)")]
    BadMagic,
    /// A format this agent does not know.
    #[error("unsupported bundle format {0} (this agent reads format {FORMAT})")]
    UnsupportedFormat(u8),
    /// The header is missing, too large or not the expected JSON.
    #[error("bundle header: {0}")]
    BadHeader(String),
    /// The file is shorter than its header says: cut off while copying.
    #[error("bundle is truncated: its header promises {expected} bytes, the file has {actual}")]
    Truncated {
        /// Length the header implies.
        expected: u64,
        /// Actual length.
        actual: u64,
    },
    /// The file is longer than its header says.
    #[error("bundle has {extra} unexpected bytes after its signature ({actual} bytes, {expected} expected)")]
    Trailing {
        /// Length the header implies.
        expected: u64,
        /// Actual length.
        actual: u64,
        /// The difference.
        extra: u64,
    },
    /// The gateway trusts no release key at all.
    #[error("no trusted release keys configured ([update] release_keys or the release keys file)")]
    NoTrustedKeys,
    /// Signed (or claiming to be signed) by a key the gateway does not trust.
    #[error("bundle is signed by release key {key_id}, which this gateway does not trust")]
    UnknownKey {
        /// The key id the header names.
        key_id: String,
    },
    /// The signature does not verify: the bundle was altered or signed with another key.
    #[error("bad signature: the bundle was altered after signing or not signed by release key {key_id}")]
    BadSignature {
        /// The key id the header names.
        key_id: String,
    },
    /// Built for another kind of box.
    #[error("bundle is for target {bundle}, but this gateway runs {running}")]
    WrongTarget {
        /// The bundle's target.
        bundle: String,
        /// The running agent's target.
        running: String,
    },
    /// A version string that cannot name a directory safely.
    #[error("bundle version {0:?} is not 1..=64 characters of [A-Za-z0-9._+-]")]
    BadVersion(String),
}

/// The target triple this agent was compiled for.
pub const RUNNING_TARGET: &str = env!("VIGIL_TARGET");

fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

/// Makes a signed bundle.
pub fn pack(
    binary: &[u8],
    config: Option<&[u8]>,
    version: &str,
    target: &str,
    key: &SigningKey,
    created_ms: i64,
) -> Result<Vec<u8>, BundleError> {
    if !valid_version(version) {
        return Err(BundleError::BadVersion(version.to_owned()));
    }
    let header = BundleHeader {
        version: version.to_owned(),
        target: target.to_owned(),
        binary_len: binary.len() as u64,
        config_len: config.map_or(0, |c| c.len() as u64),
        created_ms,
        key_id: key.public_key().key_id().to_string(),
    };
    let header = serde_json::to_vec(&header).map_err(|e| BundleError::BadHeader(e.to_string()))?;
    let header_len = u32::try_from(header.len()).map_err(|_| BundleError::BadHeader("too large".into()))?;
    let mut out = Vec::with_capacity(PREFIX + header.len() + binary.len() + 64);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(binary);
    if let Some(c) = config {
        out.extend_from_slice(c);
    }
    if out.len() as u64 + ED25519_SIGNATURE_LEN as u64 > MAX_BUNDLE {
        return Err(BundleError::TooLarge { len: out.len() as u64, max: MAX_BUNDLE });
    }
    let signature = key.sign_detached(DOMAIN, &sha256(&out));
    out.extend_from_slice(&signature);
    Ok(out)
}

/// Checks a bundle completely (length, header, trusted key, signature, target, version) and
/// returns its contents; nothing on the gateway is touched by this.
pub fn open(bytes: &[u8], trusted: &[PublicKey], running_target: &str) -> Result<Bundle, BundleError> {
    let len = bytes.len() as u64;
    if len > MAX_BUNDLE {
        return Err(BundleError::TooLarge { len, max: MAX_BUNDLE });
    }
    if bytes.len() < PREFIX + ED25519_SIGNATURE_LEN {
        if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        return Err(BundleError::TooShort { len });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(BundleError::BadMagic);
    }
    if bytes[MAGIC.len()] != FORMAT {
        return Err(BundleError::UnsupportedFormat(bytes[MAGIC.len()]));
    }
    let mut hl = [0u8; 4];
    hl.copy_from_slice(&bytes[MAGIC.len() + 1..PREFIX]);
    let header_len = u32::from_le_bytes(hl) as usize;
    if header_len == 0 || header_len > MAX_HEADER {
        return Err(BundleError::BadHeader(format!("length {header_len} is outside 1..={MAX_HEADER}")));
    }
    let header_end = PREFIX + header_len;
    let Some(header_bytes) = bytes.get(PREFIX..header_end) else {
        return Err(BundleError::Truncated { expected: (header_end + ED25519_SIGNATURE_LEN) as u64, actual: len });
    };
    let header: BundleHeader =
        serde_json::from_slice(header_bytes).map_err(|e| BundleError::BadHeader(e.to_string()))?;
    let expected = (header_end as u64)
        .checked_add(header.binary_len)
        .and_then(|n| n.checked_add(header.config_len))
        .and_then(|n| n.checked_add(ED25519_SIGNATURE_LEN as u64))
        .ok_or_else(|| BundleError::BadHeader("lengths overflow".into()))?;
    if len < expected {
        return Err(BundleError::Truncated { expected, actual: len });
    }
    if len > expected {
        return Err(BundleError::Trailing { expected, actual: len, extra: len - expected });
    }
    if trusted.is_empty() {
        return Err(BundleError::NoTrustedKeys);
    }
    let Some(key) = trusted.iter().find(|k| k.key_id().to_string() == header.key_id) else {
        return Err(BundleError::UnknownKey { key_id: header.key_id });
    };
    let body_end = bytes.len() - ED25519_SIGNATURE_LEN;
    let mut signature = [0u8; ED25519_SIGNATURE_LEN];
    signature.copy_from_slice(&bytes[body_end..]);
    if !key.verify_detached(DOMAIN, &sha256(&bytes[..body_end]), &signature) {
        return Err(BundleError::BadSignature { key_id: header.key_id });
    }
    if header.target != running_target {
        return Err(BundleError::WrongTarget { bundle: header.target, running: running_target.to_owned() });
    }
    if !valid_version(&header.version) {
        return Err(BundleError::BadVersion(header.version));
    }
    // Lengths were checked against the file above, so these conversions and slices cannot fail;
    // keep them fallible all the same so a mistake here is an error, not a panic.
    let bin_end =
        header_end + usize::try_from(header.binary_len).map_err(|_| BundleError::BadHeader("binary".into()))?;
    let binary = bytes.get(header_end..bin_end).ok_or_else(|| BundleError::BadHeader("binary".into()))?.to_vec();
    let config = match header.config_len {
        0 => None,
        _ => Some(bytes.get(bin_end..body_end).ok_or_else(|| BundleError::BadHeader("config".into()))?.to_vec()),
    };
    Ok(Bundle { header, binary, config, sha256: hex::encode(sha256(bytes)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::from_seed(&[3; 32])
    }

    #[test]
    fn a_packed_bundle_opens_and_every_defect_is_named() {
        let k = key();
        let b = pack(b"\x7fELF binary", Some(b"[gateway]\n"), "1.2.3", "t-x", &k, 5).unwrap();
        let opened = open(&b, &[k.public_key()], "t-x").unwrap();
        assert_eq!(opened.binary, b"\x7fELF binary");
        assert_eq!(opened.config.as_deref(), Some(&b"[gateway]\n"[..]));
        assert_eq!(opened.header.version, "1.2.3");

        let err = open(&b[..b.len() - 10], &[k.public_key()], "t-x").unwrap_err();
        assert!(matches!(err, BundleError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("truncated"));
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(open(&longer, &[k.public_key()], "t-x"), Err(BundleError::Trailing { .. })));
        let mut altered = b.clone();
        let at = altered.len() - 70;
        altered[at] ^= 1;
        assert!(matches!(open(&altered, &[k.public_key()], "t-x"), Err(BundleError::BadSignature { .. })));
        let other = SigningKey::from_seed(&[4; 32]);
        assert!(matches!(open(&b, &[other.public_key()], "t-x"), Err(BundleError::UnknownKey { .. })));
        assert!(matches!(open(&b, &[], "t-x"), Err(BundleError::NoTrustedKeys)));
        let err = open(&b, &[k.public_key()], "t-y").unwrap_err();
        assert_eq!(err.to_string(), "bundle is for target t-x, but this gateway runs t-y");
        assert!(matches!(pack(b"x", None, "../etc", "t", &k, 0), Err(BundleError::BadVersion(_))));
        // A forger who rewrites the header with the trusted key's id still fails the signature.
        let forged = pack(b"evil", None, "9.9.9", "t-x", &other, 5).unwrap();
        let mut forged = forged;
        let theirs = other.public_key().key_id().to_string();
        let at = forged.windows(theirs.len()).position(|w| w == theirs.as_bytes()).unwrap();
        forged[at..at + theirs.len()].copy_from_slice(k.public_key().key_id().to_string().as_bytes());
        assert!(matches!(open(&forged, &[k.public_key()], "t-x"), Err(BundleError::BadSignature { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_are_never_accepted(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let k = key();
            prop_assert!(open(&bytes, &[k.public_key()], RUNNING_TARGET).is_err());
        }

        #[test]
        fn a_valid_prefix_with_arbitrary_tail_is_never_accepted(
            cut in 0usize..400, tail in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let k = key();
            let b = pack(b"0123456789abcdef", None, "1.0.0", RUNNING_TARGET, &k, 1).unwrap();
            let mut m = b[..cut.min(b.len())].to_vec();
            m.extend_from_slice(&tail);
            if m != b {
                prop_assert!(open(&m, &[k.public_key()], RUNNING_TARGET).is_err());
            }
        }
    }
}
