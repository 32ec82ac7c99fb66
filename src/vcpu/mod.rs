//! vCPU threads: run KVM_RUN, forward port I/O and MMIO to the buses, and turn every
//! other way a vCPU can stop into a reason for the VM to end.

mod setup;
mod state;

pub use setup::{configure_boot, BootVcpu, SetupError};
pub use state::{restore_state, save_state, VcpuState, VcpuStateError};

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::memory::GuestMemoryMmap;
use hearth_devices::bus::{lock, Bus};
use kvm_bindings::{
    kvm_run, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// The process exit statuses of hearth's own outcomes (the guest's exit-port byte is the
/// guest's and passes through unchanged; reset and power-off are 0). Chosen high so that
/// they do not collide with the small statuses guests and shells use.
pub mod exit_status {
    /// hearth itself failed: bad input, a host resource, a snapshot it cannot read.
    pub const HEARTH_ERROR: i32 = 250;
    /// KVM stopped the guest with an error: emulation failure, failed entry, unknown exit.
    pub const KVM_ERROR: i32 = 251;
    /// The guest triple-faulted.
    pub const TRIPLE_FAULT: i32 = 252;
    /// The host stopped the VM (the library's stop, the console's Ctrl-a x).
    pub const STOPPED: i32 = 253;
    /// Stopped by a signal (SIGINT, SIGTERM, SIGHUP): 128 plus its number, as shells do.
    pub const SIGNAL_BASE: i32 = 128;
}

/// Why the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// The guest wrote a status to the exit port.
    GuestExit(u8),
    /// The guest reset the machine (i8042 or a KVM reset event).
    Reset,
    /// The guest powered off (a KVM shutdown system event).
    PowerOff,
    /// Every running vCPU halted with interrupts disabled: nothing can wake them.
    Halted,
    /// A triple fault; the text names the vCPU, the guest RIP, the instruction bytes and
    /// the registers.
    TripleFault(String),
    /// The host asked the VM to stop.
    Stopped,
    /// KVM stopped a vCPU with an error: an internal error, a failed entry, an unknown
    /// exit.
    Error(String),
}

impl ExitReason {
    /// The process exit status this reason maps to (see [`exit_status`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestExit(s) => i32::from(*s),
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Halted => 0,
            ExitReason::Stopped => exit_status::STOPPED,
            ExitReason::TripleFault(_) => exit_status::TRIPLE_FAULT,
            ExitReason::Error(_) => exit_status::KVM_ERROR,
        }
    }

    /// Whether the guest itself chose this end (exit port, reset, power-off, halt), as
    /// opposed to a fault, an error or the host.
    pub fn is_guest_choice(&self) -> bool {
        matches!(
            self,
            ExitReason::GuestExit(_)
                | ExitReason::Reset
                | ExitReason::PowerOff
                | ExitReason::Halted
        )
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestExit(s) => write!(f, "guest exited with status {s}"),
            ExitReason::Reset => write!(f, "guest reset the machine"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Halted => write!(f, "guest halted with interrupts disabled"),
            ExitReason::TripleFault(d) => write!(f, "guest triple-faulted: {d}"),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::Error(e) => write!(f, "{e}"),
        }
    }
}

/// Where the first reason for the VM to end is recorded, and who is woken by it.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal that writes `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self {
            reason: Mutex::new(None),
            evt,
        }
    }

    /// Ends the VM for `reason`, unless it already ends for another.
    pub fn request(&self, reason: ExitReason) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        // Only fails if the counter would overflow, which leaves it readable anyway.
        let _ = self.evt.write(1);
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    /// Whether a reason has been recorded.
    pub fn is_set(&self) -> bool {
        lock(&self.reason).is_some()
    }

    /// The eventfd written on each request.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

/// What a kicked vCPU found itself doing.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RunState {
    Running = 0,
    /// Never started (an AP waiting for INIT/SIPI).
    WaitingForSipi = 1,
    /// HLT with IF=0: only an NMI could wake it.
    HaltedForGood = 2,
}

/// Where paused vCPUs wait and leave their state.
#[derive(Debug, Default)]
pub struct PauseControl {
    /// vCPUs must park.
    pub requested: bool,
    /// Parked vCPU threads.
    pub parked: usize,
    /// Each vCPU's state, captured as it parked.
    pub states: Vec<Option<Result<VcpuState, VcpuStateError>>>,
    /// Counts resumes: a vCPU parked before the latest resume leaves its wait even if a
    /// new pause is already requested, and parks again with a fresh state.
    pub generation: u64,
}

/// The exits all vCPUs took to hearth, by kind (Firecracker's `vcpu` metrics).
#[derive(Debug, Default)]
pub struct ExitCounters {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// Exits that ended the VM with an error.
    pub failures: AtomicU64,
}

