//! Bad input gets a one-line error, a non-zero exit and no guest output.

mod common;

use common::*;

fn assert_rejected(args: &[&str], expect: &str) {
    let run = hearth(args);
    assert_ne!(run.code(), 0, "{args:?} must fail: {run:#?}");
    assert!(
        run.stdout.is_empty(),
        "nothing started for {args:?}: {run:#?}"
    );
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(
        run.stderr.contains(expect),
        "{args:?}: expected {expect:?} in stderr, got: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    // clap adds a usage hint under its own errors.
    if !first.starts_with("error: invalid value") {
        assert_eq!(
            run.stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line: {first}"
        );
    }
}

/// An ELF64 whose only segment must load at 64 MiB.
fn elf_loading_at_64m(path: &std::path::Path) {
    std::fs::write(path, elf_bytes()).unwrap();
}

fn elf_bytes() -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2; // 64-bit
    f[5] = 1; // little endian
    f[6] = 1;
    f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    f[20..24].copy_from_slice(&1u32.to_le_bytes());
    f[24..32].copy_from_slice(&0x400_0000u64.to_le_bytes()); // entry
    f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = &mut f[64..120];
    ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[8..16].copy_from_slice(&0x800u64.to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&0x400_0000u64.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&0x400_0000u64.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&0x800u64.to_le_bytes()); // filesz
    ph[40..48].copy_from_slice(&0x800u64.to_le_bytes()); // memsz
    f
}

#[test]
fn bad_inputs_are_refused_with_one_line() {
    let dir = scratch();
    let d = dir.as_path();
    let guest = test_guest().to_str().unwrap().to_string();
    let not_kernel = d.join("notes.txt");
    std::fs::write(&not_kernel, "just some text, not a kernel\n").unwrap();
    let big = d.join("big.elf");
    elf_loading_at_64m(&big);
    let bad_json = d.join("bad.json");
    std::fs::write(&bad_json, "{\"kernel\": 3").unwrap();

    assert_rejected(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "cannot read kernel /nonexistent/vmlinux",
    );
    assert_rejected(
        &["run", "--kernel", d.to_str().unwrap()],
        "it is a directory",
    );
    assert_rejected(
        &["run", "--kernel", not_kernel.to_str().unwrap()],
        "is not a kernel image: expected an ELF vmlinux or a bzImage",
    );
    assert_rejected(
        &["run", "--kernel", &guest, "--initrd", "/nonexistent/initrd"],
        "cannot read initrd /nonexistent/initrd",
    );
    assert_rejected(
        &["run", "--kernel", big.to_str().unwrap(), "--memory", "32M"],
        "guest's 32 MiB of memory may be too small",
    );
    assert_rejected(
        &["run", "--kernel", &guest, "--memory", "1M"],
        "too small; give at least 2M",
    );
    assert_rejected(
        &["run", "--kernel", &guest, "--memory", "64T"],
        "more than this host has",
    );
    assert_rejected(
        &["run", "--kernel", &guest, "--cpus", "0"],
        "--cpus must be at least 1",
    );
    assert_rejected(
        &["run", "--kernel", &guest, "--cpus", "1000"],
        "--cpus 1000 is more than hearth supports: at most 254 vCPUs",
    );
    assert_rejected(
        &["run", "--kernel", &guest, "--memory", "lots"],
        "cannot parse size 'lots'",
    );
    assert_rejected(&["run"], "no kernel given");
    assert_rejected(
        &["run", "--config", "/nonexistent.json"],
        "cannot read config file /nonexistent.json",
    );
    assert_rejected(
        &["run", "--config", bad_json.to_str().unwrap()],
        "is not valid",
    );
    assert_rejected(
        &["run", "--kernel", &guest, "--disk", "readonly=on"],
        "path=FILE is required",
    );
}

#[test]
fn pvh_requested_for_a_kernel_without_the_note() {
    let dir = scratch();
    let big = dir.as_path().join("big.elf");
    elf_loading_at_64m(&big);
    assert_rejected(
        &[
            "run",
            "--kernel",
            big.to_str().unwrap(),
            "--memory",
            "128M",
            "--boot-protocol",
            "pvh",
        ],
        "has no PVH entry note",
    );
}

