//! Restore with overrides: another tap, another vsock socket, another disk file of the
//! same size, and a clock that jumps forward by the real time that passed.

// Test patterns narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::net::{add_tap, frame, parse_mac, PacketSocket, ETHERTYPE};
use common::snap::*;
use common::*;

const T: Duration = Duration::from_secs(120);

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the test guest with `cmdline`, snapshots it once `count: 2` is out, kills it.
fn snapshot_of(d: &Path, cmdline: &str, extra: &[&str]) -> PathBuf {
    snapshot_once(d, "first", cmdline, extra, "count: 2\n", T).0
}

fn restore(snap: &Path, serial: &Path, extra: &[&str]) -> Run {
    restore_resumed(snap, serial, extra, T)
}

#[test]
fn restore_onto_another_disk_file() {
    let dir = scratch();
    let d = dir.as_path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 16 * 512]).unwrap();
    let snap = snapshot_of(
        d,
        "blk.write=0:0:1:11 count=8 delay=20000 blk.write=0:1:1:22 exit=0",
        &["--disk", &format!("path={}", disk.display())],
    );
    let copy = d.join("copy.img");
    std::fs::copy(&disk, &copy).unwrap();
    let serial = d.join("second.txt");
    let swap = format!("{}={}", disk.display(), copy.display());
    let run = restore(&snap, &serial, &["--disk-path", &swap]);
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(run.code(), 0, "{run:#?}\n{out}");
    let c = std::fs::read(&copy).unwrap();
    assert!(
        c[512..1024].iter().all(|b| *b == 22),
        "written to the new file"
    );
    assert!(c[..512].iter().all(|b| *b == 11));
    let o = std::fs::read(&disk).unwrap();
    assert!(
        o[512..1024].iter().all(|b| *b == 0),
        "the old file is untouched"
    );

    // Of another size: refused; naming a disk the snapshot lacks: refused.
    std::fs::write(&copy, vec![0u8; 17 * 512]).unwrap();
    let run = restore(&snap, &d.join("x.txt"), &["--disk-path", &swap]);
    assert_eq!(run.code(), hearth::exit_status::HEARTH_ERROR, "{run:#?}");
    assert!(run.stderr.contains("size changed"), "{run:#?}");
    let run = restore(&snap, &d.join("y.txt"), &["--disk-path", "/nope=/x"]);
    assert_eq!(run.code(), hearth::exit_status::HEARTH_ERROR, "{run:#?}");
    assert!(run.stderr.contains("has no disk at /nope"), "{run:#?}");
    let run = restore(&snap, &d.join("z.txt"), &["--disk-path", "nonsense"]);
    assert!(run.stderr.contains("expected OLD=NEW"), "{run:#?}");
}

