//! `vigil-central`: the park aggregator. Ingest (verify, deduplicate, WAL, acknowledge), the
//! historian (compressed chunks, queries) and its HTTP query endpoints, and the alarm engine.

pub mod alarms;
pub mod api;
pub mod broker;
pub mod catalogue;
pub mod config;
pub mod config_push;
pub mod enrol;
pub mod evidence;
pub mod historian;
pub mod identity;
pub mod ingest;
pub mod notify;
pub mod seen;
pub mod store;
pub mod swinging_door;
pub mod tls;
pub mod ui;
pub mod updates;
pub mod wal;
