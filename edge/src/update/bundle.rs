//! The update bundle: one file carrying a new agent binary (and optionally a configuration), its
//! version and target, signed by a release key.
//!
//! Layout (integers little-endian):
//! `"VIGILUPD" | format u8 | header length u32 | header (JSON) | binary | config | signature [64]`.
//! The signature is Ed25519 over `"vigil/v1 update bundle\0" || SHA-256(every byte before it)`, so
//! a verifier hashes the file once and never needs a second copy of a large binary. The header says
//! how long the binary and config are, so a truncated or padded file is refused by its length
//! alone, before the signature is even checked.
//!
//! The framing (magic, format, header, lengths) is [`vigil_common::bundle`], which central reads
//! too; this module adds what needs the release keys: packing, and verifying the signature.

use sha2::Digest as _;
use vigil_common::bundle::{PREFIX, SIGNATURE_LEN, check_version, parse_header};
use vigil_common::{PublicKey, SigningKey};

pub use vigil_common::bundle::{BundleHeader, FORMAT, HeaderError, MAGIC, MAX_BUNDLE, MAX_HEADER};

/// Domain-separation prefix of the signature: a bundle signature can never pass as an envelope's.
pub const DOMAIN: &[u8] = b"vigil/v1 update bundle\0";

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
    /// Its framing: size, magic, format, header, length, version (shared with central).
    #[error(transparent)]
    Header(#[from] HeaderError),
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
}

/// The target triple this agent was compiled for.
pub const RUNNING_TARGET: &str = env!("VIGIL_TARGET");

fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
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
    check_version(version)?;
    let header = BundleHeader {
        version: version.to_owned(),
        target: target.to_owned(),
        binary_len: binary.len() as u64,
        config_len: config.map_or(0, |c| c.len() as u64),
        created_ms,
        key_id: key.public_key().key_id().to_string(),
    };
    let header = serde_json::to_vec(&header).map_err(|e| HeaderError::BadHeader(e.to_string()))?;
    let header_len = u32::try_from(header.len()).map_err(|_| HeaderError::BadHeader("too large".into()))?;
    let mut out = Vec::with_capacity(PREFIX + header.len() + binary.len() + SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(binary);
    if let Some(c) = config {
        out.extend_from_slice(c);
    }
    if out.len() as u64 + SIGNATURE_LEN as u64 > MAX_BUNDLE {
        return Err(HeaderError::TooLarge { len: out.len() as u64, max: MAX_BUNDLE }.into());
    }
    let signature = key.sign_detached(DOMAIN, &sha256(&out));
    out.extend_from_slice(&signature);
    Ok(out)
}

/// Checks a bundle completely (length, header, trusted key, signature, target, version) and
/// returns its contents; nothing on the gateway is touched by this.
pub fn open(bytes: &[u8], trusted: &[PublicKey], running_target: &str) -> Result<Bundle, BundleError> {
    let framing = parse_header(bytes, bytes.len() as u64)?;
    let header = framing.header;
    if trusted.is_empty() {
        return Err(BundleError::NoTrustedKeys);
    }
    let Some(key) = trusted.iter().find(|k| k.key_id().to_string() == header.key_id) else {
        return Err(BundleError::UnknownKey { key_id: header.key_id });
    };
    // The framing matched the file's length, so these offsets are within it; keep them fallible
    // all the same so a mistake here is an error, not a panic.
    let at = |offset: u64, part: &str| usize::try_from(offset).map_err(|_| HeaderError::BadHeader(part.into()));
    let (bin_at, config_at, body_end) =
        (at(framing.binary_at, "binary")?, at(framing.config_at, "config")?, at(framing.signature_at, "signature")?);
    let signature: [u8; SIGNATURE_LEN] = bytes
        .get(body_end..)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| HeaderError::BadHeader("signature".into()))?;
    let body = bytes.get(..body_end).ok_or_else(|| HeaderError::BadHeader("signature".into()))?;
    if !key.verify_detached(DOMAIN, &sha256(body), &signature) {
        return Err(BundleError::BadSignature { key_id: header.key_id });
    }
    if header.target != running_target {
        return Err(BundleError::WrongTarget { bundle: header.target, running: running_target.to_owned() });
    }
    // After the signature: a forged bundle is named as forged, whatever its version says.
    check_version(&header.version)?;
    let binary = bytes.get(bin_at..config_at).ok_or_else(|| HeaderError::BadHeader("binary".into()))?.to_vec();
    let config = match header.config_len {
        0 => None,
        _ => Some(bytes.get(config_at..body_end).ok_or_else(|| HeaderError::BadHeader("config".into()))?.to_vec()),
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
        assert!(matches!(err, BundleError::Header(HeaderError::Truncated { .. })), "{err}");
        assert!(err.to_string().contains("truncated"));
        let mut longer = b.clone();
        longer.push(0);
        assert!(matches!(
            open(&longer, &[k.public_key()], "t-x"),
            Err(BundleError::Header(HeaderError::Trailing { .. }))
        ));
        let mut altered = b.clone();
        let at = altered.len() - 70;
        altered[at] ^= 1;
        assert!(matches!(open(&altered, &[k.public_key()], "t-x"), Err(BundleError::BadSignature { .. })));
        let other = SigningKey::from_seed(&[4; 32]);
        assert!(matches!(open(&b, &[other.public_key()], "t-x"), Err(BundleError::UnknownKey { .. })));
        assert!(matches!(open(&b, &[], "t-x"), Err(BundleError::NoTrustedKeys)));
        let err = open(&b, &[k.public_key()], "t-y").unwrap_err();
        assert_eq!(err.to_string(), "bundle is for target t-x, but this gateway runs t-y");
        assert!(matches!(pack(b"x", None, "../etc", "t", &k, 0), Err(BundleError::Header(HeaderError::BadVersion(_)))));
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
