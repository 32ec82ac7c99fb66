//! Feeds arbitrary split-queue contents to the virtio-net transmit path, with a fake tap.
//!
//! The input lays out, in order: a config byte (queue size, EVENT_IDX, whether the fake
//! tap refuses every other frame), the descriptor count, the available-index bump, the
//! descriptors (16 bytes each, written to the descriptor table), the available ring heads
//! (2 bytes each), and the bytes of the guest data area where headers and frames live.
//! Descriptor addresses are folded into (and just past) guest memory unless flag bit 15
//! asks for the raw value, so that the fuzzer reaches the frame checks instead of bouncing
//! off "address not in memory"; lengths are folded likewise unless bit 14 is set.
//!
//! Besides "no panic, no hang", it checks that every frame reaching the tap is a whole
//! frame (a zeroed 12-byte header, an Ethernet header, at most MAX_FRAME_LEN bytes), that
//! every chain popped is counted exactly once as sent or dropped, and that the used index
//! never passes the available one.

#![no_main]

use std::io;

use hearth_devices::virtio::net::{transmit, NetCounters, ETH_HDR_LEN, MAX_FRAME_LEN, NET_HDR_LEN};
use hearth_fuzz::{guest_memory, ready_queue, take, write_queue, QueueLayout};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: u64 = 0x2_0000;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const DATA_AREA: u64 = 0x3000;
/// Folded addresses land in [DATA_AREA, MEM_SIZE + 0x200).
const ADDR_SPAN: u64 = MEM_SIZE + 0x200 - DATA_AREA;
/// Folded lengths: up to a bit more than the largest frame, so both sides of the limit
/// are reached.
#[allow(clippy::cast_possible_truncation)] // 65562
const LEN_SPAN: u32 = MAX_FRAME_LEN as u32 + 0x100;

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some(&[config, ndesc, navail]) = take(&mut data, 3) else {
        return;
    };
    let queue_size = 1u16 << (config & 0x7).min(8); // 1..=256
    let event_idx = config & 0x10 != 0;
    let refuse_some = config & 0x20 != 0;

    let mem = guest_memory(MEM_SIZE);

    let layout = QueueLayout {
        desc_table: DESC_TABLE,
        avail_ring: AVAIL_RING,
        data_area: DATA_AREA,
        data_end: MEM_SIZE,
        addr_span: ADDR_SPAN,
        len_span: Some(LEN_SPAN),
    };
    write_queue(&mem, &mut data, &layout, queue_size, ndesc, navail);

    let mut queue = ready_queue(queue_size, DESC_TABLE, AVAIL_RING, USED_RING, event_idx);
    assert!(queue.is_valid(&mem));

    let mut offered = 0u64;
    let mut accepted = 0u64;
    let mut sink = |frame: &[u8]| -> io::Result<()> {
        assert!(
            frame.len() >= NET_HDR_LEN + ETH_HDR_LEN,
            "runt reached the tap"
        );
        assert!(
            frame.len() <= MAX_FRAME_LEN,
            "oversized frame reached the tap"
        );
        assert!(
            frame[..NET_HDR_LEN].iter().all(|&b| b == 0),
            "header not cleared"
        );
        offered += 1;
        if refuse_some && offered & 1 == 0 {
            return Err(io::Error::from_raw_os_error(libc_einval()));
        }
        accepted += 1;
        Ok(())
    };
    let mut counters = NetCounters::default();
    let mut buf = Vec::new();
    let result = transmit(&mem, &mut queue, &mut sink, &mut buf, &mut counters);

    let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
    assert!(used_idx <= u16::from(navail), "more used than available");
    assert_eq!(counters.tx_frames, accepted, "sent frames miscounted");
    assert!(
        counters.tx_dropped >= offered - accepted,
        "refused frames not counted"
    );
    if result.is_ok() {
        // Every chain popped is returned once (heads past the queue cannot be), and each
        // counts as sent or dropped.
        assert!(
            counters.tx_frames + counters.tx_dropped >= u64::from(used_idx),
            "a returned chain was not counted"
        );
    }
});

/// EINVAL, what a tap says to a frame it will not take.
fn libc_einval() -> i32 {
    22
}
