//! The event-loop side of virtio-vsock: the listening socket is watched from the start
//! (host processes may connect before the guest driver is up), the queues once the
//! driver activated the device, and each connection's socket for what the muxer wants
//! from it.

use std::os::fd::RawFd;

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;

use super::muxer::EpollChange;
use super::{Vsock, RXQ, TXQ};
use crate::virtio::device::DEVICE_EVENT_BASE;
use crate::virtio::VirtioEvents;

const LISTENER: u32 = DEVICE_EVENT_BASE;
const STREAM: u32 = DEVICE_EVENT_BASE + 1;

impl Vsock {
    fn on_stream(&mut self, fd: RawFd, events: EventSet) {
        self.muxer.on_stream_event(fd, events);
        self.process_queues(false);
    }
}

impl VirtioEvents for Vsock {
    fn queue_event(&mut self, index: usize, _ops: &mut EventOps) {
        match index {
            TXQ => self.process_queues(true),
            RXQ => self.process_queues(false),
            // The event queue: a buffer for an owed TRANSPORT_RESET, or the driver's
            // sign that it handled one.
            _ => self.on_event_queue(),
        }
    }

    fn init_sources(&mut self, ops: &mut EventOps) {
        let listener = self.muxer.listener_fd();
        if let Err(e) = ops.add(Events::with_data_raw(listener, LISTENER, EventSet::IN)) {
            log::error!(
                "virtio-vsock: cannot watch {}: {e}; host connections will not be accepted",
                self.muxer.path().display()
            );
        }
    }

    fn source_event(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            LISTENER => self.muxer.accept(),
            STREAM => self.on_stream(events.fd(), events.event_set()),
            _ => {}
        }
    }

    /// Applies what the muxer wants watched. A failure leaves that one socket unwatched:
    /// its connection stalls, the others carry on.
    fn after_event(&mut self, ops: &mut EventOps) {
        for change in self.muxer.take_epoll_changes() {
            let result = match &change {
                EpollChange::Add(fd, set) => ops.add(Events::with_data_raw(*fd, STREAM, *set)),
                EpollChange::Modify(fd, set) => {
                    ops.modify(Events::with_data_raw(*fd, STREAM, *set))
                }
                EpollChange::Remove(fd, _) => {
                    ops.remove(Events::with_data_raw(*fd, STREAM, EventSet::empty()))
                }
                EpollChange::Close(_) => Ok(()),
            };
            if let Err(e) = result {
                log::warn!("virtio-vsock: cannot update the watch of a connection: {e}");
            }
            // A removed or closed socket is closed only now, after epoll forgot it.
            drop(change);
        }
    }
}

crate::virtio_event_subscriber!(Vsock);

