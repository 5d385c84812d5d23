//! `vigil-central` library: the alarm engine (ingest, historian and API arrive with their issues).
pub mod alarms;
