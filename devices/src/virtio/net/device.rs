//! The virtio-net device: configuration (tap name, MAC), features, configuration space,
//! the [`VirtioDevice`] side the transport drives from vCPU threads, and the two data
//! paths the event loop runs.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{QueueOwnedT, QueueT};

use super::frame::{transmit_limited, write_rx_frame, FrameError, NetCounters};
use super::tap::{Tap, TapError};
use super::{
    CONFIG_SPACE_SIZE, ETH_HDR_LEN, MAX_FRAME_LEN, NET_HDR_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::rate_limiter::{
    LimiterSlot, RateLimited, RateLimiter, RateLimiterConfig, RateLimiterError, TokenType,
};
use crate::virtio::{VirtioCommon, VIRTIO_MMIO_INT_VRING};

/// Frames moved from the tap per event-loop turn at most, so that a busy tap cannot
/// starve the other devices; the tap stays readable and the loop comes back.
const RX_BUDGET: usize = 256;

/// An Ethernet MAC address; written and read as `06:00:ac:10:00:02`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random locally administered unicast address (first byte `x2`, `x6`, `xa` or
    /// `xe`), from the host's getrandom.
    pub fn random_local() -> MacAddr {
        let mut bytes = [0u8; 6];
        // SAFETY: getrandom writes at most `len` bytes into the buffer, which is valid
        // and writable for that long.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if usize::try_from(n).ok() != Some(bytes.len()) {
            // Practically unreachable (6 bytes never block or fall short once the pool is
            // up); the process id still keeps two VMs on one host apart.
            bytes[2..].copy_from_slice(&std::process::id().to_be_bytes());
        }
        bytes[0] = (bytes[0] & 0xfc) | 0x02;
        MacAddr(bytes)
    }

    /// Whether the group bit is set: such an address cannot be a NIC's.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<MacAddr, NetError> {
        let bad = || NetError::BadMac(s.to_string());
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for b in bytes.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        let mac = MacAddr(bytes);
        if mac.is_multicast() || bytes == [0; 6] {
            return Err(NetError::NotUnicast(mac));
        }
        Ok(mac)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the user asked for on the command line or in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The host tap interface, which must exist in hearth's network namespace.
    pub tap: String,
    /// The guest's MAC address; a random locally administered one when absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Limits on what the guest receives (Firecracker's `rx_rate_limiter`).
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on what the guest sends (Firecracker's `tx_rate_limiter`).
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// A name for the interface (Firecracker's `iface_id`), by which a restore can give
    /// it another tap.
    #[serde(default)]
    pub id: Option<String>,
}

/// Why a network device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A MAC that does not parse.
    #[error("MAC address '{0}' is not six hex bytes separated by colons, like 06:00:ac:10:00:02")]
    BadMac(String),
    /// A group or all-zero MAC.
    #[error("MAC address {0} is not a unicast address; the low bit of the first byte must be 0 (e.g. 06:00:ac:10:00:02)")]
    NotUnicast(MacAddr),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for the network device: {0}")]
    EventFd(#[source] io::Error),
    /// A rate limiter's timer could not be made.
    #[error("network device: {0}")]
    RateLimiter(#[from] RateLimiterError),
}

/// How a turn of the receive path ended: whether the event loop should keep watching the
/// tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxState {
    /// Keep watching: the tap is drained, or the budget ran out with frames left.
    WatchTap,
    /// Stop watching until the driver posts receive buffers: a frame is waiting for
    /// one (or the device is not active). The frame stays in the kernel's tap queue (or
    /// in `rx_pending`) meanwhile, so nothing is lost.
    WaitForBuffers,
    /// Reading the tap failed (it was deleted, say): stop watching it.
    TapFailed,
    /// The receive rate limiter ran dry: stop watching the tap until its timer fires.
    Throttled,
}

/// A virtio-net device over one tap.
#[derive(Debug)]
pub struct Net {
    common: VirtioCommon,
    config: NetConfig,
    mac: MacAddr,
    pub(super) tap: Tap,
    /// Whether the event loop watches the tap for frames.
    pub(super) tap_watched: bool,
    /// Whether a tap read error was already reported (once per device, so that a broken
    /// tap cannot flood the log).
    pub(super) tap_error_reported: bool,
    /// One frame from the tap (virtio-net header first) and, in `rx_pending`, its length
    /// while it waits for a receive buffer.
    rx_buf: Vec<u8>,
    rx_pending: Option<usize>,
    /// Scratch space for one transmitted frame.
    tx_buf: Vec<u8>,
    counters: NetCounters,
    pub(super) rx_limiter: RateLimiter,
    pub(super) tx_limiter: RateLimiter,
}

