//! Snapshot creation and restore times for 128 MiB and 1 GiB guests. Run by hand:
//! `cargo bench --bench snapshot` (SNAPSHOT_BENCH_RUNS, default 3).
//!
//! A counting test guest runs with an API socket; "create" is the wall time of
//! `hearth ctl snapshot` (pause, state, memory file, fsync); "restore" is from spawning
//! `hearth restore --resume` to its vCPU's first KVM_RUN (hearth's `-v` log, in ms after
//! its `main`), and "restore to output" until the guest's next console line appears.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_guest, env_num, fail, root};

const WHAT: &str = "snapshot";

fn hearth() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

fn wait_for(path: &Path, needle: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        if start.elapsed() > Duration::from_secs(60) {
            fail(
                WHAT,
                format!("{needle:?} never appeared in {}", path.display()),
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct Sample {
    create: Duration,
    first_run_ms: f64,
    to_output: Duration,
}

fn once(guest: &Path, mem: &str, dir: &Path) -> Sample {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(WHAT, e));
    let sock = dir.join("api.sock");
    let serial = dir.join("serial.txt");
    let mut vm = Command::new(hearth())
        .args(["run", "--kernel"])
        .arg(guest)
        .args(["--memory", mem, "--cmdline", "count=100000 delay=2000"])
        .arg("--api-sock")
        .arg(&sock)
        .arg("--serial-out")
        .arg(&serial)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(WHAT, e));
    wait_for(&serial, "count: 2\n");
    let snap = dir.join("snap");
    let t = Instant::now();
    let ok = Command::new(hearth())
        .args(["ctl", "--api-sock"])
        .arg(&sock)
        .args(["snapshot", "--dir"])
        .arg(&snap)
        .status()
        .is_ok_and(|s| s.success());
    let create = t.elapsed();
    let _ = vm.kill();
    let _ = vm.wait();
    if !ok {
        fail(WHAT, "hearth ctl snapshot failed");
    }

    let serial2 = dir.join("serial2.txt");
    let t = Instant::now();
    let mut restored = Command::new(hearth())
        .args(["restore", "--resume", "-v", "--dir"])
        .arg(&snap)
        .arg("--serial-out")
        .arg(&serial2)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(WHAT, e));
    wait_for(&serial2, "count: ");
    let to_output = t.elapsed();
    let _ = restored.kill();
    let mut first_run_ms = f64::NAN;
    if let Some(err) = restored.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.ends_with("first KVM_RUN") {
                first_run_ms = line
                    .split('[')
                    .nth(1)
                    .and_then(|r| r.split("ms]").next())
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(f64::NAN);
            }
        }
    }
    let _ = restored.wait();
    Sample {
        create,
        first_run_ms,
        to_output,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let runs = env_num("SNAPSHOT_BENCH_RUNS", 3).max(1);
    let guest = build_guest(WHAT);
    println!("snapshot create / restore, median of {runs} (test guest, 1 vCPU)");
    println!(
        "  {:>6}  {:>12}  {:>22}  {:>18}",
        "memory", "create (ms)", "restore→KVM_RUN (ms)", "restore→output (ms)"
    );
    for mem in ["128M", "1G"] {
        let dir = root().join("target/bench-snapshot").join(mem);
        let samples: Vec<Sample> = (0..runs).map(|_| once(&guest, mem, &dir)).collect();
        let ms = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        println!(
            "  {:>6}  {:>12.1}  {:>22.1}  {:>18.1}",
            mem,
            ms(&|s| s.create.as_secs_f64() * 1e3),
            ms(&|s| s.first_run_ms),
            ms(&|s| s.to_output.as_secs_f64() * 1e3),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
