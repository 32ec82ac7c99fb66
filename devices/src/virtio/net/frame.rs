//! One Ethernet frame at a time between a descriptor chain and the host: a transmit chain
//! is checked and copied out whole, then handed to a [`FrameSink`] (the tap, or a fake in
//! tests and fuzzing); a received frame is copied into a receive chain only when the chain
//! can hold all of it.
//!
//! Everything the guest controls (descriptor directions, lengths, addresses, the header)
//! is checked before any byte moves, so a bad chain is dropped and counted, never half
//! sent and never a panic.

use std::io;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemory, GuestMemoryError};

use super::{ETH_HDR_LEN, MAX_FRAME_LEN, NET_HDR_LEN, QUEUE_SIZE};
use crate::rate_limiter::{RateLimiter, TokenType};
use crate::virtio::queue::{
    collect_chain, drain_queue_until, write_to_buffers, ChainError, ChainLimits, DrainError,
};

/// The longest chain looked at. Without VIRTIO_RING_F_INDIRECT_DESC a chain cannot be
/// longer than the queue, but virtio-queue follows indirect tables anyway (up to 65535
/// entries): longer chains are dropped rather than walked.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

/// Where transmitted frames go: the tap, or anything else that takes one whole frame
/// (virtio-net header first) per call.
pub trait FrameSink {
    /// Sends one frame, `virtio_net_hdr_v1` included; an error drops it.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
}

impl<F: FnMut(&[u8]) -> io::Result<()>> FrameSink for F {
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self(frame)
    }
}

/// What the device counted. Plain numbers, read by the VMM and saved with the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames the guest sent that reached the tap.
    pub tx_frames: u64,
    /// Their bytes, Ethernet header included, virtio-net header not.
    pub tx_bytes: u64,
    /// Transmit chains dropped: malformed, too long, or refused by the tap.
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes, Ethernet header included.
    pub rx_bytes: u64,
    /// Frames read from the tap that the guest never got (shorter than an Ethernet
    /// header, or larger than the receive buffer it posted).
    pub rx_dropped: u64,
    /// Receive chains returned unused because they were malformed (the frame waited for
    /// the next one).
    pub rx_bad_buffers: u64,
}

/// Why a chain did not make a frame (transmit) or could not take one (receive).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The chain's buffers are unusable (direction, memory, length, a broken walk).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A transmit chain shorter than the 12-byte virtio-net header.
    #[error("the transmit chain carries {0} bytes, less than the 12-byte virtio-net header")]
    ShortHeader(usize),
    /// A transmit chain with no room for an Ethernet header after the virtio-net header.
    #[error("the transmit chain carries a {0}-byte frame, shorter than an Ethernet header")]
    ShortFrame(usize),
    /// The header asks for an offload that was not negotiated.
    #[error("the virtio-net header asks for offloads that were not negotiated (flags {flags:#x}, gso_type {gso_type})")]
    Offload {
        /// `flags`.
        flags: u8,
        /// `gso_type`.
        gso_type: u8,
    },
    /// A receive chain that cannot hold the frame.
    #[error("the receive chain holds {capacity} bytes, the frame needs {needed}")]
    TooSmall {
        /// What the chain holds.
        capacity: u64,
        /// What the frame needs, virtio-net header included.
        needed: usize,
    },
    /// Copying between guest memory and the frame buffer failed.
    #[error("copying the frame failed: {0}")]
    Memory(#[source] GuestMemoryError),
    /// The sink (the tap) refused the frame.
    #[error("the tap refused the frame: {0}")]
    Sink(#[source] io::Error),
}

/// Copies the frame of a transmit chain into `buf` (virtio-net header first) after
/// checking it: device-readable buffers in guest memory, at least a header and an
/// Ethernet header, at most [`MAX_FRAME_LEN`], no offloads asked for. The header's
/// fields are cleared, since without offloads none of them means anything to the tap.
pub fn read_tx_frame<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    buf.clear();
    let limits = ChainLimits {
        descriptors: MAX_DESCRIPTORS,
        bytes: MAX_FRAME_LEN as u64,
    };
    let (descs, total) = collect_chain(mem, chain, false, limits)?;
    // At most MAX_FRAME_LEN, checked above.
    let total = usize::try_from(total).map_err(|_| ChainError::TooLong(limits.bytes))?;
    if total < NET_HDR_LEN {
        return Err(FrameError::ShortHeader(total));
    }
    if total < NET_HDR_LEN + ETH_HDR_LEN {
        return Err(FrameError::ShortFrame(total - NET_HDR_LEN));
    }
    buf.resize(total, 0);
    let mut at = 0;
    for d in &descs {
        let len = d.len() as usize;
        mem.read_slice(&mut buf[at..at + len], d.addr())
            .map_err(FrameError::Memory)?;
        at += len;
    }
    // flags (NEEDS_CSUM, DATA_VALID) and gso_type need features the device does not offer.
    let (flags, gso_type) = (buf[0], buf[1]);
    if flags != 0 || gso_type != 0 {
        return Err(FrameError::Offload { flags, gso_type });
    }
    buf[..NET_HDR_LEN].fill(0);
    Ok(())
}

