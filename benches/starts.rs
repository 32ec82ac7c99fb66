//! How many VMs start and finish per second, and what idle VMs cost in memory, hearth
//! next to Firecracker. Run by hand: `cargo bench --bench starts`.
//!
//! - Throughput: STARTS_BENCH_VMS (default 40) zero-cost VMs (resources/reset-guest: the
//!   guest resets at its first instruction; 1 vCPU, 128 MiB) run to completion, 1 and 2
//!   at a time (a new one is spawned as soon as one ends), in blocks that alternate
//!   between the VMMs, STARTS_BENCH_ROUNDS (default 3) blocks each; VMs per second is
//!   the count over the block's wall time, and the median block is reported.
//! - Idle: STARTS_BENCH_IDLE (default 50) VMs of resources/reset-guest's idle guest
//!   (`sti; hlt` forever) alive at once; once all have entered their guest, the sum of
//!   their VmRSS and of their PSS (smaps_rollup, which shares the binary's pages out
//!   fairly), then they are killed. hearth's first, then Firecracker's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fail, root};

const WHAT: &str = "starts";
const MEMORY_MIB: u64 = 128;
/// A VM that has not ended after this long fails the benchmark.
const VM_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vmm {
    Hearth,
    Firecracker,
}

struct Setup {
    hearth: PathBuf,
    firecracker: Option<PathBuf>,
    zero_guest: PathBuf,
    idle_guest: PathBuf,
    /// Firecracker's descriptions of the zero-cost and the idle VM.
    fc_configs: (PathBuf, PathBuf),
    /// Where each VM's output goes.
    logs: PathBuf,
}

impl Setup {
    fn command(&self, vmm: Vmm, guest: &Path) -> Command {
        match vmm {
            Vmm::Hearth => {
                let mut c = Command::new(&self.hearth);
                c.args(["run", "--kernel"]).arg(guest).args([
                    "--cpus",
                    "1",
                    "--memory",
                    &format!("{MEMORY_MIB}M"),
                ]);
                c
            }
            Vmm::Firecracker => {
                let mut c = Command::new(self.firecracker.as_deref().unwrap_or(Path::new("")));
                // Written once, before any VM starts: a running one may still read it.
                let config = if guest == self.zero_guest {
                    &self.fc_configs.0
                } else {
                    &self.fc_configs.1
                };
                c.args(["--no-api", "--config-file"]).arg(config);
                c
            }
        }
    }
}

/// Firecracker's VM description for `guest`, written next to it.
fn firecracker_config(guest: &Path) -> PathBuf {
    let config = serde_json::json!({
        "boot-source": { "kernel_image_path": guest.display().to_string(), "boot_args": "" },
        "drives": [],
        "network-interfaces": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": MEMORY_MIB },
    });
    let stem = guest
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("guest");
    let path = guest.with_file_name(format!("firecracker-starts-{stem}.json"));
    if let Err(e) = std::fs::write(&path, config.to_string()) {
        fail(WHAT, format!("cannot write {}: {e}", path.display()));
    }
    path
}

/// Spawns `cmd` with its output in `log` (read back when it fails).
fn spawn(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log)
        .unwrap_or_else(|e| fail(WHAT, format!("cannot create {}: {e}", log.display())));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| fail(WHAT, format!("cannot clone a file handle: {e}")));
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| fail(WHAT, format!("cannot start {cmd:?}: {e}")))
}

/// Runs `count` zero-cost VMs, `parallel` at a time; returns VMs per second.
fn throughput(setup: &Setup, vmm: Vmm, count: usize, parallel: usize) -> f64 {
    let start = Instant::now();
    let mut running: Vec<(Child, Instant, PathBuf)> = Vec::new();
    let mut started = 0;
    let mut finished = 0;
    while finished < count {
        while running.len() < parallel && started < count {
            let log = setup.logs.join(format!("{vmm:?}-{started}.log"));
            running.push((
                spawn(&mut setup.command(vmm, &setup.zero_guest), &log),
                Instant::now(),
                log,
            ));
            started += 1;
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].0.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        let log = std::fs::read_to_string(&running[i].2).unwrap_or_default();
                        fail(
                            WHAT,
                            format!("{vmm:?} ended with {status}; its output:\n{log}"),
                        );
                    }
                    running.swap_remove(i);
                    finished += 1;
                }
                Ok(None) if running[i].1.elapsed() > VM_TIMEOUT => {
                    let _ = running[i].0.kill();
                    fail(WHAT, format!("a {vmm:?} VM ran longer than {VM_TIMEOUT:?}"));
                }
                Ok(None) => i += 1,
                Err(e) => fail(WHAT, format!("waiting for {vmm:?}: {e}")),
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// A /proc/<pid>/<file> field in KiB.
fn kib(pid: u32, file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the process has a thread that has entered the guest (a vCPU thread).
fn in_guest(pid: u32, vmm: Vmm) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        match vmm {
            Vmm::Hearth => comm.starts_with("vcpu"),
            Vmm::Firecracker => comm.starts_with("fc_vcpu"),
        }
    })
}

