//! The i8254 PIT, put in KVM only once the guest starts its timer.
//!
//! KVM's PIT costs two SRCU grace periods (14–23 ms measured here): creating it turns
//! tick reinjection on, and turning reinjection off — with KVM_REINJECT_CONTROL, or
//! when KVM destroys the PIT at tear-down — unregisters two IRQ notifiers, each waiting
//! for a grace period. Guests that keep time with kvmclock and the LAPIC timer never
//! start the PIT's timer, so hearth answers ports 0x40–0x43 itself, on a copy of the
//! state KVM would hold and with the register semantics of KVM's i8254.c, until the
//! guest loads a count into channel 0 in a counting mode (0–4). Only then is the PIT
//! created in KVM and given that state with KVM_SET_PIT2, which starts channel 0's timer
//! exactly as KVM's own port handler would; from then on KVM answers the ports, and
//! reinjection is turned off on a side thread so that tear-down does not pay for it.
//!
//! Before that moment no timer runs: channel 0 reads its loaded count, and channels 1
//! and 2 count from the host's monotonic clock as KVM's do. When the PIT moves into KVM,
//! KVM_SET_PIT2 reloads channels 1 and 2, which restarts their count from that moment
//! (KVM does the same on every KVM_SET_PIT2).

use std::sync::Arc;

