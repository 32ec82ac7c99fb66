//! A 2-vCPU Linux guest stopped for a minute (paused and resumed; snapshotted and
//! restored a minute later) carries on counting with no RCU stall, soft lockup or NMI
//! backtrace on its console: hearth tells each vCPU's kvmclock that the guest was stopped
//! (KVM_KVMCLOCK_CTRL), so no NMI backtrace runs into `lsl`. Its vsock device
//! works through all of it with Linux's own driver: a host connection held open across
//! the pause, and after the restore a host connection made at once (while the guest
//! still holds the connection of the process that took the snapshot) and a guest
//! connection to the host.
//!
//! The guest's vsock end is resources/linux/hearth-vsock.c (in the busybox initramfs,
//! started by /init for `hearth.vsock=PORT`): it echoes lines, and on `dial P TEXT`
//! connects to the host's port P and answers with the line it got back.
//!
//! Slow (a Linux boot is ~60 s on an emulating KVM, then two one-minute stops): run on
//! its own, `cargo test --test linux_checkpoint` (.ci/run does).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{ctl, hearth_bin, last_lines, scratch, ProgressWatch, LINUX_BOUNDS};

/// How long the guest is stopped: well past the kernel's 21 s RCU stall timeout.
const STOP: Duration = Duration::from_secs(60);
/// The guest's vsock port (hearth-vsock listens there).
const GUEST_PORT: u32 = 5000;
/// The host port the guest connects to after the restore.
const HOST_PORT: u32 = 6000;
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 hearth.count=100000 hearth.vsock=5000";
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

