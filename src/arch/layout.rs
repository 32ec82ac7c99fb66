//! Where things live in guest physical memory (the same map as Firecracker's, so guest
//! images and habits carry over).

/// The boot-time GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot-time (empty) IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH: the `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH: the module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH: the memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol: the zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
/// See [`PML4_START`].
pub const PDPTE_START: u64 = 0xa000;
/// See [`PML4_START`].
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line hearth passes (Linux's own limit on x86 is 2048 by default;
/// the boot protocol's `cmdline_size` tells the kernel's real limit).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// The extended BIOS data area, where the MP table goes.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: no RAM between here and 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Firecracker's boot-timer device: the guest writes 123 here when it has booted.
pub const BOOT_MARKER_ADDR: u64 = MMIO_GAP_START;
/// The byte that marks boot completion.
pub const BOOT_MARKER_VALUE: u8 = 123;
/// virtio-mmio devices are placed from here, one page each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Each virtio-mmio device's window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APICs' registers.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's TSS (three pages) on Intel, out of the way of RAM and devices.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM's identity-map page on Intel, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// First interrupt line given to virtio devices (0-4 are legacy: timer, keyboard, ...,
/// COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last IOAPIC input line.
pub const IRQ_MAX: u32 = 23;
/// The guest writes its exit status here (a byte).
pub const EXIT_PORT: u64 = 0x501;
