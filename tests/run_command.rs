//! `hearth run --kernel K -- CMD`: the command's output, status and files, end to end in
//! the real Linux guest (resources/linux; about 30 s a boot on an idle emulating KVM,
//! minutes under load). Checks are grouped into few boots.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A run is killed when neither the guest console nor the command's output has moved
/// for this long...
/// (Under load the kernel goes minutes without a console line here.)
const STALL: Duration = Duration::from_secs(900);
/// ...or after this long in all.
const TOTAL: Duration = Duration::from_secs(2400);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kernel, from resources/linux/get-kernel.sh (the checksummed cache, or a build).
fn kernel() -> &'static PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let dir = root().join("target").join("linux-guest");
        std::fs::create_dir_all(&dir).expect("create target/linux-guest");
        let out = Command::new("bash")
            .arg(root().join("resources/linux/get-kernel.sh"))
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .expect("run get-kernel.sh");
        assert!(
            out.status.success(),
            "get-kernel.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("vmlinux")
    })
}

/// A directory of this test's own, removed first if a crashed run left it.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hearth-run-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    console: String,
}

impl Run {
    fn report(&self) -> String {
        let tail: Vec<&str> = self.console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "status {:?}\n--- stdout (first 2000 bytes) ---\n{}\n--- stderr ---\n{}\n--- console (last lines) ---\n{}",
            self.code,
            String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(2000)]),
            self.stderr,
            tail.join("\n")
        )
    }
}

