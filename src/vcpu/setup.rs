//! A fresh vCPU's boot state: CPUID, boot MSRs, segments and page tables, entry
//! registers, FPU and the LAPIC's LINT pins.

use crate::memory::GuestMemoryMmap;
use kvm_bindings::CpuId;
use kvm_ioctls::VcpuFd;

use crate::arch::regs::{self, EntryMode};
use crate::arch::{cpuid, msr};

/// Errors setting a vCPU up for boot.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A KVM call failed.
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        /// Which vCPU.
        index: u8,
        /// The call.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The boot page tables or segments.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
}

/// What every vCPU of a VM boots with.
#[derive(Debug)]
pub struct BootVcpu<'a> {
    /// KVM's supported CPUID, adjusted per vCPU.
    pub supported_cpuid: &'a CpuId,
    /// How many vCPUs the VM has.
    pub count: u8,
    /// Whether KVM emulates guest kernel mode.
    pub emulated: bool,
    /// The kernel's entry mode.
    pub mode: EntryMode,
    /// The kernel's entry point.
    pub entry: u64,
}

/// Sets vCPU `index` up to enter the kernel (the BSP) or to wait for INIT/SIPI (APs,
/// which KVM keeps waiting whatever their registers say).
pub fn configure_boot(
    fd: &VcpuFd,
    index: u8,
    boot: &BootVcpu<'_>,
    mem: &GuestMemoryMmap,
) -> Result<(), SetupError> {
    let k = |what: &'static str| {
        move |source| SetupError::Kvm {
            index,
            what,
            source,
        }
    };
    let mut c = boot.supported_cpuid.clone();
    cpuid::adjust(
        &mut c,
        cpuid::CpuidParams {
            vcpu_id: index,
            vcpu_count: boot.count,
            emulated: boot.emulated,
        },
    );
    fd.set_cpuid2(&c).map_err(k("KVM_SET_CPUID2"))?;
    fd.set_msrs(&msr::boot_msrs()).map_err(k("KVM_SET_MSRS"))?;
    let sregs = fd.get_sregs().map_err(k("KVM_GET_SREGS"))?;
    fd.set_sregs(&regs::setup_sregs(mem, boot.mode, sregs)?)
        .map_err(k("KVM_SET_SREGS"))?;
    fd.set_regs(&regs::boot_regs(boot.mode, boot.entry))
        .map_err(k("KVM_SET_REGS"))?;
    fd.set_fpu(&regs::boot_fpu()).map_err(k("KVM_SET_FPU"))?;
    let mut lapic = fd.get_lapic().map_err(k("KVM_GET_LAPIC"))?;
    regs::set_lint(&mut lapic);
    fd.set_lapic(&lapic).map_err(k("KVM_SET_LAPIC"))?;
    Ok(())
}
