//! Snapshot state of virtio devices behind the virtio-mmio transport: what the driver
//! negotiated, the queue registers and ring positions, the interrupt status. Device
//! models add their own state next to their code (e.g. `block/persist.rs`).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;

use super::mmio::{MmioState, MmioTransport};
use super::status::{DEVICE_NEEDS_RESET, DRIVER_OK};
use super::{ActivateError, Interrupt, VirtioDevice};
use crate::bus::lock;
use crate::persist::Persist;

/// A virtqueue's registers and ring positions (`virtio_queue::QueueState`, serializable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Next available-ring entry the device will take.
    pub next_avail: u16,
    /// Next used-ring entry the device will fill.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX negotiated.
    pub event_idx_enabled: bool,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl From<QueueState> for SavedQueue {
    fn from(s: QueueState) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(s: SavedQueue) -> Self {
        Self {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// Everything the transport and the common part of the device need to carry on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// The transport's registers.
    pub mmio: MmioState,
    /// Features the driver accepted (or is accepting, before FEATURES_OK).
    pub acked_features: u64,
    /// The device's queues: registers and, once active, ring positions.
    pub queues: Vec<SavedQueue>,
    /// InterruptStatus.
    pub interrupt_status: u32,
}

/// Why a transport could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A saved queue does not make a valid queue.
    #[error("saved virtio queue {index} is invalid: {reason}")]
    Queue {
        /// Which.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The saved state does not fit this device.
    #[error("saved virtio state has {saved} queues, the device has {expected}")]
    QueueCount {
        /// Saved.
        saved: usize,
        /// The device's.
        expected: usize,
    },
    /// Re-activating the device failed.
    #[error("cannot re-activate the restored virtio device: {0}")]
    Activate(#[from] ActivateError),
}

fn to_queues(saved: &[SavedQueue]) -> Result<Vec<Queue>, PersistError> {
    saved
        .iter()
        .enumerate()
        .map(|(index, s)| {
            Queue::try_from(QueueState::from(*s)).map_err(|e| PersistError::Queue {
                index,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// What restoring a transport needs besides its state.
#[derive(Clone)]
pub struct TransportArgs {
    /// Guest memory (already restored).
    pub mem: GuestMemoryMmap,
    /// The device, rebuilt by its own `Persist`.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// Its interrupt line (a fresh irqfd).
    pub interrupt: Arc<Interrupt>,
}

impl std::fmt::Debug for TransportArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportArgs")
            .field("interrupt", &self.interrupt)
            .finish_non_exhaustive()
    }
}

impl Persist for MmioTransport {
    type State = TransportState;
    type Args = TransportArgs;
    type Error = PersistError;

    fn save(&self) -> TransportState {
        let device = lock(self.device());
        TransportState {
            mmio: self.state().clone(),
            acked_features: device.acked_features(),
            queues: device
                .common()
                .queues()
                .iter()
                .map(|q| q.state().into())
                .collect(),
            interrupt_status: self.interrupt().status(),
        }
    }

    fn restore(args: TransportArgs, state: &TransportState) -> Result<Self, PersistError> {
        {
            let mut device = lock(&args.device);
            let expected = device.common().queues().len();
            if state.queues.len() != expected {
                return Err(PersistError::QueueCount {
                    saved: state.queues.len(),
                    expected,
                });
            }
            device.common_mut().set_queues(to_queues(&state.queues)?)?;
            device.set_acked_features(state.acked_features);
            // The device was serving its queues unless its activation had failed.
            let status = state.mmio.device_status;
            if status & DRIVER_OK != 0 && status & DEVICE_NEEDS_RESET == 0 {
                // Activation also makes the device look at its queues once, which serves
                // any notification that was pending when the snapshot was taken.
                device.activate(args.mem.clone(), args.interrupt.clone())?;
            }
        }
        args.interrupt.set_status(state.interrupt_status);
        Ok(MmioTransport::from_parts(
            args.mem,
            args.device,
            args.interrupt,
            state.mmio.clone(),
        ))
    }
}
