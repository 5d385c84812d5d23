//! Arbitrary bytes into the update bundle's framing decoder (what central reads from an upload and
//! a gateway from a stick or a download, before any signature is checked): with their own length,
//! and as the first bytes of a bundle of a claimed length, the way central judges an upload while it
//! streams. Nothing may panic, and a framing accepted must add up to the length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_common::bundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = bundle::parse_header(data, data.len() as u64) {
        assert!(f.binary_at <= f.config_at && f.config_at <= f.signature_at);
        assert_eq!(f.signature_at + bundle::SIGNATURE_LEN as u64, data.len() as u64);
        let _ = bundle::check_version(&f.header.version);
        let _ = bundle::check_target(&f.header.target);
    }
    if let Some((claimed, head)) = data.split_first_chunk::<8>() {
        let total = u64::from_le_bytes(*claimed);
        if let Ok(f) = bundle::parse_header(head, total) {
            assert_eq!(f.signature_at + bundle::SIGNATURE_LEN as u64, total);
        }
    }
});
