//! One vsock stream between a guest port and a host Unix socket: its state, what it still
//! has to tell the guest, and the credit accounting of both directions (virtio 1.2,
//! 5.10.6.3).
//!
//! Guest to host: the guest may have at most our `buf_alloc` ([`CONN_BUF_SIZE`]) bytes
//! sent but not yet forwarded (`rx_cnt - fwd_cnt`). What the host socket does not take at
//! once waits in `tx_buf`, which that rule bounds; a guest that sends more has broken the
//! protocol and gets a reset.
//!
//! Host to guest: hearth reads the host socket straight into the guest's RX buffers, at
//! most the guest's free credit (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`), so nothing
//! is buffered on this side at all. With no credit left it stops reading the socket, which
//! pushes back on the host process.

use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vm_memory::{ReadVolatile, VolatileMemoryError};
use vmm_sys_util::epoll::EventSet;

use super::packet::{op, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{CONN_BUF_SIZE, CREDIT_UPDATE_THRESHOLD, HOST_CID};

/// Where the connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The host connected and asked for a guest port: the REQUEST goes (or went) to the
    /// guest, which has not answered yet.
    LocalInit,
    /// The guest connected and the host socket accepted: the RESPONSE is still to be sent.
    PeerInit,
    /// Data flows.
    Established,
}

/// Control packets the guest still has to get; flags rather than a queue, so a
/// connection never holds more than one of each.
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    rst: bool,
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    /// SHUTDOWN(SEND): the host closed its end for writing.
    shutdown: bool,
}

/// What the muxer must do with a connection after a guest packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Carry on.
    Keep,
    /// Reset it: send the guest an RST, then forget it.
    Kill,
    /// The guest reset it: forget it now, without an answer.
    Remove,
}

/// One vsock stream.
#[derive(Debug)]
pub struct Connection {
    /// The host end.
    pub(super) stream: UnixStream,
    /// The host-side port: the port the guest connected to, or the one hearth gave a
    /// host-initiated connection.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
    guest_cid: u64,
    state: State,
    pending: Pending,
    /// Whether the RST went out: the muxer then forgets the connection.
    rst_sent: bool,

    // Host to guest.
    /// The host socket reported data (or end of file) that has not been read yet.
    readable: bool,
    /// Reading the host socket returned end of file.
    host_eof: bool,
    /// Payload bytes sent to the guest, ever (wrapping).
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// A CREDIT_REQUEST went out and the guest's credit has not changed since: asking
    /// again would only ping-pong while the guest application is not reading.
    credit_requested: bool,
    /// The guest will receive no more (SHUTDOWN with RCV).
    peer_shut_rcv: bool,

    // Guest to host.
    /// Bytes waiting for the host socket: the `OK <port>\n` line, then guest payload.
    tx_buf: VecDeque<u8>,
    /// How many bytes at the front of `tx_buf` are hearth's own (the OK line), not
    /// counted in `fwd_cnt`.
    own_bytes: usize,
    /// Payload bytes received from the guest, ever (wrapping).
    rx_cnt: u32,
    /// Payload bytes written to the host socket, ever (wrapping).
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard from us.
    last_fwd_cnt_sent: u32,
    /// The guest will send no more (SHUTDOWN with SEND).
    peer_shut_send: bool,
    /// The host socket was shut down for writing after the guest's SHUTDOWN(SEND).
    host_write_shut: bool,

