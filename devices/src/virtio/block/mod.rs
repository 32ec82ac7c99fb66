//! virtio-blk (virtio 1.2, 5.2) backed by a raw image file or block device.
//!
//! [`Block`] is what the VMM builds and hands to the virtio-mmio transport (as a
//! [`VirtioDevice`](super::VirtioDevice)) and to the event loop (as a
//! `MutEventSubscriber`). [`Disk`] is the backing file; [`Request`] turns a descriptor
//! chain into file I/O, straight between guest memory and the file.

mod device;
mod disk;
mod event_handler;
pub mod persist;
mod request;

pub use device::{Block, BlockConfig, BlockError};
pub use disk::{BlockCounters, Disk, DiskError};
pub use request::{execute_chain, process_queue, ParsedChain, Request, RequestError, RequestType};

/// Helpers other modules' tests use to build requests.
#[cfg(test)]
pub(crate) use request::tests as test_utils;

/// The size of a virtio-blk sector; request offsets are always in these units.
pub const SECTOR_SIZE: u64 = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;
/// The size of the device's only queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most data descriptors a request may carry (VIRTIO_BLK_F_SEG_MAX): a chain is at
/// most a queue long, and one descriptor each goes to the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The length of the serial number GET_ID returns.
pub const DISK_ID_LEN: usize = 20;
/// Bytes of the configuration space the device defines (capacity to blk_size); reads
/// past it return zeros.
pub const CONFIG_SPACE_SIZE: usize = 24;
