//! Command mode: the initramfs, the run description and its parsing.

use super::*;

#[test]
fn description_fields() {
    let shares = [
        ShareConfig {
            path: "/srv/a".into(),
            tag: String::new(),
            read_only: false,
        },
        ShareConfig {
            path: "/srv/b".into(),
            tag: "bee".into(),
            read_only: true,
        },
    ];
    let d = describe(
        &["sh".into(), "-c".into(), "echo hi".into()],
        Path::new("/home/u"),
        [("A".into(), "1".into())].into_iter(),
        &shares,
        Some(&RootDisk {
            device: "/dev/vdb".into(),
            read_only: true,
        }),
    )
    .unwrap();
    let fields: Vec<&[u8]> = d.split(|&b| b == 0).collect();
    let want: Vec<&[u8]> = vec![
        b"cwd",
        b"/home/u",
        b"arg",
        b"sh",
        b"arg",
        b"-c",
        b"arg",
        b"echo hi",
        b"env",
        b"A=1",
        b"share",
        b"share0",
        b"/srv/a",
        b"rw",
        b"share",
        b"bee",
        b"/srv/b",
        b"ro",
        b"root",
        b"/dev/vdb",
        b"ro",
        b"",
    ];
    assert_eq!(fields, want);
    let bad = describe(
        &["a\0b".into()],
        Path::new("/"),
        std::iter::empty(),
        &[],
        None,
    );
    assert!(matches!(bad, Err(RunError::Nul(_))));
}

#[test]
fn disk_names_follow_virtio_blk() {
    for (i, name) in [
        (0, "vda"),
        (1, "vdb"),
        (25, "vdz"),
        (26, "vdaa"),
        (27, "vdab"),
        (701, "vdzz"),
        (702, "vdaaa"),
    ] {
        assert_eq!(virtio_blk_name(i), name);
    }
}

#[test]
fn the_initramfs_holds_a_static_init() {
    let archive = build_initramfs(b"cwd\0/\0");
    // hearth-init is an ELF executable.
    let at = archive
        .windows(4)
        .position(|w| w == b"\x7fELF")
        .expect("an ELF /init");
    assert!(at > 0);
    assert!(INIT.len() > 1000);
    assert_eq!(Outcome::TimedOut.exit_code(), 124);
    assert_eq!(
        Outcome::Failed {
            reason: String::new(),
            console: vec![]
        }
        .exit_code(),
        125
    );
    assert_eq!(Outcome::Exited(7).exit_code(), 7);
}
