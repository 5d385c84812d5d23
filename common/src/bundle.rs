//! The update bundle's framing, shared by the gateway (which packs, verifies and installs bundles)
//! and central (which stores and orders them without the release keys): magic, format, the JSON
//! header and the length checks. The release signature is the gateway's to check
//! (`edge/src/update/bundle.rs`); `docs/PROTOCOL.md` 4a.1 specifies the layout.
//!
//! Layout (integers little-endian):
//! `"VIGILUPD" | format u8 | header length u32 | header (JSON) | binary | config | signature [64]`.
//! The header says how long the binary and config are, so a truncated or padded file is refused by
//! its length alone, before anything is verified; [`parse_header`] reads no more than [`HEAD_LEN`]
//! bytes, so a bundle arriving as a stream can be judged from its first bytes and its length.

use serde::{Deserialize, Serialize};

/// Magic bytes at the start of every bundle.
pub const MAGIC: [u8; 8] = *b"VIGILUPD";
/// The bundle format this code writes and reads.
pub const FORMAT: u8 = 1;
/// Bytes before the header: magic, format, header length.
pub const PREFIX: usize = MAGIC.len() + 1 + 4;
/// Largest header accepted, bytes.
pub const MAX_HEADER: usize = 16 * 1024;
/// The most of a bundle's first bytes [`parse_header`] looks at.
pub const HEAD_LEN: usize = PREFIX + MAX_HEADER;
/// Largest bundle accepted, bytes (an agent binary is a few MiB; this leaves room and bounds memory).
pub const MAX_BUNDLE: u64 = 256 * 1024 * 1024;
/// Length of the trailing Ed25519 signature.
pub const SIGNATURE_LEN: usize = crate::envelope::ED25519_SIGNATURE_LEN;

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

/// A bundle's header and where its parts are, its length already checked against the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// The header.
    pub header: BundleHeader,
    /// Offset of the binary (the end of the header).
    pub binary_at: u64,
    /// Offset of the configuration (the end of the binary).
    pub config_at: u64,
    /// Offset of the signature (the end of everything it covers).
    pub signature_at: u64,
}

/// Why a bundle's framing was refused. Each message names what is wrong, for the technician holding
/// the stick or the administrator uploading it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than the fixed prefix and a signature.
    #[error("not an update bundle: {len} bytes is too short")]
    TooShort {
        /// Its length.
        len: u64,
    },
    /// Larger than any bundle accepted.
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
    /// A format this code does not know.
    #[error("unsupported bundle format {0} (this software reads format {FORMAT})")]
    UnsupportedFormat(u8),
    /// The header is missing, too large or not the expected JSON.
    #[error("bundle header: {0}")]
    BadHeader(String),
    /// The file is shorter than its header says: cut off while copying.
    #[error("bundle is truncated: its header promises {expected} bytes, the file has {actual}")]
    Truncated {
        /// Length the header implies (at least).
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
    /// A version string that cannot name a directory safely.
    #[error("bundle version {0:?} is not 1..=64 characters of [A-Za-z0-9._+-]")]
    BadVersion(String),
    /// A target that is not a target triple.
    #[error("bundle target {0:?} is not a target triple")]
    BadTarget(String),
}

