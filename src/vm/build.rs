//! Building a VM: KVM, guest memory, the kernel and its boot information, devices and
//! vCPUs. Restore (`persist.rs`) shares everything here but the kernel loading.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::memory::GuestMemoryMmap;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use log::{debug, info, warn};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::pit::{Pit, PIT_PORT_BASE, PIT_PORT_LEN};
use super::{kvm_call, Vm, VmCore, VmError};
use crate::arch::layout::*;
use crate::arch::mptable;
use crate::arch::regs::EntryMode;
use crate::boot;
use crate::config::{ExecutionChoice, VmConfig};
use crate::console::Console;
use crate::device_manager::{BootMarker, DeviceError, DeviceManager};
use crate::kvm::{self, Execution};
use crate::memory;
use crate::snapshot::VmState;
use crate::vcpu::{self, ExitSignal, Vcpu, VcpuShared};

/// What a Linux guest needs on its command line where KVM emulates kernel mode
/// (README, "The platform note"): no XSAVE, and no POPCNT or SMAP, whose instructions
/// the emulator rejects but which CPUID cannot hide there. Not `nofsgsbase`: it keeps
/// Linux's NMI entry away from `lsl` (which the emulator cannot run), but with it the
/// kernel switches user FS bases by MSR writes, and 2-vCPU guests twice faulted on a TLS
/// read in busybox (a wrong FS base), never before it was added (suspected, not proven);
/// hearth's KVM_KVMCLOCK_CTRL already keeps a paused guest from the RCU stall whose NMI
/// backtrace ran into `lsl`.
pub const EMULATION_CMDLINE: &[&str] = &["noxsave", "clearcpuid=popcnt,smap"];

/// Whether /dev/kvm can only be PVM: its module is loaded and no hardware one is.
fn pvm_only() -> bool {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd")
}

/// Native or emulated: known at once, or being measured on a thread.
enum Resolved {
    Known(Execution),
    Measuring(JoinHandle<Execution>),
}

