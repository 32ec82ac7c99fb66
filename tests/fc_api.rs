//! hearth as Firecracker: the test guest booted through the HTTP API alone, through
//! `--config-file` (with and without the API), snapshots created and loaded through the
//! API in two processes, bad requests refused with the VM unharmed, metrics written.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hearth::api::client::{send, Answer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// A hearth started with Firecracker's flags; serial output (stdout) and stderr in files.
struct Fc {
    child: Child,
    sock: PathBuf,
    serial: PathBuf,
    stderr: PathBuf,
}

impl Drop for Fc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fc {
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Fc {
        let sock = dir.join(format!("{name}.sock"));
        let serial = dir.join(format!("{name}.serial"));
        let stderr = dir.join(format!("{name}.stderr"));
        let mut all: Vec<String> = vec!["--api-sock".into(), sock.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        Self::spawn_raw(&all, sock, serial, stderr)
    }

    fn spawn_raw(args: &[String], sock: PathBuf, serial: PathBuf, stderr: PathBuf) -> Fc {
        Self::spawn_in(None, args, sock, serial, stderr)
    }

    /// Starts hearth, inside network namespace `netns` when given.
    fn spawn_in(
        netns: Option<&str>,
        args: &[String],
        sock: PathBuf,
        serial: PathBuf,
        stderr: PathBuf,
    ) -> Fc {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, hearth_bin()]);
                c
            }
            None => Command::new(hearth_bin()),
        };
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&serial).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("cannot start hearth");
        Fc {
            child,
            sock,
            serial,
            stderr,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- serial ---\n{}\n--- stderr ---\n{}",
            std::fs::read_to_string(&self.serial).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn wait_socket(&self) {
        let start = Instant::now();
        while UnixStream::connect(&self.sock).is_err() {
            assert!(
                start.elapsed() < T,
                "the API socket never came up\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let body = body.map(|b| b.to_string());
        send(&self.sock, method, path, body.as_deref()).unwrap_or_else(|e| {
            panic!("{method} {path}: {e}\n{}", self.output());
        })
    }

    /// A request that must succeed with 204.
    /// InstanceStart, then a second after the boot marker the guest has not printed
    /// `done` yet: the throttled work it is doing cannot be done that fast.
    fn start_throttled(&self, done: &str, why: &str) {
        self.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
        wait_for_text(&self.serial, "boot-marker", T);
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            !std::fs::read_to_string(&self.serial)
                .unwrap()
                .contains(done),
            "{why}\n{}",
            self.output()
        );
    }

    /// 1 vCPU, 64 MiB, the test guest with `args`.
    fn configure_guest(&self, args: &str) {
        self.ok(
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 64}),
        );
        self.ok("PUT", "/boot-source", boot_source(args));
    }

    fn ok(&self, method: &str, path: &str, body: Value) {
        let a = self.call(method, path, Some(body));
        assert_eq!(a.status, 204, "{method} {path}: {a:?}\n{}", self.output());
    }

    /// A request that must be refused with 400 and a fault message containing `needle`.
    fn refused(&self, method: &str, path: &str, body: Option<&str>, needle: &str) {
        let a = send(&self.sock, method, path, body).unwrap();
        assert_eq!(a.status, 400, "{method} {path} {body:?}: {a:?}");
        assert!(
            a.fault().contains(needle),
            "{method} {path}: {:?} lacks {needle:?}",
            a.fault()
        );
    }

    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > T {
                let _ = self.child.kill();
                panic!("hearth ran longer than {T:?}\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("count: "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn patterned(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from(i * 7 % 251).unwrap_or(0))
        .collect()
}

/// A 1 MiB disk `a.img` and a 512 KiB disk `b.img` to swap in, whose bytes (returned)
/// differ from a's by `xor`.
fn swap_disks(d: &Path, xor: u8) -> (PathBuf, PathBuf, Vec<u8>) {
    let (a, b) = (d.join("a.img"), d.join("b.img"));
    std::fs::write(&a, patterned(2048 * 512)).unwrap();
    let b_data: Vec<u8> = patterned(1024 * 512).iter().map(|x| x ^ xor).collect();
    std::fs::write(&b, &b_data).unwrap();
    (a, b, b_data)
}

fn boot_source(args: &str) -> Value {
    json!({ "kernel_image_path": test_guest(), "boot_args": args })
}

#[test]
fn boots_through_the_api_alone() {
    let dir = scratch();
    let disk = dir.as_path().join("disk.img");
    let data = patterned(1 << 20);
    std::fs::write(&disk, &data).unwrap();
    let mut fc = Fc::spawn(dir.as_path(), "vm", &["--id", "api-boot"]);
    fc.wait_socket();
    let info = fc.call("GET", "/", None);
    assert_eq!(info.status, 200);
    let info: Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(info["app_name"], "Firecracker");
    assert_eq!(info["id"], "api-boot");
    assert_eq!(info["state"], "Not started");
    let version: Value = serde_json::from_str(&fc.call("GET", "/version", None).body).unwrap();
    assert!(version["firecracker_version"]
        .as_str()
        .unwrap()
        .starts_with("1."));

    let log = dir.as_path().join("fc.log");
    fc.ok(
        "PUT",
        "/logger",
        json!({"log_path": log, "level": "debug", "show_level": true, "show_log_origin": true}),
    );
    fc.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 2, "mem_size_mib": 64}),
    );
    fc.ok("PATCH", "/machine-config", json!({"vcpu_count": 1}));
    fc.ok(
        "PUT",
        "/boot-source",
        boot_source("blk.info blk.read=0:0:8 rng.read=256 exit=5"),
    );
    fc.ok(
        "PUT",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}),
    );
    fc.ok("PUT", "/entropy", json!({}));
    fc.ok(
        "PUT",
        "/vsock",
        json!({"guest_cid": 3, "uds_path": dir.as_path().join("v.sock")}),
    );
    let config: Value = serde_json::from_str(&fc.call("GET", "/vm/config", None).body).unwrap();
    assert_eq!(config["machine-config"]["vcpu_count"], 1);
    assert_eq!(config["machine-config"]["mem_size_mib"], 64);
    assert_eq!(config["drives"][0]["drive_id"], "rootfs");
    fc.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));

    let status = fc.wait();
    let out = fc.output();
    assert_eq!(status.code(), Some(5), "{out}");
    let serial = std::fs::read_to_string(&fc.serial).unwrap();
    let run_line = |p: &str| {
        serial
            .lines()
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p:?} line\n{out}"))
            .to_string()
    };
    assert!(
        run_line("blk 0: ").starts_with("capacity=2048 ro=0"),
        "{out}"
    );
    assert_eq!(
        run_line("blk 0 read 0 8 "),
        format!("fnv={:016x}", fnv1a(&data[..8 * 512]))
    );
    assert!(run_line("rng read 256").contains("distinct="), "{out}");
    assert!(!fc.sock.exists(), "the socket goes with the process");
    // Firecracker's line shape: time, [id:thread:LEVEL:file:line], message.
    let log = std::fs::read_to_string(&log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("Patch request on \"/machine-config\""))
        .unwrap_or_else(|| panic!("no request line in the log:\n{log}"));
    let (time, rest) = line.split_once(' ').unwrap();
    assert_eq!(time.len(), 29, "{line}");
    assert!(
        rest.starts_with("[api-boot:main:INFO:src/api/server.rs:"),
        "{line}"
    );
    assert!(log.contains(":DEBUG:"), "debug lines too:\n{log}");
}

