//! The snapshot directory: a state file (magic, format version, length, CRC-64, then the
//! postcard-encoded [`VmState`]) and the memory layers it names by identifier and size
//! ([`layers`]): a full one, which restore maps MAP_PRIVATE so that the snapshot is never
//! modified, and the diffs of incremental snapshots. Every file is written beside the
//! old ones and renamed into place ([`files`]): a crash leaves the old snapshot or the
//! new one, and a VM mapping an older memory file keeps its pages.

mod error;
pub mod files;
pub mod inspect;
pub mod layers;
pub mod overrides;
mod v3;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use hearth_devices::legacy::serial::persist::SavedSerial;
use hearth_devices::virtio::block::persist::BlockState;
use hearth_devices::virtio::net::persist::NetState;
use hearth_devices::virtio::persist::TransportState;
use hearth_devices::virtio::rng::persist::RngState;
use hearth_devices::virtio::vsock::persist::VsockState;
use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::kvm::Execution;
use crate::memory::GuestMemoryMmap;
use crate::vcpu::VcpuState;
pub use error::SnapshotError;
pub use files::SnapshotId;
use files::{DirLock, TmpFile};
pub use layers::{DirtyPages, Layer, LayerKind, MemoryChain};

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// The memory file's name.
pub const MEMORY_FILE: &str = "memory";
/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HEARTHSN";
/// The format this hearth writes. Version 4: each disk's Firecracker `drive_id`. Version 3:
/// postcard encoding, read too ([`PREVIOUS_VERSION`]). Version 2 saved each virtio queue
/// and the acked features once (version 1 kept a transport copy beside the device's);
/// both encoded with bincode, which is unmaintained, and are refused by name.
pub const VERSION: u32 = 4;
/// The format before [`VERSION`], which this hearth reads too (and writes no more).
pub const PREVIOUS_VERSION: u32 = 3;
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

/// Everything about a paused VM, and the memory layers that hold its RAM. `C` is the VM
/// configuration's shape: [`VmConfig`], or an older format's while it is read.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState<C = VmConfig> {
    /// This snapshot's identifier.
    pub id: SnapshotId,
    /// The snapshot the VM took before this one, when this one is a diff of it.
    pub parent: Option<SnapshotId>,
    /// The hearth that wrote it (`hearth <version>`).
    pub writer: String,
    /// The host's wall clock (CLOCK_REALTIME, ns since the epoch) when it was taken.
    pub taken_at_ns: u64,
    /// Guest RAM: its size and layers.
    pub memory: MemoryChain,
    /// How the VM was described (disks, memory size, ...).
    pub config: C,
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

impl<C> VmState<C> {
    /// The same state with its configuration converted (an older format's to this one's).
    fn map_config<D>(self, f: impl FnOnce(C) -> D) -> VmState<D> {
        VmState {
            id: self.id,
            parent: self.parent,
            writer: self.writer,
            taken_at_ns: self.taken_at_ns,
            memory: self.memory,
            config: f(self.config),
            execution: self.execution,
            cmdline: self.cmdline,
            vcpus: self.vcpus,
            irqchips: self.irqchips,
            pit: self.pit,
            clock: self.clock,
            serial: self.serial,
            virtio: self.virtio,
        }
    }
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
    if version != VERSION && version != PREVIOUS_VERSION {
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
    let state = if version == VERSION {
        decode_payload::<VmConfig>(payload, path)?
    } else {
        decode_payload::<v3::VmConfigV3>(payload, path)?.map_config(VmConfig::from)
    };
    Ok(state)
}

/// The format version of the state file at `path` (its header only: nothing else is
/// checked but the magic number).
pub fn file_version(path: &Path) -> Result<u32, SnapshotError> {
    let mut head = [0u8; 12];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(io_err(path))?;
    if head[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::BadMagic(path.to_owned()));
    }
    Ok(u32::from_le_bytes([head[8], head[9], head[10], head[11]]))
}

/// Decodes a whole payload as a [`VmState`] whose configuration has shape `C`.
fn decode_payload<C: serde::de::DeserializeOwned>(
    payload: &[u8],
    path: &Path,
) -> Result<VmState<C>, SnapshotError> {
    let decode_err = |reason| SnapshotError::Decode {
        path: path.to_owned(),
        reason,
    };
    let (state, rest) =
        postcard::take_from_bytes(payload).map_err(|e| decode_err(e.to_string()))?;
    if !rest.is_empty() {
        return Err(decode_err(format!("{} bytes left over", rest.len())));
    }
    Ok(state)
}