/// Runs `hearth run --kernel K FLAGS -- COMMAND` in `cwd`, feeding `stdin`.
fn hearth_run(name: &str, flags: &[&str], command: &[&str], cwd: &Path, stdin: &[u8]) -> Run {
    // One guest at a time, as tests/linux_guest.rs does: each keeps a host core busy
    // emulating guest kernel mode, and several at once on a loaded machine starve each
    // other (boots were seen standing still for minutes).
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let console = std::env::temp_dir().join(format!(
        "hearth-run-test-{name}-{}.console",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&console);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("run")
        .arg("--kernel")
        .arg(kernel())
        .arg("--serial-out")
        .arg(&console)
        // The test bounds the run by the console's progress instead: a loaded machine
        // takes more than hearth's default 600 s to reach init.
        .args(["--boot-timeout", "3000"])
        .args(flags)
        .arg("--")
        .args(command)
        .current_dir(cwd)
        .env("HEARTH_TEST_VAR", "from the host")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hearth");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let in_t = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    // Bytes of the command's output so far: progress too, while the console is quiet.
    let received = Arc::new(AtomicUsize::new(0));
    let read_all = |mut from: Box<dyn Read + Send>, received: Arc<AtomicUsize>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let mut buf = [0u8; 65536];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                v.extend_from_slice(&buf[..n]);
                received.fetch_add(n, Ordering::Relaxed);
            }
            v
        })
    };
    let out_t = read_all(Box::new(child.stdout.take().unwrap()), received.clone());
    let err_t = read_all(Box::new(child.stderr.take().unwrap()), received.clone());
    let start = Instant::now();
    let (mut last_len, mut last_change) = (0, Instant::now());
    let mut killed = None;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for hearth") {
            break Some(s);
        }
        let len = std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0)
            + received.load(Ordering::Relaxed) as u64;
        if len != last_len {
            (last_len, last_change) = (len, Instant::now());
        }
        if last_change.elapsed() > STALL || start.elapsed() > TOTAL {
            killed = Some(if start.elapsed() > TOTAL {
                format!("ran past {TOTAL:?}")
            } else {
                format!("neither the console nor the output moved for {STALL:?}")
            });
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = in_t.join();
    let run = Run {
        code: status.and_then(|s| s.code()),
        stdout: out_t.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned(),
        console: String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned(),
    };
    let _ = std::fs::remove_file(&console);
    if let Some(why) = killed {
        panic!("{name}: hearth was killed: {why}\n{}", run.report());
    }
    eprintln!(
        "{name}: hearth exited after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    run
}

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut input = child.stdin.take().unwrap();
    let data = data.to_vec();
    let t = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().unwrap();
    t.join().unwrap().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn stdout_stderr_and_status_come_back_apart() {
    let dir = scratch("status");
    let r = hearth_run(
        "status",
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        &dir,
        b"",
    );
    assert_eq!(r.code, Some(7), "{}", r.report());
    assert_eq!(r.stdout, b"out\n", "{}", r.report());
    assert_eq!(r.stderr, "err\n", "{}", r.report());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shares_stdin_environment_and_megabytes_of_output() {
    let dir = scratch("shares");
    let (ro, rw) = (dir.join("ro"), dir.join("rw"));
    // The guest sees the host's root, so the symlink's target is one the guest's own
    // namespace hides (its /dev is a fresh devtmpfs): what is checked is that the link is
    // resolved by the guest, never followed on the host.
    let outside = PathBuf::from(format!("/dev/shm/hearth-run-test-{}", std::process::id()));
    for d in [&ro, &rw, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(ro.join("data.bin"), &data).unwrap();
    std::fs::write(outside.join("secret"), b"host secret\n").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), ro.join("link")).unwrap();
    let stdin: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i % 253).to_le_bytes()[0])
        .collect();
    let script = r#"
        echo "cwd=$(pwd)"
        echo "var=$HEARTH_TEST_VAR"
        echo "data=$(sha256sum < "$1/data.bin" | cut -c1-64)"
        echo "stdin=$(sha256sum | cut -c1-64)"
        echo from-guest > "$2/written.txt" && echo rw-ok
        if echo x > "$1/nope.txt"; then echo ro-write-succeeded; fi
        if cat "$1/link"; then echo link-readable; else echo link-unreadable; fi
        echo seq-start
        seq 1 300000
        exit 255
    "#;
    let ro_flag = format!("{}", ro.display());
    let rw_flag = format!("{},rw", rw.display());
    let r = hearth_run(
        "shares",
        &["--share", &ro_flag, "--share", &rw_flag, "--memory", "256M"],
        &[
            "sh",
            "-c",
            script,
            "sh",
            ro.to_str().unwrap(),
            rw.to_str().unwrap(),
        ],
        &rw,
        &stdin,
    );
    assert_eq!(r.code, Some(255), "{}", r.report());
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    let want = [
        format!("cwd={}", rw.display()),
        "var=from the host".to_string(),
        format!("data={}", sha256(&data)),
        format!("stdin={}", sha256(&stdin)),
        "rw-ok".to_string(),
        "link-unreadable".to_string(),
        "seq-start".to_string(),
    ];
    let lines: Vec<&str> = out.lines().collect();
    let head: Vec<&str> = lines
        .iter()
        .take_while(|l| **l != "seq-start")
        .copied()
        .collect();
    for w in &want[..want.len() - 1] {
        assert!(head.contains(&w.as_str()), "missing {w:?}\n{}", r.report());
    }
    assert!(!out.contains("ro-write-succeeded"), "{}", r.report());
    assert!(
        !out.contains("host secret"),
        "the guest read outside the share\n{}",
        r.report()
    );
    assert!(r.stderr.contains("Read-only file system"), "{}", r.report());
    // Megabytes of output, complete and in order.
    let seq: Vec<&str> = lines
        .iter()
        .skip_while(|l| **l != "seq-start")
        .skip(1)
        .copied()
        .collect();
    assert_eq!(seq.len(), 300_000, "{}", r.report());
    for (i, l) in seq.iter().enumerate() {
        assert_eq!(
            l.parse::<usize>().ok(),
            Some(i + 1),
            "line {i} of seq\n{}",
            r.report()
        );
    }
    assert_eq!(
        std::fs::read(rw.join("written.txt")).unwrap(),
        b"from-guest\n"
    );
    assert!(!ro.join("nope.txt").exists(), "the read-only share changed");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&outside).unwrap();
}

