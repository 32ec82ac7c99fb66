//! Start-up, tear-down and footprint of hearth next to Firecracker: the zero-cost guest
//! (resources/reset-guest, resets at its first instruction) gives the VMM's own cost, the
//! test guest the cost of a guest that does a little work.
//! Run by hand: `cargo bench --bench boot`.
//!
//! Each VMM boots `resources/test-guest` (1 vCPU, 128 MiB) with `end=reset`: the guest
//! prints its banner, writes the boot marker (123 to MMIO 0xc0000000), and resets the
//! machine through the i8042, which ends both VMMs. Runs alternate between the VMMs
//! (the order rotates every round) so that drift on the host hits all of them alike.
//!
//! For every run it records:
//! - wall: spawn → the child reaped by `wait4`;
//! - first KVM_RUN, in ms after the VMM's `main`: hearth's `-v` line; for Firecracker, the
//!   timestamp of its vCPU thread's "VcpuEvent::Resume" log line (which comes just before
//!   the vCPU's first KVM_RUN) minus that of its "Running Firecracker" line;
//! - boot marker as the VMM reports it: hearth's line (ms after its `main`); Firecracker's
//!   `Guest-boot-time` (ms after it began building the VM, a few hundred µs after `main`);
//! - boot marker seen: spawn → the guest's `boot-marker` console line read from the
//!   child's stdout (the guest prints it just before the MMIO write), the same yardstick
//!   for every VMM;
//! - marker → exit: from that line to the child reaped (the guest's reset, the VMM's
//!   teardown and KVM's destruction of the VM, which the kernel does before the parent
//!   is told of the exit);
//! - ru_maxrss from `wait4`; it is not quite the child's own peak: exec() folds the
//!   high-water mark of the mm the child was spawned from (this benchmark's, at that
//!   moment) into it, so it cannot read below that (this process's peak is printed);
//! - peak RSS: the child's VmHWM, read from /proc/<pid>/status while it is stopped at
//!   its exit under ptrace (PTRACE_SEIZE with PTRACE_O_TRACEEXIT, main thread only),
//!   before its memory is released. That stop delays the exit a little, so VmHWM comes
//!   from a separate pass of runs (BOOT_BENCH_RSS_RUNS, default 5 per VMM) after the
//!   timed ones, which are not traced.
//!
//! hearth also runs with `--no-seccomp` beside its default (filters on), alternating with
//! the rest, to show what the filters cost; BOOT_BENCH_SECCOMP=0 leaves those runs out.
//!
//! Environment: BOOT_BENCH_RUNS (default 20), BOOT_BENCH_RSS_RUNS (default 5),
//! HEARTH_BIN (default: the hearth binary cargo builds for this bench,
//! target/<triple>/release/hearth), FIRECRACKER_BIN (default: ../shared/peers/firecracker-v1.16.1
//! next to the repository; the peer is skipped when it is absent).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// The guest command line both VMMs get.
const GUEST_CMDLINE: &str = "end=reset";
const MEMORY_MIB: u64 = 128;
/// A run that takes longer than this is killed and the benchmark fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Targets (from the project plan).
const TARGET_WALL_RATIO: f64 = 0.5;
const TARGET_RSS_MIB: f64 = 3.0;

fn fail(msg: impl std::fmt::Display) -> ! {
    common::fail("boot", msg)
}

fn build_guest() -> PathBuf {
    common::build_guest("boot")
}

fn hearth_bin() -> PathBuf {
    let path = std::env::var_os("HEARTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hearth")));
    if !path.is_file() {
        fail(format!(
            "no hearth binary at {} (build it with `cargo build --release --bin hearth` or set HEARTH_BIN)",
            path.display()
        ));
    }
    path
}

fn firecracker_bin() -> Option<PathBuf> {
    common::firecracker_bin("boot")
}

/// Writes Firecracker's VM description next to the guest.
fn firecracker_config(guest: &Path) -> PathBuf {
    let Some(kernel) = guest.to_str() else {
        fail(format!("the guest path {} is not UTF-8", guest.display()));
    };
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "boot_args": GUEST_CMDLINE,
        },
        "drives": [],
        "network-interfaces": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": MEMORY_MIB },
    });
    let stem = guest
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("guest");
    let path = guest.with_file_name(format!("firecracker-{stem}.json"));
    if let Err(e) = std::fs::write(&path, config.to_string()) {
        fail(format!("cannot write {}: {e}", path.display()));
    }
    path
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hearth,
    Firecracker,
}

