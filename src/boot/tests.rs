//! Boot information laid out as Linux and PVH guests read it.

use super::*;

fn mem(size: u64) -> GuestMemoryMmap {
    crate::memory::create(size).unwrap()
}

fn kernel(mode: EntryMode) -> LoadedKernel {
    LoadedKernel {
        entry: 0x100000,
        mode,
        kernel_end: 0x200000,
        setup_header: None,
    }
}

#[test]
fn memory_map_skips_ebda_hole_and_mmio_gap() {
    let m = memory_map(&mem(128 << 20));
    assert_eq!(
        m,
        vec![
            MemMapEntry {
                addr: 0,
                size: 0x9fc00,
                kind: 1
            },
            MemMapEntry {
                addr: 0x100000,
                size: (128 << 20) - 0x100000,
                kind: 1
            },
        ]
    );
    let big = memory_map(&mem(4 << 30));
    assert_eq!(big.len(), 3);
    assert_eq!(big[1].addr + big[1].size, MMIO_GAP_START);
    assert_eq!((big[2].addr, big[2].size), (MMIO_GAP_END, 1 << 30));
}

#[test]
fn zero_page_has_cmdline_e820_and_initrd() {
    let m = mem(64 << 20);
    let cmdline = Cmdline::try_from("console=ttyS0 foo=bar", CMDLINE_MAX_SIZE).unwrap();
    let initrd = Initrd {
        addr: 0x300_0000,
        size: 0x1234,
    };
    write_boot_info(&m, &kernel(EntryMode::Linux64), &cmdline, Some(initrd)).unwrap();
    let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    assert_eq!({ p.hdr.boot_flag }, 0xaa55);
    assert_eq!(u64::from(p.hdr.cmd_line_ptr), CMDLINE_START);
    assert_eq!({ p.hdr.cmdline_size }, 21);
    assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
    assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
    assert_eq!(p.e820_entries, 2);
    assert_eq!({ p.e820_table[1].size }, (64 << 20) - 0x100000);
    let mut s = [0u8; 22];
    m.read_slice(&mut s, GuestAddress(CMDLINE_START)).unwrap();
    assert_eq!(&s, b"console=ttyS0 foo=bar\0");
}

#[test]
fn pvh_start_info_has_memmap_and_module() {
    let m = mem(64 << 20);
    let cmdline = Cmdline::try_from("x", 16).unwrap();
    let initrd = Initrd {
        addr: 0x300_0000,
        size: 77,
    };
    write_boot_info(&m, &kernel(EntryMode::Pvh), &cmdline, Some(initrd)).unwrap();
    let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
    assert_eq!((info.nr_modules, info.memmap_entries), (1, 2));
    let module: hvm_modlist_entry = m.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
    assert_eq!((module.paddr, module.size), (0x300_0000, 77));
    let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
    assert_eq!((e.addr, e.type_), (0x100000, 1));
}

#[test]
fn initrd_goes_high_and_must_fit() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path = dir.as_path().join("initrd");
    std::fs::write(&path, vec![7u8; 10_000]).unwrap();
    let m = mem(32 << 20);
    let i = load_initrd(&m, &path, &kernel(EntryMode::Linux64)).unwrap();
    assert_eq!(i.addr, ((32 << 20) - 10_000) & !0xfff);
    let b: u8 = m.read_obj(GuestAddress(i.addr + 9_999)).unwrap();
    assert_eq!(b, 7);
    let mut k = kernel(EntryMode::Linux64);
    k.kernel_end = (32 << 20) - 4096;
    assert!(matches!(
        load_initrd(&m, &path, &k),
        Err(BootError::InitrdTooLarge { .. })
    ));
}

#[test]
fn rejects_files_that_are_not_kernels() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path = dir.as_path().join("k");
    std::fs::write(&path, b"not a kernel at all").unwrap();
    let m = mem(16 << 20);
    assert!(matches!(
        load_kernel(&m, &path, BootProtocol::Auto),
        Err(BootError::NotAKernel(_))
    ));
    assert!(matches!(
        load_kernel(&m, dir.as_path(), BootProtocol::Auto),
        Err(BootError::Open { .. })
    ));
}