#[test]
fn timeout_ends_the_vm_with_124() {
    let dir = scratch("timeout");
    let r = hearth_run(
        "timeout",
        &["--timeout", "5"],
        &["sleep", "1000"],
        &dir,
        b"",
    );
    assert_eq!(r.code, Some(124), "{}", r.report());
    assert!(r.stderr.contains("--timeout"), "{}", r.report());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_kernel_panic_ends_with_125_and_the_panic_on_stderr() {
    let dir = scratch("panic");
    // The kernel cannot run this init, finds no root device, and panics.
    let r = hearth_run(
        "panic",
        &[
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 rdinit=/no-such-init",
        ],
        &["true"],
        &dir,
        b"",
    );
    assert_eq!(r.code, Some(125), "{}", r.report());
    assert!(r.stderr.contains("Kernel panic"), "{}", r.report());
    assert!(r.stdout.is_empty(), "{}", r.report());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An e2fsprogs tool, found on PATH or in the sbin folders a non-root PATH may lack.
fn e2fs_tool(name: &str) -> Command {
    let found = ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    Command::new(found.unwrap_or_else(|| PathBuf::from(name)))
}

/// An ext4 image made without root privileges (`mke2fs -d`): a static busybox as /bin/sh
/// and /bin/cat, the mount points hearth-init uses, and /marker holding `marker`.
fn root_image(dir: &Path, marker: &str) -> PathBuf {
    let tree = dir.join("tree");
    for d in ["bin", "proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: install busybox-static (.ci/run does)"
    );
    // ldd succeeds only on a dynamically linked program, which the image could not run.
    let dynamic = Command::new("ldd")
        .arg(busybox)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        !dynamic,
        "/bin/busybox is dynamically linked: install busybox-static"
    );
    std::fs::copy(busybox, tree.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
    }
    std::fs::write(tree.join("marker"), marker).unwrap();
    let img = dir.join("root.ext4");
    let out = e2fs_tool("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("32M")
        .output()
        .expect("run mke2fs: install e2fsprogs (.ci/run does)");
    assert!(
        out.status.success(),
        "mke2fs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

/// A file of the image as the host reads it (debugfs, no mount needed).
fn image_file(img: &Path, path: &str) -> Vec<u8> {
    let out = e2fs_tool("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(img)
        .output()
        .expect("run debugfs: install e2fsprogs (.ci/run does)");
    assert!(out.status.success(), "debugfs failed: {out:?}");
    out.stdout
}

#[test]
fn a_root_disk_is_the_guest_root() {
    let dir = scratch("rootdisk");
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hostfile"), b"from the host share\n").unwrap();
    let marker = format!("marker of image {}\n", std::process::id());
    let img = root_image(&dir, &marker);

    // Read-only: the disk's files are there, writes to it fail, /tmp is a fresh tmpfs.
    let ro = format!("{},ro,root", img.display());
    let script =
        "cat /marker; if echo x > /nope; then echo wrote; fi; echo tmp > /tmp/t && cat /tmp/t";
    let r = hearth_run(
        "rootdisk-ro",
        &["--disk", &ro],
        &["sh", "-c", script],
        &dir,
        b"",
    );
    assert_eq!(r.code, Some(0), "{}", r.report());
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("{marker}tmp\n"),
        "{}",
        r.report()
    );
    assert!(r.stderr.contains("Read-only file system"), "{}", r.report());

    // Read-write, with a share at its host path: the guest's write is in the image
    // afterwards; the host's working directory is not on the disk (the share's mount
    // point is created there, but not its sibling), so the command runs in /, quietly.
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let rw = format!("path={},root", img.display());
    let share_flag = share.display().to_string();
    let script = r#"pwd; cat /marker; cat "$1/hostfile"; echo written-in-guest > /f; exit 3"#;
    let r = hearth_run(
        "rootdisk-rw",
        &["--disk", &rw, "--share", &share_flag],
        &["sh", "-c", script, "sh", &share_flag],
        &work,
        b"",
    );
    assert_eq!(r.code, Some(3), "{}", r.report());
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("/\n{marker}from the host share\n"),
        "{}",
        r.report()
    );
    assert_eq!(r.stderr, "", "{}", r.report());
    assert_eq!(image_file(&img, "/f"), b"written-in-guest\n");
    assert_eq!(image_file(&img, "/marker"), marker.as_bytes());
    std::fs::remove_dir_all(&dir).unwrap();
}
