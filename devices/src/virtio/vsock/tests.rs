//! The muxer against mock split queues and real Unix sockets: both connection directions,
//! credit, shutdown, and malformed or hostile input from the guest (which must never
//! panic, and must get RST where a packet names a connection).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::tempdir::TempDir;

use super::muxer::host_port_path;
use super::packet::{op, Header, HEADER_SIZE, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
pub(super) use crate::virtio::test_utils::{add_chain, desc};

const MEM_SIZE: u64 = 0x40_0000;
const RXQ_BASE: u64 = 0x0;
const TXQ_BASE: u64 = 0x4000;
const RX_BUFS: u64 = 0x10_0000;
const RX_BUF_STRIDE: u64 = 0x2000;
const RX_DATA: u32 = 4096;
const TX_BUFS: u64 = 0x30_0000;
const QSIZE: u16 = 256;
const R: u32 = 0;
const W: u32 = VRING_DESC_F_WRITE;
const CID: u64 = 3;
const FIRST: u32 = FIRST_LOCAL_PORT;

struct H {
    _dir: TempDir,
    sock: PathBuf,
    /// Leaked so that the mock queues (which borrow it) can live beside it; a mock queue
    /// cannot be rebuilt on demand, as building one zeroes its rings.
    mem: &'static GuestMemoryMmap,
    rxvq: MockSplitQueue<'static, GuestMemoryMmap>,
    txvq: MockSplitQueue<'static, GuestMemoryMmap>,
    muxer: Muxer,
    rxq: Queue,
    txq: Queue,
    watched: HashMap<RawFd, EventSet>,
    rx_next_desc: u16,
    rx_posted: u16,
    rx_seen: u16,
    tx_next_desc: u16,
    tx_next_addr: u64,
}

impl H {
    fn new() -> H {
        let dir = TempDir::new().unwrap();
        let sock = dir.as_path().join("v.sock");
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
        ));
        let rxvq = MockSplitQueue::create(mem, GuestAddress(RXQ_BASE), QSIZE);
        let txvq = MockSplitQueue::create(mem, GuestAddress(TXQ_BASE), QSIZE);
        let rxq = rxvq.create_queue().unwrap();
        let txq = txvq.create_queue().unwrap();
        let muxer = Muxer::bind(CID, &sock).unwrap();
        H {
            _dir: dir,
            sock,
            mem,
            rxvq,
            txvq,
            muxer,
            rxq,
            txq,
            watched: HashMap::new(),
            rx_next_desc: 0,
            rx_posted: 0,
            rx_seen: 0,
            tx_next_desc: 0,
            tx_next_addr: TX_BUFS,
        }
    }

    /// Applies the muxer's epoll changes, as the event handler does after every event
    /// (closing the sockets it gave up).
    fn apply_changes(&mut self) {
        for change in self.muxer.take_epoll_changes() {
            match change {
                EpollChange::Add(fd, set) => {
                    assert!(self.watched.insert(fd, set).is_none(), "{fd} added twice");
                }
                EpollChange::Modify(fd, set) => {
                    assert!(self.watched.insert(fd, set).is_some(), "{fd} not added");
                }
                EpollChange::Remove(fd, _) => {
                    assert!(self.watched.remove(&fd).is_some(), "{fd} was not watched");
                }
                EpollChange::Close(stream) => {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
                    assert!(!self.watched.contains_key(&fd), "{fd} closed but watched");
                }
            }
        }
    }

    /// A small event loop: applies the muxer's epoll changes and delivers what poll(2)
    /// reports, until nothing happens.
    fn pump(&mut self) {
        for _ in 0..100 {
            self.apply_changes();
            let mut fds: Vec<libc::pollfd> = vec![libc::pollfd {
                fd: self.muxer.listener_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            for (&fd, set) in &self.watched {
                let mut events = 0;
                if set.contains(EventSet::IN) {
                    events |= libc::POLLIN;
                }
                if set.contains(EventSet::OUT) {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
            }
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
            if n == 0 {
                return;
            }
            for (i, p) in fds.iter().enumerate() {
                if p.revents == 0 {
                    continue;
                }
                if i == 0 {
                    self.muxer.accept();
                    continue;
                }
                let mut set = EventSet::empty();
                if p.revents & libc::POLLIN != 0 {
                    set |= EventSet::IN;
                }
                if p.revents & libc::POLLOUT != 0 {
                    set |= EventSet::OUT;
                }
                if p.revents & libc::POLLHUP != 0 {
                    set |= EventSet::HANG_UP;
                }
                if p.revents & libc::POLLERR != 0 {
                    set |= EventSet::ERROR;
                }
                self.muxer.on_stream_event(p.fd, set);
            }
        }
        panic!("the muxer keeps getting events: a busy loop");
    }

    /// Posts `n` RX buffers: a header descriptor and a 4 KiB data descriptor each.
    fn post_rx(&mut self, n: u16) {
        for _ in 0..n {
            let slot = u64::from(self.rx_posted % 64);
            let addr = RX_BUFS + slot * RX_BUF_STRIDE;
            self.post_rx_chain(&[
                desc(addr, HEADER_SIZE as u32, W),
                desc(addr + 0x100, RX_DATA, W),
            ]);
        }
    }

    fn post_rx_chain(&mut self, descs: &[RawDescriptor]) {
        add_chain(&self.rxvq, self.rx_next_desc, descs);
        self.rx_next_desc = (self.rx_next_desc + descs.len() as u16) % (QSIZE - 8);
        self.rx_posted += 1;
    }

    /// Packets written to RX buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.muxer.process_rx(self.mem, &mut self.rxq).unwrap();
        self.apply_changes();
        let vq = &self.rxvq;
        let used = vq.used().idx().load();
        let mut out = Vec::new();
        while self.rx_seen != used {
            let elem = vq
                .used()
                .ring()
                .ref_at(self.rx_seen as usize)
                .unwrap()
                .load();
            self.rx_seen += 1;
            if elem.len() == 0 {
                out.push((Header::default(), Vec::new()));
                continue;
            }
            // Find the buffer from its head descriptor.
            let head = vq.desc_table().load(elem.id() as u16).unwrap();
            let head = virtio_queue::desc::split::Descriptor::from(head);
            let mut raw = [0u8; HEADER_SIZE];
            self.mem.read_slice(&mut raw, head.addr()).unwrap();
            let h = Header::from_bytes(&raw);
            assert_eq!(elem.len(), HEADER_SIZE as u32 + h.len, "used length");
            let mut data = vec![0u8; h.len as usize];
            self.mem
                .read_slice(&mut data, head.addr().unchecked_add(0x100))
                .unwrap();
            out.push((h, data));
        }
        out
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.tx_next_addr;
        self.tx_next_addr += (len as u64 + 0xff) & !0xff;
        if self.tx_next_addr > MEM_SIZE - 0x1_0000 {
            self.tx_next_addr = TX_BUFS;
        }
        addr
    }

    /// Queues a chain on TX and processes the queue.
    fn tx_chain(&mut self, descs: &[RawDescriptor]) {
        add_chain(&self.txvq, self.tx_next_desc, descs);
        self.tx_next_desc = (self.tx_next_desc + descs.len() as u16) % (QSIZE - 8);
        self.muxer.process_tx(self.mem, &mut self.txq).unwrap();
        self.apply_changes();
    }

    /// Sends a well-formed packet from the guest (header and payload in two descriptors).
    fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        let hdr_addr = self.alloc(HEADER_SIZE);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(hdr_addr))
            .unwrap();
        if payload.is_empty() {
            self.tx_chain(&[desc(hdr_addr, HEADER_SIZE as u32, R)]);
        } else {
            let data = self.alloc(payload.len());
            self.mem.write_slice(payload, GuestAddress(data)).unwrap();
            self.tx_chain(&[
                desc(hdr_addr, HEADER_SIZE as u32, R),
                desc(data, payload.len() as u32, R),
            ]);
        }
    }

    /// Writes `h` at a fresh address, returns it.
    fn header_at(&mut self, h: Header) -> u64 {
        let addr = self.alloc(HEADER_SIZE);
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(addr))
            .unwrap();
        addr
    }
}