use hearth_devices::bus::BusDevice;
use kvm_bindings::{kvm_pit_channel_state, kvm_pit_config, kvm_pit_state2, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
use log::{debug, error};

use super::{kvm_call, VmError};
use crate::vcpu::{ExitReason, ExitSignal};

/// The PIT's ports: channels 0–2 and the mode/command register.
pub(super) const PIT_PORT_BASE: u64 = 0x40;
/// How many ports it has.
pub(super) const PIT_PORT_LEN: u64 = 4;

/// The PIT's input clock (KVM_PIT_FREQ).
const PIT_FREQ_HZ: u128 = 1_193_182;
/// Read/write states of a channel (KVM's RW_STATE_*; 1, the low byte only, is the default
/// case).
const RW_STATE_MSB: u8 = 2;
const RW_STATE_WORD0: u8 = 3;
const RW_STATE_WORD1: u8 = 4;
/// The mode KVM gives a channel no control word has programmed: no timer.
const MODE_UNSET: u8 = 0xff;

/// CLOCK_MONOTONIC in nanoseconds: the clock KVM's `count_load_time` is kept in.
fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is, and reads nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

/// The state KVM gives a new PIT (kvm_pit_reset): no channel programmed, counts 0x10000,
/// every gate high but channel 2's.
fn reset_state(now: i64) -> kvm_pit_state2 {
    let mut state = kvm_pit_state2::default();
    for (index, c) in state.channels.iter_mut().enumerate() {
        c.mode = MODE_UNSET;
        c.gate = u8::from(index != 2);
        c.count = 0x10000;
        if index != 0 {
            c.count_load_time = now;
        }
    }
    state
}

/// Whether loading a count into channel 0 in this mode starts KVM's timer.
fn starts_timer(mode: u8) -> bool {
    mode <= 4
}

/// What a port write asks of the PIT's owner.
#[derive(Debug, PartialEq, Eq)]
enum Effect {
    None,
    /// Channel 0 was loaded in a counting mode: its timer must run.
    StartTimer,
}

/// PIT input clock ticks since the channel's count was loaded. Channel 0 has no timer
/// while hearth holds the state, which KVM reads as no time elapsed.
fn ticks(c: &kvm_pit_channel_state, channel: usize, now: i64) -> u64 {
    if channel == 0 {
        return 0;
    }
    let ns = u128::from(now.saturating_sub(c.count_load_time).max(0).unsigned_abs());
    u64::try_from(ns * PIT_FREQ_HZ / 1_000_000_000).unwrap_or(u64::MAX)
}

/// KVM's pit_get_count. A saved state may hold any count: 0 reads as 0x10000.
fn current_count(c: &kvm_pit_channel_state, channel: usize, now: i64) -> u64 {
    let d = ticks(c, channel, now);
    let count = u64::from(c.count).max(1);
    match c.mode {
        0 | 1 | 4 | 5 => count.wrapping_sub(d) & 0xffff,
        3 => count - d.wrapping_mul(2) % count,
        _ => count - d % count,
    }
}

/// KVM's pit_get_out.
fn output(c: &kvm_pit_channel_state, channel: usize, now: i64) -> bool {
    let d = ticks(c, channel, now);
    let count = u64::from(c.count).max(1);
    match c.mode {
        1 => d < count,
        2 => d.is_multiple_of(count) && d != 0,
        3 => d % count < (count + 1) >> 1,
        4 | 5 => d == count,
        _ => d >= count,
    }
}

fn latch_count(c: &mut kvm_pit_channel_state, channel: usize, now: i64) {
    if c.count_latched == 0 {
        // KVM keeps the low 16 bits (0x10000 latches as 0).
        #[allow(clippy::cast_possible_truncation)]
        let latched = current_count(c, channel, now) as u16;
        c.latched_count = latched;
        c.count_latched = c.rw_mode;
    }
}

fn latch_status(c: &mut kvm_pit_channel_state, channel: usize, now: i64) {
    if c.status_latched == 0 {
        c.status = (u8::from(output(c, channel, now)) << 7)
            | (c.rw_mode << 4)
            | (c.mode.wrapping_shl(1))
            | c.bcd;
        c.status_latched = 1;
    }
}

/// KVM's pit_load_count, less the timer, which [`Effect::StartTimer`] asks for.
fn load_count(c: &mut kvm_pit_channel_state, channel: usize, value: u32, now: i64) -> Effect {
    c.count = if value == 0 { 0x10000 } else { value };
    if channel != 0 {
        c.count_load_time = now;
        Effect::None
    } else if starts_timer(c.mode) {
        Effect::StartTimer
    } else {
        Effect::None
    }
}

/// KVM's pit_ioport_write on `state`. `port` is 0–3.
fn write_port(state: &mut kvm_pit_state2, port: usize, value: u8, now: i64) -> Effect {
    if port == 3 {
        let channel = usize::from(value >> 6);
        if channel == 3 {
            // Read-back command.
            for (index, c) in state.channels.iter_mut().enumerate() {
                if value & (2 << index) != 0 {
                    if value & 0x20 == 0 {
                        latch_count(c, index, now);
                    }
                    if value & 0x10 == 0 {
                        latch_status(c, index, now);
                    }
                }
            }
        } else {
            let c = &mut state.channels[channel];
            let access = (value >> 4) & 3;
            if access == 0 {
                latch_count(c, channel, now);
            } else {
                c.rw_mode = access;
                c.read_state = access;
                c.write_state = access;
                c.mode = (value >> 1) & 7;
                if c.mode > 5 {
                    c.mode -= 4;
                }
                c.bcd = value & 1;
            }
        }
        return Effect::None;
    }
    let Some(c) = state.channels.get_mut(port) else {
        return Effect::None;
    };
    let value = u32::from(value);
    match c.write_state {
        RW_STATE_MSB => load_count(c, port, value << 8, now),
        RW_STATE_WORD0 => {
            // Only the low byte of write_latch is ever set: it comes from a port byte.
            c.write_latch = u8::try_from(value).unwrap_or(0);
            c.write_state = RW_STATE_WORD1;
            Effect::None
        }
        RW_STATE_WORD1 => {
            let v = u32::from(c.write_latch) | (value << 8);
            c.write_state = RW_STATE_WORD0;
            load_count(c, port, v, now)
        }
        _ => load_count(c, port, value, now),
    }
}

/// KVM's pit_ioport_read on `state`. `port` is 0–3.
fn read_port(state: &mut kvm_pit_state2, port: usize, now: i64) -> u8 {
    let Some(c) = state.channels.get_mut(port) else {
        return 0; // the mode register reads as nothing in KVM
    };
    let low = |v: u64| u8::try_from(v & 0xff).unwrap_or(0);
    let high = |v: u64| u8::try_from((v >> 8) & 0xff).unwrap_or(0);
    if c.status_latched != 0 {
        c.status_latched = 0;
        c.status
    } else if c.count_latched != 0 {
        let latched = u64::from(c.latched_count);
        match c.count_latched {
            RW_STATE_MSB => {
                c.count_latched = 0;
                high(latched)
            }
            RW_STATE_WORD0 => {
                c.count_latched = RW_STATE_MSB;
                low(latched)
            }
            _ => {
                c.count_latched = 0;
                low(latched)
            }
        }
    } else {
        let count = current_count(c, port, now);
        match c.read_state {
            RW_STATE_MSB => high(count),
            RW_STATE_WORD0 => {
                c.read_state = RW_STATE_WORD1;
                low(count)
            }
            RW_STATE_WORD1 => {
                c.read_state = RW_STATE_WORD0;
                high(count)
            }
            _ => low(count),
        }
    }
}

/// The guest's PIT: hearth's copy of its state until its timer starts, KVM's from then.
pub(super) struct Pit {
    vm_fd: Arc<VmFd>,
    exit: Arc<ExitSignal>,
    /// The state while hearth answers the ports; `None` once the PIT is in KVM.
    shadow: Option<kvm_pit_state2>,
}

impl std::fmt::Debug for Pit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pit")
            .field("in_kvm", &self.shadow.is_none())
            .finish_non_exhaustive()
    }
}