impl ExitCounters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by all vCPU threads and the thread that controls them.
#[derive(Debug)]
pub struct VcpuShared {
    /// Set to make every vCPU thread return.
    pub stop: AtomicBool,
    states: Vec<AtomicU8>,
    /// Why the VM ends.
    pub exit: Arc<ExitSignal>,
    /// Fast check for a pending pause.
    pause_requested: AtomicBool,
    /// Pause bookkeeping.
    pub pause: Mutex<PauseControl>,
    /// Signalled when a vCPU parks or the pause ends.
    pub pause_changed: Condvar,
    /// The MSRs to save in a snapshot.
    pub msr_indices: Vec<u32>,
    /// Exits by kind, for metrics.
    pub exits: ExitCounters,
}

impl VcpuShared {
    /// Shared state for `count` vCPUs.
    pub fn new(count: usize, exit: Arc<ExitSignal>, msr_indices: Vec<u32>) -> Self {
        Self {
            stop: AtomicBool::new(false),
            states: (0..count)
                .map(|_| AtomicU8::new(RunState::Running as u8))
                .collect(),
            exit,
            pause_requested: AtomicBool::new(false),
            pause: Mutex::new(PauseControl {
                states: (0..count).map(|_| None).collect(),
                ..Default::default()
            }),
            pause_changed: Condvar::new(),
            msr_indices,
            exits: ExitCounters::default(),
        }
    }

    /// Asks every vCPU to park (they must be kicked to notice). Asking again while a
    /// pause is requested changes nothing: vCPUs already parked under it keep the states
    /// they left (a VM started paused asks once before its vCPUs start and once more in
    /// `pause`; clearing the states then left early-parked vCPUs stateless, and the pause
    /// waited for them for ever).
    pub fn request_pause(&self) {
        let mut p = lock(&self.pause);
        if p.requested {
            return;
        }
        p.requested = true;
        p.states.iter_mut().for_each(|s| *s = None);
        self.pause_requested.store(true, Ordering::SeqCst);
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        let mut p = lock(&self.pause);
        p.requested = false;
        p.generation = p.generation.wrapping_add(1);
        self.pause_requested.store(false, Ordering::SeqCst);
        self.pause_changed.notify_all();
    }

    fn set_state(&self, index: usize, state: RunState) {
        self.states[index].store(state as u8, Ordering::SeqCst);
        let all_stuck = self
            .states
            .iter()
            .all(|s| s.load(Ordering::SeqCst) != RunState::Running as u8);
        let any_halted = self
            .states
            .iter()
            .any(|s| s.load(Ordering::SeqCst) == RunState::HaltedForGood as u8);
        if all_stuck && any_halted {
            self.exit.request(ExitReason::Halted);
        }
    }
}

thread_local! {
    /// This thread's kvm_run, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of KVM_RUN: real-time signal 35, the first
/// one that neither glibc (which keeps 32 and 33 for itself) nor musl (32 to 34) reserves,
/// so that the seccomp filters can name one number whichever C library hearth links.
pub fn kick_signal() -> i32 {
    35
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: `run` is this thread's mapped kvm_run, set by the vCPU thread before it
        // first enters KVM_RUN and valid while the VcpuFd lives (the thread owns it).
        // Setting immediate_exit makes a KVM_RUN that has not begun yet return at once, so
        // a kick is never lost between the stop check and the ioctl.
        unsafe { (*run).immediate_exit = 1 };
    }
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
                .map_err(|e| e.errno())
        })
        .map_err(vmm_sys_util::errno::Error::new)
}

