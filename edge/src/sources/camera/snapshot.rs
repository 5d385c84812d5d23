//! Snapshot fetch: GET the evidence image with a timeout, stop reading past the size bound, accept
//! only images (JPEG or PNG, by content type or magic bytes), and only from the camera's own host.

use std::time::Duration;

use base64::Engine as _;
use hyper::http::Method;
use vigil_common::event::{MAX_SNAPSHOT_BYTES, Snapshot};

use super::client::{self, FetchError, Url};
use super::{Camera, Hub};

/// Why a snapshot was not attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The fetch failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The URL points somewhere else than the camera.
    #[error("snapshot URL host {0:?} is not the camera's host")]
    ForeignHost(String),
    /// The camera answered with an error status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer is not an image.
    #[error("not a JPEG or PNG image")]
    NotAnImage,
}

/// Fetches `url` for `camera`; counts and logs a failure and returns `None` then.
pub async fn fetch(hub: &Hub, camera: &Camera, url: &str) -> Option<Snapshot> {
    let limit = hub.settings.snapshot_max_bytes.min(MAX_SNAPSHOT_BYTES);
    let timeout = Duration::from_millis(hub.settings.snapshot_timeout_ms);
    match get(camera, url, timeout, limit).await {
        Ok(s) => {
            hub.metrics.snapshots.inc();
            Some(s)
        }
        Err(e) => {
            hub.metrics.snapshot_failures.inc();
            if matches!(e, SnapshotError::Fetch(FetchError::TooLarge { .. })) {
                hub.metrics.snapshot_too_large.inc();
            }
            tracing::warn!(camera = %camera.config.name, url, error = %e, "snapshot not attached");
            None
        }
    }
}

/// GETs one snapshot.
pub async fn get(camera: &Camera, url: &str, timeout: Duration, limit: usize) -> Result<Snapshot, SnapshotError> {
    let parsed = Url::parse(url)?;
    if let Some(host) = &camera.config.host
        && !host.eq_ignore_ascii_case(&parsed.host)
    {
        return Err(SnapshotError::ForeignHost(parsed.host));
    }
    let mut headers = vec![("accept", "image/jpeg, image/png".to_owned())];
    if let Some(cred) = &camera.config.snapshot_credentials {
        headers.push(("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(cred))));
    }
    let resp = client::send(Method::GET, url, &headers, Vec::new(), timeout, limit).await?;
    if !(200..300).contains(&resp.status) {
        return Err(SnapshotError::Status(resp.status));
    }
    let content_type = image_type(&resp.body).ok_or(SnapshotError::NotAnImage)?;
    Ok(Snapshot { content_type: content_type.to_owned(), bytes: resp.body })
}

/// The image type by magic bytes (cameras label images carelessly; the bytes decide).
pub fn image_type(body: &[u8]) -> Option<&'static str> {
    if body.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if body.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else {
        None
    }
}
