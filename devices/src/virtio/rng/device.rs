//! The virtio-rng device: features, the [`VirtioDevice`] side the transport drives from
//! vCPU threads, and the queue work the event loop runs.

use std::io;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::{process_queue, QUEUE_SIZE};
use crate::virtio::{ActivateError, Interrupt, VirtioDevice, VIRTIO_MMIO_INT_VRING};

/// Why an entropy device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for the entropy device: {0}")]
    EventFd(#[source] io::Error),
}

/// The device's only queue.
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];

/// What activation hands the event loop.
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) queue: Queue,
    pub(super) interrupt: Arc<Interrupt>,
}

/// A virtio entropy device fed by the host's getrandom.
pub struct Rng {
    acked_features: u64,
    pub(super) queue_evts: [EventFd; 1],
    /// Written by `activate` (on a vCPU thread) so that the event loop starts watching
    /// the queue.
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<Active>,
    /// Whether the event loop watches `queue_evts` (it keeps doing so across resets).
    pub(super) queue_evts_registered: bool,
    scratch: Vec<u8>,
    bytes_served: u64,
}

impl Rng {
    /// Builds the device (not yet activated by any driver).
    pub fn new() -> Result<Rng, RngError> {
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK).map_err(RngError::EventFd);
        Ok(Rng {
            acked_features: 0,
            queue_evts: [eventfd()?],
            activate_evt: eventfd()?,
            active: None,
            queue_evts_registered: false,
            scratch: Vec::new(),
            bytes_served: 0,
        })
    }

    /// Bytes handed to the guest so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }

    /// Carries the counter over from a snapshot.
    pub fn set_bytes_served(&mut self, n: u64) {
        self.bytes_served = n;
    }

    /// Serves what the driver queued and interrupts it if anything completed.
    pub(super) fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        // Errs when the driver broke its own ring (see virtio-blk); interrupt anyway.
        let notify = process_queue(
            &active.mem,
            &mut active.queue,
            &mut self.scratch,
            &mut self.bytes_served,
        )
        .unwrap_or(true);
        if notify {
            // Fails only when an interrupt is already pending.
            let _ = active.interrupt.trigger(VIRTIO_MMIO_INT_VRING);
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // The entropy device has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [queue] = crate::virtio::expect_queues("virtio-rng", queues, &[])?;
        self.activate_evt.write(1).map_err(ActivateError::Notify)?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;

    use super::*;

    #[test]
    fn features_config_and_activation() {
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), &[256]);
        assert_eq!(rng.avail_features(), 1 << VIRTIO_F_VERSION_1);
        let mut b = [0xffu8; 4];
        rng.read_config(0, &mut b);
        assert_eq!(b, [0; 4]);
        rng.set_acked_features(u64::MAX);
        assert_eq!(rng.acked_features(), 1 << VIRTIO_F_VERSION_1);

        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let err = rng
            .activate(
                mem.clone(),
                vec![Queue::new(16).unwrap()],
                interrupt.clone(),
            )
            .unwrap_err();
        assert!(
            matches!(err, ActivateError::BadQueue { index: 0, .. }),
            "{err}"
        );
        assert!(rng
            .activate(mem.clone(), vec![], interrupt.clone())
            .is_err());
        let mut q = Queue::new(16).unwrap();
        q.set_ready(true);
        rng.activate(mem, vec![q], interrupt).unwrap();
        assert!(rng.is_activated());
        assert_eq!(rng.queue_states().len(), 1);
        rng.reset();
        assert!(!rng.is_activated());
        assert_eq!(rng.acked_features(), 0);
    }
}
