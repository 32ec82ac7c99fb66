//! Shared by the integration tests: building the test guest and running hearth with a
//! timeout that fails loudly.
#![allow(dead_code)]

pub mod net;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The hearth binary cargo built for these tests.
pub fn hearth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

/// Builds resources/test-guest once per test binary and returns the ELF.
pub fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let out = root().join("target").join("test-guest");
        let status = Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(root().join("resources/test-guest"))
            .arg(format!("O={}", out.display()))
            .status()
            .expect("cannot run make: install make and gcc (see .ci/run)");
        assert!(status.success(), "building the test guest failed");
        out.join("test-guest.elf")
    })
}

/// A scratch directory removed on drop.
pub fn scratch() -> vmm_sys_util::tempdir::TempDir {
    vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-test-").expect("temp dir")
}

/// What a finished hearth run left behind.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("hearth was killed: {self:#?}"))
    }

    /// The guest's line starting with `prefix`, without it.
    pub fn line(&self, prefix: &str) -> Option<&str> {
        self.stdout.lines().find_map(|l| l.strip_prefix(prefix))
    }

    /// Like [`Run::line`], panicking with the whole output when absent.
    pub fn expect_line(&self, prefix: &str) -> &str {
        self.line(prefix).unwrap_or_else(|| {
            panic!("no line starting with {prefix:?} in the guest output: {self:#?}")
        })
    }
}

/// Waits for `child` at most `timeout`, killing it and panicking when it runs over.
pub fn wait_bounded(mut child: Child, timeout: Duration, what: &str) -> Run {
    let start = Instant::now();
    // Drain the pipes on threads so a chatty guest cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for hearth") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out_t.join().unwrap_or_default();
            let stderr = err_t.join().unwrap_or_default();
            panic!(
                "{what}: hearth ran longer than {timeout:?} and was killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Waits for `child` while its stdout (the guest's console) makes progress: killed and
/// failed loudly, with the last console lines, when nothing arrives for `stall` (a hung
/// guest) or the run passes `total`. For guests whose speed depends on the machine's
/// load (real Linux), where a fixed bound either fails on a busy machine or waits long
/// on a hung guest.
pub fn wait_with_progress(mut child: Child, stall: Duration, total: Duration, what: &str) -> Run {
    use std::sync::{Arc, Mutex};
    let start = Instant::now();
    let progress = Arc::new(Mutex::new((String::new(), Instant::now())));
    let mut out = child.stdout.take();
    let out_t = {
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Some(Ok(n @ 1..)) = out.as_mut().map(|o| o.read(&mut buf)) {
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.0.push_str(&String::from_utf8_lossy(&buf[..n]));
                p.1 = Instant::now();
            }
        })
    };
    let mut err = child.stderr.take();
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let last = |text: &str| {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for hearth") {
            break status;
        }
        let silent = progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .elapsed();
        if silent > stall || start.elapsed() > total {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_t.join();
            let stdout = progress.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
            let stderr = err_t.join().unwrap_or_default();
            let why = if silent > stall {
                format!("wrote nothing on its console for {silent:.0?} (hung)")
            } else {
                format!("ran longer than {total:?}")
            };
            panic!(
                "{what}: the guest {why} after {:.0?}; hearth was killed\n\
                 --- last console lines ---\n{}\n--- last stderr lines ---\n{}",
                start.elapsed(),
                last(&stdout),
                last(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out_t.join();
    let stdout = progress.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
    Run {
        status,
        stdout,
        stderr: err_t.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// Runs `hearth <args>` with stdin from /dev/null, bounded by `timeout`.
pub fn hearth_with_timeout<I, S>(args: I, timeout: Duration) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let child = Command::new(hearth_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start hearth");
    wait_bounded(child, timeout, &format!("hearth {args:?}"))
}

/// Runs hearth with a 60 s bound, enough for any test-guest run on the emulating KVM.
pub fn hearth<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    hearth_with_timeout(args, Duration::from_secs(60))
}

/// Boots the test guest with `cmdline` and extra hearth flags.
pub fn boot_test_guest(cmdline: &str, extra: &[&str]) -> Run {
    let guest = test_guest();
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        guest.display().to_string(),
        "--cmdline".into(),
        cmdline.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    hearth(args)
}

/// FNV-1a 64, as the test guest computes it.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Usable RAM the guest should find for `--memory` of `size` bytes: everything but the
/// EBDA-to-1 MiB hole and the 32-bit MMIO gap.
pub fn expected_usable(size: u64) -> u64 {
    const GAP_START: u64 = 0xc000_0000;
    let low = size.min(GAP_START);
    0x9fc00 + (low - 0x10_0000) + size.saturating_sub(GAP_START)
}

/// Starts `hearth <args>` in the background (stdin and stdout null, stderr piped).
pub fn spawn_hearth<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Child {
    Command::new(hearth_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start hearth")
}

/// Waits until the file at `path` contains `needle`, failing loudly after `timeout`.
pub fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < timeout,
            "{needle:?} did not appear in {} within {timeout:?}; it holds:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `hearth ctl --api-sock <sock> <args>`, bounded.
pub fn ctl(sock: &Path, args: &[&str]) -> Run {
    let mut all = vec![
        "ctl".to_string(),
        "--api-sock".into(),
        sock.display().to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    hearth_with_timeout(all, Duration::from_secs(60))
}
