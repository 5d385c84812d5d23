//! Typed events a gateway reports: things that happened rather than values that were measured.

use serde::{Deserialize, Serialize};

use crate::batch::Priority;
use crate::point::ClockQuality;

/// Largest snapshot image a gas-detection event may carry, in bytes.
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

/// Something that happened at a gateway or one of its devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened, UTC milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Quality of that timestamp.
    pub clock: ClockQuality,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of event, each with what central needs to act on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A gas-leak camera detected (or stopped detecting) a leak.
    GasDetection(GasDetection),
    /// A digital input changed state (for example a camera's alarm relay or a tank's high-level switch).
    DigitalInput {
        /// The input's name in the gateway configuration.
        input: String,
        /// Its new state.
        state: bool,
    },
    /// A device answered again after being offline.
    DeviceOnline {
        /// The device's name in the gateway configuration.
        device: String,
    },
    /// A device stopped answering.
    DeviceOffline {
        /// The device's name in the gateway configuration.
        device: String,
        /// Why the gateway considers it offline (last error).
        reason: String,
    },
    /// A source (driver) hit a fault that is not a device being offline (bad reply, configuration refused).
    SourceFault {
        /// The source or device name.
        source: String,
        /// What went wrong.
        message: String,
    },
    /// The spool had to drop stored data to stay within its disk budget.
    SpoolDropped {
        /// The class of the dropped batches.
        class: Priority,
        /// How many batches.
        batches: u64,
        /// How many samples they held.
        samples: u64,
        /// How many events they held.
        events: u64,
    },
    /// The spool could not be opened and was moved aside; a new epoch started.
    SpoolLost {
        /// The epoch that was lost, if it could be read.
        old_epoch: Option<u64>,
        /// Why it could not be used.
        reason: String,
        /// Where the old spool was moved, for inspection.
        quarantined_to: String,
    },
    /// The gateway agent started.
    GatewayStarted {
        /// Agent version.
        version: String,
        /// Reason of the start as far as known (power-on, watchdog, update, manual).
        reason: String,
    },
    /// A local annunciation rule switched its output (siren, beacon) on or off at the site.
    LocalAlarm {
        /// The rule's name in the gateway configuration.
        rule: String,
        /// The output it drives.
        output: String,
        /// The output's new state.
        on: bool,
        /// What triggered or released it.
        cause: String,
    },
}

/// A gas-leak camera's detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GasDetection {
    /// The camera's name in the gateway configuration.
    pub camera: String,
    /// Whether the leak started or stopped being seen.
    pub phase: DetectionPhase,
    /// Gas type as reported by the camera (for example `methane`, `SF6`, `VOC`).
    pub gas: String,
    /// Concentration times path length.
    pub concentration: f64,
    /// Unit of `concentration`.
    pub unit: ConcentrationUnit,
    /// Detection confidence, 0..1, when the camera reports one.
    pub confidence: Option<f32>,
    /// Where the camera was looking.
    pub location: LeakLocation,
    /// The evidence image, when one could be fetched.
    pub snapshot: Option<Snapshot>,
}

/// Start or end of a detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DetectionPhase {
    /// The camera started seeing the leak.
    Start,
    /// The camera no longer sees it.
    Stop,
}

/// Units of concentration-path-length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConcentrationUnit {
    /// Lower explosive limit times metres.
    LelM,
    /// Parts per million times metres.
    PpmM,
}

/// Where in the camera's view a leak was seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LeakLocation {
    /// PTZ preset number.
    pub preset: Option<u16>,
    /// Pan angle, degrees.
    pub pan: Option<f32>,
    /// Tilt angle, degrees.
    pub tilt: Option<f32>,
    /// Image region (x, y, width, height) in pixels.
    pub region: Option<[u32; 4]>,
}

/// An evidence image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// MIME type, for example `image/jpeg`.
    pub content_type: String,
    /// The image bytes (at most [`MAX_SNAPSHOT_BYTES`]).
    pub bytes: Vec<u8>,
}
