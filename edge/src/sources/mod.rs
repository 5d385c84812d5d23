//! Protocol drivers, one module per protocol. Each turns a device's replies into [`crate::Record`]s
//! with honest quality.

pub mod system;