/// Reads the prefix and header of a bundle of `total` bytes whose first bytes are `head` (at least
/// the first [`HEAD_LEN`] of them, or all of a shorter bundle; more are ignored), and checks
/// `total` against the lengths the header gives. Neither the version nor the target is judged here
/// ([`check_version`], [`check_target`]): the gateway names a bad signature before a bad version.
pub fn parse_header(head: &[u8], total: u64) -> Result<Framing, HeaderError> {
    if total > MAX_BUNDLE {
        return Err(HeaderError::TooLarge { len: total, max: MAX_BUNDLE });
    }
    let magic = head.get(..MAGIC.len());
    if total < (PREFIX + SIGNATURE_LEN) as u64 {
        if magic.is_some_and(|m| m != MAGIC) {
            return Err(HeaderError::BadMagic);
        }
        return Err(HeaderError::TooShort { len: total });
    }
    let (Some(magic), Some(&format), Some(len_bytes)) =
        (magic, head.get(MAGIC.len()), head.get(MAGIC.len() + 1..PREFIX))
    else {
        // `head` is shorter than the bundle's own first bytes: the caller's slip, named as such.
        return Err(HeaderError::BadHeader(format!("only {} of its first bytes were given", head.len())));
    };
    if magic != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    if format != FORMAT {
        return Err(HeaderError::UnsupportedFormat(format));
    }
    let mut hl = [0u8; 4];
    hl.copy_from_slice(len_bytes);
    let header_len = u32::from_le_bytes(hl) as usize;
    if header_len == 0 || header_len > MAX_HEADER {
        return Err(HeaderError::BadHeader(format!("length {header_len} is outside 1..={MAX_HEADER}")));
    }
    let header_end = PREFIX + header_len;
    let Some(header_bytes) = head.get(PREFIX..header_end) else {
        return Err(HeaderError::Truncated { expected: (header_end + SIGNATURE_LEN) as u64, actual: total });
    };
    let header: BundleHeader =
        serde_json::from_slice(header_bytes).map_err(|e| HeaderError::BadHeader(e.to_string()))?;
    let binary_at = header_end as u64;
    let overflow = || HeaderError::BadHeader("lengths overflow".into());
    let config_at = binary_at.checked_add(header.binary_len).ok_or_else(overflow)?;
    let signature_at = config_at.checked_add(header.config_len).ok_or_else(overflow)?;
    let expected = signature_at.checked_add(SIGNATURE_LEN as u64).ok_or_else(overflow)?;
    if total < expected {
        return Err(HeaderError::Truncated { expected, actual: total });
    }
    if total > expected {
        return Err(HeaderError::Trailing { expected, actual: total, extra: total - expected });
    }
    Ok(Framing { header, binary_at, config_at, signature_at })
}

/// Whether `version` can name a version directory on the gateway safely.
pub fn check_version(version: &str) -> Result<(), HeaderError> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && !version.starts_with('.')
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
    if ok { Ok(()) } else { Err(HeaderError::BadVersion(version.to_owned())) }
}