fn config_file(dir: &Path, args: &str) -> PathBuf {
    let path = dir.join("vm_config.json");
    let config = json!({
        "boot-source": { "kernel_image_path": test_guest(), "boot_args": args },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 64, "smt": false },
        "network-interfaces": [],
        "entropy": {}
    });
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn boots_from_a_config_file_with_and_without_the_api() {
    let dir = scratch();
    let cfg = config_file(dir.as_path(), "rng.read=64 exit=9");
    let cfg = cfg.to_str().unwrap();
    // Kata's invocation.
    let mut fc = Fc::spawn(dir.as_path(), "kata", &["--config-file", cfg]);
    assert_eq!(fc.wait().code(), Some(9), "{}", fc.output());
    assert!(fc.output().contains("rng read 64"), "{}", fc.output());

    // flintlock's invocation: no API socket at all.
    let serial = dir.as_path().join("flintlock.serial");
    let args: Vec<String> = [
        "--id",
        "x",
        "--boot-timer",
        "--no-api",
        "--config-file",
        cfg,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sock = dir.as_path().join("never.sock");
    let mut fc = Fc::spawn_raw(&args, sock.clone(), serial, dir.as_path().join("f.stderr"));
    assert_eq!(fc.wait().code(), Some(9), "{}", fc.output());
    assert!(fc.output().contains("rng read 64"), "{}", fc.output());
    assert!(!sock.exists());

    // Under the name `firecracker`, and with a config file Firecracker would refuse.
    let link = dir.as_path().join("firecracker");
    std::os::unix::fs::symlink(hearth_bin(), &link).unwrap();
    let version = Command::new(&link).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("Firecracker v1."));
    std::fs::write(
        dir.as_path().join("bad.json"),
        r#"{"boot-source": {"kernel_image_path": "k", "bogus": 1}}"#,
    )
    .unwrap();
    let bad = Command::new(&link)
        .args(["--no-api", "--config-file"])
        .arg(dir.as_path().join("bad.json"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown field `bogus`"));
    let meta = Command::new(&link)
        .args(["--no-api", "--config-file", cfg, "--metadata", "m.json"])
        .output()
        .unwrap();
    assert_eq!(meta.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&meta.stderr).contains("no MMDS"));
}

/// Boots a counting guest through the API with a vsock device on `vsock`.
fn counting_vm(dir: &Path, name: &str, args: &str, extra: &[&str]) -> Fc {
    let fc = Fc::spawn(dir, name, extra);
    fc.wait_socket();
    fc.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    fc.ok("PUT", "/boot-source", boot_source(args));
    fc.ok(
        "PUT",
        "/vsock",
        json!({"guest_cid": 3, "uds_path": dir.join(format!("{name}.vsock"))}),
    );
    fc.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    fc
}

#[test]
fn snapshot_through_the_api_loads_in_a_new_process() {
    let dir = scratch();
    let d = dir.as_path();
    let vm = counting_vm(d, "one", "count=30 delay=20000 exit=7", &[]);
    wait_for_text(&vm.serial, "count: 3\n", T);
    let (state, mem) = (d.join("vm.snap"), d.join("vm.mem"));
    let body = json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem});
    vm.refused(
        "PUT",
        "/snapshot/create",
        Some(&body.to_string()),
        "pause it first",
    );
    vm.ok("PATCH", "/vm", json!({"state": "Paused"}));
    let info: Value = serde_json::from_str(&vm.call("GET", "/", None).body).unwrap();
    assert_eq!(info["state"], "Paused");
    vm.ok("PUT", "/snapshot/create", body);
    let before = std::fs::read_to_string(&vm.serial).unwrap();
    // hearth's `resume_vm`: a second snapshot, and the VM runs on once it is copied.
    vm.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_path": d.join("again.snap"), "mem_file_path": d.join("again.mem"),
               "resume_vm": true}),
    );
    let info: Value = serde_json::from_str(&vm.call("GET", "/", None).body).unwrap();
    assert_eq!(info["state"], "Running", "{info}");
    drop(vm);
    let last = *counts(&before).last().unwrap();

    let mut two = Fc::spawn(d, "two", &[]);
    two.wait_socket();
    let moved = d.join("moved.vsock");
    two.ok(
        "PUT",
        "/snapshot/load",
        json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": true,
            "vsock_override": {"uds_path": moved}
        }),
    );
    assert_eq!(two.wait().code(), Some(7), "{}", two.output());
    let after = counts(&std::fs::read_to_string(&two.serial).unwrap());
    assert_eq!(
        after,
        ((last + 1)..=30).collect::<Vec<_>>(),
        "carries on from the snapshot\n{}",
        two.output()
    );

    // The override reached the device: a third load listens on the new path.
    let three = Fc::spawn(d, "three", &[]);
    three.wait_socket();
    three.refused(
        "PUT",
        "/snapshot/load",
        Some(&json!({"snapshot_path": state, "mem_file_path": mem, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}]}).to_string()),
        "no network interface 'eth0'",
    );
    three.ok(
        "PUT",
        "/snapshot/load",
        json!({"snapshot_path": state, "mem_file_path": mem, "vsock_override": {"uds_path": moved}}),
    );
    let config: Value = serde_json::from_str(&three.call("GET", "/vm/config", None).body).unwrap();
    assert_eq!(config["machine-config"]["mem_size_mib"], 64, "{config}");
    assert_eq!(
        config["vsock"]["uds_path"],
        moved.to_str().unwrap(),
        "{config}"
    );
    assert!(
        UnixStream::connect(&moved).is_ok(),
        "vsock listens on the override"
    );
    three.ok("PATCH", "/vm", json!({"state": "Resumed"}));
    wait_for_text(&three.serial, &format!("count: {}\n", last + 2), T);
}

