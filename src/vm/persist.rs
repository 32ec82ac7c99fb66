//! A VM's persistence: capturing a paused VM into a snapshot (vCPUs, the in-kernel
//! irqchip, PIT and clock, devices, memory) and building a VM back from one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hearth_devices::bus::lock;
use hearth_devices::persist::Persist;
use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use kvm_ioctls::VmFd;
use log::debug;

use super::build::Parts;
use super::pit::Pit;
use super::running::Control;
use super::{kvm_call, Vm, VmError};
use crate::console::Console;
use crate::kvm;
use crate::snapshot::{self, VmState};
use crate::vcpu;

/// What `hearth restore` may change about a VM.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Run at once instead of waiting for `resume`.
    pub resume: bool,
    /// Guest serial output to this file (stdout when absent).
    pub serial_out: Option<PathBuf>,
    /// Serve the control socket here.
    pub api_sock: Option<PathBuf>,
    /// The vsock device listens here instead of on the snapshot's socket.
    pub vsock_socket: Option<PathBuf>,
    /// (interface id, tap): network interfaces to attach to another tap than the
    /// snapshot's (Firecracker's `network_overrides`).
    pub taps: Vec<(String, String)>,
}

impl RestoreOptions {
    /// Points the saved devices (and their description) at the sockets and taps given
    /// for this process.
    fn apply_overrides(&self, state: &mut snapshot::VmState) -> Result<(), VmError> {
        use snapshot::VirtioDeviceState;
        if let Some(socket) = &self.vsock_socket {
            let vsock = state
                .config
                .vsock
                .as_mut()
                .ok_or(VmError::Override("the snapshot has no vsock device".into()))?;
            vsock.socket.clone_from(socket);
            for slot in &mut state.virtio {
                if let VirtioDeviceState::Vsock(v) = &mut slot.device {
                    v.config.socket.clone_from(socket);
                }
            }
        }
        for (id, tap) in &self.taps {
            let matches = |n: &crate::config::NetConfig| n.id.as_deref() == Some(id.as_str());
            let net = state
                .config
                .net
                .iter_mut()
                .find(|n| matches(n))
                .ok_or_else(|| {
                    VmError::Override(format!("the snapshot has no network interface '{id}'"))
                })?;
            net.tap.clone_from(tap);
            for slot in &mut state.virtio {
                if let VirtioDeviceState::Net(n) = &mut slot.device {
                    if matches(&n.config) {
                        n.config.tap.clone_from(tap);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The VM-wide state KVM keeps in the kernel: PIC/IOAPIC, PIT, kvmclock.
struct KernelState {
    irqchips: Vec<kvm_irqchip>,
    pit: kvm_pit_state2,
    clock: kvm_clock_data,
}

impl KernelState {
    fn save(vm_fd: &VmFd, pit: &Pit) -> Result<Self, VmError> {
        let mut irqchips = Vec::new();
        // The two PICs and the IOAPIC.
        for chip_id in 0..3 {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm_fd
                .get_irqchip(&mut chip)
                .map_err(kvm_call("KVM_GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        Ok(Self {
            irqchips,
            pit: pit.state()?,
            clock: vm_fd.get_clock().map_err(kvm_call("KVM_GET_CLOCK"))?,
        })
    }

    /// Puts the state back, the irqchip before the PIT, whose timer may tick into it.
    fn restore(vm_fd: &VmFd, pit: &mut Pit, state: &VmState) -> Result<(), VmError> {
        for chip in &state.irqchips {
            vm_fd
                .set_irqchip(chip)
                .map_err(kvm_call("KVM_SET_IRQCHIP"))?;
        }
        pit.restore(&state.pit)?;
        let mut clock = state.clock;
        // Only KVM_CLOCK_REALTIME may be passed back; the rest are reports.
        clock.flags = 0;
        vm_fd.set_clock(&clock).map_err(kvm_call("KVM_SET_CLOCK"))?;
        Ok(())
    }
}

impl Control {
    /// Writes a snapshot of the VM to `dir`. The VM is paused for it and stays paused.
    pub(super) fn snapshot(&mut self, dir: &Path) -> Result<(), VmError> {
        self.pause()?;
        let started = Instant::now();
        let core = &self.core;
        let kernel = KernelState::save(&core.vm_fd, &lock(&core.pit))?;
        let vcpus = {
            let mut p = lock(&core.shared.pause);
            let mut states = Vec::with_capacity(p.states.len());
            for (index, s) in p.states.iter_mut().enumerate() {
                match s.take() {
                    Some(Ok(state)) => states.push(state),
                    Some(Err(source)) => return Err(VmError::VcpuState { index, source }),
                    None => return Err(VmError::NoVcpuState(index)),
                }
            }
            states
        };
        let state = VmState {
            config: core.config.clone(),
            execution: core.execution,
            cmdline: core.cmdline.clone(),
            vcpus,
            irqchips: kernel.irqchips,
            pit: kernel.pit,
            clock: kernel.clock,
            serial: match &core.devices.serial {
                Some(s) => lock(s).save(),
                None => Default::default(),
            },
            virtio: core.devices.virtio.iter().map(|s| s.save()).collect(),
        };
        let result = snapshot::write(dir, &state, &core.mem);
        let vcpus = state.vcpus;
        // The saved vCPU states were taken out; put them back for another snapshot.
        {
            let mut p = lock(&core.shared.pause);
            for (slot, s) in p.states.iter_mut().zip(vcpus) {
                *slot = Some(Ok(s));
            }
        }
        result?;
        debug!(
            "snapshot of {} MiB written to {} in {:?}",
            core.config.memory >> 20,
            dir.display(),
            started.elapsed()
        );
        Ok(())
    }
}

impl Vm {
    /// Rebuilds a VM from the snapshot in `dir`: guest memory is mapped copy-on-write
    /// from the snapshot (which is never modified), disks are reopened, devices and
    /// vCPUs get their saved state. The VM starts paused unless `resume` is set.
    pub fn restore(dir: &Path, options: &RestoreOptions) -> Result<Self, VmError> {
        Self::restore_with_console(dir, options, Console::new())
    }

    /// Like [`Vm::restore`], with the guest's console where `console` says.
    pub fn restore_with_console(
        dir: &Path,
        options: &RestoreOptions,
        console: Console,
    ) -> Result<Self, VmError> {
        let started = Instant::now();
        let mut state = snapshot::read_state(dir)?;
        options.apply_overrides(&mut state)?;
        let mut config = state.config.clone();
        // Output and control go where this process is told, not where the first one's went.
        config.serial_out = options.serial_out.clone();
        config.api_sock = options.api_sock.clone();
        let kvm = kvm::open()?;
        if state.vcpus.len() != config.cpus as usize {
            return Err(VmError::VcpuCount {
                saved: state.vcpus.len(),
                configured: config.cpus,
            });
        }
        let mem = snapshot::map_memory(dir, config.memory)?;
        let parts = Parts::build(&kvm, &config, mem, Some(&state), started, console)?;
        KernelState::restore(&parts.vm_fd, &mut lock(&parts.pit), &state)?;
        for (index, (fd, s)) in parts.vcpu_fds.iter().zip(&state.vcpus).enumerate() {
            vcpu::restore_state(fd, s).map_err(|source| VmError::VcpuState { index, source })?;
        }
        super::build::expedite_grace_period(&parts.vm_fd);
        debug!(
            "restored {} vCPU(s), {} MiB from {}",
            config.cpus,
            config.memory >> 20,
            dir.display()
        );
        Ok(parts.into_vm(config, state.execution, state.cmdline, !options.resume))
    }
}
