//! Snapshot creation and restore of 256 MiB and 1 GiB guests, hearth next to Firecracker.
//! Run by hand: `cargo bench --bench snapshot` (SNAPSHOT_BENCH_RUNS restores per VMM and
//! size, default 7; FIRECRACKER_BIN as in the boot benchmark).
//!
//! A counting test guest (1 vCPU, `count=100000000 delay=300`: a console line every few
//! hundred µs) runs until it has printed `count: 2`, then is snapshotted: hearth through its API
//! socket (`hearth ctl snapshot`), Firecracker through its own (PATCH /vm Paused, PUT
//! /snapshot/create, Full). "Restore" is from spawning the VMM to the restored guest's
//! next console line: `hearth restore --resume`, and for Firecracker a fresh process
//! with `--api-sock`, PUT /snapshot/load (File memory backend, resume_vm) as soon as
//! the socket accepts. Both map the memory file and fault pages in on first touch.
//! Restores alternate between the VMMs (the order flips every round); the ratio is the
//! median of the round-by-round ratios.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{build_guest, env_num, fail, root};

const WHAT: &str = "snapshot";
/// A console line every few hundred microseconds: the next line after a restore comes as soon
/// as the guest runs, so restore → output is the VMM's own cost.
const GUEST_CMDLINE: &str = "count=100000000 delay=300";
/// Target: restore at half Firecracker's time or better.
const TARGET_RATIO: f64 = 0.5;
/// Any single step longer than this fails the benchmark.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

fn hearth() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