/// Which guest a variant boots.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guest {
    /// resources/reset-guest: resets at its first instruction, so the whole process is
    /// the VMM's own cost (start, VM set-up, reset, tear-down).
    Zero,
    /// resources/test-guest with `end=reset`: banner, boot marker, reset.
    Test,
}

/// One way of booting a guest.
struct Variant {
    name: &'static str,
    kind: Kind,
    guest: Guest,
    /// hearth with `--no-seccomp` (what the filters cost: BOOT_BENCH_SECCOMP=0 leaves
    /// these variants out).
    no_seccomp: bool,
    program: PathBuf,
    args: Vec<String>,
}

impl Variant {
    fn command_line(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            if a.contains(' ') {
                s.push_str(&format!(" \"{a}\""));
            } else {
                s.push(' ');
                s.push_str(a);
            }
        }
        s
    }
}

/// What one run measured, in milliseconds (RSS in KiB).
#[derive(Default, Clone)]
struct Sample {
    wall: f64,
    first_run: Option<f64>,
    marker_own: Option<f64>,
    marker_seen: Option<f64>,
    marker_to_exit: Option<f64>,
    hwm_kib: Option<f64>,
    maxrss_kib: f64,
}

/// Reads a pipe line by line, noting when each line arrived.
fn spawn_reader(pipe: impl Read + Send + 'static) -> JoinHandle<Vec<(Instant, String)>> {
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => lines.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf).trim_end().to_string(),
                )),
            }
        }
        lines
    })
}

/// How a traced child ended.
struct Waited {
    status: libc::c_int,
    usage: libc::rusage,
    /// VmHWM (KiB) when it stopped at its exit.
    hwm_kib: Option<f64>,
}

fn wait4_retry(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage), std::io::Error> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, writable, and live across the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// ptrace's request type, which differs between C libraries.
#[cfg(target_env = "gnu")]
type PtraceRequest = libc::c_uint;
#[cfg(not(target_env = "gnu"))]
type PtraceRequest = libc::c_int;

fn ptrace(request: PtraceRequest, pid: libc::pid_t, data: usize) -> Result<(), std::io::Error> {
    // SAFETY: the requests used here (SEIZE, CONT) take an integer `data`, no pointer.
    let r = unsafe { libc::ptrace(request, pid, std::ptr::null_mut::<libc::c_void>(), data) };
    if r == -1 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Waits for the child with `wait4` (which gives ru_maxrss). When `traced`, it first
/// attaches with PTRACE_SEIZE and reads the child's VmHWM when it stops at its exit.
fn wait_child(pid: libc::pid_t, traced: bool) -> Result<Waited, std::io::Error> {
    let mut hwm_kib = None;
    if traced {
        let options = libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL;
        if let Err(e) = ptrace(
            libc::PTRACE_SEIZE,
            pid,
            usize::try_from(options).unwrap_or(0),
        ) {
            // Not fatal: that run just has no VmHWM (n/a in the table).
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!("boot bench: cannot ptrace the VMM ({e}): no VmHWM"));
        }
    }
    loop {
        let (status, usage) = wait4_retry(pid)?;
        if !libc::WIFSTOPPED(status) {
            return Ok(Waited {
                status,
                usage,
                hwm_kib,
            });
        }
        // Only a traced child stops: at its exit, or for a signal to pass on.
        let mut deliver = 0;
        match status >> 16 {
            libc::PTRACE_EVENT_EXIT => hwm_kib = common::vm_hwm_kib(pid),
            0 => deliver = usize::try_from(libc::WSTOPSIG(status)).unwrap_or(0),
            _ => {}
        }
        ptrace(libc::PTRACE_CONT, pid, deliver)?;
    }
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status:#x}")
    }
}

