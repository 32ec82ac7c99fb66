//! A VM: built from a [`VmConfig`], run until the guest ends it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = hearth::VmConfig::new("vmlinux");
//! let reason = hearth::Vm::try_from(config)?.run()?;
//! std::process::exit(reason.exit_code());
//! # }
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::*;
use crate::arch::regs::{self, EntryMode};
use crate::arch::{cpuid, mptable, msr};
use crate::boot::{self, BootError};
use crate::config::{ConfigError, ExecutionChoice, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager, Subscriber};
use crate::kvm::{self, Execution, KvmError};
use crate::memory::{self, MemoryError};
use crate::snapshot::{self, VmState};
use crate::vcpu::{self, ExitReason, ExitSignal, Vcpu, VcpuShared};
use crate::{debug, info};
use hearth_devices::bus::lock;
use hearth_devices::persist::Persist;

/// What a Linux guest needs on its command line where KVM emulates kernel mode
/// (../shared/linux-guest.md): no XSAVE, and no POPCNT or SMAP, whose instructions the
/// emulator rejects but which CPUID cannot hide there.
pub const EMULATION_CMDLINE: &[&str] = &["noxsave", "clearcpuid=popcnt,smap"];

/// How often an idle vCPU is checked for a halt it cannot leave.
const WATCHDOG_INTERVAL: Duration = Duration::from_millis(500);

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
    /// Kernel, initrd, boot information.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Devices.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// virtio devices.
    #[error(transparent)]
    Virtio(#[from] crate::device_manager::virtio::VirtioError),
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
    /// Boot registers.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
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
    /// The event loop.
    #[error("event loop: {0}")]
    EventLoop(String),
    /// A snapshot could not be written or read.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A snapshot does not fit together.
    #[error("cannot restore: {0}")]
    Restore(String),
    /// The VM has ended.
    #[error("the VM is no longer running")]
    NotRunning,
    /// The control socket.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

fn kvm_call(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::KvmCall { what, source }
}

/// Stops the event loop when written.
struct StopHandler {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.evt, EventSet::IN));
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// A built VM, ready to run.
pub struct Vm {
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    shared: Arc<VcpuShared>,
    exit: Arc<ExitSignal>,
    devices: DeviceManager,
    execution: Execution,
    cmdline: String,
    config: VmConfig,
    start_paused: bool,
}

impl TryFrom<VmConfig> for Vm {
    type Error = VmError;

    fn try_from(config: VmConfig) -> Result<Self, VmError> {
        Vm::new(&config)
    }
}

/// Whether /dev/kvm can only be PVM: its module is loaded and no hardware one is.
fn pvm_only() -> bool {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd")
}

/// Decides native or emulated, measuring it when asked to.
fn resolve_execution(choice: ExecutionChoice) -> Option<JoinHandle<Execution>> {
    match choice {
        // PVM (../shared/platform.md) runs every guest that is not PVM-aware through the
        // instruction emulator: no calibration guest is needed to know it.
        ExecutionChoice::Auto if pvm_only() => {
            debug!("KVM executes guest kernel code emulated (kvm_pvm is loaded: no calibration)");
            Some(std::thread::spawn(|| Execution::Emulated))
        }
        ExecutionChoice::Auto => {
            Some(std::thread::spawn(|| {
                match kvm::open()
                    .map_err(|e| e.to_string())
                    .and_then(|k| kvm::calibrate(&k).map_err(|e| e.to_string()))
                {
                    Ok(c) => {
                        debug!(
                            "KVM executes guest kernel code {} ({} loop iterations took {:?})",
                            c.execution, c.iterations, c.elapsed
                        );
                        c.execution
                    }
                    Err(e) => {
                        info!("cannot tell whether KVM emulates ({e}); assuming hardware virtualization");
                        Execution::Native
                    }
                }
            }))
        }
        _ => None,
    }
}

