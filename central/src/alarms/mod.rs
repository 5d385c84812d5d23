//! The alarm engine: per-point definitions (HH/H/L/LL with deadband, on/off delay, rate of change, bad
//! quality, stale, frozen; digital inputs and gas cameras through the same definitions), gateway and
//! device offline as their own alarm types, evaluation on source timestamps, the ISA-18.2 state
//! machine with durable state, operator actions and the closed loop, an audit hash chain, maintenance
//! windows, threshold-change workflow and alarm-load KPIs. See `docs/ARCHITECTURE.md` (Alarm engine).

pub mod audit;
pub mod config;
mod detect;
pub mod engine;
pub mod error;
pub mod feed;
pub mod kpi;
pub mod live;
pub mod model;
pub mod store;

pub use audit::{AuditRecord, verify_chain};
pub use config::{AlarmConfig, EngineSettings, PointDef, PointKind};
pub use engine::{AlarmEngine, PointRef};
pub use error::AlarmError;
pub use model::*;
pub use store::{AlarmFilter, AlarmStore, SqliteStore, StoreOp};
