//! Evidence store: snapshot images that arrive in gas detections, kept as files under
//! `data_dir/evidence/` named by their SHA-256, with an append-only index (`index.jsonl`) saying
//! whose they are (enterprise, gateway, camera, event time) and their content type.
//!
//! Storing is idempotent (same bytes, same name), so WAL replay after a crash stores again what may
//! have been lost and nothing twice. A file is written to a temporary name, fsynced and renamed
//! before its index line is appended, so the index never names a missing or partial file.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use vigil_common::{Batch, EnterpriseId, EventKind};

/// One stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// SHA-256 of the bytes, lower-case hex (the file name).
    pub sha256: String,
    /// Content type served (`image/jpeg` or `image/png`; anything else `application/octet-stream`).
    pub content_type: String,
    /// Size in bytes.
    pub bytes: u64,
    /// The enterprise of the gateway that sent it.
    pub enterprise: String,
    /// The gateway.
    pub gateway: String,
    /// The camera.
    pub camera: String,
    /// Time of the detection it came with, Unix ms.
    pub ts_ms: i64,
}

/// Evidence store failures.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// File system.
    #[error("evidence store {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io { path: path.to_path_buf(), source }
}

/// Counters of the evidence store.
#[derive(Debug, Default)]
pub struct EvidenceMetrics {
    /// Images stored (new files).
    pub stored: AtomicU64,
    /// Images that were already stored (same bytes again, or replay).
    pub already: AtomicU64,
    /// Failures to store (logged; the batch itself is in the WAL and replays).
    pub errors: AtomicU64,
    /// Index lines that did not parse at open (skipped).
    pub bad_index_lines: AtomicU64,
}

/// The store.
pub struct EvidenceStore {
    dir: PathBuf,
    index: Mutex<HashMap<String, Evidence>>,
    /// Counters.
    pub metrics: EvidenceMetrics,
}

/// The name an image is stored and served under: the lowercase hex SHA-256 of its bytes.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` is a stored image's name (64 lowercase hex digits).
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The content type served for an image the gateway labelled `declared`: only images pass, so a
/// gateway cannot make central serve HTML or script.
fn served_type(declared: &str) -> &'static str {
    match declared.trim().to_ascii_lowercase().as_str() {
        "image/jpeg" | "image/jpg" => "image/jpeg",
        "image/png" => "image/png",
        _ => "application/octet-stream",
    }
}

