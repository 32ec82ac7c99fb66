//! Per-vCPU CPUID, derived from what KVM supports on this host.
//!
//! On real hardware the guest sees the host's feature set with its own APIC id and
//! topology. Where KVM emulates guest kernel mode (README, "The platform note") a few more
//! changes keep a Linux guest off the paths that cannot work there.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 EBX: initial APIC id in bits 31:24, logical processor count in 23:16.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
const LEAF1_EBX_CPU_COUNT_SHIFT: u32 = 16;
/// Leaf 1 EDX bit 28: HTT (the count in EBX 23:16 is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 6 EAX bit 2: the APIC timer keeps running in deep C-states. Without it Linux
/// insists on a PIT or HPET as its clock event device.
const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// KVM paravirt features (leaf 0x4000_0001 EAX) whose use ends in `vmcall`, which never
/// completes on the emulating KVM.
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;
/// Leaf 0xB/0x1F ECX level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// How the guest's CPUID is adjusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidParams {
    /// This vCPU's index, used as its APIC id.
    pub vcpu_id: u8,
    /// vCPUs in the VM (one core each, one package).
    pub vcpu_count: u8,
    /// KVM emulates guest kernel mode: apply the emulator workarounds.
    pub emulated: bool,
}

/// Bits needed to number `count` things.
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Rewrites `cpuid` (from KVM_GET_SUPPORTED_CPUID) for one vCPU.
pub fn adjust(cpuid: &mut CpuId, p: CpuidParams) {
    let apic_id = u32::from(p.vcpu_id);
    let count = u32::from(p.vcpu_count.max(1));
    for e in cpuid.as_mut_slice() {
        adjust_entry(e, apic_id, count, p.emulated);
    }
}

fn adjust_entry(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, emulated: bool) {
    match e.function {
        0x1 => {
            e.ebx = (e.ebx & 0x0000_ffff)
                | (apic_id << LEAF1_EBX_APIC_ID_SHIFT)
                | (count << LEAF1_EBX_CPU_COUNT_SHIFT);
            if count > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
            e.ecx |= LEAF1_ECX_HYPERVISOR;
        }
        0x4 => {
            // Deterministic cache parameters: EAX 31:26 = cores per package - 1, and each
            // cache is private to one core (EAX 25:14 = threads sharing it - 1 = 0).
            e.eax = (e.eax & 0x3fff) | ((count - 1) << 26);
        }
        0x6 if emulated => e.eax |= LEAF6_EAX_ARAT,
        0xb | 0x1f => {
            // x2APIC topology: one thread per core, `count` cores.
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = bits_for(count);
                    e.ebx = count;
                    e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        0x4000_0001 if emulated => {
            e.eax &=
                !(KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(0x1, 0),
            entry(0x4, 0),
            entry(0x6, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | 1,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn apic_id_and_topology_per_vcpu() {
        let mut c = sample();
        adjust(
            &mut c,
            CpuidParams {
                vcpu_id: 2,
                vcpu_count: 3,
                emulated: false,
            },
        );
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 3);
        assert_eq!(l1.ebx & 0xffff, 0xffff, "other EBX fields kept");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(find(&c, 4, 0).eax >> 26, 2);
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
    }

    #[test]
    fn emulator_workarounds_only_when_emulated() {
        let mut native = sample();
        for e in native.as_mut_slice() {
            if e.function == 6 {
                e.eax = 0;
            }
        }
        let mut emulated = native.clone();
        let p = CpuidParams {
            vcpu_id: 0,
            vcpu_count: 1,
            emulated: false,
        };
        adjust(&mut native, p);
        adjust(
            &mut emulated,
            CpuidParams {
                emulated: true,
                ..p
            },
        );
        assert_eq!(find(&native, 6, 0).eax, 0, "hardware: leaf 6 untouched");
        assert_eq!(find(&emulated, 6, 0).eax, LEAF6_EAX_ARAT);
        assert_eq!(
            find(&native, 0x4000_0001, 0).eax,
            KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | 1
        );
        assert_eq!(
            find(&emulated, 0x4000_0001, 0).eax,
            1,
            "vmcall features cleared"
        );
        assert_eq!(
            find(&emulated, 1, 0).edx & LEAF1_EDX_HTT,
            0,
            "one vCPU: no HTT"
        );
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(bits_for), [0, 1, 2, 2, 3, 3, 4]);
    }
}
