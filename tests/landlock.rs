//! `--landlock` end to end: the guest boots and uses its devices (disks, entropy, vsock,
//! virtio-fs, serial output) with hearth restricted to its VM's files, and a snapshot
//! taken over the API into a directory outside them is refused (permission denied,
//! nothing written) while one into a `--landlock-rule` directory works and restores
//! under Landlock too.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use hearth::api::client::send;

/// Whether this kernel enforces Landlock (its ABI version, or why not).
fn landlock_abi() -> Result<i64, String> {
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // SAFETY: with a null attribute and size 0 the call only reports the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    match v {
        v if v > 0 => Ok(v),
        _ => Err(std::io::Error::last_os_error().to_string()),
    }
}

/// Skips (returns false, with a line saying so) where the kernel has no Landlock.
fn can_run(test: &str) -> bool {
    match landlock_abi() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping {test}: this kernel has no Landlock ({e})");
            false
        }
    }
}

#[test]
fn the_guest_boots_and_uses_its_devices_under_landlock() {
    if !can_run("the_guest_boots_and_uses_its_devices_under_landlock") {
        return;
    }
    let dir = scratch();
    let d = dir.as_path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
    let ro = d.join("ro.img");
    std::fs::write(&ro, vec![7u8; 64 * 512]).unwrap();
    let serial = d.join("serial.txt");
    let share = d.join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::write(share.join("f.txt"), b"shared").unwrap();
    let run = boot_test_guest(
        "blk.write=0:0:1:171 blk.flush=0 blk.read=1:0:1 rng.read=16 fs.read=f.txt exit=5",
        &[
            "--disk",
            &format!("path={}", disk.display()),
            "--disk",
            &format!("path={},readonly=on", ro.display()),
            "--rng",
            "--vsock",
            &format!("cid=3,socket={}", d.join("v.sock").display()),
            "--serial-out",
            serial.to_str().unwrap(),
            "--share",
            share.to_str().unwrap(),
            "--landlock",
        ],
    );
    assert_eq!(run.code(), 5, "{run:#?}");
    let out = std::fs::read_to_string(&serial).unwrap();
    assert!(out.contains("blk 0 write 0 1 status=0"), "{out}");
    let read = format!("blk 1 read 0 1 fnv={:016x}", fnv1a(&[7; 512]));
    assert!(out.contains(&read), "{read}: {out}");
    assert!(out.contains("rng read 16"), "{out}");
    assert!(out.contains("fs read f.txt size=6 bytes=6"), "{out}");
    let data = std::fs::read(&disk).unwrap();
    assert!(data[..512].iter().all(|b| *b == 171), "the guest's write");
}

/// Runs the test guest with an API socket under Landlock, `extra` flags added.
fn spawn_with_api(d: &Path, extra: &[String]) -> std::process::Child {
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 512]).unwrap();
    let mut args: Vec<String> = [
        "run",
        "--kernel",
        &test_guest().display().to_string(),
        "--cmdline",
        "blk.write=0:0:1:9 count=30 delay=20000 exit=0",
        "--disk",
        &format!("path={}", disk.display()),
        "--api-sock",
        &d.join("api.sock").display().to_string(),
        "--serial-out",
        &d.join("serial.txt").display().to_string(),
        "--landlock",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    spawn_hearth(&args)
}

/// A request that must be answered with `status`; the fault message on refusal.
fn request(sock: &Path, method: &str, uri: &str, body: &str, status: u16) -> String {
    let a = send(sock, method, uri, Some(body)).unwrap();
    assert_eq!(a.status, status, "{method} {uri} {body}: {a:?}");
    a.fault()
}

#[test]
fn a_snapshot_outside_the_allowed_paths_is_refused() {
    if !can_run("a_snapshot_outside_the_allowed_paths_is_refused") {
        return;
    }
    let dir = scratch();
    let d = dir.as_path();
    let outside = d.join("outside");
    let allowed = d.join("allowed");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(&allowed).unwrap();
    let child = spawn_with_api(
        d,
        &[
            "--landlock-rule".into(),
            format!("{},rw", allowed.display()),
        ],
    );
    let sock = d.join("api.sock");
    wait_for_text(&d.join("serial.txt"), "count: 2\n", Duration::from_secs(60));
    request(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    // Firecracker's two files, next to each other.
    let pair = |dir: &Path| {
        serde_json::json!({
            "snapshot_path": dir.join("vm.snap"),
            "mem_file_path": dir.join("vm.mem"),
        })
        .to_string()
    };
    let fault = request(&sock, "PUT", "/snapshot/create", &pair(&outside), 400);
    assert!(
        fault.to_lowercase().contains("permission denied"),
        "{fault}"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    request(&sock, "PUT", "/snapshot/create", &pair(&allowed), 204);
    assert!(std::fs::metadata(allowed.join("vm.mem")).unwrap().len() > 0);
    // And hearth's own snapshot directory, which `hearth restore` takes.
    let snap = allowed.join("snap");
    let native = serde_json::json!({
        "snapshot_path": snap.join("state"),
        "mem_file_path": snap.join("memory"),
    })
    .to_string();
    request(&sock, "PUT", "/snapshot/create", &native, 204);
    request(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    let run = wait_bounded(child, Duration::from_secs(120), "hearth --landlock");
    assert_eq!(run.code(), 0, "{run:#?}");

    // The snapshot restores under Landlock: the guest counts on to the end.
    let serial = d.join("restored.txt");
    let run = hearth([
        "restore",
        "--dir",
        snap.to_str().unwrap(),
        "--resume",
        "--landlock",
        "--serial-out",
        serial.to_str().unwrap(),
    ]);
    assert_eq!(run.code(), 0, "{run:#?}");
    let out = std::fs::read_to_string(&serial).unwrap();
    assert!(out.contains("count: 30\n"), "{out}");
}

#[test]
fn landlock_flags_are_checked() {
    let dir = scratch();
    let missing = dir.as_path().join("missing");
    let run = boot_test_guest(
        "exit=0",
        &["--landlock", "--landlock-rule", missing.to_str().unwrap()],
    );
    if landlock_abi().is_ok() {
        assert_eq!(run.code(), 250, "{run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
        assert!(run.stderr.contains("cannot open"), "{run:#?}");
        assert!(run.stderr.contains("missing"), "{run:#?}");
    } else {
        assert!(run.stderr.contains("cannot enforce Landlock"), "{run:#?}");
    }
    // A rule without --landlock would do nothing: refused.
    let run = boot_test_guest("exit=0", &["--landlock-rule", "/tmp"]);
    assert_eq!(run.code(), 2, "{run:#?}");
    assert!(run.stderr.contains("--landlock"), "{run:#?}");
}
