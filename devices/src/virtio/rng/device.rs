//! The virtio-rng device: features and the queue work the event loop runs; the rest of
//! [`VirtioDevice`] is the common part's.

use std::io;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

use super::{process_queue, process_queue_limited, QUEUE_SIZE};
use crate::rate_limiter::{
    LimiterSlot, RateLimited, RateLimiter, RateLimiterConfig, RateLimiterError,
};
use crate::virtio::VirtioCommon;

/// Why an entropy device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd for the entropy device: {0}")]
    EventFd(#[source] io::Error),
    /// The rate limiter's timer could not be made.
    #[error("entropy device: {0}")]
    RateLimiter(#[from] RateLimiterError),
}

/// A virtio entropy device fed by the host's getrandom.
#[derive(Debug)]
pub struct Rng {
    common: VirtioCommon,
    scratch: Vec<u8>,
    bytes_served: u64,
    pub(super) rate_limiter: RateLimiter,
}

impl Rng {
    /// Builds the device (not yet activated by any driver).
    pub fn new() -> Result<Rng, RngError> {
        // No configuration space.
        let common = VirtioCommon::new(
            VIRTIO_ID_RNG,
            1u64 << VIRTIO_F_VERSION_1,
            &[QUEUE_SIZE],
            Vec::new(),
        )
        .map_err(RngError::EventFd)?;
        Ok(Rng {
            common,
            scratch: Vec::new(),
            bytes_served: 0,
            rate_limiter: RateLimiter::new(&RateLimiterConfig::default())?,
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
        let (scratch, served) = (&mut self.scratch, &mut self.bytes_served);
        let limiter = &mut self.rate_limiter;
        // Errs when the driver broke its own ring (see `drain_queue`); interrupt anyway.
        self.common.serve_queue(0, |mem, queue| {
            match limiter.is_unlimited() {
                true => process_queue(mem, queue, scratch, served),
                false => process_queue_limited(mem, queue, scratch, served, limiter),
            }
            .unwrap_or(true)
        });
    }
}

impl RateLimited for Rng {
    fn set_rate_limiter(&mut self, _slot: LimiterSlot, config: &RateLimiterConfig) -> bool {
        self.rate_limiter.update(config);
        true
    }
}

crate::virtio_device!(Rng);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::GuestMemoryMmap;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::VirtioDevice;
    use crate::virtio::{ActivateError, Interrupt};

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
        rng.common_mut()
            .set_queues(vec![Queue::new(16).unwrap()])
            .unwrap();
        let err = rng.activate(mem.clone(), interrupt.clone()).unwrap_err();
        assert!(
            matches!(err, ActivateError::BadQueue { index: 0, .. }),
            "{err}"
        );
        assert!(rng.common_mut().set_queues(vec![]).is_err());
        rng.common_mut().queues_mut()[0].set_ready(true);
        rng.activate(mem, interrupt).unwrap();
        assert!(rng.is_activated());
        assert_eq!(rng.common().queues().len(), 1);
        rng.reset();
        assert!(!rng.is_activated());
        assert_eq!(rng.acked_features(), 0);
    }
}
