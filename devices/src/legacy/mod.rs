//! Legacy PC devices: the 8250 UART and the i8042 controller's reset line.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{Serial, SerialInput};

use vmm_sys_util::eventfd::EventFd;

/// A vm-superio interrupt/reset trigger that writes an eventfd (an irqfd, or the VMM's
/// exit event).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
