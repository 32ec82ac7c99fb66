//! The event-loop side of virtio-vsock: the listening socket is watched from the start
//! (host processes may connect before the guest driver is up), the queues once the
//! transport activates the device, and each connection's socket for what the muxer
//! wants from it.

use std::os::fd::RawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::muxer::EpollChange;
use super::{Vsock, RXQ, TXQ};
use crate::virtio::VirtioDevice;

const ACTIVATE: u32 = 0;
/// Queue `i` is watched with data `QUEUE + i`.
const QUEUE: u32 = 1;
const LISTENER: u32 = 4;
const STREAM: u32 = 5;

impl Vsock {
    fn register_queue_events(&mut self, ops: &mut EventOps) {
        if self.queue_evts_registered {
            return;
        }
        for (i, evt) in (0u32..).zip(self.queue_evts.iter()) {
            if let Err(e) = ops.add(Events::with_data(evt, QUEUE + i, EventSet::IN)) {
                eprintln!("virtio-vsock: cannot watch queue {i}: {e}; vsock will not work");
                return;
            }
        }
        self.queue_evts_registered = true;
    }

    /// Applies what the muxer wants watched. A failure leaves that one socket unwatched:
    /// its connection stalls, the others carry on.
    fn apply_epoll_changes(&mut self, ops: &mut EventOps) {
        for change in self.muxer.take_epoll_changes() {
            let result = match &change {
                EpollChange::Add(fd, set) => ops.add(Events::with_data_raw(*fd, STREAM, *set)),
                EpollChange::Modify(fd, set) => {
                    ops.modify(Events::with_data_raw(*fd, STREAM, *set))
                }
                EpollChange::Remove(fd, _) => {
                    ops.remove(Events::with_data_raw(*fd, STREAM, EventSet::empty()))
                }
            };
            if let Err(e) = result {
                eprintln!("virtio-vsock: cannot update the watch of a connection: {e}");
            }
            // A removed socket is closed only now, after epoll forgot it.
            drop(change);
        }
    }

    fn on_stream(&mut self, fd: RawFd, events: EventSet) {
        self.muxer.on_stream_event(fd, events);
        self.process_queues(false);
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let listener = self.muxer.listener_fd();
        if let Err(e) = ops.add(Events::with_data_raw(listener, LISTENER, EventSet::IN)) {
            eprintln!(
                "virtio-vsock: cannot watch {}: {e}; host connections will not be accepted",
                self.muxer.path().display()
            );
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            eprintln!("virtio-vsock: cannot watch the activation event: {e}; vsock will not work");
        }
        if self.is_activated() {
            self.register_queue_events(ops);
        }
        self.apply_epoll_changes(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                // Only drains the counter: EAGAIN just means there was nothing left.
                let _ = self.activate_evt.read();
                if self.is_activated() {
                    self.register_queue_events(ops);
                    // Serve what the driver queued, and what host processes asked for,
                    // before the queues were watched.
                    self.process_queues(true);
                }
            }
            LISTENER => {
                self.muxer.accept();
            }
            STREAM => self.on_stream(events.fd(), events.event_set()),
            data => {
                let index = (data - QUEUE) as usize;
                if let Some(evt) = self.queue_evts.get(index) {
                    let _ = evt.read();
                }
                // Notifications while the device is reset are dropped: the driver has to
                // set it up again first. The event queue needs no service.
                match index {
                    TXQ => self.process_queues(true),
                    RXQ => self.process_queues(false),
                    _ => {}
                }
            }
        }
        self.apply_epoll_changes(ops);
    }
}
