//! Shared by the integration tests: building the test guest and running hearth with a
//! timeout that fails loudly.
#![allow(dead_code)]

pub mod net;
pub mod snap;

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

/// How long a guest whose speed depends on the machine's load (real Linux on an
/// emulating KVM) may go without console output, and run in all.
#[derive(Clone, Copy, Debug)]
pub struct ProgressBounds {
    /// Silence while hearth used this much CPU (all its threads, so every vCPU counts):
    /// hung, whatever else the machine does. A healthy Linux boot is ~30 s of CPU in all
    /// on an idle machine; under load each emulated instruction costs more, and a 2-vCPU
    /// boot was seen silent for 60 s of CPU (2 minutes on the clock) while unpacking its
    /// initramfs.
    pub stall_cpu: Duration,
    /// Silence for this long on the clock: hung even if it uses no CPU.
    pub stall_wall: Duration,
    /// Silence for this long while hearth used almost no CPU (under [`IDLE_SHARE`] of the
    /// time: its vCPUs all wait for an interrupt that does not come): hung. On a busy
    /// machine a guest that runs still gets far more than that share.
    pub stall_idle: Duration,
    /// The whole run.
    pub total: Duration,
}

/// The bounds of the real-Linux tests: generous for a machine busy with other work, which
/// makes them several times slower (8.5 minutes to /init was seen).
pub const LINUX_BOUNDS: ProgressBounds = ProgressBounds {
    stall_cpu: Duration::from_secs(300),
    stall_wall: Duration::from_secs(900),
    stall_idle: Duration::from_secs(180),
    total: Duration::from_secs(1800),
};

/// The share of the clock under which a silent guest counts as idle (see
/// [`ProgressBounds::stall_idle`]): a hung guest's hearth wakes only for its watchdog.
pub const IDLE_SHARE: f64 = 0.02;

/// The CPU time (user + system) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: state is the first; utime
    // and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads its argument.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(Duration::from_millis(ticks * 1000 / hz.max(1)))
}

/// Watches a guest's console for progress (see [`ProgressBounds`]).
#[derive(Debug)]
pub struct ProgressWatch {
    pid: u32,
    bounds: ProgressBounds,
    start: Instant,
    last_output: Instant,
    cpu_at_last_output: Duration,
}

impl ProgressWatch {
    /// Starts watching process `pid`.
    pub fn new(pid: u32, bounds: ProgressBounds) -> Self {
        Self {
            pid,
            bounds,
            start: Instant::now(),
            last_output: Instant::now(),
            cpu_at_last_output: cpu_time(pid).unwrap_or_default(),
        }
    }

    /// The guest wrote something.
    pub fn output(&mut self) {
        self.last_output = Instant::now();
        self.cpu_at_last_output = cpu_time(self.pid).unwrap_or(self.cpu_at_last_output);
    }

    /// Why the guest counts as hung, if it does.
    pub fn hung(&self) -> Option<String> {
        let silent = self.last_output.elapsed();
        let cpu = cpu_time(self.pid)
            .unwrap_or_default()
            .saturating_sub(self.cpu_at_last_output);
        if cpu > self.bounds.stall_cpu {
            Some(format!(
                "wrote nothing on its console while hearth used {cpu:.0?} of CPU ({silent:.0?} on the clock): hung"
            ))
        } else if silent > self.bounds.stall_wall {
            Some(format!(
                "wrote nothing on its console for {silent:.0?}: hung"
            ))
        } else if silent > self.bounds.stall_idle
            && cpu.as_secs_f64() < silent.as_secs_f64() * IDLE_SHARE
        {
            Some(format!(
                "wrote nothing on its console for {silent:.0?} while hearth used {cpu:.1?} of \
                 CPU (its vCPUs wait for an interrupt that does not come): hung"
            ))
        } else if self.start.elapsed() > self.bounds.total {
            Some(format!("ran longer than {:?}", self.bounds.total))
        } else {
            None
        }
    }

    /// Time since the watch started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits for `child` while its stdout (the guest's console) makes progress: killed and
/// failed loudly, with the last console lines, when the guest is silent past `bounds`
/// (hung) or runs past their total. For guests whose speed depends on the machine's load
/// (real Linux), where a fixed bound either fails on a busy machine or waits long on a
/// hung guest.
pub fn wait_with_progress(mut child: Child, bounds: ProgressBounds, what: &str) -> Run {
    use std::sync::{Arc, Mutex};
    let mut watch = ProgressWatch::new(child.id(), bounds);
    let progress = Arc::new(Mutex::new((String::new(), 0u64)));
    let mut out = child.stdout.take();
    let out_t = {
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Some(Ok(n @ 1..)) = out.as_mut().map(|o| o.read(&mut buf)) {
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                p.0.push_str(&String::from_utf8_lossy(&buf[..n]));
                p.1 += 1;
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
    let mut seen = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for hearth") {
            break status;
        }
        let chunks = progress.lock().unwrap_or_else(|e| e.into_inner()).1;
        if chunks != seen {
            seen = chunks;
            watch.output();
        }
        if let Some(why) = watch.hung() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_t.join();
            let stdout = progress.lock().unwrap_or_else(|e| e.into_inner()).0.clone();
            let stderr = err_t.join().unwrap_or_default();
            panic!(
                "{what}: the guest {why}, after {:.0?}; hearth was killed\n\
                 --- last console lines ---\n{}\n--- last stderr lines ---\n{}",
                watch.elapsed(),
                last_lines(&stdout, 40),
                last_lines(&stderr, 40)
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
        elapsed: watch.elapsed(),
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
    spawn_hearth_env(args, &[])
}

/// [`spawn_hearth`] with extra environment variables.
pub fn spawn_hearth_env<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Child {
    Command::new(hearth_bin())
        .args(args)
        .envs(env.iter().copied())
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
