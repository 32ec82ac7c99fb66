//! Snapshot and restore: a VM checkpointed mid-run comes back in a new process and
//! carries on where it was, devices included; bad snapshots are refused.

// Test patterns and syscall plumbing narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::snap::*;
use common::*;

const T: Duration = Duration::from_secs(60);

fn start(dir: &Path, cmdline: &str, extra: &[&str]) -> GuestVm {
    GuestVm::run_at(
        dir.join("api.sock"),
        dir.join("serial-1.txt"),
        cmdline,
        extra,
    )
}

/// Starts a counting guest, snapshots it after `count: 3`, and kills it. Returns the
/// snapshot directory and the last count the first process printed.
fn snapshot_mid_run(dir: &Path, cmdline: &str, extra: &[&str]) -> (PathBuf, u64) {
    let vm = start(dir, cmdline, extra);
    wait_for_text(&vm.serial, "count: 3\n", T);
    let snap = dir.join("snap");
    let r = ctl(&vm.sock, &["snapshot", "--dir", snap.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "snapshot: {r:#?}");
    // Paused: nothing more is printed.
    let before = std::fs::read_to_string(&vm.serial).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let after = std::fs::read_to_string(&vm.serial).unwrap();
    assert_eq!(before, after, "the VM stays paused after the snapshot");
    drop(vm); // kills the first process
    let last = *counts(&after).last().expect("counted before the snapshot");
    (snap, last)
}

fn restore(snap: &Path, serial: &Path) -> Run {
    restore_resumed(snap, serial, &[], T)
}

fn counter_continues(cpus: &str) {
    let dir = scratch();
    let (snap, last) = snapshot_mid_run(
        dir.as_path(),
        "count=30 delay=20000 exit=7",
        &["--cpus", cpus, "--memory", "64M"],
    );
    let serial = dir.as_path().join("serial-2.txt");
    let run = restore(&snap, &serial);
    assert_eq!(
        run.code(),
        7,
        "the restored guest exits as it would have: {run:#?}"
    );
    let out = std::fs::read_to_string(&serial).unwrap();
    let after = counts(&out);
    assert_eq!(
        after.first(),
        Some(&(last + 1)),
        "continues from the snapshot, not from zero: {out}"
    );
    assert_eq!(
        after,
        ((last + 1)..=30).collect::<Vec<_>>(),
        "no gap: {out}"
    );
    assert!(!out.contains("hearth-test-guest"), "no reboot: {out}");
    assert!(out.ends_with("exit: 7\n"), "{out}");
}

#[test]
fn counter_continues_after_restore_one_vcpu() {
    counter_continues("1");
}

#[test]
fn counter_continues_after_restore_two_vcpus() {
    counter_continues("2");
}

#[test]
fn disk_requests_continue_across_restore() {
    let dir = scratch();
    let disk = dir.as_path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
    let disk_arg = format!("path={}", disk.display());
    let (snap, _) = snapshot_mid_run(
        dir.as_path(),
        "blk.write=0:0:1:11 count=12 delay=20000 blk.write=0:1:1:22 blk.read=0:0:2 blk.info exit=0",
        &["--disk", &disk_arg],
    );
    let before = std::fs::read(&disk).unwrap();
    assert!(
        before[..512].iter().all(|b| *b == 11),
        "written before the snapshot"
    );
    let serial = dir.as_path().join("serial-2.txt");
    let run = restore(&snap, &serial);
    assert_eq!(run.code(), 0, "{run:#?}");
    let out = std::fs::read_to_string(&serial).unwrap();
    let data = std::fs::read(&disk).unwrap();
    assert!(data[..512].iter().all(|b| *b == 11));
    assert!(
        data[512..1024].iter().all(|b| *b == 22),
        "written after restore"
    );
    assert!(data[1024..].iter().all(|b| *b == 0), "nothing else written");
    assert!(out.contains("blk 0 write 1 1 status=0"), "{out}");
    assert!(
        out.contains(&format!("blk 0 read 0 2 fnv={:016x}", fnv1a(&data[..1024]))),
        "the read after restore sees both writes: {out}"
    );
    assert!(out.contains("blk 0: capacity=64 ro=0"), "{out}");
    assert!(!out.contains("timeout"), "the virtqueue carried on: {out}");
}

fn sha(path: &Path) -> u64 {
    fnv1a(&std::fs::read(path).unwrap())
}

/// The snapshot's memory files (`memory-<id>`, `diff-<id>`), sorted by name.
fn layer_files(snap: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(snap)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with(prefix) && !n.ends_with(".tmp")
        })
        .collect();
    v.sort();
    v
}

