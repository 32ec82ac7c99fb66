//! A running VM: its vCPU threads and event loop started, paused and resumed, and
//! stopped. The API (src/api/) drives it from its own thread.
//!
//! The state that control needs sits behind one mutex shared by the [`RunningVm`] and any
//! number of [`VmHandle`]s, so that one thread can wait on the VM while others pause,
//! snapshot or stop it.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth_devices::bus::lock;
use log::debug;

use super::event_loop::EventLoop;
use super::{Vm, VmCore, VmError};
use crate::kvm::Execution;
use crate::vcpu::{self, ExitReason, ExitSignal};

/// How often an idle vCPU is checked for a halt it cannot leave.
pub const WATCHDOG_INTERVAL: Duration = Duration::from_millis(500);

impl Vm {
    /// Starts the vCPU threads and the event loop and returns a handle to control them.
    pub fn start(self) -> Result<RunningVm, VmError> {
        vcpu::install_kick_handler().map_err(|e| VmError::Thread {
            what: "vCPU kick signal handler".into(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let checkpoints = match &self.core.config.checkpoint {
            Some(c) => Some(super::checkpoint::Checkpointer::new(c.clone())?),
            None => None,
        };
        let Vm {
            core,
            vcpus,
            start_paused,
        } = self;
        let event_loop = EventLoop::start(core.devices.subscribers.clone(), core.exit.clone())?;

        if start_paused {
            // The vCPUs park before their first KVM_RUN.
            core.shared.request_pause();
        }
        let mut handles = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let name = format!("vcpu{}", vcpu.index);
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    // The filter goes on before the guest's first instruction.
                    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                        vcpu.shared.exit.request(ExitReason::Error(e.to_string()));
                        return;
                    }
                    if vcpu.index == 0 {
                        debug!("first KVM_RUN");
                    }
                    vcpu.run()
                })
                .map_err(|source| VmError::Thread { what: name, source });
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    core.exit.request(ExitReason::Error(e.to_string()));
                    break;
                }
            }
        }
        // Every other thread has started (and filters itself): now this one.
        if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vmm) {
            core.exit.request(ExitReason::Error(e.to_string()));
        }
        let exit = core.exit.clone();
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                core,
                handles,
                event_loop,
                paused: false,
                ended: None,
            }),
            exit,
        });
        if start_paused {
            lock(&shared.control).pause()?;
        }
        Ok(RunningVm {
            shared,
            last_kick: Instant::now(),
            checkpoints,
        })
    }
}

/// Totals of the device models' counters (for Firecracker-style metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// All disks.
    pub block: hearth_devices::virtio::block::BlockCounters,
    /// All network devices.
    pub net: hearth_devices::virtio::net::NetCounters,
    /// Bytes the entropy device gave the guest.
    pub entropy_bytes: u64,
    /// The vsock device.
    pub vsock: hearth_devices::virtio::vsock::VsockCounters,
    /// COM1.
    pub uart: hearth_devices::legacy::serial::UartCounters,
    /// vCPU exits to hearth, all vCPUs together.
    pub vcpu: VcpuCounters,
    /// Events the event loop handled.
    pub device_events: u64,
}

/// vCPU exits by kind (Firecracker's `vcpu` metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuCounters {
    /// Port reads.
    pub exit_io_in: u64,
    /// Port writes.
    pub exit_io_out: u64,
    /// MMIO reads.
    pub exit_mmio_read: u64,
    /// MMIO writes.
    pub exit_mmio_write: u64,
    /// Exits that ended the VM with an error.
    pub failures: u64,
}

/// What controlling a running VM needs, behind [`Shared::control`].
#[derive(Debug)]
pub(super) struct Control {
    pub(super) core: VmCore,
    handles: Vec<JoinHandle<()>>,
    event_loop: EventLoop,
    pub(super) paused: bool,
    /// Set once the threads are stopped and joined: why the VM ended.
    ended: Option<ExitReason>,
}

/// Shared by a [`RunningVm`] and its [`VmHandle`]s.
#[derive(Debug)]
struct Shared {
    control: Mutex<Control>,
    /// The VM's end, readable without the control lock.
    exit: Arc<ExitSignal>,
}

impl Control {
    /// Fails once the VM has ended.
    pub(super) fn check_running(&self) -> Result<(), VmError> {
        if self.ended.is_some() {
            Err(VmError::NotRunning)
        } else {
            Ok(())
        }
    }