impl Pit {
    /// A PIT no guest has touched; nothing is created in KVM yet.
    pub(super) fn new(vm_fd: Arc<VmFd>, exit: Arc<ExitSignal>) -> Self {
        Self {
            vm_fd,
            exit,
            shadow: Some(reset_state(monotonic_ns())),
        }
    }

    /// The PIT's state, for a snapshot.
    pub(super) fn state(&self) -> Result<kvm_pit_state2, VmError> {
        match &self.shadow {
            Some(s) => Ok(*s),
            None => self.vm_fd.get_pit2().map_err(kvm_call("KVM_GET_PIT2")),
        }
    }

    /// Puts back a saved state before the guest runs. A channel 0 that may be counting
    /// needs KVM's timer now; any other state stays with hearth until the guest starts it.
    pub(super) fn restore(&mut self, state: &kvm_pit_state2) -> Result<(), VmError> {
        if starts_timer(state.channels[0].mode) {
            self.move_to_kvm(state)
        } else {
            self.shadow = Some(*state);
            Ok(())
        }
    }

    /// Creates the PIT in KVM with `state` and lets KVM answer its ports from now on.
    fn move_to_kvm(&mut self, state: &kvm_pit_state2) -> Result<(), VmError> {
        if self.shadow.is_none() {
            return self.vm_fd.set_pit2(state).map_err(kvm_call("KVM_SET_PIT2"));
        }
        let config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.vm_fd
            .create_pit2(config)
            .map_err(kvm_call("KVM_CREATE_PIT2"))?;
        self.shadow = None;
        // Before reinjection is turned off: KVM_REINJECT_CONTROL holds the PIT's lock for
        // its two grace periods, and KVM_SET_PIT2 would wait for it.
        self.vm_fd
            .set_pit2(state)
            .map_err(kvm_call("KVM_SET_PIT2"))?;
        // Reinjection off can run beside the guest: it only stops KVM from catching up on
        // missed ticks. The guest's own PIT port accesses wait for it meanwhile (the same
        // lock), once; nothing else does. If the VM ends first, its tear-down waits for
        // the ioctl, as it would have in KVM's own teardown of the PIT.
        let vm_fd = self.vm_fd.clone();
        let spawned = std::thread::Builder::new()
            .name("pit-reinject".into())
            .spawn(move || disable_reinjection(&vm_fd));
        if let Err(e) = spawned {
            debug!("cannot start the PIT reinjection thread ({e}): turning it off here");
            disable_reinjection(&self.vm_fd);
        }
        debug!("PIT created in KVM: channel 0 is counting");
        Ok(())
    }

    fn fail(&self, e: &VmError) {
        error!("PIT: {e}");
        self.exit.request(ExitReason::Error(format!("PIT: {e}")));
    }