#[test]
fn restore_onto_another_vsock_socket() {
    let dir = scratch();
    let d = dir.as_path();
    let sock = d.join("vm.sock");
    let snap = snapshot_of(
        d,
        "vsock.info count=12 delay=20000 vsock.echo=5000:64 vsock.send=6000:moved exit=6",
        &["--vsock", &format!("cid=3,socket={}", sock.display())],
    );
    let other = d.join("other.sock");
    let listener = UnixListener::bind(d.join("other.sock_6000")).unwrap();
    let host = {
        let other = other.clone();
        std::thread::spawn(move || -> Result<Vec<u8>, String> {
            let start = Instant::now();
            let mut s = loop {
                match UnixStream::connect(&other) {
                    Ok(s) => break s,
                    Err(e) if start.elapsed() > T => return Err(format!("connect: {e}")),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            s.set_read_timeout(Some(T)).unwrap();
            s.write_all(b"CONNECT 5000\n").map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if !line.starts_with("OK ") {
                return Err(format!("got {line:?}"));
            }
            s.write_all(&[7u8; 64]).map_err(|e| e.to_string())?;
            let mut back = vec![0u8; 64];
            r.read_exact(&mut back).map_err(|e| e.to_string())?;
            Ok(back)
        })
    };
    let serial = d.join("second.txt");
    let run = restore(&snap, &serial, &["--vsock-socket", other.to_str().unwrap()]);
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(run.code(), 6, "{run:#?}\n{out}");
    assert_eq!(host.join().unwrap().unwrap(), vec![7u8; 64], "{out}");
    assert!(out.contains("vsock send port=6000 ok"), "{out}");
    let (mut s, _) = listener.accept().unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "moved");
    assert!(
        UnixStream::connect(&sock).is_err(),
        "nobody listens on the old path"
    );
}

#[test]
fn restore_onto_another_tap() {
    if !common::net::can_run_net_tests("restore_onto_another_tap") {
        return;
    }
    let ns = common::net::Netns::new();
    add_tap(&ns, "tap1");
    let dir = scratch();
    let d = dir.as_path();
    let api = d.join("api.sock");
    let serial1 = d.join("first.txt");
    let mac = "06:00:ac:10:00:09";
    let net = format!("tap=tap0,mac={mac}");
    let first = ns
        .hearth(
            "count=10 delay=20000 net.tx=0:on-the-new-tap exit=5",
            &[
                "--net",
                &net,
                "--api-sock",
                api.to_str().unwrap(),
                "--serial-out",
                serial1.to_str().unwrap(),
            ],
        )
        .spawn()
        .unwrap();
    let first = Kill(first);
    wait_for_text(&serial1, "count: 2\n", T);
    let snap = d.join("snap");
    let r = ctl(&api, &["snapshot", "--dir", snap.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{r:#?}");
    drop(first);
    let sock1 = PacketSocket::open(&ns.name, "tap1", ETHERTYPE);
    let serial2 = d.join("second.txt");
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            hearth_bin(),
            "restore",
            "--resume",
        ])
        .arg("--dir")
        .arg(&snap)
        .arg("--serial-out")
        .arg(&serial2)
        .args(["--net-tap", "tap0=tap1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_bounded(child, T, "restore onto tap1");
    let out = std::fs::read_to_string(&serial2).unwrap_or_default();
    assert_eq!(run.code(), 5, "{run:#?}\n{out}");
    let got = sock1
        .recv(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no frame on tap1: {out}"));
    assert_eq!(got, frame([0xff; 6], parse_mac(mac), b"on-the-new-tap"));
    let run = restore(&snap, &d.join("x.txt"), &["--net-tap", "tap9=tap1"]);
    assert!(run.stderr.contains("uses tap tap9"), "{run:#?}");
}

/// `clock: ns=N wall=S` lines.
fn clock_lines(out: &str) -> Vec<(u64, u64)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("clock: ns="))
        .filter_map(|l| {
            let (ns, wall) = l.split_once(" wall=")?;
            Some((ns.parse().ok()?, wall.parse().ok()?))
        })
        .collect()
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn the_clock_keeps_or_jumps_forward_by_the_real_time_that_passed() {
    let dir = scratch();
    let d = dir.as_path();
    let snap = snapshot_of(d, "clock count=8 delay=20000 clock exit=0", &[]);
    const GAP: u64 = 6;
    std::thread::sleep(Duration::from_secs(GAP));
    for (choice, late) in [("keep", true), ("realtime", false)] {
        let serial = d.join(format!("{choice}.txt"));
        let run = restore(&snap, &serial, &["--clock", choice]);
        let host_now = now_s();
        let out = std::fs::read_to_string(&serial).unwrap_or_default();
        assert_eq!(run.code(), 0, "{run:#?}\n{out}");
        let c = clock_lines(&out);
        assert_eq!(c.len(), 1, "the clock line after the restore: {out}");
        let wall = c[0].1;
        if late {
            assert!(
                wall + GAP - 2 <= host_now,
                "keep: the guest's wall clock is late by the time saved ({wall} vs {host_now})"
            );
        } else {
            assert!(
                wall.abs_diff(host_now) <= 2,
                "realtime: the guest's wall clock is right ({wall} vs {host_now})"
            );
        }
    }
}