/// A guest packet from guest port `src` to host port `dst`.
fn g(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 4096,
        ..Header::default()
    }
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn assert_eof(s: &mut UnixStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        // Closed with unread data in its queue.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected end of file, got {other:?}"),
    }
}

fn ops(pkts: &[(Header, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|(h, _)| h.op).collect()
}

/// Host connects, asks for guest port 5000; returns the host end after the guest's
/// RESPONSE with `OK <port>` read.
fn host_connect(h: &mut H, guest_buf_alloc: u32) -> UnixStream {
    let mut host = UnixStream::connect(&h.sock).unwrap();
    host.write_all(b"CONNECT 5000\n").unwrap();
    h.pump();
    h.post_rx(1);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 1, "{pkts:?}");
    let req = pkts[0].0;
    assert_eq!(req.op, op::REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    assert_eq!((req.src_port, req.dst_port), (FIRST, 5000));
    assert_eq!((req.buf_alloc, req.fwd_cnt), (CONN_BUF_SIZE, 0));
    let mut resp = g(op::RESPONSE, 5000, FIRST);
    resp.buf_alloc = guest_buf_alloc;
    h.send(resp, &[]);
    assert_eq!(
        read_exactly(&mut host, 14),
        format!("OK {FIRST}\n").as_bytes()
    );
    host
}

#[test]
fn host_initiated_stream_with_credit_and_shutdown() {
    let mut h = H::new();
    let mut host = host_connect(&mut h, 4096);
    assert_eq!(
        h.muxer.connection_state(FIRST, 5000),
        Some(connection::State::Established)
    );

    // Guest to host.
    let mut pong = g(op::RW, 5000, FIRST);
    pong.buf_alloc = 4096;
    h.send(pong, b"pong");
    assert_eq!(read_exactly(&mut host, 4), b"pong");

    // Host to guest: 10000 bytes, but the guest has room for 4096.
    let blob: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    host.write_all(&blob).unwrap();
    h.pump();
    h.post_rx(8);
    let pkts = h.recv();
    let data: Vec<u8> = pkts
        .iter()
        .filter(|(h, _)| h.op == op::RW)
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert_eq!(
        data.len(),
        4096,
        "exactly the guest's credit: {:?}",
        ops(&pkts)
    );
    assert_eq!(pkts.last().unwrap().0.op, op::CREDIT_REQUEST);
    // Asking again while the guest's credit has not moved would ping-pong.
    h.pump();
    assert!(h.recv().is_empty());

    // The guest consumed it all: the rest flows.
    let mut got = data;
    let mut fwd = 4096u32;
    for _ in 0..10 {
        let mut upd = g(op::CREDIT_UPDATE, 5000, FIRST);
        upd.fwd_cnt = fwd;
        h.send(upd, &[]);
        h.pump();
        h.post_rx(4);
        for (p, d) in h.recv() {
            assert_eq!(p.buf_alloc, CONN_BUF_SIZE);
            if p.op == op::RW {
                got.extend_from_slice(&d);
                fwd += p.len;
            }
        }
        if got.len() == blob.len() {
            break;
        }
    }
    assert!(got == blob, "host data arrived in order");
    let mut upd = g(op::CREDIT_UPDATE, 5000, FIRST);
    upd.fwd_cnt = fwd;
    h.send(upd, &[]);

    // CREDIT_REQUEST from the guest gets a CREDIT_UPDATE with our fwd_cnt (4 bytes).
    // (Every guest packet carries the guest's credit: keep it honest.)
    let g = |o, src, dst| Header {
        fwd_cnt: fwd,
        ..g(o, src, dst)
    };
    h.send(g(op::CREDIT_REQUEST, 5000, FIRST), &[]);
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::CREDIT_UPDATE]);
    assert_eq!(pkts[0].0.fwd_cnt, 4);

    // The host stops writing: the guest hears SHUTDOWN(SEND).
    host.shutdown(std::net::Shutdown::Write).unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::SHUTDOWN]);
    assert_eq!(pkts[0].0.flags, SHUTDOWN_SEND);

    // The guest can still send; then it closes: RST, host sees end of file.
    h.send(g(op::RW, 5000, FIRST), b"bye");
    assert_eq!(read_exactly(&mut host, 3), b"bye");
    let mut shut = g(op::SHUTDOWN, 5000, FIRST);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    h.send(shut, &[]);
    assert_eq!(ops(&h.recv()), vec![op::RST]);
    assert_eof(&mut host);
    assert_eq!(h.muxer.connection_count(), 0);
    h.pump();
    assert!(
        h.watched.is_empty(),
        "nothing left watched: {:?}",
        h.watched
    );
}