/// The one full memory layer in `snap`.
fn memory_file(snap: &Path) -> PathBuf {
    let v = layer_files(snap, "memory-");
    assert_eq!(
        v.len(),
        1,
        "one full memory layer in {}: {v:?}",
        snap.display()
    );
    v[0].clone()
}

#[test]
fn restoring_twice_gives_two_independent_vms() {
    let dir = scratch();
    let (snap, last) = snapshot_mid_run(
        dir.as_path(),
        "count=15 delay=20000 exit=3",
        &["--memory", "32M"],
    );
    let mem_before = sha(&memory_file(&snap));
    let state_before = sha(&snap.join("state"));
    let a = dir.as_path().join("a.txt");
    let b = dir.as_path().join("b.txt");
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| restore(&snap, &a));
        let tb = s.spawn(|| restore(&snap, &b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!((ra.code(), rb.code()), (3, 3), "{ra:#?} {rb:#?}");
    let (oa, ob) = (
        std::fs::read_to_string(&a).unwrap(),
        std::fs::read_to_string(&b).unwrap(),
    );
    assert_eq!(counts(&oa), ((last + 1)..=15).collect::<Vec<_>>());
    assert_eq!(oa, ob, "both carry on the same way");
    assert_eq!(
        sha(&memory_file(&snap)),
        mem_before,
        "MAP_PRIVATE: memory file untouched"
    );
    assert_eq!(sha(&snap.join("state")), state_before);
}

#[test]
fn pause_and_resume_through_the_api() {
    let dir = scratch();
    let vm = start(dir.as_path(), "count=25 delay=20000 exit=0", &[]);
    wait_for_text(&vm.serial, "count: 2\n", T);
    assert_eq!(ctl(&vm.sock, &["pause"]).code(), 0);
    let paused = std::fs::read_to_string(&vm.serial).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        std::fs::read_to_string(&vm.serial).unwrap(),
        paused,
        "paused"
    );
    assert_eq!(ctl(&vm.sock, &["resume"]).code(), 0);
    let last = *counts(&paused).last().unwrap();
    wait_for_text(&vm.serial, &format!("count: {}\n", last + 2), T);
    let bad = ctl(dir.as_path().join("nope.sock").as_path(), &["pause"]);
    assert_eq!(bad.code(), hearth::exit_status::HEARTH_ERROR);
    assert!(
        bad.stderr.contains("cannot connect to API socket"),
        "{bad:#?}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn assert_refused(snap: &Path, expect: &str) {
    let serial = snap.with_extension("serial");
    let run = restore(snap, &serial);
    assert_eq!(
        run.code(),
        hearth::exit_status::HEARTH_ERROR,
        "{expect}: {run:#?}"
    );
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "one line: {run:#?}"
    );
    assert!(
        run.stderr.contains(expect),
        "expected {expect:?}: {}",
        run.stderr
    );
    assert!(
        std::fs::read_to_string(&serial)
            .unwrap_or_default()
            .is_empty(),
        "nothing started"
    );
}

