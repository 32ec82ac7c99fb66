//! The snapshot directory: a state file (magic, format version, length, CRC-64, then the
//! postcard-encoded [`VmState`]) and a memory file (guest RAM, regions back to back),
//! which restore maps MAP_PRIVATE so that the snapshot is never modified.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hearth_devices::legacy::serial::persist::SavedSerial;
use hearth_devices::virtio::block::persist::BlockState;
use hearth_devices::virtio::net::persist::NetState;
use hearth_devices::virtio::persist::TransportState;
use hearth_devices::virtio::rng::persist::RngState;
use hearth_devices::virtio::vsock::persist::VsockState;
use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::config::VmConfig;
use crate::kvm::Execution;
use crate::memory::ram_ranges;
use crate::vcpu::VcpuState;

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name.
pub const MEMORY_FILE: &str = "memory";
/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HEARTHSN";
/// The format this hearth writes and reads. Version 3: postcard encoding, network
/// devices keep their interface ID (Firecracker's `iface_id`). Version 2 saved each virtio
/// queue and the acked features once (version 1 kept a transport copy beside the
/// device's); both encoded with bincode, which is unmaintained, and are refused by name.
pub const VERSION: u32 = 3;
/// The last format version encoded with bincode.
const LAST_BINCODE_VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 8 + 8;
const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_ECMA_182);
/// State files larger than this are not state files.
const MAX_STATE_LEN: u64 = 256 << 20;

/// A virtio device's own state.
#[derive(Debug, Serialize, Deserialize)]
pub enum VirtioDeviceState {
    /// virtio-blk.
    Block(BlockState),
    /// virtio-net.
    Net(NetState),
    /// virtio-rng.
    Rng(RngState),
    /// virtio-vsock.
    Vsock(VsockState),
}

/// One virtio-mmio slot.
#[derive(Debug, Serialize, Deserialize)]
pub struct VirtioSlotState {
    /// Its MMIO window.
    pub base: u64,
    /// Its interrupt line.
    pub irq: u32,
    /// Transport, queues, features, interrupt status.
    pub transport: TransportState,
    /// The device behind it.
    pub device: VirtioDeviceState,
}

/// Everything about a paused VM but its memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// How the VM was described (disks, memory size, ...).
    pub config: VmConfig,
    /// Whether the guest ran under KVM's emulator.
    pub execution: Execution,
    /// The guest's command line.
    pub cmdline: String,
    /// Per vCPU.
    pub vcpus: Vec<VcpuState>,
    /// The in-kernel PICs and IOAPIC (chip ids 0, 1, 2).
    pub irqchips: Vec<kvm_irqchip>,
    /// The in-kernel PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
    /// COM1.
    pub serial: SavedSerial,
    /// virtio devices, in slot order.
    pub virtio: Vec<VirtioSlotState>,
}

