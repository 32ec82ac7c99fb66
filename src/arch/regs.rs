//! Boot-time vCPU state: GDT, identity page tables, registers for the 64-bit Linux entry
//! and the 32-bit PVH entry, FPU and local APIC.

use crate::memory::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::*;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode, `rsi` = the zero page (Linux boot protocol).
    Linux64,
    /// 32-bit protected mode, paging off, `rbx` = `hvm_start_info` (PVH).
    Pvh,
}

/// Errors writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest memory does not cover the low pages hearth writes boot structures to.
    #[error("cannot write the boot {what} to guest memory at {addr:#x}; is the guest memory at least 1 MiB?")]
    Write {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
    },
}

/// A GDT descriptor from flags, base and limit (in the packed format the CPU reads).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The segment register KVM wants for a GDT entry at `index`.
// Each field is masked to its width in the descriptor before it is narrowed.
#[allow(clippy::cast_possible_truncation)]
fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // A 4 KiB-granular limit covers the whole last page.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

/// The boot GDT for an entry mode: null, code, data, TSS.
pub fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    match mode {
        EntryMode::Linux64 => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
        EntryMode::Pvh => [
            0,
            gdt_entry(0xc09b, 0, 0xfffff), // 32-bit flat code
            gdt_entry(0xc093, 0, 0xfffff), // flat data
            gdt_entry(0x008b, 0, 0x67),    // TSS
        ],
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    val: T,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|_| RegsError::Write { what, addr })
}

/// Writes the GDT and IDT and returns the special registers for `mode`.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(mode);
    for (i, entry) in gdt.iter().enumerate() {
        write(mem, "GDT", BOOT_GDT_START + 8 * i as u64, *entry)?;
    }
    write(mem, "IDT", BOOT_IDT_START, 0u64)?;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    #[allow(clippy::cast_possible_truncation)] // four 8-byte entries
    let gdt_limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.gdt.limit = gdt_limit;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Linux64 => {
            setup_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// Identity-maps the first GiB with 2 MiB pages, enough for the kernel to set up its own.
fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    write(mem, "page tables", PML4_START, PDPTE_START | PRESENT_RW)?;
    write(mem, "page tables", PDPTE_START, PDE_START | PRESENT_RW)?;
    for i in 0..512u64 {
        write(
            mem,
            "page tables",
            PDE_START + i * 8,
            (i << 21) | PRESENT_RW | HUGE,
        )?;
    }
    Ok(())
}

/// General registers at the kernel entry point.
pub fn boot_regs(mode: EntryMode, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and always set
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// The FPU as firmware leaves it: default control word and MXCSR.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

// KVM's LAPIC page is `c_char`s: the bytes are reinterpreted, not converted.
#[allow(clippy::cast_sign_loss)]
fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

#[allow(clippy::cast_possible_wrap)] // as in `lapic_reg`
fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// LINT0 delivers ExtINT (the 8259), LINT1 delivers NMI, as on a PC.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let delivery = |v: u32, mode: u32| (v & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, delivery(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, delivery(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.db, code.present, code.type_), (1, 0, 1, 0xb));
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.selector, 8);
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn long_mode_sregs_and_identity_map() {
        let m = mem();
        let s = setup_sregs(&m, EntryMode::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.efer & EFER_LMA, 0);
        let pde: u64 = m.read_obj(GuestAddress(PDE_START + 8 * 5)).unwrap();
        assert_eq!(pde, (5 << 21) | 0x83);
        let gdt1: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, boot_gdt(EntryMode::Linux64)[1]);
    }

    #[test]
    fn pvh_starts_in_flat_protected_mode() {
        let s = setup_sregs(&mem(), EntryMode::Pvh, kvm_sregs::default()).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(s.efer, 0);
        assert_eq!((s.cs.db, s.cs.l, s.cs.base), (1, 0, 0));
        let r = boot_regs(EntryMode::Pvh, 0x1234);
        assert_eq!((r.rip, r.rbx), (0x1234, PVH_INFO_START));
    }

    #[test]
    fn lint_modes() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0000);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x400);
    }
}
