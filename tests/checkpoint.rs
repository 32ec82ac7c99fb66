//! Checkpoints a workload can bet on: snapshots into the directory a running VM was
//! restored from, writers killed mid-write, diff chains and their merge.

// Test patterns narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::snap::{counts, last_count, restore_resumed, GuestVm};
use common::*;

/// A generous bound for one guest run: these guests take seconds on a quiet machine, and
/// many times that on a loaded one.
const T: Duration = Duration::from_secs(600);

/// The `mem step N sum=S` lines: (N, S).
fn steps(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("mem step "))
        .filter_map(|l| {
            let (n, s) = l.split_once(" sum=")?;
            Some((n.parse().ok()?, s.to_string()))
        })
        .collect()
}

fn last_step(path: &Path) -> u64 {
    steps(&std::fs::read_to_string(path).unwrap_or_default())
        .last()
        .map(|s| s.0)
        .unwrap_or(0)
}

fn wait_until(what: &str, f: impl FnMut() -> bool, serial: &Path) {
    common::snap::wait_until(what, f, serial, T);
}

/// Counts from `from` to `to` without a gap and ends with `exit: 7`.
fn assert_counts_on(out: &str, from: u64, to: u64, what: &str) {
    let c = counts(out);
    assert_eq!(c, (from..=to).collect::<Vec<_>>(), "{what}: {out}");
    assert!(out.ends_with("exit: 7\n"), "{what}: {out}");
    assert!(
        !out.contains("hearth-test-guest"),
        "{what}: no reboot: {out}"
    );
}

/// The defect of issue 13: a VM restored from `snap` snapshots into `snap` again and
/// again while it runs (and while a second VM restored from `snap` runs too). Each VM
/// keeps going, and each of those snapshots restores and carries on.
#[test]
fn snapshots_into_the_directory_a_running_vm_maps() {
    let dir = scratch();
    let d = dir.as_path();
    let snap = d.join("snap");
    const N: u64 = 40;
    let cmdline = format!("count={N} delay=20000 exit=7");
    let first = GuestVm::run(d, "first", &cmdline, &["--memory", "32M"]);
    wait_for_text(&first.serial, "count: 3\n", T);
    first.snapshot(&snap, &[]);
    let base = last_count(&first.serial);
    drop(first);

    // A maps snap's memory; a second VM, B, maps it too, and keeps running throughout.
    let a = GuestVm::restore(d, "a", &snap);
    let b = GuestVm::restore(d, "b", &snap);
    let mut copies = Vec::new();
    for i in 0..3 {
        let seen = last_count(&a.serial);
        wait_until(
            "A counting on",
            || last_count(&a.serial) >= seen + 2,
            &a.serial,
        );
        let before = last_count(&a.serial);
        a.snapshot(&snap, &["--resume"]);
        let after = last_count(&a.serial);
        // Restored from the new snapshot while A and B still run from the older files.
        copies.push((
            GuestVm::restore(d, &format!("copy{i}"), &snap),
            before,
            after,
        ));
        // The copy has its memory mapped before A replaces the snapshot again.
        let c = &copies.last().unwrap().0;
        wait_until("the copy to run", || last_count(&c.serial) > 0, &c.serial);
    }
    let (ra, oa) = a.wait("A", T);
    assert_eq!(ra.code(), 7, "A keeps running to its end: {ra:#?}\n{oa}");
    assert_counts_on(&oa, base + 1, N, "A");
    let (rb, ob) = b.wait("B", T);
    assert_eq!(rb.code(), 7, "B keeps running to its end: {rb:#?}\n{ob}");
    assert_counts_on(&ob, base + 1, N, "B");
    for (i, (c, before, after)) in copies.into_iter().enumerate() {
        let (rc, oc) = c.wait("copy", T);
        assert_eq!(rc.code(), 7, "copy {i}: {rc:#?}\n{oc}");
        let first = counts(&oc)[0];
        assert!(
            (before + 1..=after + 1).contains(&first),
            "copy {i} carries on from its snapshot ({before}..={after}): {oc}"
        );
        assert_counts_on(&oc, first, N, &format!("copy {i}"));
    }
    // Only the newest snapshot's files are left.
    let names: Vec<String> = std::fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("memory-")).count(),
        1,
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

