//! Puts devices on the port I/O and MMIO buses, hands out MMIO windows and interrupt
//! lines to virtio devices (and tells the guest kernel about them on its command line),
//! and collects what must run on the event loop.

pub mod virtio;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use hearth_devices::bus::{Bus, BusDevice, BusError};
use hearth_devices::legacy::i8042::{I8042_PORT_BASE, I8042_PORT_LEN};
use hearth_devices::legacy::serial::persist::{SavedSerial, SerialArgs};
use hearth_devices::legacy::serial::{COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
use hearth_devices::legacy::{EventFdTrigger, Serial, SerialInput, I8042};
use hearth_devices::persist::Persist;
use kvm_ioctls::VmFd;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::*;
use crate::vcpu::{ExitReason, ExitSignal};
use log::{debug, info};

/// Errors setting up devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// KVM refused an irqfd or ioeventfd.
    #[error("cannot register {what} with KVM: {source}")]
    Register {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Two devices at one address.
    #[error("device placement: {0}")]
    Bus(#[from] BusError),
    /// The serial output file.
    #[error("cannot open serial output file {path}: {source}")]
    SerialOut {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The serial port.
    #[error(transparent)]
    Serial(#[from] hearth_devices::legacy::serial::SerialError),
    /// Out of interrupt lines or MMIO space.
    #[error("too many virtio devices: no interrupt line left (at most {} devices)", IRQ_MAX - VIRTIO_IRQ_BASE + 1)]
    NoIrq,
}

/// An event-loop subscriber, as the event manager holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// The guest writes its exit status to port 0x501.
struct ExitPort(Arc<ExitSignal>);

impl BusDevice for ExitPort {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, data: &[u8]) {
        if let Some(&status) = data.first() {
            self.0.request(ExitReason::GuestExit(status));
        }
    }
}

/// Firecracker's boot timer: the guest writes 123 when it has booted.
#[derive(Debug)]
pub struct BootMarker {
    /// When this VM started being built: the boot time is the VM's own, not the process's.
    pub started: std::time::Instant,
    /// Where the boot time is kept for the VM's owner.
    pub booted: Arc<std::sync::OnceLock<std::time::Duration>>,
}

impl BusDevice for BootMarker {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_MARKER_VALUE) {
            let took = self.started.elapsed();
            let _ = self.booted.set(took);
            // A timing: shown with -v; embedders read it from `RunningVm::boot_time`.
            debug!(
                "guest boot marker: booted {:.3} ms after start",
                took.as_secs_f64() * 1000.0
            );
        }
    }
}

/// Turns the i8042's reset line into the end of the VM, on the event loop.
struct ResetHandler {
    evt: EventFd,
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for ResetHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            info!("cannot watch the i8042 reset line: {e}; a guest reset will not end the VM");
        }
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.evt.read();
        debug!("i8042 reset");
        self.exit.request(ExitReason::Reset);
    }
}

/// The devices of one VM.
pub struct DeviceManager {
    /// Port I/O.
    pub pio: Bus,
    /// MMIO.
    pub mmio: Bus,
    /// What runs on the event loop.
    pub subscribers: Vec<Subscriber>,
    /// The UART (flushed at exit).
    pub serial: Option<Arc<Mutex<Serial>>>,
    /// `virtio_mmio.device=` entries for the kernel command line: (base, irq).
    pub virtio_slots: Vec<(u64, u32)>,
    /// The virtio devices, in slot order, for snapshots.
    pub virtio: Vec<virtio::VirtioSlot>,
    next_irq: u32,
}

impl std::fmt::Debug for DeviceManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceManager")
            .field("virtio_slots", &self.virtio_slots)
            .field("subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl DeviceManager {
    /// An empty device set.
    pub fn new() -> Self {
        Self {
            pio: Bus::new(),
            mmio: Bus::new(),
            subscribers: Vec::new(),
            serial: None,
            virtio_slots: Vec::new(),
            virtio: Vec::new(),
            next_irq: VIRTIO_IRQ_BASE,
        }
    }

    /// An eventfd registered with KVM to raise `gsi`.
    pub fn irqfd(vm: &VmFd, gsi: u32) -> Result<EventFd, DeviceError> {
        let evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        vm.register_irqfd(&evt, gsi)
            .map_err(|source| DeviceError::Register {
                what: format!("irqfd for GSI {gsi}"),
                source,
            })?;
        Ok(evt)
    }

    /// COM1, the i8042, the exit port and the boot marker.
    pub fn add_legacy(
        &mut self,
        vm: &VmFd,
        exit: &Arc<ExitSignal>,
        out: Box<dyn Write + Send>,
        serial_in: Option<File>,
        saved_serial: Option<&SavedSerial>,
        boot_marker: BootMarker,
    ) -> Result<(), DeviceError> {
        let irq = EventFdTrigger(Self::irqfd(vm, COM1_IRQ)?);
        let serial = Arc::new(Mutex::new(match saved_serial {
            Some(state) => Serial::restore(SerialArgs { irq, out }, state)?,
            None => Serial::new(irq, out)?,
        }));
        self.pio
            .insert(COM1_PORT_BASE, COM1_PORT_LEN, serial.clone())?;
        if let Some(input) = serial_in {
            debug!("serial input from fd {}", input.as_raw_fd());
            self.subscribers.push(Arc::new(Mutex::new(SerialInput::new(
                serial.clone(),
                input,
            ))));
        }
        self.serial = Some(serial);

        let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let i8042 = I8042::new(EventFdTrigger(
            reset_evt.try_clone().map_err(DeviceError::EventFd)?,
        ));
        self.pio
            .insert(I8042_PORT_BASE, I8042_PORT_LEN, Arc::new(Mutex::new(i8042)))?;
        self.subscribers.push(Arc::new(Mutex::new(ResetHandler {
            evt: reset_evt,
            exit: exit.clone(),
        })));

        self.pio
            .insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort(exit.clone()))))?;
        self.mmio
            .insert(BOOT_MARKER_ADDR, 0x1000, Arc::new(Mutex::new(boot_marker)))?;
        Ok(())
    }

    /// The next virtio-mmio window and interrupt line.
    pub fn allocate_virtio_slot(&mut self) -> Result<(u64, u32), DeviceError> {
        if self.next_irq > IRQ_MAX {
            return Err(DeviceError::NoIrq);
        }
        let index = u64::from(self.next_irq - VIRTIO_IRQ_BASE);
        let slot = (VIRTIO_MMIO_START + index * VIRTIO_MMIO_SIZE, self.next_irq);
        self.next_irq += 1;
        self.virtio_slots.push(slot);
        Ok(slot)
    }

    /// Flushes guest output.
    pub fn flush(&self) {
        if let Some(s) = &self.serial {
            hearth_devices::bus::lock(s).flush();
        }
    }
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}
