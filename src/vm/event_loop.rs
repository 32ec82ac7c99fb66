//! The event-loop thread that runs every device's queue work, and how the VMM stops it
//! or parks it between events while the VM is paused.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use hearth_devices::bus::lock;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::VmError;
use crate::device_manager::{DeviceError, Subscriber};
use crate::vcpu::ExitSignal;

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

/// Parks the event loop between device events while the VM is paused, so no request is
/// half-done when a snapshot is taken.
#[derive(Debug)]
pub(super) struct LoopPause {
    evt: EventFd,
    state: Mutex<(bool, bool)>, // (requested, parked)
    changed: Condvar,
}

impl LoopPause {
    pub(super) fn new() -> Result<Self, VmError> {
        Ok(Self {
            evt: EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?,
            state: Mutex::new((false, false)),
            changed: Condvar::new(),
        })
    }

    /// Returns once the loop is parked; fails if the VM ends first.
    pub(super) fn pause(&self, exit: &ExitSignal) -> Result<(), VmError> {
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

    pub(super) fn resume(&self) {
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

/// The running event loop: its thread, and how to stop or park it.
#[derive(Debug)]
pub(super) struct EventLoop {
    pub(super) pause: Arc<LoopPause>,
    stop_evt: EventFd,
    /// Events handled so far (Firecracker's `vmm.device_events`).
    events: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), event_manager::Error>>>,
}

impl EventLoop {
    /// Starts the loop over `subscribers` on its own thread.
    pub(super) fn start(
        subscribers: Vec<Subscriber>,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, VmError> {
        let pause = Arc::new(LoopPause::new()?);
        let stop_evt = EventFd::new(EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
        let stopped = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let handled = events.clone();
        let mut em: EventManager<Subscriber> = EventManager::new().map_err(VmError::EventLoop)?;
        for s in subscribers {
            em.add_subscriber(s);
        }
        em.add_subscriber(Arc::new(Mutex::new(LoopPauseHandler(pause.clone()))));
        em.add_subscriber(Arc::new(Mutex::new(StopHandler {
            evt: stop_evt.try_clone().map_err(DeviceError::EventFd)?,
            stopped: stopped.clone(),
        })));
        let thread = std::thread::Builder::new()
            .name("event-loop".into())
            .spawn(move || {
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::EventLoop) {
                    exit.request(crate::vcpu::ExitReason::Error(e.to_string()));
                    return Ok(());
                }
                while !stopped.load(Ordering::SeqCst) {
                    let n = em.run()?;
                    handled.fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(())
            })
            .map_err(|source| VmError::Thread {
                what: "event loop".into(),
                source,
            })?;
        Ok(Self {
            pause,
            stop_evt,
            events,
            thread: Some(thread),
        })
    }

    /// Events handled so far.
    pub(super) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Stops the loop (unparking it first) and waits for its thread.
    pub(super) fn stop(&mut self) {
        self.pause.resume();
        let _ = self.stop_evt.write(1);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => log::info!("event loop: {e}"),
            Some(Err(_)) => log::info!("the event loop thread panicked"),
            _ => {}
        }
    }
}
