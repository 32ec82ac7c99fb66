//! The event-loop side of virtio-rng: picks up the queue when the transport activates the
//! device (on a vCPU thread), then serves the queue whenever its eventfd fires.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Rng;
use crate::virtio::VirtioDevice;

const ACTIVATE: u32 = 0;
const QUEUE: u32 = 1;

impl Rng {
    fn register_queue_event(&mut self, ops: &mut EventOps) {
        if !self.queue_evts_registered {
            self.queue_evts_registered =
                crate::virtio::watch_queue_events(ops, &self.queue_evts, QUEUE, "virtio-rng");
        }
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            eprintln!(
                "virtio-rng: cannot watch the activation event: {e}; the guest gets no entropy from it"
            );
        }
        // A device restored already active (snapshots) gets no activation event.
        if self.is_activated() {
            self.register_queue_event(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                // Only drains the counter: EAGAIN just means there was nothing left.
                let _ = self.activate_evt.read();
                if self.is_activated() {
                    self.register_queue_event(ops);
                    self.process_queue();
                }
            }
            _ => {
                let _ = self.queue_evts[0].read();
                // Ignored while the device is reset.
                self.process_queue();
            }
        }
    }
}

#[cfg(test)]
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
        lock(&rng)
            .activate(mem.clone(), vec![q], interrupt.clone())
            .unwrap();
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
