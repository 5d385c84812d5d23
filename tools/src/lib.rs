//! Simulators, load generators and benchmark harnesses. Shared generators live here; each tool is
//! a binary in `src/bin/`.

pub mod sim;
pub mod workload;