/// Errors writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be created, written or read.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Encoding failed.
    #[error("cannot encode the VM state: {0}")]
    Encode(String),
    /// Not a hearth state file.
    #[error("{0} is not a hearth snapshot state file (wrong magic number)")]
    BadMagic(PathBuf),
    /// Written by an older hearth in the bincode format (version 1).
    #[error("{path} has snapshot format version {found} (bincode, written by an older hearth); this hearth reads version {VERSION} (postcard) only: take the snapshot again with this hearth")]
    BincodeVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Written by another format version.
    #[error("{path} has snapshot format version {found}; this hearth reads version {VERSION}")]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{0} is truncated")]
    Truncated(PathBuf),
    /// The checksum does not match.
    #[error("{0} is corrupt: its CRC-64 does not match its contents")]
    BadChecksum(PathBuf),
    /// The payload does not decode.
    #[error("{path} cannot be decoded: {reason}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The memory file does not match the state.
    #[error("memory file {path} is {found} bytes, but the VM had {expected} bytes of memory")]
    MemorySize {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The VM's memory size.
        expected: u64,
    },
    /// The snapshot directory is a file (or another non-directory).
    #[error("snapshot directory {0} exists and is not a directory")]
    NotADirectory(PathBuf),
    /// The snapshot directory's parent is missing: only the last level is created.
    #[error("cannot create snapshot directory {0}: its parent directory does not exist (hearth creates only the last level)")]
    NoParent(PathBuf),
    /// Mapping the memory file failed.
    #[error("cannot map memory file {path}: {reason}")]
    Map {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The state file's bytes for `state`.
pub fn encode_state(state: &VmState) -> Result<Vec<u8>, SnapshotError> {
    let payload = postcard::to_allocvec(state).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&CRC64.checksum(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks and decodes a state file's bytes (`path` names it in errors). Never panics,
/// whatever the bytes.
pub fn decode_state(bytes: &[u8], path: &Path) -> Result<VmState, SnapshotError> {
    let p = || path.to_owned();
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::BadMagic(p()));
    }
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated(p()));
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if (1..=LAST_BINCODE_VERSION).contains(&version) {
        return Err(SnapshotError::BincodeVersion {
            path: p(),
            found: version,
        });
    }
    if version != VERSION {
        return Err(SnapshotError::UnknownVersion {
            path: p(),
            found: version,
        });
    }
    let crc = field(20);
    let payload = &bytes[HEADER_LEN..];
    let payload = usize::try_from(field(12))
        .ok()
        .and_then(|len| payload.get(..len))
        .ok_or_else(|| SnapshotError::Truncated(p()))?;
    if CRC64.checksum(payload) != crc {
        return Err(SnapshotError::BadChecksum(p()));
    }
    let (state, rest) = postcard::take_from_bytes(payload).map_err(|e| SnapshotError::Decode {
        path: p(),
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(SnapshotError::Decode {
            path: p(),
            reason: format!("{} bytes left over", rest.len()),
        });
    }
    Ok(state)
}

/// Chunk of guest memory looked at (and written) at a time.
const MEMORY_CHUNK: usize = 64 << 10;

/// Writes guest RAM to `f`, regions back to back, as a sparse file: chunks that are all
/// zero (most of a guest's never-touched memory) become holes, which read back as zeros.
fn write_memory(f: &File, mem: &GuestMemoryMmap) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    f.set_len(total)?;
    let mut buf = vec![0u8; MEMORY_CHUNK];
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let len = usize::try_from(region.len()).map_err(std::io::Error::other)?;
        let mut at = 0usize;
        while at < len {
            let n = MEMORY_CHUNK.min(len - at);
            let chunk = &mut buf[..n];
            region
                .read_slice(chunk, vm_memory::MemoryRegionAddress(at as u64))
                .map_err(std::io::Error::other)?;
            if chunk.iter().any(|b| *b != 0) {
                f.write_all_at(chunk, file_offset + at as u64)?;
            }
            at += n;
        }
        file_offset += len as u64;
    }
    Ok(())
}