#[test]
fn data_the_host_sent_before_ok_waits_for_the_guest() {
    let mut h = H::new();
    let mut host = UnixStream::connect(&h.sock).unwrap();
    host.write_all(b"CONNECT 77\nearly bytes").unwrap();
    h.pump();
    h.post_rx(4);
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::REQUEST]);
    assert_eq!(pkts[0].0.dst_port, 77);
    h.send(g(op::RESPONSE, 77, FIRST), &[]);
    assert_eq!(
        read_exactly(&mut host, 14),
        format!("OK {FIRST}\n").as_bytes()
    );
    h.pump();
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::RW]);
    assert_eq!(pkts[0].1, b"early bytes");
}

#[test]
fn guest_refusing_a_host_connection_closes_it() {
    let mut h = H::new();
    let mut host = UnixStream::connect(&h.sock).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    h.pump();
    h.post_rx(1);
    assert_eq!(ops(&h.recv()), vec![op::REQUEST]);
    h.send(g(op::RST, 9, FIRST), &[]);
    assert_eof(&mut host);
    assert_eq!(h.muxer.connection_count(), 0);
    assert!(h.recv().is_empty(), "no answer to a reset");
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut h = H::new();
    for line in [
        &b"CONNECT\n"[..],
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        b"connect 5\n",
        b"CONNECT -1\n",
        &[b'A'; 100],
    ] {
        let mut host = UnixStream::connect(&h.sock).unwrap();
        // The long line is cut off after 32 bytes: the rest may meet a closed socket.
        let _ = host.write_all(line);
        h.pump();
        assert_eof(&mut host);
    }
    // A host that connects and hangs up without a line.
    drop(UnixStream::connect(&h.sock).unwrap());
    h.pump();
    assert_eq!(h.muxer.connection_count(), 0);
    assert!(h.watched.is_empty());
    assert!(!h.muxer.has_rx());
}

