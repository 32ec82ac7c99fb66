//! Shared by the hand-run benchmarks: paths, the test guest, failing loudly.
#![allow(dead_code)]

pub mod vmm;

use std::path::PathBuf;
use std::process::Command;

/// Prints `msg` and exits non-zero.
pub fn fail(what: &str, msg: impl std::fmt::Display) -> ! {
    eprintln!("{what} bench: {msg}");
    std::process::exit(1);
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the test guest into target/bench-guest and returns its ELF.
pub fn build_guest(what: &str) -> PathBuf {
    let out = root().join("target/bench-guest");
    let ok = Command::new("make")
        .args(["-s", "-C"])
        .arg(root().join("resources/test-guest"))
        .arg(format!("O={}", out.display()))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fail(what, "cannot build the test guest (needs gcc and make)");
    }
    out.join("test-guest.elf")
}

/// A number from the environment, or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Builds the zero-cost guests (resources/reset-guest) into target/bench-guest and
/// returns the ELF named `name` (`reset-guest.elf`: resets at its first instruction;
/// `idle-guest.elf`: halts with interrupts on, forever).
pub fn build_tiny_guest(what: &str, name: &str) -> PathBuf {
    let out = root().join("target/bench-guest");
    let ok = Command::new("make")
        .args(["-s", "-C"])
        .arg(root().join("resources/reset-guest"))
        .arg(format!("O={}", out.display()))
        .arg(out.join(name))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fail(what, format!("cannot build {name} (needs gcc and make)"));
    }
    out.join(name)
}

/// The peer Firecracker binary: FIRECRACKER_BIN, or ../shared/peers next to the
/// repository; None (after saying so) when there is none.
pub fn firecracker_bin(what: &str) -> Option<PathBuf> {
    let (path, from_env) = match std::env::var_os("FIRECRACKER_BIN") {
        Some(p) => (PathBuf::from(p), true),
        None => (root().join("../shared/peers/firecracker-v1.16.1"), false),
    };
    if path.is_file() {
        return Some(path);
    }
    if from_env {
        fail(
            what,
            format!("FIRECRACKER_BIN={} is not a file", path.display()),
        );
    }
    println!(
        "Firecracker not found at {} (set FIRECRACKER_BIN): measuring hearth alone",
        path.display()
    );
    None
}

/// The 1-, 5- and 15-minute load averages and the running/total tasks.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Median of `v` (which it sorts); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// VmHWM (peak resident set) of a live process, in KiB.
pub fn vm_hwm_kib(pid: impl std::fmt::Display) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
