//! A 2-vCPU Linux guest stopped for a minute (paused and resumed; snapshotted and
//! restored a minute later) carries on counting with no RCU stall, soft lockup or NMI
//! backtrace on its console: hearth tells each vCPU's kvmclock that the guest was stopped
//! (KVM_KVMCLOCK_CTRL), and `nofsgsbase` keeps any NMI entry off `lsl`.
//!
//! Slow (a Linux boot is ~60 s on an emulating KVM, then two one-minute stops): run on
//! its own, `cargo test --test linux_checkpoint` (.ci/run does).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ctl, hearth_bin, last_lines, scratch, ProgressWatch, LINUX_BOUNDS};

/// How long the guest is stopped: well past the kernel's 21 s RCU stall timeout.
const STOP: Duration = Duration::from_secs(60);
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 hearth.count=100000";
/// What a guest that noticed the stop as a hang prints.
const BAD: &[&str] = &[
    "stall",
    "NMI backtrace",
    "soft lockup",
    "hard LOCKUP",
    "Call Trace",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn guest_files() -> (PathBuf, PathBuf) {
    let dir = root().join("target").join("linux-guest");
    std::fs::create_dir_all(&dir).unwrap();
    for script in ["get-kernel.sh", "build-initramfs.sh"] {
        let out = Command::new("bash")
            .arg(root().join("resources/linux").join(script))
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (dir.join("vmlinux"), dir.join("initramfs.cpio"))
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("count: "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// Waits until `serial` holds `count: n` (or more), bounded by console progress.
fn wait_count(vm: &mut Kill, serial: &Path, n: u64, watch: &mut ProgressWatch) -> String {
    let mut seen = 0;
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.len() != seen {
            seen = text.len();
            watch.output();
        }
        if counts(&text).last().is_some_and(|c| *c >= n) {
            return text;
        }
        if let Some(status) = vm.0.try_wait().unwrap() {
            panic!(
                "hearth ended ({status}) before count {n}\n{}",
                last_lines(&text, 40)
            );
        }
        if let Some(why) = watch.hung() {
            panic!(
                "the guest {why} before count {n}\n{}",
                last_lines(&text, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_no_hang_reports(text: &str, what: &str) {
    for bad in BAD {
        assert!(
            !text.contains(bad),
            "{what}: the guest reported {bad:?}\n{}",
            last_lines(text, 60)
        );
    }
}

fn last_count(serial: &Path) -> u64 {
    counts(&std::fs::read_to_string(serial).unwrap_or_default())
        .last()
        .copied()
        .unwrap_or(0)
}

#[test]
fn two_vcpu_linux_survives_a_minute_paused_and_a_restore_a_minute_later() {
    let (kernel, initrd) = guest_files();
    let dir = scratch();
    let d = dir.as_path();
    let api = d.join("api.sock");
    let serial = d.join("serial-1.txt");
    let child = Command::new(hearth_bin())
        .args(["run", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--memory", "256M", "--cpus", "2", "--cmdline", CMDLINE])
        .arg("--api-sock")
        .arg(&api)
        .arg("--serial-out")
        .arg(&serial)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut vm = Kill(child);
    let mut watch = ProgressWatch::new(vm.0.id(), LINUX_BOUNDS);
    wait_count(&mut vm, &serial, 3, &mut watch);

    // A minute paused, then resumed.
    assert_eq!(ctl(&api, &["pause"]).code(), 0);
    let before = std::fs::read_to_string(&serial).unwrap();
    std::thread::sleep(STOP);
    assert_eq!(ctl(&api, &["resume"]).code(), 0);
    let mut watch = ProgressWatch::new(vm.0.id(), LINUX_BOUNDS);
    let c = last_count(&serial);
    let text = wait_count(&mut vm, &serial, c + 5, &mut watch);
    assert_no_hang_reports(&text[before.len()..], "after a minute paused");
    eprintln!("paused for {STOP:?}: counted on to {}", last_count(&serial));

    // A snapshot, the process gone, a restore a minute later.
    let snap = d.join("snap");
    let r = ctl(&api, &["snapshot", "--dir", snap.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{r:#?}");
    let at_snapshot = last_count(&serial);
    drop(vm);
    std::thread::sleep(STOP);
    let serial2 = d.join("serial-2.txt");
    let child = Command::new(hearth_bin())
        .args(["restore", "--resume", "--dir"])
        .arg(&snap)
        .arg("--serial-out")
        .arg(&serial2)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut vm = Kill(child);
    let mut watch = ProgressWatch::new(vm.0.id(), LINUX_BOUNDS);
    let text = wait_count(&mut vm, &serial2, at_snapshot + 5, &mut watch);
    assert_eq!(
        counts(&text).first(),
        Some(&(at_snapshot + 1)),
        "counts on from the snapshot\n{}",
        last_lines(&text, 40)
    );
    assert_no_hang_reports(&text, "restored a minute later");
    eprintln!(
        "restored {STOP:?} after the snapshot: counted on to {}",
        last_count(&serial2)
    );
}
