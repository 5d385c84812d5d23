//! The gateway agent: sources read field devices, the pipeline shapes readings, the spool keeps them
//! until central acknowledges them, and the uplink sends them.
//!
//! Data moves one way: `sources` -> `pipeline` -> [`Record`] channel -> `spool` (batcher, sealed
//! signed batches on disk) -> `uplink` (MQTT over TLS). Nothing reaches back into a stage that fed it.

use vigil_common::{Event, PointId, Sample};

pub mod agent;
pub mod catalogue;
pub mod config;
pub mod config_push;
pub mod pipeline;
pub mod site;
pub mod sources;
pub mod spool;
pub mod status;
pub mod update;
pub mod uplink;

/// What the pipeline hands to the batcher: a sample of a point, or an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A reading of one point, already scaled and filtered by the pipeline.
    Sample {
        /// The point.
        point: PointId,
        /// The reading.
        sample: Sample,
    },
    /// Something that happened (device offline/online, camera detection, digital input ...).
    Event(Event),
}
