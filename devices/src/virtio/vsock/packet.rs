//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, 44 bytes, little-endian)
//! and the parsing of TX descriptor chains.
//!
//! Chains are parsed by the rust-vmm `virtio-vsock` crate (0.12, built on the same
//! virtio-queue 0.18 and vm-memory 0.18 as the rest of hearth): it checks directions,
//! lengths and that every buffer lies in guest memory, and accepts both layouts drivers
//! use (header and payload in one descriptor, Linux 6.2 on, or in two). Its header is
//! copied once into a plain [`Header`], so the guest cannot change a field between the
//! check and the use.

use crate::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::Bytes;

use super::{HOST_CID, MAX_PKT_DATA};

/// The size of `struct virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;
const _: () = assert!(HEADER_SIZE == PKT_HEADER_SIZE);

/// The only socket type served: a connection-oriented byte stream.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (virtio 1.2, 5.10.6).
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Accept a connection.
    pub const RESPONSE: u16 = 2;
    /// Refuse or abort a connection.
    pub const RST: u16 = 3;
    /// Stop sending and/or receiving (the flags say which).
    pub const SHUTDOWN: u16 = 4;
    /// Stream data.
    pub const RW: u16 = 5;
    /// "Here is my buf_alloc and fwd_cnt".
    pub const CREDIT_UPDATE: u16 = 6;
    /// "Send me a CREDIT_UPDATE".
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header as plain data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN's).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the little-endian wire format.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes the little-endian wire format.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn from_packet(
        p: &VsockPacket<'_, vm_memory::bitmap::BS<'_, vm_memory::bitmap::AtomicBitmap>>,
    ) -> Self {
        Header {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            len: p.len(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
    }

    /// The reset that answers `self` (a packet from the guest `guest_cid`): from the host
    /// end it was addressed to, back to the guest port that sent it.
    pub fn rst_reply(&self, guest_cid: u64) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        }
    }
}

/// A packet taken from the TX queue.
#[derive(Debug)]
pub struct TxPacket<'a> {
    /// Its header, copied out of guest memory.
    pub header: Header,
    /// Exactly `header.len` bytes of payload in guest memory (None when `len` is 0).
    pub data: Option<crate::GuestSlice<'a>>,
}

/// Why a TX chain is not a packet.
#[derive(Debug, thiserror::Error)]
#[error("malformed vsock TX packet: {source}")]
pub struct TxError {
    /// The header, when the chain starts with a readable one (so that the connection it
    /// names can be reset).
    pub header: Option<Header>,
    /// What the parser found wrong.
    #[source]
    pub source: virtio_vsock::packet::Error,
}

/// Parses one TX chain: a device-readable header, then `len` bytes of payload in the same
/// or the next (device-readable) descriptor. A payload over [`MAX_PKT_DATA`] is refused.
pub fn parse_tx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&'a GuestMemoryMmap>,
) -> Result<TxPacket<'a>, TxError> {
    // The head descriptor, read before the parser consumes the chain: it lets a packet
    // with a good header but bad payload still reset its connection.
    let head = chain.clone().next();
    let mut chain = chain;
    match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
        Ok(p) => Ok(TxPacket {
            header: Header::from_packet(&p),
            data: p.data_slice().cloned(),
        }),
        Err(source) => {
            let header = head
                .filter(|d| !d.is_write_only() && d.len() as usize >= HEADER_SIZE)
                .and_then(|d| {
                    let mut raw = [0u8; HEADER_SIZE];
                    mem.read_slice(&mut raw, d.addr()).ok()?;
                    Some(Header::from_bytes(&raw))
                });
            Err(TxError { header, source })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_wire_order() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xaabb_ccdd,
            dst_port: 5000,
            len: 17,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 3,
            buf_alloc: 65536,
            fwd_cnt: 0xffff_fff0,
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 0x08, "little-endian src_cid first");
        assert_eq!(&b[16..20], &0xaabb_ccddu32.to_le_bytes());
        assert_eq!(&b[28..32], &[1, 0, 5, 0], "type then op");
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn rst_reply_swaps_ports_and_comes_from_the_host() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 80,
            op: op::REQUEST,
            type_: TYPE_STREAM,
            ..Header::default()
        };
        let r = h.rst_reply(3);
        assert_eq!((r.src_cid, r.dst_cid), (2, 3));
        assert_eq!((r.src_port, r.dst_port), (80, 1234));
        assert_eq!(r.op, op::RST);
        assert_eq!(r.len, 0);
    }
}