/// Writes raw bytes to the socket and returns the status line's code and the body.
fn raw(sock: &Path, bytes: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

#[test]
fn bad_requests_get_400_and_leave_the_vm_unharmed() {
    let dir = scratch();
    let d = dir.as_path();
    let metrics = d.join("metrics.json");
    let fc = Fc::spawn(d, "vm", &["--metrics-path", metrics.to_str().unwrap()]);
    fc.wait_socket();
    // Before boot.
    assert_eq!(raw(&fc.sock, b"GARBAGE\r\n\r\n").0, 400);
    let big = format!(
        "PUT /boot-source HTTP/1.1\r\nContent-Length: 60000\r\n\r\n{}",
        " ".repeat(60000)
    );
    let (code, text) = raw(&fc.sock, big.as_bytes());
    assert_eq!(code, 400, "{text}");
    fc.refused(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "k", "x": 1}"#),
        "unknown field `x`",
    );
    fc.refused(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": "1", "mem_size_mib": 64}"#),
        "invalid type",
    );
    fc.refused(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1}"#),
        "missing field `mem_size_mib`",
    );
    fc.refused("PUT", "/machine-config", Some("{not json"), "deserializing");
    fc.refused(
        "PATCH",
        "/vm",
        Some(r#"{"state": "Paused"}"#),
        "before starting",
    );
    fc.refused(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "without kernel",
    );
    fc.refused("GET", "/mmds", None, "MMDS");
    fc.refused("PUT", "/balloon", Some("{}"), "balloon");
    fc.refused(
        "GET",
        "/nowhere",
        None,
        "Invalid request method and/or path",
    );
    fc.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    // A start that fails leaves the VM configurable and startable.
    fc.ok(
        "PUT",
        "/boot-source",
        json!({"kernel_image_path": d.join("no-such-kernel")}),
    );
    fc.refused(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "Cannot start the microVM",
    );
    fc.ok(
        "PUT",
        "/boot-source",
        boot_source("count=25 delay=20000 exit=3"),
    );
    fc.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    wait_for_text(&fc.serial, "count: 2\n", T);
    // After boot.
    fc.refused(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
        "after starting",
    );
    fc.refused(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#),
        "after starting",
    );
    fc.refused(
        "PUT",
        "/snapshot/load",
        Some(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#),
        "after starting",
    );
    fc.refused(
        "PATCH",
        "/vm",
        Some(r#"{"state": "Asleep"}"#),
        "unknown variant",
    );
    assert_eq!(
        raw(
            &fc.sock,
            b"PUT /actions HTTP/1.1\r\nContent-Length: 5\r\n\r\n{\"a\":"
        )
        .0,
        400
    );
    // Many clients at once, each with a few requests.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let sock = fc.sock.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| send(&sock, "GET", "/", None).map(|a| a.status).unwrap_or(0))
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().iter().all(|s| *s == 200));
    }
    fc.ok("PUT", "/actions", json!({"action_type": "FlushMetrics"}));
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["get_api_requests"]["instance_info_count"], 80);
    assert!(line["put_api_requests"]["actions_fails"].as_u64().unwrap() >= 3);
    assert_eq!(line["put_api_requests"]["machine_cfg_count"], 2);
    assert_eq!(line["put_api_requests"]["machine_cfg_fails"], 1);
    assert!(line["block"].is_object() && line["latencies_us"].is_object());
    let mut fc = fc;
    assert_eq!(
        fc.wait().code(),
        Some(3),
        "the VM ran to its end\n{}",
        fc.output()
    );
    let serial = std::fs::read_to_string(&fc.serial).unwrap();
    assert_eq!(counts(&serial), (1..=25).collect::<Vec<_>>(), "{serial}");
}

