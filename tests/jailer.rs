//! The jailer end to end: hearth jailed as Firecracker's jailer jails Firecracker, the
//! test guest using its disk and vsock from inside, and bad input refused with nothing
//! left behind. These need root (mknod, chroot, cgroups), as the jailer does.

mod common;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UID: u32 = 54321;
const GID: u32 = 54322;

/// Whether the test must be skipped (with a line saying so): the jailer needs root.
fn not_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    if !root {
        eprintln!("skipped: the jailer needs root");
    }
    !root
}

/// A chroot base with the guest and a disk already linked into `<id>`'s chroot, as an
/// orchestrator does before starting the jailer.
fn prepare(base: &Path, id: &str) -> PathBuf {
    let root = base.join("hearth").join(id).join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(test_guest(), root.join("guest.elf")).unwrap();
    std::fs::write(root.join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    for f in ["guest.elf", "disk.img"] {
        std::os::unix::fs::chown(root.join(f), Some(UID), Some(GID)).unwrap();
    }
    root
}

/// A scratch chroot base and a VM id (`PREFIX-<pid>`) whose chroot is prepared; None,
/// to skip, without root.
fn setup(prefix: &str) -> Option<(vmm_sys_util::tempdir::TempDir, String, PathBuf)> {
    if not_root() {
        return None;
    }
    let dir = scratch();
    let id = format!("{prefix}-{}", std::process::id());
    let root = prepare(dir.as_path(), &id);
    Some((dir, id, root))
}

fn jail_cmd(base: &Path, id: &str, extra: &[&str], vmm: &[&str]) -> Command {
    let mut cmd = Command::new(hearth_bin());
    cmd.arg("jail");
    jail_args(&mut cmd, base, id, extra, vmm);
    cmd
}

/// `--id ID --exec-file EXEC --uid UID --gid GID`, then `more`.
fn id_args(id: &str, exec: &str, more: &[&str]) -> Vec<String> {
    let (uid, gid) = (UID.to_string(), GID.to_string());
    [
        "--id",
        id,
        "--exec-file",
        exec,
        "--uid",
        &uid,
        "--gid",
        &gid,
    ]
    .iter()
    .chain(more)
    .map(|s| s.to_string())
    .collect()
}

fn jail_args(cmd: &mut Command, base: &Path, id: &str, extra: &[&str], vmm: &[&str]) {
    cmd.args(id_args(id, hearth_bin(), &[]))
        .arg("--chroot-base-dir")
        .arg(base)
        .args(extra)
        .arg("--")
        .args(vmm)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

/// Kills the jailed hearth if it still runs and removes its cgroups, on success or panic.
struct Cleanup {
    pid: Option<i32>,
    cgroups: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            if Path::new(&format!("/proc/{pid}")).exists() {
                // SAFETY: kill takes plain integers; the pid is the test's own child VMM.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                wait_gone(&pid.to_string(), Duration::from_secs(10));
            }
        }
        remove_cgroups(&self.cgroups);
    }
}

