//! The event-loop side of virtio-rng: serves the queue whenever it is notified.

use event_manager::{EventOps, Events};

use super::Rng;
use crate::virtio::device::DEVICE_EVENT_BASE;
use crate::virtio::{VirtioDevice, VirtioEvents};

/// The rate limiter's timer: a throttled queue may go on.
const RATE_LIMITER: u32 = DEVICE_EVENT_BASE;

impl VirtioEvents for Rng {
    fn queue_event(&mut self, _index: usize, _ops: &mut EventOps) {
        // A throttled queue waits for the timer.
        if !self.rate_limiter.is_blocked() {
            self.process_queue();
        }
    }

    fn init_sources(&mut self, ops: &mut EventOps) {
        crate::rate_limiter::watch_timer(&self.rate_limiter, RATE_LIMITER, ops, "virtio-rng");
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

crate::virtio_event_subscriber!(Rng);

#[cfg(test)]
// Test values (descriptor flags, lengths, statuses) are small constants.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::GuestMemoryMmap;
    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::bus::lock;
    use crate::virtio::rng::QUEUE_SIZE;
    use crate::virtio::VirtioDevice;
    use crate::virtio::{Interrupt, VIRTIO_MMIO_INT_VRING};

    #[test]
    fn activation_then_notification_serves_the_queue() {
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut manager = EventManager::<Arc<Mutex<Rng>>>::new().unwrap();
        manager.add_subscriber(rng.clone());
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let w = |addr| RawDescriptor::from(Descriptor::new(addr, 32, VRING_DESC_F_WRITE as u16, 0));
        // Queued before activation: served once the event loop picks the queue up.
        vq.add_desc_chains(&[w(0x2_0000)], 0).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        crate::virtio::activate_with(&mut *lock(&rng), &mem, vec![q], &interrupt);
        manager.run_with_timeout(100).unwrap();
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(interrupt.status(), VIRTIO_MMIO_INT_VRING);
        vq.add_desc_chains(&[w(0x3_0000)], 1).unwrap();
        lock(&rng).queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(lock(&rng).bytes_served(), 64);
        // Reset: notifications are drained and ignored.
        lock(&rng).reset();
        vq.add_desc_chains(&[w(0x4_0000)], 2).unwrap();
        lock(&rng).queue_events()[0].write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        assert_eq!(vq.used().idx().load(), 2);
    }
}