/// The guest command line: the user's, the virtio devices, and on the emulating KVM the
/// workarounds a Linux guest needs (unless turned off or already there).
pub fn build_cmdline(
    config: &VmConfig,
    virtio_slots: &[(u64, u32)],
    execution: Execution,
) -> Result<Cmdline, VmError> {
    let mut cmdline =
        Cmdline::try_from(&config.cmdline, CMDLINE_MAX_SIZE).map_err(VmError::Cmdline)?;
    for (base, irq) in virtio_slots {
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, vm_memory::GuestAddress(*base), *irq, None)
            .map_err(VmError::Cmdline)?;
    }
    if execution == Execution::Emulated && config.cmdline_workarounds {
        let present: Vec<&str> = config.cmdline.split_whitespace().collect();
        for arg in EMULATION_CMDLINE {
            if !present.contains(arg) {
                cmdline.insert_str(arg).map_err(VmError::Cmdline)?;
            }
        }
    }
    Ok(cmdline)
}

/// The parts every VM has, fresh or restored.
struct Parts {
    kvm_setup: Option<JoinHandle<Result<(), VmError>>>,
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    devices: DeviceManager,
    vcpu_fds: Vec<kvm_ioctls::VcpuFd>,
    shared: Arc<VcpuShared>,
}

fn create_pit(vm_fd: &VmFd) -> Result<(), VmError> {
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd
        .create_pit2(pit)
        .map_err(kvm_call("KVM_CREATE_PIT2"))?;
    disable_pit_reinjection(vm_fd);
    Ok(())
}

/// Turns off the PIT's catch-up of missed ticks. Guests keep time with kvmclock and the
/// LAPIC timer, and KVM turns reinjection off while destroying the PIT anyway, waiting
/// for an SRCU grace period to do it: done here, on the setup thread, that wait no longer
/// delays hearth's exit.
fn disable_pit_reinjection(vm_fd: &VmFd) {
    // KVM_REINJECT_CONTROL = _IO(KVMIO, 0x71), struct kvm_reinject_control.
    const KVM_REINJECT_CONTROL: libc::c_ulong = 0xae71;
    #[repr(C)]
    struct ReinjectControl {
        pit_reinject: u8,
        reserved: [u8; 31],
    }
    let arg = ReinjectControl {
        pit_reinject: 0,
        reserved: [0; 31],
    };
    // SAFETY: the ioctl reads a kvm_reinject_control, which `arg` is (same layout), only
    // for the duration of the call.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm_fd, KVM_REINJECT_CONTROL, &arg) };
    if ret < 0 {
        debug!(
            "KVM_REINJECT_CONTROL failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::EventLoop(format!("guest memory region: {e}")))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, whose regions the VM keeps
        // (shared) for as long as the VM fd exists.
        unsafe { vm_fd.set_user_memory_region(r) }
            .map_err(kvm_call("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

impl Parts {
    /// Waits for the PIT.
    fn finish_kvm_setup(&mut self) -> Result<(), VmError> {
        match self.kvm_setup.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(VmError::EventLoop("the KVM setup thread panicked".into())),
            None => Ok(()),
        }
    }
}

/// Creates the VM, its irqchip/PIT, registers `mem`, adds the devices (from saved state
/// when given) and creates the vCPUs.
fn build_parts(
    kvm: &kvm_ioctls::Kvm,
    config: &VmConfig,
    mem: GuestMemoryMmap,
    serial_out: Option<&Path>,
    saved: Option<&VmState>,
) -> Result<Parts, VmError> {
    let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_call("KVM_CREATE_VM"))?);
    vm_fd
        .set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_call("KVM_SET_TSS_ADDR"))?;
    vm_fd
        .set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_call("KVM_SET_IDENTITY_MAP_ADDR"))?;
    // Memory slots before the irqchip: installing a slot waits for an SRCU grace period,
    // which is quick while the VM's SRCU is idle but takes a scheduler tick or more
    // (4 ms at HZ=250) right after the irqchip's own grace periods.
    register_memory(&vm_fd, &mem)?;
    vm_fd
        .create_irq_chip()
        .map_err(kvm_call("KVM_CREATE_IRQCHIP"))?;
    // Starting the PIT's thread mostly waits on KVM (kthread start-up): do it beside the
    // rest of the setup.
    let kvm_setup = {
        let vm_fd = vm_fd.clone();
        std::thread::Builder::new()
            .name("kvm-setup".into())
            .spawn(move || create_pit(&vm_fd))
            .map_err(|source| VmError::Thread {
                what: "KVM setup".into(),
                source,
            })?
    };

    let exit = Arc::new(ExitSignal::new(
        EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?,
    ));
    let mut devices = DeviceManager::new();
    devices.add_legacy(
        &vm_fd,
        &exit,
        serial_out,
        stdin_for_guest(),
        saved.map(|s| &s.serial),
    )?;
    crate::device_manager::virtio::add_all(
        &mut devices,
        &vm_fd,
        &mem,
        config,
        saved.map(|s| s.virtio.as_slice()),
    )?;
    if let Some(s) = saved {
        if s.virtio.len() != devices.virtio.len() {
            return Err(VmError::Restore(format!(
                "the snapshot has {} virtio devices, its configuration gives {}",
                s.virtio.len(),
                devices.virtio.len()
            )));
        }
    }

    let msr_indices = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .map_err(kvm_call("KVM_GET_MSR_INDEX_LIST"))?;
    let cpus = config.cpus as usize;
    let shared = Arc::new(VcpuShared::new(cpus, exit.clone(), msr_indices));
    let vcpu_fds = (0..cpus)
        .map(|i| vm_fd.create_vcpu(i as u64))
        .collect::<Result<Vec<_>, _>>()
        .map_err(kvm_call("KVM_CREATE_VCPU"))?;
    Ok(Parts {
        kvm_setup: Some(kvm_setup),
        vm_fd,
        mem,
        exit,
        devices,
        vcpu_fds,
        shared,
    })
}

