//! virtio-net throughput as the guest sees it, next to what the host gets from the same
//! tap directly. Run by hand, as root: `cargo bench --bench net` (NET_BENCH_FRAMES,
//! default 20000; NET_BENCH_RUNS, default 3, best of).
//!
//! Everything happens in a network namespace of the benchmark's own, with one tap whose
//! queue is raised to hold every frame of a run (txqueuelen), so that nothing is dropped
//! on the host side:
//! - guest → tap: the test guest transmits N frames of a given length (`net.flood`,
//!   eight two-descriptor chains in flight) and times it with its TSC;
//! - tap → guest: the benchmark queues N frames on the tap (a packet socket) while the
//!   guest sleeps with its device up and no receive buffers, then the guest receives them
//!   all (`net.sink`, sixteen 2 KiB buffers, each posted again at once) and times it from
//!   the first frame to the last. It must get every frame: a drop fails the benchmark;
//! - host: the benchmark itself writes N frames into the tap (as hearth does, with the
//!   12-byte virtio-net header), or reads N queued frames from it.
//!
//! Guest times are converted with the host's TSC rate (KVM does not scale the TSC here).

// Data patterns and syscall plumbing narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;
#[path = "../tests/common/net.rs"]
mod net;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hearth_devices::virtio::net::{FrameSink, Tap, NET_HDR_LEN};
use net::{frame, Netns, TAP};

/// Used by `net::Netns::hearth`.
fn hearth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

/// Used by `net::Netns::hearth`.
fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| common::build_guest("net"))
}

fn fail(msg: impl std::fmt::Display) -> ! {
    common::fail("net", msg)
}

const GUEST_MAC: &str = "06:00:ac:10:00:02";
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter; every x86-64 CPU has it.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// TSC ticks per second, measured against the monotonic clock.
fn tsc_hz() -> f64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(300));
    let (t1, c1) = (Instant::now(), rdtsc());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// Runs the guest in `ns` with `cmdline`, calling `meanwhile` once it printed `ready`;