/// Checks that `dir` can take a snapshot, changing nothing: it is a directory, or it does
/// not exist and its parent is a directory (only the last level is ever created, so a
/// typo in a parent is an error rather than a new tree). The CLI checks with this before
/// asking the VM, which checks again with [`begin`].
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
pub fn create_dir(dir: &Path) -> Result<(), SnapshotError> {
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

/// Test hook: with `HEARTH_TEST_CRASH_AT=<point>` in its environment, the process kills
/// itself with SIGKILL at that point of a snapshot write, as a crash there would:
/// `layer-written`, `layer-renamed`, `state-written`, `state-renamed`, `cleanup`.
fn crash_point(point: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("HEARTH_TEST_CRASH_AT").ok())
        .as_deref()
        == Some(point)
    {
        // SAFETY: raise(2) has no memory-safety preconditions.
        unsafe { libc::raise(libc::SIGKILL) };
    }
}

/// Where a VM's latest snapshot is: what its next diff snapshot builds on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The snapshot directory (absolute).
    pub dir: PathBuf,
    /// The snapshot's identifier.
    pub id: SnapshotId,
    /// Its memory layers.
    pub memory: MemoryChain,
}

/// How a snapshot's memory is written.
#[derive(Clone, Copy, Debug)]
pub enum MemoryMode<'a> {
    /// All of guest RAM.
    Full,
    /// Only `dirty`, the pages changed since the snapshot `parent`.
    Diff {
        /// The VM's previous snapshot.
        parent: &'a Lineage,
        /// What changed since.
        dirty: &'a DirtyPages,
    },
}

/// A snapshot whose memory layer is written (not yet synced) and whose state waits:
/// [`Pending::commit`] makes it the directory's snapshot. The VM need not stay paused
/// for the commit. Dropped uncommitted, it leaves the directory's old snapshot as it was.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    _lock: DirLock,
    layer_file: TmpFile,
    state_bytes: Vec<u8>,
    lineage: Lineage,
}

/// The current wall clock in ns since the epoch (0 if the clock is before it).
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Starts a snapshot of `state` (its memory fields are filled in here) and `mem` in
/// `dir` (see [`check_dir`]): takes the directory's lock, links the parent's layers in
/// for a diff, writes the new memory layer beside the existing files and encodes the
/// state, which it hands back.
pub fn begin(
    dir: &Path,
    mut state: VmState,
    mem: &GuestMemoryMmap,
    mode: MemoryMode<'_>,
) -> Result<(Pending, VmState), SnapshotError> {
    create_dir(dir)?;
    let dir = std::path::absolute(dir).map_err(io_err(dir))?;
    let lock = DirLock::take(&dir)?;
    let id = SnapshotId::new()?;
    let size: u64 = vm_memory::GuestMemoryBackend::iter(mem)
        .map(vm_memory::GuestMemoryRegion::len)
        .sum();
    let (mut layers, parent) = match mode {
        MemoryMode::Full => (Vec::new(), None),
        MemoryMode::Diff { parent, .. } => {
            for l in &parent.memory.layers {
                let name = l.file_name();
                let from = parent.dir.join(&name);
                if !from.exists() && !dir.join(&name).exists() {
                    return Err(SnapshotError::ParentGone { path: from });
                }
                files::link_into(&from, &dir, &name)?;
            }
            (parent.memory.layers.clone(), Some(parent.id))
        }
    };
    let layer = match mode {
        MemoryMode::Full => {
            let mut t = TmpFile::create(&dir, &format!("memory-{id}"))?;
            let (len, crc64) = layers::write_full(&mut t, mem)?;
            let layer = Layer {
                id,
                kind: LayerKind::Full,
                len,
                crc64,
            };
            (t, layer)
        }
        MemoryMode::Diff { dirty, .. } => {
            let mut t = TmpFile::create(&dir, &format!("diff-{id}"))?;
            let layer = layers::write_diff(&mut t, mem, id, dirty)?;
            (t, layer)
        }
    };
    crash_point("layer-written");
    layers.push(layer.1);
    state.id = id;
    state.parent = parent;
    state.writer = format!("hearth {}", env!("CARGO_PKG_VERSION"));
    state.memory = MemoryChain { size, layers };
    let state_bytes = encode_state(&state)?;
    let lineage = Lineage {
        dir: dir.clone(),
        id,
        memory: state.memory.clone(),
    };
    Ok((
        Pending {
            dir,
            _lock: lock,
            layer_file: layer.0,
            state_bytes,
            lineage,
        },
        state,
    ))
}

impl Pending {
    /// The snapshot's identifier and memory layers.
    pub fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    /// Syncs the memory layer and renames it into place, then does the same with the
    /// state file (the rename that makes the snapshot the directory's), syncs the
    /// directory, and removes the layers no longer named.
    pub fn commit(self) -> Result<Lineage, SnapshotError> {
        self.layer_file.persist()?;
        crash_point("layer-renamed");
        let mut t = TmpFile::create(&self.dir, STATE_FILE)?;
        let tmp = t.tmp_path().to_owned();
        std::io::Write::write_all(&mut t.file, &self.state_bytes).map_err(io_err(&tmp))?;
        crash_point("state-written");
        t.persist()?;
        crash_point("state-renamed");
        files::sync_dir(&self.dir)?;
        crash_point("cleanup");
        files::remove_unreferenced(&self.dir, &self.lineage.memory.file_names())?;
        Ok(self.lineage)
    }
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
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.read_to_end(&mut bytes).map_err(io_err(&path))?;
    decode_state(&bytes, &path)
}

