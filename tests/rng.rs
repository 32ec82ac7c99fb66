//! virtio-rng end to end: the test guest reads the entropy device as Linux's virtio-rng
//! driver does and reports what it got.

mod common;

use std::time::Duration;

use common::*;

/// Parses `rng read <n> bytes distinct=<d> fnv=<16 hex>` into (n, d, fnv).
fn parse(line: &str) -> (u64, u64, String) {
    let rest = line.strip_prefix("rng read ").expect(line);
    let mut words = rest.split(' ');
    let n = words.next().and_then(|w| w.parse().ok()).expect(line);
    assert_eq!(words.next(), Some("bytes"), "{line}");
    let distinct = words
        .next()
        .and_then(|w| w.strip_prefix("distinct="))
        .and_then(|w| w.parse().ok())
        .expect(line);
    let fnv = words
        .next()
        .and_then(|w| w.strip_prefix("fnv="))
        .expect(line)
        .to_string();
    assert_eq!(fnv.len(), 16, "{line}");
    assert!(fnv.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
    (n, distinct, fnv)
}

#[test]
fn the_guest_reads_random_bytes() {
    let run = boot_test_guest("rng.read=256 rng.read=256 rng.read=100000", &["--rng"]);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("rng "))
        .collect();
    assert_eq!(lines.len(), 3, "{run:#?}");
    let (n1, d1, f1) = parse(lines[0]);
    let (n2, d2, f2) = parse(lines[1]);
    let (n3, d3, _) = parse(lines[2]);
    assert_eq!((n1, n2, n3), (256, 256, 100_000));
    // 256 uniform bytes show about 162 distinct values; constant or patterned data far
    // fewer.
    assert!(d1 > 100 && d2 > 100, "{run:#?}");
    assert_eq!(d3, 256);
    assert_ne!(f1, f2, "two reads differ");
    assert_eq!(run.code(), 0);
}

#[test]
fn without_the_device_the_guest_finds_none() {
    let run = boot_test_guest("rng.read=16", &[]);
    assert!(run.stdout.contains("rng no-such-device\n"), "{run:#?}");
    assert_eq!(run.code(), 0);
}

#[test]
fn the_device_sits_beside_disks() {
    let dir = scratch();
    let disk = dir.as_path().join("d.img");
    std::fs::write(&disk, vec![7u8; 4096]).unwrap();
    let run = boot_test_guest(
        "blk.read=0:0:8 rng.read=512",
        &["--rng", "--disk", &format!("path={}", disk.display())],
    );
    assert_eq!(
        run.expect_line("blk 0 read 0 8 "),
        format!("fnv={:016x}", fnv1a(&[7u8; 4096]))
    );
    let (n, distinct, _) = parse(&format!("rng read 512{}", run.expect_line("rng read 512")));
    assert_eq!(n, 512);
    assert!(distinct > 150, "{run:#?}");
    assert_eq!(run.code(), 0);
}

#[test]
fn a_snapshot_of_a_vm_with_an_entropy_device_is_refused_and_the_vm_runs_on() {
    let dir = scratch();
    let sock = dir.as_path().join("api.sock");
    let serial = dir.as_path().join("serial.txt");
    let child = spawn_hearth(&[
        "run",
        "--kernel",
        test_guest().to_str().unwrap(),
        "--cmdline",
        "rng.read=64 count=40 delay=20000 exit=5",
        "--rng",
        "--api-sock",
        sock.to_str().unwrap(),
        "--serial-out",
        serial.to_str().unwrap(),
    ]);
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut vm = Kill(child);
    wait_for_text(&serial, "count: 2\n", Duration::from_secs(60));
    let snap = dir.as_path().join("snap");
    let r = ctl(&sock, &["snapshot", "--dir", snap.to_str().unwrap()]);
    assert_ne!(r.code(), 0, "{r:#?}");
    assert!(
        r.stderr
            .contains("cannot snapshot a VM with a virtio-rng device"),
        "{r:#?}"
    );
    assert!(!snap.join("state").exists());
    // Not paused: it counts on to the end.
    let text = wait_for_text(&serial, "exit: 5", Duration::from_secs(60));
    assert!(text.contains("count: 40\n"));
    let status = vm.0.wait().unwrap();
    assert_eq!(status.code(), Some(5));
}