/// User-space programs are not kernels: a PIE (ET_DYN) and a dynamically linked ET_EXEC
/// (a PT_INTERP header) are named as such, not blamed on the memory size.
#[test]
fn user_space_programs_are_not_kernels() {
    let dir = scratch();
    let pie = dir.as_path().join("pie");
    let mut f = elf_bytes();
    f[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
    std::fs::write(&pie, &f).unwrap();
    assert_rejected(
        &["run", "--kernel", pie.to_str().unwrap()],
        "is not a kernel: it is a position-independent user-space program",
    );
    let dynamic = dir.as_path().join("dynamic");
    let mut f = elf_bytes();
    f[64..68].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
    std::fs::write(&dynamic, &f).unwrap();
    assert_rejected(
        &["run", "--kernel", dynamic.to_str().unwrap()],
        "is not a kernel: it is a dynamically linked user-space program",
    );
}

#[test]
fn limits_are_named() {
    let info = hearth(["info"]);
    assert_eq!(info.code(), 0, "{info:#?}");
    assert!(
        info.stdout.contains("max vCPUs: ") && info.stdout.contains("hearth's own limit is 254"),
        "{info:#?}"
    );
    let guest = test_guest().to_str().unwrap().to_string();
    let long = format!("console=ttyS0 {}", "x".repeat(5000));
    assert_rejected(
        &["run", "--kernel", &guest, "--cmdline", &long],
        "the kernel command line is 5014 bytes; the limit is 4095 bytes",
    );
    // Under the limit alone, over it with the virtio device hearth appends.
    let near = format!("console=ttyS0 {}", "x".repeat(4070));
    assert_rejected(
        &["run", "--kernel", &guest, "--rng", "--cmdline", &near],
        "the kernel command line is 4084 bytes; the limit is 4095 bytes, including what hearth appends",
    );
}

#[test]
fn an_empty_disk_is_refused() {
    let dir = scratch();
    let guest = test_guest().to_str().unwrap().to_string();
    let disk = dir.as_path().join("empty.img");
    std::fs::write(&disk, b"").unwrap();
    assert_rejected(
        &[
            "run",
            "--kernel",
            &guest,
            "--disk",
            &format!("path={}", disk.display()),
        ],
        "is empty (0 bytes)",
    );
}

#[test]
fn restore_that_could_never_run_is_refused() {
    let dir = scratch();
    let run = hearth(["restore", "--dir", dir.as_path().to_str().unwrap()]);
    assert_eq!(run.code(), hearth::exit_status::HEARTH_ERROR, "{run:#?}");
    assert!(
        run.stderr.contains("pass --resume or --api-sock PATH"),
        "{run:#?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
}

#[test]
fn ctl_snapshot_dir_is_checked_first() {
    let dir = scratch();
    let file = dir.as_path().join("file");
    std::fs::write(&file, b"x").unwrap();
    // No VM is asked: the directory is checked before connecting.
    let sock = dir.as_path().join("no.sock");
    let run = ctl(&sock, &["snapshot", "--dir", file.to_str().unwrap()]);
    assert_eq!(run.code(), hearth::exit_status::HEARTH_ERROR, "{run:#?}");
    assert!(
        run.stderr
            .contains(&format!("{} exists and is not a directory", file.display())),
        "{run:#?}"
    );
    let deep = dir.as_path().join("a/b/c");
    let run = ctl(&sock, &["snapshot", "--dir", deep.to_str().unwrap()]);
    assert!(
        run.stderr.contains("its parent directory does not exist"),
        "{run:#?}"
    );
    assert!(!dir.as_path().join("a").exists(), "no parent created");
}

/// A config file may leave `kernel` to --kernel, and its relative paths are relative to
/// the file's folder, not to where hearth runs.
#[test]
fn config_files_without_kernel_and_with_relative_paths() {
    let dir = scratch();
    let d = dir.as_path();
    let cfg = d.join("vm.json");
    std::fs::write(
        &cfg,
        r#"{"cmdline": "console=ttyS0 exit=7", "serial_out": "console.log"}"#,
    )
    .unwrap();
    let run = hearth([
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--kernel",
        test_guest().to_str().unwrap(),
    ]);
    assert_eq!(run.code(), 7, "{run:#?}");
    let console = std::fs::read_to_string(d.join("console.log")).unwrap();
    assert!(
        console.contains("cmdline: console=ttyS0 exit=7"),
        "{console}"
    );

    std::fs::create_dir(d.join("images")).unwrap();
    std::fs::copy(test_guest(), d.join("images/guest.elf")).unwrap();
    std::fs::write(d.join("images/disk.img"), vec![0u8; 4096]).unwrap();
    std::fs::write(
        &cfg,
        r#"{"kernel": "images/guest.elf", "cmdline": "console=ttyS0 blk.info exit=5",
            "disks": [{"path": "images/disk.img", "read_only": true}]}"#,
    )
    .unwrap();
    // Run from another directory: "/" has neither images/ nor disk.img.
    let run = std::process::Command::new(hearth_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_bounded(run, std::time::Duration::from_secs(60), "relative config");
    assert_eq!(run.code(), 5, "{run:#?}");
    assert!(run.stdout.contains("capacity=8 ro=1"), "{run:#?}");
}

/// As Firecracker does: a disk whose size is not a whole number of sectors is used, with a
/// warning (even without -v) that the guest cannot see its last bytes.
#[test]
fn a_disk_with_a_partial_sector_is_warned_about() {
    let dir = scratch();
    let disk = dir.as_path().join("odd.img");
    std::fs::write(&disk, vec![0u8; 1000]).unwrap();
    let run = boot_test_guest(
        "console=ttyS0 blk.info",
        &["--disk", &format!("path={}", disk.display())],
    );
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("capacity=1 ro=0"), "{run:#?}");
    assert!(
        run.stderr
            .contains("is not a multiple of 512; the guest does not see the last 488 bytes"),
        "{run:#?}"
    );
}
