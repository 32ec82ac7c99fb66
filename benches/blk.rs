//! virtio-blk sequential read throughput as the guest sees it, next to the host reading
//! the same file, and what the rate-limiter code costs an unthrottled disk. Run by hand:
//! `cargo bench --bench blk` (BLK_BENCH_MIB, BLK_BENCH_RUNS, BLK_BENCH_DISK_OPTS appended
//! to the --disk spec of both variants).
//!
//! The test guest reads the disk from sector 0 in 64 KiB requests. Its throughput is
//! measured from outside: the wall time of a run that reads N MiB minus that of a run
//! that reads nothing, so boot and exit costs cancel out. Two variants alternate, round
//! by round (the order swapping every round): the disk with no rate limiter, and with one
//! set so high that it never throttles (`bw=100G/1000,ops=1000000/1000`), whose buckets
//! are consulted for every request; medians of each are compared.

// Data patterns and syscall plumbing narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_guest, env_num, root};

/// A rate limiter that never binds: 100 GB/s and a million requests per second.
const NEVER_BINDS: &str = ",bw=100G/1000,ops=1000000/1000";

fn guest_read(guest: &Path, disk: &Path, mib: u64, limiter: &str) -> Duration {
    let opts = std::env::var("BLK_BENCH_DISK_OPTS").unwrap_or_default() + limiter;
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("run")
        .arg("--kernel")
        .arg(guest)
        .arg("--disk")
        .arg(format!("path={},readonly=on{opts}", disk.display()))
        .arg("--cmdline")
        .arg(format!("blk.bench=0:{mib} exit=0"))
        .stdin(Stdio::null())
        .output();
    let elapsed = start.elapsed();
    match out {
        Ok(o) if o.status.success() => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            let want = format!("bytes={}", mib << 20);
            if mib > 0 && !stdout.contains(&want) {
                eprintln!("blk bench: the guest did not report {want}:\n{stdout}");
                std::process::exit(1);
            }
            elapsed
        }
        Ok(o) => {
            eprintln!(
                "blk bench: hearth failed: {}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("blk bench: cannot run hearth: {e}");
            std::process::exit(1);
        }
    }
}

fn host_read(disk: &Path) -> Duration {
    let start = Instant::now();
    let mut f = std::fs::File::open(disk).expect("open the bench disk");
    let mut buf = vec![0u8; 64 << 10];
    while f.read(&mut buf).expect("read the bench disk") > 0 {}
    start.elapsed()
}

fn best(mut f: impl FnMut() -> Duration, runs: u64) -> Duration {
    (0..runs).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    let mib = env_num("BLK_BENCH_MIB", 64);
    let runs = env_num("BLK_BENCH_RUNS", 7).max(1);
    let guest = build_guest("blk");
    let dir = root().join("target/bench-blk");
    std::fs::create_dir_all(&dir).expect("create target/bench-blk");
    let disk = dir.join("disk.img");
    let data: Vec<u8> = (0..(mib << 20) as u32)
        .map(|i| (i ^ (i >> 11)) as u8)
        .collect();
    std::fs::write(&disk, &data).expect("write the bench disk");
    drop(data);

    let load_before = common::loadavg();
    let host = best(|| host_read(&disk), runs);
    let variants = [
        ("no rate limiter", ""),
        ("limiter that never binds", NEVER_BINDS),
    ];
    // Per variant, per round: the guest's time to read (full run minus empty run).
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    for v in &variants {
        guest_read(&guest, &disk, mib, v.1); // warm-up
    }
    for round in 0..runs as usize {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            let base = guest_read(&guest, &disk, 0, variants[i].1);
            let full = guest_read(&guest, &disk, mib, variants[i].1);
            times[i].push(full.saturating_sub(base).max(Duration::from_micros(1)));
        }
    }
    let load_after = common::loadavg();
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();

    println!("virtio-blk sequential read, {mib} MiB in 64 KiB requests, {runs} alternating rounds");
    println!("load: {load_before} before, {load_after} after (/proc/loadavg)");
    println!(
        "  host read (page cache), best   {:>10.1} MiB/s  ({:?})",
        rate(host),
        host
    );
    let mut medians = Vec::new();
    for (i, (name, _)) in variants.iter().enumerate() {
        let mut rates: Vec<f64> = times[i].iter().map(|d| rate(*d)).collect();
        let (min, max) = rates
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let median = common::median(&mut rates);
        medians.push(median);
        println!(
            "  guest, {name:<24} median {median:>8.1} MiB/s  (min {min:.1}, max {max:.1}; {:.4} of the host)",
            median / rate(host)
        );
    }
    let mut ratios: Vec<f64> = times[0]
        .iter()
        .zip(&times[1])
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    println!(
        "  never-binding limiter / none: {:.3}x by medians, {:.3}x median of per-round throughput ratios",
        medians[1] / medians[0],
        common::median(&mut ratios)
    );
}