/// The Python client on PyPI (`firecracker-python`, installed by .ci/run into
/// target/py-firecracker) drives boot, pause, resume, snapshot create and load.
#[test]
fn a_third_party_python_client_drives_hearth() {
    let python = root().join("target/py-firecracker/bin/python");
    let script = root().join("tests/fc_python_client.py");
    let probe = Command::new(&python)
        .args(["-c", "import firecracker.api"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: firecracker-python is not installed in {} (bash .ci/run installs it)",
            python.display()
        );
        return;
    }
    // requests lower-cases the URL's host, which firecracker-python fills with the
    // socket path: the path must be lower case.
    struct Lower(PathBuf);
    impl Drop for Lower {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = Lower(std::env::temp_dir().join(format!("hearth-fcpy-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let d = dir.0.as_path();
    let one = Fc::spawn(d, "one", &["--id", "py"]);
    one.wait_socket();
    let (state, mem) = (d.join("py.snap"), d.join("py.mem"));
    let py = |fc: &Fc, args: &[&str]| {
        let o = Command::new(&python)
            .arg(&script)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            fc.output()
        );
    };
    let sock = one.sock.to_str().unwrap();
    let guest = test_guest().to_str().unwrap();
    py(&one, &["boot", sock, guest, "count=30 delay=20000 exit=4"]);
    wait_for_text(&one.serial, "count: 3\n", T);
    py(&one, &["pause-resume", sock]);
    wait_for_text(&one.serial, "count: 5\n", T);
    py(
        &one,
        &[
            "snapshot",
            sock,
            state.to_str().unwrap(),
            mem.to_str().unwrap(),
        ],
    );
    let before = std::fs::read_to_string(&one.serial).unwrap();
    drop(one);
    let last = *counts(&before).last().unwrap();
    let mut two = Fc::spawn(d, "two", &[]);
    two.wait_socket();
    py(
        &two,
        &[
            "load",
            two.sock.to_str().unwrap(),
            state.to_str().unwrap(),
            mem.to_str().unwrap(),
        ],
    );
    assert_eq!(two.wait().code(), Some(4), "{}", two.output());
    let after = counts(&std::fs::read_to_string(&two.serial).unwrap());
    assert_eq!(after.first(), Some(&(last + 1)), "{}", two.output());
}

#[test]
fn flushed_metrics_count_the_guests_disk_requests() {
    let dir = scratch();
    let d = dir.as_path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, patterned(256 * 512)).unwrap();
    let metrics = d.join("metrics.json");
    let fc = Fc::spawn(d, "vm", &[]);
    fc.wait_socket();
    fc.ok("PUT", "/metrics", json!({"metrics_path": metrics}));
    fc.refused(
        "PUT",
        "/metrics",
        Some(&json!({"metrics_path": metrics}).to_string()),
        "Reinitialization",
    );
    fc.configure_guest("blk.read=0:0:8 blk.read=0:100:2 blk.write=0:20:2:7 blk.flush=0 count=200 delay=20000 exit=0");
    fc.ok(
        "PUT",
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false}),
    );
    fc.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    let serial = wait_for_text(&fc.serial, "count: 2\n", T);
    assert!(serial.contains("blk 0 flush status=0"), "{serial}");
    fc.ok("PUT", "/actions", json!({"action_type": "FlushMetrics"}));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let block = &line["block"];
    assert_eq!(block["read_count"], 2, "{line}");
    assert_eq!(block["read_bytes"], 10 * 512);
    assert_eq!(block["write_count"], 1);
    assert_eq!(block["write_bytes"], 2 * 512);
    assert_eq!(block["flush_count"], 1);
    assert_eq!(line["put_api_requests"]["drive_count"], 1);
    assert!(line["utc_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(
        line["api_server"]["process_startup_time_us"].is_u64(),
        "{line}"
    );
    // Counters restart with each line.
    fc.ok("PUT", "/actions", json!({"action_type": "FlushMetrics"}));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["block"]["read_count"], 0, "{line}");
}

