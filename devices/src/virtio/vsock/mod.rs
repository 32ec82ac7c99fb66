//! virtio-vsock (virtio 1.2, 5.10) bridged to host Unix sockets, in the convention
//! Firecracker established:
//!
//! - hearth listens on one Unix socket (`--vsock cid=3,socket=/tmp/vm.sock`). A host
//!   process connects to it and writes `CONNECT <port>\n` to reach a guest listener on
//!   vsock port `<port>`; once the guest accepts, it reads `OK <host_port>\n` (the port
//!   hearth gave the host end) and the stream is forwarded both ways.
//! - A guest connection to the host (CID 2), port `P`, is forwarded to a Unix socket
//!   listening at `<socket>_<P>`; without one, the guest gets a reset.
//!
//! [`Vsock`] is what the VMM builds and hands to the transport (as a
//! [`VirtioDevice`](super::VirtioDevice)) and to the event loop. [`Muxer`] does the work:
//! it parses the packets of the TX queue, fills the buffers of the RX queue, and keeps the
//! connections ([`connection`]) with their credit accounting. Everything is bounded: a
//! connection buffers at most the credit it advertised, control packets are flags on the
//! connection, and resets for unknown connections wait in a short queue that holds the TX
//! queue back when full.

pub mod connection;
mod device;
mod event_handler;
mod muxer;
pub mod packet;
pub mod persist;

pub use device::{Vsock, VsockConfig, VsockError};
pub use muxer::{EpollChange, Muxer, QueueError, VsockCounters};
pub use packet::Header;

/// The CID of the host, the only peer the guest can reach.
pub const HOST_CID: u64 = 2;
/// The lowest CID a guest may have (0 hypervisor, 1 local, 2 host).
pub const MIN_GUEST_CID: u64 = 3;
/// CIDs from here on are reserved (`VMADDR_CID_ANY` is `u32::MAX`; Linux keeps CIDs in 32
/// bits).
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the RX queue (device to driver).
pub const RXQ: usize = 0;
/// Index of the TX queue (driver to device).
pub const TXQ: usize = 1;
/// Index of the event queue (only used for transport resets after migration: unused).
pub const EVQ: usize = 2;

/// The largest payload of one packet, as in Linux (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// What each connection advertises as `buf_alloc`: the most guest data it buffers when
/// the host end does not read. The guest may not send more than this unacknowledged, so
/// this is also the bound of the connection's buffer.
pub const CONN_BUF_SIZE: u32 = 64 * 1024;
/// Send a CREDIT_UPDATE once this many bytes were forwarded since the guest last heard our
/// `fwd_cnt`. Half the buffer: the guest never stalls on a buffer we have already drained.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;
/// Most connections at once (both directions, including host connections that have not
/// sent their CONNECT line yet). Each holds a file descriptor: this stays well below the
/// usual soft limit of 1024 open files, so that accept(2) never fails with EMFILE and
/// leaves the listening socket readable (which would spin the event loop).
pub const MAX_CONNECTIONS: usize = 512;
/// Resets for unknown connections waiting for an RX buffer; when full, the TX queue is not
/// read until the guest takes some.
pub const MAX_STRAY_RST: usize = 128;
/// The first port given to host-initiated connections (what `OK <port>` reports), as in
/// Firecracker: far above the ports guests listen on.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// The longest `CONNECT <port>\n` line accepted.
pub const MAX_CONNECT_LINE: usize = 32;

#[cfg(test)]
// Test values (descriptor flags, lengths, ports) are small constants.
#[allow(clippy::cast_possible_truncation)]
mod tests;
