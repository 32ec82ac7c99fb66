//! Feeds arbitrary split-queue contents to the virtio-vsock TX path (packet parsing and
//! the connection state machine behind it), then lets the device answer on an RX queue.
//!
//! The input lays out, in order: a config byte (TX queue size, EVENT_IDX), the TX
//! descriptor count, the available-index bump, the RX buffer count, the TX descriptors
//! (16 bytes each), the available ring heads (2 bytes each), and the bytes of the guest
//! data area where headers and payloads live. Descriptor addresses are folded into (and
//! just past) guest memory unless flag bit 15 asks for the raw value, so that the fuzzer
//! reaches the parser instead of bouncing off "address not in memory". Host listeners
//! exist for ports 1 to 4, so REQUESTs to them open real connections whose later packets
//! exercise credit, shutdown and data forwarding.
//!
//! Besides "no panic, no hang", it checks that no queue's used index passes its available
//! index and that the connection limit holds.

#![no_main]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use hearth_devices::virtio::vsock::{Muxer, MAX_CONNECTIONS};
use hearth_fuzz::{guest_memory, ready_queue, take, write_queue, QueueLayout};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use hearth_devices::GuestMemoryMmap;
use vmm_sys_util::tempdir::TempDir;

const MEM_SIZE: u64 = 0x1_0000;
const TX_DESC: u64 = 0x0;
const TX_AVAIL: u64 = 0x1000;
const TX_USED: u64 = 0x2000;
const RX_DESC: u64 = 0x3000;
const RX_AVAIL: u64 = 0x3800;
const RX_USED: u64 = 0x3c00;
const DATA_AREA: u64 = 0x5000;
/// RX buffers (header and 256 bytes of payload each) at the end of memory.
const RX_BUFS: u64 = 0xc000;
const RX_BUF_LEN: u32 = 44 + 256;
const RX_QUEUE_SIZE: u16 = 16;
const ADDR_SPAN: u64 = MEM_SIZE + 0x200 - DATA_AREA;
const CID: u64 = 3;

struct Host {
    dir: TempDir,
    listeners: Vec<UnixListener>,
}

fn host() -> &'static Mutex<Host> {
    static HOST: OnceLock<Mutex<Host>> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = TempDir::new_with_prefix("/tmp/hearth-fuzz-vsock-").expect("temp dir");
        let listeners = (1..=4)
            .map(|port| {
                let l = UnixListener::bind(dir.as_path().join(format!("v.sock_{port}")))
                    .expect("listener");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        Mutex::new(Host { dir, listeners })
    })
}

fn used_idx(mem: &GuestMemoryMmap, used: u64) -> u16 {
    mem.read_obj(GuestAddress(used + 2)).expect("used idx")
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let Some(&[config, ndesc, navail, nrx]) = take(&mut data, 4) else {
        return;
    };
    let queue_size = 1u16 << (config & 0x7).min(8); // 1..=256
    let event_idx = config & 0x10 != 0;

    let mem = guest_memory(MEM_SIZE);

    let layout = QueueLayout {
        desc_table: TX_DESC,
        avail_ring: TX_AVAIL,
        data_area: DATA_AREA,
        data_end: RX_BUFS,
        addr_span: ADDR_SPAN,
        len_span: None,
    };
    write_queue(&mem, &mut data, &layout, queue_size, ndesc, navail);

    // Well-formed RX buffers, so that answers (RESPONSE, RST, data) are written.
    let nrx = u16::from(nrx) % (RX_QUEUE_SIZE + 1);
    for i in 0..nrx {
        let d = (
            RX_BUFS + u64::from(i) * 0x140,
            RX_BUF_LEN,
            2u16, /* WRITE */
            0u16,
        );
        let at = RX_DESC + 16 * u64::from(i);
        mem.write_obj(d.0.to_le(), GuestAddress(at))
            .expect("rx desc");
        mem.write_obj(d.1.to_le(), GuestAddress(at + 8))
            .expect("rx desc");
        mem.write_obj(d.2.to_le(), GuestAddress(at + 12))
            .expect("rx desc");
        mem.write_obj(i.to_le(), GuestAddress(RX_AVAIL + 4 + 2 * u64::from(i)))
            .expect("rx avail");
    }
    mem.write_obj(nrx.to_le(), GuestAddress(RX_AVAIL + 2))
        .expect("rx avail idx");

    let mut txq = ready_queue(queue_size, TX_DESC, TX_AVAIL, TX_USED, event_idx);
    let mut rxq = ready_queue(RX_QUEUE_SIZE, RX_DESC, RX_AVAIL, RX_USED, false);
    assert!(txq.is_valid(&mem) && rxq.is_valid(&mem));

    let h = host().lock().unwrap_or_else(|e| e.into_inner());
    let sock: PathBuf = h.dir.as_path().join("v.sock");
    let mut muxer = Muxer::bind(CID, &sock).expect("bind");
    // Twice: the second round sees the connections (and owed packets) of the first.
    for _ in 0..2 {
        let _ = muxer.process_tx(&mem, &mut txq);
        let _ = muxer.process_rx(&mem, &mut rxq);
        assert!(muxer.connection_count() <= MAX_CONNECTIONS);
    }
    assert!(
        used_idx(&mem, TX_USED) <= u16::from(navail),
        "TX used past avail"
    );
    assert!(used_idx(&mem, RX_USED) <= nrx, "RX used past avail");
    // Closing sockets the muxer asked the event loop to drop.
    drop(muxer.take_epoll_changes());
    drop(muxer);
    // Connections made to the host listeners: accept and close them, so that their
    // backlogs never fill.
    for l in &h.listeners {
        while l.accept().is_ok() {}
    }
});
