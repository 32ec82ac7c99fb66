//! A VM: built from a [`VmConfig`], run until the guest ends it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = hearth::VmConfig::new("vmlinux");
//! let reason = hearth::Vm::try_from(config)?.run()?;
//! std::process::exit(reason.exit_code());
//! # }
//! ```
//!
//! By phase: [`build`] makes a [`Vm`] from a configuration, [`running`] starts it and
//! controls the [`RunningVm`] (pause, resume, stop), [`persist`] captures a running VM into
//! a snapshot and rebuilds a [`Vm`] from one; [`event_loop`] is the device thread both
//! share.

mod build;
pub mod checkpoint;
mod dirty;
mod event_loop;
mod persist;
mod pit;
mod rate_limit;
mod running;

use crate::memory::GuestMemoryMmap;
use kvm_ioctls::VmFd;
use std::sync::Arc;

use crate::arch::mptable;
use crate::boot::BootError;
use crate::config::{ConfigError, VmConfig};
use crate::device_manager::virtio::VirtioError;
use crate::device_manager::{DeviceError, DeviceManager};
use crate::kvm::{Execution, KvmError};
use crate::memory::MemoryError;
use crate::vcpu::{ExitSignal, SetupError, Vcpu, VcpuShared, VcpuStateError};

pub use build::{build_cmdline, EMULATION_CMDLINE};
pub use checkpoint::{CheckpointConfig, CheckpointStats};
pub use persist::{RestoreOptions, SnapshotInfo, SnapshotOptions};
pub use running::{DeviceCounters, RunningVm, VcpuCounters, VmHandle, WATCHDOG_INTERVAL};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The description is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// A guest memory region has no host mapping to give KVM.
    #[error("guest memory region at {addr:#x} has no host mapping: {source}")]
    MemoryRegion {
        /// Guest physical start of the region.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// Kernel, initrd, boot information.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Devices.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// virtio devices.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// Too many vCPUs.
    #[error("--cpus {asked} is more than this host's KVM allows ({max})")]
    TooManyCpus {
        /// Asked for.
        asked: u32,
        /// The limit.
        max: u32,
    },
    /// The kernel command line.
    #[error("kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    /// A vCPU's boot state.
    #[error(transparent)]
    VcpuSetup(#[from] SetupError),
    /// A KVM call failed.
    #[error("{what} failed: {source}")]
    KvmCall {
        /// The call.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A helper thread panicked.
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
    /// The event loop could not be set up or failed.
    #[error("event loop: {0}")]
    EventLoop(#[source] event_manager::Error),
    /// A snapshot could not be written or read.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A vCPU's state could not be captured or put back.
    #[error("vCPU {index}: {source}")]
    VcpuState {
        /// Which vCPU.
        index: usize,
        /// Why.
        #[source]
        source: VcpuStateError,
    },
    /// Snapshots do not keep virtio-fs state (the guest's open files are host fds).
    #[error("cannot snapshot a VM with shared directories (--share): virtio-fs state is not saved; start the VM without shares to snapshot it")]
    SnapshotWithShares,
    /// A paused vCPU left no state to save.
    #[error("vCPU {0} left no state when it paused")]
    NoVcpuState(usize),
    /// A snapshot's vCPU states do not match its configuration.
    #[error("cannot restore: the snapshot has {saved} vCPU states for {configured} vCPUs")]
    VcpuCount {
        /// States in the snapshot.
        saved: usize,
        /// vCPUs in its configuration.
        configured: u32,
    },
    /// A snapshot's devices do not match its configuration.
    #[error("cannot restore: the snapshot has {saved} virtio devices, its configuration gives {configured}")]
    VirtioCount {
        /// Devices in the snapshot.
        saved: usize,
        /// Devices the configuration makes.
        configured: usize,
    },
    /// The VM has ended.
    #[error("the VM is no longer running")]
    NotRunning,
    /// The control socket.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// A rate limit change names a device the VM does not have.
    #[error("the VM has no {0:?} to rate limit")]
    NoSuchDevice(crate::rate_limit::RateLimitTarget),
    /// seccomp filters could not be read or installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A disk index past the VM's disks.
    #[error("the VM has no disk number {0}")]
    NoSuchDisk(usize),
    /// A restore override that does not fit the snapshot.
    #[error("cannot apply the restore override: {0}")]
    Override(String),
}

fn kvm_call(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::KvmCall { what, source }
}

/// What a VM is made of in every phase, built or running.
struct VmCore {
    vm_fd: Arc<VmFd>,
    pit: Arc<std::sync::Mutex<pit::Pit>>,
    mem: GuestMemoryMmap,
    shared: Arc<VcpuShared>,
    exit: Arc<ExitSignal>,
    devices: DeviceManager,
    execution: Execution,
    cmdline: String,
    config: VmConfig,
    /// The VM's latest snapshot (or the one it was restored from): a diff's parent.
    lineage: Option<crate::snapshot::Lineage>,
    /// Whether KVM logs dirty pages (since the first snapshot or the restore).
    dirty_logging: bool,
    /// How long the guest took to write the boot marker, from the start of the build.
    booted: Arc<std::sync::OnceLock<std::time::Duration>>,
}

impl std::fmt::Debug for VmCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmCore")
            .field("memory_mib", &(self.config.memory >> 20))
            .field("cpus", &self.config.cpus)
            .field("execution", &self.execution)
            .finish_non_exhaustive()
    }
}

/// A built VM, ready to run.
pub struct Vm {
    core: VmCore,
    vcpus: Vec<Vcpu>,
    start_paused: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("cpus", &self.vcpus.len())
            .field("memory_mib", &(self.core.config.memory >> 20))
            .field("execution", &self.core.execution)
            .field("start_paused", &self.start_paused)
            .finish_non_exhaustive()
    }
}

impl TryFrom<VmConfig> for Vm {
    type Error = VmError;

    fn try_from(config: VmConfig) -> Result<Self, VmError> {
        Vm::new(&config)
    }
}

impl Vm {
    /// Whether KVM runs this guest's kernel natively or emulates it.
    pub fn execution(&self) -> Execution {
        self.core.execution
    }

    /// The command line the guest gets.
    pub fn cmdline(&self) -> &str {
        &self.core.cmdline
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.core.mem
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.core.vm_fd
    }

    /// Runs the VM until the guest ends it (or a vCPU fails), then stops every thread.
    /// With an API socket configured, serves it meanwhile.
    pub fn run(self) -> Result<crate::ExitReason, VmError> {
        self.start()?.wait()
    }
}
