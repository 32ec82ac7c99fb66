//! What a restore may change about a snapshot's VM: the host resources its devices use
//! (taps, the vsock socket, disk files of the same size) and how its clock resumes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{SnapshotError, VirtioDeviceState, VmState};

/// How a restored guest's clock carries on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ClockChoice {
    /// From where it stood at the snapshot: the guest does not see the time it spent
    /// saved (its wall clock is late by that much).
    #[default]
    Keep,
    /// Forward by the real time that passed since the snapshot (kvmclock), as Firecracker's
    /// `clock_realtime` does: the guest's wall clock is right again (TLS, token expiry).
    Realtime,
}

/// Host resources to use instead of the snapshot's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreOverrides {
    /// (old tap, new tap) for network devices.
    pub taps: Vec<(String, String)>,
    /// (old path, new path) for disks; the new file must have the old one's size.
    pub disks: Vec<(PathBuf, PathBuf)>,
    /// The vsock device's new socket path.
    pub vsock_socket: Option<PathBuf>,
    /// How the clock carries on.
    pub clock: ClockChoice,
}

impl RestoreOverrides {
    /// Applies the device overrides to `state` (its configuration and its devices' saved
    /// state alike); each must name something the snapshot has.
    pub fn apply(&self, state: &mut VmState) -> Result<(), SnapshotError> {
        for (old, new) in &self.taps {
            let mut found = false;
            for n in state.config.net.iter_mut().filter(|n| &n.tap == old) {
                n.tap.clone_from(new);
                found = true;
            }
            for s in &mut state.virtio {
                if let VirtioDeviceState::Net(n) = &mut s.device {
                    if &n.config.tap == old {
                        n.config.tap.clone_from(new);
                        found = true;
                    }
                }
            }
            if !found {
                return Err(SnapshotError::NoSuchTap(old.clone()));
            }
        }
        for (old, new) in &self.disks {
            let mut found = false;
            for d in state.config.disks.iter_mut().filter(|d| &d.path == old) {
                d.path.clone_from(new);
                found = true;
            }
            for s in &mut state.virtio {
                if let VirtioDeviceState::Block(b) = &mut s.device {
                    if &b.path == old {
                        b.path.clone_from(new);
                        found = true;
                    }
                }
            }
            if !found {
                return Err(SnapshotError::NoSuchDisk(old.clone()));
            }
        }
        if let Some(path) = &self.vsock_socket {
            let mut found = false;
            if let Some(v) = &mut state.config.vsock {
                v.socket.clone_from(path);
                found = true;
            }
            for s in &mut state.virtio {
                if let VirtioDeviceState::Vsock(v) = &mut s.device {
                    v.config.socket.clone_from(path);
                    found = true;
                }
            }
            if !found {
                return Err(SnapshotError::NoVsock);
            }
        }
        Ok(())
    }

    /// The kvmclock value to restore: the saved one, or that plus the real time since the
    /// snapshot was taken (`now_ns`, CLOCK_REALTIME).
    pub fn clock_ns(&self, state: &VmState, now_ns: u64) -> u64 {
        match self.clock {
            ClockChoice::Keep => state.clock.clock,
            ClockChoice::Realtime => state
                .clock
                .clock
                .saturating_add(now_ns.saturating_sub(state.taken_at_ns)),
        }
    }
}

/// Parses `OLD=NEW`.
pub fn parse_pair(s: &str) -> Option<(String, String)> {
    let (a, b) = s.split_once('=')?;
    (!a.is_empty() && !b.is_empty()).then(|| (a.to_string(), b.to_string()))
}