#[test]
fn host_ports_are_distinct_per_connection() {
    let mut h = H::new();
    let mut hosts = Vec::new();
    for _ in 0..3 {
        let mut s = UnixStream::connect(&h.sock).unwrap();
        s.write_all(b"CONNECT 5000\n").unwrap();
        hosts.push(s);
    }
    h.pump();
    h.post_rx(3);
    let mut ports: Vec<u32> = h.recv().iter().map(|(p, _)| p.src_port).collect();
    ports.sort();
    assert_eq!(ports, vec![FIRST, FIRST + 1, FIRST + 2]);
}

#[test]
fn guest_initiated_stream_and_refusal() {
    let mut h = H::new();
    let listener = UnixListener::bind(host_port_path(&h.sock, 6000)).unwrap();

    h.post_rx(4);
    h.send(g(op::REQUEST, 1234, 6000), &[]);
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::RESPONSE]);
    let r = pkts[0].0;
    assert_eq!(
        (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
        (2, CID, 6000, 1234)
    );
    let (mut host, _) = listener.accept().unwrap();

    h.send(g(op::RW, 1234, 6000), b"hello-marker");
    assert_eq!(read_exactly(&mut host, 12), b"hello-marker");
    host.write_all(b"reply").unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::RW]);
    assert_eq!(pkts[0].1, b"reply");

    // The guest is done sending: the host reads end of file, can still write.
    let mut shut = g(op::SHUTDOWN, 1234, 6000);
    shut.flags = SHUTDOWN_SEND;
    h.send(shut, &[]);
    assert_eof(&mut host);
    host.write_all(b"more").unwrap();
    h.pump();
    let pkts = h.recv();
    assert_eq!(pkts[0].1, b"more");

    // No listener on 6001, a directory at 6002: RST.
    h.post_rx(8);
    std::fs::create_dir(host_port_path(&h.sock, 6002)).unwrap();
    h.send(g(op::REQUEST, 1, 6001), &[]);
    h.send(g(op::REQUEST, 2, 6002), &[]);
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::RST, op::RST]);
    assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (6001, 1));

    // The host closes: SHUTDOWN to the guest; its data then fails (EPIPE) and is reset.
    drop(host);
    h.pump();
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::SHUTDOWN]);
    h.send(g(op::RW, 1234, 6000), b"too late");
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::RST]);
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn a_duplicate_request_resets_the_connection() {
    let mut h = H::new();
    let _l = UnixListener::bind(host_port_path(&h.sock, 6000)).unwrap();
    h.post_rx(4);
    h.send(g(op::REQUEST, 1234, 6000), &[]);
    assert_eq!(ops(&h.recv()), vec![op::RESPONSE]);
    h.send(g(op::REQUEST, 1234, 6000), &[]);
    assert_eq!(ops(&h.recv()), vec![op::RST]);
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn a_guest_overrunning_its_credit_is_reset_not_buffered() {
    let mut h = H::new();
    let _l = UnixListener::bind(host_port_path(&h.sock, 6000)).unwrap();
    h.post_rx(4);
    h.send(g(op::REQUEST, 1, 6000), &[]);
    assert_eq!(ops(&h.recv()), vec![op::RESPONSE]);
    // The host never reads: the socket takes some, the connection buffers up to our
    // buf_alloc, and the next byte past that breaks the contract.
    let chunk = vec![0x5au8; 32 * 1024];
    let mut sent = 0usize;
    let mut reset = false;
    for _ in 0..256 {
        h.send(g(op::RW, 1, 6000), &chunk);
        sent += chunk.len();
        h.post_rx(1);
        let pkts = h.recv();
        if ops(&pkts).contains(&op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "no reset after {sent} bytes");
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn credit_updates_follow_forwarded_data() {
    let mut h = H::new();
    let listener = UnixListener::bind(host_port_path(&h.sock, 6000)).unwrap();
    h.post_rx(4);
    h.send(g(op::REQUEST, 1, 6000), &[]);
    assert_eq!(ops(&h.recv()), vec![op::RESPONSE]);
    let (mut host, _) = listener.accept().unwrap();
    // Half the buffer forwarded: the guest hears how far we got without asking.
    let chunk = vec![1u8; (CREDIT_UPDATE_THRESHOLD / 2) as usize];
    h.send(g(op::RW, 1, 6000), &chunk);
    assert!(h.recv().is_empty(), "below the threshold");
    h.send(g(op::RW, 1, 6000), &chunk);
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::CREDIT_UPDATE]);
    assert_eq!(pkts[0].0.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
    assert_eq!(
        read_exactly(&mut host, CREDIT_UPDATE_THRESHOLD as usize).len(),
        CREDIT_UPDATE_THRESHOLD as usize
    );
}

#[test]
fn packets_for_unknown_connections_get_rst() {
    let mut h = H::new();
    h.post_rx(16);
    for o in [
        op::RESPONSE,
        op::SHUTDOWN,
        op::CREDIT_UPDATE,
        op::CREDIT_REQUEST,
        99,
    ] {
        h.send(g(o, 40, 41), &[]);
    }
    h.send(g(op::RW, 40, 41), b"data");
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::RST; 6]);
    for (p, _) in &pkts {
        assert_eq!(
            (p.src_cid, p.dst_cid, p.src_port, p.dst_port),
            (2, CID, 41, 40)
        );
    }
    // A reset for an unknown connection is not answered.
    h.send(g(op::RST, 40, 41), &[]);
    assert!(h.recv().is_empty());
}

