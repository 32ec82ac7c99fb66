//! `hearth run -- CMD` next to QEMU 7.2 (`-M microvm`) with virtiofsd: the same kernel
//! (resources/linux, ../shared/linux-guest), the host's root shared read-only over
//! virtio-fs under a tmpfs overlay in the guest, the same command.
//! Run by hand: `cargo bench --bench run_cmd`.
//!
//! Two workloads: `true`, and reading a 100 MiB file of the host (at its host path, through
//! the root share) with `cat FILE > /dev/null`. Each round runs hearth and QEMU on both,
//! the order rotating every round so that the machine's load hits them alike; the figures
//! are medians over the rounds. For every run it records:
//! - wall: spawn → the VMM reaped with the command's status (hearth: its exit, after the
//!   guest's i8042 reset); QEMU: from starting virtiofsd → the guest's status line on
//!   the console (microvm has no i8042 to reset through, and a triple fault stops this
//!   KVM with an emulation failure, so QEMU is then killed; its teardown is not counted);
//! - hearth's time to its first KVM_RUN (its `-v` line, ms after its `main`);
//! - the host CPU time of the thread that serves virtio-fs: hearth's `event-loop` thread
//!   (sampled from /proc/<pid>/task/<tid>/schedstat every 5 ms while it runs; it also
//!   serves vsock, which carries nothing here); for virtiofsd, the whole process
//!   (`wait4`'s rusage). Per MiB read is (read run − `true` run of the same round) / 100.
//!
//! hearth brings its own init (hearth-init, over vsock); QEMU gets a busybox initramfs
//! whose /init does what hearth-init does for this (virtiofs root read-only, tmpfs
//! overlay, proc/sys/dev, the command in a chroot, its status on the console, reboot):
//! this host has no /dev/vhost-vsock for hearth-init to talk through under QEMU.
//!
//! On an emulating KVM a round takes about half an hour (the guest kernel copies the
//! 100 MiB to `cat` in emulated kernel mode); medians so far are printed after each.
//! Environment: RUN_BENCH_RUNS (rounds, default 3), HEARTH_BIN, KERNEL (default
//! target/linux-guest/vmlinux from resources/linux/get-kernel.sh), QEMU_BIN (default
//! qemu-system-x86_64 on PATH), VIRTIOFSD_BIN (default virtiofsd on PATH or in
//! ~/.cargo/bin). Without QEMU or virtiofsd it says so and measures hearth alone.

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MEMORY: &str = "128M";
const FILE_MIB: usize = 100;
/// The guest command line both VMMs get (hearth appends its virtio-mmio devices; QEMU's
/// microvm does the same for its own). The emulator workarounds are hearth's defaults
/// here (README, "The platform note").
const CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 rdinit=/init noxsave clearcpuid=popcnt,smap nofsgsbase";
/// A run past this is killed and the benchmark fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

fn fail(msg: impl std::fmt::Display) -> ! {
    common::fail("run_cmd", msg)
}

fn hearth_bin() -> PathBuf {
    let path = std::env::var_os("HEARTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hearth")));
    if !path.is_file() {
        fail(format!("no hearth binary at {}", path.display()));
    }
    path
}

fn kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("KERNEL") {
        return PathBuf::from(k);
    }
    let dir = common::root().join("target/linux-guest");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(e));
    let ok = Command::new("bash")
        .arg(common::root().join("resources/linux/get-kernel.sh"))
        .arg(&dir)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fail("resources/linux/get-kernel.sh failed");
    }
    dir.join("vmlinux")
}

/// A program from the environment variable `var`, else found on PATH (or in `extra`).
fn tool(var: &str, name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            fail(format!("{var}={} is not a file", p.display()));
        }
        return Some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What one run measured.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    wall_ms: f64,
    /// hearth only.
    first_kvm_run_ms: f64,
    /// CPU time of the thread (hearth) or process (virtiofsd) serving virtio-fs.
    fs_cpu_ms: f64,
}