/// A running hearth and its console file: every wait on it is bounded by the guest's
/// progress (console output while hearth uses CPU) and fails loudly, with the last
/// console lines, when hearth exits or the guest hangs.
struct Guest {
    child: Child,
    serial: PathBuf,
    watch: ProgressWatch,
    seen: usize,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guest {
    /// `hearth <args> --serial-out <serial>`.
    fn spawn(args: &[&std::ffi::OsStr], serial: PathBuf) -> Self {
        let child = Command::new(hearth_bin())
            .args(args)
            .arg("--serial-out")
            .arg(&serial)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let watch = ProgressWatch::new(child.id(), LINUX_BOUNDS);
        Self {
            child,
            serial,
            watch,
            seen: 0,
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Calls `poll` until it gives a value (it should wait a little itself, or return at
    /// once when it has nothing); an `Err` fails the test with the console's last lines.
    fn until<T>(&mut self, what: &str, mut poll: impl FnMut() -> Result<Option<T>, String>) -> T {
        loop {
            let text = self.console();
            let fail = |why: String| -> ! {
                panic!(
                    "{what}: {why}\n--- last console lines ---\n{}",
                    last_lines(&text, 40)
                )
            };
            match poll() {
                Ok(Some(v)) => return v,
                Ok(None) => {}
                Err(e) => fail(e),
            }
            if text.len() != self.seen {
                self.seen = text.len();
                self.watch.output();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                fail(format!("hearth ended ({status})"));
            }
            if let Some(why) = self.watch.hung() {
                fail(format!("the guest {why}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the console holds `count: n` (or more), and returns it.
    fn wait_count(&mut self, n: u64) -> String {
        let serial = self.serial.clone();
        self.until(&format!("waiting for count {n}"), || {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            Ok(counts(&text)
                .last()
                .is_some_and(|c| *c >= n)
                .then_some(text))
        })
    }

    /// Waits until the console holds a line containing `needle`.
    fn wait_line(&mut self, needle: &str) {
        let serial = self.serial.clone();
        self.until(&format!("waiting for {needle:?} on the console"), || {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            Ok(text.contains(needle).then_some(()))
        });
    }

    fn last_count(&self) -> u64 {
        counts(&self.console()).last().copied().unwrap_or(0)
    }
}

fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("count: "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A stream of lines over a Unix socket of hearth's vsock device.
struct Lines {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Lines {
    fn new(stream: UnixStream) -> Self {
        // Short reads, so that waits can watch the guest in between.
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("sending {line:?} over vsock: {e}"));
    }

    /// The next whole line (without its `\n`), if one came.
    fn poll(&mut self) -> Result<Option<String>, String> {
        if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            return Ok(Some(String::from_utf8_lossy(&line[..i]).into_owned()));
        }
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(format!(
                "hearth closed the connection (after {:?})",
                String::from_utf8_lossy(&self.buf)
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(None)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(format!("reading from hearth's socket: {e}")),
        }
    }

    fn line(&mut self, guest: &mut Guest, what: &str) -> String {
        guest.until(what, || self.poll())
    }
}

/// A host connection to the guest's `port` (Firecracker's `CONNECT <port>` / `OK
/// <host port>`), made as soon as hearth listens on `sock` (a file left by a killed
/// hearth refuses connections until then); returns it with its host port.
fn connect(guest: &mut Guest, sock: &Path, port: u32) -> (Lines, u32) {
    let stream =
        guest.until(
            &format!("connecting to {}", sock.display()),
            || match UnixStream::connect(sock) {
                Ok(s) => Ok(Some(s)),
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    Ok(None)
                }
                Err(e) => Err(format!("connecting to {}: {e}", sock.display())),
            },
        );
    let mut conn = Lines::new(stream);
    conn.send(&format!("CONNECT {port}"));
    let ok = conn.line(guest, &format!("waiting for OK to CONNECT {port}"));
    let host_port = ok
        .strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("expected `OK <port>` to CONNECT {port}, got {ok:?}"));
    (conn, host_port)
}

/// Sends `line` and expects it back.
fn echo(guest: &mut Guest, conn: &mut Lines, line: &str) {
    conn.send(line);
    let back = conn.line(guest, &format!("waiting for the echo of {line:?}"));
    assert_eq!(back, line, "the guest's echo");
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

#[test]
fn two_vcpu_linux_survives_a_minute_paused_and_a_restore_a_minute_later() {
    let (kernel, initrd) = guest_files();
    let dir = scratch();
    let d = dir.as_path();
    let api = d.join("api.sock");
    let vsock = d.join("vm.sock");
    let vsock_arg = format!("cid=3,socket={}", vsock.display());
    let mut guest = Guest::spawn(
        &[
            "run".as_ref(),
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--initrd".as_ref(),
            initrd.as_os_str(),
            "--memory".as_ref(),
            "256M".as_ref(),
            "--cpus".as_ref(),
            "2".as_ref(),
            "--cmdline".as_ref(),
            CMDLINE.as_ref(),
            "--vsock".as_ref(),
            vsock_arg.as_ref(),
            "--api-sock".as_ref(),
            api.as_os_str(),
        ],
        d.join("serial-1.txt"),
    );
    guest.wait_count(3);
    guest.wait_line(&format!("hearth-vsock: listening on port {GUEST_PORT}"));
    // A connection held open through the pause and the snapshot.
    let (mut held, held_port) = connect(&mut guest, &vsock, GUEST_PORT);
    echo(&mut guest, &mut held, "before the pause");

    // A minute paused, then resumed.
    assert_eq!(ctl(&api, &["pause"]).code(), 0);
    let before = guest.console();
    std::thread::sleep(STOP);
    assert_eq!(ctl(&api, &["resume"]).code(), 0);
    guest.watch = ProgressWatch::new(guest.child.id(), LINUX_BOUNDS);
    let c = guest.last_count();
    let text = guest.wait_count(c + 5);
    assert_no_hang_reports(&text[before.len()..], "after a minute paused");
    echo(&mut guest, &mut held, "after the pause");
    eprintln!(
        "paused for {STOP:?}: counted on to {}, vsock echoes",
        guest.last_count()
    );

    // A snapshot with the connection open, the process gone, a restore a minute later.
    let snap = d.join("snap");
    let r = ctl(&api, &["snapshot", "--dir", snap.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{r:#?}");
    let at_snapshot = guest.last_count();
    drop(guest);
    std::thread::sleep(STOP);
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", vsock.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut guest = Guest::spawn(
        &[
            "restore".as_ref(),
            "--resume".as_ref(),
            "--dir".as_ref(),
            snap.as_os_str(),
        ],
        d.join("serial-2.txt"),
    );
    // At once, before the guest has taken in the transport reset: the new connection
    // must neither reuse the held one's port nor be dropped by the reset.
    let (mut conn, port) = connect(&mut guest, &vsock, GUEST_PORT);
    assert!(
        port > held_port,
        "host ports carry on from the snapshot: {port} after {held_port}"
    );
    echo(&mut guest, &mut conn, "after the restore");
    // The guest dropped the connection of the process that took the snapshot.
    guest.wait_line(&format!(
        "hearth-vsock: connection from host port {held_port} "
    ));
    // The guest connects to the host.
    conn.send(&format!("dial {HOST_PORT} from the guest"));
    let accepted = guest.until(
        "waiting for the guest's connection to the host",
        || match listener.accept() {
            Ok((s, _)) => Ok(Some(s)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(format!("accepting the guest's connection: {e}")),
        },
    );
    accepted.set_nonblocking(false).unwrap();
    let mut from_guest = Lines::new(accepted);
    let got = from_guest.line(&mut guest, "reading the guest's line");
    assert_eq!(got, "from the guest");
    from_guest.send("hello guest");
    let dialed = conn.line(
        &mut guest,
        "waiting for the guest's report of its connection",
    );
    assert_eq!(dialed, format!("dialed {HOST_PORT}: hello guest"));

    let text = guest.wait_count(at_snapshot + 5);
    assert_eq!(
        counts(&text).first(),
        Some(&(at_snapshot + 1)),
        "counts on from the snapshot\n{}",
        last_lines(&text, 40)
    );
    assert_no_hang_reports(&text, "restored a minute later");
    eprintln!(
        "restored {STOP:?} after the snapshot: counted on to {}, vsock both ways",
        guest.last_count()
    );
}