#[cfg(test)]
// Test values (descriptor flags, lengths, statuses) are small constants.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::GuestMemoryMmap;
    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::bus::lock;
    use crate::virtio::block::test_utils::desc;
    use crate::virtio::vsock::packet::{op, Header, HEADER_SIZE, TYPE_STREAM};
    use crate::virtio::vsock::tests::add_chain;
    use crate::virtio::vsock::{VsockConfig, EVQ, FIRST_LOCAL_PORT, HOST_CID, MAX_STRAY_RST};
    use crate::virtio::{activate_with, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};

    const Q: u16 = 256;

    /// A vsock device on an event loop, with mock queues in leaked guest memory.
    struct Rig {
        vsock: Arc<Mutex<Vsock>>,
        manager: EventManager<Arc<Mutex<Vsock>>>,
        mem: &'static GuestMemoryMmap,
        rxvq: MockSplitQueue<'static, GuestMemoryMmap>,
        txvq: MockSplitQueue<'static, GuestMemoryMmap>,
        evq: MockSplitQueue<'static, GuestMemoryMmap>,
        interrupt: Arc<Interrupt>,
    }

    impl Rig {
        fn new(device: Vsock) -> Self {
            let vsock = Arc::new(Mutex::new(device));
            let mut manager = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
            manager.add_subscriber(vsock.clone());
            let mem: &'static GuestMemoryMmap = Box::leak(Box::new(
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
            ));
            Rig {
                vsock,
                manager,
                mem,
                rxvq: MockSplitQueue::create(mem, GuestAddress(0), Q),
                txvq: MockSplitQueue::create(mem, GuestAddress(0x4000), Q),
                evq: MockSplitQueue::create(mem, GuestAddress(0x8000), Q),
                interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            }
        }

        /// The driver sets the queues up (with whatever chains are posted by then).
        fn activate(&mut self) {
            let queues = vec![
                self.rxvq.create_queue().unwrap(),
                self.txvq.create_queue().unwrap(),
                self.evq.create_queue().unwrap(),
            ];
            activate_with(&mut *lock(&self.vsock), self.mem, queues, &self.interrupt);
        }

        fn notify(&self, queue: usize) {
            lock(&self.vsock).queue_events()[queue].write(1).unwrap();
        }

        fn run_until(&mut self, mut done: impl FnMut(&Self) -> bool) {
            for _ in 0..200 {
                if done(self) {
                    return;
                }
                self.manager.run_with_timeout(10).unwrap();
            }
            panic!("the event loop did not get there");
        }
    }

    fn device(socket: std::path::PathBuf) -> Vsock {
        Vsock::new(VsockConfig { cid: 3, socket }).unwrap()
    }

    #[test]
    fn a_restored_device_sends_transport_reset_once_an_event_buffer_is_posted() {
        let dir = TempDir::new().unwrap();
        let mut device = device(dir.as_path().join("v.sock"));
        device.owe_transport_reset();
        let mut r = Rig::new(device);
        r.activate();
        // No event buffer yet: the event waits.
        r.manager.run_with_timeout(50).unwrap();
        assert!(lock(&r.vsock).transport_reset_owed());
        assert_eq!(r.evq.used().idx().load(), 0);

        r.mem
            .write_obj(0xffff_ffffu32, GuestAddress(0x30_0000))
            .unwrap();
        add_chain(&r.evq, 0, &[desc(0x30_0000, 4, VRING_DESC_F_WRITE)]);
        r.notify(EVQ);
        r.run_until(|r| r.evq.used().idx().load() == 1);
        let event: u32 = r.mem.read_obj(GuestAddress(0x30_0000)).unwrap();
        assert_eq!(event, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
        assert!(!lock(&r.vsock).transport_reset_owed(), "sent once");
        assert_eq!(r.interrupt.status(), VIRTIO_MMIO_INT_VRING);
    }

    #[test]
    fn after_a_restore_no_connection_reaches_the_driver_before_it_handled_the_reset() {
        let dir = TempDir::new().unwrap();
        let sock = dir.as_path().join("v.sock");
        let mut device = device(sock.clone());
        device.owe_transport_reset();
        device.muxer.set_next_local_port(FIRST_LOCAL_PORT + 7);
        let mut r = Rig::new(device);
        let w = VRING_DESC_F_WRITE;
        // The restored driver has RX and event buffers posted already.
        add_chain(
            &r.rxvq,
            0,
            &[desc(0x10_0000, 44, w), desc(0x10_1000, 4096, w)],
        );
        add_chain(&r.evq, 0, &[desc(0x30_0000, 4, w)]);
        r.activate();
        r.notify(EVQ);
        r.run_until(|r| r.evq.used().idx().load() == 1);
        // A host connection at once: its REQUEST waits for the driver to handle the reset.
        let mut host = UnixStream::connect(&sock).unwrap();
        host.write_all(b"CONNECT 5000\n").unwrap();
        r.run_until(|r| lock(&r.vsock).muxer().has_rx());
        r.notify(RXQ);
        for _ in 0..5 {
            r.manager.run_with_timeout(10).unwrap();
        }
        assert_eq!(
            r.rxvq.used().idx().load(),
            0,
            "held until the reset is handled"
        );
        // The driver handled the event and posts its buffer again.
        add_chain(&r.evq, 1, &[desc(0x30_1000, 4, w)]);
        r.notify(EVQ);
        r.run_until(|r| r.rxvq.used().idx().load() == 1);
        let mut raw = [0u8; HEADER_SIZE];
        r.mem.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
        let req = Header::from_bytes(&raw);
        assert_eq!(
            (req.op, req.src_port, req.dst_port),
            (op::REQUEST, FIRST_LOCAL_PORT + 7, 5000),
            "the port counter carries on from the snapshot"
        );
        let saved = crate::persist::Persist::save(&*lock(&r.vsock));
        assert_eq!(saved.next_local_port, FIRST_LOCAL_PORT + 8);
    }

    #[test]
    fn early_host_connection_reaches_the_driver_and_stalled_tx_resumes_on_rx() {
        let dir = TempDir::new().unwrap();
        let sock = dir.as_path().join("v.sock");
        let mut r = Rig::new(device(sock.clone()));

        // A host process asks for guest port 5000 before any driver is there.
        let mut host = UnixStream::connect(&sock).unwrap();
        host.write_all(b"CONNECT 5000\n").unwrap();
        r.run_until(|r| lock(&r.vsock).muxer().has_rx());

        let w = VRING_DESC_F_WRITE;
        add_chain(
            &r.rxvq,
            0,
            &[desc(0x10_0000, 44, w), desc(0x10_1000, 4096, w)],
        );
        r.activate();
        r.run_until(|r| r.rxvq.used().idx().load() == 1);
        assert_eq!(r.interrupt.status(), VIRTIO_MMIO_INT_VRING);
        let mut raw = [0u8; HEADER_SIZE];
        r.mem.read_slice(&mut raw, GuestAddress(0x10_0000)).unwrap();
        let req = Header::from_bytes(&raw);
        assert_eq!(
            (req.op, req.src_port, req.dst_port),
            (op::REQUEST, FIRST_LOCAL_PORT, 5000)
        );

        // The guest accepts; the host reads OK.
        let resp = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: FIRST_LOCAL_PORT,
            type_: TYPE_STREAM,
            op: op::RESPONSE,
            buf_alloc: 4096,
            ..Header::default()
        };
        r.mem
            .write_slice(&resp.to_bytes(), GuestAddress(0x20_0000))
            .unwrap();
        add_chain(&r.txvq, 0, &[desc(0x20_0000, 44, 0)]);
        r.notify(TXQ);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut ok = [0u8; 14];
        r.run_until(|r| r.txvq.used().idx().load() == 1);
        host.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, format!("OK {FIRST_LOCAL_PORT}\n").as_bytes());

        // Packets for unknown connections, more than the resets the device holds for a
        // guest with no RX buffers: TX stops there.
        let n = MAX_STRAY_RST as u16 + 20;
        let stray = Header {
            dst_port: 77,
            op: op::RW,
            ..resp
        };
        r.mem
            .write_slice(&stray.to_bytes(), GuestAddress(0x20_1000))
            .unwrap();
        for i in 0..n {
            add_chain(&r.txvq, 1 + i, &[desc(0x20_1000, 44, 0)]);
        }
        r.notify(TXQ);
        r.run_until(|r| r.txvq.used().idx().load() == 1 + MAX_STRAY_RST as u16);
        r.manager.run_with_timeout(10).unwrap();
        assert_eq!(r.txvq.used().idx().load(), 1 + MAX_STRAY_RST as u16);

        // The driver posts RX buffers and notifies RX only: TX resumes by itself.
        for i in 0..64u16 {
            let at = 0x30_0000 + u64::from(i) * 0x1000;
            add_chain(
                &r.rxvq,
                2 + 2 * i,
                &[desc(at, 44, w), desc(at + 0x100, 256, w)],
            );
        }
        r.notify(RXQ);
        r.run_until(|r| r.txvq.used().idx().load() == 1 + n);

        // A reset drops the established connection: the host reads end of file.
        lock(&r.vsock).reset();
        r.run_until(|r| lock(&r.vsock).muxer().connection_count() == 0);
        let mut b = [0u8; 1];
        assert_eq!(host.read(&mut b).unwrap(), 0);
    }
}
