//! A running VM: its vCPU threads and event loop started, paused and resumed, served
//! over the control socket, and stopped.

use std::os::unix::net::UnixListener;
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
const WATCHDOG_INTERVAL: Duration = Duration::from_millis(500);

impl Vm {
    /// Starts the vCPU threads and the event loop and returns a handle to control them.
    pub fn start(self) -> Result<RunningVm, VmError> {
        vcpu::install_kick_handler().map_err(|e| VmError::Thread {
            what: "vCPU kick signal handler".into(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        let api = match &self.core.config.api_sock {
            Some(path) => Some(crate::api::bind(path)?),
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
        let mut running = RunningVm {
            core,
            handles,
            event_loop,
            paused: false,
            api,
        };
        if start_paused {
            running.pause()?;
        }
        Ok(running)
    }
}

/// A VM whose threads are running: pause, resume, snapshot, or wait for its end.
#[derive(Debug)]
pub struct RunningVm {
    pub(super) core: VmCore,
    handles: Vec<JoinHandle<()>>,
    event_loop: EventLoop,
    pub(super) paused: bool,
    api: Option<UnixListener>,
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

    /// Waits for the VM to end (serving the API socket meanwhile), then stops every
    /// thread and returns why it ended.
    pub fn wait(mut self) -> Result<ExitReason, VmError> {
        while !self.core.exit.is_set() {
            let mut fds = vec![libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(self.core.exit.event()),
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
            #[allow(clippy::cast_possible_truncation)] // 500 ms fits an i32
            let timeout = WATCHDOG_INTERVAL.as_millis() as i32;
            // SAFETY: `fds` is a valid array of pollfds for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
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
        if let Some(path) = &self.core.config.api_sock {
            let _ = std::fs::remove_file(path);
        }
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
