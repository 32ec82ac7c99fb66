//! hearth and Firecracker driven through the same API calls by this one client, side by
//! side. Run by hand: `cargo bench --bench fc_api`.
//!
//! Per round, for each VMM (the order alternates every round):
//! - socket ready: spawn `VMM --api-sock S` (output discarded) → the first successful
//!   connect(), polled without sleeping;
//! - API boot: from the first PUT (machine-config, boot-source, then InstanceStart) to
//!   the guest's `boot-marker` line on the VMM's stdout, with two guests: the marker
//!   guest (resources/reset-guest/marker.S: the line is its first act, then it resets),
//!   which leaves only the VMM's own work, and the test guest, whose ~100 ms of boot
//!   under an emulating KVM are the same under either VMM;
//! - spawn → boot-marker: socket ready and API boot (marker guest) together, what a
//!   client waits for;
//! - snapshot load: `PUT /snapshot/load` with `resume_vm` (a fresh process, socket up) →
//!   the guest's next `count:` line. Each VMM loads a snapshot it made itself, once,
//!   before the rounds (the counting test guest, a line every few hundred µs, paused
//!   after `count: 3`);
//! - peak RSS: VmHWM of the VMM running the counting test guest, API-driven, read once
//!   it has printed `count: 20`.
//!
//! 1 vCPU, 128 MiB. Environment: FC_API_BENCH_RUNS (default 10), HEARTH_BIN (default:
//! the hearth binary cargo builds for this bench), FIRECRACKER_BIN (default
//! ../shared/peers/firecracker-v1.16.1; hearth alone when absent).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use hearth::api::client::send;
use serde_json::{json, Value};

const MEMORY_MIB: u64 = 128;
const TIMEOUT: Duration = Duration::from_secs(30);
const TARGET_RATIO: f64 = 0.5;
/// The counting guest: a console line every few hundred µs.
const COUNTING: &str = "count=100000000 delay=300";
/// Peak RSS target for an API-driven 128 MiB guest.
const TARGET_RSS_MIB: f64 = 3.0;

fn fail(msg: impl std::fmt::Display) -> ! {
    common::fail("fc_api", msg)
}

/// A VMM process with its stdout lines, each stamped when read.
struct Proc {
    child: Child,
    lines: Receiver<(Instant, String)>,
    sock: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

impl Proc {
    fn spawn(bin: &Path, sock: &Path) -> (Proc, Instant) {
        let _ = std::fs::remove_file(sock);
        let start = Instant::now();
        // The log goes to a file: on stdout it could land in the middle of a guest line.
        let log = sock.with_extension("log");
        let _ = std::fs::File::create(&log);
        let mut child = Command::new(bin)
            .arg("--api-sock")
            .arg(sock)
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| fail(format!("cannot start {}: {e}", bin.display())));
        let out = child.stdout.take().unwrap_or_else(|| fail("no stdout"));
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let proc = Proc {
            child,
            lines: rx,
            sock: sock.to_owned(),
        };
        (proc, start)
    }

    /// Once the socket is up, configures and starts `guest` with `args`: when the first
    /// PUT went out and when the guest's `boot-marker` line came.
    fn boot_to_marker(&self, guest: &Path, args: &str) -> (Instant, Instant) {
        self.wait_socket();
        let first_put = Instant::now();
        self.configure(guest, args);
        (first_put, self.wait_line("boot-marker"))
    }

    fn wait_socket(&self) -> Instant {
        first_connect(&self.sock, Instant::now())
            .unwrap_or_else(|| fail(format!("{} never came up", self.sock.display())))
    }

    fn call(&self, method: &str, path: &str, body: Value) {
        match send(&self.sock, method, path, Some(&body.to_string())) {
            Ok(a) if (200..300).contains(&a.status) => {}
            Ok(a) => fail(format!("{method} {path}: {} {}", a.status, a.body)),
            Err(e) => fail(format!("{method} {path}: {e}")),
        }
    }

