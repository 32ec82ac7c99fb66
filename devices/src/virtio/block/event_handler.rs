//! The event-loop side of virtio-blk: serves the queue whenever it is notified.

use event_manager::{EventOps, Events};

use super::Block;
use crate::virtio::device::DEVICE_EVENT_BASE;
use crate::virtio::{VirtioDevice, VirtioEvents};

/// The rate limiter's timer: a throttled queue may go on.
const RATE_LIMITER: u32 = DEVICE_EVENT_BASE;

impl VirtioEvents for Block {
    fn queue_event(&mut self, _index: usize, _ops: &mut EventOps) {
        // Notifications while the device is reset never get here: the driver has to set
        // it up again before it may use the queue. A throttled queue waits for the timer.
        if !self.rate_limiter.is_blocked() {
            self.process_queue();
        }
    }

    fn init_sources(&mut self, ops: &mut EventOps) {
        crate::rate_limiter::watch_timer(&self.rate_limiter, RATE_LIMITER, ops, "virtio-blk");
    }

    fn source_event(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == RATE_LIMITER
            && self.rate_limiter.on_timer().is_ok()
            && self.is_activated()
        {
            self.process_queue();
        }
    }
}

crate::virtio_event_subscriber!(Block);

#[cfg(test)]
// Test values (descriptor flags, lengths, statuses) are small constants.
#[allow(clippy::cast_possible_truncation)]
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
    use crate::virtio::{activate_with, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};

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
        assert_eq!(manager.run_with_timeout(0).unwrap(), 1);
        assert_eq!(
            manager.run_with_timeout(0).unwrap(),
            0,
            "drained, and nothing else to do"
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
        activate_with(&mut *lock(&block), &mem, vec![q], &interrupt);
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
        activate_with(&mut *lock(&block), &mem, vec![q], &interrupt);
        manager.run_with_timeout(100).unwrap();
        assert_eq!(vq.used().idx().load(), 3);
    }
}
