//! virtio-rng (virtio 1.2, 5.4, "entropy device"): one queue of device-writable buffers,
//! each filled with bytes from the host's getrandom(2).
//!
//! Snapshots (`persist.rs`): no state of its own beyond its queue (saved with the
//! transport) and the [`Rng::bytes_served`] counter.

mod device;
mod event_handler;
pub mod persist;
mod request;

pub use device::{Rng, RngError};
pub use request::{fill_chain, host_random, process_queue, process_queue_limited, EntropyError};

/// The size of the device's only queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets: enough for any driver (Linux asks for at most
/// 64 bytes at a time), small enough that a guest cannot make the event loop fill
/// megabytes per buffer. A larger buffer is filled this far, and the used length says so.
pub const MAX_REQUEST_LEN: usize = 64 << 10;
