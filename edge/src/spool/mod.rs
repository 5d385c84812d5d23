//! Store-and-forward: the batcher seals records into signed batches, the spool keeps them on disk
//! until central acknowledges them.

use serde::Deserialize;

/// The `[spool]` section of the gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool database.
    pub path: std::path::PathBuf,
}
