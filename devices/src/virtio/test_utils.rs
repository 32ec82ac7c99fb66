//! What the device tests share: guest memory, descriptors, and chains made available in
//! a mock queue of 256 entries.

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

/// The guest memory of the tests.
pub(crate) const MEM_SIZE: usize = 0x10_0000;
/// The size of the mock queues.
const RING_SIZE: u16 = 256;

/// 1 MiB of guest memory at 0.
pub(crate) fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One descriptor (`add_chain` links it).
pub(crate) fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, u16::try_from(flags).unwrap(), 0))
}

/// Puts one chain made of `descs` at index `at` of the descriptor table (linking them
/// with NEXT) and makes it available (the available ring wraps around).
pub(crate) fn add_chain(
    vq: &MockSplitQueue<'_, GuestMemoryMmap>,
    at: u16,
    descs: &[RawDescriptor],
) {
    let next_flag = u16::try_from(VRING_DESC_F_NEXT).unwrap();
    for (i, d) in (0u16..).zip(descs) {
        let d = Descriptor::from(*d);
        let last = usize::from(i) + 1 == descs.len();
        let (flags, next) = if last {
            (d.flags() & !next_flag, 0)
        } else {
            (d.flags() | next_flag, at + i + 1)
        };
        let linked = Descriptor::new(d.addr().0, d.len(), flags, next);
        vq.desc_table()
            .store(at + i, RawDescriptor::from(linked))
            .unwrap();
    }
    let idx = vq.avail().idx().load();
    vq.avail()
        .ring()
        .ref_at(usize::from(idx % RING_SIZE))
        .unwrap()
        .store(at);
    vq.avail().idx().store(idx.wrapping_add(1));
}