impl EvidenceStore {
    /// Opens (creating) the store in `dir` and reads its index.
    pub fn open(dir: &Path) -> Result<EvidenceStore, EvidenceError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let metrics = EvidenceMetrics::default();
        let mut index = HashMap::new();
        let file = dir.join("index.jsonl");
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    match serde_json::from_str::<Evidence>(line) {
                        // An entry counts only if its file is there (a torn write leaves none).
                        Ok(e) if is_sha256(&e.sha256) && dir.join(&e.sha256).is_file() => {
                            index.insert(e.sha256.clone(), e);
                        }
                        _ => {
                            metrics.bad_index_lines.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&file)(e)),
        }
        Ok(EvidenceStore { dir: dir.to_path_buf(), index: Mutex::new(index), metrics })
    }

    /// Stores the snapshots of `batch`'s gas detections; returns how many were new. Failures are
    /// counted and logged, never fatal (the batch is in the WAL and a restart stores them again).
    pub fn keep_batch(&self, enterprise: &EnterpriseId, batch: &Batch) -> usize {
        let mut new = 0;
        for event in &batch.events {
            let EventKind::GasDetection(d) = &event.kind else { continue };
            let Some(snap) = &d.snapshot else { continue };
            let meta = Evidence {
                sha256: String::new(),
                content_type: served_type(&snap.content_type).to_owned(),
                bytes: snap.bytes.len() as u64,
                enterprise: enterprise.to_string(),
                gateway: batch.gateway.to_string(),
                camera: d.camera.clone(),
                ts_ms: event.ts_ms,
            };
            match self.keep(&snap.bytes, meta) {
                Ok((_, true)) => new += 1,
                Ok((_, false)) => {}
                Err(e) => {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(gateway = %batch.gateway, camera = %d.camera, error = %e, "evidence: snapshot not stored");
                }
            }
        }
        new
    }

    /// Stores `bytes` described by `meta` (its `sha256` is filled in); returns the hash and whether
    /// the image is new.
    pub fn keep(&self, bytes: &[u8], mut meta: Evidence) -> Result<(String, bool), EvidenceError> {
        let sha = digest(bytes);
        meta.sha256 = sha.clone();
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        if index.contains_key(&sha) {
            self.metrics.already.fetch_add(1, Ordering::Relaxed);
            return Ok((sha, false));
        }
        let path = self.dir.join(&sha);
        let tmp = self.dir.join(format!("{sha}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        let idx = self.dir.join("index.jsonl");
        let mut line = serde_json::to_string(&meta).unwrap_or_default();
        line.push('\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&idx).map_err(io(&idx))?;
        f.write_all(line.as_bytes()).map_err(io(&idx))?;
        f.sync_data().map_err(io(&idx))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        index.insert(sha.clone(), meta);
        self.metrics.stored.fetch_add(1, Ordering::Relaxed);
        Ok((sha, true))
    }

    /// What is known of image `sha256`.
    pub fn get(&self, sha256: &str) -> Option<Evidence> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner).get(sha256).cloned()
    }

    /// The images of `gateway`'s `camera`, newest first (at most `limit`).
    pub fn of_camera(&self, gateway: &str, camera: &str, limit: usize) -> Vec<Evidence> {
        let index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Evidence> =
            index.values().filter(|e| e.gateway == gateway && e.camera == camera).cloned().collect();
        out.sort_by(|a, b| b.ts_ms.cmp(&a.ts_ms).then_with(|| a.sha256.cmp(&b.sha256)));
        out.truncate(limit);
        out
    }

    /// Reads image `sha256`'s bytes.
    pub fn read(&self, sha256: &str) -> Result<Vec<u8>, EvidenceError> {
        let path = self.dir.join(sha256);
        std::fs::read(&path).map_err(io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(camera: &str, ts: i64) -> Evidence {
        Evidence {
            sha256: String::new(),
            content_type: "image/jpeg".into(),
            bytes: 0,
            enterprise: "ent-a".into(),
            gateway: "gw-1".into(),
            camera: camera.into(),
            ts_ms: ts,
        }
    }

    #[test]
    fn stores_once_and_survives_reopen_and_torn_index_lines() {
        let dir = tempfile::tempdir().unwrap();
        let store = EvidenceStore::open(dir.path()).unwrap();
        let (sha, new) = store.keep(b"\xff\xd8\xffimage", meta("cam-1", 5)).unwrap();
        assert!(new);
        assert!(is_sha256(&sha));
        assert!(!store.keep(b"\xff\xd8\xffimage", meta("cam-1", 6)).unwrap().1, "same bytes stored once");
        store.keep(b"other", meta("cam-1", 9)).unwrap();
        drop(store);
        // A torn last line (crash mid-append) and a line naming a missing file are skipped.
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("index.jsonl")).unwrap();
        f.write_all(b"{\"sha256\":\"ab").unwrap();
        let store = EvidenceStore::open(dir.path()).unwrap();
        assert_eq!(store.metrics.bad_index_lines.load(Ordering::Relaxed), 1);
        assert_eq!(store.read(&sha).unwrap(), b"\xff\xd8\xffimage");
        assert_eq!(store.get(&sha).unwrap().ts_ms, 5);
        let list = store.of_camera("gw-1", "cam-1", 10);
        assert_eq!(list.iter().map(|e| e.ts_ms).collect::<Vec<_>>(), vec![9, 5]);
    }

    #[test]
    fn only_images_keep_their_type() {
        assert_eq!(served_type("IMAGE/JPEG"), "image/jpeg");
        assert_eq!(served_type("image/png"), "image/png");
        assert_eq!(served_type("text/html"), "application/octet-stream");
        assert!(!is_sha256("../etc/passwd"));
        assert!(!is_sha256(&"A".repeat(64)));
    }
}