    /// Whether the connection is in the muxer's RX queue.
    pub(super) queued: bool,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, guest_cid: u64) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            guest_cid,
            state: State::LocalInit,
            pending: Pending::default(),
            rst_sent: false,
            readable: false,
            host_eof: false,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
            peer_shut_rcv: false,
            tx_buf: VecDeque::new(),
            own_bytes: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            peer_shut_send: false,
            host_write_shut: false,
            queued: false,
        }
    }

    /// A host process asked for guest port `peer_port`; hearth gave it `local_port`.
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
    ) -> Self {
        let mut c = Self::new(stream, local_port, peer_port, guest_cid);
        c.pending.request = true;
        c
    }

    /// The guest's REQUEST `req` reached a host listener, connected as `stream`.
    pub fn guest_initiated(stream: UnixStream, req: &Header, guest_cid: u64) -> Self {
        let mut c = Self::new(stream, req.dst_port, req.src_port, guest_cid);
        c.state = State::PeerInit;
        c.pending.response = true;
        c.peer_buf_alloc = req.buf_alloc;
        c.peer_fwd_cnt = req.fwd_cnt;
        c
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the REQUEST of a host-initiated connection is still to be sent: the guest
    /// knows nothing of the connection yet.
    pub fn request_pending(&self) -> bool {
        self.state == State::LocalInit && self.pending.request
    }

    /// Whether the connection is being reset.
    pub fn is_dying(&self) -> bool {
        self.pending.rst || self.rst_sent
    }

    /// Whether the RST went to the guest: the connection can be forgotten.
    pub fn rst_sent(&self) -> bool {
        self.rst_sent
    }

    /// Bytes of guest payload waiting for the host socket.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len() - self.own_bytes
    }

    /// How many payload bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        // A guest reporting more consumed than was sent only hurts itself: saturate.
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Resets the connection: the guest gets an RST, the host end is closed now.
    pub fn kill(&mut self) {
        if self.is_dying() {
            return;
        }
        self.pending = Pending {
            rst: true,
            ..Pending::default()
        };
        self.tx_buf.clear();
        self.own_bytes = 0;
        // The host process sees the end of the stream at once, not when the RST finds an
        // RX buffer. Fails only when the peer is already gone.
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Handles a packet from the guest for this connection. `data` is the payload of an
    /// RW packet (exactly `hdr.len` bytes).
    pub fn on_guest_packet(
        &mut self,
        hdr: &Header,
        data: Option<&crate::GuestSlice<'_>>,
        scratch: &mut Vec<u8>,
    ) -> Verdict {
        if hdr.op == op::RST {
            return Verdict::Remove;
        }
        if self.is_dying() {
            return Verdict::Keep;
        }
        if hdr.type_ != TYPE_STREAM {
            return Verdict::Kill;
        }
        // Every packet carries the sender's credit.
        if (hdr.buf_alloc, hdr.fwd_cnt) != (self.peer_buf_alloc, self.peer_fwd_cnt) {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_credit() > 0 {
            // Answered, or no longer needed.
            self.pending.credit_request = false;
        }

        match hdr.op {
            op::RESPONSE if self.state == State::LocalInit && !self.pending.request => {
                self.state = State::Established;
                // The host process learns its port before any data.
                let line = format!("OK {}\n", self.local_port);
                self.own_bytes = line.len();
                self.tx_buf.extend(line.as_bytes());
                self.flush()
            }
            op::RW if self.state == State::Established && !self.peer_shut_send => {
                let Some(data) = data else {
                    return Verdict::Keep;
                };
                let len = data.len();
                if self.buffered() + len > CONN_BUF_SIZE as usize {
                    // More than the credit we gave: the guest broke the protocol.
                    return Verdict::Kill;
                }
                scratch.clear();
                scratch.resize(len, 0);
                if data.copy_to(&mut scratch[..]) != len {
                    return Verdict::Kill;
                }
                self.tx_buf.extend(scratch.iter());
                // At most CONN_BUF_SIZE (checked above).
                self.rx_cnt = self
                    .rx_cnt
                    .wrapping_add(u32::try_from(len).unwrap_or(u32::MAX));
                self.flush()
            }
            op::CREDIT_UPDATE => Verdict::Keep,
            op::CREDIT_REQUEST => {
                self.pending.credit_update = true;
                Verdict::Keep
            }
            op::SHUTDOWN => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.flush()
            }
            // A second REQUEST, a RESPONSE out of turn, data before the connection is up
            // or after the guest said it was done sending, an unknown operation.
            _ => Verdict::Kill,
        }
    }

    /// The host socket is ready for `events`.
    pub fn on_host_event(&mut self, events: EventSet) -> Verdict {
        if self.is_dying() {
            return Verdict::Keep;
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
            // Read when the guest has room for it (fill_rx); a hang-up reads as EOF there.
            self.readable = true;
        }
        if events.intersects(EventSet::OUT | EventSet::ERROR | EventSet::HANG_UP) {
            return self.flush();
        }
        Verdict::Keep
    }

    /// Writes what the host socket takes of `tx_buf`, then does what a drained buffer
    /// allows: shutting the host socket for writing, closing, crediting the guest.
    pub fn flush(&mut self) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send(&self.stream, front) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    let own = n.min(self.own_bytes);
                    self.own_bytes -= own;
                    // At most the buffer, which is at most CONN_BUF_SIZE.
                    let forwarded = u32::try_from(n - own).unwrap_or(u32::MAX);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(forwarded);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The host end is gone (EPIPE, ECONNRESET).
                Err(_) => return Verdict::Kill,
            }
        }
        if !self.tx_buf.is_empty() {
            return Verdict::Keep;
        }
        if self.peer_shut_send && self.peer_shut_rcv {
            // The guest closed its socket and everything it sent was forwarded: Linux waits
            // for our RST to finish the close.
            return Verdict::Kill;
        }
        if self.peer_shut_send && !self.host_write_shut {
            // The host process reads end of file. Fails only when it is already gone.
            let _ = self.stream.shutdown(Shutdown::Write);
            self.host_write_shut = true;
        }
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
        Verdict::Keep
    }

    /// Whether payload can go to the guest now.
    fn can_send_data(&self) -> bool {
        self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.peer_credit() > 0
    }

    /// Asks the guest for credit when host data waits for it (once per credit change).
    pub fn update_credit_request(&mut self) {
        if self.state == State::Established
            && self.readable
            && !self.host_eof
            && !self.peer_shut_rcv
            && self.peer_credit() == 0
            && !self.credit_requested
            && !self.is_dying()
        {
            self.pending.credit_request = true;
            self.credit_requested = true;
        }
    }

    /// Whether the connection has a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        let p = &self.pending;
        p.rst
            || p.request
            || p.response
            || p.credit_update
            || p.credit_request
            || p.shutdown
            || self.can_send_data()
    }

    /// What to watch the host socket for.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.is_dying() {
            return set;
        }
        if self.state == State::Established
            && !self.readable
            && !self.host_eof
            && !self.peer_shut_rcv
        {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    fn header(&mut self, op: u16) -> Header {
        // Every packet tells the guest our fwd_cnt: it replaces a CREDIT_UPDATE.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending.credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, if any: its header, with its payload already read
    /// into `data` (the RX buffer's data area) when it is an RW.
    pub fn fill_rx(&mut self, data: &crate::GuestSlice<'_>) -> Option<Header> {
        if self.pending.rst {
            self.pending.rst = false;
            self.rst_sent = true;
            return Some(self.header(op::RST));
        }
        if self.rst_sent {
            return None;
        }
        if self.pending.request {
            self.pending.request = false;
            return Some(self.header(op::REQUEST));
        }
        if self.pending.response {
            self.pending.response = false;
            self.state = State::Established;
            return Some(self.header(op::RESPONSE));
        }
        if self.can_send_data() {
            let max = (self.peer_credit() as usize).min(data.len());
            match data.subslice(0, max) {
                Ok(mut window) => match (&self.stream).read_volatile(&mut window) {
                    Ok(0) => {
                        self.readable = false;
                        self.host_eof = true;
                        self.pending.shutdown = true;
                    }
                    Ok(n) => {
                        // At most the peer's credit, a u32.
                        let n = u32::try_from(n).unwrap_or(u32::MAX);
                        self.tx_cnt = self.tx_cnt.wrapping_add(n);
                        let mut h = self.header(op::RW);
                        h.len = n;
                        return Some(h);
                    }
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        self.readable = false;
                    }
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.kill();
                        return self.fill_rx(data);
                    }
                },
                // max <= data.len(), so this does not happen; no data is sent if it did.
                Err(_) => self.readable = false,
            }
        }
        if self.pending.credit_update {
            return Some(self.header(op::CREDIT_UPDATE));
        }
        if self.pending.credit_request {
            self.pending.credit_request = false;
            return Some(self.header(op::CREDIT_REQUEST));
        }
        if self.pending.shutdown {
            self.pending.shutdown = false;
            let mut h = self.header(op::SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            return Some(h);
        }
        None
    }
}

/// `send(2)` with MSG_NOSIGNAL: a host process that went away must not kill hearth with
/// SIGPIPE (Rust binaries ignore it, programs embedding hearth may not).
fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, initialised slice for its whole length and the fd is open
    // for as long as `stream` lives; send(2) only reads from the buffer.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    // Negative only on failure.
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
