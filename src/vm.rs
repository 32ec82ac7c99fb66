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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
use crate::vcpu::{self, ExitReason, ExitSignal, Vcpu, VcpuShared};
use crate::{debug, info};

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
    Virtio(#[from] crate::virtio::VirtioError),
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
}

impl TryFrom<VmConfig> for Vm {
    type Error = VmError;

    fn try_from(config: VmConfig) -> Result<Self, VmError> {
        Vm::new(&config)
    }
}

/// Decides native or emulated, measuring it when asked to.
fn resolve_execution(choice: ExecutionChoice) -> Option<JoinHandle<Execution>> {
    match choice {
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

        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_call("KVM_CREATE_VM"))?);
        vm_fd
            .set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_call("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_call("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_call("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(kvm_call("KVM_CREATE_PIT2"))?;

        let mem = memory::create(config.memory)?;
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
            // SAFETY: the region is a live mapping owned by `mem`, which the Vm keeps for
            // as long as the VM fd exists.
            unsafe { vm_fd.set_user_memory_region(r) }
                .map_err(kvm_call("KVM_SET_USER_MEMORY_REGION"))?;
        }

        let kernel = boot::load_kernel(&mem, &config.kernel, config.boot_protocol)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(&mem, path, &kernel)?),
            None => None,
        };

        let exit = Arc::new(ExitSignal::new(
            EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?,
        ));
        let mut devices = DeviceManager::new();
        let stdin = stdin_for_guest();
        devices.add_legacy(&vm_fd, &exit, config.serial_out.as_deref(), stdin)?;
        crate::virtio::add_disks(&mut devices, &vm_fd, &mem, &config.disks)?;

        let execution = match (config.execution, calibration) {
            (ExecutionChoice::Native, _) => Execution::Native,
            (ExecutionChoice::Emulated, _) => Execution::Emulated,
            (ExecutionChoice::Auto, Some(handle)) => handle.join().unwrap_or(Execution::Native),
            (ExecutionChoice::Auto, None) => Execution::Native,
        };
        let cmdline = build_cmdline(config, &devices.virtio_slots, execution)?;
        boot::write_boot_info(&mem, &kernel, &cmdline, initrd)?;
        mptable::setup(&mem, cpus)?;

        let shared = Arc::new(VcpuShared::new(cpus as usize, exit.clone()));
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_call("KVM_GET_SUPPORTED_CPUID"))?;
        let mut vcpus = Vec::with_capacity(cpus as usize);
        for index in 0..cpus {
            let fd = vm_fd
                .create_vcpu(u64::from(index))
                .map_err(kvm_call("KVM_CREATE_VCPU"))?;
            let mut c = supported.clone();
            cpuid::adjust(
                &mut c,
                cpuid::CpuidParams {
                    vcpu_id: index,
                    vcpu_count: cpus,
                    emulated: execution == Execution::Emulated,
                },
            );
            fd.set_cpuid2(&c).map_err(kvm_call("KVM_SET_CPUID2"))?;
            fd.set_msrs(&msr::boot_msrs())
                .map_err(kvm_call("KVM_SET_MSRS"))?;
            let sregs = fd.get_sregs().map_err(kvm_call("KVM_GET_SREGS"))?;
            fd.set_sregs(&regs::setup_sregs(&mem, kernel.mode, sregs)?)
                .map_err(kvm_call("KVM_SET_SREGS"))?;
            fd.set_regs(&regs::boot_regs(kernel.mode, kernel.entry))
                .map_err(kvm_call("KVM_SET_REGS"))?;
            fd.set_fpu(&regs::boot_fpu())
                .map_err(kvm_call("KVM_SET_FPU"))?;
            let mut lapic = fd.get_lapic().map_err(kvm_call("KVM_GET_LAPIC"))?;
            regs::set_lint(&mut lapic);
            fd.set_lapic(&lapic).map_err(kvm_call("KVM_SET_LAPIC"))?;
            vcpus.push(Vcpu {
                index: usize::from(index),
                fd,
                pio: devices.pio.clone(),
                mmio: devices.mmio.clone(),
                mem: mem.clone(),
                shared: shared.clone(),
            });
        }
        let cmdline_text = cmdline
            .as_cstring()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default();
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
        Ok(Self {
            vm_fd,
            mem,
            vcpus,
            shared,
            exit,
            devices,
            execution,
            cmdline: cmdline_text,
        })
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
    pub fn run(self) -> Result<ExitReason, VmError> {
        vcpu::install_kick_handler().map_err(|e| VmError::Thread {
            what: "vCPU kick signal handler".into(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let Vm {
            vcpus,
            shared,
            exit,
            devices,
            ..
        } = self;

        let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let event_loop = start_event_loop(devices.subscribers.clone(), &stop_evt)?;

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

        // Wait for the end, kicking the vCPUs now and then so a guest that halted for
        // good is noticed.
        while !exit.is_set() {
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(exit.event()),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, WATCHDOG_INTERVAL.as_millis() as i32) };
            if n == 0 {
                kick_all(&handles);
            }
        }

        shared.stop.store(true, Ordering::SeqCst);
        // A vCPU may be just about to enter KVM_RUN: kick until every thread has left.
        while handles.iter().any(|h| !h.is_finished()) {
            kick_all(&handles);
            std::thread::sleep(Duration::from_millis(1));
        }
        for h in handles {
            let _ = h.join();
        }
        let _ = stop_evt.write(1);
        let loop_result = event_loop.join();
        devices.flush();
        if let Ok(Err(e)) = loop_result {
            info!("event loop: {e}");
        }
        let reason = exit.reason().unwrap_or(ExitReason::Stopped);
        debug!("VM ended: {reason}");
        Ok(reason)
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
