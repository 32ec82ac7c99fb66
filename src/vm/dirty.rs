//! Dirty-page tracking for diff snapshots: KVM logs the pages the guest writes
//! (`KVM_MEM_LOG_DIRTY_PAGES`, read and cleared with `KVM_GET_DIRTY_LOG`) and vm-memory's
//! bitmap the pages hearth's devices write through the guest memory API. Logging starts
//! with a VM's first snapshot (or its restore), so a VM never snapshotted pays nothing.

use std::ops::Deref;

use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::build::register_memory;
use super::{kvm_call, VmError};
use crate::memory::GuestMemoryMmap;
use crate::snapshot::layers::PAGE_SIZE;
use crate::snapshot::DirtyPages;

/// Turns KVM's dirty logging on for every memory slot (its log starts clean) and clears
/// vm-memory's bitmap.
pub(super) fn start_logging(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    register_memory(vm_fd, mem, KVM_MEM_LOG_DIRTY_PAGES)?;
    for r in mem.iter() {
        r.deref().bitmap().reset();
    }
    Ok(())
}

/// The pages written since the last call (or since logging started), by the guest or by
/// the devices; both logs are cleared.
pub(super) fn take(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<DirtyPages, VmError> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let mut dirty = DirtyPages::new(total);
    let mut first = 0u64;
    for (slot, r) in (0u32..).zip(mem.iter()) {
        let len = usize::try_from(r.len()).map_err(|_| VmError::KvmCall {
            what: "KVM_GET_DIRTY_LOG",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let kvm_log = vm_fd
            .get_dirty_log(slot, len)
            .map_err(kvm_call("KVM_GET_DIRTY_LOG"))?;
        dirty.add(first, &kvm_log);
        dirty.add(first, &r.deref().bitmap().get_and_reset());
        first += r.len() / PAGE_SIZE;
    }
    Ok(dirty)
}