/// What restoring `snap` gives: the first count, or the one-line error.
fn restore_outcome(snap: &Path, serial: &Path) -> Result<(u64, String), String> {
    let run = restore_resumed(snap, serial, &[], T);
    let out = std::fs::read_to_string(serial).unwrap_or_default();
    if run.code() == hearth::exit_status::HEARTH_ERROR {
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:#?}");
        assert!(out.is_empty(), "nothing ran: {out}");
        return Err(run.stderr);
    }
    assert_eq!(
        run.code(),
        7,
        "the restored guest runs to its end: {run:#?}\n{out}"
    );
    let first = *counts(&out).first().expect("counts");
    Ok((first, out))
}

/// A snapshot writer killed at any point leaves the old snapshot or the new one: never a
/// state next to memory that is not its own. Killed at each step of the write, and at
/// arbitrary moments.
#[test]
fn a_writer_killed_mid_snapshot_leaves_the_old_or_the_new_snapshot() {
    let dir = scratch();
    let d = dir.as_path();
    const N: u64 = 30;
    let cmdline = format!("count={N} delay=20000 exit=7");
    let points = [
        "layer-written",
        "layer-renamed",
        "state-written",
        "state-renamed",
        "cleanup",
    ];
    // Arbitrary moments too: SIGKILL after a delay while the snapshot is being written.
    let delays_ms = [1u64, 5, 20];
    for case in 0..points.len() + delays_ms.len() {
        let snap = d.join(format!("snap{case}"));
        // The old snapshot, taken by a VM that then goes on.
        let vm = GuestVm::run(d, &format!("w{case}"), &cmdline, &[]);
        wait_for_text(&vm.serial, "count: 2\n", T);
        vm.snapshot(&snap, &["--resume"]);
        let old = last_count(&vm.serial);
        drop(vm);
        // A restored VM writes the new snapshot into the same directory and is killed.
        let env: Vec<(&str, &str)> = points
            .get(case)
            .map(|p| ("HEARTH_TEST_CRASH_AT", *p))
            .into_iter()
            .collect();
        let mut vm = GuestVm::restore_with_env(d, &format!("k{case}"), &snap, &env);
        let (sock, serial) = (vm.sock.clone(), vm.serial.clone());
        let mut writer = vm.child.take().unwrap();
        wait_for_text(&serial, &format!("count: {}\n", old + 3), T);
        let new_low = last_count(&serial);
        let ctl_child = std::process::Command::new(hearth_bin())
            .args([
                "ctl",
                "--api-sock",
                sock.to_str().unwrap(),
                "snapshot",
                "--dir",
            ])
            .arg(&snap)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if case >= points.len() {
            std::thread::sleep(Duration::from_millis(delays_ms[case - points.len()]));
            let _ = writer.kill();
        }
        let status = wait_bounded(writer, T, "the writer").status;
        let _ = wait_bounded(ctl_child, T, "ctl");
        if case < points.len() {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "killed at {}", points[case]);
        }
        // The VM was paused for the snapshot: its last count is the new snapshot's.
        let new = last_count(&serial);
        assert!(new >= new_low);
        match restore_outcome(&snap, &d.join(format!("r{case}.txt"))) {
            Ok((first, out)) => {
                assert!(
                    first == old + 1 || first == new + 1,
                    "case {case}: restores the old snapshot (after {old}) or the new one (after {new}), not {first}: {out}"
                );
                if let Some(p) = points.get(case) {
                    let expect = if p.starts_with("layer") || *p == "state-written" {
                        old
                    } else {
                        new
                    };
                    assert_eq!(first, expect + 1, "killed at {p}: {out}");
                }
                assert_counts_on(&out, first, N, &format!("case {case}"));
            }
            Err(e) => {
                panic!("case {case}: a killed writer left a snapshot that does not restore: {e}")
            }
        }
        // And the directory takes the next snapshot as usual.
        let vm = GuestVm::restore(d, &format!("again{case}"), &snap);
        wait_until(
            "the restored VM to count",
            || last_count(&vm.serial) > 0,
            &vm.serial,
        );
        vm.snapshot(&snap, &[]);
        drop(vm);
        let names: Vec<String> = std::fs::read_dir(&snap)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        assert_eq!(
            names.iter().filter(|n| n.starts_with("memory-")).count(),
            1,
            "leftovers of the killed writer are removed: {names:?}"
        );
    }
}

