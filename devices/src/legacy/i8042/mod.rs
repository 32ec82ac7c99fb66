//! The i8042 keyboard controller, reduced to what a VMM needs: the CPU reset command
//! (0xFE written to port 0x64), which Linux uses with `reboot=k`.

use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// First port of the controller (0x60); the command port is at offset 4 (0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

const STATUS_OFFSET: u64 = 4;
const STATUS_OUTPUT_FULL: u8 = 0x01;

/// An i8042 whose reset line writes `reset_evt`.
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller that signals `reset` when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = match offset {
                // Status: output buffer always "full" and input buffer empty. Linux's
                // driver then drains 16 bytes, decides there is no controller and gives
                // up at once, instead of timing out on commands this model ignores;
                // `reboot=k` only waits for the input buffer to be empty.
                STATUS_OFFSET => STATUS_OUTPUT_FULL,
                // Its window is five ports wide, so the offset fits.
                _ => self.inner.read(u8::try_from(offset).unwrap_or(u8::MAX)),
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            // A failed eventfd write leaves the guest spinning on its reset; nothing
            // better to do than say so.
            if let Err(e) = self.inner.write(u8::try_from(offset).unwrap_or(u8::MAX), b) {
                log::error!("i8042: cannot signal the guest's reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_signals_only_on_0xfe_at_0x64() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xaa]);
        assert!(evt.read().is_err(), "no reset yet");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut status = [0u8];
        dev.read(4, &mut status);
        assert_eq!(
            status[0] & 0x02,
            0,
            "input buffer empty: reset can be written"
        );
    }
}
