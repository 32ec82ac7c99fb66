//! Snapshot creation and restore of 256 MiB and 1 GiB guests, hearth next to Firecracker.
//! Run by hand: `cargo bench --bench snapshot` (SNAPSHOT_BENCH_RUNS creates and restores
//! per VMM and size, default 7; FIRECRACKER_BIN as in the boot benchmark).
//!
//! A counting test guest (1 vCPU, `count=100000000 delay=300`: a console line every few
//! hundred µs) runs until it has printed `count: 2`, then is snapshotted: hearth through its API
//! socket (`hearth ctl snapshot`), Firecracker through its own (PATCH /vm Paused, PUT
//! /snapshot/create, Full). "Restore" is from spawning the VMM to the restored guest's
//! next console line: `hearth restore --resume`, and for Firecracker a fresh process
//! with `--api-sock`, PUT /snapshot/load (File memory backend, resume_vm) as soon as
//! the socket accepts. Both map the memory file and fault pages in on first touch.
//! Creates (each of a freshly booted guest) and restores alternate between the VMMs (the
//! order flips every round); each ratio is the median of the round-by-round ratios.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::vmm::{self, Watched};
use common::{build_guest, env_num, fail, root};

const WHAT: &str = "snapshot";
/// A console line every few hundred microseconds: the next line after a restore comes as soon
/// as the guest runs, so restore → output is the VMM's own cost.
const GUEST_CMDLINE: &str = "count=100000000 delay=300";
/// Target: restore at half Firecracker's time or better.
const TARGET_RATIO: f64 = 0.5;

fn hearth() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

fn spawn(cmd: &mut Command) -> Watched {
    Watched::spawn(WHAT, cmd)
}

fn fc_api(sock: &Path, method: &str, path: &str, body: &str) {
    vmm::fc_api(WHAT, sock, method, path, body);
}

fn wait_for_socket(sock: &Path) {
    vmm::wait_for_socket(WHAT, sock);
}

/// Runs the counting guest under hearth and snapshots it; returns the create time.
fn hearth_snapshot(guest: &Path, mem: &str, dir: &Path) -> Duration {
    let sock = dir.join("hearth-api.sock");
    let mut vm = spawn(
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
    let mut vm = spawn(Command::new(fc).arg("--api-sock").arg(&sock));
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
    let mut vm = spawn(
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
    let mut vm = spawn(Command::new(fc).arg("--api-sock").arg(&sock));
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
        "guest: {} (1 vCPU, \"{GUEST_CMDLINE}\"); {runs} creates and restores per VMM and size, alternating",
        guest.display()
    );
    println!();
    println!(
        "{:>6}  {:<12} {:>26}   {:>26}   {:>26}",
        "memory",
        "VMM",
        "create median/min/max",
        "restore->output median/min/max",
        "restore->first KVM_RUN"
    );
    for (mem, mib) in [("256M", 256u64), ("1G", 1024)] {
        let dir: PathBuf = root().join("target/bench-snapshot").join(mem);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(WHAT, e));
        // Creates alternate too; the last of each is what the restores load.
        let (mut hc, mut fcc, mut create_ratios) = (vec![], vec![], vec![]);
        for round in 0..runs {
            let h = || {
                let _ = std::fs::remove_dir_all(dir.join("hearth-snap"));
                hearth_snapshot(&guest, mem, &dir).as_secs_f64() * 1e3
            };
            let pair = match &fc {
                Some(fc) => {
                    let f = || firecracker_snapshot(fc, &guest, mib, &dir).as_secs_f64() * 1e3;
                    if round % 2 == 0 {
                        let a = h();
                        (a, Some(f()))
                    } else {
                        let b = f();
                        (h(), Some(b))
                    }
                }
                None => (h(), None),
            };
            hc.push(pair.0);
            if let Some(f) = pair.1 {
                fcc.push(f);
                create_ratios.push(pair.0 / f);
            }
        }
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
            "{mem:>6}  {:<12} {:>26}   {:>26}   {:>26}",
            "hearth",
            summary(&hc),
            summary(&h),
            summary(&h_first)
        );
        if fc.is_some() {
            println!(
                "{mem:>6}  {:<12} {:>26}   {:>26}   {:>26}",
                "firecracker",
                summary(&fcc),
                summary(&f),
                "n/a"
            );
            let worst = create_ratios
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let m = common::median(&mut create_ratios);
            println!(
                "{mem:>6}  create, hearth/Firecracker over {} pairs: median {m:.2}x (target <= {TARGET_RATIO}x: {}), worst {worst:.2}x",
                create_ratios.len(),
                if m <= TARGET_RATIO { "MET" } else { "MISSED" }
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