impl Vm {
    /// Builds a VM: KVM, memory, kernel, devices and vCPUs. Nothing runs yet, and any
    /// error leaves nothing behind.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        crate::logger::mark_start();
        config.validate()?;
        let kvm = kvm::open()?;
        let max_cpus = (kvm.get_max_vcpus() as u32).min(u32::from(mptable::MAX_CPUS));
        if config.cpus > max_cpus {
            return Err(VmError::TooManyCpus {
                asked: config.cpus,
                max: max_cpus,
            });
        }
        let cpus = config.cpus as u8;
        let calibration = resolve_execution(config.execution);

        let mem = memory::create(config.memory)?;
        // Bad kernels and initrds are refused before KVM is asked for anything.
        let kernel = boot::load_kernel(&mem, &config.kernel, config.boot_protocol)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(&mem, path, &kernel)?),
            None => None,
        };
        let mut parts = build_parts(&kvm, config, mem, config.serial_out.as_deref(), None)?;
        let mem = &parts.mem.clone();

        let execution = match (config.execution, calibration) {
            (ExecutionChoice::Native, _) => Execution::Native,
            (ExecutionChoice::Emulated, _) => Execution::Emulated,
            (ExecutionChoice::Auto, Some(handle)) => handle.join().unwrap_or(Execution::Native),
            (ExecutionChoice::Auto, None) => Execution::Native,
        };
        let cmdline = build_cmdline(config, &parts.devices.virtio_slots, execution)?;
        boot::write_boot_info(mem, &kernel, &cmdline, initrd)?;
        mptable::setup(mem, cpus)?;

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_call("KVM_GET_SUPPORTED_CPUID"))?;
        for (index, fd) in parts.vcpu_fds.iter().enumerate() {
            let mut c = supported.clone();
            cpuid::adjust(
                &mut c,
                cpuid::CpuidParams {
                    vcpu_id: index as u8,
                    vcpu_count: cpus,
                    emulated: execution == Execution::Emulated,
                },
            );
            fd.set_cpuid2(&c).map_err(kvm_call("KVM_SET_CPUID2"))?;
            fd.set_msrs(&msr::boot_msrs())
                .map_err(kvm_call("KVM_SET_MSRS"))?;
            let sregs = fd.get_sregs().map_err(kvm_call("KVM_GET_SREGS"))?;
            fd.set_sregs(&regs::setup_sregs(mem, kernel.mode, sregs)?)
                .map_err(kvm_call("KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(kernel.mode, kernel.entry))
                .map_err(kvm_call("KVM_SET_REGS"))?;
            fd.set_fpu(&regs::boot_fpu())
                .map_err(kvm_call("KVM_SET_FPU"))?;
            let mut lapic = fd.get_lapic().map_err(kvm_call("KVM_GET_LAPIC"))?;
            regs::set_lint(&mut lapic);
            fd.set_lapic(&lapic).map_err(kvm_call("KVM_SET_LAPIC"))?;
        }
        let cmdline_text = cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
        parts.finish_kvm_setup()?;
        debug!(
            "KVM {execution}; {} vCPU(s), {} MiB, {} entry at {:#x}; cmdline: {cmdline_text}",
            cpus,
            config.memory >> 20,
            match kernel.mode {
                EntryMode::Linux64 => "64-bit Linux",
                EntryMode::Pvh => "PVH",
            },
            kernel.entry
        );
        Ok(Self::from_parts(
            parts,
            config.clone(),
            execution,
            cmdline_text,
            false,
        ))
    }

    /// Rebuilds a VM from the snapshot in `dir`: guest memory is mapped copy-on-write
    /// from the snapshot (which is never modified), disks are reopened, devices and
    /// vCPUs get their saved state. The VM starts paused unless `resume` is set.
    pub fn restore(dir: &Path, options: &RestoreOptions) -> Result<Self, VmError> {
        crate::logger::mark_start();
        let state = snapshot::read_state(dir)?;
        let mut config = state.config.clone();
        // Output and control go where this process is told, not where the first one's went.
        config.serial_out = options.serial_out.clone();
        config.api_sock = options.api_sock.clone();
        let kvm = kvm::open()?;
        if state.vcpus.len() != config.cpus as usize {
            return Err(VmError::Restore(format!(
                "the snapshot has {} vCPU states for {} vCPUs",
                state.vcpus.len(),
                config.cpus
            )));
        }
        let mem = snapshot::map_memory(dir, config.memory)?;
        let mut parts = build_parts(
            &kvm,
            &config,
            mem,
            config.serial_out.as_deref(),
            Some(&state),
        )?;
        // The PIT must exist before its state is set.
        parts.finish_kvm_setup()?;

        for chip in &state.irqchips {
            parts
                .vm_fd
                .set_irqchip(chip)
                .map_err(kvm_call("KVM_SET_IRQCHIP"))?;
        }
        parts
            .vm_fd
            .set_pit2(&state.pit)
            .map_err(kvm_call("KVM_SET_PIT2"))?;
        let mut clock = state.clock;
        // Only KVM_CLOCK_REALTIME may be passed back; the rest are reports.
        clock.flags = 0;
        parts
            .vm_fd
            .set_clock(&clock)
            .map_err(kvm_call("KVM_SET_CLOCK"))?;
        for (fd, s) in parts.vcpu_fds.iter().zip(&state.vcpus) {
            vcpu::restore_state(fd, s).map_err(|e| VmError::Restore(e.to_string()))?;
        }
        debug!(
            "restored {} vCPU(s), {} MiB from {}",
            config.cpus,
            config.memory >> 20,
            dir.display()
        );
        Ok(Self::from_parts(
            parts,
            config,
            state.execution,
            state.cmdline,
            !options.resume,
        ))
    }

    fn from_parts(
        parts: Parts,
        config: VmConfig,
        execution: Execution,
        cmdline: String,
        start_paused: bool,
    ) -> Self {
        let Parts {
            kvm_setup: _,
            vm_fd,
            mem,
            exit,
            devices,
            vcpu_fds,
            shared,
        } = parts;
        let vcpus = vcpu_fds
            .into_iter()
            .enumerate()
            .map(|(index, fd)| Vcpu {
                index,
                fd,
                pio: devices.pio.clone(),
                mmio: devices.mmio.clone(),
                mem: mem.clone(),
                shared: shared.clone(),
            })
            .collect();
        Self {
            vm_fd,
            mem,
            vcpus,
            shared,
            exit,
            devices,
            execution,
            cmdline,
            config,
            start_paused,
        }
    }

    /// Whether KVM runs this guest's kernel natively or emulates it.
    pub fn execution(&self) -> Execution {
        self.execution
    }

    /// The command line the guest gets.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The guest's memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The KVM VM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Runs the VM until the guest ends it (or a vCPU fails), then stops every thread.
    /// With an API socket configured, serves it meanwhile.
    pub fn run(self) -> Result<ExitReason, VmError> {
        self.start()?.wait()
    }

    /// Starts the vCPU threads and the event loop and returns a handle to control them.
    pub fn start(self) -> Result<RunningVm, VmError> {
        vcpu::install_kick_handler().map_err(|e| VmError::Thread {
            what: "vCPU kick signal handler".into(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let api = match &self.config.api_sock {
            Some(path) => Some(crate::api::bind(path)?),
            None => None,
        };
        let Vm {
            vm_fd,
            mem,
            vcpus,
            shared,
            exit,
            devices,
            execution,
            cmdline,
            config,
            start_paused,
        } = self;

        let loop_pause = Arc::new(LoopPause::new()?);
        let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let mut subscribers = devices.subscribers.clone();
        subscribers.push(Arc::new(Mutex::new(LoopPauseHandler(loop_pause.clone()))));
        let event_loop = start_event_loop(subscribers, &stop_evt)?;

        if start_paused {
            // The vCPUs park before their first KVM_RUN.
            shared.request_pause();
        }
        let mut handles = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let name = format!("vcpu{}", vcpu.index);
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if vcpu.index == 0 {
                        debug!("first KVM_RUN");
                    }
                    vcpu.run()
                })
                .map_err(|source| VmError::Thread { what: name, source });
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    exit.request(ExitReason::Error(e.to_string()));
                    break;
                }
            }
        }
        let mut running = RunningVm {
            vm_fd,
            mem,
            handles,
            shared,
            exit,
            devices,
            loop_pause,
            stop_evt,
            event_loop: Some(event_loop),
            execution,
            cmdline,
            config,
            paused: false,
            api,
        };
        if start_paused {
            running.pause()?;
        }
        Ok(running)
    }
}

