//! The contract between Vigil's edge agent and its central aggregator: point identity, samples and
//! events, the compressed and signed batch, acknowledgements, MQTT topic names, and the update
//! bundle's framing. Anything that crosses the wire is defined here and nowhere else;
//! `docs/PROTOCOL.md` specifies it byte by byte.

pub mod ack;
pub mod batch;
pub mod bundle;
pub mod catalogue;
pub mod codec;
pub mod command;
pub mod enrolment;
pub mod envelope;
pub mod event;
pub mod keyfile;
pub mod point;
pub mod state;
pub mod topic;

pub use ack::{Ack, AckError, SeqRange};
pub use batch::{Batch, BatchBuilder, BatchError, ClassDrops, DropCounters, Priority, Series};
pub use catalogue::{CatalogueError, DeviceEntry, DeviceProtocol, PointCatalogue, PointEntry};
pub use command::{Command, CommandAction, CommandError};
pub use envelope::{Algorithm, EnvelopeError, KeyId, Kind, PublicKey, SigningKey};
pub use event::{Event, EventKind, GasDetection};
pub use point::{ClockQuality, EnterpriseId, GatewayId, PointId, Quality, Sample, Severity, TimeSource, Value};
pub use state::{
    ConfigReport, GatewayState, PushOutcome, PushResult, SpoolReport, StateError, UpdateRecord, UpdateReport,
};
pub use topic::{Channel, Topic, TopicError};
