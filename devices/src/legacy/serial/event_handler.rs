//! Moves host input (stdin) into the UART's receive FIFO on the event loop, reading only
//! as much as the FIFO has room for and pausing while it is full.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::Serial;
use crate::bus::lock;

const INPUT: u32 = 0;
const SPACE: u32 = 1;

/// The event-loop side of the serial port.
#[derive(Debug)]
pub struct SerialInput {
    serial: Arc<Mutex<Serial>>,
    input: File,
    space_fd: RawFd,
    paused: bool,
    eof: bool,
}

impl SerialInput {
    /// Feeds `input` (stdin, a pipe) to `serial`.
    pub fn new(serial: Arc<Mutex<Serial>>, input: File) -> Self {
        let space_fd = lock(&serial).input_space_event().as_raw_fd();
        Self {
            serial,
            input,
            space_fd,
            paused: false,
            eof: false,
        }
    }

    fn input_events(&self) -> Events {
        Events::with_data(&self.input, INPUT, EventSet::IN)
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut serial = lock(&self.serial);
        let room = serial.input_capacity();
        if room == 0 {
            self.paused = true;
            let _ = ops.remove(self.input_events());
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                self.eof = true;
                let _ = ops.remove(self.input_events());
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.eof = true;
                let _ = ops.remove(self.input_events());
            }
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        // A stdin that epoll refuses (a regular file, /dev/null) simply gives no input.
        if ops.add(self.input_events()).is_err() {
            self.eof = true;
        }
        let _ = ops.add(Events::with_data_raw(self.space_fd, SPACE, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            INPUT => self.read_input(ops),
            SPACE => {
                let _ = lock(&self.serial).input_space_event().read();
                if self.paused && !self.eof {
                    self.paused = false;
                    let _ = ops.add(self.input_events());
                }
            }
            _ => {}
        }
    }
}