#[test]
fn bad_snapshots_are_refused() {
    let dir = scratch();
    let d = dir.as_path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 16 * 512]).unwrap();
    let disk_arg = format!("path={}", disk.display());
    let (snap, _) = snapshot_mid_run(
        d,
        "count=40 delay=20000",
        &["--memory", "16M", "--disk", &disk_arg],
    );
    let variant = |name: &str, change: &dyn Fn(&Path)| -> PathBuf {
        let v = d.join(name);
        copy_dir(&snap, &v);
        change(&v);
        v
    };
    let patch = |p: &Path, at: usize, bytes: &[u8]| {
        let mut f = std::fs::read(p).unwrap();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(p, f).unwrap();
    };

    let v = variant("crc", &|v| {
        let s = v.join("state");
        let len = std::fs::metadata(&s).unwrap().len() as usize;
        let last = std::fs::read(&s).unwrap()[len - 1];
        patch(&s, len - 1, &[last ^ 0xff]);
    });
    assert_refused(&v, "CRC-64 does not match");
    let v = variant("magic", &|v| patch(&v.join("state"), 0, b"X"));
    assert_refused(&v, "wrong magic number");
    let v = variant("version", &|v| {
        patch(&v.join("state"), 8, &99u32.to_le_bytes())
    });
    assert_refused(&v, "snapshot format version 99");
    let v = variant("short-state", &|v| {
        let s = v.join("state");
        let f = std::fs::read(&s).unwrap();
        std::fs::write(&s, &f[..f.len() / 2]).unwrap();
    });
    assert_refused(&v, "is truncated");
    let v = variant("no-memory", &|v| {
        std::fs::remove_file(memory_file(v)).unwrap()
    });
    assert_refused(&v, "is missing: the state file names it as its memory");
    let v = variant("short-memory", &|v| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(memory_file(v))
            .unwrap();
        f.set_len(8 << 20).unwrap();
    });
    assert_refused(&v, "is 8388608 bytes, the state recorded 16777216");
    let v = variant("long-memory", &|v| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(memory_file(v))
            .unwrap();
        f.set_len(17 << 20).unwrap();
    });
    assert_refused(&v, "the state recorded 16777216");
    // Another snapshot's memory file in place of this one's (renamed to its name).
    let other = variant("other", &|_| {});
    let v = variant("swapped-memory", &|v| {
        std::fs::remove_file(memory_file(v)).unwrap();
    });
    std::fs::copy(memory_file(&other), v.join("memory-0000")).unwrap();
    assert_refused(&v, "is missing: the state file names it as its memory");
    let v = variant("no-state", &|v| {
        std::fs::remove_file(v.join("state")).unwrap()
    });
    assert_refused(&v, "state: No such file");

    // The disk the snapshot refers to changes size, then vanishes.
    std::fs::write(&disk, vec![0u8; 17 * 512]).unwrap();
    assert_refused(
        &snap,
        "its size changed since the snapshot (16 sectors then, 17 now)",
    );
    std::fs::remove_file(&disk).unwrap();
    assert_refused(&snap, "disk.img");
}

/// A snapshot in the previous format (3), written by the hearth of commit 00786ff: the
/// counting test guest (32 MiB, a disk then at /hearth-fixture/disk.img, an entropy
/// device) paused after `count: 3`. This hearth restores it and the guest carries on.
#[test]
fn a_snapshot_in_the_previous_format_restores() {
    let dir = scratch();
    let d = dir.as_path();
    let fixture = root().join("tests/data/snapshot-v3");
    let snap = d.join("snap");
    copy_dir(&fixture.join("snap"), &snap);
    let disk = d.join("disk.img");
    std::fs::copy(fixture.join("disk.img"), &disk).unwrap();
    let state = std::fs::read(snap.join("state")).unwrap();
    assert_eq!(state[8..12], 3u32.to_le_bytes(), "the fixture is format 3");

    let serial = d.join("serial.txt");
    let run = restore_resumed(
        &snap,
        &serial,
        &[
            "--disk-path",
            &format!("/hearth-fixture/disk.img={}", disk.display()),
        ],
        T,
    );
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(
        run.code(),
        5,
        "the guest exits as it would have: {run:#?}\n{out}"
    );
    assert_eq!(counts(&out), (4..=8).collect::<Vec<_>>(), "{out}");
    assert!(
        out.contains("blk 0 read 0 1 fnv=88f2c5d20d5ae0c3\n"),
        "the disk reads as before: {out}"
    );
    assert!(out.contains("rng read 16 bytes"), "{out}");
    assert!(!out.contains("hearth-test-guest"), "no reboot: {out}");
}