/// Starts `count` idle VMs; returns (sum of VmRSS, sum of PSS) in MiB once all run.
fn idle(setup: &Setup, vmm: Vmm, count: usize) -> (f64, f64) {
    let mut children: Vec<Child> = (0..count)
        .map(|i| {
            let log = setup.logs.join(format!("{vmm:?}-idle-{i}.log"));
            spawn(&mut setup.command(vmm, &setup.idle_guest), &log)
        })
        .collect();
    let deadline = Instant::now() + VM_TIMEOUT;
    let all_in = |children: &mut Vec<Child>| {
        children.iter_mut().all(|c| {
            if let Ok(Some(status)) = c.try_wait() {
                fail(WHAT, format!("an idle {vmm:?} VM ended: {status}"));
            }
            in_guest(c.id(), vmm)
        })
    };
    while !all_in(&mut children) {
        if Instant::now() > deadline {
            for c in &mut children {
                let _ = c.kill();
            }
            fail(WHAT, format!("{count} idle {vmm:?} VMs did not all start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the last ones settle past their set-up.
    std::thread::sleep(Duration::from_millis(500));
    let (mut rss, mut pss) = (0u64, 0u64);
    for c in &children {
        rss += kib(c.id(), "status", "VmRSS:").unwrap_or(0);
        pss += kib(c.id(), "smaps_rollup", "Pss:").unwrap_or(0);
    }
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    (rss as f64 / 1024.0, pss as f64 / 1024.0)
}

fn main() {
    let count = usize::try_from(common::env_num("STARTS_BENCH_VMS", 40).max(1)).unwrap_or(40);
    let rounds = usize::try_from(common::env_num("STARTS_BENCH_ROUNDS", 3).max(1)).unwrap_or(3);
    let idle_count = usize::try_from(common::env_num("STARTS_BENCH_IDLE", 50).max(1)).unwrap_or(50);
    let zero_guest = common::build_tiny_guest(WHAT, "reset-guest.elf");
    let idle_guest = common::build_tiny_guest(WHAT, "idle-guest.elf");
    let setup = Setup {
        hearth: PathBuf::from(env!("CARGO_BIN_EXE_hearth")),
        firecracker: common::firecracker_bin(WHAT),
        fc_configs: (
            firecracker_config(&zero_guest),
            firecracker_config(&idle_guest),
        ),
        zero_guest,
        idle_guest,
        logs: root().join("target/bench-starts"),
    };
    let _ = std::fs::remove_dir_all(&setup.logs);
    if let Err(e) = std::fs::create_dir_all(&setup.logs) {
        fail(WHAT, format!("cannot create {}: {e}", setup.logs.display()));
    }
    let mut vmms = vec![Vmm::Hearth];
    if setup.firecracker.is_some() {
        vmms.push(Vmm::Firecracker);
    }
    println!(
        "starts benchmark: zero-cost VMs started and finished per second, and idle VMs' memory"
    );
    println!(
        "machine: {} CPUs; load before: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        common::loadavg()
    );
    println!(
        "{count} VMs per block (1 vCPU, {MEMORY_MIB} MiB), {rounds} blocks per VMM and width, alternating"
    );
    for v in &vmms {
        let _ = throughput(&setup, *v, 2, 1); // warm-up
    }
    println!();
    println!(
        "{:<12} {:>10} {:>26}",
        "VMM", "at a time", "VMs/s median (min, max)"
    );
    for parallel in [1, 2] {
        let mut rates = vec![Vec::new(); vmms.len()];
        for round in 0..rounds {
            for k in 0..vmms.len() {
                let i = (round + k) % vmms.len();
                rates[i].push(throughput(&setup, vmms[i], count, parallel));
            }
        }
        for (v, r) in vmms.iter().zip(&mut rates) {
            let min = r.iter().copied().fold(f64::INFINITY, f64::min);
            let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let med = common::median(r);
            println!(
                "{:<12} {parallel:>10} {:>26}",
                format!("{v:?}"),
                format!("{med:.1} ({min:.1}, {max:.1})")
            );
        }
    }
    println!("load after the throughput runs: {}", common::loadavg());
    println!();
    println!("{idle_count} idle VMs alive at once (idle guest, 1 vCPU, {MEMORY_MIB} MiB each):");
    for v in &vmms {
        let (rss, pss) = idle(&setup, *v, idle_count);
        println!(
            "{:<12} total VmRSS {rss:7.1} MiB ({:.2} per VM), total PSS {pss:7.1} MiB ({:.2} per VM)",
            format!("{v:?}"),
            rss / idle_count as f64,
            pss / idle_count as f64
        );
    }
    println!("load after: {}", common::loadavg());
}