#[test]
fn drive_patch_after_boot_swaps_the_backing_file() {
    let dir = scratch();
    let d = dir.as_path();
    let (a, b, b_data) = swap_disks(d, 0x5a);
    let mut fc = Fc::spawn(d, "vm", &[]);
    fc.wait_socket();
    fc.configure_guest("count=10 delay=20000 blk.info blk.read=0:0:8 exit=0");
    fc.ok(
        "PUT",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": a, "is_root_device": true, "is_read_only": true}),
    );
    fc.refused(
        "PATCH",
        "/drives/rootfs",
        Some(&json!({"drive_id": "rootfs", "path_on_host": b}).to_string()),
        "before starting",
    );
    fc.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    wait_for_text(&fc.serial, "count: 1\n", T);
    fc.refused(
        "PATCH",
        "/drives/other",
        Some(r#"{"drive_id": "other", "path_on_host": "/x"}"#),
        "Invalid block device ID",
    );
    fc.refused(
        "PATCH",
        "/drives/rootfs",
        Some(&json!({"drive_id": "rootfs", "path_on_host": d.join("missing.img")}).to_string()),
        "Unable to patch",
    );
    fc.ok(
        "PATCH",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": b}),
    );
    assert_eq!(fc.wait().code(), Some(0), "{}", fc.output());
    assert_sees_new_disk(&fc.serial, true, &b_data);
}

#[test]
fn network_overrides_move_a_loaded_vm_to_another_tap() {
    use common::net::{add_tap, can_run_net_tests, frame, parse_mac, Netns, PacketSocket};
    if !can_run_net_tests("network_overrides_move_a_loaded_vm_to_another_tap") {
        return;
    }
    const MAC: &str = "06:00:ac:10:00:07";
    let ns = Netns::new();
    add_tap(&ns, "tap1");
    let dir = scratch();
    let d = dir.as_path();
    let spawn = |name: &str| {
        let sock = d.join(format!("{name}.sock"));
        let args = vec!["--api-sock".to_string(), sock.display().to_string()];
        let fc = Fc::spawn_in(
            Some(&ns.name),
            &args,
            sock,
            d.join(format!("{name}.serial")),
            d.join(format!("{name}.stderr")),
        );
        fc.wait_socket();
        fc
    };
    let one = spawn("one");
    one.configure_guest("count=25 delay=20000 net.tx=0:after-restore exit=4");
    one.ok(
        "PUT",
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": common::net::TAP, "guest_mac": MAC}),
    );
    one.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    wait_for_text(&one.serial, "count: 3\n", T);
    let (state, mem) = (d.join("vm.snap"), d.join("vm.mem"));
    one.ok("PATCH", "/vm", json!({"state": "Paused"}));
    one.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    drop(one);

    let tap1 = PacketSocket::open(&ns.name, "tap1", common::net::ETHERTYPE);
    let mut two = spawn("two");
    two.ok(
        "PUT",
        "/snapshot/load",
        json!({"snapshot_path": state, "mem_file_path": mem, "resume_vm": true,
               "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap1"}]}),
    );
    let got = tap1
        .recv(T)
        .unwrap_or_else(|| panic!("no frame on tap1\n{}", two.output()));
    assert_eq!(got, frame([0xff; 6], parse_mac(MAC), b"after-restore"));
    assert_eq!(two.wait().code(), Some(4), "{}", two.output());
}

