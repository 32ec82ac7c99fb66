//! The event-loop side of virtio-blk: picks up the queue when the transport activates the
//! device (on a vCPU thread), then serves the queue whenever its eventfd fires.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Block;
use crate::virtio::VirtioDevice;

const ACTIVATE: u32 = 0;
/// Queue `i` is watched with data `QUEUE + i`.
const QUEUE: u32 = 1;

impl Block {
    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if !self.queue_evts_registered {
            self.queue_evts_registered =
                crate::virtio::watch_queue_events(ops, &self.queue_evts, QUEUE, "virtio-blk");
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            eprintln!(
                "virtio-blk: cannot watch the activation event: {e}; the disk will not serve I/O"
            );
        }
        // A device restored already active (snapshots) gets no activation event.
        if self.is_activated() {
            self.register_queue_events(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                // Only drains the counter: EAGAIN just means there was nothing left.
                let _ = self.activate_evt.read();
                if self.is_activated() {
                    self.register_queue_events(ops);
                    // Serve whatever the driver queued before the queue was watched.
                    self.process_queue();
                }
            }
            data => {
                let index = (data - QUEUE) as usize;
                if let Some(evt) = self.queue_evts.get(index) {
                    let _ = evt.read();
                }
                // Notifications while the device is reset are dropped: the driver has to
                // set it up again before it may use the queue.
                self.process_queue();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::bus::lock;
    use crate::virtio::block::test_utils::{add_chain, desc, guest_memory, write_header};
    use crate::virtio::block::{BlockConfig, QUEUE_SIZE};
    use crate::virtio::{Interrupt, VIRTIO_MMIO_INT_VRING};

    #[test]
    fn activation_then_notification_serves_the_queue() {
        let file = TempFile::new().unwrap();
        file.as_file().write_all(&[0x42; 1024]).unwrap();
        let block = Arc::new(Mutex::new(
            Block::new(BlockConfig {
                path: file.as_path().to_path_buf(),
                read_only: true,
                id: None,
            })
            .unwrap(),
        ));
        let mut manager = EventManager::<Arc<Mutex<Block>>>::new().unwrap();
        manager.add_subscriber(block.clone());

        let mem = guest_memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));

        // Before activation a notification is drained and ignored.
        lock(&block).queue_events()[0].write(1).unwrap();
        assert_eq!(
            manager.run_with_timeout(0).unwrap(),
            0,
            "queue not watched yet"
        );

        // A request queued before activation is served once the event loop picks it up.
        write_header(&mem, 0x2_0000, VIRTIO_BLK_T_IN, 1);
        add_chain(
            &vq,
            0,
            &[
                desc(0x2_0000, 16, 0),
                desc(0x3_0000, 512, VRING_DESC_F_WRITE),
                desc(0x4_0000, 1, VRING_DESC_F_WRITE),
            ],
        );
        let q: Queue = vq.create_queue().unwrap();
        lock(&block)
            .activate(mem.clone(), vec![q], interrupt.clone())
            .unwrap();
        assert!(manager.run_with_timeout(100).unwrap() >= 1);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(interrupt.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(interrupt.irq_evt().read().unwrap(), 1);
        let status: u8 = mem.read_obj(GuestAddress(0x4_0000)).unwrap();
        assert_eq!(status, VIRTIO_BLK_S_OK as u8);

        // Later requests come through the queue eventfd.
        add_chain(
            &vq,
            3,
            &[
                desc(0x2_0000, 16, 0),
                desc(0x3_0000, 512, VRING_DESC_F_WRITE),
                desc(0x4_0000, 1, VRING_DESC_F_WRITE),
            ],
        );
        lock(&block).queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(vq.used().ring().ref_at(1).unwrap().load().len(), 513);

        // After a reset, notifications are drained and ignored (and do not spin).
        lock(&block).reset();
        add_chain(
            &vq,
            6,
            &[desc(0x2_0000, 16, 0), desc(0x4_0000, 1, VRING_DESC_F_WRITE)],
        );
        lock(&block).queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        assert_eq!(vq.used().idx().load(), 2);

        // Activating again serves the pending request without re-registering the queue.
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_next_avail(2);
        q.set_next_used(2);
        lock(&block)
            .activate(mem.clone(), vec![q], interrupt)
            .unwrap();
        manager.run_with_timeout(100).unwrap();
        assert_eq!(vq.used().idx().load(), 3);
    }
}