    /// Applies one port access to KVM's PIT when the access left KVM before the PIT was
    /// created there (another vCPU created it meanwhile): rare, so a read-modify-write.
    fn access_in_kvm(&mut self, apply: impl FnOnce(&mut kvm_pit_state2, i64)) {
        let result = self
            .vm_fd
            .get_pit2()
            .map_err(kvm_call("KVM_GET_PIT2"))
            .and_then(|mut state| {
                apply(&mut state, monotonic_ns());
                self.vm_fd
                    .set_pit2(&state)
                    .map_err(kvm_call("KVM_SET_PIT2"))
            });
        if let Err(e) = result {
            self.fail(&e);
        }
    }
}

impl BusDevice for Pit {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Ok(port) = usize::try_from(offset) else {
            return;
        };
        data.fill(0);
        let mut value = 0;
        match &mut self.shadow {
            Some(state) => value = read_port(state, port, monotonic_ns()),
            None => self.access_in_kvm(|state, now| value = read_port(state, port, now)),
        }
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(port), Some(&value)) = (usize::try_from(offset), data.first()) else {
            return;
        };
        match &mut self.shadow {
            Some(state) => {
                if write_port(state, port, value, monotonic_ns()) == Effect::StartTimer {
                    let state = *state;
                    if let Err(e) = self.move_to_kvm(&state) {
                        self.fail(&e);
                    }
                }
            }
            None => self.access_in_kvm(|state, now| {
                write_port(state, port, value, now);
            }),
        }
    }
}

/// Turns off the PIT's catch-up of missed ticks (guests keep time with kvmclock and the
/// LAPIC timer). KVM would do it while destroying the PIT, waiting for the same SRCU
/// grace periods in the VM's tear-down.
fn disable_reinjection(vm_fd: &VmFd) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_word_then_count_starts_channel_0() {
        let mut s = reset_state(0);
        // Channel 0, lobyte/hibyte, mode 2.
        assert_eq!(write_port(&mut s, 3, 0x34, 0), Effect::None);
        assert_eq!(s.channels[0].mode, 2);
        assert_eq!(write_port(&mut s, 0, 0x9c, 0), Effect::None);
        assert_eq!(write_port(&mut s, 0, 0x2e, 0), Effect::StartTimer);
        assert_eq!(s.channels[0].count, 0x2e9c);
        assert_eq!(s.channels[0].write_state, RW_STATE_WORD0);
    }

    #[test]
    fn unprogrammed_channel_0_loads_without_a_timer() {
        let mut s = reset_state(0);
        assert_eq!(write_port(&mut s, 0, 5, 0), Effect::None);
        assert_eq!(s.channels[0].count, 5);
    }

    #[test]
    fn readback_and_latches() {
        let mut s = reset_state(0);
        write_port(&mut s, 3, 0x30, 0); // channel 0, lobyte/hibyte, mode 0
        write_port(&mut s, 3, 0xe2, 0); // read back channel 0's status (count too)
        assert_eq!(
            read_port(&mut s, 0, 0),
            0x30,
            "status: OUT low, rw 3, mode 0"
        );
        // The latched count follows the status: 0x10000 latches as 0.
        assert_eq!(read_port(&mut s, 0, 0), 0);
        assert_eq!(read_port(&mut s, 0, 0), 0);
        // Channel 2 counts from its load time on the host clock.
        write_port(&mut s, 3, 0xb0, 0); // channel 2, lobyte/hibyte, mode 0
        write_port(&mut s, 2, 0x00, 0);
        write_port(&mut s, 2, 0x10, 1_000); // count 0x1000 loaded at t = 1 µs
        write_port(&mut s, 3, 0x80, 1_000_000); // latch channel 2, 1 ms later
        let lo = read_port(&mut s, 2, 5_000_000);
        let hi = read_port(&mut s, 2, 5_000_000);
        let count = u16::from(lo) | (u16::from(hi) << 8);
        // 999 µs at 1.193182 MHz: 1191 ticks.
        assert_eq!(count, 0x1000 - 1191);
    }

    #[test]
    fn saved_garbage_never_panics() {
        let mut s = kvm_pit_state2::default();
        for c in s.channels.iter_mut() {
            c.count = 0;
            c.mode = 3;
            c.count_load_time = i64::MIN;
        }
        for port in 0..4 {
            read_port(&mut s, port, i64::MAX);
            write_port(&mut s, port, 0xff, i64::MAX);
            write_port(&mut s, 3, 0xfe, i64::MIN);
        }
    }
}
