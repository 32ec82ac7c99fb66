//! Diff snapshots and periodic checkpoints of a 1 GiB guest that dirties 8 MiB steadily,
//! hearth next to Firecracker where it has the same operation. Run by hand: `cargo
//! bench --bench checkpoint` (CHECKPOINT_BENCH_RUNS rounds of each part, default 5;
//! CHECKPOINT_BENCH_SECONDS, the throughput window, default 20; FIRECRACKER_BIN as in
//! the boot benchmark).
//!
//! The test guest (1 vCPU, 1 GiB) runs `mem.dirty=64:2048:...`: round after round it
//! writes one word in each of the 2048 pages (8 MiB) at 64 MiB and prints the round
//! number, so after any whole round exactly those pages (and a few of the guest's own)
//! are dirty, and rounds per second is the work it gets done.
//!
//! 1. Diff snapshot: a full snapshot (pause, create Full, resume), at least one whole
//!    round, then pause, create Diff, resume, the same three Firecracker API requests
//!    for both VMMs (hearth answers them; Firecracker has `track_dirty_pages`). Reported:
//!    the time the VM stood paused, from sending the pause to the resume's answer, and
//!    the diff's memory file (hearth: its `diff-*` layer; Firecracker: its sparse memory
//!    file, bytes allocated and apparent size). hearth also logs the pause it measured
//!    itself (`-v`), from the vCPUs stopped to the snapshot durable.
//! 2. Periodic checkpoints: the same guest under hearth with `--checkpoint-every 1s`
//!    and without, alternating; the work lost is 1 - (rounds per second with) / (without),
//!    over a window starting 5 s after the first round (the first checkpoint, a full
//!    one, is past by then). The pauses hearth logs for each diff checkpoint are
//!    reported too: there the VM runs on while the files are synced. Firecracker has no
//!    periodic checkpoints.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::vmm::{self, parse_debug_ms, Watched};
use common::{build_guest, env_num, fail, median, root};

const WHAT: &str = "checkpoint";
const MEM_MIB: u64 = 1024;
/// 2048 pages (8 MiB) at 64 MiB, rewritten round after round.
const GUEST_CMDLINE: &str = "mem.dirty=64:2048:1000000000 delay=0";
const DIRTY_MIB: u64 = 8;
const TARGET_PAUSE_MS: f64 = 10.0;
const TARGET_FILE_MIB: f64 = 10.0;
const TARGET_LOSS: f64 = 0.05;
/// The throughput window starts this long after the first round.
const WARMUP: Duration = Duration::from_secs(5);

fn hearth() -> &'static str {
    env!("CARGO_BIN_EXE_hearth")
}

fn api(sock: &Path, method: &str, path: &str, body: &str) {
    vmm::fc_api(WHAT, sock, method, path, body);
}

fn round_of(line: &str) -> Option<u64> {
    line.trim_end_matches('\r')
        .strip_prefix("mem dirty round=")?
        .parse()
        .ok()
}

/// What one diff snapshot cost.
struct Diff {
    /// Pause request sent → resume answered (ms).
    paused: f64,
    /// The memory file of the diff: bytes allocated, apparent size.
    allocated: u64,
    apparent: u64,
    /// The pause the VMM logged itself (ms), if it logs one.
    own: Option<f64>,
}

