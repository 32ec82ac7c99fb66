//! Snapshot state of the UART: vm-superio's registers and receive FIFO.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;

use super::{InputSpace, Serial, SerialError};
use crate::legacy::EventFdTrigger;
use crate::persist::Persist;

/// vm-superio's `SerialState`, serializable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSerial {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

/// What restoring the UART needs besides its state.
pub struct SerialArgs {
    /// A fresh irqfd for its interrupt line.
    pub irq: EventFdTrigger,
    /// Where guest output goes now.
    pub out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for SerialArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialArgs").finish_non_exhaustive()
    }
}

impl Persist for Serial {
    type State = SavedSerial;
    type Args = SerialArgs;
    type Error = SerialError;

    fn save(&self) -> SavedSerial {
        let s = self.uart.state();
        SavedSerial {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    fn restore(args: SerialArgs, s: &SavedSerial) -> Result<Serial, SerialError> {
        let state = SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let input_space = Serial::eventfd()?;
        let events = InputSpace::new(input_space.try_clone().map_err(SerialError::EventFd)?);
        let uart = vm_superio::Serial::from_state(&state, args.irq, events, args.out)
            .map_err(|e| SerialError::Restore(e.to_string()))?;
        Ok(Serial { uart, input_space })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn irq() -> EventFdTrigger {
        EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    #[test]
    fn registers_and_fifo_survive_a_round_trip() {
        let mut s = Serial::new(irq(), Box::new(std::io::sink())).unwrap();
        use crate::bus::BusDevice;
        s.write(7, &[0x5a]); // scratch
        s.write(1, &[0x01]); // IER: receive interrupts
        s.enqueue_input(b"abc");
        let saved = s.save();
        assert_eq!(saved.scratch, 0x5a);
        assert_eq!(saved.in_buffer, b"abc");
        let mut r = Serial::restore(
            SerialArgs {
                irq: irq(),
                out: Box::new(std::io::sink()),
            },
            &saved,
        )
        .unwrap();
        assert_eq!(r.save(), saved);
        let mut b = [0u8];
        r.read(0, &mut b);
        assert_eq!(b[0], b'a');
        let bad = SavedSerial {
            in_buffer: vec![0; 1000],
            ..saved
        };
        assert!(Serial::restore(
            SerialArgs {
                irq: irq(),
                out: Box::new(std::io::sink())
            },
            &bad
        )
        .is_err());
    }
}
