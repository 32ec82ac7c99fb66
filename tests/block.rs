//! virtio-blk end to end: the test guest drives the disks as Linux's virtio-blk driver
//! does (modern virtio-mmio, split queue) and the test checks the host files.

// Test patterns and syscall plumbing narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use common::*;

const SECTOR: usize = 512;

fn patterned(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9) ^ seed) as u8)
        .collect()
}

fn disk_arg(path: &std::path::Path, extra: &str) -> String {
    format!("path={}{extra}", path.display())
}

#[test]
fn reads_match_the_host_file() {
    let dir = scratch();
    let path = dir.as_path().join("disk.img");
    let data = patterned(1 << 20, 0x5a);
    std::fs::write(&path, &data).unwrap();
    let run = boot_test_guest(
        "blk.info blk.read=0:0:8 blk.read=0:1000:128 blk.read=0:2047:1",
        &["--disk", &disk_arg(&path, ",id=first-disk")],
    );
    assert_eq!(
        run.expect_line("blk 0: "),
        "capacity=2048 ro=0 id=first-disk"
    );
    for (start, count) in [(0usize, 8usize), (1000, 128), (2047, 1)] {
        let bytes = &data[start * SECTOR..(start + count) * SECTOR];
        assert_eq!(
            run.expect_line(&format!("blk 0 read {start} {count} ")),
            format!("fnv={:016x}", fnv1a(bytes)),
            "{run:#?}"
        );
    }
    assert_eq!(run.code(), 0);
}

#[test]
fn flushed_writes_land_at_the_right_sectors_only() {
    let dir = scratch();
    let path = dir.as_path().join("disk.img");
    let data = patterned(256 * SECTOR, 3);
    std::fs::write(&path, &data).unwrap();
    let run = boot_test_guest(
        "blk.write=0:10:3:171 blk.flush=0 blk.read=0:10:3",
        &["--disk", &disk_arg(&path, "")],
    );
    assert_eq!(run.expect_line("blk 0 write 10 3 "), "status=0", "{run:#?}");
    assert_eq!(run.expect_line("blk 0 flush "), "status=0");
    let after = std::fs::read(&path).unwrap();
    let mut expected = data.clone();
    expected[10 * SECTOR..13 * SECTOR].fill(171);
    assert_eq!(after.len(), expected.len(), "file size unchanged");
    assert!(after == expected, "exactly sectors 10..13 changed");
    assert_eq!(
        run.expect_line("blk 0 read 10 3 "),
        format!("fnv={:016x}", fnv1a(&expected[10 * SECTOR..13 * SECTOR]))
    );
}

#[test]
fn read_only_disk_refuses_writes_and_stays_unchanged() {
    let dir = scratch();
    let path = dir.as_path().join("ro.img");
    let data = patterned(64 * SECTOR, 9);
    std::fs::write(&path, &data).unwrap();
    let run = boot_test_guest(
        "blk.info blk.write=0:0:4:85 blk.read=0:0:4",
        &["--disk", &disk_arg(&path, ",readonly=on")],
    );
    assert!(
        run.expect_line("blk 0: ").starts_with("capacity=64 ro=1 "),
        "{run:#?}"
    );
    assert_eq!(run.expect_line("blk 0 write 0 4 "), "status=1", "IOERR");
    assert_eq!(
        run.expect_line("blk 0 read 0 4 "),
        format!("fnv={:016x}", fnv1a(&data[..4 * SECTOR]))
    );
    assert!(std::fs::read(&path).unwrap() == data, "file unchanged");
}

#[test]
fn two_disks_are_distinct() {
    let dir = scratch();
    let a = dir.as_path().join("a.img");
    let b = dir.as_path().join("b.img");
    let da = patterned(32 * SECTOR, 1);
    let db = patterned(96 * SECTOR, 2);
    std::fs::write(&a, &da).unwrap();
    std::fs::write(&b, &db).unwrap();
    let run = boot_test_guest(
        "blk.info blk.read=0:0:1 blk.read=1:0:1 blk.write=1:95:1:7",
        &[
            "--disk",
            &disk_arg(&a, ",id=alpha"),
            "--disk",
            &disk_arg(&b, ",id=beta"),
        ],
    );
    assert_eq!(
        run.expect_line("blk 0: "),
        "capacity=32 ro=0 id=alpha",
        "{run:#?}"
    );
    assert_eq!(run.expect_line("blk 1: "), "capacity=96 ro=0 id=beta");
    assert_eq!(
        run.expect_line("blk 0 read 0 1 "),
        format!("fnv={:016x}", fnv1a(&da[..SECTOR]))
    );
    assert_eq!(
        run.expect_line("blk 1 read 0 1 "),
        format!("fnv={:016x}", fnv1a(&db[..SECTOR]))
    );
    assert_eq!(run.expect_line("blk 1 write 95 1 "), "status=0");
    assert!(
        std::fs::read(&a).unwrap() == da,
        "the other disk is untouched"
    );
    assert!(std::fs::read(&b).unwrap()[95 * SECTOR..]
        .iter()
        .all(|x| *x == 7));
}

#[test]
fn requests_beyond_the_capacity_fail_without_touching_the_file() {
    let dir = scratch();
    let path = dir.as_path().join("small.img");
    // A partial last sector is not exposed.
    let data = patterned(16 * SECTOR + 100, 4);
    std::fs::write(&path, &data).unwrap();
    let run = boot_test_guest(
        "blk.info blk.read=0:15:2 blk.write=0:16:1:1 blk.write=0:14:4:2",
        &["--disk", &disk_arg(&path, "")],
    );
    assert!(
        run.expect_line("blk 0: ").starts_with("capacity=16 "),
        "{run:#?}"
    );
    assert_eq!(run.expect_line("blk 0 read 15 2 "), "status=1");
    assert_eq!(run.expect_line("blk 0 write 16 1 "), "status=1");
    assert_eq!(run.expect_line("blk 0 write 14 4 "), "status=1");
    assert!(std::fs::read(&path).unwrap() == data, "file unchanged");
    assert_eq!(run.code(), 0);
}

#[test]
fn disk_config_from_file_and_bad_disks() {
    let dir = scratch();
    let path = dir.as_path().join("disk.img");
    std::fs::write(&path, patterned(8 * SECTOR, 5)).unwrap();
    let config = dir.as_path().join("vm.json");
    let json = serde_json::json!({
        "kernel": test_guest(),
        "cmdline": "blk.info",
        "disks": [{ "path": path, "read_only": true, "id": "from-json" }],
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let run = hearth(["run", "--config", config.to_str().unwrap()]);
    assert_eq!(
        run.expect_line("blk 0: "),
        "capacity=8 ro=1 id=from-json",
        "{run:#?}"
    );

    let guest = test_guest().to_str().unwrap().to_string();
    for (disk, expect) in [
        (
            "path=/nonexistent/disk.img".to_string(),
            "/nonexistent/disk.img",
        ),
        (format!("path={}", dir.as_path().display()), "directory"),
        // A running executable cannot be opened for writing, even by root.
        (format!("path={}", hearth_bin()), "readonly=on"),
    ] {
        let run = hearth(["run", "--kernel", &guest, "--disk", &disk]);
        assert_eq!(
            run.code(),
            hearth::exit_status::HEARTH_ERROR,
            "{disk}: {run:#?}"
        );
        assert!(run.stdout.is_empty(), "nothing started: {run:#?}");
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:#?}");
        assert!(run.stderr.contains(expect), "{disk}: {}", run.stderr);
    }
}
