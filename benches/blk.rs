//! virtio-blk sequential read throughput as the guest sees it, next to the host reading
//! the same file. Run by hand: `cargo bench --bench blk` (BLK_BENCH_MIB, BLK_BENCH_RUNS,
//! BLK_BENCH_DISK_OPTS appended to the --disk spec).
//!
//! The test guest reads the disk from sector 0 in 64 KiB requests. Its throughput is
//! measured from outside: the wall time of a run that reads N MiB minus that of a run
//! that reads nothing, so boot and exit costs cancel out.

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

fn guest_read(guest: &Path, disk: &Path, mib: u64) -> Duration {
    // E.g. ",bw=100G/1000": a rate limiter that never binds, to see what its checks cost.
    let opts = std::env::var("BLK_BENCH_DISK_OPTS").unwrap_or_default();
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
    let runs = env_num("BLK_BENCH_RUNS", 3).max(1);
    let guest = build_guest("blk");
    let dir = root().join("target/bench-blk");
    std::fs::create_dir_all(&dir).expect("create target/bench-blk");
    let disk = dir.join("disk.img");
    let data: Vec<u8> = (0..(mib << 20) as u32)
        .map(|i| (i ^ (i >> 11)) as u8)
        .collect();
    std::fs::write(&disk, &data).expect("write the bench disk");
    drop(data);

    let host = best(|| host_read(&disk), runs);
    let base = best(|| guest_read(&guest, &disk, 0), runs);
    let full = best(|| guest_read(&guest, &disk, mib), runs);
    let guest_time = full.saturating_sub(base).max(Duration::from_micros(1));
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();

    println!("virtio-blk sequential read, {mib} MiB in 64 KiB requests, best of {runs}");
    println!(
        "  host read (page cache)   {:>10.1} MiB/s  ({:?})",
        rate(host),
        host
    );
    println!(
        "  guest via hearth         {:>10.1} MiB/s  ({:?} = {:?} - {:?} without reads)",
        rate(guest_time),
        guest_time,
        full,
        base
    );
    println!(
        "  guest / host             {:>10.4}",
        rate(guest_time) / rate(host)
    );
}
