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
use super::{kvm_call, Vm, VmCore, VmError};
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
    /// Other taps (by tap name), disk files, vsock socket, and how the clock carries on.
    pub overrides: snapshot::overrides::RestoreOverrides,
    /// Periodic checkpoints of the restored VM (the snapshot's own are not resumed).
    pub checkpoint: Option<super::CheckpointConfig>,
    /// The vsock device listens here instead of on the snapshot's socket.
    pub vsock_socket: Option<PathBuf>,
    /// (interface id, tap): network interfaces to attach to another tap than the
    /// snapshot's (Firecracker's `network_overrides`).
    pub taps: Vec<(String, String)>,
}

impl RestoreOptions {
    /// The description of the VM that restoring `dir` with these options builds (what
    /// it will open: for [`crate::landlock::Landlock::for_config`]).
    pub fn restored_config(&self, dir: &Path) -> Result<crate::VmConfig, VmError> {
        Ok(self.state_and_config(dir)?.1)
    }

    /// The snapshot's state with the overrides applied, and the VM description from it.
    fn state_and_config(&self, dir: &Path) -> Result<(VmState, crate::VmConfig), VmError> {
        let mut state = snapshot::read_state(dir)?;
        self.apply_overrides(&mut state)?;
        self.overrides.apply(&mut state)?;
        let mut config = state.config.clone();
        // Output and control go where this process is told, not where the first one's went.
        config.serial_out.clone_from(&self.serial_out);
        config.api_sock.clone_from(&self.api_sock);
        // Checkpoints were the first process's; a restored VM takes none unless told.
        config.checkpoint.clone_from(&self.checkpoint);
        Ok((state, config))
    }

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

    /// Puts the state back, the irqchip before the PIT, whose timer may tick into it;
    /// kvmclock at `clock_ns`.
    fn restore(vm_fd: &VmFd, pit: &mut Pit, state: &VmState, clock_ns: u64) -> Result<(), VmError> {
        for chip in &state.irqchips {
            vm_fd
                .set_irqchip(chip)
                .map_err(kvm_call("KVM_SET_IRQCHIP"))?;
        }
        pit.restore(&state.pit)?;
        let mut clock = state.clock;
        clock.clock = clock_ns;
        // Only KVM_CLOCK_REALTIME may be passed back; the rest are reports.
        clock.flags = 0;
        vm_fd.set_clock(&clock).map_err(kvm_call("KVM_SET_CLOCK"))?;
        Ok(())
    }
}

/// How to take a snapshot.
#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// Write only the pages changed since the VM's previous snapshot (or its restore);
    /// the new snapshot names that one as its parent.
    pub diff: bool,
    /// Let the VM run on once its state and memory are copied (the files are synced
    /// meanwhile); otherwise it stays paused.
    pub resume: bool,
}

/// What a snapshot took.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    /// The new snapshot's identifier.
    pub id: crate::snapshot::SnapshotId,
    /// Whether it is a diff.
    pub diff: bool,
    /// Pages of memory written (a diff's changed pages; all of RAM for a full one).
    pub pages: u64,
    /// How long the VM stood paused for it (when it was running before).
    pub paused: std::time::Duration,
}

impl Control {
    /// Writes a full snapshot of the VM to `dir`. The VM is paused for it and stays paused.
    pub(super) fn snapshot(&mut self, dir: &Path) -> Result<(), VmError> {
        self.snapshot_with(dir, &SnapshotOptions::default())
            .map(|_| ())
    }

    /// Writes a snapshot of the VM to `dir` as `options` say (see
    /// [`super::RunningVm::snapshot_with`]).
    pub(super) fn snapshot_with(
        &mut self,
        dir: &Path,
        options: &SnapshotOptions,
    ) -> Result<SnapshotInfo, VmError> {
        if !self.core.config.shares.is_empty() {
            return Err(VmError::SnapshotWithShares);
        }
        let was_paused = self.paused;
        self.pause()?;
        let started = Instant::now();
        let pending = self.capture(dir, options.diff);
        if pending.is_err() {
            // The vCPU states went into the failed snapshot: a pause takes them again.
            self.resume();
            if was_paused {
                self.pause()?;
            }
        }
        let pending = pending?;
        if options.resume {
            self.resume();
        }
        let paused = started.elapsed();
        let info = SnapshotInfo {
            id: pending.lineage().id,
            diff: options.diff,
            pages: match pending.lineage().memory.layers.last().map(|l| l.kind) {
                Some(crate::snapshot::LayerKind::Diff { pages }) => pages,
                _ => self.core.config.memory / crate::snapshot::layers::PAGE_SIZE,
            },
            paused,
        };
        match pending.commit() {
            Ok(lineage) => self.core.lineage = Some(lineage),
            Err(e) => {
                // The dirty log was consumed: the next diff has no parent to build on.
                self.core.lineage = None;
                return Err(e.into());
            }
        }
        debug!(
            "{} snapshot of {} MiB ({} pages) written to {} in {:?}, VM paused {:?}",
            if info.diff { "diff" } else { "full" },
            self.core.config.memory >> 20,
            info.pages,
            dir.display(),
            started.elapsed(),
            info.paused
        );
        Ok(info)
    }