/// Whether `target` looks like a Rust target triple (central lists and orders by it).
pub fn check_target(target: &str) -> Result<(), HeaderError> {
    let ok = !target.is_empty()
        && target.len() <= 64
        && target.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok { Ok(()) } else { Err(HeaderError::BadTarget(target.to_owned())) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEADER: &str = r#"{"version":"2.0.0","target":"x86_64-unknown-linux-gnu","binary_len":10,"config_len":3,"created_ms":1,"key_id":"ab"}"#;

    fn bundle(header: &str, body: usize) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(FORMAT);
        b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(7u8, body + SIGNATURE_LEN));
        b
    }

    fn err(head: &[u8], total: u64) -> HeaderError {
        parse_header(head, total).unwrap_err()
    }

    #[test]
    fn a_header_is_read_and_every_defect_is_named() {
        let good = bundle(HEADER, 13);
        let len = good.len() as u64;
        let f = parse_header(&good, len).unwrap();
        assert_eq!((f.header.version.as_str(), f.header.binary_len, f.header.config_len), ("2.0.0", 10, 3));
        assert_eq!(
            (f.binary_at, f.config_at, f.signature_at),
            (13 + HEADER.len() as u64, 23 + HEADER.len() as u64, len - 64)
        );
        // Only the first bytes and the length are needed.
        assert_eq!(parse_header(&good[..PREFIX + HEADER.len()], len).unwrap(), f);

        assert_eq!(err(&good, len - 1), HeaderError::Truncated { expected: len, actual: len - 1 });
        assert!(err(&good, len - 1).to_string().starts_with("bundle is truncated: its header promises"));
        assert_eq!(
            err(&good, len + 3).to_string(),
            format!("bundle has 3 unexpected bytes after its signature ({} bytes, {len} expected)", len + 3)
        );
        let text = b"hello world, this is not a bundle at all but long enough to pass the size check..";
        assert_eq!(err(text, text.len() as u64), HeaderError::BadMagic);
        assert!(err(text, text.len() as u64).to_string().contains("bad magic"));
        assert_eq!(err(b"hello world", 11), HeaderError::BadMagic, "short and not a bundle: the magic is named");
        assert_eq!(err(b"hello", 5), HeaderError::TooShort { len: 5 }, "too short to tell by the magic");
        assert_eq!(err(b"VIG", 3).to_string(), "not an update bundle: 3 bytes is too short");
        assert_eq!(err(b"", 0), HeaderError::TooShort { len: 0 });
        let mut v2 = good.clone();
        v2[8] = 2;
        assert!(err(&v2, len).to_string().contains("format 2"));
        let json = bundle("{not json", 10);
        assert!(matches!(err(&json, json.len() as u64), HeaderError::BadHeader(_)));
        assert!(err(&json, json.len() as u64).to_string().starts_with("bundle header: "));
        let mut huge = good.clone();
        huge[9..13].copy_from_slice(&(MAX_HEADER as u32 + 1).to_le_bytes());
        assert!(err(&huge, len).to_string().contains("outside 1..=16384"));
        // A header longer than the file: truncated, with the least such a bundle could be.
        let cut = &good[..PREFIX + 5];
        assert_eq!(err(cut, 80), HeaderError::Truncated { expected: (PREFIX + HEADER.len() + 64) as u64, actual: 80 });
        assert_eq!(err(&good, MAX_BUNDLE + 1), HeaderError::TooLarge { len: MAX_BUNDLE + 1, max: MAX_BUNDLE });
        let overflow = bundle(&HEADER.replace(r#""config_len":3"#, r#""config_len":18446744073709551615"#), 0);
        assert_eq!(err(&overflow, overflow.len() as u64), HeaderError::BadHeader("lengths overflow".into()));
        assert!(matches!(err(&good[..4], len), HeaderError::BadHeader(_)), "too few first bytes given");
    }

    #[test]
    fn versions_and_targets_must_be_safe_names() {
        assert!(check_version("1.2.3+rc-1_x").is_ok());
        for bad in ["", "../etc", ".hidden", "a/b", &"9".repeat(65)] {
            assert_eq!(check_version(bad), Err(HeaderError::BadVersion(bad.to_owned())));
        }
        assert_eq!(
            check_version("../x").unwrap_err().to_string(),
            "bundle version \"../x\" is not 1..=64 characters of [A-Za-z0-9._+-]"
        );
        assert!(check_target("aarch64-unknown-linux-gnu").is_ok());
        assert!(check_target("x86_64-unknown-linux-gnu").is_ok());
        assert_eq!(check_target("a b").unwrap_err().to_string(), "bundle target \"a b\" is not a target triple");
        assert!(check_target("").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), extra in 0u64..1 << 20) {
            let _ = parse_header(&bytes, bytes.len() as u64);
            let _ = parse_header(&bytes, bytes.len() as u64 + extra);
        }

        #[test]
        fn a_good_header_with_any_other_length_is_refused(bin in 0u64..300, config in 0u64..300, delta in -200i64..200) {
            let h = HEADER
                .replace(r#""binary_len":10"#, &format!(r#""binary_len":{bin}"#))
                .replace(r#""config_len":3"#, &format!(r#""config_len":{config}"#));
            let b = bundle(&h, (bin + config) as usize);
            let total = (b.len() as i64 + delta).max(0) as u64;
            prop_assert_eq!(parse_header(&b, total).is_ok(), delta == 0);
        }
    }
}
