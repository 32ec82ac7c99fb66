//! virtio-fs at the FUSE protocol level, without Linux: the test guest sends FUSE_INIT,
//! LOOKUP, GETATTR, OPEN, READ, RELEASE, OPENDIR, READDIR, RELEASEDIR requests to a
//! `--share` and reports what came back (resources/test-guest/virtio_fs.c).

mod common;

use common::*;

#[test]
fn the_test_guest_reads_a_share_over_fuse() {
    let dir = scratch();
    let share = dir.as_path().join("share");
    let outside = dir.as_path().join("outside");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let data: Vec<u8> = (0..10_000u32)
        .map(|i| (i * 31 % 251).to_le_bytes()[0])
        .collect();
    std::fs::write(share.join("data.bin"), &data).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), share.join("link")).unwrap();
    let spec = format!("{},tag=t", share.display());
    let run = boot_test_guest(
        "fs.read=data.bin fs.ls fs.open=link fs.read=missing",
        &["--share", &spec],
    );
    let minor: u32 = run.expect_line("fs init major=7 minor=").parse().unwrap();
    assert!(minor >= 31, "{run:#?}");
    assert_eq!(
        run.expect_line("fs read data.bin "),
        format!("size=10000 bytes=10000 fnv={:016x}", fnv1a(&data)),
        "{run:#?}"
    );
    let ls = run.expect_line("fs ls ");
    let names: Vec<&str> = ls.split(' ').collect();
    for want in ["data.bin", "sub", "link"] {
        assert!(names.contains(&want), "{ls}\n{run:#?}");
    }
    // ".." of the root is the root; a symlink is never opened on the host (ELOOP); a
    // missing name is ENOENT.
    assert_eq!(run.expect_line("fs dotdot "), "error=0 node=1");
    assert_eq!(run.expect_line("fs open link "), "error=-40");
    assert_eq!(run.expect_line("fs read error="), "-2");
    assert_eq!(run.code(), 0, "{run:#?}");
}

#[test]
fn a_missing_or_bad_share_is_a_one_line_error() {
    let dir = scratch();
    let missing = dir.as_path().join("missing");
    let run = hearth([
        "run",
        "--kernel",
        test_guest().to_str().unwrap(),
        "--share",
        missing.to_str().unwrap(),
    ]);
    assert_ne!(run.code(), 0, "{run:#?}");
    assert!(run.stderr.contains("not a directory"), "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    let run = hearth(["run", "--kernel", "x", "--share", "/tmp,bogus"]);
    assert_ne!(run.code(), 0);
    assert!(run.stderr.contains("unknown option 'bogus'"), "{run:#?}");
}

#[test]
fn a_vm_with_shares_refuses_snapshots_and_runs_on() {
    use std::time::Duration;
    let dir = scratch();
    let share = dir.as_path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("f"), b"x").unwrap();
    let sock = dir.as_path().join("api.sock");
    let serial = dir.as_path().join("serial.txt");
    let args = [
        "run".to_string(),
        "--kernel".into(),
        test_guest().display().to_string(),
        "--cmdline".into(),
        "delay=200000 count=1000 fs.read=f".into(),
        "--api-sock".into(),
        sock.display().to_string(),
        "--serial-out".into(),
        serial.display().to_string(),
        "--share".into(),
        share.display().to_string(),
    ];
    let mut child = spawn_hearth(&args);
    wait_for_text(&serial, "count: 2\n", Duration::from_secs(60));
    let snap = dir.as_path().join("snap");
    let r = ctl(&sock, &["snapshot", "--dir", snap.to_str().unwrap()]);
    assert_ne!(r.code(), 0, "{r:#?}");
    assert!(
        r.stderr
            .contains("cannot snapshot a VM with shared directories"),
        "{r:#?}"
    );
    assert!(!snap.join("state").exists());
    // The refusal did not pause it: it counts on.
    let text = std::fs::read_to_string(&serial).unwrap();
    let before = text.matches("count: ").count();
    wait_for_text(
        &serial,
        &format!("count: {}\n", before + 2),
        Duration::from_secs(60),
    );
    let _ = child.kill();
    let _ = child.wait();
}
