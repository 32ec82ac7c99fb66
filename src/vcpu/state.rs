//! A vCPU's state as KVM keeps it: captured for snapshots, put back on restore.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Everything KVM keeps about one vCPU, for snapshots.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// CPUID as set.
    pub cpuid: CpuId,
    /// Multiprocessing state (running, halted, waiting for SIPI).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state.
    pub xsave: kvm_xsave,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC.
    pub lapic: kvm_lapic_state,
    /// Model-specific registers.
    pub msrs: Msrs,
    /// Pending exceptions, interrupts, NMIs.
    pub events: kvm_vcpu_events,
}

/// Errors saving or restoring vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum VcpuStateError {
    /// A KVM call failed.
    #[error("vCPU state: {what} failed: {source}")]
    Kvm {
        /// The call.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM took fewer MSRs than saved.
    #[error("vCPU state: KVM accepted only {set} of {saved} saved MSRs")]
    Msrs {
        /// Accepted.
        set: usize,
        /// Saved.
        saved: usize,
    },
    /// Building an MSR list failed (more entries than KVM_MAX_MSR_ENTRIES).
    #[error("vCPU state: cannot build an MSR list of {0} entries")]
    MsrList(usize),
}

fn k(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError::Kvm { what, source }
}

/// Reads the MSRs in `indices` that this vCPU can give, skipping the ones KVM refuses.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Msrs, VcpuStateError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(255)];
        let entries: Vec<kvm_bindings::kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_bindings::kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| VcpuStateError::MsrList(entries.len()))?;
        let n = fd.get_msrs(&mut msrs).map_err(k("KVM_GET_MSRS"))?;
        saved.extend_from_slice(&msrs.as_slice()[..n]);
        // KVM stops at the first MSR it cannot read: skip that one.
        rest = &rest[(n + usize::from(n < chunk.len())).min(rest.len())..];
    }
    Msrs::from_entries(&saved).map_err(|_| VcpuStateError::MsrList(saved.len()))
}

/// Captures a vCPU's state (its thread is not in KVM_RUN).
pub fn save_state(fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, VcpuStateError> {
    Ok(VcpuState {
        cpuid: fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(k("KVM_GET_CPUID2"))?,
        mp_state: fd.get_mp_state().map_err(k("KVM_GET_MP_STATE"))?,
        regs: fd.get_regs().map_err(k("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(k("KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(k("KVM_GET_XSAVE"))?,
        xcrs: fd.get_xcrs().map_err(k("KVM_GET_XCRS"))?,
        debugregs: fd.get_debug_regs().map_err(k("KVM_GET_DEBUGREGS"))?,
        lapic: fd.get_lapic().map_err(k("KVM_GET_LAPIC"))?,
        msrs: read_msrs(fd, msr_indices)?,
        events: fd.get_vcpu_events().map_err(k("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Puts saved state back into a freshly created vCPU, in the order KVM needs (CPUID
/// first; LAPIC before MSRs that depend on it; events last).
pub fn restore_state(fd: &VcpuFd, s: &VcpuState) -> Result<(), VcpuStateError> {
    fd.set_cpuid2(&s.cpuid).map_err(k("KVM_SET_CPUID2"))?;
    fd.set_mp_state(s.mp_state).map_err(k("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(k("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(k("KVM_SET_SREGS"))?;
    // SAFETY: the buffer is a full 4 KiB kvm_xsave as KVM_GET_XSAVE produced it; hearth
    // never enables dynamic XSTATE features (AMX), so no state lies beyond 4 KiB.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(k("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(k("KVM_SET_XCRS"))?;
    fd.set_debug_regs(&s.debugregs)
        .map_err(k("KVM_SET_DEBUGREGS"))?;
    fd.set_lapic(&s.lapic).map_err(k("KVM_SET_LAPIC"))?;
    let set = fd.set_msrs(&s.msrs).map_err(k("KVM_SET_MSRS"))?;
    if set != s.msrs.as_slice().len() {
        return Err(VcpuStateError::Msrs {
            set,
            saved: s.msrs.as_slice().len(),
        });
    }
    fd.set_vcpu_events(&s.events)
        .map_err(k("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}
