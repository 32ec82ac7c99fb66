//! Stopping a VM from the host: SIGTERM/SIGINT stop it cleanly (sockets removed, status
//! 128+signal), the console escape Ctrl-a x stops it, the terminal comes back as it was
//! on every way out, and a killed VM's stale vsock socket does not block its restart.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use hearth::exit_status;

const T: Duration = Duration::from_secs(60);

/// A hearth process, killed if the test fails before it is waited for.
struct Hearth(Option<Child>);

impl Hearth {
    fn pid(&self) -> i32 {
        i32::try_from(self.0.as_ref().expect("not yet waited for").id()).unwrap()
    }
    /// Waits for it (bounded), as `wait_bounded`.
    fn wait(mut self, what: &str) -> Run {
        wait_bounded(self.0.take().expect("waited once"), T, what)
    }
    fn kill(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Hearth {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A long-running test guest, its console in `serial`, with an API and a vsock socket.
fn start(dir: &Path, stdin: Stdio) -> (Hearth, PathBuf, PathBuf, PathBuf) {
    let serial = dir.join("serial.txt");
    let api = dir.join("api.sock");
    let vsock = dir.join("v.sock");
    let child = Command::new(hearth_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .args(["--cmdline", "console=ttyS0 count=1000000", "--serial-out"])
        .arg(&serial)
        .arg("--api-sock")
        .arg(&api)
        .arg("--vsock")
        .arg(format!("cid=3,socket={}", vsock.display()))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start hearth");
    (Hearth(Some(child)), serial, api, vsock)
}

fn signal(child: &Hearth, sig: i32) {
    // SAFETY: kill(2) with a pid this test started and has not yet waited for.
    assert_eq!(unsafe { libc::kill(child.pid(), sig) }, 0);
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = scratch();
        let (child, serial, api, vsock) = start(dir.as_path(), Stdio::null());
        wait_for_text(&serial, "count: 2\n", T);
        assert!(api.exists() && vsock.exists());
        signal(&child, sig);
        let run = child.wait(name);
        assert_eq!(run.code(), exit_status::SIGNAL_BASE + sig, "{run:#?}");
        assert!(
            run.stderr.contains(&format!("hearth: stopped by {name}")),
            "{run:#?}"
        );
        assert!(!api.exists(), "{name}: the API socket is removed");
        assert!(!vsock.exists(), "{name}: the vsock socket is removed");
    }
}

#[test]
fn a_killed_vms_stale_vsock_socket_does_not_block_its_restart() {
    let dir = scratch();
    let (mut child, serial, api, vsock) = start(dir.as_path(), Stdio::null());
    wait_for_text(&serial, "count: 2\n", T);
    child.kill();
    assert!(
        vsock.exists() && api.exists(),
        "SIGKILL leaves the socket files"
    );
    std::fs::remove_file(&serial).unwrap();
    let (child, serial, _, _) = start(dir.as_path(), Stdio::null());
    wait_for_text(&serial, "count: 2\n", T);
    // A live one is still refused.
    let run = hearth([
        "run",
        "--kernel",
        test_guest().to_str().unwrap(),
        "--vsock",
        &format!("cid=3,socket={}", vsock.display()),
    ]);
    assert_eq!(run.code(), exit_status::HEARTH_ERROR, "{run:#?}");
    assert!(
        run.stderr.contains("already exists and is in use"),
        "{run:#?}"
    );
    signal(&child, libc::SIGTERM);
    let run = child.wait("restarted");
    assert_eq!(
        run.code(),
        exit_status::SIGNAL_BASE + libc::SIGTERM,
        "{run:#?}"
    );
}

/// A pseudo-terminal: the master side, and the path of the slave.
struct Pty {
    master: std::fs::File,
    slave: PathBuf,
}

fn open_pty() -> Pty {
    // SAFETY: posix_openpt returns a new descriptor or -1; grantpt/unlockpt/ptsname only
    // use that descriptor, and ptsname's static buffer is copied out at once.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(fd >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = std::fs::File::from(OwnedFd::from_raw_fd(fd));
        assert_eq!(libc::grantpt(fd), 0);
        assert_eq!(libc::unlockpt(fd), 0);
        let name = libc::ptsname(fd);
        assert!(!name.is_null());
        let slave = PathBuf::from(
            std::ffi::CStr::from_ptr(name)
                .to_str()
                .expect("pty name")
                .to_owned(),
        );
        Pty { master, slave }
    }
}

fn termios(f: &std::fs::File) -> libc::termios {
    // SAFETY: tcgetattr fills the zeroed termios for an open terminal descriptor.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(f.as_raw_fd(), &mut t), 0);
        t
    }
}

const COOKED: libc::tcflag_t = libc::ECHO | libc::ICANON | libc::ISIG;

/// Starts hearth on a terminal, waits until it is running in raw mode.
fn start_on_pty(dir: &Path) -> (Hearth, Pty, std::fs::File, PathBuf) {
    let pty = open_pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty.slave)
        .unwrap();
    assert_eq!(
        termios(&slave).c_lflag & COOKED,
        COOKED,
        "a fresh pty is cooked"
    );
    let (child, serial, _, _) = start(dir, Stdio::from(slave.try_clone().unwrap()));
    wait_for_text(&serial, "count: 2\n", T);
    let start = std::time::Instant::now();
    while termios(&slave).c_lflag & libc::ECHO != 0 {
        assert!(
            start.elapsed() < T,
            "hearth never put the terminal in raw mode"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, pty, slave, serial)
}

#[test]
fn ctrl_a_x_stops_the_vm_and_restores_the_terminal() {
    let dir = scratch();
    let (child, mut pty, slave, _) = start_on_pty(dir.as_path());
    // Ctrl-C goes to the guest (no signal in raw mode); Ctrl-a x stops hearth.
    pty.master.write_all(b"\x03\x01x").unwrap();
    let run = child.wait("Ctrl-a x");
    assert_eq!(run.code(), exit_status::STOPPED, "{run:#?}");
    assert!(
        run.stderr.contains("stopped from the console (Ctrl-a x)"),
        "{run:#?}"
    );
    assert_eq!(
        termios(&slave).c_lflag & COOKED,
        COOKED,
        "terminal restored"
    );
}

#[test]
fn sigterm_restores_the_terminal() {
    let dir = scratch();
    let (child, _pty, slave, _) = start_on_pty(dir.as_path());
    signal(&child, libc::SIGTERM);
    let run = child.wait("SIGTERM on a terminal");
    assert_eq!(
        run.code(),
        exit_status::SIGNAL_BASE + libc::SIGTERM,
        "{run:#?}"
    );
    assert_eq!(
        termios(&slave).c_lflag & COOKED,
        COOKED,
        "terminal restored"
    );
}

#[test]
fn a_triple_fault_restores_the_terminal() {
    let pty = open_pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty.slave)
        .unwrap();
    let child = Command::new(hearth_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .args(["--cmdline", "console=ttyS0 fault=ud2"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_bounded(child, T, "triple fault on a terminal");
    assert_eq!(run.code(), exit_status::TRIPLE_FAULT, "{run:#?}");
    assert_eq!(
        termios(&slave).c_lflag & COOKED,
        COOKED,
        "terminal restored"
    );
    drop(pty);
}

/// The progress bound the Linux tests use: a guest that stops writing is killed and the
/// test fails with its last console lines, long before the total bound.
#[test]
#[should_panic(expected = "wrote nothing on its console")]
fn a_silent_guest_fails_the_progress_bound_with_its_last_lines() {
    let child = Command::new(hearth_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        // count: 1, then a delay loop far longer than the stall bound.
        .args(["--cmdline", "console=ttyS0 delay=100000000000 count=2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let bounds = ProgressBounds {
            stall_cpu: Duration::from_secs(2),
            stall_wall: T,
            stall_idle: T,
            total: T,
        };
        wait_with_progress(child, bounds, "silent guest")
    }));
    let message = result
        .err()
        .and_then(|e| e.downcast::<String>().ok())
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        started.elapsed() < T,
        "the stall bound fired before the total"
    );
    assert!(
        message.contains("count: 1"),
        "the last lines are shown: {message}"
    );
    panic!("{message}");
}