/// One vCPU and what it needs to run.
pub struct Vcpu {
    /// Index and APIC id.
    pub index: usize,
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Guest memory, to show the instruction bytes of a failed emulation.
    pub mem: GuestMemoryMmap,
    /// Shared with the other vCPUs and the controller.
    pub shared: Arc<VcpuShared>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    /// Runs until the VM stops. Call on the vCPU's own thread.
    pub fn run(mut self) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|r| r.set(run_ptr));
        while !self.shared.stop.load(Ordering::SeqCst) {
            if self.shared.pause_requested.load(Ordering::SeqCst) {
                self.park();
                continue;
            }
            if let Some(reason) = self.run_once() {
                self.shared.exit.request(reason);
                break;
            }
        }
        KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    }

    /// One KVM_RUN; returns a reason when the VM must end.
    fn run_once(&mut self) -> Option<ExitReason> {
        let reason = self.run_exit();
        if matches!(reason, Some(ExitReason::Error(_))) {
            ExitCounters::add(&self.shared.exits.failures);
        }
        reason
    }

    fn run_exit(&mut self) -> Option<ExitReason> {
        let index = self.index;
        let exits = &self.shared.exits;
        match self.fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                ExitCounters::add(&exits.io_in);
                if !self.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ExitCounters::add(&exits.io_out);
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ExitCounters::add(&exits.mmio_read);
                if !self.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ExitCounters::add(&exits.mmio_write);
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => {
                self.shared.set_state(index, RunState::HaltedForGood);
                Some(ExitReason::Halted)
            }
            Ok(VcpuExit::Shutdown) => Some(ExitReason::TripleFault(format!(
                "vCPU {index}{}",
                self.register_dump()
            ))),
            Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                other => ExitReason::Error(format!("vCPU {index}: guest crashed (KVM system event {other})")),
            }),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(ExitReason::Error(format!(
                "vCPU {index}: KVM could not enter the guest (hardware entry failure reason {reason:#x} on host CPU {cpu})"
            ))),
            Ok(VcpuExit::InternalError) => Some(ExitReason::Error(self.describe_internal_error())),
            Ok(VcpuExit::Intr) => {
                self.on_kick();
                None
            }
            Ok(other) => {
                let what = format!("{other:?}");
                Some(ExitReason::Error(format!(
                    "vCPU {index}: unhandled KVM exit {what}{}",
                    self.register_dump()
                )))
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.on_kick();
                None
            }
            Err(e) => Some(ExitReason::Error(format!("vCPU {index}: KVM_RUN failed: {e}"))),
        }
    }

    /// Waits while the VM is paused, leaving this vCPU's state for a snapshot. KVM has
    /// completed the last exit's I/O before returning EINTR, so the state is consistent.
    fn park(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
        let state = save_state(&self.fd, &self.shared.msr_indices);
        let mut p = lock(&self.shared.pause);
        if let Some(slot) = p.states.get_mut(self.index) {
            *slot = Some(state);
        }
        p.parked += 1;
        self.shared.pause_changed.notify_all();
        let generation = p.generation;
        while p.requested && p.generation == generation && !self.shared.stop.load(Ordering::SeqCst)
        {
            p = self
                .shared
                .pause_changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
        p.parked -= 1;
        drop(p);
        // Tell the guest it was stopped (PVCLOCK_GUEST_STOPPED), as QEMU does: its
        // watchdogs (RCU stall, soft lockup) then do not count the pause as a hang.
        // KVM refuses when the guest has no kvmclock, which needs nothing.
        if !self.shared.stop.load(Ordering::SeqCst) {
            let _ = self.fd.kvmclock_ctrl();
        }
    }

    /// Called after a kick: see whether this vCPU can still make progress.
    fn on_kick(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
        if self.shared.stop.load(Ordering::SeqCst)
            || self.shared.pause_requested.load(Ordering::SeqCst)
        {
            return;
        }
        let state = match (self.fd.get_mp_state(), self.fd.get_regs()) {
            (Ok(mp), Ok(regs)) => match mp.mp_state {
                KVM_MP_STATE_HALTED if regs.rflags & (1 << 9) == 0 => RunState::HaltedForGood,
                KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => RunState::WaitingForSipi,
                _ => RunState::Running,
            },
            _ => RunState::Running,
        };
        self.shared.set_state(self.index, state);
    }

    fn describe_internal_error(&mut self) -> String {
        // SAFETY: KVM filled the `internal` member of the exit union for this exit reason.
        let (suberror, ndata, data) = unsafe {
            let internal = self.fd.get_kvm_run().__bindgen_anon_1.internal;
            (internal.suberror, internal.ndata, internal.data)
        };
        let what = match suberror {
            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => {
                "instruction emulation failed: KVM cannot execute this instruction"
            }
            kvm_bindings::KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
            kvm_bindings::KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
            _ => "unknown",
        };
        let extra: Vec<String> = data
            .iter()
            .take((ndata as usize).min(data.len()))
            .map(|d| format!("{d:#x}"))
            .collect();
        format!(
            "vCPU {}: KVM internal error, suberror {suberror} ({what}){}{}",
            self.index,
            if extra.is_empty() {
                String::new()
            } else {
                format!(" [data {}]", extra.join(" "))
            },
            self.register_dump()
        )
    }

    /// "; RIP ... (bytes ...); registers ..." for error messages.
    fn register_dump(&self) -> String {
        let Ok(regs) = self.fd.get_regs() else {
            return String::new();
        };
        let bytes = self
            .fd
            .translate_gva(regs.rip)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| {
                let mut b = [0u8; 16];
                self.mem
                    .read_slice(&mut b, GuestAddress(t.physical_address))
                    .ok()
                    .map(|_| b)
            })
            .map(|b| {
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "unreadable".into());
        let sregs = self.fd.get_sregs().unwrap_or_default();
        format!(
            " at guest RIP {:#x} (instruction bytes: {bytes}); rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rsp={:#x} rbp={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            regs.rip, regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rsp,
            regs.rbp, regs.rflags, sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_pause_request_keeps_the_states_of_parked_vcpus() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let shared = VcpuShared::new(1, Arc::new(ExitSignal::new(evt)), vec![]);
        shared.request_pause();
        // What vCPU 0 leaves as it parks under the first request.
        lock(&shared.pause).states[0] = Some(Err(VcpuStateError::Msrs { set: 0, saved: 1 }));
        lock(&shared.pause).parked = 1;
        shared.request_pause();
        assert!(lock(&shared.pause).states[0].is_some());
        // After a resume, a new pause wants fresh states.
        shared.resume();
        shared.request_pause();
        assert!(lock(&shared.pause).states[0].is_none());
    }
}
