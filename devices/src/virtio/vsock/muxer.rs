//! The host side of virtio-vsock: the listening Unix socket, the connections, and the two
//! queue loops (TX: packets from the guest; RX: packets for it).
//!
//! The muxer owns every socket but never touches epoll itself: it records what each
//! socket should be watched for as [`EpollChange`]s, which the event handler applies (and
//! tests simply drop). That keeps all of this testable with plain socket pairs and mock
//! queues, and lets a reset coming from a vCPU thread close connections safely: a closed
//! socket stays open inside its `Remove` change until the event loop has unregistered it,
//! so its fd number cannot be reused meanwhile.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;
use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, State, Verdict};
use super::device::VsockError;
use super::packet::{self, op, Header, HEADER_SIZE, TYPE_STREAM};
use super::{
    FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_PKT_DATA, MAX_STRAY_RST,
};

/// The header length as a used length.
#[allow(clippy::cast_possible_truncation)] // 44
const HEADER_LEN: u32 = HEADER_SIZE as u32;
/// A change to what the event loop watches.
#[derive(Debug)]
pub enum EpollChange {
    /// Start watching `fd` for these events.
    Add(RawFd, EventSet),
    /// Watch `fd` for these events instead.
    Modify(RawFd, EventSet),
    /// Stop watching `fd`; then drop the socket, when given (closing it).
    Remove(RawFd, Option<UnixStream>),
    /// Drop (close) a socket that is not watched, once the changes before this one are
    /// applied: one of them may still name its fd.
    Close(UnixStream),
}

/// The driver broke a queue itself: it stays stuck until the driver resets the device.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// virtio-queue refused the ring (an available index too far ahead, ...).
    #[error("the virtio queue is unusable: {0}")]
    Queue(#[source] virtio_queue::Error),
}

/// Identifies a connection: (host-side port, guest-side port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ConnKey {
    local_port: u32,
    peer_port: u32,
}

/// A host process that connected to the listening socket and has not finished its
/// `CONNECT <port>\n` line.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What a vsock device counted (Firecracker's `vsock` metrics): packets and payload
/// bytes each way, connections made and ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockCounters {
    /// Packets given to the guest (its RX queue).
    pub rx_packets_count: u64,
    /// Payload bytes given to the guest.
    pub rx_bytes_count: u64,
    /// Packets taken from the guest (its TX queue), malformed ones included.
    pub tx_packets_count: u64,
    /// Payload bytes taken from the guest.
    pub tx_bytes_count: u64,
    /// Connections made, from either side.
    pub conns_added: u64,
    /// Connections ended.
    pub conns_removed: u64,
}

/// The vsock backend: Unix sockets on one side, the guest's queues on the other.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    listener: UnixListener,
    /// Device and inode of the socket file, so that only our own file is removed on drop.
    socket_id: (u64, u64),
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with something for the guest, in turn.
    rx_ready: VecDeque<ConnKey>,
    /// Resets for packets that belong to no connection.
    stray_rst: VecDeque<Header>,
    /// What each socket is watched for now.
    watched: HashMap<RawFd, EventSet>,
    epoll_changes: Vec<EpollChange>,
    next_local_port: u32,
    /// Reused for copying payload out of guest memory.
    scratch: Vec<u8>,
    counters: VsockCounters,
}

impl Muxer {
    /// The host-side port the next host connection gets.
    pub fn next_local_port(&self) -> u32 {
        self.next_local_port
    }

    /// Carries on handing out host-side ports from `port` (a restored device's counter).
    pub fn set_next_local_port(&mut self, port: u32) {
        if port >= FIRST_LOCAL_PORT {
            self.next_local_port = port;
        }
    }

