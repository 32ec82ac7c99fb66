//! virtio devices over the virtio-mmio transport (virtio 1.x, "modern").
//!
//! A device embeds a [`VirtioCommon`] (features, queues, their eventfds, activation) and
//! implements [`VirtioDevice`] (what the transport needs, provided over the common part:
//! one line, [`virtio_device!`](crate::virtio_device)) and [`VirtioEvents`] (what the
//! event loop calls; its `MutEventSubscriber` is one line too,
//! [`virtio_event_subscriber!`](crate::virtio_event_subscriber)). The transport
//! runs on vCPU threads and writes the driver's queue registers into the device's queues;
//! the event loop thread serves them once the driver set DRIVER_OK.

pub mod block;
pub mod device;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod queue;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

pub use device::{VirtioCommon, VirtioDevice, VirtioEvents};

/// Interrupt status bit: the device used buffers in a queue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration space changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device may use its queues.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The guest gave up on the device.
    pub const FAILED: u32 = 128;
}

/// The interrupt line of one virtio-mmio device: the InterruptStatus register it shares
/// with the transport, and the irqfd that raises its GSI in the guest.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irq_evt: EventFd,
}

impl Interrupt {
    /// A line that signals `irq_evt` (registered by the VMM as an irqfd).
    pub fn new(irq_evt: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq_evt,
        }
    }

    /// The eventfd the VMM registers with KVM as an irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq_evt
    }

    /// Raises the interrupt with the given InterruptStatus bits.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irq_evt.write(1)
    }

    /// The guest read InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The guest wrote InterruptACK.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the status bits directly (reset and snapshot restore).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a queue the device cannot use.
    #[error("virtio queue {index} is not usable: {reason}")]
    BadQueue {
        /// Which queue.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Telling the event loop about the activation failed.
    #[error("cannot signal the device's activation to the event loop: {0}")]
    Notify(#[source] std::io::Error),
    /// Restored or replaced queues that do not fit the device.
    #[error("the device has {expected} queue(s), but {given} were given")]
    QueueCount {
        /// The device's.
        expected: usize,
        /// Given.
        given: usize,
    },
}

/// Copies `data.len()` bytes of a device's configuration space from `offset`; bytes past
/// its end read as zero (the spec leaves them undefined; zero is what drivers expect).
pub fn read_config_space(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| space.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// Gives `device` these queues and activates it (tests drive devices without a transport).
#[cfg(test)]
pub(crate) fn activate_with<D: VirtioDevice + ?Sized>(
    device: &mut D,
    mem: &crate::GuestMemoryMmap,
    queues: Vec<virtio_queue::Queue>,
    interrupt: &std::sync::Arc<Interrupt>,
) {
    device.common_mut().set_queues(queues).unwrap();
    device.activate(mem.clone(), interrupt.clone()).unwrap();
}