/// Waits until process `pid` is gone, at most `timeout`; whether it went.
fn wait_gone(pid: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Removes the test's cgroups (they outlive the process, as with Firecracker's jailer).
/// KVM's own threads for the VM leave them a moment after the process: retry a while.
fn remove_cgroups(paths: &[PathBuf]) {
    let start = Instant::now();
    for p in paths {
        while p.exists() && std::fs::remove_dir(p).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("cannot remove cgroup {}", p.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(parent) = p.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn jailed_hearth_runs_confined_and_the_guest_uses_disk_and_vsock() {
    let Some((dir, id, root)) = setup("jt") else {
        return;
    };
    let base = dir.as_path();
    let netns = format!("hearth-jail-{}", std::process::id());
    let ns_ok = Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ns_ok, "ip netns add failed (iproute2 is in .ci/run)");
    // The host end of the guest's vsock connection to port 52, inside the chroot.
    let listener = UnixListener::bind(root.join("v.sock_52")).unwrap();
    std::fs::set_permissions(root.join("v.sock_52"), PermissionsExt::from_mode(0o777)).unwrap();
    let cg_name = format!("hearth-test-{}", std::process::id());
    let out = jail_cmd(
        base,
        &id,
        &[
            "--new-pid-ns",
            "--netns",
            &format!("/var/run/netns/{netns}"),
            "--parent-cgroup",
            &cg_name,
            "--cgroup",
            "pids.max=64",
            "--cgroup",
            "memory.limit_in_bytes=536870912",
            "--cgroup",
            "cpu.shares=256",
            "--resource-limit",
            "no-file=512",
        ],
        &[
            "run",
            "--kernel",
            "/guest.elf",
            "--cmdline",
            "blk.write=0:0:2:9 blk.flush=0 vsock.send=52:from-the-jail sleep=4000",
            "--disk",
            "path=/disk.img",
            "--vsock",
            "cid=3,socket=/v.sock",
            "--serial-out",
            "/serial.txt",
        ],
    )
    // The VMM keeps the jailer's stdio after the jailer leaves: a pipe would not close.
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(base.join("jailer.err")).unwrap())
    .status()
    .unwrap();
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    let err = || std::fs::read_to_string(base.join("jailer.err")).unwrap_or_default();
    assert!(out.success(), "jailer: {out:?} {}", err());
    // --new-pid-ns: the jailer wrote the VMM's pid and left.
    let pid = std::fs::read_to_string(root.join("hearth.pid")).unwrap();
    let pid = pid.trim().to_string();
    // Whatever happens below, the jailed hearth goes and its cgroups with it.
    let _cleanup = Cleanup {
        pid: pid.parse().ok(),
        cgroups: ["pids", "memory", "cpu"]
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&cg_name).join(&id))
            .collect(),
    };
    // The jailer may leave before its child has exec'd: look once the guest runs.
    wait_for_text(
        &root.join("serial.txt"),
        "boot-marker",
        Duration::from_secs(60),
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("hearth {pid} is gone ({e}): {}", err()));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), UID.to_string(), "{status}");
    assert_eq!(field("Gid:"), GID.to_string(), "{status}");
    let groups = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap();
    assert_eq!(groups.trim(), "", "no supplementary groups: {status}");
    // Its root is the chroot: it holds the guest and no host /etc.
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(proc_root.join("guest.elf").exists());
    assert!(!proc_root.join("etc").exists());
    assert_eq!(
        std::fs::metadata(proc_root.join("guest.elf"))
            .unwrap()
            .ino(),
        std::fs::metadata(root.join("guest.elf")).unwrap().ino()
    );
    for kind in ["mnt", "pid", "net"] {
        assert_ne!(ns(&pid, kind), ns("self", kind), "{kind} namespace");
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 512 ")),
        "{limits}"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();

    for (controller, file, value) in [
        ("pids", "pids.max", "64"),
        ("memory", "memory.limit_in_bytes", "536870912"),
        ("cpu", "cpu.shares", "256"),
    ] {
        let want = format!("/{cg_name}/{id}");
        assert!(
            cgroups
                .lines()
                .any(|l| l.contains(controller) && l.ends_with(&want)),
            "{controller} cgroup: {cgroups}"
        );
        let written = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&cg_name)
            .join(&id)
            .join(file);
        assert_eq!(std::fs::read_to_string(written).unwrap().trim(), value);
    }
    // The guest's vsock connection reaches the host socket inside the chroot.
    listener.set_nonblocking(false).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = String::new();
    let _ = conn.read_to_string(&mut got);
    assert_eq!(got, "from-the-jail");
    // The VM runs: its main thread has its seccomp filter too.
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(
        wait_gone(&pid, Duration::from_secs(60)),
        "jailed hearth did not end"
    );
    let serial = std::fs::read_to_string(root.join("serial.txt")).unwrap();
    assert!(serial.contains("blk 0 write 0 2 status=0"), "{serial}");
    assert!(serial.contains("vsock send port=52 ok"), "{serial}");
    let disk = std::fs::read(root.join("disk.img")).unwrap();
    assert!(disk[..1024].iter().all(|b| *b == 9) && disk[1024] == 0);
}

#[test]
fn jailed_hearth_keeps_the_exit_status_and_takes_cgroup_v2() {
    let Some((dir, id, _)) = setup("jt2") else {
        return;
    };
    let base = dir.as_path();
    let v2 = Path::new("/sys/fs/cgroup/unified");
    let cg_name = format!("hearth-test2-{}", std::process::id());
    // Called under the name `jailer`, hearth takes the jailer's flags alone.
    let jailer = base.join("jailer");
    std::os::unix::fs::symlink(hearth_bin(), &jailer).unwrap();
    let mut cmd = Command::new(&jailer);
    jail_args(
        &mut cmd,
        base,
        &id,
        &[
            "--cgroup-version",
            "2",
            "--parent-cgroup",
            &cg_name,
            "--cgroup",
            "hugetlb.2MB.max=0",
        ],
        &["run", "--kernel", "/guest.elf", "--cmdline", "exit=7"],
    );
    let out = cmd.output().unwrap();
    let cg = v2.join(&cg_name).join(&id);
    let written = std::fs::read_to_string(cg.join("hugetlb.2MB.max"));
    remove_cgroups(&[cg]);
    // Without --new-pid-ns the jailer becomes hearth: the guest's status comes back.
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("exit: 7"));
    assert_eq!(written.unwrap().trim(), "0");
}

#[test]
fn bad_jailer_input_is_refused_with_one_line_and_nothing_left() {
    if not_root() {
        return;
    }
    let dir = scratch();
    let base = dir.as_path();
    let used = prepare(base, "used");
    std::fs::create_dir(used.join("dev")).unwrap();
    let before = walk(base);
    let hearth = hearth_bin();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (id_args("a", "/no/such/hearth", &[]), "--exec-file"),
        (
            args(&[
                "--id",
                "a",
                "--exec-file",
                hearth,
                "--uid",
                &UID.to_string(),
            ]),
            "--uid and --gid go together",
        ),
        (id_args("a/b", hearth, &[]), "--id"),
        (id_args("..", hearth, &[]), "--id"),
        (id_args("used", hearth, &[]), "already holds a jail"),
        (
            id_args("b", hearth, &["--cgroup", "nosuchcontroller.max=1"]),
            "not available",
        ),
    ];
    for (a, want) in cases {
        let out = Command::new(hearth_bin())
            .arg("jail")
            .args(&a)
            .arg("--chroot-base-dir")
            .arg(base)
            .args(["--", "run", "--kernel", "/guest.elf"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{a:?}: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{a:?}: {stderr}");
        assert!(stderr.contains(want), "{a:?}: {stderr}");
        assert_eq!(walk(base), before, "{a:?} left something behind");
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            out.extend(walk(&e));
        }
    }
    out
}
