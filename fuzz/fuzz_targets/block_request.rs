//! Feeds arbitrary split-queue contents to the virtio-blk request engine.
//!
//! The input lays out, in order: a config byte (queue size, read-only disk, EVENT_IDX), the
//! descriptor count, the available-index bump, the descriptors (16 bytes each, written to
//! the descriptor table), the available ring heads (2 bytes each), and the bytes of the
//! guest data area where headers and buffers live. Descriptor addresses are folded into
//! (and just past) guest memory unless flag bit 15 asks for the raw value, so that the
//! fuzzer reaches the parser instead of bouncing off "address not in memory".
//!
//! Besides "no panic, no hang", it checks that the disk file never grows and that the
//! partial sector at its end (not exposed to the guest) is never written.

#![no_main]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};

use hearth_devices::virtio::block::{process_queue, BlockConfig, Disk};
use hearth_fuzz::{guest_memory, ready_queue, take, write_queue, QueueLayout};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

const MEM_SIZE: u64 = 0x1_0000;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const DATA_AREA: u64 = 0x3000;
/// Folded addresses land in [DATA_AREA, MEM_SIZE + 0x200): mostly inside, sometimes
/// straddling or past the end of guest memory.
const ADDR_SPAN: u64 = MEM_SIZE + 0x200 - DATA_AREA;
/// Eight sectors and a 100-byte tail the guest must never see.
const SECTORS: usize = 8;
const TAIL: usize = 100;
const FILE_LEN: usize = SECTORS * 512 + TAIL;

struct Target {
    _file: TempFile,
    reader: File,
    rw: Disk,
    ro: Disk,
}

fn target() -> &'static Mutex<Target> {
    static TARGET: OnceLock<Mutex<Target>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let file = TempFile::new().expect("temp file");
        let bytes: Vec<u8> = (0..FILE_LEN).map(pattern).collect();
        file.as_file().write_all(&bytes).expect("fill disk");
        let config = |read_only| BlockConfig {
            path: file.as_path().to_path_buf(),
            read_only,
            id: None,
        };
        let rw = Disk::open(&config(false)).expect("open rw");
        let ro = Disk::open(&config(true)).expect("open ro");
        assert_eq!(rw.capacity(), SECTORS as u64);
        let reader = File::open(file.as_path()).expect("reopen");
        Mutex::new(Target {
            _file: file,
            reader,
            rw,
            ro,
        })
    })
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some(&[config, ndesc, navail]) = take(&mut data, 3) else {
        return;
    };
    let queue_size = 1u16 << (config & 0x7).min(8); // 1..=256
    let read_only = config & 0x8 != 0;
    let event_idx = config & 0x10 != 0;

    let mem = guest_memory(MEM_SIZE);

    let layout = QueueLayout {
        desc_table: DESC_TABLE,
        avail_ring: AVAIL_RING,
        data_area: DATA_AREA,
        data_end: MEM_SIZE,
        addr_span: ADDR_SPAN,
        len_span: None,
    };
    write_queue(&mem, &mut data, &layout, queue_size, ndesc, navail);

    let mut queue = ready_queue(queue_size, DESC_TABLE, AVAIL_RING, USED_RING, event_idx);
    assert!(queue.is_valid(&mem));

    let mut t = target().lock().unwrap_or_else(|e| e.into_inner());
    let disk = if read_only { &mut t.ro } else { &mut t.rw };
    let _ = process_queue(disk, &mem, &mut queue);

    let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
    assert!(used_idx <= u16::from(navail), "more used than available");

    // The file keeps its size and its hidden tail.
    let len = t.reader.metadata().expect("metadata").len();
    assert_eq!(len, FILE_LEN as u64, "the disk file changed size");
    let mut tail = [0u8; TAIL];
    t.reader
        .read_exact_at(&mut tail, (SECTORS * 512) as u64)
        .expect("read tail");
    for (i, b) in tail.iter().enumerate() {
        assert_eq!(*b, pattern(SECTORS * 512 + i), "tail written");
    }
});

/// What byte `i` of the disk file holds.
fn pattern(i: usize) -> u8 {
    u8::try_from(i % 251).expect("below 251")
}