impl Net {
    /// Opens the tap and builds the device (not yet activated by any driver).
    pub fn new(config: NetConfig) -> Result<Net, NetError> {
        let tap = Tap::open(&config.tap)?;
        Net::with_tap(config, tap)
    }

    /// Builds the device over an already open tap (tests pass a socket pair).
    pub fn with_tap(config: NetConfig, tap: Tap) -> Result<Net, NetError> {
        let mac = config.mac.unwrap_or_else(MacAddr::random_local);
        if mac.is_multicast() || mac.0 == [0; 6] {
            return Err(NetError::NotUnicast(mac));
        }
        log::debug!("virtio-net on tap {} with MAC {mac}", config.tap);
        // struct virtio_net_config: mac, then status (VIRTIO_NET_F_STATUS is not offered,
        // so the link is always up and the field reads 0).
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR (not offered), and legacy
        // drivers, which wrote it there, are not served.
        let mut config_space = vec![0u8; CONFIG_SPACE_SIZE];
        config_space[..6].copy_from_slice(&mac.0);
        let common = VirtioCommon::new(
            VIRTIO_ID_NET,
            (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_NET_F_MAC),
            &[QUEUE_SIZE, QUEUE_SIZE],
            config_space,
        )
        .map_err(NetError::EventFd)?;
        let rx_limiter = RateLimiter::new(&config.rx_rate_limiter.unwrap_or_default())?;
        let tx_limiter = RateLimiter::new(&config.tx_rate_limiter.unwrap_or_default())?;
        Ok(Net {
            common,
            config,
            mac,
            tap,
            tap_watched: false,
            tap_error_reported: false,
            rx_buf: vec![0u8; MAX_FRAME_LEN],
            rx_pending: None,
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            counters: NetCounters::default(),
            rx_limiter,
            tx_limiter,
        })
    }

    /// What the device was built from.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The frame read from the tap that waits for a receive buffer, if any.
    pub fn pending_frame(&self) -> Option<&[u8]> {
        self.rx_pending.and_then(|n| self.rx_buf.get(..n))
    }

    /// Puts back a frame that was waiting for a receive buffer (snapshot restore);
    /// frames that do not fit a receive buffer are dropped.
    pub fn set_pending_frame(&mut self, frame: &[u8]) {
        if let Some(dst) = self.rx_buf.get_mut(..frame.len()) {
            dst.copy_from_slice(frame);
            self.rx_pending = Some(frame.len());
        }
    }

    /// What the device counted so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Sends what the driver queued for transmission and interrupts it if buffers came
    /// back.
    pub(super) fn process_tx(&mut self) {
        let (tap, buf, counters) = (&mut self.tap, &mut self.tx_buf, &mut self.counters);
        let limiter = Some(&mut self.tx_limiter).filter(|l| !l.is_unlimited());
        // Errs when the driver broke its own ring: the queue stays stuck until it resets
        // the device.
        self.common.serve_queue(TX_QUEUE, |mem, queue| {
            transmit_limited(mem, queue, tap, buf, counters, limiter).unwrap_or(true)
        });
    }