/// Copies `frame` (virtio-net header first) into a receive chain when all of it fits;
/// returns the used length. A chain that cannot hold it is left untouched.
pub fn write_rx_frame<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    frame: &[u8],
) -> Result<u32, FrameError> {
    let limits = ChainLimits {
        descriptors: MAX_DESCRIPTORS,
        bytes: u64::MAX,
    };
    let (descs, capacity) = collect_chain(mem, chain, true, limits)?;
    if capacity < frame.len() as u64 {
        return Err(FrameError::TooSmall {
            capacity,
            needed: frame.len(),
        });
    }
    write_to_buffers(mem, &descs, frame).map_err(FrameError::Memory)?;
    // A frame is at most MAX_FRAME_LEN bytes (the caller's buffer).
    Ok(u32::try_from(frame.len()).unwrap_or(u32::MAX))
}

/// Sends every frame the driver made available in the transmit `queue` to `sink` and
/// returns whether the driver should now be interrupted. Malformed chains and frames the
/// sink refuses are dropped and counted; every chain goes back to the driver (used length
/// 0: the device wrote nothing). Errs only when the queue itself is broken.
///
/// `buf` is scratch space for one frame, kept between calls to avoid an allocation per
/// frame.
pub fn transmit<M: GuestMemory, S: FrameSink + ?Sized>(
    mem: &M,
    queue: &mut Queue,
    sink: &mut S,
    buf: &mut Vec<u8>,
    counters: &mut NetCounters,
) -> Result<bool, DrainError> {
    transmit_limited(mem, queue, sink, buf, counters, None)
}

/// [`transmit`] within `limiter` (a frame is an operation and its bytes without the
/// virtio-net header): a frame it has no tokens for stays in the ring until the
/// limiter's timer fires. Malformed frames cost nothing.
pub fn transmit_limited<M: GuestMemory, S: FrameSink + ?Sized>(
    mem: &M,
    queue: &mut Queue,
    sink: &mut S,
    buf: &mut Vec<u8>,
    counters: &mut NetCounters,
    mut limiter: Option<&mut RateLimiter>,
) -> Result<bool, DrainError> {
    drain_queue_until(mem, queue, |chain| {
        let read = read_tx_frame(mem, chain, buf);
        if let (Ok(()), Some(l)) = (&read, limiter.as_deref_mut()) {
            if !l.consume(1, TokenType::Ops) {
                return None;
            }
            if !l.consume((buf.len() - NET_HDR_LEN) as u64, TokenType::Bytes) {
                l.manual_replenish(1, TokenType::Ops);
                return None;
            }
        }
        let sent = read.and_then(|()| sink.write_frame(buf).map_err(FrameError::Sink));
        match sent {
            Ok(()) => {
                counters.tx_frames += 1;
                counters.tx_bytes += (buf.len() - NET_HDR_LEN) as u64;
            }
            // Not logged: a guest must not be able to flood the host's log.
            Err(_) => counters.tx_dropped += 1,
        }
        // The device wrote nothing.
        Some(0)
    })
}

