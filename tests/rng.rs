//! virtio-rng end to end: the test guest reads the entropy device as Linux's virtio-rng
//! driver does and reports what it got.

mod common;

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