    /// Puts another file behind disk `index` (in the guest's order) and tells the guest.
    fn set_disk_path(&mut self, index: usize, path: &Path) -> Result<(), VmError> {
        self.check_running()?;
        let mut disks = self
            .core
            .devices
            .virtio
            .iter()
            .filter(|slot| lock(&slot.device).as_block_mut().is_some());
        let slot = disks.nth(index).ok_or(VmError::NoSuchDisk(index))?;
        let mut device = lock(&slot.device);
        let block = device.as_block_mut().ok_or(VmError::NoSuchDisk(index))?;
        block
            .set_path(path.to_owned())
            .map_err(crate::device_manager::virtio::VirtioError::from)?;
        drop(device);
        if let Some(disk) = self.core.config.disks.get_mut(index) {
            disk.path = path.to_owned();
        }
        Ok(())
    }

    /// What the device models counted so far, summed over devices of a kind.
    fn device_counters(&self) -> DeviceCounters {
        let mut c = DeviceCounters::default();
        for slot in &self.core.devices.virtio {
            lock(&slot.device).add_counters(&mut c);
        }
        if let Some(serial) = &self.core.devices.serial {
            c.uart = lock(serial).counters();
        }
        let e = &self.core.shared.exits;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        c.vcpu = VcpuCounters {
            exit_io_in: get(&e.io_in),
            exit_io_out: get(&e.io_out),
            exit_mmio_read: get(&e.mmio_read),
            exit_mmio_write: get(&e.mmio_write),
            failures: get(&e.failures),
        };
        c.device_events = self.event_loop.events();
        c
    }

