//! Changing a device's rate limits while the VM runs (Firecracker's `PATCH /drives`,
//! `/network-interfaces` and `/entropy` with a `rate_limiter`): `RunningVm` and
//! `VmHandle` call this under the control lock.

use hearth_devices::bus::lock;
use hearth_devices::rate_limiter::{LimiterSlot, RateLimiterConfig};

use super::running::Control;
use super::VmError;
use crate::rate_limit::RateLimitTarget;

impl Control {
    /// Puts new limits on a device now (a default config removes them). A throttled
    /// queue picks them up when its timer next fires, within 100 ms. The VM's
    /// configuration follows, so a snapshot keeps them.
    pub(super) fn set_rate_limiter(
        &mut self,
        target: RateLimitTarget,
        config: RateLimiterConfig,
    ) -> Result<(), VmError> {
        self.check_running()?;
        let c = &mut self.core.config;
        let (disks, nets) = (c.disks.len(), c.net.len());
        // Slots are filled disks first, then network devices, then the entropy device.
        let (index, slot) = match target {
            RateLimitTarget::Disk(i) if i < disks => (i, LimiterSlot::Device),
            RateLimitTarget::NetRx(i) if i < nets => (disks + i, LimiterSlot::Rx),
            RateLimitTarget::NetTx(i) if i < nets => (disks + i, LimiterSlot::Tx),
            RateLimitTarget::Rng if c.rng => (disks + nets, LimiterSlot::Device),
            _ => return Err(VmError::NoSuchDevice(target)),
        };
        let device = &self.core.devices.virtio[index].device;
        if !lock(device).set_rate_limiter(slot, &config) {
            return Err(VmError::NoSuchDevice(target));
        }
        let kept = Some(config).filter(|c| !c.is_unlimited());
        match target {
            RateLimitTarget::Disk(i) => c.disks[i].rate_limiter = kept,
            RateLimitTarget::NetRx(i) => c.net[i].rx_rate_limiter = kept,
            RateLimitTarget::NetTx(i) => c.net[i].tx_rate_limiter = kept,
            RateLimitTarget::Rng => c.rng_rate_limiter = kept,
        }
        Ok(())
    }
}
