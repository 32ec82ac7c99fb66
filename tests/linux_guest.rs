//! Boots the real Linux guest (resources/linux: a patched 6.1 kernel and a busybox
//! initramfs) through hearth to its /init, which prints a marker line and reboots
//! through the i8042 (`reboot=k`), so hearth exits with status 0.
//!
//! The kernel comes from resources/linux/get-kernel.sh: the checksummed cache in
//! ../shared/linux-guest, or a build from Debian's linux-source-6.1 (4–8 minutes)
//! when the cache is absent. On an emulating KVM a boot takes about 30 s on an idle
//! machine and several minutes on a busy one, so a boot is bounded by progress (no
//! console output while hearth uses 5 minutes of CPU means hung, see
//! `common::LINUX_BOUNDS`) plus a generous total. These tests
//! are not part of `cargo test --workspace` (`test = false` in Cargo.toml): `.ci/run`
//! runs them after the fast suite with `cargo test --test linux_guest --test linux_net`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The line the guest's /init prints (resources/linux/init.sh).
const MARKER: &str = "hearth-linux-guest: init reached";
/// The kernel's banner.
const BANNER: &str = "Linux version 6.1";
/// The command line of the test; hearth appends its emulator workarounds itself.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// Console lines shown when a boot is stopped.
const LAST_LINES: usize = 40;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs one of the resources/linux scripts with `outdir`, failing with its output.
fn run_script(script: &str, outdir: &Path) {
    let path = root().join("resources/linux").join(script);
    let out = Command::new("bash")
        .arg(&path)
        .arg(outdir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); the Linux guest needs the cached kernel in ../shared/linux-guest \
         or apt-get (as root) to build it from Debian's linux-source-6.1\n--- stdout ---\n{}\n--- stderr ---\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The kernel and initramfs in target/linux-guest, prepared once per test binary.
fn guest_files() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = root().join("target").join("linux-guest");
        std::fs::create_dir_all(&dir).expect("create target/linux-guest");
        run_script("get-kernel.sh", &dir);
        run_script("build-initramfs.sh", &dir);
        let files = (dir.join("vmlinux"), dir.join("initramfs.cpio"));
        for f in [&files.0, &files.1] {
            assert!(
                f.is_file(),
                "{} is missing after the scripts ran",
                f.display()
            );
        }
        files
    })
}

/// One finished boot.
#[derive(Debug)]
struct Boot {
    status: ExitStatus,
    serial: String,
    stderr: String,
    /// From starting hearth to the marker line on the serial console.
    to_marker: Option<Duration>,
    elapsed: Duration,
}

/// Boots the guest with `cpus` vCPUs, killing hearth and panicking when the console stays
/// silent too long or the boot runs too long (`common::LINUX_BOUNDS`).
fn boot(cpus: u32) -> Boot {
    let (kernel, initrd) = guest_files();
    // One boot at a time: each keeps a host core busy emulating guest kernel mode, and
    // the boot times printed should not depend on the other test.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("run")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--memory", "256M", "--cpus", &cpus.to_string()])
        .args(["--cmdline", CMDLINE, "--verbose"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start hearth");

    // Lines are timestamped as they arrive, to time the boot to the marker.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout piped");
    let out_t = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if tx.send((start.elapsed(), line)).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("stderr piped");
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut serial = String::new();
    let mut to_marker = None;
    let mut watch = common::ProgressWatch::new(child.id(), common::LINUX_BOUNDS);
    let mut take = |(at, line): (Duration, String)| {
        if to_marker.is_none() && line.contains(MARKER) {
            to_marker = Some(at);
        }
        serial.push_str(&line);
        serial.push('\n');
    };
    let status = loop {
        while let Ok(item) = rx.try_recv() {
            take(item);
            watch.output();
        }
        if let Some(status) = child.try_wait().expect("wait for hearth") {
            break status;
        }
        if let Some(why) = watch.hung() {
            let now = start.elapsed();
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_t.join();
            rx.try_iter().for_each(&mut take);
            let stderr = err_t.join().unwrap_or_default();
            panic!(
                "Linux guest with {cpus} vCPU(s) {why}, after {now:.0?}; hearth was killed\n\
                 --- last {LAST_LINES} serial lines (where it stopped) ---\n{}\n\
                 --- hearth stderr ---\n{}",
                common::last_lines(&serial, LAST_LINES),
                common::last_lines(&stderr, LAST_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out_t.join();
    rx.try_iter().for_each(&mut take);
    Boot {
        status,
        serial,
        stderr: err_t.join().unwrap_or_default(),
        to_marker,
        elapsed: start.elapsed(),
    }
}

/// Boots with `cpus` vCPUs and checks the banner, the marker and a clean exit;
/// returns the marker line.
fn check_boot(cpus: u32) -> String {
    let b = boot(cpus);
    let report = || {
        format!(
            "status: {:?}\n--- serial ---\n{}\n--- hearth stderr ---\n{}",
            b.status, b.serial, b.stderr
        )
    };
    assert!(b.serial.contains(BANNER), "no kernel banner\n{}", report());
    let marker = b
        .serial
        .lines()
        .find(|l| l.contains(MARKER))
        .unwrap_or_else(|| panic!("/init's marker line never came\n{}", report()))
        .to_string();
    assert_eq!(b.status.code(), Some(0), "hearth's exit\n{}", report());
    eprintln!(
        "linux guest, {cpus} vCPU(s): /init marker after {:.1} s, hearth exited after {:.1} s: {marker}",
        b.to_marker.unwrap_or_default().as_secs_f64(),
        b.elapsed.as_secs_f64(),
    );
    marker
}

/// The `cpus=N` field of the marker line.
fn cpus_seen(marker: &str) -> u32 {
    marker
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cpus="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cpus=N in the marker line {marker:?}"))
}

#[test]
fn linux_boots_to_init_one_cpu() {
    let marker = check_boot(1);
    assert!(marker.contains("release=6.1."), "{marker}");
    assert_eq!(cpus_seen(&marker), 1, "{marker}");
}

#[test]
fn linux_boots_to_init_two_cpus() {
    let marker = check_boot(2);
    assert_eq!(cpus_seen(&marker), 2, "{marker}");
}
