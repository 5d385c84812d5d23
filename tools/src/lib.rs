//! Simulators, load generators, test peers and benchmark harnesses. Shared pieces live here; each
//! tool is a binary in `src/bin/`.

pub mod broker;
pub mod faultproxy;
pub mod pki;
pub mod sim;
pub mod workload;
