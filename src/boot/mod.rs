//! Loading a kernel and initrd and writing what the boot protocol hands the kernel:
//! the command line and either `boot_params` (Linux 64-bit entry) or `hvm_start_info`
//! (PVH), each with the memory map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::memory::GuestMemoryMmap;
use linux_loader::bootparam::{boot_params, setup_header};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader, KernelLoaderResult};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::layout::*;
use crate::arch::regs::EntryMode;

/// Which entry point to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum BootProtocol {
    /// PVH when the ELF kernel has a PVH note, the 64-bit Linux entry otherwise.
    #[default]
    Auto,
    /// The 64-bit Linux boot protocol entry (ELF `e_entry` or bzImage `startup_64`).
    Linux,
    /// The PVH entry (ELF kernels with a XEN_ELFNOTE_PHYS32_ENTRY note).
    Pvh,
}

/// E820 memory type: usable RAM.
pub const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Offset of `startup_64` in a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Where initrds may go for kernels that do not say (ELF vmlinux).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE_SIZE: u64 = 4096;

/// Errors loading the kernel and writing boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Open {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("kernel {0} is not a kernel image: expected an ELF vmlinux or a bzImage")]
    NotAKernel(PathBuf),
    /// An ELF that is a user-space program, not a kernel.
    #[error("kernel {path} is not a kernel: it is {what}; expected an ELF vmlinux or a bzImage")]
    ElfProgram {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// The loader rejected the image.
    #[error("cannot load kernel {path}: {source}; if the image is complete, the guest's {mem_mib} MiB of memory may be too small for it")]
    Load {
        /// The kernel.
        path: PathBuf,
        /// Guest memory in MiB.
        mem_mib: u64,
        /// What the loader said.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// PVH asked for, but the kernel has no PVH entry.
    #[error("kernel {0} has no PVH entry note; use --boot-protocol linux or auto")]
    NoPvhEntry(PathBuf),
    /// The initrd does not fit.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory between the kernel's end and its limit; give the VM more memory")]
    InitrdTooLarge {
        /// The initrd.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Writing the initrd failed.
    #[error("cannot copy initrd {path} into guest memory: {source}")]
    InitrdCopy {
        /// The initrd.
        path: PathBuf,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The command line could not be written.
    #[error("cannot write the kernel command line: {0}")]
    Cmdline(#[source] linux_loader::loader::Error),
    /// The boot parameters could not be written.
    #[error("cannot write the boot parameters: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
}

/// A kernel in guest memory and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The entry point.
    pub entry: u64,
    /// The protocol that entry point expects.
    pub mode: EntryMode,
    /// First byte after the kernel image.
    pub kernel_end: u64,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

/// An initrd in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Initrd {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    let file = File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_owned(),
        source,
    })?;
    // A directory opens fine; say so now rather than with a confusing read error later.
    match file.metadata() {
        Ok(m) if m.is_dir() => Err(BootError::Open {
            what,
            path: path.to_owned(),
            source: std::io::Error::other("it is a directory"),
        }),
        Ok(_) => Ok(file),
        Err(source) => Err(BootError::Open {
            what,
            path: path.to_owned(),
            source,
        }),
    }
}

#[derive(PartialEq, Eq)]
enum ImageKind {
    Elf,
    BzImage,
}

fn sniff(file: &mut File) -> std::io::Result<Option<ImageKind>> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(Some(ImageKind::Elf))
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(Some(ImageKind::BzImage))
    } else {
        Ok(None)
    }
}