    /// Moves frames from the tap into the driver's receive buffers, at most
    /// [`RX_BUDGET`] reads per call, and says whether to keep watching the tap.
    ///
    /// A frame is read from the tap only when it can be placed: when the receive queue
    /// runs dry, the frame in hand waits in `rx_pending`, the tap is no longer watched,
    /// and the rest stay queued in the kernel until the driver posts buffers (its
    /// notification of the receive queue brings the event loop back here).
    pub(super) fn process_rx(&mut self) -> RxState {
        let Some((mem, queues, interrupt)) = self.common.active_queues() else {
            return RxState::WaitForBuffers;
        };
        let rx = &mut queues[RX_QUEUE];
        let mut used_any = false;
        let mut reads = 0;
        let state = loop {
            let len = match self.rx_pending {
                Some(len) => len,
                None => {
                    if reads == RX_BUDGET {
                        break RxState::WatchTap;
                    }
                    reads += 1;
                    let read = match self.tap.read_frame(&mut self.rx_buf) {
                        // A tap never reads empty; end of file means it is gone.
                        Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end of file")),
                        other => other,
                    };
                    match read {
                        Ok(n) if n < NET_HDR_LEN + ETH_HDR_LEN || n > self.rx_buf.len() => {
                            // A runt, or a frame cut to fit the buffer.
                            self.counters.rx_dropped += 1;
                            continue;
                        }
                        Ok(n) => {
                            self.rx_pending = Some(n);
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break RxState::WatchTap,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            if !self.tap_error_reported {
                                self.tap_error_reported = true;
                                log::error!(
                                    "virtio-net: reading tap {} failed: {e}; the guest receives nothing more",
                                    self.tap.name()
                                );
                            }
                            break RxState::TapFailed;
                        }
                    }
                }
            };
            // A broken ring (Err) is treated like an empty one: nothing can be placed until
            // the driver resets the device.
            let chain = match rx.iter(mem) {
                Ok(mut chains) => chains.next(),
                Err(_) => None,
            };
            let Some(chain) = chain else {
                break RxState::WaitForBuffers;
            };
            if !take_rx_tokens(&mut self.rx_limiter, len - NET_HDR_LEN) {
                // The frame waits in `rx_pending`, the chain in the ring.
                rx.go_to_previous_position();
                break RxState::Throttled;
            }
            let head = chain.head_index();
            // The tap's header is not passed on: without VIRTIO_NET_F_GUEST_CSUM its flags
            // must be 0, and num_buffers is 1 since each frame fills one chain.
            let frame = &mut self.rx_buf[..len];
            frame[..NET_HDR_LEN].fill(0);
            frame[NET_HDR_LEN - 2..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let used_len = match write_rx_frame(mem, chain, frame) {
                Ok(n) => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += (len - NET_HDR_LEN) as u64;
                    self.rx_pending = None;
                    n
                }
                Err(FrameError::TooSmall { .. }) => {
                    // Waiting for a larger buffer could stall receiving for good (a driver
                    // that posts MTU-sized buffers, a host frame that is larger).
                    self.counters.rx_dropped += 1;
                    self.rx_pending = None;
                    0
                }
                Err(_) => {
                    // The chain is at fault, not the frame: it waits for the next chain.
                    self.counters.rx_bad_buffers += 1;
                    0
                }
            };
            if rx.add_used(mem, head, used_len).is_ok() {
                used_any = true;
            }
        };
        let notify = used_any && rx.needs_notification(mem).unwrap_or(true);
        if notify {
            // Fails only when an interrupt is already pending.
            let _ = interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
        state
    }

    /// Whether a frame read from the tap is waiting for a receive buffer.
    pub fn has_pending_rx(&self) -> bool {
        self.rx_pending.is_some()
    }
}

/// Takes a received frame's tokens (an operation and its bytes), or none when either
/// bucket is short.
fn take_rx_tokens(limiter: &mut RateLimiter, bytes: usize) -> bool {
    if limiter.is_unlimited() {
        return true;
    }
    if !limiter.consume(1, TokenType::Ops) {
        return false;
    }
    if !limiter.consume(bytes as u64, TokenType::Bytes) {
        limiter.manual_replenish(1, TokenType::Ops);
        return false;
    }
    true
}

impl RateLimited for Net {
    fn set_rate_limiter(&mut self, slot: LimiterSlot, config: &RateLimiterConfig) -> bool {
        // The configuration (which snapshots keep) follows the limits in force.
        let kept = Some(*config).filter(|c| !c.is_unlimited());
        match slot {
            LimiterSlot::Rx => {
                self.rx_limiter.update(config);
                self.config.rx_rate_limiter = kept;
            }
            LimiterSlot::Tx => {
                self.tx_limiter.update(config);
                self.config.tx_rate_limiter = kept;
            }
            LimiterSlot::Device => return false,
        }
        true
    }
}

// A frame waiting in `rx_pending` across a reset is kept for the next driver rather
// than lost; the event loop stops watching the tap the next time it fires.
crate::virtio_device!(Net);

#[cfg(test)]
pub(crate) mod tests {
    use std::fs::File;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::sync::Arc;

    use crate::GuestMemoryMmap;
    use virtio_queue::Queue;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::VirtioDevice;
    use crate::virtio::{ActivateError, Interrupt};