/// "hearth: [   19.520 ms] guest boot marker: ..." → 19.520 when the text matches.
fn hearth_log_ms(line: &str, text: &str) -> Option<f64> {
    let rest = line.strip_prefix("hearth: [")?;
    let (ms, msg) = rest.split_once(" ms] ")?;
    if msg.starts_with(text) {
        ms.trim().parse().ok()
    } else {
        None
    }
}

/// Seconds of the day of a Firecracker log line ("2026-11-24T20:21:20.934423751 [...").
fn firecracker_log_secs(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let (_, time) = stamp.split_once('T')?;
    let mut parts = time.splitn(3, ':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// "... Guest-boot-time =  21456 us 21 ms, ..." → 21.456
fn firecracker_boot_time_ms(line: &str) -> Option<f64> {
    let (_, rest) = line.split_once("Guest-boot-time =")?;
    let us: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(us / 1000.0)
}

fn run_once(v: &Variant, traced: bool) -> Sample {
    let mut cmd = Command::new(&v.program);
    cmd.args(&v.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => fail(format!("cannot start {}: {e}", v.program.display())),
    };
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        fail("the child's pid does not fit a pid_t");
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        fail("the child's stdout and stderr pipes are missing");
    };
    let out_reader = spawn_reader(stdout);
    let err_reader = spawn_reader(stderr);

    // Kill a run that hangs rather than hang the benchmark.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(RUN_TIMEOUT) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: plain kill(2) on the child's pid. The waiter sends `done` right after
            // reaping the child, so the pid is still the child's unless the 30 s timeout
            // fires in that instant.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let waited = wait_child(pid, traced);
    let end = Instant::now();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let Waited {
        status,
        usage,
        hwm_kib,
    } = match waited {
        Ok(w) => w,
        Err(e) => fail(format!("waiting for {} (wait4/ptrace) failed: {e}", v.name)),
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();

    let show = |lines: &[(Instant, String)]| {
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        fail(format!(
            "{} ended with {} (after {:?}; limit {RUN_TIMEOUT:?})\n$ {}\n--- stdout\n{}\n--- stderr\n{}",
            v.name,
            describe_status(status),
            end - start,
            v.command_line(),
            show(&out),
            show(&err)
        ));
    }

    let ms = |t: Instant| t.duration_since(start).as_secs_f64() * 1000.0;
    let seen = out
        .iter()
        .find(|(_, l)| l == "boot-marker")
        .map(|(t, _)| *t);
    if seen.is_none() && v.guest == Guest::Test {
        fail(format!(
            "{}: the guest never printed its boot-marker line\n$ {}\n--- stdout\n{}\n--- stderr\n{}",
            v.name,
            v.command_line(),
            show(&out),
            show(&err)
        ));
    }
    let mut s = Sample {
        wall: ms(end),
        marker_seen: seen.map(ms),
        marker_to_exit: seen.map(|t| end.duration_since(t).as_secs_f64() * 1000.0),
        hwm_kib,
        maxrss_kib: usage.ru_maxrss as f64,
        ..Default::default()
    };
    match v.kind {
        Kind::Hearth => {
            for (_, l) in &err {
                s.first_run = s.first_run.or_else(|| hearth_log_ms(l, "first KVM_RUN"));
                s.marker_own = s
                    .marker_own
                    .or_else(|| hearth_log_ms(l, "guest boot marker"));
            }
        }
        Kind::Firecracker => {
            // Its log goes to stdout, interleaved with the guest's console.
            let all = out.iter().chain(err.iter()).map(|(_, l)| l.as_str());
            let mut main_at = None;
            let mut resume_at = None;
            for l in all {
                if main_at.is_none() && l.contains("Running Firecracker") {
                    main_at = firecracker_log_secs(l);
                }
                if resume_at.is_none() && l.contains("VcpuEvent::Resume") {
                    resume_at = firecracker_log_secs(l);
                }
                s.marker_own = s.marker_own.or_else(|| firecracker_boot_time_ms(l));
            }
            if let (Some(a), Some(b)) = (main_at, resume_at) {
                let mut d = b - a;
                if d < 0.0 {
                    d += 86400.0; // across midnight
                }
                s.first_run = Some(d * 1000.0);
            }
        }
    }
    s
}

/// Median, min and p90 (nearest rank) of the values present; None when there are none.
fn stats(values: impl Iterator<Item = Option<f64>>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = values.flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let p90 = v[(n * 9).div_ceil(10).clamp(1, n) - 1];
    Some((median, v[0], p90))
}

/// "2026-11-24T20:21:20Z" from the system clock.
fn utc_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn host_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = hearth::memory::host_memory_limit() as f64 / f64::from(1u32 << 30);
    format!(
        "{} (Linux {}), {cpus} CPUs ({cpu}), {mem_gib:.1} GiB RAM+swap",
        read_trimmed("/proc/sys/kernel/hostname"),
        read_trimmed("/proc/sys/kernel/osrelease"),
    )
}

fn kvm_line() -> String {
    match hearth::kvm::open() {
        Ok(kvm) => match hearth::kvm::calibrate(&kvm) {
            Ok(c) => format!(
                "guest kernel mode {} ({} dec/jnz iterations in {:.3} ms)",
                c.execution,
                c.iterations,
                c.elapsed.as_secs_f64() * 1000.0
            ),
            Err(e) => format!("usable, execution mode unknown ({e})"),
        },
        Err(e) => fail(e),
    }
}

fn command_line() -> String {
    let mut env = String::new();
    for var in [
        "BOOT_BENCH_RUNS",
        "BOOT_BENCH_RSS_RUNS",
        "HEARTH_BIN",
        "FIRECRACKER_BIN",
    ] {
        if let Ok(v) = std::env::var(var) {
            env.push_str(&format!("{var}={v} "));
        }
    }
    let argv: Vec<String> = std::env::args().collect();
    format!("{env}cargo bench --bench boot  [argv: {}]", argv.join(" "))
}

/// A positive count from the environment, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => fail(format!("{name}={v} is not a positive number")),
        },
        Err(_) => default,
    }
}

