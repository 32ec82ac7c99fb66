//! What the fuzz targets share: cutting the input into fields and laying a fuzzed split
//! virtqueue (descriptors, available ring, guest data) out in guest memory.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use hearth_devices::GuestMemoryMmap;

/// Takes the next `n` bytes of the input, if there are that many.
pub fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, rest) = data.split_at(n);
    *data = rest;
    Some(head)
}

/// `size` bytes of guest memory at 0.
pub fn guest_memory(size: u64) -> GuestMemoryMmap {
    let size = usize::try_from(size).expect("guest memory size fits in usize");
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).expect("guest memory")
}

/// A ready queue of `size` entries with its rings at the given addresses (below 4 GiB).
pub fn ready_queue(size: u16, desc: u64, avail: u64, used: u64, event_idx: bool) -> Queue {
    let low = |addr: u64| Some(u32::try_from(addr).expect("rings below 4 GiB"));
    let mut q = Queue::new(size).expect("queue");
    q.set_size(size);
    q.set_ready(true);
    q.set_desc_table_address(low(desc), Some(0));
    q.set_avail_ring_address(low(avail), Some(0));
    q.set_used_ring_address(low(used), Some(0));
    q.set_event_idx(event_idx);
    q
}

/// Where a fuzzed queue lives in guest memory.
#[derive(Debug)]
pub struct QueueLayout {
    /// Descriptor table.
    pub desc_table: u64,
    /// Available ring.
    pub avail_ring: u64,
    /// Start of the area descriptor addresses are folded into.
    pub data_area: u64,
    /// End of the data area the rest of the input fills.
    pub data_end: u64,
    /// Folded addresses land in [data_area, data_area + addr_span).
    pub addr_span: u64,
    /// When set, descriptor lengths are folded below this (unless flag bit 14 is set).
    pub len_span: Option<u32>,
}

/// Writes up to `ndesc` descriptors (16 input bytes each), `navail` available-ring heads
/// (2 bytes each) and the available index `navail`, then fills the data area with what
/// is left of the input. Descriptor addresses are folded into the data area (and just
/// past guest memory) unless flag bit 15 asks for the raw value, so that fuzzing reaches
/// the parsers instead of bouncing off "address not in memory".
pub fn write_queue(
    mem: &GuestMemoryMmap,
    data: &mut &[u8],
    layout: &QueueLayout,
    queue_size: u16,
    ndesc: u8,
    navail: u8,
) {
    for i in 0..u64::from(ndesc).min(u64::from(queue_size)) {
        let Some(raw) = take(data, 16) else {
            break;
        };
        let mut d = [0u8; 16];
        d.copy_from_slice(raw);
        let flags = u16::from_le_bytes([d[12], d[13]]);
        if flags & 0x8000 == 0 {
            let addr = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
            let folded = layout.data_area + addr % layout.addr_span;
            d[..8].copy_from_slice(&folded.to_le_bytes());
        }
        if let Some(span) = layout.len_span.filter(|_| flags & 0x4000 == 0) {
            let len = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
            d[8..12].copy_from_slice(&(len % span).to_le_bytes());
        }
        mem.write_slice(&d, GuestAddress(layout.desc_table + 16 * i))
            .expect("desc table");
    }
    for i in 0..u64::from(navail).min(u64::from(queue_size)) {
        let Some(head) = take(data, 2) else {
            break;
        };
        mem.write_slice(head, GuestAddress(layout.avail_ring + 4 + 2 * i))
            .expect("avail ring");
    }
    // The available index: usually what was written, sometimes past the queue size.
    mem.write_obj(
        u16::from(navail).to_le(),
        GuestAddress(layout.avail_ring + 2),
    )
    .expect("avail idx");
    let area = usize::try_from(layout.data_end - layout.data_area).expect("data area fits");
    let n = data.len().min(area);
    mem.write_slice(&data[..n], GuestAddress(layout.data_area))
        .expect("data area");
}