/// The files of a diff layer in `snap`.
fn diff_files(snap: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(snap)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("diff-") && !n.ends_with(".tmp")
        })
        .collect()
}

/// Runs a restored `mem.walk` guest to its end: its step lines and final sum.
fn restored_walk(snap: &Path, serial: &Path) -> (Vec<(u64, String)>, String) {
    let run = restore_resumed(snap, serial, &[], T);
    let out = std::fs::read_to_string(serial).unwrap_or_default();
    assert_eq!(
        run.code(),
        9,
        "{} restores and runs to its end: {run:#?}\n{out}",
        snap.display()
    );
    let sum = out
        .lines()
        .find_map(|l| l.strip_prefix("mem sum="))
        .unwrap_or_else(|| panic!("no sum: {out}"))
        .to_string();
    (steps(&out), sum)
}

/// Base + 3 diffs of a guest that rewrites memory between them: each link restores with
/// exactly that moment's memory (the guest's running sums carry on as in the original
/// run), a diff holds only the changed pages, and merging the chain gives the same VM.
#[test]
fn diff_chain_restores_each_link_and_merges() {
    let dir = scratch();
    let d = dir.as_path();
    const STEPS: u64 = 120;
    const PAGES: u64 = 64;
    let vm = GuestVm::run(
        d,
        "walk",
        &format!("mem.walk=32:{PAGES}:{STEPS} mem.sum=32:{PAGES} delay=4000 exit=9"),
        &["--memory", "64M"],
    );
    let mut links: Vec<(PathBuf, u64, u64)> = Vec::new(); // (dir, step before, step after)
    let mut prev_after = 0;
    for i in 0..4u64 {
        let target = 10 + 15 * i;
        wait_until("the walk", || last_step(&vm.serial) >= target, &vm.serial);
        let snap = d.join(format!("link{i}"));
        let before = last_step(&vm.serial);
        let extra: &[&str] = if i == 0 {
            &["--resume"]
        } else {
            &["--diff", "--resume"]
        };
        vm.snapshot(&snap, extra);
        let after = last_step(&vm.serial);
        if i > 0 {
            let diffs = diff_files(&snap);
            assert_eq!(
                diffs.len(),
                i as usize,
                "link {i} holds its chain: {diffs:?}"
            );
        }
        links.push((snap, before, after));
        let _ = prev_after;
        prev_after = after;
    }
    let (run, reference) = vm.wait("the original walk", T);
    assert_eq!(run.code(), 9, "{run:#?}");
    let ref_steps = steps(&reference);
    assert_eq!(ref_steps.len() as u64, STEPS, "{reference}");
    let ref_sum = reference
        .lines()
        .find_map(|l| l.strip_prefix("mem sum="))
        .unwrap()
        .to_string();

    // Each diff holds only what changed since its parent: one page per step taken in
    // between, and a few the guest's stack and the devices touched.
    let mut seen_diffs: Vec<PathBuf> = Vec::new();
    for (i, (snap, _, after)) in links.iter().enumerate().skip(1) {
        let new: Vec<PathBuf> = diff_files(snap)
            .into_iter()
            .filter(|p| !seen_diffs.iter().any(|s| s.file_name() == p.file_name()))
            .collect();
        assert_eq!(new.len(), 1, "link {i} adds one diff: {new:?}");
        let len = std::fs::metadata(&new[0]).unwrap().len();
        let bitmap = (64u64 << 20) / 4096 / 8;
        let data = len - 64 - bitmap;
        assert_eq!(data % 4096, 0, "header, bitmap, whole pages: {len}");
        let pages = data / 4096;
        let stepped = after - links[i - 1].1;
        assert!(
            pages >= stepped.min(PAGES).saturating_sub(2) && pages <= stepped + 32,
            "link {i}: {pages} pages for {stepped} steps"
        );
        assert!(
            pages * 4096 < (64 << 20) / 50,
            "much smaller than the full memory"
        );
        seen_diffs.push(new[0].clone());
    }

    // inspect shows the chain and verifies every checksum.
    let r = hearth_with_timeout(["snapshot", "inspect", links[3].0.to_str().unwrap()], T);
    assert_eq!(r.code(), 0, "{r:#?}");
    for want in [
        concat!("format version: ", 4),
        concat!("written by: hearth ", env!("CARGO_PKG_VERSION")),
        "memory: 64 MiB",
        "memory chain (4 layer(s)",
        "(full, 67108864 bytes): CRC-64 ok",
        "parent: ",
    ] {
        assert!(r.stdout.contains(want), "{want:?}: {}", r.stdout);
    }
    assert_eq!(r.stdout.matches("pages, ").count(), 3, "{}", r.stdout);
    assert_eq!(r.stdout.matches("): CRC-64 ok").count(), 4, "{}", r.stdout);
    // A flipped bit in a diff layer: inspect says which, merge refuses, restore refuses.
    let bad = d.join("bad");
    std::fs::create_dir(&bad).unwrap();
    for e in std::fs::read_dir(&links[3].0).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bad.join(e.file_name())).unwrap();
    }
    let victim = diff_files(&bad).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    let r = hearth_with_timeout(["snapshot", "inspect", bad.to_str().unwrap()], T);
    assert_eq!(r.code(), hearth::exit_status::HEARTH_ERROR, "{r:#?}");
    assert!(r.stdout.contains("FAILED"), "{r:#?}");
    let r = hearth_with_timeout(["snapshot", "merge", bad.to_str().unwrap()], T);
    assert_eq!(r.code(), hearth::exit_status::HEARTH_ERROR, "{r:#?}");
    assert!(r.stderr.contains("not merged"), "{r:#?}");
    let r = hearth_with_timeout(["restore", "--dir", bad.to_str().unwrap(), "--resume"], T);
    assert_eq!(r.code(), hearth::exit_status::HEARTH_ERROR, "{r:#?}");
    assert!(r.stderr.contains("CRC-64 does not match"), "{r:#?}");

    // Each link restores to its moment: the steps after it match the original run's.
    for (i, (snap, before, after)) in links.iter().enumerate() {
        let (got, sum) = restored_walk(snap, &d.join(format!("r{i}.txt")));
        let first = got.first().expect("steps after restore").0;
        assert!(
            (*before + 1..=*after + 1).contains(&first),
            "link {i} carries on from its moment ({before}..={after}): first step {first}"
        );
        assert_eq!(
            got,
            ref_steps[(first - 1) as usize..].to_vec(),
            "link {i}: the same sums as the original run"
        );
        assert_eq!(sum, ref_sum, "link {i}: the same memory at the end");
    }

    // merge folds the last link's chain into one full layer; it restores the same.
    let (last, _, _) = &links[3];
    let merged = d.join("merged");
    let r = hearth_with_timeout(
        [
            "snapshot",
            "merge",
            last.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code(), 0, "{r:#?}");
    assert!(diff_files(&merged).is_empty(), "one full layer");
    let (a, sa) = restored_walk(last, &d.join("chain.txt"));
    let (b, sb) = restored_walk(&merged, &d.join("merged.txt"));
    assert_eq!(a, b, "merge == chain");
    assert_eq!(sa, sb);
    // In place too.
    let r = hearth_with_timeout(["snapshot", "merge", last.to_str().unwrap()], T);
    assert_eq!(r.code(), 0, "{r:#?}");
    assert!(diff_files(last).is_empty(), "the chain's diffs are gone");
    let (c, _) = restored_walk(last, &d.join("inplace.txt"));
    assert_eq!(a, c);
}

