//! Gateway hardware behind `embedded-hal` 1.0 traits: digital inputs and outputs (camera alarm
//! contact, local siren relay, status LED), RS485 direction control and the hardware watchdog.
//!
//! Nothing is implemented here yet: the drivers arrive with the gas-camera and gateway-hardware
//! issue (#10). The crate exists so the workspace layout in `docs/ARCHITECTURE.md` is complete.
