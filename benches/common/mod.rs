//! Shared by the hand-run benchmarks: paths, the test guest, failing loudly.
#![allow(dead_code)]

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
