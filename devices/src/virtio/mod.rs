//! virtio devices over the virtio-mmio transport (virtio 1.x, "modern").
//!
//! A device implements [`VirtioDevice`] (what the transport needs) and, to do its work,
//! `event_manager::MutEventSubscriber` (what the event loop calls). The transport runs on
//! vCPU threads; it hands the device its queues on activation, and the device's event
//! handler picks them up on the event loop thread.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

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
}

/// Has the event loop watch each queue eventfd, queue `i` with data `first_data + i`.
/// Returns whether all are watched; on failure says which device stops working (`what`).
pub fn watch_queue_events(
    ops: &mut event_manager::EventOps,
    evts: &[EventFd],
    first_data: u32,
    what: &str,
) -> bool {
    for (i, evt) in (0u32..).zip(evts) {
        let events = event_manager::Events::with_data(
            evt,
            first_data + i,
            vmm_sys_util::epoll::EventSet::IN,
        );
        if let Err(e) = ops.add(events) {
            eprintln!("{what}: cannot watch queue {i}: {e}; the device will not work");
            return false;
        }
    }
    true
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

/// The queues a device takes at activation: exactly `N`, each one ready except those
/// listed in `optional` (which a driver may leave out).
pub fn expect_queues<const N: usize>(
    device: &str,
    queues: Vec<Queue>,
    optional: &[usize],
) -> Result<[Queue; N], ActivateError> {
    let count = queues.len();
    let queues = <[Queue; N]>::try_from(queues).map_err(|_| ActivateError::BadQueue {
        index: count.min(N),
        reason: format!("{device} has {N} queue(s), but {count} were set up"),
    })?;
    for (index, q) in queues.iter().enumerate() {
        if !optional.contains(&index) && !q.ready() {
            return Err(ActivateError::BadQueue {
                index,
                reason: "the driver did not set QueueReady before DRIVER_OK".into(),
            });
        }
    }
    Ok(queues)
}

/// What a virtio device offers the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 block, 1 net, 4 rng, 19 vsock).
    fn device_type(&self) -> u32;
    /// The largest size of each of the device's queues; its length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers (including VIRTIO_F_VERSION_1).
    fn avail_features(&self) -> u64;
    /// The features the driver accepted (a subset of `avail_features`).
    fn set_acked_features(&mut self, features: u64);
    /// What `set_acked_features` last set.
    fn acked_features(&self) -> u64;
    /// The live state of the queues while activated (empty otherwise), for snapshots.
    fn queue_states(&self) -> Vec<virtio_queue::QueueState>;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// One eventfd per queue, registered by the VMM as an ioeventfd on QueueNotify with
    /// the queue index as datamatch, so that notifications skip the vCPU thread.
    fn queue_events(&self) -> &[EventFd];
    /// The driver set DRIVER_OK: start serving `queues`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Whether `activate` succeeded since the last reset.
    fn is_activated(&self) -> bool;
    /// The driver reset the device: drop the queues and go back to the initial state.
    fn reset(&mut self);
}
