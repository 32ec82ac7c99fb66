//! Opening KVM, checking it has what hearth needs, and finding out whether it runs guest
//! kernel code natively or through its instruction emulator.

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, Kvm, VcpuExit};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The KVM API version every kernel since 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;

/// What hearth cannot work without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::AdjustClock, "KVM_CAP_ADJUST_CLOCK"),
    (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
    (Cap::Debugregs, "KVM_CAP_DEBUGREGS"),
];

/// Errors opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm is missing or not accessible.
    #[error("cannot open /dev/kvm: {0}; is KVM enabled on this host and may this user open it (group kvm)?")]
    Open(#[source] kvm_ioctls::Error),
    /// An unexpected API version.
    #[error("/dev/kvm reports API version {0}, hearth needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A capability hearth needs is absent.
    #[error("this KVM lacks {0}, which hearth needs")]
    MissingCap(&'static str),
}

/// Opens /dev/kvm and checks its API version and capabilities.
pub fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(KvmError::Open)?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// How KVM executes guest kernel mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Execution {
    /// Hardware virtualization: guest code runs on the CPU.
    Native,
    /// KVM's instruction emulator (PVM without a PVM-aware guest): ~2 M instructions/s.
    Emulated,
}

impl std::fmt::Display for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Execution::Native => "native",
            Execution::Emulated => "emulated",
        })
    }
}

/// A measured calibration run.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    /// What the timing says.
    pub execution: Execution,
    /// How long the loop took.
    pub elapsed: Duration,
    /// Loop iterations (two instructions each).
    pub iterations: u32,
}

/// Iterations of `dec ecx; jnz`: about 3 ms emulated, microseconds on hardware.
const CALIBRATION_ITERATIONS: u32 = 8000;
/// Anything slower than this is emulation (hardware needs well under 100 µs, the emulator
/// several milliseconds).
const EMULATION_THRESHOLD: Duration = Duration::from_micros(700);

/// Errors running the calibration guest.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// A KVM call failed.
    #[error("calibration guest: {what} failed: {source}")]
    Kvm {
        /// The call.
        what: &'static str,
        /// Its error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Mapping its page failed.
    #[error("calibration guest: cannot map its memory: {0}")]
    Mmap(#[source] std::io::Error),
    /// It stopped some other way than HLT.
    #[error("calibration guest stopped unexpectedly: {0}")]
    Exit(String),
}

/// Times a tiny guest (a `dec/jnz` loop in 32-bit protected mode) to tell hardware
/// virtualization from instruction emulation.
pub fn calibrate(kvm: &Kvm) -> Result<Calibration, CalibrationError> {
    let k = |what| move |source| CalibrationError::Kvm { what, source };
    let vm = kvm.create_vm().map_err(k("KVM_CREATE_VM"))?;
    let page = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4096)])
        .map_err(|e| CalibrationError::Mmap(std::io::Error::other(e)))?;
    let n = CALIBRATION_ITERATIONS.to_le_bytes();
    // mov ecx, n; 1: dec ecx; jnz 1b; hlt
    let code = [0xb9, n[0], n[1], n[2], n[3], 0x49, 0x75, 0xfd, 0xf4];
    page.write_slice(&code, GuestAddress(0))
        .map_err(|e| CalibrationError::Mmap(std::io::Error::other(e)))?;
    let host = page
        .get_host_address(GuestAddress(0))
        .map_err(|e| CalibrationError::Mmap(std::io::Error::other(e)))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: 4096,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the region is `page`'s live mapping; `page` is dropped only after the VM.
    unsafe { vm.set_user_memory_region(region) }.map_err(k("KVM_SET_USER_MEMORY_REGION"))?;
    #[allow(clippy::cast_possible_truncation)] // a fixed address below 4 GiB
    vm.set_tss_address(crate::arch::layout::KVM_TSS_ADDR as usize)
        .map_err(k("KVM_SET_TSS_ADDR"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(k("KVM_CREATE_VCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(k("KVM_GET_SREGS"))?;
    let flat = |type_| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = flat(0xb);
    sregs.ds = flat(0x3);
    sregs.es = flat(0x3);
    sregs.ss = flat(0x3);
    sregs.cr0 = 0x11; // PE | ET
    vcpu.set_sregs(&sregs).map_err(k("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(k("KVM_GET_REGS"))?;
    regs.rip = 0;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(k("KVM_SET_REGS"))?;

    let start = Instant::now();
    let exit = match vcpu.run() {
        Ok(VcpuExit::Hlt) => Ok(()),
        Ok(other) => Err(CalibrationError::Exit(format!("{other:?}"))),
        Err(e) => Err(CalibrationError::Kvm {
            what: "KVM_RUN",
            source: e,
        }),
    };
    let elapsed = start.elapsed();
    exit?;
    drop(vcpu);
    drop(vm);
    drop(page);
    Ok(Calibration {
        execution: if elapsed > EMULATION_THRESHOLD {
            Execution::Emulated
        } else {
            Execution::Native
        },
        elapsed,
        iterations: CALIBRATION_ITERATIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_guest_halts_and_is_classified() {
        let kvm = open().expect("tests need /dev/kvm");
        let c = calibrate(&kvm).unwrap();
        eprintln!("calibration: {:?} in {:?}", c.execution, c.elapsed);
        assert_eq!(c.iterations, CALIBRATION_ITERATIONS);
        // The classification follows the threshold whatever this host is.
        assert_eq!(
            c.execution == Execution::Emulated,
            c.elapsed > EMULATION_THRESHOLD
        );
    }
}
