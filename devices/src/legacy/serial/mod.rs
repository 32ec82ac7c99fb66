//! The 8250 UART at 0x3f8 (COM1), from vm-superio, with guest input from a host file
//! descriptor served on the event loop.

mod event_handler;
pub mod persist;

pub use event_handler::SerialInput;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use super::EventFdTrigger;
use crate::bus::BusDevice;

/// COM1's first port.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// The UART has eight registers.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Tells the input handler that the guest drained the receive FIFO, so reading from the
/// host can resume (input is never read faster than the guest takes it: nothing is lost),
/// and counts the bytes each way for metrics.
#[derive(Debug)]
pub struct InputSpace {
    space: EventFd,
    read: AtomicU64,
    written: AtomicU64,
    lost: AtomicU64,
}

impl InputSpace {
    fn new(space: EventFd) -> Self {
        Self {
            space,
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }
}

impl SerialEvents for InputSpace {
    fn buffer_read(&self) {
        self.read.fetch_add(1, Ordering::Relaxed);
    }
    fn out_byte(&self) {
        self.written.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {
        // A lost wakeup only delays input until the next byte the guest reads.
        let _ = self.space.write(1);
    }
}

/// What the UART counted (Firecracker's `uart` metrics), since it was made or restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UartCounters {
    /// Bytes the guest read from the receive buffer.
    pub read_count: u64,
    /// Bytes the guest wrote that reached the output.
    pub write_count: u64,
    /// Bytes the guest wrote that the output refused.
    pub missed_write_count: u64,
}

type Uart = vm_superio::Serial<EventFdTrigger, InputSpace, Box<dyn Write + Send>>;

/// A UART whose output goes to `out` and whose interrupt writes an irqfd.
pub struct Serial {
    uart: Uart,
    input_space: EventFd,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("input_space", &self.input_space)
            .finish_non_exhaustive()
    }
}

/// Errors from building the serial port.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for the serial port: {0}")]
    EventFd(#[source] std::io::Error),
    /// Saved state that vm-superio refuses.
    #[error("cannot restore the serial port: {0}")]
    Restore(String),
}

impl Serial {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Result<Self, SerialError> {
        let input_space = Self::eventfd()?;
        let events = InputSpace::new(input_space.try_clone().map_err(SerialError::EventFd)?);
        Ok(Self {
            uart: vm_superio::Serial::with_events(irq, events, out),
            input_space,
        })
    }

    fn eventfd() -> Result<EventFd, SerialError> {
        EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Signalled when the guest empties the receive FIFO.
    pub fn input_space_event(&self) -> &EventFd {
        &self.input_space
    }

    /// What the UART counted so far.
    pub fn counters(&self) -> UartCounters {
        let e = self.uart.events();
        UartCounters {
            read_count: e.read.load(Ordering::Relaxed),
            write_count: e.written.load(Ordering::Relaxed),
            missed_write_count: e.lost.load(Ordering::Relaxed),
        }
    }

    /// Flushes guest output written so far.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            // Lost output (a closed stdout) must not stop the guest.
            let _ = self.uart.write(off, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_writer_and_input_reaches_guest() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut s = Serial::new(
            EventFdTrigger(irq.try_clone().unwrap()),
            Box::new(sink.clone()),
        )
        .unwrap();
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");

        assert_eq!(s.enqueue_input(b"x"), 1);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        s.read(0, &mut rbr);
        assert_eq!(rbr[0], b'x');
        assert_eq!(s.input_space_event().read().unwrap(), 1, "FIFO drained");
    }
}
