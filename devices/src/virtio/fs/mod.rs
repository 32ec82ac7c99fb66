//! virtio-fs (virtio 1.2, 5.11): a host directory exported to the guest's `virtiofs`
//! driver (`mount -t virtiofs TAG /mnt`).
//!
//! The FUSE protocol and the passthrough filesystem are fuse-backend-rs's ([`share`]
//! adds read-only enforcement and refuses to open symbolic links on the host). That
//! crate (0.14, its latest) pins vm-memory `=0.17.1` and virtio-queue 0.17 while hearth
//! uses 0.18, so the device runs its queues with those versions over an alias of the
//! same guest memory mapping ([`queue`]). FUSE requests are served on the event loop.

mod device;
mod event_handler;
pub mod queue;
pub mod share;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use device::{Fs, FsError};

/// The longest tag the configuration space holds (virtio 1.2, 5.11.4).
pub const MAX_TAG_LEN: usize = 36;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Queues: the high-priority queue (FORGET, INTERRUPT) and one request queue.
pub const NUM_QUEUES: usize = 2;

/// One shared directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The host directory.
    pub path: PathBuf,
    /// The tag the guest mounts it by (1 to 36 bytes; the VMM names untagged shares).
    #[serde(default)]
    pub tag: String,
    /// Whether the guest may change it (otherwise every change fails with EROFS).
    #[serde(default)]
    pub read_only: bool,
}

#[cfg(test)]
mod tests;