/// Full snapshot, one whole round, then a diff (`paths`: state and memory file of each);
/// returns how long the VM stood paused for the diff (ms) and how long the create took.
fn full_then_diff(
    vm: &mut Watched,
    sock: &Path,
    paths: [(PathBuf, PathBuf); 2],
) -> (f64, Duration) {
    vm.wait_for("mem dirty round=1");
    let [(full_state, full_mem), (diff_state, diff_mem)] = paths;
    let create = |kind: &str, state: &Path, mem: &Path| {
        api(
            sock,
            "PUT",
            "/snapshot/create",
            &format!(
                r#"{{"snapshot_type":"{kind}","snapshot_path":"{}","mem_file_path":"{}"}}"#,
                state.display(),
                mem.display()
            ),
        );
    };
    api(sock, "PATCH", "/vm", r#"{"state":"Paused"}"#);
    create("Full", &full_state, &full_mem);
    api(sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#);
    // A whole round after the resume: lines read before it were printed before the
    // pause (the reader drains the pipe meanwhile), so the first round that ends after
    // it may have begun before; the one after that ran entirely after the snapshot.
    let resumed = Instant::now();
    let first = loop {
        let (t, r) = vm.wait_map("a round after the full snapshot", round_of);
        if t > resumed {
            break r;
        }
    };
    vm.wait_map("a whole round after the full snapshot", |l| {
        round_of(l).filter(|r| *r > first)
    });
    let t = Instant::now();
    api(sock, "PATCH", "/vm", r#"{"state":"Paused"}"#);
    create("Diff", &diff_state, &diff_mem);
    let created = t.elapsed();
    api(sock, "PATCH", "/vm", r#"{"state":"Resumed"}"#);
    let paused = t.elapsed().as_secs_f64() * 1e3;
    // The guest runs on after it.
    vm.wait_map("a round after the diff", round_of);
    (paused, created)
}

fn hearth_diff(guest: &Path, dir: &Path) -> Diff {
    let sock = dir.join("hearth-api.sock");
    let _ = std::fs::remove_file(&sock);
    let mut vm = Watched::spawn(
        WHAT,
        Command::new(hearth())
            .args(["run", "-v", "--kernel"])
            .arg(guest)
            .args([
                "--memory",
                &format!("{MEM_MIB}M"),
                "--cmdline",
                GUEST_CMDLINE,
                "--api-sock",
            ])
            .arg(&sock),
    );
    let (full, diff) = (dir.join("hearth-full"), dir.join("hearth-diff"));
    for d in [&full, &diff] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir(d).unwrap_or_else(|e| fail(WHAT, e));
    }
    let (paused, _) = full_then_diff(
        &mut vm,
        &sock,
        [
            (full.join("state"), full.join("memory")),
            (diff.join("state"), diff.join("memory")),
        ],
    );
    // hearth's own line: "diff snapshot of 1024 MiB (N pages) written to DIR in T, VM paused P".
    let own = vm
        .seen
        .iter()
        .filter(|l| l.contains("diff snapshot of"))
        .find_map(|l| parse_debug_ms(l.rsplit("VM paused ").next()?));
    vm.kill();
    let layer = std::fs::read_dir(&diff)
        .unwrap_or_else(|e| fail(WHAT, e))
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("diff-"))
        .unwrap_or_else(|| fail(WHAT, "the hearth diff snapshot has no diff- layer"));
    let m = layer.metadata().unwrap_or_else(|e| fail(WHAT, e));
    Diff {
        paused,
        allocated: m.blocks() * 512,
        apparent: m.len(),
        own,
    }
}

fn firecracker_diff(fc: &Path, guest: &Path, dir: &Path) -> Diff {
    let sock = dir.join("fc-api.sock");
    let _ = std::fs::remove_file(&sock);
    let mut vm = Watched::spawn(WHAT, Command::new(fc).arg("--api-sock").arg(&sock));
    vmm::wait_for_socket(WHAT, &sock);
    api(
        &sock,
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path":"{}","boot_args":"{GUEST_CMDLINE}"}}"#,
            guest.display()
        ),
    );
    api(
        &sock,
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":{MEM_MIB},"track_dirty_pages":true}}"#),
    );
    api(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    );
    let files = [
        (dir.join("fc-full.state"), dir.join("fc-full.mem")),
        (dir.join("fc-diff.state"), dir.join("fc-diff.mem")),
    ];
    for (s, m) in &files {
        let _ = std::fs::remove_file(s);
        let _ = std::fs::remove_file(m);
    }
    let diff_mem = files[1].1.clone();
    let (paused, _) = full_then_diff(&mut vm, &sock, files);
    vm.kill();
    let _ = std::fs::remove_file(&sock);
    let m = std::fs::metadata(&diff_mem).unwrap_or_else(|e| fail(WHAT, e));
    Diff {
        paused,
        allocated: m.blocks() * 512,
        apparent: m.len(),
        own: None,
    }
}

/// One throughput run: rounds per second over the window, and the pauses hearth logged
/// for its diff checkpoints (ms).
fn throughput(guest: &Path, dir: &Path, checkpoints: bool, window: Duration) -> (f64, Vec<f64>) {
    let ckpt = dir.join("ckpt");
    let _ = std::fs::remove_dir_all(&ckpt);
    let mut cmd = Command::new(hearth());
    cmd.args(["run", "-v", "--kernel"]).arg(guest).args([
        "--memory",
        &format!("{MEM_MIB}M"),
        "--cmdline",
        GUEST_CMDLINE,
    ]);
    if checkpoints {
        cmd.args(["--checkpoint-every", "1s", "--checkpoint-dir"])
            .arg(&ckpt);
    }
    let mut vm = Watched::spawn(WHAT, &mut cmd);
    let (t0, _) = vm.wait_map("round 1", |l| round_of(l).filter(|r| *r == 1));
    let (from, to) = (t0 + WARMUP, t0 + WARMUP + window);
    let mut first: Option<(Instant, u64)> = None;
    let mut last: Option<(Instant, u64)> = None;
    while Instant::now() < to + Duration::from_secs(1) {
        let Some((t, line)) = vm.next_line(Duration::from_millis(100)) else {
            continue;
        };
        if let Some(r) = round_of(&line) {
            if t >= from && t <= to {
                first.get_or_insert((t, r));
                last = Some((t, r));
            }
        }
    }
    // "checkpoint N (diff, P pages) in DIR: VM paused T"
    let pauses: Vec<f64> = vm
        .seen
        .iter()
        .filter(|l| l.contains("checkpoint ") && l.contains("(diff,"))
        .filter_map(|l| parse_debug_ms(l.rsplit("VM paused ").next()?))
        .collect();
    let full_done = vm.seen.iter().any(|l| l.contains("checkpoint 1 (full"));
    vm.kill();
    let _ = std::fs::remove_dir_all(&ckpt);
    if checkpoints && !full_done {
        fail(
            WHAT,
            "hearth logged no first (full) checkpoint: is -v logging it?",
        );
    }
    match (first, last) {
        (Some((t1, r1)), Some((t2, r2))) if r2 > r1 => (
            (r2 - r1) as f64 / t2.duration_since(t1).as_secs_f64(),
            pauses,
        ),
        _ => fail(WHAT, "the guest printed no rounds in the window"),
    }
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let mut s = v.to_vec();
    let min = s.iter().copied().fold(f64::INFINITY, f64::min);
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let med = median(&mut s);
    format!("{med:.2} ({min:.2}, {max:.2})")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn main() {
    let runs = usize::try_from(env_num("CHECKPOINT_BENCH_RUNS", 5).max(1)).unwrap_or(5);
    let window = Duration::from_secs(env_num("CHECKPOINT_BENCH_SECONDS", 20).max(2));
    let guest = build_guest(WHAT);
    let fc = common::firecracker_bin(WHAT);
    let dir = root().join("target/bench-checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(WHAT, e));
    println!("checkpoint benchmark: diff snapshots and periodic checkpoints of a 1 GiB guest dirtying {DIRTY_MIB} MiB");
    println!("{}", vmm::when_and_load());
    println!(
        "guest: {} (1 vCPU, {MEM_MIB} MiB, \"{GUEST_CMDLINE}\"); {runs} rounds, alternating",
        guest.display()
    );

    // 1. Diff snapshots.
    let (mut h, mut f) = (vec![], vec![]);
    for round in 0..runs {
        let hearth_first = round % 2 == 0 || fc.is_none();
        if hearth_first {
            h.push(hearth_diff(&guest, &dir));
        }
        if let Some(fc) = &fc {
            f.push(firecracker_diff(fc, &guest, &dir));
        }
        if !hearth_first {
            h.push(hearth_diff(&guest, &dir));
        }
    }
    println!();
    println!("diff snapshot after {DIRTY_MIB} MiB dirtied (pause, create Diff, resume over the API; median (min, max)); {}", vmm::when_and_load());
    println!(
        "{:<12} {:>28} {:>28} {:>24} {:>16}",
        "VMM", "VM paused, ms", "own pause log, ms", "file allocated, MiB", "apparent, MiB"
    );
    for (name, v) in [("hearth", &h), ("firecracker", &f)] {
        if v.is_empty() {
            continue;
        }
        let own: Vec<f64> = v.iter().filter_map(|d| d.own).collect();
        println!(
            "{name:<12} {:>28} {:>28} {:>24} {:>16}",
            stats(&v.iter().map(|d| d.paused).collect::<Vec<_>>()),
            stats(&own),
            stats(&v.iter().map(|d| mib(d.allocated)).collect::<Vec<_>>()),
            stats(&v.iter().map(|d| mib(d.apparent)).collect::<Vec<_>>()),
        );
    }
    let mut hp: Vec<f64> = h.iter().map(|d| d.paused).collect();
    let mut hf: Vec<f64> = h.iter().map(|d| mib(d.allocated)).collect();
    let (p, s) = (median(&mut hp), median(&mut hf));
    println!(
        "hearth diff: paused {p:.2} ms (target <= {TARGET_PAUSE_MS} ms: {}), file {s:.2} MiB (target <= {TARGET_FILE_MIB} MiB: {})",
        if p <= TARGET_PAUSE_MS { "MET" } else { "MISSED" },
        if s <= TARGET_FILE_MIB { "MET" } else { "MISSED" }
    );

    // 2. Periodic checkpoints.
    let (mut on, mut off, mut losses, mut pauses) = (vec![], vec![], vec![], vec![]);
    for round in 0..runs {
        let run = |c: bool| throughput(&guest, &dir, c, window);
        let ((a, p), (b, _)) = if round % 2 == 0 {
            let a = run(true);
            (a, run(false))
        } else {
            let b = run(false);
            (run(true), b)
        };
        on.push(a);
        off.push(b);
        losses.push(1.0 - a / b);
        pauses.extend(p);
    }
    println!();
    println!(
        "periodic checkpoints every 1 s, {}-s window (rounds/s, median (min, max)); {}",
        window.as_secs(),
        vmm::when_and_load()
    );
    println!("checkpoints off: {}", stats(&off));
    println!("checkpoints on:  {}", stats(&on));
    println!(
        "diff checkpoint pauses, ms ({} of them): {}",
        pauses.len(),
        stats(&pauses)
    );
    let worst = losses.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let m = median(&mut losses);
    println!(
        "work lost to checkpoints, median of {} pairs: {:.1} % (target <= {:.0} %: {}), worst {:.1} %",
        losses.len(),
        m * 100.0,
        TARGET_LOSS * 100.0,
        if m <= TARGET_LOSS { "MET" } else { "MISSED" },
        worst * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
