//! seccomp end to end: every hearth thread runs filtered, and a call outside a thread's
//! filter stops hearth with status 148 and a line naming the thread and the call.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// The Seccomp mode of every thread of `pid`, by thread name.
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let t = t.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(t.join("comm")),
            std::fs::read_to_string(t.join("status")),
        ) else {
            continue; // the thread just ended
        };
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push((comm.trim().to_string(), mode));
    }
    out.sort();
    out
}

/// Starts hearth with every kind of device and thread, waits until the guest runs, and
/// returns the filter mode of each thread.
fn modes_of_a_running_vm(extra: &[&str]) -> Vec<(String, String)> {
    let dir = scratch();
    let disk = dir.as_path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let serial = dir.as_path().join("serial.txt");
    let vsock = format!("cid=3,socket={}", dir.as_path().join("v.sock").display());
    let mut args: Vec<String> = [
        "run",
        "--kernel",
        &test_guest().display().to_string(),
        "--cmdline",
        "blk.write=0:0:1:5 rng.read=16 sleep=3000",
        "--cpus",
        "2",
        "--disk",
        &format!("path={}", disk.display()),
        "--rng",
        "--vsock",
        &vsock,
        "--serial-out",
        &serial.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(
        extra
            .iter()
            .map(|s| s.replace("DIR", &dir.as_path().display().to_string())),
    );
    let child = spawn_hearth(&args);
    let pid = child.id();
    wait_for_text(&serial, "rng read 16", Duration::from_secs(60));
    let modes = seccomp_modes(pid);
    let run = wait_bounded(child, Duration::from_secs(60), "hearth with seccomp");
    assert_eq!(run.code(), 0, "{run:#?}");
    modes
}

#[test]
fn every_thread_is_filtered_with_and_without_the_api() {
    for extra in [&[][..], &["--api-sock", "DIR/api.sock"][..]] {
        let modes = modes_of_a_running_vm(extra);
        for name in ["hearth", "event-loop", "vcpu0", "vcpu1"] {
            assert!(modes.iter().any(|(n, _)| n == name), "{name}: {modes:?}");
        }
        assert!(modes.iter().all(|(_, m)| m == "2"), "{extra:?}: {modes:?}");
    }
    let modes = modes_of_a_running_vm(&["--no-seccomp"]);
    assert!(
        modes.iter().any(|(n, m)| n == "vcpu0" && m == "0"),
        "{modes:?}"
    );
}

/// hearth's own filters as one Firecracker-format file, with `kind`'s rules for
/// `syscall` left out.
fn filters_without(dir: &Path, kind: &str, syscall: &str) -> PathBuf {
    let mut all = serde_json::Map::new();
    for entry in std::fs::read_dir(root().join("resources/seccomp")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let mut filter: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if name == kind {
            let rules = filter["filter"].as_array_mut().unwrap();
            let before = rules.len();
            rules.retain(|r| r["syscall"] != syscall);
            assert!(rules.len() < before, "{kind} has no {syscall} rule");
        }
        all.insert(name, filter);
    }
    let path = dir.join("custom.json");
    std::fs::write(&path, serde_json::to_vec(&all).unwrap()).unwrap();
    path
}

#[test]
fn a_call_outside_the_filter_stops_hearth_with_148_and_names_it() {
    let dir = scratch();
    let disk = dir.as_path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
    // The block device seeks before each transfer: the guest's first disk write is the
    // event loop's first lseek.
    let custom = filters_without(dir.as_path(), "event-loop", "lseek");
    let start = Instant::now();
    let run = boot_test_guest(
        "blk.write=0:0:1:5 exit=9",
        &[
            "--disk",
            &format!("path={}", disk.display()),
            "--seccomp-filter",
            custom.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code(), 148, "{run:#?}");
    assert!(
        run.stderr.contains(
            "hearth: seccomp: the event-loop thread made system call 8 (lseek), which its filter does not allow"
        ),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("exit: 9"), "{run:#?}");
    assert!(std::fs::read(&disk).unwrap().iter().all(|b| *b == 0));
    assert!(start.elapsed() < Duration::from_secs(60));
    // The same filter compiled ahead of time behaves the same.
    let compiled = dir.as_path().join("custom.bpf");
    let r = hearth([
        "seccomp-compile",
        custom.to_str().unwrap(),
        compiled.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 0, "{r:#?}");
    let run = boot_test_guest(
        "blk.write=0:0:1:5 exit=9",
        &[
            "--disk",
            &format!("path={}", disk.display()),
            "--seccomp-filter",
            compiled.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code(), 148, "{run:#?}");
    assert!(run.stderr.contains("(lseek)"), "{run:#?}");
}

#[test]
fn a_bad_filter_file_is_refused_with_one_line() {
    let dir = scratch();
    let bad = dir.as_path().join("bad.json");
    std::fs::write(&bad, r#"{"vmm": {"default_action": "trap", "filter_action": "allow", "filter": [{"syscall": "no_such_call"}]}}"#).unwrap();
    for (file, want) in [
        (bad.clone(), "no_such_call"),
        (
            dir.as_path().join("missing.json"),
            "cannot read seccomp filter",
        ),
    ] {
        let run = boot_test_guest("exit=0", &["--seccomp-filter", file.to_str().unwrap()]);
        assert_eq!(run.code(), 250, "hearth's own error status: {run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
        assert!(run.stderr.contains(want), "{run:#?}");
    }
}

#[test]
fn a_filter_compiled_by_firecracker_loads_and_filters() {
    // Firecracker v1.16.1's own compiled filters (allow everything, but installed: each
    // thread shows seccomp mode 2).
    let fc = root().join("tests/data/firecracker-v1.16.1-default-allow.bpf");
    let modes = modes_of_a_running_vm(&["--seccomp-filter", fc.to_str().unwrap()]);
    assert!(modes.iter().all(|(_, m)| m == "2"), "{modes:?}");
}