/// returns its serial output.
fn run_guest(ns: &Netns, cmdline: &str, ready: Option<&str>, meanwhile: impl FnOnce()) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-net");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("{}: {e}", dir.display())));
    let serial = dir.join("serial.txt");
    let _ = std::fs::remove_file(&serial);
    let mut child = ns
        .hearth(
            cmdline,
            &[
                "--net",
                &format!("tap={TAP},mac={GUEST_MAC}"),
                "--serial-out",
                serial.to_str().unwrap(),
            ],
        )
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start hearth: {e}")));
    let start = Instant::now();
    let text = || std::fs::read_to_string(&serial).unwrap_or_default();
    if let Some(ready) = ready {
        while !text().contains(ready) {
            if start.elapsed() > RUN_TIMEOUT || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                fail(format!("the guest never printed {ready:?}:\n{}", text()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        meanwhile();
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return text(),
            Ok(Some(status)) => fail(format!("hearth failed ({status}):\n{}", text())),
            _ if start.elapsed() > RUN_TIMEOUT => {
                let _ = child.kill();
                fail(format!(
                    "hearth ran longer than {RUN_TIMEOUT:?}:\n{}",
                    text()
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The numbers of a `net 0 <what> frames=F bytes=B tsc=T` line.
fn parse_counts(out: &str, what: &str) -> (u64, u64, u64) {
    let prefix = format!("net 0 {what} frames=");
    let line = out
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| fail(format!("no {prefix:?} line:\n{out}")));
    let nums: Vec<u64> = line
        .split(' ')
        .filter_map(|w| w.split_once('=').and_then(|(_, v)| v.parse().ok()))
        .collect();
    match nums[..] {
        [f, b, t] => (f, b, t),
        _ => fail(format!("cannot parse {line:?}")),
    }
}

/// Opens the namespace's tap the way hearth does, from a thread inside the namespace.
fn open_tap(ns: &Netns) -> Tap {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let f = File::open(&path).unwrap_or_else(|e| fail(format!("{path}: {e}")));
        // SAFETY: setns with a namespace fd we hold; it changes only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            fail(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Tap::open(TAP).unwrap_or_else(|e| fail(e))
    })
    .join()
    .unwrap_or_else(|_| fail("opening the tap panicked"))
}

/// A frame of `len` bytes to the guest.
fn bench_frame(len: usize) -> Vec<u8> {
    let mac = net::parse_mac(GUEST_MAC);
    let payload: Vec<u8> = (0..len.saturating_sub(14)).map(|i| i as u8).collect();
    frame(mac, [0x0a, 0, 0, 0, 0, 1], &payload)
}

struct Rate {
    frames: u64,
    bytes: u64,
    secs: f64,
}

impl Rate {
    fn show(&self, what: &str) {
        println!(
            "  {what:<34} {:>10.0} frames/s {:>9.1} MiB/s   ({} frames in {:.3} s)",
            self.frames as f64 / self.secs,
            self.bytes as f64 / self.secs / (1 << 20) as f64,
            self.frames,
            self.secs
        );
    }

    fn best(rates: Vec<Rate>) -> Rate {
        rates
            .into_iter()
            .min_by(|a, b| a.secs.total_cmp(&b.secs))
            .unwrap_or_else(|| fail("no runs"))
    }
}

fn guest_tx(ns: &Netns, n: u64, len: usize, hz: f64) -> Rate {
    let out = run_guest(ns, &format!("net.flood=0:{n}:{len}"), None, || {});
    let (frames, bytes, tsc) = parse_counts(&out, "flood");
    if frames != n {
        fail(format!("the guest sent {frames} of {n} frames:\n{out}"));
    }
    Rate {
        frames,
        bytes,
        secs: tsc as f64 / hz,
    }
}

fn guest_rx(ns: &Netns, n: u64, len: usize, hz: f64) -> Rate {
    let sock = ns.packet_socket();
    let f = bench_frame(len);
    let out = run_guest(
        ns,
        &format!("net.info sleep=2000 net.sink=0:{n}"),
        Some("net 0: mac="),
        || (0..n).for_each(|_| sock.send(&f)),
    );
    let (frames, bytes, tsc) = parse_counts(&out, "sink");
    if frames != n {
        fail(format!(
            "the guest received {frames} of {n} frames (lost some):\n{out}"
        ));
    }
    Rate {
        frames,
        bytes,
        secs: tsc as f64 / hz,
    }
}

fn host_write(ns: &Netns, n: u64, len: usize) -> Rate {
    let mut tap = open_tap(ns);
    let mut f = vec![0u8; NET_HDR_LEN];
    f.extend_from_slice(&bench_frame(len));
    let start = Instant::now();
    for _ in 0..n {
        tap.write_frame(&f)
            .unwrap_or_else(|e| fail(format!("writing to the tap: {e}")));
    }
    Rate {
        frames: n,
        bytes: n * len as u64,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn host_read(ns: &Netns, n: u64, len: usize) -> Rate {
    let mut tap = open_tap(ns);
    let sock = ns.packet_socket();
    let f = bench_frame(len);
    (0..n).for_each(|_| sock.send(&f));
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let mut got = 0;
    while got < n {
        match tap.read_frame(&mut buf) {
            Ok(_) => got += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > Duration::from_secs(10) {
                    fail(format!("only {got} of {n} frames came out of the tap"));
                }
            }
            Err(e) => fail(format!("reading the tap: {e}")),
        }
    }
    Rate {
        frames: n,
        bytes: n * len as u64,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn main() {
    if !net::can_run_net_tests("net bench") {
        std::process::exit(1);
    }
    let n = common::env_num("NET_BENCH_FRAMES", 20_000);
    let runs = common::env_num("NET_BENCH_RUNS", 3).max(1);
    test_guest();
    let ns = Netns::new();
    // Room for every frame of a run in the tap's queue.
    let qlen = (n + 1000).to_string();
    let ok = std::process::Command::new("ip")
        .args(["-n", &ns.name, "link", "set", TAP, "txqueuelen", &qlen])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fail("cannot raise the tap's txqueuelen");
    }
    let hz = tsc_hz();
    println!(
        "virtio-net over a tap, {n} frames per run, best of {runs}; TSC {:.0} MHz",
        hz / 1e6
    );
    for len in [1514usize, 64] {
        println!("{len}-byte frames:");
        Rate::best((0..runs).map(|_| guest_tx(&ns, n, len, hz)).collect())
            .show("guest -> tap (hearth virtio-net)");
        Rate::best((0..runs).map(|_| host_write(&ns, n, len)).collect())
            .show("host writes to the tap");
        Rate::best((0..runs).map(|_| guest_rx(&ns, n, len, hz)).collect())
            .show("tap -> guest (hearth virtio-net)");
        Rate::best((0..runs).map(|_| host_read(&ns, n, len)).collect())
            .show("host reads from the tap");
    }
}