#[test]
fn rate_limiters_are_set_shown_and_raised_on_a_running_vm() {
    let dir = scratch();
    let d = dir.as_path();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![7u8; 1 << 20]).unwrap();
    let fc = Fc::spawn(d, "vm", &[]);
    fc.wait_socket();
    fc.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    fc.ok("PUT", "/boot-source", boot_source("blk.bench=0:4 exit=0"));
    // Bad limiters: wrong types, unknown fields, a refill time hearth cannot count.
    for (body, needle) in [
        (
            json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
                   "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 1000}}}),
            "invalid value",
        ),
        (
            json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
                   "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1000, "rate": 3}}}),
            "unknown field `rate`",
        ),
        (
            json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
                   "rate_limiter": {"ops": {"size": 1, "refill_time": u64::MAX}}}),
            "refill_time",
        ),
    ] {
        fc.refused("PUT", "/drives/data", Some(&body.to_string()), needle);
    }
    fc.refused(
        "PUT",
        "/entropy",
        Some(r#"{"rate_limiter": {"bandwidth": {"size": "1", "refill_time": 1}}}"#),
        "invalid type",
    );
    // 4 MiB at 16 KiB/s would take over four minutes.
    fc.ok(
        "PUT",
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
               "rate_limiter": {"bandwidth": {"size": 16384, "refill_time": 1000},
                                "ops": {"size": 1000, "one_time_burst": 50, "refill_time": 1000}}}),
    );
    fc.ok(
        "PUT",
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": "tap-unused",
               "rx_rate_limiter": {"ops": {"size": 10, "refill_time": 100}},
               "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}),
    );
    fc.ok(
        "PUT",
        "/entropy",
        json!({"rate_limiter": {"bandwidth": {"size": 4096, "refill_time": 1000}}}),
    );
    let config = |fc: &Fc| -> Value {
        serde_json::from_str(&fc.call("GET", "/vm/config", None).body).unwrap()
    };
    let c = config(&fc);
    let limiter = &c["drives"][0]["rate_limiter"];
    assert_eq!(limiter["bandwidth"]["size"], 16384, "{c}");
    assert_eq!(limiter["bandwidth"]["refill_time"], 1000, "{c}");
    assert_eq!(limiter["ops"]["one_time_burst"], 50, "{c}");
    let eth0 = &c["network-interfaces"][0];
    assert_eq!(eth0["rx_rate_limiter"]["ops"]["size"], 10, "{c}");
    assert!(
        eth0["tx_rate_limiter"].is_null(),
        "a bucket of size 0 limits nothing: {c}"
    );
    assert_eq!(c["entropy"]["rate_limiter"]["bandwidth"]["size"], 4096);
    // Limits are changed on a running VM only; the tap does not exist, so no boot with it.
    fc.refused(
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0"}"#),
        "before starting",
    );
    // Firecracker has no way to remove an interface: boot in a fresh process instead.
    drop(fc);
    let mut fc = Fc::spawn(d, "run", &[]);
    fc.wait_socket();
    fc.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    fc.ok("PUT", "/boot-source", boot_source("blk.bench=0:4 exit=0"));
    fc.ok(
        "PUT",
        "/drives/data",
        json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
               "rate_limiter": {"bandwidth": {"size": 16384, "refill_time": 1000},
                                "ops": {"size": 1000, "refill_time": 1000}}}),
    );
    fc.start_throttled(
        "blk 0 bench",
        "4 MiB at 16 KiB/s cannot be done in a second",
    );
    fc.refused(
        "PATCH",
        "/drives/data",
        Some(r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709551615}}}"#),
        "refill_time",
    );
    fc.refused(
        "PATCH",
        "/drives/other",
        Some(r#"{"drive_id": "other", "rate_limiter": {}}"#),
        "Invalid block device ID",
    );
    // Raise the bandwidth; the ops bucket is left out, so it stays.
    fc.ok(
        "PATCH",
        "/drives/data",
        json!({"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 67108864, "refill_time": 1000}}}),
    );
    let c = config(&fc);
    let limiter = &c["drives"][0]["rate_limiter"];
    assert_eq!(limiter["bandwidth"]["size"], 67108864, "{c}");
    assert_eq!(limiter["ops"]["size"], 1000, "the ops bucket is kept: {c}");
    // A bucket of size 0 removes it.
    fc.ok(
        "PATCH",
        "/drives/data",
        json!({"drive_id": "data", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}),
    );
    let c = config(&fc);
    assert!(c["drives"][0]["rate_limiter"]["ops"].is_null(), "{c}");
    assert_eq!(fc.wait().code(), Some(0), "{}", fc.output());
    // fc.wait() gives up after 60 s: the rest of the 4 MiB came far faster than the
    // four minutes the old limit needed.
    let serial = std::fs::read_to_string(&fc.serial).unwrap();
    assert!(serial.contains("blk 0 bench bytes=4194304 "), "{serial}");
}

#[test]
fn a_loaded_vm_keeps_its_drive_ids_and_takes_patches() {
    let dir = scratch();
    let d = dir.as_path();
    let (a, b, b_data) = swap_disks(d, 0x3c);
    let one = Fc::spawn(d, "one", &[]);
    one.wait_socket();
    one.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    one.ok(
        "PUT",
        "/boot-source",
        // Snapshotted during the sleep, whatever the guest's speed.
        boot_source("count=2 sleep=5000 blk.info blk.read=0:0:8 exit=6"),
    );
    one.ok(
        "PUT",
        "/drives/scratch",
        json!({"drive_id": "scratch", "path_on_host": a, "is_root_device": false,
               "rate_limiter": {"ops": {"size": 5000, "refill_time": 1000}}}),
    );
    one.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    wait_for_text(&one.serial, "count: 2\n", T);
    one.ok("PATCH", "/vm", json!({"state": "Paused"}));
    let (state, mem) = (d.join("vm.snap"), d.join("vm.mem"));
    one.ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    drop(one);

    let mut two = Fc::spawn(d, "two", &[]);
    two.wait_socket();
    two.ok(
        "PUT",
        "/snapshot/load",
        json!({"snapshot_path": state, "mem_file_path": mem}),
    );
    let config = |fc: &Fc| -> Value {
        serde_json::from_str(&fc.call("GET", "/vm/config", None).body).unwrap()
    };
    let c = config(&two);
    assert_eq!(c["drives"][0]["drive_id"], "scratch", "{c}");
    assert_eq!(
        c["drives"][0]["rate_limiter"]["ops"]["size"], 5000,
        "limits are kept too: {c}"
    );
    two.refused(
        "PATCH",
        "/drives/drive0",
        Some(r#"{"drive_id": "drive0", "path_on_host": "/x"}"#),
        "Invalid block device ID",
    );
    two.ok(
        "PATCH",
        "/drives/scratch",
        json!({"drive_id": "scratch", "path_on_host": b,
               "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100}}}),
    );
    let c = config(&two);
    assert_eq!(c["drives"][0]["path_on_host"], b.to_str().unwrap(), "{c}");
    assert_eq!(c["drives"][0]["rate_limiter"]["ops"]["size"], 5000, "{c}");
    assert_eq!(
        c["drives"][0]["rate_limiter"]["bandwidth"]["size"], 1048576,
        "{c}"
    );
    two.ok("PATCH", "/vm", json!({"state": "Resumed"}));
    assert_eq!(two.wait().code(), Some(6), "{}", two.output());
    assert_sees_new_disk(&two.serial, false, &b_data);
}

#[test]
fn flushed_metrics_count_serial_vcpu_exits_and_vsock() {
    use std::os::unix::net::UnixListener;
    let dir = scratch();
    let d = dir.as_path();
    let metrics = d.join("metrics.json");
    let uds = d.join("v.sock");
    // The guest connects to host port 6000 and sends 12 bytes.
    let listener = UnixListener::bind(d.join("v.sock_6000")).unwrap();
    let host = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    });
    let fc = Fc::spawn(d, "vm", &["--metrics-path", metrics.to_str().unwrap()]);
    fc.wait_socket();
    fc.configure_guest("vsock.send=6000:hello-marker count=3 sleep=60000 exit=0");
    fc.ok("PUT", "/vsock", json!({"guest_cid": 3, "uds_path": uds}));
    fc.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    wait_for_text(&fc.serial, "count: 3\n", T);
    assert_eq!(host.join().unwrap(), b"hello-marker", "{}", fc.output());
    // The guest now sleeps without a word; let the last bytes reach the file.
    std::thread::sleep(Duration::from_millis(300));
    fc.ok("PUT", "/actions", json!({"action_type": "FlushMetrics"}));
    let last_line = || -> Value {
        let text = std::fs::read_to_string(&metrics).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };
    let line = last_line();
    let printed = std::fs::read(&fc.serial).unwrap().len() as u64;
    let uart = &line["uart"];
    assert_eq!(
        uart["write_count"].as_u64(),
        Some(printed),
        "every byte the guest printed: {line}\n{}",
        fc.output()
    );
    assert_eq!(uart["missed_write_count"], 0, "{line}");
    let vcpu = &line["vcpu"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    assert!(
        n(&vcpu["exit_io_out"]) >= printed,
        "each byte is a port write: {line}"
    );
    assert!(n(&vcpu["exit_io_in"]) > 0, "{line}");
    assert!(
        n(&vcpu["exit_mmio_read"]) > 0 && n(&vcpu["exit_mmio_write"]) > 0,
        "virtio is MMIO: {line}"
    );
    assert_eq!(vcpu["failures"], 0, "{line}");
    let vsock = &line["vsock"];
    assert_eq!(vsock["tx_bytes_count"], 12, "{line}");
    assert_eq!(vsock["conns_added"], 1, "{line}");
    assert!(
        n(&vsock["tx_packets_count"]) >= 3,
        "request, data, shutdown: {line}"
    );
    assert!(n(&vsock["rx_packets_count"]) >= 1, "the response: {line}");
    assert!(n(&line["vmm"]["device_events"]) > 0, "{line}");
    // A sleeping guest writes nothing more.
    fc.ok("PUT", "/actions", json!({"action_type": "FlushMetrics"}));
    let line = last_line();
    assert_eq!(line["uart"]["write_count"], 0, "{line}");
    assert_eq!(line["vsock"]["tx_bytes_count"], 0, "{line}");
}

#[test]
fn checkpoints_set_through_the_api_appear_and_restore() {
    let dir = scratch();
    let d = dir.as_path();
    let ckpt = d.join("ckpt");
    let fc = Fc::spawn(d, "vm", &[]);
    fc.wait_socket();
    for (body, needle) in [
        (json!({"interval_ms": 5, "dir": ckpt}), "at least 10"),
        (json!({"interval_ms": 100, "dir": ckpt, "keep": 0}), "keep"),
        (
            json!({"interval_ms": 100, "dir": ckpt, "every": 1}),
            "unknown field",
        ),
        (json!({"dir": ckpt}), "missing field `interval_ms`"),
    ] {
        fc.refused("PUT", "/checkpoints", Some(&body.to_string()), needle);
    }
    // Before boot: kept for InstanceStart, and shown.
    fc.ok(
        "PUT",
        "/checkpoints",
        json!({"interval_ms": 60000, "dir": ckpt}),
    );
    let get = |fc: &Fc| -> Value {
        let a = fc.call("GET", "/checkpoints", None);
        assert_eq!(a.status, 200, "{a:?}");
        serde_json::from_str(&a.body).unwrap()
    };
    let c = get(&fc);
    assert_eq!(c["interval_ms"], 60000, "{c}");
    assert_eq!(c["keep"], 3, "{c}");
    let config: Value = serde_json::from_str(&fc.call("GET", "/vm/config", None).body).unwrap();
    assert_eq!(config["checkpoints"]["interval_ms"], 60000, "{config}");
    fc.ok(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    fc.ok(
        "PUT",
        "/boot-source",
        // Checkpointed during the sleep, whatever the guest's speed.
        boot_source("count=3 sleep=8000 exit=7"),
    );
    fc.ok("PUT", "/actions", json!({"action_type": "InstanceStart"}));
    wait_for_text(&fc.serial, "count: 3\n", T);
    assert_eq!(get(&fc)["taken"], 0, "none due within a minute");
    // On the running VM: every 200 ms from now on.
    fc.ok(
        "PUT",
        "/checkpoints",
        json!({"interval_ms": 200, "dir": ckpt, "keep": 2}),
    );
    let latest = ckpt.join("latest");
    let start = Instant::now();
    while !latest.join("state").exists() {
        assert!(
            start.elapsed() < T,
            "no checkpoint appeared in {}\n{}",
            ckpt.display(),
            fc.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = get(&fc);
    assert!(c["taken"].as_u64().unwrap() >= 1, "{c}");
    assert_eq!(c["failed"], 0, "{c}");
    assert!(c["max_pause_us"].is_u64(), "{c}");
    let a = fc.call("DELETE", "/checkpoints", None);
    assert_eq!(a.status, 204, "{a:?}");
    let c = get(&fc);
    assert!(
        c.get("interval_ms").is_none() && c.get("taken").is_none(),
        "{c}"
    );
    drop(fc);

    let serial = d.join("restored.serial");
    let run = common::snap::restore_resumed(&latest, &serial, &[], T);
    let out = std::fs::read_to_string(&serial).unwrap_or_default();
    assert_eq!(run.code(), 7, "{run:#?}\n{out}");
    // It carried on from the sleep: no new boot, no count again.
    assert!(out.contains("exit: 7"), "{out}");
    assert!(
        !out.contains("boot-marker") && counts(&out).is_empty(),
        "{out}"
    );
}

#[test]
fn a_network_limit_raised_by_patch_lets_the_guest_speed_up() {
    use common::net::{can_run_net_tests, Netns};
    if !can_run_net_tests("a_network_limit_raised_by_patch_lets_the_guest_speed_up") {
        return;
    }
    let ns = Netns::new();
    let dir = scratch();
    let d = dir.as_path();
    let sock = d.join("vm.sock");
    let args = vec!["--api-sock".to_string(), sock.display().to_string()];
    let mut fc = Fc::spawn_in(
        Some(&ns.name),
        &args,
        sock,
        d.join("vm.serial"),
        d.join("vm.stderr"),
    );
    fc.wait_socket();
    // 200 frames of 1000 bytes at 1000 bytes/s would take over three minutes.
    fc.configure_guest("net.flood=0:200:1000 exit=0");
    fc.ok(
        "PUT",
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": common::net::TAP,
               "tx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 1000}}}),
    );
    fc.start_throttled(
        "flood frames",
        "200 kB at 1 kB/s cannot be sent in a second",
    );
    fc.refused(
        "PATCH",
        "/network-interfaces/eth1",
        Some(r#"{"iface_id": "eth1"}"#),
        "Invalid network interface ID",
    );
    // Raise transmit; give receive, unlimited so far, an ops bucket.
    fc.ok(
        "PATCH",
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0",
               "tx_rate_limiter": {"bandwidth": {"size": 10485760, "refill_time": 1000}},
               "rx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}),
    );
    let c: Value = serde_json::from_str(&fc.call("GET", "/vm/config", None).body).unwrap();
    let eth0 = &c["network-interfaces"][0];
    assert_eq!(
        eth0["tx_rate_limiter"]["bandwidth"]["size"], 10485760,
        "{c}"
    );
    assert_eq!(eth0["rx_rate_limiter"]["ops"]["size"], 100, "{c}");
    // fc.wait() gives up after 60 s, far less than the old limit needed.
    assert_eq!(fc.wait().code(), Some(0), "{}", fc.output());
    let serial = std::fs::read_to_string(&fc.serial).unwrap();
    assert!(
        serial.contains("net 0 flood frames=200 bytes=200000"),
        "nothing dropped: {serial}"
    );
}

/// The guest's serial output shows disk 0 as the 1024-sector disk `data`, read-only or not,
/// and the checksum of its first 8 sectors.
fn assert_sees_new_disk(serial: &Path, read_only: bool, data: &[u8]) {
    let serial = std::fs::read_to_string(serial).unwrap();
    assert!(
        serial.contains(&format!("blk 0: capacity=1024 ro={}", u8::from(read_only))),
        "the guest sees the new disk's size\n{serial}"
    );
    assert!(
        serial.contains(&format!(
            "blk 0 read 0 8 fnv={:016x}",
            fnv1a(&data[..8 * 512])
        )),
        "and its data\n{serial}"
    );
}