/// A diff needs an earlier snapshot of the same VM.
#[test]
fn diff_without_a_parent_is_refused() {
    let dir = scratch();
    let d = dir.as_path();
    let vm = GuestVm::run(d, "p", "count=100 delay=20000 exit=7", &[]);
    wait_for_text(&vm.serial, "count: 1\n", T);
    let r = ctl(
        &vm.sock,
        &["snapshot", "--dir", d.join("s").to_str().unwrap(), "--diff"],
    );
    assert_eq!(r.code(), hearth::exit_status::HEARTH_ERROR, "{r:#?}");
    assert!(r.stderr.contains("no earlier snapshot"), "{r:#?}");
    // The VM runs on.
    let c = last_count(&vm.serial);
    wait_for_text(&vm.serial, &format!("count: {}\n", c + 1), T);
}

/// Periodic checkpoints of a guest writing its disk: hearth is killed with SIGKILL at an
/// arbitrary moment, the newest checkpoint restores, and the guest carries on from it,
/// its disk writes up to it intact.
#[test]
fn periodic_checkpoints_survive_a_kill() {
    let dir = scratch();
    let d = dir.as_path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
    const WRITES: u64 = 40;
    let mut cmdline = String::new();
    for i in 1..=WRITES {
        cmdline.push_str(&format!("blk.write=0:{i}:1:{i} sleep=100 "));
    }
    cmdline.push_str("exit=0");
    let ckpt = d.join("ckpt");
    let disk_arg = format!("path={}", disk.display());
    let vm = GuestVm::run(
        d,
        "writer",
        &cmdline,
        &[
            "--disk",
            &disk_arg,
            "--checkpoint-every",
            "150ms",
            "--checkpoint-dir",
            ckpt.to_str().unwrap(),
            "--checkpoint-keep",
            "3",
        ],
    );
    let written = |path: &Path| -> u64 {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("blk 0 write ") && l.ends_with("status=0"))
            .count() as u64
    };
    wait_until("writes", || written(&vm.serial) >= 12, &vm.serial);
    // An arbitrary moment: how far into the current second the clock is.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    std::thread::sleep(Duration::from_millis(u64::from(ms % 200)));
    drop(vm); // SIGKILL
    let before = std::fs::read(&disk).unwrap();

    let ckpts: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("ckpt-"))
        .collect();
    assert!(
        (1..=4).contains(&ckpts.len()),
        "at most 3 kept (and one being written): {ckpts:?}"
    );
    let latest = ckpt.join("latest");
    assert!(
        !diff_files(&latest).is_empty(),
        "checkpoints after the first are diffs"
    );
    let newest_before = ckpts.iter().max().unwrap().clone();
    let serial = d.join("restored.txt");
    // The restored VM checkpoints on into the same directory.
    let run = restore_resumed(
        &latest,
        &serial,
        &[
            "--checkpoint-every",
            "150ms",
            "--checkpoint-dir",
            ckpt.to_str().unwrap(),
        ],
        T,
    );
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(run.code(), 0, "{run:#?}\n{out}");
    let next: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("blk 0 write "))
        .map(|l| {
            assert!(l.ends_with("status=0"), "{out}");
            l.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    let first = *next.first().unwrap_or(&(WRITES + 1));
    assert_eq!(
        next,
        (first..=WRITES).collect::<Vec<_>>(),
        "carries on from the checkpoint: {out}"
    );
    assert!(first > 1, "the checkpoint is not the start: {out}");
    // Everything the guest wrote up to the checkpoint was on disk before the restore.
    for s in 1..first {
        let sector = &before[s as usize * 512..(s as usize + 1) * 512];
        assert!(
            sector.iter().all(|b| u64::from(*b) == s),
            "sector {s} before the restore"
        );
    }
    let after = std::fs::read(&disk).unwrap();
    for s in 1..=WRITES {
        let sector = &after[s as usize * 512..(s as usize + 1) * 512];
        assert!(
            sector.iter().all(|b| u64::from(*b) == s),
            "sector {s} at the end"
        );
    }
    assert!(!out.contains("hearth-test-guest"), "no reboot: {out}");
    let target = std::fs::read_link(&latest).unwrap();
    assert!(
        target.to_str().unwrap() > newest_before.as_str(),
        "the restored VM's checkpoints follow the old ones: {target:?} after {newest_before}"
    );
}

/// Half of the checkpoint settings is a one-line error.
#[test]
fn checkpoint_flags_are_checked() {
    let r = boot_test_guest("exit=0", &["--checkpoint-every", "1s"]);
    assert_eq!(r.code(), hearth::exit_status::HEARTH_ERROR, "{r:#?}");
    assert!(r.stderr.contains("go together"), "{r:#?}");
    let r = boot_test_guest(
        "exit=0",
        &["--checkpoint-every", "1h", "--checkpoint-dir", "/tmp"],
    );
    assert_eq!(r.code(), hearth::exit_status::HEARTH_ERROR, "{r:#?}");
    assert!(r.stderr.contains("500ms, 2s or 1m"), "{r:#?}");
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "{r:#?}");
}

