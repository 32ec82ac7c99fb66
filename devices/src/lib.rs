//! Device models for the hearth VMM.
//!
//! Each device keeps its wire handling, event wiring and snapshot state side by side in
//! its own folder. The VMM reaches every device through [`bus::BusDevice`]: vCPU threads
//! forward port I/O and MMIO exits to a [`bus::Bus`], while anything that can wait (queue
//! notifications, tap and socket readiness) runs on the event loop.

pub mod bus;
pub mod legacy;
pub mod persist;
pub mod rate_limiter;
pub mod stale_socket;
pub mod virtio;
