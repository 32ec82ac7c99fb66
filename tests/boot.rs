//! The test guest boots through the real Linux boot protocol (64-bit entry and PVH) and
//! reports what it found; hearth ends as the guest asks.

// Test patterns and syscall plumbing narrow integers on purpose.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod common;

use common::*;

fn check_boot(protocol: &str, cpus: u32, memory_mib: u64) {
    let cmdline = format!("console=ttyS0 exit=42 marker={protocol}-{cpus}");
    let run = boot_test_guest(
        &cmdline,
        &[
            "--boot-protocol",
            protocol,
            "--cpus",
            &cpus.to_string(),
            "--memory",
            &format!("{memory_mib}M"),
            "--no-cmdline-workarounds",
        ],
    );
    let entry = if protocol == "pvh" { "pvh" } else { "linux64" };
    assert_eq!(
        run.expect_line("hearth-test-guest: boot="),
        entry,
        "{run:#?}"
    );
    assert_eq!(run.expect_line("cmdline: "), cmdline, "exact command line");
    let usable: u64 = run
        .expect_line("mem-usable: ")
        .trim_end_matches(" bytes")
        .parse()
        .expect("mem-usable is a number");
    assert_eq!(usable, expected_usable(memory_mib << 20));
    assert_eq!(run.expect_line("cpus: "), cpus.to_string());
    assert!(run.stdout.contains("boot-marker"));
    assert_eq!(run.code(), 42, "exit status is the guest's: {run:#?}");
}

#[test]
fn pvh_entry_one_cpu() {
    check_boot("pvh", 1, 128);
}

#[test]
fn pvh_entry_two_cpus() {
    check_boot("pvh", 2, 256);
}

#[test]
fn linux64_entry_one_cpu() {
    check_boot("linux", 1, 256);
}

#[test]
fn linux64_entry_two_cpus() {
    check_boot("linux", 2, 128);
}

#[test]
fn memory_above_the_mmio_gap() {
    let run = boot_test_guest("exit=0", &["--memory", "4G", "--boot-protocol", "linux"]);
    let e820: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("e820: "))
        .collect();
    assert_eq!(
        e820,
        [
            "e820: 1 0x0 0x9fc00",
            "e820: 1 0x100000 0xbff00000",
            "e820: 1 0x100000000 0x40000000"
        ],
        "{run:#?}"
    );
    assert_eq!(
        run.expect_line("mem-usable: "),
        format!("{} bytes", expected_usable(4 << 30))
    );
    assert_eq!(run.code(), 0);
}

#[test]
fn initrd_reaches_the_guest_intact() {
    let dir = scratch();
    let path = dir.as_path().join("initrd.img");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    for protocol in ["pvh", "linux"] {
        let run = boot_test_guest(
            "exit=0",
            &[
                "--initrd",
                path.to_str().unwrap(),
                "--boot-protocol",
                protocol,
            ],
        );
        let line = run.expect_line("initrd: ");
        assert!(
            line.ends_with(&format!(" {} fnv={:016x}", data.len(), fnv1a(&data))),
            "{protocol}: {line}"
        );
        assert_eq!(run.code(), 0);
    }
}

#[test]
fn emulator_workarounds_follow_the_execution_mode() {
    let emulated = boot_test_guest("exit=0", &["--execution", "emulated"]);
    assert_eq!(
        emulated.expect_line("cmdline: "),
        "exit=0 noxsave clearcpuid=popcnt,smap"
    );
    let native = boot_test_guest("exit=0", &["--execution", "native"]);
    assert_eq!(native.expect_line("cmdline: "), "exit=0");
    let kept = boot_test_guest("exit=0 noxsave", &["--execution", "emulated"]);
    assert_eq!(
        kept.expect_line("cmdline: "),
        "exit=0 noxsave clearcpuid=popcnt,smap",
        "what is already there is not added twice"
    );
}