/// A child whose stdout lines arrive on a channel with the time they were read.
struct Watched {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Watched {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fail(WHAT, format!("cannot start {cmd:?}: {e}")));
        let (tx, rx) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send((Instant::now(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Self {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; returns when it arrived.
    fn wait_for(&mut self, needle: &str) -> Instant {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((t, line)) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return t;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    fail(
                        WHAT,
                        format!(
                            "{needle:?} never appeared; the VMM printed:\n{}",
                            self.seen.join("\n")
                        ),
                    );
                }
            }
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on Firecracker's API socket; fails the benchmark on an error status.
fn fc_api(sock: &Path, method: &str, path: &str, body: &str) {
    let mut stream = UnixStream::connect(sock)
        .unwrap_or_else(|e| fail(WHAT, format!("cannot connect to {}: {e}", sock.display())));
    let _ = stream.set_read_timeout(Some(STEP_TIMEOUT));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(request.as_bytes()) {
        fail(WHAT, format!("{method} {path}: {e}"));
    }
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) => fail(WHAT, format!("{method} {path}: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        // The body may follow the headers; give it a moment.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        if let Ok(n) = stream.read(&mut buf) {
            response.extend_from_slice(&buf[..n]);
        }
        fail(
            WHAT,
            format!(
                "{method} {path} {body}: {}",
                String::from_utf8_lossy(&response)
            ),
        );
    }
}

/// Connects to `sock` as soon as it accepts (the VMM creates it at start).
fn wait_for_socket(sock: &Path) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while UnixStream::connect(sock).is_err() {
        if Instant::now() > deadline {
            fail(WHAT, format!("{} never accepted", sock.display()));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Runs the counting guest under hearth and snapshots it; returns the create time.
fn hearth_snapshot(guest: &Path, mem: &str, dir: &Path) -> Duration {
    let sock = dir.join("hearth-api.sock");
    let mut vm = Watched::spawn(
        Command::new(hearth())
            .args(["run", "--kernel"])
            .arg(guest)
            .args(["--memory", mem, "--cmdline", GUEST_CMDLINE, "--api-sock"])
            .arg(&sock),
    );
    vm.wait_for("count: 2");
    let t = Instant::now();
    let ok = Command::new(hearth())
        .args(["ctl", "--api-sock"])
        .arg(&sock)
        .args(["snapshot", "--dir"])
        .arg(dir.join("hearth-snap"))
        .status()
        .is_ok_and(|s| s.success());
    let create = t.elapsed();
    vm.kill();
    if !ok {
        fail(WHAT, "hearth ctl snapshot failed");
    }
    create
}

/// The same under Firecracker; returns the create time (pause + snapshot/create).
fn firecracker_snapshot(fc: &Path, guest: &Path, mib: u64, dir: &Path) -> Duration {
    let sock = dir.join("fc-api.sock");
    let _ = std::fs::remove_file(&sock);
    let mut vm = Watched::spawn(Command::new(fc).arg("--api-sock").arg(&sock));
    wait_for_socket(&sock);
    let kernel = guest.display();
    fc_api(
        &sock,
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path":"{kernel}","boot_args":"{GUEST_CMDLINE}"}}"#),
    );
    fc_api(
        &sock,
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":{mib}}}"#),
    );
    fc_api(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    );
    vm.wait_for("count: 2");
    let t = Instant::now();
    fc_api(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#);
    fc_api(
        &sock,
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type":"Full","snapshot_path":"{}","mem_file_path":"{}"}}"#,
            dir.join("fc.state").display(),
            dir.join("fc.mem").display()
        ),
    );
    let create = t.elapsed();
    vm.kill();
    let _ = std::fs::remove_file(&sock);
    create
}

/// hearth: spawn → the restored guest's next line; also its own first-KVM_RUN time.
fn hearth_restore(dir: &Path) -> (f64, Option<f64>) {
    let t = Instant::now();
    let mut vm = Watched::spawn(
        Command::new(hearth())
            .args(["restore", "--resume", "-v", "--dir"])
            .arg(dir.join("hearth-snap")),
    );
    let seen = vm.wait_for("count: ");
    let first_run = vm.seen.iter().find_map(|l| {
        let rest = l.strip_prefix("hearth: [")?;
        let (ms, msg) = rest.split_once(" ms] ")?;
        if msg.starts_with("first KVM_RUN") {
            ms.trim().parse().ok()
        } else {
            None
        }
    });
    vm.kill();
    (seen.duration_since(t).as_secs_f64() * 1e3, first_run)
}

/// Firecracker: spawn → the restored guest's next line.
fn firecracker_restore(fc: &Path, dir: &Path) -> f64 {
    let sock = dir.join("fc-restore.sock");
    let _ = std::fs::remove_file(&sock);
    let t = Instant::now();
    let mut vm = Watched::spawn(Command::new(fc).arg("--api-sock").arg(&sock));
    wait_for_socket(&sock);
    fc_api(
        &sock,
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":true}}"#,
            dir.join("fc.state").display(),
            dir.join("fc.mem").display()
        ),
    );
    let seen = vm.wait_for("count: ");
    vm.kill();
    let _ = std::fs::remove_file(&sock);
    seen.duration_since(t).as_secs_f64() * 1e3
}

fn summary(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let mut s = v.to_vec();
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = s.iter().copied().fold(f64::INFINITY, f64::min);
    let med = common::median(&mut s);
    format!("{med:8.2} {min:8.2} {max:8.2}")
}

fn main() {
    let runs = usize::try_from(env_num("SNAPSHOT_BENCH_RUNS", 7).max(1)).unwrap_or(7);
    let guest = build_guest(WHAT);
    let fc = common::firecracker_bin(WHAT);
    println!("snapshot benchmark: restore of a running counting guest, hearth next to Firecracker");
    println!(
        "date: {}; load before: {}",
        std::process::Command::new("date")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        common::loadavg()
    );
    println!(
        "guest: {} (1 vCPU, \"{GUEST_CMDLINE}\"); {runs} restores per VMM and size, alternating",
        guest.display()
    );
    println!();
    println!(
        "{:>6}  {:<12} {:>12}   {:>26}   {:>26}",
        "memory", "VMM", "create (ms)", "restore->output median/min/max", "restore->first KVM_RUN"
    );
    for (mem, mib) in [("256M", 256u64), ("1G", 1024)] {
        let dir: PathBuf = root().join("target/bench-snapshot").join(mem);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(WHAT, e));
        let hearth_create = hearth_snapshot(&guest, mem, &dir);
        let fc_create = fc
            .as_ref()
            .map(|fc| firecracker_snapshot(fc, &guest, mib, &dir));
        // One untimed restore each, so both start from a warm page cache.
        hearth_restore(&dir);
        if let Some(fc) = &fc {
            firecracker_restore(fc, &dir);
        }
        let (mut h, mut h_first, mut f, mut ratios) = (vec![], vec![], vec![], vec![]);
        for round in 0..runs {
            let mut pair = (0.0, None);
            let mut run_hearth = || {
                let (ms, first) = hearth_restore(&dir);
                h.push(ms);
                h_first.extend(first);
                ms
            };
            match &fc {
                Some(fc) if round % 2 == 0 => {
                    pair.0 = run_hearth();
                    pair.1 = Some(firecracker_restore(fc, &dir));
                }
                Some(fc) => {
                    pair.1 = Some(firecracker_restore(fc, &dir));
                    pair.0 = run_hearth();
                }
                None => pair.0 = run_hearth(),
            }
            if let Some(fms) = pair.1 {
                f.push(fms);
                ratios.push(pair.0 / fms);
            }
        }
        println!(
            "{mem:>6}  {:<12} {:>12.1}   {:>26}   {:>26}",
            "hearth",
            hearth_create.as_secs_f64() * 1e3,
            summary(&h),
            summary(&h_first)
        );
        if let Some(c) = fc_create {
            println!(
                "{mem:>6}  {:<12} {:>12.1}   {:>26}   {:>26}",
                "firecracker",
                c.as_secs_f64() * 1e3,
                summary(&f),
                "n/a"
            );
            let worst = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let m = common::median(&mut ratios);
            println!(
                "{mem:>6}  restore -> output, hearth/Firecracker over {} pairs: median {m:.2}x (target <= {TARGET_RATIO}x: {}), worst {worst:.2}x",
                ratios.len(),
                if m <= TARGET_RATIO { "MET" } else { "MISSED" }
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!();
    println!("load after: {}", common::loadavg());
}