    fn wait_line(&self, prefix: &str) -> Instant {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) if line.starts_with(prefix) => return at,
                Ok((_, line)) => seen.push(line),
                Err(_) => fail(format!(
                    "{}: no {prefix:?} line within {TIMEOUT:?}; its last lines:\n{}",
                    self.sock.display(),
                    seen[seen.len().saturating_sub(8)..].join("\n")
                )),
            }
        }
    }

    fn configure(&self, guest: &Path, args: &str) {
        self.call(
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": MEMORY_MIB}),
        );
        self.call(
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": guest, "boot_args": args}),
        );
        self.call("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    }
}

struct Vmm {
    name: &'static str,
    bin: PathBuf,
    snap: PathBuf,
    mem: PathBuf,
    ready: Vec<f64>,
    boot: Vec<f64>,
    boot_test_guest: Vec<f64>,
    spawn_to_marker: Vec<f64>,
    load: Vec<f64>,
    rss_mib: Vec<f64>,
}

/// Spawn → the first successful connect(), in ms, for `bin --api-sock sock` with nothing
/// else on its command line and its output discarded (no log file to open, no pipe to
/// set up: only the program's own start-up is timed beside the spawn).
fn socket_ready(bin: &Path, sock: &Path) -> f64 {
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new(bin);
    cmd.arg("--api-sock")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start {}: {e}", bin.display())));
    let ready = first_connect(sock, start);
    let _ = child.kill();
    let _ = child.wait();
    match ready {
        Some(at) => ms(at - start),
        None => fail(format!("{} never came up", sock.display())),
    }
}

/// When a connect() to `sock` first succeeds, tried from `start` on without sleeping (a
/// 100 µs sleep between tries, plus its wake-up latency, was a third of what socket ready
/// measured); `None` after [`TIMEOUT`].
fn first_connect(sock: &Path, start: Instant) -> Option<Instant> {
    loop {
        if UnixStream::connect(sock).is_ok() {
            return Some(Instant::now());
        }
        if start.elapsed() > TIMEOUT {
            return None;
        }
        std::thread::yield_now();
    }
}

/// Builds benches/floor/bind.c (static) into target/bench-guest.
fn build_floor() -> PathBuf {
    let out = common::root().join("target/bench-guest/bind-floor");
    let _ = std::fs::create_dir_all(common::root().join("target/bench-guest"));
    let ok = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(common::root().join("benches/floor/bind.c"))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fail("cannot build benches/floor/bind.c (needs gcc and a static libc)");
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let guest = common::build_guest("fc_api");
    let marker_guest = common::build_tiny_guest("fc_api", "marker-guest.elf");
    let dir = common::root().join("target/fc-api-bench");
    let _ = std::fs::create_dir_all(&dir);
    let runs = common::env_num("FC_API_BENCH_RUNS", 10);
    let hearth = std::env::var_os("HEARTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hearth")));
    let fc = std::env::var_os("FIRECRACKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("../shared/peers/firecracker-v1.16.1"));
    let floor = build_floor();
    let mut floor_ready = Vec::new();
    let mut vmms = vec![(hearth, "hearth")];
    if fc.exists() {
        vmms.push((fc, "firecracker"));
    } else {
        eprintln!("Firecracker not found at {}: hearth alone", fc.display());
    }
    let mut vmms: Vec<Vmm> = vmms
        .into_iter()
        .map(|(bin, name)| Vmm {
            name,
            bin,
            snap: dir.join(format!("{name}.snap")),
            mem: dir.join(format!("{name}.mem")),
            ready: vec![],
            boot: vec![],
            boot_test_guest: vec![],
            spawn_to_marker: vec![],
            load: vec![],
            rss_mib: vec![],
        })
        .collect();

    for v in &vmms {
        let sock = dir.join(format!("{}-snap.sock", v.name));
        let (p, _) = Proc::spawn(&v.bin, &sock);
        p.wait_socket();
        p.configure(&guest, COUNTING);
        p.wait_line("count: 3");
        p.call("PATCH", "/vm", json!({"state": "Paused"}));
        p.call(
            "PUT",
            "/snapshot/create",
            json!({"snapshot_type": "Full", "snapshot_path": v.snap, "mem_file_path": v.mem}),
        );
    }

    for round in 0..runs {
        let n = vmms.len();
        for i in 0..n {
            let v = &mut vmms[(i + usize::try_from(round).unwrap_or(0)) % n];
            if i == 0 {
                floor_ready.push(socket_ready(&floor, &dir.join("floor.sock")));
            }
            let sock = dir.join(format!("{}.sock", v.name));
            v.ready.push(socket_ready(&v.bin, &sock));
            let (mut p, spawned) = Proc::spawn(&v.bin, &sock);
            let (first_put, marker) = p.boot_to_marker(&marker_guest, "");
            v.boot.push(ms(marker - first_put));
            v.spawn_to_marker.push(ms(marker - spawned));
            let _ = p.child.wait();
            drop(p);

            let (mut p, _) = Proc::spawn(&v.bin, &sock);
            let (first_put, marker) = p.boot_to_marker(&guest, "end=reset");
            v.boot_test_guest.push(ms(marker - first_put));
            let _ = p.child.wait();
            drop(p);

            let (p, _) = Proc::spawn(&v.bin, &sock);
            p.wait_socket();
            p.configure(&guest, COUNTING);
            p.wait_line("count: 20");
            match common::vm_hwm_kib(p.child.id()) {
                Some(kib) => v.rss_mib.push(kib / 1024.0),
                None => fail("cannot read the VMM's VmHWM"),
            }
            drop(p);

            let (p, _) = Proc::spawn(&v.bin, &sock);
            p.wait_socket();
            let asked = Instant::now();
            p.call(
                "PUT",
                "/snapshot/load",
                json!({"snapshot_path": v.snap,
                       "mem_backend": {"backend_type": "File", "backend_path": v.mem},
                       "resume_vm": true}),
            );
            let next = p.wait_line("count: ");
            v.load.push(ms(next - asked));
        }
    }

    println!(
        "\n{runs} rounds, 1 vCPU, {MEMORY_MIB} MiB; medians in ms (min); load {}",
        common::loadavg()
    );
    println!(
        "{:<14}{:>18}{:>18}{:>18}{:>18}{:>18}{:>12}",
        "VMM",
        "socket ready",
        "API boot",
        "API boot (test)",
        "spawn->marker",
        "snapshot load",
        "peak RSS"
    );
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let cell = |v: &[f64]| format!("{:>10.2} ({:>5.2})", median(v), min(v));
    for v in &vmms {
        println!(
            "{:<14}{}{}{}{}{}{:>8.2} MiB",
            v.name,
            cell(&v.ready),
            cell(&v.boot),
            cell(&v.boot_test_guest),
            cell(&v.spawn_to_marker),
            cell(&v.load),
            median(&v.rss_mib)
        );
    }
    println!(
        "{:<14}{}   (a static C program that only binds its socket)",
        "floor",
        cell(&floor_ready)
    );
    let verdict = |ok: bool| if ok { "MET" } else { "MISSED" };
    if let [h, f] = &vmms[..] {
        println!(
            "socket ready floor/firecracker = {:.2}x",
            median(&floor_ready) / median(&f.ready)
        );
        for (what, a, b) in [
            ("socket ready", &h.ready, &f.ready),
            ("API boot", &h.boot, &f.boot),
            (
                "API boot (test guest)",
                &h.boot_test_guest,
                &f.boot_test_guest,
            ),
            ("spawn->marker", &h.spawn_to_marker, &f.spawn_to_marker),
            ("snapshot load", &h.load, &f.load),
        ] {
            let r = median(a) / median(b);
            println!(
                "{what:<22} hearth/firecracker = {r:.2}x (target <= {TARGET_RATIO}x: {})",
                verdict(r <= TARGET_RATIO)
            );
        }
    }
    let rss = median(&vmms[0].rss_mib);
    println!(
        "peak RSS (hearth, API-driven {MEMORY_MIB} MiB guest) = {rss:.2} MiB (target <= {TARGET_RSS_MIB} MiB: {})",
        verdict(rss <= TARGET_RSS_MIB)
    );
}