    /// Listens on `path` for host connections to guest `guest_cid`. A stale socket there
    /// (nobody listening) is replaced; a live one or any other file is refused.
    pub fn bind(guest_cid: u64, path: &Path) -> Result<Muxer, VsockError> {
        crate::stale_socket::remove_stale_socket(path);
        if path.symlink_metadata().is_ok() {
            return Err(VsockError::SocketExists {
                path: path.to_path_buf(),
            });
        }
        let bind_err = |source| VsockError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let meta = path.symlink_metadata().map_err(|e| {
            // Not ours to keep: nothing will listen there.
            let _ = std::fs::remove_file(path);
            bind_err(e)
        })?;
        let muxer = Muxer {
            guest_cid,
            path: path.to_path_buf(),
            listener,
            socket_id: (meta.dev(), meta.ino()),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            rx_ready: VecDeque::new(),
            stray_rst: VecDeque::new(),
            watched: HashMap::new(),
            epoll_changes: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
            scratch: Vec::new(),
            counters: VsockCounters::default(),
        };
        // Dropping `muxer` from here on removes the file again.
        muxer.listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(muxer)
    }

    /// What the device counted so far.
    pub fn counters(&self) -> VsockCounters {
        self.counters
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The listening socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket, for the event loop to watch (always, for readability).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Open connections (not counting host connections still sending `CONNECT`).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// What the event loop must change; the muxer forgets them.
    pub fn take_epoll_changes(&mut self) -> Vec<EpollChange> {
        std::mem::take(&mut self.epoll_changes)
    }

    /// Whether the guest has packets waiting for RX buffers.
    pub fn has_rx(&self) -> bool {
        !self.stray_rst.is_empty() || !self.rx_ready.is_empty()
    }

    /// Whether the TX queue is held back until the guest takes the waiting resets.
    pub fn tx_blocked(&self) -> bool {
        self.stray_rst.len() >= MAX_STRAY_RST
    }

    fn set_interest(&mut self, fd: RawFd, set: EventSet) {
        // An empty set is removed rather than kept: epoll reports hang-ups whatever the
        // set, and a socket nobody wants to hear from would spin the loop.
        match (self.watched.get(&fd).copied(), set.is_empty()) {
            (None, true) => {}
            (None, false) => {
                self.watched.insert(fd, set);
                self.epoll_changes.push(EpollChange::Add(fd, set));
            }
            (Some(_), true) => {
                self.watched.remove(&fd);
                self.epoll_changes.push(EpollChange::Remove(fd, None));
            }
            (Some(old), false) if old != set => {
                self.watched.insert(fd, set);
                self.epoll_changes.push(EpollChange::Modify(fd, set));
            }
            (Some(_), false) => {}
        }
    }

    /// Closes a socket. Never at once: an Add or Modify for its fd may still wait in
    /// `epoll_changes`, and must not meet a closed (or reused) fd number.
    fn close_stream(&mut self, stream: UnixStream) {
        let fd = stream.as_raw_fd();
        let change = if self.watched.remove(&fd).is_some() {
            EpollChange::Remove(fd, Some(stream))
        } else {
            EpollChange::Close(stream)
        };
        self.epoll_changes.push(change);
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.counters.conns_removed += 1;
            self.by_fd.remove(&conn.stream.as_raw_fd());
            self.close_stream(conn.stream);
        }
    }

