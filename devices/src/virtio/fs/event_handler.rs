//! The event-loop side of virtio-fs: serves a queue whenever it is notified.

use event_manager::EventOps;

use super::Fs;
use crate::virtio::VirtioEvents;

impl VirtioEvents for Fs {
    fn queue_event(&mut self, index: usize, _ops: &mut EventOps) {
        self.process_queue(index);
    }
}

crate::virtio_event_subscriber!(Fs);