#[test]
fn unknown_types_ops_and_addresses_get_rst_spoofed_cids_nothing() {
    let mut h = H::new();
    let _l = UnixListener::bind(host_port_path(&h.sock, 6000)).unwrap();
    h.post_rx(16);
    // SEQPACKET (type 2) is not offered.
    let mut seq = g(op::REQUEST, 5, 6000);
    seq.type_ = 2;
    h.send(seq, &[]);
    // Another destination than the host.
    let mut other = g(op::REQUEST, 6, 6000);
    other.dst_cid = 7;
    h.send(other, &[]);
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::RST, op::RST]);
    assert_eq!(h.muxer.connection_count(), 0);

    // Claiming another CID: silently dropped.
    let mut spoof = g(op::REQUEST, 8, 6000);
    spoof.src_cid = 4;
    h.send(spoof, &[]);
    assert!(h.recv().is_empty());
    assert_eq!(h.muxer.connection_count(), 0);

    // An unknown op on a live connection resets it.
    h.send(g(op::REQUEST, 9, 6000), &[]);
    assert_eq!(ops(&h.recv()), vec![op::RESPONSE]);
    h.send(g(42, 9, 6000), &[]);
    assert_eq!(ops(&h.recv()), vec![op::RST]);
    assert_eq!(h.muxer.connection_count(), 0);
}

