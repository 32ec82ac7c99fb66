//! Snapshot state of virtio devices behind the virtio-mmio transport: what the driver
//! negotiated, the queue registers and ring positions, the interrupt status. Device
//! models add their own state next to their code (e.g. `block/persist.rs`).

use std::sync::{Arc, Mutex};

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

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

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_mmio as regs;
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::bus::BusDevice;
    use crate::virtio::rng::Rng;
    use crate::virtio::status::{ACKNOWLEDGE, DRIVER, FEATURES_OK};

    fn transport(mem: &GuestMemoryMmap, state: Option<&TransportState>) -> MmioTransport {
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Rng::new().unwrap()));
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        match state {
            None => MmioTransport::new(mem.clone(), device, interrupt),
            Some(state) => MmioTransport::restore(
                TransportArgs {
                    mem: mem.clone(),
                    device,
                    interrupt,
                },
                state,
            )
            .unwrap(),
        }
    }

    fn w(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    /// Brings the device up as a driver does, with its ring at `base`.
    fn bring_up(t: &mut MmioTransport, base: u32, driver_ok: bool) {
        w(t, regs::VIRTIO_MMIO_STATUS, ACKNOWLEDGE | DRIVER);
        w(t, regs::VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        w(t, regs::VIRTIO_MMIO_DRIVER_FEATURES, 1); // VIRTIO_F_VERSION_1
        w(
            t,
            regs::VIRTIO_MMIO_STATUS,
            ACKNOWLEDGE | DRIVER | FEATURES_OK,
        );
        w(t, regs::VIRTIO_MMIO_QUEUE_SEL, 0);
        w(t, regs::VIRTIO_MMIO_QUEUE_NUM, 16);
        w(t, regs::VIRTIO_MMIO_QUEUE_DESC_LOW, base);
        w(t, regs::VIRTIO_MMIO_QUEUE_AVAIL_LOW, base + 0x1000);
        w(t, regs::VIRTIO_MMIO_QUEUE_USED_LOW, base + 0x2000);
        w(t, regs::VIRTIO_MMIO_QUEUE_READY, 1);
        if driver_ok {
            w(
                t,
                regs::VIRTIO_MMIO_STATUS,
                ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK,
            );
        }
    }

    #[test]
    fn each_queue_is_saved_once_and_restored_into_the_device() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut t = transport(&mem, None);
        bring_up(&mut t, 0x1_0000, true);
        assert!(lock(t.device()).is_activated());
        let saved = t.save();
        assert_eq!(saved.queues.len(), 1, "one copy of the device's one queue");
        assert_eq!(saved.acked_features, 1 << 32);
        assert_eq!(saved.queues[0].desc_table, 0x1_0000);

        let restored = transport(&mem, Some(&saved));
        let device = lock(restored.device());
        assert!(
            device.is_activated(),
            "active again, serving the same rings"
        );
        assert_eq!(device.acked_features(), 1 << 32);
        let q = &device.common().queues()[0];
        assert_eq!(
            (q.ready(), q.size(), q.desc_table(), q.used_ring()),
            (true, 16, 0x1_0000, 0x1_2000)
        );
        // The restored device looks at its queue once, for what was pending.
        assert_eq!(device.queue_events()[0].read().unwrap(), 1);
        drop(device);
        assert_eq!(restored.save(), saved);
    }

    #[test]
    fn a_device_not_yet_started_is_restored_stopped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut t = transport(&mem, None);
        bring_up(&mut t, 0x1_0000, false);
        let saved = t.save();
        let restored = transport(&mem, Some(&saved));
        let device = lock(restored.device());
        assert!(!device.is_activated());
        assert!(
            device.common().queues()[0].ready(),
            "the driver's setup is kept"
        );

        // Rings outside guest memory: activation failed, and stays failed.
        let mut t = transport(&mem, None);
        bring_up(&mut t, 0x20_0000, true);
        assert!(!lock(t.device()).is_activated());
        let restored = transport(&mem, Some(&t.save()));
        assert!(!lock(restored.device()).is_activated());
    }
}