    /// Captures the paused VM and writes its memory layer (not yet synced).
    fn capture(&mut self, dir: &Path, diff: bool) -> Result<snapshot::Pending, VmError> {
        let core = &mut self.core;
        let dirty = if diff {
            match (&core.lineage, core.dirty_logging) {
                (Some(_), true) => Some(super::dirty::take(&core.vm_fd, &core.mem)?),
                _ => return Err(snapshot::SnapshotError::NoPrevious.into()),
            }
        } else {
            if core.dirty_logging {
                super::dirty::take(&core.vm_fd, &core.mem)?;
            } else {
                super::dirty::start_logging(&core.vm_fd, &core.mem)?;
                core.dirty_logging = true;
            }
            None
        };
        // From here on the dirty log is consumed: a failure leaves no parent.
        let result = Self::write_state(core, dir, dirty.as_ref());
        if result.is_err() {
            core.lineage = None;
        }
        result
    }

    fn write_state(
        core: &VmCore,
        dir: &Path,
        dirty: Option<&crate::snapshot::DirtyPages>,
    ) -> Result<snapshot::Pending, VmError> {
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
            id: snapshot::SnapshotId([0; 16]),
            parent: None,
            writer: String::new(),
            taken_at_ns: snapshot::wall_clock_ns(),
            memory: snapshot::MemoryChain {
                size: core.config.memory,
                layers: Vec::new(),
            },
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
        let mode = match (dirty, &core.lineage) {
            (Some(dirty), Some(parent)) => snapshot::MemoryMode::Diff { parent, dirty },
            _ => snapshot::MemoryMode::Full,
        };
        let (pending, state) = snapshot::begin(dir, state, &core.mem, mode)?;
        // The saved vCPU states go back for another snapshot of the same pause.
        let mut ps = lock(&core.shared.pause);
        for (slot, s) in ps.states.iter_mut().zip(state.vcpus) {
            *slot = Some(Ok(s));
        }
        Ok(pending)
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
        let (state, config) = options.state_and_config(dir)?;
        let kvm = kvm::open()?;
        if state.vcpus.len() != config.cpus as usize {
            return Err(VmError::VcpuCount {
                saved: state.vcpus.len(),
                configured: config.cpus,
            });
        }
        let mem = snapshot::map_memory(dir, &state)?;
        let lineage = snapshot::lineage(dir, &state)?;
        let parts = Parts::build(&kvm, &config, mem, Some(&state), started, console)?;
        let clock_ns = options
            .overrides
            .clock_ns(&state, snapshot::wall_clock_ns());
        KernelState::restore(&parts.vm_fd, &mut lock(&parts.pit), &state, clock_ns)?;
        for (index, (fd, s)) in parts.vcpu_fds.iter().zip(&state.vcpus).enumerate() {
            vcpu::restore_state(fd, s).map_err(|source| VmError::VcpuState { index, source })?;
            // Tell the guest it was stopped, so that its watchdogs (RCU stall, soft
            // lockup) do not count the time since the snapshot as a hang. KVM refuses
            // when the guest never enabled kvmclock, which is fine.
            if let Err(e) = fd.kvmclock_ctrl() {
                debug!("vCPU {index}: KVM_KVMCLOCK_CTRL: {e}");
            }
        }
        super::build::expedite_grace_period(&parts.vm_fd);
        debug!(
            "restored {} vCPU(s), {} MiB from {}",
            config.cpus,
            config.memory >> 20,
            dir.display()
        );
        let mut vm = parts.into_vm(config, state.execution, state.cmdline, !options.resume);
        // Build registered the memory with dirty logging on.
        vm.core.lineage = Some(lineage);
        vm.core.dirty_logging = true;
        Ok(vm)
    }
}
