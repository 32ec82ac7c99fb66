//! virtio-net (virtio 1.2, 5.1) backed by a host tap device.
//!
//! [`Net`] is what the VMM builds and hands to the virtio-mmio transport (as a
//! [`VirtioDevice`](super::VirtioDevice)) and to the event loop (as a
//! `MutEventSubscriber`). [`Tap`] opens the tap through /dev/net/tun; `frame` moves one
//! Ethernet frame between a descriptor chain and a [`FrameSink`] or a buffer.
//!
//! The device offers no offloads: every frame travels whole and fully checksummed,
//! behind the 12-byte `virtio_net_hdr_v1` that VIRTIO_F_VERSION_1 implies. There is one
//! receive and one transmit queue.
//!
//! Snapshots (`persist.rs`): the [`NetConfig`] with the MAC in use and the frame held
//! back for a receive buffer; the tap is reopened by name on restore.

mod device;
mod event_handler;
mod frame;
pub mod persist;
mod tap;

pub use device::{MacAddr, Net, NetConfig, NetError};
pub use frame::{read_tx_frame, transmit, write_rx_frame, FrameError, FrameSink, NetCounters};
pub use tap::{check_tap_name, Tap, TapError};

/// The receive queue's index.
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;
/// The size of both queues.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset and num_buffers (always present with VIRTIO_F_VERSION_1).
pub const NET_HDR_LEN: usize = 12;
/// An Ethernet header: destination, source, ethertype.
pub const ETH_HDR_LEN: usize = 14;
/// The largest frame either way, header included: a 65535-byte IP packet behind an
/// Ethernet header and a VLAN tag (what a tap with a 64 KiB MTU can carry), as
/// Firecracker and QEMU size their buffers. Without offloads no frame is larger.
pub const MAX_FRAME_LEN: usize = NET_HDR_LEN + 65550;
/// Bytes of the configuration space the device defines (mac and status); reads past it
/// return zeros.
pub const CONFIG_SPACE_SIZE: usize = 8;