/// What an ELF file is when it is a user-space program rather than a kernel: a
/// position-independent executable or shared object (ET_DYN: a kernel is ET_EXEC), or a
/// dynamically linked program (a PT_INTERP header). Such files otherwise fail deep in the
/// loader with an error that suggests too little memory.
fn elf_program_kind(file: &mut File) -> std::io::Result<Option<&'static str>> {
    const ET_DYN: u16 = 3;
    const PT_INTERP: u32 = 3;
    let mut h = [0u8; 64];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut h)?;
    file.seek(SeekFrom::Start(0))?;
    // Not a complete 64-bit little-endian header: leave the verdict to the loader.
    if n < h.len() || h[4] != 2 || h[5] != 1 {
        return Ok(None);
    }
    let u16_at = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
    if u16_at(16) == ET_DYN {
        return Ok(Some(
            "a position-independent user-space program or shared library (ELF type ET_DYN)",
        ));
    }
    let phoff = u64::from_le_bytes(h[32..40].try_into().unwrap_or_default());
    let phentsize = u64::from(u16_at(54));
    let phnum = u64::from(u16_at(56));
    if phentsize < 4 {
        return Ok(None);
    }
    for i in 0..phnum {
        let mut ty = [0u8; 4];
        let Some(at) = i.checked_mul(phentsize).and_then(|o| o.checked_add(phoff)) else {
            break;
        };
        file.seek(SeekFrom::Start(at))?;
        if read_up_to(file, &mut ty)? < ty.len() {
            break;
        }
        if u32::from_le_bytes(ty) == PT_INTERP {
            file.seek(SeekFrom::Start(0))?;
            return Ok(Some(
                "a dynamically linked user-space program (it names a program interpreter)",
            ));
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(None)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Guest memory size in bytes (all regions).
fn mem_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Loads the kernel at `path` and picks its entry point.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    protocol: BootProtocol,
) -> Result<LoadedKernel, BootError> {
    let mut file = open("kernel", path)?;
    let read_err = |source| BootError::Open {
        what: "kernel",
        path: path.to_owned(),
        source,
    };
    let kind = sniff(&mut file)
        .map_err(read_err)?
        .ok_or_else(|| BootError::NotAKernel(path.to_owned()))?;
    let load_err = |source| BootError::Load {
        path: path.to_owned(),
        mem_mib: mem_size(mem) >> 20,
        source,
    };
    if kind == ImageKind::Elf {
        if let Some(what) = elf_program_kind(&mut file).map_err(read_err)? {
            return Err(BootError::ElfProgram {
                path: path.to_owned(),
                what,
            });
        }
    }
    let himem = Some(GuestAddress(HIMEM_START));
    let result: KernelLoaderResult = match kind {
        ImageKind::Elf => Elf::load(mem, None, &mut file, himem).map_err(load_err)?,
        ImageKind::BzImage => BzImage::load(mem, None, &mut file, himem).map_err(load_err)?,
    };
    let pvh = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.raw_value()),
        _ => None,
    };
    let linux_entry = match kind {
        ImageKind::Elf => result.kernel_load.raw_value(),
        ImageKind::BzImage => result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
    };
    let (entry, mode) = match (protocol, pvh) {
        (BootProtocol::Auto, Some(pvh)) | (BootProtocol::Pvh, Some(pvh)) => (pvh, EntryMode::Pvh),
        (BootProtocol::Pvh, None) => return Err(BootError::NoPvhEntry(path.to_owned())),
        (BootProtocol::Auto | BootProtocol::Linux, _) => (linux_entry, EntryMode::Linux64),
    };
    Ok(LoadedKernel {
        entry,
        mode,
        kernel_end: result.kernel_end,
        setup_header: result.setup_header,
    })
}

/// The end of RAM below the MMIO gap.
fn lowmem_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|end| *end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

/// Copies the initrd to the highest page-aligned spot below the kernel's limit.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<Initrd, BootError> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initrd",
            path: path.to_owned(),
            source,
        })?
        .len();
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let top = lowmem_end(mem).min(addr_max.saturating_add(1));
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel.kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    let copy_err = |source| BootError::InitrdCopy {
        path: path.to_owned(),
        source,
    };
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(copy_err)?;
    Ok(Initrd { addr, size })
}

/// One memory map entry (addr, size, type), shared by e820 and the PVH memmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemMapEntry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// E820 type.
    pub kind: u32,
}

/// The guest's RAM as the kernel should see it: low memory below the EBDA, then from
/// 1 MiB on, skipping the MMIO gap.
pub fn memory_map(mem: &GuestMemoryMmap) -> Vec<MemMapEntry> {
    let mut map = vec![MemMapEntry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push(MemMapEntry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// Writes the command line and the protocol's boot information.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<Initrd>,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::Cmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    let map = memory_map(mem);
    match kernel.mode {
        EntryMode::Linux64 => write_zero_page(mem, kernel, cmdline_len, initrd, &map),
        EntryMode::Pvh => write_pvh_start_info(mem, initrd, &map),
    }
}

// The boot protocol splits 64-bit addresses and sizes into 32-bit halves (the low half
// on purpose truncated); the command line is at most CMDLINE_MAX_SIZE and the e820 map
// has a handful of entries.
#[allow(clippy::cast_possible_truncation)]
fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    map: &[MemMapEntry],
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if kernel.setup_header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
        params.ext_ramdisk_image = (i.addr >> 32) as u32;
        params.ext_ramdisk_size = (i.size >> 32) as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    let bp = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
        .map_err(BootError::BootParams)
}

#[allow(clippy::cast_possible_truncation)] // a handful of memory map entries
fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<Initrd>,
    map: &[MemMapEntry],
) -> Result<(), BootError> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let entries: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut bp = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
    if let Some(i) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
        bp = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO_START));
        bp.set_modules(
            &[hvm_modlist_entry {
                paddr: i.addr,
                size: i.size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    bp.set_sections::<hvm_memmap_table_entry>(&entries, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)
        .map_err(BootError::BootParams)
}

#[cfg(test)]
mod tests;
