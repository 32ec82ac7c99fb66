//! The event-loop side of virtio-net: sends on transmit notifications, and receives while
//! the tap is readable and the driver has buffers posted.
//!
//! The tap is watched only while the device can place a frame. When the receive queue
//! runs dry the tap is dropped from the epoll set (a level-triggered tap would otherwise
//! wake the loop again and again), and frames wait in the kernel's tap queue; the
//! driver's next receive-queue notification resumes reading.

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;

use super::device::RxState;
use super::{Net, RX_QUEUE, TX_QUEUE};
use crate::virtio::device::DEVICE_EVENT_BASE;
use crate::virtio::{VirtioDevice, VirtioEvents};

const TAP: u32 = DEVICE_EVENT_BASE;
/// The receive rate limiter's timer.
const RX_LIMITER: u32 = DEVICE_EVENT_BASE + 1;
/// The transmit rate limiter's timer.
const TX_LIMITER: u32 = DEVICE_EVENT_BASE + 2;

impl Net {
    /// Starts or stops watching the tap.
    fn watch_tap(&mut self, watch: bool, ops: &mut EventOps) {
        if watch == self.tap_watched {
            return;
        }
        let events = Events::with_data(&self.tap, TAP, EventSet::IN);
        let result = if watch {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.tap_watched = watch,
            Err(e) => log::error!(
                "virtio-net {}: cannot {} the tap in the event loop: {e}",
                self.tap.name(),
                if watch { "watch" } else { "stop watching" }
            ),
        }
    }

    /// Receives what can be received and watches the tap accordingly.
    fn receive(&mut self, ops: &mut EventOps) {
        let state = self.process_rx();
        self.watch_tap(state == RxState::WatchTap, ops);
    }
}

impl VirtioEvents for Net {
    fn queue_event(&mut self, index: usize, ops: &mut EventOps) {
        match index {
            // New receive buffers (or activation): place the waiting frame, then read the
            // tap again.
            // A throttled side waits for its limiter's timer.
            RX_QUEUE if !self.rx_limiter.is_blocked() => self.receive(ops),
            TX_QUEUE if !self.tx_limiter.is_blocked() => self.process_tx(),
            _ => {}
        }
    }

    fn init_sources(&mut self, ops: &mut EventOps) {
        use crate::rate_limiter::watch_timer;
        watch_timer(&self.rx_limiter, RX_LIMITER, ops, "virtio-net rx");
        watch_timer(&self.tx_limiter, TX_LIMITER, ops, "virtio-net tx");
    }

    fn source_event(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            // While the device is reset this stops watching the tap.
            TAP => self.receive(ops),
            RX_LIMITER if self.rx_limiter.on_timer().is_ok() => self.receive(ops),
            TX_LIMITER if self.tx_limiter.on_timer().is_ok() && self.is_activated() => {
                self.process_tx()
            }
            _ => {}
        }
    }
}

crate::virtio_event_subscriber!(Net);