    /// A connected pair of non-blocking SOCK_SEQPACKET sockets: one message per read and
    /// write, like a tap, and end of file once the other side shuts down.
    pub(crate) fn seqpacket_pair() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`, which has room for them.
        let ret = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(ret, 0, "socketpair: {}", io::Error::last_os_error());
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe {
            (
                File::from(OwnedFd::from_raw_fd(fds[0])),
                File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        }
    }

    /// A device whose "tap" is one end of a socket pair; the other end plays the host
    /// side of the tap.
    pub(crate) fn net_with_peer(mac: Option<MacAddr>) -> (Net, File) {
        let (ours, peer) = seqpacket_pair();
        let net = Net::with_tap(
            NetConfig {
                tap: "test0".into(),
                mac,
                rx_rate_limiter: None,
                tx_rate_limiter: None,
                id: None,
            },
            Tap::from_file("test0", ours),
        )
        .unwrap();
        (net, peer)
    }

    #[test]
    fn features_and_config_space() {
        let mac: MacAddr = "06:00:ac:10:00:02".parse().unwrap();
        let (net, _peer) = net_with_peer(Some(mac));
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        assert_eq!(
            net.avail_features(),
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC)
        );
        let mut got = [0xffu8; 6];
        net.read_config(0, &mut got);
        assert_eq!(got, [0x06, 0, 0xac, 0x10, 0, 2]);
        let mut b = [0xffu8; 4];
        net.read_config(4, &mut b);
        assert_eq!(b, [0, 2, 0, 0], "status reads 0, past the end reads 0");
        net.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn the_mac_is_read_only() {
        let (mut net, _peer) = net_with_peer(None);
        let before = net.mac();
        net.write_config(0, &[1, 2, 3, 4, 5, 6]);
        let mut got = [0u8; 6];
        net.read_config(0, &mut got);
        assert_eq!(got, before.0);
    }

    #[test]
    fn generated_macs_are_local_unicast_and_differ() {
        let a = MacAddr::random_local();
        let b = MacAddr::random_local();
        assert_ne!(a, b);
        for m in [a, b] {
            assert_eq!(m.0[0] & 0x03, 0x02, "{m}");
        }
        let (net, _peer) = net_with_peer(None);
        assert_eq!(net.mac().0[0] & 0x03, 0x02);
        assert_eq!(
            net.config().mac,
            None,
            "the config keeps what the user gave"
        );
    }

    #[test]
    fn macs_parse_print_and_refuse_nonsense() {
        let m: MacAddr = "06:00:AC:10:00:02".parse().unwrap();
        assert_eq!(m.to_string(), "06:00:ac:10:00:02");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"06:00:ac:10:00:02\"");
        assert_eq!(
            serde_json::from_str::<MacAddr>("\"06:00:ac:10:00:02\"").unwrap(),
            m
        );
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "06-00-ac-10-00-02",
            "6:0:ac:10:0:2",
            "06:00:ac:10:00:0g",
            "06:00:ac:10:00:+2",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(matches!(err, NetError::BadMac(_)), "{bad}: {err}");
        }
        for group in [
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            let err = group.parse::<MacAddr>().unwrap_err();
            assert!(matches!(err, NetError::NotUnicast(_)), "{group}: {err}");
            assert!(err.to_string().contains("unicast"));
        }
        assert!(serde_json::from_str::<MacAddr>("\"01:00:5e:00:00:01\"").is_err());
    }

    #[test]
    fn activation_needs_both_queues_ready() {
        use vm_memory::GuestAddress;
        let (mut net, _peer) = net_with_peer(None);
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let ready = || {
            let mut q = Queue::new(16).unwrap();
            q.set_ready(true);
            q
        };
        let err = net.common_mut().set_queues(vec![ready()]).unwrap_err();
        assert!(err.to_string().contains("2 queue(s)"), "{err}");
        net.common_mut()
            .set_queues(vec![ready(), Queue::new(16).unwrap()])
            .unwrap();
        let err = net.activate(mem.clone(), interrupt.clone()).unwrap_err();
        assert!(
            matches!(err, ActivateError::BadQueue { index: 1, .. }),
            "{err}"
        );
        assert!(!net.is_activated());
        net.common_mut().set_queues(vec![ready(), ready()]).unwrap();
        net.activate(mem, interrupt).unwrap();
        assert!(net.is_activated());
        assert_eq!(net.common().queues().len(), 2);
        net.set_acked_features(u64::MAX);
        assert_eq!(net.acked_features(), net.avail_features());
        net.reset();
        assert!(!net.is_activated());
        assert_eq!(net.acked_features(), 0);
        assert!(net.common().queues().iter().all(|q| !q.ready()));
    }
}