/// Maps the memory `state` names (in `dir`) as guest memory of its VM's size: the full
/// layer copy-on-write, the diffs copied over it ([`layers::map_chain`]).
pub fn map_memory(dir: &Path, state: &VmState) -> Result<GuestMemoryMmap, SnapshotError> {
    if state.memory.size != state.config.memory {
        return Err(SnapshotError::BadChain {
            dir: dir.to_owned(),
            reason: format!(
                "its memory is {} bytes, its configuration says {}",
                state.memory.size, state.config.memory
            ),
        });
    }
    layers::map_chain(dir, &state.memory)
}

/// The lineage of the snapshot in `dir` (for a VM restored from it). A link such as a
/// checkpoint directory's `latest` is resolved: it may point elsewhere later.
pub fn lineage(dir: &Path, state: &VmState) -> Result<Lineage, SnapshotError> {
    Ok(Lineage {
        dir: std::fs::canonicalize(dir).map_err(io_err(dir))?,
        id: state.id,
        memory: state.memory.clone(),
    })
}

/// Folds the chain of the snapshot in `dir` into one full memory layer, in `out` (a new
/// snapshot directory) or in `dir` itself, crash-safely either way. Returns the chain
/// folded and the full layer that replaces it.
pub fn merge(dir: &Path, out: Option<&Path>) -> Result<(MemoryChain, Layer), SnapshotError> {
    let target = out.unwrap_or(dir);
    create_dir(target)?;
    let _src_lock = DirLock::take(dir)?;
    let same =
        out.is_none() || std::fs::canonicalize(dir).ok() == std::fs::canonicalize(target).ok();
    let _out_lock = if same {
        None
    } else {
        Some(DirLock::take(target)?)
    };
    let mut state = read_state(dir)?;
    let folded = state.memory.clone();
    let id = SnapshotId::new()?;
    let mut t = TmpFile::create(target, &format!("memory-{id}"))?;
    let layer = layers::merge(dir, &state.memory, &mut t, id)?;
    t.persist()?;
    state.parent = None;
    state.memory.layers = vec![layer.clone()];
    files::write_atomic(target, STATE_FILE, &encode_state(&state)?)?;
    files::sync_dir(target)?;
    files::remove_unreferenced(target, &state.memory.file_names())?;
    Ok((folded, layer))
}
/// Moves `from` to `to`, copying across file systems.
fn move_file(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to).map_err(io_err(to))?;
            std::fs::remove_file(from).map_err(io_err(from))
        }
        Err(source) => Err(SnapshotError::Io {
            path: to.to_owned(),
            source,
        }),
    }
}

/// Firecracker keeps a snapshot as two files its client names: the full snapshot in
/// `dir` becomes that pair, its state file moved to `state` and its one memory layer to
/// `mem` (the state still names the layer by id, length and CRC, so a mismatched pair is
/// refused on load). A diff chain cannot be one file: fold it first.
pub fn export_pair(dir: &Path, state: &Path, mem: &Path) -> Result<(), SnapshotError> {
    let s = read_state(dir)?;
    s.memory.check(dir)?;
    if s.memory.layers.len() != 1 {
        return Err(SnapshotError::NotOneLayer(
            dir.to_owned(),
            s.memory.layers.len(),
        ));
    }
    move_file(&dir.join(s.memory.layers[0].file_name()), mem)?;
    move_file(&dir.join(STATE_FILE), state)?;
    if let Some(parent) = mem.parent() {
        files::sync_dir(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })?;
    }
    Ok(())
}

/// The other way: presents the pair `state`, `mem` as a snapshot directory `dir` (which
/// must exist and be empty), linking them under the names the state gives them, for
/// [`crate::Vm::restore`].
pub fn import_pair(state: &Path, mem: &Path, dir: &Path) -> Result<(), SnapshotError> {
    let abs = |p: &Path| std::path::absolute(p).map_err(io_err(p));
    std::os::unix::fs::symlink(abs(state)?, dir.join(STATE_FILE)).map_err(io_err(dir))?;
    let s = read_state(dir)?;
    if s.memory.layers.len() != 1 {
        return Err(SnapshotError::NotOneLayer(
            state.to_owned(),
            s.memory.layers.len(),
        ));
    }
    std::os::unix::fs::symlink(abs(mem)?, dir.join(s.memory.layers[0].file_name()))
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests;
