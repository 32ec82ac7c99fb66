//! Network test fixtures: a network namespace of the test's own with a tap in it, hearth
//! started inside it, and a raw packet socket on the tap for the host side of the wire.
//! Needs root (namespaces, taps, AF_PACKET) and iproute2's `ip`.

// Test patterns and syscall plumbing narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The ethertype the test guest sends and the tests use (IEEE local experimental 1).
pub const ETHERTYPE: u16 = 0x88b5;
/// The tap every test namespace holds.
pub const TAP: &str = "tap0";

/// Whether the process may create namespaces and taps; the network tests print why they
/// skip otherwise. (CI runs as root, see .ci/run.)
pub fn can_run_net_tests(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: needs root (network namespaces and taps)");
    }
    root
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `ip {}`: {e}; install iproute2 (see .ci/run)",
                args.join(" ")
            )
        })
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace owned by one test, holding the tap [`TAP`] (up, IPv6 off so that
/// the host kernel sends nothing on it by itself); deleted on drop, even when the test
/// fails.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hearth-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip_ok(&["netns", "add", &name]);
        // From here on the guard deletes it.
        let ns = Netns { name };
        // Router solicitations and MLD reports would otherwise land in the guest's
        // receive queue. Hosts without IPv6 have nothing to turn off.
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sh", "-c"])
            .arg(
                "for f in all default; do echo 1 > /proc/sys/net/ipv6/conf/$f/disable_ipv6; done \
                 2>/dev/null; true",
            )
            .status();
        ip_ok(&[
            "netns", "exec", &ns.name, "ip", "tuntap", "add", "dev", TAP, "mode", "tap",
        ]);
        ip_ok(&["-n", &ns.name, "link", "set", TAP, "up"]);
        ns
    }

    /// `ip netns exec <ns> <hearth> run --kernel <test guest> --cmdline <cmdline> <extra>`,
    /// stdout and stderr piped: hearth opens its tap inside the namespace.
    pub fn hearth(&self, cmdline: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.name,
            super::hearth_bin(),
            "run",
            "--kernel",
        ])
        .arg(super::test_guest())
        .args(["--cmdline", cmdline])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    }

    /// A packet socket on the tap for frames of [`ETHERTYPE`].
    pub fn packet_socket(&self) -> PacketSocket {
        PacketSocket::open(&self.name, TAP, ETHERTYPE)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = ip(&["netns", "del", &self.name]);
        if !out.status.success() {
            eprintln!(
                "cannot delete network namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// An AF_PACKET socket bound to one interface of a namespace: what the host kernel sends
/// through the tap and receives from it. Frames go whole, without the virtio-net header.
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens it inside the namespace `ns` (from a thread that enters it, since a socket
    /// stays in the namespace it was created in).
    pub fn open(ns: &str, ifname: &str, ethertype: u16) -> PacketSocket {
        let ns_path = format!("/run/netns/{ns}");
        let ifname = std::ffi::CString::new(ifname).unwrap();
        let fd = std::thread::spawn(move || {
            let ns = File::open(&ns_path).unwrap_or_else(|e| panic!("{ns_path}: {e}"));
            // SAFETY: setns with a namespace fd we hold; it changes only this thread,
            // which ends right after.
            let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
            let proto = i32::from(ethertype.to_be());
            // SAFETY: plain socket creation; the fd is owned right below.
            let raw = unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
            };
            assert!(
                raw >= 0,
                "socket(AF_PACKET): {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: `ifname` is NUL-terminated and outlives the call.
            let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert_ne!(index, 0, "no interface {ifname:?} in {ns_path}");
            // SAFETY: sockaddr_ll is plain data; zeroes are valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ethertype.to_be();
            sll.sll_ifindex = index as i32;
            // SAFETY: bind reads a sockaddr_ll of the given size from a valid pointer.
            let ret = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
            fd
        })
        .join()
        .expect("opening the packet socket failed");
        PacketSocket { fd }
    }

    /// Sends one frame out of the tap (to hearth).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame.len()` bytes from a valid slice.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send on the tap: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame that came in through the tap (from hearth), or None after
    /// `timeout`. Frames the host itself sent are skipped.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            let ready =
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
            if ready <= 0 {
                return None;
            }
            let mut buf = vec![0u8; 65536];
            // SAFETY: sockaddr_ll is plain data; zeroes are valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: recvfrom writes at most `buf.len()` bytes into `buf` and at most
            // `from_len` bytes into `from`, both valid.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                continue;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(n as usize);
            return Some(buf);
        }
    }
}

/// An Ethernet frame of [`ETHERTYPE`].
pub fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("bad MAC {s:?}")))
        .collect();
    v.try_into().unwrap_or_else(|_| panic!("bad MAC {s:?}"))
}

/// Adds another tap, up, to `ns`.
pub fn add_tap(ns: &Netns, name: &str) {
    ip_ok(&[
        "netns", "exec", &ns.name, "ip", "tuntap", "add", "dev", name, "mode", "tap",
    ]);
    ip_ok(&["-n", &ns.name, "link", "set", name, "up"]);
}
