//! Key files: a signing key as one line of text (`ed25519-secret:<hex>`) in a file only its owner
//! can read. Both the gateway and central keep their identity this way.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::envelope::{KeyError, SigningKey};

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Group or others may read or write the file.
    #[error("{path}: key file has mode {mode:o}; it must be readable by its owner only (chmod 600 {path})")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a key.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: KeyError,
    },
}

/// Generates a key and writes it to a new file with mode 0600; an existing file is never replaced.
pub fn create(path: &Path) -> Result<SigningKey, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let key = SigningKey::generate().map_err(|source| KeyFileError::Format { path: path.to_owned(), source })?;
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    file.write_all(format!("{}\n", key.to_text()).as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(key)
}

/// Refuses a secret file (signing key, TLS private key) that group or others can access.
pub fn check_owner_only(path: &Path) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Exposed { path: path.to_owned(), mode });
    }
    Ok(())
}

/// Reads a key file, refusing one that group or others can access.
pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_owned(), source };
    check_owner_only(path)?;
    let text = fs::read_to_string(path).map_err(io)?;
    SigningKey::from_text(&text).map_err(|source| KeyFileError::Format { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_keys_load_back_and_exposed_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("vigil-keyfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.key");
        let _ = fs::remove_file(&path);
        let key = create(&path).unwrap();
        assert_eq!(load(&path).unwrap().public_key(), key.public_key());
        assert!(matches!(create(&path), Err(KeyFileError::Io { .. })), "must not overwrite");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::write(&path, "garbage").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Format { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