/// Pairwise ratios hearth / Firecracker of one metric, round by round, for one guest.
fn pair_ratios(
    variants: &[Variant],
    samples: &[Vec<Sample>],
    guest: Guest,
    get: fn(&Sample) -> Option<f64>,
) -> Vec<f64> {
    let find = |kind| {
        variants
            .iter()
            .position(|v| v.kind == kind && v.guest == guest && !v.no_seccomp)
    };
    let (Some(h), Some(f)) = (find(Kind::Hearth), find(Kind::Firecracker)) else {
        return Vec::new();
    };
    samples[h]
        .iter()
        .zip(&samples[f])
        .filter_map(|(a, b)| Some(get(a)? / get(b)?))
        .collect()
}

fn main() {
    let runs = env_count("BOOT_BENCH_RUNS", 21);
    let rss_runs = env_count("BOOT_BENCH_RSS_RUNS", 5);
    let zero_guest = common::build_tiny_guest("boot", "reset-guest.elf");
    let test_guest = build_guest();
    let hearth = hearth_bin();
    let firecracker = firecracker_bin();

    let hearth_args = |guest: &Path| -> Vec<String> {
        [
            "run",
            "--kernel",
            &guest.display().to_string(),
            "--cmdline",
            GUEST_CMDLINE,
            "--cpus",
            "1",
            "--memory",
            &format!("{MEMORY_MIB}M"),
            "-v",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let seccomp_variants = std::env::var("BOOT_BENCH_SECCOMP").map_or(true, |v| v != "0");
    let mut variants = Vec::new();
    for (guest, path, hearth_name, off_name, fc_name) in [
        (
            Guest::Zero,
            &zero_guest,
            "hearth, zero-cost guest",
            "hearth --no-seccomp, zero-cost",
            "firecracker, zero-cost guest",
        ),
        (
            Guest::Test,
            &test_guest,
            "hearth, test guest",
            "hearth --no-seccomp, test guest",
            "firecracker, test guest",
        ),
    ] {
        variants.push(Variant {
            name: hearth_name,
            kind: Kind::Hearth,
            guest,
            no_seccomp: false,
            program: hearth.clone(),
            args: hearth_args(path),
        });
        if seccomp_variants {
            let mut args = hearth_args(path);
            args.push("--no-seccomp".into());
            variants.push(Variant {
                name: off_name,
                kind: Kind::Hearth,
                guest,
                no_seccomp: true,
                program: hearth.clone(),
                args,
            });
        }
        if let Some(fc) = &firecracker {
            let config = firecracker_config(path);
            variants.push(Variant {
                name: fc_name,
                kind: Kind::Firecracker,
                guest,
                no_seccomp: false,
                program: fc.clone(),
                args: vec![
                    "--no-api".into(),
                    "--config-file".into(),
                    config.display().to_string(),
                    "--boot-timer".into(),
                ],
            });
        }
    }

    println!("boot benchmark: whole-process start, VM set-up, guest, reset and tear-down, hearth next to Firecracker");
    println!("host:     {}", host_line());
    println!("KVM:      {}", kvm_line());
    println!("date:     {}", utc_now());
    println!(
        "load:     {} (/proc/loadavg before the runs)",
        common::loadavg()
    );
    println!("command:  {}", command_line());
    println!(
        "guests:   zero-cost {} (resets at its first instruction); test {} (banner, boot marker, reset); \
         1 vCPU, {MEMORY_MIB} MiB, cmdline \"{GUEST_CMDLINE}\"",
        zero_guest.display(),
        test_guest.display()
    );
    for v in &variants {
        println!("  {:<30} $ {}", v.name, v.command_line());
    }
    println!(
        "runs:     {runs} timed per variant after one warm-up each, then {rss_runs} traced for VmHWM; \
         alternating (the order rotates every round)"
    );

    for v in &variants {
        run_once(v, false);
    }
    // Timed runs, then the traced runs that read VmHWM; both alternate between the VMMs.
    let alternate = |rounds: usize, traced: bool| {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::with_capacity(rounds); variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                let i = (round + k) % variants.len();
                samples[i].push(run_once(&variants[i], traced));
            }
        }
        samples
    };
    let timed = alternate(runs, false);
    let load_after = common::loadavg();
    let traced = alternate(rss_runs, true);

    // (label, from the traced pass, value)
    type Metric = (&'static str, bool, fn(&Sample) -> Option<f64>);
    let metrics: [Metric; 7] = [
        ("wall, spawn to exit (ms)", false, |s| Some(s.wall)),
        ("first KVM_RUN, after main (ms)", false, |s| s.first_run),
        ("boot marker, VMM's own (ms)", false, |s| s.marker_own),
        ("boot marker seen, from spawn (ms)", false, |s| {
            s.marker_seen
        }),
        ("boot marker seen to exit (ms)", false, |s| s.marker_to_exit),
        ("peak RSS, VmHWM at exit (MiB)", true, |s| {
            s.hwm_kib.map(|k| k / 1024.0)
        }),
        ("ru_maxrss from wait4 (MiB)", false, |s| {
            Some(s.maxrss_kib / 1024.0)
        }),
    ];
    println!();
    println!(
        "{:<34} {:<30} {:>8} {:>8} {:>8} {:>8}",
        "metric", "VMM, guest", "median", "min", "p90", "max"
    );
    let mut medians = vec![[None; 7]; variants.len()];
    for (m, (label, from_traced, get)) in metrics.iter().enumerate() {
        let mut first = true;
        for (i, v) in variants.iter().enumerate() {
            let pass = if *from_traced { &traced } else { &timed };
            let Some((med, min, p90)) = stats(pass[i].iter().map(get)) else {
                continue;
            };
            let max = pass[i]
                .iter()
                .filter_map(get)
                .fold(f64::NEG_INFINITY, f64::max);
            medians[i][m] = Some(med);
            let l = if first { *label } else { "" };
            first = false;
            println!(
                "{l:<34} {:<30} {med:>8.2} {min:>8.2} {p90:>8.2} {max:>8.2}",
                v.name
            );
        }
    }
    println!();
    println!("Notes: Firecracker's own boot marker counts from when it starts building the VM;");
    println!("its first KVM_RUN is the timestamp of its vCPU's Resume log line. VmHWM comes from");
    println!(
        "{rss_runs} traced runs per variant. ru_maxrss (timed runs) cannot read below the RSS"
    );
    println!(
        "peak this process had when it spawned the child (it ends at {}).",
        common::vm_hwm_kib(std::process::id())
            .map(|k| format!("{:.2} MiB", k / 1024.0))
            .unwrap_or_else(|| "unknown".into())
    );
    println!("load:     {load_after} (/proc/loadavg after the timed runs)");

    let verdict = |ok: bool| if ok { "MET" } else { "MISSED" };
    let find = |kind, guest| {
        variants
            .iter()
            .position(|v| v.kind == kind && v.guest == guest && !v.no_seccomp)
    };
    let med = |i: Option<usize>, m: usize| i.and_then(|i| medians[i][m]).unwrap_or(f64::NAN);
    println!();
    let (hz, ht) = (
        find(Kind::Hearth, Guest::Zero),
        find(Kind::Hearth, Guest::Test),
    );
    let (fz, ft) = (
        find(Kind::Firecracker, Guest::Zero),
        find(Kind::Firecracker, Guest::Test),
    );
    println!(
        "VMM's own cost (zero-cost guest, whole process, median): hearth {:.2} ms, Firecracker {:.2} ms",
        med(hz, 0),
        med(fz, 0)
    );
    println!(
        "the test guest's own cost (test minus zero-cost, medians): {:.2} ms under hearth, {:.2} ms under Firecracker",
        med(ht, 0) - med(hz, 0),
        med(ft, 0) - med(fz, 0)
    );
    for (guest, label) in [
        (Guest::Zero, "zero-cost guest"),
        (Guest::Test, "test guest"),
    ] {
        let mut r = pair_ratios(&variants, &timed, guest, |s| Some(s.wall));
        if r.is_empty() {
            continue;
        }
        let (min, max) = r
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let m = common::median(&mut r);
        let target = if guest == Guest::Zero {
            format!(
                " (target <= {TARGET_WALL_RATIO}x: {})",
                verdict(m <= TARGET_WALL_RATIO)
            )
        } else {
            String::new()
        };
        println!(
            "{label}: hearth/Firecracker wall, {} pairs: median {m:.2}x{target}, best {min:.2}x, worst {max:.2}x",
            r.len()
        );
    }
    for (i, v) in variants.iter().enumerate() {
        let (Some(w), Some(worst)) = (
            medians[i][0],
            timed[i].iter().map(|s| s.wall).reduce(f64::max),
        ) else {
            continue;
        };
        println!(
            "spread {:<30} median {w:.2} ms, worst {worst:.2} ms ({:.2}x the median)",
            v.name,
            worst / w
        );
    }
    // seccomp on versus off, run by run (the two are neighbours in every round).
    for (guest, label) in [
        (Guest::Zero, "zero-cost guest"),
        (Guest::Test, "test guest"),
    ] {
        let on = find(Kind::Hearth, guest);
        let off = variants
            .iter()
            .position(|v| v.guest == guest && v.no_seccomp);
        let (Some(on), Some(off)) = (on, off) else {
            continue;
        };
        let mut r: Vec<f64> = timed[on]
            .iter()
            .zip(&timed[off])
            .map(|(a, b)| a.wall / b.wall)
            .collect();
        let m = common::median(&mut r);
        println!(
            "{label}: seccomp on/off wall, {} pairs: median {m:.3}x; medians {:.2} / {:.2} ms; \
             first KVM_RUN {:.2} / {:.2} ms; peak RSS {:.3} / {:.3} MiB",
            r.len(),
            med(Some(on), 0),
            med(Some(off), 0),
            med(Some(on), 1),
            med(Some(off), 1),
            med(Some(on), 5),
            med(Some(off), 5),
        );
    }
    let first_run = med(hz, 1);
    println!(
        "hearth spawn -> first KVM_RUN (zero-cost guest, its own log): median {first_run:.2} ms (target < 3 ms: {})",
        verdict(first_run < 3.0)
    );
    let rss = med(hz, 5);
    println!(
        "hearth peak RSS {rss:.2} MiB, Firecracker {:.2} MiB (target <= {TARGET_RSS_MIB} MiB: {})",
        med(fz, 5),
        verdict(rss <= TARGET_RSS_MIB)
    );
}
