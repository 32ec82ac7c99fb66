//! Rate limiters end to end: a guest moving more than a limit allows takes at least as
//! long as the limit says (lower bounds only: a busy machine can only make it slower),
//! a limit raised on a running VM lets it speed up, and a throttled queue does not make
//! the event loop spin.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::net::{frame, Netns};
use common::*;

const T: Duration = Duration::from_secs(90);
/// What "at least 3 s" is checked against: a little slack for timer rounding.
const THREE_SECONDS: Duration = Duration::from_millis(2900);

/// Runs `cmd` (serial output to `serial`), waits for the guest's boot marker, and
/// returns the run and the time from the marker to the end.
fn timed_after_boot(cmd: &mut Command, serial: &Path, meanwhile: impl FnOnce()) -> (Run, Duration) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    struct Kill(Option<std::process::Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut guard = Kill(Some(child));
    wait_for_text(serial, "boot-marker", T);
    let start = Instant::now();
    meanwhile();
    let run = wait_bounded(guard.0.take().unwrap(), T, "rate-limited hearth");
    (run, start.elapsed())
}

fn hearth_cmd(cmdline: &str, serial: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(hearth_bin());
    c.args(["run", "--kernel"])
        .arg(test_guest())
        .args(["--cmdline", cmdline, "--serial-out"])
        .arg(serial)
        .args(extra);
    c
}

fn disk(dir: &Path) -> String {
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
    format!("path={}", path.display())
}

#[test]
fn disk_bandwidth_and_ops_limits_slow_a_4_mib_read_to_3_s() {
    // 4 MiB in 64 KiB requests: the first MiB (16 requests) from the full bucket, the
    // other three at 1 MiB (16 requests) per second.
    for limit in ["bw=1M/1000", "ops=16/1000"] {
        let dir = scratch();
        let serial = dir.as_path().join("serial.txt");
        let spec = format!("{},{limit}", disk(dir.as_path()));
        let (run, took) = timed_after_boot(
            &mut hearth_cmd("blk.bench=0:4", &serial, &["--disk", &spec]),
            &serial,
            || {},
        );
        let out = std::fs::read_to_string(&serial).unwrap();
        assert_eq!(run.code(), 0, "{limit}: {run:#?}\n{out}");
        assert!(
            out.contains("blk 0 bench bytes=4194304 "),
            "{limit}: nothing may be dropped or failed: {out}"
        );
        assert!(took >= THREE_SECONDS, "{limit}: 4 MiB took only {took:?}");
    }
}

#[test]
fn rng_limit_slows_reads() {
    // 16 KiB in 4 KiB requests at 4 KiB per second, the first 4 KiB from the bucket.
    let dir = scratch();
    let serial = dir.as_path().join("serial.txt");
    let (run, took) = timed_after_boot(
        &mut hearth_cmd(
            "rng.read=16384",
            &serial,
            &["--rng-rate-limiter", "bw=4K/1000"],
        ),
        &serial,
        || {},
    );
    let out = std::fs::read_to_string(&serial).unwrap();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(out.contains("rng read 16384 bytes"), "{out}");
    assert!(took >= THREE_SECONDS, "16 KiB took only {took:?}");
}

#[test]
fn net_tx_and_rx_limits_slow_the_guest() {
    if !common::net::can_run_net_tests("net_tx_and_rx_limits_slow_the_guest") {
        return;
    }
    // TX: 60 frames of 1000 bytes at 15000 bytes per second, the first 15000 at once.
    let ns = Netns::new();
    let dir = scratch();
    let serial = dir.as_path().join("serial.txt");
    let net = format!("tap={},tx_bw=15000/1000", common::net::TAP);
    let serial_arg = serial.display().to_string();
    let (run, took) = timed_after_boot(
        &mut ns.hearth(
            "net.flood=0:60:1000",
            &["--net", &net, "--serial-out", &serial_arg],
        ),
        &serial,
        || {},
    );
    let out = std::fs::read_to_string(&serial).unwrap();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(out.contains("net 0 flood frames=60 bytes=60000"), "{out}");
    assert!(took >= THREE_SECONDS, "tx took only {took:?}");

    // RX: the host sends 40 frames of 1000 bytes, the guest may take 10 per second.
    let ns = Netns::new();
    let dir = scratch();
    let serial = dir.as_path().join("serial.txt");
    let serial_arg = serial.display().to_string();
    let net = format!("tap={},rx_ops=10/1000", common::net::TAP);
    let sock = ns.packet_socket();
    let (run, took) = timed_after_boot(
        &mut ns.hearth(
            "net.sink=0:40",
            &["--net", &net, "--serial-out", &serial_arg],
        ),
        &serial,
        || {
            for i in 0..40u8 {
                sock.send(&frame([0xff; 6], [0x0a, 0, 0, 0, 0, 1], &[i; 986]));
            }
        },
    );
    let out = std::fs::read_to_string(&serial).unwrap();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(out.contains("net 0 sink frames=40 "), "nothing lost: {out}");
    assert!(!out.contains("timeout"), "{out}");
    assert!(took >= THREE_SECONDS, "rx took only {took:?}");
}