    /// Stops every vCPU at a consistent point (out of KVM_RUN, its last exit handled)
    /// and parks the event loop between device events.
    pub(super) fn pause(&mut self) -> Result<(), VmError> {
        self.check_running()?;
        if self.paused {
            return Ok(());
        }
        let shared = &self.core.shared;
        shared.request_pause();
        let want = self.handles.len();
        let mut p = lock(&shared.pause);
        // Every state too: right after a resume, vCPUs still waking from the last pause
        // count as parked but have left no state for this one yet.
        while p.parked < want || p.states.iter().any(Option::is_none) {
            if self.core.exit.is_set() {
                drop(p);
                shared.resume();
                return Err(VmError::NotRunning);
            }
            kick_all(&self.handles);
            p = shared
                .pause_changed
                .wait_timeout(p, Duration::from_millis(5))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        drop(p);
        if let Err(e) = self.event_loop.pause.pause(&self.core.exit) {
            shared.resume();
            return Err(e);
        }
        self.paused = true;
        debug!("paused");
        Ok(())
    }

    /// Lets a paused VM run on.
    pub(super) fn resume(&mut self) {
        if self.paused {
            self.event_loop.pause.resume();
            self.core.shared.resume();
            self.paused = false;
            debug!("resumed");
        }
    }

    /// Stops and joins every thread, flushes and releases the devices (their sockets are
    /// removed) and the API socket; returns why the VM ended. Does it once.
    fn finish(&mut self) -> ExitReason {
        if let Some(reason) = &self.ended {
            return reason.clone();
        }
        // Whatever ended the VM first is its reason; without one, the host stopped it.
        self.core.exit.request(ExitReason::Stopped);
        let shared = &self.core.shared;
        shared.stop.store(true, Ordering::SeqCst);
        self.event_loop.pause.resume();
        shared.resume();
        // A vCPU may be just about to enter KVM_RUN: kick until every thread has left.
        while self.handles.iter().any(|h| !h.is_finished()) {
            kick_all(&self.handles);
            std::thread::sleep(Duration::from_micros(50));
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        self.event_loop.stop();
        self.core.devices.flush();
        // Drops the devices now rather than with the last handle: taps, disks and the
        // vsock socket are released when the VM ends.
        drop(std::mem::take(&mut self.core.devices));
        self.paused = false;
        let reason = self.core.exit.reason().unwrap_or(ExitReason::Stopped);
        debug!("VM ended: {reason}");
        self.ended = Some(reason.clone());
        reason
    }
}

/// A VM whose threads are running: pause, resume, snapshot, or wait for its end. Dropping
/// it stops the VM. [`RunningVm::handle`] gives handles that other threads can use.
#[derive(Debug)]
pub struct RunningVm {
    shared: Arc<Shared>,
    last_kick: Instant,
    checkpoints: Option<super::checkpoint::Checkpointer>,
}

/// A cloneable, thread-safe handle to a running VM: pause, resume, snapshot and stop it
/// from any thread while another waits on the [`RunningVm`]. Once the VM has ended, every
/// call but [`VmHandle::stop`] fails with [`VmError::NotRunning`].
#[derive(Clone, Debug)]
pub struct VmHandle {
    shared: Arc<Shared>,
}

impl VmHandle {
    /// Pauses the VM (see [`RunningVm::pause`]).
    pub fn pause(&self) -> Result<(), VmError> {
        lock(&self.shared.control).pause()
    }

    /// Lets a paused VM run on.
    pub fn resume(&self) -> Result<(), VmError> {
        let mut c = lock(&self.shared.control);
        c.check_running()?;
        c.resume();
        Ok(())
    }

    /// Writes a snapshot to `dir`; the VM stays paused (see [`RunningVm::snapshot`]).
    pub fn snapshot(&self, dir: &Path) -> Result<(), VmError> {
        lock(&self.shared.control).snapshot(dir)
    }

    /// New rate limits for a device (see [`RunningVm::set_rate_limiter`]).
    pub fn set_rate_limiter(
        &self,
        target: crate::rate_limit::RateLimitTarget,
        config: hearth_devices::rate_limiter::RateLimiterConfig,
    ) -> Result<(), VmError> {
        lock(&self.shared.control).set_rate_limiter(target, config)
    }

    /// Writes a snapshot as `options` say (see [`RunningVm::snapshot_with`]).
    pub fn snapshot_with(
        &self,
        dir: &Path,
        options: &super::SnapshotOptions,
    ) -> Result<super::SnapshotInfo, VmError> {
        lock(&self.shared.control).snapshot_with(dir, options)
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        lock(&self.shared.control).paused
    }

    /// Whether the VM is still running (or paused): no reason to end has been recorded.
    pub fn is_running(&self) -> bool {
        !self.shared.exit.is_set()
    }

    /// Asks the VM to stop. Returns at once; the thread waiting on the [`RunningVm`]
    /// gets [`ExitReason::Stopped`] (unless the guest ended it first).
    pub fn stop(&self) {
        self.shared.exit.request(ExitReason::Stopped);
    }

    /// How long the guest took to write the boot marker (Firecracker's boot timer: the
    /// byte 123 to MMIO 0xc0000000), from when this VM started being built.
    pub fn boot_time(&self) -> Option<Duration> {
        lock(&self.shared.control).core.booted.get().copied()
    }
}

impl RunningVm {
    /// A handle for other threads.
    pub fn handle(&self) -> VmHandle {
        VmHandle {
            shared: self.shared.clone(),
        }
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        lock(&self.shared.control).paused
    }

    /// Whether KVM runs this guest's kernel natively or emulates it.
    pub fn execution(&self) -> Execution {
        lock(&self.shared.control).core.execution
    }

    /// Stops every vCPU at a consistent point (out of KVM_RUN, its last exit handled)
    /// and parks the event loop between device events.
    pub fn pause(&mut self) -> Result<(), VmError> {
        lock(&self.shared.control).pause()
    }

    /// Lets a paused VM run on.
    pub fn resume(&mut self) {
        lock(&self.shared.control).resume();
    }

    /// Writes a snapshot of the VM to `dir`. The VM is paused for it and stays paused;
    /// call [`RunningVm::resume`] to carry on.
    pub fn snapshot(&mut self, dir: &Path) -> Result<(), VmError> {
        lock(&self.shared.control).snapshot(dir)
    }

    /// Puts new limits on a device while the VM runs (a default config removes them); a
    /// throttled queue picks them up within 100 ms, and snapshots keep them.
    pub fn set_rate_limiter(
        &mut self,
        target: crate::rate_limit::RateLimitTarget,
        config: hearth_devices::rate_limiter::RateLimiterConfig,
    ) -> Result<(), VmError> {
        lock(&self.shared.control).set_rate_limiter(target, config)
    }

    /// Writes a snapshot of the VM to `dir` as `options` say: full or diff (only the
    /// pages changed since the VM's previous snapshot or its restore), paused afterwards
    /// or running on. The files are written beside the directory's old ones and renamed
    /// into place, so that a crash leaves the old snapshot or the new one, and a VM
    /// restored from the old one keeps running.
    pub fn snapshot_with(
        &mut self,
        dir: &Path,
        options: &super::SnapshotOptions,
    ) -> Result<super::SnapshotInfo, VmError> {
        lock(&self.shared.control).snapshot_with(dir, options)
    }

    /// Takes a periodic checkpoint if one is due, and says when the next one is (`None`
    /// without `--checkpoint-every`). Whoever waits on the VM calls it: [`RunningVm::wait`]
    /// does, and so does the API server's loop.
    pub fn checkpoint_tick(&mut self) -> Option<Instant> {
        let cp = self.checkpoints.as_mut()?;
        cp.tick(&mut lock(&self.shared.control));
        Some(cp.due())
    }

    /// Starts periodic checkpoints as `config` says, replacing any running ones (their
    /// numbering carries on in the directory), or stops them with `None`. The first
    /// checkpoint is due one interval from now.
    pub fn set_checkpoints(
        &mut self,
        config: Option<super::CheckpointConfig>,
    ) -> Result<(), VmError> {
        self.checkpoints = match &config {
            Some(c) => Some(super::checkpoint::Checkpointer::new(c.clone())?),
            None => None,
        };
        lock(&self.shared.control).core.config.checkpoint = config;
        Ok(())
    }

    /// The periodic checkpoints taken so far (`None` without `--checkpoint-every`).
    pub fn checkpoint_stats(&self) -> Option<super::CheckpointStats> {
        self.checkpoints.as_ref().map(|c| c.stats.clone())
    }

    /// How long the guest took to write the boot marker, from when this VM started being
    /// built (see [`VmHandle::boot_time`]).
    pub fn boot_time(&self) -> Option<Duration> {
        self.handle().boot_time()
    }

    /// Waits for the VM to end (serving the API socket meanwhile), then stops every
    /// thread and returns why it ended.
    pub fn wait(mut self) -> Result<ExitReason, VmError> {
        loop {
            if let Some(reason) = self.wait_until(None)? {
                return Ok(reason);
            }
        }
    }

    /// Waits at most `timeout` for the VM to end: `Some(reason)` once it has (its threads
    /// then stopped, as with [`RunningVm::wait`]), `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitReason>, VmError> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    /// Whether the VM has ended, without waiting (serves a pending API request).
    pub fn try_wait(&mut self) -> Result<Option<ExitReason>, VmError> {
        self.wait_until(Some(Instant::now()))
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<Option<ExitReason>, VmError> {
        loop {
            if self.shared.exit.is_set() {
                return Ok(Some(lock(&self.shared.control).finish()));
            }
            let now = Instant::now();
            if self.last_kick.elapsed() >= WATCHDOG_INTERVAL {
                // Halted vCPUs are found by kicking them now and then.
                let c = lock(&self.shared.control);
                if !c.paused {
                    kick_all(&c.handles);
                }
                self.last_kick = now;
            }
            let next_checkpoint = self.checkpoint_tick();
            let mut wait = WATCHDOG_INTERVAL.saturating_sub(self.last_kick.elapsed());
            if let Some(due) = next_checkpoint {
                wait = wait.min(due.saturating_duration_since(Instant::now()));
            }
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            let mut fds = [libc::pollfd {
                fd: self.exit_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // At most 500 ms: fits an i32.
            let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
            if deadline.is_some_and(|d| Instant::now() >= d) && !self.shared.exit.is_set() {
                return Ok(None);
            }
        }
    }

    /// A descriptor that becomes readable when the VM ends, for callers that wait on
    /// other things too (the API server): they call [`RunningVm::watchdog`] every
    /// [`WATCHDOG_INTERVAL`] and [`RunningVm::finish`] once the VM has ended.
    pub fn exit_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.shared.exit.event())
    }

    /// Whether the VM has ended.
    pub fn has_ended(&self) -> bool {
        self.shared.exit.is_set()
    }

    /// Checks running vCPUs for a halt they cannot leave on their own.
    pub fn watchdog(&self) {
        let c = lock(&self.shared.control);
        if !c.paused {
            kick_all(&c.handles);
        }
    }

    /// Stops every thread and returns why the VM ended ([`ExitReason::Stopped`] if it
    /// had not).
    pub fn finish(self) -> ExitReason {
        lock(&self.shared.control).finish()
    }

    /// What the VM was built (or restored) from, as it is now.
    pub fn config(&self) -> crate::VmConfig {
        lock(&self.shared.control).core.config.clone()
    }

    /// What the device models counted so far, summed over devices of a kind.
    pub fn device_counters(&self) -> DeviceCounters {
        lock(&self.shared.control).device_counters()
    }

    /// Puts another file behind disk `index` (in the guest's order) and tells the guest;
    /// later snapshots record the new file.
    pub fn set_disk_path(&mut self, index: usize, path: &Path) -> Result<(), VmError> {
        lock(&self.shared.control).set_disk_path(index, path)
    }

    /// Ends the VM from the host side.
    pub fn shutdown(self) -> ExitReason {
        self.shared.exit.request(ExitReason::Stopped);
        lock(&self.shared.control).finish()
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        // Nothing may keep running without its owner: stop it (a no-op once ended).
        lock(&self.shared.control).finish();
    }
}

fn kick_all(handles: &[JoinHandle<()>]) {
    use std::os::unix::thread::JoinHandleExt;
    for h in handles.iter().filter(|h| !h.is_finished()) {
        // SAFETY: the thread is alive (not finished) and not yet joined, so its pthread_t
        // is valid; the signal has a handler installed.
        unsafe { libc::pthread_kill(h.as_pthread_t() as _, vcpu::kick_signal()) };
    }
}
