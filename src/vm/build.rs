//! Building a VM: KVM, guest memory, the kernel and its boot information, devices and
//! vCPUs. Restore (`persist.rs`) shares everything here but the kernel loading.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use linux_loader::cmdline::Cmdline;
use log::{debug, info};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{kvm_call, Vm, VmCore, VmError};
use crate::arch::layout::*;
use crate::arch::mptable;
use crate::arch::regs::EntryMode;
use crate::boot;
use crate::config::{ExecutionChoice, VmConfig};
use crate::device_manager::{DeviceError, DeviceManager};
use crate::kvm::{self, Execution};
use crate::memory;
use crate::snapshot::VmState;
use crate::vcpu::{self, ExitSignal, Vcpu, VcpuShared};

/// What a Linux guest needs on its command line where KVM emulates kernel mode
/// (README, "The platform note"): no XSAVE, and no POPCNT or SMAP, whose instructions
/// the emulator rejects but which CPUID cannot hide there.
pub const EMULATION_CMDLINE: &[&str] = &["noxsave", "clearcpuid=popcnt,smap"];

/// Whether /dev/kvm can only be PVM: its module is loaded and no hardware one is.
fn pvm_only() -> bool {
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd")
}

/// Decides native or emulated, measuring it when asked to.
fn resolve_execution(choice: ExecutionChoice) -> Option<JoinHandle<Execution>> {
    match choice {
        // PVM (README, "The platform note") runs every guest that is not PVM-aware
        // through the instruction emulator: no calibration guest is needed to know it.
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

/// Where KVM puts the TSS it needs for real mode: a fixed address below 4 GiB.
#[allow(clippy::cast_possible_truncation)]
fn tss_addr() -> usize {
    KVM_TSS_ADDR as usize
}

fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
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
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, whose regions the VM keeps
        // (shared) for as long as the VM fd exists.
        unsafe { vm_fd.set_user_memory_region(r) }
            .map_err(kvm_call("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// The parts every VM has, fresh or restored, before the vCPUs get their state.
pub(super) struct Parts {
    kvm_setup: Option<JoinHandle<Result<(), VmError>>>,
    pub(super) vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitSignal>,
    pub(super) devices: DeviceManager,
    pub(super) vcpu_fds: Vec<kvm_ioctls::VcpuFd>,
    shared: Arc<VcpuShared>,
}

impl Parts {
    /// Creates the VM, its irqchip/PIT, registers `mem`, adds the devices (from saved
    /// state when given) and creates the vCPUs.
    pub(super) fn build(
        kvm: &kvm_ioctls::Kvm,
        config: &VmConfig,
        mem: GuestMemoryMmap,
        saved: Option<&VmState>,
        started: Instant,
    ) -> Result<Parts, VmError> {
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
        register_memory(&vm_fd, &mem)?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_call("KVM_CREATE_IRQCHIP"))?;
        // Starting the PIT's thread mostly waits on KVM (kthread start-up): do it beside
        // the rest of the setup.
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
            config.serial_out.as_deref(),
            stdin_for_guest().filter(|_| config.serial_stdin),
            saved.map(|s| &s.serial),
            started,
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
            kvm_setup: Some(kvm_setup),
            vm_fd,
            mem,
            exit,
            devices,
            vcpu_fds,
            shared,
        })
    }

    /// Waits for the PIT.
    pub(super) fn finish_kvm_setup(&mut self) -> Result<(), VmError> {
        match self.kvm_setup.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(VmError::ThreadPanicked("KVM setup")),
            None => Ok(()),
        }
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
            kvm_setup: _,
            vm_fd,
            mem,
            exit,
            devices,
            vcpu_fds,
            shared,
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
                mem,
                shared,
                exit,
                devices,
                execution,
                cmdline,
                config,
            },
            vcpus,
            start_paused,
        }
    }
}

impl Vm {
    /// Builds a VM: KVM, memory, kernel, devices and vCPUs. Nothing runs yet, and any
    /// error leaves nothing behind.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
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
        let mut parts = Parts::build(&kvm, config, mem, None, started)?;
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
        Ok(parts.into_vm(config.clone(), execution, cmdline_text, false))
    }
}

/// The guest reads the host's stdin when it is something that can be waited on.
fn stdin_for_guest() -> Option<File> {
    use std::os::fd::{AsFd, OwnedFd};
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    Some(File::from(fd))
}