#[cfg(test)]
// Test values (descriptor flags, lengths, statuses) are small constants.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    use crate::GuestMemoryMmap;
    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::bus::lock;
    use crate::virtio::net::device::tests::{net_with_peer, seqpacket_pair};
    use crate::virtio::net::frame::tests::{add_chain, desc, frame, guest_memory, R, W};
    use crate::virtio::net::{NET_HDR_LEN, QUEUE_SIZE};
    use crate::virtio::{activate_with, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};

    const RX_RING: u64 = 0x4_0000;
    const TX_RING: u64 = 0x6_0000;
    const RX_BUFS: u64 = 0x8_0000;
    const TX_BUFS: u64 = 0xc_0000;

    struct Setup<'a> {
        mem: &'a GuestMemoryMmap,
        net: Arc<Mutex<Net>>,
        peer: File,
        manager: EventManager<Arc<Mutex<Net>>>,
        rxq: MockSplitQueue<'a, GuestMemoryMmap>,
        txq: MockSplitQueue<'a, GuestMemoryMmap>,
        interrupt: Arc<Interrupt>,
        rx_posted: u16,
    }

    impl<'a> Setup<'a> {
        fn new(mem: &'a GuestMemoryMmap) -> Self {
            let (net, peer) = net_with_peer(None);
            let net = Arc::new(Mutex::new(net));
            let mut manager = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
            manager.add_subscriber(net.clone());
            let rxq = MockSplitQueue::create(mem, GuestAddress(RX_RING), QUEUE_SIZE);
            let txq = MockSplitQueue::create(mem, GuestAddress(TX_RING), QUEUE_SIZE);
            let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
            Setup {
                mem,
                net,
                peer,
                manager,
                rxq,
                txq,
                interrupt,
                rx_posted: 0,
            }
        }

        fn activate(&mut self) {
            let rx: Queue = self.rxq.create_queue().unwrap();
            let tx: Queue = self.txq.create_queue().unwrap();
            activate_with(
                &mut *lock(&self.net),
                self.mem,
                vec![rx, tx],
                &self.interrupt,
            );
            self.turn();
        }

        /// Runs the event loop until nothing is left to do (and fails if it never
        /// settles, which would be a busy loop).
        fn turn(&mut self) {
            for _ in 0..1000 {
                if self.manager.run_with_timeout(50).unwrap() == 0 {
                    return;
                }
            }
            panic!("the event loop does not settle");
        }

        /// Posts `n` receive buffers of 2 KiB (without notifying).
        fn post_rx(&mut self, n: u16) {
            for _ in 0..n {
                let i = self.rx_posted;
                add_chain(
                    &self.rxq,
                    i,
                    &[desc(RX_BUFS + 0x1000 * u64::from(i), 2048, W)],
                );
                self.rx_posted += 1;
            }
        }

        fn kick(&self, queue: usize) {
            lock(&self.net).queue_events()[queue].write(1).unwrap();
        }

        /// The frames the guest received so far (virtio-net header included).
        fn received(&self) -> Vec<Vec<u8>> {
            let used = self.rxq.used();
            (0..used.idx().load())
                .map(|i| {
                    let e = used.ring().ref_at(usize::from(i)).unwrap().load();
                    let mut buf = vec![0u8; e.len() as usize];
                    self.mem
                        .read_slice(&mut buf, GuestAddress(RX_BUFS + 0x1000 * u64::from(e.id())))
                        .unwrap();
                    buf
                })
                .collect()
        }

        fn host_sends(&self, payload: &[u8]) {
            // The tap's header: the device replaces it.
            let mut f = frame(payload);
            f[0] = 0x2; // DATA_VALID, which the guest must not see
            (&self.peer).write_all(&f).unwrap();
        }
    }

    fn guest_view(payload: &[u8]) -> Vec<u8> {
        let mut f = frame(payload);
        f[NET_HDR_LEN - 2] = 1; // num_buffers
        f
    }

    #[test]
    fn transmit_notifications_send_frames_to_the_tap() {
        let mem = guest_memory();
        let mut s = Setup::new(&mem);
        s.activate();
        let f = frame(b"to the host");
        mem.write_slice(&f, GuestAddress(TX_BUFS)).unwrap();
        add_chain(&s.txq, 0, &[desc(TX_BUFS, f.len() as u32, R)]);
        s.kick(TX_QUEUE);
        s.turn();
        let mut got = [0u8; 256];
        let n = (&s.peer).read(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..]);
        assert_eq!(s.txq.used().idx().load(), 1);
        assert_eq!(s.interrupt.status(), VIRTIO_MMIO_INT_VRING);
        let c = lock(&s.net).counters();
        assert_eq!((c.tx_frames, c.tx_dropped), (1, 0));
    }

    #[test]
    fn frames_from_the_tap_reach_posted_buffers() {
        let mem = guest_memory();
        let mut s = Setup::new(&mem);
        s.post_rx(4);
        s.activate();
        s.host_sends(b"one");
        s.host_sends(b"two");
        s.turn();
        assert_eq!(s.received(), vec![guest_view(b"one"), guest_view(b"two")]);
        assert_eq!(s.interrupt.status(), VIRTIO_MMIO_INT_VRING);
        let c = lock(&s.net).counters();
        assert_eq!(c.rx_frames, 2);
        assert_eq!(c.rx_bytes, 2 * (14 + 3));
        assert!(lock(&s.net).tap_watched);
    }

    #[test]
    fn without_buffers_frames_wait_and_none_is_lost() {
        let mem = guest_memory();
        let mut s = Setup::new(&mem);
        s.activate();
        for i in 0..5u8 {
            s.host_sends(&[b'a' + i; 8]);
        }
        s.turn();
        {
            let net = lock(&s.net);
            assert!(!net.tap_watched, "no buffers: the tap is not watched");
            assert!(net.has_pending_rx());
        }
        assert!(s.received().is_empty());
        // The loop is idle (no busy spinning on a readable tap).
        assert_eq!(s.manager.run_with_timeout(50).unwrap(), 0);

        // Two buffers: two frames, and the rest keep waiting.
        s.post_rx(2);
        s.kick(RX_QUEUE);
        s.turn();
        assert_eq!(s.received().len(), 2);
        assert!(!lock(&s.net).tap_watched);
        // Then enough for all.
        s.post_rx(8);
        s.kick(RX_QUEUE);
        s.turn();
        let got = s.received();
        let want: Vec<Vec<u8>> = (0..5u8).map(|i| guest_view(&[b'a' + i; 8])).collect();
        assert_eq!(got, want, "all frames, in order");
        assert!(
            lock(&s.net).tap_watched,
            "buffers left: the tap is watched again"
        );
        let c = lock(&s.net).counters();
        assert_eq!((c.rx_frames, c.rx_dropped), (5, 0));
        // And later frames go straight in.
        s.host_sends(b"late");
        s.turn();
        assert_eq!(s.received().last().unwrap(), &guest_view(b"late"));
    }

    #[test]
    fn bad_receive_buffers_are_returned_and_the_frame_waits() {
        let mem = guest_memory();
        let mut s = Setup::new(&mem);
        // A device-readable "receive" buffer, then a good one.
        add_chain(&s.rxq, 0, &[desc(RX_BUFS, 2048, R)]);
        add_chain(&s.rxq, 1, &[desc(RX_BUFS + 0x1000, 2048, W)]);
        s.activate();
        s.host_sends(b"survivor");
        s.turn();
        let used = s.rxq.used();
        assert_eq!(used.idx().load(), 2);
        assert_eq!(used.ring().ref_at(0).unwrap().load().len(), 0);
        let e = used.ring().ref_at(1).unwrap().load();
        assert_eq!(e.id(), 1);
        assert_eq!(e.len() as usize, guest_view(b"survivor").len());
        let c = lock(&s.net).counters();
        assert_eq!((c.rx_frames, c.rx_bad_buffers, c.rx_dropped), (1, 1, 0));
    }

    #[test]
    fn frames_larger_than_the_buffer_and_runts_are_dropped() {
        let mem = guest_memory();
        let mut s = Setup::new(&mem);
        s.post_rx(2);
        s.activate();
        s.host_sends(&[0x33; 3000]); // larger than the 2 KiB buffer
        (&s.peer).write_all(&[0u8; 20]).unwrap(); // header and 8 bytes: no Ethernet header
        s.host_sends(b"fits");
        s.turn();
        let used = s.rxq.used();
        assert_eq!(used.idx().load(), 2);
        assert_eq!(used.ring().ref_at(0).unwrap().load().len(), 0);
        let c = lock(&s.net).counters();
        assert_eq!((c.rx_frames, c.rx_dropped), (1, 2));
        assert_eq!(s.received()[1], guest_view(b"fits"));
    }

    #[test]
    fn a_reset_device_stops_watching_the_tap() {
        let mem = guest_memory();
        let mut s = Setup::new(&mem);
        s.post_rx(1);
        s.activate();
        assert!(lock(&s.net).tap_watched);
        lock(&s.net).reset();
        s.host_sends(b"while reset");
        s.turn();
        assert!(!lock(&s.net).tap_watched);
        assert_eq!(s.manager.run_with_timeout(50).unwrap(), 0, "no spinning");
        // Notifications while reset are drained and ignored.
        s.kick(TX_QUEUE);
        s.kick(RX_QUEUE);
        s.turn();
        assert!(s.received().is_empty());
        // Activated again: the frame that arrived meanwhile is delivered.
        let mut rx: Queue = s.rxq.create_queue().unwrap();
        rx.set_next_avail(0);
        let tx: Queue = s.txq.create_queue().unwrap();
        activate_with(&mut *lock(&s.net), &mem, vec![rx, tx], &s.interrupt);
        s.turn();
        assert_eq!(s.received(), vec![guest_view(b"while reset")]);
    }

    #[test]
    fn a_failing_tap_is_dropped_from_the_loop() {
        let mem = guest_memory();
        let mut s = Setup::new(&mem);
        s.post_rx(1);
        s.activate();
        assert!(lock(&s.net).tap_watched);
        // The device's end now reads end of file while it stays readable, as a tap that
        // went away does.
        let (ours, peer) = seqpacket_pair();
        let handle = ours.try_clone().unwrap();
        lock(&s.net).tap = crate::virtio::net::Tap::from_file("gone0", ours);
        s.peer = peer;
        // Re-watch the replacement under the same event data.
        lock(&s.net).tap_watched = false;
        s.kick(RX_QUEUE);
        s.turn();
        assert!(lock(&s.net).tap_watched);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&handle);
        // SAFETY: shutdown on a socket descriptor we own; no memory is passed.
        let ret = unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        assert_eq!(ret, 0);
        s.turn();
        assert!(!lock(&s.net).tap_watched);
        assert!(lock(&s.net).tap_error_reported);
        assert_eq!(s.manager.run_with_timeout(50).unwrap(), 0, "no spinning");
        assert!(s.received().is_empty());
    }
}