/// A long chain of checkpoints is folded into a full layer in the background, and the
/// checkpoints after the fold build on it: their chains are short, and they restore.
#[test]
fn checkpoint_chains_are_folded() {
    let dir = scratch();
    let d = dir.as_path();
    let ckpt = d.join("ckpt");
    let serial = d.join("serial.txt");
    let log = d.join("stderr.txt");
    let child = std::process::Command::new(hearth_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .args(["--cmdline", "count=100000 delay=20000", "-v"])
        .args(["--checkpoint-every", "100ms", "--checkpoint-dir"])
        .arg(&ckpt)
        .arg("--serial-out")
        .arg(&serial)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let vm = GuestVm {
        child: Some(child),
        sock: d.join("none"),
        serial: serial.clone(),
    };
    let taken = |text: &str| text.matches("] checkpoint ").count();
    wait_until(
        "a fold and two checkpoints after it",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.split_once("checkpoint chain folded")
                .is_some_and(|(_, after)| taken(after) >= 2)
        },
        &log,
    );
    drop(vm);
    let text = std::fs::read_to_string(&log).unwrap();
    let all = taken(&text);
    let latest = ckpt.join("latest");
    let layers = diff_files(&latest).len() + 1;
    assert!(
        layers < all,
        "the newest chain ({layers} layers) is shorter than the checkpoints taken ({all})"
    );
    let last = last_count(&serial);
    let r = hearth_with_timeout(["snapshot", "inspect", latest.to_str().unwrap()], T);
    assert_eq!(r.code(), 0, "{r:#?}");
    // It restores and carries on counting.
    let vm = GuestVm::restore(d, "again", &latest);
    wait_until("counting on", || last_count(&vm.serial) > 0, &vm.serial);
    let first = counts(&std::fs::read_to_string(&vm.serial).unwrap())[0];
    assert!(
        first <= last + 1,
        "restored from a checkpoint before the kill"
    );
}
