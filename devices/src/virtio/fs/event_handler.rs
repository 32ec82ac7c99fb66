//! The event-loop side of virtio-fs: picks up the queues when the transport activates the
//! device (on a vCPU thread), then serves a queue whenever its eventfd fires.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Fs;
use crate::virtio::VirtioDevice;

const ACTIVATE: u32 = 0;
const FIRST_QUEUE: u32 = 1;

impl Fs {
    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if !self.queue_evts_registered {
            self.queue_evts_registered =
                crate::virtio::watch_queue_events(ops, &self.queue_evts, FIRST_QUEUE, "virtio-fs");
        }
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            log::error!(
                "virtio-fs: cannot watch the activation event: {e}; the share will not work"
            );
        }
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
                    for index in 0..self.queue_evts.len() {
                        self.process_queue(index);
                    }
                }
            }
            data => {
                let index = (data - FIRST_QUEUE) as usize;
                if let Some(evt) = self.queue_evts.get(index) {
                    let _ = evt.read();
                }
                self.process_queue(index);
            }
        }
    }
}