#[cfg(test)]
// Test values (descriptor flags, lengths, statuses) are small constants.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod tests {
    use crate::GuestMemoryMmap;
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;
    use vm_memory::GuestAddress;

    use super::*;
    pub(crate) use crate::virtio::test_utils::{add_chain, desc, guest_memory, MEM_SIZE};

    pub(crate) const BUF: u64 = 0x2_0000;
    pub(crate) const R: u32 = 0;
    pub(crate) const W: u32 = VRING_DESC_F_WRITE;

    /// A frame: zero header, broadcast destination, a source MAC, ethertype 0x88b5, then
    /// `payload`.
    pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; NET_HDR_LEN];
        f.extend_from_slice(&[0xff; 6]);
        f.extend_from_slice(&[0x06, 0, 0xac, 0x10, 0, 2]);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(payload);
        f
    }

    struct Tx {
        mem: GuestMemoryMmap,
        sent: Vec<Vec<u8>>,
        counters: NetCounters,
    }

    impl Tx {
        fn new() -> Self {
            Tx {
                mem: guest_memory(),
                sent: Vec::new(),
                counters: NetCounters::default(),
            }
        }

        /// Runs each chain through `transmit` and returns the used lengths.
        fn run(&mut self, chains: &[&[RawDescriptor]]) -> Vec<u32> {
            let vq = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
            let mut q: Queue = vq.create_queue().unwrap();
            let mut next = 0u16;
            for c in chains {
                add_chain(&vq, next, c);
                next += c.len() as u16;
            }
            let sent = &mut self.sent;
            let mut sink = |f: &[u8]| {
                sent.push(f.to_vec());
                Ok(())
            };
            let mut buf = Vec::new();
            let notify =
                transmit(&self.mem, &mut q, &mut sink, &mut buf, &mut self.counters).unwrap();
            assert_eq!(notify, !chains.is_empty());
            assert_eq!(
                vq.used().idx().load(),
                chains.len() as u16,
                "every chain is returned"
            );
            (0..chains.len())
                .map(|i| vq.used().ring().ref_at(i).unwrap().load().len())
                .collect()
        }

        /// Runs one malformed chain: it must be dropped, counted and returned.
        fn dropped(&mut self, chain: &[RawDescriptor]) {
            let before = self.counters;
            assert_eq!(self.run(&[chain]), vec![0]);
            assert!(self.sent.is_empty(), "nothing reaches the tap: {chain:?}");
            assert_eq!(self.counters.tx_dropped, before.tx_dropped + 1, "{chain:?}");
            assert_eq!(self.counters.tx_frames, before.tx_frames);
        }
    }

    #[test]
    fn a_frame_split_over_descriptors_is_sent_whole() {
        let mut tx = Tx::new();
        let f = frame(b"hello from the guest");
        tx.mem
            .write_slice(&f[..NET_HDR_LEN], GuestAddress(BUF))
            .unwrap();
        tx.mem
            .write_slice(&f[NET_HDR_LEN..20], GuestAddress(BUF + 0x1000))
            .unwrap();
        tx.mem
            .write_slice(&f[20..], GuestAddress(BUF + 0x2000))
            .unwrap();
        let lens = tx.run(&[&[
            desc(BUF, NET_HDR_LEN as u32, R),
            desc(BUF + 0x1000, 8, R),
            desc(BUF + 0x2000, (f.len() - 20) as u32, R),
        ]]);
        assert_eq!(lens, vec![0]);
        assert_eq!(tx.sent, vec![f.clone()]);
        assert_eq!(tx.counters.tx_frames, 1);
        assert_eq!(tx.counters.tx_bytes, (f.len() - NET_HDR_LEN) as u64);
        assert_eq!(tx.counters.tx_dropped, 0);
    }

    #[test]
    fn header_fields_are_cleared_and_several_frames_go_in_order() {
        let mut tx = Tx::new();
        let mut a = frame(b"a");
        a[10] = 1; // num_buffers: meaningless on transmit
        a[2] = 0x55; // hdr_len: meaningless without offloads
        let b = frame(b"second");
        tx.mem.write_slice(&a, GuestAddress(BUF)).unwrap();
        tx.mem.write_slice(&b, GuestAddress(BUF + 0x1000)).unwrap();
        let lens = tx.run(&[
            &[desc(BUF, a.len() as u32, R)],
            &[desc(BUF + 0x1000, b.len() as u32, R)],
        ]);
        assert_eq!(lens, vec![0, 0]);
        assert_eq!(tx.sent, vec![frame(b"a"), b]);
    }

    #[test]
    fn malformed_transmit_chains_are_dropped_and_counted() {
        let mut tx = Tx::new();
        let f = frame(&[0x42; 100]);
        tx.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        let len = f.len() as u32;
        let end = MEM_SIZE as u64;
        // Shorter than the virtio-net header, then no room for an Ethernet header.
        tx.dropped(&[desc(BUF, 11, R)]);
        tx.dropped(&[desc(BUF, 0, R)]);
        tx.dropped(&[desc(BUF, (NET_HDR_LEN + ETH_HDR_LEN - 1) as u32, R)]);
        // A device-writable descriptor, first or later.
        tx.dropped(&[desc(BUF, len, W)]);
        tx.dropped(&[desc(BUF, 12, R), desc(BUF + 12, len - 12, W)]);
        // Outside guest memory: wholly, straddling its end, wrapping the address space.
        tx.dropped(&[desc(end, len, R)]);
        tx.dropped(&[desc(BUF, 12, R), desc(end - 8, 64, R)]);
        tx.dropped(&[desc(u64::MAX - 4, 64, R)]);
        // Larger than any frame: in one descriptor or summed over several.
        tx.dropped(&[desc(0, MAX_FRAME_LEN as u32 + 1, R)]);
        tx.dropped(&[desc(0, 0x8000, R), desc(0, 0x8000, R), desc(0, 0x8000, R)]);
        tx.dropped(&[desc(0, u32::MAX, R), desc(0, u32::MAX, R)]);
        // Offloads that were never negotiated: NEEDS_CSUM, a GSO type.
        let mut csum = f.clone();
        csum[0] = 1;
        tx.mem
            .write_slice(&csum, GuestAddress(BUF + 0x1000))
            .unwrap();
        tx.dropped(&[desc(BUF + 0x1000, len, R)]);
        let mut gso = f.clone();
        gso[1] = 1;
        tx.mem
            .write_slice(&gso, GuestAddress(BUF + 0x2000))
            .unwrap();
        tx.dropped(&[desc(BUF + 0x2000, len, R)]);
        assert_eq!(tx.counters.tx_dropped, 13);

        // The queue still works afterwards.
        assert_eq!(tx.run(&[&[desc(BUF, len, R)]]), vec![0]);
        assert_eq!(tx.sent, vec![f]);
    }

    #[test]
    fn the_largest_frame_is_sent_and_one_byte_more_is_not() {
        let mut tx = Tx::new();
        let mut f = frame(&[]);
        f.resize(MAX_FRAME_LEN, 0x11);
        tx.mem.write_slice(&f, GuestAddress(0x4_0000)).unwrap();
        tx.run(&[&[desc(0x4_0000, MAX_FRAME_LEN as u32, R)]]);
        assert_eq!(tx.sent.len(), 1);
        assert_eq!(tx.sent[0], f);
        tx.sent.clear();
        tx.dropped(&[
            desc(0x4_0000, MAX_FRAME_LEN as u32, R),
            desc(0x4_0000, 1, R),
        ]);
    }

    #[test]
    fn frames_the_sink_refuses_are_dropped_and_counted() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        let f = frame(b"x");
        mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        add_chain(&vq, 0, &[desc(BUF, f.len() as u32, R)]);
        add_chain(&vq, 1, &[desc(BUF, f.len() as u32, R)]);
        let mut calls = 0;
        let mut sink = |_: &[u8]| {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        };
        let mut counters = NetCounters::default();
        assert!(transmit(&mem, &mut q, &mut sink, &mut Vec::new(), &mut counters).unwrap());
        assert_eq!(calls, 2);
        assert_eq!(counters.tx_dropped, 2);
        assert_eq!(counters.tx_frames, 0);
        assert_eq!(vq.used().idx().load(), 2);
    }

    #[test]
    fn broken_chains_do_not_hang_and_the_queue_carries_on() {
        let mut tx = Tx::new();
        let f = frame(b"after");
        tx.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        let vq = MockSplitQueue::new(&tx.mem, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        let next = VRING_DESC_F_NEXT as u16;
        // Chain 0: a descriptor pointing at itself.
        vq.add_desc_chains(&[RawDescriptor::from(Descriptor::new(BUF, 26, next, 0))], 0)
            .unwrap();
        // Chain 1: a next index past the table.
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(BUF, 26, next, 999))],
            1,
        )
        .unwrap();
        // Chain 2: an indirect table whose length is not a whole number of descriptors.
        vq.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                0x5_0000,
                17,
                VRING_DESC_F_INDIRECT as u16,
                0,
            ))],
            2,
        )
        .unwrap();
        // Chain 3: a good frame.
        add_chain(&vq, 3, &[desc(BUF, f.len() as u32, R)]);
        let sent = &mut tx.sent;
        let mut sink = |fr: &[u8]| {
            sent.push(fr.to_vec());
            Ok(())
        };
        assert!(transmit(
            &tx.mem,
            &mut q,
            &mut sink,
            &mut Vec::new(),
            &mut tx.counters
        )
        .unwrap());
        assert_eq!(vq.used().idx().load(), 4);
        assert_eq!(tx.sent, vec![f]);
        assert_eq!(tx.counters.tx_dropped, 3);
    }

    #[test]
    fn overlong_indirect_chains_are_dropped() {
        let mut tx = Tx::new();
        let table = 0x5_0000u64;
        let n = 300u16;
        for i in 0..n {
            let flags = if i + 1 < n { VRING_DESC_F_NEXT } else { 0 };
            let d = Descriptor::new(BUF, 1, flags as u16, i + 1);
            tx.mem
                .write_obj(
                    RawDescriptor::from(d),
                    GuestAddress(table + 16 * u64::from(i)),
                )
                .unwrap();
        }
        tx.dropped(&[desc(table, 16 * u32::from(n), VRING_DESC_F_INDIRECT)]);
    }

    #[test]
    fn a_head_index_past_the_table_is_an_empty_chain_and_dropped() {
        let mut tx = Tx::new();
        let f = frame(b"ok");
        tx.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        let vq = MockSplitQueue::new(&tx.mem, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        add_chain(&vq, 0, &[desc(BUF, f.len() as u32, R)]);
        // A second available entry naming descriptor 300 of a 16-entry table.
        vq.avail().ring().ref_at(1).unwrap().store(300);
        vq.avail().idx().store(2);
        let sent = &mut tx.sent;
        let mut sink = |fr: &[u8]| {
            sent.push(fr.to_vec());
            Ok(())
        };
        assert!(transmit(
            &tx.mem,
            &mut q,
            &mut sink,
            &mut Vec::new(),
            &mut tx.counters
        )
        .unwrap());
        assert_eq!(tx.sent, vec![f]);
        assert_eq!((tx.counters.tx_frames, tx.counters.tx_dropped), (1, 1));
        // The bad head cannot be returned (there is no such descriptor); the good one is.
        assert_eq!(vq.used().idx().load(), 1);
        // The receive side sees the same empty chain.
        let vq = MockSplitQueue::new(&tx.mem, 16);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(300);
        vq.avail().idx().store(1);
        let chain = q.iter(&tx.mem).unwrap().next().unwrap();
        assert!(matches!(
            write_rx_frame(&tx.mem, chain, &frame(b"x")),
            Err(FrameError::Chain(ChainError::Empty))
        ));
    }

    #[test]
    fn a_bogus_available_index_is_an_error_not_a_hang() {
        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        vq.avail().idx().store(QUEUE_SIZE + 1);
        let mut sink = |_: &[u8]| Ok(());
        assert!(matches!(
            transmit(
                &mem,
                &mut q,
                &mut sink,
                &mut Vec::new(),
                &mut NetCounters::default()
            ),
            Err(DrainError::Queue(_))
        ));
    }

    /// Pops the next chain of a fresh queue holding `descs` and writes `f` into it.
    fn rx(mem: &GuestMemoryMmap, descs: &[RawDescriptor], f: &[u8]) -> Result<u32, FrameError> {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        add_chain(&vq, 0, descs);
        let chain = q.iter(mem).unwrap().next().unwrap();
        write_rx_frame(mem, chain, f)
    }

    #[test]
    fn a_received_frame_fills_the_chain_in_order() {
        let mem = guest_memory();
        let f = frame(&[7u8; 3000]);
        mem.write_slice(&[0xee; 0x3000], GuestAddress(BUF)).unwrap();
        let len = rx(
            &mem,
            &[
                desc(BUF, NET_HDR_LEN as u32, W),
                desc(BUF + 0x1000, 2048, W),
                desc(BUF + 0x2000, 2048, W),
            ],
            &f,
        )
        .unwrap();
        assert_eq!(len as usize, f.len());
        let mut got = vec![0u8; f.len()];
        mem.read_slice(&mut got[..NET_HDR_LEN], GuestAddress(BUF))
            .unwrap();
        mem.read_slice(
            &mut got[NET_HDR_LEN..NET_HDR_LEN + 2048],
            GuestAddress(BUF + 0x1000),
        )
        .unwrap();
        mem.read_slice(&mut got[NET_HDR_LEN + 2048..], GuestAddress(BUF + 0x2000))
            .unwrap();
        assert_eq!(got, f);
        let mut after = [0u8; 1];
        mem.read_slice(
            &mut after,
            GuestAddress(BUF + 0x2000 + (f.len() - NET_HDR_LEN - 2048) as u64),
        )
        .unwrap();
        assert_eq!(after, [0xee], "nothing written past the frame");
    }

    #[test]
    fn receive_chains_that_cannot_take_the_frame_are_left_untouched() {
        let mem = guest_memory();
        let f = frame(&[1u8; 100]);
        let end = MEM_SIZE as u64;
        mem.write_slice(&[0xee; 0x100], GuestAddress(BUF)).unwrap();
        let cases: &[&[RawDescriptor]] = &[
            // Too small.
            &[desc(BUF, f.len() as u32 - 1, W)],
            // Device-readable.
            &[desc(BUF, 2048, R)],
            &[desc(BUF, 12, W), desc(BUF + 12, 2048, R)],
            // Outside guest memory.
            &[desc(BUF, 12, W), desc(end - 16, 2048, W)],
            &[desc(u64::MAX - 4, 2048, W)],
        ];
        for c in cases {
            assert!(rx(&mem, c, &f).is_err(), "{c:?}");
            let mut got = [0u8; 0x100];
            mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
            assert_eq!(got, [0xee; 0x100], "{c:?}");
        }
        assert!(matches!(
            rx(&mem, &[desc(BUF, 20, W)], &f),
            Err(FrameError::TooSmall { capacity: 20, .. })
        ));
    }
}