    /// Brings the connection's epoll interest and RX turn up to date.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.update_credit_request();
        let fd = conn.stream.as_raw_fd();
        let interest = conn.interest();
        if conn.wants_rx() && !conn.queued {
            conn.queued = true;
            self.rx_ready.push_back(key);
        }
        self.set_interest(fd, interest);
    }

    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {}
            Verdict::Kill => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.kill();
                }
            }
            Verdict::Remove => {
                self.remove_conn(key);
                return;
            }
        }
        self.refresh(key);
    }

    fn open_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Accepts every host connection waiting on the listening socket.
    pub fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: all taken. Anything else (EMFILE, ...) is retried on the next
                // readiness of the listener.
                Err(_) => return,
            };
            // Over the limit, the host process sees its connection closed at once.
            if self.open_count() >= MAX_CONNECTIONS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
            self.set_interest(fd, EventSet::IN);
        }
    }

    /// A socket the muxer owns is ready for `events`.
    pub fn on_stream_event(&mut self, fd: RawFd, events: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.read_connect_line(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                let verdict = conn.on_host_event(events);
                self.apply(key, verdict);
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so that nothing after it (the
    /// stream's first data) is taken from the socket before the guest accepts.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match hs.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(1) if hs.line.len() < MAX_CONNECT_LINE => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // End of file, an error, or a line too long.
                _ => break None,
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        match (port, self.alloc_local_port()) {
            (Some(peer_port), Some(local_port)) => {
                let key = ConnKey {
                    local_port,
                    peer_port,
                };
                let conn =
                    Connection::host_initiated(hs.stream, local_port, peer_port, self.guest_cid);
                self.by_fd.insert(fd, key);
                self.conns.insert(key, conn);
                self.counters.conns_added += 1;
                self.refresh(key);
            }
            // A bad line closes the connection, as in Firecracker: the host process reads
            // end of file instead of `OK`.
            _ => self.close_stream(hs.stream),
        }
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        // At most MAX_CONNECTIONS ports are taken, so one of the next MAX_CONNECTIONS + 1
        // is free.
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    fn queue_stray_rst(&mut self, hdr: &Header) {
        // Never answer a reset with a reset: two peers would bounce them forever.
        if hdr.op == op::RST || self.stray_rst.len() >= MAX_STRAY_RST {
            return;
        }
        self.stray_rst.push_back(hdr.rst_reply(self.guest_cid));
    }

    /// Handles one packet from the guest. `data` is its payload (exactly `hdr.len` bytes).
    pub fn handle_tx_packet(&mut self, hdr: &Header, data: Option<&crate::GuestSlice<'_>>) {
        // A guest claiming another CID gets nothing: answering would help it spoof.
        if hdr.src_cid != self.guest_cid {
            return;
        }
        if hdr.dst_cid != HOST_CID {
            self.queue_stray_rst(hdr);
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            let verdict = conn.on_guest_packet(hdr, data, &mut self.scratch);
            self.apply(key, verdict);
            return;
        }
        if hdr.op == op::REQUEST && hdr.type_ == TYPE_STREAM {
            self.connect_to_host(hdr, key);
        } else {
            self.queue_stray_rst(hdr);
        }
    }

    /// A malformed packet whose header could be read: reset what it names.
    fn handle_malformed(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.apply(key, Verdict::Kill);
        } else {
            self.queue_stray_rst(hdr);
        }
    }

    /// A guest REQUEST for host port P: connect to `<socket>_P`, or reset.
    fn connect_to_host(&mut self, hdr: &Header, key: ConnKey) {
        if self.open_count() >= MAX_CONNECTIONS {
            self.queue_stray_rst(hdr);
            return;
        }
        match connect_nonblocking(&host_port_path(&self.path, hdr.dst_port)) {
            Ok(stream) => {
                let fd = stream.as_raw_fd();
                let conn = Connection::guest_initiated(stream, hdr, self.guest_cid);
                self.by_fd.insert(fd, key);
                self.conns.insert(key, conn);
                self.counters.conns_added += 1;
                self.refresh(key);
            }
            Err(_) => self.queue_stray_rst(hdr),
        }
    }

    /// Writes the next packet for the guest into an RX buffer (`hdr_slice` for the header,
    /// `data` for the payload) and returns its length, or None when there is none.
    pub fn fill_rx(
        &mut self,
        hdr_slice: &crate::GuestSlice<'_>,
        data: &crate::GuestSlice<'_>,
    ) -> Option<u32> {
        let write_header = |h: &Header| hdr_slice.copy_from(&h.to_bytes()[..]);
        if let Some(h) = self.stray_rst.pop_front() {
            write_header(&h);
            return Some(HEADER_LEN);
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let packet = conn.fill_rx(data);
            let done = conn.rst_sent();
            if done {
                self.remove_conn(key);
            } else {
                self.refresh(key);
            }
            if let Some(h) = packet {
                write_header(&h);
                return Some(HEADER_LEN + h.len);
            }
        }
        None
    }

    /// Serves the TX queue: every packet the driver made available (until the resets owed
    /// to the guest fill up) is handled and returned. Returns whether to interrupt it.
    pub fn process_tx(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while !self.tx_blocked() {
            let Some(chain) = queue.iter(mem).map_err(QueueError::Queue)?.next() else {
                break;
            };
            let head = chain.head_index();
            self.counters.tx_packets_count += 1;
            match packet::parse_tx(mem, chain) {
                Ok(p) => {
                    self.counters.tx_bytes_count += u64::from(p.header.len);
                    self.handle_tx_packet(&p.header, p.data.as_ref());
                }
                Err(e) => {
                    if let Some(h) = e.header {
                        self.handle_malformed(&h);
                    }
                }
            }
            // The device writes nothing into TX buffers. Fails only for a head index past
            // the queue, which the driver cannot be told about anyway.
            if queue.add_used(mem, head, 0).is_ok() {
                used = true;
            }
        }
        finish(mem, queue, used)
    }

    /// Fills RX buffers while there are packets for the guest. Returns whether to
    /// interrupt it.
    pub fn process_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        while self.has_rx() {
            let Some(mut chain) = queue.iter(mem).map_err(QueueError::Queue)?.next() else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => match pkt.data_slice() {
                    Some(data) => match self.fill_rx(pkt.header_slice(), data) {
                        Some(len) => len,
                        None => {
                            // Nothing after all (the host socket had no data): the buffer
                            // goes back for the next packet.
                            queue.go_to_previous_position();
                            break;
                        }
                    },
                    // A buffer with room for a header only cannot carry data; returned
                    // unused, as malformed ones are.
                    None => 0,
                },
                Err(_) => 0,
            };
            if len > 0 {
                self.counters.rx_packets_count += 1;
                self.counters.rx_bytes_count += u64::from(len.saturating_sub(HEADER_LEN));
            }
            if queue.add_used(mem, head, len).is_ok() {
                used = true;
            }
        }
        finish(mem, queue, used)
    }

    /// The driver reset the device: every connection the guest knows of is gone (their
    /// host ends are closed). Host connections whose REQUEST has not reached the guest yet
    /// are kept, for the driver that comes next.
    pub fn reset(&mut self) {
        self.stray_rst.clear();
        self.rx_ready.clear();
        let gone: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.request_pending())
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.remove_conn(key);
        }
        let kept: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in kept {
            if let Some(c) = self.conns.get_mut(&key) {
                c.queued = false;
            }
            self.refresh(key);
        }
    }

    /// The state of the connection between host port `local_port` and guest port
    /// `peer_port`, if there is one.
    pub fn connection_state(&self, local_port: u32, peer_port: u32) -> Option<State> {
        self.conns
            .get(&ConnKey {
                local_port,
                peer_port,
            })
            .map(|c| c.state())
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // Remove the socket file if it is still ours, so that the next VM can bind there;
        // a file someone replaced it with stays.
        if let Ok(meta) = self.path.symlink_metadata() {
            if (meta.dev(), meta.ino()) == self.socket_id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn finish(mem: &GuestMemoryMmap, queue: &mut Queue, used: bool) -> Result<bool, QueueError> {
    if !used {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(QueueError::Queue)
}

/// Parses `CONNECT <port>` (without the newline): decimal digits only, as the line
/// Firecracker accepts.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Connects to the Unix socket at `path` without blocking: a listener whose backlog is
/// full (it does not accept) answers EAGAIN at once instead of stalling the event loop,
/// and counts as a refusal like a missing one.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    // Leave room for the terminating NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    #[allow(clippy::cast_possible_truncation)] // AF_UNIX is 1
    {
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: plain socket(2) call; the returned fd is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size (checked
    // above); the fd is open.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            // At most the size of sockaddr_un (checked above).
            libc::socklen_t::try_from(len).unwrap_or(libc::socklen_t::MAX),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// The path a guest connection to host `port` goes to (`<socket>_<port>`).
pub fn host_port_path(socket: &Path, port: u32) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string().into_vec();
    name.extend_from_slice(format!("_{port}").as_bytes());
    PathBuf::from(OsString::from_vec(name))
}
