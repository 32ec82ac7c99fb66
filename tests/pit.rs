//! The PIT: hearth keeps it out of KVM until the guest starts its timer (src/vm/pit.rs).
//! A guest that programs it with its very first instructions must find a working i8254,
//! and a guest that never touches it must not get one in KVM.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{hearth, root};

/// Builds resources/reset-guest once per test binary; returns the ELF called `name`.
fn tiny_guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let out = BUILT.get_or_init(|| {
        let out = root().join("target").join("tiny-guests");
        let status = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(root().join("resources/reset-guest"))
            .arg(format!("O={}", out.display()))
            .status()
            .expect("cannot run make: install make and gcc (see .ci/run)");
        assert!(status.success(), "building resources/reset-guest failed");
        out
    });
    out.join(name)
}

#[test]
fn guest_programming_the_pit_at_once_finds_a_working_timer() {
    let guest = tiny_guest("pit-guest.elf");
    let run = hearth(["run", "--kernel", guest.to_str().unwrap(), "-v"]);
    // The guest checks the read-back status of its control word, a count that goes down
    // once loaded, and OUT rising at terminal count; it exits with the failed check.
    assert_eq!(run.code(), 0, "the PIT guest failed a check: {run:#?}");
    assert!(run.stdout.contains("pit: ok"), "{run:#?}");
    assert!(
        run.stderr
            .contains("PIT created in KVM: channel 0 is counting"),
        "the timer must run in KVM: {run:#?}"
    );
}

#[test]
fn guest_that_never_uses_the_pit_gets_none_in_kvm() {
    let guest = tiny_guest("reset-guest.elf");
    let run = hearth(["run", "--kernel", guest.to_str().unwrap(), "-v"]);
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stderr.contains("VM ended: guest reset the machine"),
        "{run:#?}"
    );
    assert!(!run.stderr.contains("PIT created in KVM"), "{run:#?}");
}

/// A snapshot of a guest whose PIT is counting brings the counting PIT back: the
/// restored guest keeps seeing its channel reload (one "tick" line per period) and
/// ends after its 200th, with no tick lost or repeated across the two processes.
#[test]
fn restored_guest_keeps_its_counting_pit() {
    let guest = tiny_guest("ticks-guest.elf");
    let dir = common::scratch();
    let dir = dir.as_path();
    let sock = dir.join("api.sock");
    let serial1 = dir.join("serial-1.txt");
    let serial2 = dir.join("serial-2.txt");
    let snap = dir.join("snap");
    let mut first = common::spawn_hearth(&[
        "run",
        "--kernel",
        guest.to_str().unwrap(),
        "--memory",
        "64M",
        "--api-sock",
        sock.to_str().unwrap(),
        "--serial-out",
        serial1.to_str().unwrap(),
    ]);
    common::wait_for_text(&serial1, "tick\ntick\ntick\n", Duration::from_secs(60));
    let r = common::ctl(&sock, &["snapshot", "--dir", snap.to_str().unwrap()]);
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(r.code(), 0, "snapshot: {r:#?}");

    let run = common::hearth_with_timeout(
        [
            "restore",
            "--dir",
            snap.to_str().unwrap(),
            "--resume",
            "-v",
            "--serial-out",
            serial2.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        run.code(),
        0,
        "the restored guest ends after its ticks: {run:#?}"
    );
    let before = std::fs::read_to_string(&serial1).unwrap();
    let after = std::fs::read_to_string(&serial2).unwrap();
    assert!(after.contains("tick"), "ticks after the restore: {after:?}");
    let all = format!("{before}{after}");
    assert_eq!(
        all.matches("tick\n").count(),
        200,
        "before the snapshot:\n{before}\nafter the restore:\n{after}"
    );
}