/// Decides native or emulated, measuring it when asked to (on a thread, beside the rest
/// of the set-up).
fn resolve_execution(choice: ExecutionChoice) -> Resolved {
    match choice {
        // PVM (README, "The platform note") runs every guest that is not PVM-aware
        // through the instruction emulator: no calibration guest is needed to know it.
        ExecutionChoice::Auto if pvm_only() => {
            debug!("KVM executes guest kernel code emulated (kvm_pvm is loaded: no calibration)");
            Resolved::Known(Execution::Emulated)
        }
        ExecutionChoice::Auto => {
            Resolved::Measuring(std::thread::spawn(|| {
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
        ExecutionChoice::Native => Resolved::Known(Execution::Native),
        ExecutionChoice::Emulated => Resolved::Known(Execution::Emulated),
    }
}

/// The guest command line: the user's, the virtio devices, and on the emulating KVM the
/// workarounds a Linux guest needs (unless turned off or already there).
pub fn build_cmdline(
    config: &VmConfig,
    virtio_slots: &[(u64, u32)],
    execution: Execution,
) -> Result<Cmdline, VmError> {
    // Over the limit only once hearth's additions are in: say so, with the limit.
    let err = |e| match e {
        linux_loader::cmdline::Error::TooLarge | linux_loader::cmdline::Error::InvalidCapacity => {
            VmError::Config(crate::config::ConfigError::CmdlineTooLong {
                len: config.cmdline.len(),
            })
        }
        e => VmError::Cmdline(e),
    };
    let mut cmdline = Cmdline::try_from(&config.cmdline, CMDLINE_MAX_SIZE).map_err(err)?;
    for (base, irq) in virtio_slots {
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, vm_memory::GuestAddress(*base), *irq, None)
            .map_err(err)?;
    }
    if execution == Execution::Emulated && config.cmdline_workarounds {
        let present: Vec<&str> = config.cmdline.split_whitespace().collect();
        for arg in EMULATION_CMDLINE {
            if !present.contains(arg) {
                cmdline.insert_str(arg).map_err(err)?;
            }
        }
    }
    Ok(cmdline)
}

/// Where KVM puts the TSS it needs for real mode: a fixed address below 4 GiB.
#[allow(clippy::cast_possible_truncation)]
fn tss_addr() -> usize {
    KVM_TSS_ADDR as usize
}

/// Gives KVM guest memory, one slot per region, with `flags` (dirty logging or none);
/// called again on the same slots to change the flags.
pub(super) fn register_memory(
    vm_fd: &VmFd,
    mem: &GuestMemoryMmap,
    flags: u32,
) -> Result<(), VmError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|source| VmError::MemoryRegion {
                addr: region.start_addr().raw_value(),
                source,
            })?;
        let r = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags,
        };
        // SAFETY: the region is a live mapping owned by `mem`, whose regions the VM keeps
        // (shared) for as long as the VM fd exists.
        unsafe { vm_fd.set_user_memory_region(r) }
            .map_err(kvm_call("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// An MMIO address nothing in the VM answers (between the boot marker's page and the
/// virtio slots).
const UNUSED_MMIO_ADDR: u64 = 0xcfff_f000;

/// Has KVM finish, in the background, the grace period its io-bus changes started.
///
/// Each device KVM puts on its buses (the irqchip's PICs and IOAPIC, every ioeventfd)
/// frees the old bus with call_srcu(), and KVM's VM destruction waits for those callbacks
/// (srcu_barrier). A normal SRCU grace period takes several scheduler ticks here (11–17 ms
/// measured), so a short-lived VM paid them at exit. An expedited grace period requested
/// on the same SRCU hurries the pending one along: unregistering a device is such a
/// request, so a thread registers a coalesced-MMIO zone nobody uses and unregisters it
/// (beside the guest); tear-down then finds nothing left to wait for (whole-process
/// time of the zero-cost guest: median 16.5 ms with it, 20.1 ms without, 30 pairs at
/// load 19). The unregistration holds the VM's slots_lock while it waits, so this runs
/// after every set-up call that takes that lock (memory slots, ioeventfds, a restored
/// PIT); only a PIT the guest starts within the first few ms waits behind it.
pub(super) fn expedite_grace_period(vm_fd: &Arc<VmFd>) {
    let vm_fd = vm_fd.clone();
    let spawned = std::thread::Builder::new()
        .name("kvm-srcu".into())
        .spawn(move || {
            // It runs beside the guest: filtered like the VMM thread.
            if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vmm) {
                debug!("kvm-srcu thread: {e}");
                return;
            }
            let addr = kvm_ioctls::IoEventAddress::Mmio(UNUSED_MMIO_ADDR);
            let result = vm_fd
                .register_coalesced_mmio(addr, 8)
                .and_then(|()| vm_fd.unregister_coalesced_mmio(addr, 8));
            if let Err(e) = result {
                debug!("cannot expedite KVM's grace period (coalesced MMIO: {e}); tear-down will wait for it");
            }
        });
    if let Err(e) = spawned {
        debug!("cannot start the thread that expedites KVM's grace period: {e}");
    }
}

/// The parts every VM has, fresh or restored, before the vCPUs get their state.
pub(super) struct Parts {
    pub(super) pit: Arc<Mutex<Pit>>,
    pub(super) vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    pub(super) devices: DeviceManager,
    pub(super) vcpu_fds: Vec<kvm_ioctls::VcpuFd>,
    shared: Arc<VcpuShared>,
    booted: Arc<OnceLock<Duration>>,
}

impl Parts {
    /// Creates the VM and its irqchip, registers `mem`, adds the devices (from saved
    /// state when given) and creates the vCPUs.
    pub(super) fn build(
        kvm: &kvm_ioctls::Kvm,
        config: &VmConfig,
        mem: GuestMemoryMmap,
        saved: Option<&VmState>,
        started: Instant,
        console: Console,
    ) -> Result<Parts, VmError> {
        // A restored VM logs dirty pages from the start: its next snapshot may be a diff.
        let memory_flags = if saved.is_some() {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_call("KVM_CREATE_VM"))?);
        vm_fd
            .set_tss_address(tss_addr())
            .map_err(kvm_call("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(kvm_call("KVM_SET_IDENTITY_MAP_ADDR"))?;
        // Memory slots before the irqchip: installing a slot waits for an SRCU grace
        // period, which is quick while the VM's SRCU is idle but takes a scheduler tick or
        // more (4 ms at HZ=250) right after the irqchip's own grace periods.
        register_memory(&vm_fd, &mem, memory_flags)?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_call("KVM_CREATE_IRQCHIP"))?;
        let exit = Arc::new(ExitSignal::new(
            EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?,
        ));
        let mut devices = DeviceManager::new();
        // No PIT in KVM yet: see pit.rs. Its ports come to hearth until the guest starts
        // its timer, so nothing on the way to the first KVM_RUN waits for it.
        let pit = Arc::new(Mutex::new(Pit::new(vm_fd.clone(), exit.clone())));
        devices
            .pio
            .insert(PIT_PORT_BASE, PIT_PORT_LEN, pit.clone())
            .map_err(DeviceError::from)?;
        let (serial_out, serial_in) = console.open(config.serial_out.as_deref())?;
        let booted = Arc::new(OnceLock::new());
        devices.add_legacy(
            &vm_fd,
            &exit,
            serial_out,
            serial_in,
            saved.map(|s| &s.serial),
            BootMarker {
                started,
                booted: booted.clone(),
            },
        )?;
        crate::device_manager::virtio::add_all(
            &mut devices,
            &vm_fd,
            &mem,
            config,
            saved.map(|s| s.virtio.as_slice()),
        )?;
        // Once every disk opened: a refused one is the only line then.
        warn_about_disks(config);
        if let Some(s) = saved {
            if s.virtio.len() != devices.virtio.len() {
                return Err(VmError::VirtioCount {
                    saved: s.virtio.len(),
                    configured: devices.virtio.len(),
                });
            }
        }

        let msr_indices = kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .map_err(kvm_call("KVM_GET_MSR_INDEX_LIST"))?;
        let cpus = config.cpus as usize;
        let shared = Arc::new(VcpuShared::new(cpus, exit.clone(), msr_indices));
        let vcpu_fds = (0..cpus as u64)
            .map(|i| vm_fd.create_vcpu(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(kvm_call("KVM_CREATE_VCPU"))?;
        Ok(Parts {
            pit,
            vm_fd,
            mem,
            exit,
            devices,
            vcpu_fds,
            shared,
            booted,
        })
    }

    /// The VM, its vCPUs ready to run.
    pub(super) fn into_vm(
        self,
        config: VmConfig,
        execution: Execution,
        cmdline: String,
        start_paused: bool,
    ) -> Vm {
        let Parts {
            pit,
            vm_fd,
            mem,
            exit,
            devices,
            vcpu_fds,
            shared,
            booted,
        } = self;
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
        Vm {
            core: VmCore {
                vm_fd,
                pit,
                mem,
                shared,
                exit,
                devices,
                execution,
                cmdline,
                config,
                lineage: None,
                dirty_logging: false,
                booted,
            },
            vcpus,
            start_paused,
        }
    }
}

impl Vm {
    /// Builds a VM: KVM, memory, kernel, devices and vCPUs. Nothing runs yet, and any
    /// error leaves nothing behind. The console is the default one (see [`Console`]).
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        Self::with_console(config, Console::new())
    }

    /// Like [`Vm::new`], with the guest's console where `console` says.
    pub fn with_console(config: &VmConfig, console: Console) -> Result<Self, VmError> {
        let started = Instant::now();
        config.validate()?;
        let kvm = kvm::open()?;
        let max_cpus = u32::try_from(kvm.get_max_vcpus())
            .unwrap_or(u32::MAX)
            .min(u32::from(mptable::MAX_CPUS));
        let cpus = match u8::try_from(config.cpus) {
            Ok(n) if config.cpus <= max_cpus => n,
            _ => {
                return Err(VmError::TooManyCpus {
                    asked: config.cpus,
                    max: max_cpus,
                })
            }
        };
        let calibration = resolve_execution(config.execution);

        let mem = memory::create(config.memory)?;
        // Bad kernels and initrds are refused before KVM is asked for anything.
        let kernel = boot::load_kernel(&mem, &config.kernel, config.boot_protocol)?;
        let initrd = match &config.initrd {
            Some(path) => Some(boot::load_initrd(&mem, path, &kernel)?),
            None => None,
        };
        let parts = Parts::build(&kvm, config, mem, None, started, console)?;
        let mem = &parts.mem.clone();

        // A thread that is only being joined would have to wait for a CPU to return a
        // value known at once: only a real calibration runs on one.
        let execution = match calibration {
            Resolved::Known(e) => e,
            Resolved::Measuring(handle) => handle.join().unwrap_or(Execution::Native),
        };
        let cmdline = build_cmdline(config, &parts.devices.virtio_slots, execution)?;
        boot::write_boot_info(mem, &kernel, &cmdline, initrd)?;
        mptable::setup(mem, cpus)?;

        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_call("KVM_GET_SUPPORTED_CPUID"))?;
        let boot_vcpu = vcpu::BootVcpu {
            supported_cpuid: &supported_cpuid,
            count: cpus,
            emulated: execution == Execution::Emulated,
            mode: kernel.mode,
            entry: kernel.entry,
        };
        for (index, fd) in (0u8..).zip(&parts.vcpu_fds) {
            vcpu::configure_boot(fd, index, &boot_vcpu, mem)?;
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
        expedite_grace_period(&parts.vm_fd);
        Ok(parts.into_vm(config.clone(), execution, cmdline_text, false))
    }
}

/// Warns, as Firecracker does, about a disk whose size is not a whole number of
/// 512-byte sectors: the guest cannot see the partial sector at its end.
fn warn_about_disks(config: &VmConfig) {
    for disk in &config.disks {
        if let Ok(m) = std::fs::metadata(&disk.path) {
            let rest = m.len() % SECTOR_SIZE;
            if m.is_file() && rest != 0 {
                warn!(
                    "disk {}: its size ({} bytes) is not a multiple of {SECTOR_SIZE}; the guest does not see the last {rest} bytes",
                    disk.path.display(),
                    m.len()
                );
            }
        }
    }
}

/// The sector size of virtio-blk.
const SECTOR_SIZE: u64 = 512;