/// CPU ticks (1/100 s) the thread named `name` of `pid` has used.
fn thread_ticks(pid: u32, name: &str) -> Option<u64> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        if comm.ends_with(&format!("({name}")) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
            return Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
        }
    }
    None
}

#[test]
fn a_throttled_queue_does_not_make_the_event_loop_spin() {
    // The guest keeps its disk queue full (4 MiB at 256 KiB/s: over 10 s) while the
    // limiter holds it back; the event loop should sleep on its timer meanwhile.
    let dir = scratch();
    let serial = dir.as_path().join("serial.txt");
    let spec = format!("{},bw=256K/1000", disk(dir.as_path()));
    let mut child = hearth_cmd("blk.bench=0:4", &serial, &["--disk", &spec])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_text(&serial, "boot-marker", T);
    let pid = child.id();
    let before = thread_ticks(pid, "event-loop").expect("an event-loop thread");
    std::thread::sleep(Duration::from_secs(3));
    let after = thread_ticks(pid, "event-loop").expect("an event-loop thread");
    let _ = child.kill();
    let _ = child.wait();
    // A spinning loop would use all of the 300 ticks; a sleeping one a few.
    assert!(
        after - before < 30,
        "the event loop used {} ticks of CPU in 3 s",
        after - before
    );
}

#[test]
fn raising_a_limit_on_a_running_vm_lets_the_guest_speed_up() {
    use hearth::rate_limit::RateLimitTarget;
    let dir = scratch();
    let serial = dir.as_path().join("serial.txt");
    let mut config = hearth::VmConfig::new(test_guest());
    config.cmdline = "blk.bench=0:4".into();
    config.serial_out = Some(serial.clone());
    // 4 MiB at 16 KiB/s would take over four minutes.
    config.disks =
        vec![hearth::config::parse_disk(&format!("{},bw=16K/1000", disk(dir.as_path()))).unwrap()];
    let mut running = hearth::Vm::try_from(config).unwrap().start().unwrap();
    wait_for_text(&serial, "boot-marker", T);
    std::thread::sleep(Duration::from_secs(1));
    let raised = hearth::config::RateLimiterConfig {
        bandwidth: "64M/1000".parse().ok(),
        ops: None,
    };
    running
        .set_rate_limiter(RateLimitTarget::Disk(0), raised)
        .unwrap();
    assert!(running
        .set_rate_limiter(RateLimitTarget::Rng, raised)
        .is_err());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(running.wait().map_err(|e| e.to_string()));
    });
    let reason = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "the guest did not finish within 60 s after the limit was raised:\n{}",
                std::fs::read_to_string(&serial).unwrap_or_default()
            )
        })
        .unwrap();
    assert_eq!(reason.exit_code(), 0, "{reason}");
    let out = std::fs::read_to_string(&serial).unwrap();
    assert!(out.contains("blk 0 bench bytes=4194304 "), "{out}");
}

#[test]
fn limits_survive_a_snapshot_taken_while_throttled() {
    let dir = scratch();
    let serial = dir.as_path().join("serial-1.txt");
    let mut config = hearth::VmConfig::new(test_guest());
    // 2 MiB at 256 KiB/s: about 7 s, snapshotted a second in.
    config.cmdline = "blk.bench=0:2".into();
    config.serial_out = Some(serial.clone());
    config.disks =
        vec![hearth::config::parse_disk(&format!("{},bw=256K/1000", disk(dir.as_path()))).unwrap()];
    let mut running = hearth::Vm::try_from(config).unwrap().start().unwrap();
    wait_for_text(&serial, "boot-marker", T);
    std::thread::sleep(Duration::from_secs(1));
    let snap = dir.as_path().join("snap");
    running.snapshot(&snap).unwrap();
    running.shutdown();

    // At most 1.25 MiB were read before the snapshot (the first 256 KiB and a second's
    // worth), so the rest takes at least 3 s more under the same limit, after restore.
    let serial = dir.as_path().join("serial-2.txt");
    let start = Instant::now();
    let run = hearth_with_timeout(
        [
            "restore",
            "--dir",
            snap.to_str().unwrap(),
            "--resume",
            "--serial-out",
            serial.to_str().unwrap(),
        ],
        T,
    );
    let took = start.elapsed();
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(run.code(), 0, "{run:#?}\n{out}");
    assert!(
        out.contains("blk 0 bench bytes=2097152 "),
        "the request held back at the snapshot was served after restore: {out}"
    );
    assert!(
        took >= THREE_SECONDS,
        "the restored VM read the rest in {took:?}"
    );
}
