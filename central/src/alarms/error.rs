//! Errors of the alarm engine.

/// Anything the alarm engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum AlarmError {
    /// The durable store failed; nothing was announced.
    #[error("alarm store: {0}")]
    Store(#[from] sqlx::Error),
    /// A stored document could not be decoded.
    #[error("alarm store document: {0}")]
    Document(#[from] serde_json::Error),
    /// The definitions file is invalid.
    #[error("alarm definitions {path}: {message}")]
    Config {
        /// Where the problem is (file and key path).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// No alarm with this id is open.
    #[error("no open alarm {0}")]
    NoSuchAlarm(i64),
    /// No maintenance window with this id.
    #[error("no maintenance window {0}")]
    NoSuchWindow(i64),
    /// No threshold request with this id.
    #[error("no threshold request {0}")]
    NoSuchRequest(i64),
    /// No definition for this point.
    #[error("no alarm definition for point {0}")]
    NoSuchPoint(String),
    /// The action is not allowed in the alarm's current state.
    #[error("{action} not allowed: {reason}")]
    NotAllowed {
        /// The refused action.
        action: &'static str,
        /// Why.
        reason: String,
    },
    /// The audit chain is broken.
    #[error("audit chain broken at record {seq}: {reason}")]
    Chain {
        /// Sequence number of the first bad record.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
}