/// Waits for `child`, killing it past RUN_TIMEOUT; returns its status and rusage.
fn wait(child: &mut Child, what: &str) -> (std::process::ExitStatus, libc::rusage) {
    let start = Instant::now();
    let pid = i32::try_from(child.id()).unwrap_or_else(|e| fail(e));
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; the pointers live through the call.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own child, the out-pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            return (std::process::ExitStatus::from_raw(status), usage);
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            fail(format!("{what} ran past {RUN_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn rusage_ms(u: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Samples the CPU time (ns) of `pid`'s thread named `thread` until `done`.
fn sample_thread(pid: u32, thread: &'static str, done: Arc<AtomicBool>) -> Arc<AtomicU64> {
    let ns = Arc::new(AtomicU64::new(0));
    let out = ns.clone();
    std::thread::spawn(move || {
        let mut task: Option<PathBuf> = None;
        while !done.load(Ordering::SeqCst) {
            if task.is_none() {
                task = std::fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| {
                        std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == thread)
                    });
            }
            if let Some(t) = &task {
                if let Some(v) = std::fs::read_to_string(t.join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                {
                    out.store(v, Ordering::SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    ns
}

fn run_hearth(hearth: &Path, kernel: &Path, command: &str) -> Sample {
    let start = Instant::now();
    let mut child = Command::new(hearth)
        .args(["run", "-v", "--memory", MEMORY, "--kernel"])
        .arg(kernel)
        .args(["--", "sh", "-c", command])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start hearth: {e}")));
    let done = Arc::new(AtomicBool::new(false));
    let cpu = sample_thread(child.id(), "event-loop", done.clone());
    let mut stderr = child.stderr.take().expect("piped stderr");
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (status, _) = wait(&mut child, "hearth");
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    done.store(true, Ordering::SeqCst);
    let log = err_t.join().unwrap_or_default();
    if !status.success() {
        fail(format!("hearth ended with {status}:\n{log}"));
    }
    // "hearth: [   12.345 ms] first KVM_RUN"
    let first_kvm_run_ms = log
        .lines()
        .find(|l| l.ends_with("first KVM_RUN"))
        .and_then(|l| {
            l.split('[')
                .nth(1)?
                .split(" ms]")
                .next()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| fail(format!("no 'first KVM_RUN' line from hearth -v:\n{log}")));
    Sample {
        wall_ms,
        first_kvm_run_ms,
        fs_cpu_ms: cpu.load(Ordering::SeqCst) as f64 / 1e6,
    }
}

/// The busybox initramfs QEMU boots: /init mounts the host's root as hearth-init does and
/// runs `command`, then prints its status.
fn qemu_initramfs(dir: &Path, command: &str) -> PathBuf {
    let busybox = std::fs::read("/bin/busybox")
        .unwrap_or_else(|e| fail(format!("/bin/busybox (busybox-static): {e}")));
    let init = format!(
        r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t devtmpfs dev /dev
$B mount -t virtiofs -o ro hearth-root /lower || $B echo BENCH-NO-ROOT
$B mount -t tmpfs -o mode=0755 tmpfs /upper
$B mkdir -p /upper/data /upper/work
$B mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot
$B mount -t proc proc /newroot/proc
$B mount -t sysfs sys /newroot/sys
$B mount -t devtmpfs dev /newroot/dev
$B mount -t tmpfs -o mode=0755 tmpfs /newroot/run
$B chroot /newroot /bin/sh -c '{command}' </dev/null
$B echo "BENCH-STATUS $?"
$B sync
$B reboot -f
"#
    );
    let mut cpio = hearth::run_cmd::initramfs::Cpio::new();
    for d in ["bin", "dev", "lower", "upper", "newroot"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, init.as_bytes());
    let path = dir.join(format!("qemu-{}.cpio", command.len()));
    std::fs::write(&path, cpio.finish()).unwrap_or_else(|e| fail(e));
    path
}

struct Qemu {
    qemu: PathBuf,
    virtiofsd: PathBuf,
}

fn run_qemu(q: &Qemu, kernel: &Path, initrd: &Path, dir: &Path) -> Sample {
    let socket = dir.join("virtiofsd.sock");
    let console = dir.join("qemu-console.log");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&console);
    let start = Instant::now();
    let mut fsd = Command::new(&q.virtiofsd)
        .arg("--socket-path")
        .arg(&socket)
        .args(["--shared-dir", "/", "--readonly", "--sandbox", "none"])
        // As hearth: the host's mount points are plain directories to the guest (announced
        // submounts refuse the overlay's proc/sys/dev mounts with EREMOTE).
        .arg("--no-announce-submounts")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start virtiofsd: {e}")));
    while !socket.exists() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = fsd.kill();
            fail("virtiofsd did not create its socket");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut qemu = Command::new(&q.qemu)
        // acpi=off: the kernel has no ACPI, and only then does microvm put its
        // virtio-mmio devices on the command line.
        .args([
            "-M",
            "microvm,x-option-roms=off,rtc=off,acpi=off",
            "-accel",
            "kvm",
        ])
        // This KVM cannot take the host CPU model's MSRs (-cpu host aborts); like
        // hearth: ARAT on, the PV features that lead to vmcall off. qemu64 is an AMD
        // model: without XSAVEERPTR Linux runs `fnclex` on every FPU restore (the
        // FXSAVE-leak workaround), which this KVM's emulator cannot.
        .args([
            "-cpu",
            "qemu64,+arat,+xsaveerptr,kvm-pv-ipi=off,kvm-pv-sched-yield=off,kvm-pv-unhalt=off",
        ])
        .args(["-m", MEMORY, "-smp", "1", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", CMDLINE])
        .arg("-chardev")
        .arg(format!("socket,id=fs0,path={}", socket.display()))
        .args([
            "-device",
            "vhost-user-fs-device,chardev=fs0,tag=hearth-root",
        ])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={MEMORY},share=on"),
        ])
        .args(["-numa", "node,memdev=mem"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start QEMU: {e}")));
    // microvm has no i8042 for `reboot=k` (and a triple fault stops this KVM with an
    // emulation failure, which leaves QEMU paused): the run ends at the status line on
    // the console, and QEMU is stopped there.
    let status = loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.starts_with("BENCH-STATUS ")) {
            break line.trim().to_string();
        }
        if let Ok(Some(s)) = qemu.try_wait() {
            let _ = fsd.kill();
            fail(format!(
                "QEMU ended with {s} before the command finished:\n{log}"
            ));
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = qemu.kill();
            let _ = fsd.kill();
            fail(format!("QEMU ran past {RUN_TIMEOUT:?}:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let _ = qemu.kill();
    let _ = qemu.wait();
    // virtiofsd leaves once QEMU's connection is gone.
    let (_, fsd_usage) = wait(&mut fsd, "virtiofsd");
    if status != "BENCH-STATUS 0" {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        fail(format!(
            "the command failed under QEMU ({status}):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Sample {
        wall_ms,
        first_kvm_run_ms: f64::NAN,
        fs_cpu_ms: rusage_ms(&fsd_usage),
    }
}

fn med(v: impl Iterator<Item = f64>) -> f64 {
    common::median(&mut v.collect::<Vec<_>>())
}

fn main() {
    let rounds = usize::try_from(common::env_num("RUN_BENCH_RUNS", 3))
        .unwrap_or(1)
        .max(1);
    let hearth = hearth_bin();
    let kernel = kernel();
    let dir = common::root().join("target/run-bench");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(e));
    let file = dir.join("100MiB.bin");
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some((FILE_MIB << 20) as u64) {
        let data: Vec<u8> = (0..FILE_MIB << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        std::fs::write(&file, data).unwrap_or_else(|e| fail(e));
    }
    let read = format!("cat {} > /dev/null", file.display());
    let workloads = [("true", "true".to_string()), ("read 100 MiB", read)];

    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let qemu =
        match (
            tool("QEMU_BIN", "qemu-system-x86_64", &[]),
            tool("VIRTIOFSD_BIN", "virtiofsd", &[home.join(".cargo/bin")]),
        ) {
            (Some(qemu), Some(virtiofsd)) => Some(Qemu { qemu, virtiofsd }),
            (q, v) => {
                println!(
                "QEMU and virtiofsd are needed for the comparison ({}{}): measuring hearth alone. \
                 apt-get install qemu-system-x86; cargo install virtiofsd (needs libseccomp-dev, \
                 libcap-ng-dev); or set QEMU_BIN / VIRTIOFSD_BIN",
                if q.is_none() { "no qemu-system-x86_64 " } else { "" },
                if v.is_none() { "no virtiofsd" } else { "" },
            );
                None
            }
        };
    let initrds: Vec<PathBuf> = workloads
        .iter()
        .map(|(_, c)| qemu_initramfs(&dir, c))
        .collect();

    println!(
        "run_cmd bench: {rounds} rounds, kernel {}, memory {MEMORY}; load before: {}",
        kernel.display(),
        common::loadavg()
    );
    // [workload][vmm] -> samples; vmm 0 hearth, 1 QEMU.
    let mut samples = vec![vec![Vec::new(), Vec::new()]; workloads.len()];
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for w in 0..workloads.len() {
        jobs.push((w, 0));
        if qemu.is_some() {
            jobs.push((w, 1));
        }
    }
    for round in 0..rounds {
        let n = jobs.len();
        for k in 0..n {
            let (w, vmm) = jobs[(k + round) % n];
            let s = match (vmm, &qemu) {
                (0, _) => run_hearth(&hearth, &kernel, &workloads[w].1),
                (_, Some(q)) => run_qemu(q, &kernel, &initrds[w], &dir),
                _ => unreachable!("QEMU jobs exist only with QEMU"),
            };
            println!(
                "round {round}: {:5} {:13} wall {:8.0} ms, fs CPU {:7.1} ms{}",
                ["hearth", "QEMU"][vmm],
                workloads[w].0,
                s.wall_ms,
                s.fs_cpu_ms,
                if vmm == 0 {
                    format!(", first KVM_RUN {:.1} ms", s.first_kvm_run_ms)
                } else {
                    String::new()
                }
            );
            samples[w][vmm].push(s);
        }
        // Each round takes many minutes here: the medians so far after every one.
        summary(&workloads, &samples, round + 1);
    }
}

/// Prints the medians of the rounds so far. `samples[workload][vmm]`, vmm 0 hearth, 1 QEMU.
fn summary(workloads: &[(&str, String)], samples: &[Vec<Vec<Sample>>], rounds: usize) {
    println!("load now: {}", common::loadavg());
    println!(
        "medians of {rounds} round(s)    {:>12} {:>12} {:>8}",
        "hearth", "QEMU+vfsd", "ratio"
    );
    for (w, (name, _)) in workloads.iter().enumerate() {
        let h = med(samples[w][0].iter().map(|s| s.wall_ms));
        let q = med(samples[w][1].iter().map(|s| s.wall_ms));
        let ratios = med(samples[w][0]
            .iter()
            .zip(&samples[w][1])
            .map(|(h, q)| h.wall_ms / q.wall_ms));
        println!("wall, {name:20} {h:>9.0} ms {q:>9.0} ms {ratios:>7.2}x");
    }
    println!(
        "hearth: first KVM_RUN {:.1} ms after main (median of {} runs)",
        med(samples
            .iter()
            .flat_map(|w| w[0].iter().map(|s| s.first_kvm_run_ms))),
        rounds * workloads.len()
    );
    for (vmm, who) in [(0, "hearth event-loop thread"), (1, "virtiofsd process")] {
        if samples[1][vmm].is_empty() {
            continue;
        }
        let per_mib = med(samples[1][vmm]
            .iter()
            .zip(&samples[0][vmm])
            .map(|(r, t)| (r.fs_cpu_ms - t.fs_cpu_ms) / FILE_MIB as f64));
        println!(
            "{who}: {per_mib:.2} ms of CPU per MiB read ({:.0} ms for `true`, {:.0} ms with the read)",
            med(samples[0][vmm].iter().map(|s| s.fs_cpu_ms)),
            med(samples[1][vmm].iter().map(|s| s.fs_cpu_ms)),
        );
    }
    println!();
}