#[test]
fn malformed_tx_chains_never_panic_and_reset_what_they_name() {
    let mut h = H::new();
    let _l = UnixListener::bind(host_port_path(&h.sock, 6000)).unwrap();
    h.post_rx(64);
    h.send(g(op::REQUEST, 1, 6000), &[]);
    assert_eq!(ops(&h.recv()), vec![op::RESPONSE]);

    // Short header: nothing can be read, nothing answered.
    let a = h.header_at(g(op::RW, 1, 6000));
    h.tx_chain(&[desc(a, 20, R)]);
    // Header in a device-writable buffer.
    h.tx_chain(&[desc(a, HEADER_SIZE as u32, W)]);
    // Header outside guest memory, or wrapping the address space.
    h.tx_chain(&[desc(MEM_SIZE - 10, HEADER_SIZE as u32, R)]);
    h.tx_chain(&[desc(u64::MAX - 3, HEADER_SIZE as u32, R)]);
    h.tx_chain(&[desc(MEM_SIZE, HEADER_SIZE as u32, R)]);
    assert!(h.recv().is_empty());
    assert_eq!(h.muxer.connection_count(), 1, "nothing named it");

    // The header is fine, the payload is not: the connection it names is reset.
    let bad_payloads: Vec<Vec<RawDescriptor>> = vec![
        // len larger than the data buffer
        {
            let mut x = g(op::RW, 1, 6000);
            x.len = 100;
            let a = h.header_at(x);
            vec![desc(a, HEADER_SIZE as u32, R), desc(a + 0x1000, 50, R)]
        },
        // len with no data descriptor at all
        {
            let mut x = g(op::RW, 2, 6000);
            x.len = 10;
            vec![desc(h.header_at(x), HEADER_SIZE as u32, R)]
        },
        // data descriptor device-writable
        {
            let mut x = g(op::RW, 3, 6000);
            x.len = 8;
            let a = h.header_at(x);
            vec![desc(a, HEADER_SIZE as u32, R), desc(a + 0x1000, 8, W)]
        },
        // data outside guest memory
        {
            let mut x = g(op::RW, 4, 6000);
            x.len = 64;
            let a = h.header_at(x);
            vec![desc(a, HEADER_SIZE as u32, R), desc(MEM_SIZE - 32, 64, R)]
        },
        // len over the 64 KiB packet limit
        {
            let mut x = g(op::RW, 5, 6000);
            x.len = MAX_PKT_DATA + 1;
            let a = h.header_at(x);
            vec![desc(a, HEADER_SIZE as u32, R), desc(a, MAX_PKT_DATA + 1, R)]
        },
    ];
    for chain in &bad_payloads {
        h.tx_chain(chain);
    }
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::RST; 5]);
    let mut dst: Vec<u32> = pkts.iter().map(|(p, _)| p.dst_port).collect();
    dst.sort();
    assert_eq!(dst, vec![1, 2, 3, 4, 5]);
    assert_eq!(h.muxer.connection_count(), 0, "the live one was reset");

    // A single-descriptor packet (header and payload together, Linux 6.2 on) is fine.
    let l2 = UnixListener::bind(host_port_path(&h.sock, 6001)).unwrap();
    h.send(g(op::REQUEST, 10, 6001), &[]);
    assert_eq!(ops(&h.recv()), vec![op::RESPONSE]);
    let (mut host, _) = l2.accept().unwrap();
    let mut x = g(op::RW, 10, 6001);
    x.len = 5;
    let a = h.header_at(x);
    h.mem.write_slice(b"fused", GuestAddress(a + 44)).unwrap();
    h.tx_chain(&[desc(a, HEADER_SIZE as u32 + 5, R)]);
    assert_eq!(read_exactly(&mut host, 5), b"fused");
    assert!(h.recv().is_empty());
}

