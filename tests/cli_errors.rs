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
    std::fs::write(path, f).unwrap();
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
        &["run", "--kernel", &guest, "--cpus", "4000"],
        "is more than this host's KVM allows",
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