/// What `hearth restore` may change about a VM.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Run at once instead of waiting for `resume`.
    pub resume: bool,
    /// Guest serial output to this file (stdout when absent).
    pub serial_out: Option<PathBuf>,
    /// Serve the control socket here.
    pub api_sock: Option<PathBuf>,
}

/// Parks the event loop between device events while the VM is paused, so no request is
/// half-done when a snapshot is taken.
pub struct LoopPause {
    evt: EventFd,
    state: Mutex<(bool, bool)>, // (requested, parked)
    changed: Condvar,
}

impl LoopPause {
    fn new() -> Result<Self, VmError> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?,
            state: Mutex::new((false, false)),
            changed: Condvar::new(),
        })
    }

    fn pause(&self, exit: &ExitSignal) -> Result<(), VmError> {
        lock(&self.state).0 = true;
        let _ = self.evt.write(1);
        let mut s = lock(&self.state);
        while !s.1 {
            if exit.is_set() {
                return Err(VmError::NotRunning);
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        Ok(())
    }

    fn resume(&self) {
        lock(&self.state).0 = false;
        self.changed.notify_all();
    }
}

/// The event-loop side of [`LoopPause`].
struct LoopPauseHandler(Arc<LoopPause>);

impl MutEventSubscriber for LoopPauseHandler {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.0.evt, EventSet::IN));
    }
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let this = &self.0;
        let _ = this.evt.read();
        let mut s = lock(&this.state);
        s.1 = true;
        this.changed.notify_all();
        while s.0 {
            s = this.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.1 = false;
    }
}