#[test]
fn malformed_rx_buffers_are_returned_and_the_packet_waits() {
    let mut h = H::new();
    // A device-readable buffer, one too short for a header, one outside memory, one
    // with a header but no room for data; then a good one.
    h.post_rx_chain(&[desc(RX_BUFS, 44, R), desc(RX_BUFS + 0x100, 4096, R)]);
    h.post_rx_chain(&[desc(RX_BUFS, 20, W)]);
    h.post_rx_chain(&[desc(MEM_SIZE - 8, 44, W), desc(RX_BUFS, 4096, W)]);
    h.post_rx_chain(&[desc(RX_BUFS, 44, W)]);
    h.send(g(op::RW, 1, 2), b"x");
    h.post_rx(1);
    let pkts = h.recv();
    assert_eq!(pkts.len(), 5);
    assert_eq!(ops(&pkts[..4]), vec![0; 4], "returned with length 0");
    assert_eq!(pkts[4].0.op, op::RST);
}

#[test]
fn resets_owed_to_a_guest_that_takes_none_hold_tx_back() {
    let mut h = H::new();
    // No RX buffers: each bad packet owes a reset.
    for i in 0..(MAX_STRAY_RST as u32 + 20) {
        let a = h.header_at(g(op::RW, i, 1));
        add_chain(&h.txvq, h.tx_next_desc, &[desc(a, HEADER_SIZE as u32, R)]);
        h.tx_next_desc = (h.tx_next_desc + 1) % (QSIZE - 8);
    }
    h.muxer.process_tx(h.mem, &mut h.txq).unwrap();
    assert!(h.muxer.tx_blocked());
    assert_eq!(
        h.txvq.used().idx().load(),
        MAX_STRAY_RST as u16,
        "the rest waits"
    );
    // The guest takes them: TX resumes.
    h.post_rx(64);
    assert_eq!(h.recv().len(), 64);
    h.muxer.process_tx(h.mem, &mut h.txq).unwrap();
    assert_eq!(h.txvq.used().idx().load(), MAX_STRAY_RST as u16 + 20);
}

#[test]
fn a_bogus_available_index_is_an_error_not_a_hang() {
    let mut h = H::new();
    h.txvq.avail().idx().store(QSIZE + 1);
    assert!(h.muxer.process_tx(h.mem, &mut h.txq).is_err());
    // RX, with a reset owed so that it is looked at.
    let mut h = H::new();
    h.send(g(op::RW, 1, 2), b"");
    h.rxvq.avail().idx().store(QSIZE + 1);
    assert!(h.muxer.process_rx(h.mem, &mut h.rxq).is_err());
}

#[test]
fn reset_drops_known_connections_but_keeps_undelivered_requests() {
    let mut h = H::new();
    let mut early = UnixStream::connect(&h.sock).unwrap();
    early.write_all(b"CONNECT 1\n").unwrap();
    let l = UnixListener::bind(host_port_path(&h.sock, 6000)).unwrap();
    h.pump();
    // A guest connection exists; the host request has not reached the guest.
    h.send(g(op::REQUEST, 1, 6000), &[]);
    let (mut from_guest, _) = l.accept().unwrap();
    assert_eq!(h.muxer.connection_count(), 2);
    h.muxer.reset();
    h.pump();
    assert_eof(&mut from_guest);
    assert_eq!(h.muxer.connection_count(), 1);
    // The new driver gets the request.
    h.post_rx(4);
    let pkts = h.recv();
    assert_eq!(ops(&pkts), vec![op::REQUEST]);
    assert_eq!(pkts[0].0.dst_port, 1);
    early.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    assert!(early.read(&mut b).is_err(), "still open, nothing to read");
}
