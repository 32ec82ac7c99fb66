//! `hearth snapshot inspect DIR`: what a snapshot holds, every checksum verified.

use std::path::Path;

use super::{
    file_version, layers, read_state, Layer, LayerKind, SnapshotError, VirtioDeviceState,
    STATE_FILE,
};

/// A snapshot described, its memory layers checked.
#[derive(Debug)]
pub struct Inspection {
    /// The state file's format version.
    pub version: u32,
    /// The state as read (its own CRC-64 verified).
    pub state: super::VmState,
    /// Each memory layer and what checking it found (`Ok` when its CRC-64 matched).
    pub layers: Vec<(Layer, Result<(), String>)>,
}

impl Inspection {
    /// Whether every layer checked out.
    pub fn ok(&self) -> bool {
        self.layers.iter().all(|(_, r)| r.is_ok())
    }
}

/// Reads the snapshot in `dir` and verifies its state file and every memory layer.
pub fn inspect(dir: &Path) -> Result<Inspection, SnapshotError> {
    let state = read_state(dir)?;
    let version = file_version(&dir.join(STATE_FILE))?;
    state.memory.check(dir)?;
    let layers = state
        .memory
        .layers
        .iter()
        .map(|l| {
            let r = layers::verify(dir, l, state.memory.size).map_err(|e| e.to_string());
            (l.clone(), r)
        })
        .collect();
    Ok(Inspection {
        version,
        state,
        layers,
    })
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.state;
        let c = &s.config;
        writeln!(f, "format version: {} (state CRC-64 ok)", self.version)?;
        writeln!(f, "written by: {}", s.writer)?;
        writeln!(f, "snapshot id: {}", s.id)?;
        match &s.parent {
            Some(p) => writeln!(f, "parent: {p} (this is a diff snapshot)")?,
            None => writeln!(f, "parent: none")?,
        }
        let secs = s.taken_at_ns / 1_000_000_000;
        writeln!(f, "taken at: {secs} s since the epoch (host wall clock)")?;
        writeln!(f, "kernel: {}", c.kernel.display())?;
        writeln!(f, "command line: {}", s.cmdline)?;
        writeln!(f, "execution: {}", s.execution)?;
        writeln!(f, "vCPUs: {}", s.vcpus.len())?;
        writeln!(
            f,
            "memory: {} MiB ({} bytes)",
            s.memory.size >> 20,
            s.memory.size
        )?;
        for slot in &s.virtio {
            let what = match &slot.device {
                VirtioDeviceState::Block(b) => format!(
                    "disk {} ({} sectors{})",
                    b.path.display(),
                    b.capacity,
                    if b.read_only { ", read-only" } else { "" }
                ),
                VirtioDeviceState::Net(n) => format!("network on tap {}", n.config.tap),
                VirtioDeviceState::Rng(_) => "entropy".to_string(),
                VirtioDeviceState::Vsock(v) => format!(
                    "vsock cid {} on {}",
                    v.config.cid,
                    v.config.socket.display()
                ),
            };
            writeln!(f, "virtio at {:#x} irq {}: {what}", slot.base, slot.irq)?;
        }
        writeln!(
            f,
            "memory chain ({} layer(s), oldest first):",
            self.layers.len()
        )?;
        for (l, r) in &self.layers {
            let kind = match l.kind {
                LayerKind::Full => "full".to_string(),
                LayerKind::Diff { pages } => format!("diff, {pages} pages"),
            };
            let check = match r {
                Ok(()) => "CRC-64 ok".to_string(),
                Err(e) => format!("FAILED: {e}"),
            };
            writeln!(f, "  {} ({kind}, {} bytes): {check}", l.file_name(), l.len)?;
        }
        Ok(())
    }
}
