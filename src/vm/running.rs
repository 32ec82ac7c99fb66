//! A running VM: its vCPU threads and event loop started, paused and resumed, and
//! stopped. The API (src/api/) drives it from its own thread.

use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use hearth_devices::bus::lock;
use log::debug;

use super::event_loop::EventLoop;
use super::{Vm, VmCore, VmError};
use crate::kvm::Execution;
use crate::vcpu::{self, ExitReason};

/// How often an idle vCPU is checked for a halt it cannot leave.
pub const WATCHDOG_INTERVAL: Duration = Duration::from_millis(500);

impl Vm {
    /// Starts the vCPU threads and the event loop and returns a handle to control them.
    pub fn start(self) -> Result<RunningVm, VmError> {
        vcpu::install_kick_handler().map_err(|e| VmError::Thread {
            what: "vCPU kick signal handler".into(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let Vm {
            core,
            vcpus,
            start_paused,
        } = self;
        let event_loop = EventLoop::start(core.devices.subscribers.clone())?;

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
        let mut running = RunningVm {
            core,
            handles,
            event_loop,
            paused: false,
        };
        if start_paused {
            running.pause()?;
        }
        Ok(running)
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
}

/// A VM whose threads are running: pause, resume, snapshot, or wait for its end.
#[derive(Debug)]
pub struct RunningVm {
    pub(super) core: VmCore,
    handles: Vec<JoinHandle<()>>,
    event_loop: EventLoop,
    pub(super) paused: bool,
}

impl RunningVm {
    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Whether KVM runs this guest's kernel natively or emulates it.
    pub fn execution(&self) -> Execution {
        self.core.execution
    }

    /// What the VM was built (or restored) from.
    pub fn config(&self) -> &crate::VmConfig {
        &self.core.config
    }

    /// Stops every vCPU at a consistent point (out of KVM_RUN, its last exit handled)
    /// and parks the event loop between device events.
    pub fn pause(&mut self) -> Result<(), VmError> {
        if self.paused {
            return Ok(());
        }
        let shared = &self.core.shared;
        shared.request_pause();
        let want = self.handles.len();
        let mut p = lock(&shared.pause);
        while p.parked < want {
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
    pub fn resume(&mut self) {
        if self.paused {
            self.event_loop.pause.resume();
            self.core.shared.resume();
            self.paused = false;
            debug!("resumed");
        }
    }

    /// Puts another file behind disk `index` (in the guest's order) and tells the guest;
    /// later snapshots record the new file.
    pub fn set_disk_path(&mut self, index: usize, path: &std::path::Path) -> Result<(), VmError> {
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
    pub fn device_counters(&self) -> DeviceCounters {
        let mut c = DeviceCounters::default();
        for slot in &self.core.devices.virtio {
            lock(&slot.device).add_counters(&mut c);
        }
        c
    }

    /// Waits for the VM to end, then stops every thread and returns why it ended.
    pub fn wait(self) -> Result<ExitReason, VmError> {
        while !self.has_ended() {
            let mut fds = [libc::pollfd {
                fd: self.exit_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            #[allow(clippy::cast_possible_truncation)] // 500 ms fits an i32
            let timeout = WATCHDOG_INTERVAL.as_millis() as i32;
            // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout) };
            if n == 0 {
                self.watchdog();
            }
        }
        Ok(self.stop())
    }

    /// A descriptor that becomes readable when the VM ends, for callers that wait on
    /// other things too (the API server): they call [`RunningVm::watchdog`] every
    /// [`WATCHDOG_INTERVAL`] and [`RunningVm::finish`] once the VM has ended.
    pub fn exit_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self.core.exit.event())
    }

    /// Whether the VM has ended.
    pub fn has_ended(&self) -> bool {
        self.core.exit.is_set()
    }

    /// Checks running vCPUs for a halt they cannot leave on their own.
    pub fn watchdog(&self) {
        if !self.paused {
            kick_all(&self.handles);
        }
    }

    /// Stops every thread and returns why the VM ended ([`ExitReason::Stopped`] if it
    /// had not).
    pub fn finish(self) -> ExitReason {
        self.stop()
    }

    fn stop(mut self) -> ExitReason {
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
        let reason = self.core.exit.reason().unwrap_or(ExitReason::Stopped);
        debug!("VM ended: {reason}");
        reason
    }

    /// Ends the VM from the host side.
    pub fn shutdown(self) -> ExitReason {
        self.core.exit.request(ExitReason::Stopped);
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
