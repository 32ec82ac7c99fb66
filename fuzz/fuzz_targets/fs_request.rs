//! Feeds arbitrary split-queue contents, and so arbitrary FUSE requests, to the virtio-fs
//! device's request queue, over a small shared directory (a file, a subdirectory, a
//! symlink pointing out of it) exported read-only or read-write.
//!
//! The input lays out, in order: a config byte (queue size, read-only), the descriptor
//! count, the available-index bump, the descriptors (16 bytes each), the available ring
//! heads (2 bytes each), and the bytes of the guest data area where the requests and
//! reply buffers live (see hearth_fuzz::write_queue). Besides "no panic, no hang", it
//! checks that the used index never passes the available one and that nothing outside
//! the shared directory changed.

#![no_main]

use std::sync::{Arc, OnceLock};

use hearth_devices::virtio::fs::{Fs, FsConfig};
use hearth_devices::virtio::{Interrupt, VirtioDevice};
use hearth_fuzz::{take, write_queue, QueueLayout};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use hearth_devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: u64 = 0x4_0000;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
/// The high-priority queue, left empty.
const HIPRIO: u64 = 0x3000;
const DATA_AREA: u64 = 0x4000;
const ADDR_SPAN: u64 = MEM_SIZE + 0x200 - DATA_AREA;

/// The shared directory and a file outside it, made once per process.
fn dirs() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static DIRS: OnceLock<(std::path::PathBuf, std::path::PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("hearth-fuzz-fs-{}", std::process::id()));
        let share = base.join("share");
        let outside = base.join("outside");
        std::fs::create_dir_all(share.join("sub")).expect("share dir");
        std::fs::create_dir_all(&outside).expect("outside dir");
        std::fs::write(share.join("file"), b"hello from the host").expect("file");
        std::fs::write(outside.join("secret"), b"secret").expect("secret");
        let _ = std::os::unix::fs::symlink(outside.join("secret"), share.join("link"));
        (share, outside)
    })
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some(&[config, ndesc, navail]) = take(&mut data, 3) else {
        return;
    };
    let queue_size = 1u16 << (config & 0x7).min(8);
    let read_only = config & 0x10 != 0;
    let (share, outside) = dirs();

    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("guest memory");
    let layout = QueueLayout {
        desc_table: DESC_TABLE,
        avail_ring: AVAIL_RING,
        data_area: DATA_AREA,
        data_end: MEM_SIZE,
        addr_span: ADDR_SPAN,
        len_span: Some(0x2_0000),
    };
    write_queue(&mem, &mut data, &layout, queue_size, ndesc, navail);

    let queue = |desc: u64, avail: u64, used: u64| {
        let mut q = Queue::new(queue_size).expect("queue");
        q.set_size(queue_size);
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        q
    };
    let mut fs = Fs::new(FsConfig {
        path: share.clone(),
        tag: "fuzz".into(),
        read_only,
    })
    .expect("virtio-fs device");
    let interrupt = Arc::new(Interrupt::new(EventFd::new(0).expect("eventfd")));
    fs.common_mut()
        .set_queues(vec![
            queue(HIPRIO, HIPRIO + 0x400, HIPRIO + 0x800),
            queue(DESC_TABLE, AVAIL_RING, USED_RING),
        ])
        .expect("two queues");
    fs.activate(mem.clone(), interrupt).expect("activation");
    fs.process_queue(1);

    let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
    assert!(used_idx <= u16::from(navail), "more used than available");
    assert_eq!(
        std::fs::read(outside.join("secret")).expect("secret"),
        b"secret",
        "a file outside the share changed"
    );
    assert_eq!(
        std::fs::read_dir(outside).expect("outside").count(),
        1,
        "something was created outside the share"
    );
});