/// Checks that `dir` can take a snapshot, changing nothing: it is a directory, or it does
/// not exist and its parent is a directory (only the last level is ever created, so a
/// typo in a parent is an error rather than a new tree). The CLI checks with this before
/// asking the VM, which checks again with [`write`].
pub fn check_dir(dir: &Path) -> Result<(), SnapshotError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SnapshotError::NotADirectory(dir.to_owned())),
        // ENOTDIR: a parent is a file, which the parent check names.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            let parent = match dir.parent() {
                Some(p) if p.as_os_str().is_empty() => Path::new("."),
                Some(p) => p,
                None => return Err(SnapshotError::NoParent(dir.to_owned())),
            };
            match std::fs::metadata(parent) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(SnapshotError::NotADirectory(parent.to_owned())),
                Err(_) => Err(SnapshotError::NoParent(dir.to_owned())),
            }
        }
        Err(source) => Err(SnapshotError::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Creates `dir` (the last level only) unless it is a directory already.
fn create_dir(dir: &Path) -> Result<(), SnapshotError> {
    check_dir(dir)?;
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(SnapshotError::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Writes the state file and the memory file into `dir` (see [`check_dir`]).
pub fn write(dir: &Path, state: &VmState, mem: &GuestMemoryMmap) -> Result<(), SnapshotError> {
    create_dir(dir)?;
    let mem_path = dir.join(MEMORY_FILE);
    let f = File::create(&mem_path).map_err(io_err(&mem_path))?;
    write_memory(&f, mem).map_err(|source| SnapshotError::Io {
        path: mem_path.clone(),
        source,
    })?;
    f.sync_all().map_err(io_err(&mem_path))?;

    // The state file goes last, through a rename: a directory with a state file always
    // has the memory that belongs to it.
    let state_path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let bytes = encode_state(state)?;
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &state_path).map_err(io_err(&state_path))?;
    Ok(())
}

/// Reads and checks the state file in `dir`.
pub fn read_state(dir: &Path) -> Result<VmState, SnapshotError> {
    let path = dir.join(STATE_FILE);
    let mut f = File::open(&path).map_err(io_err(&path))?;
    let len = f.metadata().map_err(io_err(&path))?.len();
    if len > MAX_STATE_LEN {
        return Err(SnapshotError::Decode {
            path,
            reason: format!("{len} bytes is too large for a state file"),
        });
    }
    // At most MAX_STATE_LEN (256 MiB), checked above.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.read_to_end(&mut bytes).map_err(io_err(&path))?;
    decode_state(&bytes, &path)
}

/// Maps the memory file in `dir` copy-on-write as guest memory of `size` bytes: pages are
/// read from the file on first touch and the guest's writes stay private to this process.
pub fn map_memory(dir: &Path, size: u64) -> Result<GuestMemoryMmap, SnapshotError> {
    let path = dir.join(MEMORY_FILE);
    let file = File::open(&path).map_err(io_err(&path))?;
    let found = file.metadata().map_err(io_err(&path))?.len();
    if found != size {
        return Err(SnapshotError::MemorySize {
            path,
            found,
            expected: size,
        });
    }
    let map_err = |reason: String| SnapshotError::Map {
        path: path.clone(),
        reason,
    };
    let file = std::sync::Arc::new(file);
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (addr, len) in ram_ranges(size) {
        let size = usize::try_from(len).map_err(|e| map_err(e.to_string()))?;
        let region = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        regions.push(
            GuestRegionMmap::new(region, addr)
                .ok_or_else(|| map_err(format!("region at {:#x} overflows", addr.raw_value())))?,
        );
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_state() -> VmState {
        VmState {
            config: VmConfig::new("/k"),
            execution: Execution::Emulated,
            cmdline: "console=ttyS0".into(),
            vcpus: Vec::new(),
            irqchips: vec![kvm_irqchip::default(); 3],
            pit: Default::default(),
            clock: Default::default(),
            serial: Default::default(),
            virtio: Vec::new(),
        }
    }

    #[test]
    fn state_round_trips() {
        let bytes = encode_state(&sample_state()).unwrap();
        let back = decode_state(&bytes, Path::new("x")).unwrap();
        assert_eq!(back.config, VmConfig::new("/k"));
        assert_eq!(back.cmdline, "console=ttyS0");
    }

    #[test]
    fn old_bincode_version_is_refused_by_name() {
        let mut bytes = encode_state(&sample_state()).unwrap();
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        let e = decode_state(&bytes, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 1 (bincode"), "{e}");
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let e = decode_state(&bytes, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 7"), "{e}");
    }

    #[test]
    fn snapshot_dir_rules() {
        let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-snapdir-").unwrap();
        let d = tmp.as_path();
        assert!(check_dir(d).is_ok());
        assert!(check_dir(&d.join("new")).is_ok());
        create_dir(&d.join("new")).unwrap();
        assert!(d.join("new").is_dir());
        let e = create_dir(&d.join("a/b/c")).unwrap_err().to_string();
        assert!(e.contains("parent directory does not exist"), "{e}");
        assert!(!d.join("a").exists(), "no parent is created");
        std::fs::write(d.join("file"), b"x").unwrap();
        let e = check_dir(&d.join("file")).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        let e = check_dir(&d.join("file/sub")).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
    }
}
