//! hearth's exit statuses: the guest's own byte passes through, and each of hearth's own
//! outcomes has its documented status with the reason on stderr, with or without -v.

mod common;

use common::*;
use hearth::exit_status;

#[test]
fn the_guests_status_is_the_guests() {
    let run = boot_test_guest("console=ttyS0 exit=1", &[]);
    assert_eq!(run.code(), 1, "{run:#?}");
    // Every non-zero exit says why.
    assert!(
        run.stderr.contains("hearth: guest exited with status 1"),
        "{run:#?}"
    );
    let run = boot_test_guest("console=ttyS0 end=reset", &[]);
    assert_eq!(run.code(), 0, "{run:#?}");
    // A clean run says nothing without -v (the boot-marker time is a -v line).
    assert_eq!(run.stderr, "", "{run:#?}");
}

#[test]
fn a_triple_fault_has_its_own_status_and_says_where() {
    for verbose in [false, true] {
        let extra: &[&str] = if verbose { &["-v"] } else { &[] };
        let run = boot_test_guest("console=ttyS0 fault=ud2 exit=1", extra);
        assert!(run.stdout.contains("fault: ud2"), "{run:#?}");
        assert_eq!(run.code(), exit_status::TRIPLE_FAULT, "{run:#?}");
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains("guest triple-faulted"))
            .unwrap_or_else(|| panic!("no triple-fault line: {run:#?}"));
        // ud2 is 0f 0b.
        assert!(
            line.contains("at guest RIP 0x") && line.contains("instruction bytes: 0f 0b"),
            "{line}"
        );
        assert!(line.contains("rsp=0x") && line.contains("cr3=0x"), "{line}");
    }
}

#[test]
fn a_hearth_error_has_its_own_status() {
    let run = hearth(["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(run.code(), exit_status::HEARTH_ERROR, "{run:#?}");
    assert!(run.stderr.starts_with("hearth: error: "), "{run:#?}");
}

#[test]
fn statuses_are_distinct() {
    let mut all = [
        exit_status::HEARTH_ERROR,
        exit_status::KVM_ERROR,
        exit_status::TRIPLE_FAULT,
        exit_status::STOPPED,
        exit_status::SIGNAL_BASE + libc::SIGINT,
        exit_status::SIGNAL_BASE + libc::SIGTERM,
    ];
    all.sort_unstable();
    assert!(all.windows(2).all(|w| w[0] != w[1]), "{all:?}");
    assert!(all.iter().all(|s| (2..=255).contains(s)), "{all:?}");
}