#[test]
fn verbose_reports_execution_mode_and_boot_marker() {
    let run = boot_test_guest("exit=0", &["--verbose"]);
    let kvm = hearth::kvm::open().unwrap();
    let expected = hearth::kvm::calibrate(&kvm).unwrap().execution;
    assert!(
        run.stderr
            .contains(&format!("KVM executes guest kernel code {expected}")),
        "{run:#?}"
    );
    assert!(run.stderr.contains("guest boot marker: booted"), "{run:#?}");
}

#[test]
fn config_file_describes_the_vm() {
    let dir = scratch();
    let serial = dir.as_path().join("serial.txt");
    let config = dir.as_path().join("vm.json");
    let json = serde_json::json!({
        "kernel": test_guest(),
        "cmdline": "exit=9 from=config",
        "cpus": 2,
        "memory": "192M",
        "serial_out": serial,
        "boot_protocol": "linux",
        "cmdline_workarounds": false,
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let run = hearth(["run", "--config", config.to_str().unwrap()]);
    assert_eq!(run.code(), 9, "{run:#?}");
    assert!(run.stdout.is_empty(), "serial output went to the file");
    let out = std::fs::read_to_string(&serial).unwrap();
    assert!(out.contains("hearth-test-guest: boot=linux64"), "{out}");
    assert!(out.contains("cmdline: exit=9 from=config\n"), "{out}");
    assert!(out.contains("cpus: 2\n"), "{out}");
    assert!(
        out.contains(&format!("mem-usable: {} bytes", expected_usable(192 << 20))),
        "{out}"
    );

    // A flag overrides the file.
    let run = hearth(["run", "--config", config.to_str().unwrap(), "--cpus", "1"]);
    assert_eq!(run.code(), 9);
    assert!(std::fs::read_to_string(&serial)
        .unwrap()
        .contains("cpus: 1\n"));
}

#[test]
fn library_builds_and_runs_the_same_vm() {
    let dir = scratch();
    let serial = dir.as_path().join("serial.txt");
    let mut config = hearth::VmConfig::new(test_guest());
    config.cmdline = "exit=17".into();
    config.serial_out = Some(serial.clone());
    let vm = hearth::Vm::try_from(config).expect("VM builds");
    let reason = vm.run().expect("VM runs");
    assert_eq!(reason, hearth::ExitReason::GuestExit(17));
    assert_eq!(reason.exit_code(), 17);
    assert!(std::fs::read_to_string(&serial)
        .unwrap()
        .contains("exit: 17"));
}

#[test]
fn i8042_reset_ends_the_vm_cleanly() {
    let run = boot_test_guest("end=reset", &[]);
    assert!(run.stdout.contains("exit: reset"), "{run:#?}");
    assert_eq!(run.code(), 0);
}

#[test]
fn halt_with_interrupts_off_ends_the_vm() {
    for cpus in ["1", "2"] {
        let run = boot_test_guest("end=halt", &["--cpus", cpus, "--verbose"]);
        assert!(run.stdout.contains("exit: halt"), "{run:#?}");
        assert!(
            run.stderr.contains("halted with interrupts disabled"),
            "{run:#?}"
        );
        assert_eq!(run.code(), 0);
    }
}

#[test]
fn rejected_instruction_is_an_internal_error_not_a_hang() {
    let kvm = hearth::kvm::open().unwrap();
    let emulated =
        hearth::kvm::calibrate(&kvm).unwrap().execution == hearth::kvm::Execution::Emulated;
    let run = boot_test_guest("fault=popcnt exit=0", &[]);
    assert!(run.stdout.contains("fault: popcnt"), "{run:#?}");
    if emulated {
        assert_eq!(run.code(), hearth::exit_status::KVM_ERROR, "{run:#?}");
        assert!(
            run.stderr.contains("KVM internal error, suberror 1"),
            "{run:#?}"
        );
        assert!(
            run.stderr.contains("instruction bytes: f3 48 0f b8 c0"),
            "the popcnt bytes are shown: {run:#?}"
        );
        assert!(run.stderr.contains("at guest RIP 0x"), "{run:#?}");
    } else {
        // Hardware runs popcnt; the guest carries on to its exit.
        assert_eq!(run.code(), 0, "{run:#?}");
    }
}