/// A VM whose threads are running: pause, resume, snapshot, or wait for its end.
pub struct RunningVm {
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    handles: Vec<JoinHandle<()>>,
    shared: Arc<VcpuShared>,
    exit: Arc<ExitSignal>,
    devices: DeviceManager,
    loop_pause: Arc<LoopPause>,
    stop_evt: EventFd,
    event_loop: Option<JoinHandle<Result<(), String>>>,
    execution: Execution,
    cmdline: String,
    config: VmConfig,
    paused: bool,
    api: Option<std::os::unix::net::UnixListener>,
}

impl RunningVm {
    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Stops every vCPU at a consistent point (out of KVM_RUN, its last exit handled)
    /// and parks the event loop between device events.
    pub fn pause(&mut self) -> Result<(), VmError> {
        if self.paused {
            return Ok(());
        }
        self.shared.request_pause();
        let want = self.handles.len();
        let mut p = lock(&self.shared.pause);
        while p.parked < want {
            if self.exit.is_set() {
                drop(p);
                self.shared.resume();
                return Err(VmError::NotRunning);
            }
            kick_all(&self.handles);
            p = self
                .shared
                .pause_changed
                .wait_timeout(p, Duration::from_millis(5))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        drop(p);
        if let Err(e) = self.loop_pause.pause(&self.exit) {
            self.shared.resume();
            return Err(e);
        }
        self.paused = true;
        debug!("paused");
        Ok(())
    }

    /// Lets a paused VM run on.
    pub fn resume(&mut self) {
        if self.paused {
            self.loop_pause.resume();
            self.shared.resume();
            self.paused = false;
            debug!("resumed");
        }
    }

    /// Writes a snapshot of the VM to `dir`. The VM is paused for it and stays paused;
    /// call [`RunningVm::resume`] to carry on.
    pub fn snapshot(&mut self, dir: &Path) -> Result<(), VmError> {
        self.pause()?;
        let started = std::time::Instant::now();
        let vcpus = {
            let mut p = lock(&self.shared.pause);
            let mut states = Vec::with_capacity(p.states.len());
            for (i, s) in p.states.iter_mut().enumerate() {
                match s.take() {
                    Some(Ok(state)) => states.push(state),
                    Some(Err(e)) => return Err(VmError::Restore(format!("vCPU {i}: {e}"))),
                    None => return Err(VmError::Restore(format!("vCPU {i} left no state"))),
                }
            }
            states
        };
        let mut irqchips = Vec::new();
        for chip_id in 0..3 {
            let mut chip = kvm_bindings::kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.vm_fd
                .get_irqchip(&mut chip)
                .map_err(kvm_call("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        let state = VmState {
            config: self.config.clone(),
            execution: self.execution,
            cmdline: self.cmdline.clone(),
            vcpus,
            irqchips,
            pit: self.vm_fd.get_pit2().map_err(kvm_call("KVM_GET_PIT2"))?,
            clock: self.vm_fd.get_clock().map_err(kvm_call("KVM_GET_CLOCK"))?,
            serial: match &self.devices.serial {
                Some(s) => lock(s).save(),
                None => Default::default(),
            },
            virtio: self.devices.virtio.iter().map(|s| s.save()).collect(),
        };
        let result = snapshot::write(dir, &state, &self.mem);
        // The saved vCPU states were taken out; put them back for another snapshot.
        {
            let mut p = lock(&self.shared.pause);
            for (slot, s) in p.states.iter_mut().zip(state.vcpus) {
                *slot = Some(Ok(s));
            }
        }
        result?;
        debug!(
            "snapshot of {} MiB written to {} in {:?}",
            self.config.memory >> 20,
            dir.display(),
            started.elapsed()
        );
        Ok(())
    }

    /// Waits for the VM to end (serving the API socket meanwhile), then stops every
    /// thread and returns why it ended.
    pub fn wait(mut self) -> Result<ExitReason, VmError> {
        while !self.exit.is_set() {
            let mut fds = vec![libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(self.exit.event()),
                events: libc::POLLIN,
                revents: 0,
            }];
            if let Some(l) = &self.api {
                fds.push(libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(l),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: `fds` is a valid array of pollfds for the duration of the call.
            let n = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    WATCHDOG_INTERVAL.as_millis() as i32,
                )
            };
            if n == 0 && !self.paused {
                kick_all(&self.handles);
            }
            if fds.len() > 1 && fds[1].revents & libc::POLLIN != 0 {
                self.serve_api();
            }
        }
        Ok(self.stop())
    }

    fn serve_api(&mut self) {
        let Some(listener) = &self.api else {
            return;
        };
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        crate::api::serve(stream, |request| self.handle(request));
    }

    fn handle(&mut self, request: crate::api::Request) -> Result<(), VmError> {
        use crate::api::Request;
        match request {
            Request::Pause => self.pause(),
            Request::Resume => {
                self.resume();
                Ok(())
            }
            Request::Snapshot { dir, resume } => {
                let was_paused = self.paused;
                let r = self.snapshot(&dir);
                if resume || (r.is_err() && !was_paused) {
                    self.resume();
                }
                r
            }
        }
    }

    fn stop(mut self) -> ExitReason {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.loop_pause.resume();
        self.shared.resume();
        // A vCPU may be just about to enter KVM_RUN: kick until every thread has left.
        while self.handles.iter().any(|h| !h.is_finished()) {
            kick_all(&self.handles);
            std::thread::sleep(Duration::from_micros(50));
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        let _ = self.stop_evt.write(1);
        if let Some(Ok(Err(e))) = self.event_loop.take().map(|h| h.join()) {
            info!("event loop: {e}");
        }
        self.devices.flush();
        if let Some(path) = &self.config.api_sock {
            let _ = std::fs::remove_file(path);
        }
        let reason = self.exit.reason().unwrap_or(ExitReason::Stopped);
        debug!("VM ended: {reason}");
        reason
    }

    /// Ends the VM from the host side.
    pub fn shutdown(self) -> ExitReason {
        self.exit.request(ExitReason::Stopped);
        self.stop()
    }
}

fn kick_all(handles: &[JoinHandle<()>]) {
    use std::os::unix::thread::JoinHandleExt;
    for h in handles.iter().filter(|h| !h.is_finished()) {
        // SAFETY: the thread is alive (not finished) and not yet joined, so its pthread_t
        // is valid; the signal has a handler installed.
        unsafe { libc::pthread_kill(h.as_pthread_t(), vcpu::kick_signal()) };
    }
}

fn start_event_loop(
    subscribers: Vec<Subscriber>,
    stop_evt: &EventFd,
) -> Result<JoinHandle<Result<(), String>>, VmError> {
    let stopped = Arc::new(AtomicBool::new(false));
    let mut em: EventManager<Subscriber> =
        EventManager::new().map_err(|e| VmError::EventLoop(format!("{e:?}")))?;
    for s in subscribers {
        em.add_subscriber(s);
    }
    let stop: Subscriber = Arc::new(Mutex::new(StopHandler {
        evt: stop_evt.try_clone().map_err(DeviceError::EventFd)?,
        stopped: stopped.clone(),
    }));
    em.add_subscriber(stop);
    std::thread::Builder::new()
        .name("event-loop".into())
        .spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                em.run().map_err(|e| format!("{e:?}"))?;
            }
            Ok(())
        })
        .map_err(|source| VmError::Thread {
            what: "event loop".into(),
            source,
        })
}

/// The guest reads the host's stdin when it is something that can be waited on.
fn stdin_for_guest() -> Option<File> {
    use std::os::fd::{AsFd, OwnedFd};
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    Some(File::from(fd))
}
